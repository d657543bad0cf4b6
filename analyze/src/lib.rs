//! From calibration statistics to INT8 ranges: the scale methods (`scales`: max, entropy, percentile, MSE)
//! and which method each tensor takes (the image and attention probabilities always max, then a per-tensor
//! choice, then the scheme's method). Building models from these ranges is the `quantizer` crate's job.

#![forbid(unsafe_code)]

pub mod scales;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use histograms::{HistFile, TensorRecord};

use crate::scales::Method;

/// Ops that models put between a raw image input and the network: a cast, scaling and mean/std, and layout
/// changes. A tensor computed from the image by these alone is still the image.
const PREPROCESSING_OPS: [&str; 10] =
    ["Cast", "Div", "Sub", "Mul", "Add", "Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze"];

/// The preprocessed image: the fed inputs, and every tensor computed from one of them alone (other operands
/// constant) through [`PREPROCESSING_OPS`], as in a model that takes uint8 pixels and normalises in its graph.
pub fn image_tensors(graph: &graph::proto::GraphProto) -> BTreeSet<String> {
    let index = graph::GraphIndex::new(graph);
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
pub fn probability_tensors(graph: &graph::proto::GraphProto) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for node in &graph.node {
        let op = node.op_type.as_str();
        let from_probabilities =
            graph::REARRANGING_OPS.contains(&op) && node.input.first().is_some_and(|i| out.contains(i));
        if op == "Softmax" || from_probabilities {
            out.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    out
}

/// The tensors whose amax is always their max: the image ([`image_tensors`]) and attention probabilities
/// ([`probability_tensors`]).
pub fn max_calibrated(graph: &graph::proto::GraphProto) -> BTreeSet<String> {
    let mut set = image_tensors(graph);
    set.extend(probability_tensors(graph));
    set
}

/// The method a tensor's amax comes from: the image (graph inputs, and the image as preprocessed inside the
/// graph, see [`image_tensors`]) always uses max, since its histogram is a few pixel-value spikes that
/// KL/percentile/MSE searches clip (entropy clipped 29 % of the Fashion-MNIST input), and so do attention
/// probabilities (`fixed` is [`max_calibrated`]); then a per-tensor choice; then the global method.
pub fn tensor_method(
    t: &TensorRecord,
    fixed: &BTreeSet<String>,
    method: Method,
    per_tensor: &BTreeMap<String, Method>,
) -> Method {
    if t.producer.is_none() || fixed.contains(&t.name) {
        return Method::Max;
    }
    per_tensor.get(&t.name).copied().unwrap_or(method)
}

/// Calibrated max |x| of every tensor in the statistics.
pub fn max_abs(hist: &HistFile) -> HashMap<String, f32> {
    hist.tensors.iter().map(|t| (t.name.clone(), t.stats.amax())).collect()
}

/// Every activation's amax under [`tensor_method`], for the model whose graph is `graph`.
pub fn activation_amax(
    hist: &HistFile,
    graph: &graph::proto::GraphProto,
    method: Method,
    per_tensor: &BTreeMap<String, Method>,
) -> HashMap<String, f32> {
    let image = max_calibrated(graph);
    hist.tensors
        .iter()
        .map(|t| (t.name.clone(), scales::amax(&t.stats, tensor_method(t, &image, method, per_tensor))))
        .collect()
}
