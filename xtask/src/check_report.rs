//! `cargo xtask check-report DIR`: opens report.html in headless Chromium (Debian's package), checks that it
//! renders (a screenshot is taken and the DOM is read back) and that every number it shows matches
//! report.json.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

fn chromium() -> anyhow::Result<PathBuf> {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).is_file() {
            return Ok(PathBuf::from(c));
        }
    }
    bail!("headless Chromium not found; install Debian's package: apt-get install chromium")
}

fn chromium_cmd(bin: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(bin);
    // No network, no background services: this machine has no route out.
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// The JSON value a `data-key` refers to.
fn lookup(report: &serde_json::Value, key: &str) -> Option<f64> {
    let parts: Vec<&str> = key.split('.').collect();
    if let ["class", i, which] = parts[..] {
        let i: usize = i.parse().ok()?;
        let pc = &report["comparison"][which]["per_class"][i];
        let (k, n) = (pc[0].as_f64()?, pc[1].as_f64()?);
        return Some(if n > 0.0 { k / n } else { 0.0 });
    }
    let mut v = report;
    for p in parts {
        v = match p.parse::<usize>() {
            Ok(i) => v.get(i)?,
            Err(_) => v.get(p)?,
        };
    }
    // report.json writes an infinite SQNR (identical outputs) as null; the page shows "inf".
    if v.is_null() {
        return Some(f64::INFINITY);
    }
    v.as_f64()
}

pub fn run(dir: &Path) -> anyhow::Result<()> {
    let html = dir.join("report.html");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("report.json"))
            .with_context(|| format!("reading {}", dir.join("report.json").display()))?,
    )?;
    let bin = chromium()?;
    let profile = std::env::temp_dir().join(format!("int8kit-chromium-{}", std::process::id()));
    let url =
        format!("file://{}", html.canonicalize().with_context(|| format!("{} missing", html.display()))?.display());
    let dom = chromium_cmd(&bin, &profile).arg("--dump-dom").arg(&url).output().context("starting chromium")?;
    if !dom.status.success() {
        bail!("chromium could not load {url}: {}", String::from_utf8_lossy(&dom.stderr));
    }
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    let shot = dir.join("report.png");
    let status = chromium_cmd(&bin, &profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1200,2000")
        .arg(&url)
        .output()
        .context("starting chromium")?;
    let _ = std::fs::remove_dir_all(&profile);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    if !status.status.success() || size < 10_000 {
        bail!("chromium did not render {url} to a screenshot ({size} bytes)");
    }
    // Every number in the rendered DOM against report.json.
    let mut checked = 0;
    for chunk in dom.split("data-key=\"").skip(1) {
        let key = chunk.split('"').next().unwrap_or_default();
        let value: f64 = chunk
            .split("data-value=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{key}: no numeric data-value"))?;
        let expected = lookup(&report, key).with_context(|| format!("report.json has no value for {key}"))?;
        // float32 fields may print as different but equivalent shortest decimals: compare as f32 too.
        let same_f32 = (value as f32) == (expected as f32);
        if !same_f32 && (value - expected).abs() > 1e-9 * expected.abs().max(1.0) {
            bail!("{key}: the page shows {value}, report.json has {expected}");
        }
        checked += 1;
    }
    if checked < 10 || !dom.contains("<svg") {
        bail!("the rendered page has only {checked} numbers or no SVG plot");
    }
    println!(
        "report.html renders in Chromium ({} KB screenshot: {}); its {checked} numbers match report.json",
        size / 1024,
        shot.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_key_and_a_null_sqnr_is_infinite() {
        let report = serde_json::json!({
            "comparison": {"sqnr_db": null, "int8": {"top1": 0.5, "per_class": [[3, 4]]}},
            "tensors": [{"amax": 2.5}]
        });
        assert_eq!(lookup(&report, "comparison.sqnr_db"), Some(f64::INFINITY));
        assert_eq!(lookup(&report, "comparison.int8.top1"), Some(0.5));
        assert_eq!(lookup(&report, "tensors.0.amax"), Some(2.5));
        assert_eq!(lookup(&report, "class.0.int8"), Some(0.75));
        assert_eq!(lookup(&report, "comparison.missing"), None);
    }
}
