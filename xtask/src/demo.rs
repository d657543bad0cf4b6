//! `cargo xtask demo`: the whole pipeline on the bundled fixtures.

use std::time::Instant;

use analyze::precision::PrecisionFile;
use analyze::scales::Method;
use analyze::{analyze, AnalyzeOptions};
use anyhow::Context;
use calibrate::cli::progress_bar;
use calibrate::{calibrate, CalibrateOptions};
use datasets::{Dataset, Recipe};

use crate::root;
use analyze::evaluate::{evaluate, load_prototypes};

/// The five fixture models.
pub const FIXTURE_MODELS: &[&str] = &[
    "fmnist_vit_opset13.onnx",
    "fmnist_vit_opset17.onnx",
    "fmnist_vit_opset18.onnx",
    "fmnist_resnet_opset13.onnx",
    "fmnist_clip_image_opset17.onnx",
];

pub fn run(quiet: bool, methods: &[Method]) -> anyhow::Result<()> {
    let root = root();
    let recipe = Recipe::load(&root.join("fixtures/fmnist.toml"))?;
    let images = root.join("fixtures/fmnist/calib");
    let val = Dataset::labelled(&root.join("fixtures/fmnist/val"), None)?;
    let protos = load_prototypes(&root.join("fixtures/models/fmnist_clip_text_prototypes.npy"))?;
    let out = root.join("target/int8kit-demo");
    std::fs::create_dir_all(&out)?;
    println!(
        "| model | precision | Top-1 (val, {} images) | delta pp | images/s | calibration time | INT8 FLOP share |",
        val.len()
    );
    println!("|---|---|---|---|---|---|---|");
    for name in FIXTURE_MODELS {
        let model = root.join("fixtures/models").join(name);
        let stem = name.trim_end_matches(".onnx");
        let zero_shot = name.contains("clip").then_some(protos.as_slice());
        let bar = progress_bar(0, "images", quiet);
        bar.set_prefix(format!("calibrate {stem}"));
        let start = Instant::now();
        let (hist, _) = calibrate(&model, &images, &recipe, &CalibrateOptions::default(), &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .with_context(|| format!("calibrating {name}"))?;
        let calib_secs = start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        hist.write(&out.join(format!("{stem}.hist")))?;
        let fp32 = evaluate(&model, &val, &recipe, zero_shot)?;
        println!("| {stem} | FP32 | {:.2} % | | {:.0} | | |", 100.0 * fp32.top1, fp32.images as f64 / fp32.seconds);
        for method in methods {
            let options = AnalyzeOptions {
                method: *method,
                precision: PrecisionFile::default(),
                precision_origin: "defaults".into(),
                trt_version: "10.3.0".into(),
            };
            let start = Instant::now();
            let analysis = analyze(&model, &hist, &options).with_context(|| format!("analyzing {name}"))?;
            let dir = out.join(stem).join(method.name().replace(':', "_"));
            analysis.write(&dir)?;
            let analyze_secs = start.elapsed().as_secs_f64();
            let int8 = evaluate(&dir.join("model.qdq.onnx"), &val, &recipe, zero_shot)?;
            println!(
                "| {stem} | INT8 {} | {:.2} % | {:+.2} | {:.0} | {:.2} s + {:.2} s | {:.1} % |",
                method.name(),
                100.0 * int8.top1,
                100.0 * (int8.top1 - fp32.top1),
                int8.images as f64 / int8.seconds,
                calib_secs,
                analyze_secs,
                100.0 * analysis.ranges.int8_flop_share
            );
        }
    }
    println!("\nINT8 = model.qdq.onnx run by ONNX Runtime's CPU provider; calibration time = calibrate + analyze.");
    println!(
        "Artifacts (model.qdq.onnx, calibration.cache, ranges.csv, ranges.json) and .hist files: {}",
        out.display()
    );
    Ok(())
}
