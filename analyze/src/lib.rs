//! From calibration statistics to INT8 ranges: the scale methods (`scales`: max, entropy, percentile, MSE)
//! and which method each tensor takes (the image and attention probabilities always max, then a per-tensor
//! choice, then the scheme's method). Building models from these ranges is the `quantizer` crate's job.

#![forbid(unsafe_code)]

pub mod scales;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

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

/// Every tensor's amax under each method asked for, computed once per method (for all of the statistics'
/// tensors, in parallel) and kept: the `auto` search builds several candidates of each method and the
/// report lists every method's amax, and entropy's threshold search is the expensive part of all of it (0.2 s
/// for a small ViT's 99 tensors). Each amax depends on its tensor and method alone, so the values are those
/// of a one-by-one computation whatever the thread count.
#[derive(Debug, Default)]
pub struct AmaxCache(Mutex<Vec<(Method, Arc<Vec<f32>>)>>);

impl AmaxCache {
    /// Each of `hist`'s tensors' amax under `method`, in the order of `hist.tensors`. A cache serves one `hist`.
    pub fn of(&self, hist: &HistFile, method: Method) -> Arc<Vec<f32>> {
        let mut table = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, values)) = table.iter().find(|(m, _)| *m == method) {
            return Arc::clone(values);
        }
        let values: Arc<Vec<f32>> = Arc::new(hist.tensors.par_iter().map(|t| scales::amax(&t.stats, method)).collect());
        table.push((method, Arc::clone(&values)));
        values
    }

    /// Every activation's amax under [`tensor_method`], for the model whose graph is `graph`.
    pub fn activation_amax(
        &self,
        hist: &HistFile,
        graph: &graph::proto::GraphProto,
        method: Method,
        per_tensor: &BTreeMap<String, Method>,
    ) -> HashMap<String, f32> {
        let image = max_calibrated(graph);
        let mut tables: Vec<(Method, Arc<Vec<f32>>)> = Vec::new();
        let mut out = HashMap::with_capacity(hist.tensors.len());
        for (i, t) in hist.tensors.iter().enumerate() {
            let m = tensor_method(t, &image, method, per_tensor);
            let table = match tables.iter().find(|(k, _)| *k == m) {
                Some((_, table)) => Arc::clone(table),
                None => {
                    let table = self.of(hist, m);
                    tables.push((m, Arc::clone(&table)));
                    table
                }
            };
            out.insert(t.name.clone(), table[i]);
        }
        out
    }
}
