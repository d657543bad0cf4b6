//! A small text-tower-shaped model and `.npz` samples for it, built in the tests: what a CLIP text encoder
//! looks like to int8kit (two int64 inputs, `input_ids` and `attention_mask`, an embedding lookup, a
//! LayerNorm, an MLP block with a residual, masked mean pooling and a projection), with seeded random weights.

use std::path::{Path, PathBuf};

use graph::proto::tensor_proto::DataType;
use graph::proto::{
    AttributeProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TypeProto, ValueInfoProto,
};

/// Token vocabulary.
pub const VOCAB: usize = 64;
/// Tokens per sample.
pub const SEQ: usize = 12;
/// Hidden width.
pub const WIDTH: usize = 32;
/// Width of the output embedding.
pub const EMBED: usize = 16;

use crate::conv_models::{floats, int as int_attribute, random, tensor};

fn int64s(name: &str, values: &[i64]) -> TensorProto {
    tensor(name, DataType::INT64, &[values.len()], values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn node(op: &str, inputs: &[&str], output: &str, attributes: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("/text/{op}_{output}");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output.push(output.into());
    n.attribute = attributes;
    n
}

/// A graph input or output of `elem_type` with a symbolic batch and the given further dimensions (0: the
/// symbolic `sequence`).
fn value(name: &str, elem_type: DataType, dims: &[usize]) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    let mut t = TypeProto::new();
    let tensor = t.mut_tensor_type();
    tensor.elem_type = elem_type as i32;
    let shape = tensor.shape.mut_or_insert_default();
    let mut batch = graph::proto::tensor_shape_proto::Dimension::new();
    batch.set_dim_param("batch".into());
    shape.dim.push(batch);
    for &d in dims {
        let mut dim = graph::proto::tensor_shape_proto::Dimension::new();
        if d == 0 {
            dim.set_dim_param("sequence".into());
        } else {
            dim.set_dim_value(d as i64);
        }
        shape.dim.push(dim);
    }
    v.type_ = Some(t).into();
    v
}

/// The model (opset 17): `input_ids`, `attention_mask` (int64 [batch, SEQ]) -> `text_embeds` (float32
/// [batch, EMBED]). Written to `dir/text_tower.onnx`.
pub fn write_model(dir: &Path) -> PathBuf {
    write_model_with(dir, SEQ, "text_tower.onnx")
}

/// [`write_model`] with a symbolic sequence length (`[batch, sequence]` inputs): it takes samples of any
/// length. Written to `dir/text_tower_dynamic.onnx`.
pub fn write_dynamic_model(dir: &Path) -> PathBuf {
    write_model_with(dir, 0, "text_tower_dynamic.onnx")
}

fn write_model_with(dir: &Path, seq: usize, file: &str) -> PathBuf {
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut opset = OperatorSetIdProto::new();
    opset.version = 17;
    m.opset_import.push(opset);
    let g = m.graph.mut_or_insert_default();
    g.name = "text_tower".into();
    g.input.push(value("input_ids", DataType::INT64, &[seq]));
    g.input.push(value("attention_mask", DataType::INT64, &[seq]));
    g.output.push(value("text_embeds", DataType::FLOAT, &[EMBED]));
    g.initializer.extend([
        floats("token_embedding", &[VOCAB, WIDTH], &random(VOCAB * WIDTH, 1, 1.0)),
        floats("ln.weight", &[WIDTH], &random(WIDTH, 2, 0.2).iter().map(|v| 1.0 + v).collect::<Vec<f32>>()),
        floats("ln.bias", &[WIDTH], &random(WIDTH, 3, 0.1)),
        floats("fc1.weight", &[WIDTH, 2 * WIDTH], &random(2 * WIDTH * WIDTH, 4, 0.3)),
        floats("fc1.bias", &[2 * WIDTH], &random(2 * WIDTH, 5, 0.1)),
        floats("fc2.weight", &[2 * WIDTH, WIDTH], &random(2 * WIDTH * WIDTH, 6, 0.2)),
        floats("projection", &[WIDTH, EMBED], &random(WIDTH * EMBED, 7, 0.3)),
        int64s("axis_1", &[1]),
        int64s("axis_2", &[2]),
    ]);
    let mut ln = node("LayerNormalization", &["embedded", "ln.weight", "ln.bias"], "normed", vec![]);
    ln.attribute.push(int_attribute("axis", -1));
    g.node.extend([
        node("Gather", &["token_embedding", "input_ids"], "embedded", vec![]),
        ln,
        node("MatMul", &["normed", "fc1.weight"], "fc1", vec![]),
        node("Add", &["fc1", "fc1.bias"], "fc1_biased", vec![]),
        node("Relu", &["fc1_biased"], "activated", vec![]),
        node("MatMul", &["activated", "fc2.weight"], "fc2", vec![]),
        node("Add", &["fc2", "embedded"], "hidden", vec![]),
        node("Cast", &["attention_mask"], "mask", vec![int_attribute("to", DataType::FLOAT as i64)]),
        node("Unsqueeze", &["mask", "axis_2"], "mask_3d", vec![]),
        node("Mul", &["hidden", "mask_3d"], "masked", vec![]),
        node("ReduceSum", &["masked", "axis_1"], "summed", vec![int_attribute("keepdims", 0)]),
        node("ReduceSum", &["mask_3d", "axis_1"], "count", vec![int_attribute("keepdims", 0)]),
        node("Div", &["summed", "count"], "pooled", vec![]),
        node("MatMul", &["pooled", "projection"], "text_embeds", vec![]),
    ]);
    let path = dir.join(file);
    std::fs::write(&path, m.write_to_bytes().expect("the model encodes")).expect("the model is written");
    path
}

/// One sample's arrays: random token ids after a start token, padded with 0 past a random length, and the
/// mask that says which tokens are real.
pub fn sample(seed: u64) -> (Vec<i64>, Vec<i64>) {
    sample_of_length(seed, SEQ)
}

/// [`sample`] of `seq` tokens (at least 4).
pub fn sample_of_length(seed: u64, seq: usize) -> (Vec<i64>, Vec<i64>) {
    let r = random(seq + 1, seed + 100, 1.0);
    let len = 3 + ((r[seq] + 1.0) / 2.0 * (seq - 3) as f32) as usize;
    let ids = (0..seq)
        .map(|i| if i < len.min(seq) { 1 + ((r[i] + 1.0) / 2.0 * (VOCAB - 2) as f32) as i64 } else { 0 })
        .collect();
    let mask = (0..seq).map(|i| (i < len.min(seq)) as i64).collect();
    (ids, mask)
}

/// Writes the named arrays, each with a leading batch axis of 1, to an `.npz` file.
pub fn write_npz(path: &Path, arrays: &[(&str, &[i64])]) {
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(path).expect("the .npz is created"));
    for (name, values) in arrays {
        let a = ndarray::Array2::from_shape_vec((1, values.len()), values.to_vec()).expect("a row");
        npz.add_array(*name, &a).expect("the array is written");
    }
    npz.finish().expect("the .npz is finished");
}

/// `n` samples (seeds `first..first + n`) as `.npz` files in `dir` (created), named so that they sort in
/// seed order.
pub fn write_samples(dir: &Path, first: u64, n: u64) -> PathBuf {
    write_samples_of(dir, first, n, &|_| SEQ)
}

/// [`write_samples`] with sample `seed` of `length(seed)` tokens.
pub fn write_samples_of(dir: &Path, first: u64, n: u64, length: &dyn Fn(u64) -> usize) -> PathBuf {
    std::fs::create_dir_all(dir).expect("the sample folder is created");
    for seed in first..first + n {
        let (ids, mask) = sample_of_length(seed, length(seed));
        write_npz(&dir.join(format!("{seed:05}.npz")), &[("input_ids", &ids), ("attention_mask", &mask)]);
    }
    dir.to_path_buf()
}

/// The dynamic-length tower ([`write_dynamic_model`]) in `dir` with 40 calibration samples (`dir/calib`) and
/// `val` validation samples (`dir/val`, seeds from 1000) whose lengths take turns by seed (8, 12, 20 tokens):
/// a model with data of several shapes. Returns (model, calib, val).
pub fn write_three_length_set(dir: &Path, val: u64) -> (PathBuf, PathBuf, PathBuf) {
    let length = |seed: u64| [8, 12, 20][(seed % 3) as usize];
    let model = write_dynamic_model(dir);
    let calib = write_samples_of(&dir.join("calib"), 0, 40, &length);
    let val = write_samples_of(&dir.join("val"), 1000, val, &length);
    (model, calib, val)
}
