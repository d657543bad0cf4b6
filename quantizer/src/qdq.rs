//! Explicit quantization: QuantizeLinear/DequantizeLinear pairs on activations, int8 per-channel weights
//! behind DequantizeLinear. Symmetric, zero point 0, as TensorRT's strongly typed mode expects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use graph::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, ModelProto, NodeProto, TensorProto,
};
use graph::{GraphIndex, GraphPatch, Model};

use crate::QuantizeError;
use analyze::scales::ZERO_RANGE_AMAX;
use placement::{Decision, FloatType, PlacementOptions};

/// What was quantized, for the tables and the cache.
#[derive(Debug, Clone, Default)]
pub struct QdqSummary {
    /// Activation tensors given Q/DQ, with their amax and the scale stored for it, in graph order.
    pub activations: Vec<(String, f32, f32)>,
    /// Weight initializers stored as int8: (name, axis, the quantization), in node order.
    pub weights: Vec<(String, usize, Arc<QuantizedWeights>)>,
}

/// Which quantization of a weight a build asks for: initializer name, channel axis, clip and scale type
/// (everything [`quantize_weights`] reads besides the model's own values).
type WeightKey = (String, usize, WeightClip, FloatType);

/// Quantized weights kept across the builds of one model: the search builds a dozen candidates and
/// sensitivity one variant per node, and their weights differ only in the clip and the scale type. Off for
/// models too large to hold another byte per weight ([`WeightMemo::for_weights`]).
#[derive(Debug, Default)]
pub struct WeightMemo {
    kept: Option<Mutex<HashMap<WeightKey, Arc<QuantizedWeights>>>>,
}

/// Models with more weight values than this quantize their weights anew in every build: a kept int8 copy per
/// scale type would add up to two bytes per weight (600 MB for a ViT-L/14), against `bench large`'s bounds.
const WEIGHT_MEMO_MAX_VALUES: u64 = 64 << 20;

impl WeightMemo {
    /// A memo for a model of `values` weight values: on up to `WEIGHT_MEMO_MAX_VALUES`.
    pub fn for_weights(values: u64) -> WeightMemo {
        WeightMemo { kept: (values <= WEIGHT_MEMO_MAX_VALUES).then(Default::default) }
    }

    /// The quantization of `key`, computed by `quantize` when it is not kept.
    fn get_or(
        &self,
        key: WeightKey,
        quantize: impl FnOnce() -> Result<QuantizedWeights, QuantizeError>,
    ) -> Result<Arc<QuantizedWeights>, QuantizeError> {
        let Some(kept) = &self.kept else { return quantize().map(Arc::new) };
        let lock = || kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(w) = lock().get(&key) {
            return Ok(Arc::clone(w));
        }
        // Computed outside the lock: two builds at once may both quantize a weight, with the same result.
        let w = Arc::new(quantize()?);
        lock().insert(key, Arc::clone(&w));
        Ok(w)
    }
}

pub(crate) fn scalar_f32(name: &str, v: f32) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DataType::FLOAT as i32;
    t.float_data = vec![v];
    t
}

fn zero_points(name: &str, n: Option<usize>) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DataType::INT8 as i32;
    if let Some(n) = n {
        t.dims = vec![n as i64];
        t.raw_data = vec![0u8; n];
    } else {
        t.raw_data = vec![0u8];
    }
    t
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str, axis: Option<usize>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.to_string()];
    if let Some(axis) = axis {
        let mut a = AttributeProto::new();
        a.name = "axis".into();
        a.i = axis as i64;
        a.type_ = AttributeType::INT.into();
        n.attribute.push(a);
    }
    n
}

pub use graph::{FP16_MAX, FP16_MIN_NORMAL};

/// The Q/DQ scale for `amax` as the model stores it in `scale_type`: amax/127, kept within the type's
/// normal range (never 0, never subnormal, never infinite) and rounded to the type, so that the int8 values
/// are computed with exactly the scale that TensorRT and ONNX Runtime read back. In strongly typed TensorRT a
/// DequantizeLinear's output type is its scale's type (onnx-tensorrt's importer passes the scale type to
/// addDequantize), so an FP16 model's scales must be FP16 values.
pub fn stored_scale(amax: f32, scale_type: FloatType) -> f32 {
    let scale = amax / 127.0;
    match scale_type {
        FloatType::Fp32 => scale.clamp(f32::MIN_POSITIVE, f32::MAX),
        FloatType::Fp16 => half::f16::from_f32(scale.clamp(FP16_MIN_NORMAL, FP16_MAX)).to_f32(),
    }
}

/// A weight quantized per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// The int8 values.
    pub q: Vec<i8>,
    /// Per channel, the amax chosen (max |w| or the clip), before it became a stored scale.
    pub amax: Vec<f32>,
    /// Per channel, max |w| (equal to `amax` unless clipped).
    pub max: Vec<f32>,
    /// Per channel, the scale stored in the model ([`stored_scale`] of `amax`), which `q` is quantized with.
    pub scale: Vec<f32>,
}

/// QuantizeLinear's int8: `x` rounded half to even, saturated to [-127, 127] (symmetric). Clamped first (the
/// bounds are integers, so the order does not change the result), then rounded by adding and subtracting
/// 1.5 x 2^23, which float32's round-to-nearest-even does exactly for |x| < 2^22: the same value as
/// `round_ties_even`, without its call into libm per weight. NaN gives 0, as `as i8` does.
fn saturate_round(x: f32) -> i8 {
    const ROUND: f32 = 12_582_912.0;
    ((x.clamp(-127.0, 127.0) + ROUND) - ROUND) as i8
}

/// Symmetric per-channel int8 weights along `axis`, with scales stored in `scale_type`.
pub fn quantize_weights(
    values: &[f32],
    dims: &[i64],
    axis: usize,
    clip: WeightClip,
    scale_type: FloatType,
) -> QuantizedWeights {
    let channels = dims[axis] as usize;
    let inner = (dims[axis + 1..].iter().product::<i64>() as usize).max(1);
    // Runs of `inner` values share a channel, the channels repeating in order: no division per value (the
    // search quantizes every weight once per candidate).
    let runs = || values.chunks(inner).zip((0..channels.max(1)).cycle());
    let mut amax = vec![0f32; channels];
    for (run, c) in runs() {
        amax[c] = run.iter().fold(amax[c], |m, v| m.max(v.abs()));
    }
    let max = amax.clone();
    if clip == WeightClip::Mse {
        let mut by_channel: Vec<Vec<f32>> = vec![Vec::new(); channels];
        for (run, c) in runs() {
            by_channel[c].extend_from_slice(run);
        }
        for (a, w) in amax.iter_mut().zip(&by_channel) {
            *a = mse_clip(w, *a);
        }
    }
    for a in amax.iter_mut() {
        if !(*a > 0.0 && a.is_finite()) {
            *a = ZERO_RANGE_AMAX;
        }
    }
    let scale: Vec<f32> = amax.iter().map(|&a| stored_scale(a, scale_type)).collect();
    let mut q = Vec::with_capacity(values.len());
    for (run, c) in runs() {
        q.extend(run.iter().map(|v| saturate_round(v / scale[c])));
    }
    QuantizedWeights { q, amax, max, scale }
}

/// How a weight channel's amax is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightClip {
    /// The channel's max |w|: nothing clipped.
    #[default]
    Max,
    /// The clip, from max |w| down to half of it in 1 % steps, with the least squared error of the int8
    /// round trip (the search TensorRT's and ModelOpt's tooling offer for weights).
    Mse,
}

impl WeightClip {
    /// The name on the command line and in ranges.json.
    pub fn name(self) -> &'static str {
        match self {
            WeightClip::Max => "max",
            WeightClip::Mse => "mse",
        }
    }
}

impl std::str::FromStr for WeightClip {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max" => Ok(WeightClip::Max),
            "mse" => Ok(WeightClip::Mse),
            other => Err(format!("'{other}': expected 'max' or 'mse'")),
        }
    }
}

/// Each weighted node's clip: a default and per-node choices (from `sensitivity --choose-methods`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightClips {
    /// For nodes without a choice of their own.
    pub default: WeightClip,
    /// Node name -> its clip.
    pub per_node: BTreeMap<String, WeightClip>,
}

impl WeightClips {
    /// `clip` for every node.
    pub fn all(clip: WeightClip) -> WeightClips {
        WeightClips { default: clip, per_node: BTreeMap::new() }
    }

    /// The clip of the node called `node`.
    pub fn of(&self, node: &str) -> WeightClip {
        self.per_node.get(node).copied().unwrap_or(self.default)
    }

    /// How ranges.json names the configuration: the clip, or `auto` with per-node choices.
    pub fn name(&self) -> &'static str {
        if self.per_node.is_empty() {
            self.default.name()
        } else {
            "auto"
        }
    }
}

/// Candidate clips of the MSE search, as shares of max |w|: 1.00, 0.99, ..., 0.50.
const CLIP_STEPS: usize = 51;

/// The amax in (0.5, 1] x `max` whose int8 round trip of `w` has the least squared error; the largest on
/// ties, so that a channel that gains nothing keeps its max.
pub fn mse_clip(w: &[f32], max: f32) -> f32 {
    if !(max > 0.0 && max.is_finite()) {
        return max;
    }
    let error = |amax: f32| -> f64 {
        let scale = amax / 127.0;
        w.iter()
            .filter(|v| v.is_finite())
            .map(|v| {
                let q = (v / scale).round_ties_even().clamp(-127.0, 127.0) * scale;
                ((v - q) as f64).powi(2)
            })
            .sum()
    };
    let mut best = (error(max), max);
    for step in 1..CLIP_STEPS {
        let amax = max * (1.0 - step as f32 / 100.0);
        let e = error(amax);
        if e < best.0 {
            best = (e, amax);
        }
    }
    best.1
}

/// Builds the Q/DQ model. `amax` gives every activation's threshold (from the .hist and the method); the
/// scales are computed for storage in `scale_type` (see [`stored_scale`]) and written as float32, which the
/// float-type conversion then turns into that type without rounding. Quantized weights come from `memo` where
/// an earlier build of `model` made them (`&WeightMemo::default()`: none kept).
pub fn insert_qdq(
    model: &Model,
    decisions: &[Decision],
    options: &PlacementOptions,
    amax: &HashMap<String, f32>,
    weight_clips: &WeightClips,
    scale_type: FloatType,
    memo: &WeightMemo,
) -> Result<(ModelProto, QdqSummary), QuantizeError> {
    let source = &model.proto.graph;
    let opset = graph::default_opset(&model.proto);
    if opset < 13 {
        return Err(QuantizeError::Model {
            path: model.path.clone(),
            message: format!("opset {opset}: per-channel DequantizeLinear needs opset 13 or later; re-export the model with opset >= 13"),
        });
    }
    let index = GraphIndex::new(source);
    let types = graph::infer_element_types(source);
    let dynamic: HashSet<String> = graph::find_activations(model).0.into_iter().map(|a| a.name).collect();
    let plan = placement::plan(source, decisions, options);
    let mut act_uses: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (tensor, uses) in &plan.activations {
        if !amax.contains_key(tensor) {
            // A float tensor computed at run time with no statistics cannot get a scale: say so rather
            // than leave a node half quantized. Fusion-only pairs are simply left out.
            let float = types.get(tensor).is_some_and(|t| t.is_float32());
            if let Some(u) = uses.iter().find(|u| u.required) {
                if float && index.constant(source, tensor).is_none() && dynamic.contains(tensor.as_str()) {
                    return Err(QuantizeError::Model {
                        path: model.path.clone(),
                        message: format!(
                            "node '{}' is to run in INT8 but its input '{tensor}' has no statistics in the .hist; \
                             calibrate with --tensors all, or deny the node in the precision file",
                            source.node[u.node].name
                        ),
                    });
                }
            }
            continue;
        }
        act_uses.insert(tensor.clone(), uses.iter().map(|u| (u.node, u.slot)).collect());
    }
    let int8: std::collections::BTreeSet<usize> = {
        let names: HashSet<&str> = decisions.iter().filter(|d| d.int8).map(|d| d.node.as_str()).collect();
        source.node.iter().enumerate().filter(|(_, n)| names.contains(n.name.as_str())).map(|(i, _)| i).collect()
    };
    let mut weight_uses = plan.weights.clone();
    // Inputs of a quantized Concat share one scale: the largest amax among them.
    let mut shared: HashMap<String, f32> = HashMap::new();
    for &n in &int8 {
        let node = &source.node[n];
        if node.op_type == "Concat" {
            let m = node.input.iter().filter_map(|i| amax.get(i)).fold(0f32, |a, &b| a.max(b));
            for i in &node.input {
                shared.insert(i.clone(), m);
            }
        }
    }
    // A max pool's input that only pools read in INT8 takes the range of what the pool makes: quantization
    // commutes with max pooling, so that Q/DQ then adds no error of its own, where a range of the input's own
    // clips the window maxima the output is made of (MTCNN's O-Net: 14.1 -> 24.8 dB with entropy ranges).
    // The image keeps its max range. An input that several pools read (SPP's pools of three sizes) takes the
    // largest of their ranges, so that none of their outputs is clipped below its own.
    let pools = analyze::max_pooled(source, &index);
    // Most models have no pool (the search builds every candidate through here): the image only where needed.
    let image = if pools.is_empty() { Default::default() } else { analyze::max_calibrated(source) };
    let is_pool = |n: usize| matches!(source.node[n].op_type.as_str(), "MaxPool" | "GlobalMaxPool");
    for (input, outputs) in pools {
        let Some(uses) = act_uses.get(&input) else { continue };
        let fed = source.input.iter().any(|i| i.name == input);
        if fed || image.contains(&input) || !uses.iter().all(|&(n, _)| is_pool(n)) {
            continue;
        }
        if let Some(a) = outputs.iter().find_map(|o| shared.get(o).or_else(|| amax.get(o)).copied()) {
            shared.entry(input).and_modify(|b| *b = b.max(a)).or_insert(a);
        }
    }

    let mut proto = model.proto.clone();
    let graph = proto.graph.mut_or_insert_default();
    // New nodes go right after the producer of what they read (graph inputs: first), keeping topological order.
    let mut patch = GraphPatch::new(graph);
    let mut summary = QdqSummary::default();

    // Activations, in graph order of their producers for deterministic output.
    let mut acts: Vec<(&String, &Vec<(usize, usize)>)> = act_uses.iter().collect();
    acts.sort_by_key(|(t, _)| (index.producer.get(*t).map(|&p| p + 1).unwrap_or(0), t.to_string()));
    for (tensor, uses) in acts {
        let a = shared.get(tensor).or_else(|| amax.get(tensor)).copied().unwrap_or(ZERO_RANGE_AMAX);
        let scale_name = patch.fresh(&format!("{tensor}_scale"));
        let zp_name = patch.fresh(&format!("{tensor}_zero_point"));
        let q_out = patch.fresh(&format!("{tensor}_quantized"));
        let dq_out = patch.fresh(&format!("{tensor}_dequantized"));
        let scale = stored_scale(a, scale_type);
        patch.add_initializer(scalar_f32(&scale_name, scale));
        patch.add_initializer(zero_points(&zp_name, None));
        let q = node(
            "QuantizeLinear",
            &patch.fresh(&format!("{tensor}_QuantizeLinear")),
            &[tensor, &scale_name, &zp_name],
            &q_out,
            None,
        );
        let dq = node(
            "DequantizeLinear",
            &patch.fresh(&format!("{tensor}_DequantizeLinear")),
            &[&q_out, &scale_name, &zp_name],
            &dq_out,
            None,
        );
        patch.insert_after_producer_of(tensor, q);
        patch.insert_after_producer_of(tensor, dq);
        for &(n, slot) in uses {
            GraphPatch::rewire(graph, n, slot, &dq_out);
        }
        summary.activations.push((tensor.clone(), a, scale));
    }

    // Weights: int8 initializers behind a per-channel DequantizeLinear.
    let mut done: HashMap<(String, usize), String> = HashMap::new();
    weight_uses.sort();
    for (n, slot, axis) in weight_uses {
        let w_name = source.node[n].input[slot].clone();
        if let Some(dq_out) = done.get(&(w_name.clone(), axis)) {
            GraphPatch::rewire(graph, n, slot, dq_out);
            continue;
        }
        let w = placement::constant_behind(source, &index, &w_name).ok_or_else(|| QuantizeError::Model {
            path: model.path.clone(),
            message: format!("weight '{w_name}' of node '{}' is not a constant", source.node[n].name),
        })?;
        let clip = weight_clips.of(&source.node[n].name);
        let quantized = memo.get_or((w_name.clone(), axis, clip, scale_type), || {
            Ok(quantize_weights(&model.tensor_f32(w)?, &w.dims, axis, clip, scale_type))
        })?;
        let (q, ch_scale) = (&quantized.q, &quantized.scale);
        let mut qt = TensorProto::new();
        qt.name = patch.fresh(&format!("{w_name}_quantized"));
        qt.data_type = DataType::INT8 as i32;
        qt.dims = w.dims.clone();
        qt.raw_data = q.iter().map(|&v| v as u8).collect();
        let mut st = TensorProto::new();
        st.name = patch.fresh(&format!("{w_name}_scale"));
        st.data_type = DataType::FLOAT as i32;
        st.dims = vec![ch_scale.len() as i64];
        st.float_data = ch_scale.clone();
        let zp = zero_points(&patch.fresh(&format!("{w_name}_zero_point")), Some(ch_scale.len()));
        let dq_out = patch.fresh(&format!("{w_name}_dequantized"));
        let dq = node(
            "DequantizeLinear",
            &patch.fresh(&format!("{w_name}_DequantizeLinear")),
            &[&qt.name, &st.name, &zp.name],
            &dq_out,
            Some(axis),
        );
        patch.insert_after(None, dq);
        for t in [qt, st, zp] {
            patch.add_initializer(t);
        }
        GraphPatch::rewire(graph, n, slot, &dq_out);
        done.insert((w_name.clone(), axis), dq_out);
        summary.weights.push((w_name, axis, quantized));
    }
    // Drop what fed replaced weights and nothing reads any more: Cast/Identity chains (FP16 weights cast in
    // the graph), Constant nodes (weights stored as nodes, as Paddle exports them), the float initializers.
    patch.prune(graph, |n| matches!(n.op_type.as_str(), "Cast" | "Identity" | "Constant"));
    patch.apply(graph);
    Ok((proto, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_models::{empty_model, float_value as value, load_written};
    use placement::{decide, PrecisionFile, Selection};

    /// The activations' amax of [`residual_model`].
    fn residual_amax() -> HashMap<String, f32> {
        [("x", 2.0f32), ("c", 1.0), ("y", 3.0)].iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// `model` with Q/DQ inserted as `decisions` say, at [`residual_amax`], FP32 scales, no weights kept.
    fn insert_fp32(model: &Model, decisions: &[Decision]) -> (ModelProto, QdqSummary) {
        let (options, clips) = (Default::default(), WeightClips::default());
        insert_qdq(model, decisions, &options, &residual_amax(), &clips, FloatType::Fp32, &WeightMemo::default())
            .unwrap()
    }

    /// x -> Conv(w, 8 output channels) -> c; y = Add(c, x); z = Concat(y, x).
    fn residual_model(dir: &std::path::Path) -> Model {
        let mut m = empty_model(17);
        let g = m.graph.mut_or_insert_default();
        g.input.push(value("x"));
        g.output.push(value("z"));
        let mut w = TensorProto::new();
        w.name = "w".into();
        w.data_type = DataType::FLOAT as i32;
        // 8 output channels on the graph input: a Conv TensorRT has INT8 kernels for (the default placement
        // keeps narrower ones float).
        w.dims = vec![8, 1, 1, 1];
        w.float_data = vec![0.5; 8];
        g.initializer.push(w);
        g.node.push(node("Conv", "conv", &["x", "w"], "c", None));
        g.node.push(node("Add", "add", &["c", "x"], "y", None));
        let mut concat = node("Concat", "concat", &["y", "x"], "z", None);
        concat.attribute.push({
            let mut a = AttributeProto::new();
            a.name = "axis".into();
            a.i = 1;
            a.type_ = AttributeType::INT.into();
            a
        });
        g.node.push(concat);
        load_written(&m, &dir.join("residual.onnx"))
    }

    #[test]
    fn residual_add_quantizes_only_the_non_conv_branch_and_concat_inputs_share_a_scale() {
        let dir = tempfile::tempdir().unwrap();
        let model = residual_model(dir.path());
        let allow_concat =
            PrecisionFile { allow: Selection { nodes: vec![], ops: vec!["Concat".into()] }, ..Default::default() };
        let decisions = decide(&model.proto.graph, &allow_concat, &Default::default(), "test").unwrap();
        let (proto, summary) = insert_fp32(&model, &decisions);
        let nodes = &proto.graph.node;
        let dq_outputs: Vec<&str> =
            nodes.iter().filter(|n| n.op_type == "DequantizeLinear").map(|n| n.output[0].as_str()).collect();
        let add = nodes.iter().find(|n| n.name == "add").unwrap();
        assert!(!dq_outputs.contains(&add.input[0].as_str()), "the Conv branch of the residual Add got Q/DQ");
        assert!(dq_outputs.contains(&add.input[1].as_str()), "the identity branch of the residual Add has no Q/DQ");
        // Concat(y, x): both inputs quantized with the larger amax (3.0).
        let concat = nodes.iter().find(|n| n.name == "concat").unwrap();
        assert!(concat.input.iter().all(|i| dq_outputs.contains(&i.as_str())));
        let shared: Vec<f32> =
            summary.activations.iter().filter(|(n, ..)| n == "x" || n == "y").map(|(_, a, _)| *a).collect();
        assert_eq!(shared, vec![3.0, 3.0]);
        // The float weight is gone, replaced by its int8 copy.
        assert!(proto.graph.initializer.iter().all(|t| t.name != "w"));
    }

    #[test]
    fn a_weight_stored_in_a_constant_node_leaves_no_dead_float_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = residual_model(dir.path()).proto;
        let g = m.graph.mut_or_insert_default();
        // The weight as a Constant node (paddle2onnx's way), plus a Constant the graph reads as it is.
        let w = g.initializer.remove(0);
        let constant = |t: TensorProto, out: &str| {
            let mut n = node("Constant", &format!("{out}_node"), &[], out, None);
            n.attribute.push({
                let mut a = AttributeProto::new();
                a.name = "value".into();
                a.t = Some(t).into();
                a.type_ = AttributeType::TENSOR.into();
                a
            });
            n
        };
        g.node.insert(0, constant(w, "w"));
        let model = load_written(&m, &dir.path().join("constant_weight.onnx"));
        let decisions = decide(&model.proto.graph, &Default::default(), &Default::default(), "test").unwrap();
        let (proto, summary) = insert_fp32(&model, &decisions);
        assert_eq!(summary.weights.len(), 1, "the Conv weight in a Constant node was not quantized");
        let read: HashSet<&str> = proto.graph.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
        let dead: Vec<&str> = proto
            .graph
            .node
            .iter()
            .filter(|n| {
                n.output.iter().all(|o| !read.contains(o.as_str()) && proto.graph.output.iter().all(|g| &g.name != o))
            })
            .map(|n| n.name.as_str())
            .collect();
        assert!(dead.is_empty(), "nodes nobody reads are left in the Q/DQ model: {dead:?}");
    }

    #[test]
    fn kept_weights_build_what_fresh_ones_do_for_every_scale_type_and_clip() {
        let dir = tempfile::tempdir().unwrap();
        let model = residual_model(dir.path());
        let decisions = decide(&model.proto.graph, &Default::default(), &Default::default(), "test").unwrap();
        let amax = residual_amax();
        let memo = WeightMemo::for_weights(model.weight_values());
        let build = |clip: WeightClip, scale_type: FloatType, memo: &WeightMemo| {
            let clips = WeightClips::all(clip);
            let (proto, summary) =
                insert_qdq(&model, &decisions, &Default::default(), &amax, &clips, scale_type, memo).unwrap();
            assert!(!summary.weights.is_empty(), "nothing to keep");
            graph::proto::Message::write_to_bytes(&proto).unwrap()
        };
        // Each combination asked twice of one memo, in an order where a key missing the scale type or the clip
        // would hand the next build the last one's weights.
        for _ in 0..2 {
            for clip in [WeightClip::Max, WeightClip::Mse] {
                for scale_type in [FloatType::Fp32, FloatType::Fp16] {
                    let fresh = build(clip, scale_type, &WeightMemo::default());
                    assert!(fresh == build(clip, scale_type, &memo), "{clip:?} {scale_type:?}");
                }
            }
        }
        assert!(memo.kept.as_ref().is_some_and(|k| k.lock().unwrap().len() == 4));
        assert!(WeightMemo::for_weights(WEIGHT_MEMO_MAX_VALUES + 1).kept.is_none());
    }

    #[test]
    fn saturating_rounding_is_quantize_linears_half_to_even() {
        let reference = |x: f32| x.round_ties_even().clamp(-127.0, 127.0) as i8;
        let mut xs: Vec<f32> = (-600..=600).map(|i| i as f32 * 0.25).collect(); // every half: ties both ways
        xs.extend([0.5, -0.5, 1.5, -2.5, 126.5, -126.5, 127.49, -127.5, 1e9, -1e30, f32::INFINITY]);
        xs.extend([f32::NEG_INFINITY, f32::NAN, -0.0, f32::MIN_POSITIVE, 0.49999997, 8_388_609.0]);
        let mut state = 0x9e37_79b9u32;
        for _ in 0..100_000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = f32::from_bits(state >> 2 | 0x3000_0000) * if state & 1 == 0 { 1.0 } else { -1.0 };
            xs.extend([x, x * 150.0]);
        }
        for x in xs {
            assert_eq!(saturate_round(x), reference(x), "{x}");
        }
    }

    #[test]
    fn weights_dequantize_to_within_half_a_step() {
        let dims = [3i64, 2, 2];
        let values: Vec<f32> = (0..12).map(|i| ((i * 37) % 11) as f32 * 0.173 - 0.8).chain([]).collect();
        let mut values = values;
        values[4..8].iter_mut().for_each(|v| *v = 0.0); // an all-zero channel
        let QuantizedWeights { q, amax, .. } = quantize_weights(&values, &dims, 0, WeightClip::Max, FloatType::Fp32);
        assert_eq!(amax[1], ZERO_RANGE_AMAX);
        for (i, (&v, &qv)) in values.iter().zip(&q).enumerate() {
            let scale = amax[i / 4] / 127.0;
            assert!((qv as f32 * scale - v).abs() <= scale / 2.0 + 1e-7, "{i}: {v} -> {qv}");
        }
        // Axis 1 of a [2, 3] matrix: per column.
        let QuantizedWeights { q, amax, .. } =
            quantize_weights(&[1.0, -2.0, 0.5, -1.0, 4.0, 0.25], &[2, 3], 1, WeightClip::Max, FloatType::Fp32);
        assert_eq!(amax, vec![1.0, 4.0, 0.5]);
        assert_eq!(q, vec![127, -64, 127, -127, 127, 64]);
    }

    #[test]
    fn the_mse_clip_lowers_the_round_trip_error_of_a_heavy_tailed_channel_and_keeps_a_flat_one() {
        let round_trip = |w: &[f32], amax: f32| -> f64 {
            let s = amax / 127.0;
            w.iter().map(|v| ((v - (v / s).round_ties_even().clamp(-127.0, 127.0) * s) as f64).powi(2)).sum()
        };
        // Laplace-distributed weights (inverse CDF on a grid): clipping the sparse tail buys resolution for
        // the bulk. For int8 the gain is small and the best clip close to max, as for real weights.
        let n = 10_000;
        let tailed: Vec<f32> = (0..n)
            .map(|i| {
                let u = (i as f64 + 0.5) / n as f64;
                (if u < 0.5 { (2.0 * u).ln() } else { -(2.0 * (1.0 - u)).ln() }) as f32
            })
            .collect();
        let max = tailed.iter().fold(0f32, |m, v| m.max(v.abs()));
        let clip = mse_clip(&tailed, max);
        assert!(clip < max && clip >= 0.9 * max, "{clip} of {max}");
        assert!(round_trip(&tailed, clip) < round_trip(&tailed, max));
        // Evenly spread weights: max is already the best, and ties keep it.
        let flat: Vec<f32> = (-127..=127).map(|i| i as f32 / 127.0).collect();
        assert_eq!(mse_clip(&flat, 1.0), 1.0);
        let w = quantize_weights(&tailed, &[1, tailed.len() as i64], 0, WeightClip::Mse, FloatType::Fp32);
        assert_eq!((w.amax, w.max), (vec![clip], vec![max]));
    }

    #[test]
    fn fp16_scales_are_normal_fp16_values_and_the_weights_use_exactly_them() {
        // amax 1e-6 would give a scale of 7.9e-9, which FP16 stores as 0; 1e-3 a subnormal.
        let scales: Vec<f32> = [1e-6f32, 1e-3, 0.5, 1e7].iter().map(|&a| stored_scale(a, FloatType::Fp16)).collect();
        for &s in &scales {
            let h = half::f16::from_f32(s);
            assert!(h.is_normal() && h.to_f32() == s, "{s} is not a normal FP16 value");
        }
        assert_eq!(scales[0], FP16_MIN_NORMAL);
        assert_eq!(scales[3], FP16_MAX);
        assert!(stored_scale(0.0, FloatType::Fp32) > 0.0);
        assert_eq!(stored_scale(0.5, FloatType::Fp32), 0.5 / 127.0);
        // A channel of tiny weights: quantized with the stored scale, not with amax/127, so dequantizing the
        // stored bytes gives the weights within half a stored step.
        let values = [1e-3f32, -5e-4, 2.5e-4, 0.7, -0.3, 0.1];
        let w = quantize_weights(&values, &[2, 3], 0, WeightClip::Max, FloatType::Fp16);
        for (i, (&v, &q)) in values.iter().zip(&w.q).enumerate() {
            let scale = w.scale[i / 3];
            assert!((q as f32 * scale - v).abs() <= scale / 2.0 + 1e-9, "{i}: {v} -> {q} x {scale}");
        }
        assert_eq!(w.scale[0], FP16_MIN_NORMAL);
    }
}
