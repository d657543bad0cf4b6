//! `autoprecision` end to end: the greedy deny-list search on a subset, the artifacts built with its list,
//! and the verification of that INT8 model on the whole folder.

use std::path::{Path, PathBuf};

use datasets::Dataset;
use quantizer::{Quantizer, Scheme};

use crate::compare::{compare, ort_model};
use crate::sensitivity::{auto_precision_with, AutoPrecision, Budget, SensitivityInputs};
use crate::EvaluateError;

/// What `autoprecision` runs on beyond the sensitivity inputs (whose dataset is the search subset).
#[derive(Debug, Clone)]
pub struct AutoPrecisionConfig {
    /// The measured model, statistics, search subset and configuration.
    pub inputs: SensitivityInputs,
    /// The whole folder, for the verification.
    pub verify_on: Dataset,
    /// What the INT8 model must meet against FP32.
    pub budget: Budget,
    /// Output folder.
    pub out: PathBuf,
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct AutoPrecisionOutcome {
    /// The search and its sensitivity ranking.
    pub search: AutoPrecision,
    /// With the budget met on the subset: the verification on the whole folder.
    pub verification: Option<Verification>,
}

/// The chosen configuration's INT8 model against FP32 on the whole folder.
#[derive(Debug, Clone)]
pub struct Verification {
    /// FP32 against INT8 (Top-1 only on a labelled folder).
    pub comparison: reports::Comparison,
    /// Share of GEMM/Conv FLOPs in INT8.
    pub int8_flop_share: f64,
}

impl Verification {
    /// FP32 Top-1 minus INT8 Top-1, percentage points (`None` without labels).
    pub fn drop_pp(&self) -> Option<f64> {
        let c = &self.comparison;
        Some(100.0 * (c.fp32.top1? - c.int8.top1?))
    }

    /// The comparison in the search's terms, for the budget.
    fn effect(&self) -> crate::sensitivity::Effect {
        let c = &self.comparison;
        crate::sensitivity::Effect {
            top1: c.int8.top1,
            top1_delta_pp: self.drop_pp().map(|d| -d),
            agreement: c.agreement,
            divergence: 1.0 - c.cosine_mean,
            cosine_mean: c.cosine_mean,
            sqnr_db: c.sqnr_db,
        }
    }
}

impl AutoPrecisionOutcome {
    /// Whether the budget was met on the subset and on the whole folder.
    pub fn met(&self, budget: &Budget) -> bool {
        self.search.met && self.verification.as_ref().is_some_and(|v| budget.met(&v.effect(), v.comparison.images))
    }
}

/// Searches, writes `autoprecision.json`, and when the subset meets the budget also `precision.toml` and the
/// artifacts built with it, then verifies that model on the whole folder. The set replaces `out` whole.
pub fn run(
    config: &AutoPrecisionConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<AutoPrecisionOutcome, EvaluateError> {
    let inputs = &config.inputs;
    let quantizer = Quantizer::load(&inputs.model, inputs.hist.clone())?;
    let search = auto_precision_with(&quantizer, inputs, &config.budget, progress)?;
    let stage = safe_io::OutputDir::new(&config.out)?;
    let out = stage.path();
    safe_io::write_atomic(&out.join("autoprecision.json"), &crate::pretty_json(&search)?)?;
    if !search.met {
        stage.commit()?;
        return Ok(AutoPrecisionOutcome { search, verification: None });
    }
    let precision_path = config.out.join("precision.toml");
    safe_io::write_atomic(&out.join("precision.toml"), search.precision.to_toml().as_bytes())?;
    let scheme = Scheme {
        precision: search.precision.clone(),
        precision_origin: precision_path.display().to_string(),
        ..search.scheme.clone()
    };
    let analysis = quantizer.artifacts(&scheme)?;
    analysis.write(out)?;
    let comparison = verify(&inputs.model, &out.join("model.qdq.onnx"), config)?;
    stage.commit()?;
    Ok(AutoPrecisionOutcome {
        search,
        verification: Some(Verification { comparison, int8_flop_share: analysis.ranges.int8_flop_share }),
    })
}

fn verify(
    fp32_path: &Path,
    int8_path: &Path,
    config: &AutoPrecisionConfig,
) -> Result<reports::Comparison, EvaluateError> {
    let inputs = &config.inputs;
    let placement = runtime::Placement { threads: inputs.threads, device: inputs.device.first() };
    let mut fp32 = ort_model(fp32_path, &inputs.feed, placement)?;
    let mut int8 = ort_model(int8_path, &inputs.feed, placement)?;
    compare(fp32.as_mut(), int8.as_mut(), &config.verify_on, &inputs.feed, &inputs.classifier, &mut |_, _| {})
}
