//! `calibrate`: collect activation histograms of an ONNX model over a folder of images.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use calibrate::cli::{exit_code, init_logging, progress_bar, RecipeArgs};
use calibrate::{calibrate, CalibrateOptions};
use clap::Parser;
use datasets::OnBadImage;

/// Streams calibration images through the FP32 model and writes per-tensor activation statistics
/// (count, min, max, NaN/Inf counts, |x| histogram) to a .hist file for `analyze`.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The FP32 ONNX model (external data is read from its folder).
    #[arg(long, value_name = "M.onnx")]
    model: PathBuf,
    /// Folder of calibration images (JPEG/PNG, searched recursively).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Images per ONNX Runtime call. Does not change the result; memory grows with it (two batches of
    /// activations are alive at once).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Use a seeded random subset of N images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Seed for --limit.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads for ONNX Runtime and histograms (0 = one per core). Does not change the result.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// What to do with an unreadable image: fail (default) or skip it and count it.
    #[arg(long, default_value = "fail", value_name = "skip|fail")]
    on_bad_image: OnBadImage,
    /// Which activations: quantizable (default: inputs of Conv/MatMul/Gemm and the model outputs, enough for
    /// the default precision lists, about as fast as a plain FP32 pass) or all (any precision list works
    /// later, e.g. one that quantizes Add or Softmax; several times slower on transformers).
    #[arg(long, default_value = "quantizable", value_name = "quantizable|all")]
    tensors: calibrate::Selection,
    /// Where the model runs: cpu, or cuda[:N] (ONNX Runtime's CUDA EP with TF32 off; the activations stay in
    /// GPU memory and their statistics are computed there). Needs onnxruntime-gpu (see README).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: runtime::Device,
    /// Output .hist file (written atomically).
    #[arg(long, value_name = "H.hist")]
    out: PathBuf,
    /// No progress bar, no summary.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(args.quiet);
    exit_code(run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    // Before anything loads ONNX Runtime: CUDA needs the onnxruntime-gpu library.
    runtime::use_device(args.device);
    let recipe = args.recipe.load().context("loading the preprocessing recipe")?;
    let options = CalibrateOptions {
        batch_size: args.batch_size,
        threads: args.threads,
        limit: args.limit,
        seed: args.seed,
        on_bad_image: args.on_bad_image,
        selection: args.tensors,
        device: args.device,
    };
    let bar = progress_bar(0, "images", args.quiet);
    bar.set_prefix("calibrate");
    let start = Instant::now();
    let (hist, summary) = calibrate(&args.model, &args.images, &recipe, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("calibrating {}", args.model.display()))?;
    bar.finish_and_clear();
    hist.write(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    if !args.quiet {
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "calibrated {} tensors over {} images in {:.2} s ({:.0} images/s); {} skipped; wrote {}",
            summary.tensors,
            summary.images,
            secs,
            summary.images as f64 / secs,
            summary.skipped.len(),
            args.out.display()
        );
        for (path, why) in &summary.skipped {
            eprintln!("  skipped {}: {why}", path.display());
        }
        if let Some(mb) = summary.device_memory_peak_mb {
            eprintln!("  GPU memory in use at most {mb:.0} MB ({})", args.device);
        }
        if !summary.not_collected.is_empty() {
            eprintln!("  not collected (not float32): {}", summary.not_collected.join(", "));
        }
    }
    Ok(())
}
