//! `int8kit validate`: the release gate.

use anyhow::Context;
use std::path::PathBuf;

use evaluate::validate::{Phase, ValidateConfig};
use evaluate::{Classifier, Engine};
use reports::Report;

use crate::args::{RecipeArgs, RunArgs, SchemeArgs};
use crate::ui::{percent, progress_bar};
use crate::Outcome;

/// `--engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// ONNX Runtime over model.qdq.onnx, on --device (CPU EP, or CUDA EP).
    #[value(name = "ort", alias = "ort-cpu")]
    Ort,
    /// TensorRT through `trtexec` (untested: no TensorRT where int8kit is developed).
    Tensorrt,
}

impl From<EngineArg> for Engine {
    fn from(e: EngineArg) -> Engine {
        match e {
            EngineArg::Ort => Engine::Ort,
            EngineArg::Tensorrt => Engine::TensorRt,
        }
    }
}

/// `int8kit validate` (and `cargo xtask validate`).
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// FP32 ONNX model.
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Calibration images (flat folder), or `.npz` samples (one array per model input; then --val holds
    /// them too, and no recipe is given).
    #[arg(long, value_name = "DIR", required_unless_present = "hist", conflicts_with = "hist")]
    pub calib: Option<PathBuf>,
    /// Statistics made already, instead of --calib: a `calibrate` .hist (or shards joined by `int8kit merge`)
    /// of this model, with the same recipe.
    #[arg(long, value_name = "H.hist")]
    pub hist: Option<PathBuf>,
    /// With --hist: samples to measure on.
    #[command(flatten)]
    pub check: crate::args::CheckArgs,
    /// Validation images: one sub-folder per class, or (for --min-cosine/--min-sqnr/--min-agreement only) an
    /// unlabelled folder with images at its top level.
    #[arg(long, value_name = "DIR")]
    pub val: PathBuf,
    /// Preprocessing.
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Scale method, precision lists and placement.
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// How INT8 weights are rounded (as `quantize` rounds them, from the --calib samples).
    #[command(flatten)]
    pub rounding: crate::args::RoundingArgs,
    /// How samples run through the models (--limit: of the calibration images).
    #[command(flatten)]
    pub run: RunArgs,
    /// Classify embeddings by cosine against these class prototypes (float32 [classes, dim] .npy).
    #[arg(long, value_name = "PROTOS.npy")]
    pub zero_shot: Option<PathBuf>,
    /// Gate: INT8 Top-1 may be at most this many percentage points below FP32.
    #[arg(long, value_name = "PP", allow_hyphen_values = true)]
    pub max_top1_drop: Option<f64>,
    /// Gates on output fidelity against FP32 (for embedders: no labels needed for what they measure).
    #[command(flatten)]
    pub fidelity: crate::args::FidelityArgs,
    /// Gate: INT8 Top-1 must not fall below this earlier report's INT8 Top-1 by more than --max-top1-drop.
    #[arg(long, value_name = "report.json")]
    pub baseline: Option<PathBuf>,
    /// Allow a --baseline report of another model (the evaluation set must still be the same); the report
    /// records it.
    #[arg(long, requires = "baseline")]
    pub baseline_across_models: bool,
    /// What runs the INT8 model.
    #[arg(long, value_enum, default_value_t = EngineArg::Ort)]
    pub engine: EngineArg,
    /// Class list for ImageNet-style folders (one folder name per line).
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// Use a seeded subset of N validation images.
    #[arg(long, value_name = "N")]
    pub limit_val: Option<usize>,
    /// Output folder for the artifacts and reports.
    #[arg(long, value_name = "OUTDIR")]
    pub out: PathBuf,
    /// Evaluate only the I-th of N contiguous parts of the validation list (after --limit-val) and write
    /// --partial-out instead of the reports; `int8kit merge` joins the N parts into the one-process report.
    #[arg(long, value_name = "I/N", value_parser = crate::args::parse_shard, requires = "partial_out")]
    pub shard: Option<(usize, usize)>,
    /// With --shard: where this part is written (outside --out).
    #[arg(long, value_name = "P.json", requires = "shard")]
    pub partial_out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

impl ValidateArgs {
    /// How both folders' samples are fed; they must hold the same kind (images, or `.npz` samples).
    fn feed(&self) -> anyhow::Result<datasets::Feed> {
        let Some(calib) = &self.calib else {
            return self.recipe.feed(&self.val).with_context(|| format!("--val {}", self.val.display()));
        };
        let feed = self.recipe.feed(calib).with_context(|| format!("--calib {}", calib.display()))?;
        let val_tensors = datasets::Dataset::holds_tensors_below(&self.val)?;
        if val_tensors != (feed == datasets::Feed::Tensors) {
            let kind = |tensors: bool| if tensors { ".npz tensor samples" } else { "images" };
            anyhow::bail!(
                "--calib {} holds {} but --val {} holds {}: both folders must hold the same kind of samples",
                calib.display(),
                feed.samples(),
                self.val.display(),
                kind(val_tensors)
            );
        }
        Ok(feed)
    }

    /// The library's configuration: every input read and checked.
    pub fn config(&self) -> anyhow::Result<ValidateConfig> {
        self.config_with(self.feed()?)
    }

    /// How samples streamed in place of `--val` (the Python API's iterables) are fed: with a recipe, each batch
    /// is the float32 array it makes; without, arrays by input name. A calibration folder must hold the same
    /// kind.
    pub fn streamed_feed(&self) -> anyhow::Result<datasets::Feed> {
        let feed = match self.recipe.load()? {
            Some(recipe) if recipe.is_multi_size() => anyhow::bail!(
                "validation samples from an iterable are of one size: give a recipe of one size (the iterable's)"
            ),
            Some(recipe) => datasets::Feed::Images(recipe),
            None => datasets::Feed::Tensors,
        };
        if let Some(calib) = &self.calib {
            let tensors = datasets::Dataset::holds_tensors_below(calib)?;
            if tensors != (feed == datasets::Feed::Tensors) {
                anyhow::bail!(
                    "--calib {} holds {}, but the validation samples from the iterable are {}: give both the same \
                     way (a recipe for images, none for arrays by input name)",
                    calib.display(),
                    if tensors { ".npz samples" } else { "images" },
                    feed.samples()
                );
            }
        }
        Ok(feed)
    }

    /// The configuration for samples streamed in place of `--val` ([`ValidateArgs::streamed_feed`]).
    pub fn config_streamed(&self) -> anyhow::Result<ValidateConfig> {
        self.config_with(self.streamed_feed()?)
    }

    fn config_with(&self, feed: datasets::Feed) -> anyhow::Result<ValidateConfig> {
        Ok(ValidateConfig {
            model: self.model.clone(),
            calib: match (&self.calib, &self.hist) {
                (Some(_), _) if self.check.check.is_some() => {
                    anyhow::bail!("--check is for statistics given with --hist; --calib holds its samples back itself")
                }
                (Some(folder), _) => evaluate::validate::Calibration::Folder(folder.clone()),
                (None, Some(hist)) => {
                    if self.run.smooth.is_some() {
                        anyhow::bail!(
                            "--smooth applies when validate calibrates (--calib); {} records the smoothing its \
                             statistics were made with (calibrate with --smooth instead)",
                            hist.display()
                        )
                    }
                    if self.run.equalize.is_some() {
                        anyhow::bail!(
                            "--equalize applies when validate calibrates (--calib); {} records the equalization its \
                             statistics were made with (calibrate with --equalize instead)",
                            hist.display()
                        )
                    }
                    if self.rounding.weight_rounding == quantizer::rounding::WeightRounding::Gptq {
                        anyhow::bail!(
                            "--weight-rounding gptq needs --calib: GPTQ reads the layers' inputs on the samples the \
                             statistics came from, and {} does not hold them (calibrate here with --calib, or give \
                             --weight-rounding nearest)",
                            hist.display()
                        )
                    }
                    evaluate::validate::Calibration::Hist { hist: hist.clone(), check: self.check.check.clone() }
                }
                (None, None) => anyhow::bail!("give --calib DIR (calibrate here) or --hist H.hist"),
            },
            val: self.val.clone(),
            feed,
            scheme: self.scheme.scheme(true)?,
            weight_rounding: self.rounding.weight_rounding,
            collect: self.run.calibrate_options(),
            eval_batch: self.run.batch_size,
            classifier: Classifier::load(self.zero_shot.as_deref())?,
            max_top1_drop: self.max_top1_drop,
            fidelity: self.fidelity.gates(),
            baseline: self.baseline.clone(),
            baseline_across_models: self.baseline_across_models,
            sensitivity: self.scheme.sensitivity.clone(),
            engine: self.engine.into(),
            classes: self.classes.clone(),
            limit_val: self.limit_val,
            shard: self
                .shard
                .zip(self.partial_out.clone())
                .map(|((index, count), partial_out)| evaluate::validate::ShardRequest { index, count, partial_out }),
            out: self.out.clone(),
        })
    }
}

/// Runs the gate with progress bars; returns the report (written to `--out`).
pub fn validate(args: &ValidateArgs) -> anyhow::Result<Report> {
    gate(args, None)
}

/// [`validate`] on samples streamed in place of `--val`, or on the `--val` folder.
fn gate(args: &ValidateArgs, streamed: Option<evaluate::validate::GivenVal<'_>>) -> anyhow::Result<Report> {
    if args.run.device.is_cuda() {
        runtime::cuda_device_check(args.run.device.first())?;
        runtime::init()?;
    }
    let config = if streamed.is_some() { args.config_streamed()? } else { args.config()? };
    let calibrating = progress_bar("calibrate", "images", args.quiet);
    let searching = progress_bar("auto", "models", args.quiet);
    let comparing = progress_bar("FP32 vs INT8", "images", args.quiet);
    let mut progress = |phase, done, total| {
        let bar = match phase {
            Phase::Calibrate => &calibrating,
            Phase::Search => {
                calibrating.finish_and_clear();
                &searching
            }
            Phase::Compare => {
                calibrating.finish_and_clear();
                searching.finish_and_clear();
                &comparing
            }
        };
        bar.set_length(total);
        bar.set_position(done);
    };
    let report = match streamed {
        Some(val) => evaluate::validate::validate_given(&config, val, &mut progress)?,
        None => evaluate::validate(&config, &mut progress)?,
    };
    comparing.finish_and_clear();
    Ok(report)
}

/// Prints the outcome: the numbers, each criterion, and which failed.
pub fn print_outcome(report: &Report, out: &std::path::Path) {
    let c = &report.comparison;
    let reference = report.reference_label();
    println!(
        "{}: {reference} Top-1 {} / Top-5 {}, INT8 Top-1 {} / Top-5 {} on {} images; agreement {:.2} %, cosine {:.5}, SQNR {:.1} dB; images/s {reference} {:.0}, INT8 {:.0}",
        report.model,
        percent(c.fp32.top1),
        percent(c.fp32.top5),
        percent(c.int8.top1),
        percent(c.int8.top5),
        c.images,
        100.0 * c.agreement,
        c.cosine_mean,
        c.sqnr_db,
        c.fp32.images_per_s,
        c.int8.images_per_s
    );
    println!(
        "  INT8 model: Q/DQ for {}, float parts in {}, method {} (chosen by {}; ranges.json has the search)",
        report.target, report.float_type, report.method, report.chosen_by
    );
    // The self-check and the rows below measure the weights as written: say which rounding they got and why.
    if let (Some(chosen), Some(reason)) =
        (report.weight_rounding["chosen"].as_str(), report.weight_rounding["reason"].as_str())
    {
        println!("  weight rounding: {chosen} ({reason})");
    }
    let check = &report.self_check;
    match check.get("fidelity").filter(|f| !f.is_null()) {
        Some(f) => println!(
            "  self-check on {}{}: SQNR {:.2} dB, cosine {:.4}, agreement {:.1} %",
            check["samples"].as_str().unwrap_or("held-back samples"),
            match (check["output"]["name"].as_str(), check["output"]["of"].as_u64()) {
                (Some(name), Some(of)) => super::analyze::measured_output_words(name, of as usize),
                _ => String::new(),
            },
            f["sqnr_db"].as_f64().unwrap_or(f64::NAN),
            f["cosine_mean"].as_f64().unwrap_or(f64::NAN),
            100.0 * f["agreement"].as_f64().unwrap_or(f64::NAN)
        ),
        None => println!("  self-check skipped: {}", check["samples"].as_str().unwrap_or("not recorded")),
    }
    if let Some(h) = &report.fp16 {
        println!(
            "  FP16 without Q/DQ: Top-1 {} / Top-5 {}; agreement {:.2} %, cosine {:.5}, SQNR {:.1} dB; images/s {:.0}",
            percent(h.metrics.top1),
            percent(h.metrics.top5),
            100.0 * h.agreement,
            h.cosine_mean,
            h.sqnr_db,
            h.metrics.images_per_s
        );
    }
    for row in &report.sizes {
        let [h, w] = row.size;
        let never = if row.calibrated { "" } else { " (a size the statistics never saw)" };
        println!("  at {h}x{w}{never}: {}", group_line(&reference, &row.comparison, row.fp16.as_ref()));
    }
    for row in &report.shapes {
        let samples = row.comparison.images;
        println!(
            "  shape {} ({samples} samples): {}",
            row.label(),
            group_line(&reference, &row.comparison, row.fp16.as_ref())
        );
    }
    if let Some([h, w]) = report.worst_size() {
        println!("  worst size: {h}x{w} (the rows above are over every size's images together)");
    }
    for cr in &report.criteria {
        println!("  {} {}: {}", if cr.passed { "PASS" } else { "FAIL" }, cr.case_name(), cr.message);
    }
    println!("reports in {}", out.display());
    if !report.passed {
        let failed: Vec<String> = report.criteria.iter().filter(|c| !c.passed).map(|c| c.case_name()).collect();
        eprintln!("gate failed: {}", failed.join(", "));
    }
}

/// One size's or one sample shape's rows, in the summary's words.
fn group_line(reference: &str, c: &reports::Comparison, fp16: Option<&reports::FloatRow>) -> String {
    format!(
        "{reference} Top-1 {}, INT8 Top-1 {}; agreement {:.2} %, cosine {:.5}, SQNR {:.1} dB{}",
        percent(c.fp32.top1),
        percent(c.int8.top1),
        100.0 * c.agreement,
        c.cosine_mean,
        c.sqnr_db,
        fp16.map_or(String::new(), |f| format!("; FP16 cosine {:.5}", f.cosine_mean))
    )
}

/// Runs `int8kit validate`: exit 0 when every criterion holds, 1 when one fails.
pub fn run(args: &ValidateArgs) -> anyhow::Result<Outcome> {
    run_on(args, None)
}

/// [`run`] with the evaluation samples streamed in place of the `--val` folder (which then only names them).
pub fn run_streamed(args: &ValidateArgs, val: evaluate::validate::GivenVal<'_>) -> anyhow::Result<Outcome> {
    run_on(args, Some(val))
}

fn run_on(args: &ValidateArgs, streamed: Option<evaluate::validate::GivenVal<'_>>) -> anyhow::Result<Outcome> {
    let report = gate(args, streamed)?;
    if let (Some((i, n)), Some(part)) = (args.shard, &args.partial_out) {
        // A part has no verdict: the gate holds for the whole list, after `int8kit merge`.
        eprintln!(
            "shard {i}/{n}: {} images evaluated; wrote {} (artifacts in {}); join all {n} parts with `int8kit merge \
             P1.json ... --out DIR` for the report and the verdict",
            report.comparison.images,
            part.display(),
            args.out.display()
        );
        return Ok(Outcome::Success);
    }
    print_outcome(&report, &args.out);
    Ok(if report.passed { Outcome::Success } else { Outcome::GateFailed })
}
