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
    /// The calibration folder: the samples the calibration held back are found there and measured on (the
    /// self-check, and the `auto` choices; without it those use fixed defaults).
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    pub images: Option<PathBuf>,
    /// Samples to measure on instead.
    #[command(flatten)]
    pub check: crate::args::CheckArgs,
    /// Threads for the measurements (0 = one per core): one-thread sessions, as many at once as threads, so
    /// that no result depends on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Scale method, precision lists and placement.
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// How INT8 weights are rounded (GPTQ needs --images).
    #[command(flatten)]
    pub rounding: crate::args::RoundingArgs,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Prints what an artifact set holds: the effective precision, the choices and what was measured, and the
/// files; shared with `quantize`.
pub fn print_written(written: &quantizer::Written, origin: &str, out: &Path) {
    print_precision(&written.ranges, origin);
    print_measured(&written.ranges);
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
    if let Some(eq) = &r.equalization {
        let widest = eq.tensors.iter().map(|t| t.factor_max).fold(1.0, f32::max);
        println!(
            "depthwise equalization from the .hist: {} depthwise Conv inputs behind a Mul (largest factor {widest:.1}); \
             {} left alone (ranges.json \"equalization\")",
            eq.tensors.len(),
            eq.skipped.len()
        );
    }
}

/// The `auto` search's table and the self-check.
fn print_measured(r: &quantizer::Ranges) {
    let fidelity = |f: &Option<quantizer::measure::Fidelity>| match f {
        Some(f) => format!("{:>8.2} {:>8.4} {:>7.1}", f.sqnr_db, f.cosine_mean, 100.0 * f.agreement),
        None => format!("{:>8} {:>8} {:>7}", "n/a", "n/a", "n/a"),
    };
    if let Some(search) = &r.search {
        println!(
            "auto: {} candidates measured in {:.1} s ({}{} then {} held-back samples):",
            search.trials.len(),
            search.seconds,
            search.first_samples.map(|n| format!("{n}, ")).unwrap_or_default(),
            search.samples.0,
            search.samples.1
        );
        // Samples of several sizes: candidates are ranked by their worst size, shown last.
        let sizes = search.trials.iter().any(|t| t.worst_shape_sqnr_db.is_some());
        // Ranked by the mean per-sample SQNR ("mean dB": every sample's noise against its own output energy);
        // "SQNR dB" is all samples' noise over all their signal.
        println!(
            "    {:<18} {:<9} {:<8} {:<6} {:<7} {:>9} {:>8} {:>8} {:>7} {:>6}{}",
            "method",
            "attention",
            "residual",
            "float",
            "stage",
            "mean dB",
            "SQNR dB",
            "cosine",
            "agree %",
            "time s",
            if sizes { "  worst size dB" } else { "" }
        );
        for (i, t) in search.trials.iter().enumerate() {
            println!(
                "  {} {:<18} {:<9} {:<8} {:<6} {:<7} {:>9} {} {:>6.1}{}{}",
                if i == search.chosen { "*" } else { " " },
                t.method,
                t.attention,
                t.residual,
                t.float_type,
                t.stage,
                t.mean_sample_sqnr_db.map(|d| format!("{d:.2}")).unwrap_or_else(|| "n/a".into()),
                fidelity(&t.fidelity),
                t.seconds,
                t.worst_shape_sqnr_db.map(|w| format!(" {w:>14.2}")).unwrap_or_default(),
                t.failed.as_deref().map(|e| format!("  ({e})")).unwrap_or_default()
            );
        }
        for n in &search.not_continued {
            let (t, leader) = (&search.trials[n.trial], &search.trials[n.leader]);
            let skipped = match n.skipped {
                "coarse" | "fine" => "on more held-back samples",
                "variants" => "with the other residual precision or float type",
                _ => "in the other float type",
            };
            println!(
                "  not measured {skipped}: {} (attention {}, residual {}), {:.2} dB behind {} (attention {}, residual {}), \
                 standard error {:.2} dB",
                t.method,
                t.attention,
                t.residual,
                n.behind_db,
                leader.method,
                leader.attention,
                leader.residual,
                n.gap_standard_error_db
            );
        }
        println!("chosen: {}", search.reason);
    } else if r.chosen_by == "defaults" {
        eprintln!(
            "note: the auto choices took fixed defaults (method {}, float type {}): {}",
            r.method, r.float_type, r.self_check.samples
        );
    }
    // The self-check below measures the weights as written: say which rounding they got and why.
    if let Some(w) = &r.weight_rounding {
        println!("weight rounding: {} ({})", w.chosen, w.reason);
    }
    match &r.self_check.fidelity {
        Some(f) => println!(
            "self-check on {}{}: SQNR {:.2} dB, cosine {:.4}, agreement {:.1} % ({})",
            r.self_check.samples,
            r.self_check.output.as_ref().map_or(String::new(), |o| measured_output_words(&o.name, o.of)),
            f.sqnr_db,
            f.cosine_mean,
            100.0 * f.agreement,
            r.self_check.evaluation.as_deref().unwrap_or("")
        ),
        None if r.chosen_by != "defaults" => eprintln!("note: not measured: {}", r.self_check.samples),
        None => {}
    }
    // A choice fixed by a flag is not compared with the others: say so, so a poor one is not silent.
    if r.self_check.fidelity.is_some() {
        let searched = r.search.as_ref().map(|s| s.axes.clone()).unwrap_or_default();
        if !searched.contains(&"method") {
            eprintln!(
                "note: the scale method was fixed ({}); without --method, int8kit measures entropy, mse, \
                 percentile and max on these samples and keeps the best",
                r.method
            );
        }
    }
}

/// Runs `int8kit analyze`.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<Outcome> {
    let scheme = args.scheme.scheme(false)?;
    let bar = crate::ui::progress_bar("auto", "models", args.quiet);
    let written = quantizer::analyze_hist(
        &args.model,
        &args.hist,
        args.images.as_deref(),
        args.check.check.as_deref(),
        args.threads,
        &scheme,
        args.rounding.weight_rounding,
        &args.out,
        &mut crate::ui::reporter(&bar),
    )
    .with_context(|| format!("analyzing {}", args.model.display()))?;
    bar.finish_and_clear();
    if !args.quiet {
        print_written(&written, &scheme.precision_origin, &args.out);
    }
    Ok(Outcome::Success)
}

/// ", output 'scores' (the first float one of 3)" where the graph has several outputs (only that one is
/// compared), nothing where it has one.
pub(crate) fn measured_output_words(name: &str, of: usize) -> String {
    if of > 1 {
        format!(", output '{name}' (the first float one of {of}; the others are not compared)")
    } else {
        String::new()
    }
}
