//! End to end on the fixtures: calibrate -> analyze -> run the Q/DQ model in ONNX Runtime.

use std::path::{Path, PathBuf};

use analyze::evaluate::{evaluate, load_prototypes};
use analyze::precision::{PrecisionFile, Selection};
use analyze::scales::Method;
use analyze::{analyze, AnalyzeOptions};
use calibrate::{calibrate, CalibrateOptions, HistFile};
use datasets::{Dataset, Recipe};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn recipe() -> Recipe {
    Recipe::load(&root().join("fixtures/fmnist.toml")).unwrap()
}

fn model(name: &str) -> PathBuf {
    root().join("fixtures/models").join(name)
}

fn hist(name: &str) -> HistFile {
    let options = CalibrateOptions { limit: Some(300), ..Default::default() };
    calibrate(&model(name), &root().join("fixtures/fmnist/calib"), &recipe(), &options, &mut |_, _| {}).unwrap().0
}

fn options_for(method: Method, precision: PrecisionFile) -> AnalyzeOptions {
    AnalyzeOptions {
        method,
        precision,
        precision_origin: "test".into(),
        trt_version: "10.3.0".into(),
        per_tensor: Default::default(),
    }
}

/// Top-1 on a seeded subset of the validation images.
fn top1(path: &Path, images: usize, prototypes: Option<&[Vec<f32>]>) -> f64 {
    let ds = Dataset::labelled(&root().join("fixtures/fmnist/val"), None).unwrap().limit(images, 1);
    evaluate(path, &ds, &recipe(), prototypes).unwrap().top1
}

#[test]
fn qdq_models_run_in_onnx_runtime_and_keep_fp32_accuracy() {
    let protos = load_prototypes(&root().join("fixtures/models/fmnist_clip_text_prototypes.npy")).unwrap();
    for name in [
        "fmnist_vit_opset17.onnx",
        "fmnist_vit_opset18.onnx",
        "fmnist_resnet_opset13.onnx",
        "fmnist_clip_image_opset17.onnx",
    ] {
        let h = hist(name);
        let a = analyze(&model(name), &h, &options_for(Method::Entropy, PrecisionFile::default())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        a.write(dir.path()).unwrap();
        let qdq_path = dir.path().join("model.qdq.onnx");
        let qdq = graph::Model::load(&qdq_path).unwrap();
        let original = graph::Model::load(&model(name)).unwrap();
        let io = |m: &graph::Model| {
            (
                m.feed_inputs().iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
                m.proto.graph.output.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(io(&qdq), io(&original), "{name}: inputs/outputs changed");
        assert!(!qdq.has_external_data, "{name}: written self-contained");
        let p = name.contains("clip").then_some(protos.as_slice());
        let (fp32, int8) = (top1(&model(name), 1000, p), top1(&qdq_path, 1000, p));
        eprintln!("{name}: FP32 {fp32:.4}, INT8 {int8:.4}, INT8 FLOP share {:.3}", a.ranges.int8_flop_share);
        assert!((fp32 - int8).abs() <= 0.01, "{name}: FP32 {fp32} vs INT8 {int8}");
        assert!(a.ranges.int8_flop_share > 0.8, "{name}");
    }
}

#[test]
fn a_denied_node_gets_no_qdq_and_artifacts_are_byte_identical_on_rerun() {
    let name = "fmnist_vit_opset17.onnx";
    let h = hist(name);
    let precision = PrecisionFile {
        deny: Selection { nodes: vec!["/blocks.1/fc*/MatMul".into()], ops: vec!["Gemm".into()] },
        allow: Selection::default(),
    };
    let a = analyze(&model(name), &h, &options_for(Method::Entropy, precision.clone())).unwrap();
    let nodes = &a.qdq.graph.node;
    let is_dq_output = |t: &str| nodes.iter().any(|n| n.op_type == "DequantizeLinear" && n.output[0] == t);
    for denied in ["/blocks.1/fc1/MatMul", "/blocks.1/fc2/MatMul", "/head/Gemm"] {
        let n = nodes.iter().find(|n| n.name == denied).unwrap();
        assert!(n.input.iter().all(|i| !is_dq_output(i)), "{denied} still reads a DequantizeLinear output");
    }
    let kept = nodes.iter().find(|n| n.name == "/blocks.0/fc1/MatMul").unwrap();
    assert!(kept.input.iter().all(|i| is_dq_output(i)), "an allowed MatMul lost its Q/DQ");
    // Precision files round-trip through TOML unchanged.
    assert_eq!(toml::from_str::<PrecisionFile>(&precision.to_toml()).unwrap(), precision);

    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    a.write(d1.path()).unwrap();
    analyze(&model(name), &h, &options_for(Method::Entropy, precision)).unwrap().write(d2.path()).unwrap();
    for f in ["model.qdq.onnx", "calibration.cache", "ranges.csv", "ranges.json"] {
        assert_eq!(std::fs::read(d1.path().join(f)).unwrap(), std::fs::read(d2.path().join(f)).unwrap(), "{f} differs");
    }
}

#[test]
fn a_hist_from_another_model_is_refused() {
    let h = hist("fmnist_vit_opset17.onnx");
    let err = analyze(&model("fmnist_vit_opset13.onnx"), &h, &options_for(Method::Max, PrecisionFile::default()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("re-run calibrate"), "{err}");
}

#[test]
fn allowing_a_node_without_statistics_is_refused_by_name() {
    let name = "fmnist_vit_opset17.onnx";
    let options =
        CalibrateOptions { limit: Some(50), selection: calibrate::Selection::Quantizable, ..Default::default() };
    let (h, _) =
        calibrate(&model(name), &root().join("fixtures/fmnist/calib"), &recipe(), &options, &mut |_, _| {}).unwrap();
    let allow = PrecisionFile { allow: Selection { nodes: vec![], ops: vec!["Softmax".into()] }, ..Default::default() };
    let err = analyze(&model(name), &h, &options_for(Method::Entropy, allow)).err().unwrap().to_string();
    assert!(err.contains("/blocks.0/Softmax") && err.contains("--tensors all"), "{err}");
    // The default lists work from the quantizable subset.
    assert!(analyze(&model(name), &h, &options_for(Method::Entropy, PrecisionFile::default())).is_ok());
}

/// The ResNet's .hist with the input of its fourth INT8 Conv given statistics of tiny values, so that its
/// scale clips almost everything; returns the .hist and that node's name.
fn planted_resnet_hist() -> (HistFile, String) {
    let name = "fmnist_resnet_opset13.onnx";
    let mut h = hist(name);
    let m = graph::Model::load(&model(name)).unwrap();
    let decisions = analyze::precision::decide(&m.proto.graph, &PrecisionFile::default(), "test").unwrap();
    let planted = decisions.iter().filter(|d| d.int8 && d.op == "Conv").nth(3).unwrap().node.clone();
    let node = m.proto.graph.node.iter().find(|n| n.name == planted).unwrap();
    let mut tiny = calibrate::histogram::TensorStats::default();
    tiny.add(&[0.001, -0.002, 0.0005]);
    h.tensors.iter_mut().find(|t| t.name == node.input[0]).unwrap().stats = tiny;
    (h, planted)
}

#[test]
fn autoprecision_denies_the_planted_node_and_its_list_round_trips() {
    let name = "fmnist_resnet_opset13.onnx";
    let (h, planted) = planted_resnet_hist();
    let val = Dataset::labelled(&root().join("fixtures/fmnist/val"), None).unwrap().limit(200, 3);
    let auto = analyze::sensitivity::auto_precision(
        &model(name),
        &h,
        &val,
        &recipe(),
        None,
        Method::Entropy,
        &PrecisionFile::default(),
        1.0,
        Default::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(auto.met, "{:?}", auto.search);
    assert_eq!(auto.denied.first(), Some(&planted), "{:?}", auto.denied);
    assert!(auto.int8_flop_share > 0.8, "{}", auto.int8_flop_share);
    // The written list is what `analyze --precision` reads, unchanged, and it keeps the node float.
    let text = auto.precision.to_toml();
    let back: PrecisionFile = toml::from_str(&text).unwrap();
    assert_eq!(back, auto.precision);
    let a = analyze(&model(name), &h, &options_for(Method::Entropy, back)).unwrap();
    let node = a.qdq.graph.node.iter().find(|n| n.name == planted).unwrap();
    assert!(!a.qdq.graph.node.iter().any(|n| n.op_type == "DequantizeLinear" && node.input.contains(&n.output[0])));
}

#[test]
fn a_node_planted_with_a_wrong_scale_is_ranked_most_sensitive() {
    let name = "fmnist_resnet_opset13.onnx";
    let (h, planted) = planted_resnet_hist();
    let val = Dataset::labelled(&root().join("fixtures/fmnist/val"), None).unwrap().limit(200, 3);
    let report = analyze::sensitivity::sensitivity(
        &model(name),
        &h,
        &val,
        &recipe(),
        None,
        Method::Entropy,
        &PrecisionFile::default(),
        Default::default(),
        true,
        &mut |_, _| {},
    )
    .unwrap();
    // A method was chosen for every quantized tensor but the graph input (always max).
    let a = analyze(&model(name), &h, &options_for(Method::Entropy, PrecisionFile::default())).unwrap();
    let quantized = a.ranges.tensors.iter().filter(|t| t.quantized && t.op.is_some()).count();
    assert_eq!(report.methods.len(), quantized);
    let planted_input = &a.qdq.graph.node.iter().find(|n| n.name == planted).unwrap().input[0];
    let choice = report.methods.iter().find(|m| planted_input.starts_with(&m.tensor)).unwrap();
    assert!(choice.divergence_by_method.iter().all(|(_, d)| d.is_finite()), "{choice:?}");
    assert_eq!(
        report.nodes[0].node,
        planted,
        "ranking: {:?}",
        report.nodes.iter().map(|n| &n.node).collect::<Vec<_>>()
    );
    assert!(report.nodes[0].alone_int8.top1_delta_pp < -5.0, "{:?}", report.nodes[0]);
    // Keeping the planted node float recovers most of the loss of the full INT8 model.
    assert!(
        report.nodes[0].alone_float.top1 > report.int8.top1,
        "{:?} vs {:?}",
        report.nodes[0].alone_float,
        report.int8
    );
    let flops: f64 = report.nodes.iter().map(|n| n.flop_share).sum();
    assert!((flops - 1.0).abs() < 1e-6, "FLOP shares sum to {flops}");
}
