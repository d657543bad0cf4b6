//! `int8kit calibrate`: activation statistics of an ONNX model over a folder of images.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use histograms::HistFile;

use crate::args::CalibrationSource;
use crate::ui::{progress_bar, reporter};
use crate::Outcome;

/// `int8kit calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// Model, images, preprocessing and collection.
    #[command(flatten)]
    pub source: CalibrationSource,
    /// Output .hist file (written atomically).
    #[arg(long, value_name = "H.hist")]
    pub out: PathBuf,
    /// No progress bar, no summary.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs the calibration pass with a progress bar and prints its summary; shared with `quantize`.
pub fn collect(source: &CalibrationSource, quiet: bool) -> anyhow::Result<HistFile> {
    let CalibrationSource { model, images, recipe, collect } = source;
    let feed = recipe.feed(images)?;
    let bar = progress_bar("calibrate", "images", quiet);
    let start = Instant::now();
    let (hist, summary) = calibrate::calibrate(model, images, &feed, &collect.options(), &mut reporter(&bar))
        .map_err(|e| {
            // Only calibrate and quantize have the flag, so only they suggest it.
            let unreadable = matches!(
                e,
                calibrate::CalibrateError::Dataset(
                    datasets::DatasetError::BadImage { .. } | datasets::DatasetError::NoPixels { .. }
                )
            );
            let e = anyhow::Error::new(e);
            if unreadable {
                e.context("an image cannot be used (--on-bad-image skip leaves such files out, and counts them)")
            } else {
                e
            }
        })
        .with_context(|| format!("calibrating {}", model.display()))?;
    bar.finish_and_clear();
    if !quiet {
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "calibrated {} tensors over {} images in {:.2} s ({:.0} images/s); {} skipped",
            summary.tensors,
            summary.images,
            secs,
            summary.images as f64 / secs,
            summary.skipped.len(),
        );
        for (path, why) in &summary.skipped {
            eprintln!("  skipped {}: {why}", path.display());
        }
        if let Some(sm) = &hist.smoothing {
            eprintln!(
                "  smoothed first (alpha {}, per-channel maxima of {} GEMM inputs); the statistics are the smoothed \
                 model's (two passes over the images)",
                sm.alpha,
                sm.channel_max.len()
            );
        }
        if let Some(mb) = summary.device_memory_peak_mb {
            eprintln!("  GPU memory in use at most {mb:.0} MB ({})", collect.device);
        }
        if !summary.not_collected.is_empty() {
            eprintln!("  not collected (not float32): {}", summary.not_collected.join(", "));
        }
    }
    Ok(hist)
}

/// Runs `int8kit calibrate`.
pub fn run(args: &CalibrateArgs) -> anyhow::Result<Outcome> {
    let hist = collect(&args.source, args.quiet)?;
    hist.write(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    if !args.quiet {
        eprintln!("wrote {}", args.out.display());
    }
    Ok(Outcome::Success)
}
