//! What can go wrong finding, loading and running ONNX Runtime.

use std::path::PathBuf;

use crate::{Flavor, ORT_GPU_VERSION, ORT_VERSION};

/// Errors of the runtime layer; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No library in any of the places looked at.
    #[error(
        "{} not found. Looked in: (1) ORT_DYLIB_PATH (not set); (2) the Python environment of this program \
         ({python}); (3) {data}. Run `int8kit setup{}` to install it into (3) (it runs `python3 -m pip install \
         {}=={}`), or `pip install {}=={}` into the environment int8kit is installed in, or point ORT_DYLIB_PATH \
         at a libonnxruntime.so",
        flavor.package(),
        if *flavor == Flavor::Gpu { " --gpu" } else { "" },
        flavor.package(),
        flavor.version(),
        flavor.package(),
        flavor.version()
    )]
    NotFound {
        /// Which build was looked for.
        flavor: Flavor,
        /// What the Python-environment lookup saw.
        python: String,
        /// The data directory looked at.
        data: String,
    },
    /// `ORT_DYLIB_PATH` names a file that does not exist.
    #[error("ORT_DYLIB_PATH={0} does not exist; point it at libonnxruntime.so (e.g. <site-packages>/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}) or unset it")]
    EnvPathMissing(PathBuf),
    /// The user's data directory cannot be determined.
    #[error("cannot tell where the user's data directory is: neither XDG_DATA_HOME nor HOME is set to an absolute path; set one of them, or ORT_DYLIB_PATH")]
    NoDataDir,
    /// A CUDA device was asked for but the GPU build of ONNX Runtime is not there.
    #[error("onnxruntime-gpu {ORT_GPU_VERSION} not found (needed for --device cuda) at {0}; run `int8kit setup --gpu` (it needs CUDA 13 and cuDNN 9 on LD_LIBRARY_PATH), or point ORT_DYLIB_PATH at onnxruntime-gpu's libonnxruntime.so")]
    GpuNotFound(String),
    /// More threads than any machine has cores.
    #[error("--threads {0}: at most {max} threads (0 = one per core)", max = crate::MAX_THREADS)]
    Threads(usize),
    /// No usable CUDA device.
    #[error("no usable CUDA device for --device {device}: {message}")]
    NoCuda {
        /// The device asked for.
        device: String,
        /// What is missing.
        message: String,
    },
    /// The values given do not fit the model's inputs (a missing or unknown input, another element type).
    #[error("{model}: {message}")]
    Feed {
        /// The model.
        model: String,
        /// Which input and what it takes.
        message: String,
    },
    /// The library exists but could not be loaded.
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load {
        /// The library file.
        path: PathBuf,
        /// ONNX Runtime's or the loader's message.
        message: String,
    },
    /// pip could not install the library.
    #[error(
        "installing {package} into {dir} failed: {message}. Run `{command}` by hand to see why, or set ORT_DYLIB_PATH"
    )]
    Install {
        /// The package that was being installed.
        package: String,
        /// The folder it was going into.
        dir: PathBuf,
        /// The equivalent command line.
        command: String,
        /// What failed.
        message: String,
    },
    /// ONNX Runtime refused the model.
    #[error("ONNX Runtime could not create a session for {model}: {message}")]
    Session {
        /// The model's name or path.
        model: String,
        /// ONNX Runtime's message.
        message: String,
    },
    /// A run failed.
    #[error("ONNX Runtime failed running {model}: {message}")]
    Run {
        /// The model's name or path.
        model: String,
        /// ONNX Runtime's message.
        message: String,
    },
}
