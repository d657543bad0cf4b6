//! Element-type inference for tensors that the exporter left without `value_info`.

use std::collections::HashMap;

use onnx_protobuf::{attribute_proto::AttributeType, tensor_proto::DataType, GraphProto, NodeProto, TypeProto};

/// An ONNX tensor element type (the `TensorProto.DataType` code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ElemType(pub i32);

impl ElemType {
    /// float32.
    pub const FLOAT: ElemType = ElemType(DataType::FLOAT as i32);
    /// int64.
    pub const INT64: ElemType = ElemType(DataType::INT64 as i32);
    /// bool.
    pub const BOOL: ElemType = ElemType(DataType::BOOL as i32);
    /// int8.
    pub const INT8: ElemType = ElemType(DataType::INT8 as i32);
    /// uint8.
    pub const UINT8: ElemType = ElemType(DataType::UINT8 as i32);

    /// Whether this is float32.
    pub fn is_float32(self) -> bool {
        self == Self::FLOAT
    }

    /// The type's name as ONNX and numpy users say it ("float32", "uint8", ...), for messages.
    pub fn name(self) -> String {
        let known = [
            (DataType::FLOAT, "float32"),
            (DataType::UINT8, "uint8"),
            (DataType::INT8, "int8"),
            (DataType::UINT16, "uint16"),
            (DataType::INT16, "int16"),
            (DataType::INT32, "int32"),
            (DataType::INT64, "int64"),
            (DataType::STRING, "string"),
            (DataType::BOOL, "bool"),
            (DataType::FLOAT16, "float16"),
            (DataType::DOUBLE, "float64"),
            (DataType::UINT32, "uint32"),
            (DataType::UINT64, "uint64"),
            (DataType::BFLOAT16, "bfloat16"),
        ];
        known
            .iter()
            .find(|(d, _)| *d as i32 == self.0)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| format!("ONNX element type {}", self.0))
    }

    /// Any floating-point type (float32, float16, bfloat16, float64).
    pub fn is_floating(self) -> bool {
        [DataType::FLOAT, DataType::FLOAT16, DataType::BFLOAT16, DataType::DOUBLE].iter().any(|d| *d as i32 == self.0)
    }
}

/// Whether a node of `graph` computes in FP16 or BF16: one that is not a Cast or a Constant has such an
/// output (an FP16 layer, or a DequantizeLinear with an FP16 scale). Weights that are FP16 only in storage,
/// read through a Cast to float32, do not count: the model computes in float32.
pub fn computes_in_low_precision(graph: &GraphProto) -> bool {
    let low = [DataType::FLOAT16 as i32, DataType::BFLOAT16 as i32];
    let types = infer_element_types(graph);
    graph
        .node
        .iter()
        .filter(|n| !matches!(n.op_type.as_str(), "Cast" | "Constant"))
        .any(|n| n.output.iter().any(|o| types.get(o).is_some_and(|t| low.contains(&t.0))))
}

fn type_of(tp: &TypeProto) -> Option<ElemType> {
    if tp.has_tensor_type() && tp.tensor_type().elem_type != 0 {
        Some(ElemType(tp.tensor_type().elem_type))
    } else {
        None
    }
}

/// Element types of every tensor in the graph: declared ones (inputs, outputs, value_info, initializers)
/// first, then inferred node by node in graph order from ONNX's type rules for the operator.
pub fn infer_element_types(graph: &GraphProto) -> HashMap<String, ElemType> {
    let mut types: HashMap<String, ElemType> = HashMap::new();
    for init in &graph.initializer {
        types.insert(init.name.clone(), ElemType(init.data_type));
    }
    for vi in graph.input.iter().chain(&graph.output).chain(&graph.value_info) {
        if let Some(t) = vi.type_.as_ref().and_then(type_of) {
            types.insert(vi.name.clone(), t);
        }
    }
    // Nodes are topologically sorted in a valid ONNX graph; one pass per node suffices, and a second pass
    // picks up anything an out-of-order export left behind.
    for _ in 0..2 {
        for node in &graph.node {
            let inferred = infer_node(node, &types);
            for (i, out) in node.output.iter().enumerate() {
                if out.is_empty() || types.contains_key(out) {
                    continue;
                }
                if let Some(t) = inferred.get(i).copied().flatten() {
                    types.insert(out.clone(), t);
                }
            }
        }
    }
    types
}

fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn infer_node(node: &NodeProto, types: &HashMap<String, ElemType>) -> Vec<Option<ElemType>> {
    let input = |i: usize| node.input.get(i).filter(|n| !n.is_empty()).and_then(|n| types.get(n)).copied();
    let first_known = || node.input.iter().filter_map(|n| types.get(n)).copied().next();
    let n_out = node.output.len();
    let all = |t: Option<ElemType>| vec![t; n_out];
    match node.op_type.as_str() {
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => all(Some(ElemType::INT64)),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor" | "IsNaN"
        | "IsInf" => all(Some(ElemType::BOOL)),
        "Cast" => all(attr_int(node, "to").map(|t| ElemType(t as i32))),
        "CastLike" => all(input(1)),
        "Constant" => {
            let t = node.attribute.iter().find_map(|a| match a.type_.enum_value() {
                Ok(AttributeType::TENSOR) => a.t.as_ref().map(|t| ElemType(t.data_type)),
                Ok(AttributeType::FLOAT | AttributeType::FLOATS) => Some(ElemType::FLOAT),
                Ok(AttributeType::INT | AttributeType::INTS) => Some(ElemType::INT64),
                _ => None,
            });
            all(t)
        }
        "ConstantOfShape" => {
            let t = node
                .attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref())
                .map(|t| ElemType(t.data_type))
                .or(Some(ElemType::FLOAT));
            all(t)
        }
        "QuantizeLinear" => all(input(2).or(Some(ElemType::UINT8))),
        "DequantizeLinear" => all(input(1)),
        "Where" => all(input(1)),
        "TopK" => vec![input(0), Some(ElemType::INT64)],
        "MaxPool" => {
            let mut v = vec![input(0)];
            v.extend(std::iter::repeat_n(Some(ElemType::INT64), n_out.saturating_sub(1)));
            v
        }
        "Dropout" => {
            let mut v = vec![input(0)];
            v.extend(std::iter::repeat_n(Some(ElemType::BOOL), n_out.saturating_sub(1)));
            v
        }
        "LayerNormalization" => all(input(0)),
        "Range" => all(input(0)),
        // If/Loop/Scan outputs depend on their subgraphs: leave them unknown rather than guess.
        "If" | "Loop" | "Scan" => all(None),
        // Elementwise, shape-moving, normalisation, reduction and linear-algebra ops keep their first input's
        // type; where input 0 is unknown (e.g. an optional input), the first known one is the best evidence.
        _ => all(input(0).or_else(first_known)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = outputs.iter().map(|s| s.to_string()).collect();
        n
    }

    fn float_input(name: &str) -> onnx_protobuf::ValueInfoProto {
        let mut x = onnx_protobuf::ValueInfoProto::new();
        x.name = name.into();
        let mut tp = TypeProto::new();
        tp.mut_tensor_type().elem_type = DataType::FLOAT as i32;
        x.type_ = Some(tp).into();
        x
    }

    #[test]
    fn infers_through_shape_ops_and_casts() {
        let mut g = GraphProto::new();
        g.input.push(float_input("x"));
        g.node.push(node("Relu", &["x"], &["r"]));
        g.node.push(node("Shape", &["r"], &["s"]));
        g.node.push(cast("s", "c", DataType::FLOAT));
        g.node.push(node("Equal", &["c", "r"], &["e"]));
        g.node.push(node("Where", &["e", "r", "c"], &["w"]));
        let t = infer_element_types(&g);
        assert_eq!(t["r"], ElemType::FLOAT);
        assert_eq!(t["s"], ElemType::INT64);
        assert_eq!(t["c"], ElemType::FLOAT);
        assert_eq!(t["e"], ElemType::BOOL);
        assert_eq!(t["w"], ElemType::FLOAT);
    }

    fn cast(input: &str, output: &str, to: DataType) -> NodeProto {
        let mut c = node("Cast", &[input], &[output]);
        let mut a = onnx_protobuf::AttributeProto::new();
        a.name = "to".into();
        a.i = to as i64;
        a.type_ = AttributeType::INT.into();
        c.attribute.push(a);
        c
    }

    #[test]
    fn low_precision_means_a_layer_computes_in_it_not_that_a_weight_is_stored_in_it() {
        let mut g = GraphProto::new();
        g.input.push(float_input("x"));
        let mut w = onnx_protobuf::TensorProto::new();
        w.name = "w16".into();
        w.data_type = DataType::FLOAT16 as i32;
        g.initializer.push(w);
        // FP16 storage read through a Cast: float32 computation.
        g.node.push(cast("w16", "w", DataType::FLOAT));
        g.node.push(node("Mul", &["x", "w"], &["y"]));
        assert!(!computes_in_low_precision(&g));
        // An FP16 layer.
        g.node.push(cast("y", "y16", DataType::FLOAT16));
        g.node.push(node("Relu", &["y16"], &["r16"]));
        assert!(computes_in_low_precision(&g));
    }
}
