//! Turns calibration histograms into INT8 scales, precision decisions and deployment artifacts:
//! `model.qdq.onnx`, `calibration.cache`, `ranges.csv`, `ranges.json` (formats in FORMATS.md).

#![forbid(unsafe_code)]

pub mod cache;
pub mod float_type;
pub mod flops;
pub mod lint;
pub mod qdq;
pub mod scales;
#[cfg(test)]
mod test_models;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use graph::Model;
use histograms::{HistFile, ModelInfo, TensorRecord};
use serde::Serialize;

use crate::scales::Method;
pub use placement::{self, PrecisionFile, Target};
use placement::{Decision, PlacementOptions};

/// Errors of `analyze`; each names the model, tensor, node or file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// The model could not be read, rewritten or written.
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    /// An output could not be written safely.
    #[error(transparent)]
    Output(#[from] safe_io::WriteError),
    /// The `.hist` file could not be read.
    #[error(transparent)]
    Hist(#[from] histograms::HistError),
    /// ONNX Runtime failed (FLOP counting runs the model on one image).
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// A file could not be read safely (missing, not a regular file, too large).
    #[error(transparent)]
    Input(#[from] safe_io::ReadError),
    /// A file or folder could not be read or created.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The model does not fit the statistics or cannot be quantized as asked.
    #[error("{path}: {message}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Re-applying the .hist's smoothing failed.
    #[error(transparent)]
    Smooth(#[from] smoothquant::SmoothError),
    /// The precision lists or the placement failed.
    #[error(transparent)]
    Placement(#[from] placement::PlacementError),
    /// A calibration cache line is malformed.
    #[error("{path}, line {line}: {message}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// `--trt-version` is not a TensorRT release number.
    #[error("TensorRT version '{0}': expected MAJOR.MINOR[.PATCH] of a TensorRT release, such as 8.6.1 or 10.3.0 (before TensorRT 10 a one-digit minor)")]
    TrtVersion(String),
    /// A tensor name cannot be written into the calibration cache.
    #[error("tensor {0:?} has a line break or another control character in its name, which TensorRT's calibration cache (one tensor per line) cannot hold; rename the tensor in the model")]
    CacheName(String),
    /// The Q/DQ model built would break TensorRT's rules ([`lint`]): nothing is written.
    #[error("{}: the Q/DQ model built for it breaks {} of TensorRT's rules, so nothing was written (a bug in int8kit: please report it with the model's opset and these lines):{}", path.display(), errors.len(), errors.iter().map(|f| format!("\n  error[{}] {}: {} (rule: {})", f.rule, f.node, f.message, f.source)).collect::<String>())]
    Lint {
        /// The model the artifacts are for.
        path: PathBuf,
        /// The errors, each naming the node and the rule.
        errors: Vec<lint::Finding>,
    },
    /// A CSV artifact could not be encoded.
    #[error("cannot encode {file}: {source}")]
    Csv {
        /// The artifact's file name.
        file: &'static str,
        /// The CSV writer's error.
        source: csv::Error,
    },
    /// A JSON artifact could not be encoded.
    #[error("cannot encode {file}: {source}")]
    Json {
        /// The artifact's file name.
        file: &'static str,
        /// The JSON encoder's error.
        source: serde_json::Error,
    },
}

/// The `format` value of ranges.json.
pub const RANGES_FORMAT: &str = "int8kit.ranges";
/// The ranges.json version; bump on any incompatible change. Version 3 added `smoothing` and the weights'
/// `clip` and `clip_ratio_min`.
pub const RANGES_VERSION: u32 = 3;

/// How `analyze` chooses scales and precision.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Scale method for every activation without a per-tensor choice.
    pub method: Method,
    /// Allow/deny lists (default lists when empty).
    pub precision: PrecisionFile,
    /// Where the precision file came from, for messages and the report.
    pub precision_origin: String,
    /// TensorRT version for the cache header.
    pub trt_version: String,
    /// Per-tensor methods that override `method` (from `int8kit sensitivity --choose-methods`).
    pub per_tensor: std::collections::BTreeMap<String, Method>,
    /// Target runtime and attention default for the Q/DQ placement.
    pub placement: PlacementOptions,
    /// How weight channels' amax is chosen, per node.
    pub weight_clip: qdq::WeightClips,
}

/// The TensorRT version written in calibration cache headers unless one is asked for.
pub const DEFAULT_TRT_VERSION: &str = "10.3.0";

impl AnalyzeOptions {
    /// `method` everywhere with the given lists (`origin` names them in messages), the default TensorRT
    /// version in the cache header, no per-tensor methods.
    pub fn new(method: Method, precision: PrecisionFile, origin: impl Into<String>) -> AnalyzeOptions {
        AnalyzeOptions {
            method,
            precision,
            precision_origin: origin.into(),
            trt_version: DEFAULT_TRT_VERSION.into(),
            per_tensor: Default::default(),
            placement: PlacementOptions::default(),
            weight_clip: qdq::WeightClips::default(),
        }
    }
}

/// Ops that models put between a raw image input and the network: a cast, scaling and mean/std, and layout
/// changes. A tensor computed from the image by these alone is still the image.
const PREPROCESSING_OPS: [&str; 10] =
    ["Cast", "Div", "Sub", "Mul", "Add", "Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze"];

/// The preprocessed image: the fed inputs, and every tensor computed from one of them alone (other operands
/// constant) through [`PREPROCESSING_OPS`], as in a model that takes uint8 pixels and normalises in its graph.
pub fn image_tensors(graph: &graph::proto::GraphProto) -> BTreeSet<String> {
    let index = graph::GraphIndex::new(graph);
    let mut image: BTreeSet<String> =
        graph.input.iter().filter(|i| !index.initializers.contains_key(&i.name)).map(|i| i.name.clone()).collect();
    // ONNX graphs are topologically sorted: one pass follows every chain.
    for node in graph.node.iter().filter(|n| PREPROCESSING_OPS.contains(&n.op_type.as_str())) {
        let mut dynamic = node.input.iter().filter(|i| !i.is_empty() && index.constant(graph, i).is_none());
        if let (Some(only), None) = (dynamic.next(), dynamic.next()) {
            if image.contains(only) {
                image.extend(node.output.iter().cloned());
            }
        }
    }
    image
}

/// Softmax outputs and whatever only rearranges them (Reshape, Transpose, ...): attention probabilities in
/// [0, 1], whose few large values are the attention itself. A search clips them: entropy put the fixture
/// ViT's first at 0.28 of a 0.63 max, and INT8 attention then cost the DINOv2 ViT-S/14 0.017 of output
/// cosine (BENCHMARKS.md). Their range is bounded, so max calibration loses little resolution.
pub fn probability_tensors(graph: &graph::proto::GraphProto) -> BTreeSet<String> {
    const REARRANGING: [&str; 6] = ["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"];
    let mut out = BTreeSet::new();
    for node in &graph.node {
        let op = node.op_type.as_str();
        let from_probabilities = REARRANGING.contains(&op) && node.input.first().is_some_and(|i| out.contains(i));
        if op == "Softmax" || from_probabilities {
            out.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    out
}

/// The tensors whose amax is always their max: the image ([`image_tensors`]) and attention probabilities
/// ([`probability_tensors`]).
pub fn max_calibrated(graph: &graph::proto::GraphProto) -> BTreeSet<String> {
    let mut set = image_tensors(graph);
    set.extend(probability_tensors(graph));
    set
}

/// The method a tensor's amax comes from: the image (graph inputs, and the image as preprocessed inside the
/// graph, see [`image_tensors`]) always uses max, since its histogram is a few pixel-value spikes that
/// KL/percentile/MSE searches clip (entropy clipped 29 % of the Fashion-MNIST input), and so do attention
/// probabilities (`fixed` is [`max_calibrated`]); then a per-tensor choice; then the global method.
pub fn tensor_method(
    t: &TensorRecord,
    fixed: &BTreeSet<String>,
    method: Method,
    per_tensor: &std::collections::BTreeMap<String, Method>,
) -> Method {
    if t.producer.is_none() || fixed.contains(&t.name) {
        return Method::Max;
    }
    per_tensor.get(&t.name).copied().unwrap_or(method)
}

/// The deployable Q/DQ model: Q/DQ inserted for `decisions`, then the float parts converted to the
/// options' float type (the calibrated max |x| of each tensor, `max_abs`, keeps overflowing producers in
/// FP32).
pub fn build_qdq(
    model: &Model,
    decisions: &[Decision],
    options: &PlacementOptions,
    amax: &HashMap<String, f32>,
    max_abs: &HashMap<String, f32>,
    weight_clips: &qdq::WeightClips,
) -> Result<(graph::proto::ModelProto, qdq::QdqSummary), AnalyzeError> {
    let float_type = effective_float_type(model, options);
    let (proto, summary) = qdq::insert_qdq(model, decisions, options, amax, weight_clips, float_type)?;
    let proto = float_type::convert(model, proto, float_type, max_abs)?;
    Ok((proto, summary))
}

/// The float type the artifact's non-INT8 parts get: the options', except that a model stored in FP16 stays
/// FP16 (its Q/DQ scales FP16 too).
pub fn effective_float_type(model: &Model, options: &PlacementOptions) -> placement::FloatType {
    if model.low_precision_source {
        placement::FloatType::Fp16
    } else {
        options.float_type
    }
}

/// Calibrated max |x| of every tensor in the statistics.
pub fn max_abs(hist: &HistFile) -> HashMap<String, f32> {
    hist.tensors.iter().map(|t| (t.name.clone(), t.stats.amax())).collect()
}

/// Every activation's amax under [`tensor_method`], for the model whose graph is `graph`.
pub fn activation_amax(
    hist: &HistFile,
    graph: &graph::proto::GraphProto,
    method: Method,
    per_tensor: &std::collections::BTreeMap<String, Method>,
) -> HashMap<String, f32> {
    let image = max_calibrated(graph);
    hist.tensors
        .iter()
        .map(|t| (t.name.clone(), scales::amax(&t.stats, tensor_method(t, &image, method, per_tensor))))
        .collect()
}

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
}

impl Ranges {
    /// ranges.json's bytes: pretty JSON and a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>, AnalyzeError> {
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|source| AnalyzeError::Json { file: "ranges.json", source })?;
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

/// Everything `analyze` produces, in memory.
pub struct Analysis {
    /// ranges.json's contents.
    pub ranges: Ranges,
    /// The Q/DQ model.
    pub qdq: graph::proto::ModelProto,
    /// The TensorRT calibration cache, or why it is not written.
    pub cache: Cache,
    /// The FP32 model it was built from (for writing external data).
    pub model: Model,
}

/// The model a .hist describes, ready for scales: loaded, refused if already quantized or if it is not the
/// model the statistics were collected on, an FP16 model as its float32 twin, and smoothed as calibration
/// smoothed it (`calibrate --smooth`: the statistics are then the smoothed model's), with what smoothing did.
pub fn load_calibrated(
    model_path: &Path,
    hist: &HistFile,
) -> Result<(Model, Option<smoothquant::Smoothing>), AnalyzeError> {
    let mut model = Model::load(model_path)?;
    model.check_not_quantized()?;
    model.normalize_to_float32()?;
    if model.sha256 != hist.model.sha256 {
        return Err(AnalyzeError::Model {
            path: model_path.to_path_buf(),
            message: format!(
                "this model (sha256 {}) is not the one the .hist was calibrated on ({}, sha256 {}); re-run calibrate on it",
                &model.sha256[..12],
                hist.model.file,
                &hist.model.sha256[..12.min(hist.model.sha256.len())]
            ),
        });
    }
    let smoothing = match &hist.smoothing {
        Some(record) => Some(smoothquant::smooth(&mut model, &record.channel_max, record.alpha)?),
        None => None,
    };
    Ok((model, smoothing))
}

/// Computes scales, decides precision, and builds the artifacts.
pub fn analyze(model_path: &Path, hist: &HistFile, options: &AnalyzeOptions) -> Result<Analysis, AnalyzeError> {
    let (model, smoothing) = load_calibrated(model_path, hist)?;
    let decisions =
        placement::decide(&model.proto.graph, &options.precision, &options.placement, &options.precision_origin)?;
    let image = max_calibrated(&model.proto.graph);
    let amax = activation_amax(hist, &model.proto.graph, options.method, &options.per_tensor);
    let (qdq, summary) =
        build_qdq(&model, &decisions, &options.placement, &amax, &max_abs(hist), &options.weight_clip)?;
    let quantized: HashMap<&str, (f32, f32)> =
        summary.activations.iter().map(|(n, a, scale)| (n.as_str(), (*a, *scale))).collect();
    let scale_type = effective_float_type(&model, &options.placement);

    let mut methods: Vec<Method> = Method::ALL_DEFAULT.to_vec();
    if !methods.contains(&options.method) {
        methods.push(options.method);
    }
    let tensors: Vec<TensorRange> = hist
        .tensors
        .iter()
        .map(|t| {
            let (a, scale) = quantized
                .get(t.name.as_str())
                .copied()
                .unwrap_or_else(|| (amax[&t.name], qdq::stored_scale(amax[&t.name], scale_type)));
            TensorRange {
                name: t.name.clone(),
                op: t.op.clone(),
                quantized: quantized.contains_key(t.name.as_str()),
                method: tensor_method(t, &image, options.method, &options.per_tensor).name(),
                amax: a,
                scale,
                clipped: scales::clipped_share(&t.stats, a),
                amax_by_method: methods.iter().map(|m| (m.name(), scales::amax(&t.stats, *m))).collect(),
            }
        })
        .collect();
    let flops = flops::gemm_flops(&model, hist)?;
    let total: f64 = flops.values().sum();
    let int8_flops: f64 = decisions.iter().filter(|d| d.int8).filter_map(|d| flops.get(&d.node)).sum();
    let nodes =
        decisions.iter().map(|d| NodeReport { decision: d.clone(), flops: flops.get(&d.node).copied() }).collect();
    let weights = summary
        .weights
        .iter()
        .map(|(name, axis, w)| WeightRange {
            name: name.clone(),
            axis: *axis,
            channels: w.amax.len(),
            amax_min: w.amax.iter().copied().fold(f32::INFINITY, f32::min),
            amax_max: w.amax.iter().copied().fold(0.0, f32::max),
            clip: if w.amax == w.max { "max" } else { "mse" },
            clip_ratio_min: w
                .amax
                .iter()
                .zip(&w.max)
                .filter(|(_, m)| **m > 0.0)
                .map(|(a, m)| a / m)
                .fold(1.0, f32::min),
        })
        .collect();
    // The cache covers every activation (TensorRT 10's implicit mode wants a range for each tensor), so it is
    // written only from statistics of all of them.
    cache::trt_version_code(&options.trt_version)?;
    let activations = graph::find_activations(&model).0.len();
    let cache = if let Some(s) = &smoothing {
        Cache::Omitted {
            reason: format!(
                "calibration.cache not written: calibrate --smooth {} rewrote the model's weights and LayerNorms, \
                 and the cache would serve the unmodified model; TensorRT builds from model.qdq.onnx",
                s.alpha
            ),
        }
    } else if hist.collected == histograms::Selection::All && tensors.len() >= activations {
        let cache_scales: Vec<(String, f32)> = tensors.iter().map(|t| (t.name.clone(), t.scale)).collect();
        Cache::Written(cache::write_cache(&options.trt_version, &cache_scales)?)
    } else {
        Cache::Omitted {
            reason: format!(
                "calibration.cache not written: the .hist holds {} of the model's {activations} float activations \
                 (calibrate --tensors {}), and TensorRT's implicit INT8 falls back to float for every layer with a \
                 tensor lacking a range (which tensors its fused layers keep cannot be predicted from the ONNX \
                 graph). Calibrate with --tensors all for a complete cache; TensorRT 11, and 10 with explicit \
                 quantization, build from model.qdq.onnx",
                tensors.len(),
                hist.collected.name()
            ),
        }
    };
    let ranges = Ranges {
        format: RANGES_FORMAT,
        version: RANGES_VERSION,
        model: hist.model.clone(),
        calibration_images: hist.images.count,
        method: options.method.name(),
        precision: options.precision.clone(),
        target: options.placement.target.name(),
        attention: options.placement.attention,
        float_type: effective_float_type(&model, &options.placement).name(),
        weight_clip: options.weight_clip.name(),
        int8_flop_share: if total > 0.0 { int8_flops / total } else { 0.0 },
        nodes,
        tensors,
        weights,
        smoothing,
    };
    Ok(Analysis { ranges, qdq, cache, model })
}

impl Analysis {
    /// Writes the artifacts into `dir` (each through a temporary file and a rename): model.qdq.onnx,
    /// ranges.json, ranges.csv and, when the statistics cover every activation, calibration.cache. The Q/DQ
    /// model is linted first: with an error nothing is written ([`AnalyzeError::Lint`]); warnings are logged
    /// and returned.
    pub fn write(&self, dir: &Path) -> Result<Vec<lint::Finding>, AnalyzeError> {
        let findings = lint::lint_proto(&self.qdq, &self.model)?;
        let (errors, warnings): (Vec<_>, Vec<_>) =
            findings.into_iter().partition(|f| f.severity == lint::Severity::Error);
        if !errors.is_empty() {
            return Err(AnalyzeError::Lint { path: self.model.path.clone(), errors });
        }
        // The warnings are about TensorRT's fusions: a model placed for ONNX Runtime leaves those out on purpose.
        let for_tensorrt = self.ranges.target == Target::TensorRt.name();
        for w in warnings.iter().filter(|_| for_tensorrt) {
            tracing::warn!("model.qdq.onnx: warning[{}] {}: {}", w.rule, w.node, w.message);
        }
        std::fs::create_dir_all(dir).map_err(|source| AnalyzeError::Io { path: dir.into(), source })?;
        graph::save_model(&self.model, self.qdq.clone(), &dir.join("model.qdq.onnx"))?;
        if let Cache::Written(text) = &self.cache {
            safe_io::write_atomic(&dir.join("calibration.cache"), text.as_bytes())?;
        }
        safe_io::write_atomic(&dir.join("ranges.json"), &self.ranges.to_json()?)?;
        safe_io::write_atomic(&dir.join("ranges.csv"), &self.ranges_csv()?)?;
        Ok(warnings)
    }

    /// ranges.csv's bytes.
    pub fn ranges_csv(&self) -> Result<Vec<u8>, AnalyzeError> {
        let err = |source: csv::Error| AnalyzeError::Csv { file: "ranges.csv", source };
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
