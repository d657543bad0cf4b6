//! `cargo xtask bench archs`: a robustness sweep over model families and exporters. torchvision's architectures
//! (CNNs with depthwise, grouped and squeeze-excite blocks, channel shuffles, dense Concats, ConvNeXt, Swin,
//! MaxViT, a ViT), exported by PyTorch's TorchScript exporter (opset 17) and its dynamo exporter (opset 18, and
//! 23 with ONNX's own Attention op) from seeded random weights whose BatchNorm statistics are re-estimated on
//! photo crops (`bench/scripts/torchvision_archs.py`; no trained weights can be fetched here). Per model:
//! `quantize` with the defaults (time against the FP32 pass over the same crops), the self-check, lint, and the
//! same artifacts again at one thread and batch 5. Not an accuracy benchmark: random weights quantize unlike
//! trained ones; the zoo (`bench zoo`) measures fidelity.

use std::path::Path;
use std::process::Command;

use crate::measure::{build_int8kit, int8kit, measure_tree, Run};
use crate::suite::{bench_home, fetch_photos, make_crops, venv_python, CALIB_SEED};

/// torch and its exporters, in a venv of their own (about 6 GB with torch's CUDA libraries).
const ARCHS_PINS: &[&str] =
    &["torch==2.15.0", "torchvision==0.29.2", "onnx==1.23.2", "onnxscript==0.7.2", "numpy==2.4.6"];

/// Crops per model: the self-check holds back a tenth.
const IMAGES: usize = 96;

#[derive(Debug, serde::Serialize)]
struct ArchResult {
    model: String,
    fp32_pass: Run,
    quantize: Run,
    /// ranges.json's choices: method / attention / float type.
    chosen: String,
    int8_flop_share: Option<f64>,
    self_check_sqnr_db: Option<f64>,
    lint_errors: Option<u64>,
    /// model.qdq.onnx and ranges.json byte-identical at `--threads 1 --batch-size 5`.
    same_bytes_one_thread_batch_5: bool,
}

pub fn run() -> anyhow::Result<()> {
    let bin = build_int8kit()?;
    let python = venv_python("archs-venv", ARCHS_PINS)?;
    let root = crate::root();
    let work = root.join("target/bench/archs");
    std::fs::create_dir_all(&work)?;
    let crops = make_crops(&fetch_photos()?, &bench_home().join(format!("crops/calib-{IMAGES}")), IMAGES, CALIB_SEED)?;
    let recipe = root.join("bench/scripts/dinov2_vits14.toml");
    let me = std::env::current_exe()?;
    let raw = work.join("crops.f32");
    if !raw.exists() {
        crate::run_ok(
            // --dump-raw reads no model; the flag is required, so any path serves.
            Command::new(&me)
                .arg("bench-child")
                .args(["--model".as_ref(), recipe.as_os_str()])
                .args(["--images".as_ref(), crops.as_os_str(), "--recipe".as_ref(), recipe.as_os_str()])
                .arg("--dump-raw")
                .arg(&raw),
            "decoding the crops",
        )?;
    }
    let models = bench_home().join("archs");
    crate::run_ok(
        Command::new(&python).arg(root.join("bench/scripts/torchvision_archs.py")).args([
            "--raw".as_ref(),
            raw.as_os_str(),
            "--out".as_ref(),
            models.as_os_str(),
        ]),
        "exporting the torchvision architectures",
    )?;
    let mut paths: Vec<_> = std::fs::read_dir(&models)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx") && !p.to_string_lossy().ends_with(".tmp.onnx"))
        .collect();
    paths.sort();
    let mut results = Vec::new();
    for model in &paths {
        let name = model.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        eprintln!("== {name} ==");
        let dir = work.join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let pass_args = |cmd: &mut Command| {
            cmd.args(["--model".as_ref(), model.as_os_str(), "--images".as_ref(), crops.as_os_str()])
                .args(["--recipe".as_ref(), recipe.as_os_str()]);
        };
        // The FP32 pass in batches the model takes (a detector exported for one image at a time).
        let loaded = graph::Model::load(model)?;
        let input = loaded.resolve_input(None)?.name.clone();
        let batch = loaded.fixed_batch(&input).unwrap_or(16);
        drop(loaded);
        let mut plain = Command::new(&me);
        plain.arg("bench-child").args(["--batch-size", &batch.to_string()]);
        pass_args(&mut plain);
        let fp32_pass = measure_tree(&mut plain, &dir.join("fp32.log"), None)?;
        let quantize_into = |out: &Path, extra: &[&str]| -> anyhow::Result<Run> {
            let mut cmd = int8kit(&bin, "quantize");
            pass_args(&mut cmd);
            cmd.args(extra).args(["--quiet", "--out"]).arg(out);
            measure_tree(&mut cmd, &out.with_extension("log"), None)
        };
        let out = dir.join("quantize");
        let quantize = quantize_into(&out, &[])?;
        eprintln!("  quantize: {} (FP32 pass {:.1} s)", quantize.summary(), fp32_pass.wall_s);
        let again = dir.join("quantize-1-thread");
        quantize_into(&again, &["--threads", "1", "--batch-size", "5"])?;
        let same = |file: &str| {
            std::fs::read(out.join(file)).ok().is_some_and(|a| std::fs::read(again.join(file)).ok() == Some(a))
        };
        let ranges: Option<serde_json::Value> =
            std::fs::read(out.join("ranges.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let field = |path: &[&str]| ranges.as_ref().and_then(|r| path.iter().try_fold(r, |v, k| v.get(*k))).cloned();
        let text =
            |v: Option<serde_json::Value>| v.map_or_else(|| "-".into(), |v| v.as_str().unwrap_or("-").to_string());
        let lint = Command::new(&bin).arg("lint").arg(out.join("model.qdq.onnx")).output()?;
        let lint_errors = String::from_utf8_lossy(&lint.stdout)
            .lines()
            .last()
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok());
        results.push(ArchResult {
            model: name,
            fp32_pass,
            quantize,
            chosen: format!(
                "{} / {} / {}",
                text(field(&["method"])),
                field(&["attention"]).and_then(|a| a.as_str().map(str::to_string)).unwrap_or_else(|| "-".into()),
                text(field(&["float_type"]))
            ),
            int8_flop_share: field(&["int8_flop_share"]).and_then(|v| v.as_f64()),
            // ranges.json writes an infinite SQNR (outputs reproduced exactly) as null.
            self_check_sqnr_db: field(&["self_check", "fidelity"])
                .filter(|f| f.is_object())
                .map(|f| f["sqnr_db"].as_f64().unwrap_or(f64::INFINITY)),
            lint_errors,
            same_bytes_one_thread_batch_5: same("model.qdq.onnx") && same("ranges.json"),
        });
    }
    let json = work.join("archs.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
    println!("| model (exporter, opset) | quantize / FP32 pass | chosen (method / attention / float) | INT8 share of GEMM FLOPs | self-check SQNR | lint errors | same bytes at 1 thread, batch 5 |");
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.model,
            if r.fp32_pass.outcome != "ok" {
                format!("FP32 pass {}", r.fp32_pass.outcome)
            } else if r.quantize.outcome == "ok" {
                format!(
                    "{:.1} s / {:.1} s = {:.2}x",
                    r.quantize.wall_s,
                    r.fp32_pass.wall_s,
                    r.quantize.wall_s / r.fp32_pass.wall_s
                )
            } else {
                r.quantize.outcome.clone()
            },
            r.chosen,
            r.int8_flop_share.map_or_else(|| "-".into(), |s| format!("{:.1} %", 100.0 * s)),
            r.self_check_sqnr_db.map_or_else(|| "-".into(), |d| format!("{d:.2} dB")),
            r.lint_errors.map_or_else(|| "-".into(), |n: u64| n.to_string()),
            if r.same_bytes_one_thread_batch_5 { "yes" } else { "NO" },
        );
    }
    println!("wrote {}", json.display());
    Ok(())
}
