//! `--weight-rounding`: GPTQ's integers from the held-in samples, kept by `auto` only where the held-back
//! samples measure them better; the same bytes on any thread count; nothing else of the model changes.

use std::path::Path;

use crate::common::{int8kit, on_fixtures, read_json, refused, resnet, text};

fn quantize(out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--limit", "200", "--quiet"];
    args.extend_from_slice(extra);
    let o = on_fixtures("quantize", &resnet(), out, &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    read_json(&out.join("ranges.json"))
}

#[test]
fn gptq_changes_only_weight_integers_the_same_way_on_any_thread_count_and_auto_keeps_what_measures_better() {
    let dir = tempfile::tempdir().unwrap();
    let (nearest, gptq, gptq2, auto) =
        (dir.path().join("n"), dir.path().join("g"), dir.path().join("g2"), dir.path().join("a"));
    let n = quantize(&nearest, &["--weight-rounding", "nearest"]);
    assert!(n.get("weight_rounding").is_none(), "nearest alone is not recorded");
    let g = quantize(&gptq, &["--weight-rounding", "gptq", "--threads", "1"]);
    quantize(&gptq2, &["--weight-rounding", "gptq", "--threads", "2"]);
    let read = |d: &Path| std::fs::read(d.join("model.qdq.onnx")).unwrap();
    assert_eq!(read(&gptq), read(&gptq2), "GPTQ's model differs between one and two threads");

    let record = &g["weight_rounding"];
    assert_eq!(record["chosen"], "gptq", "{record}");
    let rounded = record["layers"].as_array().unwrap().iter().filter(|l| l["rounding"] == "gptq").count();
    assert!(rounded > 0, "no layer rounded by GPTQ: {record}");
    // The same model otherwise: same size, same scales, other bytes.
    assert_ne!(read(&gptq), read(&nearest));
    assert_eq!(read(&gptq).len(), read(&nearest).len());
    assert_eq!(g["weights"], n["weights"], "the weight scales changed");
    assert_eq!(g["tensors"], n["tensors"], "the activation ranges changed");
    let lint = int8kit("lint").arg("--strict").arg(gptq.join("model.qdq.onnx")).output().unwrap();
    assert_eq!(lint.status.code(), Some(0), "{}", text(&lint));

    // auto measures both on the held-back samples and writes GPTQ's bytes only where it leads by the search's
    // tolerance (0.25 dB).
    let o = on_fixtures("quantize", &resnet(), &auto, &["--limit", "200"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let a = read_json(&auto.join("ranges.json"));
    let record = &a["weight_rounding"];
    // The summary says which rounding the written weights got, and why.
    let said =
        format!("weight rounding: {} ({})", record["chosen"].as_str().unwrap(), record["reason"].as_str().unwrap());
    assert!(text(&o).contains(&said), "the summary lacks {said:?}: {}", text(&o));
    let (near_db, gptq_db) = (record["nearest_sqnr_db"].as_f64().unwrap(), record["gptq_sqnr_db"].as_f64().unwrap());
    let better = if gptq_db > near_db + 0.25 { "gptq" } else { "nearest" };
    assert_eq!(record["chosen"], better, "{record}");
    assert_eq!(read(&auto), read(if better == "gptq" { &gptq } else { &nearest }));
}

#[test]
fn analyze_refuses_gptq_without_the_calibration_folder() {
    let dir = tempfile::tempdir().unwrap();
    let hist = crate::common::calibrated(dir.path());
    let o = int8kit("analyze")
        .arg("--model")
        .arg(resnet())
        .arg("--hist")
        .arg(&hist)
        .args(["--weight-rounding", "gptq", "--quiet", "--out"])
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    refused(&o, "--weight-rounding gptq needs --images");
    assert!(!dir.path().join("a").exists(), "an output folder was made");
}

/// The release gate measures the model `quantize` writes: `validate` rounds the weights the same way, from its
/// calibration folder, and refuses `gptq` where statistics come without their samples.
#[test]
fn validate_rounds_the_weights_as_quantize_does() {
    let dir = tempfile::tempdir().unwrap();
    let (quantized, validated) = (dir.path().join("q"), dir.path().join("v"));
    quantize(&quantized, &["--weight-rounding", "gptq"]);
    let extra = ["--limit", "200", "--limit-val", "64", "--weight-rounding", "gptq", "--quiet"];
    let o = on_fixtures("validate", &resnet(), &validated, &extra);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ranges = read_json(&validated.join("ranges.json"));
    assert_eq!(ranges["weight_rounding"]["chosen"], "gptq", "{}", ranges["weight_rounding"]);
    // The release record and the console say it too, not ranges.json alone.
    let report = read_json(&validated.join("report.json"));
    assert_eq!(report["weight_rounding"], ranges["weight_rounding"]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("weight rounding: gptq (asked for"), "{said}");
    let read = |d: &Path| std::fs::read(d.join("model.qdq.onnx")).unwrap();
    assert!(read(&quantized) == read(&validated), "validate's model.qdq.onnx differs from quantize's");

    let hist = crate::common::calibrated(dir.path());
    let o = int8kit("validate")
        .arg("--model")
        .arg(resnet())
        .arg("--hist")
        .arg(&hist)
        .arg("--val")
        .arg(test_support::val_dir())
        .arg("--recipe")
        .arg(test_support::recipe_path())
        .args(["--weight-rounding", "gptq", "--quiet", "--out"])
        .arg(dir.path().join("h"))
        .output()
        .unwrap();
    refused(&o, "--weight-rounding gptq needs --calib");
    assert!(!dir.path().join("h").exists(), "an output folder was made");
}
