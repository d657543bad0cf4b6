//! `--engine tensorrt`: a thin adapter over TensorRT's `trtexec`. UNTESTED: no TensorRT can be installed
//! where int8kit is developed. It builds a strongly typed engine from the Q/DQ model (TensorRT 11 requires
//! that; TensorRT 10 accepts it) and evaluates each batch by one `trtexec` call with `--loadInputs` and
//! `--exportOutput`. Slow (a process per batch) but with no binding to TensorRT's C++ API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::compare::BatchModel;
use crate::EvaluateError;

/// What can go wrong with `trtexec`.
#[derive(Debug, thiserror::Error)]
pub enum TensorRtError {
    /// `trtexec` is not on PATH.
    #[error("--engine tensorrt needs TensorRT's `trtexec` on PATH, and none was found; install TensorRT 10 or 11, or use --engine ort")]
    NotOnPath,
    /// `trtexec` could not be started.
    #[error("cannot start trtexec: {0}")]
    Start(#[source] std::io::Error),
    /// The engine build failed.
    #[error("trtexec could not build an engine from {model} ({status})")]
    Build {
        /// The Q/DQ model.
        model: PathBuf,
        /// trtexec's exit status.
        status: std::process::ExitStatus,
    },
    /// A batch run failed.
    #[error("trtexec failed running a batch: {stderr}")]
    Run {
        /// What trtexec printed on stderr.
        stderr: String,
    },
    /// The exchange files could not be written or read.
    #[error("trtexec exchange file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// trtexec's exported output is not what was expected.
    #[error("{path}: unexpected trtexec output: {message}")]
    Output {
        /// The exported JSON.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A TensorRT engine built from the Q/DQ model, run batch by batch through `trtexec`.
pub struct TrtExec {
    engine: PathBuf,
    input: String,
    work: PathBuf,
    seconds: f64,
}

/// Whether `trtexec` is on PATH.
pub fn on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("trtexec").is_file()))
}

impl TrtExec {
    /// Builds `<out>/model.engine` from the Q/DQ model.
    pub fn build(qdq: &Path, input: &str, out: &Path) -> Result<TrtExec, TensorRtError> {
        if !on_path() {
            return Err(TensorRtError::NotOnPath);
        }
        let engine = out.join("model.engine");
        let status = Command::new("trtexec")
            .arg(format!("--onnx={}", qdq.display()))
            .arg("--stronglyTyped")
            .arg(format!("--saveEngine={}", engine.display()))
            .status()
            .map_err(TensorRtError::Start)?;
        if !status.success() {
            return Err(TensorRtError::Build { model: qdq.to_path_buf(), status });
        }
        let work = out.join("trtexec-io");
        std::fs::create_dir_all(&work).map_err(|source| TensorRtError::Io { path: work.clone(), source })?;
        Ok(TrtExec { engine, input: input.to_string(), work, seconds: 0.0 })
    }
}

impl BatchModel for TrtExec {
    fn seconds(&self) -> f64 {
        self.seconds
    }

    fn run(&mut self, batch: &datasets::Batch) -> Result<Vec<f32>, EvaluateError> {
        let input = self.work.join("input.bin");
        let output = self.work.join("output.json");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TensorRtError::Io { path, source }
        };
        let mut f = std::fs::File::create(&input).map_err(io(&input))?;
        let bytes: Vec<u8> = batch.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        f.write_all(&bytes).map_err(io(&input))?;
        let shape = batch.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let start = Instant::now();
        let status = Command::new("trtexec")
            .arg(format!("--loadEngine={}", self.engine.display()))
            .arg(format!("--loadInputs='{}':{}", self.input, input.display()))
            .arg(format!("--shapes={}:{shape}", self.input))
            .arg(format!("--exportOutput={}", output.display()))
            .args(["--iterations=1", "--warmUp=0", "--duration=0"])
            .output()
            .map_err(TensorRtError::Start)?;
        self.seconds += start.elapsed().as_secs_f64();
        if !status.status.success() {
            return Err(TensorRtError::Run { stderr: String::from_utf8_lossy(&status.stderr).into_owned() }.into());
        }
        // trtexec writes [{"name": ..., "dimensions": "AxB", "values": [...]}, ...]; the first is the output.
        #[derive(serde::Deserialize)]
        struct Exported {
            values: Vec<f32>,
        }
        let text = std::fs::read_to_string(&output).map_err(io(&output))?;
        let bad = |message: String| TensorRtError::Output { path: output.clone(), message };
        let exported: Vec<Exported> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let first = exported.into_iter().next().ok_or_else(|| bad("no output tensor".into()))?;
        Ok(first.values)
    }
}
