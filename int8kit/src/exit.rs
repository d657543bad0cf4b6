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
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(ERROR_STATUS)
        }
    }
}

/// The error and its causes on one line, each cause once: library errors already quote their source
/// ("cannot read F: No such file"), so a cause whose text is already there is not repeated.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read m.onnx: {0}")]
        struct Read(#[source] std::io::Error);
        let e = anyhow::Error::new(Read(io)).context("calibrating m.onnx");
        assert_eq!(error_text(&e), "calibrating m.onnx: cannot read m.onnx: No such file or directory");
    }

    #[test]
    fn outcomes_map_to_distinct_statuses() {
        assert_eq!((Outcome::Success.code(), Outcome::GateFailed.code(), ERROR_STATUS), (0, 1, 2));
    }
}
