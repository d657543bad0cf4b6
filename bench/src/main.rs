//! `bench`: int8kit's benchmarks and GPU checks, the part of the project automation that runs the product.
//! `cargo xtask bench|demo|gpu-pack|gpu-check` runs this binary, so that `xtask` itself builds nothing of
//! the product (`cargo xtask ci` checks formatting first). On a GPU machine without Rust the stripped binary
//! runs on its own (`xtask/gpu-run.sh`).

mod archs;
mod demo;
mod gpu;
mod large;
mod measure;
mod suite;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use analyze::scales::Method;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "int8kit benchmarks and GPU checks (through `cargo xtask`)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the whole pipeline on the bundled fixtures and print a summary table.
    Demo {
        /// No progress bars.
        #[arg(long, short)]
        quiet: bool,
        /// Also evaluate every scale method fixed (entropy, mse, percentile, max), beside the defaults (auto).
        #[arg(long)]
        all_methods: bool,
    },
    /// Benchmarks (speed and memory targets live here, not in tests). Without a subcommand: int8kit against
    /// a plain FP32 pass and ONNX Runtime's quantize_static, written to BENCHMARKS.md and bench.json.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        which: Option<measure::Which>,
        #[command(flatten)]
        suite: suite::SuiteArgs,
    },
    /// Internal: one measured workload, run as a child process by `bench` so that its peak RSS is its own.
    #[command(hide = true)]
    BenchChild(measure::ChildArgs),
    /// Pack what the lent GPU machine needs (this binary, the crates' device tests, onnxruntime-gpu, the
    /// ViT-S/14, photos) into chunks that fit device calls, and print the calls to make
    /// (.int8kit/carry/plan.txt).
    GpuPack(gpu::PackArgs),
    /// On a GPU machine: the measurements (kernel throughput, calibration speed against a plain CUDA EP pass,
    /// CPU-vs-GPU statistics, validate and sensitivity on both devices). Writes gpu-check.json/.md. The
    /// invariants are the crates' device tests (`xtask/gpu-run.sh tests`).
    GpuCheck(gpu::CheckArgs),
    /// Internal: one measured GPU pass, run as a child process by `gpu-check`.
    #[command(hide = true)]
    GpuChild(gpu::ChildArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Demo { quiet, all_methods } => {
            let mut methods = vec![None];
            if all_methods {
                methods.extend(Method::ALL_DEFAULT.map(Some));
            }
            demo::run(quiet, &methods)
        }
        Cmd::Bench { which, suite } => match which {
            Some(measure::Which::Large) => large::run(),
            Some(measure::Which::Archs) => archs::run(),
            Some(measure::Which::Zoo(args)) => suite::zoo(&args),
            Some(which) => measure::run(which),
            None => suite::run(&suite),
        },
        Cmd::BenchChild(args) => measure::child(args),
        Cmd::GpuPack(args) => gpu::pack(&args),
        Cmd::GpuCheck(args) => gpu::check(&args),
        Cmd::GpuChild(args) => gpu::child(&args),
    }
}

/// The workspace root (this crate lives one level below it). A binary carried to another machine finds it
/// through INT8KIT_ROOT, else the current directory.
pub fn root() -> PathBuf {
    if let Some(r) = std::env::var_os("INT8KIT_ROOT") {
        return PathBuf::from(r);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    built.filter(|p| p.join("Cargo.toml").is_file()).unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command to completion; an error names `what` and its exit status.
pub fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
