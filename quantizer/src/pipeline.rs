//! The one path from a model and calibration samples to an artifact set on disk: `int8kit quantize`,
//! `int8kit analyze` (from statistics made already) and `validate` go through [`quantize`] or
//! [`write_artifacts`], so every artifact set is linted, staged and swapped in the same way.

use std::path::{Path, PathBuf};

use analyze::scales::Method;
use calibrate::{CalibrateOptions, CalibrationSummary};
use datasets::{Dataset, Feed};
use histograms::HistFile;
use placement::FloatType;
use safe_io::OutputDir;

use crate::measure::{Probe, ProbeOptions};
use crate::rounding::{Hessians, RoundingRecord, WeightRounding};
use crate::{Cache, QuantizeError, Quantizer, Ranges, Scheme, SelfCheck};

/// Samples per ONNX Runtime call when measuring on held-back samples: small, so that the search's coarse
/// stage (a quarter of the samples, at least 32) runs whole batches close to that count.
const PROBE_BATCH: usize = 8;

/// What a long step of [`quantize`] reports progress on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The calibration pass (samples).
    Calibrate,
    /// The `auto` search (candidate models measured).
    Search,
}

/// What the written model is measured on: held-back samples, or nothing and why.
pub enum Yardstick<'a> {
    /// A probe of held-back samples.
    Probe(&'a Probe),
    /// Nothing to measure on: why (printed and recorded in ranges.json).
    Missing(String),
}

impl Yardstick<'_> {
    /// No held-back samples: what the .hist says about why.
    pub fn missing_for(hist: &HistFile) -> String {
        match &hist.images.held_out {
            Some(h) => format!("the calibration held back {} samples, but their folder was not given", h.count),
            None => "the calibration held back no samples (--hold-out 0, or fewer than 20 samples)".into(),
        }
    }
}

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
    /// How INT8 weights are rounded ([`crate::rounding`]).
    pub weight_rounding: WeightRounding,
    /// Samples to measure on instead of held-back ones (`--check DIR`): the self-check, the `auto` choices and
    /// the weight rounding's are made on them (the calibration then holds back none unless told).
    pub check: Option<PathBuf>,
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
    /// Whether the statistics came from a smoothed model (alpha, how many GEMM inputs, and how many samples
    /// their maxima came from where recorded).
    pub smoothed: Option<(f32, usize, Option<u64>)>,
    /// Whether depthwise Conv inputs were equalized first (how many, and over how many samples).
    pub equalized: Option<(usize, u64)>,
    /// The artifact set.
    pub written: Written,
}

/// Calibrate -> choose -> build -> measure -> write: loads the model once, collects its statistics on all
/// but the held-back samples, makes the scheme's `auto` choices by measuring candidates on those, builds the
/// INT8 model, measures it there too and writes the artifact set into `out` (staged beside it and swapped in
/// whole; an existing `out` is replaced only when it is int8kit's). `progress(step, done, total)` follows the
/// calibration pass and the search.
pub fn quantize(config: &QuantizeConfig, progress: &mut dyn FnMut(Step, u64, u64)) -> Result<Quantized, QuantizeError> {
    // A bad output folder is refused before the calibration pass, and so is a bad TensorRT version.
    crate::cache::trt_version_code(&config.scheme.trt_version)?;
    let stage = OutputDir::new(&config.out)?;
    let model = calibrate::load_model(&config.model)?;
    let start = std::time::Instant::now();
    let (hist, calibration) =
        calibrate::calibrate_model(&model, &config.images, &config.feed, &config.collect, &mut |d, t| {
            progress(Step::Calibrate, d, t)
        })?;
    let calibration_seconds = start.elapsed().as_secs_f64();
    if let Some(path) = &config.save_hist {
        hist.write(path)?;
    }
    let smoothed = hist.smoothing.as_ref().map(|s| (s.alpha, s.channel_max.len(), s.samples));
    let equalized = hist.equalization.as_ref().map(|e| (e.channel_max.len(), e.samples));
    let quantizer = Quantizer::new(model, hist)?;
    let options = probe_options(&config.collect);
    let given = config.check.as_deref().map(|dir| check_samples(dir, quantizer.hist())).transpose()?;
    let held = match &given {
        Some((samples, feed)) => Some((samples, feed)),
        None => calibration.held_out.as_ref().map(|held| (held, &config.feed)),
    };
    let probe = probe_while_preparing(&quantizer, &config.scheme, held, options)?;
    let probe = if given.is_some() { probe.map(Probe::given) } else { probe };
    let yardstick = match &probe {
        Some(p) => Yardstick::Probe(p),
        None => Yardstick::Missing(Yardstick::missing_for(quantizer.hist())),
    };
    let hessians = weight_hessians(
        &quantizer,
        config.weight_rounding,
        probe.is_some(),
        &config.images,
        &config.feed,
        config.collect.threads,
    )?;
    let rounding = hessians.as_ref().map(|h| (config.weight_rounding, h));
    let written = write_artifacts(&quantizer, &config.scheme, &yardstick, rounding, stage, &mut |d, t| {
        progress(Step::Search, d, t)
    })?;
    Ok(Quantized { calibration, calibration_seconds, smoothed, equalized, written })
}

/// GPTQ's layer input statistics over up to [`crate::rounding::SAMPLES`] of the samples the statistics came
/// from (`images`, the calibration folder), where the rounding may be GPTQ's: asked for, or `auto` with
/// held-back samples to choose on (`measurable`).
pub fn weight_hessians(
    quantizer: &Quantizer,
    rounding: WeightRounding,
    measurable: bool,
    images: &Path,
    feed: &Feed,
    threads: usize,
) -> Result<Option<Hessians>, QuantizeError> {
    match rounding {
        WeightRounding::Nearest => return Ok(None),
        WeightRounding::Auto if !measurable => return Ok(None),
        _ => {}
    }
    let hist = quantizer.hist();
    let held_in = calibrate::held_in_slice(images, hist)?.limit(crate::rounding::SAMPLES, hist.images.seed);
    // The calibration pass skipped unreadable samples only where told to, so they are skipped here alike.
    let on_bad_image = if hist.images.skipped > 0 { datasets::OnBadImage::Skip } else { datasets::OnBadImage::Fail };
    let start = std::time::Instant::now();
    let run_values = crate::rounding::RUN_VALUES;
    let hessians = Hessians::collect(quantizer.model(), rounding, &held_in, feed, threads, on_bad_image, run_values)?;
    tracing::info!(target: "int8kit::rounding", seconds = start.elapsed().as_secs_f64(), samples = hessians.samples,
        layers = hessians.by_node.len(), "GPTQ's layer input sums");
    Ok(Some(hessians))
}

/// Rounds `artifacts`' INT8 weights by GPTQ where `rounding` asks for it: always (`gptq`), or (`auto`) when
/// the held-back samples measure the GPTQ model better than the nearest-rounded one.
fn round_weights(
    quantizer: &Quantizer,
    artifacts: &mut crate::Artifacts<'_>,
    yardstick: &Yardstick,
    (asked, hessians): (WeightRounding, &Hessians),
) -> Result<(), QuantizeError> {
    let start = std::time::Instant::now();
    let mut rounded = artifacts.qdq.clone();
    let layers = crate::rounding::apply(&mut rounded, quantizer.model(), hessians, asked)?;
    tracing::info!(target: "int8kit::rounding", seconds = start.elapsed().as_secs_f64(), "GPTQ rounding");
    let mut record = RoundingRecord {
        asked: asked.name(),
        chosen: "nearest",
        reason: String::new(),
        samples: hessians.samples,
        nearest_sqnr_db: None,
        gptq_sqnr_db: None,
        layers,
    };
    let count = record.layers.iter().filter(|l| l.rounding == "gptq").count();
    let probe = match yardstick {
        Yardstick::Probe(p) => Some(*p),
        Yardstick::Missing(_) => None,
    };
    if count == 0 {
        record.reason = "no layer has enough input patches for GPTQ (or none has an INT8 weight it can round)".into();
    } else if let (WeightRounding::Auto, Some(probe)) = (asked, probe) {
        let shapes = probe.sample_shapes();
        // The search measured the nearest-rounded winner on every held-back sample already.
        let searched = artifacts.ranges.search.as_ref().and_then(|r| {
            let t = &r.trials[r.chosen];
            t.worst_shape_sqnr_db.or(t.mean_sample_sqnr_db)
        });
        let n = match searched {
            Some(db) => db,
            None => crate::search::ranking_db(&probe.measure_per_sample(&artifacts.qdq, usize::MAX)?.1, &shapes),
        };
        let (fidelity, gptq) = probe.measure_per_sample(&rounded, usize::MAX)?;
        let g = crate::search::ranking_db(&gptq, &shapes);
        (record.nearest_sqnr_db, record.gptq_sqnr_db) = (Some(n), Some(g));
        // Within the search's tolerance the two count as equal, and nearest rounding (what every other
        // choice was measured with) stays.
        let margin = crate::search::TOLERANCE_DB;
        if g > n + margin {
            record.chosen = "gptq";
            record.reason = format!(
                "GPTQ's rounding of {count} layers measured {g:.2} dB against nearest rounding's {n:.2} on the \
                 held-back samples (mean per-sample output SQNR; it must lead by more than {margin} dB)"
            );
            artifacts.qdq = rounded;
            artifacts.ranges.self_check.fidelity = Some(fidelity);
        } else {
            record.reason = format!(
                "nearest rounding measured {n:.2} dB against GPTQ's {g:.2} ({count} layers) on the held-back samples \
                 (mean per-sample output SQNR; GPTQ must lead by more than {margin} dB)"
            );
        }
    } else {
        record.chosen = "gptq";
        record.reason = format!("asked for (--weight-rounding gptq): {count} layers");
        if let Some(probe) = probe {
            artifacts.ranges.self_check.fidelity = Some(probe.measure(&rounded, usize::MAX)?);
        }
        artifacts.qdq = rounded;
    }
    tracing::info!(target: "int8kit::rounding", "weight rounding: {} ({})", record.chosen, record.reason);
    artifacts.ranges.weight_rounding = Some(record);
    Ok(())
}

/// The probe of the held-back samples `held` (none without them), built while another thread computes the
/// thresholds of every scale method `scheme` may try and the GEMM FLOPs the artifacts report: on a small model
/// each takes about as long as the float model's run on the held-back samples (fixture ViT: 0.05-0.1 s).
fn probe_while_preparing(
    quantizer: &Quantizer,
    scheme: &Scheme,
    held: Option<(&Dataset, &Feed)>,
    options: ProbeOptions,
) -> Result<Option<Probe>, QuantizeError> {
    let Some((held, feed)) = held else { return Ok(None) };
    let methods: Vec<Method> = if scheme.auto.method { Method::ALL_DEFAULT.to_vec() } else { vec![scheme.method] };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            quantizer.prepare_amax(&methods);
            // An error here is the artifacts' to report: they ask again.
            let _ = quantizer.flops();
        });
        Probe::new(quantizer.model(), held, feed, options).map(Some)
    })
}

/// How held-back samples are read and run: as the calibration read them, on the CPU (where every candidate
/// runs: the measurement must not depend on the device).
pub fn probe_options(collect: &CalibrateOptions) -> ProbeOptions {
    ProbeOptions {
        batch_size: PROBE_BATCH,
        threads: collect.threads,
        on_bad_image: collect.on_bad_image,
        device: runtime::Device::Cpu,
    }
}

/// Builds `scheme`'s artifacts and writes them into `stage` (an [`OutputDir`] made before any long work, so
/// that a bad target is refused first), then swaps them into place; see [`choose_and_measure`].
pub fn write_artifacts(
    quantizer: &Quantizer,
    scheme: &Scheme,
    yardstick: &Yardstick,
    rounding: Option<(WeightRounding, &Hessians)>,
    stage: OutputDir,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written, QuantizeError> {
    let artifacts = choose_and_measure(quantizer, scheme, yardstick, rounding, progress)?;
    let warnings = artifacts.write(stage.path())?;
    stage.commit()?;
    let crate::Artifacts { ranges, cache, .. } = artifacts;
    Ok(Written { ranges, cache, warnings })
}

/// Builds `scheme`'s artifacts in memory. With a probe, `auto` choices are made by measurement
/// ([`crate::search`], `progress` follows it) and the model built is measured (ranges.json `self_check`);
/// without one, the scheme's fixed choices are used and the reason recorded. With `rounding` (the layer input
/// sums of [`weight_hessians`]), the INT8 weights are then rounded as it asks ([`WeightRounding`]).
pub fn choose_and_measure<'q>(
    quantizer: &'q Quantizer,
    scheme: &Scheme,
    yardstick: &Yardstick,
    rounding: Option<(WeightRounding, &Hessians)>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<crate::Artifacts<'q>, QuantizeError> {
    // A flag that has nothing to act on is said, not silently accepted.
    if let (false, Some(asked)) = (scheme.auto.attention, scheme.placement.attention) {
        if !crate::search::attention_matters(quantizer, scheme)? {
            tracing::warn!(
                target: "int8kit::placement",
                "--attention {} changes nothing here: the model has no attention MatMul (both inputs activations)",
                if asked == placement::AttentionPrecision::Int8 { "int8" } else { "float" }
            );
        }
    }
    // The auto float type keeps FP32 where FP16 Q/DQ cannot be built (an explicit --float-type fp16 still
    // fails, naming the node).
    let mut scheme = scheme.clone();
    if scheme.auto.float_type && scheme.placement.float_type != FloatType::Fp32 {
        if let Some(why) = crate::float_type::fp16_qdq_blocker(&quantizer.model().proto) {
            tracing::warn!(target: "int8kit::placement", "float parts stay FP32 (FP16 not tried): {why}");
            scheme.placement.float_type = FloatType::Fp32;
            scheme.auto.float_type = false;
        }
    }
    let scheme = &scheme;
    let (scheme, search) = match yardstick {
        Yardstick::Probe(probe) if scheme.auto.any() => {
            let (chosen, record) = crate::search::search(quantizer, scheme, scheme.auto, probe, progress)?;
            (chosen, Some(record))
        }
        _ => (scheme.clone(), None),
    };
    let mut artifacts = quantizer.artifacts(&scheme)?;
    artifacts.ranges.self_check = match yardstick {
        Yardstick::Probe(probe) => {
            // The winner of a search is the model written: its fine-stage measurement is the self-check.
            let fidelity = match &search {
                Some(r) => r.trials[r.chosen].fidelity.clone(),
                None => Some(probe.measure(&artifacts.qdq, usize::MAX)?),
            };
            SelfCheck {
                status: "measured",
                samples: probe.describe(),
                fidelity,
                evaluation: Some(Probe::evaluation()),
                output: Some(crate::artifacts::MeasuredOutput {
                    name: probe.output().to_string(),
                    of: quantizer.model().proto.graph.output.len(),
                }),
            }
        }
        Yardstick::Missing(why) => SelfCheck::skipped(why.clone()),
    };
    if search.is_some() {
        artifacts.ranges.chosen_by = "measurement";
    }
    artifacts.ranges.search = search;
    if let Some(rounding) = rounding {
        round_weights(quantizer, &mut artifacts, yardstick, rounding)?;
    }
    Ok(artifacts)
}

/// Samples given to measure on (`--check DIR`) and how they are fed: `.npz` samples by input name, images
/// through the statistics' recipe.
pub fn check_samples(dir: &Path, hist: &HistFile) -> Result<(datasets::Dataset, Feed), QuantizeError> {
    let samples = datasets::Dataset::flat(dir).map_err(calibrate::CalibrateError::from)?;
    let feed = if samples.holds_tensors() {
        Feed::Tensors
    } else {
        let recipe = hist.recipe.clone().ok_or_else(|| {
            calibrate::CalibrateError::from(datasets::DatasetError::Recipe {
                origin: dir.display().to_string(),
                message: "--check holds images, but the statistics were made from arrays fed as stored (no recipe): \
                          give .npz samples"
                    .into(),
            })
        })?;
        Feed::Images(recipe)
    };
    Ok((samples, feed))
}

/// [`write_artifacts`] from a `.hist` file: `int8kit analyze`. With `images` (the calibration folder), the
/// samples the calibration held back are found there, fed as the calibration fed them, and measured on
/// (`threads` for their sessions).
#[allow(clippy::too_many_arguments)]
pub fn analyze_hist(
    model: &Path,
    hist: &Path,
    images: Option<&Path>,
    check: Option<&Path>,
    threads: usize,
    scheme: &Scheme,
    rounding: WeightRounding,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written, QuantizeError> {
    crate::cache::trt_version_code(&scheme.trt_version)?;
    if rounding == WeightRounding::Gptq && images.is_none() {
        return Err(QuantizeError::Model {
            path: hist.to_path_buf(),
            message: "--weight-rounding gptq needs --images with the calibration folder: GPTQ reads the layers' \
                      inputs on the samples these statistics came from"
                .into(),
        });
    }
    let stage = OutputDir::new(out)?;
    let quantizer = Quantizer::load(model, HistFile::read(hist)?)?;
    let held = match (images, check) {
        (_, Some(dir)) => Some(check_samples(dir, quantizer.hist())?),
        (Some(dir), None) => calibrate::held_out_slice(dir, quantizer.hist())?.map(|held| {
            let feed = match &quantizer.hist().recipe {
                Some(recipe) => Feed::Images(recipe.clone()),
                None => Feed::Tensors,
            };
            (held, feed)
        }),
        (None, None) => None,
    };
    let collect = CalibrateOptions { threads, ..Default::default() };
    let held = held.as_ref().map(|(held, feed)| (held, feed));
    let probe = probe_while_preparing(&quantizer, scheme, held, probe_options(&collect))?;
    let probe = if check.is_some() { probe.map(Probe::given) } else { probe };
    let yardstick = match &probe {
        Some(p) => Yardstick::Probe(p),
        None if images.is_none() && quantizer.hist().images.held_out.is_some() => Yardstick::Missing(format!(
            "{}; give --images with the calibration folder to measure",
            Yardstick::missing_for(quantizer.hist())
        )),
        None => Yardstick::Missing(Yardstick::missing_for(quantizer.hist())),
    };
    let feed = match &quantizer.hist().recipe {
        Some(recipe) => Feed::Images(recipe.clone()),
        None => Feed::Tensors,
    };
    let hessians = match images {
        Some(dir) => weight_hessians(&quantizer, rounding, probe.is_some() && check.is_none(), dir, &feed, threads)?,
        None => None,
    };
    write_artifacts(&quantizer, scheme, &yardstick, hessians.as_ref().map(|h| (rounding, h)), stage, progress)
}
