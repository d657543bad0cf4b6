//! `int8kit sensitivity`: how much each node's quantization costs.

use std::path::PathBuf;

use anyhow::Context;
use evaluate::sensitivity::{sensitivity, SensitivityInputs};
use evaluate::Classifier;
use histograms::HistFile;

use crate::args::{RecipeArgs, RunArgs, SchemeArgs};
use crate::ui::{percent, points, progress_bar, reporter};
use crate::Outcome;

/// `int8kit sensitivity`; also the measurement part of `int8kit autoprecision`.
#[derive(Debug, clap::Args)]
pub struct SensitivityArgs {
    /// The FP32 ONNX model.
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Its statistics from `int8kit calibrate` (or `quantize --save-hist`).
    #[arg(long, value_name = "H.hist")]
    pub hist: PathBuf,
    /// Evaluation images: one sub-folder per class, or an unlabelled folder (images at its top level), where
    /// only fidelity (agreement, cosine, SQNR, divergence) is measured.
    #[arg(long, value_name = "DIR")]
    pub val: PathBuf,
    /// Preprocessing.
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Classify embeddings by cosine against these prototypes (float32 [classes, dim] .npy).
    #[arg(long, value_name = "PROTOS.npy")]
    pub zero_shot: Option<PathBuf>,
    /// The INT8 configuration whose nodes are measured.
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// How the evaluation images run (--limit: of the evaluation images, default 1000).
    #[command(flatten)]
    pub run: RunArgs,
    /// Also find each quantized tensor's best scale method (for `--method auto`) and each weighted node's
    /// better weight clip, max or mse (for `--weight-clip auto`); about three more evaluations per tensor
    /// and one per node.
    #[arg(long)]
    pub choose_methods: bool,
    /// Class list for ImageNet-style folders.
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// No progress bar, no listing.
    #[arg(long, short)]
    pub quiet: bool,
}

impl SensitivityArgs {
    /// The whole `--val` folder: labelled when it has class sub-folders (or `--classes` is given).
    pub fn dataset(&self) -> anyhow::Result<datasets::Dataset> {
        Ok(datasets::Dataset::labelled_or_flat(&self.val, self.classes.as_deref())?)
    }

    /// The library's inputs: everything read and checked before the long run starts. The dataset is the
    /// seeded `--limit` subset of `--val`.
    pub fn inputs(&self) -> anyhow::Result<SensitivityInputs> {
        self.run.refuse_calibration_flags(&format!("--hist {}", self.hist.display()))?;
        let scheme = self.scheme.scheme(false)?;
        let hist = HistFile::read(&self.hist)?;
        let full = self.dataset()?;
        let feed = datasets::Feed::for_dataset(&full, self.recipe.load()?)?;
        Ok(SensitivityInputs {
            model: self.model.clone(),
            hist,
            dataset: full.limit(self.run.limit.unwrap_or(1000), self.run.seed),
            feed,
            classifier: Classifier::load(self.zero_shot.as_deref())?,
            scheme,
            batch_size: self.run.batch_size,
            threads: self.run.threads,
            device: self.run.device.clone(),
        })
    }
}

/// Runs `int8kit sensitivity`.
pub fn run(args: &SensitivityArgs) -> anyhow::Result<Outcome> {
    let inputs = args.inputs()?;
    let bar = progress_bar("sensitivity", "nodes", args.quiet);
    let report = sensitivity(&inputs, args.choose_methods, &mut reporter(&bar))
        .with_context(|| format!("measuring the sensitivity of {}", args.model.display()))?;
    bar.finish_and_clear();
    report.write(&args.out)?;
    if !args.quiet {
        println!(
            "{} images: FP32 Top-1 {}, INT8 {} ({}), cosine {:.5}, SQNR {:.1} dB; {} nodes in {:.1} s; most sensitive first:",
            report.images,
            percent(report.fp32_top1),
            percent(report.int8.top1),
            points(report.int8.top1_delta_pp),
            report.int8.cosine_mean,
            report.int8.sqnr_db,
            report.nodes.len(),
            report.seconds
        );
        println!(
            "  {:<40} {:<8} {:>6}  {:>33}  {:>33}",
            "node", "op", "FLOPs", "alone INT8: dTop1 / div / SQNR", "alone float: dTop1 / div / SQNR"
        );
        for n in &report.nodes {
            let effect = |e: &evaluate::sensitivity::Effect| {
                format!("{:>9} / {:<9.2e} / {:>5.1} dB", points(e.top1_delta_pp), e.divergence, e.sqnr_db)
            };
            println!(
                "  {:<40} {:<8} {:>5.1}%  {:>33}  {:>33}",
                n.node,
                n.op,
                100.0 * n.flop_share,
                effect(&n.alone_int8),
                effect(&n.alone_float)
            );
        }
        println!("wrote sensitivity.json and sensitivity.csv to {}", args.out.display());
    }
    Ok(Outcome::Success)
}
