//! Weights a graph computes from constants: a Transpose of the stored weight (`MatMul(x, Transpose(W))`, which
//! recent PyTorch exporters leave where their constant folding stops at large tensors) or a standardization
//! (BiT-style convolutions compute `(W - mean) / std` in the forward pass). Such a GEMM's weight is not a
//! constant in the graph, so without this it would keep a float weight behind INT8 data, which TensorRT runs
//! out of INT8 altogether. ONNX Runtime computes these weights once, as it does when it folds constants in a
//! session, and they become initializers: the placement then sees weights and quantizes them per channel.

use std::collections::HashSet;

use graph::proto::TensorProto;
use graph::{GraphIndex, Model};

use crate::CalibrateError;

/// Replaces every GEMM/Conv input that depends on no graph input but is not a constant (behind Cast/Identity)
/// by an initializer of its value, computed by ONNX Runtime, and drops what only computed it. Returns how many
/// tensors were folded.
pub fn fold_computed_weights(model: &mut Model) -> Result<usize, CalibrateError> {
    let graph = &model.proto.graph;
    let index = GraphIndex::new(graph);
    let independent = placement::input_independent(graph);
    let mut targets: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for node in graph.node.iter().filter(|n| placement::GEMM_OPS.contains(&n.op_type.as_str())) {
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            let computed = independent.contains(input) && placement::constant_behind(graph, &index, input).is_none();
            // One producer per folded tensor, so that dropping it leaves no other output behind.
            let single = index.producer.get(input).is_some_and(|&p| graph.node[p].output.len() == 1);
            if computed && single && seen.insert(input.clone()) {
                targets.push(input.clone());
            }
        }
    }
    if targets.is_empty() {
        return Ok(0);
    }
    // Each computed tensor's producer (its only output is the tensor) gives way to an initializer of its value.
    let values = evaluate(model, &targets)?;
    if values.is_empty() {
        return Ok(0);
    }
    let graph = model.proto.graph.mut_or_insert_default();
    let mut kept_nodes = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        match values.iter().find(|(name, ..)| node.output.first() == Some(name)) {
            Some((name, dims, data)) => {
                let mut t = TensorProto::new();
                t.name = name.clone();
                t.dims = dims.clone();
                graph::set_float32(&mut t, data);
                graph.initializer.push(t);
            }
            None => kept_nodes.push(node),
        }
    }
    graph.node = kept_nodes;
    // What only computed the folded weights goes (the stored weights, the standardization's nodes).
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    graph::prune_to_outputs(graph, &outputs, |_| graph::proto::ValueInfoProto::new());
    tracing::info!(
        "{}: {} weights computed from constants folded into initializers",
        model.path.display(),
        values.len()
    );
    Ok(values.len())
}

/// A computed tensor: name, dims, float32 values.
type Computed = (String, Vec<i64>, Vec<f32>);

/// The float32 value of each of `targets`, computed by ONNX Runtime from a copy of the graph cut to them. A
/// target that is not float32 is left out.
fn evaluate(model: &Model, targets: &[String]) -> Result<Vec<Computed>, CalibrateError> {
    let mut proto = model.proto.clone();
    let graph = proto.graph.mut_or_insert_default();
    graph::prune_to_outputs(graph, targets, crate::collect::float_output);
    // Nothing left reads a graph input; a session would still ask for them to be fed.
    let stored: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    graph.input.retain(|i| stored.contains(&i.name));
    let bytes = graph::proto::Message::write_to_bytes(&proto).map_err(graph::GraphError::Encode)?;
    let label = format!("{} (weights computed from constants)", model.path.display());
    let mut cfg = runtime::SessionConfig::new(label.clone());
    cfg.external_data_dir = Some(model.dir.clone());
    let mut session = runtime::session_from_bytes(&bytes, &cfg)?;
    let outputs = runtime::run(&mut session, &label, &[], targets)?;
    Ok(targets
        .iter()
        .zip(outputs)
        .filter_map(|(name, out)| out.as_f32().map(|v| (name.clone(), out.shape(), v.to_vec())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::proto::{tensor_proto::DataType, ModelProto, OperatorSetIdProto};
    use test_support::conv_models::{ints, node};

    fn tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = dims.to_vec();
        graph::set_float32(&mut t, values);
        t
    }

    /// A BiT-style convolution: `Conv(x, (w - mean(w)) / 2)`, the weight standardized in the graph.
    #[test]
    fn a_weight_the_graph_computes_becomes_an_initializer_of_its_value() {
        let mut g = graph::proto::GraphProto::new();
        let mut x = crate::collect::float_output("x");
        for d in [1, 2, 3, 3] {
            let mut dim = graph::proto::tensor_shape_proto::Dimension::new();
            dim.set_dim_value(d);
            x.type_.mut_or_insert_default().mut_tensor_type().shape.mut_or_insert_default().dim.push(dim);
        }
        g.input.push(x);
        let w: Vec<f32> = (0..8).map(|v| v as f32).collect();
        g.initializer.push(tensor("w", &[4, 2, 1, 1], &w));
        g.initializer.push(tensor("c", &[], &[2.0]));
        g.node.push(node("ReduceMean", &["w"], "mean", vec![ints("axes", &[1, 2, 3])]));
        g.node.push(node("Sub", &["w", "mean"], "d", vec![]));
        g.node.push(node("Div", &["d", "c"], "s", vec![]));
        g.node.push(node("Conv", &["x", "s"], "y", vec![]));
        g.output.push(crate::collect::float_output("y"));
        let mut proto = ModelProto::new();
        proto.ir_version = 8;
        let mut opset = OperatorSetIdProto::new();
        opset.version = 17;
        proto.opset_import.push(opset);
        proto.graph = Some(g).into();
        let mut model = Model::in_memory(proto, "standardized.onnx");
        assert_eq!(fold_computed_weights(&mut model).unwrap(), 1);
        let g = &model.proto.graph;
        assert_eq!(g.node.iter().map(|n| n.op_type.as_str()).collect::<Vec<_>>(), ["Conv"]);
        assert_eq!(g.initializer.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["s"], "w and c only fed it");
        let s = &g.initializer[0];
        assert_eq!((s.dims.as_slice(), s.data_type), ([4i64, 2, 1, 1].as_slice(), DataType::FLOAT as i32));
        // Each output channel's pair (2k, 2k + 1) minus its mean 2k + 0.5, halved.
        let expected: Vec<f32> = (0..8).map(|i| if i % 2 == 0 { -0.25 } else { 0.25 }).collect();
        assert_eq!(model.tensor_f32(s).unwrap(), expected);
        assert_eq!(fold_computed_weights(&mut model).unwrap(), 0, "nothing left to fold");
    }
}
