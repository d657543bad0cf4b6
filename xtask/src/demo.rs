//! `cargo xtask demo`: the whole pipeline on the bundled fixtures.

use std::time::Instant;

use anyhow::Context;
use calibrate::cli::progress_bar;
use calibrate::{calibrate, CalibrateOptions};
use datasets::Recipe;

use crate::root;

/// The five fixture models.
pub const FIXTURE_MODELS: &[&str] = &[
    "fmnist_vit_opset13.onnx",
    "fmnist_vit_opset17.onnx",
    "fmnist_vit_opset18.onnx",
    "fmnist_resnet_opset13.onnx",
    "fmnist_clip_image_opset17.onnx",
];

pub fn run(quiet: bool) -> anyhow::Result<()> {
    let root = root();
    let recipe = Recipe::load(&root.join("fixtures/fmnist.toml"))?;
    let images = root.join("fixtures/fmnist/calib");
    let out = root.join("target/int8kit-demo");
    std::fs::create_dir_all(&out)?;
    let mut rows = Vec::new();
    for name in FIXTURE_MODELS {
        let model = root.join("fixtures/models").join(name);
        let bar = progress_bar(0, "images", quiet);
        bar.set_prefix(format!("calibrate {name}"));
        let start = Instant::now();
        let (hist, summary) = calibrate(&model, &images, &recipe, &CalibrateOptions::default(), &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .with_context(|| format!("calibrating {name}"))?;
        let secs = start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let path = out.join(name.replace(".onnx", ".hist"));
        hist.write(&path)?;
        rows.push((name.to_string(), summary.tensors, summary.images, secs, path));
    }
    println!("| model | activations | calibration images | calibration time | images/s |");
    println!("|---|---|---|---|---|");
    for (name, tensors, images, secs, _) in &rows {
        println!("| {name} | {tensors} | {images} | {secs:.2} s | {:.0} |", *images as f64 / secs);
    }
    println!("\nhistograms written to {}", out.display());
    println!("(scales, Q/DQ models and INT8 accuracy follow as `analyze` and `validate` land)");
    Ok(())
}
