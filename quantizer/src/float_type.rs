//! The float type of the parts that stay float. TensorRT builds Q/DQ models strongly typed: every layer that
//! is not INT8 runs in the type the ONNX graph gives it, so an FP32 graph runs its LayerNorms, Softmaxes,
//! GELUs and denied nodes in FP32. `convert` rewrites a model so that they run in FP16, keeping
//! the model's inputs and outputs FP32 under their names.
//!
//! Kept in FP32 (each a rule a reader can check):
//! - computation that does not depend on the images (shape arithmetic, folded constants): integers above
//!   2048 are not exact in FP16;
//! - ops whose results leave FP16's range or precision where their inputs do not: Pow, Sqrt, Reciprocal,
//!   Exp, Log and the squaring reductions, and the reductions and elementwise ops fed only by them (the
//!   variance branch of a decomposed LayerNorm, a decomposed Softmax);
//! - the producers of tensors whose calibrated max |x| exceeds [`FP16_SAFE_MAX`] (FP16 only);
//! - inputs that ONNX requires in float32 (Resize's roi and scales).
//!
//! LayerNormalization converts: its `stash_type` (FP32 statistics by default) keeps the reduction in FP32.
//! Q/DQ pairs take FP16 scales, which needs opset 19; an older model is moved to opset 19 (ReduceX axes
//! become inputs, RoiAlign's old default is written out), or refused naming the op that cannot move.

use std::collections::{HashMap, HashSet};

use graph::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, ModelProto, NodeProto, TensorProto,
};
use graph::{GraphIndex, GraphPatch, Model};

pub use placement::FloatType;

use crate::QuantizeError;

trait Encoding {
    fn data_type(self) -> DataType;
    fn encode(self, values: &[f32]) -> Vec<u8>;
}

impl Encoding for FloatType {
    fn data_type(self) -> DataType {
        match self {
            FloatType::Fp32 => DataType::FLOAT,
            FloatType::Fp16 => DataType::FLOAT16,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            FloatType::Fp32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            // Saturate rather than overflow to infinity: a weight beyond FP16's range keeps its sign and
            // stays finite (ModelOpt clamps the same way).
            FloatType::Fp16 => {
                values.iter().flat_map(|v| half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_le_bytes()).collect()
            }
        }
    }
}

/// A tensor whose calibrated max |x| is above this keeps its producer in FP32 under `--float-type fp16`:
/// a quarter of FP16's largest value, so that images a little beyond the calibration set do not overflow.
pub const FP16_SAFE_MAX: f32 = 16384.0;

/// Ops whose outputs can leave FP16's range or lose its precision on ordinary inputs.
const FRAGILE_OPS: &[&str] =
    &["Pow", "Sqrt", "Reciprocal", "Exp", "Log", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceLogSum"];

/// Ops that stay in FP32 when every data input comes from an FP32 node: the rest of a fragile chain.
const CHAIN_OPS: &[&str] = &["ReduceMean", "ReduceSum", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Max", "Min"];

/// Ops ONNX does not define for FP16 (ModelOpt keeps the same ones in FP32).
const NO_LOW_PRECISION: &[&str] = &["Upsample", "NonMaxSuppression", "Celu"];

/// Inputs that ONNX requires in float32 whatever the data type: (op, input slots).
const FLOAT32_SLOTS: &[(&str, &[usize])] = &[("Resize", &[1, 2])];

/// Ops that accept any element type on input 0 (no Cast is inserted before them).
const ANY_TYPE_INPUT: &[&str] = &["Cast", "Shape", "Size", "CastLike"];

/// Reductions whose `axes` moved from an attribute to an input in opset 18.
const AXES_TO_INPUT_AT_18: &[&str] = &[
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
];

/// Opset that allows FP16 QuantizeLinear/DequantizeLinear scales.
const QDQ_LOW_PRECISION_OPSET: i64 = 19;

/// Rewrites `proto` (the model itself or its Q/DQ version; `source` reads its external data) so that
/// everything not INT8 runs in `float_type`. `max_abs` gives calibrated max |x| per tensor where known.
pub fn convert(
    source: &Model,
    mut proto: ModelProto,
    float_type: FloatType,
    max_abs: &HashMap<String, f32>,
) -> Result<ModelProto, QuantizeError> {
    if float_type == FloatType::Fp32 {
        return Ok(proto);
    }
    let model_err = |message: String| QuantizeError::Model { path: source.path.clone(), message };
    let has_qdq = proto.graph.node.iter().any(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear"));
    if has_qdq && graph::default_opset(&proto) < QDQ_LOW_PRECISION_OPSET {
        upgrade_to_opset_19(&mut proto).map_err(model_err)?;
    }
    let low = float_type.data_type() as i32;
    let float = DataType::FLOAT as i32;
    let graph = proto.graph.mut_or_insert_default();
    let types = graph::infer_element_types(graph);
    let index = GraphIndex::new(graph);

    // Tensors whose values depend on the fed inputs.
    let feeds: HashSet<&str> = {
        let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        graph.input.iter().map(|i| i.name.as_str()).filter(|n| !inits.contains(n)).collect()
    };
    let mut dynamic: HashSet<String> = feeds.iter().map(|s| s.to_string()).collect();
    for node in &graph.node {
        if node.op_type != "Shape" && node.op_type != "Size" && node.input.iter().any(|i| dynamic.contains(i)) {
            dynamic.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }

    // Which nodes stay FP32. Q/DQ nodes never do: their scales set the float type the INT8 layers meet.
    let mut keep = vec![false; graph.node.len()];
    for (n, node) in graph.node.iter().enumerate() {
        let op = node.op_type.as_str();
        if matches!(op, "QuantizeLinear" | "DequantizeLinear") {
            continue;
        }
        let data_inputs: Vec<&String> = node.input.iter().filter(|i| dynamic.contains(*i)).collect();
        let from_kept = |i: &String| index.producer.get(i).is_some_and(|&p| p < n && keep[p]);
        let overflow = float_type == FloatType::Fp16
            && node.output.iter().any(|o| max_abs.get(o).is_some_and(|&a| a > FP16_SAFE_MAX));
        keep[n] = data_inputs.is_empty()
            || FRAGILE_OPS.contains(&op)
            || NO_LOW_PRECISION.contains(&op)
            || overflow
            || (CHAIN_OPS.contains(&op) && data_inputs.iter().all(|i| from_kept(i)));
    }

    // Element types before (`original`) and after (`now`) the rewrite, and who produces each tensor.
    let mut original: HashMap<String, i32> = types.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    let mut now: HashMap<String, i32> = original.clone();
    let mut producer: HashMap<String, usize> = index.producer.clone();
    for (_, node) in graph.node.iter().enumerate().filter(|(n, _)| !keep[*n]) {
        for out in node.output.iter().filter(|o| original.get(*o) == Some(&float)) {
            now.insert(out.clone(), low);
        }
    }
    // Float initializers become the low type when only converted nodes read them; otherwise they stay FP32
    // and a Cast feeds the converted readers.
    let float32_slot = |node: &NodeProto, slot: usize| {
        FLOAT32_SLOTS.iter().any(|(op, slots)| node.op_type == *op && slots.contains(&slot))
    };
    let mut convert_init: HashSet<String> = HashSet::new();
    for t in graph.initializer.iter().filter(|t| t.data_type == float && !feeds.contains(t.name.as_str())) {
        let uses = index.consumers.get(&t.name).map(Vec::as_slice).unwrap_or(&[]);
        let only_converted =
            !uses.is_empty() && uses.iter().all(|&(n, slot)| !keep[n] && !float32_slot(&graph.node[n], slot));
        if only_converted {
            convert_init.insert(t.name.clone());
            now.insert(t.name.clone(), low);
        }
    }
    for t in graph.initializer.iter_mut().filter(|t| convert_init.contains(&t.name)) {
        let values = source.tensor_f32(t).or_else(|_| tensor_f32_inline(t))?;
        set_values(t, float_type, &values);
    }
    for (_, node) in graph.node.iter_mut().enumerate().filter(|(n, _)| !keep[*n]) {
        if node.op_type == "Cast" {
            for a in node.attribute.iter_mut().filter(|a| a.name == "to" && a.i == float as i64) {
                a.i = low as i64;
            }
        }
    }

    // Casts go right after the producer of what they read; graph order is otherwise kept.
    let mut patch = GraphPatch::new(graph);

    // Graph outputs keep their FP32 type and names: the producer writes a renamed tensor, a Cast restores it.
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    for out in outputs {
        let Some(&p) = producer.get(&out) else { continue };
        if now.get(&out) != Some(&low) {
            continue;
        }
        let (renamed, _) = cast_to_output(graph, &mut patch, p, &out, float_type.name(), float);
        producer.insert(renamed.clone(), p);
        original.insert(renamed.clone(), float);
        now.insert(renamed, low);
        now.insert(out, float);
    }

    // Casts where a reader expects another type than the tensor now has (one per tensor and type).
    let mut casts: HashMap<(String, i32), String> = HashMap::new();
    for (n, &kept) in keep.iter().enumerate() {
        let node = &graph.node[n];
        if ANY_TYPE_INPUT.contains(&node.op_type.as_str()) {
            continue;
        }
        let mut rewired = Vec::new();
        for (slot, input) in node.input.iter().enumerate() {
            let (Some(&was), Some(&have)) = (original.get(input), now.get(input)) else { continue };
            if was != float {
                continue;
            }
            let want = if kept || float32_slot(node, slot) { float } else { low };
            if have == want {
                continue;
            }
            let cast_out = casts
                .entry((input.clone(), want))
                .or_insert_with(|| {
                    let out =
                        patch.fresh(&format!("{input}_{}", if want == float { "fp32" } else { float_type.name() }));
                    let cast = cast_node(&patch.fresh(&format!("{input}_Cast")), input, &out, want);
                    patch.insert_after(producer.get(input).copied(), cast);
                    out
                })
                .clone();
            rewired.push((slot, cast_out));
        }
        for (slot, name) in rewired {
            graph.node[n].input[slot] = name;
        }
    }

    patch.apply(graph);
    // value_info: the recorded element types follow the rewrite.
    for vi in graph.value_info.iter_mut() {
        if let (Some(&t), Some(tp)) = (now.get(&vi.name), vi.type_.as_mut()) {
            if tp.has_tensor_type() {
                tp.mut_tensor_type().elem_type = t;
            }
        }
    }
    Ok(proto)
}

/// Declares the inputs and outputs that the source file declares FP16/BF16 (`Model::low_precision_io`) so
/// again in a model built from its float32 twin, so that the artifact takes and gives what the user's engine
/// feeds and reads: a Cast at each such edge, and the exact round trips this leaves (FP16 -> float32 -> FP16
/// behind an input already converted to FP16, or in front of an output) shortened to the FP16 tensor itself.
pub fn restore_io_types(source: &Model, proto: &mut ModelProto) {
    if source.low_precision_io.is_empty() {
        return;
    }
    let float = DataType::FLOAT as i32;
    let graph = proto.graph.mut_or_insert_default();
    let index = GraphIndex::new(graph);
    let mut patch = GraphPatch::new(graph);
    let set_type = |v: &mut graph::proto::ValueInfoProto, ty: i32| {
        v.type_.mut_or_insert_default().mut_tensor_type().elem_type = ty;
    };
    // (Cast name, the low-precision tensor, the float32 one) of each input edge; (Cast name, ty) of each output.
    let (mut input_casts, mut output_casts) = (Vec::new(), Vec::new());
    // An output that is an input passed through takes its type with the input; a constant one (an initializer)
    // is cast to it.
    let mut done: HashSet<&str> = HashSet::new();
    for (name, ty) in &source.low_precision_io {
        if !done.insert(name) {
            continue;
        }
        let producer = index.producer.get(name).copied();
        if let Some(input) = graph.input.iter_mut().find(|i| i.name == *name) {
            set_type(input, *ty);
            for output in graph.output.iter_mut().filter(|o| o.name == *name) {
                set_type(output, *ty);
            }
            let wide = patch.fresh(&format!("{name}_float32"));
            rename_readers(graph, name, &wide);
            let cast = patch.fresh(&format!("{name}_Cast"));
            patch.insert_after(None, cast_node(&cast, name, &wide, float));
            input_casts.push((cast, name.clone(), wide));
        } else if let (Some(output), Some(p)) = (graph.output.iter_mut().find(|o| o.name == *name), producer) {
            set_type(output, *ty);
            let (_, cast) = cast_to_output(graph, &mut patch, p, name, "float32", *ty);
            output_casts.push((cast, *ty));
        } else if let Some(output) = graph.output.iter_mut().find(|o| o.name == *name) {
            set_type(output, *ty);
            let wide = patch.fresh(&format!("{name}_float32"));
            for t in graph.initializer.iter_mut().filter(|t| t.name == *name) {
                t.name = wide.clone();
            }
            rename_readers(graph, name, &wide);
            let cast = patch.fresh(&format!("{name}_Cast"));
            patch.insert_after(None, cast_node(&cast, &wide, name, *ty));
        }
    }
    patch.apply(graph);

    // Round trips: a Cast back to the input's type right behind an input edge reads the input itself; an
    // output edge behind a Cast to float32 of a tensor of the output's type passes that tensor on.
    let types = graph::infer_element_types(graph);
    let to_type = |n: &NodeProto| n.attribute.iter().find(|a| a.name == "to").map(|a| a.i as i32);
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut renames: HashMap<String, String> = HashMap::new();
    let mut touched: HashSet<String> = input_casts.iter().map(|(c, ..)| c.clone()).collect();
    for (_, low, wide) in &input_casts {
        let ty = types.get(low).map(|t| t.0);
        for node in graph.node.iter_mut().filter(|n| n.op_type == "Cast" && n.input.first() == Some(wide)) {
            if to_type(node) == ty {
                if outputs.contains(&node.output[0]) {
                    make_identity(node, low);
                } else {
                    renames.insert(node.output[0].clone(), low.clone());
                    touched.insert(node.name.clone());
                }
            }
        }
    }
    let producer: HashMap<String, usize> = GraphIndex::new(graph).producer;
    for (cast, ty) in &output_casts {
        let Some(c) = graph.node.iter().position(|n| n.name == *cast) else { continue };
        let Some(&p) = producer.get(&graph.node[c].input[0]) else { continue };
        let before = &graph.node[p];
        let narrow = before.input.first().cloned().unwrap_or_default();
        if before.op_type == "Cast" && to_type(before) == Some(float) && types.get(&narrow).map(|t| t.0) == Some(*ty) {
            touched.insert(before.name.clone());
            make_identity(&mut graph.node[c], &narrow);
        }
    }
    for node in graph.node.iter_mut() {
        for i in node.input.iter_mut() {
            if let Some(to) = renames.get(i) {
                *i = to.clone();
            }
        }
    }
    let mut prune = GraphPatch::new(graph);
    prune.prune(graph, |n| touched.contains(&n.name));
    prune.apply(graph);
}

/// Keeps graph output `out` under its name with element type `to`: its producer (node `p`) and its readers
/// take the fresh name `{out}_{suffix}`, and a Cast to `to` placed right after the producer writes `out`.
/// Returns (the fresh name, the Cast's name).
fn cast_to_output(
    graph: &mut graph::proto::GraphProto,
    patch: &mut GraphPatch,
    p: usize,
    out: &str,
    suffix: &str,
    to: i32,
) -> (String, String) {
    let renamed = patch.fresh(&format!("{out}_{suffix}"));
    for o in graph.node[p].output.iter_mut().filter(|o| *o == out) {
        *o = renamed.clone();
    }
    rename_readers(graph, out, &renamed);
    let cast = patch.fresh(&format!("{out}_Cast"));
    patch.insert_after(Some(p), cast_node(&cast, &renamed, out, to));
    (renamed, cast)
}

/// Makes every node that reads `from` read `to` instead.
fn rename_readers(graph: &mut graph::proto::GraphProto, from: &str, to: &str) {
    for node in graph.node.iter_mut() {
        for i in node.input.iter_mut().filter(|i| *i == from) {
            *i = to.to_string();
        }
    }
}

/// Turns a node into an Identity of `input`: a Cast whose round trip is exact passes its tensor on.
fn make_identity(node: &mut NodeProto, input: &str) {
    node.op_type = "Identity".into();
    node.attribute.clear();
    node.input = vec![input.to_string()];
}

/// A Cast of `input` to element type `to`.
pub(crate) fn cast_node(name: &str, input: &str, output: &str, to: i32) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = "Cast".into();
    n.name = name.into();
    n.input = vec![input.into()];
    n.output = vec![output.into()];
    let mut a = AttributeProto::new();
    a.name = "to".into();
    a.i = to as i64;
    a.type_ = AttributeType::INT.into();
    n.attribute.push(a);
    n
}

fn tensor_f32_inline(t: &TensorProto) -> Result<Vec<f32>, QuantizeError> {
    if !t.raw_data.is_empty() {
        return Ok(t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
    }
    Ok(t.float_data.clone())
}

fn set_values(t: &mut TensorProto, float_type: FloatType, values: &[f32]) {
    t.data_type = float_type.data_type() as i32;
    t.float_data.clear();
    t.external_data.clear();
    t.data_location = graph::proto::tensor_proto::DataLocation::DEFAULT.into();
    t.raw_data = float_type.encode(values);
}

/// Why `proto` cannot take FP16 Q/DQ scales (opset 19), if it cannot: below opset 13, or with subgraphs
/// (If, Loop, Scan: a detector's post-processing), which the move to opset 19 does not rewrite.
pub fn fp16_qdq_blocker(proto: &ModelProto) -> Option<String> {
    let from = graph::default_opset(proto);
    if from >= QDQ_LOW_PRECISION_OPSET {
        return None;
    }
    if from < 13 {
        return Some(format!("opset {from}: re-export the model with opset >= 13"));
    }
    proto.graph.node.iter().filter(|n| graph::is_default_domain(&n.domain)).find_map(|node| {
        matches!(node.op_type.as_str(), "If" | "Loop" | "Scan").then(|| {
            format!(
                "node '{}' ({}): its subgraphs are not moved to opset 19, which FP16 Q/DQ scales need; re-export \
                 the model with opset >= 19",
                node.name, node.op_type
            )
        })
    })
}

/// Moves a model from opset 13..18 to 19 where the meaning of no op changes: ReduceX's `axes` attribute
/// becomes an input (opset 18) and RoiAlign's pre-16 default is written out. Anything else that changed
/// meaning between the opsets is refused ([`fp16_qdq_blocker`]).
fn upgrade_to_opset_19(proto: &mut ModelProto) -> Result<(), String> {
    if let Some(why) = fp16_qdq_blocker(proto) {
        return Err(format!("{why}, or use --float-type fp32"));
    }
    let from = graph::default_opset(proto);
    let graph = proto.graph.mut_or_insert_default();
    let mut new_inits = Vec::new();
    for node in graph.node.iter_mut().filter(|n| graph::is_default_domain(&n.domain)) {
        if from < 18 && AXES_TO_INPUT_AT_18.contains(&node.op_type.as_str()) {
            if let Some(pos) = node.attribute.iter().position(|a| a.name == "axes") {
                let axes = node.attribute.remove(pos).ints;
                let mut t = TensorProto::new();
                t.name = format!("{}_axes", if node.name.is_empty() { &node.output[0] } else { &node.name });
                t.data_type = DataType::INT64 as i32;
                t.dims = vec![axes.len() as i64];
                t.int64_data = axes;
                // Input 1 is `axes`; Reduce ops of opset < 18 have exactly one input.
                node.input.truncate(1);
                node.input.push(t.name.clone());
                new_inits.push(t);
            }
        }
        if from < 16
            && node.op_type == "RoiAlign"
            && !node.attribute.iter().any(|a| a.name == "coordinate_transformation_mode")
        {
            let mut a = AttributeProto::new();
            a.name = "coordinate_transformation_mode".into();
            a.s = b"output_half_pixel".to_vec();
            a.type_ = AttributeType::STRING.into();
            node.attribute.push(a);
        }
    }
    graph.initializer.extend(new_inits);
    for o in proto.opset_import.iter_mut().filter(|o| graph::is_default_domain(&o.domain)) {
        o.version = QDQ_LOW_PRECISION_OPSET;
    }
    // Opset 19 needs IR version 9.
    proto.ir_version = proto.ir_version.max(9);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qdq::scalar_f32 as scalar;
    use crate::test_models::{empty_model, float_value as value, load_written};

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = format!("{op}_{output}");
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n
    }

    /// y = (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma, opset 13 with ReduceMean axes attributes,
    /// followed by a Q/DQ pair (so the model must move to opset 19).
    fn decomposed_layernorm(dir: &std::path::Path) -> Model {
        let mut m = empty_model(13);
        m.ir_version = 7;
        let g = m.graph.mut_or_insert_default();
        g.input.push(value("x"));
        g.output.push(value("y"));
        g.initializer.extend([scalar("two", 2.0), scalar("eps", 1e-6), scalar("gamma", 1.5), scalar("s", 0.1)]);
        let mut zp = TensorProto::new();
        zp.name = "zp".into();
        zp.data_type = DataType::INT8 as i32;
        zp.raw_data = vec![0];
        g.initializer.push(zp);
        let mut mean = node("ReduceMean", &["x"], "mean");
        let mut axes = AttributeProto::new();
        axes.name = "axes".into();
        axes.ints = vec![-1];
        axes.type_ = AttributeType::INTS.into();
        mean.attribute.push(axes.clone());
        g.node.push(mean);
        g.node.push(node("Sub", &["x", "mean"], "d"));
        g.node.push(node("Pow", &["d", "two"], "d2"));
        let mut var = node("ReduceMean", &["d2"], "var");
        var.attribute.push(axes);
        g.node.push(var);
        g.node.push(node("Add", &["var", "eps"], "ve"));
        g.node.push(node("Sqrt", &["ve"], "std"));
        g.node.push(node("Div", &["d", "std"], "n"));
        g.node.push(node("QuantizeLinear", &["n", "s", "zp"], "nq"));
        g.node.push(node("DequantizeLinear", &["nq", "s", "zp"], "ndq"));
        g.node.push(node("Mul", &["ndq", "gamma"], "y"));
        load_written(&m, &dir.join("ln.onnx"))
    }

    /// A model whose input and output are FP16 (and which passes its input through as a second output) is
    /// converted from its float32 twin with FP16 float parts, then declares FP16 at its edges again: no Cast
    /// at the input (the FP16 Relu reads it), an Identity in front of the output, and it runs fed float32
    /// samples rounded to FP16, giving what the FP16 source gives.
    #[test]
    fn fp16_inputs_and_outputs_are_declared_again_without_cast_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let fp16 = DataType::FLOAT16 as i32;
        let typed = |name: &str| {
            let mut v = value(name);
            v.type_.mut_or_insert_default().mut_tensor_type().elem_type = fp16;
            v
        };
        let mut m = empty_model(13);
        m.ir_version = 8;
        let g = m.graph.mut_or_insert_default();
        g.input.push(typed("x"));
        g.output.extend([typed("y"), typed("x"), typed("c")]);
        g.node.push(node("Relu", &["x"], "r"));
        g.node.push(node("Mul", &["r", "c"], "y"));
        // A constant output (an initializer) that a node also reads.
        let mut c = TensorProto::new();
        c.name = "c".into();
        c.data_type = fp16;
        c.dims = vec![4];
        c.int32_data = [2.0f32, 0.5, -1.0, 3.0].iter().map(|&v| half::f16::from_f32(v).to_bits() as i32).collect();
        g.initializer.push(c);
        let mut source = load_written(&m, &dir.path().join("fp16_io.onnx"));
        assert!(source.normalize_to_float32().unwrap());
        let io = |p: &ModelProto| {
            let elem = |v: &graph::proto::ValueInfoProto| v.type_.as_ref().unwrap().tensor_type().elem_type;
            (p.graph.input.iter().map(elem).collect::<Vec<_>>(), p.graph.output.iter().map(elem).collect::<Vec<_>>())
        };
        let float = DataType::FLOAT as i32;
        assert_eq!(io(&source.proto), (vec![float], vec![float; 3]), "the twin is float32 at its edges");
        let mut out = convert(&source, source.proto.clone(), FloatType::Fp16, &HashMap::new()).unwrap();
        restore_io_types(&source, &mut out);
        assert_eq!(io(&out), (vec![fp16], vec![fp16; 3]));
        let g = &out.graph;
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Cast", "Relu", "Mul", "Identity"], "no Cast left at the input or the computed output");
        assert_eq!(g.node[1].input, ["x"]);

        let cfg = runtime::SessionConfig::new("fp16 edges");
        let bytes = graph::proto::Message::write_to_bytes(&out).unwrap();
        let mut session = runtime::session_from_bytes(&bytes, &cfg).unwrap();
        let x = [-1.0f32, 0.5, 3.0, 1.0e-3];
        let inputs = [runtime::Input { name: "x", shape: &[4], values: runtime::Values::F32(&x) }];
        let outs = runtime::run(&mut session, "fp16 edges", &inputs, &["y".into(), "x".into(), "c".into()]).unwrap();
        let round = |v: f32| half::f16::from_f32(v).to_f32();
        let c = [2.0f32, 0.5, -1.0, 3.0];
        let expected: Vec<f32> = x.iter().zip(c).map(|(&v, c)| round(round(v).max(0.0) * c)).collect();
        assert_eq!(outs[0].as_f32().unwrap(), expected.as_slice());
        assert_eq!(outs[1].as_f32().unwrap(), x.map(round).as_slice(), "the input passed through, as FP16");
        assert_eq!(outs[2].as_f32().unwrap(), c.as_slice(), "the constant output, as FP16");
    }

    #[test]
    fn fragile_chain_stays_fp32_io_keeps_names_and_opset_moves_to_19() {
        let dir = tempfile::tempdir().unwrap();
        let model = decomposed_layernorm(dir.path());
        let proto = convert(&model, model.proto.clone(), FloatType::Fp16, &HashMap::new()).unwrap();
        let g = &proto.graph;
        let types = graph::infer_element_types(g);
        let ty = |t: &str| types[t].0;
        let (f32_, f16_) = (DataType::FLOAT as i32, DataType::FLOAT16 as i32);
        // Converted: the data path. Kept: the variance branch (Pow and what only it feeds).
        for t in ["mean", "d", "n", "ndq"] {
            assert_eq!(ty(t), f16_, "{t}");
        }
        for t in ["d2", "var", "ve", "std"] {
            assert_eq!(ty(t), f32_, "{t}");
        }
        assert_eq!(ty("s"), f16_, "Q/DQ scales take the float type");
        // Input and output keep FP32 and their names; the model is valid opset 19 (ReduceMean axes as input).
        assert_eq!(ty("x"), f32_);
        assert_eq!(ty("y"), f32_);
        assert_eq!(g.output[0].name, "y");
        assert_eq!(proto.opset_import[0].version, 19);
        assert!(proto.ir_version >= 9);
        for n in g.node.iter().filter(|n| n.op_type == "ReduceMean") {
            assert!(n.attribute.iter().all(|a| a.name != "axes") && n.input.len() == 2, "{n:?}");
        }
        // Every node input is produced before it is read (Casts spliced after their producers).
        let mut seen: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
        seen.extend(g.initializer.iter().map(|t| t.name.as_str()));
        for n in &g.node {
            for i in &n.input {
                assert!(seen.contains(i.as_str()), "{} reads {i} before it is produced", n.name);
            }
            seen.extend(n.output.iter().map(String::as_str));
        }
        // Type consistency: every elementwise node reads one float type.
        for n in g.node.iter().filter(|n| matches!(n.op_type.as_str(), "Sub" | "Div" | "Mul" | "Add" | "Pow")) {
            let kinds: HashSet<i32> = n.input.iter().map(|i| types[i].0).collect();
            assert_eq!(kinds.len(), 1, "{} mixes types: {:?}", n.name, n.input);
        }
        // A tensor beyond FP16's safe range keeps its producer in FP32.
        let big: HashMap<String, f32> = [("n".to_string(), 1e5f32)].into();
        let proto = convert(&model, model.proto.clone(), FloatType::Fp16, &big).unwrap();
        assert_eq!(graph::infer_element_types(&proto.graph)["n"].0, f32_);
    }

    #[test]
    fn fp32_is_no_conversion_and_weights_saturate_in_fp16() {
        let dir = tempfile::tempdir().unwrap();
        let model = decomposed_layernorm(dir.path());
        assert_eq!(convert(&model, model.proto.clone(), FloatType::Fp32, &HashMap::new()).unwrap(), model.proto);
        let bytes = FloatType::Fp16.encode(&[1e6, -1e6, 0.5]);
        let back: Vec<f32> = bytes.chunks(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        assert_eq!(back, vec![65504.0, -65504.0, 0.5]);
    }
}
