//! `int8kit calibrate`: activation statistics of an ONNX model over a folder of images.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

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

/// A calibration error, with the `--on-bad-image` hint where an image could not be used (only calibrate
/// and quantize have the flag, so only they suggest it).
pub fn hint_calibration(e: calibrate::CalibrateError) -> anyhow::Error {
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
}

/// [`hint_calibration`] for the whole pipeline's errors.
pub fn hint_bad_image(e: quantizer::QuantizeError) -> anyhow::Error {
    match e {
        quantizer::QuantizeError::Calibrate(e) => hint_calibration(e),
        other => other.into(),
    }
}

/// Prints what a calibration pass did; shared with `quantize`.
pub fn print_calibration(
    summary: &calibrate::CalibrationSummary,
    smoothed: Option<(f32, usize, Option<u64>)>,
    equalized: Option<(usize, u64)>,
    device: &runtime::Devices,
    secs: f64,
) {
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
    if let Some((alpha, gemm_inputs, samples)) = smoothed {
        let over = samples.map_or(String::new(), |n| format!(" over {n} samples"));
        eprintln!(
            "  smoothed first (alpha {alpha}, per-channel maxima of {gemm_inputs} GEMM inputs{over}); the statistics \
             are the smoothed model's (--smooth off to skip)"
        );
    }
    if let Some((inputs, samples)) = equalized {
        eprintln!(
            "  equalized first: per-channel maxima of {inputs} depthwise Conv inputs over {samples} samples; the \
             statistics are the equalized model's (--equalize off to skip)"
        );
    }
    if let Some(mb) = summary.device_memory_peak_mb {
        eprintln!("  GPU memory in use at most {mb:.0} MB ({device})");
    }
    if !summary.not_collected.is_empty() {
        eprintln!("  not collected (not float32): {}", summary.not_collected.join(", "));
    }
}

/// Runs `int8kit calibrate`.
pub fn run(args: &CalibrateArgs) -> anyhow::Result<Outcome> {
    let source = &args.source;
    let feed = source.recipe.feed(&source.images)?;
    let bar = progress_bar("calibrate", "images", args.quiet);
    let start = Instant::now();
    let (hist, summary) =
        calibrate::calibrate(&source.model, &source.images, &feed, &source.options(), &mut reporter(&bar))
            .map_err(hint_calibration)
            .with_context(|| format!("calibrating {}", source.model.display()))?;
    bar.finish_and_clear();
    if !args.quiet {
        let smoothed = hist.smoothing.as_ref().map(|s| (s.alpha, s.channel_max.len(), s.samples));
        let equalized = hist.equalization.as_ref().map(|e| (e.channel_max.len(), e.samples));
        print_calibration(&summary, smoothed, equalized, &source.run.device, start.elapsed().as_secs_f64());
    }
    hist.write(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    if !args.quiet {
        eprintln!("wrote {}", args.out.display());
    }
    Ok(Outcome::Success)
}
