//! `int8kit analyze`: INT8 scales, precision decisions and deployment artifacts from a `.hist` file.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::args::SchemeArgs;
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
    /// Scale method, precision lists and placement.
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Prints what an artifact set holds: the effective precision and the files; shared with `quantize`.
pub fn print_written(written: &quantizer::Written, origin: &str, out: &Path) {
    print_precision(&written.ranges, origin);
    match &written.cache {
        quantizer::Cache::Written(_) => {
            println!("wrote model.qdq.onnx, calibration.cache, ranges.csv, ranges.json to {}", out.display())
        }
        quantizer::Cache::Omitted { reason } => {
            println!("wrote model.qdq.onnx, ranges.csv, ranges.json to {}", out.display());
            eprintln!("note: {reason}");
        }
    }
}

fn print_precision(r: &quantizer::Ranges, origin: &str) {
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
    let scheme = args.scheme.scheme(false)?;
    let written = quantizer::analyze_hist(&args.model, &args.hist, &scheme, &args.out)
        .with_context(|| format!("analyzing {}", args.model.display()))?;
    if !args.quiet {
        print_written(&written, &scheme.precision_origin, &args.out);
    }
    Ok(Outcome::Success)
}
