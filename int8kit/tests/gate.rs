//! The release gate cannot pass by mistake: no images, limits that are not numbers, a baseline of another
//! model or image set, classes or prototypes that do not fit the model, and NaN outputs all stop the run with
//! exit 2 and the reason, before or instead of a verdict.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_support::{calib_dir, model, recipe_path, val_dir};

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// `int8kit validate` on `model_path` with small subsets.
fn validate(model_path: &Path, val: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_int8kit"))
        .arg("validate")
        .arg("--model")
        .arg(model_path)
        .arg("--calib")
        .arg(calib_dir())
        .arg("--val")
        .arg(val)
        .arg("--recipe")
        .arg(recipe_path())
        .args(["--limit-calib", "50", "--quiet", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn refused(o: &Output, why: &str) {
    assert_eq!(o.status.code(), Some(2), "expected exit 2 ({why}): {}", text(o));
    assert!(text(o).contains(why), "'{why}' missing from: {}", text(o));
}

fn resnet() -> PathBuf {
    model("fmnist_resnet_opset13.onnx")
}

/// The ResNet's statistics over 20 calibration images, in `dir`.
fn calibrated(dir: &Path) -> PathBuf {
    let hist = dir.join("r.hist");
    let o = Command::new(env!("CARGO_BIN_EXE_int8kit"))
        .args(["calibrate", "--limit", "20", "--quiet", "--model"])
        .arg(resnet())
        .arg("--images")
        .arg(calib_dir())
        .arg("--recipe")
        .arg(recipe_path())
        .arg("--out")
        .arg(&hist)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    hist
}

#[test]
fn nothing_evaluated_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = validate(&resnet(), &val_dir(), &dir.path().join("a"), &["--limit-val", "0", "--max-top1-drop", "1"]);
    refused(&o, "no image was evaluated");
    let hist = calibrated(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_int8kit"))
        .args(["sensitivity", "--limit", "0", "--model"])
        .arg(resnet())
        .arg("--hist")
        .arg(&hist)
        .arg("--val")
        .arg(val_dir())
        .arg("--recipe")
        .arg(recipe_path())
        .arg("--out")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    refused(&o, "no image was evaluated");
}

#[test]
fn limits_must_be_finite_numbers_in_range() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["NaN", "inf", "-inf", "101"] {
        let o = validate(&resnet(), &val_dir(), &dir.path().join(bad), &["--limit-val", "20", "--max-top1-drop", bad]);
        refused(&o, "from -100 to 100");
        assert!(!dir.path().join(bad).join("report.json").exists(), "a refused gate wrote a verdict");
    }
}

#[test]
fn a_baseline_of_another_model_or_image_set_is_refused_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let o = validate(&resnet(), &val_dir(), &base, &["--limit-val", "100", "--max-top1-drop", "5"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let baseline = base.join("report.json");
    let b = baseline.to_str().unwrap();
    // Another model.
    let vit = model("fmnist_vit_opset17.onnx");
    let o = validate(&vit, &val_dir(), &dir.path().join("x"), &["--limit-val", "100", "--baseline", b]);
    refused(&o, "--baseline-across-models");
    // Another image set of the same model.
    let o = validate(&resnet(), &val_dir(), &dir.path().join("y"), &["--limit-val", "99", "--baseline", b]);
    refused(&o, "another image list");
    // Asked for: compared, and recorded.
    let out = dir.path().join("z");
    let o = validate(
        &vit,
        &val_dir(),
        &out,
        &["--limit-val", "100", "--max-top1-drop", "5", "--baseline", b, "--baseline-across-models"],
    );
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["baseline"]["across_models"], true, "{report}");
}

#[test]
fn classes_the_model_cannot_predict_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let val = dir.path().join("val");
    // The fixture folders plus an eleventh class for a ten-class model.
    for (i, entry) in std::fs::read_dir(val_dir()).unwrap().enumerate() {
        let entry = entry.unwrap();
        let class = val.join(entry.file_name());
        std::fs::create_dir_all(&class).unwrap();
        let first = std::fs::read_dir(entry.path()).unwrap().next().unwrap().unwrap().path();
        std::fs::copy(&first, class.join("a.png")).unwrap();
        if i == 0 {
            std::fs::create_dir_all(val.join("10-extra")).unwrap();
            std::fs::copy(&first, val.join("10-extra/b.png")).unwrap();
        }
    }
    let o = validate(&resnet(), &val, &dir.path().join("out"), &["--max-top1-drop", "1"]);
    refused(&o, "class id 10");
}

/// A float32 `.npy` of shape [rows, cols], all ones.
fn npy(path: &Path, rows: usize, cols: usize) {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend(((header.len() + pad + 1) as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', pad));
    bytes.push(b'\n');
    bytes.extend(std::iter::repeat_n(1f32.to_le_bytes(), rows * cols).flatten());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn zero_shot_prototypes_of_another_dimension_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("p.npy");
    npy(&protos, 10, 32); // the CLIP fixture's embedding has 64 values
    let clip = model("fmnist_clip_image_opset17.onnx");
    let o = validate(
        &clip,
        &val_dir(),
        &dir.path().join("out"),
        &["--limit-val", "20", "--zero-shot", protos.to_str().unwrap()],
    );
    refused(&o, "prototypes have 32");
}

#[test]
fn nan_outputs_fail_the_run_with_counts() {
    let dir = tempfile::tempdir().unwrap();
    // The ResNet with a NaN in its classifier bias: every logit row holds one NaN.
    let mut m = graph::Model::load(&resnet()).unwrap();
    let head = m.proto.graph.node.iter().find(|n| n.op_type == "Gemm").unwrap().input[2].clone();
    let bias = m.proto.graph.mut_or_insert_default().initializer.iter_mut().find(|t| t.name == head).unwrap();
    let mut values: Vec<f32> = bias.raw_data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    values[3] = f32::NAN;
    bias.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let broken = dir.path().join("nan.onnx");
    std::fs::write(&broken, m.to_bytes().unwrap()).unwrap();
    let o = validate(&broken, &val_dir(), &dir.path().join("out"), &["--limit-val", "20", "--max-top1-drop", "1"]);
    refused(&o, "not finite numbers on 20 images: FP32 20 NaN/Inf values in 20 images");
}

#[test]
fn autoprecision_budgets_must_be_finite() {
    let dir = tempfile::tempdir().unwrap();
    let hist = calibrated(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_int8kit"))
        .args(["autoprecision", "--limit", "20", "--max-top1-drop", "NaN", "--model"])
        .arg(resnet())
        .arg("--hist")
        .arg(&hist)
        .arg("--val")
        .arg(val_dir())
        .arg("--recipe")
        .arg(recipe_path())
        .arg("--out")
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    refused(&o, "from -100 to 100");
}
