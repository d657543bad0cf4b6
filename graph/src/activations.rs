//! Which tensors are activations: float tensors computed from the graph's fed inputs.

use std::collections::HashSet;

use crate::{infer_element_types, Model};

/// A float32 tensor whose value depends on what is fed to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub name: String,
    /// The node that produces it, or `None` for a graph input.
    pub producer: Option<String>,
    pub producer_op: Option<String>,
}

/// Every float32 activation in graph order: the fed inputs, then each node output that depends on them.
/// Tensors computed only from initializers and constants (folded shape arithmetic, weights) are not
/// activations. Non-float32 floating tensors (float16, ...) are reported in the second list, not collected.
pub fn find_activations(model: &Model) -> (Vec<Activation>, Vec<String>) {
    let graph = &model.proto.graph;
    let types = infer_element_types(graph);
    let mut dynamic: HashSet<&str> = HashSet::new();
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let consider = |name: &'_ str, producer: Option<(&str, &str)>, found: &mut Vec<Activation>, skipped: &mut Vec<String>| {
        match types.get(name) {
            Some(t) if t.is_float32() => found.push(Activation {
                name: name.to_string(),
                producer: producer.map(|p| p.0.to_string()),
                producer_op: producer.map(|p| p.1.to_string()),
            }),
            Some(t) if t.is_floating() => skipped.push(name.to_string()),
            None => skipped.push(name.to_string()),
            _ => {}
        }
    };
    for input in model.feed_inputs() {
        dynamic.insert(input.name.as_str());
        if seen.insert(input.name.as_str()) {
            consider(&input.name, None, &mut found, &mut skipped);
        }
    }
    for node in &graph.node {
        if !node.input.iter().any(|i| dynamic.contains(i.as_str())) {
            continue;
        }
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            dynamic.insert(out.as_str());
            if seen.insert(out.as_str()) {
                consider(out, Some((&node.name, &node.op_type)), &mut found, &mut skipped);
            }
        }
    }
    (found, skipped)
}
