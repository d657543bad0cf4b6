//! What a tensor is, read from the graph alone: the image as fed and preprocessed inside the graph, and
//! attention probabilities. Both are always max-calibrated, so calibration keeps only their range
//! (`calibrate`) and analysis never searches a threshold for them (`analyze`).

use std::collections::BTreeSet;

/// Ops that models put between a raw image input and the network: a cast, scaling and mean/std, and layout
/// changes. A tensor computed from the image by these alone is still the image.
const PREPROCESSING_OPS: [&str; 10] =
    ["Cast", "Div", "Sub", "Mul", "Add", "Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze"];

/// The preprocessed image: the fed inputs, and every tensor computed from one of them alone (other operands
/// constant) through `PREPROCESSING_OPS`, as in a model that takes uint8 pixels and normalises in its graph.
pub fn image_tensors(graph: &crate::proto::GraphProto) -> BTreeSet<String> {
    let index = crate::GraphIndex::new(graph);
    let mut image: BTreeSet<String> =
        graph.input.iter().filter(|i| !index.initializers.contains_key(&i.name)).map(|i| i.name.clone()).collect();
    // ONNX graphs are topologically sorted: one pass follows every chain.
    for node in graph.node.iter().filter(|n| PREPROCESSING_OPS.contains(&n.op_type.as_str())) {
        let mut dynamic = node.input.iter().filter(|i| !i.is_empty() && index.constant(graph, i).is_none());
        if let (Some(only), None) = (dynamic.next(), dynamic.next()) {
            if image.contains(only) {
                image.extend(node.output.iter().cloned());
            }
        }
    }
    image
}

/// Softmax outputs and whatever only rearranges them (Reshape, Transpose, ...): attention probabilities in
/// [0, 1], whose few large values are the attention itself. A search clips them: entropy put the fixture
/// ViT's first at 0.28 of a 0.63 max, and INT8 attention then cost the DINOv2 ViT-S/14 0.017 of output
/// cosine (BENCHMARKS.md). Their range is bounded, so max calibration loses little resolution.
pub fn probability_tensors(graph: &crate::proto::GraphProto) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for node in &graph.node {
        let op = node.op_type.as_str();
        let from_probabilities =
            crate::REARRANGING_OPS.contains(&op) && node.input.first().is_some_and(|i| out.contains(i));
        if op == "Softmax" || from_probabilities {
            out.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    out
}

/// The tensors whose amax is always their max: the image ([`image_tensors`]) and attention probabilities
/// ([`probability_tensors`]).
pub fn max_calibrated(graph: &crate::proto::GraphProto) -> BTreeSet<String> {
    let mut set = image_tensors(graph);
    set.extend(probability_tensors(graph));
    set
}
