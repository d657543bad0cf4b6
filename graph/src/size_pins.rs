//! Nodes that pin a dynamic-size model to one size: the model declares inputs whose height/width (or sequence
//! length) are symbolic, but a Reshape on the data path reshapes to a constant shape that holds the extent
//! of one size (`[1, 256, 384]` rather than `[0, -1, 384]`, as a static export writes it). ONNX Runtime then
//! fails at any other size, and TensorRT cannot build an optimisation profile over sizes.
//!
//! The walk is conservative: a tensor "follows the size" when it is computed from an input with symbolic
//! non-batch dimensions, and stops following it after global pooling, a reduction over any axis but the last
//! (the mean over tokens; LayerNorm's mean over channels keeps it), a Gather of one index (the class token),
//! a pinned Reshape, or a Resize to constant sizes. Shape computations (Shape, Size) never follow it.

use std::collections::HashSet;

use onnx_protobuf::{tensor_proto::DataType, GraphProto, NodeProto, TensorProto};

use crate::GraphIndex;

/// A node that fixes a size-dependent tensor to one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizePin {
    /// The node's name (its output's name where the node has none).
    pub node: String,
    /// Its op type.
    pub op: String,
    /// The constant shape it reshapes to.
    pub shape: Vec<i64>,
}

/// The inputs (not initializers) with a symbolic or unknown dimension after the batch axis.
pub fn dynamic_inputs(graph: &GraphProto) -> Vec<String> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name.as_str()))
        .filter(|v| {
            v.type_
                .as_ref()
                .filter(|t| t.has_tensor_type())
                .and_then(|t| t.tensor_type().shape.as_ref())
                .is_some_and(|s| s.dim.iter().skip(1).any(|d| !d.has_dim_value() || d.dim_value() <= 0))
        })
        .map(|v| v.name.clone())
        .collect()
}

/// The nodes that pin the size of a model whose inputs have symbolic sizes; none for a fixed-size model.
pub fn size_pins(graph: &GraphProto) -> Vec<SizePin> {
    let mut follows: HashSet<String> = dynamic_inputs(graph).into_iter().collect();
    if follows.is_empty() {
        return Vec::new();
    }
    let index = GraphIndex::new(graph);
    let mut pins = Vec::new();
    // Nodes are in topological order (ONNX requires it).
    for node in &graph.node {
        if !node.input.first().is_some_and(|i| follows.contains(i)) {
            // Elementwise ops follow the size through any input (a constant plus the tokens).
            if elementwise(node) && node.input.iter().any(|i| follows.contains(i)) {
                follows.extend(node.output.iter().cloned());
            }
            continue;
        }
        let keeps = match node.op_type.as_str() {
            "Shape" | "Size" => false,
            "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => false,
            op if op.starts_with("Reduce") || op == "ArgMax" || op == "ArgMin" => {
                !reduces_other_than_last(node, &index, graph)
            }
            "Gather" => !one_index(node, &index, graph),
            "Reshape" => match constant_i64(node.input.get(1), &index, graph) {
                Some(shape) if pinned(&shape) => {
                    pins.push(SizePin { node: name(node), op: node.op_type.clone(), shape });
                    false
                }
                _ => true,
            },
            "Resize" | "Upsample" => {
                node.input.get(3).is_none_or(|s| s.is_empty() || index.constant(graph, s).is_none())
            }
            _ => true,
        };
        if keeps {
            follows.extend(node.output.iter().cloned());
        }
    }
    pins
}

fn elementwise(node: &NodeProto) -> bool {
    matches!(node.op_type.as_str(), "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Where" | "Max" | "Min" | "Concat")
}

fn name(node: &NodeProto) -> String {
    if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    }
}

/// A constant shape with no inferred (-1) entry, whose copied (0) entries are at most the batch axis: it
/// fixes every extent but the batch.
fn pinned(shape: &[i64]) -> bool {
    !shape.contains(&-1) && shape.iter().skip(1).all(|&d| d > 0) && shape.len() >= 2
}

/// Whether a reduction reduces an axis other than the last (axes from the attribute or, opset 18+, the
/// second input; none listed means all axes).
fn reduces_other_than_last(node: &NodeProto, index: &GraphIndex, graph: &GraphProto) -> bool {
    let axes: Option<Vec<i64>> = node
        .attribute
        .iter()
        .find(|a| a.name == "axes" || a.name == "axis")
        .map(|a| if a.name == "axis" { vec![a.i] } else { a.ints.clone() })
        .or_else(|| constant_i64(node.input.get(1), index, graph));
    match axes {
        None => true,
        Some(axes) => axes.iter().any(|&a| a != -1),
    }
}

/// Whether a Gather takes one index (a scalar constant): the class token out of the tokens.
fn one_index(node: &NodeProto, index: &GraphIndex, graph: &GraphProto) -> bool {
    node.input.get(1).and_then(|i| index.constant(graph, i)).is_some_and(|t| t.dims.is_empty())
}

/// The values of an int64 constant.
fn constant_i64(name: Option<&String>, index: &GraphIndex, graph: &GraphProto) -> Option<Vec<i64>> {
    let t: &TensorProto = index.constant(graph, name?)?;
    if t.data_type != DataType::INT64 as i32 {
        return None;
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(8) {
        return None;
    }
    Some(t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_graphs::node;
    use onnx_protobuf::{attribute_proto::AttributeType, AttributeProto, TensorShapeProto, TypeProto, ValueInfoProto};

    fn input(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        let mut t = TypeProto::new();
        let tt = t.mut_tensor_type();
        tt.elem_type = DataType::FLOAT as i32;
        let mut shape = TensorShapeProto::new();
        for d in dims {
            let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
            match d {
                Some(v) => dim.set_dim_value(*v),
                None => dim.set_dim_param("n".into()),
            }
            shape.dim.push(dim);
        }
        tt.shape = Some(shape).into();
        v.type_ = Some(t).into();
        v
    }

    fn shape(name: &str, values: &[i64]) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = DataType::INT64 as i32;
        t.dims = vec![values.len() as i64];
        t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        t
    }

    /// x [batch, 3, H, W] -> Conv -> Reshape(shape) -> ReduceMean(axes) -> Reshape(head) -> y.
    fn graph(dims: &[Option<i64>], tokens: &[i64], reduce_axes: &[i64], head: &[i64]) -> GraphProto {
        let mut g = GraphProto::new();
        g.input.push(input("x", dims));
        g.initializer.extend([shape("tokens", tokens), shape("head", head)]);
        g.node.push(node("Conv", &["x", "w"], "c"));
        g.node.push(node("Reshape", &["c", "tokens"], "t"));
        let mut reduce = node("ReduceMean", &["t"], "m");
        let mut axes = AttributeProto::new();
        axes.name = "axes".into();
        axes.type_ = AttributeType::INTS.into();
        axes.ints = reduce_axes.to_vec();
        reduce.attribute.push(axes);
        g.node.push(reduce);
        g.node.push(node("Reshape", &["m", "head"], "y"));
        g
    }

    #[test]
    fn a_constant_reshape_of_the_tokens_pins_a_dynamic_model_and_a_flexible_one_does_not() {
        let dynamic = [None, Some(3), None, None];
        // Tokens [0, 16, -1]: follows any size; the head's [1, 16] after the mean over tokens is no pin.
        assert!(size_pins(&graph(&dynamic, &[0, 16, -1], &[2], &[1, 16])).is_empty());
        // Tokens [1, 16, 49]: the token count of one size.
        let pins = size_pins(&graph(&dynamic, &[1, 16, 49], &[2], &[1, 16]));
        assert_eq!(pins, vec![SizePin { node: "Reshape_t".into(), op: "Reshape".into(), shape: vec![1, 16, 49] }]);
        // [0, 16, 49] copies only the batch: still pinned.
        assert_eq!(size_pins(&graph(&dynamic, &[0, 16, 49], &[2], &[1, 16])).len(), 1);
        // A mean over the last axis (LayerNorm's) keeps following the size: the head's Reshape pins it.
        let pins = size_pins(&graph(&dynamic, &[0, 16, -1], &[-1], &[1, 16]));
        assert_eq!(pins.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(), vec!["Reshape_y"]);
        // A fixed-size model has nothing to pin.
        assert!(size_pins(&graph(&[None, Some(3), Some(28), Some(28)], &[1, 16, 49], &[2], &[1, 16])).is_empty());
    }
}
