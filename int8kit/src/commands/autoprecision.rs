//! `int8kit autoprecision`: the smallest deny list meeting a Top-1 or fidelity budget.

use anyhow::Context;
use evaluate::autoprecision::AutoPrecisionConfig;
use evaluate::sensitivity::Budget;

use crate::args::FidelityArgs;
use crate::commands::sensitivity::SensitivityArgs;
use crate::ui::{percent, points, progress_bar, reporter};
use crate::Outcome;

/// `int8kit autoprecision`.
#[derive(Debug, clap::Args)]
pub struct AutoprecisionArgs {
    /// The measurement's inputs, as `sensitivity` takes them.
    #[command(flatten)]
    pub common: SensitivityArgs,
    /// Budget: allowed Top-1 drop against FP32, percentage points (needs a labelled --val).
    #[arg(long, value_name = "PP", allow_hyphen_values = true)]
    pub max_top1_drop: Option<f64>,
    /// Budget: output fidelity against FP32 (no labels needed).
    #[command(flatten)]
    pub fidelity: FidelityArgs,
}

impl AutoprecisionArgs {
    /// Every budget flag given.
    pub fn budget(&self) -> Budget {
        Budget { max_top1_drop: self.max_top1_drop, fidelity: self.fidelity.gates() }
    }
}

/// The measures a budget looks at, for one result.
fn measured(e: &evaluate::sensitivity::Effect) -> String {
    format!(
        "Top-1 {}, cosine {:.5}, SQNR {:.1} dB, agreement {:.2} %",
        points(e.top1_delta_pp),
        e.cosine_mean,
        e.sqnr_db,
        100.0 * e.agreement
    )
}

/// Runs `int8kit autoprecision`; the budget missed is a failed gate (exit 1).
pub fn run(args: &AutoprecisionArgs) -> anyhow::Result<Outcome> {
    let common = &args.common;
    let budget = args.budget();
    let verify_on = common.dataset()?;
    // Before any work: an empty budget, a limit out of range or a Top-1 budget without labels.
    budget.check(&verify_on)?;
    let inputs = common.inputs()?;
    let config = AutoPrecisionConfig { verify_on, inputs, budget, out: common.out.clone() };
    let bar = progress_bar("sensitivity", "nodes", common.quiet);
    let outcome = evaluate::autoprecision::run(&config, &mut reporter(&bar))
        .with_context(|| format!("searching a precision list for {}", common.model.display()))?;
    bar.finish_and_clear();
    let search = &outcome.search;
    let Some(v) = &outcome.verification else {
        eprintln!(
            "budget not met: even with {} of {} nodes in float, INT8 against FP32 on {} images: {} (budget {})",
            search.denied.len(),
            search.sensitivity.nodes.len(),
            config.inputs.dataset.len(),
            measured(&search.search),
            budget.describe()
        );
        return Ok(Outcome::GateFailed);
    };
    let met = outcome.met(&budget);
    println!(
        "deny list: {} node(s) {:?}; INT8 share of GEMM/Conv FLOPs {:.1} %",
        search.denied.len(),
        search.denied,
        100.0 * v.int8_flop_share
    );
    let c = &v.comparison;
    println!(
        "search ({} images): {}; verification ({} images): FP32 Top-1 {}, INT8 {}, cosine {:.5}, SQNR {:.1} dB, agreement {:.2} % -> {} (budget {})",
        config.inputs.dataset.len(),
        measured(&search.search),
        c.images,
        percent(c.fp32.top1),
        percent(c.int8.top1),
        c.cosine_mean,
        c.sqnr_db,
        100.0 * c.agreement,
        if met { "within budget" } else { "OVER budget (raise --limit so the search sees more images)" },
        budget.describe()
    );
    println!(
        "wrote precision.toml, model.qdq.onnx, ranges.*, autoprecision.json (and calibration.cache from a --tensors all .hist) to {}",
        common.out.display()
    );
    Ok(if met { Outcome::Success } else { Outcome::GateFailed })
}
