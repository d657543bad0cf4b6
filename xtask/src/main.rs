//! `cargo xtask`: project automation. Run `cargo xtask --help`. It depends on no crate of the product, so that
//! `cargo xtask ci` checks formatting before building anything: the release gate runs the `int8kit` binary,
//! and the benchmarks, the demo and the GPU steps run the `bench` binary (`cargo run -p bench`).

mod check_report;
mod wheel;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

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
    /// Run the whole pipeline on the bundled fixtures and print a summary table (`bench demo`; `--help` for
    /// its flags).
    #[command(disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test (installs ONNX Runtime first if needed). Extra arguments go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting, lints, the wheel check and the tests, as CI runs them (CI also checks a report in Chromium).
    Ci,
    /// Benchmarks (speed and memory targets live here, not in tests): `bench bench`, `--help` for its flags.
    /// Without a subcommand: int8kit against a plain FP32 pass and the peers, written to BENCHMARKS.md and
    /// bench.json.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// `int8kit validate` from the checkout (installs ONNX Runtime first if needed): the same command, flags,
    /// outcome and exit status (0: every criterion holds; 1: a gate failed; 2: bad input or a run error).
    #[command(disable_help_flag = true)]
    Validate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
    /// Build the int8kit wheel with maturin, install it into a fresh venv (with its onnxruntime dependency),
    /// run `int8kit quantize` and `int8kit validate` from outside the checkout, and the Python API's tests
    /// (pytest, python/tests). `cargo xtask test` runs it.
    Wheel,
    /// Pack what the lent GPU machine needs into chunks that fit device calls (`bench gpu-pack`).
    #[command(disable_help_flag = true)]
    GpuPack {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// On a GPU machine with a Rust toolchain: the measurements (`bench gpu-check`).
    #[command(disable_help_flag = true)]
    GpuCheck {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a task; a delegated command's exit status is passed on (validate's 1 is a failed gate).
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Setup => {
            let lib = setup()?;
            println!("ONNX Runtime {}: {}", runtime::ORT_VERSION, lib.display());
        }
        Cmd::Demo { args } => return delegate("bench", "demo", &args, true),
        Cmd::Test { args } => test(&args)?,
        Cmd::Ci => {
            cargo(&["fmt", "--all", "--", "--check"]).context("cargo fmt --check (run `cargo fmt --all`)")?;
            cargo(&["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"])?;
            test(&[])?;
        }
        Cmd::Bench { args } => return delegate("bench", "bench", &args, true),
        // The GPU build of ONNX Runtime is found by int8kit itself.
        Cmd::Validate { args } => {
            return delegate("int8kit", "validate", &args, !on_cuda(&args));
        }
        Cmd::CheckReport { dir } => check_report::run(&dir)?,
        Cmd::Fuzz { cases } => {
            std::env::set_var("PROPTEST_CASES", cases.to_string());
            cargo_test(&["-p".into(), "int8kit".into(), "--test".into(), "it".into(), "fuzz::".into()])?;
        }
        Cmd::Wheel => wheel::run()?.check()?,
        Cmd::GpuPack { args } => return delegate("bench", "gpu-pack", &args, false),
        Cmd::GpuCheck { args } => return delegate("bench", "gpu-check", &args, false),
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `--device` (as `--device D` or `--device=D`) names a CUDA device.
fn on_cuda(args: &[String]) -> bool {
    let value = args.iter().zip(args.iter().skip(1)).find(|(flag, _)| *flag == "--device").map(|(_, v)| v.as_str());
    let value = value.or_else(|| args.iter().find_map(|a| a.strip_prefix("--device=")));
    value.is_some_and(|d| d.starts_with("cuda"))
}

/// `cargo run --release -p PACKAGE -- SUBCOMMAND ARGS` from the checkout (ONNX Runtime set up first when
/// `needs_ort`), with its exit status.
fn delegate(package: &str, subcommand: &str, args: &[String], needs_ort: bool) -> anyhow::Result<ExitCode> {
    if needs_ort {
        setup()?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "--release", "--quiet", "-p", package, "--", subcommand])
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {package} {subcommand}"))?;
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(2)),
        None => bail!("{package} {subcommand} was stopped by a signal ({status})"),
    })
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
    // The end-to-end tests on real models (int8kit/tests/it/zoo.rs) read what this fetches (hash-checked) and
    // writes: the zoo's CI models and crops of real photos (`delegate` sets up ONNX Runtime first).
    let zoo = ["zoo", "--prepare", "--ci", "--calib", "160", "--eval", "48"].map(String::from);
    if delegate("bench", "bench", &zoo, true)? != ExitCode::SUCCESS {
        bail!("preparing the zoo's test models (`cargo xtask bench zoo --prepare --ci`) failed");
    }
    let mut args = vec!["--workspace".to_string()];
    args.extend_from_slice(extra);
    let cargo = cargo_tests(&args)?;
    // The Python API's tests run on the built wheel, installed into a fresh venv (python/tests).
    let python = wheel::run()?;
    println!(
        "tests: {} passed, {} failed (cargo test {} passed, pytest {} passed)",
        cargo.passed + python.passed,
        cargo.failed + python.failed,
        cargo.passed,
        python.passed
    );
    cargo.check()?;
    python.check()
}

/// Passed and failed tests of one runner.
pub struct Tally {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// The runner's own failure (a build error, a crash), if any.
    pub error: Option<String>,
}

impl Tally {
    fn check(&self) -> anyhow::Result<()> {
        match &self.error {
            Some(e) => bail!("{e}"),
            None if self.failed > 0 => bail!("{} tests failed", self.failed),
            None => Ok(()),
        }
    }
}

/// `cargo test --release ARGS` with ONNX Runtime set up, and the total of its results as the last line.
fn cargo_test(args: &[String]) -> anyhow::Result<()> {
    let tally = cargo_tests(args)?;
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    tally.check()
}

/// `cargo test --release ARGS` with ONNX Runtime set up, echoing its output; the totals of its results.
fn cargo_tests(args: &[String]) -> anyhow::Result<Tally> {
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
    let error = (!status.success()).then(|| format!("`cargo test` failed ({status})"));
    Ok(Tally { passed, failed, error })
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

#[cfg(test)]
mod tests {
    use super::on_cuda;

    #[test]
    fn only_the_device_flag_says_cuda() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(on_cuda(&args(&["--model", "m.onnx", "--device", "cuda:0"])));
        assert!(on_cuda(&args(&["--device=cuda:all"])));
        assert!(!on_cuda(&args(&["--model", "cuda_models/m.onnx", "--device", "cpu"])));
        assert!(!on_cuda(&args(&["--out", "cuda"])));
    }
}
