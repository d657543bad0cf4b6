//! Streams calibration images through the FP32 model and collects per-tensor activation statistics.
//!
//! Collecting statistics ([`histogram`]) is separate from turning them into scales (the `analyze` crate):
//! the `.hist` file ([`hist_file`]) is the hand-over.

pub mod cli;
mod collect;
pub mod gpu;
pub mod hist_file;
pub mod histogram;

use std::path::PathBuf;

pub use collect::{calibrate, CalibrateOptions, CalibrationSummary, Selection, TappedModel};
pub use hist_file::HistFile;

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Dataset(#[from] datasets::DatasetError),
    #[error("{model}: {message}")]
    Input { model: PathBuf, message: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a usable .hist file: {message}")]
    BadHist { path: PathBuf, message: String },
    #[error("cannot encode the .hist file: {0}")]
    Format(String),
    #[error("cannot start worker threads: {0}")]
    Threads(String),
    #[error("{dir}: no image could be used ({skipped} skipped as unreadable)")]
    NoImages { dir: PathBuf, skipped: usize },
    #[error(transparent)]
    Gpu(#[from] gpu::GpuError),
}
