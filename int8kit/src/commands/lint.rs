//! `int8kit lint`: a Q/DQ model against TensorRT's explicit-quantization rules.

use std::path::PathBuf;

use anyhow::Context;
use quantizer::placement::lint::{lint, Severity};

use crate::Outcome;

/// `int8kit lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// A Q/DQ ONNX model (int8kit's, ModelOpt's, ONNX Runtime's QDQ output).
    #[arg(value_name = "MODEL.onnx")]
    pub model: PathBuf,
    /// Print the findings as JSON (an array of {severity, rule, node, message, source}).
    #[arg(long)]
    pub json: bool,
    /// Fail (exit 1) on warnings too, not only on what TensorRT would reject.
    #[arg(long)]
    pub strict: bool,
}

/// Runs `int8kit lint`: exit 1 when TensorRT would reject the model (or, with --strict, on any finding).
pub fn run(args: &LintArgs) -> anyhow::Result<Outcome> {
    let mut model = graph::Model::load(&args.model)?;
    // Q/DQ nodes inside model-local functions are checked where they are used.
    model.inline_local_functions()?;
    let findings = lint(&model).with_context(|| format!("linting {}", args.model.display()))?;
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    let warnings = findings.len() - errors;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings).context("writing JSON")?);
    } else {
        for f in &findings {
            let level = if f.severity == Severity::Error { "error" } else { "warning" };
            println!("{level}[{}] {}: {}\n    rule: {}", f.rule, f.node, f.message, f.source);
        }
        let qdq = model.proto.graph.node.iter().filter(|n| n.op_type == "QuantizeLinear").count();
        println!(
            "{}: {errors} error(s), {warnings} warning(s) over {qdq} QuantizeLinear node(s)",
            args.model.display()
        );
    }
    Ok(if errors > 0 || (args.strict && warnings > 0) { Outcome::GateFailed } else { Outcome::Success })
}
