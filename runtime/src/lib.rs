//! Finds and loads ONNX Runtime, and builds sessions over in-memory models.
//!
//! The library is looked up at run time, never at a path compiled into the binary ([`locate`]): the
//! `ORT_DYLIB_PATH` environment variable, then the `onnxruntime` package of the Python environment the
//! running binary sits in, then the user's data directory where [`install`] (`int8kit setup`) puts it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
pub use ort::session::Session;
pub use ort::value::Tensor;

/// The ONNX Runtime release int8kit is tested with (the PyPI `onnxruntime` wheel of this version).
pub const ORT_VERSION: &str = "1.32.0";
/// The GPU build used with `--device cuda` (the PyPI `onnxruntime-gpu` wheel, built for CUDA 13 and cuDNN 9).
pub const ORT_GPU_VERSION: &str = "1.31.1";

mod device;
mod error;
mod locate;
#[cfg(feature = "cuda")]
pub use device::BoundRun;
pub use device::{cuda_device_check, cuda_device_count, Device, DeviceTensor, Devices, Placement};
pub use error::RuntimeError;
pub use feeds::{Input, Values};
pub use locate::{data_dir, install, install_command_line, locate, Flavor};

/// Set before the library is loaded when a CUDA device is wanted: the CPU wheel has no CUDA EP.
static WANT_GPU_LIBRARY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the next library lookup look for onnxruntime-gpu. Call before anything loads ONNX Runtime; an
/// already loaded CPU library stays, and creating a CUDA session then fails with a message saying so.
pub fn use_device(device: Device) {
    if device.is_cuda() {
        WANT_GPU_LIBRARY.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The build the next lookup wants.
fn wanted_flavor() -> Flavor {
    if WANT_GPU_LIBRARY.load(std::sync::atomic::Ordering::SeqCst) {
        Flavor::Gpu
    } else {
        Flavor::Cpu
    }
}

struct Loaded {
    env: Environment,
    path: PathBuf,
}

static RUNTIME: OnceLock<Result<Loaded, String>> = OnceLock::new();

fn load(path: &Path) -> ort::Result<Environment> {
    let builder = ort::init_from(path).map_err(|e| ort::Error::new(e.to_string()))?;
    let env =
        builder.with_name("int8kit").with_telemetry(false).with_logger(std::sync::Arc::new(log_onnxruntime)).build()?;
    // What ONNX Runtime printed before the logger was ours: warnings and errors.
    env.set_log_level(ort::logging::LogLevel::Warning);
    Ok(env)
}

/// ONNX Runtime's log lines go to `tracing` (target `onnxruntime`) instead of its own coloured stderr. One
/// kind is not an error for int8kit's users: the CUDA EP first asks cuDNN's graph API for a Conv plan and,
/// when none fits (`[cudnn_frontend] Error: No execution plans support the graph`, four lines on the
/// fixture ResNet's FP16 model), runs that Conv through cuDNN's other API; the run goes on and its results
/// are what the graph means. That is said once, plainly, and the lines stay at debug level.
fn log_onnxruntime(level: ort::logging::LogLevel, category: &str, _id: &str, location: &str, message: &str) {
    use ort::logging::LogLevel;
    static CUDNN_FALLBACK_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if is_cudnn_frontend_fallback(message) {
        if !CUDNN_FALLBACK_SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(target: "onnxruntime", "{CUDNN_FALLBACK_NOTE}");
        }
        tracing::debug!(target: "onnxruntime", %location, "{message}");
        return;
    }
    match level {
        LogLevel::Fatal | LogLevel::Error => tracing::error!(target: "onnxruntime", %category, %location, "{message}"),
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", %category, %location, "{message}"),
        LogLevel::Info | LogLevel::Verbose => tracing::debug!(target: "onnxruntime", %category, %location, "{message}"),
    }
}

/// What int8kit says, once, instead of ONNX Runtime's cuDNN-frontend error lines.
const CUDNN_FALLBACK_NOTE: &str = "cuDNN's graph API has no plan for some Conv shapes of this model on this GPU; \
    ONNX Runtime runs those Convs through cuDNN's legacy API instead (same results)";

/// Whether an ONNX Runtime log line is the CUDA EP's cuDNN-frontend miss after which it falls back.
fn is_cudnn_frontend_fallback(message: &str) -> bool {
    message.contains("[cudnn_frontend]") && message.contains("No execution plans support the graph")
}

/// Orders CUDA work between the threads of one process. cuDNN's engine heuristics (queried inside a run,
/// the first time a Conv meets an input shape) capture the session's stream for a moment
/// (`cuda_graph_util::CudaGraphInfo::init` under `cudnnBackendFinalize`, thread-local mode; seen with
/// bench/scripts/capture_trace.c on an H200, onnxruntime-gpu 1.31.1, cuDNN 9), and any device-wide
/// synchronisation in another thread during that capture fails with CUDA error 900 ("operation not permitted
/// when stream is capturing"). Runs hold this shared and never synchronise the whole device (outputs are
/// complete when a run returns: ONNX Runtime synchronises the session's streams at the end of every run);
/// creating a CUDA session, which may synchronise the device, holds it exclusively.
static CUDA_WORK: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held while a session runs (see [`CUDA_WORK`]).
pub(crate) fn running() -> std::sync::RwLockReadGuard<'static, ()> {
    CUDA_WORK.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held while CUDA state that may synchronise the device is set up (see [`CUDA_WORK`]).
pub(crate) fn setting_up_cuda() -> std::sync::RwLockWriteGuard<'static, ()> {
    CUDA_WORK.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn loaded() -> Result<&'static Loaded, RuntimeError> {
    let path = locate(wanted_flavor())?;
    let result =
        RUNTIME.get_or_init(|| load(&path).map(|env| Loaded { env, path: path.clone() }).map_err(|e| e.to_string()));
    result.as_ref().map_err(|message| RuntimeError::Load { path, message: message.clone() })
}

/// The loaded library's version (e.g. "1.32.0"): from its build string's release branch, else from its file
/// name (`libonnxruntime.so.1.32.0`, as the PyPI wheels ship it), else the whole build string.
pub fn version() -> Result<String, RuntimeError> {
    let lib = loaded()?;
    let info = ort::info();
    let from_branch =
        info.split(|c: char| c == ',' || c.is_whitespace()).find_map(|part| part.strip_prefix("git-branch=rel-"));
    let file = lib.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let from_file = file.split_once(".so.").map(|(_, v)| v).filter(|v| v.starts_with(|c: char| c.is_ascii_digit()));
    Ok(from_branch.or(from_file).unwrap_or(info).to_string())
}

/// Loads ONNX Runtime once per process and returns the path it came from.
pub fn init() -> Result<PathBuf, RuntimeError> {
    loaded().map(|l| l.path.clone())
}

/// The most threads a run may ask for: far beyond any machine's cores, and low enough that a typo such as
/// `--threads 10000` is an error rather than a run that never finishes.
pub const MAX_THREADS: usize = 1024;

/// `threads`, or the machine's cores for 0 (the "one per core" of `--threads 0`).
pub fn threads_or_cores(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Refuses a thread count above [`MAX_THREADS`].
pub fn check_threads(threads: usize) -> Result<(), RuntimeError> {
    if threads > MAX_THREADS {
        return Err(RuntimeError::Threads(threads));
    }
    Ok(())
}

/// How a session is built.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per core).
    pub intra_threads: usize,
    /// Folder that external data locations are relative to (for models loaded from memory).
    pub external_data_dir: Option<PathBuf>,
    /// Whether idle worker threads spin. Off when other work (histograms) shares the cores.
    pub spinning: bool,
    /// A name for error messages, usually the model's path.
    pub label: String,
    /// Where the model runs: ONNX Runtime's CPU EP, or its CUDA EP (TF32 off) on one GPU.
    pub device: Device,
    /// Whether ONNX Runtime rewrites the graph before running it.
    pub graph_optimization: GraphOptimization,
}

/// How much ONNX Runtime may rewrite a graph before it runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphOptimization {
    /// Every level of rewrites (fusions, constant folding, layout changes): the fast path, for graphs whose
    /// result the rewrites do not change.
    #[default]
    All,
    /// None: the nodes run as the graph lists them. For graphs that compute in FP16/BF16, whose result ONNX
    /// Runtime's CPU rewrites change (README, "Evaluating FP16 graphs").
    Disabled,
}

impl GraphOptimization {
    /// The name reports use: `all` or `disabled`.
    pub fn name(self) -> &'static str {
        match self {
            GraphOptimization::All => "all",
            GraphOptimization::Disabled => "disabled",
        }
    }
}

impl SessionConfig {
    /// Applies a placement (threads and device).
    pub fn place(mut self, placement: Placement) -> SessionConfig {
        self.intra_threads = placement.threads;
        self.device = placement.device;
        self
    }

    /// A CPU configuration with ONNX Runtime's thread defaults.
    pub fn new(label: impl Into<String>) -> SessionConfig {
        SessionConfig {
            intra_threads: 0,
            external_data_dir: None,
            spinning: true,
            label: label.into(),
            device: Device::Cpu,
            graph_optimization: GraphOptimization::All,
        }
    }
}

fn build_session(env: &Environment, bytes: &[u8], cfg: &SessionConfig) -> ort::Result<Session> {
    // Builder errors carry the builder and are not Send/Sync: keep them inside this function.
    let level = match cfg.graph_optimization {
        GraphOptimization::All => GraphOptimizationLevel::All,
        GraphOptimization::Disabled => GraphOptimizationLevel::Disable,
    };
    let mut builder = Session::builder(env)?
        .with_optimization_level(level)?
        .with_inter_threads(1)?
        .with_intra_op_spinning(cfg.spinning)?;
    if cfg.intra_threads > 0 {
        builder = builder.with_intra_threads(cfg.intra_threads)?;
    }
    if let Some(dir) = &cfg.external_data_dir {
        builder =
            builder.with_config_entry("session.model_external_initializers_file_folder_path", dir.to_string_lossy())?;
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(id) = cfg.device {
        // TF32 off: FP32 references must be FP32 (TF32 matmuls keep 10 mantissa bits). error_on_failure: a
        // silent fallback to the CPU EP would report CPU numbers as GPU ones.
        let cuda = ort::ep::CUDA::default().with_device_id(id as i32).with_tf32(false).build().error_on_failure();
        builder = builder.with_execution_providers([cuda])?;
    }
    builder.commit_from_memory(bytes)
}

/// A short identity of a serialized model: equal bytes, equal id (std's SipHash with fixed keys, not a
/// cryptographic hash; for logs only).
fn graph_id(bytes: &[u8]) -> String {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    format!("{:016x}", h.finish())
}

/// A session over a serialized model.
pub fn session_from_bytes(bytes: &[u8], cfg: &SessionConfig) -> Result<Session, RuntimeError> {
    check_threads(cfg.intra_threads)?;
    if cfg.device.is_cuda() {
        use_device(cfg.device);
        cuda_device_check(cfg.device)?;
    }
    let rt = loaded()?;
    // Which graph each session runs, for `RUST_LOG=int8kit::sessions=debug`: a test counts them per graph.
    tracing::debug!(target: "int8kit::sessions", model = %cfg.label, graph = %graph_id(bytes), device = %cfg.device, "session");
    let _exclusive = cfg.device.is_cuda().then(setting_up_cuda);
    build_session(&rt.env, bytes, cfg).map_err(|e| {
        let mut message = e.to_string();
        if cfg.device.is_cuda() {
            message = format!(
                "{message}. The CUDA execution provider could not start from {}: it needs onnxruntime-gpu \
                 {ORT_GPU_VERSION} (`int8kit setup --gpu`) with CUDA 13 and cuDNN 9 on LD_LIBRARY_PATH",
                rt.path.display()
            );
        }
        RuntimeError::Session { model: cfg.label.clone(), message }
    })
}

/// An output taken out of a run: it owns its ONNX Runtime buffer (or, for an FP16/BF16 output, its values as
/// float32), so the session can run again while another thread reads it.
pub struct OwnedOutput(Owned);

enum Owned {
    /// ONNX Runtime's value, as the model gave it.
    Value(ort::value::DynValue),
    /// An FP16/BF16 output's shape and values, widened to float32 (exactly).
    Widened(Vec<i64>, Vec<f32>),
}

impl OwnedOutput {
    fn new(value: ort::value::DynValue) -> OwnedOutput {
        use ort::value::TensorElementType as T;
        fn widen<X: ort::value::PrimitiveTensorElementType + Copy + 'static>(
            value: &ort::value::DynValue,
            to_f32: impl Fn(X) -> f32,
        ) -> Option<Owned> {
            let (shape, v) = value.try_extract_tensor::<X>().ok()?;
            Some(Owned::Widened(shape.iter().copied().collect(), v.iter().map(|&x| to_f32(x)).collect()))
        }
        // The element type is looked at first rather than tried: a failed extraction builds an error message,
        // and this runs for every tensor of every batch of a calibration pass.
        let widened = match value.dtype() {
            ort::value::ValueType::Tensor { ty: T::Float16, .. } => widen(&value, half::f16::to_f32),
            ort::value::ValueType::Tensor { ty: T::Bfloat16, .. } => widen(&value, half::bf16::to_f32),
            _ => None,
        };
        OwnedOutput(widened.unwrap_or(Owned::Value(value)))
    }

    /// The tensor's dimensions (of a float output; empty for others).
    pub fn shape(&self) -> Vec<i64> {
        match &self.0 {
            Owned::Value(v) => {
                v.try_extract_tensor::<f32>().map(|(s, _)| s.iter().copied().collect()).unwrap_or_default()
            }
            Owned::Widened(shape, _) => shape.clone(),
        }
    }

    /// The values, if the output is a float tensor (float32, or FP16/BF16 widened to float32).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.0 {
            Owned::Value(v) => v.try_extract_tensor::<f32>().ok().map(|(_, v)| v),
            Owned::Widened(_, values) => Some(values),
        }
    }
}

/// The numpy name of an ONNX element type (`float32`, `int64`, ...), for messages and checks.
fn dtype_name(ty: ort::value::TensorElementType) -> String {
    use ort::value::TensorElementType as T;
    match ty {
        T::Float32 => "float32".into(),
        T::Float16 => "float16".into(),
        T::Bfloat16 => "bfloat16".into(),
        T::Float64 => "float64".into(),
        T::Int64 => "int64".into(),
        T::Int32 => "int32".into(),
        T::Int16 => "int16".into(),
        T::Int8 => "int8".into(),
        T::Uint8 => "uint8".into(),
        T::Uint16 => "uint16".into(),
        T::Bool => "bool".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// How a float32 value is turned into what a model input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Narrowing {
    /// Fed as it is.
    None,
    /// Pixels to a uint8 input: whole levels.
    Levels,
    /// float32 to an FP16 input (round to nearest even).
    F16,
    /// float32 to a BF16 input.
    Bf16,
}

/// Each model input gets exactly one of `inputs`, of its element type (float32 also feeds an FP16/BF16 input);
/// anything else is an error naming the input and what the model takes. Returns, per input, how its values
/// are narrowed to the input's type.
fn check_inputs(session: &Session, label: &str, inputs: &[Input<'_>]) -> Result<Vec<Narrowing>, RuntimeError> {
    let refuse = |message: String| RuntimeError::Feed { model: label.to_string(), message };
    let takes: Vec<(String, Option<String>)> = session
        .inputs()
        .iter()
        .map(|i| {
            let ty = match i.dtype() {
                ort::value::ValueType::Tensor { ty, .. } => Some(dtype_name(*ty)),
                _ => None,
            };
            (i.name().to_string(), ty)
        })
        .collect();
    let listing = || {
        takes
            .iter()
            .map(|(n, t)| format!("{n} ({})", t.as_deref().unwrap_or("not a tensor")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut narrowings = Vec::with_capacity(inputs.len());
    for input in inputs {
        let Some((_, ty)) = takes.iter().find(|(n, _)| n == input.name) else {
            return Err(refuse(format!(
                "'{}' is not an input of the model; its inputs are: {}",
                input.name,
                listing()
            )));
        };
        let given = input.values.dtype();
        // Pixels go to a uint8 input as whole levels; float32 values to an FP16/BF16 input rounded.
        let narrowing = match (input.values, ty.as_deref()) {
            (Values::Pixels(_), Some("uint8")) => Narrowing::Levels,
            (Values::Pixels(_) | Values::F32(_), Some("float16")) => Narrowing::F16,
            (Values::Pixels(_) | Values::F32(_), Some("bfloat16")) => Narrowing::Bf16,
            _ => Narrowing::None,
        };
        narrowings.push(narrowing);
        if ty.as_deref() != Some(given) && narrowing == Narrowing::None {
            return Err(refuse(format!(
                "input '{}' takes {} but is given {given} values: store it as {} (numpy: x.astype(...))",
                input.name,
                ty.as_deref().unwrap_or("a non-tensor value"),
                ty.as_deref().unwrap_or("a tensor")
            )));
        }
        if input.values.len() != input.shape.iter().product::<usize>() {
            return Err(refuse(format!(
                "input '{}': {} values for shape {:?}",
                input.name,
                input.values.len(),
                input.shape
            )));
        }
    }
    if let Some((missing, ty)) = takes.iter().find(|(n, _)| !inputs.iter().any(|i| i.name == n)) {
        return Err(refuse(format!(
            "model input '{missing}' ({}) gets no values: every sample needs an array of that name",
            ty.as_deref().unwrap_or("not a tensor")
        )));
    }
    Ok(narrowings)
}

/// Runs a session on one batch (one value per model input) and returns the requested outputs, in order, as
/// values that outlive the run (float ones readable as float32, [`OwnedOutput::as_f32`]).
pub fn run(
    session: &mut Session,
    label: &str,
    inputs: &[Input<'_>],
    outputs: &[String],
) -> Result<Vec<OwnedOutput>, RuntimeError> {
    let run_err = |e: ort::Error| RuntimeError::Run { model: label.to_string(), message: e.to_string() };
    let narrowings = check_inputs(session, label, inputs)?;
    // Values narrowed to the input's type, kept until the run ends.
    enum Narrowed {
        Levels(Vec<u8>),
        F16(Vec<half::f16>),
        Bf16(Vec<half::bf16>),
    }
    let narrowed: Vec<Option<Narrowed>> = inputs
        .iter()
        .zip(narrowings)
        .map(|(i, narrowing)| {
            let v = i.values.as_f32()?;
            match narrowing {
                Narrowing::None => None,
                Narrowing::Levels => Some(Narrowed::Levels(v.iter().map(|&x| x.clamp(0.0, 255.0) as u8).collect())),
                Narrowing::F16 => Some(Narrowed::F16(v.iter().map(|&x| half::f16::from_f32(x)).collect())),
                Narrowing::Bf16 => Some(Narrowed::Bf16(v.iter().map(|&x| half::bf16::from_f32(x)).collect())),
            }
        })
        .collect();
    let mut feed: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> =
        Vec::with_capacity(inputs.len());
    for (input, narrowed) in inputs.iter().zip(&narrowed) {
        fn view<'v, T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
            shape: &'v [usize],
            data: &'v [T],
        ) -> ort::Result<ort::session::SessionInputValue<'v>> {
            Ok(ort::value::TensorRef::from_array_view((shape, data))?.into_dyn().into())
        }
        let shape = input.shape;
        let value = match (input.values, narrowed) {
            (_, Some(Narrowed::Levels(v))) => view(shape, v.as_slice()),
            (_, Some(Narrowed::F16(v))) => view(shape, v.as_slice()),
            (_, Some(Narrowed::Bf16(v))) => view(shape, v.as_slice()),
            (Values::Pixels(v) | Values::F32(v), None) => view(shape, v),
            (Values::F64(v), None) => view(shape, v),
            (Values::I64(v), None) => view(shape, v),
            (Values::I32(v), None) => view(shape, v),
            (Values::I16(v), None) => view(shape, v),
            (Values::I8(v), None) => view(shape, v),
            (Values::U8(v), None) => view(shape, v),
            (Values::U16(v), None) => view(shape, v),
            (Values::Bool(v), None) => view(shape, v),
        }
        .map_err(run_err)?;
        feed.push((input.name.into(), value));
    }
    let mut result = {
        let _shared = running();
        session.run(feed).map_err(run_err)?
    };
    let mut owned = Vec::with_capacity(outputs.len());
    for name in outputs {
        let value = result.remove(name).ok_or_else(|| RuntimeError::Run {
            model: label.to_string(),
            message: format!("output '{name}' missing from the results"),
        })?;
        owned.push(OwnedOutput::new(value));
    }
    Ok(owned)
}

/// Runs a session on one batch and returns the shape of each requested output.
pub fn run_shapes(
    session: &mut Session,
    label: &str,
    inputs: &[Input<'_>],
    outputs: &[String],
) -> Result<Vec<(String, Vec<i64>)>, RuntimeError> {
    let owned = run(session, label, inputs, outputs)?;
    Ok(outputs.iter().cloned().zip(owned.iter().map(|o| o.shape())).collect())
}

/// Runs a session on one batch and returns its first requested output's values.
pub fn run_rows(
    session: &mut Session,
    label: &str,
    inputs: &[Input<'_>],
    output: &str,
) -> Result<Vec<f32>, RuntimeError> {
    run_per_sample(session, label, inputs, output, 0)
}

/// [`run_rows`] with the output's axis `batch_axis` (the one that holds the batch's samples) moved to the front,
/// so that each sample's values are contiguous: a CTC recognizer exported sequence-first gives `[time, batch,
/// classes]`, whose rows would otherwise mix the samples.
pub fn run_per_sample(
    session: &mut Session,
    label: &str,
    inputs: &[Input<'_>],
    output: &str,
    batch_axis: usize,
) -> Result<Vec<f32>, RuntimeError> {
    let owned = run(session, label, inputs, &[output.to_string()])?;
    let first = owned.first();
    match first.and_then(|o| o.as_f32()) {
        Some(values) if batch_axis == 0 => Ok(values.to_vec()),
        Some(values) => {
            let shape: Vec<usize> =
                first.map(|o| o.shape()).unwrap_or_default().iter().map(|&d| d.max(0) as usize).collect();
            Ok(batch_first(values, &shape, batch_axis))
        }
        None => Err(RuntimeError::Run {
            model: label.to_string(),
            message: format!("output '{output}' is not a float tensor"),
        }),
    }
}

/// `values` of a tensor of `shape` with axis `axis` moved to the front (the others in their order); as they are
/// where the axis is 0 or not an axis of the shape.
pub fn batch_first(values: &[f32], shape: &[usize], axis: usize) -> Vec<f32> {
    if axis == 0 || axis >= shape.len() || shape.iter().product::<usize>() != values.len() {
        return values.to_vec();
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let samples = shape[axis];
    let mut out = Vec::with_capacity(values.len());
    for sample in 0..samples {
        for o in 0..outer {
            let start = (o * samples + sample) * inner;
            out.extend_from_slice(&values[start..start + inner]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_first_moves_the_sample_axis_to_the_front() {
        // [time 2, batch 3, classes 2]: value = 100 t + 10 b + c.
        let shape = [2, 3, 2];
        let values: Vec<f32> =
            (0..2).flat_map(|t| (0..3).flat_map(move |b| (0..2).map(move |c| (100 * t + 10 * b + c) as f32))).collect();
        let moved = batch_first(&values, &shape, 1);
        let expected: Vec<f32> =
            (0..3).flat_map(|b| (0..2).flat_map(move |t| (0..2).map(move |c| (100 * t + 10 * b + c) as f32))).collect();
        assert_eq!(moved, expected);
        assert_eq!(batch_first(&values, &shape, 0), values);
        assert_eq!(batch_first(&values, &shape, 3), values, "not an axis");
    }

    #[test]
    fn only_the_cudnn_frontend_miss_is_taken_for_the_fallback() {
        // The line as ONNX Runtime 1.31.1 logs it on the fixture ResNet's FP16 model (H200).
        assert!(is_cudnn_frontend_fallback("[cudnn_frontend] Error: No execution plans support the graph."));
        assert!(!is_cudnn_frontend_fallback("[cudnn_frontend] Error: CUDNN_STATUS_EXECUTION_FAILED"));
        assert!(!is_cudnn_frontend_fallback("No execution plans support the graph (not from cuDNN's frontend)"));
        assert!(!is_cudnn_frontend_fallback("CUDA failure 900: operation not permitted when stream is capturing"));
    }
}
