//! SmoothQuant-style smoothing: move the range of outlier activation channels into the weights before
//! quantizing, so that one per-tensor activation scale fits every channel.
//!
//! Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models"
//! (ICML 2023), eq. 4: for input channel j of a GEMM `Y = X W`,
//!
//! ```text
//! s_j = max|X_j|^alpha / max|W_j|^(1 - alpha),   Y = (X diag(s)^-1) (diag(s) W)
//! ```
//!
//! so the product, and the FP32 model's outputs, do not change. `1/s` is folded into the constants of the
//! op that produces X when it is a per-channel affine (a LayerNormalization's scale and bias, or a
//! decomposed LayerNorm's trailing Mul/Add), so TensorRT sees a plain LayerNorm -> Q/DQ -> MatMul; otherwise
//! one Mul by `1/s` goes in front of the GEMMs. GEMMs reading the same X share one `s` (their weights'
//! channel maxima are pooled). `max|X_j|` are the per-channel maxima `calibrate --smooth` measures on the
//! unsmoothed model before it collects the statistics of the smoothed one.
//!
//! Every GEMM that can be smoothed is, whatever its precision will be: the function does not change, so a
//! GEMM left in float is unaffected, and `calibrate --smooth` and `analyze` (which re-applies the smoothing
//! recorded in the .hist) produce the same model whatever precision list comes later.

#![forbid(unsafe_code)]

mod equalize;

pub use equalize::{equalize, equalizing_factors, Equalization, EqualizedTensor, EQUALIZE_LIMIT};

use std::collections::BTreeMap;

use graph::proto::{tensor_proto::DataType, NodeProto, TensorProto};
use graph::{GraphIndex, GraphPatch, Model};
use histograms::ChannelMax;
use serde::Serialize;

/// Errors of smoothing; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SmoothError {
    /// A weight or LayerNorm constant could not be read.
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    /// alpha outside [0, 1].
    #[error("--smooth {0}: alpha must be from 0 to 1 (SmoothQuant uses 0.5 for most models)")]
    Alpha(f32),
}

/// Smoothing factors are kept within [1/LIMIT, LIMIT]: a channel that is all zeros (in X or in W) would
/// otherwise get 0 or infinity.
const SCALE_LIMIT: f32 = 1e5;

/// One activation that was smoothed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SmoothedTensor {
    /// The activation the GEMMs read before smoothing.
    pub tensor: String,
    /// The tensor that now carries `X / s`, which the GEMMs read: the same name when `1/s` was folded into
    /// its producer, else the output of the inserted Mul.
    pub quantized: String,
    /// How `1/s` was applied: `"layernorm"`, `"affine"` (a Mul and/or Add with per-channel constants) or
    /// `"mul"` (a Mul node inserted).
    pub applied: String,
    /// The node whose constants absorbed `1/s`, or the inserted Mul.
    pub node: String,
    /// The GEMMs reading it, whose weights absorbed `s`.
    pub gemms: Vec<String>,
    /// Channels.
    pub channels: usize,
    /// max |X| before smoothing.
    pub amax_before: f32,
    /// max |X / s| over the calibration images.
    pub amax: f32,
    /// Smallest and largest smoothing factor.
    pub scale_min: f32,
    /// Largest smoothing factor.
    pub scale_max: f32,
}

/// What smoothing did (ranges.json `smoothing`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Smoothing {
    /// The migration strength alpha.
    pub alpha: f32,
    /// Every smoothed activation, in graph order.
    pub tensors: Vec<SmoothedTensor>,
    /// GEMM inputs left alone, and why.
    pub skipped: Vec<(String, String)>,
}

/// The SmoothQuant factors: `s_j = x_j^alpha / w_j^(1 - alpha)`, 1 where a channel is all zeros.
pub fn factors(x_max: &[f32], w_max: &[f32], alpha: f32) -> Vec<f32> {
    x_max
        .iter()
        .zip(w_max)
        .map(|(&x, &w)| {
            if x > 0.0 && w > 0.0 {
                let s = (x as f64).powf(alpha as f64) / (w as f64).powf(1.0 - alpha as f64);
                (s as f32).clamp(1.0 / SCALE_LIMIT, SCALE_LIMIT)
            } else {
                1.0
            }
        })
        .collect()
}

/// A constant holding one value per channel on the last axis (`[K]` or `[1, ..., 1, K]`), as an initializer.
fn channel_constant(index: &GraphIndex, graph: &graph::proto::GraphProto, name: &str, k: usize) -> Option<usize> {
    let &i = index.initializers.get(name)?;
    let t = &graph.initializer[i];
    let dims_ok = t.dims.last() == Some(&(k as i64)) && t.dims.iter().rev().skip(1).all(|&d| d == 1);
    (t.data_type == DataType::FLOAT as i32 && dims_ok).then_some(i)
}

/// How `1/s` is folded (`"layernorm"` or `"affine"`), the node, and the (node, input slot) of each constant.
type FoldSite = (&'static str, usize, Vec<(usize, usize)>);

/// A folded rewrite: how, the node, and (node, slot, initializer index, values divided by s) per constant.
type Fold = (&'static str, usize, Vec<(usize, usize, usize, Vec<f32>)>);

/// Where `1/s` can go without changing anything but X: the constants of X's producer, when X has no reader
/// but the smoothed GEMMs. Returns how, the node, and the (node, input slot) of each constant to divide.
fn fold_site(
    graph: &graph::proto::GraphProto,
    index: &GraphIndex,
    x: &str,
    gemms: &[usize],
    k: usize,
) -> Option<FoldSite> {
    let readers = index.consumers.get(x)?;
    if readers.iter().any(|(n, _)| !gemms.contains(n)) || graph.output.iter().any(|o| o.name == x) {
        return None;
    }
    let &p = index.producer.get(x)?;
    let node = &graph.node[p];
    let constant = |n: usize, slot: usize| {
        graph.node[n].input.get(slot).and_then(|name| channel_constant(index, graph, name, k)).map(|_| (n, slot))
    };
    // The one non-constant operand of a binary node, with the slot of the constant.
    let split = |n: usize| -> Option<(usize, usize)> {
        let node = &graph.node[n];
        match (constant(n, 0), constant(n, 1)) {
            (None, Some(c)) if node.input.len() == 2 => Some((0, c.1)),
            (Some(c), None) if node.input.len() == 2 => Some((1, c.1)),
            _ => None,
        }
    };
    match node.op_type.as_str() {
        "LayerNormalization" => {
            let axis = node.attribute.iter().find(|a| a.name == "axis").map_or(-1, |a| a.i);
            let scale = constant(p, 1)?;
            let mut sites = vec![scale];
            if node.input.get(2).is_some_and(|b| !b.is_empty()) {
                sites.push(constant(p, 2)?);
            }
            // Statistics over the last axis only, so that the scale and bias are per channel of X.
            (axis == -1 && node.output.len() == 1).then_some(("layernorm", p, sites))
        }
        "Mul" => {
            let (_, c) = split(p)?;
            Some(("affine", p, vec![(p, c)]))
        }
        "Add" => {
            // (y * g + b) / s = y * (g / s) + b / s: the Add's constant and the Mul's in front of it.
            let (other, c) = split(p)?;
            let &m = index.producer.get(&node.input[other])?;
            let (_, g) = (graph.node[m].op_type == "Mul").then(|| split(m)).flatten()?;
            let only_reader = index.consumers.get(&node.input[other]).is_some_and(|r| r.len() == 1);
            only_reader.then(|| ("affine", p, vec![(m, g), (p, c)]))
        }
        _ => None,
    }
}

/// Gives the weight `name` (of shape `dims`) the float32 values `values`: in place for an initializer; for any
/// other constant (a Constant node's value, or a stored weight behind a Cast), a new initializer
/// (`{name}_{suffix}`) that its readers read instead (what computed it, read by nothing else then, is dropped
/// with the other dead nodes).
pub(crate) fn set_weight(
    patch: &mut GraphPatch,
    graph: &mut graph::proto::GraphProto,
    index: &GraphIndex,
    name: &str,
    dims: &[i64],
    values: &[f32],
    suffix: &str,
) {
    match index.initializers.get(name) {
        Some(&i) => graph::set_float32(&mut graph.initializer[i], values),
        None => {
            let mut t = TensorProto::new();
            t.name = patch.fresh(&format!("{name}_{suffix}"));
            t.data_type = DataType::FLOAT as i32;
            t.dims = dims.to_vec();
            graph::set_float32(&mut t, values);
            for &(n, slot) in index.consumers.get(name).into_iter().flatten() {
                GraphPatch::rewire(graph, n, slot, &t.name);
            }
            patch.add_initializer(t);
        }
    }
}

/// Puts `x * factors` (a Mul with the constant `factors` of shape `dims`) in front of the nodes `readers`, which
/// read `x` in slot 0, right after `x`'s producer. `names`: the suffixes of the constant, the Mul's output and
/// the Mul. Returns the output's and the Mul's names.
pub(crate) fn insert_scaling_mul(
    patch: &mut GraphPatch,
    graph: &mut graph::proto::GraphProto,
    x: &str,
    factors: &[f32],
    dims: &[i64],
    readers: &[usize],
    names: [&str; 3],
) -> (String, String) {
    let factor = patch.fresh(&format!("{x}_{}", names[0]));
    let out = patch.fresh(&format!("{x}_{}", names[1]));
    let mut t = TensorProto::new();
    t.name = factor.clone();
    t.dims = dims.to_vec();
    graph::set_float32(&mut t, factors);
    patch.add_initializer(t);
    let mut mul = NodeProto::new();
    mul.op_type = "Mul".into();
    mul.name = patch.fresh(&format!("{x}_{}", names[2]));
    mul.input = vec![x.to_string(), factor];
    mul.output = vec![out.clone()];
    for &n in readers {
        GraphPatch::rewire(graph, n, 0, &out);
    }
    let name = mul.name.clone();
    patch.insert_after_producer_of(x, mul);
    (out, name)
}

/// Smooths the input of every MatMul/Gemm with a constant weight whose per-channel maxima are in
/// `channel_max`, rewriting `model` in place. The FP32 function is unchanged (up to float rounding).
pub fn smooth(
    model: &mut Model,
    channel_max: &BTreeMap<String, ChannelMax>,
    alpha: f32,
) -> Result<Smoothing, SmoothError> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(SmoothError::Alpha(alpha));
    }
    let graph = &model.proto.graph;
    let index = GraphIndex::new(graph);
    let mut groups: BTreeMap<String, Vec<placement::SmoothableGemm>> = BTreeMap::new();
    for g in placement::smoothable_gemms(graph) {
        groups.entry(g.input.clone()).or_default().push(g);
    }
    let weight_readers = |w: &str| index.consumers.get(w).map_or(0, Vec::len);

    /// One activation's rewrite, computed before the graph is touched.
    struct Edit {
        x: String,
        s: Vec<f32>,
        x_max: Vec<f32>,
        gemms: Vec<usize>,
        /// (weight name, dims, values times s per input channel).
        weights: Vec<(String, Vec<i64>, Vec<f32>)>,
        /// Folded into the producer's constants, or `None` for an inserted Mul.
        fold: Option<Fold>,
    }
    let mut edits = Vec::new();
    let mut skipped = Vec::new();
    for (x, gemms) in groups {
        let Some(x_max) = channel_max.get(&x).map(|c| c.max.clone()) else {
            skipped.push((x, "no per-channel maxima".into()));
            continue;
        };
        let k = x_max.len();
        let mut w_max = vec![0f32; k];
        let mut weights = Vec::new();
        let mut why = None;
        for g in &gemms {
            let node = &graph.node[g.node].name;
            // An initializer or a Constant node's value (paddle2onnx keeps weights in Constant nodes), also behind
            // a Cast or Identity (weights stored in FP16): the scaled weight is then a float32 initializer of its
            // own, which the GEMM reads directly.
            let stored = [DataType::FLOAT as i32, DataType::FLOAT16 as i32];
            let w = placement::constant_behind(graph, &index, &g.weight).filter(|w| stored.contains(&w.data_type));
            let Some(w) = w else {
                why = Some(format!("the weight of {node} is not a float32 or FP16 constant"));
                break;
            };
            if weight_readers(&g.weight) != 1 {
                why = Some(format!("the weight of {node} is shared with other nodes"));
                break;
            }
            if w.dims.get(g.channel_axis) != Some(&(k as i64)) {
                why = Some(format!("the weight of {node} has shape {:?}, not {k} input channels", w.dims));
                break;
            }
            let values = model.tensor_f32(w)?;
            let cols = w.dims[1] as usize;
            for (i, v) in values.iter().enumerate() {
                let j = if g.channel_axis == 0 { i / cols } else { i % cols };
                if v.is_finite() {
                    w_max[j] = w_max[j].max(v.abs());
                }
            }
            weights.push((g.weight.clone(), w.dims.clone(), values, g.channel_axis, cols));
        }
        if let Some(why) = why {
            skipped.push((x, why));
            continue;
        }
        let s = factors(&x_max, &w_max, alpha);
        // W' = diag(s) W: row j (MatMul, Gemm) or column j (Gemm with transB) times s_j.
        let weights = weights
            .into_iter()
            .map(|(name, dims, mut values, axis, cols)| {
                for (n, v) in values.iter_mut().enumerate() {
                    *v *= s[if axis == 0 { n / cols } else { n % cols }];
                }
                (name, dims, values)
            })
            .collect();
        let nodes: Vec<usize> = gemms.iter().map(|g| g.node).collect();
        let fold = match fold_site(graph, &index, &x, &nodes, k) {
            Some((how, p, sites)) => {
                let mut divided = Vec::new();
                for (n, slot) in sites {
                    let i = index.initializers[&graph.node[n].input[slot]];
                    let mut values = model.tensor_f32(&graph.initializer[i])?;
                    for (v, s) in values.iter_mut().zip(&s) {
                        *v /= s;
                    }
                    divided.push((n, slot, i, values));
                }
                Some((how, p, divided))
            }
            None => None,
        };
        edits.push(Edit { x, s, x_max, gemms: nodes, weights, fold });
    }

    // Inserted Muls go right after the producer of what they read (graph inputs: first): still sorted.
    let mut patch = GraphPatch::new(&model.proto.graph);
    let mut tensors = Vec::new();
    let graph = model.proto.graph.mut_or_insert_default();
    for e in edits {
        for (name, dims, values) in &e.weights {
            set_weight(&mut patch, graph, &index, name, dims, values, "smoothed");
        }
        let gemm_names: Vec<String> = e.gemms.iter().map(|&n| graph.node[n].name.clone()).collect();
        let (quantized, applied, node) = match e.fold {
            Some((how, p, divided)) => {
                for (n, slot, i, values) in divided {
                    let name = graph.node[n].input[slot].clone();
                    // A constant other nodes also read gets a copy of its own.
                    if index.consumers.get(&name).map_or(0, Vec::len) > 1 {
                        let mut copy = graph.initializer[i].clone();
                        copy.name = patch.fresh(&format!("{name}_smoothed"));
                        graph::set_float32(&mut copy, &values);
                        GraphPatch::rewire(graph, n, slot, &copy.name);
                        patch.add_initializer(copy);
                    } else {
                        graph::set_float32(&mut graph.initializer[i], &values);
                    }
                }
                (e.x.clone(), how.to_string(), graph.node[p].name.clone())
            }
            None => {
                let inverse: Vec<f32> = e.s.iter().map(|s| 1.0 / s).collect();
                let names = ["smooth_factor", "smoothed", "Smooth"];
                let (out, name) =
                    insert_scaling_mul(&mut patch, graph, &e.x, &inverse, &[e.s.len() as i64], &e.gemms, names);
                (out, "mul".into(), name)
            }
        };
        let amax = e.x_max.iter().zip(&e.s).map(|(x, s)| x / s).fold(0.0, f32::max);
        tensors.push(SmoothedTensor {
            quantized,
            applied,
            node,
            gemms: gemm_names,
            channels: e.s.len(),
            amax_before: e.x_max.iter().copied().fold(0.0, f32::max),
            amax,
            scale_min: e.s.iter().copied().fold(f32::INFINITY, f32::min),
            scale_max: e.s.iter().copied().fold(0.0, f32::max),
            tensor: e.x,
        });
    }
    patch.apply(graph);
    Ok(Smoothing { alpha, tensors, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_follow_the_paper_and_leave_empty_channels_alone() {
        let s = factors(&[16.0, 1.0, 0.0, 4.0], &[1.0, 4.0, 2.0, 0.0], 0.5);
        assert_eq!(s, vec![4.0, 0.5, 1.0, 1.0]);
        // alpha 1 moves the whole activation range; alpha 0 only divides by the weight range.
        assert_eq!(factors(&[8.0], &[2.0], 1.0), vec![8.0]);
        assert_eq!(factors(&[8.0], &[2.0], 0.0), vec![0.5]);
        assert_eq!(factors(&[1e30], &[1e-30], 0.5), vec![SCALE_LIMIT]);
    }
}
