//! `--engine tensorrt`: a thin adapter over TensorRT's `trtexec`. UNTESTED: no TensorRT can be installed
//! where int8kit is developed. It builds a strongly typed engine from the Q/DQ model (TensorRT 11 requires
//! that; TensorRT 10 accepts it) and evaluates each batch by one `trtexec` call with `--loadInputs` and
//! `--exportOutput`. Slow (a process per batch) but with no binding to TensorRT's C++ API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use analyze::evaluate::BatchModel;
use analyze::AnalyzeError;
use anyhow::{bail, Context};

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
    pub fn build(qdq: &Path, input: &str, out: &Path) -> anyhow::Result<TrtExec> {
        if !on_path() {
            bail!("--engine tensorrt needs TensorRT's `trtexec` on PATH, and none was found; install TensorRT 10 or 11, or use --engine ort");
        }
        let engine = out.join("model.engine");
        let status = Command::new("trtexec")
            .arg(format!("--onnx={}", qdq.display()))
            .arg("--stronglyTyped")
            .arg(format!("--saveEngine={}", engine.display()))
            .status()
            .context("starting trtexec")?;
        if !status.success() {
            bail!("trtexec could not build an engine from {} ({status})", qdq.display());
        }
        let work = out.join("trtexec-io");
        std::fs::create_dir_all(&work)?;
        Ok(TrtExec { engine, input: input.to_string(), work, seconds: 0.0 })
    }
}

fn fail(message: String) -> AnalyzeError {
    AnalyzeError::Usage(format!("tensorrt engine: {message}"))
}

impl BatchModel for TrtExec {
    fn seconds(&self) -> f64 {
        self.seconds
    }

    fn run(&mut self, batch: &datasets::Batch) -> Result<Vec<f32>, AnalyzeError> {
        let input = self.work.join("input.bin");
        let output = self.work.join("output.json");
        let mut f = std::fs::File::create(&input).map_err(|e| fail(e.to_string()))?;
        let bytes: Vec<u8> = batch.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        f.write_all(&bytes).map_err(|e| fail(e.to_string()))?;
        let shape = batch.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let start = Instant::now();
        let status = Command::new("trtexec")
            .arg(format!("--loadEngine={}", self.engine.display()))
            .arg(format!("--loadInputs='{}':{}", self.input, input.display()))
            .arg(format!("--shapes={}:{shape}", self.input))
            .arg(format!("--exportOutput={}", output.display()))
            .args(["--iterations=1", "--warmUp=0", "--duration=0"])
            .output()
            .map_err(|e| fail(format!("cannot start trtexec: {e}")))?;
        self.seconds += start.elapsed().as_secs_f64();
        if !status.status.success() {
            return Err(fail(format!("trtexec failed: {}", String::from_utf8_lossy(&status.stderr))));
        }
        // trtexec writes [{"name": ..., "dimensions": "AxB", "values": [...]}, ...]; the first is the output.
        let text = std::fs::read_to_string(&output).map_err(|e| fail(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let values = json
            .get(0)
            .and_then(|o| o.get("values"))
            .and_then(|v| v.as_array())
            .ok_or_else(|| fail(format!("{} has no output values", output.display())))?;
        Ok(values.iter().map(|v| v.as_f64().unwrap_or(f64::NAN) as f32).collect())
    }
}
