//! `int8kit quantize`: calibrate and analyze in one run, the statistics kept in memory.

use std::path::PathBuf;

use anyhow::Context;

use crate::args::{CalibrationSource, ScaleArgs};
use crate::commands::{analyze::analyze_and_write, calibrate::collect};
use crate::Outcome;

/// `int8kit quantize`.
#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Model, images, preprocessing and collection.
    #[command(flatten)]
    pub source: CalibrationSource,
    /// Scale method and precision lists.
    #[command(flatten)]
    pub scales: ScaleArgs,
    /// Also write the calibration statistics to this .hist file (for `analyze` later, with other methods or
    /// precision lists, without recalibrating).
    #[arg(long, value_name = "H.hist")]
    pub save_hist: Option<PathBuf>,
    /// Output folder for model.qdq.onnx, ranges.csv, ranges.json (and calibration.cache with --tensors all).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// No progress bar, no listing.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `int8kit quantize`.
pub fn run(args: &QuantizeArgs) -> anyhow::Result<Outcome> {
    // Checked before the calibration pass, so that a bad flag does not cost a run.
    let options = args.scales.options()?;
    let stage = safe_io::OutputDir::new(&args.out)?;
    let hist = collect(&args.source, args.quiet)?;
    if let Some(path) = &args.save_hist {
        hist.write(path).with_context(|| format!("writing {}", path.display()))?;
    }
    analyze_and_write(&args.source.model, &hist, &options, stage, &args.out, args.quiet)?;
    Ok(Outcome::Success)
}
