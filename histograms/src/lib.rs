//! Calibration statistics as `calibrate` writes them and `analyze` reads them: the per-tensor |x| histograms
//! whose merge is exact ([`histogram`]) and the versioned `.hist` file that carries them ([`hist_file`],
//! format in FORMATS.md). Reading statistics needs nothing of the collection code, ONNX Runtime or CUDA.

pub mod channels;
pub mod hist_file;
pub mod histogram;
pub mod samples;

use std::path::PathBuf;

pub use channels::{ChannelMax, ChannelMismatch};
pub use hist_file::{
    first_missing_shard, merge, ArraySpec, EqualizationRecord, HeldOut, HistFile, HistogramInfo, ImagesInfo, ModelInfo,
    ShardInfo, SizeImages, SmoothingRecord, TensorRecord, HIST_FORMAT, HIST_VERSION,
};
pub use histogram::{AbsHistogram, TensorStats, BINS};
pub use samples::SamplesDigest;

/// Errors reading or writing a `.hist` file.
#[derive(Debug, thiserror::Error)]
pub enum HistError {
    /// The file could not be read safely (missing, not a regular file, too large).
    #[error(transparent)]
    Input(#[from] safe_io::ReadError),
    /// The file is not a `.hist` file this build can use.
    #[error("{path}: not a usable .hist file: {message}")]
    BadHist {
        /// The `.hist` file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The statistics could not be serialized.
    #[error("cannot encode the .hist file: {0}")]
    Encode(#[source] serde_json::Error),
    /// Shards that cannot be merged.
    #[error("{path}: cannot merge: {message}")]
    Merge {
        /// The offending `.hist` file.
        path: PathBuf,
        /// What differs, and what to do.
        message: String,
    },
    /// The file could not be written.
    #[error(transparent)]
    Write(#[from] safe_io::WriteError),
}

/// Which activations a calibration collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Every float activation: any precision list can be applied later without recalibrating. Slow and
    /// memory-hungry on transformers: ONNX Runtime loses its fusions and every intermediate tensor of a
    /// batch is materialised (246 MB per 224x224 image on a ViT-S/14; see BENCHMARKS.md).
    All,
    /// Only what the default precision lists quantize: inputs of Conv/ConvTranspose/Gemm and of MatMuls
    /// with a constant weight, plus the fed inputs and the model outputs. The default: about as fast as a
    /// plain FP32 pass, and what the other calibrators collect too.
    #[default]
    Quantizable,
}

impl Selection {
    /// The name used on the command line and in `.hist` files.
    pub fn name(self) -> &'static str {
        match self {
            Selection::All => "all",
            Selection::Quantizable => "quantizable",
        }
    }
}

impl std::str::FromStr for Selection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Selection::All),
            "quantizable" => Ok(Selection::Quantizable),
            other => Err(format!("'{other}': expected 'all' or 'quantizable'")),
        }
    }
}
