//! Image models with dynamic height and width, built in the tests (seeded weights): a small CNN whose global
//! pooling takes any size, and a small ViT whose position embeddings are interpolated in the graph to the
//! patch grid of the image it gets (Shape -> Slice -> Concat -> Resize), as dynamic-resolution ViT and CLIP
//! exports do. Both take the fixtures' 28x28 grayscale images at any size through a recipe.

use std::path::{Path, PathBuf};

use graph::proto::tensor_proto::DataType;
use graph::proto::{
    attribute_proto::AttributeType, AttributeProto, Message, ModelProto, OperatorSetIdProto, TensorProto, TypeProto,
    ValueInfoProto,
};

use crate::conv_models::{floats, int, ints, node, random, tensor};

/// The models' input name: float32 [batch, 1, height, width].
pub const INPUT: &str = "image";
/// Classes of the output logits.
pub const CLASSES: usize = 10;
/// Width of the ViT's tokens.
pub const WIDTH: usize = 16;
/// Side of the ViT's square patches.
pub const PATCH: usize = 4;
/// Side of the ViT's stored position-embedding grid (28 / PATCH): other grids are interpolated from it.
pub const GRID: usize = 7;

fn dimension(param: Option<&str>, value: usize) -> graph::proto::tensor_shape_proto::Dimension {
    let mut d = graph::proto::tensor_shape_proto::Dimension::new();
    match param {
        Some(p) => d.set_dim_param(p.into()),
        None => d.set_dim_value(value as i64),
    }
    d
}

/// A float32 value with the given dimensions (`Some(name)`: symbolic).
fn value(name: &str, dims: &[(Option<&str>, usize)]) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    let mut t = TypeProto::new();
    let tensor = t.mut_tensor_type();
    tensor.elem_type = DataType::FLOAT as i32;
    let shape = tensor.shape.mut_or_insert_default();
    shape.dim.extend(dims.iter().map(|(p, v)| dimension(*p, *v)));
    v.type_ = Some(t).into();
    v
}

fn model(name: &str) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.version = 17;
    m.opset_import.push(o);
    let g = m.graph.mut_or_insert_default();
    g.name = name.into();
    g.input.push(value(INPUT, &[(Some("batch"), 0), (None, 1), (Some("height"), 0), (Some("width"), 0)]));
    g.output.push(value("logits", &[(Some("batch"), 0), (None, CLASSES)]));
    m
}

fn int64s(name: &str, values: &[i64]) -> TensorProto {
    tensor(name, DataType::INT64, &[values.len()], values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn string(name: &str, value: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = value.as_bytes().to_vec();
    a
}

fn write(m: &ModelProto, path: PathBuf) -> PathBuf {
    std::fs::write(&path, m.write_to_bytes().expect("the model encodes")).expect("the model is written");
    path
}

/// Conv 1->8 (3x3) -> ReLU -> Conv 8->16 (3x3, stride 2) -> ReLU -> GlobalAveragePool -> Flatten -> Gemm ->
/// `logits`, input [batch, 1, height, width]. Written to `dir/dynamic_cnn.onnx`.
pub fn dynamic_cnn(dir: &Path) -> PathBuf {
    let mut m = model("dynamic_cnn");
    let g = m.graph.mut_or_insert_default();
    g.initializer.extend([
        floats("w1", &[8, 1, 3, 3], &random(72, 21, 0.6)),
        floats("b1", &[8], &random(8, 22, 0.1)),
        floats("w2", &[16, 8, 3, 3], &random(16 * 72, 23, 0.25)),
        floats("b2", &[16], &random(16, 24, 0.1)),
        floats("w3", &[CLASSES, 16], &random(CLASSES * 16, 25, 0.5)),
        floats("b3", &[CLASSES], &random(CLASSES, 26, 0.1)),
    ]);
    let conv = |stride: i64| {
        vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1]), ints("strides", &[stride, stride])]
    };
    g.node.extend([
        node("Conv", &[INPUT, "w1", "b1"], "c1", conv(1)),
        node("Relu", &["c1"], "r1", vec![]),
        node("Conv", &["r1", "w2", "b2"], "c2", conv(2)),
        node("Relu", &["c2"], "r2", vec![]),
        node("GlobalAveragePool", &["r2"], "pooled", vec![]),
        node("Flatten", &["pooled"], "features", vec![]),
        node("Gemm", &["features", "w3", "b3"], "logits", vec![int("transB", 1)]),
    ]);
    write(&m, dir.join("dynamic_cnn.onnx"))
}

/// Patch Conv (1 -> WIDTH, PATCH x PATCH, stride PATCH) plus position embeddings resized in the graph from a
/// GRID x GRID table to the patch grid, tokens [batch, N, WIDTH], one attention block with a residual
/// (Q, K, V MatMuls, softmax over the N tokens, so more tokens flatten the probabilities), mean over tokens,
/// Gemm -> `logits`. Input [batch, 1, height, width], height and width multiples of PATCH. Written to
/// `dir/dynamic_vit.onnx`.
pub fn dynamic_vit(dir: &Path) -> PathBuf {
    vit(dir, "dynamic_vit", &[0, WIDTH as i64, -1])
}

/// [`dynamic_vit`] as a static export writes it: the patches reshaped to tokens with the constant shape of
/// the 28x28 grid (`[0, WIDTH, GRID * GRID]`), so the model runs at 28x28 only though its input's height and
/// width are symbolic. Written to `dir/pinned_vit.onnx`.
pub fn pinned_vit(dir: &Path) -> PathBuf {
    vit(dir, "pinned_vit", &[0, WIDTH as i64, (GRID * GRID) as i64])
}

fn vit(dir: &Path, name: &str, token_shape: &[i64]) -> PathBuf {
    let mut m = model(name);
    let g = m.graph.mut_or_insert_default();
    let d = WIDTH;
    g.initializer.extend([
        floats("patch.weight", &[d, 1, PATCH, PATCH], &random(d * PATCH * PATCH, 31, 0.5)),
        floats("patch.bias", &[d], &random(d, 32, 0.1)),
        floats("pos_embed", &[1, d, GRID, GRID], &random(d * GRID * GRID, 33, 0.5)),
        floats("wq", &[d, d], &random(d * d, 34, 0.5)),
        floats("wk", &[d, d], &random(d * d, 35, 0.5)),
        floats("wv", &[d, d], &random(d * d, 36, 0.4)),
        floats("attn_scale", &[], &[1.0 / (d as f32).sqrt()]),
        floats("head.weight", &[CLASSES, d], &random(CLASSES * d, 37, 0.5)),
        floats("head.bias", &[CLASSES], &random(CLASSES, 38, 0.1)),
        int64s("hw_start", &[2]),
        int64s("hw_end", &[4]),
        int64s("pos_lead", &[1, d as i64]),
        int64s("token_shape", token_shape),
    ]);
    let patch = vec![ints("kernel_shape", &[PATCH as i64; 2]), ints("strides", &[PATCH as i64; 2])];
    let mut resize = node("Resize", &["pos_embed", "", "", "pos_sizes"], "pos", vec![string("mode", "linear")]);
    resize.attribute.push(string("coordinate_transformation_mode", "half_pixel"));
    let mut softmax = node("Softmax", &["scores"], "probs", vec![]);
    softmax.attribute.push(int("axis", -1));
    g.node.extend([
        node("Conv", &[INPUT, "patch.weight", "patch.bias"], "patches", patch),
        node("Shape", &["patches"], "patches_shape", vec![]),
        node("Slice", &["patches_shape", "hw_start", "hw_end"], "grid", vec![]),
        node("Concat", &["pos_lead", "grid"], "pos_sizes", vec![int("axis", 0)]),
        resize,
        node("Add", &["patches", "pos"], "embedded", vec![]),
        node("Reshape", &["embedded", "token_shape"], "flat", vec![]),
        node("Transpose", &["flat"], "tokens", vec![ints("perm", &[0, 2, 1])]),
        node("MatMul", &["tokens", "wq"], "q", vec![]),
        node("MatMul", &["tokens", "wk"], "k", vec![]),
        node("MatMul", &["tokens", "wv"], "v", vec![]),
        node("Transpose", &["k"], "kt", vec![ints("perm", &[0, 2, 1])]),
        node("MatMul", &["q", "kt"], "raw_scores", vec![]),
        node("Mul", &["raw_scores", "attn_scale"], "scores", vec![]),
        softmax,
        node("MatMul", &["probs", "v"], "attended", vec![]),
        node("Add", &["tokens", "attended"], "hidden", vec![]),
        node("ReduceMean", &["hidden"], "pooled", vec![ints("axes", &[1]), int("keepdims", 0)]),
        node("Gemm", &["pooled", "head.weight", "head.bias"], "logits", vec![int("transB", 1)]),
    ]);
    write(&m, dir.join(format!("{name}.onnx")))
}

/// The fixtures' preprocessing (grayscale, Fashion-MNIST mean and std) resized exactly to each of `sizes`
/// (`[H, W]`, multiples of [`PATCH`] for the ViT).
pub fn recipe(sizes: &[[u32; 2]]) -> datasets::Recipe {
    let mut r = crate::recipe();
    r.resize = datasets::ResizeMode::Exact;
    r.size = sizes[0];
    r.sizes = if sizes.len() > 1 { sizes.to_vec() } else { Vec::new() };
    r
}
