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

/// The input of every MaxPool and GlobalMaxPool, the last pool first, with the tensors that hold the pool's
/// output values: the output, then what value-preserving readers make of it (`passes_values`; PyTorch exports
/// put float-to-float Casts and Transposes between a pool and the next Conv). Max pooling commutes with INT8
/// rounding and clipping (both keep the order of values), so a pool's input quantized with the scale of the
/// pool's output adds no error of its own: the Q/DQ model gives such an input, where the pools alone read it in
/// INT8, the range of the first of those tensors that has one (`quantizer::qdq::insert_qdq`); the last pool
/// first, so a chain of pools takes the last one's. `index` is `graph`'s.
pub fn max_pooled(graph: &graph::proto::GraphProto, index: &graph::GraphIndex) -> Vec<(String, Vec<String>)> {
    let mut pools = Vec::new();
    for node in graph.node.iter().rev() {
        if !matches!(node.op_type.as_str(), "MaxPool" | "GlobalMaxPool") || !node.domain.is_empty() {
            continue;
        }
        let (Some(input), Some(output)) = (node.input.first(), node.output.first()) else { continue };
        let mut same = vec![output.clone()];
        // A few steps: a pool's output reaches the next layer through at most a Cast and a Transpose or two.
        while same.len() < 8 {
            let last = same.last().expect("the output is there");
            let readers = index.consumers.get(last).into_iter().flatten();
            let Some(&(next, _)) = readers.into_iter().find(|&&(r, _)| passes_values(&graph.node[r])) else { break };
            match graph.node[next].output.first() {
                Some(o) => same.push(o.clone()),
                None => break,
            }
        }
        pools.push((input.clone(), same));
    }
    pools
}

/// Whether `node`'s first output holds its first input's values (rearranged, or cast to float32, which a float
/// activation already is).
fn passes_values(node: &graph::proto::NodeProto) -> bool {
    let to_float32 = || node.attribute.iter().any(|a| a.name == "to" && a.i == 1);
    node.domain.is_empty()
        && (graph::REARRANGING_OPS.contains(&node.op_type.as_str()) || (node.op_type == "Cast" && to_float32()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::proto::{AttributeProto, GraphProto, NodeProto};

    fn node(op: &str, input: &str, output: &str) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.input.push(input.into());
        n.output.push(output.into());
        n
    }

    fn cast(input: &str, output: &str, to: i64) -> NodeProto {
        let mut n = node("Cast", input, output);
        let mut a = AttributeProto::new();
        a.name = "to".into();
        a.i = to;
        n.attribute.push(a);
        n
    }

    #[test]
    fn pool_outputs_are_followed_through_value_preserving_ops_last_pool_first() {
        let mut g = GraphProto::new();
        g.node.extend([
            node("Relu", "x", "a"),
            node("MaxPool", "a", "p1"),
            cast("p1", "p1_float", 1),
            node("Transpose", "p1_float", "p1_nchw"),
            node("MaxPool", "p1_nchw", "p2"),
            node("Conv", "p2", "c"),
            // A pool whose input is also read elsewhere, and one whose output is cast to float16 (another value).
            node("MaxPool", "c", "p3"),
            node("Relu", "c", "r"),
            node("MaxPool", "r", "p4"),
            cast("p4", "p4_half", 10),
        ]);
        let pools = max_pooled(&g, &graph::GraphIndex::new(&g));
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pools,
            vec![
                ("r".to_string(), owned(&["p4"])),
                ("c".to_string(), owned(&["p3"])),
                ("p1_nchw".to_string(), owned(&["p2"])),
                ("a".to_string(), owned(&["p1", "p1_float", "p1_nchw"])),
            ]
        );
    }
}
