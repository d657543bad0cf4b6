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
/// The .hist version this build writes. Version 9 added the optional `equalization` (depthwise Conv inputs
/// equalized before the statistics were collected: a reader that ignored it would apply the statistics to
/// the wrong model). Version 8 identifies the samples by the bytes fed
/// (`images.samples_sha256`, see [`crate::SamplesDigest`]) instead of the folder's paths (`images.list_sha256`,
/// now only in older files) and gave shards `whole_list_sha256`; version 7 added `images.sizes` and `images.sizes_dealt` (a recipe of
/// several input sizes, whose `sizes` the recipe lists); version 6 added `max_only` (range-only statistics of the tensors
/// that are always max-calibrated); version 5 added `images.held_out` (the slice kept out of the
/// statistics for the self-check); version 4 made `recipe` optional and added `arrays` (`.npz` samples);
/// version 3 added the optional `smoothing`; version 2 added `content_sha256`. Versions 1 to 3 are still read.
pub const HIST_VERSION: u32 = 9;
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
    /// Files before version 8: SHA-256 over the relative paths of the calibration set (after `limit`, before
    /// the hold-out), in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_sha256: Option<String>,
    /// From version 8: the samples that went into the statistics, by the bytes fed
    /// ([`crate::SamplesDigest`] in hex): a folder and an iterable of the same values record the same, and a
    /// shard records its own part's (the merge adds them up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_sha256: Option<String>,
    /// The slice of the calibration set held back from the statistics, for measuring the INT8 model on
    /// samples it was not calibrated on; absent when none was (and in files before version 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out: Option<HeldOut>,
    /// With a recipe of several sizes: the images that went through the model at each size, in the recipe's
    /// order (empty for one size, and in files before version 7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<SizeImages>,
    /// Whether each image went through the model at one size only (dealt over the sizes, seeded by `seed`)
    /// rather than at every size.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sizes_dealt: bool,
}

/// The images calibrated at one input size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeImages {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// Images that went through the model at this size.
    pub count: u64,
}

/// The samples `calibrate` kept out of the statistics: `count` of the calibration set, chosen by `seed`
/// from the list alone ([`HeldOut::list_sha256`] names them without storing a path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldOut {
    /// Samples held back.
    pub count: u64,
    /// Seed of the choice.
    pub seed: u64,
    /// SHA-256 over their relative paths, in order.
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

/// One array of the `.npz` samples a calibration was fed: a model input's name, element type and shape per
/// sample (batch axis 1), as the first sample has them (every sample has the same arrays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArraySpec {
    /// The model input.
    pub name: String,
    /// numpy's name of the element type (`int64`, `float32`, ...).
    pub dtype: String,
    /// Dimensions of one sample.
    pub shape: Vec<usize>,
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

/// Which part of the image list a `.hist` covers (`calibrate --shard I/N`): `images` then counts and
/// identifies this part's samples, and the merge of every shard (`int8kit merge`) adds them up into the
/// one-process file, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// 1-based shard number.
    pub index: usize,
    /// Shards the list is split into.
    pub count: usize,
    /// SHA-256 over this shard's relative image paths, in order.
    pub list_sha256: String,
    /// From version 8: SHA-256 over the relative paths of the whole list the shards split (every shard of one
    /// calibration has the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole_list_sha256: Option<String>,
}

/// How the model's depthwise Conv inputs were equalized before its statistics were collected: the
/// per-channel maxima (axis 1) of each equalized input, measured on the unmodified model over the first
/// `samples` calibration samples, from which the factors follow (`smoothquant::equalize`).
/// `quantizer::Quantizer` re-applies the same equalization before reading the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EqualizationRecord {
    /// Samples the maxima were measured on.
    pub samples: u64,
    /// Depthwise Conv input (of the unmodified model) -> max |x| per channel.
    pub channel_max: std::collections::BTreeMap<String, crate::ChannelMax>,
}

/// How the model was smoothed before its statistics were collected (`calibrate --smooth`): the migration
/// strength and the per-channel maxima of the smoothed GEMM inputs, measured on the unsmoothed model, from
/// which the smoothing factors follow. `quantizer::Quantizer` re-applies the same smoothing before reading the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmoothingRecord {
    /// SmoothQuant's alpha.
    pub alpha: f32,
    /// Samples the maxima were measured on (a seeded subset of the list, or an iterable's first ones). Added
    /// within version 9: absent in files written before, whose maxima came from every calibration sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
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
    /// The preprocessing the images went through; absent when the samples were `.npz` arrays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
    /// The arrays of each `.npz` sample (fed as stored, one per model input); absent for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrays: Option<Vec<ArraySpec>>,
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
    /// Where the model has depthwise Convs: their inputs' equalization, applied (after any smoothing) before
    /// collecting; the tensors are then those of the equalized model. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equalization: Option<EqualizationRecord>,
    /// With `calibrate --shard I/N`: the part of the image list covered; absent for a whole run (and after
    /// `int8kit merge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
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
        Ok(safe_io::write_atomic(path, &self.to_json()?)?)
    }

    /// Reads and checks a .hist file.
    pub fn read(path: &Path) -> Result<HistFile, HistError> {
        let bytes = safe_io::read(path, safe_io::limits::HIST, "a .hist file")?;
        HistFile::from_bytes(&bytes, path)
    }

    /// [`HistFile::read`] of bytes already in memory; `path` names them in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<HistFile, HistError> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let bad = |message: String| HistError::BadHist { path: path.into(), message };
        let header: Header = serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON .hist file: {e}")))?;
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
        let hist: HistFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
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
        if self.version >= 8 && self.images.samples_sha256.as_deref().and_then(crate::SamplesDigest::from_hex).is_none()
        {
            return Err("images.samples_sha256 must be 64 hex digits (the identity of the samples fed)".into());
        }
        if let Some(sh) = &self.shard {
            if sh.index == 0 || sh.index > sh.count {
                return Err(format!("shard {}/{} is not a shard number from 1 to {}", sh.index, sh.count, sh.count));
            }
        }
        // A fed input holds the same number of values for every sample, so its count is a multiple of the
        // images (and a merge checks that every shard has the same number per image): an `images.count`
        // edited apart from the tensors is caught here.
        for t in self.tensors.iter().filter(|t| t.producer.is_none()) {
            let elements = t.stats.elements().unwrap_or(u64::MAX);
            let consistent = match self.images.count {
                0 => elements == 0,
                n => elements % n == 0 && elements >= n,
            };
            if !consistent {
                return Err(format!(
                    "the fed input '{}' holds {elements} values, which {} images cannot give",
                    t.name, self.images.count
                ));
            }
        }
        if let Some(eq) = &self.equalization {
            for (name, c) in &eq.channel_max {
                if c.max.is_empty() || c.max.iter().any(|m| !m.is_finite() || *m < 0.0) {
                    return Err(format!("equalization channel_max of '{name}' must hold finite, non-negative values"));
                }
            }
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

/// Merges the `.hist` files of every shard of one calibration (`calibrate --shard I/N` for I = 1..N) into the
/// file one process over the whole list writes, byte for byte: the statistics merge exactly. Refuses, saying
/// which file and what differs, parts of another model, recipe, image list, collection or ONNX Runtime, a
/// shard given twice or missing, and files that are not shards.
pub fn merge(parts: &[(std::path::PathBuf, HistFile)]) -> Result<HistFile, crate::HistError> {
    let bad = |path: &std::path::Path, message: String| crate::HistError::Merge { path: path.to_path_buf(), message };
    let Some((first_path, first)) = parts.first() else {
        return Err(bad(std::path::Path::new("."), "no .hist files to merge".into()));
    };
    let shard_of = |path: &std::path::Path, h: &HistFile| {
        h.shard.clone().ok_or_else(|| {
            bad(path, "is not a shard (calibrate --shard I/N writes shards; a whole run needs no merge)".into())
        })
    };
    let count = shard_of(first_path, first)?.count;
    // Every shard once: a count beyond the files given is a missing shard, found without allocating `count`.
    if count > parts.len() {
        let missing = first_missing_shard(parts.iter().filter_map(|(_, h)| h.shard.as_ref().map(|s| s.index)));
        return Err(bad(
            first_path,
            format!(
                "shard {}/{count} is missing: every shard is needed for the whole list ({} given)",
                missing,
                parts.len()
            ),
        ));
    }
    let mut seen: Vec<Option<&std::path::Path>> = vec![None; count];
    for (k, (path, h)) in parts.iter().enumerate() {
        let shard = shard_of(path, h)?;
        let copy = parts[..k].iter().find(|(_, o)| {
            o.shard.as_ref().is_some_and(|s| s.index != shard.index)
                && (o.shard.as_ref().is_some_and(|s| s.list_sha256 == shard.list_sha256) || o.tensors == h.tensors)
        });
        if let Some((other, _)) = copy {
            return Err(bad(
                path,
                format!(
                    "holds the same images or the same statistics as {} under another shard number: one shard \
                     copied, not two shards",
                    other.display()
                ),
            ));
        }
        if shard.count != count {
            return Err(bad(
                path,
                format!("is shard {}/{} but {} is of {count} shards", shard.index, shard.count, first_path.display()),
            ));
        }
        let slot = shard
            .index
            .checked_sub(1)
            .and_then(|i| seen.get_mut(i))
            .ok_or_else(|| bad(path, format!("shard number {} is outside 1..{count}", shard.index)))?;
        if let Some(other) = slot {
            return Err(bad(
                path,
                format!(
                    "shard {}/{count} is given twice (also {}): shards would overlap",
                    shard.index,
                    other.display()
                ),
            ));
        }
        *slot = Some(path.as_path());
        let same = |what: &str, a: String, b: String| {
            if a == b {
                Ok(())
            } else {
                Err(bad(
                    path,
                    format!(
                        "{what} differs from {}'s ({b} here, {a} there): shards of one calibration only",
                        first_path.display()
                    ),
                ))
            }
        };
        // The image list's identity, without the per-shard counts.
        let list = |i: &ImagesInfo| {
            let sizes: Vec<[u32; 2]> = i.sizes.iter().map(|s| s.size).collect();
            (i.folder.clone(), i.limit, i.seed, i.list_sha256.clone(), i.held_out.clone(), sizes, i.sizes_dealt)
        };
        let whole_list = |h: &HistFile| h.shard.as_ref().and_then(|s| s.whole_list_sha256.clone());
        same("the model", json(&first.model), json(&h.model))?;
        same("the recipe", json(&first.recipe), json(&h.recipe))?;
        same("the .npz arrays", json(&first.arrays), json(&h.arrays))?;
        same("the image list", json(&list(&first.images)), json(&list(&h.images)))?;
        same("the whole image list", json(&whole_list(first)), json(&whole_list(h)))?;
        same("the collection (--tensors)", first.collected.name().into(), h.collected.name().into())?;
        same("the ONNX Runtime version", first.onnxruntime.clone(), h.onnxruntime.clone())?;
        same("the histogram layout", json(&first.histogram), json(&h.histogram))?;
        same("the smoothing", json(&first.smoothing), json(&h.smoothing))?;
        same("the depthwise equalization", json(&first.equalization), json(&h.equalization))?;
        same("the format version", first.version.to_string(), h.version.to_string())?;
        let names = |h: &HistFile| {
            h.tensors.iter().map(|t| format!("{}<{:?}", t.name, t.producer)).collect::<Vec<_>>().join(",")
        };
        if names(first) != names(h) {
            return Err(bad(path, format!("holds other tensors than {}", first_path.display())));
        }
    }
    if let Some(missing) = seen.iter().position(Option::is_none) {
        return Err(bad(
            first_path,
            format!("shard {}/{count} is missing: every shard is needed for the whole list", missing + 1),
        ));
    }
    // Checked sums: a count beyond 2^64 is an error, never a wrap. Every bin is at most its tensor's count,
    // so once the counts add up, the bins do too.
    let overflow = |what: &str| bad(first_path, format!("the shards' {what} add up beyond 2^64"));
    let sum = |f: &dyn Fn(&HistFile) -> u64| parts.iter().try_fold(0u64, |s, (_, h)| s.checked_add(f(h)));
    let mut merged = HistFile { content_sha256: None, shard: None, ..first.clone() };
    merged.images.count = sum(&|h| h.images.count).ok_or_else(|| overflow("image counts"))?;
    merged.images.skipped = sum(&|h| h.images.skipped).ok_or_else(|| overflow("skipped counts"))?;
    if first.images.samples_sha256.is_some() {
        let mut samples = crate::SamplesDigest::default();
        for (path, h) in parts {
            let digest = h.images.samples_sha256.as_deref().and_then(crate::SamplesDigest::from_hex);
            samples.add(&digest.ok_or_else(|| bad(path, "its images.samples_sha256 is not 64 hex digits".into()))?);
        }
        merged.images.samples_sha256 = Some(samples.to_hex());
    }
    for k in 0..first.images.sizes.len() {
        merged.images.sizes[k].count =
            sum(&|h| h.images.sizes[k].count).ok_or_else(|| overflow("image counts per size"))?;
    }
    for i in 0..first.tensors.len() {
        sum(&|h| h.tensors[i].stats.elements().unwrap_or(u64::MAX)).ok_or_else(|| overflow("value counts"))?;
        // A fed input's values per image are the same in every shard (every image at every size counts the
        // same values too; sizes dealt give each shard its own mixture).
        if first.tensors[i].producer.is_none() && !first.images.sizes_dealt {
            let per_image = |h: &HistFile| {
                (h.images.count > 0).then(|| h.tensors[i].stats.elements().unwrap_or(0) / h.images.count)
            };
            let rates: Vec<(usize, u64)> =
                parts.iter().enumerate().filter_map(|(k, (_, h))| per_image(h).map(|r| (k, r))).collect();
            if let Some((k, _)) = rates.iter().find(|(_, r)| Some(*r) != rates.first().map(|f| f.1)) {
                return Err(bad(
                    &parts[*k].0,
                    format!(
                        "its fed input '{}' holds another number of values per image than {}'s",
                        first.tensors[i].name,
                        first_path.display()
                    ),
                ));
            }
        }
    }
    for (_, h) in &parts[1..] {
        for (m, t) in merged.tensors.iter_mut().zip(&h.tensors) {
            m.stats.merge(&t.stats);
        }
    }
    Ok(merged)
}

/// The lowest shard number from 1 that `given` lacks: which shard is missing when a shard count exceeds the
/// files given, found without allocating anything of the (untrusted) count.
pub fn first_missing_shard(given: impl Iterator<Item = usize>) -> usize {
    let mut given: Vec<usize> = given.collect();
    given.sort_unstable();
    given.dedup();
    (1..).zip(given.iter().chain(std::iter::repeat(&0))).find(|(i, g)| i != *g).map_or(1, |(i, _)| i)
}

/// A value as compact JSON, to compare the parts of two .hist files that must agree and to show them.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// One tensor's statistics are what the histogram rules produce: counts add up, min <= max, the range is the
/// smallest power of two above max |x|, and the highest non-empty bin is the one max |x| falls in.
fn check_stats(s: &TensorStats) -> Result<(), String> {
    let Some(total) = s.hist.checked_total() else {
        return Err("its bin counts add up beyond 2^64".into());
    };
    if s.elements().is_none() {
        return Err("its value, NaN and Inf counts add up beyond 2^64".into());
    }
    if s.max_only {
        if total != 0 || s.hist.range_exp.is_some() {
            return Err("range-only statistics that hold a histogram".into());
        }
        return match (s.min, s.max) {
            (None, None) if s.count == 0 => Ok(()),
            (Some(lo), Some(hi)) if s.count > 0 && lo.is_finite() && hi.is_finite() && lo <= hi => Ok(()),
            _ => Err(format!("count {} with min {:?} and max {:?}", s.count, s.min, s.max)),
        };
    }
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
