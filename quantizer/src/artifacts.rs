//! The artifacts of one built INT8 model, in memory and on disk: `model.qdq.onnx`, `ranges.json`,
//! `ranges.csv` and, from statistics of every activation, TensorRT's `calibration.cache` (formats in FORMATS.md).

use std::path::Path;

use graph::Model;
use histograms::ModelInfo;
use placement::{lint, Decision, PrecisionFile, Target};
use serde::Serialize;

use crate::QuantizeError;

/// The `format` value of ranges.json.
pub const RANGES_FORMAT: &str = "int8kit.ranges";
/// The ranges.json version; bump on any incompatible change. Version 5 ranks the search's trials by their
/// mean per-sample SQNR (`mean_sample_sqnr_db`, new; `worst_shape_sqnr_db` and `gap_standard_error_db` now of
/// that). Version 4 added `self_check`, `chosen_by` and
/// `search`; version 3 added `smoothing` and the weights'
/// `clip` and `clip_ratio_min`.
pub const RANGES_VERSION: u32 = 5;

/// One activation's range.
#[derive(Debug, Clone, Serialize)]
pub struct TensorRange {
    /// Tensor name.
    pub name: String,
    /// Op type of its producer (`None` for a graph input).
    pub op: Option<String>,
    /// Whether a Q/DQ pair reads it.
    pub quantized: bool,
    /// The method this tensor's amax came from.
    pub method: String,
    /// The clipping threshold.
    pub amax: f32,
    /// The Q/DQ scale as the model stores it: amax / 127, kept within the scale type's normal range and
    /// rounded to it (`qdq::stored_scale`).
    pub scale: f32,
    /// Share of values beyond amax (from the histogram).
    pub clipped: f64,
    /// amax under every method, keyed by method name.
    pub amax_by_method: Vec<(String, f32)>,
}

/// One GEMM/Conv (or listed) node's precision.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// The decision and its reason.
    #[serde(flatten)]
    pub decision: Decision,
    /// FLOPs for one image (GEMM/Conv nodes).
    pub flops: Option<f64>,
}

/// A weight's per-channel ranges.
#[derive(Debug, Clone, Serialize)]
pub struct WeightRange {
    /// Initializer name.
    pub name: String,
    /// Channel axis of the scales.
    pub axis: usize,
    /// Number of channels.
    pub channels: usize,
    /// Smallest channel amax.
    pub amax_min: f32,
    /// Largest channel amax.
    pub amax_max: f32,
    /// How the channels' amax was chosen: `max`, or `mse` when the search clipped a channel.
    pub clip: &'static str,
    /// With `mse`: the smallest channel amax as a share of that channel's max |w| (1 when nothing was
    /// clipped).
    pub clip_ratio_min: f32,
}

/// `ranges.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Ranges {
    /// Always [`RANGES_FORMAT`].
    pub format: &'static str,
    /// [`RANGES_VERSION`].
    pub version: u32,
    /// The model the statistics belong to.
    pub model: ModelInfo,
    /// Calibration images behind the statistics.
    pub calibration_images: u64,
    /// The global scale method.
    pub method: String,
    /// The precision lists applied.
    pub precision: PrecisionFile,
    /// The runtime the Q/DQ placement is for (`tensorrt` or `onnxruntime`).
    pub target: &'static str,
    /// `--attention` when given (`int8` or `float`); otherwise the precision file's, then the target's.
    pub attention: Option<placement::AttentionPrecision>,
    /// The residual input of Adds after an INT8 GEMM/Conv: `int8` (quantized, so the Add fuses) or `float`.
    pub residual: &'static str,
    /// The float type of the parts that are not INT8 (`fp32` or `fp16`).
    pub float_type: &'static str,
    /// How weight clips were chosen: `max`, `mse`, or `auto` (per node, from a sensitivity.json).
    pub weight_clip: &'static str,
    /// Share of GEMM/Conv FLOPs that run in INT8.
    pub int8_flop_share: f64,
    /// Per node, the decision.
    pub nodes: Vec<NodeReport>,
    /// Per activation, the range.
    pub tensors: Vec<TensorRange>,
    /// Per quantized weight, the channel ranges.
    pub weights: Vec<WeightRange>,
    /// With a .hist from `calibrate --smooth`: what was smoothed (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoothing: Option<smoothquant::Smoothing>,
    /// With a .hist of a model with depthwise Convs: which inputs were equalized, and by how much (absent
    /// otherwise; added after version 5 without a bump: readers that ignore it read the rest as before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equalization: Option<smoothquant::Equalization>,
    /// How the method, attention precision and float type above were chosen: `measurement` (the `search`
    /// below), `flags` (all given), or `defaults` (`auto` asked, but there was nothing to measure on).
    pub chosen_by: &'static str,
    /// The written model measured against the float model on samples the statistics never saw.
    pub self_check: SelfCheck,
    /// The `auto` search: what was tried, measured, and why the winner won (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<crate::search::SearchRecord>,
    /// How the INT8 weights were rounded when held-in samples were at hand (`quantize`): GPTQ or nearest, and
    /// why (absent when nearest rounding was the only choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_rounding: Option<crate::rounding::RoundingRecord>,
}

/// What a run measured of the model it wrote (ranges.json `self_check`).
#[derive(Debug, Clone, Serialize)]
pub struct SelfCheck {
    /// `measured` or `skipped`.
    pub status: &'static str,
    /// The samples: which, and how many.
    pub samples: String,
    /// Agreement, cosine and SQNR of the written model's measured output against the float model's.
    pub fidelity: Option<crate::measure::Fidelity>,
    /// How ONNX Runtime ran the written model (graph optimizations off for FP16 graphs).
    pub evaluation: Option<String>,
    /// The graph output compared (the first float one) and how many outputs the graph has; absent when
    /// skipped. Added within version 4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<MeasuredOutput>,
}

/// Which graph output a measurement compares.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeasuredOutput {
    /// Its name.
    pub name: String,
    /// How many outputs the graph has (the others are not compared).
    pub of: usize,
}

impl SelfCheck {
    /// Nothing measured, and why.
    pub fn skipped(why: impl Into<String>) -> SelfCheck {
        SelfCheck { status: "skipped", samples: why.into(), fidelity: None, evaluation: None, output: None }
    }
}

impl Ranges {
    /// ranges.json's bytes: pretty JSON and a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>, QuantizeError> {
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|source| QuantizeError::Json { file: "ranges.json", source })?;
        json.push(b'\n');
        Ok(json)
    }
}

/// TensorRT's implicit-INT8 calibration cache (TensorRT 8 and 10; TensorRT 11 takes only the Q/DQ model).
#[derive(Debug, Clone, PartialEq)]
pub enum Cache {
    /// The cache text: a range for every float activation of the model.
    Written(String),
    /// Not written, and why: the statistics do not cover every activation. TensorRT falls back to float for
    /// any layer with a tensor lacking a range, and which tensors its fused layers keep cannot be predicted
    /// from the ONNX graph, so a partial cache would silently lose INT8 layers.
    Omitted {
        /// Why, and what to do.
        reason: String,
    },
}

/// Everything one build produces, in memory.
pub struct Artifacts<'q> {
    /// ranges.json's contents.
    pub ranges: Ranges,
    /// The Q/DQ model.
    pub qdq: graph::proto::ModelProto,
    /// The TensorRT calibration cache, or why it is not written.
    pub cache: Cache,
    /// The FP32 model it was built from (for writing external data).
    pub model: &'q Model,
    /// With statistics over several input sizes: the TensorRT optimisation profile (`profile.json`).
    pub profile: Option<crate::profile::EngineProfile>,
}

impl Artifacts<'_> {
    /// Writes the artifacts into `dir` (each through a temporary file and a rename): model.qdq.onnx,
    /// ranges.json, ranges.csv, when the statistics cover every activation calibration.cache, and with several
    /// input sizes profile.json. The Q/DQ
    /// model is linted first: with an error nothing is written ([`QuantizeError::Lint`]); warnings are logged
    /// and returned.
    pub fn write(&self, dir: &Path) -> Result<Vec<lint::Finding>, QuantizeError> {
        let findings = lint::lint_proto(&self.qdq, self.model)?;
        let (errors, warnings): (Vec<_>, Vec<_>) =
            findings.into_iter().partition(|f| f.severity == lint::Severity::Error);
        if !errors.is_empty() {
            return Err(QuantizeError::Lint { path: self.model.path.clone(), errors });
        }
        // The warnings are about TensorRT's fusions: a model placed for ONNX Runtime leaves those out on purpose,
        // and so does a float residual stream its residual Adds (said once, not per Add).
        let for_tensorrt = self.ranges.target == Target::TensorRt.name();
        let float_residual = self.ranges.residual == placement::ResidualPrecision::Float.name();
        let unfused = warnings.iter().filter(|w| w.rule == lint::RESIDUAL_INPUT).count();
        // Ops outside ONNX come with the source model (a transformer optimizer's fused nodes, often dozens):
        // said once, with how many.
        let foreign: Vec<&lint::Finding> = warnings.iter().filter(|w| w.rule == lint::NON_ONNX_OP).collect();
        let said_apart = |w: &lint::Finding| {
            (float_residual && w.rule == lint::RESIDUAL_INPUT) || (foreign.len() > 1 && w.rule == lint::NON_ONNX_OP)
        };
        for w in warnings.iter().filter(|w| for_tensorrt && !said_apart(w)) {
            tracing::warn!("model.qdq.onnx: warning[{}] {}: {}", w.rule, w.node, w.message);
        }
        if let (true, [first, _, ..]) = (for_tensorrt, foreign.as_slice()) {
            tracing::warn!(
                "model.qdq.onnx: warning[{}] {} nodes, the first {}: {} (`int8kit lint` lists them all)",
                first.rule,
                foreign.len(),
                first.node,
                first.message
            );
        }
        if for_tensorrt && float_residual && unfused > 0 {
            tracing::info!(
                "model.qdq.onnx: {unfused} residual Adds keep a float residual stream (residual float): TensorRT runs \
                 them as layers of their own instead of fusing them into the GEMM/Conv before them"
            );
        }
        std::fs::create_dir_all(dir).map_err(|source| QuantizeError::Io { path: dir.into(), source })?;
        graph::save_model(self.model, self.qdq.clone(), &dir.join("model.qdq.onnx"))?;
        if let Cache::Written(text) = &self.cache {
            safe_io::write_atomic(&dir.join("calibration.cache"), text.as_bytes())?;
        }
        safe_io::write_atomic(&dir.join("ranges.json"), &self.ranges.to_json()?)?;
        safe_io::write_atomic(&dir.join("ranges.csv"), &self.ranges_csv()?)?;
        if let Some(profile) = &self.profile {
            safe_io::write_atomic(&dir.join("profile.json"), &profile.to_json()?)?;
        }
        Ok(warnings)
    }

    /// ranges.csv's bytes.
    pub fn ranges_csv(&self) -> Result<Vec<u8>, QuantizeError> {
        let err = |source: csv::Error| QuantizeError::Csv { file: "ranges.csv", source };
        let mut w = csv::Writer::from_writer(Vec::new());
        let method_names: Vec<String> = self
            .ranges
            .tensors
            .first()
            .map(|t| t.amax_by_method.iter().map(|(m, _)| format!("amax_{m}")).collect())
            .unwrap_or_default();
        let mut header = vec![
            "tensor".to_string(),
            "op".into(),
            "quantized".into(),
            "method".into(),
            "amax".into(),
            "scale".into(),
            "clipped_share".into(),
        ];
        header.extend(method_names);
        w.write_record(&header).map_err(err)?;
        for t in &self.ranges.tensors {
            let mut row = vec![
                safe_io::csv_text(&t.name).into_owned(),
                safe_io::csv_text(t.op.as_deref().unwrap_or_default()).into_owned(),
                t.quantized.to_string(),
                t.method.clone(),
                t.amax.to_string(),
                t.scale.to_string(),
                format!("{:.6e}", t.clipped),
            ];
            row.extend(t.amax_by_method.iter().map(|(_, a)| a.to_string()));
            w.write_record(&row).map_err(err)?;
        }
        w.into_inner().map_err(|e| err(e.into_error().into()))
    }
}
