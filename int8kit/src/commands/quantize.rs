//! `int8kit quantize`: calibrate and build in one run, the statistics kept in memory.

use std::path::PathBuf;

use anyhow::Context;

use crate::args::{CalibrationSource, SchemeArgs};
use crate::commands::{analyze::print_written, calibrate::print_calibration};
use crate::ui::{progress_bar, reporter};
use crate::Outcome;

/// `int8kit quantize`.
#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Model, images, preprocessing and collection.
    #[command(flatten)]
    pub source: CalibrationSource,
    /// Scale method, precision lists and placement.
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// Also write the calibration statistics to this .hist file (for `analyze` later, with other methods or
    /// precision lists, without recalibrating).
    #[arg(long, value_name = "H.hist")]
    pub save_hist: Option<PathBuf>,
    /// How INT8 weights are rounded.
    #[command(flatten)]
    pub rounding: crate::args::RoundingArgs,
    /// Samples to measure on instead of held-back calibration samples (then none are held back).
    #[command(flatten)]
    pub check: crate::args::CheckArgs,
    /// Output folder for model.qdq.onnx, ranges.csv, ranges.json (and calibration.cache with --tensors all).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// No progress bar, no listing.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `int8kit quantize`.
pub fn run(args: &QuantizeArgs) -> anyhow::Result<Outcome> {
    let source = &args.source;
    // Checked before the calibration pass, so that a bad flag does not cost a run.
    let mut collect = source.options();
    if let Some(dir) = &args.check.check {
        // The given samples are measured on: every calibration sample goes into the statistics.
        match source.run.hold_out {
            None | Some(calibrate::HoldOut::Count(0)) => collect.hold_out = calibrate::HoldOut::Count(0),
            Some(_) => anyhow::bail!(
                "--check {} gives the samples to measure on, so --hold-out would hold back calibration samples that \
                 nothing measures: leave --hold-out out (or give 0), or leave --check out to measure on held-back ones",
                dir.display()
            ),
        }
    }
    let config = quantizer::QuantizeConfig {
        model: source.model.clone(),
        images: source.images.clone(),
        feed: source.recipe.feed(&source.images)?,
        collect,
        scheme: args.scheme.scheme(false)?,
        save_hist: args.save_hist.clone(),
        out: args.out.clone(),
        weight_rounding: args.rounding.weight_rounding,
        check: args.check.check.clone(),
    };
    let bar = progress_bar("calibrate", "images", args.quiet);
    let search = progress_bar("auto", "models", args.quiet);
    let (mut calibrating, mut searching) = (reporter(&bar), reporter(&search));
    let done = quantizer::quantize(&config, &mut |step, d, t| match step {
        quantizer::Step::Calibrate => calibrating(d, t),
        quantizer::Step::Search => {
            bar.finish_and_clear();
            searching(d, t)
        }
    })
    .map_err(crate::commands::calibrate::hint_bad_image)
    .with_context(|| format!("quantizing {}", source.model.display()))?;
    bar.finish_and_clear();
    search.finish_and_clear();
    if !args.quiet {
        print_calibration(
            &done.calibration,
            done.smoothed,
            done.equalized,
            &source.run.device,
            done.calibration_seconds,
        );
        print_written(&done.written, &config.scheme.precision_origin, &args.out);
    }
    Ok(Outcome::Success)
}
