//! `int8kit validate` end to end: exit codes, report schema, zero-shot path, HTML numbers.

use crate::common;

use std::path::Path;

use common::{on_fixtures, read_json, text};
use test_support::model as fixture;

/// Runs validate on a fixture model with small calibration/validation subsets.
fn validate(model: &str, out: &Path, extra: &[&str]) -> (i32, String) {
    // A model the fixtures do not have is passed as a path that does not exist.
    let model = if model.starts_with("no_such") { out.join(model) } else { fixture(model) };
    let mut args = vec!["--limit", "200", "--limit-val", "500", "--quiet"];
    args.extend_from_slice(extra);
    let output = on_fixtures("validate", &model, out, &args);
    (output.status.code().unwrap_or(-1), text(&output))
}

#[test]
fn gate_exit_codes_schema_and_html_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok");
    // A sensitivity ranking as `analyze sensitivity` writes it, for the report's chart.
    let sens = dir.path().join("sensitivity.json");
    let ranking = serde_json::json!({"nodes": [
        {"node": "/head/Gemm", "op": "Gemm", "flop_share": 0.01, "alone_int8": {"divergence": 0.0125, "top1_delta_pp": -0.4}},
        {"node": "not-in-model", "op": "Conv", "flop_share": 0.2, "alone_int8": {"divergence": 0.001, "top1_delta_pp": 0.0}}
    ]});
    std::fs::write(&sens, ranking.to_string()).unwrap();
    let (code, text) = validate(
        "fmnist_resnet_opset13.onnx",
        &ok,
        &["--max-top1-drop", "1.0", "--sensitivity", sens.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{text}");

    // Schema of report.json.
    let report = read_json(&ok.join("report.json"));
    assert_eq!(report["format"], "int8kit.report");
    assert_eq!(report["version"], 8);
    for key in [
        "model_sha256",
        "recipe",
        "method",
        "precision",
        "tools",
        "comparison",
        "criteria",
        "passed",
        "tensors",
        "validation_list_sha256",
        "evaluation",
        "chosen_by",
        "self_check",
        "weight_rounding",
    ] {
        assert!(report.get(key).is_some(), "report.json lacks {key}");
    }
    // The run measured what it wrote on calibration images it held back, and chose by that measurement.
    let check = &report["self_check"];
    assert_eq!(check["status"], "measured", "{check}");
    assert!(check["samples"].as_str().unwrap().starts_with("20 calibration samples held back"), "{check}");
    assert!(check["fidelity"]["cosine_mean"].as_f64().unwrap() > 0.99, "{check}");
    assert_eq!(report["chosen_by"], "measurement");
    let ranges = read_json(&ok.join("ranges.json"));
    assert_eq!(ranges["self_check"], *check);
    let search = &ranges["search"];
    let chosen = &search["trials"][search["chosen"].as_u64().unwrap() as usize];
    assert_eq!(chosen["method"], report["method"], "{search}");
    assert_eq!(chosen["float_type"], report["float_type"], "{search}");
    assert_eq!(chosen["fidelity"], check["fidelity"]);
    // An INT8 model with FP16 float parts is evaluated as written, the FP32 reference optimized.
    let int8 = if report["float_type"] == "fp16" { "disabled" } else { "all" };
    assert_eq!(report["evaluation"]["int8"], format!("onnxruntime, graph optimization {int8}"));
    assert_eq!(report["evaluation"]["fp16"], "onnxruntime, graph optimization disabled");
    assert_eq!(report["evaluation"]["fp32"], "onnxruntime, graph optimization all");
    let c = &report["comparison"];
    for key in ["top1", "top5", "per_class", "images_per_s"] {
        assert!(c["fp32"].get(key).is_some() && c["int8"].get(key).is_some(), "comparison lacks {key}");
    }
    assert_eq!(c["images"], 500);
    // The three rows: FP32, FP16 without Q/DQ (within FP16 rounding of FP32), INT8 with FP16 float parts.
    assert_eq!((report["target"].as_str(), report["float_type"].as_str()), (Some("tensorrt"), Some("fp16")));
    let fp16 = &report["fp16"];
    assert_eq!(fp16["float_type"], "fp16");
    assert!(fp16["cosine_mean"].as_f64().unwrap() > 0.9999 && fp16["agreement"].as_f64().unwrap() >= 0.99, "{fp16}");
    assert!((fp16["metrics"]["top1"].as_f64().unwrap() - c["fp32"]["top1"].as_f64().unwrap()).abs() <= 0.01);
    assert!(fp16["metrics"]["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(ok.join("model.fp16.onnx").is_file());
    let summary = std::fs::read_to_string(ok.join("summary.csv")).unwrap();
    assert!(summary.starts_with("metric,fp32,fp16,int8_fp16\n"), "{summary}");
    assert_eq!(c["fp32"]["per_class"].as_array().unwrap().len(), 10);
    assert!(c["agreement"].as_f64().unwrap() > 0.9 && c["cosine_mean"].as_f64().unwrap() > 0.99);
    for f in ["summary.csv", "per_class.csv", "junit.xml", "report.html", "model.qdq.onnx", "calibration.hist"] {
        assert!(ok.join(f).is_file(), "{f} missing");
    }

    // The HTML shows the JSON's numbers (exact values in data-value attributes).
    let html = std::fs::read_to_string(ok.join("report.html")).unwrap();
    for (key, value) in [
        ("comparison.int8.top1", &c["int8"]["top1"]),
        ("comparison.fp32.top1", &c["fp32"]["top1"]),
        ("comparison.sqnr_db", &c["sqnr_db"]),
        ("fp16.metrics.top1", &fp16["metrics"]["top1"]),
        ("self_check.fidelity.sqnr_db", &report["self_check"]["fidelity"]["sqnr_db"]),
    ] {
        let marker = format!("data-key=\"{key}\" data-value=\"");
        let start = html.find(&marker).unwrap_or_else(|| panic!("{key} not in report.html")) + marker.len();
        let shown: f64 = html[start..].split('"').next().unwrap().parse().unwrap();
        assert_eq!(shown, value.as_f64().unwrap(), "{key}");
    }
    assert!(html.contains("<svg") && !html.contains("<script"), "self-contained SVG page");
    assert_eq!(report["sensitivity"][0]["divergence"], 0.0125);
    assert_eq!(report["sensitivity"][1]["int8"], false, "a node the model lacks is not INT8");
    assert!(html.contains("data-key=\"sensitivity.0.divergence\" data-value=\"0.0125\""), "sensitivity chart missing");

    // A budget no model can meet: exit 1, naming the gate and both numbers.
    let (code, text) = validate("fmnist_resnet_opset13.onnx", &dir.path().join("neg"), &["--max-top1-drop", "-1"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL max-top1-drop") && text.contains("exceeds the allowed -1 pp"), "{text}");
    let junit = std::fs::read_to_string(dir.path().join("neg/junit.xml")).unwrap();
    assert!(junit.contains("tests=\"1\" failures=\"1\"") && junit.contains("<failure"), "{junit}");

    // A baseline it falls below: exit 1.
    let mut baseline = report.clone();
    baseline["comparison"]["int8"]["top1"] = serde_json::json!(0.999);
    let baseline_path = dir.path().join("baseline.json");
    std::fs::write(&baseline_path, serde_json::to_vec(&baseline).unwrap()).unwrap();
    let (code, text) = validate(
        "fmnist_resnet_opset13.onnx",
        &dir.path().join("base"),
        &["--max-top1-drop", "1.0", "--baseline", baseline_path.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL baseline") && text.contains("99.90"), "{text}");
}

#[test]
fn zero_shot_clip_tower_passes_and_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let protos = test_support::prototypes();
    let (code, text) = validate(
        "fmnist_clip_image_opset17.onnx",
        &dir.path().join("clip"),
        &["--max-top1-drop", "1.0", "--zero-shot", protos.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{text}");
    let report = read_json(&dir.path().join("clip/report.json"));
    // Zero-shot accuracy of the fixture tower is about 90 %; argmax of raw embeddings would be near chance.
    assert!(report["comparison"]["fp32"]["top1"].as_f64().unwrap() > 0.8, "{report}");

    let (code, text) = validate("no_such_model.onnx", &dir.path().join("bad"), &["--max-top1-drop", "1.0"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no_such_model.onnx"), "{text}");
    let (code, text) =
        validate("fmnist_resnet_opset13.onnx", &dir.path().join("bad2"), &["--baseline", "/nonexistent/report.json"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("/nonexistent/report.json"), "{text}");
    // No TensorRT here: the adapter says so instead of pretending.
    let (code, text) = validate("fmnist_resnet_opset13.onnx", &dir.path().join("trt"), &["--engine", "tensorrt"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("trtexec"), "{text}");
    // No GPU here (CI has none): --device cuda is a clear error before any work, not a panic.
    if !Path::new("/dev/nvidiactl").exists() {
        let (code, text) = validate("fmnist_resnet_opset13.onnx", &dir.path().join("gpu"), &["--device", "cuda"]);
        assert_eq!(code, 2, "{text}");
        assert!(text.contains("libcuda") && text.contains("--device cpu") && !text.contains("panicked"), "{text}");
    }
}

/// Fidelity gates: each is its own criterion and JUnit case, exit 1 below its threshold and 0 above; limits
/// outside their range are refused (exit 2) before any work, naming the flag.
#[test]
fn fidelity_gates_pass_above_and_fail_below_their_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok");
    let (code, text) = validate(
        "fmnist_resnet_opset13.onnx",
        &ok,
        &["--min-cosine", "0.99", "--min-sqnr", "20", "--min-agreement", "0.95"],
    );
    assert_eq!(code, 0, "{text}");
    let report = read_json(&ok.join("report.json"));
    let names: Vec<&str> = report["criteria"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["min-cosine", "min-sqnr", "min-agreement"]);
    let junit = std::fs::read_to_string(ok.join("junit.xml")).unwrap();
    assert!(junit.contains("name=\"min-sqnr\"") && !junit.contains("<failure"), "{junit}");

    // The same run held to an SQNR it does not reach: the gate fails, exit 1, the failing case named.
    let strict = dir.path().join("strict");
    let (code, text) = validate("fmnist_resnet_opset13.onnx", &strict, &["--min-cosine", "0.99", "--min-sqnr", "80"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL min-sqnr") && text.contains("PASS min-cosine"), "{text}");
    let junit = std::fs::read_to_string(strict.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<failure").count(), 1, "{junit}");

    for (flag, value) in [("--min-cosine", "1.5"), ("--min-sqnr", "NaN"), ("--min-agreement", "-0.1")] {
        let (code, text) = validate("fmnist_resnet_opset13.onnx", &dir.path().join("bad"), &[flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {text}");
        assert!(text.contains(flag), "{text}");
        assert!(!dir.path().join("bad").join("report.json").exists());
    }
}

/// The scheme and run groups work in validate as in quantize: per-tensor methods from a sensitivity.json
/// (`--method auto`, which validate refused before the flags were defined once), and `--batch-size`.
#[test]
fn validate_takes_method_auto_and_a_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let choices = dir.path().join("choices.json");
    // The shape `sensitivity --choose-methods` writes, for one tensor of the ResNet.
    let chosen = serde_json::json!({"nodes": [], "methods": [
        {"tensor": "/layers/layers.0/Relu_output_0", "method": "mse", "divergence_by_method": [["mse", 0.0]]}
    ]});
    std::fs::write(&choices, chosen.to_string()).unwrap();
    let out = dir.path().join("auto");
    let args = ["--method", "auto", "--sensitivity", choices.to_str().unwrap(), "--batch-size", "7"];
    let (code, text) = validate("fmnist_resnet_opset13.onnx", &out, &[&args[..], &["--max-top1-drop", "5"]].concat());
    assert_eq!(code, 0, "{text}");
    let ranges = read_json(&out.join("ranges.json"));
    let method_of = |name: &str| {
        ranges["tensors"].as_array().unwrap().iter().find(|t| t["name"] == name).map(|t| t["method"].clone())
    };
    assert_eq!(method_of("/layers/layers.0/Relu_output_0"), Some("mse".into()), "{ranges}");
    assert_eq!(method_of("/layers/layers.1/Relu_output_0"), Some("entropy".into()));
    assert_eq!(read_json(&out.join("report.json"))["comparison"]["images"], 500);
}
