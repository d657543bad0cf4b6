//! The one path from a model and calibration samples to an artifact set on disk: `int8kit quantize`,
//! `int8kit analyze` (from statistics made already) and `validate` go through [`quantize`] or
//! [`write_artifacts`], so every artifact set is linted, staged and swapped in the same way.

use std::path::{Path, PathBuf};

use calibrate::{CalibrateOptions, CalibrationSummary};
use datasets::Feed;
use histograms::HistFile;
use safe_io::OutputDir;

use crate::{Cache, QuantizeError, Quantizer, Ranges, Scheme};

/// Everything [`quantize`] needs.
#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    /// The ONNX model (FP32, or FP16 storage).
    pub model: PathBuf,
    /// Calibration samples: images or `.npz` tensors.
    pub images: PathBuf,
    /// How the samples are fed.
    pub feed: Feed,
    /// How the statistics are collected.
    pub collect: CalibrateOptions,
    /// Which INT8 model is built.
    pub scheme: Scheme,
    /// Also write the statistics here (for later `analyze` runs).
    pub save_hist: Option<PathBuf>,
    /// The artifact folder.
    pub out: PathBuf,
}

/// What an artifact set held, for the caller to report.
#[derive(Debug, Clone)]
pub struct Written {
    /// ranges.json's contents.
    pub ranges: Ranges,
    /// The cache, or why it was not written.
    pub cache: Cache,
    /// Lint warnings of the written model (TensorRT fusions it may miss).
    pub warnings: Vec<placement::lint::Finding>,
}

/// What [`quantize`] did.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The calibration pass's summary.
    pub calibration: CalibrationSummary,
    /// Seconds the calibration pass took (the build and the writing not included).
    pub calibration_seconds: f64,
    /// Whether the statistics came from a smoothed model (alpha, and how many GEMM inputs).
    pub smoothed: Option<(f32, usize)>,
    /// The artifact set.
    pub written: Written,
}

/// Calibrate -> build -> write: loads the model once, collects its statistics, builds the INT8 model of the
/// scheme and writes the artifact set into `out` (staged beside it and swapped in whole; an existing `out` is
/// replaced only when it is int8kit's). `progress(done, total)` follows the calibration pass.
pub fn quantize(config: &QuantizeConfig, progress: &mut dyn FnMut(u64, u64)) -> Result<Quantized, QuantizeError> {
    // A bad output folder is refused before the calibration pass, and so is a bad TensorRT version.
    crate::cache::trt_version_code(&config.scheme.trt_version)?;
    let stage = OutputDir::new(&config.out)?;
    let model = calibrate::load_model(&config.model)?;
    let start = std::time::Instant::now();
    let (hist, calibration) =
        calibrate::calibrate_model(&model, &config.images, &config.feed, &config.collect, progress)?;
    let calibration_seconds = start.elapsed().as_secs_f64();
    if let Some(path) = &config.save_hist {
        hist.write(path)?;
    }
    let smoothed = hist.smoothing.as_ref().map(|s| (s.alpha, s.channel_max.len()));
    let quantizer = Quantizer::new(model, hist)?;
    let written = write_artifacts(&quantizer, &config.scheme, stage)?;
    Ok(Quantized { calibration, calibration_seconds, smoothed, written })
}

/// Builds `scheme`'s artifacts and writes them into `stage` (an [`OutputDir`] made before any long work, so
/// that a bad target is refused first), then swaps them into place.
pub fn write_artifacts(quantizer: &Quantizer, scheme: &Scheme, stage: OutputDir) -> Result<Written, QuantizeError> {
    let artifacts = quantizer.artifacts(scheme)?;
    let warnings = artifacts.write(stage.path())?;
    stage.commit()?;
    let crate::Artifacts { ranges, cache, .. } = artifacts;
    Ok(Written { ranges, cache, warnings })
}

/// [`write_artifacts`] from a `.hist` file: `int8kit analyze`.
pub fn analyze_hist(model: &Path, hist: &Path, scheme: &Scheme, out: &Path) -> Result<Written, QuantizeError> {
    crate::cache::trt_version_code(&scheme.trt_version)?;
    let stage = OutputDir::new(out)?;
    let quantizer = Quantizer::load(model, HistFile::read(hist)?)?;
    write_artifacts(&quantizer, scheme, stage)
}
