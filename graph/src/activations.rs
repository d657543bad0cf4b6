//! Which tensors are activations: float tensors whose values depend on what is fed to the model.

use std::collections::HashSet;

use crate::{infer_element_types, Model};

/// A float32 tensor whose values depend on the model's fed inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// Tensor name.
    pub name: String,
    /// The node that produces it, or `None` for a graph input.
    pub producer: Option<String>,
    /// Op type of the producing node (`None` for graph inputs).
    pub producer_op: Option<String>,
    /// The producing node's inputs.
    pub producer_inputs: Vec<String>,
}

/// Ops whose outputs depend only on the shape of their input, never on its values.
const SHAPE_ONLY: &[&str] = &["Shape", "Size"];

/// Tensors of `graph` that are the same for every sample: initializers, Constant outputs, what shape-only ops
/// (`Shape`, `Size`) give, and every output of a node that reads only such tensors (an RNN's zero initial state
/// from `ConstantOfShape(Shape(x))`, folded shape arithmetic). Graph inputs, tensors the graph does not say how to
/// compute, nodes with a subgraph (If, Loop, Scan: they may read outer values their inputs do not list) and
/// random generators are not. Unlike `placement::input_independent` (what TensorRT can fold when it builds an
/// engine), shape-derived tensors count: with a dynamic batch they are computed at run time, but they are no
/// activation with statistics ([`find_activations`]).
pub fn fixed_tensors(graph: &crate::proto::GraphProto) -> HashSet<String> {
    let mut fixed: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    for node in &graph.node {
        let op = node.op_type.as_str();
        let subgraph = node.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty());
        let random = op.starts_with("Random") || op == "Multinomial" || op == "Bernoulli";
        let same = op == "Constant"
            || SHAPE_ONLY.contains(&op)
            || (!subgraph && !random && node.input.iter().all(|i| i.is_empty() || fixed.contains(i)));
        if same {
            fixed.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    fixed
}

/// Every float32 activation in graph order: the fed inputs, then each node output whose values depend on
/// them. Tensors computed only from initializers, constants and input shapes (folded shape arithmetic,
/// `1/sqrt(head_dim)` from `Shape`, an expanded class token) are not activations: their values do not
/// change with the images. Floating tensors of other types (float16, ...) or of unknown type are returned in
/// the second list, not collected.
pub fn find_activations(model: &Model) -> (Vec<Activation>, Vec<String>) {
    let graph = &model.proto.graph;
    let types = infer_element_types(graph);
    let mut dynamic: HashSet<&str> = HashSet::new();
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut consider = |act: Activation| match types.get(&act.name) {
        Some(t) if t.is_float32() => found.push(act),
        Some(t) if t.is_floating() => skipped.push(act.name),
        None => skipped.push(act.name),
        _ => {}
    };
    for input in model.feed_inputs() {
        if dynamic.insert(input.name.as_str()) {
            consider(Activation {
                name: input.name.clone(),
                producer: None,
                producer_op: None,
                producer_inputs: vec![],
            });
        }
    }
    for node in &graph.node {
        if SHAPE_ONLY.contains(&node.op_type.as_str()) || !node.input.iter().any(|i| dynamic.contains(i.as_str())) {
            continue;
        }
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if dynamic.insert(out.as_str()) {
                consider(Activation {
                    name: out.clone(),
                    producer: Some(node.name.clone()),
                    producer_op: Some(node.op_type.clone()),
                    producer_inputs: node.input.clone(),
                });
            }
        }
    }
    (found, skipped)
}
