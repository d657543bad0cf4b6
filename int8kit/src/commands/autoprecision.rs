//! `int8kit autoprecision`: the smallest deny list meeting a Top-1 budget.

use anyhow::Context;
use evaluate::autoprecision::AutoPrecisionConfig;

use crate::commands::sensitivity::SensitivityArgs;
use crate::ui::{progress_bar, reporter};
use crate::Outcome;

/// `int8kit autoprecision`.
#[derive(Debug, clap::Args)]
pub struct AutoprecisionArgs {
    /// The measurement's inputs, as `sensitivity` takes them.
    #[command(flatten)]
    pub common: SensitivityArgs,
    /// Allowed Top-1 drop against FP32, percentage points.
    #[arg(long, value_name = "PP", allow_hyphen_values = true)]
    pub max_top1_drop: f64,
    /// TensorRT version written in the calibration cache header.
    #[arg(long, default_value = analyze::DEFAULT_TRT_VERSION)]
    pub trt_version: String,
}

/// Runs `int8kit autoprecision`; the budget missed is a failed gate (exit 1).
pub fn run(args: &AutoprecisionArgs) -> anyhow::Result<Outcome> {
    let common = &args.common;
    common.check_outputs()?;
    let inputs = common.inputs()?;
    let config = AutoPrecisionConfig {
        verify_on: datasets::Dataset::labelled(&common.val, common.classes.as_deref())?,
        inputs,
        max_top1_drop: args.max_top1_drop,
        trt_version: args.trt_version.clone(),
        out: common.out.clone(),
    };
    let bar = progress_bar("sensitivity", "nodes", common.quiet);
    let outcome = evaluate::autoprecision::run(&config, &mut reporter(&bar))
        .with_context(|| format!("searching a precision list for {}", common.model.display()))?;
    bar.finish_and_clear();
    let search = &outcome.search;
    let Some(v) = &outcome.verification else {
        eprintln!(
            "budget not met: even with {} of {} nodes in float, INT8 Top-1 is {:+.2} pp from FP32 on {} images (budget {} pp)",
            search.denied.len(),
            search.sensitivity.nodes.len(),
            search.search.top1_delta_pp,
            config.inputs.dataset.len(),
            args.max_top1_drop
        );
        return Ok(Outcome::GateFailed);
    };
    let met = outcome.met(args.max_top1_drop);
    println!(
        "deny list: {} node(s) {:?}; INT8 share of GEMM/Conv FLOPs {:.1} %",
        search.denied.len(),
        search.denied,
        100.0 * v.int8_flop_share
    );
    println!(
        "search ({} images): {:+.2} pp; verification ({} images): FP32 {:.2} %, INT8 {:.2} %, drop {:.2} pp -> {}",
        config.inputs.dataset.len(),
        search.search.top1_delta_pp,
        v.images,
        100.0 * v.fp32_top1,
        100.0 * v.int8_top1,
        v.drop_pp(),
        if met { "within budget" } else { "OVER budget (raise --limit so the search sees more images)" }
    );
    println!(
        "wrote precision.toml, model.qdq.onnx, ranges.*, autoprecision.json (and calibration.cache from a --tensors all .hist) to {}",
        common.out.display()
    );
    Ok(if met { Outcome::Success } else { Outcome::GateFailed })
}
