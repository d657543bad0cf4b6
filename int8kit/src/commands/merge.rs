//! `int8kit merge`: the parts of a sharded run into the whole run's result: the `.hist` files of every shard
//! of one calibration into its `.hist`, or the parts of a sharded `validate` into its reports and verdict.

use std::path::PathBuf;

use anyhow::Context;

use crate::Outcome;

/// `int8kit merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// Every shard's file, in any order: the .hist files of `calibrate --shard I/N`, or the parts of `validate
    /// --shard I/N --partial-out P.json` (every I from 1 to N).
    #[arg(required = true, value_name = "PART")]
    pub parts: Vec<PathBuf>,
    /// The merged .hist (written atomically; byte for byte what one `calibrate` writes), or for validation
    /// parts the report folder (report.json, summary.csv, per_class.csv, junit.xml, report.html, as one
    /// `validate` writes them, with each shard's speeds added).
    #[arg(long, value_name = "H.hist|DIR")]
    pub out: PathBuf,
    /// No summary.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `int8kit merge`: for validation parts, exit 0 when every criterion holds and 1 when one fails.
pub fn run(args: &MergeArgs) -> anyhow::Result<Outcome> {
    // One merge joins one kind; a file of the other kind is refused by its reader, naming it.
    if args.parts.first().is_some_and(|p| evaluate::shards::is_part(p)) {
        return merge_validation(args);
    }
    let parts = args
        .parts
        .iter()
        .map(|p| Ok((p.clone(), histograms::HistFile::read(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = histograms::merge(&parts)?;
    merged.write(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    if !args.quiet {
        eprintln!(
            "merged {} shards: {} images, {} tensors -> {}",
            parts.len(),
            merged.images.count,
            merged.tensors.len(),
            args.out.display()
        );
    }
    Ok(Outcome::Success)
}

/// The parts of a sharded validation into its report folder, replaced whole.
fn merge_validation(args: &MergeArgs) -> anyhow::Result<Outcome> {
    let parts = args
        .parts
        .iter()
        .map(|p| Ok((p.clone(), evaluate::shards::ValidatePart::read(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = evaluate::shards::merge(&parts)?;
    let mut stage = safe_io::OutputDir::new(&args.out)?;
    // A merge whose writing fails leaves no stale verdict (refusals above leave the folder untouched).
    stage.discard_existing_on_failure();
    report.write_all(stage.path()).with_context(|| format!("writing the reports to {}", args.out.display()))?;
    stage.commit()?;
    if !args.quiet {
        crate::commands::validate::print_outcome(&report, &args.out);
    }
    Ok(if report.passed { Outcome::Success } else { Outcome::GateFailed })
}
