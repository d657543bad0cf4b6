//! `int8kit analyze`: INT8 scales, precision decisions and deployment artifacts from a `.hist` file.

use std::path::{Path, PathBuf};

use analyze::{Analysis, AnalyzeOptions};
use anyhow::Context;
use histograms::HistFile;
use safe_io::OutputDir;

use crate::args::ScaleArgs;
use crate::Outcome;

/// `int8kit analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The FP32 ONNX model that was calibrated.
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Statistics from `int8kit calibrate`.
    #[arg(long, value_name = "H.hist")]
    pub hist: PathBuf,
    /// Scale method and precision lists.
    #[command(flatten)]
    pub scales: ScaleArgs,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Analyzes, writes the artifacts into `stage` (made for `out` before any work, so that a bad target is
/// refused first), swaps them into `out` and prints the effective precision; shared with `quantize`.
pub fn analyze_and_write(
    model: &Path,
    hist: &HistFile,
    options: &AnalyzeOptions,
    stage: OutputDir,
    out: &Path,
    quiet: bool,
) -> anyhow::Result<Analysis> {
    let analysis = analyze::analyze(model, hist, options).with_context(|| format!("analyzing {}", model.display()))?;
    let written = || format!("writing artifacts to {}", out.display());
    analysis.write(stage.path()).with_context(written)?;
    stage.commit().with_context(written)?;
    if !quiet {
        print_precision(&analysis, &options.precision_origin);
        match &analysis.cache {
            analyze::Cache::Written(_) => {
                println!("wrote model.qdq.onnx, calibration.cache, ranges.csv, ranges.json to {}", out.display())
            }
            analyze::Cache::Omitted { reason } => {
                println!("wrote model.qdq.onnx, ranges.csv, ranges.json to {}", out.display());
                eprintln!("note: {reason}");
            }
        }
    }
    Ok(analysis)
}

fn print_precision(analysis: &Analysis, origin: &str) {
    let r = &analysis.ranges;
    if !r.nodes.iter().any(|n| n.decision.int8) {
        eprintln!(
            "note: no node runs in INT8: the precision lists ({origin}) keep all {} GEMM/Conv nodes float, so \
             model.qdq.onnx is the float model",
            r.nodes.len()
        );
    }
    println!("effective precision ({origin}):");
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
    if let Some(sm) = &r.smoothing {
        let folded = sm.tensors.iter().filter(|t| t.applied != "mul").count();
        println!(
            "smoothing from the .hist (alpha {}): {} GEMM inputs, {folded} folded into a LayerNorm, {} behind a Mul; \
             {} left alone (ranges.json \"smoothing\")",
            sm.alpha,
            sm.tensors.len(),
            sm.tensors.len() - folded,
            sm.skipped.len()
        );
    }
}

/// Runs `int8kit analyze`.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<Outcome> {
    let stage = OutputDir::new(&args.out)?;
    let hist = HistFile::read(&args.hist)?;
    analyze_and_write(&args.model, &hist, &args.scales.options()?, stage, &args.out, args.quiet)?;
    Ok(Outcome::Success)
}
