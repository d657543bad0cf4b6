//! Depthwise equalization: give every input channel of a depthwise Conv the same range before its input is
//! quantized with one per-tensor scale.
//!
//! A depthwise Conv's input channels often span ranges far apart (on the Paddle PP-LCNet orientation
//! classifier a median channel reaches a twentieth of the largest), so a per-tensor INT8 scale leaves the
//! small channels a handful of levels. Each output channel of a depthwise Conv reads one input channel, so
//! multiplying input channel `k` by `c_k` and dividing its output channels' weights by `c_k` computes the same
//! function, and per-output-channel weight scales quantize the divided weights exactly as well as before
//! (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019, move
//! ranges between layers the same way). The factors come from per-channel maxima measured on calibration
//! samples (`c_k = max_j x_j / x_k`), applied by one Mul in front of the Conv: a pointwise layer with a
//! constant, the kind TensorRT merges with the activation before it (not measured: no TensorRT here).

use std::collections::BTreeMap;

use graph::{GraphIndex, GraphPatch, Model};
use histograms::ChannelMax;
use serde::Serialize;

use crate::{insert_scaling_mul, SmoothError};

/// The largest factor a channel is scaled up by: a channel that reached a thousandth of the largest on the
/// calibration samples is nearly dead, and scaling it further only magnifies what the samples did not see.
pub const EQUALIZE_LIMIT: f32 = 1000.0;

/// One depthwise Conv input that was equalized.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EqualizedTensor {
    /// The activation the Convs read before equalization.
    pub tensor: String,
    /// The output of the inserted Mul, which the Convs now read and which is quantized.
    pub quantized: String,
    /// The inserted Mul.
    pub node: String,
    /// The depthwise Convs reading it, whose weights were divided.
    pub convs: Vec<String>,
    /// Channels.
    pub channels: usize,
    /// The largest channel maximum (every equalized channel's maximum on the measured samples).
    pub amax: f32,
    /// The smallest channel maximum (of the channels that were not all zero).
    pub channel_min: f32,
    /// The largest factor applied.
    pub factor_max: f32,
}

/// What equalization did (ranges.json `equalization`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Equalization {
    /// Every equalized activation, in graph order of its first Conv.
    pub tensors: Vec<EqualizedTensor>,
    /// Depthwise Conv inputs left alone, and why.
    pub skipped: Vec<(String, String)>,
}

/// The factors `c_k = max_j x_j / x_k`, at most [`EQUALIZE_LIMIT`]; 1 for a channel that is all zeros.
pub fn equalizing_factors(x_max: &[f32]) -> Vec<f32> {
    let top = x_max.iter().copied().filter(|x| x.is_finite()).fold(0.0, f32::max);
    x_max
        .iter()
        .map(|&x| if x > 0.0 && x.is_finite() && top > 0.0 { (top / x).min(EQUALIZE_LIMIT) } else { 1.0 })
        .collect()
}

/// Equalizes the input of every depthwise Conv (`placement::depthwise_convs`) whose per-channel maxima (axis
/// 1) are in `channel_max`, rewriting `model` in place. The FP32 function is unchanged (up to float rounding).
pub fn equalize(model: &mut Model, channel_max: &BTreeMap<String, ChannelMax>) -> Result<Equalization, SmoothError> {
    let graph = &model.proto.graph;
    let index = GraphIndex::new(graph);
    let mut groups: BTreeMap<String, Vec<placement::DepthwiseConv>> = BTreeMap::new();
    let mut order = Vec::new();
    for c in placement::depthwise_convs(graph) {
        if !groups.contains_key(&c.input) {
            order.push(c.input.clone());
        }
        groups.entry(c.input.clone()).or_default().push(c);
    }

    /// One activation's rewrite, computed before the graph is touched.
    struct Edit {
        x: String,
        factors: Vec<f32>,
        x_max: Vec<f32>,
        /// Dims of the factor: `[1, C, 1, ...]`, as many as the Conv's input has.
        factor_dims: Vec<i64>,
        convs: Vec<usize>,
        /// (weight name, divided values, dims).
        weights: Vec<(String, Vec<f32>, Vec<i64>)>,
    }
    let mut edits = Vec::new();
    let mut skipped = Vec::new();
    for x in order {
        let convs = &groups[&x];
        let Some(x_max) = channel_max.get(&x).map(|c| c.max.clone()) else {
            skipped.push((x, "no per-channel maxima".into()));
            continue;
        };
        if convs.iter().any(|c| c.channels != x_max.len()) {
            let message = format!("{} channels measured, the Conv groups {}", x_max.len(), convs[0].channels);
            skipped.push((x, message));
            continue;
        }
        let factors = equalizing_factors(&x_max);
        let mut weights = Vec::new();
        for c in convs {
            let w = index.constant(graph, &c.weight).expect("depthwise_convs checked the weight");
            let mut values = model.tensor_f32(w)?;
            // Output channel o reads input channel o / (C_out / C_in); each holds `values.len() / C_out` taps.
            let per_out = values.len() / w.dims[0] as usize;
            let multiplier = w.dims[0] as usize / c.channels;
            for (o, taps) in values.chunks_mut(per_out.max(1)).enumerate() {
                let f = factors[o / multiplier];
                taps.iter_mut().for_each(|v| *v /= f);
            }
            weights.push((c.weight.clone(), values, w.dims.clone()));
        }
        let rank = weights.first().map_or(4, |w| w.2.len());
        let mut factor_dims = vec![1; rank];
        factor_dims[1] = factors.len() as i64;
        edits.push(Edit { x, factors, x_max, factor_dims, convs: convs.iter().map(|c| c.node).collect(), weights });
    }

    let mut patch = GraphPatch::new(&model.proto.graph);
    let mut tensors = Vec::new();
    let graph = model.proto.graph.mut_or_insert_default();
    for e in edits {
        for (name, values, dims) in &e.weights {
            crate::set_weight(&mut patch, graph, &index, name, dims, values, "equalized");
        }
        let names = ["equalize_factor", "equalized", "Equalize"];
        let (out, node) = insert_scaling_mul(&mut patch, graph, &e.x, &e.factors, &e.factor_dims, &e.convs, names);
        let live = e.x_max.iter().copied().filter(|&m| m > 0.0 && m.is_finite());
        tensors.push(EqualizedTensor {
            quantized: out,
            node,
            convs: e.convs.iter().map(|&n| graph.node[n].name.clone()).collect(),
            channels: e.factors.len(),
            amax: e.x_max.iter().copied().filter(|m| m.is_finite()).fold(0.0, f32::max),
            channel_min: live.reduce(f32::min).unwrap_or(0.0),
            factor_max: e.factors.iter().copied().fold(1.0, f32::max),
            tensor: e.x,
        });
    }
    patch.apply(graph);
    Ok(Equalization { tensors, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_bring_every_channel_to_the_largest_within_the_limit() {
        let f = equalizing_factors(&[4.0, 1.0, 0.0, 0.001, f32::NAN]);
        assert_eq!(f, vec![1.0, 4.0, 1.0, EQUALIZE_LIMIT, 1.0]);
        assert_eq!(equalizing_factors(&[0.0, 0.0]), vec![1.0, 1.0]);
    }
}
