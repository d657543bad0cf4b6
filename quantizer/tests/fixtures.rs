//! End to end on the fixtures: calibrate -> analyze -> the artifacts.

use analyze::scales::Method;
use calibrate::{calibrate, CalibrateOptions};
use histograms::HistFile;
use placement::{PrecisionFile, Selection};
use quantizer::{QuantizeError, Quantizer, Scheme};
use test_support::{calib_dir, feed, model};

fn hist(name: &str) -> HistFile {
    let options = CalibrateOptions { limit: Some(300), ..Default::default() };
    calibrate(&model(name), &calib_dir(), &feed(), &options, &mut |_, _| {}).unwrap().0
}

fn options_for(method: Method, precision: PrecisionFile) -> Scheme {
    Scheme::new(method, precision, "test")
}

fn quantizer(name: &str, h: &HistFile) -> Quantizer {
    Quantizer::load(&model(name), h.clone()).unwrap()
}

/// The error of building `scheme` from `name`'s statistics `h`.
fn refusal(name: &str, h: &HistFile, scheme: &Scheme) -> String {
    let err: QuantizeError = match Quantizer::load(&model(name), h.clone()) {
        Err(e) => e,
        Ok(q) => q.artifacts(scheme).err().expect("built"),
    };
    err.to_string()
}

#[test]
fn a_denied_node_gets_no_qdq_and_artifacts_are_byte_identical_on_rerun() {
    let name = "fmnist_vit_opset17.onnx";
    let h = hist(name);
    let precision = PrecisionFile {
        deny: Selection { nodes: vec!["/blocks.1/fc*/MatMul".into()], ops: vec!["Gemm".into()] },
        allow: Selection::default(),
        ..Default::default()
    };
    let q = quantizer(name, &h);
    let a = q.artifacts(&options_for(Method::Entropy, precision.clone())).unwrap();
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
    q.artifacts(&options_for(Method::Entropy, precision)).unwrap().write(d2.path()).unwrap();
    for f in ["model.qdq.onnx", "ranges.csv", "ranges.json"] {
        assert_eq!(std::fs::read(d1.path().join(f)).unwrap(), std::fs::read(d2.path().join(f)).unwrap(), "{f} differs");
    }
}

#[test]
fn the_cache_is_written_only_from_statistics_of_every_activation() {
    let name = "fmnist_vit_opset17.onnx";
    // Unsmoothed: a smoothed model's cache is omitted for that reason first.
    let options = CalibrateOptions { limit: Some(50), smooth: calibrate::Smooth::Off, ..Default::default() };
    let (some, _) = calibrate(&model(name), &calib_dir(), &feed(), &options, &mut |_, _| {}).unwrap();
    let q = quantizer(name, &some);
    let a = q.artifacts(&options_for(Method::Entropy, PrecisionFile::default())).unwrap();
    let quantizer::Cache::Omitted { reason } = &a.cache else { panic!("a cache from {} tensors", some.tensors.len()) };
    assert!(reason.contains("--tensors all") && reason.contains("of the model's 201 float activations"), "{reason}");
    let dir = tempfile::tempdir().unwrap();
    a.write(dir.path()).unwrap();
    assert!(!dir.path().join("calibration.cache").exists());

    let options = CalibrateOptions { limit: Some(50), selection: histograms::Selection::All, ..Default::default() };
    let (all, _) = calibrate(&model(name), &calib_dir(), &feed(), &options, &mut |_, _| {}).unwrap();
    let q = quantizer(name, &all);
    let a = q.artifacts(&options_for(Method::Entropy, PrecisionFile::default())).unwrap();
    let quantizer::Cache::Written(text) = &a.cache else { panic!("no cache from every activation") };
    let cache = quantizer::cache::parse_cache(text, std::path::Path::new("c")).unwrap();
    assert_eq!(cache.entries.len(), 201);
    for t in &all.tensors {
        assert!(cache.entries.iter().any(|(n, _)| *n == t.name), "{} has no range in the cache", t.name);
    }
}

#[test]
fn a_hist_from_another_model_is_refused() {
    let h = hist("fmnist_vit_opset17.onnx");
    let err = refusal("fmnist_vit_opset13.onnx", &h, &options_for(Method::Max, PrecisionFile::default()));
    assert!(err.to_string().contains("re-run calibrate"), "{err}");
}

#[test]
fn allowing_a_node_without_statistics_is_refused_by_name() {
    let name = "fmnist_vit_opset17.onnx";
    let options =
        CalibrateOptions { limit: Some(50), selection: histograms::Selection::Quantizable, ..Default::default() };
    let (h, _) = calibrate(&model(name), &calib_dir(), &feed(), &options, &mut |_, _| {}).unwrap();
    let allow = PrecisionFile { allow: Selection { nodes: vec![], ops: vec!["Softmax".into()] }, ..Default::default() };
    let err = refusal(name, &h, &options_for(Method::Entropy, allow));
    assert!(err.contains("/blocks.0/Softmax") && err.contains("--tensors all"), "{err}");
    // The default lists work from the quantizable subset.
    assert!(quantizer(name, &h).artifacts(&options_for(Method::Entropy, PrecisionFile::default())).is_ok());
}

#[test]
fn a_list_entry_that_matches_nothing_is_an_error_naming_the_closest_name() {
    let name = "fmnist_vit_opset17.onnx";
    let h = hist(name);
    let deny = |nodes: &[&str], ops: &[&str]| PrecisionFile {
        deny: Selection {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            ops: ops.iter().map(|s| s.to_string()).collect(),
        },
        allow: Selection::default(),
        ..Default::default()
    };
    let err = refusal(name, &h, &options_for(Method::Entropy, deny(&[], &["Matmul"])));
    assert!(err.contains("deny.ops entry 'Matmul' matches nothing") && err.contains("did you mean 'MatMul'"), "{err}");
    let err = refusal(name, &h, &options_for(Method::Entropy, deny(&["/blocks.0/fc1/MatMull"], &[])));
    assert!(err.contains("did you mean '/blocks.0/fc1/MatMul'"), "{err}");
    let err = refusal(name, &h, &options_for(Method::Entropy, deny(&["/no/such/*"], &[])));
    assert!(err.contains("'/no/such/*' matches nothing"), "{err}");
    // Globs that match, and op types the model has, are fine.
    assert!(quantizer(name, &h).artifacts(&options_for(Method::Entropy, deny(&["/blocks.1/*"], &["Gemm"]))).is_ok());
}

/// Attention probabilities (Softmax outputs, and their rearranged copies the attention MatMul reads) take max
/// calibration whatever the method: a search clips the large probabilities that are the attention.
#[test]
fn attention_probabilities_take_max_calibration_and_are_quantized_for_tensorrt() {
    let name = "fmnist_vit_opset17.onnx";
    let h = hist(name);
    let q = quantizer(name, &h);
    let a = q.artifacts(&options_for(Method::Entropy, PrecisionFile::default())).unwrap();
    let probabilities: Vec<_> = a.ranges.tensors.iter().filter(|t| t.op.as_deref() == Some("Softmax")).collect();
    assert!(!probabilities.is_empty());
    for t in &probabilities {
        assert_eq!(t.method, "max", "{}", t.name);
        assert_eq!(t.amax, t.amax_by_method.iter().find(|(m, _)| m == "max").unwrap().1, "{}", t.name);
    }
    // The attention MatMul reads them through its Q/DQ pair (TensorRT target default).
    assert!(probabilities.iter().all(|t| t.quantized), "Softmax outputs feed INT8 attention MatMuls");
    let other = a.ranges.tensors.iter().find(|t| t.op.as_deref() == Some("LayerNormalization")).unwrap();
    assert_eq!(other.method, "entropy");
}

#[test]
fn a_qdq_model_with_a_lint_error_is_never_written() {
    let name = "fmnist_resnet_opset13.onnx";
    let q = quantizer(name, &hist(name));
    let mut a = q.artifacts(&options_for(Method::Entropy, PrecisionFile::default())).unwrap();
    // A weight scale of 0, as FP16 storage made of a tiny channel's amax/127 before scales fit their type.
    let g = a.qdq.graph.mut_or_insert_default();
    let dq = g.node.iter().find(|n| n.op_type == "DequantizeLinear" && n.input[0].ends_with("_quantized")).unwrap();
    let (node, scale) = (dq.name.clone(), dq.input[1].clone());
    let t = g.initializer.iter_mut().find(|t| t.name == scale).unwrap();
    // FP16 float parts (the default): FP16 scales.
    assert_eq!(t.data_type, graph::proto::tensor_proto::DataType::FLOAT16 as i32);
    t.raw_data[..2].fill(0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let err = a.write(&out).unwrap_err().to_string();
    assert!(err.contains("nothing was written") && err.contains(&format!("error[scale] {node}")), "{err}");
    assert!(!out.exists(), "a refused artifact set left {out:?} behind");
}
