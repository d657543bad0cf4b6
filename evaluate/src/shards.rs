//! Validation in shards: `validate --shard I/N --partial-out P.json` evaluates the I-th of N contiguous parts
//! of the validation list and writes what the report needs from it (integer counts, every image's fidelity
//! share, its seconds, the gates); [`merge`] joins the N parts into the report one process would write (every
//! number the same; only the speeds, which each shard measures, differ, and each shard's is kept).

use std::path::{Path, PathBuf};

use histograms::ShardInfo;
use reports::{FloatRow, Report, ShardSpeed};
use serde::{Deserialize, Serialize};

use crate::compare::ComparisonParts;
use crate::gates::Gates;
use crate::EvaluateError;

/// The `format` of a partial file.
pub const PART_FORMAT: &str = "int8kit.validate-part";
/// Its version.
pub const PART_VERSION: u32 = 1;

/// A shard's part of a validation (`P.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidatePart {
    /// Always [`PART_FORMAT`].
    pub format: String,
    /// [`PART_VERSION`].
    pub version: u32,
    /// Which part of the validation list (its `list_sha256` is this part's; the report's
    /// `validation_list_sha256` is the whole list's).
    pub shard: ShardInfo,
    /// The gates.
    pub gates: Gates,
    /// Counts, every image's fidelity share and seconds, for INT8 and then (if any) the FP16 row.
    pub parts: ComparisonParts,
    /// The report of this shard's images alone: everything but the comparison, criteria and speeds is the
    /// whole run's.
    pub report: Report,
}

impl ValidatePart {
    /// Reads a part, checking its format and version.
    pub fn read(path: &Path) -> Result<ValidatePart, EvaluateError> {
        let bad = |message: String| EvaluateError::Input { path: path.to_path_buf(), message };
        let text = safe_io::read_to_string(path, safe_io::limits::JSON, "a validation part")?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(PART_FORMAT) {
            return Err(bad(format!("format is not \"{PART_FORMAT}\": not written by validate --partial-out")));
        }
        match value.get("version") {
            Some(v) if v.as_u64() == Some(PART_VERSION as u64) => {}
            Some(v) => {
                return Err(bad(format!(
                    "validation part version {v} is not supported (this int8kit reads version {PART_VERSION})"
                )))
            }
            None => return Err(bad("a validation part without a version".into())),
        }
        let part: ValidatePart =
            serde_json::from_value(value).map_err(|e| bad(format!("not a valid validation part: {e}")))?;
        part.check().map_err(|m| bad(format!("an impossible validation part ({m}): it was edited or damaged")))?;
        Ok(part)
    }

    /// What every part `validate --partial-out` writes satisfies; a part that breaks one could flip a merged
    /// verdict.
    pub fn check(&self) -> Result<(), String> {
        let s = &self.shard;
        if s.index == 0 || s.index > s.count {
            return Err(format!("shard {}/{} is not a shard number from 1 to {}", s.index, s.count, s.count));
        }
        self.gates.check().map_err(|e| format!("gates: {e}"))?;
        self.parts.check(self.report.classes.len())?;
        if self.report.comparison.images != self.parts.images {
            return Err(format!(
                "its report counts {} images, its parts {}",
                self.report.comparison.images, self.parts.images
            ));
        }
        if self.parts.images == 0 {
            return Err("no images".into());
        }
        Ok(())
    }

    /// The bytes: pretty JSON with a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>, EvaluateError> {
        crate::pretty_json(self)
    }
}

/// Whether a file is a validation part (by its `format`), so that `int8kit merge` can tell parts from `.hist`s.
pub fn is_part(path: &Path) -> bool {
    safe_io::read_to_string(path, safe_io::limits::JSON, "a validation part")
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("format").and_then(|f| f.as_str()) == Some(PART_FORMAT))
}

/// The report fields every shard must share: the report without what each shard measures.
fn shared(report: &Report) -> Result<serde_json::Map<String, serde_json::Value>, EvaluateError> {
    let value = serde_json::to_value(report).map_err(EvaluateError::Encode)?;
    let mut map = match value {
        serde_json::Value::Object(m) => m,
        _ => Default::default(),
    };
    for measured in ["comparison", "fp16", "criteria", "passed", "calibration_seconds", "shards"] {
        map.remove(measured);
    }
    Ok(map)
}

/// Joins the parts of one validation into its report. Refused, naming the file: parts of another model,
/// configuration, image list or gates; a part given twice; a missing part; a part count that is not the
/// shards'.
pub fn merge(parts: &[(PathBuf, ValidatePart)]) -> Result<Report, EvaluateError> {
    let bad = |path: &Path, message: String| EvaluateError::Input { path: path.to_path_buf(), message };
    let Some((first_path, first)) = parts.first() else {
        return Err(EvaluateError::Input { path: PathBuf::from("."), message: "no part to merge".into() });
    };
    let count = first.shard.count;
    let reference = shared(&first.report)?;
    // Every part once: a count beyond the files given is a missing part, found without allocating `count`.
    if count > parts.len() {
        let missing = histograms::first_missing_shard(parts.iter().map(|(_, p)| p.shard.index));
        return Err(bad(
            first_path,
            format!(
                "shard {}/{count} is missing: every part 1 to {count} is needed for the whole list ({} given)",
                missing,
                parts.len()
            ),
        ));
    }
    let mut slots: Vec<Option<&(PathBuf, ValidatePart)>> = vec![None; count];
    for (k, entry) in parts.iter().enumerate() {
        let (path, part) = entry;
        part.check().map_err(|m| bad(path, format!("an impossible validation part ({m})")))?;
        if let Some((other, _)) = parts[..k].iter().find(|(_, o)| {
            o.shard.index != part.shard.index
                && (o.parts == part.parts || o.shard.list_sha256 == part.shard.list_sha256)
        }) {
            return Err(bad(
                path,
                format!(
                    "holds the same images as {} under another shard number: one part copied, not two parts",
                    other.display()
                ),
            ));
        }
        if part.shard.count != count || part.shard.index == 0 || part.shard.index > count {
            return Err(bad(
                path,
                format!(
                    "shard {}/{} does not belong with {}'s {count} shards",
                    part.shard.index,
                    part.shard.count,
                    first_path.display()
                ),
            ));
        }
        if let Some((other, _)) = slots[part.shard.index - 1] {
            return Err(bad(
                path,
                format!(
                    "shard {}/{count} is given twice (also {}): parts would overlap",
                    part.shard.index,
                    other.display()
                ),
            ));
        }
        slots[part.shard.index - 1] = Some(entry);
        if part.gates != first.gates {
            return Err(bad(
                path,
                format!("its gates differ from {}'s: parts of one validation only", first_path.display()),
            ));
        }
        let here = shared(&part.report)?;
        // What identifies a run first (the clearest message), then everything else.
        let first_keys = ["model_sha256", "validation_list_sha256", "recipe", "method", "precision", "target"];
        let keys = first_keys.iter().map(|k| k.to_string()).chain(reference.keys().chain(here.keys()).cloned());
        if let Some(key) = keys.into_iter().find(|k| reference.get(k) != here.get(k)) {
            return Err(bad(
                path,
                format!(
                    "its `{key}` differs from {}'s (another model, configuration or image list): parts of one \
                     validation only",
                    first_path.display()
                ),
            ));
        }
    }
    if let Some(missing) = slots.iter().position(Option::is_none) {
        return Err(bad(
            first_path,
            format!("shard {}/{count} is missing: every part 1 to {count} is needed for the whole list", missing + 1),
        ));
    }
    let ordered: Vec<&(PathBuf, ValidatePart)> = slots.into_iter().flatten().collect();
    let joined =
        ComparisonParts::join(&ordered.iter().map(|(_, p)| &p.parts).collect::<Vec<_>>()).ok_or_else(|| {
            bad(first_path, "the parts do not add up (other candidates or classes, or counts that overflow)".into())
        })?;
    let val = PathBuf::from(&first.report.validation_folder);
    let mut comparisons = joined.finish(&val)?;
    let fp16 = (comparisons.len() > 1).then(|| comparisons.pop()).flatten().map(|c| FloatRow {
        float_type: first.report.fp16.as_ref().map_or("fp16".into(), |f| f.float_type.clone()),
        metrics: c.int8,
        agreement: c.agreement,
        cosine_mean: c.cosine_mean,
        sqnr_db: c.sqnr_db,
    });
    let comparison =
        comparisons.into_iter().next().ok_or_else(|| bad(first_path, "no comparison in the parts".into()))?;
    let criteria = first.gates.criteria(&comparison, &val, &first.report.reference_label())?;
    let shards = ordered
        .iter()
        .map(|(_, p)| ShardSpeed {
            index: p.shard.index,
            images: p.report.comparison.images,
            fp32_images_per_s: p.report.comparison.fp32.images_per_s,
            int8_images_per_s: p.report.comparison.int8.images_per_s,
        })
        .collect();
    Ok(Report {
        passed: criteria.iter().all(|c| c.passed),
        calibration_seconds: ordered.iter().map(|(_, p)| p.report.calibration_seconds).fold(0.0, f64::max),
        comparison,
        fp16,
        criteria,
        shards,
        // Each shard's per-shape rows are of its own samples: a merged report has the pooled rows only.
        shapes: Vec::new(),
        ..first.report.clone()
    })
}
