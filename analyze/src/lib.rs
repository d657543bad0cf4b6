//! From calibration statistics to INT8 ranges: the scale methods (`scales`: max, entropy, percentile, MSE)
//! and which method each tensor takes (the image and attention probabilities always max, then a per-tensor
//! choice, then the scheme's method). Building models from these ranges is the `quantizer` crate's job.

#![forbid(unsafe_code)]

pub mod scales;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use histograms::{HistFile, TensorRecord};

use crate::scales::Method;

pub use graph::roles::{image_tensors, max_calibrated, probability_tensors};

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
