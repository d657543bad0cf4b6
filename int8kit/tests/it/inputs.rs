//! Real-world model inputs: a model that takes raw uint8 NHWC pixels and normalises inside its graph (as TF
//! exports and many deployed embedders do) is calibrated, quantized and validated with a `dtype = "uint8"`
//! recipe, and its FP32 results equal those of the float model it was made from.

use crate::common;

use std::path::{Path, PathBuf};

use common::{on_fixtures, refused, resnet, text};
use graph::proto::{tensor_proto::DataType, AttributeProto, NodeProto, TensorProto};

fn scalar(name: &str, value: f32) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DataType::FLOAT as i32;
    t.raw_data = value.to_le_bytes().to_vec();
    t
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("/pre/{op}_{output}");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output.push(output.into());
    n
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = graph::proto::attribute_proto::AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

/// `int8kit validate` on 200 calibration and 300 validation images of the fixtures, gate 1 pp.
fn validate_small(model: &Path, recipe: &Path, out: &Path) -> std::process::Output {
    common::int8kit("validate")
        .arg("--model")
        .arg(model)
        .arg("--recipe")
        .arg(recipe)
        .arg("--calib")
        .arg(test_support::calib_dir())
        .arg("--val")
        .arg(test_support::val_dir())
        .args(["--limit-calib", "200", "--limit-val", "300", "--max-top1-drop", "1", "--quiet", "--out"])
        .arg(out)
        .output()
        .unwrap()
}

/// The ResNet behind `image: uint8 [N, 28, 28, 1]` -> Cast -> / 255 -> - mean -> / std -> NHWC to NCHW, the
/// fixture recipe's float32 operations in the same order.
fn uint8_resnet(dir: &Path) -> PathBuf {
    let mut m = graph::Model::load(&resnet()).unwrap();
    let graph = m.proto.graph.mut_or_insert_default();
    let original = graph.input[0].name.clone();
    let mut image = graph.input[0].clone();
    image.name = "image".into();
    let tensor = image.type_.mut_or_insert_default().mut_tensor_type();
    tensor.elem_type = graph::ElemType::UINT8.0;
    let shape = tensor.shape.mut_or_insert_default();
    let (c, h, w) = (shape.dim[1].clone(), shape.dim[2].clone(), shape.dim[3].clone());
    shape.dim.truncate(1);
    shape.dim.extend([h, w, c]);
    graph.input[0] = image;
    graph.initializer.extend([scalar("/pre/scale", 255.0), scalar("/pre/mean", 0.286), scalar("/pre/std", 0.353)]);
    let mut cast = node("Cast", &["image"], "/pre/f");
    let mut to = AttributeProto::new();
    to.name = "to".into();
    to.type_ = graph::proto::attribute_proto::AttributeType::INT.into();
    to.i = DataType::FLOAT as i64;
    cast.attribute.push(to);
    let mut transpose = node("Transpose", &["/pre/n"], &original);
    transpose.attribute.push(ints("perm", &[0, 3, 1, 2]));
    let pre = [
        cast,
        node("Div", &["/pre/f", "/pre/scale"], "/pre/s"),
        node("Sub", &["/pre/s", "/pre/mean"], "/pre/c"),
        node("Div", &["/pre/c", "/pre/std"], "/pre/n"),
        transpose,
    ];
    for (i, n) in pre.into_iter().enumerate() {
        graph.node.insert(i, n);
    }
    let path = dir.join("resnet_uint8.onnx");
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    path
}

#[test]
fn a_uint8_nhwc_model_quantizes_and_validates_like_its_float_original() {
    let dir = tempfile::tempdir().unwrap();
    let model = uint8_resnet(dir.path());
    // The fixture recipe feeds float32: refused, saying what to write.
    let o = on_fixtures("quantize", &model, &dir.path().join("q0"), &["--limit", "10", "--quiet"]);
    refused(&o, "add dtype = \"uint8\"");
    let recipe = dir.path().join("uint8.toml");
    std::fs::write(
        &recipe,
        "[input]\nlayout = \"NHWC\"\nchannels = \"gray\"\nsize = [28, 28]\nresize = \"none\"\ndtype = \"uint8\"\n",
    )
    .unwrap();
    let run = |model_path: &Path, recipe_path: &Path, out: &str| {
        let o = validate_small(model_path, recipe_path, &dir.path().join(out));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(out).join("report.json")).unwrap()).unwrap();
        report["comparison"].clone()
    };
    let raw = run(&model, &recipe, "uint8");
    let float = run(&resnet(), &test_support::recipe_path(), "float");
    eprintln!("uint8 model: {raw}\nfloat model: {float}");
    assert_eq!(raw["fp32"]["top1"], float["fp32"]["top1"], "the in-graph normalisation is the recipe's");
    assert!(raw["int8"]["top1"].as_f64().unwrap() > 0.9, "{raw}");
}

#[test]
fn a_uint8_recipe_refuses_normalisation_keys() {
    let text = "[input]\nchannels = \"gray\"\nsize = [28, 28]\nresize = \"none\"\ndtype = \"uint8\"\nscale = 255.0\n";
    let err = datasets::Recipe::from_toml(text, "u.toml").unwrap_err().to_string();
    assert!(err.contains("'scale' cannot apply") && err.contains("u.toml"), "{err}");
}

/// The ResNet with every Conv/Gemm weight stored as FP16 behind a Cast to float (as mixed-precision exports
/// write them).
fn fp16_weight_resnet(dir: &Path) -> (PathBuf, usize) {
    let mut m = graph::Model::load(&resnet()).unwrap();
    let source = graph::Model::load(&resnet()).unwrap();
    let graph = m.proto.graph.mut_or_insert_default();
    let mut casts = Vec::new();
    let weights: Vec<String> = graph
        .node
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "Conv" | "Gemm"))
        .map(|n| n.input[1].clone())
        .collect();
    for t in graph.initializer.iter_mut().filter(|t| weights.contains(&t.name)) {
        let values = source.tensor_f32(t).unwrap();
        t.raw_data = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        t.float_data.clear();
        t.data_type = DataType::FLOAT16 as i32;
        let cast_out = format!("{}_as_float", t.name);
        let mut cast = node("Cast", &[&t.name], &cast_out);
        let mut to = AttributeProto::new();
        to.name = "to".into();
        to.type_ = graph::proto::attribute_proto::AttributeType::INT.into();
        to.i = DataType::FLOAT as i64;
        cast.attribute.push(to);
        casts.push((t.name.clone(), cast_out, cast));
    }
    for (weight, cast_out, _) in &casts {
        for n in graph.node.iter_mut() {
            for i in n.input.iter_mut().filter(|i| *i == weight) {
                *i = cast_out.clone();
            }
        }
    }
    let count = casts.len();
    for (i, (_, _, cast)) in casts.into_iter().enumerate() {
        graph.node.insert(i, cast);
    }
    let path = dir.join("resnet_fp16_weights.onnx");
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    (path, count)
}

#[test]
fn fp16_weights_behind_casts_are_quantized_as_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (model, weights) = fp16_weight_resnet(dir.path());
    assert!(weights >= 10);
    let out = dir.path().join("q");
    let o = on_fixtures("quantize", &model, &out, &["--limit", "200", "--quiet", "--target", "onnxruntime"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let qdq = graph::Model::load(&out.join("model.qdq.onnx")).unwrap();
    let g = &qdq.proto.graph;
    let int8_weights: std::collections::HashSet<&str> = g
        .initializer
        .iter()
        .filter(|t| t.data_type == DataType::INT8 as i32 && !t.dims.is_empty())
        .map(|t| t.name.as_str())
        .collect();
    let weight_dqs =
        g.node.iter().filter(|n| n.op_type == "DequantizeLinear" && int8_weights.contains(n.input[0].as_str())).count();
    assert_eq!(weight_dqs, weights, "every FP16 weight becomes an int8 weight behind a DequantizeLinear");
    assert!(g.node.iter().all(|n| n.op_type != "Cast"), "the weight Casts are gone");
    assert!(g.initializer.iter().all(|t| t.data_type != DataType::FLOAT16 as i32), "no FP16 weight left");
    let o = validate_small(&model, &test_support::recipe_path(), &dir.path().join("v"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Weights stored in FP16 but computed in float32: the reference row is an FP32 model.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("v/report.json")).unwrap()).unwrap();
    assert_eq!(report["reference"], "fp32");
}

/// A model stored in FP16 inside (FP32 inputs and outputs, as `keep_io_types` exports write it) calibrates as
/// its float32 twin and quantizes back to FP16: Q/DQ scales FP16, whatever --float-type asks. One whose input
/// and output are FP16 too (a `.half()` export) quantizes the same way and its artifact keeps FP16 at its edges.
#[test]
fn an_fp16_model_calibrates_and_quantizes_with_fp16_scales() {
    let dir = tempfile::tempdir().unwrap();
    let source = graph::Model::load(&resnet()).unwrap();
    let fp16 = quantizer::float_type::convert(
        &source,
        source.proto.clone(),
        quantizer::placement::FloatType::Fp16,
        &Default::default(),
    )
    .unwrap();
    let low = |p: &graph::proto::ModelProto| {
        p.graph.initializer.iter().filter(|t| t.data_type == DataType::FLOAT16 as i32).count()
    };
    assert!(low(&fp16) >= 10, "the test model is FP16 inside");
    let model = dir.path().join("resnet_fp16.onnx");
    graph::save_model(&source, fp16.clone(), &model).unwrap();

    let out = dir.path().join("q");
    let o = on_fixtures("quantize", &model, &out, &["--limit", "200", "--quiet", "--target", "onnxruntime"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ranges: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("ranges.json")).unwrap()).unwrap();
    assert_eq!(ranges["float_type"], "fp16", "an FP16 model stays FP16");
    assert!(ranges["tensors"].as_array().unwrap().iter().filter(|t| t["quantized"] == true).count() >= 14);
    let qdq = graph::Model::load(&out.join("model.qdq.onnx")).unwrap();
    let g = &qdq.proto.graph;
    let scales: Vec<&TensorProto> = g
        .node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
        .filter_map(|n| g.initializer.iter().find(|t| t.name == n.input[1]))
        .collect();
    assert!(!scales.is_empty() && scales.iter().all(|t| t.data_type == DataType::FLOAT16 as i32), "FP16 scales");
    let o = validate_small(&model, &test_support::recipe_path(), &dir.path().join("v"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Its reference row is the FP16 model as given, and says so instead of "FP32".
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("v/report.json")).unwrap()).unwrap();
    assert_eq!(report["reference"], "fp16");
    assert!(text(&o).contains("source (FP16) Top-1") && !text(&o).contains("FP32 Top-1"), "{}", text(&o));

    // FP16 at the model's edge: the input fed as FP16 (float32 samples rounded), the output read back as
    // float32; the artifact declares both FP16 as the source does, the input's QuantizeLinear reading it
    // directly and no Cast round trip left at either edge.
    let mut edge = fp16;
    let g = edge.graph.mut_or_insert_default();
    let fp16_type = DataType::FLOAT16 as i32;
    g.input[0].type_.mut_or_insert_default().mut_tensor_type().elem_type = fp16_type;
    let output = g.output[0].name.clone();
    let last = g.node.iter_mut().find(|n| n.output.contains(&output)).unwrap();
    assert_eq!(last.op_type, "Cast", "the FP16 model's output is cast to float32");
    last.attribute.iter_mut().find(|a| a.name == "to").unwrap().i = fp16_type as i64;
    g.output[0].type_.mut_or_insert_default().mut_tensor_type().elem_type = fp16_type;
    let edged = dir.path().join("edge.onnx");
    graph::save_model(&source, edge, &edged).unwrap();
    let out = dir.path().join("q2");
    let o = on_fixtures("quantize", &edged, &out, &["--limit", "200", "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ranges: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("ranges.json")).unwrap()).unwrap();
    assert_eq!(ranges["float_type"], "fp16");
    let fidelity = &ranges["self_check"]["fidelity"];
    assert!(fidelity["sqnr_db"].as_f64().unwrap() > 25.0 && fidelity["agreement"] == 1.0, "{fidelity}");
    let qdq = graph::Model::load(&out.join("model.qdq.onnx")).unwrap();
    let g = &qdq.proto.graph;
    let elem = |v: &graph::proto::ValueInfoProto| v.type_.as_ref().unwrap().tensor_type().elem_type;
    assert_eq!((elem(&g.input[0]), elem(&g.output[0])), (fp16_type, fp16_type), "FP16 at the artifact's edges");
    let readers: Vec<&str> =
        g.node.iter().filter(|n| n.input.contains(&g.input[0].name)).map(|n| n.op_type.as_str()).collect();
    assert_eq!(readers, ["QuantizeLinear"], "the input quantized as it comes");
    let writer = g.node.iter().find(|n| n.output.contains(&output)).unwrap();
    let before = g.node.iter().find(|n| n.output.contains(&writer.input[0])).unwrap();
    assert!(writer.op_type != "Cast" || before.op_type != "Cast", "no Cast round trip in front of the output");
    let o = common::int8kit("lint").arg(out.join("model.qdq.onnx")).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = validate_small(&edged, &test_support::recipe_path(), &dir.path().join("v2"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// `quantize --method entropy` of `model` on 100 fixture images into `out`, which it returns.
fn quantized_entropy(model: &Path, out: &Path) -> PathBuf {
    let o = on_fixtures("quantize", model, out, &["--limit", "100", "--quiet", "--method", "entropy"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    out.to_path_buf()
}

/// A model whose exporter kept a module as a model-local function (here the ResNet's stem Conv and Relu):
/// the Conv inside is calibrated and quantized like any other, and the artifact is plain ONNX, computing what
/// the artifact of the model without the function computes. Before, the function's Conv stayed float while
/// the summary said 100 % of GEMM/Conv FLOPs were INT8.
#[test]
fn the_nodes_inside_model_local_functions_are_quantized() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = graph::Model::load(&resnet()).unwrap();
    let g = m.proto.graph.mut_or_insert_default();
    let at = g.node.iter().position(|n| n.op_type == "Conv").unwrap();
    assert_eq!(g.node[at + 1].op_type, "Relu", "the stem is Conv -> Relu");
    let (conv, relu) = (g.node[at].clone(), g.node[at + 1].clone());
    let mut f = graph::proto::FunctionProto::new();
    (f.domain, f.name) = ("local".into(), "ConvRelu".into());
    f.input = vec!["x".into(), "w".into(), "b".into()];
    f.output = vec!["y".into()];
    let mut inner_conv = conv.clone();
    (inner_conv.input, inner_conv.output) = (f.input.clone(), vec!["c".into()]);
    let mut inner_relu = relu.clone();
    (inner_relu.input, inner_relu.output) = (vec!["c".into()], vec!["y".into()]);
    f.node = vec![inner_conv, inner_relu];
    let mut opset = graph::proto::OperatorSetIdProto::new();
    opset.version = graph::default_opset(&m.proto);
    f.opset_import.push(opset.clone());
    let mut call = node("ConvRelu", &[], &relu.output[0]);
    (call.domain, call.name, call.input) = ("local".into(), "stem_call".into(), conv.input.clone());
    let g = m.proto.graph.mut_or_insert_default();
    g.node.splice(at..at + 2, [call]);
    m.proto.functions.push(f);
    (opset.domain, opset.version) = ("local".into(), 1);
    m.proto.opset_import.push(opset);
    let with_function = dir.path().join("resnet_function.onnx");
    std::fs::write(&with_function, m.to_bytes().unwrap()).unwrap();

    let quantize = |model: &Path, out: &str| {
        let out = quantized_entropy(model, &dir.path().join(out));
        (graph::Model::load(&out.join("model.qdq.onnx")).unwrap(), out)
    };
    let (plain, _) = quantize(&resnet(), "plain");
    let (inlined, out) = quantize(&with_function, "function");
    let count = |m: &graph::Model, op: &str| m.proto.graph.node.iter().filter(|n| n.op_type == op).count();
    assert!(inlined.proto.functions.is_empty() && inlined.proto.opset_import.iter().all(|o| o.domain.is_empty()));
    for op in ["QuantizeLinear", "DequantizeLinear", "Conv"] {
        assert_eq!(count(&inlined, op), count(&plain, op), "{op}");
    }
    let stem = inlined.proto.graph.node.iter().find(|n| n.op_type == "Conv").unwrap();
    assert!(stem.name.starts_with("stem_call/"), "{}", stem.name);
    let dq_outputs: Vec<&String> =
        inlined.proto.graph.node.iter().filter(|n| n.op_type == "DequantizeLinear").map(|n| &n.output[0]).collect();
    assert!(stem.input[..2].iter().all(|i| dq_outputs.contains(&i)), "the function's Conv reads Q/DQ: {stem:?}");
    let o = common::int8kit("lint").arg(out.join("model.qdq.onnx")).arg("--strict").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A ViT whose MatMul weights reach it through a Transpose of the stored weight (as recent PyTorch exporters
/// leave large Linear weights): quantized like the same ViT with its weights stored transposed already, the
/// same ranges and INT8 weights. Before, no such MatMul got INT8 (0.2 % of GEMM FLOPs in INT8).
#[test]
fn weights_behind_a_transpose_are_quantized_as_weights() {
    let dir = tempfile::tempdir().unwrap();
    let vit = test_support::model("fmnist_vit_opset17.onnx");
    let mut m = graph::Model::load(&vit).unwrap();
    let mut transposed = 0;
    let g = m.proto.graph.mut_or_insert_default();
    let mut k = 0;
    while k < g.node.len() {
        let w = g.node[k].input.get(1).cloned().unwrap_or_default();
        let stored = g.initializer.iter().position(|t| t.name == w && t.dims.len() == 2);
        if let (true, Some(i)) = (g.node[k].op_type == "MatMul", stored) {
            let t = g.initializer[i].clone();
            let (rows, cols) = (t.dims[0] as usize, t.dims[1] as usize);
            let values: Vec<f32> = t.raw_data.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            let mut flipped = t.clone();
            flipped.name = format!("{w}_stored_transposed");
            flipped.dims = vec![cols as i64, rows as i64];
            let data: Vec<f32> = (0..cols * rows).map(|j| values[(j % rows) * cols + j / rows]).collect();
            graph::set_float32(&mut flipped, &data);
            g.initializer.push(flipped.clone());
            let mut t_node = node("Transpose", &[&flipped.name], &format!("{w}_transposed"));
            t_node.name = format!("{}_weight_transpose", g.node[k].name);
            g.node[k].input[1] = t_node.output[0].clone();
            g.node.insert(k, t_node);
            transposed += 1;
            k += 1;
        }
        k += 1;
    }
    assert_eq!(transposed, 24, "every MatMul weight of the fixture ViT");
    let behind = dir.path().join("vit_weights_transposed.onnx");
    std::fs::write(&behind, m.to_bytes().unwrap()).unwrap();

    let (plain, folded) =
        (quantized_entropy(&vit, &dir.path().join("plain")), quantized_entropy(&behind, &dir.path().join("folded")));
    let read = |out: &Path, file: &str| std::fs::read(out.join(file)).unwrap();
    assert_eq!(read(&plain, "ranges.csv"), read(&folded, "ranges.csv"), "the same tensors and ranges");
    let int8_weights = |out: &Path| {
        let q = graph::Model::load(&out.join("model.qdq.onnx")).unwrap();
        q.proto.graph.initializer.iter().filter(|t| t.data_type == DataType::INT8 as i32 && t.dims.len() == 2).count()
    };
    assert_eq!(int8_weights(&folded), int8_weights(&plain));
    assert!(int8_weights(&plain) >= 24);
}
