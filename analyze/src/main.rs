//! `analyze`: INT8 scales, precision lists and deployment artifacts from a `.hist` file.

use std::path::PathBuf;

use analyze::precision::PrecisionFile;
use analyze::scales::Method;
use analyze::{analyze, AnalyzeOptions};
use anyhow::Context;
use calibrate::cli::{exit_code, init_logging};
use calibrate::HistFile;
use clap::Parser;

/// Computes INT8 scales from calibration histograms and writes model.qdq.onnx (explicit Q/DQ),
/// calibration.cache (TensorRT 10), ranges.csv and ranges.json into --out.
/// `analyze sensitivity` measures how much each node's quantization costs.
#[derive(Debug, Parser)]
#[command(version, about, subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The FP32 ONNX model that was calibrated.
    #[arg(long, value_name = "M.onnx", required = true)]
    model: Option<PathBuf>,
    /// Statistics from `calibrate`.
    #[arg(long, value_name = "H.hist", required = true)]
    hist: Option<PathBuf>,
    /// entropy | mse | percentile[:P] (default 99.99) | max | auto (per tensor, from --sensitivity).
    #[arg(long, default_value = "entropy")]
    method: String,
    /// With --method auto: a sensitivity.json from `analyze sensitivity --choose-methods`.
    #[arg(long, value_name = "S.json")]
    sensitivity: Option<PathBuf>,
    /// TOML with [deny] / [allow] tables of node names (globs) and op types.
    #[arg(long, value_name = "P.toml")]
    precision: Option<PathBuf>,
    /// TensorRT version written in the calibration cache header.
    #[arg(long, default_value = "10.3.0")]
    trt_version: String,
    /// Output folder.
    #[arg(long, value_name = "DIR", required = true)]
    out: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Per node: quantize it alone, and keep it alone in float; rank by the damage (sensitivity.json/.csv).
    Sensitivity(SensitivityArgs),
    /// Smallest deny list meeting a Top-1 budget: greedy on the sensitivity ranking over --limit images, then
    /// verified on the whole --val folder. Writes precision.toml and the artifacts built with it.
    /// Exit 1 when the budget cannot be met.
    Autoprecision {
        #[command(flatten)]
        common: SensitivityArgs,
        /// Allowed Top-1 drop against FP32, percentage points.
        #[arg(long, value_name = "PP", allow_hyphen_values = true)]
        max_top1_drop: f64,
    },
}

#[derive(Debug, clap::Args)]
struct SensitivityArgs {
    #[arg(long, value_name = "M.onnx")]
    model: PathBuf,
    #[arg(long, value_name = "H.hist")]
    hist: PathBuf,
    /// Labelled evaluation images (one sub-folder per class).
    #[arg(long, value_name = "DIR")]
    val: PathBuf,
    #[command(flatten)]
    recipe: calibrate::cli::RecipeArgs,
    /// Seeded subset of the evaluation images.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Classify embeddings by cosine against these prototypes (float32 [classes, dim] .npy).
    #[arg(long, value_name = "PROTOS.npy")]
    zero_shot: Option<PathBuf>,
    #[arg(long, default_value = "entropy")]
    method: Method,
    /// The INT8 configuration whose nodes are measured (default lists if absent).
    #[arg(long, value_name = "P.toml")]
    precision: Option<PathBuf>,
    /// Also find each quantized tensor's best scale method (for `analyze --method auto`); about three more
    /// evaluations per tensor.
    #[arg(long)]
    choose_methods: bool,
    /// Class list for ImageNet-style folders.
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Where the evaluations run: cpu, or cuda[:N] (ONNX Runtime's CUDA EP, TF32 off; needs onnxruntime-gpu).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: runtime::Device,
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // A subcommand's own --quiet counts too.
    let quiet = args.quiet
        || match &args.command {
            Some(Sub::Sensitivity(s)) => s.quiet,
            Some(Sub::Autoprecision { common, .. }) => common.quiet,
            None => false,
        };
    init_logging(quiet);
    match &args.command {
        Some(Sub::Sensitivity(s)) | Some(Sub::Autoprecision { common: s, .. }) => runtime::use_device(s.device),
        None => {}
    }
    if let Some(Sub::Autoprecision { common, max_top1_drop }) = &args.command {
        return match run_autoprecision(common, *max_top1_drop) {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::from(1),
            Err(e) => exit_code(Err(e)),
        };
    }
    exit_code(run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    match &args.command {
        Some(Sub::Sensitivity(s)) => return run_sensitivity(s),
        Some(Sub::Autoprecision { .. }) => anyhow::bail!("autoprecision is handled in main"),
        None => {}
    }
    let (Some(model), Some(hist_path), Some(out)) = (&args.model, &args.hist, &args.out) else {
        anyhow::bail!("--model, --hist and --out are required");
    };
    let hist = HistFile::read(hist_path).with_context(|| format!("reading {}", hist_path.display()))?;
    let (precision, origin) = match &args.precision {
        Some(p) => (PrecisionFile::load(p)?, p.display().to_string()),
        None => (PrecisionFile::default(), "defaults".to_string()),
    };
    let (method, per_tensor) = methods(&args.method, args.sensitivity.as_deref())?;
    let options = AnalyzeOptions {
        method,
        precision,
        precision_origin: origin,
        trt_version: args.trt_version.clone(),
        per_tensor,
    };
    let analysis = analyze(model, &hist, &options).with_context(|| format!("analyzing {}", model.display()))?;
    analysis.write(out).with_context(|| format!("writing artifacts to {}", out.display()))?;
    if !args.quiet {
        let r = &analysis.ranges;
        println!("effective precision ({}):", options.precision_origin);
        for n in &r.nodes {
            let flops = n.flops.map(|f| format!("{:.2} MFLOP", f / 1e6)).unwrap_or_default();
            println!(
                "  {:5} {:<14} {:<40} {:>12}  {}",
                if n.decision.int8 { "INT8" } else { "float" },
                n.decision.op,
                n.decision.node,
                flops,
                n.decision.reason
            );
        }
        println!(
            "{} activations quantized, {} weights int8; {:.1} % of GEMM/Conv FLOPs in INT8; method {}",
            r.tensors.iter().filter(|t| t.quantized).count(),
            r.weights.len(),
            100.0 * r.int8_flop_share,
            r.method
        );
        println!("wrote model.qdq.onnx, calibration.cache, ranges.csv, ranges.json to {}", out.display());
    }
    Ok(())
}

/// What `sensitivity` and `autoprecision` read: the .hist, the recipe, the INT8 configuration's precision
/// file and the zero-shot prototypes.
type Inputs = (HistFile, datasets::Recipe, PrecisionFile, Option<Vec<Vec<f32>>>);

impl SensitivityArgs {
    fn placement(&self) -> runtime::Placement {
        runtime::Placement { threads: self.threads, device: self.device }
    }

    fn inputs(&self) -> anyhow::Result<Inputs> {
        let hist = HistFile::read(&self.hist).with_context(|| format!("reading {}", self.hist.display()))?;
        let recipe = self.recipe.load().context("loading the preprocessing recipe")?;
        let precision = match &self.precision {
            Some(p) => PrecisionFile::load(p)?,
            None => PrecisionFile::default(),
        };
        let prototypes = match &self.zero_shot {
            Some(p) => Some(analyze::evaluate::load_prototypes(p)?),
            None => None,
        };
        Ok((hist, recipe, precision, prototypes))
    }
}

fn run_sensitivity(args: &SensitivityArgs) -> anyhow::Result<()> {
    let (hist, recipe, precision, prototypes) = args.inputs()?;
    let val = datasets::Dataset::labelled(&args.val, args.classes.as_deref())?.limit(args.limit, 0);
    let bar = calibrate::cli::progress_bar(0, "nodes", args.quiet);
    bar.set_prefix("sensitivity");
    let report = analyze::sensitivity::sensitivity(
        &args.model,
        &hist,
        &val,
        &recipe,
        prototypes.as_deref(),
        args.method,
        &precision,
        args.placement(),
        args.choose_methods,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .with_context(|| format!("measuring the sensitivity of {}", args.model.display()))?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut json = serde_json::to_vec_pretty(&report)?;
    json.push(b'\n');
    graph::write_atomic(&args.out.join("sensitivity.json"), &json)?;
    let mut csv = String::from("rank,node,op,flop_share,alone_int8_top1_delta_pp,alone_int8_agreement,alone_int8_divergence,alone_float_top1_delta_pp,alone_float_agreement,alone_float_divergence\n");
    for (i, n) in report.nodes.iter().enumerate() {
        csv.push_str(&format!(
            "{},\"{}\",{},{},{},{},{},{},{},{}\n",
            i + 1,
            n.node.replace('"', "\"\""),
            n.op,
            n.flop_share,
            n.alone_int8.top1_delta_pp,
            n.alone_int8.agreement,
            n.alone_int8.divergence,
            n.alone_float.top1_delta_pp,
            n.alone_float.agreement,
            n.alone_float.divergence
        ));
    }
    graph::write_atomic(&args.out.join("sensitivity.csv"), csv.as_bytes())?;
    if !args.quiet {
        println!(
            "{} images: FP32 Top-1 {:.2} %, INT8 {:.2} % ({:+.2} pp); {} nodes in {:.1} s; most sensitive first:",
            report.images,
            100.0 * report.fp32_top1,
            100.0 * report.int8.top1,
            report.int8.top1_delta_pp,
            report.nodes.len(),
            report.seconds
        );
        println!(
            "  {:<40} {:<8} {:>6}  {:>22}  {:>22}",
            "node", "op", "FLOPs", "alone INT8: dTop1 / div", "alone float: dTop1 / div"
        );
        for n in &report.nodes {
            println!(
                "  {:<40} {:<8} {:>5.1}%  {:>+9.2} pp / {:<9.2e}  {:>+9.2} pp / {:<9.2e}",
                n.node,
                n.op,
                100.0 * n.flop_share,
                n.alone_int8.top1_delta_pp,
                n.alone_int8.divergence,
                n.alone_float.top1_delta_pp,
                n.alone_float.divergence
            );
        }
        println!("wrote sensitivity.json and sensitivity.csv to {}", args.out.display());
    }
    Ok(())
}

/// Returns whether the budget was met (search subset and full verification).
fn run_autoprecision(args: &SensitivityArgs, max_top1_drop: f64) -> anyhow::Result<bool> {
    let (hist, recipe, base, prototypes) = args.inputs()?;
    let full = datasets::Dataset::labelled(&args.val, args.classes.as_deref())?;
    let subset = full.clone().limit(args.limit, 0);
    let bar = calibrate::cli::progress_bar(0, "nodes", args.quiet);
    bar.set_prefix("sensitivity");
    let auto = analyze::sensitivity::auto_precision(
        &args.model,
        &hist,
        &subset,
        &recipe,
        prototypes.as_deref(),
        args.method,
        &base,
        max_top1_drop,
        args.placement(),
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut json = serde_json::to_vec_pretty(&auto)?;
    json.push(b'\n');
    graph::write_atomic(&args.out.join("autoprecision.json"), &json)?;
    if !auto.met {
        eprintln!(
            "budget not met: even with {} of {} nodes in float, INT8 Top-1 is {:+.2} pp from FP32 on {} images (budget {max_top1_drop} pp)",
            auto.denied.len(),
            auto.sensitivity.nodes.len(),
            auto.search.top1_delta_pp,
            subset.len()
        );
        return Ok(false);
    }
    graph::write_atomic(&args.out.join("precision.toml"), auto.precision.to_toml().as_bytes())?;
    let options = AnalyzeOptions {
        method: args.method,
        precision: auto.precision.clone(),
        precision_origin: args.out.join("precision.toml").display().to_string(),
        trt_version: "10.3.0".into(),
        per_tensor: Default::default(),
    };
    let analysis = analyze(&args.model, &hist, &options)?;
    analysis.write(&args.out)?;
    // Verification on the whole folder.
    let mut fp32 = analyze::evaluate::ort_model(&args.model, &recipe, args.placement())?;
    let mut int8 = analyze::evaluate::ort_model(&args.out.join("model.qdq.onnx"), &recipe, args.placement())?;
    let c = analyze::evaluate::compare(
        fp32.as_mut(),
        int8.as_mut(),
        &full,
        &recipe,
        prototypes.as_deref(),
        &mut |_, _| {},
    )?;
    let drop = 100.0 * (c.fp32.top1 - c.int8.top1);
    let verified = drop <= max_top1_drop;
    println!(
        "deny list: {} node(s) {:?}; INT8 share of GEMM/Conv FLOPs {:.1} %",
        auto.denied.len(),
        auto.denied,
        100.0 * analysis.ranges.int8_flop_share
    );
    println!(
        "search ({} images): {:+.2} pp; verification ({} images): FP32 {:.2} %, INT8 {:.2} %, drop {drop:.2} pp -> {}",
        subset.len(),
        auto.search.top1_delta_pp,
        c.images,
        100.0 * c.fp32.top1,
        100.0 * c.int8.top1,
        if verified { "within budget" } else { "OVER budget (raise --limit so the search sees more images)" }
    );
    println!(
        "wrote precision.toml, model.qdq.onnx, calibration.cache, ranges.*, autoprecision.json to {}",
        args.out.display()
    );
    Ok(verified)
}

/// `--method`: a method for every tensor, or `auto`: each tensor's choice from a sensitivity.json (entropy
/// for tensors it does not list).
fn methods(
    method: &str,
    sensitivity: Option<&std::path::Path>,
) -> anyhow::Result<(Method, std::collections::BTreeMap<String, Method>)> {
    if method != "auto" {
        if sensitivity.is_some() {
            anyhow::bail!("--sensitivity goes with --method auto");
        }
        return Ok((method.parse().map_err(anyhow::Error::msg)?, Default::default()));
    }
    let Some(path) = sensitivity else {
        anyhow::bail!("--method auto needs --sensitivity S.json from `analyze sensitivity --choose-methods`");
    };
    #[derive(serde::Deserialize)]
    struct Choices {
        methods: Vec<analyze::sensitivity::MethodChoice>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let choices: Choices =
        serde_json::from_str(&text).with_context(|| format!("{} is not a sensitivity.json", path.display()))?;
    if choices.methods.is_empty() {
        anyhow::bail!("{} has no per-tensor methods; run `analyze sensitivity --choose-methods`", path.display());
    }
    let mut per_tensor = std::collections::BTreeMap::new();
    for c in choices.methods {
        per_tensor.insert(c.tensor, c.method.parse::<Method>().map_err(anyhow::Error::msg)?);
    }
    Ok((Method::Entropy, per_tensor))
}
