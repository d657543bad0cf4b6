//! Models exported at opsets 9 to 12 (tf2onnx's older default, Paddle's and many older exporters') are moved to
//! opset 13, the first whose DequantizeLinear takes per-channel scales, without changing what they compute: the
//! attributes that became inputs become initializers, Softmax-like ops keep their old "flatten to 2D from
//! `axis`" meaning through an explicit Flatten and Reshape, and anything whose meaning would change is refused by
//! name. Below opset 11 only ops known to mean the same at 13 (or moved here) are accepted.

use graph::proto::tensor_proto::DataType;
use graph::proto::{attribute_proto::AttributeType, AttributeProto, ModelProto, NodeProto, TensorProto};
use graph::GraphPatch;

/// The first opset with per-channel QuantizeLinear/DequantizeLinear.
pub const QDQ_OPSET: i64 = 13;

/// Ops whose `axes` attribute became an input in opset 13.
const AXES_TO_INPUT_AT_13: &[&str] = &["Squeeze", "Unsqueeze", "ReduceSum"];

/// Ops that flattened their input to 2D at `axis` (default 1) before opset 13 and work along `axis` from 13.
const COERCED_TO_2D_BEFORE_13: &[&str] = &["Softmax", "LogSoftmax", "Hardmax"];

/// The oldest opset moved: opset 9 removed BatchNormalization's `spatial` and is where tf2onnx's old exports sit.
pub const OLDEST_MOVED_OPSET: i64 = 9;

/// Ops that compute the same from opset 9 to 13 for every attribute an opset-9 or -10 exporter can write (later
/// opsets only added types, negative axes or optional attributes whose defaults keep the old meaning). Ops moved
/// below (Slice, Pad, Clip, TopK, Dropout, the `axes` and Softmax-like ones) are accepted too; any other op in a
/// model below opset 11 is refused by name, Upsample and Resize-10 among them.
const SAME_MEANING_FROM_9: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Div",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "HardSigmoid",
    "Identity",
    "InstanceNormalization",
    "LeakyRelu",
    "Less",
    "Log",
    "LRN",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pow",
    "PRelu",
    "Reciprocal",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "Relu",
    "Reshape",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sign",
    "Softplus",
    "Softsign",
    "Split",
    "Sqrt",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "Transpose",
    "Where",
    "Xor",
];

/// Moves `proto` from opsets 9 to 12 to 13 (nothing to do from 13 on). Returns whether it changed.
pub fn upgrade_to_opset_13(proto: &mut ModelProto) -> Result<bool, String> {
    let from = graph::default_opset(proto);
    if from >= QDQ_OPSET {
        return Ok(false);
    }
    if from < OLDEST_MOVED_OPSET {
        return Err(format!(
            "opset {from}: per-channel Q/DQ needs opset 13, and int8kit moves models from opset \
             {OLDEST_MOVED_OPSET} to 12 only; re-export the model with opset >= 13"
        ));
    }
    let graph = proto.graph.mut_or_insert_default();
    if from < 11 {
        let moved = |op: &str| {
            SAME_MEANING_FROM_9.contains(&op)
                || AXES_TO_INPUT_AT_13.contains(&op)
                || COERCED_TO_2D_BEFORE_13.contains(&op)
                || matches!(op, "Slice" | "Pad" | "Clip" | "TopK" | "Dropout")
        };
        if let Some(n) = graph.node.iter().find(|n| graph::is_default_domain(&n.domain) && !moved(&n.op_type)) {
            return Err(format!(
                "opset {from}: node '{}' ({}) computes differently at opset 13 and int8kit does not move it \
                 (per-channel Q/DQ needs opset 13); re-export the model with opset >= 13",
                n.name, n.op_type
            ));
        }
    }
    if let Some(n) = graph.node.iter().find(|n| matches!(n.op_type.as_str(), "If" | "Loop" | "Scan")) {
        return Err(format!(
            "opset {from}: node '{}' ({}) has subgraphs, which int8kit does not move to opset 13 (per-channel \
             Q/DQ needs it); re-export the model with opset >= 13",
            n.name, n.op_type
        ));
    }
    let mut patch = GraphPatch::new(graph);
    for i in 0..graph.node.len() {
        if !graph::is_default_domain(&graph.node[i].domain) {
            continue;
        }
        let op = graph.node[i].op_type.clone();
        if AXES_TO_INPUT_AT_13.contains(&op.as_str()) {
            attribute_to_input(&mut patch, &mut graph.node[i], "axes", 1);
        } else if op == "Split" {
            attribute_to_input(&mut patch, &mut graph.node[i], "split", 1);
        } else if op == "Slice" && from < 10 {
            for (slot, name) in ["starts", "ends", "axes"].into_iter().enumerate() {
                attribute_to_input(&mut patch, &mut graph.node[i], name, slot + 1);
            }
        } else if op == "TopK" && from < 10 {
            attribute_to_input(&mut patch, &mut graph.node[i], "k", 1);
        } else if op == "Pad" && from < 11 {
            attribute_to_input(&mut patch, &mut graph.node[i], "pads", 1);
            float_attribute_to_input(&mut patch, &mut graph.node[i], "value", 2, 0.0);
        } else if op == "Clip" && from < 11 {
            float_attribute_to_input(&mut patch, &mut graph.node[i], "min", 1, f32::NEG_INFINITY);
            float_attribute_to_input(&mut patch, &mut graph.node[i], "max", 2, f32::INFINITY);
        } else if op == "Dropout" {
            // Opset 12 made `ratio` an input; an inference graph ignores it either way.
            graph.node[i].attribute.retain(|a| a.name != "ratio");
        } else if COERCED_TO_2D_BEFORE_13.contains(&op.as_str()) {
            keep_2d_meaning(&mut patch, graph, i);
        }
    }
    patch.apply(graph);
    for o in proto.opset_import.iter_mut().filter(|o| graph::is_default_domain(&o.domain)) {
        o.version = QDQ_OPSET;
    }
    // Opset 13 needs IR version 7.
    proto.ir_version = proto.ir_version.max(7);
    Ok(true)
}

/// Moves the ints attribute `name` of `node` (an int, as TopK's `k`, counts as one) to an int64 initializer read
/// as input `slot` (absent: nothing).
fn attribute_to_input(patch: &mut GraphPatch, node: &mut NodeProto, name: &str, slot: usize) {
    let Some(pos) = node.attribute.iter().position(|a| a.name == name) else { return };
    let attribute = node.attribute.remove(pos);
    let values =
        if attribute.type_.enum_value_or_default() == AttributeType::INT { vec![attribute.i] } else { attribute.ints };
    let mut t = initializer_for(patch, node, name);
    t.data_type = DataType::INT64 as i32;
    t.dims = vec![values.len() as i64];
    t.int64_data = values;
    set_input(patch, node, slot, t);
}

/// Moves the float attribute `name` of `node` to a scalar float initializer read as input `slot`; an absent
/// attribute or one equal to `default` (what the input's absence means) leaves the input out.
fn float_attribute_to_input(patch: &mut GraphPatch, node: &mut NodeProto, name: &str, slot: usize, default: f32) {
    let Some(pos) = node.attribute.iter().position(|a| a.name == name) else { return };
    let value = node.attribute.remove(pos).f;
    if value == default {
        return;
    }
    let mut t = initializer_for(patch, node, name);
    t.data_type = DataType::FLOAT as i32;
    t.float_data = vec![value];
    set_input(patch, node, slot, t);
}

fn initializer_for(patch: &mut GraphPatch, node: &NodeProto, name: &str) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = patch.fresh(&format!("{}_{name}", if node.name.is_empty() { &node.output[0] } else { &node.name }));
    t
}

/// Reads `t` as input `slot` of `node`, the inputs before it kept (missing ones left empty, "absent").
fn set_input(patch: &mut GraphPatch, node: &mut NodeProto, slot: usize, t: TensorProto) {
    if node.input.len() <= slot {
        node.input.resize(slot + 1, String::new());
    }
    node.input[slot] = t.name.clone();
    patch.add_initializer(t);
}

/// Softmax-like node `i` (opset < 13) as opset 13 computes the old meaning: Flatten at its axis, the op along
/// axis 1 of the 2D tensor, Reshape back to the input's shape. An axis of -1 means the same in both.
fn keep_2d_meaning(patch: &mut GraphPatch, graph: &mut graph::proto::GraphProto, i: usize) {
    let node = &mut graph.node[i];
    let axis = node.attribute.iter().find(|a| a.name == "axis").map_or(1, |a| a.i);
    if axis == -1 {
        return;
    }
    let (input, output) = (node.input[0].clone(), node.output[0].clone());
    let flat = patch.fresh(&format!("{output}_2d_input"));
    let flat_out = patch.fresh(&format!("{output}_2d"));
    let shape = patch.fresh(&format!("{input}_shape"));
    node.attribute.retain(|a| a.name != "axis");
    node.attribute.push(int_attribute("axis", 1));
    node.input[0] = flat.clone();
    node.output[0] = flat_out.clone();
    let name = if node.name.is_empty() { output.clone() } else { node.name.clone() };
    let (flatten_name, shape_name, reshape_name) = (
        patch.fresh(&format!("{name}_flatten")),
        patch.fresh(&format!("{name}_shape")),
        patch.fresh(&format!("{name}_reshape")),
    );
    let mut flatten = plain_node("Flatten", &flatten_name, &[&input], &flat);
    flatten.attribute.push(int_attribute("axis", axis));
    patch.insert_after_producer_of(&input, flatten);
    patch.insert_after_producer_of(&input, plain_node("Shape", &shape_name, &[&input], &shape));
    patch.insert_after(Some(i), plain_node("Reshape", &reshape_name, &[&flat_out, &shape], &output));
}

fn plain_node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output.push(output.into());
    n
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_models::{empty_model, float_value};
    use test_support::conv_models::{ints, node};

    /// x [2, 3, 4] -> Unsqueeze/Squeeze -> Split on the last axis -> Softmax(axis 1) of the [2, 3, 3] part, which
    /// before opset 13 normalises over axes 1 and 2 together -> ReduceSum over the last axis -> + the other part.
    fn opset_11_model() -> ModelProto {
        let mut m = empty_model(11);
        m.ir_version = 6;
        let g = m.graph.mut_or_insert_default();
        g.input.push(float_value("x"));
        g.output.push(float_value("y"));
        g.output.push(float_value("sm"));
        g.node.extend([
            node("Unsqueeze", &["x"], "u", vec![ints("axes", &[0])]),
            node("Squeeze", &["u"], "s", vec![ints("axes", &[0])]),
            {
                let mut n = node("Split", &["s"], "a", vec![ints("split", &[1, 3]), int_attribute("axis", 2)]);
                n.output.push("b".into());
                n
            },
            node("Softmax", &["b"], "sm", vec![int_attribute("axis", 1)]),
            node("ReduceSum", &["sm"], "r", vec![ints("axes", &[2])]),
            node("Add", &["r", "a"], "y", vec![]),
        ]);
        m
    }

    fn run(m: &ModelProto, output: &str, x: &[f32]) -> Vec<f32> {
        let bytes = graph::proto::Message::write_to_bytes(m).unwrap();
        let mut cfg = runtime::SessionConfig::new("opset test");
        cfg.graph_optimization = runtime::GraphOptimization::Disabled;
        let mut session = runtime::session_from_bytes(&bytes, &cfg).unwrap();
        let input = runtime::Input { name: "x", shape: &[2, 3, 4], values: runtime::Values::F32(x) };
        runtime::run_rows(&mut session, "opset test", &[input], output).unwrap()
    }

    #[test]
    fn an_opset_11_model_moves_to_13_computing_the_same() {
        let before = opset_11_model();
        let mut after = before.clone();
        assert!(upgrade_to_opset_13(&mut after).unwrap());
        assert_eq!(graph::default_opset(&after), 13);
        assert!(after.graph.node.iter().all(|n| n.attribute.iter().all(|a| a.name != "axes" && a.name != "split")));
        let x: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        for output in ["y", "sm"] {
            let (a, b) = (run(&before, output, &x), run(&after, output, &x));
            assert_eq!(a.len(), b.len());
            assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-6), "{output}: {a:?} against {b:?}");
        }
        // The old meaning: each batch's 9 probabilities sum to 1, not each column of 3.
        let sm = run(&after, "sm", &x);
        for batch in sm.chunks(9) {
            assert!((batch.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{batch:?}");
        }
        // Moving again changes nothing.
        let again = after.clone();
        assert!(!upgrade_to_opset_13(&mut after).unwrap());
        assert_eq!(after, again);
    }

    fn float_attribute(name: &str, value: f32) -> AttributeProto {
        let mut a = AttributeProto::new();
        a.name = name.into();
        a.type_ = AttributeType::FLOAT.into();
        a.f = value;
        a
    }

    /// tf2onnx's opset-9 forms: x [2, 3, 4] -> Slice (attributes) -> Pad (attributes, value 0.5) -> Clip
    /// (attributes) -> TopK (k attribute) along the last axis -> Softmax(axis 1) of the top values, added to them.
    fn opset_9_model() -> ModelProto {
        let mut m = empty_model(9);
        m.ir_version = 4;
        let g = m.graph.mut_or_insert_default();
        g.input.push(float_value("x"));
        g.output.push(float_value("y"));
        let mut topk = node("TopK", &["c"], "top", vec![int_attribute("k", 2)]);
        topk.output.push("top_index".into());
        g.node.extend([
            node("Slice", &["x"], "s", vec![ints("starts", &[1]), ints("ends", &[4]), ints("axes", &[2])]),
            node("Pad", &["s"], "p", vec![ints("pads", &[0, 0, 1, 0, 0, 0]), float_attribute("value", 0.5)]),
            node("Clip", &["p"], "c", vec![float_attribute("min", -1.5), float_attribute("max", 2.0)]),
            topk,
            node("Softmax", &["top"], "sm", vec![int_attribute("axis", 1)]),
            node("Add", &["sm", "top"], "y", vec![]),
        ]);
        m
    }

    #[test]
    fn an_opset_9_model_moves_to_13_computing_the_same() {
        let before = opset_9_model();
        let mut after = before.clone();
        assert!(upgrade_to_opset_13(&mut after).unwrap());
        assert!(after
            .graph
            .node
            .iter()
            .all(|n| n.attribute.iter().all(|a| !["starts", "pads", "min", "k"].contains(&a.name.as_str()))));
        let x: Vec<f32> = (0..24).map(|i| (i as f32 * 0.61).cos() * 4.0).collect();
        let (a, b) = (run(&before, "y", &x), run(&after, "y", &x));
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-6), "{a:?} against {b:?}");
        // The Clip and the Pad value did something: some outputs sit at the clip bound plus a probability.
        assert!(a.iter().any(|v| *v > 2.0) && a.iter().all(|v| *v <= 3.0), "{a:?}");
    }

    #[test]
    fn old_opsets_refuse_what_they_cannot_move_by_name() {
        let mut old = opset_11_model();
        old.opset_import[0].version = 8;
        assert!(upgrade_to_opset_13(&mut old).unwrap_err().contains("opset 8"));
        let mut upsample = opset_9_model();
        upsample.graph.mut_or_insert_default().node.push(node("Upsample", &["y", "scales"], "up", vec![]));
        let e = upgrade_to_opset_13(&mut upsample).unwrap_err();
        assert!(e.contains("'Upsample_up'") && e.contains("opset 9"), "{e}");
        let mut with_if = opset_11_model();
        with_if.graph.mut_or_insert_default().node.push(node("If", &["x"], "z", vec![]));
        let e = upgrade_to_opset_13(&mut with_if).unwrap_err();
        assert!(e.contains("'If_z'") && e.contains("subgraphs"), "{e}");
    }
}
