//! `int8kit merge`: the `.hist` files of every shard of one calibration into the whole run's `.hist`.

use std::path::PathBuf;

use anyhow::Context;

use crate::Outcome;

/// `int8kit merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The shards' .hist files (`calibrate --shard I/N`, every I from 1 to N), in any order.
    #[arg(required = true, value_name = "SHARD.hist")]
    pub parts: Vec<PathBuf>,
    /// The merged .hist (written atomically): byte for byte what one `calibrate` over the whole list writes.
    #[arg(long, value_name = "H.hist")]
    pub out: PathBuf,
}

/// Runs `int8kit merge`.
pub fn run(args: &MergeArgs) -> anyhow::Result<Outcome> {
    crate::args::check_outputs(&[&args.out], &args.parts)?;
    graph::check_file_target(&args.out)?;
    let parts = args
        .parts
        .iter()
        .map(|p| Ok((p.clone(), histograms::HistFile::read(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = histograms::merge(&parts)?;
    merged.write(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "merged {} shards: {} images, {} tensors -> {}",
        parts.len(),
        merged.images.count,
        merged.tensors.len(),
        args.out.display()
    );
    Ok(Outcome::Success)
}
