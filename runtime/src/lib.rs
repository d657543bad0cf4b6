//! Finds and loads ONNX Runtime, and builds sessions over in-memory models.
//!
//! The library is looked up in this order: the `ORT_DYLIB_PATH` environment variable, then the project-local
//! install that `cargo xtask` performs (`.int8kit/onnxruntime-<version>/` at the workspace root). Nothing is
//! downloaded here; [`install_project_local`] is what xtask calls to do that.

use std::path::{Path, PathBuf};
use std::process::Command;
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
pub use device::{cuda_device_check, BoundRun, Device, DeviceTensor, Placement};

/// Set before the library is loaded when a CUDA device is wanted: the CPU wheel has no CUDA EP.
static WANT_GPU_LIBRARY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the next library lookup look for onnxruntime-gpu. Call before anything loads ONNX Runtime; an
/// already loaded CPU library stays, and creating a CUDA session then fails with a message saying so.
pub fn use_device(device: Device) {
    if device.is_cuda() {
        WANT_GPU_LIBRARY.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn wants_gpu() -> bool {
    WANT_GPU_LIBRARY.load(std::sync::atomic::Ordering::SeqCst)
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("onnxruntime-gpu not found (needed for --device cuda). Install it with `{}` (it needs CUDA 13 and cuDNN 9 on LD_LIBRARY_PATH), or point ORT_DYLIB_PATH at onnxruntime-gpu's libonnxruntime.so", gpu_install_command_line())]
    GpuNotFound,
    #[error("no usable CUDA device for --device {device}: {message}")]
    NoCuda { device: String, message: String },
    #[error("ONNX Runtime library not found. Run `cargo xtask setup` from the int8kit checkout (it runs `{}`), or point ORT_DYLIB_PATH at an existing libonnxruntime.so", install_command_line(&project_local_dir()))]
    NotFound,
    #[error("ORT_DYLIB_PATH={0} does not exist; point it at libonnxruntime.so (e.g. <site-packages>/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}) or unset it")]
    EnvPathMissing(PathBuf),
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("installing ONNX Runtime {ORT_VERSION} into {dir} failed: {message}. Run `{command}` by hand to see why, or set ORT_DYLIB_PATH")]
    Install { dir: PathBuf, command: String, message: String },
    #[error("ONNX Runtime could not create a session for {model}: {message}")]
    Session { model: String, message: String },
    #[error("ONNX Runtime failed running {model}: {message}")]
    Run { model: String, message: String },
}

/// Where `cargo xtask setup` installs the pinned ONNX Runtime: `.int8kit/` at the workspace root.
pub fn project_local_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).join(".int8kit").join(format!("onnxruntime-{ORT_VERSION}"))
}

/// Where the pinned onnxruntime-gpu is looked for: `.int8kit/onnxruntime-gpu-<version>/`.
pub fn project_local_gpu_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).join(".int8kit").join(format!("onnxruntime-gpu-{ORT_GPU_VERSION}"))
}

fn gpu_install_command_line() -> String {
    format!(
        "python3 -m pip install --no-deps --target {} onnxruntime-gpu=={ORT_GPU_VERSION}",
        project_local_gpu_dir().display()
    )
}

fn library_in(dir: &Path) -> PathBuf {
    dir.join("onnxruntime").join("capi").join(format!("libonnxruntime.so.{ORT_VERSION}"))
}

fn install_command_line(dir: &Path) -> String {
    format!("python3 -m pip install --no-deps --target {} onnxruntime=={ORT_VERSION}", dir.display())
}

/// The library to load, without loading it.
pub fn locate() -> Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(RuntimeError::EnvPathMissing(p)) };
    }
    if wants_gpu() {
        let gpu = project_local_gpu_dir()
            .join("onnxruntime")
            .join("capi")
            .join(format!("libonnxruntime.so.{ORT_GPU_VERSION}"));
        return if gpu.is_file() { Ok(gpu) } else { Err(RuntimeError::GpuNotFound) };
    }
    let local = library_in(&project_local_dir());
    if local.is_file() {
        return Ok(local);
    }
    Err(RuntimeError::NotFound)
}

/// Installs the pinned wheel into the project-local folder (once) and returns the library path.
/// pip writes into a temporary folder that is renamed into place, so an interrupted install leaves nothing.
pub fn install_project_local() -> Result<PathBuf, RuntimeError> {
    let dir = project_local_dir();
    let lib = library_in(&dir);
    if lib.is_file() {
        return Ok(lib);
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    let fail =
        |message: String| RuntimeError::Install { dir: dir.clone(), command: install_command_line(&dir), message };
    std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
    let staging = parent.join(format!(".staging-onnxruntime-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target"])
        .arg(&staging)
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .status()
        .map_err(|e| fail(format!("cannot start python3: {e}")))?;
    if !status.success() || !library_in(&staging).is_file() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(fail(format!("pip exited with {status}")));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir).map_err(|e| fail(e.to_string()))?;
    Ok(lib)
}

struct Loaded {
    env: Environment,
    path: PathBuf,
}

static RUNTIME: OnceLock<Result<Loaded, String>> = OnceLock::new();

fn load(path: &Path) -> ort::Result<Environment> {
    let builder = ort::init_from(path).map_err(|e| ort::Error::new(e.to_string()))?;
    builder.with_name("int8kit").with_telemetry(false).build()
}

fn loaded() -> Result<&'static Loaded, RuntimeError> {
    let path = locate()?;
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
}

impl SessionConfig {
    /// Applies a placement (threads and device).
    pub fn place(mut self, placement: Placement) -> SessionConfig {
        self.intra_threads = placement.threads;
        self.device = placement.device;
        self
    }

    pub fn new(label: impl Into<String>) -> SessionConfig {
        SessionConfig {
            intra_threads: 0,
            external_data_dir: None,
            spinning: true,
            label: label.into(),
            device: Device::Cpu,
        }
    }
}

fn build_session(env: &Environment, bytes: &[u8], cfg: &SessionConfig) -> ort::Result<Session> {
    // Builder errors carry the builder and are not Send/Sync: keep them inside this function.
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_inter_threads(1)?
        .with_intra_op_spinning(cfg.spinning)?;
    if cfg.intra_threads > 0 {
        builder = builder.with_intra_threads(cfg.intra_threads)?;
    }
    if let Some(dir) = &cfg.external_data_dir {
        builder =
            builder.with_config_entry("session.model_external_initializers_file_folder_path", dir.to_string_lossy())?;
    }
    if let Device::Cuda(id) = cfg.device {
        // TF32 off: FP32 references must be FP32 (TF32 matmuls keep 10 mantissa bits). error_on_failure: a
        // silent fallback to the CPU EP would report CPU numbers as GPU ones.
        let cuda = ort::ep::CUDA::default().with_device_id(id as i32).with_tf32(false).build().error_on_failure();
        builder = builder.with_execution_providers([cuda])?;
    }
    builder.commit_from_memory(bytes)
}

/// A session over a serialized model.
pub fn session_from_bytes(bytes: &[u8], cfg: &SessionConfig) -> Result<Session, RuntimeError> {
    if cfg.device.is_cuda() {
        use_device(cfg.device);
        cuda_device_check(cfg.device)?;
    }
    let rt = loaded()?;
    build_session(&rt.env, bytes, cfg).map_err(|e| {
        let mut message = e.to_string();
        if cfg.device.is_cuda() {
            message = format!(
                "{message}. The CUDA execution provider could not start from {}: it needs onnxruntime-gpu \
                 {ORT_GPU_VERSION} (`{}`) with CUDA 13 and cuDNN 9 on LD_LIBRARY_PATH",
                rt.path.display(),
                gpu_install_command_line()
            );
        }
        RuntimeError::Session { model: cfg.label.clone(), message }
    })
}

/// An output taken out of a run: it owns its ONNX Runtime buffer, so the session can run again while
/// another thread reads it.
pub struct OwnedOutput(ort::value::DynValue);

impl OwnedOutput {
    /// The tensor's dimensions.
    pub fn shape(&self) -> Vec<i64> {
        self.0.try_extract_tensor::<f32>().map(|(s, _)| s.iter().copied().collect()).unwrap_or_default()
    }

    /// The values, if the output is a float32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        self.0.try_extract_tensor::<f32>().ok().map(|(_, v)| v)
    }
}

/// Runs a single-input session on a float32 batch and returns the requested outputs, in order, as values
/// that outlive the run.
pub fn run_f32_owned(
    session: &mut Session,
    label: &str,
    input_name: &str,
    shape: &[usize],
    data: &[f32],
    outputs: &[String],
) -> Result<Vec<OwnedOutput>, RuntimeError> {
    let run_err = |e: ort::Error| RuntimeError::Run { model: label.to_string(), message: e.to_string() };
    let tensor = ort::value::TensorRef::from_array_view((shape, data)).map_err(run_err)?;
    let mut result = session.run(ort::inputs![input_name => tensor]).map_err(run_err)?;
    let mut owned = Vec::with_capacity(outputs.len());
    for name in outputs {
        let value = result.remove(name).ok_or_else(|| RuntimeError::Run {
            model: label.to_string(),
            message: format!("output '{name}' missing from the results"),
        })?;
        let out = OwnedOutput(value);
        if out.as_f32().is_none() {
            return Err(RuntimeError::Run {
                model: label.to_string(),
                message: format!("output '{name}' is not float32"),
            });
        }
        owned.push(out);
    }
    Ok(owned)
}

/// Runs a single-input session and returns the shape of each requested output.
pub fn run_f32_shapes(
    session: &mut Session,
    label: &str,
    input_name: &str,
    shape: &[usize],
    data: &[f32],
    outputs: &[String],
) -> Result<Vec<(String, Vec<i64>)>, RuntimeError> {
    let owned = run_f32_owned(session, label, input_name, shape, data, outputs)?;
    Ok(outputs.iter().cloned().zip(owned.iter().map(|o| o.shape())).collect())
}

/// Runs a single-input session on a float32 batch and hands the requested float32 outputs, as flat slices
/// in the order of `outputs`, to `consume`. The slices live in ONNX Runtime's buffers: nothing is copied.
pub fn run_f32<R>(
    session: &mut Session,
    label: &str,
    input_name: &str,
    shape: &[usize],
    data: &[f32],
    outputs: &[String],
    consume: impl FnOnce(Vec<&[f32]>) -> R,
) -> Result<R, RuntimeError> {
    let owned = run_f32_owned(session, label, input_name, shape, data, outputs)?;
    // run_f32_owned checked that every output is float32.
    let slices = owned.iter().map(|o| o.as_f32().unwrap_or(&[])).collect();
    Ok(consume(slices))
}
