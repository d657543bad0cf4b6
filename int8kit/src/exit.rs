//! The one place where outcomes become exit statuses: 0 success, 1 a gate failed (validate's criteria,
//! autoprecision's budget), 2 bad input or a run error, with the error chain on stderr. A pipeline can tell
//! a regression from a broken run.

use std::process::ExitCode;

/// How a command that did not fail with an error ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The work was done (and every gate held).
    Success,
    /// The work was done and a gate failed: validate's criteria or autoprecision's budget.
    GateFailed,
}

impl Outcome {
    /// The exit status for this outcome.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::GateFailed => 1,
        }
    }
}

/// Exit status for an error: bad input or a run error.
pub const ERROR_STATUS: u8 = 2;

/// The process status of a command's result; prints the error chain for errors.
pub fn exit_status(result: anyhow::Result<Outcome>) -> ExitCode {
    match result {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(ERROR_STATUS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_distinct_statuses() {
        assert_eq!((Outcome::Success.code(), Outcome::GateFailed.code(), ERROR_STATUS), (0, 1, 2));
    }
}
