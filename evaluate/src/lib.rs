//! Evaluation of INT8 models against their FP32 originals: the FP32-vs-INT8 comparison ([`compare`]),
//! per-node sensitivity ([`sensitivity`]), the automatic deny list ([`autoprecision`]), the release gate
//! ([`validate`](mod@validate)) and the TensorRT adapter ([`tensorrt`]). Each takes a config struct and returns a report;
//! printing and exit codes belong to the `int8kit` binary.

#![forbid(unsafe_code)]

pub mod autoprecision;
pub mod compare;
pub mod gates;
pub mod sensitivity;
pub mod shards;
pub mod tensorrt;
pub mod validate;

use std::path::PathBuf;

pub use compare::Classifier;
pub use reports::{Comparison, ModelMetrics, Report};
pub use validate::{validate, Engine, ValidateConfig};

/// Errors of the evaluation layer; each names the file, model or folder involved.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// A model could not be read or rewritten.
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    /// An output could not be written safely.
    #[error(transparent)]
    Output(#[from] safe_io::WriteError),
    /// ONNX Runtime could not be loaded or failed.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// An image folder, image or recipe is unusable.
    #[error(transparent)]
    Dataset(#[from] datasets::DatasetError),
    /// A `.hist` file could not be read or written.
    #[error(transparent)]
    Hist(#[from] histograms::HistError),
    /// Calibration failed.
    #[error(transparent)]
    Calibrate(#[from] calibrate::CalibrateError),
    /// Scales, precision lists or artifacts failed.
    #[error(transparent)]
    Quantize(#[from] quantizer::QuantizeError),
    /// A report could not be written or a baseline read.
    #[error(transparent)]
    Report(#[from] reports::ReportError),
    /// The TensorRT adapter failed.
    #[error(transparent)]
    TensorRt(#[from] tensorrt::TensorRtError),
    /// A file could not be read safely (missing, not a regular file, too large).
    #[error(transparent)]
    Read(#[from] safe_io::ReadError),
    /// An input does not fit the run.
    #[error("{path}: {message}")]
    Input {
        /// The offending file or folder.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A model's outputs are not what evaluation needs.
    #[error("{path}: {message}")]
    Model {
        /// The model.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A gate limit is not a finite number in the accepted range.
    #[error("{flag} {value}: a limit must be a finite number of percentage points from -100 to 100")]
    Limit {
        /// The flag.
        flag: String,
        /// The value given.
        value: f64,
    },
    /// A fidelity gate's limit is not a finite number in its range.
    #[error("{flag} {value}: the limit must be a finite number from {range}")]
    FidelityLimit {
        /// The flag.
        flag: String,
        /// The value given.
        value: f64,
        /// The accepted range, in words.
        range: String,
    },
    /// The baseline report does not describe the same model or evaluation set.
    #[error("baseline {path}: {message}")]
    Baseline {
        /// The baseline report.
        path: PathBuf,
        /// What differs and what to do.
        message: String,
    },
    /// Nothing was evaluated: a gate must not pass on no images.
    #[error(
        "{path}: no image was evaluated (an empty folder, a subset of 0, or every image skipped); a gate needs images"
    )]
    NoImages {
        /// The evaluation folder.
        path: PathBuf,
    },
    /// A model produced NaN or infinite outputs.
    #[error("{path}: the models produced values that are not finite numbers on {images} images: FP32 {fp32_values} NaN/Inf values in {fp32_images} images, INT8 {int8_values} in {int8_images}; the comparison would be meaningless (check the model and its inputs, or the scales)")]
    NonFinite {
        /// The evaluation folder.
        path: PathBuf,
        /// Images evaluated.
        images: u64,
        /// NaN/Inf values in the FP32 outputs.
        fp32_values: u64,
        /// Images with any.
        fp32_images: u64,
        /// NaN/Inf values in the INT8 outputs.
        int8_values: u64,
        /// Images with any.
        int8_images: u64,
    },
    /// The float model's outputs were zero on every image.
    #[error("{path}: the float model's outputs are zero on all {images} images, so there is no signal to compare the INT8 outputs with: cosine and SQNR would pass on nothing (check the model and the recipe, or evaluate images the model responds to)")]
    NoSignal {
        /// The evaluation folder.
        path: PathBuf,
        /// Images evaluated.
        images: u64,
    },
    /// The zero-shot prototypes could not be read.
    #[error("{path}: cannot read the prototypes (a float32 [classes, dim] .npy is expected): {source}")]
    Prototypes {
        /// The `.npy` file.
        path: PathBuf,
        /// What the reader said.
        source: ndarray_npy::ReadNpyError,
    },
    /// A CSV output could not be encoded.
    #[error("cannot encode CSV: {0}")]
    Csv(#[from] csv::Error),
    /// A JSON output could not be encoded.
    #[error("cannot encode JSON: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Top-1 budgets are percentage points in this range; anything else (NaN, infinities, more than the whole
/// scale) could never be what was meant, and would make a gate that always or never passes.
pub const LIMIT_RANGE_PP: std::ops::RangeInclusive<f64> = -100.0..=100.0;

/// Refuses a Top-1 limit outside [`LIMIT_RANGE_PP`] (NaN and infinities included).
pub fn check_limit(flag: &str, value: f64) -> Result<(), EvaluateError> {
    if LIMIT_RANGE_PP.contains(&value) {
        Ok(())
    } else {
        Err(EvaluateError::Limit { flag: flag.to_string(), value })
    }
}

/// Pretty JSON with a final newline, as every JSON artifact is written.
pub(crate) fn pretty_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, EvaluateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(EvaluateError::Encode)?;
    bytes.push(b'\n');
    Ok(bytes)
}
