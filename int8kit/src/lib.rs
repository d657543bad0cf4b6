//! The `int8kit` command line: one binary over the libraries. Argument parsing, progress bars, logging and
//! the mapping of outcomes to exit statuses live here and nowhere else; every subcommand is a thin layer
//! over a library call. The library target exists so that `cargo xtask validate` parses and runs the
//! release gate exactly as `int8kit validate` does.

#![forbid(unsafe_code)]

// The flags' doc comments are their `--help` text, where `[input]` and `cuda[:N]` are meant literally.
#[allow(rustdoc::broken_intra_doc_links)]
pub mod args;
pub mod commands;
pub mod exit;
pub mod files;
pub mod ui;

use clap::{Parser, Subcommand};

pub use exit::{exit_status, Outcome};

/// INT8 post-training quantization of ONNX vision models for TensorRT deployment.
#[derive(Debug, Parser)]
#[command(name = "int8kit", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Calibrate and analyze in one run: the INT8 artifacts (model.qdq.onnx, ranges.*, and with --tensors
    /// all calibration.cache) from the FP32 model and a folder of calibration images.
    Quantize(Box<commands::quantize::QuantizeArgs>),
    /// Stream calibration images through the FP32 model and write per-tensor activation statistics (.hist).
    Calibrate(Box<commands::calibrate::CalibrateArgs>),
    /// Merge the .hist files of every shard of one calibration (`calibrate --shard I/N`) into the .hist one
    /// process over the whole image list writes, byte for byte.
    Merge(commands::merge::MergeArgs),
    /// Compute INT8 scales from a .hist and write model.qdq.onnx, ranges.csv, ranges.json and, from a .hist of
    /// every activation (--tensors all), TensorRT's calibration.cache.
    Analyze(Box<commands::analyze::AnalyzeArgs>),
    /// Per node: quantize it alone, and keep it alone in float; rank by the damage (sensitivity.json/.csv).
    Sensitivity(Box<commands::sensitivity::SensitivityArgs>),
    /// Smallest deny list meeting a budget (Top-1 drop, or output cosine/SQNR/agreement without labels):
    /// greedy on the sensitivity ranking over --limit images, then verified on the whole --val folder. Writes precision.toml and the artifacts built with it.
    /// Exit 1 when the budget cannot be met.
    Autoprecision(Box<commands::autoprecision::AutoprecisionArgs>),
    /// Release gate: calibrate, analyze, evaluate FP32 and INT8 on a labelled folder (or an unlabelled one for
    /// fidelity gates only), write the reports.
    /// Exit 0: every criterion holds; 1: a gate failed; 2: bad input or a run error.
    Validate(Box<commands::validate::ValidateArgs>),
    /// Check a Q/DQ model against TensorRT's explicit-quantization rules: what TensorRT would reject
    /// (exit 1) and what keeps a layer out of INT8 or unfused (warnings; exit 1 with --strict).
    Lint(commands::lint::LintArgs),
    /// Install the pinned ONNX Runtime into the user's data directory (once) and say which library
    /// int8kit will load.
    Setup(commands::setup::SetupArgs),
}

impl Command {
    /// Whether the subcommand was asked to print nothing but errors.
    pub fn quiet(&self) -> bool {
        match self {
            Command::Quantize(a) => a.quiet,
            Command::Calibrate(a) => a.quiet,
            Command::Analyze(a) => a.quiet,
            Command::Sensitivity(a) => a.quiet,
            Command::Autoprecision(a) => a.common.quiet,
            Command::Validate(a) => a.quiet,
            Command::Setup(_) | Command::Lint(_) | Command::Merge(_) => false,
        }
    }

    /// The device the subcommand runs models on (ONNX Runtime's GPU build is looked up for CUDA).
    fn device(&self) -> runtime::Device {
        match self {
            Command::Quantize(a) => a.source.run.device.first(),
            Command::Calibrate(a) => a.source.run.device.first(),
            Command::Sensitivity(a) => a.run.device.first(),
            Command::Autoprecision(a) => a.common.run.device.first(),
            Command::Validate(a) => a.run.device.first(),
            Command::Analyze(_) | Command::Setup(_) | Command::Lint(_) | Command::Merge(_) => runtime::Device::Cpu,
        }
    }
}

/// Runs a parsed `int8kit validate` line on evaluation samples streamed in place of its `--val` folder (the
/// Python API's iterables; `--val` then only names them).
pub fn run_validate_streamed(cli: Cli, val: evaluate::validate::GivenVal<'_>) -> anyhow::Result<Outcome> {
    ui::init_logging(cli.command.quiet());
    runtime::use_device(cli.command.device());
    files::check(&cli.command)?;
    match cli.command {
        Command::Validate(a) => commands::validate::run_streamed(&a, val),
        _ => anyhow::bail!("internal: streamed samples are for `validate` only"),
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    ui::init_logging(cli.command.quiet());
    // Before anything loads ONNX Runtime: CUDA needs the onnxruntime-gpu library.
    runtime::use_device(cli.command.device());
    // Before any work: no output may be, hold or sit inside an input or another output.
    files::check(&cli.command)?;
    match cli.command {
        Command::Quantize(a) => commands::quantize::run(&a),
        Command::Calibrate(a) => commands::calibrate::run(&a),
        Command::Analyze(a) => commands::analyze::run(&a),
        Command::Sensitivity(a) => commands::sensitivity::run(&a),
        Command::Autoprecision(a) => commands::autoprecision::run(&a),
        Command::Validate(a) => commands::validate::run(&a),
        Command::Setup(a) => commands::setup::run(&a),
        Command::Lint(a) => commands::lint::run(&a),
        Command::Merge(a) => commands::merge::run(&a),
    }
}
