//! SmoothQuant smoothing (`calibrate --smooth`) on the fixture ViTs: it leaves the FP32 function unchanged,
//! it repairs an outlier channel planted into a LayerNorm, and a smoothed .hist gives the same artifacts
//! whatever the batch size.

use std::path::{Path, PathBuf};

use analyze::scales::Method;
use calibrate::{calibrate, CalibrateOptions, Smooth};
use datasets::{BatchStream, StreamOptions};
use evaluate::compare::{fidelity, ort_model, Fidelity};
use histograms::HistFile;
use placement::PrecisionFile;
use quantizer::{Quantizer, Scheme};
use test_support::{calib_dir, feed, model, val_subset};

/// Statistics over 200 calibration images, smoothed with `smooth` first when given.
fn hist_of(path: &Path, smooth: Option<f32>) -> HistFile {
    let smooth = smooth.map_or(Smooth::Off, Smooth::Alpha);
    let options = CalibrateOptions { limit: Some(200), smooth, ..Default::default() };
    calibrate(path, &calib_dir(), &feed(), &options, &mut |_, _| {}).unwrap().0
}

/// The model's outputs on 64 validation images, batch by batch.
fn outputs(path: &Path) -> Vec<Vec<f32>> {
    let mut m = ort_model(path, &feed(), Default::default()).unwrap();
    let images = val_subset(64, 5);
    BatchStream::new(&images, &feed(), StreamOptions { batch_size: 32, ..Default::default() })
        .map(|b| m.run(&b.unwrap()).unwrap())
        .collect()
}

/// INT8 (calibrated with `smooth` or not) against FP32 on 500 held-out images.
fn int8_fidelity(fp32: &Path, smooth: Option<f32>, dir: &Path) -> Fidelity {
    let options = Scheme::new(Method::Entropy, PrecisionFile::default(), "test");
    let q = Quantizer::load(fp32, hist_of(fp32, smooth)).unwrap();
    let a = q.artifacts(&options).unwrap();
    assert_eq!(a.ranges.smoothing.is_some(), smooth.is_some());
    let out = dir.join(format!("smooth-{smooth:?}"));
    a.write(&out).unwrap();
    let mut reference = ort_model(fp32, &feed(), Default::default()).unwrap();
    let mut int8 = ort_model(&out.join("model.qdq.onnx"), &feed(), Default::default()).unwrap();
    fidelity(reference.as_mut(), int8.as_mut(), &val_subset(500, 9), &feed()).unwrap()
}

#[test]
fn smoothing_leaves_the_fp32_outputs_unchanged() {
    // opset 17: LayerNormalization (scale and bias take 1/s); opset 13: the decomposed LayerNorm's
    // trailing Mul/Add take it. Both also get Muls in front of GEMMs without a foldable producer.
    for name in ["fmnist_vit_opset17.onnx", "fmnist_vit_opset13.onnx"] {
        let hist = hist_of(&model(name), Some(0.5));
        let record = hist.smoothing.as_ref().unwrap();
        let mut m = graph::Model::load(&model(name)).unwrap();
        let s = smoothquant::smooth(&mut m, &record.channel_max, record.alpha).unwrap();
        let folded = s.tensors.iter().filter(|t| t.applied != "mul").count();
        assert!(folded >= 12 && s.tensors.len() > folded, "{name}: {:?}", s.tensors);
        assert!(s.tensors.iter().all(|t| t.scale_max > 1.0), "{name}: factors moved nothing");
        let dir = tempfile::tempdir().unwrap();
        let smoothed = dir.path().join("smoothed.onnx");
        graph::save_model(&m, m.proto.clone(), &smoothed).unwrap();
        let (a, b) = (outputs(&model(name)), outputs(&smoothed));
        let peak = a.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().flatten().zip(b.iter().flatten()).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst <= 1e-5 * peak, "{name}: outputs moved by {worst} (largest logit {peak})");
    }
}

/// The opset-17 ViT with channel `channel` of its first LayerNorm scaled up by `factor` (scale and bias)
/// and the matching input rows of the GEMMs reading it scaled down: the same function, with an outlier
/// channel of the kind real ViTs and CLIP towers carry.
fn planted_outlier(dir: &Path, channel: usize, factor: f32) -> PathBuf {
    let mut m = graph::Model::load(&model("fmnist_vit_opset17.onnx")).unwrap();
    let g = m.proto.graph.mut_or_insert_default();
    let ln = g.node.iter().find(|n| n.op_type == "LayerNormalization").unwrap().clone();
    let readers: Vec<String> = g
        .node
        .iter()
        .filter(|n| n.op_type == "MatMul" && n.input[0] == ln.output[0])
        .map(|n| n.input[1].clone())
        .collect();
    assert!(!readers.is_empty());
    let values = |t: &graph::proto::TensorProto| -> Vec<f32> {
        t.raw_data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    for (name, rows) in ln.input[1..].iter().map(|n| (n, false)).chain(readers.iter().map(|n| (n, true))) {
        let t = g.initializer.iter_mut().find(|t| &t.name == name).unwrap();
        let mut v = values(t);
        if rows {
            let cols = t.dims[1] as usize;
            v[channel * cols..(channel + 1) * cols].iter_mut().for_each(|x| *x /= factor);
        } else {
            v[channel] *= factor;
        }
        graph::set_float32(t, &v);
    }
    let path = dir.join("outlier.onnx");
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    path
}

#[test]
fn smoothing_repairs_a_planted_outlier_channel() {
    let dir = tempfile::tempdir().unwrap();
    let planted = planted_outlier(dir.path(), 7, 64.0);
    let plain = int8_fidelity(&planted, None, dir.path());
    let smoothed = int8_fidelity(&planted, Some(0.5), dir.path());
    eprintln!("planted outlier: SQNR {:.2} dB plain, {:.2} dB smoothed", plain.sqnr_db, smoothed.sqnr_db);
    // Stated margin: smoothing wins back at least 3 dB of output SQNR on the planted model.
    assert!(smoothed.sqnr_db >= plain.sqnr_db + 3.0, "plain {plain:?}, smoothed {smoothed:?}");
    assert!(smoothed.cosine_mean > plain.cosine_mean, "plain {plain:?}, smoothed {smoothed:?}");
}

#[test]
fn a_smoothed_hist_is_batch_independent_and_alpha_out_of_range_is_refused() {
    let name = "fmnist_vit_opset13.onnx";
    let run = |batch_size| {
        let options =
            CalibrateOptions { limit: Some(48), smooth: Smooth::Alpha(0.5), batch_size, ..Default::default() };
        calibrate(&model(name), &calib_dir(), &feed(), &options, &mut |_, _| {}).unwrap().0
    };
    let (a, b) = (run(16), run(5));
    assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
    // The smoothed model's own tensors: the inserted Muls' outputs have statistics.
    assert!(a.tensors.iter().any(|t| t.name.ends_with("_smoothed")), "no smoothed tensor collected");
    let options = CalibrateOptions { limit: Some(8), smooth: Smooth::Alpha(1.5), ..Default::default() };
    let err = calibrate(&model(name), &calib_dir(), &feed(), &options, &mut |_, _| {}).err().unwrap().to_string();
    assert!(err.contains("alpha must be from 0 to 1"), "{err}");
}

/// The default (`--smooth auto`) smooths a model with attention, from maxima measured on a seeded subset of 64
/// samples, and leaves a CNN alone; a ViT with smoothing off gets no record.
#[test]
fn auto_smooths_the_vits_from_a_subset_and_leaves_the_cnn_alone() {
    let run = |name: &str, smooth| {
        let options = CalibrateOptions { limit: Some(100), smooth, ..Default::default() };
        calibrate(&model(name), &calib_dir(), &feed(), &options, &mut |_, _| {}).unwrap().0
    };
    for name in ["fmnist_vit_opset17.onnx", "fmnist_vit_opset13.onnx", "fmnist_clip_image_opset17.onnx"] {
        let hist = run(name, Smooth::Auto);
        let record = hist.smoothing.as_ref().unwrap_or_else(|| panic!("{name}: not smoothed"));
        assert_eq!(record.alpha, calibrate::AUTO_SMOOTH_ALPHA, "{name}");
        assert_eq!(record.samples, Some(calibrate::MAXIMA_SAMPLES as u64), "{name}");
        assert!(!record.channel_max.is_empty(), "{name}");
        assert!(run(name, Smooth::Off).smoothing.is_none(), "{name}");
    }
    assert!(run("fmnist_resnet_opset13.onnx", Smooth::Auto).smoothing.is_none());
    // An explicit alpha smooths the CNN's classifier head too.
    let head = run("fmnist_resnet_opset13.onnx", Smooth::Alpha(0.5));
    assert_eq!(head.smoothing.map(|s| s.channel_max.len()), Some(1));
}

/// The model at `path` smoothed (alpha 0.5) from its own calibration, written beside it: the FP32 outputs must
/// not move (within 1e-5 of the largest) and no GEMM input may be skipped. Returns how many were smoothed.
fn smooth_and_compare(path: &Path) -> usize {
    let hist = hist_of(path, Some(0.5));
    let record = hist.smoothing.as_ref().unwrap();
    let mut smoothed = graph::Model::load(path).unwrap();
    let s = smoothquant::smooth(&mut smoothed, &record.channel_max, record.alpha).unwrap();
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    let out = path.with_extension("smoothed.onnx");
    graph::save_model(&smoothed, smoothed.proto.clone(), &out).unwrap();
    let (a, b) = (outputs(path), outputs(&out));
    let peak = a.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().flatten().zip(b.iter().flatten()).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst <= 1e-5 * peak, "outputs moved by {worst} (largest logit {peak})");
    s.tensors.len()
}

/// The opset-17 ViT with each MatMul weight initializer handed to `store`, which keeps it in another form and
/// returns the node that now gives the GEMM its value (placed first), written to `dir/file`.
fn vit_with_stored_weights(
    dir: &Path,
    file: &str,
    store: impl Fn(graph::proto::TensorProto) -> (Option<graph::proto::TensorProto>, graph::proto::NodeProto),
) -> PathBuf {
    let mut m = graph::Model::load(&model("fmnist_vit_opset17.onnx")).unwrap();
    let g = m.proto.graph.mut_or_insert_default();
    let weights: Vec<String> = g.node.iter().filter(|n| n.op_type == "MatMul").map(|n| n.input[1].clone()).collect();
    let mut nodes = Vec::new();
    for w in &weights {
        if let Some(i) = g.initializer.iter().position(|t| &t.name == w) {
            let (kept, node) = store(g.initializer.remove(i));
            g.initializer.extend(kept);
            nodes.push(node);
        }
    }
    assert!(nodes.len() >= 12, "{} MatMul weights stored otherwise", nodes.len());
    nodes.append(&mut g.node);
    g.node = nodes;
    let path = dir.join(file);
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    path
}

/// A node of `op` from `input` (none if empty) to `output` with one attribute.
fn node_with(op: &str, input: &str, output: &str, attribute: graph::proto::AttributeProto) -> graph::proto::NodeProto {
    let mut node = graph::proto::NodeProto::new();
    node.op_type = op.into();
    node.name = format!("{output}_{op}");
    node.input = if input.is_empty() { vec![] } else { vec![input.to_string()] };
    node.output = vec![output.to_string()];
    node.attribute = vec![attribute];
    node
}

/// GEMM weights kept in Constant nodes (as paddle2onnx writes them, e.g. the PP-OCRv4 recognizer) are smoothed
/// like initializers: before, each such GEMM was skipped ("not a float32 initializer"). The FP32 function
/// stays the same.
#[test]
fn weights_in_constant_nodes_are_smoothed_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = vit_with_stored_weights(dir.path(), "constants.onnx", |t| {
        let name = t.name.clone();
        let mut value = graph::proto::AttributeProto::new();
        value.name = "value".into();
        value.type_ = graph::proto::attribute_proto::AttributeType::TENSOR.into();
        value.t = Some(t).into();
        (None, node_with("Constant", "", &name, value))
    });
    let reference = hist_of(&model("fmnist_vit_opset17.onnx"), Some(0.5));
    let mut plain = graph::Model::load(&model("fmnist_vit_opset17.onnx")).unwrap();
    let expected = smoothquant::smooth(&mut plain, &reference.smoothing.unwrap().channel_max, 0.5).unwrap();
    assert_eq!(smooth_and_compare(&path), expected.tensors.len());
}

/// GEMM weights stored in FP16 behind a Cast (as deployed models often keep them) are smoothed too: each scaled
/// weight becomes a float32 initializer the GEMM reads. Before, every such GEMM was skipped.
#[test]
fn weights_stored_in_fp16_behind_casts_are_smoothed_too() {
    use graph::proto::tensor_proto::DataType;
    let dir = tempfile::tempdir().unwrap();
    let path = vit_with_stored_weights(dir.path(), "fp16_weights.onnx", |mut t| {
        let name = t.name.clone();
        let values: Vec<f32> = t.raw_data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        t.name = format!("{name}_fp16");
        t.data_type = DataType::FLOAT16 as i32;
        t.raw_data = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let mut to = graph::proto::AttributeProto::new();
        to.name = "to".into();
        to.type_ = graph::proto::attribute_proto::AttributeType::INT.into();
        to.i = DataType::FLOAT as i64;
        let cast = node_with("Cast", &t.name, &name, to);
        (Some(t), cast)
    });
    let smoothed = smooth_and_compare(&path);
    assert!(smoothed >= 12, "{smoothed} smoothed");
}
