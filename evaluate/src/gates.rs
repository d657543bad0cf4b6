//! The release criteria: what a validation is held to (Top-1 drop, output fidelity, a baseline) and the
//! criteria they give for a comparison. One place for `validate`, its shards' merge and autoprecision's
//! fidelity budget.

use std::path::Path;

use reports::Criterion;
use serde::{Deserialize, Serialize};

use crate::compare::Fidelity;
use crate::EvaluateError;

/// Release criteria on the INT8 model's outputs against FP32's, for embedders and anything without a
/// trustworthy Top-1: each given one is its own criterion (and JUnit case).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FidelityGates {
    /// Mean per-image cosine of the outputs must be at least this (-1 to 1).
    pub min_cosine: Option<f64>,
    /// Output SQNR must be at least this many dB (-100 to 200).
    pub min_sqnr_db: Option<f64>,
    /// Share of images with the same predicted class must be at least this (0 to 1).
    pub min_agreement: Option<f64>,
}

impl FidelityGates {
    /// Refuses limits that are not finite numbers in their range, naming the flag.
    pub fn check(&self) -> Result<(), EvaluateError> {
        for (flag, value, range) in [
            ("--min-cosine", self.min_cosine, -1.0..=1.0),
            ("--min-sqnr", self.min_sqnr_db, -100.0..=200.0),
            ("--min-agreement", self.min_agreement, 0.0..=1.0),
        ] {
            if let Some(v) = value.filter(|v| !range.contains(v)) {
                return Err(EvaluateError::FidelityLimit {
                    flag: flag.into(),
                    value: v,
                    range: format!("{} to {}", range.start(), range.end()),
                });
            }
        }
        Ok(())
    }

    /// Whether any gate is given.
    pub fn any(&self) -> bool {
        self.min_cosine.is_some() || self.min_sqnr_db.is_some() || self.min_agreement.is_some()
    }

    /// The criteria these gates give for measured output fidelity against the reference model, named
    /// `reference` in the messages (`FP32`, or `source (FP16)` for a model given in FP16).
    pub fn criteria(&self, f: &Fidelity, reference: &str) -> Vec<Criterion> {
        let mut out = Vec::new();
        let mut push = |name: &str, what: &str, measured: f64, limit: f64, shown: String| {
            let passed = measured >= limit;
            out.push(Criterion {
                name: name.into(),
                passed,
                measured,
                limit,
                message: format!(
                    "INT8 {what} against {reference} {shown}: {} the minimum {limit}",
                    if passed { "meets" } else { "below" }
                ),
                size: None,
            });
        };
        if let Some(limit) = self.min_cosine {
            push("min-cosine", "output cosine (mean)", f.cosine_mean, limit, format!("{:.6}", f.cosine_mean));
        }
        if let Some(limit) = self.min_sqnr_db {
            push("min-sqnr", "output SQNR", f.sqnr_db, limit, format!("{:.2} dB", f.sqnr_db));
        }
        if let Some(limit) = self.min_agreement {
            push("min-agreement", "agreement", f.agreement, limit, format!("{:.4}", f.agreement));
        }
        out
    }
}

/// What the criteria are held to: the same in every shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// `--max-top1-drop`.
    pub max_top1_drop: Option<f64>,
    /// `--min-cosine`, `--min-sqnr`, `--min-agreement`.
    pub fidelity: FidelityGates,
    /// With `--baseline`: the baseline's INT8 Top-1 (share).
    pub baseline_int8_top1: Option<f64>,
}

impl Gates {
    /// The limits in range, as the command line checks them: a part file's gates are refused as the flags
    /// would be (a limit of -1e308 would pass anything).
    pub fn check(&self) -> Result<(), EvaluateError> {
        if let Some(limit) = self.max_top1_drop {
            crate::check_limit("--max-top1-drop", limit)?;
        }
        self.fidelity.check()?;
        if let Some(top1) = self.baseline_int8_top1.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(EvaluateError::Input {
                path: "--baseline".into(),
                message: format!("its INT8 Top-1 {top1} is not a share from 0 to 1"),
            });
        }
        Ok(())
    }

    /// The criteria for `comparison` (the reference model, named `reference` in the messages, against INT8) on
    /// the folder `val`. A Top-1 gate without a measured Top-1 is an error, never a pass.
    pub fn criteria(
        &self,
        comparison: &reports::Comparison,
        val: &Path,
        reference: &str,
    ) -> Result<Vec<Criterion>, EvaluateError> {
        let top1 = |m: &reports::ModelMetrics, what: &str| {
            m.top1.ok_or_else(|| EvaluateError::Input {
                path: val.to_path_buf(),
                message: format!("no Top-1 was measured for {what} (no labelled images)"),
            })
        };
        let mut criteria = Vec::new();
        if let Some(limit) = self.max_top1_drop {
            let (fp32_top1, int8_top1) = (top1(&comparison.fp32, reference)?, top1(&comparison.int8, "INT8")?);
            let drop_pp = 100.0 * (fp32_top1 - int8_top1);
            let passed = drop_pp <= limit;
            criteria.push(Criterion {
                name: "max-top1-drop".into(),
                passed,
                measured: drop_pp,
                limit,
                message: format!(
                    "INT8 Top-1 {:.2} % vs {reference} {:.2} %: drop {drop_pp:.2} pp {} the allowed {limit} pp",
                    100.0 * int8_top1,
                    100.0 * fp32_top1,
                    if passed { "within" } else { "exceeds" }
                ),
                size: None,
            });
        }
        criteria.extend(self.fidelity.criteria(&crate::compare::fidelity_of(comparison), reference));
        if let Some(baseline_top1) = self.baseline_int8_top1 {
            let tolerance = self.max_top1_drop.unwrap_or(0.0).max(0.0);
            let floor = 100.0 * baseline_top1 - tolerance;
            let measured = 100.0 * top1(&comparison.int8, "INT8")?;
            let passed = measured >= floor;
            criteria.push(Criterion {
                name: "baseline".into(),
                passed,
                measured,
                limit: floor,
                message: format!(
                    "INT8 Top-1 {measured:.2} % vs baseline {:.2} % (tolerance {tolerance} pp): {}",
                    floor + tolerance,
                    if passed { "not below" } else { "below the baseline" }
                ),
                size: None,
            });
        }
        Ok(criteria)
    }

    /// [`Gates::criteria`] of one input size of several: each criterion names the size it holds at.
    pub fn criteria_at(
        &self,
        comparison: &reports::Comparison,
        val: &Path,
        size: [u32; 2],
        reference: &str,
    ) -> Result<Vec<Criterion>, EvaluateError> {
        let mut criteria = self.criteria(comparison, val, reference)?;
        for c in &mut criteria {
            c.size = Some(size);
            c.message = format!("at {}x{}: {}", size[0], size[1], c.message);
        }
        Ok(criteria)
    }
}
