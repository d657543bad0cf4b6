//! Scales that fit their type. A CNN built in the test whose first Conv has an all-zero output channel, one of
//! max |w| 1e-6 (amax/127 is 0 once stored as FP16) and two whose scales would be FP16 subnormals (one of them
//! amplified back by an unfolded BatchNormalization) is quantized with the defaults (TensorRT placement, FP16
//! float parts): every scale is a normal FP16 value, `int8kit lint` finds nothing, and the written model keeps
//! the output within cosine 0.999 of FP32 on samples the calibration never saw, as validate measures it (with
//! the FP16 rows computed as the graph says).

use crate::common;

use common::{int8kit, read_json, text, validate_samples};
use test_support::conv_models::{tiny_channel_cnn, write_samples};

#[test]
fn zero_and_tiny_weight_channels_get_normal_fp16_scales_lint_clean_and_keep_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_channel_cnn(dir.path());
    let calib = write_samples(&dir.path().join("calib"), 0, 32);
    let val = write_samples(&dir.path().join("val"), 500, 48);
    let out = dir.path().join("v");
    // FP16 float parts forced: the auto search may keep FP32 for a model this small.
    let o = validate_samples(&model, &calib, &val, &["--min-cosine", "0.999", "--float-type", "fp16"], &out);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["float_type"], "fp16");
    assert_eq!(report["evaluation"]["int8"], "onnxruntime, graph optimization disabled", "{}", report["evaluation"]);
    assert_eq!(report["evaluation"]["fp32"], "onnxruntime, graph optimization all");
    let cosine = report["comparison"]["cosine_mean"].as_f64().unwrap();
    eprintln!("INT8 cosine {cosine}, SQNR {} dB", report["comparison"]["sqnr_db"]);
    assert!(cosine >= 0.999, "INT8 cosine {cosine}");

    // Every Q/DQ scale of the written model is a normal FP16 value.
    let written = graph::Model::load(&out.join("model.qdq.onnx")).unwrap();
    let g = &written.proto.graph;
    let mut checked = 0;
    for n in g.node.iter().filter(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear")) {
        let t = g.initializer.iter().find(|t| t.name == n.input[1]).unwrap();
        assert_eq!(t.data_type, graph::proto::tensor_proto::DataType::FLOAT16 as i32, "{}", t.name);
        for bits in t.raw_data.chunks(2) {
            let h = half::f16::from_le_bytes([bits[0], bits[1]]);
            assert!(h.is_normal() && h.is_sign_positive(), "{} holds {h}", t.name);
            checked += 1;
        }
    }
    // The first Conv's 8 per-channel weight scales and its input's (the later 8-channel Conv is too narrow for
    // TensorRT's INT8 kernels and stays float).
    assert!(checked > 8, "per-channel weight scales checked: {checked}");
    let o = int8kit("lint").arg(out.join("model.qdq.onnx")).arg("--strict").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
