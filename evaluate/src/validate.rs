//! The release gate as a library call: calibrate, analyze, evaluate FP32 and INT8 on a labelled folder,
//! hold the result to the criteria, and write the reports. `int8kit validate` and `cargo xtask validate`
//! both call [`validate`]; the caller turns [`Report::passed`] into an exit status.

use std::path::PathBuf;
use std::time::Instant;

use analyze::max_abs;
use analyze::placement::{FloatType, PlacementOptions, PrecisionFile};
use analyze::scales::Method;
use analyze::{analyze, AnalyzeOptions};
use calibrate::{calibrate, CalibrateOptions};
use datasets::{Dataset, Feed};
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
    /// Scale method.
    pub method: Method,
    /// SmoothQuant alpha: calibration smooths the model's GEMM inputs first (`calibrate --smooth`).
    pub smooth: Option<f32>,
    /// How weight channels' amax is chosen.
    pub weight_clip: analyze::qdq::WeightClip,
    /// Precision allow/deny lists, and where they came from (for messages).
    pub precision: PrecisionFile,
    /// Where `precision` came from: a file path or "defaults".
    pub precision_origin: String,
    /// Target runtime and attention default of the Q/DQ placement.
    pub qdq: PlacementOptions,
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
    /// A sensitivity.json or autoprecision.json whose ranking goes into report.html.
    pub sensitivity: Option<PathBuf>,
    /// What runs the INT8 model.
    pub engine: Engine,
    /// Class list for ImageNet-style folders.
    pub classes: Option<PathBuf>,
    /// Seeded subset of the calibration images.
    pub limit_calib: Option<usize>,
    /// Seeded subset of the validation images.
    pub limit_val: Option<usize>,
    /// CPU threads per session (0 = one per core).
    pub threads: usize,
    /// Where calibration and the models run; with several GPUs each evaluates its share of the batches
    /// (calibration runs on them too), and the report is the one-device report (speeds aside).
    pub device: runtime::Devices,
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
    Hist(PathBuf),
}

impl Calibration {
    /// The folder or the file.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Calibration::Folder(p) | Calibration::Hist(p) => p,
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
    /// Images through FP32 and INT8.
    Compare,
}

impl ValidateConfig {
    /// Every file and folder the run reads or writes, for the check that no output is, holds or sits inside
    /// an input (`int8kit validate` declares the same through its command line).
    pub fn run_files(&self) -> safe_io::RunFiles {
        use safe_io::Kind;
        let mut files = safe_io::RunFiles::new();
        let calib = match &self.calib {
            Calibration::Folder(p) => ("--calib", p, Kind::Samples),
            Calibration::Hist(p) => ("--hist", p, Kind::File),
        };
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
/// caller turns `passed` into the exit status.
pub fn validate(config: &ValidateConfig, progress: Progress) -> Result<Report, EvaluateError> {
    if config.engine == Engine::TensorRt && config.device.list().len() > 1 {
        return Err(EvaluateError::Input {
            path: config.model.clone(),
            message: format!("--engine tensorrt runs on one device; --device {} lists several", config.device),
        });
    }
    if config.engine == Engine::TensorRt && !crate::tensorrt::on_path() {
        return Err(crate::tensorrt::TensorRtError::NotOnPath.into());
    }
    if let Some(limit) = config.max_top1_drop {
        crate::check_limit("--max-top1-drop", limit)?;
    }
    config.fidelity.check()?;
    let mut val = Dataset::labelled_or_flat(&config.val, config.classes.as_deref())?;
    if !val.is_labelled() {
        // Top-1 gates need labels; fidelity gates compare with FP32 and do not.
        let top1_gate =
            [("--max-top1-drop", config.max_top1_drop.is_some()), ("--baseline", config.baseline.is_some())]
                .into_iter()
                .find(|(_, asked)| *asked);
        if let Some((flag, _)) = top1_gate {
            return Err(EvaluateError::Input {
                path: config.val.clone(),
                message: format!(
                    "{flag} gates on Top-1, which needs labels, and this folder has none (images at its top level, \
                     no class sub-folders): give a labelled folder (one sub-folder per class), or gate on \
                     --min-cosine, --min-sqnr or --min-agreement, which compare with FP32 and need no labels"
                ),
            });
        }
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
            if s.index == 0 || s.index > s.count || s.count > val.len() {
                return Err(EvaluateError::Input {
                    path: config.val.clone(),
                    message: format!(
                        "--shard {}/{}: shards are numbered 1 to N, and N may not exceed the {} images",
                        s.index,
                        s.count,
                        val.len()
                    ),
                });
            }
            let len = val.len();
            val.items = val.items[(s.index - 1) * len / s.count..s.index * len / s.count].to_vec();
            Some(histograms::ShardInfo { index: s.index, count: s.count, list_sha256: val.list_sha256() })
        }
    };
    // Loaded (and hashed) once here for the baseline and output checks; calibrate and analyze load it again.
    let model = graph::Model::load(&config.model)?;
    let baseline = match &config.baseline {
        Some(path) => Some(check_baseline(path, config, &val, &model.sha256)?),
        None => None,
    };
    if let Some(n) = config.classifier.classes() {
        if n < val.classes.len() {
            return Err(EvaluateError::Input {
                path: config.val.clone(),
                message: format!("{n} zero-shot prototypes for {} classes", val.classes.len()),
            });
        }
    }
    // Refusals come first and leave OUTDIR untouched: the statistics given are checked before the stage.
    let given = match &config.calib {
        Calibration::Folder(_) => None,
        Calibration::Hist(path) => Some(given_hist(path, config)?),
    };
    let model_files = model.input_files();
    // Its weights are not needed again here: a large model must not stay in memory beside the sessions.
    drop(model);
    config.run_files().check(&|_| Ok(model_files.clone()))?;
    // Everything goes into a staging folder that replaces OUTDIR whole at the end. From here a failed run
    // removes the previous verdict (int8kit's own files, proven by their SHA-256), so that OUTDIR never holds
    // a stale one; a kill leaves it as it was.
    let mut stage = safe_io::OutputDir::new(&config.out)?;
    stage.discard_existing_on_failure();
    let out = stage.path();

    let start = Instant::now();
    let options = CalibrateOptions {
        limit: config.limit_calib,
        threads: config.threads,
        device: config.device.clone(),
        smooth: config.smooth,
        ..Default::default()
    };
    // Without given statistics, `calib` is the calibration folder.
    let hist = match given {
        Some(hist) => hist,
        None => {
            calibrate(&config.model, config.calib.path(), &config.feed, &options, &mut |done, total| {
                progress(Phase::Calibrate, done, total)
            })?
            .0
        }
    };
    hist.write(&out.join("calibration.hist"))?;
    let analysis = analyze(
        &config.model,
        &hist,
        &AnalyzeOptions {
            placement: config.qdq,
            weight_clip: analyze::qdq::WeightClips::all(config.weight_clip),
            ..AnalyzeOptions::new(config.method, config.precision.clone(), config.precision_origin.clone())
        },
    )?;
    analysis.write(out)?;
    let calibration_seconds = start.elapsed().as_secs_f64();
    let int8_model = out.join("model.qdq.onnx");

    // The middle row: the FP32 model in FP16 without any Q/DQ, written beside the INT8 model.
    let fp16_model = out.join("model.fp16.onnx");
    let fp16_proto =
        analyze::float_type::convert(&analysis.model, analysis.model.proto.clone(), FloatType::Fp16, &max_abs(&hist))?;
    graph::save_model(&analysis.model, fp16_proto, &fp16_model)?;

    let feed = &config.feed;
    let placement = |device| runtime::Placement { threads: config.threads, device };
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
                    let name = analysis.model.resolve_input(recipe.name.as_deref())?.name.clone();
                    let input = crate::tensorrt::EngineInput {
                        image: recipe.batch_shape(1)[1..].to_vec(),
                        fixed_batch: analysis.model.fixed_batch(&name),
                        max_batch: crate::compare::EVAL_BATCH,
                        name,
                    };
                    Ok(Box::new(TrtExec::build(path, &input, out, stem)?) as Box<dyn BatchModel>)
                }
            }
        };
    // One set of sessions per device: FP32, then INT8 and FP16 against it.
    let mut sets = config
        .device
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
    // The sessions hold their own copies: the protos go before the comparison (only the ranges are reported).
    let analyze::Analysis { ranges, .. } = { analysis };
    let parts =
        compare_each_spread(&mut sets, &val, feed, &config.classifier, &mut |d, t| progress(Phase::Compare, d, t))?;
    let mut compared = parts.finish(&val.root)?;
    let fp16_row = compared.pop().map(|c| FloatRow {
        float_type: FloatType::Fp16.name().into(),
        metrics: c.int8,
        agreement: c.agreement,
        cosine_mean: c.cosine_mean,
        sqnr_db: c.sqnr_db,
    });
    let comparison = compared.remove(0);

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
    let criteria = gates.criteria(&comparison, &config.val)?;
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
        method: config.method.name(),
        precision: serde_json::to_value(&ranges.precision).map_err(EvaluateError::Encode)?,
        engine: match config.engine {
            Engine::Ort if config.device.is_cuda() => {
                format!("onnxruntime {} ({})", runtime::version()?, config.device)
            }
            Engine::Ort => "ort-cpu".into(),
            Engine::TensorRt => "tensorrt (trtexec)".into(),
        },
        calibration_images: hist.images.count,
        calibration_seconds,
        validation_folder: config.val.display().to_string(),
        validation_list_sha256,
        baseline: match (&config.baseline, &baseline) {
            (Some(path), Some(b)) => Some(reports::BaselineRef {
                file: path.display().to_string(),
                model: b.model.clone(),
                model_sha256: b.model_sha256.clone(),
                across_models: b.model_sha256 != hist.model.sha256,
            }),
            _ => None,
        },
        classes: val.classes.clone(),
        int8_flop_share: ranges.int8_flop_share,
        target: config.qdq.target.name().into(),
        float_type: ranges.float_type.into(),
        passed: criteria.iter().all(|c| c.passed),
        evaluation,
        comparison,
        fp16: fp16_row,
        criteria,
        tensors,
        sensitivity,
        shards: Vec::new(),
    };
    match (&config.shard, shard_info) {
        (Some(request), Some(shard)) => {
            let part = ValidatePart {
                format: crate::shards::PART_FORMAT.into(),
                version: crate::shards::PART_VERSION,
                shard,
                gates,
                parts,
                report: report.clone(),
            };
            safe_io::write_atomic(&request.partial_out, &part.to_json()?)?;
        }
        _ => report.write_all(out)?,
    }
    stage.commit()?;
    Ok(report)
}

/// Statistics given with `--hist` instead of a calibration: read and checked against the run's feed (the model
/// is checked by `analyze`). Calibration options have nothing to act on, so they are refused, not ignored.
fn given_hist(path: &std::path::Path, config: &ValidateConfig) -> Result<histograms::HistFile, EvaluateError> {
    let bad = |message: String| EvaluateError::Input { path: path.to_path_buf(), message };
    for (flag, given) in [("--limit-calib", config.limit_calib.is_some()), ("--smooth", config.smooth.is_some())] {
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
    let same_feed = match &config.feed {
        Feed::Images(recipe) => hist.recipe.as_ref() == Some(recipe),
        Feed::Tensors => hist.arrays.is_some(),
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
    val: &Dataset,
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
    nodes: &[analyze::NodeReport],
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
