//! A process-wide request to stop (Ctrl-C in the Python API, where the interpreter's handler only sets a
//! flag): batch streams end with an error at their next batch, and nothing is committed after it, so an
//! interrupted run leaves its outputs as they were.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks every run in this process to stop at its next batch and commit nothing.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested and not cleared since.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Forgets a request, once the interrupted run has ended (the next run goes ahead).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// The error a stopped run ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted: the run stopped before its end and wrote nothing")]
pub struct Interrupted;

/// `Err(Interrupted)` when a stop was requested.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}
