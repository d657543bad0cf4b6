//! `cargo xtask wheel`: the pip-installable int8kit, checked as a user gets it. The wheel is built with a
//! pinned maturin in its own venv, installed into a fresh venv with its `onnxruntime` dependency, and run
//! from a temporary folder outside the checkout with no ORT_DYLIB_PATH and an empty data directory, so that
//! only the venv's onnxruntime package can serve as the ONNX Runtime library.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::{root, run_ok};

/// The maturin release the wheel is built with.
const MATURIN: &str = "maturin==1.16.0";

fn venv(dir: &Path) -> anyhow::Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    run_ok(Command::new("python3").args(["-m", "venv"]).arg(dir), "python3 -m venv")?;
    Ok(dir.join("bin"))
}

fn pip(bin: &Path) -> Command {
    let mut cmd = Command::new(bin.join("python"));
    cmd.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]);
    cmd
}

/// Builds the wheel into `target/wheel/dist` and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    let work = root().join("target/wheel");
    let tools = venv(&work.join("build-venv"))?;
    run_ok(pip(&tools).arg(MATURIN), "pip install maturin")?;
    let dist = work.join("dist");
    let _ = std::fs::remove_dir_all(&dist);
    run_ok(
        Command::new(tools.join("maturin"))
            .args(["build", "--release", "--locked", "--quiet", "-m"])
            .arg(root().join("python/Cargo.toml"))
            .arg("-o")
            .arg(&dist)
            .current_dir(root()),
        "maturin build",
    )?;
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(&dist)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    match (wheels.pop(), wheels.is_empty()) {
        (Some(w), true) => Ok(w),
        _ => bail!("expected one wheel in {}", dist.display()),
    }
}

/// Builds, installs and runs the wheel, then runs the Python API's tests on it; their tally.
pub fn run() -> anyhow::Result<crate::Tally> {
    let wheel = build()?;
    eprintln!("built {}", wheel.display());
    let bin = venv(&root().join("target/wheel/venv"))?;
    run_ok(pip(&bin).arg(&wheel), "pip install the wheel")?;
    let requires = Command::new(bin.join("python"))
        .args(["-c", "import importlib.metadata as m; print(m.requires('int8kit'))"])
        .output()?;
    let requires = String::from_utf8_lossy(&requires.stdout);
    let pin = format!("onnxruntime=={}", runtime::ORT_VERSION);
    if !requires.contains(&pin) {
        bail!("the wheel's metadata does not require {pin}: {requires}");
    }
    let outside = tempfile::tempdir().context("a folder outside the checkout")?;
    let data = outside.path().join("empty-data-dir");
    let int8kit = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let r = root();
        let o = Command::new(bin.join("int8kit"))
            .current_dir(outside.path())
            .env_remove("ORT_DYLIB_PATH")
            .env("XDG_DATA_HOME", &data)
            .args(args.iter().map(|a| a.replace("{root}", &r.display().to_string())))
            .output()
            .context("starting the installed int8kit")?;
        eprintln!(
            "$ int8kit {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(o)
    };
    let fixture =
        ["--model", "{root}/fixtures/models/fmnist_resnet_opset13.onnx", "--recipe", "{root}/fixtures/fmnist.toml"];
    let q = int8kit(
        &[
            &["quantize", "--images", "{root}/fixtures/fmnist/calib", "--limit", "200", "--quiet", "--out", "q"],
            &fixture[..],
        ]
        .concat(),
    )?;
    if !q.status.success() || !outside.path().join("q/model.qdq.onnx").is_file() {
        bail!("int8kit quantize from the wheel failed ({})", q.status);
    }
    let v = int8kit(
        &[
            &["validate", "--calib", "{root}/fixtures/fmnist/calib", "--val", "{root}/fixtures/fmnist/val"][..],
            &["--limit", "200", "--limit-val", "500", "--max-top1-drop", "1.0", "--quiet", "--out", "v"],
            &fixture[..],
        ]
        .concat(),
    )?;
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(outside.path().join("v/report.json")).context("validate's report.json")?,
    )?;
    if v.status.code() != Some(0) || report["passed"] != true {
        bail!("int8kit validate from the wheel did not pass ({})", v.status);
    }
    println!(
        "wheel {}: installs with its onnxruntime, quantize and validate pass outside the checkout",
        wheel.display()
    );
    pytest(&bin, outside.path())
}

/// The pinned pytest the Python API's tests run with.
const PYTEST: &str = "pytest==8.4.2";

/// Runs python/tests with pytest in the wheel's venv, from a folder outside the checkout (so that `import
/// int8kit` is the installed wheel's), with the fixtures at INT8KIT_FIXTURES.
fn pytest(bin: &Path, outside: &Path) -> anyhow::Result<crate::Tally> {
    run_ok(pip(bin).arg(PYTEST), "pip install pytest")?;
    let out = Command::new(bin.join("python"))
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"])
        .arg(root().join("python/tests"))
        .current_dir(outside)
        .env_remove("ORT_DYLIB_PATH")
        .env("INT8KIT_FIXTURES", root().join("fixtures"))
        .output()
        .context("starting pytest")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = text.lines().rev().find(|l| l.contains(" passed") || l.contains(" failed")).unwrap_or("");
    // "3 passed, 1 failed, 2 errors in 9.1s": each count is the number before its word.
    let words: Vec<&str> = summary.split_whitespace().map(|w| w.trim_matches(|c: char| c == ',' || c == '=')).collect();
    let count = |word: &str| -> u64 {
        words.windows(2).filter(|w| w[1].starts_with(word)).filter_map(|w| w[0].parse::<u64>().ok()).sum()
    };
    let (passed, failed) = (count("passed"), count("failed") + count("error"));
    let error = match out.status.code() {
        Some(0) => None,
        _ if failed > 0 => None,
        _ => Some(format!("pytest failed ({}) with no test failure counted", out.status)),
    };
    Ok(crate::Tally { passed, failed, error })
}
