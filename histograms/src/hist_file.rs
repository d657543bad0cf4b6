//! The `.hist` file: calibration statistics handed from `calibrate` to `analyze`. Format documented in
//! FORMATS.md; bump [`HIST_VERSION`] on any incompatible change.

use std::path::Path;

use datasets::Recipe;
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use crate::histogram::{TensorStats, BINS};
use crate::{HistError, Selection};

/// The `format` value of a .hist file.
pub const HIST_FORMAT: &str = "int8kit.hist";
/// The .hist version this build writes. Version 3 added the optional `smoothing`; version 2 added
/// `content_sha256`. Versions 1 and 2 are still read.
pub const HIST_VERSION: u32 = 3;
/// The oldest version this build reads.
pub const HIST_OLDEST_READ: u32 = 1;

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

/// How the model was smoothed before its statistics were collected (`calibrate --smooth`): the migration
/// strength and the per-channel maxima of the smoothed GEMM inputs, measured on the unsmoothed model, from
/// which the smoothing factors follow. `analyze` re-applies the same smoothing before reading the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmoothingRecord {
    /// SmoothQuant's alpha.
    pub alpha: f32,
    /// GEMM input tensor (of the unsmoothed model) -> max |x| per channel of its last axis.
    pub channel_max: std::collections::BTreeMap<String, crate::ChannelMax>,
}

/// A `.hist` file: calibration statistics of one model over one image set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistFile {
    /// Always [`HIST_FORMAT`].
    pub format: String,
    /// [`HIST_VERSION`].
    pub version: u32,
    /// SHA-256 of the file's content (its compact JSON without this field): an edit that keeps the JSON valid
    /// is detected. Filled in by [`HistFile::to_json`]; absent in version 1 files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
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
    /// With `calibrate --smooth`: the smoothing applied before collecting; the tensors are then those of the
    /// smoothed model. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothing: Option<SmoothingRecord>,
    /// Activations in graph order.
    pub tensors: Vec<TensorRecord>,
}

impl HistFile {
    /// SHA-256 of the content: the compact JSON of the file without `content_sha256`.
    pub fn content_digest(&self) -> Result<String, HistError> {
        let body = HistFile { content_sha256: None, ..self.clone() };
        let bytes = serde_json::to_vec(&body).map_err(HistError::Encode)?;
        Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The file's bytes: compact JSON with a fresh `content_sha256`, and a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>, HistError> {
        let sealed = HistFile { content_sha256: Some(self.content_digest()?), ..self.clone() };
        let mut bytes = serde_json::to_vec(&sealed).map_err(HistError::Encode)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Writes through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> Result<(), HistError> {
        Ok(graph::write_atomic(path, &self.to_json()?)?)
    }

    /// Reads and checks a .hist file.
    pub fn read(path: &Path) -> Result<HistFile, HistError> {
        let bytes = safe_io::read(path, safe_io::limits::HIST, "a .hist file")?;
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
        let version = header.version.unwrap_or(0);
        if !(HIST_OLDEST_READ..=HIST_VERSION).contains(&version) {
            return Err(bad(format!(
                "version {:?} is not supported by this build (reads versions {HIST_OLDEST_READ} to {HIST_VERSION}); \
                 re-run calibrate",
                header.version
            )));
        }
        let hist: HistFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        match (&hist.content_sha256, version) {
            (Some(stored), _) => {
                let actual = hist.content_digest()?;
                if *stored != actual {
                    return Err(bad(format!(
                        "its content does not match its checksum (stored {}, content {}): the file was edited or \
                         corrupted after calibrate wrote it; re-run calibrate",
                        short(stored),
                        short(&actual)
                    )));
                }
            }
            (None, 1) => {}
            (None, v) => return Err(bad(format!("version {v} file without content_sha256; re-run calibrate"))),
        }
        hist.check().map_err(bad)?;
        Ok(hist)
    }

    /// Internal consistency: what calibrate writes always satisfies these, and an edit that breaks one would
    /// silently change scales.
    pub fn check(&self) -> Result<(), String> {
        if self.histogram.bins != BINS || self.histogram.values != "abs" {
            return Err(format!(
                "histogram layout {} bins of '{}': this build reads {BINS} bins of 'abs' only",
                self.histogram.bins, self.histogram.values
            ));
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(format!("tensor '{}' appears twice", t.name));
            }
            check_stats(&t.stats).map_err(|m| format!("tensor '{}': {m}", t.name))?;
        }
        if let Some(sm) = &self.smoothing {
            if !(0.0..=1.0).contains(&sm.alpha) {
                return Err(format!("smoothing alpha {} is not from 0 to 1", sm.alpha));
            }
            for (name, c) in &sm.channel_max {
                if c.max.is_empty() || c.max.iter().any(|m| !m.is_finite() || *m < 0.0) {
                    return Err(format!("smoothing channel_max of '{name}' must hold finite, non-negative values"));
                }
            }
        }
        Ok(())
    }

    /// The statistics of the tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorRecord> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// One tensor's statistics are what the histogram rules produce: counts add up, min <= max, the range is the
/// smallest power of two above max |x|, and the highest non-empty bin is the one max |x| falls in.
fn check_stats(s: &TensorStats) -> Result<(), String> {
    let total = s.hist.total();
    if total != s.count {
        return Err(format!("count {} but the histogram holds {total} values", s.count));
    }
    let (lo, hi) = match (s.min, s.max) {
        (None, None) if s.count == 0 => {
            return if s.hist.range_exp.is_none() { Ok(()) } else { Err("a range but no values".into()) }
        }
        (Some(lo), Some(hi)) if s.count > 0 => (lo, hi),
        _ => return Err(format!("count {} with min {:?} and max {:?}", s.count, s.min, s.max)),
    };
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err(format!("min {lo} and max {hi} are not an interval"));
    }
    let amax = s.amax();
    if amax == 0.0 {
        return if s.hist.range_exp.is_none() && s.hist.counts[0] == s.count {
            Ok(())
        } else {
            Err("only zeros, but counts beyond bin 0 or a range".into())
        };
    }
    let e = crate::histogram::range_exp_for(amax);
    if s.hist.range_exp != Some(e) {
        return Err(format!("range exponent {:?} but max |x| {amax} needs {e}", s.hist.range_exp));
    }
    let top = ((amax as f64 * (BINS as f64) / (e as f64).exp2()) as usize).min(BINS - 1);
    let last = s.hist.counts.iter().rposition(|&c| c > 0);
    if last != Some(top) {
        return Err(format!("the highest non-empty bin is {last:?} but max |x| {amax} falls in bin {top}"));
    }
    Ok(())
}

/// Files written before `collected` existed held every activation.
fn collected_in_older_files() -> Selection {
    Selection::All
}
