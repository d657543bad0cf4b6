//! `int8kit lint`: int8kit's TensorRT artifacts lint clean; planted violations are found, named and turn the
//! exit status to 1.

use crate::common;

use common::{int8kit, on_fixtures, resnet, text};
use graph::proto::tensor_proto::DataType;
use test_support::model;

fn lint(path: &std::path::Path, extra: &[&str]) -> std::process::Output {
    int8kit("lint").arg(path).args(extra).output().unwrap()
}

#[test]
fn our_artifacts_lint_clean_and_planted_violations_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    for (name, m) in [("resnet", resnet()), ("vit", model("fmnist_vit_opset17.onnx"))] {
        let out = dir.path().join(name);
        let o = on_fixtures("quantize", &m, &out, &["--limit", "100", "--quiet"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = lint(&out.join("model.qdq.onnx"), &["--strict"]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o));
        assert!(text(&o).contains("0 error(s), 0 warning(s)"), "{}", text(&o));
    }

    // The ONNX Runtime profile leaves the projection shortcuts unquantized: warnings, exit 1 only with --strict.
    let ort = dir.path().join("ort");
    let o = on_fixtures("quantize", &resnet(), &ort, &["--limit", "100", "--quiet", "--target", "onnxruntime"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = lint(&ort.join("model.qdq.onnx"), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("warning[residual-input] /layers/layers.2/Add"), "{}", text(&o));
    assert_eq!(lint(&ort.join("model.qdq.onnx"), &["--strict"]).status.code(), Some(1));

    // Planted: a non-zero activation zero point and a weight scale along the wrong axis (errors), and a
    // Conv whose weight lost its Q/DQ and an FP16 subnormal scale (warnings).
    let mut m = graph::Model::load(&dir.path().join("resnet/model.qdq.onnx")).unwrap();
    let g = m.proto.graph.mut_or_insert_default();
    let q = g.node.iter().find(|n| n.op_type == "QuantizeLinear").unwrap().clone();
    let zp = g.initializer.iter_mut().find(|t| t.name == q.input[2]).unwrap();
    zp.raw_data = vec![3];
    let weight_dq = g
        .node
        .iter_mut()
        .filter(|n| n.op_type == "DequantizeLinear")
        .find(|n| n.attribute.iter().any(|a| a.name == "axis"))
        .unwrap();
    weight_dq.attribute.iter_mut().find(|a| a.name == "axis").unwrap().i = 1;
    let planted_axis = weight_dq.output[0].clone();
    // ...and an FP16 subnormal among that weight's scales (warning), as a tiny channel's amax/127 gives.
    let subnormal_scale = weight_dq.input[1].clone();
    let s = g.initializer.iter_mut().find(|t| t.name == subnormal_scale).unwrap();
    assert_eq!(s.data_type, DataType::FLOAT16 as i32);
    s.raw_data[..2].copy_from_slice(&half::f16::from_f32(1e-6).to_le_bytes());
    let conv = g.node.iter().position(|n| n.op_type == "Conv" && n.input[1] != planted_axis).unwrap();
    let float_weight = {
        let dq_out = g.node[conv].input[1].clone();
        let dq = g.node.iter().find(|n| n.output[0] == dq_out).unwrap().clone();
        let int8 = g.initializer.iter().find(|t| t.name == dq.input[0]).unwrap().clone();
        let mut w = int8.clone();
        w.name = "planted_float_weight".into();
        w.data_type = DataType::FLOAT as i32;
        w.raw_data = int8.raw_data.iter().flat_map(|&b| (b as i8 as f32).to_le_bytes()).collect();
        w
    };
    g.node[conv].input[1] = float_weight.name.clone();
    g.initializer.push(float_weight);
    // ...and an ONNX Runtime contrib op (warning).
    let relu = g.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    relu.domain = "com.microsoft".into();
    let planted = dir.path().join("planted.onnx");
    std::fs::write(&planted, m.to_bytes().unwrap()).unwrap();
    let o = lint(&planted, &["--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let findings: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rules: Vec<&str> = findings.as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    for rule in ["zero-point", "weight-axis", "partial-gemm", "scale-subnormal", "non-onnx-op"] {
        assert!(rules.contains(&rule), "{rule} not in {rules:?}");
    }
    assert_eq!(findings[0]["severity"], "error", "errors come first");
}

/// An empty or 2-byte file is not a model that passes, and a QuantizeLinear with no inputs is a finding,
/// never a panic.
#[test]
fn empty_files_and_malformed_nodes_are_errors_not_passes_or_panics() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("empty.onnx", &b""[..]), ("two.onnx", &b"\x08\x07"[..])] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let o = lint(&path, &["--strict"]);
        common::refused(&o, "holds no graph");
    }
    let mut m = graph::Model::load(&resnet()).unwrap();
    let g = m.proto.graph.mut_or_insert_default();
    let mut q = graph::proto::NodeProto::new();
    q.op_type = "QuantizeLinear".into();
    q.name = "bare_q".into();
    q.output.push("bare_q_out".into());
    g.node.push(q);
    let mut dq = graph::proto::NodeProto::new();
    dq.op_type = "DequantizeLinear".into();
    dq.name = "bare_dq".into();
    g.node.push(dq);
    let path = dir.path().join("bare.onnx");
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    let o = lint(&path, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("bare_q: QuantizeLinear has no scale input"), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
}
