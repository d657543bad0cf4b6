//! Builds deployable INT8 models: from a model, its calibration statistics and a [`Scheme`], the Q/DQ model
//! (`qdq`: the rewrite of a `placement` plan; `float_type`: the float type of the rest), TensorRT's
//! calibration cache (`cache`) and the range tables (`artifacts`). A [`Quantizer`] prepares a model once and
//! builds any number of INT8 models from it in memory; [`quantize`] runs calibrate -> build -> write.

#![forbid(unsafe_code)]

pub mod artifacts;
pub mod cache;
pub mod float_type;
pub mod flops;
pub mod fp16_quantize;
pub mod measure;
pub mod opset;
mod pipeline;
pub mod profile;
pub mod qdq;
pub mod rounding;
pub mod search;
#[cfg(test)]
mod test_models;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use analyze::scales::{self, Method};
use analyze::{max_calibrated, tensor_method};
use graph::Model;
use histograms::HistFile;
use placement::lint;
use placement::{Decision, FloatType, PlacementOptions};

pub use analyze;
pub use artifacts::{
    Artifacts, Cache, MeasuredOutput, NodeReport, Ranges, SelfCheck, TensorRange, WeightRange, RANGES_FORMAT,
    RANGES_VERSION,
};
pub use pipeline::{
    analyze_hist, check_samples, choose_and_measure, probe_options, quantize, weight_hessians, write_artifacts,
    QuantizeConfig, Quantized, Step, Written, Yardstick,
};
pub use placement::{self, PrecisionFile, Target};

/// Errors of building INT8 models; each names the model, tensor, node or file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The model could not be read, rewritten or written.
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    /// An output could not be written safely.
    #[error(transparent)]
    Output(#[from] safe_io::WriteError),
    /// The `.hist` file could not be read or written.
    #[error(transparent)]
    Hist(#[from] histograms::HistError),
    /// The samples measured on could not be read.
    #[error(transparent)]
    Dataset(#[from] datasets::DatasetError),
    /// The calibration pass failed.
    #[error(transparent)]
    Calibrate(#[from] calibrate::CalibrateError),
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
    /// A built model could not be measured against the float model.
    #[error("{}: cannot measure the INT8 model against the float model on these samples: {source}", path.display())]
    Measure {
        /// Where the samples came from.
        path: PathBuf,
        /// Why.
        source: measure::Unmeasured,
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

/// The TensorRT version written in calibration cache headers unless one is asked for.
pub const DEFAULT_TRT_VERSION: &str = "10.3.0";

/// The quantization scheme: every choice that decides which INT8 model is built from a model and its
/// statistics. Every command that builds a model takes one (`int8kit`'s one `SchemeArgs` group).
#[derive(Debug, Clone)]
pub struct Scheme {
    /// Scale method for every activation without a per-tensor choice.
    pub method: Method,
    /// Per-tensor methods that override `method` (from `int8kit sensitivity --choose-methods`).
    pub per_tensor: BTreeMap<String, Method>,
    /// How weight channels' amax is chosen, per node.
    pub weight_clip: qdq::WeightClips,
    /// Allow/deny lists (default lists when empty).
    pub precision: PrecisionFile,
    /// Where the precision file came from (a path or "defaults"), for messages and the report.
    pub precision_origin: String,
    /// Target runtime, attention precision and float type of the Q/DQ model.
    pub placement: PlacementOptions,
    /// TensorRT version for the cache header.
    pub trt_version: String,
    /// The choices made by measurement on held-back samples ([`search`]); the fields above hold what is
    /// used where nothing can be measured.
    pub auto: search::AutoChoices,
}

impl Scheme {
    /// `method` everywhere with the given lists (`origin` names them in messages), the default placement,
    /// weight clips and TensorRT version, no per-tensor methods.
    pub fn new(method: Method, precision: PrecisionFile, origin: impl Into<String>) -> Scheme {
        Scheme {
            method,
            per_tensor: Default::default(),
            weight_clip: qdq::WeightClips::default(),
            precision,
            precision_origin: origin.into(),
            placement: PlacementOptions::default(),
            trt_version: DEFAULT_TRT_VERSION.into(),
            auto: search::AutoChoices::default(),
        }
    }
}

impl Default for Scheme {
    /// Entropy scales, the default lists and placement.
    fn default() -> Scheme {
        Scheme::new(Method::Entropy, PrecisionFile::default(), "defaults")
    }
}

/// A model prepared once for building INT8 models from its statistics: loaded and hashed once, refused if
/// already quantized or if it is not the model the statistics were collected on, an FP16 model as its float32
/// twin, and smoothed as calibration smoothed it (`calibrate --smooth`: the statistics are then the smoothed
/// model's). Any number of INT8 models are built from it in memory ([`Quantizer::build`],
/// [`Quantizer::artifacts`]); the GEMM/Conv FLOPs are measured once, on first need.
pub struct Quantizer {
    model: Model,
    hist: HistFile,
    smoothing: Option<smoothquant::Smoothing>,
    equalization: Option<smoothquant::Equalization>,
    max_abs: HashMap<String, f32>,
    flops: OnceLock<HashMap<String, f64>>,
    /// Each method's amax per tensor, computed on first need.
    amax_cache: analyze::AmaxCache,
    /// Quantized weights, kept for the next build.
    weight_memo: qdq::WeightMemo,
}

impl Quantizer {
    /// Loads `model_path` ([`calibrate::load_model`]) and prepares it for `hist`.
    pub fn load(model_path: &Path, hist: HistFile) -> Result<Quantizer, QuantizeError> {
        Quantizer::new(calibrate::load_model(model_path)?, hist)
    }

    /// Prepares a model loaded by [`calibrate::load_model`] (the one a calibration just ran on) for `hist`.
    pub fn new(mut model: Model, hist: HistFile) -> Result<Quantizer, QuantizeError> {
        if model.sha256 != hist.model.sha256 {
            return Err(QuantizeError::Model {
                path: model.path.clone(),
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
        let equalization = match &hist.equalization {
            Some(record) => Some(smoothquant::equalize(&mut model, &record.channel_max)?),
            None => None,
        };
        // Calibration ran the model as exported; the INT8 model needs opset 13 (per-channel Q/DQ).
        if opset::upgrade_to_opset_13(&mut model.proto)
            .map_err(|message| QuantizeError::Model { path: model.path.clone(), message })?
        {
            tracing::info!(target: "int8kit::quantize", model = %model.path.display(), "moved to opset 13");
        }
        let max_abs = hist.tensors.iter().map(|t| (t.name.clone(), t.stats.amax())).collect();
        let weight_memo = qdq::WeightMemo::for_weights(model.weight_values());
        Ok(Quantizer {
            model,
            hist,
            smoothing,
            equalization,
            max_abs,
            flops: OnceLock::new(),
            amax_cache: Default::default(),
            weight_memo,
        })
    }

    /// The prepared model (float32, smoothed as the statistics were).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The statistics.
    pub fn hist(&self) -> &HistFile {
        &self.hist
    }

    /// What equalization did, with a .hist of a model with depthwise Convs.
    pub fn equalization(&self) -> Option<&smoothquant::Equalization> {
        self.equalization.as_ref()
    }

    /// What smoothing did, with a .hist from `calibrate --smooth`.
    pub fn smoothing(&self) -> Option<&smoothquant::Smoothing> {
        self.smoothing.as_ref()
    }

    /// Which nodes run in INT8 under `scheme`'s lists and placement.
    pub fn decide(&self, scheme: &Scheme) -> Result<Vec<Decision>, QuantizeError> {
        Ok(placement::decide(&self.model.proto.graph, &scheme.precision, &scheme.placement, &scheme.precision_origin)?)
    }

    /// Computes (and keeps) every tensor's amax under each of `methods`, so that building a candidate later
    /// finds them ready.
    pub fn prepare_amax(&self, methods: &[Method]) {
        for &m in methods {
            self.amax_cache.of(&self.hist, m);
        }
    }

    /// Every activation's amax under `scheme`'s methods ([`analyze::AmaxCache::activation_amax`]).
    pub fn amax(&self, scheme: &Scheme) -> HashMap<String, f32> {
        self.amax_cache.activation_amax(&self.hist, &self.model.proto.graph, scheme.method, &scheme.per_tensor)
    }

    /// The float type the artifact's non-INT8 parts get: the placement's, except that a model stored in FP16
    /// stays FP16 (its Q/DQ scales FP16 too).
    pub fn float_type(&self, placement: &PlacementOptions) -> FloatType {
        if self.model.low_precision_source.is_some() {
            FloatType::Fp16
        } else {
            placement.float_type
        }
    }

    /// The deployable Q/DQ model: Q/DQ inserted for `decisions` with activation ranges `amax`, then the float
    /// parts converted to the float type (the calibrated max |x| of each tensor keeps overflowing producers in
    /// FP32).
    pub fn build(
        &self,
        decisions: &[Decision],
        placement: &PlacementOptions,
        amax: &HashMap<String, f32>,
        weight_clips: &qdq::WeightClips,
    ) -> Result<(graph::proto::ModelProto, qdq::QdqSummary), QuantizeError> {
        let float_type = self.float_type(placement);
        let (proto, summary) =
            qdq::insert_qdq(&self.model, decisions, placement, amax, weight_clips, float_type, &self.weight_memo)?;
        let mut proto = float_type::convert(&self.model, proto, float_type, &self.max_abs)?;
        float_type::restore_io_types(&self.model, &mut proto);
        Ok((proto, summary))
    }

    /// The model without Q/DQ with its float parts in `float_type` (validate's FP16 row).
    pub fn float_model(&self, float_type: FloatType) -> Result<graph::proto::ModelProto, QuantizeError> {
        let mut proto = float_type::convert(&self.model, self.model.proto.clone(), float_type, &self.max_abs)?;
        float_type::restore_io_types(&self.model, &mut proto);
        Ok(proto)
    }

    /// FLOPs per sample of every GEMM/Conv node ([`flops::gemm_flops`]), measured on first need.
    pub fn flops(&self) -> Result<&HashMap<String, f64>, QuantizeError> {
        if let Some(f) = self.flops.get() {
            return Ok(f);
        }
        let measured = flops::gemm_flops(&self.model, &self.hist)?;
        Ok(self.flops.get_or_init(|| measured))
    }

    /// Computes scales, decides precision and builds the artifacts of `scheme`.
    pub fn artifacts(&self, scheme: &Scheme) -> Result<Artifacts<'_>, QuantizeError> {
        let (model, hist, smoothing) = (&self.model, &self.hist, self.smoothing.clone());
        let decisions = self.decide(scheme)?;
        let image = max_calibrated(&model.proto.graph);
        let amax = self.amax(scheme);
        let (qdq, summary) = self.build(&decisions, &scheme.placement, &amax, &scheme.weight_clip)?;
        let quantized: HashMap<&str, (f32, f32)> =
            summary.activations.iter().map(|(n, a, scale)| (n.as_str(), (*a, *scale))).collect();
        let scale_type = self.float_type(&scheme.placement);

        let mut methods: Vec<Method> = Method::ALL_DEFAULT.to_vec();
        if !methods.contains(&scheme.method) {
            methods.push(scheme.method);
        }
        let by_method: Vec<_> = methods.iter().map(|m| (m.name(), self.amax_cache.of(hist, *m))).collect();
        let tensors: Vec<TensorRange> = hist
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (a, scale) = quantized
                    .get(t.name.as_str())
                    .copied()
                    .unwrap_or_else(|| (amax[&t.name], qdq::stored_scale(amax[&t.name], scale_type)));
                TensorRange {
                    name: t.name.clone(),
                    op: t.op.clone(),
                    quantized: quantized.contains_key(t.name.as_str()),
                    method: tensor_method(t, &image, scheme.method, &scheme.per_tensor).name(),
                    amax: a,
                    scale,
                    clipped: scales::clipped_share(&t.stats, a),
                    amax_by_method: by_method.iter().map(|(name, table)| (name.clone(), table[i])).collect(),
                }
            })
            .collect();
        let flops = self.flops()?;
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
        cache::trt_version_code(&scheme.trt_version)?;
        let activations = graph::find_activations(model).0.len();
        let cache = if let Some(s) = &smoothing {
            Cache::Omitted {
                reason: format!(
                    "calibration.cache not written: the statistics are of the model smoothed with alpha {} \
                     (`--smooth`; auto smooths models with attention), which rewrote its weights and LayerNorms, \
                     and the cache would serve the unmodified model; TensorRT builds from model.qdq.onnx (calibrate \
                     with --smooth off for a cache)",
                    s.alpha
                ),
            }
        } else if self.equalization.is_some() {
            Cache::Omitted {
                reason: "calibration.cache not written: calibration equalized the inputs of the depthwise Convs \
                         (a Mul in front of each, their weights divided), and the cache would serve the unmodified \
                         model; TensorRT builds from model.qdq.onnx"
                    .into(),
            }
        } else if hist.collected == histograms::Selection::All && tensors.len() >= activations {
            let cache_scales: Vec<(String, f32)> = tensors.iter().map(|t| (t.name.clone(), t.scale)).collect();
            Cache::Written(cache::write_cache(&scheme.trt_version, &cache_scales)?)
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
            method: scheme.method.name(),
            precision: scheme.precision.clone(),
            target: scheme.placement.target.name(),
            attention: scheme.placement.attention,
            residual: scheme.placement.residual.name(),
            float_type: scale_type.name(),
            weight_clip: scheme.weight_clip.name(),
            int8_flop_share: if total > 0.0 { int8_flops / total } else { 0.0 },
            nodes,
            tensors,
            weights,
            smoothing,
            equalization: self.equalization.clone(),
            chosen_by: if scheme.auto.any() { "defaults" } else { "flags" },
            self_check: SelfCheck::skipped("not measured"),
            search: None,
            weight_rounding: None,
        };
        let profile = engine_profile_of(model, hist)?;
        Ok(Artifacts { ranges, qdq, cache, model, profile })
    }
}

/// With statistics over several input sizes: the engine profile of the image input (none for one size, whose
/// engine varies only the batch, and for `.npz` samples).
fn engine_profile_of(
    model: &Model,
    hist: &histograms::HistFile,
) -> Result<Option<profile::EngineProfile>, QuantizeError> {
    match hist.recipe.as_ref().filter(|r| r.is_multi_size()) {
        Some(recipe) => engine_profile(model, recipe, hist, profile::PROFILE_MAX_BATCH).map(Some),
        None => Ok(None),
    }
}

/// The engine profile of `recipe`'s image input over its sizes; `opt` is the size `hist` calibrated the most
/// images at when it covers the same sizes (else the first size); a dynamic batch spans 1 to `max_batch`.
pub fn engine_profile(
    model: &Model,
    recipe: &datasets::Recipe,
    hist: &histograms::HistFile,
    max_batch: usize,
) -> Result<profile::EngineProfile, QuantizeError> {
    let input = model.resolve_input(recipe.name.as_deref())?.name.clone();
    let fixed = model.fixed_batch(&input);
    let counts: Vec<u64> = match &hist.recipe {
        Some(h) if h.all_sizes() == recipe.all_sizes() => hist.images.sizes.iter().map(|s| s.count).collect(),
        _ => Vec::new(),
    };
    Ok(profile::EngineProfile::derive(&input, fixed, recipe, &counts, max_batch))
}
