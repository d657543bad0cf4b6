//! The release gate as a library call: calibrate, analyze, evaluate FP32 and INT8 on a labelled folder,
//! hold the result to the criteria, and write the reports. `int8kit validate` and `cargo xtask validate`
//! both call [`validate`]; the caller turns [`Report::passed`] into an exit status.

use std::path::PathBuf;
use std::time::Instant;

use calibrate::{calibrate_model, CalibrateOptions};
use datasets::{Dataset, Feed};
use placement::FloatType;
use quantizer::measure::Probe;
use quantizer::rounding::WeightRounding;
use quantizer::{Quantizer, Scheme, Yardstick};
use reports::{FloatRow, Report, TensorPlot};

use crate::compare::{compare_each_spread, ort_model, BatchModel, Classifier};
use crate::gates::FidelityGates;
use crate::gates::Gates;
use crate::shards::ValidatePart;
use crate::tensorrt::TrtExec;
use crate::EvaluateError;

/// What runs the INT8 model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// ONNX Runtime over model.qdq.onnx, on the configured device (CPU EP, or CUDA EP).
    #[default]
    Ort,
    /// TensorRT through `trtexec` (untested: no TensorRT where int8kit is developed).
    TensorRt,
}

/// Everything a validation run needs.
#[derive(Debug, Clone)]
pub struct ValidateConfig {
    /// FP32 ONNX model.
    pub model: PathBuf,
    /// Where the INT8 model's statistics come from.
    pub calib: Calibration,
    /// Validation images: labelled (one sub-folder per class), or unlabelled when only fidelity gates are
    /// asked for.
    pub val: PathBuf,
    /// How samples become inputs: images through a recipe, or `.npz` samples (then both folders hold them).
    pub feed: Feed,
    /// Which INT8 model is built.
    pub scheme: Scheme,
    /// How its INT8 weights are rounded: as `quantize` rounds them, from the calibration folder's samples
    /// (statistics given with `--hist` round to nearest unless the folder is at hand; `gptq` is then refused).
    pub weight_rounding: WeightRounding,
    /// How samples run through the models: device, threads, calibration batch size, the calibration subset
    /// (limit, seed) and smoothing.
    pub collect: CalibrateOptions,
    /// Images per evaluation batch (default [`crate::compare::EVAL_BATCH`]; a model's fixed batch wins).
    pub eval_batch: Option<usize>,
    /// Logits or zero-shot prototypes.
    pub classifier: Classifier,
    /// Gate: INT8 Top-1 may be at most this many percentage points below FP32.
    pub max_top1_drop: Option<f64>,
    /// Gates on output fidelity against FP32 (labels not needed for what they measure).
    pub fidelity: FidelityGates,
    /// Gate: an earlier report whose INT8 Top-1 this run must not fall below (by more than the drop).
    pub baseline: Option<PathBuf>,
    /// Compare with a baseline of another model (recorded in the report); without it such a baseline is
    /// refused.
    pub baseline_across_models: bool,
    /// A sensitivity.json or autoprecision.json whose ranking goes into report.html (the scheme's per-tensor
    /// choices may come from the same file).
    pub sensitivity: Option<PathBuf>,
    /// What runs the INT8 model.
    pub engine: Engine,
    /// Class list for ImageNet-style folders.
    pub classes: Option<PathBuf>,
    /// Seeded subset of the validation images.
    pub limit_val: Option<usize>,
    /// Output folder.
    pub out: PathBuf,
    /// Evaluate one part of the validation list and write what the report needs from it, instead of the
    /// reports (`int8kit merge` joins the parts).
    pub shard: Option<ShardRequest>,
}

/// Where a validation's statistics come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Calibration {
    /// Calibrate over this flat folder (`--calib`).
    Folder(PathBuf),
    /// These statistics (`--hist`): from `calibrate`, or merged shards of it; made for this model and feed.
    /// `check` (`--check`): samples the statistics did not see, measured on instead of the held-back ones.
    Hist {
        /// The `.hist` file.
        hist: PathBuf,
        /// Samples to measure the self-check and the `auto` choices on.
        check: Option<PathBuf>,
    },
}

impl Calibration {
    /// The folder or the file.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Calibration::Folder(p) | Calibration::Hist { hist: p, .. } => p,
        }
    }
}

/// `--shard I/N --partial-out P.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRequest {
    /// 1-based part number.
    pub index: usize,
    /// Parts the validation list is split into (contiguous, in list order).
    pub count: usize,
    /// Where the part is written (outside the output folder).
    pub partial_out: PathBuf,
}

/// Progress of the two long phases: (phase, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(Phase, u64, u64);

/// The long phases of a validation run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Images through the calibration pass.
    Calibrate,
    /// Candidate INT8 models measured by the `auto` search.
    Search,
    /// Images through FP32 and INT8.
    Compare,
}

impl ValidateConfig {
    /// `model` calibrated from `calib`, evaluated on `val` fed as `feed`, the reports in `out`: the default
    /// scheme and calibration, output scores compared as logits, no gate, no baseline, ONNX Runtime, every
    /// sample of `val` in one process. Callers set what differs with struct update syntax.
    pub fn new(model: PathBuf, calib: Calibration, val: PathBuf, feed: Feed, out: PathBuf) -> ValidateConfig {
        ValidateConfig {
            model,
            calib,
            val,
            feed,
            scheme: Default::default(),
            weight_rounding: WeightRounding::Auto,
            collect: Default::default(),
            eval_batch: None,
            classifier: Classifier::Logits,
            max_top1_drop: None,
            fidelity: Default::default(),
            baseline: None,
            baseline_across_models: false,
            sensitivity: None,
            engine: Engine::Ort,
            classes: None,
            limit_val: None,
            out,
            shard: None,
        }
    }

    /// Every file and folder the run reads or writes, for the check that no output is, holds or sits inside
    /// an input (`int8kit validate` declares the same through its command line).
    pub fn run_files(&self) -> safe_io::RunFiles {
        use safe_io::Kind;
        let mut files = safe_io::RunFiles::new();
        let calib = match &self.calib {
            Calibration::Folder(p) => ("--calib", p, Kind::Samples),
            Calibration::Hist { hist, .. } => ("--hist", hist, Kind::File),
        };
        if let Calibration::Hist { check: Some(check), .. } = &self.calib {
            files.add("--check", check, Kind::Samples);
        }
        files
            .add("--model", &self.model, Kind::Model)
            .add(calib.0, calib.1, calib.2)
            .add("--val", &self.val, Kind::Samples)
            .add_some("--baseline", self.baseline.as_deref(), Kind::File)
            .add_some("--sensitivity", self.sensitivity.as_deref(), Kind::File)
            .add_some("--classes", self.classes.as_deref(), Kind::File)
            .add("--out", &self.out, Kind::OutFolder)
            .add_some("--partial-out", self.shard.as_ref().map(|s| s.partial_out.as_path()), Kind::OutFile);
        files
    }
}

/// Coarse |x| histogram over [0, max |x|] for the report's plots.
fn plot_counts(stats: &histograms::TensorStats, bins: usize) -> (f64, Vec<u64>) {
    let range = stats.amax() as f64;
    let mut out = vec![0u64; bins];
    if range <= 0.0 {
        return (0.0, out);
    }
    let width = stats.hist.bin_width();
    for (i, &c) in stats.hist.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        let centre = (i as f64 + 0.5) * width;
        out[((centre / range * bins as f64) as usize).min(bins - 1)] += c;
    }
    (range, out)
}

/// Runs the pipeline and writes the artifacts and reports into `config.out`. Returns the report; the
/// caller turns `passed` into the exit status. Four steps: the inputs checked before any work, the artifacts
/// built, the three models compared, the report assembled.
pub fn validate(config: &ValidateConfig, progress: Progress) -> Result<Report, EvaluateError> {
    run(config, None, progress)
}

/// Evaluation samples a caller streams instead of a `--val` folder (the Python API's iterables): the float32
/// images `ValidateConfig::feed`'s recipe makes, or arrays by input name, labelled or not. They are regrouped
/// into the evaluation batches a folder of the same samples in the same order would make
/// ([`datasets::Rebatched`]), so the rows equal that folder's, and are identified by the bytes fed
/// (`validation_samples_sha256`). `--val` (`ValidateConfig::val`) names them.
pub struct GivenVal<'a> {
    /// The batches, in order.
    pub batches: &'a mut dyn datasets::BatchSource,
    /// Samples expected, for progress (`None`: unknown).
    pub total: Option<u64>,
    /// Whether every sample carries a label (Top-1 gates need them).
    pub labelled: bool,
}

/// [`validate`] on streamed evaluation samples: a folder's checks and rows, with what needs a listing
/// refused (`--limit-val`, `--shard`, `--classes`) and the baseline's samples checked once they are read.
pub fn validate_given(config: &ValidateConfig, val: GivenVal<'_>, progress: Progress) -> Result<Report, EvaluateError> {
    run(config, Some(val), progress)
}

fn run(config: &ValidateConfig, given: Option<GivenVal<'_>>, progress: Progress) -> Result<Report, EvaluateError> {
    let inputs = check_inputs(config, given.as_ref())?;
    let model_files = inputs.model.input_files();
    config.run_files().check(&|_| Ok(model_files.clone()))?;
    // Everything goes into a staging folder that replaces OUTDIR whole at the end. From here a failed run
    // removes the previous verdict (int8kit's own files, proven by their SHA-256), so that OUTDIR never holds
    // a stale one; a kill leaves it as it was.
    let mut stage = safe_io::OutputDir::new(&config.out)?;
    stage.discard_existing_on_failure();
    let out = stage.path();
    let Checked { val, validation_list_sha256, shard, baseline, given: given_hist, model } = inputs;
    let built = build_artifacts(config, model, given_hist, out, progress)?;
    let rows = match (given, &val) {
        (Some(stream), _) => {
            let rows = compare_stream(config, &built, stream, out, progress)?;
            check_after_stream(config, &rows, baseline.as_ref())?;
            rows
        }
        (None, Some(val)) => compare_rows(config, &built, val, out, progress)?,
        (None, None) => unreachable!("check_inputs lists the folder when nothing is streamed"),
    };
    let (report, gates) = assemble_report(config, &built, &rows, validation_list_sha256, baseline.as_ref())?;
    match (&config.shard, shard) {
        (Some(request), Some(shard)) => {
            let part = ValidatePart {
                format: crate::shards::PART_FORMAT.into(),
                version: crate::shards::PART_VERSION,
                shard,
                gates,
                parts: rows.parts,
                report: report.clone(),
            };
            safe_io::write_atomic(&request.partial_out, &part.to_json()?)?;
        }
        _ => report.write_all(out)?,
    }
    stage.commit()?;
    Ok(report)
}

/// What [`check_inputs`] read and proved before any work.
struct Checked {
    /// The images evaluated (this shard's part, with `--shard`); `None` for streamed samples.
    val: Option<Dataset>,
    /// The whole evaluation list's hash (a shard's report names the whole list); `None` for streamed samples,
    /// whose names are hashed as they come.
    validation_list_sha256: Option<String>,
    /// With `--shard`: which part this is.
    shard: Option<histograms::ShardInfo>,
    /// The baseline report, checked against this run.
    baseline: Option<Report>,
    /// Statistics given with `--hist`.
    given: Option<histograms::HistFile>,
    /// The model, loaded and hashed once.
    model: graph::Model,
}

/// Every refusal that needs no work: engine and device, gate limits, labels for Top-1 gates, the image list
/// and its shard, the baseline, the zero-shot prototypes, the given statistics. OUTDIR is not touched yet.
fn check_inputs(config: &ValidateConfig, given: Option<&GivenVal<'_>>) -> Result<Checked, EvaluateError> {
    let device = &config.collect.device;
    if config.engine == Engine::TensorRt && device.list().len() > 1 {
        return Err(EvaluateError::Input {
            path: config.model.clone(),
            message: format!("--engine tensorrt runs on one device; --device {device} lists several"),
        });
    }
    if config.engine == Engine::TensorRt && !crate::tensorrt::on_path() {
        return Err(crate::tensorrt::TensorRtError::NotOnPath.into());
    }
    if let Some(recipe) = config.feed.recipe().filter(|r| r.is_multi_size()) {
        let refuse = |what: &str| {
            Err(EvaluateError::Input {
                path: config.model.clone(),
                message: format!(
                    "{what} evaluates one input size for now, and the recipe lists {:?}: validate each size with \
                     its own one-size recipe, or leave it out",
                    recipe.all_sizes()
                ),
            })
        };
        if config.shard.is_some() {
            return refuse("--shard");
        }
    }
    if let Some(limit) = config.max_top1_drop {
        crate::check_limit("--max-top1-drop", limit)?;
    }
    config.fidelity.check()?;
    let (val, validation_list_sha256, shard_info) = match given {
        Some(stream) => {
            check_stream(config, stream)?;
            (None, None, None)
        }
        None => {
            let (val, list, shard) = list_val(config)?;
            (Some(val), Some(list), shard)
        }
    };
    // Loaded (and hashed) once: the baseline and output checks, the calibration and the builds share it.
    let model = calibrate::load_model(&config.model)?;
    let baseline = match &config.baseline {
        Some(path) => Some(check_baseline(path, config, val.as_ref(), &model.sha256)?),
        None => None,
    };
    if let Some(val) = &val {
        check_prototypes(config, val.classes.len())?;
    }
    // Refusals come first and leave OUTDIR untouched: the statistics given are checked before the stage.
    let given = match &config.calib {
        Calibration::Folder(_) => None,
        Calibration::Hist { hist, .. } => Some(given_hist(hist, config)?),
    };
    Ok(Checked { val, validation_list_sha256, shard: shard_info, baseline, given, model })
}

/// The `--val` folder listed (with `--limit-val`, and this shard's part with `--shard`), the whole list's
/// hash and the shard; refused when a Top-1 gate has no labels or nothing is left.
fn list_val(config: &ValidateConfig) -> Result<(Dataset, String, Option<histograms::ShardInfo>), EvaluateError> {
    let mut val = Dataset::labelled_or_flat(&config.val, config.classes.as_deref())?;
    if !val.is_labelled() {
        no_labels_for_top1_gates(config)?;
    }
    if let Some(n) = config.limit_val {
        val = val.limit(n, 0);
    }
    if val.is_empty() {
        return Err(EvaluateError::NoImages { path: config.val.clone() });
    }
    // The whole list identifies the evaluation set; a shard evaluates its own contiguous part of it.
    let validation_list_sha256 = val.list_sha256();
    let shard_info = match &config.shard {
        None => None,
        Some(s) => {
            val = val.shard(s.index, s.count)?;
            Some(histograms::ShardInfo {
                index: s.index,
                count: s.count,
                list_sha256: val.list_sha256(),
                // The report names the whole list itself (`validation_list_sha256`).
                whole_list_sha256: None,
            })
        }
    };
    Ok((val, validation_list_sha256, shard_info))
}

/// What streamed samples cannot do, refused before any work: what needs a listing, and Top-1 gates without
/// labels.
fn check_stream(config: &ValidateConfig, stream: &GivenVal<'_>) -> Result<(), EvaluateError> {
    let refuse = |what: &str, instead: &str| {
        Err(EvaluateError::Input {
            path: config.val.clone(),
            message: format!("{what} needs a folder's listing; with samples from an iterable, {instead}"),
        })
    };
    if config.limit_val.is_some() {
        return refuse("--limit-val", "give fewer samples");
    }
    if config.shard.is_some() {
        return refuse("--shard", "split the iterable and validate each part from a folder");
    }
    if config.classes.is_some() {
        return refuse("a class list", "give integer labels");
    }
    if !stream.labelled {
        no_labels_for_top1_gates(config)?;
    }
    Ok(())
}

/// Top-1 gates need labels; fidelity gates compare with FP32 and do not.
fn no_labels_for_top1_gates(config: &ValidateConfig) -> Result<(), EvaluateError> {
    let top1_gate = [("--max-top1-drop", config.max_top1_drop.is_some()), ("--baseline", config.baseline.is_some())]
        .into_iter()
        .find(|(_, asked)| *asked);
    if let Some((flag, _)) = top1_gate {
        return Err(EvaluateError::Input {
            path: config.val.clone(),
            message: format!(
                "{flag} gates on Top-1, which needs labels, and these samples have none (a folder: images at its \
                 top level, no class sub-folders; an iterable: batches without labels): give labelled samples, or \
                 gate on --min-cosine, --min-sqnr or --min-agreement, which compare with FP32 and need no labels"
            ),
        });
    }
    Ok(())
}

/// Zero-shot prototypes for at least every class.
fn check_prototypes(config: &ValidateConfig, classes: usize) -> Result<(), EvaluateError> {
    match config.classifier.classes() {
        Some(n) if n < classes => Err(EvaluateError::Input {
            path: config.val.clone(),
            message: format!("{n} zero-shot prototypes for {classes} classes"),
        }),
        _ => Ok(()),
    }
}

/// The INT8 model and everything built beside it.
struct Built {
    /// The prepared model and its statistics.
    quantizer: Quantizer,
    /// ranges.json's contents.
    ranges: quantizer::Ranges,
    /// The calibration pass, seconds.
    calibration_seconds: f64,
}

/// Calibrates (or takes the given statistics), builds and writes the artifacts into `out`: calibration.hist,
/// the INT8 artifact set and model.fp16.onnx (the FP32 model in FP16 without Q/DQ).
fn build_artifacts(
    config: &ValidateConfig,
    model: graph::Model,
    given: Option<histograms::HistFile>,
    out: &std::path::Path,
    progress: Progress,
) -> Result<Built, EvaluateError> {
    let start = Instant::now();
    // Without given statistics, `calib` is the calibration folder; its held-back samples are the yardstick.
    let (hist, held_out) = match given {
        Some(hist) => (hist, None),
        None => {
            let (hist, summary) =
                calibrate_model(&model, config.calib.path(), &config.feed, &config.collect, &mut |done, total| {
                    progress(Phase::Calibrate, done, total)
                })?;
            (hist, summary.held_out)
        }
    };
    hist.write(&out.join("calibration.hist"))?;
    let calibration_seconds = start.elapsed().as_secs_f64();
    let quantizer = Quantizer::new(model, hist)?;
    let held = match (&held_out, &config.calib) {
        (Some(held), _) => Some((held.clone(), config.feed.clone())),
        (None, Calibration::Hist { check: Some(dir), .. }) => Some(quantizer::check_samples(dir, quantizer.hist())?),
        (None, _) => None,
    };
    // Samples from --check were given to measure on, not held back (the self-check says which).
    let given = held_out.is_none();
    let probe = match &held {
        Some((held, feed)) => {
            let probe = Probe::new(quantizer.model(), held, feed, quantizer::probe_options(&config.collect))?;
            Some(if given { probe.given() } else { probe })
        }
        None => None,
    };
    let yardstick = match (&probe, &config.calib) {
        (Some(p), _) => Yardstick::Probe(p),
        (None, Calibration::Hist { .. }) => Yardstick::Missing(
            "statistics given with --hist: the samples they held back are not at hand (give --check DIR with \
             samples they did not see to measure on; the evaluation rows measure the model)"
                .into(),
        ),
        (None, Calibration::Folder(_)) => Yardstick::Missing(Yardstick::missing_for(quantizer.hist())),
    };
    // Rounded as `quantize` rounds, from the samples the statistics came from (a `.hist` comes without them).
    let hessians = match &config.calib {
        Calibration::Folder(dir) => quantizer::weight_hessians(
            &quantizer,
            config.weight_rounding,
            probe.is_some(),
            dir,
            &config.feed,
            config.collect.threads,
        )?,
        Calibration::Hist { .. } => None,
    };
    let rounding = hessians.as_ref().map(|h| (config.weight_rounding, h));
    let artifacts =
        quantizer::choose_and_measure(&quantizer, &config.scheme, &yardstick, rounding, &mut |done, total| {
            progress(Phase::Search, done, total)
        })?;
    artifacts.write(out)?;
    // The protos go before the comparison: only the ranges are reported.
    let ranges = artifacts.ranges;
    graph::save_model(quantizer.model(), quantizer.float_model(FloatType::Fp16)?, &out.join("model.fp16.onnx"))?;
    Ok(Built { quantizer, ranges, calibration_seconds })
}

/// What the three models did on the evaluation images.
struct Rows {
    /// The counts and sums behind the comparisons (what a shard's part holds).
    parts: crate::compare::ComparisonParts,
    /// FP32 against INT8.
    comparison: reports::Comparison,
    /// FP32 against the FP16 model without Q/DQ.
    fp16: Option<FloatRow>,
    /// How each row was computed.
    evaluation: reports::Evaluation,
    /// With a recipe of several sizes: each size's rows (`comparison` and `fp16` are then over all of them).
    sizes: Vec<reports::SizeRow>,
    /// With `.npz` samples of several shapes: each shape's rows.
    shapes: Vec<reports::ShapeRow>,
    /// Class names by index (a stream's: its labels as numbers).
    classes: Vec<String>,
    /// Streamed samples: the hash of their names as listed (`sample 0`, `sample 1`...) and the identity of
    /// their bytes.
    streamed: Option<(String, String)>,
}

/// One device's sessions: FP32, then INT8 and FP16.
type SessionSet = Vec<Box<dyn BatchModel>>;

/// One set of sessions per device, FP32 then INT8 and FP16 against it, and how each row is computed.
fn session_sets(
    config: &ValidateConfig,
    built: &Built,
    out: &std::path::Path,
) -> Result<(Vec<SessionSet>, reports::Evaluation), EvaluateError> {
    let device = &config.collect.device;
    let quantizer = &built.quantizer;
    let (int8_model, fp16_model) = (out.join("model.qdq.onnx"), out.join("model.fp16.onnx"));
    let feed = &config.feed;
    let placement = |device| runtime::Placement { threads: config.collect.threads, device };
    let engine_model =
        |path: &std::path::Path, stem: &str, device: runtime::Device| -> Result<Box<dyn BatchModel>, EvaluateError> {
            match config.engine {
                Engine::Ort => ort_model(path, feed, placement(device)),
                Engine::TensorRt => {
                    let Feed::Images(recipe) = feed else {
                        return Err(EvaluateError::Input {
                            path: config.val.clone(),
                            message:
                                "--engine tensorrt feeds one image input; .npz samples run with --engine onnxruntime"
                                    .into(),
                        });
                    };
                    let model = quantizer.model();
                    let name = model.resolve_input(recipe.name.as_deref())?.name.clone();
                    let max_batch = config.eval_batch.unwrap_or(crate::compare::EVAL_BATCH);
                    // The sizes this run serves (the statistics' may be fewer, from --hist).
                    let profile = recipe
                        .is_multi_size()
                        .then(|| quantizer::engine_profile(model, recipe, quantizer.hist(), max_batch))
                        .transpose()?;
                    let output_batch_axis = model.output_batch_axis(&name, model.measured_output()?);
                    let input = crate::tensorrt::EngineInput {
                        image: recipe.batch_shape(1)[1..].to_vec(),
                        fixed_batch: model.fixed_batch(&name),
                        max_batch,
                        shapes: profile.map(|p| [p.min, p.opt, p.max]),
                        name,
                        output_batch_axis,
                    };
                    Ok(Box::new(TrtExec::build(path, &input, out, stem)?) as Box<dyn BatchModel>)
                }
            }
        };
    // One set of sessions per device: FP32, then INT8 and FP16 against it.
    let sets = device
        .list()
        .iter()
        .map(|&device| {
            Ok(vec![
                ort_model(&config.model, feed, placement(device))?,
                engine_model(&int8_model, "model", device)?,
                engine_model(&fp16_model, "model.fp16", device)?,
            ])
        })
        .collect::<Result<Vec<_>, EvaluateError>>()?;
    // Every device runs the same kinds of sessions: the first set says how each row is computed.
    let evaluation = reports::Evaluation {
        fp32: sets[0][0].evaluation(),
        int8: sets[0][1].evaluation(),
        fp16: sets[0][2].evaluation(),
    };
    Ok((sets, evaluation))
}

/// Runs FP32, INT8 and FP16 over the evaluation images (one set of sessions per device) and compares.
fn compare_rows(
    config: &ValidateConfig,
    built: &Built,
    val: &Dataset,
    out: &std::path::Path,
    progress: Progress,
) -> Result<Rows, EvaluateError> {
    let (mut sets, evaluation) = session_sets(config, built, out)?;
    let feed = &config.feed;
    let quantizer = &built.quantizer;
    // A recipe of several sizes: every image at each size in turn, each size's rows, and the rows of all.
    // `.npz` samples of several shapes: each shape's samples apart, each shape's rows, and the rows of all.
    let shape_groups = match feed {
        Feed::Tensors => datasets::tensors::shape_groups(val)?,
        Feed::Images(_) => Vec::new(),
    };
    let several_sizes = feed.recipe().is_some_and(|r| r.is_multi_size());
    // Each group with its batch: a batch of a larger size holds no more pixels than one of the smallest.
    let groups: Vec<(Feed, Dataset, Option<usize>)> = match feed {
        Feed::Images(recipe) if several_sizes => {
            let batch = config.eval_batch.unwrap_or_else(|| crate::compare::default_eval_batch(feed));
            recipe
                .each_size_batched(batch)
                .into_iter()
                .map(|(one, batch)| (Feed::Images(one), val.clone(), Some(batch)))
                .collect()
        }
        Feed::Tensors if shape_groups.len() > 1 => {
            shape_groups.iter().map(|(_, samples)| (Feed::Tensors, samples.clone(), config.eval_batch)).collect()
        }
        _ => vec![(feed.clone(), val.clone(), config.eval_batch)],
    };
    let total: u64 = groups.iter().map(|(_, d, _)| d.len() as u64).sum();
    let mut size_parts = Vec::with_capacity(groups.len());
    let mut seconds_before: Vec<f64> = Vec::new();
    let mut done_before = 0u64;
    for (feed, samples, batch) in &groups {
        let mut parts = compare_each_spread(&mut sets, samples, feed, &config.classifier, *batch, &mut |d, _| {
            progress(Phase::Compare, done_before + d, total)
        })?;
        done_before += samples.len() as u64;
        // The sessions count their seconds over every group: each group keeps its own.
        let cumulative: Vec<f64> =
            std::iter::once(parts.reference_seconds).chain(parts.candidates.iter().map(|c| c.seconds)).collect();
        if !seconds_before.is_empty() {
            parts.reference_seconds -= seconds_before[0];
            parts.candidates.iter_mut().zip(&seconds_before[1..]).for_each(|(c, before)| c.seconds -= before);
        }
        seconds_before = cumulative;
        size_parts.push(parts);
    }
    let rows_of = |parts: &crate::compare::ComparisonParts| comparison_rows(parts, &val.root);
    let (mut sizes, mut shapes) = (Vec::new(), Vec::new());
    if several_sizes {
        for ((feed, ..), parts) in groups.iter().zip(&size_parts) {
            let (comparison, fp16) = rows_of(parts)?;
            let size = feed.recipe().map_or([0, 0], |r| r.size);
            let calibrated = quantizer.hist().recipe.as_ref().is_some_and(|h| h.all_sizes().contains(&size));
            sizes.push(reports::SizeRow { size, comparison, fp16, calibrated });
        }
    } else if shape_groups.len() > 1 {
        for ((shape, _), parts) in shape_groups.iter().zip(&size_parts) {
            let (comparison, fp16) = rows_of(parts)?;
            let shape = shape
                .iter()
                .map(|(name, dims)| reports::ArrayShape { name: name.clone(), dims: dims.clone() })
                .collect();
            shapes.push(reports::ShapeRow { shape, comparison, fp16 });
        }
    }
    let parts = crate::compare::ComparisonParts::join(&size_parts.iter().collect::<Vec<_>>()).ok_or_else(|| {
        EvaluateError::Model { path: val.root.clone(), message: "the sizes' counts do not add up".into() }
    })?;
    let (comparison, fp16_row) = rows_of(&parts)?;

    Ok(Rows {
        parts,
        comparison,
        fp16: fp16_row,
        evaluation,
        sizes,
        shapes,
        classes: val.classes.clone(),
        streamed: None,
    })
}

/// FP32 against INT8, and the FP16 row, of one comparison's parts.
fn comparison_rows(
    parts: &crate::compare::ComparisonParts,
    root: &std::path::Path,
) -> Result<(reports::Comparison, Option<FloatRow>), EvaluateError> {
    let mut compared = parts.finish(root)?;
    let fp16_row = compared.pop().map(|c| FloatRow {
        float_type: FloatType::Fp16.name().into(),
        metrics: c.int8,
        agreement: c.agreement,
        cosine_mean: c.cosine_mean,
        sqnr_db: c.sqnr_db,
    });
    Ok((compared.remove(0), fp16_row))
}

/// A stream's batches checked and listed as they pass: every sample labelled as declared, the names hashed in
/// order (what [`Dataset::list_sha256`] gives a folder).
struct Checking<'a> {
    inner: &'a mut dyn datasets::BatchSource,
    labelled: bool,
    names: datasets::ListSha256,
    origin: &'a std::path::Path,
}

impl Iterator for Checking<'_> {
    type Item = Result<datasets::Batch, datasets::DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.inner.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        for item in &batch.items {
            if item.label.is_some() != self.labelled {
                let (has, declared) = if self.labelled { ("no label", "labelled") } else { ("a label", "unlabelled") };
                return Some(Err(datasets::DatasetError::Labels {
                    dir: self.origin.to_path_buf(),
                    message: format!(
                        "{} has {has}, but the samples were declared {declared} (by the first batch): give every \
                         batch labels, or none",
                        item.path.display()
                    ),
                }));
            }
            self.names.add(&item.path);
        }
        Some(Ok(batch))
    }
}

impl datasets::BatchSource for Checking<'_> {}

/// [`compare_rows`] on streamed samples: checked and identified as they pass, regrouped into the evaluation
/// batches a folder of the same samples makes, each shape's rows apart (in the order first seen, then all).
fn compare_stream(
    config: &ValidateConfig,
    built: &Built,
    given: GivenVal<'_>,
    out: &std::path::Path,
    progress: Progress,
) -> Result<Rows, EvaluateError> {
    let (mut sets, evaluation) = session_sets(config, built, out)?;
    let fixed = sets.iter().flatten().find_map(|m| m.fixed_batch());
    let size =
        fixed.unwrap_or_else(|| config.eval_batch.unwrap_or_else(|| crate::compare::default_eval_batch(&config.feed)));
    let origin = config.val.as_path();
    let mut checking = Checking { inner: given.batches, labelled: given.labelled, names: Default::default(), origin };
    let mut digesting = calibrate::Digesting::new(&mut checking);
    let samples = crate::compare::Samples { root: origin, classes: 0, total: given.total.unwrap_or(0) };
    let mut groups = {
        let mut whole = datasets::Rebatched::new(&mut digesting, size).map(|b| match (b, fixed) {
            (Ok(b), Some(n)) if b.len() != n => Err(datasets::DatasetError::Tensors {
                path: origin.to_path_buf(),
                message: format!(
                    "the model has a fixed batch of {n}, and {} samples of one shape are left over: give a \
                     multiple of {n} samples of each shape, or export the model with a dynamic batch dimension",
                    b.len()
                ),
            }),
            (b, _) => b,
        });
        crate::compare::compare_spread_by_shape(&mut sets, &mut whole, &samples, &config.classifier, &mut |d, t| {
            progress(Phase::Compare, d, t)
        })?
    };
    let samples_sha256 = digesting.digest().to_hex();
    let names = std::mem::take(&mut checking.names).finish();
    if groups.is_empty() {
        return Err(EvaluateError::NoImages { path: origin.to_path_buf() });
    }
    // The labels say the classes: as many as the largest label + 1, each named by its number (a folder of
    // `<label>-<label>` class folders gives the same).
    let mut counts: Vec<u64> = Vec::new();
    for (_, parts) in &groups {
        let c = parts.label_counts();
        counts.resize(counts.len().max(c.len()), 0);
        counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
    }
    let classes: Vec<String> =
        counts.iter().enumerate().map(|(l, &n)| if n > 0 { l.to_string() } else { String::new() }).collect();
    for (_, parts) in &mut groups {
        parts.classes = classes.len();
    }
    let mut shapes = Vec::new();
    if groups.len() > 1 {
        for (key, parts) in &groups {
            let (comparison, fp16) = comparison_rows(parts, origin)?;
            let shape = key.iter().map(|(name, dims)| reports::ArrayShape { name: name.clone(), dims: dims.clone() });
            shapes.push(reports::ShapeRow { shape: shape.collect(), comparison, fp16 });
        }
    }
    let all: Vec<&crate::compare::ComparisonParts> = groups.iter().map(|(_, p)| p).collect();
    let parts = crate::compare::ComparisonParts::join(&all).ok_or_else(|| EvaluateError::Model {
        path: origin.to_path_buf(),
        message: "the shapes' counts do not add up".into(),
    })?;
    let (comparison, fp16) = comparison_rows(&parts, origin)?;
    Ok(Rows {
        parts,
        comparison,
        fp16,
        evaluation,
        sizes: Vec::new(),
        shapes,
        classes,
        streamed: Some((names, samples_sha256)),
    })
}

/// What can be checked of streamed samples only once they are read: the prototypes cover their labels, and a
/// baseline was evaluated on the same samples (the same bytes, the same count per label).
fn check_after_stream(config: &ValidateConfig, rows: &Rows, baseline: Option<&Report>) -> Result<(), EvaluateError> {
    check_prototypes(config, rows.classes.len())?;
    let (Some(baseline), Some((_, samples))) = (baseline, &rows.streamed) else { return Ok(()) };
    let per_label = |c: &reports::Comparison| c.fp32.per_class.iter().map(|p| p.1).collect::<Vec<u64>>();
    let same = baseline.validation_samples_sha256.as_deref() == Some(samples.as_str())
        && per_label(&baseline.comparison) == per_label(&rows.comparison);
    if !same {
        return Err(EvaluateError::Baseline {
            path: config.baseline.clone().unwrap_or_default(),
            message: format!(
                "it was evaluated on {} samples of {} and this run on {} other samples (their bytes or labels \
                 differ): a baseline holds only on the same samples",
                baseline.comparison.images, baseline.validation_folder, rows.comparison.images
            ),
        });
    }
    Ok(())
}

/// The report of the rows against the gates (and the gates, which a shard's part keeps).
fn assemble_report(
    config: &ValidateConfig,
    built: &Built,
    rows: &Rows,
    validation_list_sha256: Option<String>,
    baseline: Option<&Report>,
) -> Result<(Report, Gates), EvaluateError> {
    let (device, feed, ranges) = (&config.collect.device, &config.feed, &built.ranges);
    let hist = built.quantizer.hist();
    let (comparison, fp16_row, evaluation) = (rows.comparison.clone(), rows.fp16.clone(), rows.evaluation.clone());
    let gates = Gates {
        max_top1_drop: config.max_top1_drop,
        fidelity: config.fidelity,
        baseline_int8_top1: match &baseline {
            Some(b) => Some(b.comparison.int8.top1.ok_or_else(|| EvaluateError::Input {
                path: config.val.clone(),
                message: "the baseline report has no INT8 Top-1 (it was evaluated without labels)".into(),
            })?),
            None => None,
        },
    };
    // The reference row is the model as given: FP32, or a model that computes in FP16 (said so, not "FP32").
    let reference = built.quantizer.model().low_precision_source.map_or("fp32", |low| low.name());
    let label = reports::reference_label(reference);
    // Several sizes: every criterion holds at each size (a baseline of the same sizes, size by size).
    let criteria = if rows.sizes.is_empty() {
        gates.criteria(&comparison, &config.val, &label)?
    } else {
        let mut all = Vec::new();
        for (k, row) in rows.sizes.iter().enumerate() {
            let at_size = Gates {
                baseline_int8_top1: baseline.and_then(|b| b.sizes.get(k)).and_then(|b| b.comparison.int8.top1),
                ..gates.clone()
            };
            all.extend(at_size.criteria_at(&row.comparison, &config.val, row.size, &label)?);
        }
        all
    };
    let tensors = ranges
        .tensors
        .iter()
        .filter(|t| t.quantized)
        .filter_map(|t| hist.tensor(&t.name).map(|h| (t, h)))
        .map(|(t, h)| {
            let (plot_range, counts) = plot_counts(&h.stats, 128);
            TensorPlot {
                name: t.name.clone(),
                quantized: true,
                amax: t.amax,
                max_abs: h.stats.amax(),
                clipped: t.clipped,
                plot_range,
                counts,
            }
        })
        .collect();
    let sensitivity = match &config.sensitivity {
        Some(p) => sensitivity_rows(p, &ranges.nodes)?,
        None => Vec::new(),
    };
    let report = Report {
        format: reports::REPORT_FORMAT.into(),
        version: reports::REPORT_VERSION,
        tools: vec![
            ("int8kit".into(), env!("CARGO_PKG_VERSION").into()),
            ("onnxruntime".into(), hist.onnxruntime.clone()),
        ],
        model: hist.model.file.clone(),
        model_sha256: hist.model.sha256.clone(),
        recipe: serde_json::to_value(feed.recipe()).map_err(EvaluateError::Encode)?,
        method: ranges.method.clone(),
        chosen_by: ranges.chosen_by.into(),
        self_check: serde_json::to_value(&ranges.self_check).map_err(EvaluateError::Encode)?,
        weight_rounding: serde_json::to_value(&ranges.weight_rounding).map_err(EvaluateError::Encode)?,
        precision: serde_json::to_value(&ranges.precision).map_err(EvaluateError::Encode)?,
        engine: match config.engine {
            Engine::Ort if device.is_cuda() => format!("onnxruntime {} ({device})", runtime::version()?),
            Engine::Ort => "ort-cpu".into(),
            Engine::TensorRt => "tensorrt (trtexec)".into(),
        },
        calibration_images: hist.images.count,
        calibration_seconds: built.calibration_seconds,
        validation_folder: config.val.display().to_string(),
        validation_list_sha256: validation_list_sha256
            .or_else(|| rows.streamed.as_ref().map(|(names, _)| names.clone()))
            .unwrap_or_default(),
        validation_samples_sha256: rows.streamed.as_ref().map(|(_, samples)| samples.clone()),
        baseline: match (&config.baseline, &baseline) {
            (Some(path), Some(b)) => Some(reports::BaselineRef {
                file: path.display().to_string(),
                model: b.model.clone(),
                model_sha256: b.model_sha256.clone(),
                across_models: b.model_sha256 != hist.model.sha256,
            }),
            _ => None,
        },
        classes: rows.classes.clone(),
        int8_flop_share: ranges.int8_flop_share,
        target: config.scheme.placement.target.name().into(),
        float_type: ranges.float_type.into(),
        reference: reference.into(),
        passed: criteria.iter().all(|c| c.passed),
        evaluation,
        comparison,
        fp16: fp16_row,
        criteria,
        tensors,
        sensitivity,
        sizes: rows.sizes.clone(),
        shapes: rows.shapes.clone(),
        shards: Vec::new(),
    };
    Ok((report, gates))
}

/// Statistics given with `--hist` instead of a calibration: read and checked against the run's feed (the model
/// is checked by `Quantizer::new`). Calibration options have nothing to act on, so they are refused, not ignored.
fn given_hist(path: &std::path::Path, config: &ValidateConfig) -> Result<histograms::HistFile, EvaluateError> {
    let bad = |message: String| EvaluateError::Input { path: path.to_path_buf(), message };
    for (flag, given) in
        [("--limit", config.collect.limit.is_some()), ("--smooth", config.collect.smooth != calibrate::Smooth::Auto)]
    {
        if given {
            return Err(bad(format!(
                "{flag} applies when validate calibrates (--calib); these statistics are made already (calibrate \
                 with {flag} instead)"
            )));
        }
    }
    let hist = histograms::HistFile::read(path)?;
    if hist.shard.is_some() {
        return Err(bad("is one shard of a calibration: merge every shard first (int8kit merge)".into()));
    }
    // The same preprocessing; the sizes may differ (statistics of one size, gated at several, show what a
    // calibration at one size costs at the others), and a warning names the sizes the statistics never saw.
    let same_feed = match (&config.feed, &hist.recipe) {
        (Feed::Images(recipe), Some(h)) => {
            let same = h.at(h.size) == recipe.at(h.size);
            let unseen: Vec<[u32; 2]> = recipe.all_sizes().into_iter().filter(|s| !h.all_sizes().contains(s)).collect();
            if same && !unseen.is_empty() {
                tracing::warn!(
                    "{}: the statistics were measured at {:?}; this run also evaluates {:?}, which they never saw",
                    path.display(),
                    h.all_sizes(),
                    unseen
                );
            }
            same
        }
        (Feed::Images(_), None) => false,
        (Feed::Tensors, _) => hist.arrays.is_some(),
    };
    if !same_feed {
        return Err(bad(format!(
            "was calibrated on {} with another preprocessing than this run's {}: give the recipe it was made with",
            if hist.arrays.is_some() { ".npz samples" } else { "images" },
            config.feed.samples()
        )));
    }
    Ok(hist)
}

/// Reads the baseline report and checks, before any work, that it was evaluated on the same images and (unless
/// asked otherwise) of the same model: a gate against another model's or another set's numbers would pass or
/// fail by accident.
fn check_baseline(
    path: &std::path::Path,
    config: &ValidateConfig,
    val: Option<&Dataset>,
    model_sha256: &str,
) -> Result<Report, EvaluateError> {
    let baseline = Report::read(path)?;
    let bad = |message: String| EvaluateError::Baseline { path: path.to_path_buf(), message };
    if baseline.model_sha256 != model_sha256 && !config.baseline_across_models {
        return Err(bad(format!(
            "it is a report on {} (sha256 {}), not on this model (sha256 {}); pass --baseline-across-models to \
             compare across models (the report then records it)",
            baseline.model,
            short(&baseline.model_sha256),
            short(model_sha256)
        )));
    }
    let sizes = |r: &Report| r.sizes.iter().map(|s| s.size).collect::<Vec<_>>();
    let run_sizes = match config.feed.recipe() {
        Some(r) if r.is_multi_size() => r.all_sizes(),
        _ => Vec::new(),
    };
    if sizes(&baseline) != run_sizes {
        return Err(bad(format!(
            "it was evaluated at the input sizes {:?} and this run at {:?} (an empty list: one size): a gate holds \
             size by size, so the baseline needs the run's sizes",
            sizes(&baseline),
            run_sizes
        )));
    }
    // Streamed samples are known once read: [`check_after_stream`] compares them.
    let Some(val) = val else { return Ok(baseline) };
    if baseline.validation_list_sha256 != val.list_sha256() {
        return Err(bad(format!(
            "it was evaluated on {} images of {} and this run evaluates {} images of {} (another image list): \
             use the same --val folder, --classes and --limit-val as the baseline",
            baseline.comparison.images,
            baseline.validation_folder,
            val.len(),
            config.val.display()
        )));
    }
    Ok(baseline)
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The ranking of a sensitivity.json (or of the report inside an autoprecision.json), marked with this
/// model's precision.
fn sensitivity_rows(
    path: &std::path::Path,
    nodes: &[quantizer::NodeReport],
) -> Result<Vec<reports::SensitivityRow>, EvaluateError> {
    // Only what the chart shows is required.
    #[derive(serde::Deserialize)]
    struct AloneInt8 {
        divergence: f64,
        top1_delta_pp: Option<f64>,
    }
    #[derive(serde::Deserialize)]
    struct Ranked {
        node: String,
        op: String,
        flop_share: f64,
        alone_int8: AloneInt8,
    }
    #[derive(serde::Deserialize)]
    struct Ranking {
        nodes: Vec<Ranked>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum RankingFile {
        Sensitivity(Ranking),
        AutoPrecision { sensitivity: Ranking },
    }
    let text = safe_io::read_to_string(path, safe_io::limits::JSON, "a sensitivity ranking")?;
    let file: RankingFile = serde_json::from_str(&text).map_err(|e| EvaluateError::Input {
        path: path.into(),
        message: format!("not a sensitivity.json or autoprecision.json from int8kit: {e}"),
    })?;
    let (RankingFile::Sensitivity(ranking) | RankingFile::AutoPrecision { sensitivity: ranking }) = file;
    Ok(ranking
        .nodes
        .into_iter()
        .map(|n| reports::SensitivityRow {
            int8: nodes.iter().any(|d| d.decision.node == n.node && d.decision.int8),
            op: n.op,
            flop_share: n.flop_share,
            divergence: n.alone_int8.divergence,
            top1_delta_pp: n.alone_int8.top1_delta_pp,
            node: n.node,
        })
        .collect())
}
