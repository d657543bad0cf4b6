//! `cargo xtask demo`: `validate` on every bundled fixture, summarised in one table.

use analyze::scales::Method;
use datasets::{Feed, Recipe};
use evaluate::{Classifier, ValidateConfig};

use crate::root;

/// The fixture models as `fixtures/models/models.json` lists them, and whether each is evaluated zero-shot.
pub fn fixture_models() -> Vec<(String, bool)> {
    test_support::models().iter().map(|(name, entry)| (name.clone(), entry.zero_shot.is_some())).collect()
}

/// The release gate's configuration for one fixture model with the fixture images, gated at 0.5 pp: with
/// `method` fixed, or (None) every choice made by measurement, as the command line's defaults do.
pub fn fixture_config(
    name: &str,
    zero_shot: bool,
    method: Option<Method>,
    out: std::path::PathBuf,
    device: runtime::Device,
) -> anyhow::Result<ValidateConfig> {
    let prototypes = test_support::prototypes();
    let calib = evaluate::validate::Calibration::Folder(test_support::calib_dir());
    let feed = Feed::Images(Recipe::load(&test_support::recipe_path())?);
    Ok(ValidateConfig {
        scheme: quantizer::Scheme {
            method: method.unwrap_or(Method::Entropy),
            auto: match method {
                None => quantizer::search::AutoChoices::ALL,
                Some(_) => Default::default(),
            },
            ..Default::default()
        },
        collect: calibrate::CalibrateOptions { device: runtime::Devices::one(device), ..Default::default() },
        classifier: Classifier::load(zero_shot.then_some(prototypes.as_path()))?,
        max_top1_drop: Some(0.5),
        ..ValidateConfig::new(test_support::model(name), calib, test_support::val_dir(), feed, out)
    })
}

/// `methods`: None for the defaults (every choice by measurement), else the scale method fixed.
pub fn run(quiet: bool, methods: &[Option<Method>]) -> anyhow::Result<()> {
    let root = root();
    let out = root.join("target/int8kit-demo");
    // The demo's own scratch: a run of an earlier int8kit (without manifests) must not block this one.
    let _ = std::fs::remove_dir_all(&out);
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let models = fixture_models();
    for (name, zero_shot) in &models {
        let stem = name.trim_end_matches(".onnx");
        for method in methods {
            let label = method.map_or_else(|| "auto".to_string(), |m| m.name());
            let dir = out.join(stem).join(label.replace(':', "_"));
            let config = fixture_config(name, *zero_shot, *method, dir.clone(), runtime::Device::Cpu)?;
            if !quiet {
                eprintln!("validating {stem} ({label})...");
            }
            let report = evaluate::validate(&config, &mut |_, _, _| {})?;
            if !report.passed {
                failed.push(format!("{stem} {label}"));
            }
            // What auto chose is what the row shows.
            let label = if method.is_none() { format!("auto ({})", report.method) } else { label };
            rows.push((stem, label, report, dir));
        }
    }
    let images = rows.first().map(|r| r.2.comparison.images).unwrap_or(0);
    println!("\n| model | precision | Top-1 (val, {images} images) | images/s | calibration time | INT8 GEMM FLOPs | gate (drop <= 0.5 pp) |");
    println!("|---|---|---|---|---|---|---|");
    let mut last = "";
    // The fixtures' folders are labelled: a missing Top-1 would show as NaN, never as a number.
    let top1 = |m: &evaluate::ModelMetrics| m.top1.unwrap_or(f64::NAN);
    for (stem, method, r, _) in &rows {
        let c = &r.comparison;
        if *stem != last {
            println!("| {stem} | FP32 | {:.2} % | {:.0} | | | |", 100.0 * top1(&c.fp32), c.fp32.images_per_s);
            if let Some(h) = &r.fp16 {
                println!(
                    "| {stem} | FP16 (no Q/DQ) | {:.2} % ({:+.2} pp) | {:.0} | | | |",
                    100.0 * top1(&h.metrics),
                    100.0 * (top1(&h.metrics) - top1(&c.fp32)),
                    h.metrics.images_per_s
                );
            }
            last = stem;
        }
        println!(
            "| {stem} | INT8 {method} + {} | {:.2} % ({:+.2} pp) | {:.0} | {:.1} s | {:.1} % | {} |",
            r.float_type.to_uppercase(),
            100.0 * top1(&c.int8),
            100.0 * (top1(&c.int8) - top1(&c.fp32)),
            c.int8.images_per_s,
            r.calibration_seconds,
            100.0 * r.int8_flop_share,
            if r.passed { "pass" } else { "FAIL" }
        );
    }
    println!(
        "\nFP16 = model.fp16.onnx, INT8 = model.qdq.onnx (Q/DQ for TensorRT; auto = the defaults: method, attention and \
         float type chosen by measurement on held-back calibration images), both in ONNX Runtime's \
         CPU provider, which runs FP16 through casts (slower than FP32 here; only TensorRT or CUDA speeds mean \
         anything for FP16); calibration time = the calibration pass."
    );
    println!("Reports (report.html, report.json, junit.xml, ...) and artifacts: {}/<model>/<method>/", out.display());
    if !failed.is_empty() {
        anyhow::bail!("the accuracy gate failed for: {}", failed.join(", "));
    }
    Ok(())
}
