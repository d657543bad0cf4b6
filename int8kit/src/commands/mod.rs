//! One module per subcommand: its arguments and a `run` that calls the libraries and prints the outcome.

pub mod analyze;
pub mod autoprecision;
pub mod calibrate;
pub mod lint;
pub mod merge;
pub mod quantize;
pub mod sensitivity;
pub mod setup;
pub mod validate;
