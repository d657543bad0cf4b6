//! Streams calibration images through the FP32 model and collects per-tensor activation statistics.
//!
//! Collecting statistics is separate from turning them into scales (the `analyze` crate) and models (`quantizer`): the `.hist` file
//! of the `histograms` crate is the hand-over. [`gpu`] is the device-side twin of the CPU statistics.

mod collect;
mod fold;
pub mod gpu;

use std::path::PathBuf;

pub use collect::{
    batch_input, calibrate, calibrate_batches, calibrate_model, float_output, held_in_slice, held_out_slice,
    load_model, CalibrateOptions, CalibrationSummary, ChannelMaxima, Digesting, GivenSamples, HoldOut, Smooth,
    TappedModel, AUTO_SMOOTH_ALPHA, MAXIMA_SAMPLES, RUN_VALUES_MAX,
};
pub use histograms::Selection;

/// Errors of a calibration run; each names the model, folder or file involved.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// The model could not be read or edited.
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    /// ONNX Runtime could not be loaded or failed running the model.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// The image folder, an image or the recipe is unusable.
    #[error(transparent)]
    Dataset(#[from] datasets::DatasetError),
    /// The statistics could not be encoded.
    #[error(transparent)]
    Hist(#[from] histograms::HistError),
    /// The default placement could not be computed (a malformed GEMM/Conv node).
    #[error(transparent)]
    Placement(#[from] placement::PlacementError),
    /// The model's input does not fit what int8kit feeds it.
    #[error("{model}: {message}")]
    Input {
        /// The model file.
        model: PathBuf,
        /// What does not fit, and how to fix it.
        message: String,
    },
    /// The worker threads could not start or one of them died.
    #[error("cannot start worker threads: {0}")]
    Threads(String),
    /// Every image was skipped as unreadable.
    #[error("{dir}: no image could be used ({skipped} skipped as unreadable)")]
    NoImages {
        /// The image folder.
        dir: PathBuf,
        /// How many images were skipped.
        skipped: usize,
    },
    /// Smoothing failed (alpha out of range, an unreadable weight).
    #[error(transparent)]
    Smooth(#[from] smoothquant::SmoothError),
    /// The device statistics failed.
    #[error(transparent)]
    Gpu(#[from] gpu::GpuError),
}
