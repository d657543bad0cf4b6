//! The `.hist` file: calibration statistics handed from `calibrate` to `analyze`. Format documented in
//! FORMATS.md; bump [`HIST_VERSION`] on any incompatible change.

use std::path::Path;

use datasets::Recipe;
use serde::{Deserialize, Serialize};

use crate::histogram::TensorStats;
use crate::{HistError, Selection};

/// The `format` value of a .hist file.
pub const HIST_FORMAT: &str = "int8kit.hist";
/// The .hist version this build reads and writes.
pub const HIST_VERSION: u32 = 1;

/// Which model the statistics belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// File name of the model (not its full path, so that moving it does not change the artifact).
    pub file: String,
    /// SHA-256 of the model file and its external data.
    pub sha256: String,
}

/// Which images went through the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagesInfo {
    /// Name of the image folder.
    pub folder: String,
    /// Images that went through the model.
    pub count: u64,
    /// Unreadable images left out under `--on-bad-image skip`.
    pub skipped: u64,
    /// `--limit` and the seed of the subset, if one was taken.
    pub limit: Option<usize>,
    /// Seed of the `limit` subset.
    pub seed: u64,
    /// SHA-256 over the relative paths of the images used, in order: identifies the calibration set.
    pub list_sha256: String,
}

/// What the histograms hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramInfo {
    /// Bins over `[0, 2^range_exp)`.
    pub bins: usize,
    /// What is binned: `"abs"` (|x|).
    pub values: String,
}

/// One activation's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorRecord {
    /// Tensor name.
    pub name: String,
    /// Node that produces the tensor; `null` for a graph input.
    pub producer: Option<String>,
    /// Op type of its producer.
    pub op: Option<String>,
    /// The statistics.
    #[serde(flatten)]
    pub stats: TensorStats,
}

/// A `.hist` file: calibration statistics of one model over one image set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistFile {
    /// Always [`HIST_FORMAT`].
    pub format: String,
    /// [`HIST_VERSION`].
    pub version: u32,
    /// The tool and version that wrote the file.
    pub producer: String,
    /// The model.
    pub model: ModelInfo,
    /// The preprocessing the images went through.
    pub recipe: Recipe,
    /// The images.
    pub images: ImagesInfo,
    /// ONNX Runtime version that computed the activations.
    pub onnxruntime: String,
    /// The histogram layout.
    pub histogram: HistogramInfo,
    /// Which activations were collected (`all` or `quantizable`); absent in older files means `all`.
    #[serde(default = "collected_in_older_files")]
    pub collected: Selection,
    /// Activations in graph order.
    pub tensors: Vec<TensorRecord>,
}

impl HistFile {
    /// The file's bytes: compact JSON and a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>, HistError> {
        let mut bytes = serde_json::to_vec(self).map_err(HistError::Encode)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Writes through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> Result<(), HistError> {
        Ok(graph::write_atomic(path, &self.to_json()?)?)
    }

    /// Reads and checks a .hist file.
    pub fn read(path: &Path) -> Result<HistFile, HistError> {
        let bytes = std::fs::read(path).map_err(|source| HistError::Io { path: path.into(), source })?;
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let bad = |message: String| HistError::BadHist { path: path.into(), message };
        let header: Header = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a JSON .hist file: {e}")))?;
        if header.format.as_deref() != Some(HIST_FORMAT) {
            return Err(bad(format!("format is {:?}, expected \"{HIST_FORMAT}\"", header.format)));
        }
        if header.version != Some(HIST_VERSION) {
            return Err(bad(format!(
                "version {:?} is not supported by this build (reads version {HIST_VERSION}); re-run calibrate",
                header.version
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
    }

    /// The statistics of the tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorRecord> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Files written before `collected` existed held every activation.
fn collected_in_older_files() -> Selection {
    Selection::All
}
