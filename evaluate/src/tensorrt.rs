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
    output_batch_axis: usize,
}

/// Whether `trtexec` is on PATH.
pub fn on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("trtexec").is_file()))
}

/// The engine's input: its name, one image's dimensions, and the batch sizes it must take.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInput {
    /// The input tensor's name.
    pub name: String,
    /// One image's dimensions (without the batch).
    pub image: Vec<usize>,
    /// The model's fixed batch, if its batch dimension is a number.
    pub fixed_batch: Option<usize>,
    /// The largest batch evaluation feeds (the optimisation profile's opt and max).
    pub max_batch: usize,
    /// With several input sizes: the profile's min, opt and max shapes (batch first), from `profile.json`;
    /// they replace the batch-only profile.
    pub shapes: Option<[Vec<usize>; 3]>,
    /// The output's axis that holds the samples (`graph::Model::output_batch_axis`): moved first, as the ONNX
    /// Runtime runs do, so that each sample is one row.
    pub output_batch_axis: usize,
}

/// trtexec's arguments to build a strongly typed engine (TensorRT 11 requires it for Q/DQ models; 10 accepts
/// it) from `qdq` into `engine`. A dynamic batch gets an optimisation profile from 1 to `max_batch` images,
/// which TensorRT needs to build any engine with a dynamic dimension.
pub fn build_args(qdq: &Path, engine: &Path, input: &EngineInput) -> Vec<String> {
    let mut args = vec![
        format!("--onnx={}", qdq.display()),
        "--stronglyTyped".to_string(),
        format!("--saveEngine={}", engine.display()),
    ];
    if let Some(shapes) = &input.shapes {
        let dims = |s: &[usize]| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        for (flag, shape) in ["minShapes", "optShapes", "maxShapes"].into_iter().zip(shapes) {
            args.push(format!("--{flag}='{}':{}", input.name, dims(shape)));
        }
    } else if input.fixed_batch.is_none() {
        let dims = |batch: usize| {
            std::iter::once(batch)
                .chain(input.image.iter().copied())
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x")
        };
        for (flag, batch) in [("minShapes", 1), ("optShapes", input.max_batch), ("maxShapes", input.max_batch)] {
            args.push(format!("--{flag}='{}':{}", input.name, dims(batch)));
        }
    }
    args
}

impl TrtExec {
    /// Builds `<out>/<stem>.engine` from an ONNX model (Q/DQ or plain float). Strongly typed: every layer
    /// runs in the type the graph gives it, so an `--float-type fp16` model needs no precision flag.
    pub fn build(qdq: &Path, input: &EngineInput, out: &Path, stem: &str) -> Result<TrtExec, TensorRtError> {
        if !on_path() {
            return Err(TensorRtError::NotOnPath);
        }
        let engine = out.join(format!("{stem}.engine"));
        let status =
            Command::new("trtexec").args(build_args(qdq, &engine, input)).status().map_err(TensorRtError::Start)?;
        if !status.success() {
            return Err(TensorRtError::Build { model: qdq.to_path_buf(), status });
        }
        let work = out.join(format!("{stem}.trtexec-io"));
        std::fs::create_dir_all(&work).map_err(|source| TensorRtError::Io { path: work.clone(), source })?;
        Ok(TrtExec {
            engine,
            input: input.name.clone(),
            work,
            seconds: 0.0,
            output_batch_axis: input.output_batch_axis,
        })
    }
}

impl BatchModel for TrtExec {
    fn seconds(&self) -> f64 {
        self.seconds
    }

    fn evaluation(&self) -> String {
        "tensorrt (trtexec)".into()
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
            .arg(format!("--shapes='{}':{shape}", self.input))
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
            #[serde(default)]
            dimensions: String,
            values: Vec<f32>,
        }
        let text = std::fs::read_to_string(&output).map_err(io(&output))?;
        let bad = |message: String| TensorRtError::Output { path: output.clone(), message };
        let exported: Vec<Exported> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let first = exported.into_iter().next().ok_or_else(|| bad("no output tensor".into()))?;
        Ok(batch_first_exported(&first.dimensions, first.values, self.output_batch_axis))
    }
}

/// trtexec's exported `values` of `dimensions` (`"20x16x37"`) with axis `batch_axis` moved first; as they are
/// where the dimensions do not describe them.
fn batch_first_exported(dimensions: &str, values: Vec<f32>, batch_axis: usize) -> Vec<f32> {
    let shape: Option<Vec<usize>> = dimensions.split('x').map(|d| d.trim().parse().ok()).collect();
    match shape {
        Some(shape) if batch_axis > 0 => runtime::batch_first(&values, &shape, batch_axis),
        _ => values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_sequence_first_outputs_come_back_batch_first() {
        // [time 2, batch 2, classes 1]: value = 10 t + b.
        let values = vec![0.0, 1.0, 10.0, 11.0];
        assert_eq!(batch_first_exported("2x2x1", values.clone(), 1), vec![0.0, 10.0, 1.0, 11.0]);
        assert_eq!(batch_first_exported("2x2x1", values.clone(), 0), values);
        assert_eq!(batch_first_exported("", values.clone(), 1), values, "no dimensions: as exported");
    }

    #[test]
    fn a_dynamic_batch_gets_an_optimisation_profile_and_a_fixed_one_none() {
        let mut input = EngineInput {
            name: "pixel_values".into(),
            image: vec![3, 224, 224],
            fixed_batch: None,
            max_batch: 64,
            shapes: None,
            output_batch_axis: 0,
        };
        let args = build_args(Path::new("m.qdq.onnx"), Path::new("m.engine"), &input);
        assert_eq!(
            args,
            [
                "--onnx=m.qdq.onnx",
                "--stronglyTyped",
                "--saveEngine=m.engine",
                "--minShapes='pixel_values':1x3x224x224",
                "--optShapes='pixel_values':64x3x224x224",
                "--maxShapes='pixel_values':64x3x224x224",
            ]
        );
        input.fixed_batch = Some(1);
        assert_eq!(build_args(Path::new("m.qdq.onnx"), Path::new("m.engine"), &input).len(), 3);
        // Several sizes: the profile's shapes, whatever the batch.
        input.shapes = Some([vec![1, 3, 224, 224], vec![64, 3, 336, 336], vec![64, 3, 448, 448]]);
        let args = build_args(Path::new("m.qdq.onnx"), Path::new("m.engine"), &input);
        assert_eq!(
            &args[3..],
            [
                "--minShapes='pixel_values':1x3x224x224",
                "--optShapes='pixel_values':64x3x336x336",
                "--maxShapes='pixel_values':64x3x448x448",
            ]
        );
    }
}
