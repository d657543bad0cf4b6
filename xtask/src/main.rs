//! `cargo xtask`: project automation. Run `cargo xtask --help`.

mod bench;
mod check_report;
mod demo;
mod gpu;
mod large;
mod suite;
mod wheel;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use analyze::scales::Method;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "int8kit project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install the pinned ONNX Runtime into .int8kit/ (once) and print where it is.
    Setup,
    /// Run the whole pipeline on the bundled fixtures and print a summary table.
    Demo {
        /// No progress bars.
        #[arg(long, short)]
        quiet: bool,
        /// Evaluate every scale method (entropy, mse, percentile, max), not only entropy.
        #[arg(long)]
        all_methods: bool,
    },
    /// Run every test (installs ONNX Runtime first if needed). Extra arguments go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting, lints, the wheel check and the tests, as CI runs them (CI also checks a report in Chromium).
    Ci,
    /// Benchmarks (speed and memory targets live here, not in tests). Without a subcommand: int8kit against
    /// a plain FP32 pass and ONNX Runtime's quantize_static, written to BENCHMARKS.md and bench.json.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        which: Option<bench::Which>,
        #[command(flatten)]
        suite: suite::SuiteArgs,
    },
    /// `int8kit validate` from the checkout (installs ONNX Runtime first if needed): calibrate, analyze,
    /// evaluate FP32 and INT8 on a labelled folder, and gate a release.
    /// Exit 0: every criterion holds; 1: a gate failed; 2: bad input or a run error.
    Validate(Box<int8kit::commands::validate::ValidateArgs>),
    /// Open a validate report in headless Chromium: it renders and its numbers match report.json.
    CheckReport {
        /// A folder written by `validate`.
        dir: PathBuf,
    },
    /// Run the property tests over the parsers of user files (.hist, recipe and precision TOML, calibration
    /// cache, .npy, ONNX with external data, images) for many more cases than CI does.
    Fuzz {
        /// Cases per parser (CI runs 48).
        #[arg(long, default_value_t = 20_000)]
        cases: u64,
    },
    /// Build the int8kit wheel with maturin, install it into a fresh venv (with its onnxruntime dependency)
    /// and run `int8kit quantize` and `int8kit validate` from outside the checkout. CI runs it.
    Wheel,
    /// Internal: one measured workload, run as a child process by `bench` so that its peak RSS is its own.
    #[command(hide = true)]
    BenchChild(bench::ChildArgs),
    /// Pack what the lent GPU machine needs (xtask, onnxruntime-gpu, the ViT-S/14, photos) into chunks that
    /// fit device calls, and print the calls to make (.int8kit/carry/plan.txt).
    GpuPack(gpu::PackArgs),
    /// On a GPU machine: device tests (GPU statistics equal the CPU's), kernel throughput, calibration speed
    /// against a plain CUDA EP pass, and validate on both devices. Writes gpu-check.json/.md.
    GpuCheck(gpu::CheckArgs),
    /// Internal: one measured GPU pass, run as a child process by `gpu-check`.
    #[command(hide = true)]
    GpuChild(gpu::ChildArgs),
}

fn main() -> ExitCode {
    int8kit::exit_status(run(Cli::parse()))
}

/// Runs a command; `validate` may end in a failed gate, everything else succeeds or fails with an error.
fn run(cli: Cli) -> anyhow::Result<int8kit::Outcome> {
    match cli.command {
        Cmd::Validate(args) => {
            if !args.run.device.is_cuda() {
                setup()?;
            }
            int8kit::run(int8kit::Cli { command: int8kit::Command::Validate(args) })
        }
        other => run_task(other).map(|()| int8kit::Outcome::Success),
    }
}

fn run_task(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Setup => {
            let lib = setup()?;
            println!("ONNX Runtime {}: {}", runtime::ORT_VERSION, lib.display());
            Ok(())
        }
        Cmd::Demo { quiet, all_methods } => {
            setup()?;
            let methods = if all_methods { Method::ALL_DEFAULT.to_vec() } else { vec![Method::Entropy] };
            demo::run(quiet, &methods)
        }
        Cmd::Test { args } => test(&args),
        Cmd::Ci => {
            cargo(&["fmt", "--all", "--", "--check"]).context("cargo fmt --check (run `cargo fmt --all`)")?;
            cargo(&["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"])?;
            wheel::run()?;
            test(&[])
        }
        Cmd::Bench { which, suite } => {
            setup()?;
            match which {
                Some(bench::Which::Large) => large::run(),
                Some(which) => bench::run(which),
                None => suite::run(&suite),
            }
        }
        Cmd::BenchChild(args) => bench::child(args),
        Cmd::Wheel => wheel::run(),
        Cmd::Fuzz { cases } => {
            std::env::set_var("PROPTEST_CASES", cases.to_string());
            cargo_test(&["-p".into(), "int8kit".into(), "--test".into(), "it".into(), "fuzz::".into()])
        }
        Cmd::GpuPack(args) => gpu::pack(&args),
        Cmd::GpuCheck(args) => gpu::check(&args),
        Cmd::GpuChild(args) => gpu::child(&args),
        Cmd::Validate(args) => {
            bail!("internal: validate ({}) is dispatched by run()", args.out.display())
        }
        Cmd::CheckReport { dir } => check_report::run(&dir),
    }
}

/// The workspace root (xtask lives one level below it). A binary carried to another machine finds it
/// through INT8KIT_ROOT, else the current directory.
pub fn root() -> PathBuf {
    if let Some(r) = std::env::var_os("INT8KIT_ROOT") {
        return PathBuf::from(r);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    built.filter(|p| p.join("Cargo.toml").is_file()).unwrap_or_else(|| PathBuf::from("."))
}

/// Makes sure ONNX Runtime can be loaded from the checkout: ORT_DYLIB_PATH if set, else the pinned release in
/// `.int8kit/onnxruntime-<version>/` (installed now if missing). Sets ORT_DYLIB_PATH for this process and
/// its children (tests, benchmarks), so that nothing else on the machine is picked up.
pub fn setup() -> anyhow::Result<PathBuf> {
    if let Some(lib) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(runtime::locate(runtime::Flavor::Cpu).map(|_| PathBuf::from(lib))?);
    }
    let dir = project_ort_dir();
    let lib = runtime::install(&dir, runtime::Flavor::Cpu)?;
    std::env::set_var("ORT_DYLIB_PATH", &lib);
    Ok(lib)
}

/// Where the checkout keeps its pinned ONNX Runtime.
pub fn project_ort_dir() -> PathBuf {
    root().join(".int8kit").join(runtime::Flavor::Cpu.folder_name())
}

/// Runs `cargo test` over the workspace, echoing its output, and closes with one line that totals every test
/// binary's `test result:` line, so that a reader (or CI) sees the whole count at the end.
fn test(extra: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["--workspace".to_string()];
    args.extend_from_slice(extra);
    cargo_test(&args)
}

/// `cargo test --release ARGS` with ONNX Runtime set up, and the total of its results as the last line.
fn cargo_test(args: &[String]) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    setup()?;
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo_bin)
        .args(["test", "--release"])
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_suffix(word).map(str::trim))
                        .and_then(|n| n.trim_start_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().ok())
                        .unwrap_or(0)
                };
                passed += count("passed");
                failed += count("failed");
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("`cargo test` failed ({status})");
    }
    Ok(())
}

/// Runs a command to completion; an error names `what` and its exit status.
pub fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).args(args).current_dir(root()).status().context("starting cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
