//! The release gate cannot pass by mistake: no images, limits that are not numbers, a baseline of another
//! model or image set, classes or prototypes that do not fit the model, NaN outputs, float outputs that are zero
//! everywhere and a model without a float32 output all stop the run with exit 2 and the reason, before or
//! instead of a verdict.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::{calibrated, int8kit, on_fixtures, refused, resnet, text};
use test_support::{calib_dir, model, recipe_path, val_dir};

/// `int8kit validate` on `model_path` with small subsets, `val` as the evaluation folder.
fn validate(model_path: &Path, val: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--limit-calib", "50", "--quiet", "--val", val.to_str().unwrap()];
    args.extend_from_slice(extra);
    on_fixtures("validate", model_path, out, &args)
}

/// `int8kit sensitivity` or `autoprecision` on the ResNet, calibrated into `dir`, with `extra` flags.
fn measure(dir: &Path, subcommand: &str, extra: &[&str]) -> Output {
    measure_on(&val_dir(), dir, subcommand, extra)
}

/// [`measure`] with `val` as the evaluation folder.
fn measure_on(val: &Path, dir: &Path, subcommand: &str, extra: &[&str]) -> Output {
    int8kit(subcommand)
        .arg("--model")
        .arg(resnet())
        .arg("--hist")
        .arg(calibrated(dir))
        .arg("--val")
        .arg(val)
        .arg("--recipe")
        .arg(recipe_path())
        .arg("--out")
        .arg(dir.join("measured"))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn nothing_evaluated_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = validate(&resnet(), &val_dir(), &dir.path().join("a"), &["--limit-val", "0", "--max-top1-drop", "1"]);
    refused(&o, "no image was evaluated");
    let o = measure(dir.path(), "sensitivity", &["--limit", "0"]);
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
    let broken = common::nan_resnet(dir.path(), &[3]);
    let o = validate(&broken, &val_dir(), &dir.path().join("out"), &["--limit-val", "20", "--max-top1-drop", "1"]);
    // Found on the calibration samples held back for the self-check, before any evaluation.
    refused(&o, "the float model's outputs are not finite numbers on 5 of the 5 samples from");
}

/// A float model whose outputs are zero on every image gives nothing to judge: the self-check's samples refuse it
/// before anything is written, and an evaluation without them (`--hold-out 0`) refuses it too, instead of
/// passing a cosine of 1 and an infinite SQNR (a classifier head zero-initialized and never trained does this).
#[test]
fn outputs_that_are_zero_everywhere_are_refused_not_passed() {
    let dir = tempfile::tempdir().unwrap();
    let zero = common::zero_head_resnet(dir.path());
    let out = dir.path().join("out");
    let o = validate(&zero, &val_dir(), &out, &["--limit-val", "20", "--min-cosine", "0.99", "--min-sqnr", "20"]);
    refused(&o, "the float model's output 'logits' is zero on all 5 samples from");
    assert!(!out.exists(), "{}", text(&o));
    let o = validate(
        &zero,
        &val_dir(),
        &out,
        &["--limit-val", "20", "--min-cosine", "0.99", "--min-sqnr", "20", "--hold-out", "0"],
    );
    refused(&o, "the float model's outputs are zero on all 20 images, so there is no signal");
    assert!(!out.join("report.json").exists(), "{}", text(&o));
}

/// A model whose first output is a class index (an ArgMax in the graph) is measured on its first float32
/// output, the logits, as the unmodified model is; one without a float32 output is refused, naming its outputs.
#[test]
fn the_first_float32_output_is_measured_and_a_model_without_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let check = |model: &Path, out: &str| {
        let out = dir.path().join(out);
        let o = common::on_fixtures("quantize", model, &out, &["--limit", "60"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let ranges: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("ranges.json")).unwrap()).unwrap();
        (ranges["self_check"].clone(), text(&o))
    };
    let argmax_first = common::argmax_first_resnet(dir.path(), true);
    let (plain, printed) = check(&resnet(), "plain");
    assert!(plain["fidelity"]["cosine_mean"].as_f64().unwrap() > 0.99, "{plain}");
    assert!(!printed.contains("output '"), "one output: nothing to say: {printed}");
    let (argmax, printed) = check(&argmax_first, "argmax");
    assert_eq!(argmax["fidelity"], plain["fidelity"]);
    // Which output was compared is recorded, and said where the graph has several.
    let logits = plain["output"]["name"].clone();
    assert_eq!((&argmax["output"]["name"], &argmax["output"]["of"]), (&logits, &serde_json::json!(2)));
    assert!(printed.contains(&format!("output '{}'", logits.as_str().unwrap())), "{printed}");

    let only = common::argmax_first_resnet(dir.path(), false);
    let o = common::on_fixtures("quantize", &only, &dir.path().join("only"), &["--limit", "60", "--quiet"]);
    refused(&o, "no output is float32, FP16 or BF16 (outputs: 'label' (int64))");
    let o = validate(&only, &val_dir(), &dir.path().join("v"), &["--limit-val", "20", "--min-cosine", "0.9"]);
    refused(&o, "no output is float32, FP16 or BF16");
}

#[test]
fn autoprecision_budgets_must_be_finite() {
    let dir = tempfile::tempdir().unwrap();
    let o = measure(dir.path(), "autoprecision", &["--limit", "20", "--max-top1-drop", "NaN"]);
    refused(&o, "from -100 to 100");
}

/// An unlabelled folder (images at its top level) serves the fidelity gates and budgets, which compare with
/// FP32; a Top-1 gate or budget on it is refused before any work, saying what to do.
#[test]
fn an_unlabelled_folder_serves_fidelity_gates_and_is_refused_for_top1() {
    let dir = tempfile::tempdir().unwrap();
    let unlabelled = calib_dir();
    let out = dir.path().join("fidelity");
    let o = validate(&resnet(), &unlabelled, &out, &["--limit-val", "64", "--min-cosine", "0.99"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("Top-1 n/a (no labels)"), "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let c = &report["comparison"];
    assert!(c["fp32"]["top1"].is_null() && c["int8"]["top5"].is_null(), "{c}");
    assert_eq!(c["images"], 64);
    assert!(c["cosine_mean"].as_f64().unwrap() > 0.99);
    assert_eq!(report["criteria"][0]["name"], "min-cosine");

    let top1 = dir.path().join("top1");
    let o = validate(&resnet(), &unlabelled, &top1, &["--limit-val", "64", "--max-top1-drop", "1"]);
    refused(&o, "--max-top1-drop gates on Top-1, which needs labels");
    assert!(text(&o).contains("--min-cosine") && !top1.join("report.json").exists(), "{}", text(&o));

    let o = measure_on(&unlabelled, dir.path(), "autoprecision", &["--limit", "20", "--max-top1-drop", "1"]);
    refused(&o, "needs labels");
    let o = measure_on(&unlabelled, dir.path(), "autoprecision", &["--limit", "20"]);
    refused(&o, "no budget");
    let o =
        measure_on(&unlabelled, dir.path(), "autoprecision", &["--limit", "20", "--min-cosine", "0.999", "--quiet"]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    let auto: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("measured/autoprecision.json")).unwrap())
            .unwrap();
    assert!(auto["search"]["top1"].is_null() && auto["search"]["cosine_mean"].as_f64().is_some(), "{auto}");
    assert_eq!(o.status.code() == Some(0), auto["search"]["cosine_mean"].as_f64().unwrap() >= 0.999, "{auto}");
}
