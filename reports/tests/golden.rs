//! report.json is versioned (FORMATS.md) and read back as a baseline: this golden file pins its bytes.
//! A deliberate change bumps `REPORT_VERSION`, updates FORMATS.md and re-blesses (`INT8KIT_BLESS=1`).

use reports::{Comparison, Criterion, ModelMetrics, Report, SensitivityRow, TensorPlot};

fn sample() -> Report {
    let metrics = |top1: f64| ModelMetrics {
        top1: Some(top1),
        top5: Some(1.0),
        per_class: vec![(3, 4), (4, 4)],
        images_per_s: 100.5,
    };
    Report {
        format: reports::REPORT_FORMAT.into(),
        version: reports::REPORT_VERSION,
        tools: vec![("int8kit".into(), "0.1.0".into()), ("onnxruntime".into(), "1.32.0".into())],
        model: "m.onnx".into(),
        model_sha256: "ab".repeat(32),
        recipe: serde_json::json!({"layout": "NCHW", "size": [28, 28]}),
        method: "entropy".into(),
        chosen_by: "measurement".into(),
        self_check: serde_json::json!({
            "status": "measured",
            "samples": "64 calibration samples held back from the statistics (calib)",
            "fidelity": {"images": 64, "agreement": 1.0, "cosine_mean": 0.9995, "sqnr_db": 31.5},
            "evaluation": "onnxruntime, graph optimization disabled"
        }),
        weight_rounding: serde_json::json!({
            "asked": "auto",
            "chosen": "nearest",
            "reason": "nearest rounding measured 31.50 dB against GPTQ's 31.20 (4 layers) on the held-back samples",
            "samples": 128,
            "nearest_sqnr_db": 31.5,
            "gptq_sqnr_db": 31.2,
            "layers": [{"node": "conv1", "columns": 27, "patches": 12288, "rounding": "nearest"}]
        }),
        precision: serde_json::json!({"deny": {"nodes": [], "ops": []}, "allow": {"nodes": [], "ops": []}}),
        engine: "ort-cpu".into(),
        calibration_images: 1000,
        calibration_seconds: 1.25,
        validation_folder: "val".into(),
        validation_list_sha256: "cd".repeat(32),
        validation_samples_sha256: None,
        baseline: Some(reports::BaselineRef {
            file: "old/report.json".into(),
            model: "m.onnx".into(),
            model_sha256: "ef".repeat(32),
            across_models: true,
        }),
        classes: vec!["a".into(), "b".into()],
        int8_flop_share: 0.9375,
        target: "tensorrt".into(),
        float_type: "fp16".into(),
        reference: "fp32".into(),
        evaluation: reports::Evaluation {
            fp32: "onnxruntime, graph optimization all".into(),
            int8: "onnxruntime, graph optimization disabled".into(),
            fp16: "onnxruntime, graph optimization disabled".into(),
        },
        comparison: Comparison {
            images: 8,
            fp32: metrics(0.875),
            int8: metrics(0.75),
            agreement: 0.875,
            cosine_mean: 0.999,
            sqnr_db: 31.5,
        },
        fp16: Some(reports::FloatRow {
            float_type: "fp16".into(),
            metrics: metrics(0.875),
            agreement: 1.0,
            cosine_mean: 0.999999,
            sqnr_db: f64::INFINITY,
        }),
        criteria: vec![Criterion {
            name: "max-top1-drop".into(),
            passed: false,
            measured: 12.5,
            limit: 1.0,
            message: "drop 12.50 pp exceeds the allowed 1 pp".into(),
            size: None,
        }],
        passed: false,
        tensors: vec![TensorPlot {
            name: "input".into(),
            quantized: true,
            amax: 2.5,
            max_abs: 2.5,
            clipped: 0.0,
            plot_range: 2.5,
            counts: vec![1, 0, 3],
        }],
        sensitivity: vec![SensitivityRow {
            node: "/head/Gemm".into(),
            op: "Gemm".into(),
            flop_share: 0.0625,
            divergence: 0.0125,
            top1_delta_pp: Some(-0.5),
            int8: true,
        }],
        sizes: Vec::new(),
        shapes: Vec::new(),
        shards: Vec::new(),
    }
}

/// A report merged from two validation shards: each shard's speeds kept.
#[test]
fn a_merged_report_keeps_each_shards_speeds() {
    let mut r = sample();
    r.shards = vec![
        reports::ShardSpeed { index: 1, images: 3, fp32_images_per_s: 100.0, int8_images_per_s: 150.0 },
        reports::ShardSpeed { index: 2, images: 2, fp32_images_per_s: 90.0, int8_images_per_s: 140.0 },
    ];
    let bytes = r.to_json().unwrap();
    let golden = test_support::golden(env!("CARGO_MANIFEST_DIR"), "report_merged.json");
    test_support::assert_golden(&golden, &bytes);
    assert_eq!(Report::read(&golden).unwrap(), r);
    assert!(!String::from_utf8(sample().to_json().unwrap()).unwrap().contains("\"shards\""), "absent for one process");
}

#[test]
fn report_json_matches_the_golden_file_and_reads_back() {
    let bytes = sample().to_json().unwrap();
    let golden = test_support::golden(env!("CARGO_MANIFEST_DIR"), "report.json");
    test_support::assert_golden(&golden, &bytes);
    assert_eq!(Report::read(&golden).unwrap(), sample());
}

#[test]
fn class_names_that_look_like_formulas_are_neutralised_in_csv() {
    let mut report = sample();
    report.classes = vec!["=HYPERLINK(\"http://x\",\"y\")".into(), "@SUM(A1)".into()];
    let csv = report.per_class_csv().unwrap();
    assert!(csv.contains("'=HYPERLINK") && csv.contains("'@SUM(A1)"), "{csv}");
    assert!(!csv.lines().any(|l| l.split(',').nth(1).is_some_and(|c| c.starts_with('=') || c.starts_with("\"="))));
}

/// The same run on an unlabelled folder: no Top-1/Top-5 (null), no per-class counts, fidelity criteria only.
fn unlabelled() -> Report {
    let mut r = sample();
    for m in [&mut r.comparison.fp32, &mut r.comparison.int8] {
        *m = ModelMetrics { top1: None, top5: None, per_class: Vec::new(), images_per_s: m.images_per_s };
    }
    if let Some(h) = &mut r.fp16 {
        h.metrics = ModelMetrics { top1: None, top5: None, per_class: Vec::new(), images_per_s: 90.0 };
    }
    r.classes.clear();
    r.baseline = None;
    r.criteria = vec![Criterion {
        name: "min-cosine".into(),
        passed: true,
        measured: 0.999,
        limit: 0.99,
        message: "INT8 output cosine (mean) against FP32 0.999000: meets the minimum 0.99".into(),
        size: None,
    }];
    r.passed = true;
    r.sensitivity[0].top1_delta_pp = None;
    r
}

#[test]
fn an_unlabelled_report_writes_null_accuracy_and_reads_back() {
    let r = unlabelled();
    let bytes = r.to_json().unwrap();
    let golden = test_support::golden(env!("CARGO_MANIFEST_DIR"), "report_unlabelled.json");
    test_support::assert_golden(&golden, &bytes);
    assert_eq!(Report::read(&golden).unwrap(), r);
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(json["comparison"]["int8"]["top1"].is_null() && json["fp16"]["metrics"]["top5"].is_null());
    // summary.csv leaves the accuracy cells empty; the HTML says why instead of showing a number.
    let csv = r.summary_csv().unwrap();
    assert!(csv.lines().any(|l| l == "top1,,,"), "{csv}");
    let html = reports::render_html(&r);
    assert!(html.contains("no labels") && !html.contains("data-key=\"comparison.int8.top1\""));
    assert!(!html.contains("Per-class Top-1 change"));
}

#[test]
fn a_version_3_report_still_reads_as_a_baseline() {
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/report.v3.json");
    let r = Report::read(&old).unwrap();
    assert_eq!((r.version, r.comparison.int8.top1), (3, Some(0.75)));
    assert_eq!(r.evaluation, reports::Evaluation::default(), "a report before version 5 has it unrecorded");
}

#[test]
fn a_version_4_report_reads_with_its_evaluation_unrecorded() {
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/report.v4.json");
    let r = Report::read(&old).unwrap();
    assert_eq!(r.version, 4);
    assert_eq!(r.evaluation.int8, "unrecorded");
}

/// A run over a recipe of two sizes (version 7): each size's rows, each criterion per size, the worst size.
fn two_sizes() -> Report {
    let mut r = sample();
    let at = |size: [u32; 2], cosine: f64| reports::SizeRow {
        size,
        comparison: reports::Comparison { cosine_mean: cosine, ..r.comparison.clone() },
        fp16: r.fp16.clone(),
        calibrated: size == [224, 224],
    };
    r.sizes = vec![at([224, 224], 0.9995), at([448, 448], 0.998)];
    r.criteria = [([224, 224], true, 0.9995), ([448, 448], false, 0.998)]
        .into_iter()
        .map(|(size, passed, measured)| Criterion {
            name: "min-cosine".into(),
            passed,
            measured,
            limit: 0.999,
            message: format!("at {}x{}: cosine {measured}", size[0], size[1]),
            size: Some(size),
        })
        .collect();
    r
}

#[test]
fn a_report_of_several_sizes_has_each_sizes_rows_in_every_file() {
    let r = two_sizes();
    let golden = test_support::golden(env!("CARGO_MANIFEST_DIR"), "report_sizes.json");
    test_support::assert_golden(&golden, &r.to_json().unwrap());
    assert_eq!(Report::read(&golden).unwrap(), r);
    assert_eq!(r.worst_size(), Some([448, 448]));
    let junit = r.junit_xml();
    assert!(junit.contains("name=\"min-cosine@224x224\"") && junit.contains("name=\"min-cosine@448x448\"><failure"));
    let csv = r.summary_csv().unwrap();
    assert!(csv.starts_with("size,metric,fp32,fp16,int8_fp16\nall,images,"), "{csv}");
    assert!(csv.lines().any(|l| l == "448x448,cosine_mean,,0.999999,0.998"), "{csv}");
    let html = reports::render_html(&r);
    assert!(html.contains("Worst size: <b>448x448</b>") && html.contains("min-cosine@448x448"));
    // One size: none of it.
    let one: serde_json::Value = serde_json::from_slice(&sample().to_json().unwrap()).unwrap();
    assert!(one.get("sizes").is_none() && one["criteria"][0].get("size").is_none(), "{one}");
    assert_eq!(sample().worst_size(), None);
}

#[test]
fn a_version_6_report_still_reads() {
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/report.v6.json");
    let r = Report::read(&old).unwrap();
    assert_eq!((r.version, r.sizes.len()), (6, 0));
}

/// A model given in FP16: its row is the model as given, named so in every file (never "FP32"); a report
/// written before `reference` existed reads as FP32.
#[test]
fn a_source_that_computes_in_fp16_is_not_called_fp32() {
    let r = Report { reference: "fp16".into(), ..sample() };
    assert_eq!(r.reference_label(), "source (FP16)");
    let csv = r.summary_csv().unwrap();
    assert!(csv.starts_with("metric,source_fp16,fp16,int8_fp16\n"), "{csv}");
    let per_class = r.per_class_csv().unwrap();
    assert!(
        per_class.starts_with("class,name,images,source_fp16_correct,int8_correct,source_fp16_accuracy,"),
        "{per_class}"
    );
    let html = reports::render_html(&r);
    assert!(html.contains("<th>source (FP16)</th>") && html.contains("agreement with source (FP16)"), "{html}");
    assert!(!html.contains(">FP32<") && !html.contains("with FP32"), "{html}");
    let mut json: serde_json::Value = serde_json::from_slice(&sample().to_json().unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("reference");
    assert_eq!(serde_json::from_value::<Report>(json).unwrap().reference, "fp32");
}
