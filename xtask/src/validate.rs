//! `cargo xtask validate`: calibrate, analyze, build the INT8 engine, compare Top-1 with FP32, gate.

use std::path::PathBuf;
use std::time::Instant;

use analyze::evaluate::{compare, load_prototypes, ort_model};
use analyze::precision::PrecisionFile;
use analyze::scales::Method;
use analyze::{analyze, AnalyzeOptions};
use anyhow::{bail, Context};
use calibrate::cli::{progress_bar, RecipeArgs};
use calibrate::{calibrate, CalibrateOptions};
use datasets::Dataset;
use reports::{Criterion, Report, TensorPlot};

use crate::tensorrt::TrtExec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// ONNX Runtime over model.qdq.onnx, on --device (CPU EP, or CUDA EP).
    #[value(name = "ort", alias = "ort-cpu")]
    Ort,
    /// TensorRT through `trtexec` (untested: no TensorRT where int8kit is developed).
    Tensorrt,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// FP32 ONNX model.
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Calibration images (flat folder).
    #[arg(long, value_name = "DIR")]
    pub calib: PathBuf,
    /// Labelled validation images (one sub-folder per class).
    #[arg(long, value_name = "DIR")]
    pub val: PathBuf,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Scale method: entropy | mse | percentile[:P] | max.
    #[arg(long, default_value = "entropy")]
    pub method: Method,
    /// Precision allow/deny lists (TOML).
    #[arg(long, value_name = "P.toml")]
    pub precision: Option<PathBuf>,
    /// Classify embeddings by cosine against these class prototypes (float32 [classes, dim] .npy).
    #[arg(long, value_name = "PROTOS.npy")]
    pub zero_shot: Option<PathBuf>,
    /// Gate: INT8 Top-1 may be at most this many percentage points below FP32.
    #[arg(long, value_name = "PP", allow_hyphen_values = true)]
    pub max_top1_drop: Option<f64>,
    /// Add this sensitivity ranking (sensitivity.json or autoprecision.json from `analyze`) to report.html.
    #[arg(long, value_name = "S.json")]
    pub sensitivity: Option<PathBuf>,
    /// Gate: INT8 Top-1 must not fall below this earlier report's INT8 Top-1 by more than --max-top1-drop.
    #[arg(long, value_name = "report.json")]
    pub baseline: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "ort")]
    pub engine: Engine,
    /// Class list for ImageNet-style folders (one folder name per line).
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// Use a seeded subset of N calibration images.
    #[arg(long, value_name = "N")]
    pub limit_calib: Option<usize>,
    /// Use a seeded subset of N validation images.
    #[arg(long, value_name = "N")]
    pub limit_val: Option<usize>,
    /// Threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where calibration and both models run: cpu, or cuda[:N] (ONNX Runtime's CUDA EP with TF32 off;
    /// needs onnxruntime-gpu, see README).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: runtime::Device,
    /// Output folder for the artifacts and reports.
    #[arg(long, value_name = "OUTDIR")]
    pub out: PathBuf,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Coarse |x| histogram over [0, max |x|] for the report's plots.
fn plot_counts(stats: &calibrate::histogram::TensorStats, bins: usize) -> (f64, Vec<u64>) {
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

/// Runs the pipeline and writes the reports. Returns the report; the caller turns `passed` into the exit code.
pub fn run(args: &ValidateArgs) -> anyhow::Result<Report> {
    if args.engine == Engine::Tensorrt && !crate::tensorrt::on_path() {
        bail!("--engine tensorrt needs TensorRT's `trtexec` on PATH, and none was found; install TensorRT 10 or 11, or use --engine ort");
    }
    let recipe = args.recipe.load().context("loading the preprocessing recipe")?;
    let baseline = match &args.baseline {
        Some(p) => Some(Report::read(p)?),
        None => None,
    };
    let prototypes = match &args.zero_shot {
        Some(p) => Some(load_prototypes(p)?),
        None => None,
    };
    let (precision, origin) = match &args.precision {
        Some(p) => (PrecisionFile::load(p)?, p.display().to_string()),
        None => (PrecisionFile::default(), "defaults".into()),
    };
    let mut val = Dataset::labelled(&args.val, args.classes.as_deref())?;
    if let Some(n) = args.limit_val {
        val = val.limit(n, 0);
    }
    if let Some(p) = &prototypes {
        if p.len() < val.classes.len() {
            bail!("{} prototypes for {} classes in {}", p.len(), val.classes.len(), args.val.display());
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    let bar = progress_bar(0, "images", args.quiet);
    bar.set_prefix("calibrate");
    let start = Instant::now();
    let options =
        CalibrateOptions { limit: args.limit_calib, threads: args.threads, device: args.device, ..Default::default() };
    let (hist, _) = calibrate(&args.model, &args.calib, &recipe, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    hist.write(&args.out.join("calibration.hist"))?;
    let analysis = analyze(
        &args.model,
        &hist,
        &AnalyzeOptions {
            method: args.method,
            precision,
            precision_origin: origin,
            trt_version: "10.3.0".into(),
            per_tensor: Default::default(),
        },
    )?;
    analysis.write(&args.out)?;
    let calibration_seconds = start.elapsed().as_secs_f64();
    let int8_model = args.out.join("model.qdq.onnx");

    let placement = runtime::Placement { threads: args.threads, device: args.device };
    let mut fp32 = ort_model(&args.model, &recipe, placement)?;
    let mut int8 = match args.engine {
        Engine::Ort => ort_model(&int8_model, &recipe, placement)?,
        Engine::Tensorrt => {
            let input = analysis.model.resolve_input(recipe.name.as_deref())?.name.clone();
            Box::new(TrtExec::build(&int8_model, &input, &args.out)?) as Box<dyn analyze::evaluate::BatchModel>
        }
    };
    let bar = progress_bar(0, "images", args.quiet);
    bar.set_prefix("FP32 vs INT8");
    let comparison = compare(fp32.as_mut(), int8.as_mut(), &val, &recipe, prototypes.as_deref(), &mut |d, t| {
        bar.set_length(t);
        bar.set_position(d);
    })?;
    bar.finish_and_clear();

    let mut criteria = Vec::new();
    let drop_pp = 100.0 * (comparison.fp32.top1 - comparison.int8.top1);
    if let Some(limit) = args.max_top1_drop {
        let passed = drop_pp <= limit;
        criteria.push(Criterion {
            name: "max-top1-drop".into(),
            passed,
            measured: drop_pp,
            limit,
            message: format!(
                "INT8 Top-1 {:.2} % vs FP32 {:.2} %: drop {drop_pp:.2} pp {} the allowed {limit} pp",
                100.0 * comparison.int8.top1,
                100.0 * comparison.fp32.top1,
                if passed { "within" } else { "exceeds" }
            ),
        });
    }
    if let Some(b) = &baseline {
        let tolerance = args.max_top1_drop.unwrap_or(0.0).max(0.0);
        let floor = 100.0 * b.comparison.int8.top1 - tolerance;
        let measured = 100.0 * comparison.int8.top1;
        let passed = measured >= floor;
        criteria.push(Criterion {
            name: "baseline".into(),
            passed,
            measured,
            limit: floor,
            message: format!(
                "INT8 Top-1 {measured:.2} % vs baseline {:.2} % (tolerance {tolerance} pp): {}",
                100.0 * b.comparison.int8.top1,
                if passed { "not below" } else { "below the baseline" }
            ),
        });
    }
    let tensors = analysis
        .ranges
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
    let sensitivity = match &args.sensitivity {
        Some(p) => sensitivity_rows(p, &analysis.ranges.nodes)?,
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
        recipe: serde_json::to_value(&recipe)?,
        method: args.method.name(),
        precision: serde_json::to_value(&analysis.ranges.precision)?,
        engine: match args.engine {
            Engine::Ort if args.device.is_cuda() => format!("onnxruntime {} ({})", runtime::version()?, args.device),
            Engine::Ort => "ort-cpu".into(),
            Engine::Tensorrt => "tensorrt (trtexec)".into(),
        },
        calibration_images: hist.images.count,
        calibration_seconds,
        validation_folder: args.val.display().to_string(),
        classes: val.classes.clone(),
        int8_flop_share: analysis.ranges.int8_flop_share,
        passed: criteria.iter().all(|c| c.passed),
        comparison,
        criteria,
        tensors,
        sensitivity,
    };
    report.write_all(&args.out)?;
    Ok(report)
}

/// Prints the outcome and returns the exit code: 0 when every criterion holds, 1 when one fails.
pub fn conclude(report: &Report, out: &std::path::Path) -> u8 {
    let c = &report.comparison;
    println!(
        "{}: FP32 Top-1 {:.2} % / Top-5 {:.2} %, INT8 Top-1 {:.2} % / Top-5 {:.2} % on {} images; agreement {:.2} %, cosine {:.5}, SQNR {:.1} dB; images/s FP32 {:.0}, INT8 {:.0}",
        report.model,
        100.0 * c.fp32.top1,
        100.0 * c.fp32.top5,
        100.0 * c.int8.top1,
        100.0 * c.int8.top5,
        c.images,
        100.0 * c.agreement,
        c.cosine_mean,
        c.sqnr_db,
        c.fp32.images_per_s,
        c.int8.images_per_s
    );
    for cr in &report.criteria {
        println!("  {} {}: {}", if cr.passed { "PASS" } else { "FAIL" }, cr.name, cr.message);
    }
    println!("reports in {}", out.display());
    if report.passed {
        0
    } else {
        eprintln!(
            "gate failed: {}",
            report.criteria.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        1
    }
}

/// The ranking of a sensitivity.json (or of the report inside an autoprecision.json), marked with this
/// model's precision.
fn sensitivity_rows(
    path: &std::path::Path,
    nodes: &[analyze::NodeReport],
) -> anyhow::Result<Vec<reports::SensitivityRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let ranked = json
        .get("nodes")
        .or_else(|| json.get("sensitivity").and_then(|s| s.get("nodes")))
        .and_then(|n| n.as_array())
        .with_context(|| format!("{} has no sensitivity ranking (nodes)", path.display()))?;
    ranked
        .iter()
        .map(|n| {
            let node = n["node"].as_str().context("a ranked node has no name")?.to_string();
            Ok(reports::SensitivityRow {
                int8: nodes.iter().any(|d| d.decision.node == node && d.decision.int8),
                op: n["op"].as_str().unwrap_or_default().to_string(),
                flop_share: n["flop_share"].as_f64().unwrap_or(0.0),
                divergence: n["alone_int8"]["divergence"].as_f64().unwrap_or(0.0),
                top1_delta_pp: n["alone_int8"]["top1_delta_pp"].as_f64().unwrap_or(0.0),
                node,
            })
        })
        .collect()
}
