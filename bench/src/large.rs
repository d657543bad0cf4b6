//! `cargo xtask bench large`: random-weight ViTs of real sizes (`bench/scripts/make_large_vit.py`: ViT-L/14,
//! 1.2 GB in one file; ViT-H/14, 2.5 GB, above protobuf's 2 GiB limit, with external data) through
//! `calibrate`, `analyze` and `validate`: wall time, peak RSS, and RSS as a multiple of the model's size.
//! `validate` runs the written Q/DQ model (and the FP16 one) in ONNX Runtime, so a model that does not load
//! fails the bench.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::measure::{build_int8kit, int8kit, measure_tree, Run};
use crate::suite::{bench_home, make_crops, venv_python, PEER_PINS};

/// Calibration images per model (and validation images): enough to exercise the streaming, few enough for a
/// 2-core machine.
const IMAGES: usize = 8;

#[derive(Debug, serde::Serialize)]
struct LargeResult {
    model: String,
    weights_gb: f64,
    external_data: bool,
    calibrate: Run,
    analyze: Run,
    validate: Run,
    rss_over_model: [f64; 3],
    qdq_model_gb: f64,
    cosine_mean: Option<f64>,
    sqnr_db: Option<f64>,
}

fn file_gb(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len() as f64 / 1e9).unwrap_or(0.0)
}

/// The model and, if any, its external data file: their total size.
fn model_gb(model: &Path) -> (f64, bool) {
    let data = PathBuf::from(format!("{}.data", model.display()));
    (file_gb(model) + file_gb(&data), data.exists())
}

pub fn run() -> anyhow::Result<()> {
    let bin = build_int8kit()?;
    let python = venv_python("peer-venv", PEER_PINS)?;
    let work = crate::root().join("target/bench/large");
    std::fs::create_dir_all(&work)?;
    let photos = crate::suite::fetch_photos()?;
    let images =
        make_crops(&photos, &bench_home().join(format!("crops/calib-{IMAGES}")), IMAGES, crate::suite::CALIB_SEED)?;
    let script = crate::root().join("bench/scripts/make_large_vit.py");
    let mut results = Vec::new();
    for preset in ["vit_l14", "vit_h14"] {
        eprintln!("== {preset} ==");
        let models = bench_home().join("large");
        let model = models.join(format!("{preset}.onnx"));
        if !model.exists() {
            crate::run_ok(
                Command::new(&python).arg(&script).args(["--preset", preset, "--out"]).arg(&models),
                &format!("building {preset}"),
            )?;
        }
        let (weights_gb, external_data) = model_gb(&model);
        let dir = work.join(preset);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let hist = dir.join("calib.hist");
        let mut calibrate = int8kit(&bin, "calibrate");
        calibrate
            .args(["--model".as_ref(), model.as_os_str(), "--images".as_ref(), images.as_os_str()])
            .args(["--preset", "imagenet", "--batch-size", "4", "--quiet", "--out"])
            .arg(&hist);
        let calibrate = measure_tree(&mut calibrate, &dir.join("calibrate.log"), None)?.ok()?;
        eprintln!("  calibrate: {}", calibrate.summary());
        let mut analyze = int8kit(&bin, "analyze");
        analyze
            .args(["--model".as_ref(), model.as_os_str(), "--hist".as_ref(), hist.as_os_str()])
            .args(["--quiet", "--out"])
            .arg(dir.join("analyze"));
        let analyze = measure_tree(&mut analyze, &dir.join("analyze.log"), None)?.ok()?;
        eprintln!("  analyze: {}", analyze.summary());
        let report_dir = dir.join("validate");
        let mut validate = int8kit(&bin, "validate");
        validate
            .args(["--model".as_ref(), model.as_os_str(), "--calib".as_ref(), images.as_os_str()])
            .args(["--val".as_ref(), images.as_os_str()])
            .args(["--preset", "imagenet", "--quiet", "--out"])
            .arg(&report_dir);
        let validate = measure_tree(&mut validate, &dir.join("validate.log"), None)?.ok()?;
        eprintln!("  validate: {}", validate.summary());
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(report_dir.join("report.json"))?)?;
        let qdq_model_gb = model_gb(&dir.join("analyze/model.qdq.onnx")).0;
        let size_mb = weights_gb * 1000.0;
        results.push(LargeResult {
            model: preset.into(),
            weights_gb,
            external_data,
            rss_over_model: [
                calibrate.peak_rss_mb / size_mb,
                analyze.peak_rss_mb / size_mb,
                validate.peak_rss_mb / size_mb,
            ],
            calibrate,
            analyze,
            validate,
            qdq_model_gb,
            cosine_mean: report["comparison"]["cosine_mean"].as_f64(),
            sqnr_db: report["comparison"]["sqnr_db"].as_f64(),
        });
        eprintln!("  {:?}", results.last().map(|r| r.rss_over_model));
    }
    let json = work.join("large.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
    println!("| model | weights | calibrate ({IMAGES} images) | analyze | validate ({IMAGES} + {IMAGES} images) | peak RSS / model size | Q/DQ model |");
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.2} GB{} | {:.0} s, {:.1} GB | {:.0} s, {:.1} GB | {:.0} s, {:.1} GB | {:.1} / {:.1} / {:.1} | {:.2} GB |",
            r.model,
            r.weights_gb,
            if r.external_data { " (external data)" } else { "" },
            r.calibrate.wall_s,
            r.calibrate.peak_rss_mb / 1000.0,
            r.analyze.wall_s,
            r.analyze.peak_rss_mb / 1000.0,
            r.validate.wall_s,
            r.validate.peak_rss_mb / 1000.0,
            r.rss_over_model[0],
            r.rss_over_model[1],
            r.rss_over_model[2],
            r.qdq_model_gb
        );
    }
    println!("wrote {}", json.display());
    Ok(())
}
