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
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The FP32 ONNX model that was calibrated.
    #[arg(long, value_name = "M.onnx")]
    model: PathBuf,
    /// Statistics from `calibrate`.
    #[arg(long, value_name = "H.hist")]
    hist: PathBuf,
    /// entropy | mse | percentile[:P] (default 99.99) | max.
    #[arg(long, default_value = "entropy")]
    method: Method,
    /// TOML with [deny] / [allow] tables of node names (globs) and op types.
    #[arg(long, value_name = "P.toml")]
    precision: Option<PathBuf>,
    /// TensorRT version written in the calibration cache header.
    #[arg(long, default_value = "10.3.0")]
    trt_version: String,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(args.quiet);
    exit_code(run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let hist = HistFile::read(&args.hist).with_context(|| format!("reading {}", args.hist.display()))?;
    let (precision, origin) = match &args.precision {
        Some(p) => (PrecisionFile::load(p)?, p.display().to_string()),
        None => (PrecisionFile::default(), "defaults".to_string()),
    };
    let options = AnalyzeOptions {
        method: args.method,
        precision,
        precision_origin: origin,
        trt_version: args.trt_version.clone(),
    };
    let analysis =
        analyze(&args.model, &hist, &options).with_context(|| format!("analyzing {}", args.model.display()))?;
    analysis.write(&args.out).with_context(|| format!("writing artifacts to {}", args.out.display()))?;
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
        println!("wrote model.qdq.onnx, calibration.cache, ranges.csv, ranges.json to {}", args.out.display());
    }
    Ok(())
}
