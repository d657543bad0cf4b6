//! The calibration pass: expose every activation as an output of an in-memory copy of the model, stream
//! batches through ONNX Runtime, and fold each output into its tensor's statistics.

use std::collections::BTreeMap;
use std::path::Path;

use datasets::{Batch, BatchSource, BatchStream, Dataset, Feed, InputType, OnBadImage, Recipe, StreamOptions};
use graph::proto::{TypeProto, ValueInfoProto};
use graph::{find_activations, Activation, ElemType, Model};
use rayon::prelude::*;

use crate::CalibrateError;
use histograms::{
    HistFile, HistogramInfo, ImagesInfo, ModelInfo, Selection, TensorRecord, TensorStats, BINS, HIST_FORMAT,
    HIST_VERSION,
};

/// How a calibration runs; none of these change the result.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// Images per ONNX Runtime call.
    pub batch_size: usize,
    /// Threads for ONNX Runtime and for histograms; 0 means one per core.
    pub threads: usize,
    /// Use a seeded random subset of this many images.
    pub limit: Option<usize>,
    /// Seed of the `limit` subset.
    pub seed: u64,
    /// What to do with unreadable images.
    pub on_bad_image: OnBadImage,
    /// Which activations to collect.
    pub selection: Selection,
    /// Where the model runs. With CUDA the activations stay in GPU memory and are reduced there; with several
    /// GPUs (`cuda:0,1`) each runs its own session and batches are dealt to them in turn, and their
    /// statistics merge exactly (the `.hist` is the one-GPU file).
    pub device: runtime::Devices,
    /// SmoothQuant smoothing of the model's GEMM inputs before collecting, from per-channel maxima a first
    /// pass measures on [`MAXIMA_SAMPLES`] of the calibration samples; the statistics are those of the
    /// smoothed model ([`Smooth`]).
    pub smooth: Smooth,
    /// Equalize the inputs of depthwise Convs (`smoothquant::equalize`) before collecting, from per-channel
    /// maxima a first pass measures on [`MAXIMA_SAMPLES`] of the calibration samples; a model without
    /// depthwise Convs is not touched.
    pub equalize: bool,
    /// `(I, N)`: only the I-th (1-based) of N contiguous parts of the sorted (and `limit`ed) image list; the
    /// merge of all N (`histograms::merge`) is the whole run's `.hist` byte for byte.
    pub shard: Option<(usize, usize)>,
    /// How many samples of the calibration set (after `limit`) are held back from the statistics, for the
    /// self-check of what is built from them.
    pub hold_out: HoldOut,
    /// With a recipe of several sizes: each image goes through the model at one size, dealt over the sizes
    /// (seeded by `seed`), instead of at every size.
    pub deal_sizes: bool,
    /// The most tapped activation values one ONNX Runtime run of the CPU pass may produce per two of its
    /// threads: a batch whose activations would exceed it runs in parts ([`RUN_VALUES_MAX`] by default;
    /// `run_budget` scales it with the threads).
    pub run_values_max: usize,
}

/// The most tapped activation values one ONNX Runtime run of the CPU pass produces by default per two of its
/// threads (256 MB of float32, `run_budget`): a batch whose activations would exceed it runs in parts. On the
/// DINOv2 ViT-S/14 (75 MB of tapped activations per image), on 2 cores, `calibrate --batch-size 16` took
/// 15.3-15.6 s for 128 images against 12.1-13.2 s in batches of 4 or 8, and the FP32 pass alone 12.4-13.2 s in
/// batches of 16: a gigabyte of outputs per run cost more than the binning. The statistics are the same bytes
/// whatever the parts (they merge exactly).
pub const RUN_VALUES_MAX: usize = 64 << 20;

/// The tapped values one CPU run may produce with `onnx_runtime_threads` intra-op threads: `per_two_threads`
/// for every two of them (at most 16 times it). Each thread then has as many rows to compute as on two cores;
/// a fixed budget cut the DINOv2 ViT-S/14's batches of 16 into runs of 3 images, which left the Xeon's 12
/// ONNX Runtime threads short of work: calibrate (N = 640, 16 threads) took 25.1-30.3 s with 64 Mi values per
/// run against 18.0-20.4 s with 1 Gi, the FP32 pass alone 18.3-19.8 s (BENCHMARKS.md).
/// Where the machine (or the container: cgroup v2's `memory.max`) says how much memory is available, the
/// budget beyond `per_two_threads` takes at most a sixteenth of it (two runs' outputs are alive at once, and
/// ONNX Runtime's arena may hold as much again), so that many cores with little memory keep the small budget.
pub fn run_budget(per_two_threads: usize, onnx_runtime_threads: usize) -> usize {
    let scaled = per_two_threads.saturating_mul(onnx_runtime_threads.div_ceil(2).clamp(1, 16));
    match available_memory_bytes() {
        Some(bytes) => scaled.min(memory_cap_values(bytes)).max(per_two_threads),
        None => scaled,
    }
}

/// The float32 values a run may produce when `available` bytes of memory are free: a sixteenth of them.
fn memory_cap_values(available: u64) -> usize {
    usize::try_from(available / 16 / 4).unwrap_or(usize::MAX)
}

/// Free memory by Linux's account (`MemAvailable`), or the room left under the cgroup's limit where that is
/// smaller; `None` where neither can be read (other systems: the budget then scales with the threads alone).
fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| mem_available_bytes(&t));
    let read = |name: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok();
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(current)) => cgroup_room_bytes(&max, &current),
        _ => None,
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Bytes left under a cgroup v2 limit (`memory.max`, `max` for none) given its use (`memory.current`).
fn cgroup_room_bytes(max: &str, current: &str) -> Option<u64> {
    let max: u64 = max.trim().parse().ok()?;
    let current: u64 = current.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// How many samples of a batch of `batch` go into one run, when a run may produce `budget` values and a sample
/// produces `per_sample`: the batch is cut into as few runs as the budget allows, of equal sizes (16 samples
/// in runs of 14 would leave a run of 2, which keeps most threads idle).
fn run_samples(batch: usize, per_sample: usize, budget: usize) -> usize {
    let most = (budget / per_sample.max(1)).clamp(1, batch.max(1));
    let runs = batch.div_ceil(most);
    batch.div_ceil(runs.max(1)).max(1)
}

/// Samples the per-channel maxima are measured on before smoothing and equalization (from a folder a seeded
/// subset of its list, the same for every shard; from an iterable its first ones): the factors only balance the
/// channels, and the statistics pass over every sample then sees the ranges the subset missed.
pub const MAXIMA_SAMPLES: usize = 64;

/// The migration strength `--smooth auto` applies: SmoothQuant's default (Xiao et al., 2023), not tuned here.
pub const AUTO_SMOOTH_ALPHA: f32 = 0.5;

/// Whether and how the GEMM inputs are smoothed (SmoothQuant, `smoothquant::smooth`) before collecting.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Smooth {
    /// Smoothed with [`AUTO_SMOOTH_ALPHA`] where the model has attention (MatMuls of two activations, ONNX
    /// Attention nodes): transformer blocks, whose LayerNorm and GELU outputs carry the outlier channels that
    /// one per-tensor scale serves badly. Other models (CNNs, whose one smoothable GEMM is a classifier head)
    /// are left as they are, sparing the maxima pass.
    #[default]
    Auto,
    /// Not smoothed.
    Off,
    /// Smoothed with this alpha (0 to 1) wherever a GEMM can be.
    Alpha(f32),
}

impl Smooth {
    /// The alpha `model` is smoothed with, `None` for no smoothing (nor where no GEMM can be smoothed).
    pub fn alpha_for(self, model: &Model) -> Option<f32> {
        let graph = &model.proto.graph;
        let alpha = match self {
            Smooth::Off => return None,
            Smooth::Alpha(a) => a,
            Smooth::Auto if placement::has_attention(graph) => AUTO_SMOOTH_ALPHA,
            Smooth::Auto => return None,
        };
        (!placement::smoothable_gemms(graph).is_empty()).then_some(alpha)
    }

    /// How the flag writes it: `auto`, `off` or the alpha.
    pub fn name(self) -> String {
        match self {
            Smooth::Auto => "auto".into(),
            Smooth::Off => "off".into(),
            Smooth::Alpha(a) => a.to_string(),
        }
    }
}

/// How many calibration samples are kept out of the statistics and measured on instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HoldOut {
    /// A tenth of the calibration set, 2 to 64 samples; none below 20 samples (too few to spare).
    #[default]
    Auto,
    /// Exactly this many (0: none); [`Dataset::hold_out`] leaves at least one sample to calibrate on.
    Count(usize),
}

impl HoldOut {
    /// Smallest calibration set [`HoldOut::Auto`] takes samples from.
    pub const AUTO_FROM: usize = 20;
    /// Most samples [`HoldOut::Auto`] takes.
    pub const AUTO_MAX: usize = 64;

    /// Samples held back from a calibration set of `samples`.
    pub fn count(self, samples: usize) -> usize {
        match self {
            HoldOut::Auto if samples < HoldOut::AUTO_FROM => 0,
            HoldOut::Auto => (samples / 10).clamp(2, HoldOut::AUTO_MAX),
            HoldOut::Count(n) => n,
        }
    }
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        CalibrateOptions {
            batch_size: 16,
            threads: 0,
            limit: None,
            seed: 0,
            on_bad_image: OnBadImage::Fail,
            selection: Selection::default(),
            device: runtime::Devices::default(),
            smooth: Smooth::Auto,
            equalize: true,
            shard: None,
            hold_out: HoldOut::Auto,
            deal_sizes: false,
            run_values_max: RUN_VALUES_MAX,
        }
    }
}

impl CalibrateOptions {
    /// The alpha `model` is smoothed with ([`Smooth::alpha_for`]), `None` for none. `auto` leaves a collection
    /// of every activation (`Selection::All`) unsmoothed: it is made for TensorRT's `calibration.cache`, which
    /// describes the unmodified model.
    pub fn smoothing_alpha(&self, model: &Model) -> Option<f32> {
        match (self.smooth, self.selection) {
            (Smooth::Auto, Selection::All) => None,
            (smooth, _) => smooth.alpha_for(model),
        }
    }
}

/// What happened, beside the statistics themselves.
#[derive(Debug, Clone)]
pub struct CalibrationSummary {
    /// Images that went through the model.
    pub images: u64,
    /// Images skipped as unreadable, with the reason.
    pub skipped: Vec<(std::path::PathBuf, String)>,
    /// Tensors with statistics.
    pub tensors: usize,
    /// Floating tensors not collected (not float32, or of unknown type), by name.
    pub not_collected: Vec<String>,
    /// With a CUDA device: the most GPU memory in use (whole device) seen after a batch, in MB.
    pub device_memory_peak_mb: Option<f64>,
    /// The samples held back from the statistics ([`CalibrateOptions::hold_out`]), if any.
    pub held_out: Option<Dataset>,
}

/// A model copy whose activations are all graph outputs.
pub struct TappedModel {
    /// The copy, with the activations as outputs.
    pub model: Model,
    /// Every float activation, in graph order.
    pub activations: Vec<Activation>,
    /// Float tensors that are not collected.
    pub not_collected: Vec<String>,
    /// The image input (the recipe's), or for `.npz` samples the model's first input: the one whose batch axis
    /// sets the batch size.
    pub input: String,
    /// Activations fed from the host (float graph inputs): index and name; their statistics come from the
    /// batch, not from ONNX Runtime.
    fed: Vec<(usize, String)>,
    plan: CollectionPlan,
    /// Per measured tensor (in `output_names` order): where its channels are, when its per-channel maxima are
    /// collected.
    channel_max: Vec<Option<ChannelAxis>>,
    /// Per activation: whether its statistics keep the range only (it and every tensor that copies its
    /// statistics are always max-calibrated, `graph::roles::max_calibrated`).
    range_only: Vec<bool>,
}

/// A graph output of float32 tensors named `name`.
pub fn float_output(name: &str) -> ValueInfoProto {
    let mut vi = ValueInfoProto::new();
    vi.name = name.to_string();
    let mut tp = TypeProto::new();
    tp.mut_tensor_type().elem_type = ElemType::FLOAT.0;
    vi.type_ = Some(tp).into();
    vi
}

/// Checks the recipe against the model input's static dimensions.
fn check_input_shape(model: &Model, input: &ValueInfoProto, recipe: &Recipe) -> Result<(), CalibrateError> {
    let Some(tp) = input.type_.as_ref() else { return Ok(()) };
    if !tp.has_tensor_type() {
        return Ok(());
    }
    let tt = tp.tensor_type();
    let takes = ElemType(tt.elem_type);
    let mismatch = |message: String| Err(CalibrateError::Input { model: model.path.clone(), message });
    match (takes, recipe.dtype) {
        (ElemType::FLOAT, InputType::Float32) | (ElemType::UINT8, InputType::Uint8) => {}
        (ElemType::UINT8, InputType::Float32) => {
            return mismatch(format!(
                "input '{}' is uint8 (raw pixel levels; the model normalises inside its graph): add dtype = \
                 \"uint8\" to the recipe and remove its scale, mean and std",
                input.name
            ))
        }
        (_, InputType::Uint8) => {
            return mismatch(format!(
                "the recipe feeds uint8 pixels (dtype = \"uint8\") but input '{}' is {}",
                input.name,
                takes.name()
            ))
        }
        _ => {
            return mismatch(format!(
                "input '{}' is {}; int8kit feeds float32 images, or uint8 ones with dtype = \"uint8\" in the recipe",
                input.name,
                takes.name()
            ))
        }
    }
    let Some(shape) = tt.shape.as_ref() else { return Ok(()) };
    if shape.dim.len() != 4 {
        return Err(CalibrateError::Input {
            model: model.path.clone(),
            message: format!("input '{}' has rank {}, expected a 4-D image batch", input.name, shape.dim.len()),
        });
    }
    let dims = || -> String {
        let dims: Vec<String> = shape
            .dim
            .iter()
            .map(|d| if d.has_dim_value() { d.dim_value().to_string() } else { d.dim_param().to_string() })
            .collect();
        dims.join(", ")
    };
    if recipe.is_multi_size() {
        let spatial = match recipe.layout {
            datasets::Layout::Nchw => [2, 3],
            datasets::Layout::Nhwc => [1, 2],
        };
        if spatial.iter().any(|&a| shape.dim[a].has_dim_value()) {
            return Err(CalibrateError::Input {
                model: model.path.clone(),
                message: format!(
                    "input '{}' has shape [{}]: its height and width are fixed, so it cannot take the recipe's \
                     sizes {:?}; export the model with dynamic height and width (e.g. torch.onnx.export's \
                     dynamic_axes), or give one size",
                    input.name,
                    dims(),
                    recipe.all_sizes()
                ),
            });
        }
    }
    if recipe.is_multi_size() {
        if let Some(pin) = graph::size_pins(&model.proto.graph).first() {
            return Err(CalibrateError::Input {
                model: model.path.clone(),
                message: format!(
                    "input '{}' has dynamic height and width, but {} '{}' reshapes to the constant shape {:?}, the \
                     extent of one size: the model runs only at that size, not at the recipe's sizes {:?}; export \
                     it with the shape computed from the input (a -1, or Shape-derived sizes), or give one size",
                    input.name,
                    pin.op,
                    pin.node,
                    pin.shape,
                    recipe.all_sizes()
                ),
            });
        }
    }
    for want in recipe.each_size().iter().map(|r| r.batch_shape(1)) {
        check_dims(model, input, shape, &want, recipe, &dims)?;
    }
    Ok(())
}

/// One size's batch shape against the input's static dimensions.
fn check_dims(
    model: &Model,
    input: &ValueInfoProto,
    shape: &graph::proto::TensorShapeProto,
    want: &[usize; 4],
    recipe: &Recipe,
    dims: &dyn Fn() -> String,
) -> Result<(), CalibrateError> {
    for (axis, dim) in shape.dim.iter().enumerate().skip(1) {
        if dim.has_dim_value() && dim.dim_value() != want[axis] as i64 {
            let dims = dims();
            return Err(CalibrateError::Input {
                model: model.path.clone(),
                message: format!(
                    "input '{}' has shape [{}] but the recipe makes {:?} ({:?} layout); fix size/channels/layout in the recipe",
                    input.name,
                    dims,
                    want,
                    recipe.layout
                ),
            });
        }
    }
    Ok(())
}

/// The input whose batch axis sets the batch size: the recipe's image input, or for `.npz` samples (which
/// name their own arrays; `runtime::run` checks them against the model's inputs) the model's first input.
pub fn batch_input(model: &Model, feed: &Feed) -> Result<String, CalibrateError> {
    match feed {
        Feed::Images(recipe) => Ok(model.resolve_input(recipe.name.as_deref())?.name.clone()),
        Feed::Tensors => model.feed_inputs().first().map(|i| i.name.clone()).ok_or_else(|| CalibrateError::Input {
            model: model.path.clone(),
            message: "the model has no input to feed".into(),
        }),
    }
}

/// Loads a model as every pass over it sees it: read and hashed once, its model-local functions expanded
/// into the graph (their nodes calibrated and quantized like any other), refused if it already holds
/// quantization ops, an FP16 model as its float32 twin, weights the graph computes from constants folded into
/// initializers (the GEMMs reading them get INT8 weights). [`calibrate_model`] calibrates it and
/// `quantizer::Quantizer::new` builds from it, so that `quantize` opens the file once.
pub fn load_model(model_path: &Path) -> Result<Model, CalibrateError> {
    let mut model = Model::load(model_path)?;
    model.inline_local_functions()?;
    model.check_not_quantized()?;
    model.normalize_to_float32()?;
    crate::fold::fold_computed_weights(&mut model)?;
    Ok(model)
}

/// Which tapped tensors also get per-channel maxima (a first pass before smoothing or equalization).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMaxima {
    /// None.
    None,
    /// The inputs of smoothable GEMMs, channels on the last axis (`--smooth`).
    GemmInputs,
    /// The inputs of depthwise Convs, channels on axis 1 (equalization).
    DepthwiseInputs,
    /// Both in one pass, for a model smoothed and equalized ([`ChannelMaxima::serves_both`]).
    Both,
}

impl ChannelMaxima {
    /// Whether one pass ([`ChannelMaxima::Both`]) serves both smoothing and equalization of `model`: smoothing
    /// never changes what a depthwise Conv reads (it divides a producer's constants only where the smoothed GEMMs
    /// alone read its output, and otherwise puts a Mul in front of them), so the depthwise inputs' maxima of the
    /// unsmoothed model are those of the smoothed one. Not where a tensor is read by both kinds (its channels
    /// would be on two axes): then two passes.
    pub fn serves_both(model: &Model) -> bool {
        let graph = &model.proto.graph;
        let gemm_inputs: std::collections::HashSet<String> =
            placement::smoothable_gemms(graph).into_iter().map(|g| g.input).collect();
        !placement::depthwise_convs(graph).iter().any(|c| gemm_inputs.contains(&c.input))
    }

    /// The tensors whose per-channel maxima this pass takes in `model`, with the axis of their channels.
    fn tensors(self, model: &Model) -> std::collections::HashMap<String, ChannelAxis> {
        let graph = &model.proto.graph;
        let gemms = || placement::smoothable_gemms(graph).into_iter().map(|g| (g.input, ChannelAxis::Last));
        let depthwise = || placement::depthwise_convs(graph).into_iter().map(|c| (c.input, ChannelAxis::One));
        match self {
            ChannelMaxima::None => Default::default(),
            ChannelMaxima::GemmInputs => gemms().collect(),
            ChannelMaxima::DepthwiseInputs => depthwise().collect(),
            // Depthwise last, so that a tensor read by both keeps axis 1 (`serves_both` keeps such models apart).
            ChannelMaxima::Both => gemms().chain(depthwise()).collect(),
        }
    }
}

/// Where a tensor's channels are, for its per-channel maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelAxis {
    /// The last axis (a GEMM's input).
    Last,
    /// Axis 1 (a Conv's NCHW input).
    One,
}

impl TappedModel {
    /// Loads the model and adds every float32 activation as a graph output, in memory only; `channel_max`
    /// says which tensors also get per-channel maxima.
    pub fn new(
        model_path: &Path,
        feed: &Feed,
        selection: Selection,
        channel_max: ChannelMaxima,
    ) -> Result<TappedModel, CalibrateError> {
        TappedModel::from_model(load_model(model_path)?, feed, selection, channel_max)
    }

    /// [`TappedModel::new`] for a model already in memory (float32, not quantized).
    pub fn from_model(
        mut model: Model,
        feed: &Feed,
        selection: Selection,
        channel_max: ChannelMaxima,
    ) -> Result<TappedModel, CalibrateError> {
        let input = match feed {
            Feed::Images(recipe) => {
                let input = model.resolve_input(recipe.name.as_deref())?.clone();
                check_input_shape(&model, &input, recipe)?;
                input.name
            }
            Feed::Tensors => batch_input(&model, feed)?,
        };
        let (mut activations, not_collected) = find_activations(&model);
        let mut gemm_inputs = std::collections::HashSet::new();
        if selection == Selection::Quantizable {
            (activations, gemm_inputs) = quantizable_only(&model, activations)?;
        }
        // Per-channel maxima are taken on the very tensor the GEMM reads (a Transpose before it moves the
        // channels), so those tensors are the ones measured in their same-valued group.
        let per_channel = channel_max.tensors(&model);
        let maxima_pass = channel_max != ChannelMaxima::None;
        if maxima_pass {
            // The pass before smoothing or equalization reads those inputs' maxima and nothing else.
            activations.retain(|a| per_channel.contains_key(&a.name));
            gemm_inputs.clear();
        }
        gemm_inputs.extend(per_channel.keys().cloned());
        let plan = CollectionPlan::new(&activations, &gemm_inputs);
        let channel_max = plan.measured.iter().map(|&i| per_channel.get(&activations[i].name).copied()).collect();
        let range_only = if maxima_pass {
            // A maxima pass reads the per-channel maxima alone: nothing is binned.
            vec![true; activations.len()]
        } else {
            plan.range_only(&activations, &graph::roles::max_calibrated(&model.proto.graph))
        };
        let measured: Vec<String> = plan.measured.iter().map(|&i| activations[i].name.clone()).collect();
        if !measured.is_empty() {
            // The session computes the measured tensors and what they need, nothing past them.
            model.prune_to_outputs(&measured, float_output);
        }
        let fed = activations
            .iter()
            .enumerate()
            .filter(|(_, a)| a.producer.is_none())
            .map(|(i, a)| (i, a.name.clone()))
            .collect();
        Ok(TappedModel { model, activations, not_collected, input, fed, plan, channel_max, range_only })
    }

    /// Names of the activations read back from ONNX Runtime, in graph order.
    pub fn output_names(&self) -> Vec<String> {
        self.plan.measured.iter().map(|&i| self.activations[i].name.clone()).collect()
    }

    /// Empty statistics for each measured tensor (in `output_names` order): range-only where that is all
    /// analysis reads.
    fn empty_measured_stats(&self) -> Vec<TensorStats> {
        self.plan.measured.iter().map(|&i| self.empty_stats(i)).collect()
    }

    /// Per measured tensor (in `output_names` order): whether it keeps its range only.
    fn measured_range_only(&self) -> Vec<bool> {
        self.plan.measured.iter().map(|&i| self.range_only[i]).collect()
    }

    fn empty_stats(&self, activation: usize) -> TensorStats {
        if self.range_only[activation] {
            TensorStats::range_only()
        } else {
            TensorStats::default()
        }
    }
}

/// Keeps the activations the default placements read (`placement::needed_by_defaults`, both targets), and
/// the chain of rearranging ops between each of them and the tensor whose statistics it shares. Also returns
/// the names the Q/DQ pairs read.
fn quantizable_only(
    model: &Model,
    activations: Vec<Activation>,
) -> Result<(Vec<Activation>, std::collections::HashSet<String>), CalibrateError> {
    let graph = &model.proto.graph;
    let needed = placement::needed_by_defaults(graph)?;
    let mut wanted: std::collections::HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    wanted.extend(needed.iter().map(String::as_str));
    let index: std::collections::HashMap<&str, usize> =
        activations.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();
    let mut keep = vec![false; activations.len()];
    for (i, a) in activations.iter().enumerate() {
        if a.producer.is_none() || wanted.contains(a.name.as_str()) {
            let mut j = i;
            loop {
                keep[j] = true;
                let a = &activations[j];
                let same = a.producer_op.as_deref().is_some_and(|op| SAME_VALUES.contains(&op));
                match a.producer_inputs.first().and_then(|n| index.get(n.as_str())) {
                    Some(&k) if same && !keep[k] => j = k,
                    _ => break,
                }
            }
        }
    }
    let gemm_inputs = wanted.iter().map(|s| s.to_string()).collect();
    Ok((activations.into_iter().zip(keep).filter(|(_, k)| *k).map(|(a, _)| a).collect(), gemm_inputs))
}

/// Ops whose output holds exactly the values of their first input, rearranged: their statistics are those
/// of the input, so they are copied rather than measured again (about a fifth of a ViT's activations).
const SAME_VALUES: &[&str] = graph::REARRANGING_OPS;

/// Which activations are read back from ONNX Runtime and which copy another's statistics.
struct CollectionPlan {
    /// Activation index -> index of the activation whose statistics it has (itself if measured).
    source: Vec<usize>,
    /// Activations read back from ONNX Runtime, in graph order.
    measured: Vec<usize>,
}

impl CollectionPlan {
    /// Each group of same-valued tensors is measured once: at a member in `prefer` (a tensor a GEMM reads)
    /// if there is one, else at the group's first tensor. Reading back what the GEMM reads (the end of a
    /// Transpose/Reshape chain) rather than the chain's start leaves ONNX Runtime free to fuse the ops before
    /// it (attention, on the CUDA EP): same values, same statistics, less work.
    fn new(activations: &[Activation], prefer: &std::collections::HashSet<String>) -> CollectionPlan {
        let index: std::collections::HashMap<&str, usize> =
            activations.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();
        let mut source: Vec<usize> = (0..activations.len()).collect();
        for (i, a) in activations.iter().enumerate() {
            let same = a.producer_op.as_deref().is_some_and(|op| SAME_VALUES.contains(&op));
            if let (true, Some(&j)) = (same, a.producer_inputs.first().and_then(|n| index.get(n.as_str()))) {
                source[i] = source[j];
            }
        }
        // Move each measured root to a preferred member of its group (never away from the fed input, whose
        // statistics come from the host batch).
        let mut chosen: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        for (i, a) in activations.iter().enumerate() {
            let root = source[i];
            if root != i && prefer.contains(&a.name) && activations[root].producer.is_some() {
                chosen.entry(root).or_insert(i);
            }
        }
        for s in source.iter_mut() {
            if let Some(&c) = chosen.get(s) {
                *s = c;
            }
        }
        let measured =
            (0..activations.len()).filter(|&i| source[i] == i && activations[i].producer.is_some()).collect();
        CollectionPlan { source, measured }
    }

    /// Per activation: whether every member of the group it heads is in `fixed` (the max-calibrated tensors).
    fn range_only(&self, activations: &[Activation], fixed: &std::collections::BTreeSet<String>) -> Vec<bool> {
        let mut all_fixed = vec![true; activations.len()];
        for (a, &root) in activations.iter().zip(&self.source) {
            if !fixed.contains(&a.name) {
                all_fixed[root] = false;
            }
        }
        (0..activations.len()).map(|i| self.source[i] == i && all_fixed[i]).collect()
    }

    /// Every activation's statistics from those of the fed inputs (`(index, stats)`) and the measured ones.
    fn assemble(&self, n: usize, fed: Vec<(usize, TensorStats)>, measured: Vec<TensorStats>) -> Vec<TensorStats> {
        let mut own: Vec<Option<TensorStats>> = vec![None; n];
        for (i, stats) in fed {
            own[i] = Some(stats);
        }
        for (&i, s) in self.measured.iter().zip(measured) {
            own[i] = Some(s);
        }
        (0..n).map(|i| own[self.source[i]].clone().unwrap_or_default()).collect()
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// What one pass over the images gives.
struct Pass {
    /// Per activation of the tapped model, in its order.
    stats: Vec<TensorStats>,
    /// Per-channel maxima by tensor name (only when the tapped model collects them).
    channel_max: std::collections::BTreeMap<String, histograms::ChannelMax>,
    /// Images that went through the model.
    done: u64,
    /// Images skipped as unreadable.
    skipped: Vec<(std::path::PathBuf, String)>,
    /// With CUDA: peak device memory, MB.
    device_memory_peak_mb: Option<f64>,
    /// The samples fed, by their bytes.
    samples: histograms::SamplesDigest,
}

impl Pass {
    /// Folds in another pass over the same tapped model (another size): exact, as every statistic merges.
    fn merge(&mut self, other: Pass, model: &Path) -> Result<(), CalibrateError> {
        self.stats.iter_mut().zip(&other.stats).for_each(|(a, b)| a.merge(b));
        for (name, c) in other.channel_max {
            let mine = self.channel_max.entry(name.clone()).or_default();
            mine.merge(&c).map_err(|m| CalibrateError::Input {
                model: model.to_path_buf(),
                message: format!(
                    "tensor '{name}' has {} channels in its last axis at one size and {} at another: per-channel \
                     maxima need a fixed channel count",
                    m.had, m.got
                ),
            })?;
        }
        self.done += other.done;
        self.samples.add(&other.samples);
        for s in other.skipped {
            if !self.skipped.iter().any(|(p, _)| *p == s.0) {
                self.skipped.push(s);
            }
        }
        self.device_memory_peak_mb = match (self.device_memory_peak_mb, other.device_memory_peak_mb) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }
}

/// Refuses, before any work, what cannot run: on the GPU path, what it does not bind (it binds one float32 image
/// batch); a smoothing alpha outside 0 to 1.
fn check_options(model: &Model, feed: &Feed, options: &CalibrateOptions) -> Result<(), CalibrateError> {
    feed.validate("recipe")?;
    let refuse = |message: &str| Err(CalibrateError::Input { model: model.path.clone(), message: message.into() });
    if options.device.is_cuda() && feed.recipe().is_some_and(|r| r.dtype == InputType::Uint8) {
        return refuse(
            "uint8 image inputs run on the CPU only for now (the GPU path binds float32 batches); use --device cpu",
        );
    }
    if options.device.is_cuda() && *feed == Feed::Tensors {
        return refuse(
            ".npz tensor samples run on the CPU only for now (the GPU path binds one float32 image batch); use \
             --device cpu",
        );
    }
    if let Smooth::Alpha(a) = options.smooth {
        if !(0.0..=1.0).contains(&a) {
            return Err(smoothquant::SmoothError::Alpha(a).into());
        }
    }
    Ok(())
}

/// Runs the calibration pass: where `options.smooth` smooths the model, first a pass over [`MAXIMA_SAMPLES`]
/// samples that measures the per-channel maxima of the smoothable GEMM inputs, then the smoothing (in memory);
/// likewise the depthwise equalization; then the statistics of the model so rewritten.
/// `progress(done, total)` is called after each batch.
pub fn calibrate(
    model_path: &Path,
    images: &Path,
    feed: &Feed,
    options: &CalibrateOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(HistFile, CalibrationSummary), CalibrateError> {
    calibrate_model(&load_model(model_path)?, images, feed, options, progress)
}

/// [`calibrate`] of a model already loaded by [`load_model`].
pub fn calibrate_model(
    model: &Model,
    images: &Path,
    feed: &Feed,
    options: &CalibrateOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(HistFile, CalibrationSummary), CalibrateError> {
    check_options(model, feed, options)?;
    let mut model = model.clone();
    let mut dataset = Dataset::flat(images)?;
    // A folder of the other kind is refused here, before any work.
    Feed::for_dataset(&dataset, feed.recipe().cloned())?;
    let arrays = match feed {
        Feed::Images(_) => None,
        Feed::Tensors => Some(
            datasets::tensors::read_npz(&dataset.items[0].path)?
                .into_iter()
                .map(|a| histograms::ArraySpec { name: a.name, dtype: a.data.dtype().into(), shape: a.shape })
                .collect(),
        ),
    };
    if let Some(n) = options.limit {
        dataset = dataset.limit(n, options.seed);
    }
    // The held-back slice is chosen from the whole list before any shard (every shard holds back the same
    // slice), and a shard keeps its own part of the rest and says which, and of which whole list.
    let whole_list_sha256 = dataset.list_sha256();
    let hold = options.hold_out.count(dataset.len());
    let (rest, held) = dataset.hold_out(hold, options.seed);
    dataset = rest;
    let held_out = (!held.is_empty()).then(|| histograms::HeldOut {
        count: held.len() as u64,
        seed: options.seed,
        list_sha256: held.list_sha256(),
    });
    // Sizes are dealt over the whole list, so that every shard keeps its images' sizes and the shards merge
    // into the one-process file.
    let whole = dataset.clone();
    let shard = match options.shard {
        None => None,
        Some((index, count)) => {
            dataset = dataset.shard(index, count)?;
            Some(histograms::ShardInfo {
                index,
                count,
                list_sha256: dataset.list_sha256(),
                whole_list_sha256: Some(whole_list_sha256),
            })
        }
    };
    let plan = size_plan(&dataset, &whole, feed, options)?;
    let alpha = options.smoothing_alpha(&model);
    let equalize = equalizes(&model, options);
    // The maxima's subset comes from the whole list, so that every shard smooths and equalizes alike.
    let maxima_plan = if alpha.is_some() || equalize {
        let subset = whole.clone().limit(MAXIMA_SAMPLES, options.seed);
        Some(size_plan(&subset, &subset, feed, options)?)
    } else {
        None
    };
    let first_samples = maxima_plan.as_ref().map_or(0, |p| p.iter().map(|(_, d, _)| d.len() as u64).sum());
    let total = plan.iter().map(|(_, d, _)| d.len() as u64).sum::<u64>()
        + maxima_passes(&model, alpha, equalize) * first_samples;
    let mut done_before = 0;
    let (smoothing, equalization) = match &maxima_plan {
        Some(first_plan) => rewrite_measured(&mut model, feed, options, alpha, equalize, &mut |tapped, cpu, _| {
            let mut report = |done: u64| progress(done_before + done, total);
            let (pass, _) = run_sizes(tapped, first_plan, cpu, &mut report)?;
            done_before += pass.done;
            Ok(pass)
        })?,
        None => (None, None),
    };
    let mut report = |done: u64| progress(done_before + done, total);
    let tapped = TappedModel::from_model(model, feed, options.selection, ChannelMaxima::None)?;
    let (pass, per_size) = run_sizes(&tapped, &plan, options, &mut report)?;
    if pass.done == 0 {
        return Err(CalibrateError::NoImages { dir: images.to_path_buf(), skipped: pass.skipped.len() });
    }
    let skipped = pass.skipped.len() as u64;
    let images = ImagesInfo {
        folder: file_name(images),
        // Images, not passes: with several sizes an image counts once (`sizes` has the passes per size).
        count: if plan.len() > 1 { dataset.len() as u64 - skipped } else { pass.done },
        skipped,
        limit: options.limit,
        seed: options.seed,
        list_sha256: None,
        samples_sha256: Some(pass.samples.to_hex()),
        held_out,
        sizes: if plan.len() > 1 {
            plan.iter()
                .zip(per_size)
                .map(|((feed, _, _), count)| histograms::SizeImages {
                    size: feed.recipe().map_or([0, 0], |r| r.size),
                    count,
                })
                .collect()
        } else {
            Vec::new()
        },
        sizes_dealt: plan.len() > 1 && options.deal_sizes,
    };
    let shard_info = shard;
    let held_out = (!held.is_empty()).then_some(held);
    let hist = statistics(&tapped, pass, feed, arrays, images, options, smoothing, shard_info, held_out)?;
    Ok((HistFile { equalization, ..hist.0 }, hist.1))
}

/// The passes of a calibration: one per size of the recipe, each over its images (every image of `dataset`, or
/// with `deal_sizes` those `whole`, the list before any shard, deals to that size); one pass for a one-size
/// recipe or `.npz` samples.
fn size_plan(
    dataset: &Dataset,
    whole: &Dataset,
    feed: &Feed,
    options: &CalibrateOptions,
) -> Result<Vec<(Feed, Dataset, usize)>, CalibrateError> {
    let Some(recipe) = feed.recipe().filter(|r| r.is_multi_size()) else {
        if options.deal_sizes {
            return Err(CalibrateError::Input {
                model: dataset.root.clone(),
                message: "--deal-sizes deals the images over the recipe's sizes, and it has one: list several \
                          (sizes in the recipe, or --sizes)"
                    .into(),
            });
        }
        return Ok(vec![(feed.clone(), dataset.clone(), options.batch_size)]);
    };
    let feeds = recipe.each_size_batched(options.batch_size).into_iter().map(|(one, batch)| (Feed::Images(one), batch));
    Ok(if options.deal_sizes {
        let mine: std::collections::HashSet<&std::path::Path> =
            dataset.items.iter().map(|i| i.path.as_path()).collect();
        let hands = whole.deal(recipe.sizes.len(), options.seed).into_iter().map(|mut hand| {
            hand.items.retain(|i| mine.contains(i.path.as_path()));
            hand
        });
        feeds.zip(hands).map(|((f, batch), hand)| (f, hand, batch)).collect()
    } else {
        feeds.map(|(f, batch)| (f, dataset.clone(), batch)).collect()
    })
}

/// [`run_pass`] over each size of `plan` in turn, the statistics folded together (exactly: the merge is the
/// one-pass result); also the images done per size.
fn run_sizes(
    tapped: &TappedModel,
    plan: &[(Feed, Dataset, usize)],
    options: &CalibrateOptions,
    batch_done: &mut dyn FnMut(u64),
) -> Result<(Pass, Vec<u64>), CalibrateError> {
    let mut all: Option<Pass> = None;
    let mut per_size = Vec::with_capacity(plan.len());
    for (feed, dataset, batch_size) in plan {
        if dataset.is_empty() {
            per_size.push(0);
            continue;
        }
        let before = all.as_ref().map_or(0, |p| p.done);
        let options = CalibrateOptions { batch_size: *batch_size, ..options.clone() };
        let pass = run_pass(tapped, PassInput::Folder(dataset, feed), &options, &mut |d| batch_done(before + d))?;
        per_size.push(pass.done);
        all = Some(match all {
            None => pass,
            Some(mut a) => {
                a.merge(pass, &tapped.model.path)?;
                a
            }
        });
    }
    let pass = all.unwrap_or(Pass {
        stats: tapped.activations.iter().enumerate().map(|(i, _)| tapped.empty_stats(i)).collect(),
        channel_max: Default::default(),
        done: 0,
        skipped: Vec::new(),
        device_memory_peak_mb: None,
        samples: Default::default(),
    });
    Ok((pass, per_size))
}

/// The `.hist` and the summary of a finished pass.
#[allow(clippy::too_many_arguments)]
fn statistics(
    tapped: &TappedModel,
    pass: Pass,
    feed: &Feed,
    arrays: Option<Vec<histograms::ArraySpec>>,
    images: ImagesInfo,
    options: &CalibrateOptions,
    smoothing: Option<histograms::SmoothingRecord>,
    shard: Option<histograms::ShardInfo>,
    held_out: Option<Dataset>,
) -> Result<(HistFile, CalibrationSummary), CalibrateError> {
    let tensors = tapped
        .activations
        .iter()
        .zip(pass.stats)
        .map(|(a, stats)| TensorRecord {
            name: a.name.clone(),
            producer: a.producer.clone(),
            op: a.producer_op.clone(),
            stats,
        })
        .collect::<Vec<_>>();
    let hist = HistFile {
        format: HIST_FORMAT.into(),
        version: HIST_VERSION,
        content_sha256: None,
        producer: format!("int8kit calibrate {}", env!("CARGO_PKG_VERSION")),
        model: ModelInfo { file: file_name(&tapped.model.path), sha256: tapped.model.sha256.clone() },
        recipe: feed.recipe().cloned(),
        arrays,
        images,
        onnxruntime: runtime::version()?,
        histogram: HistogramInfo { bins: BINS, values: "abs".into() },
        collected: options.selection,
        smoothing,
        equalization: None,
        shard,
        tensors,
    };
    let summary = CalibrationSummary {
        images: pass.done,
        skipped: pass.skipped,
        tensors: hist.tensors.len(),
        not_collected: tapped.not_collected.clone(),
        device_memory_peak_mb: pass.device_memory_peak_mb,
        held_out,
    };
    Ok((hist, summary))
}

/// Samples a caller makes (the Python API's iterables), fed whole and in the order they come.
pub struct GivenSamples<'a> {
    /// What the `.hist` calls them (`images.folder`).
    pub name: String,
    /// The batches: preprocessed images in the recipe's batch shape (`Feed::Images`), or one array per model
    /// input (`Feed::Tensors`).
    pub batches: &'a mut dyn BatchSource,
    /// Samples expected, for progress (`None`: unknown).
    pub total: Option<u64>,
}

/// [`calibrate_model`] over batches the caller makes. Every sample is used, in order: nothing is held back,
/// limited or sharded (those choose from a listed folder). The `.hist` records `name` as the folder and
/// identifies the samples by the bytes fed, as a folder run does, so it equals a folder run's over the same
/// values byte for byte whatever the batch sizes, for a model neither smoothed nor equalized. Where it is, the
/// maxima come from the first [`MAXIMA_SAMPLES`] samples (read ahead and kept), where a folder run takes a
/// seeded subset of its list.
pub fn calibrate_batches(
    model: &Model,
    samples: GivenSamples<'_>,
    feed: &Feed,
    options: &CalibrateOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(HistFile, CalibrationSummary), CalibrateError> {
    check_options(model, feed, options)?;
    let refuse = |message: &str| Err(CalibrateError::Input { model: model.path.clone(), message: message.into() });
    if options.limit.is_some() {
        return refuse("limit picks a seeded subset of a listed folder; from an iterable, take fewer batches");
    }
    if options.shard.is_some() {
        return refuse("shards split a listed folder; give each process its own part of the iterable instead");
    }
    if let Some(recipe) = feed.recipe().filter(|r| r.is_multi_size()) {
        return refuse(&format!(
            "the recipe lists several sizes {:?}, and batches from an iterable come at the size the caller made \
             them: calibrate from a folder to cover every size, or give a one-size recipe",
            recipe.all_sizes()
        ));
    }
    if matches!(options.hold_out, HoldOut::Count(n) if n > 0) {
        return refuse("samples are held back from a listed folder only; pass the check samples separately");
    }
    let total = samples.total.unwrap_or(0);
    let mut recorded = Recorded::new(samples.batches, feed, &samples.name);
    let mut model = model.clone();
    // The maxima of smoothing and equalization come from the first MAXIMA_SAMPLES samples exactly (whatever the
    // batches), read ahead and kept for the statistics pass: an iterable is read once.
    let mut ahead = std::collections::VecDeque::new();
    let mut first = std::collections::VecDeque::new();
    let alpha = options.smoothing_alpha(&model);
    let equalize = equalizes(&model, options);
    if alpha.is_some() || equalize {
        let mut n = 0;
        while n < MAXIMA_SAMPLES {
            let Some(batch) = recorded.next() else { break };
            let batch = batch?;
            let mut head = batch.clone();
            if n + head.len() > MAXIMA_SAMPLES {
                head.split_off(MAXIMA_SAMPLES - n);
            }
            n += head.len();
            first.push_back(head);
            ahead.push_back(batch);
        }
    }
    let (smoothing, equalization) =
        rewrite_measured(&mut model, feed, options, alpha, equalize, &mut |tapped, cpu, last| {
            // The first samples are replayed for each maxima pass, and needed no more after the last.
            let ahead = if last { std::mem::take(&mut first) } else { first.clone() };
            let mut replay = ReadAhead { ahead, rest: None };
            run_pass(tapped, PassInput::Given(&mut replay), cpu, &mut |_| {})
        })?;
    let tapped = TappedModel::from_model(model, feed, options.selection, ChannelMaxima::None)?;
    let mut source = ReadAhead { ahead, rest: Some(&mut recorded) };
    let pass = run_pass(&tapped, PassInput::Given(&mut source), options, &mut |done| progress(done, total))?;
    drop(source);
    if pass.done == 0 {
        return refuse(&format!("'{}' gave no samples", samples.name));
    }
    let images = ImagesInfo {
        folder: samples.name.clone(),
        count: pass.done,
        skipped: 0,
        limit: None,
        seed: options.seed,
        list_sha256: None,
        samples_sha256: Some(pass.samples.to_hex()),
        held_out: None,
        sizes: Vec::new(),
        sizes_dealt: false,
    };
    let arrays = recorded.arrays.take();
    let (hist, summary) = statistics(&tapped, pass, feed, arrays, images, options, smoothing, None, None)?;
    Ok((HistFile { equalization, ..hist }, summary))
}

/// Whether calibration equalizes `model`: asked to, and the model has depthwise Convs.
fn equalizes(model: &Model, options: &CalibrateOptions) -> bool {
    options.equalize && !placement::depthwise_convs(&model.proto.graph).is_empty()
}

/// How many maxima passes [`rewrite_measured`] runs on `model`: one for smoothing with `alpha`, one for
/// equalization, one for both where [`ChannelMaxima::serves_both`].
fn maxima_passes(model: &Model, alpha: Option<f32>, equalize: bool) -> u64 {
    match (alpha, equalize) {
        (Some(_), true) if ChannelMaxima::serves_both(model) => 1,
        _ => u64::from(alpha.is_some()) + u64::from(equalize),
    }
}

/// Smooths `model` (`smoothquant::smooth`) with `alpha` (where given) and then equalizes its depthwise Conv
/// inputs (`smoothquant::equalize`, where `equalize`), from the per-channel maxima that `measure` collects: a
/// pass of the model tapped at those inputs, given the options to run it with (on the CPU, where the maxima are
/// taken) and whether it is the last such pass. A model both smoothed and equalized takes one pass for both
/// ([`ChannelMaxima::serves_both`]), else one each, the second of the smoothed model.
fn rewrite_measured(
    model: &mut Model,
    feed: &Feed,
    options: &CalibrateOptions,
    alpha: Option<f32>,
    equalize: bool,
    measure: &mut dyn FnMut(&TappedModel, &CalibrateOptions, bool) -> Result<Pass, CalibrateError>,
) -> Result<(Option<histograms::SmoothingRecord>, Option<histograms::EqualizationRecord>), CalibrateError> {
    let passes = maxima_passes(model, alpha, equalize);
    let mut smoothing = None;
    // The depthwise inputs' maxima, where the smoothing's pass took them too.
    let mut measured_with_smoothing = None;
    if let Some(alpha) = alpha {
        let which = if passes == 1 && equalize { ChannelMaxima::Both } else { ChannelMaxima::GemmInputs };
        let maxima = maxima_pass(model, feed, options, which, |tapped, cpu| measure(tapped, cpu, passes == 1))?;
        let gemm_inputs = ChannelMaxima::GemmInputs.tensors(model);
        let (gemms, depthwise): (BTreeMap<_, _>, BTreeMap<_, _>) =
            maxima.channel_max.into_iter().partition(|(name, _)| gemm_inputs.contains_key(name));
        let record = histograms::SmoothingRecord { alpha, samples: Some(maxima.done), channel_max: gemms };
        smoothquant::smooth(model, &record.channel_max, alpha)?;
        smoothing = Some(record);
        if which == ChannelMaxima::Both {
            measured_with_smoothing =
                Some(histograms::EqualizationRecord { samples: maxima.done, channel_max: depthwise });
        }
    }
    let equalization = match (equalize, measured_with_smoothing) {
        (false, _) => None,
        (true, Some(record)) => Some(record),
        (true, None) => {
            let depthwise = ChannelMaxima::DepthwiseInputs;
            let maxima = maxima_pass(model, feed, options, depthwise, |tapped, cpu| measure(tapped, cpu, true))?;
            Some(histograms::EqualizationRecord { samples: maxima.done, channel_max: maxima.channel_max })
        }
    };
    if let Some(record) = &equalization {
        smoothquant::equalize(model, &record.channel_max)?;
    }
    Ok((smoothing, equalization))
}

/// The pass `measure` runs of `model` tapped at the inputs `which` names, for their per-channel maxima, given the
/// options to run it with: those of `options` on the CPU, where the maxima are taken.
fn maxima_pass(
    model: &Model,
    feed: &Feed,
    options: &CalibrateOptions,
    which: ChannelMaxima,
    measure: impl FnOnce(&TappedModel, &CalibrateOptions) -> Result<Pass, CalibrateError>,
) -> Result<Pass, CalibrateError> {
    let tapped = TappedModel::from_model(model.clone(), feed, Selection::Quantizable, which)?;
    let cpu = CalibrateOptions { device: runtime::Devices::default(), ..options.clone() };
    measure(&tapped, &cpu)
}

/// Batches read ahead of a pass, then the rest of their source.
struct ReadAhead<'a> {
    ahead: std::collections::VecDeque<Batch>,
    rest: Option<&'a mut dyn BatchSource>,
}

impl Iterator for ReadAhead<'_> {
    type Item = Result<Batch, datasets::DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.ahead.pop_front() {
            Some(b) => Some(Ok(b)),
            None => self.rest.as_mut()?.next(),
        }
    }
}

impl BatchSource for ReadAhead<'_> {
    fn skipped(&self) -> Vec<(std::path::PathBuf, String)> {
        self.rest.as_ref().map_or_else(Vec::new, |r| r.skipped())
    }
}

/// Given batches, checked against the feed as they pass.
struct Recorded<'a> {
    inner: &'a mut dyn BatchSource,
    feed: &'a Feed,
    name: &'a str,
    batches: usize,
    /// For tensors: the arrays of one sample, as the first batch held them.
    arrays: Option<Vec<histograms::ArraySpec>>,
}

impl<'a> Recorded<'a> {
    fn new(inner: &'a mut dyn BatchSource, feed: &'a Feed, name: &'a str) -> Recorded<'a> {
        Recorded { inner, feed, name, batches: 0, arrays: None }
    }

    /// Checks one batch, and notes the arrays of its samples.
    fn record(&mut self, batch: &Batch) -> Result<(), datasets::DatasetError> {
        let n = batch.len();
        let wrong = |message: String| datasets::DatasetError::Tensors {
            path: std::path::PathBuf::from(format!("{} (batch {})", self.name, self.batches)),
            message,
        };
        match self.feed {
            Feed::Images(recipe) => {
                let want = recipe.batch_shape(n);
                if batch.shape != want
                    || batch.data.len() != want.iter().product::<usize>()
                    || !batch.tensors.is_empty()
                {
                    return Err(wrong(format!(
                        "shape {:?}, but the recipe makes {want:?} ({:?} layout, float32) for {n} samples",
                        batch.shape, recipe.layout
                    )));
                }
            }
            Feed::Tensors => {
                for a in &batch.tensors {
                    if a.shape.first() != Some(&n) || a.data.len() != a.shape.iter().product::<usize>() {
                        return Err(wrong(format!(
                            "array '{}' has shape {:?} and {} values; every array of a batch of {n} samples needs \
                             {n} first and one value per element",
                            a.name,
                            a.shape,
                            a.data.len()
                        )));
                    }
                }
                if self.arrays.is_none() {
                    self.arrays = Some(
                        batch
                            .tensors
                            .iter()
                            .map(|a| {
                                let mut shape = a.shape.clone();
                                shape[0] = 1;
                                histograms::ArraySpec { name: a.name.clone(), dtype: a.data.dtype().into(), shape }
                            })
                            .collect(),
                    );
                }
            }
        }
        self.batches += 1;
        Ok(())
    }
}

impl Iterator for Recorded<'_> {
    type Item = Result<Batch, datasets::DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.inner.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        Some(self.record(&batch).map(|()| batch))
    }
}

impl BatchSource for Recorded<'_> {
    fn skipped(&self) -> Vec<(std::path::PathBuf, String)> {
        self.inner.skipped()
    }
}

/// Batches on their way to the model, each sample's bytes added to the identity of the samples fed (the
/// `.hist`'s `samples_sha256`, validate's `validation_samples_sha256`).
pub struct Digesting<'a> {
    inner: &'a mut dyn BatchSource,
    samples: histograms::SamplesDigest,
}

impl<'a> Digesting<'a> {
    /// `inner`'s batches, digested as they pass.
    pub fn new(inner: &'a mut dyn BatchSource) -> Digesting<'a> {
        Digesting { inner, samples: Default::default() }
    }

    /// The identity of the samples passed so far.
    pub fn digest(&self) -> &histograms::SamplesDigest {
        &self.samples
    }
}

impl Digesting<'_> {
    /// Adds each sample of `batch`: an image's values, or its arrays in input-name order.
    fn add(&mut self, batch: &Batch) {
        use sha2::Digest;
        let n = batch.len();
        // Each array of a sample with its values per sample.
        let arrays: Vec<(feeds::Values<'_>, usize)> = if batch.tensors.is_empty() {
            vec![(feeds::Values::Pixels(&batch.data), batch.shape[1..].iter().product())]
        } else {
            let mut named: Vec<&feeds::NamedArray> = batch.tensors.iter().collect();
            named.sort_by(|a, b| a.name.cmp(&b.name));
            named.iter().map(|a| (a.data.view(), a.data.len() / n.max(1))).collect()
        };
        for i in 0..n {
            let mut hasher = sha2::Sha256::new();
            for (values, per) in &arrays {
                // A few kB at a time: no copy of a whole sample (a 224x224 image is 602 kB).
                for from in (i * per..(i + 1) * per).step_by(1024) {
                    hasher.update(values.le_bytes(from, (from + 1024).min((i + 1) * per)));
                }
            }
            self.samples.add_sample_sha256(hasher.finalize().into());
        }
    }
}

impl Iterator for Digesting<'_> {
    type Item = Result<Batch, datasets::DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        let next = self.inner.next();
        if let Some(Ok(batch)) = &next {
            self.add(batch);
        }
        next
    }
}

impl BatchSource for Digesting<'_> {
    fn skipped(&self) -> Vec<(std::path::PathBuf, String)> {
        self.inner.skipped()
    }
}

/// The samples `hist`'s calibration held back, found again in `images` (the calibration folder): the same
/// list, `limit` and seed give the same slice. Refused when the folder's list is not the one calibrated on.
pub fn held_out_slice(images: &Path, hist: &HistFile) -> Result<Option<Dataset>, CalibrateError> {
    Ok(split_as_calibrated(images, hist)?.1)
}

/// The samples `hist`'s statistics were taken from, found again in `images` (the calibration folder): all of
/// its list but the held-back slice (before any shard). Refused as [`held_out_slice`] is.
pub fn held_in_slice(images: &Path, hist: &HistFile) -> Result<Dataset, CalibrateError> {
    Ok(split_as_calibrated(images, hist)?.0)
}

/// `images`' list as `hist`'s calibration split it: the rest and the held-back slice (if any).
fn split_as_calibrated(images: &Path, hist: &HistFile) -> Result<(Dataset, Option<Dataset>), CalibrateError> {
    let mut dataset = Dataset::flat(images)?;
    if let Some(n) = hist.images.limit {
        dataset = dataset.limit(n, hist.images.seed);
    }
    let Some(record) = &hist.images.held_out else { return Ok((dataset, None)) };
    let differs = |what: &str| CalibrateError::Input {
        model: images.to_path_buf(),
        message: format!(
            "{what} is not the one the .hist's held-back samples came from (calibrated on folder '{}', {} samples \
             held back); pass the calibration folder unchanged",
            hist.images.folder, record.count
        ),
    };
    // Files before version 8 and shards name the whole list; a whole run from version 8 must fit the list's
    // length to its counts (and the held-back slice's paths are checked below).
    let whole_list = hist.shard.as_ref().and_then(|s| s.whole_list_sha256.as_ref());
    let fits = match hist.images.list_sha256.as_ref().or(whole_list) {
        Some(list) => dataset.list_sha256() == *list,
        None => dataset.len() as u64 == hist.images.count + hist.images.skipped + record.count,
    };
    if !fits {
        return Err(differs("this folder's sample list"));
    }
    let (rest, held) = if hist.version < 8 {
        dataset.hold_out_before_v8(record.count as usize, record.seed)
    } else {
        dataset.hold_out(record.count as usize, record.seed)
    };
    if held.list_sha256() != record.list_sha256 {
        return Err(differs("the slice chosen from this folder"));
    }
    Ok((rest, Some(held)))
}

/// Where a pass's batches come from.
enum PassInput<'a> {
    /// A listed folder, streamed in batches of the options' size.
    Folder(&'a Dataset, &'a Feed),
    /// Batches a caller makes, taken as they come.
    Given(&'a mut dyn BatchSource),
}

/// How a CPU pass shares its threads between ONNX Runtime and the binning, which run at the same time on
/// consecutive batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ThreadLayout {
    /// ONNX Runtime's intra-op threads.
    onnx_runtime: usize,
    /// Threads that bin the activations.
    binning: usize,
    /// Whether ONNX Runtime's idle workers spin (only where no other work needs their cores).
    spinning: bool,
}

impl ThreadLayout {
    fn for_pass(selection: Selection, threads: usize) -> ThreadLayout {
        let threads = threads.max(1);
        match selection {
            // Every activation: the binning is as heavy as the model, half the threads each (ORT scales poorly
            // on small ops, so this beats taking turns with all threads each).
            Selection::All => {
                let onnx_runtime = threads.div_ceil(2);
                ThreadLayout { onnx_runtime, binning: (threads - onnx_runtime).max(1), spinning: false }
            }
            // Four cores or more: a quarter bin on cores of their own and ONNX Runtime's workers spin on the
            // rest. On the GPU machine's 16-core Xeon (fixture ViT, 4000 images) this took calibrate from 1.8x
            // to 1.2x the forward pass: with one binning thread the binning could not keep up, and workers
            // that sleep between ops cost a ViT 1.8x at 16 threads (BENCHMARKS.md).
            Selection::Quantizable if threads >= 4 => {
                ThreadLayout { onnx_runtime: threads - threads / 4, binning: threads / 4, spinning: true }
            }
            // Two or three cores: ONNX Runtime takes them all and sleeps when idle; one thread bins in its gaps
            // (spinning workers cost 20 % here, a dedicated binning core far more).
            Selection::Quantizable => ThreadLayout { onnx_runtime: threads, binning: 1, spinning: false },
        }
    }
}

/// One pass of the images through the tapped model: statistics of every activation (measured or copied) and
/// the per-channel maxima it collects. `batch_done(images so far)` is called after each batch.
fn run_pass(
    tapped: &TappedModel,
    input: PassInput<'_>,
    options: &CalibrateOptions,
    batch_done: &mut dyn FnMut(u64),
) -> Result<Pass, CalibrateError> {
    let model_path = &tapped.model.path;
    let label = model_path.display().to_string();
    let mut folder_stream;
    let stream: &mut dyn BatchSource = match input {
        PassInput::Folder(dataset, feed) => {
            let batch_size = tapped.model.batch_size_for(&tapped.input, options.batch_size, dataset.len())?;
            if batch_size > 1
                && tapped.model.fixed_batch(&tapped.input).is_some()
                && options.on_bad_image == OnBadImage::Skip
            {
                // A skipped image would leave a batch short of the fixed size, which the model cannot take.
                return Err(CalibrateError::Input {
                    model: model_path.to_path_buf(),
                    message: format!(
                        "input '{}' has a fixed batch of {batch_size}, and a skipped image would leave a batch short \
                         of it: use --on-bad-image fail (or remove the unreadable images), or export the model with \
                         a dynamic batch",
                        tapped.input
                    ),
                });
            }
            folder_stream = BatchStream::new(
                dataset,
                feed,
                // One size per pass (`run_sizes`): the batch is already the size's.
                StreamOptions { batch_size, on_bad_image: options.on_bad_image, ..Default::default() },
            );
            &mut folder_stream
        }
        PassInput::Given(batches) => batches,
    };
    let mut digesting = Digesting::new(stream);
    let stream: &mut dyn BatchSource = &mut digesting;

    runtime::check_threads(options.threads)?;
    let threads = runtime::threads_or_cores(options.threads);
    let layout = ThreadLayout::for_pass(options.selection, threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(layout.binning)
        .thread_name(|i| format!("int8kit-hist-{i}"))
        .build()
        .map_err(|e| CalibrateError::Threads(e.to_string()))?;
    let mut cfg = runtime::SessionConfig::new(&label);
    cfg.intra_threads = layout.onnx_runtime;
    cfg.external_data_dir = Some(tapped.model.dir.clone());
    // A GPU pass's CPU threads only feed the device: they never spin.
    cfg.spinning = layout.spinning && !options.device.is_cuda();
    cfg.device = options.device.first();
    let bytes = tapped.model.to_bytes()?;

    let outputs = tapped.output_names();
    let mut fed_stats = FedStats::new(tapped);

    let mut done = 0u64;
    let mut device_memory_peak_mb = None;
    let (measured_stats, measured_channels) = if options.device.is_cuda() {
        let (stats, peak) = collect_on_gpus(
            &bytes,
            &cfg,
            options.device.list(),
            tapped,
            &outputs,
            &mut |batch| {
                fed_stats.add(batch);
                done += batch.items.len() as u64;
                batch_done(done);
            },
            stream,
        )?;
        device_memory_peak_mb = Some(peak);
        (stats, vec![None; outputs.len()])
    } else {
        let mut session = runtime::session_from_bytes(&bytes, &cfg)?;
        let max = run_budget(options.run_values_max, layout.onnx_runtime);
        collect_on_cpu(&mut session, &label, tapped, &outputs, stream, pool, &mut fed_stats, max, &mut |n| {
            done += n;
            batch_done(done);
        })?
    };
    let stats = tapped.plan.assemble(tapped.activations.len(), fed_stats.into_slots(), measured_stats);
    let mut channel_max = std::collections::BTreeMap::new();
    for (name, c) in outputs.iter().zip(measured_channels) {
        match c {
            Some((_, Ok(c))) if !c.max.is_empty() => {
                channel_max.insert(name.clone(), c);
            }
            Some((axis, Err(m))) => {
                let axis = match axis {
                    ChannelAxis::Last => "last axis",
                    ChannelAxis::One => "axis 1",
                };
                return Err(CalibrateError::Input {
                    model: model_path.to_path_buf(),
                    message: format!(
                        "tensor '{name}' changed its {axis} from {} to {} channels between batches: per-channel \
                         maxima need a fixed channel count",
                        m.had, m.got
                    ),
                });
            }
            _ => {}
        }
    }
    let skipped = stream.skipped();
    Ok(Pass { stats, channel_max, done, skipped, device_memory_peak_mb, samples: digesting.samples })
}

/// The GPU pass: activations stay on the GPU (ONNX Runtime writes them to device memory through an IoBinding
/// and the kernels of `gpu` reduce them there; only the final statistics come back). One session per entry
/// of `devices`, each on a thread of its own; batches are dealt to them in turn, and their statistics merge
/// exactly, so any device list gives the one-GPU `.hist`. `dealt(batch)` runs on this thread as each batch
/// is handed out. Returns the statistics and the peak device memory (MB, the largest of the devices).
fn collect_on_gpus(
    bytes: &[u8],
    cfg: &runtime::SessionConfig,
    devices: &[runtime::Device],
    tapped: &TappedModel,
    outputs: &[String],
    dealt: &mut dyn FnMut(&Batch),
    stream: &mut dyn BatchSource,
) -> Result<(Vec<TensorStats>, f64), CalibrateError> {
    let label = cfg.label.clone();
    let range_only = tapped.measured_range_only();
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(devices.len());
        let mut workers = Vec::with_capacity(devices.len());
        for &device in devices {
            // One batch in flight per device and one waiting: memory stays bounded whatever the image count.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
            senders.push(tx);
            let (label, input) = (label.clone(), &tapped.input);
            let mut cfg = cfg.clone();
            cfg.device = device;
            let range_only = &range_only;
            workers.push(scope.spawn(move || -> Result<(Vec<TensorStats>, f64), CalibrateError> {
                let mut session = runtime::session_from_bytes(bytes, &cfg)?;
                let mut gpu = crate::gpu::GpuStats::new(device, outputs.len())?;
                gpu.keep_range_only(range_only);
                let mut bound = runtime::BoundRun::new(&session, device, outputs, &label)?;
                // One batch's statistics kernels run while the model runs on the next: a bound run's outputs
                // stay valid until the run after next starts, and add_async waits for the batch before.
                for batch in rx {
                    let tensors = bound.run(&mut session, input, &batch.shape, &batch.data)?;
                    gpu.add_async(&tensors)?;
                }
                Ok((gpu.finish()?, gpu.memory_peak_mb()))
            }));
        }
        let mut dealing = || -> Result<(), CalibrateError> {
            for (i, batch) in (&mut *stream).enumerate() {
                let batch = batch?;
                dealt(&batch);
                if senders[i % senders.len()].send(batch).is_err() {
                    break; // that device's thread stopped; joining it below reports why
                }
            }
            Ok(())
        };
        let dealt_all = dealing();
        drop(senders);
        let mut merged: Option<Vec<TensorStats>> = None;
        let mut peak = 0f64;
        for worker in workers {
            let (stats, device_peak) =
                worker.join().map_err(|_| CalibrateError::Threads("a GPU thread panicked".into()))??;
            peak = peak.max(device_peak);
            match &mut merged {
                None => merged = Some(stats),
                Some(all) => all.iter_mut().zip(&stats).for_each(|(a, b)| a.merge(b)),
            }
        }
        dealt_all?;
        Ok((merged.unwrap_or_default(), peak))
    })
}

/// Statistics of the float inputs the host feeds (the image, or float arrays of `.npz` samples), taken from
/// each batch's values rather than read back from ONNX Runtime.
struct FedStats<'t> {
    tapped: &'t TappedModel,
    stats: Vec<TensorStats>,
}

impl<'t> FedStats<'t> {
    fn new(tapped: &'t TappedModel) -> FedStats<'t> {
        FedStats { tapped, stats: tapped.fed.iter().map(|&(i, _)| tapped.empty_stats(i)).collect() }
    }

    fn add(&mut self, batch: &Batch) {
        let inputs = batch.inputs(&self.tapped.input);
        for ((_, name), stats) in self.tapped.fed.iter().zip(&mut self.stats) {
            if let Some(values) = inputs.iter().find(|i| i.name == name).and_then(|i| i.values.as_f32()) {
                stats.add(values);
            }
        }
    }

    /// `(activation index, statistics)` per fed input.
    fn into_slots(self) -> Vec<(usize, TensorStats)> {
        self.tapped.fed.iter().map(|(i, _)| *i).zip(self.stats).collect()
    }
}

/// Statistics of the measured tensors, and the per-channel maxima of those that collect them (`None` for the
/// others; an error when the channel count changed between batches).
type MeasuredStats = (Vec<TensorStats>, Vec<Option<(ChannelAxis, ChannelResult)>>);

/// One tensor's per-channel maxima, or the channel counts that did not agree between batches.
type ChannelResult = Result<histograms::ChannelMax, histograms::ChannelMismatch>;

/// The CPU pass: ONNX Runtime and the histograms run at the same time on consecutive batches.
#[allow(clippy::too_many_arguments)]
fn collect_on_cpu(
    session: &mut runtime::Session,
    label: &str,
    tapped: &TappedModel,
    outputs: &[String],
    stream: &mut dyn BatchSource,
    pool: rayon::ThreadPool,
    fed_stats: &mut FedStats<'_>,
    run_values_max: usize,
    batch_done: &mut dyn FnMut(u64),
) -> Result<MeasuredStats, CalibrateError> {
    // A rendezvous channel: at most two batches of activations exist at once (one being histogrammed, one
    // being computed), which bounds memory whatever the number of images.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<runtime::OwnedOutput>>(0);
    let mut stats = tapped.empty_measured_stats();
    let (run_result, measured_stats) = std::thread::scope(|scope| {
        let wanted = &tapped.channel_max;
        let histograms = scope.spawn(move || {
            let mut channels: Vec<Option<(ChannelAxis, ChannelResult)>> =
                wanted.iter().map(|w| w.map(|axis| (axis, Ok(Default::default())))).collect();
            for outs in rx {
                pool.install(|| {
                    stats.par_iter_mut().zip(channels.par_iter_mut()).zip(outs.par_iter()).for_each(|((s, c), o)| {
                        if let Some(values) = o.as_f32() {
                            s.add(values);
                            if let Some((axis, Ok(acc))) = c {
                                let axis = *axis;
                                let dims: Vec<usize> = o.shape().iter().map(|&d| d.max(0) as usize).collect();
                                let added = match axis {
                                    ChannelAxis::One => {
                                        let inner = dims.iter().skip(2).product::<usize>();
                                        acc.add_planes(values, dims.get(1).copied().unwrap_or(0), inner)
                                    }
                                    ChannelAxis::Last => acc.add(values, dims.last().copied().unwrap_or(0)),
                                };
                                if let Err(e) = added {
                                    *c = Some((axis, Err(e)));
                                }
                            }
                        }
                    })
                });
            }
            (stats, channels)
        });
        let run = (|| -> Result<(), CalibrateError> {
            // Tapped output values per sample in the last run (the first run is one sample; batches of `.npz`
            // samples of several shapes change it).
            let mut per_sample: Option<usize> = None;
            let fixed_batch = tapped.model.fixed_batch(&tapped.input).is_some();
            'batches: for batch in &mut *stream {
                let mut batch = batch?;
                fed_stats.add(&batch);
                let samples = batch.len();
                while !batch.is_empty() {
                    let take = match per_sample {
                        _ if fixed_batch => batch.len(),
                        None => 1,
                        Some(values) => run_samples(batch.len(), values, run_values_max),
                    };
                    let rest = batch.split_off(take);
                    let outs = runtime::run(session, label, &batch.inputs(&tapped.input), outputs)?;
                    let values: usize = outs.iter().map(|o| o.as_f32().map_or(0, <[f32]>::len)).sum();
                    per_sample = Some(values / take.max(1));
                    if tx.send(outs).is_err() {
                        break 'batches; // the histogram thread died; joining it below reports why
                    }
                    batch = rest;
                }
                batch_done(samples as u64);
            }
            Ok(())
        })();
        drop(tx);
        let stats = histograms.join().map_err(|_| CalibrateError::Threads("the histogram thread panicked".into()));
        (run, stats)
    });
    run_result?;
    measured_stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(name: &str, op: Option<&str>, input: &str) -> Activation {
        Activation {
            name: name.into(),
            producer: op.map(|o| format!("{o}_node_{name}")),
            producer_op: op.map(str::to_string),
            producer_inputs: if input.is_empty() { vec![] } else { vec![input.into()] },
        }
    }

    #[test]
    fn many_cores_give_the_binning_a_quarter_of_its_own_and_few_cores_share_them() {
        let layout = |selection, threads| {
            let l = ThreadLayout::for_pass(selection, threads);
            (l.onnx_runtime, l.binning, l.spinning)
        };
        assert_eq!(layout(Selection::Quantizable, 16), (12, 4, true));
        assert_eq!(layout(Selection::Quantizable, 8), (6, 2, true));
        assert_eq!(layout(Selection::Quantizable, 4), (3, 1, true));
        // Two or three cores: ORT on all of them, sleeping when idle, one binning thread in its gaps.
        assert_eq!(layout(Selection::Quantizable, 2), (2, 1, false));
        assert_eq!(layout(Selection::Quantizable, 1), (1, 1, false));
        // Every activation: half each, never spinning.
        assert_eq!(layout(Selection::All, 16), (8, 8, false));
        assert_eq!(layout(Selection::All, 1), (1, 1, false));
        for threads in 1..=64 {
            let l = ThreadLayout::for_pass(Selection::Quantizable, threads);
            assert!(l.binning >= 1 && l.onnx_runtime >= 1, "{threads} threads: {l:?}");
            assert!(!l.spinning || l.onnx_runtime + l.binning == threads, "spinning workers share no core");
        }
    }

    #[test]
    fn runs_get_a_budget_per_two_threads_and_batches_split_evenly() {
        // Small budgets: this machine's free memory caps none of them.
        assert_eq!(run_budget(100, 1), 100);
        assert_eq!(run_budget(100, 2), 100);
        assert_eq!(run_budget(100, 3), 200);
        assert_eq!(run_budget(100, 12), 600);
        assert_eq!(run_budget(100, 64), 1600, "at most 16 times the budget");
        // 4 GB free: at most 64 Mi values per run.
        assert_eq!(memory_cap_values(4 << 30), 64 << 20);
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   8388608 kB\n";
        assert_eq!(mem_available_bytes(meminfo), Some(8 << 30));
        assert_eq!(mem_available_bytes("MemTotal: 1 kB\n"), None);
        assert_eq!(cgroup_room_bytes("max\n", "100\n"), None, "no limit");
        assert_eq!(cgroup_room_bytes("4294967296\n", "1073741824\n"), Some(3 << 30));
        assert_eq!(cgroup_room_bytes("100\n", "200\n"), Some(0));
        // 16 samples of 18 values, 256 per run: 14 would fit, two runs of 8 instead of 14 + 2.
        assert_eq!(run_samples(16, 18, 256), 8);
        assert_eq!(run_samples(16, 18, 1 << 20), 16);
        // Six runs: the first takes 3 and the rest is split again (3, 3, 3, 3, 2, 2 rather than five 3s and a 1).
        assert_eq!(run_samples(16, 18, 60), 3);
        assert_eq!(run_samples(4, 18, 60), 2);
        assert_eq!(run_samples(16, 1000, 10), 1, "a sample over the budget still runs, alone");
        assert_eq!(run_samples(1, 18, 256), 1);
        assert_eq!(run_samples(7, 0, 256), 7);
    }

    /// The digest of a batch is that of each sample's little-endian bytes (FORMATS.md): an image's float32
    /// values, also when longer than the hashing chunk, or an `.npz` sample's arrays by name.
    #[test]
    fn each_sample_is_digested_as_its_little_endian_bytes() {
        let per = 3 * 40 * 40; // 19200 bytes: several rounds of the 4096-byte buffer
        let data: Vec<f32> = (0..2 * per).map(|i| (i as f32).sin()).collect();
        let items = (0..2).map(|i| datasets::ImageItem { path: format!("{i}.png").into(), label: None }).collect();
        let batch = Batch { data: data.clone(), shape: [2, 3, 40, 40], items, tensors: Vec::new() };
        struct One(Option<Batch>);
        impl Iterator for One {
            type Item = Result<Batch, datasets::DatasetError>;
            fn next(&mut self) -> Option<Self::Item> {
                self.0.take().map(Ok)
            }
        }
        impl BatchSource for One {}
        let mut source = One(Some(batch));
        let mut digesting = Digesting { inner: &mut source, samples: Default::default() };
        assert!(digesting.next().is_some() && digesting.next().is_none());
        let mut want = histograms::SamplesDigest::default();
        for image in data.chunks(per) {
            let bytes: Vec<u8> = image.iter().flat_map(|v| v.to_le_bytes()).collect();
            want.add_sample([bytes.as_slice()]);
        }
        assert_eq!(digesting.samples, want);

        // `.npz` samples: each sample's arrays in name order, whatever order the batch holds them in.
        let ids: Vec<i64> = (0..2 * 1500).collect();
        let mask: Vec<f32> = (0..2 * 3).map(|i| i as f32).collect();
        let tensors = vec![
            feeds::NamedArray { name: "mask".into(), shape: vec![2, 3], data: feeds::ArrayData::F32(mask.clone()) },
            feeds::NamedArray { name: "ids".into(), shape: vec![2, 1500], data: feeds::ArrayData::I64(ids.clone()) },
        ];
        let items = (0..2).map(|i| datasets::ImageItem { path: format!("{i}.npz").into(), label: None }).collect();
        let mut source = One(Some(Batch { data: Vec::new(), shape: [2, 0, 0, 0], items, tensors }));
        let mut digesting = Digesting { inner: &mut source, samples: Default::default() };
        assert!(digesting.next().is_some());
        let mut want = histograms::SamplesDigest::default();
        for i in 0..2 {
            let ids: Vec<u8> = ids[i * 1500..(i + 1) * 1500].iter().flat_map(|v| v.to_le_bytes()).collect();
            let mask: Vec<u8> = mask[i * 3..(i + 1) * 3].iter().flat_map(|v| v.to_le_bytes()).collect();
            want.add_sample([ids.as_slice(), mask.as_slice()]);
        }
        assert_eq!(digesting.samples, want);
    }

    #[test]
    fn a_rearranged_chain_is_measured_once_where_the_gemm_reads_it() {
        let acts = vec![
            act("x", None, ""),
            act("a", Some("MatMul"), "x"),
            act("b", Some("Transpose"), "a"),
            act("c", Some("Reshape"), "b"),
            act("d", Some("Reshape"), "x"),
        ];
        let plain = CollectionPlan::new(&acts, &Default::default());
        assert_eq!(plain.measured, vec![1]);
        assert_eq!(plain.source, vec![0, 1, 1, 1, 0]);
        let prefer: std::collections::HashSet<String> = ["c".to_string(), "d".to_string()].into();
        let plan = CollectionPlan::new(&acts, &prefer);
        assert_eq!(plan.measured, vec![3]);
        assert_eq!(plan.source, vec![0, 3, 3, 3, 0], "the fed input keeps its host-side statistics");
        let s = |v: f32| {
            let mut t = TensorStats::default();
            t.add(&[v]);
            t
        };
        let all = plan.assemble(5, vec![(0, s(1.0))], vec![s(2.0)]);
        assert_eq!(all.iter().map(|t| t.max.unwrap()).collect::<Vec<_>>(), vec![1.0, 2.0, 2.0, 2.0, 1.0]);
    }
}
