//! From node decisions to Q/DQ insertion points, after TensorRT's explicit-quantization placement rules
//! (TensorRT Developer Guide, "Working with Quantized Types", "Q/DQ Layer-Placement Recommendations"):
//! quantize every input of a weighted op, never its bias or output; quantize the residual input of an Add
//! that follows a weighted op so the Add fuses into it; quantize pooling inputs so their producer writes INT8.

use std::collections::{BTreeMap, HashSet};

use graph::proto::{tensor_proto::DataType, GraphProto, NodeProto, TensorProto};
use graph::GraphIndex;

use crate::precision::{decide, AttentionPrecision, Decision, PrecisionFile, GEMM_OPS};
use crate::{PlacementError, PlacementOptions, Target};

/// One node input that reads the dequantized copy of an activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Use {
    /// Index of the consuming node in `graph.node`.
    pub node: usize,
    /// Its input slot.
    pub slot: usize,
    /// The consumer runs in INT8, so the tensor must have statistics. Fusion-only pairs (residual inputs,
    /// pooling inputs) are skipped when the tensor has none.
    pub required: bool,
}

/// Where Q/DQ goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Activation tensor -> the inputs that read its dequantized copy.
    pub activations: BTreeMap<String, Vec<Use>>,
    /// Weights stored as int8: (node, input slot, output-channel axis), in node order.
    pub weights: Vec<(usize, usize, usize)>,
}

/// Pooling ops whose input is quantized for TensorRT: the op runs in INT8 and its producer writes INT8.
const POOLING_OPS: &[&str] = &["GlobalAveragePool", "AveragePool", "MaxPool"];

/// The constant behind a tensor: an initializer or Constant, possibly behind Cast/Identity nodes (FP16
/// weights cast to float in the graph are weights, not activations).
pub fn constant_behind<'g>(graph: &'g GraphProto, index: &GraphIndex, name: &str) -> Option<&'g TensorProto> {
    let mut name = name;
    for _ in 0..8 {
        if let Some(t) = index.constant(graph, name) {
            return Some(t);
        }
        let node = &graph.node[*index.producer.get(name)?];
        if !matches!(node.op_type.as_str(), "Cast" | "Identity") || node.input.is_empty() {
            return None;
        }
        name = &node.input[0];
    }
    None
}

/// Tensors that depend on no graph input: initializers, Constant outputs, and what nodes compute from those
/// alone (a constant reshaped, cast or broadcast in the graph, as paddle2onnx writes HardSwish's 3 and 6).
/// An Add with such an operand is a bias or offset Add, not a residual one. Graphs are topologically sorted.
pub fn input_independent(graph: &GraphProto) -> std::collections::HashSet<String> {
    let mut constant: std::collections::HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    for node in &graph.node {
        // Ops without inputs other than Constant (random generators) are not constants.
        let derived = if node.input.iter().all(|i| i.is_empty()) {
            node.op_type == "Constant"
        } else {
            node.input.iter().all(|i| i.is_empty() || constant.contains(i))
        };
        if derived {
            constant.extend(node.output.iter().cloned());
        }
    }
    constant
}

/// The weight input slot and the output-channel axis of a GEMM-like node, if its weight is a constant.
pub fn weight_slot(node: &NodeProto, graph: &GraphProto, index: &GraphIndex) -> Option<(usize, usize)> {
    let constant = |slot: usize| node.input.get(slot).and_then(|n| constant_behind(graph, index, n));
    match node.op_type.as_str() {
        "Conv" => constant(1).map(|_| (1, 0)),
        "ConvTranspose" => constant(1).map(|_| (1, 1)),
        "MatMul" => constant(1).filter(|t| t.dims.len() >= 2).map(|t| (1, t.dims.len() - 1)),
        "Gemm" => {
            let trans_b = node.attribute.iter().find(|a| a.name == "transB").map(|a| a.i).unwrap_or(0);
            constant(1).map(|_| (1, if trans_b != 0 { 0 } else { 1 }))
        }
        _ => None,
    }
}

/// The Q/DQ plan for these decisions.
pub fn plan(graph: &GraphProto, decisions: &[Decision], options: &PlacementOptions) -> Plan {
    let index = GraphIndex::new(graph);
    let by_name: std::collections::HashMap<&str, &Decision> = decisions.iter().map(|d| (d.node.as_str(), d)).collect();
    let int8: Vec<bool> = graph.node.iter().map(|n| by_name.get(n.name.as_str()).is_some_and(|d| d.int8)).collect();
    let denied = |n: usize| by_name.get(graph.node[n].name.as_str()).is_some_and(|d| !d.int8);
    let mut plan = Plan::default();
    let add = |plan: &mut Plan, tensor: &str, node: usize, slot: usize, required: bool| {
        let uses = plan.activations.entry(tensor.to_string()).or_default();
        if !uses.iter().any(|u| u.node == node && u.slot == slot) {
            uses.push(Use { node, slot, required });
        }
    };

    for (n, node) in graph.node.iter().enumerate().filter(|(n, _)| int8[*n]) {
        let weight = if GEMM_OPS.contains(&node.op_type.as_str()) { weight_slot(node, graph, &index) } else { None };
        if let Some((slot, axis)) = weight {
            plan.weights.push((n, slot, axis));
        }
        for (slot, input) in node.input.iter().enumerate() {
            // Never the bias (Conv/Gemm input 2), never the weight, never a constant.
            let is_bias = matches!(node.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm") && slot == 2;
            if is_bias
                || weight.map(|w| w.0) == Some(slot)
                || input.is_empty()
                || index.constant(graph, input).is_some()
            {
                continue;
            }
            add(&mut plan, input, n, slot, true);
        }
    }

    let produced_by_gemm = |tensor: &str, ops: &[&str]| int8_gemm_behind(graph, &index, tensor, ops, |p| int8[p]);
    let depth = depths(graph, &index);
    let constant = input_independent(graph);
    let residual_int8 = options.residual == crate::ResidualPrecision::Int8;
    for (n, node) in graph.node.iter().enumerate().filter(|_| residual_int8) {
        if node.op_type != "Add" || node.input.len() != 2 || denied(n) || node.input.iter().any(|i| i.is_empty()) {
            continue;
        }
        if node.input.iter().any(|i| constant.contains(i)) {
            continue;
        }
        match options.target {
            Target::OnnxRuntime => {
                // ONNX Runtime fuses a Conv's output Add when the identity branch is quantized.
                let conv = |i: usize| produced_by_gemm(&node.input[i], &["Conv"]).is_some();
                for (conv_side, other) in [(0, 1), (1, 0)] {
                    if conv(conv_side) && !conv(other) {
                        add(&mut plan, &node.input[other], n, other, false);
                    }
                }
            }
            Target::TensorRt => {
                let fused = [0, 1].map(|i| produced_by_gemm(&node.input[i], GEMM_OPS));
                let residual = match fused {
                    [Some(_), None] => Some(1),
                    [None, Some(_)] => Some(0),
                    // Both branches end in a GEMM/Conv (a projection shortcut): the Add fuses into the deeper
                    // one, the main branch; the shortcut's producer writes INT8.
                    [Some(a), Some(b)] => Some(if depth[a] < depth[b] { 0 } else { 1 }),
                    [None, None] => None,
                };
                if let Some(r) = residual {
                    add(&mut plan, &node.input[r], n, r, false);
                }
            }
        }
    }
    if options.target == Target::TensorRt {
        for (n, node) in graph.node.iter().enumerate() {
            if POOLING_OPS.contains(&node.op_type.as_str()) && !denied(n) && !node.input.is_empty() {
                add(&mut plan, &node.input[0], n, 0, false);
            }
        }
    }
    plan
}

/// TensorRT's residual rule, used both to place Q/DQ (`plan`) and to check a Q/DQ model (`lint`): an Add fuses
/// into the INT8 GEMM/Conv (one of `ops`, INT8 by `is_int8`) that produces one of its inputs, directly or
/// through a bias Add with a constant operand, when its other input is quantized. This is that producer of
/// `tensor`, if any.
pub(crate) fn int8_gemm_behind(
    graph: &GraphProto,
    index: &GraphIndex,
    tensor: &str,
    ops: &[&str],
    is_int8: impl Fn(usize) -> bool,
) -> Option<usize> {
    index
        .producers_through_bias_add(graph, tensor)
        .into_iter()
        .find(|&p| ops.contains(&graph.node[p].op_type.as_str()) && is_int8(p))
}

/// Longest path (in nodes) from the graph inputs to each node; graphs are topologically sorted.
fn depths(graph: &GraphProto, index: &GraphIndex) -> Vec<usize> {
    let mut depth = vec![0usize; graph.node.len()];
    for (n, node) in graph.node.iter().enumerate() {
        let d = node.input.iter().filter_map(|i| index.producer.get(i)).filter(|&&p| p < n).map(|&p| depth[p]).max();
        depth[n] = d.map_or(0, |d| d + 1);
    }
    depth
}

/// A GEMM whose input channels smoothing can rescale: the activation it reads, with that activation's
/// channels on its last axis, and a constant 2-D weight with the matching input-channel axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmoothableGemm {
    /// Index of the node in `graph.node`.
    pub node: usize,
    /// The activation input (slot 0); its last axis holds the input channels.
    pub input: String,
    /// The weight as the node reads it (slot 1).
    pub weight: String,
    /// The weight's input-channel axis.
    pub channel_axis: usize,
}

/// MatMul/Gemm nodes whose first input is an activation (not a constant) with channels on its last axis and
/// whose second input is a constant 2-D weight: a MatMul's `[K, N]`, a Gemm's `[K, N]` or, with `transB`,
/// `[N, K]` (a Gemm with `transA` reads its channels on the first axis and is left out).
pub fn smoothable_gemms(graph: &GraphProto) -> Vec<SmoothableGemm> {
    let index = GraphIndex::new(graph);
    let flag = |n: &NodeProto, name: &str| n.attribute.iter().find(|a| a.name == name).map_or(0, |a| a.i);
    let mut out = Vec::new();
    for (i, node) in graph.node.iter().enumerate() {
        let (Some(input), Some(weight)) = (node.input.first(), node.input.get(1)) else { continue };
        if constant_behind(graph, &index, input).is_some() {
            continue;
        }
        if constant_behind(graph, &index, weight).is_none_or(|w| w.dims.len() != 2) {
            continue;
        }
        let channel_axis = match node.op_type.as_str() {
            "MatMul" => 0,
            "Gemm" if flag(node, "transA") == 0 => usize::from(flag(node, "transB") != 0),
            _ => continue,
        };
        out.push(SmoothableGemm { node: i, input: input.clone(), weight: weight.clone(), channel_axis });
    }
    out
}

/// A depthwise Conv whose input channels equalization can rescale: each output channel reads one input
/// channel (`group` equal to the input channels, weight `[C_out, 1, kh, kw]`), so scaling input channel `k` by
/// `c` and its output channels' weights by `1 / c` leaves the function unchanged and, with per-channel weight
/// scales, the weights' quantization too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepthwiseConv {
    /// Index of the node in `graph.node`.
    pub node: usize,
    /// The activation input (slot 0), NCHW: its channels on axis 1.
    pub input: String,
    /// The weight (slot 1): a float32 initializer or Constant read by this node only.
    pub weight: String,
    /// Input channels (`group`).
    pub channels: usize,
}

/// Depthwise Convs (see [`DepthwiseConv`]) with an activation input and a float32 constant weight of their own.
pub fn depthwise_convs(graph: &GraphProto) -> Vec<DepthwiseConv> {
    let index = GraphIndex::new(graph);
    let mut out = Vec::new();
    for (i, node) in graph.node.iter().enumerate() {
        if node.op_type != "Conv" {
            continue;
        }
        let (Some(input), Some(weight)) = (node.input.first(), node.input.get(1)) else { continue };
        let group = node.attribute.iter().find(|a| a.name == "group").map_or(1, |a| a.i);
        if group < 2 || constant_behind(graph, &index, input).is_some() {
            continue;
        }
        let Some(w) = index.constant(graph, weight).filter(|w| w.data_type == DataType::FLOAT as i32) else {
            continue;
        };
        let dims = &w.dims;
        let own = index.consumers.get(weight.as_str()).is_some_and(|c| c.len() == 1);
        if dims.len() < 3 || dims[1] != 1 || dims[0] % group != 0 || !own {
            continue;
        }
        out.push(DepthwiseConv { node: i, input: input.clone(), weight: weight.clone(), channels: group as usize });
    }
    out
}

/// Every tensor the default plans read, for either target, with attention in INT8: what
/// `calibrate --tensors quantizable` collects.
pub fn needed_by_defaults(graph: &GraphProto) -> Result<HashSet<String>, PlacementError> {
    let mut needed = HashSet::new();
    for target in [Target::TensorRt, Target::OnnxRuntime] {
        let options =
            PlacementOptions { attention: Some(AttentionPrecision::Int8), ..PlacementOptions::for_target(target) };
        let decisions = decide(graph, &PrecisionFile::default(), &options, "defaults")?;
        needed.extend(plan(graph, &decisions, &options).activations.into_keys());
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::AttentionPrecision;
    use graph::proto::tensor_proto::DataType;

    fn weight(g: &mut GraphProto, name: &str, dims: &[i64]) {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = DataType::FLOAT as i32;
        t.dims = dims.to_vec();
        t.float_data = vec![0.5; dims.iter().product::<i64>() as usize];
        g.initializer.push(t);
    }

    fn node(g: &mut GraphProto, op: &str, name: &str, inputs: &[&str], output: &str) {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = name.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        g.node.push(n);
    }

    fn planned(g: &GraphProto, target: Target, file: &PrecisionFile) -> Plan {
        let options = PlacementOptions::for_target(target);
        plan(g, &decide(g, file, &options, "test").unwrap(), &options)
    }

    /// The Add input slots of node `add` that read a dequantized tensor.
    fn quantized_slots(p: &Plan, g: &GraphProto, add: &str) -> Vec<usize> {
        let n = g.node.iter().position(|n| n.name == add).unwrap();
        let mut slots: Vec<usize> = p.activations.values().flatten().filter(|u| u.node == n).map(|u| u.slot).collect();
        slots.sort();
        slots
    }

    /// x -> a1 -> a2 (main branch) and x -> s (shortcut), add = a2 + s, then GlobalAveragePool.
    fn projection_block() -> GraphProto {
        let mut g = GraphProto::new();
        for w in ["wa1", "wa2", "ws"] {
            weight(&mut g, w, &[16, 16, 1, 1]);
        }
        node(&mut g, "Conv", "a1", &["x", "wa1"], "a1_out");
        node(&mut g, "Relu", "relu", &["a1_out"], "r");
        node(&mut g, "Conv", "a2", &["r", "wa2"], "a2_out");
        node(&mut g, "Conv", "s", &["x", "ws"], "s_out");
        node(&mut g, "Add", "add", &["a2_out", "s_out"], "y");
        node(&mut g, "GlobalAveragePool", "gap", &["y"], "z");
        g
    }

    #[test]
    fn projection_shortcut_quantizes_the_shallower_branch_for_tensorrt_only() {
        let g = projection_block();
        let trt = planned(&g, Target::TensorRt, &PrecisionFile::default());
        assert_eq!(
            quantized_slots(&trt, &g, "add"),
            vec![1],
            "the shortcut (slot 1) should carry Q/DQ, not the main branch"
        );
        assert!(trt.activations.get("s_out").is_some_and(|u| u.iter().all(|u| !u.required)));
        assert_eq!(quantized_slots(&trt, &g, "gap"), vec![0], "the pooling input should carry Q/DQ for TensorRT");
        // Same graph with the branches swapped in the Add: still the shortcut.
        let mut swapped = g.clone();
        swapped.node[4].input.swap(0, 1);
        assert_eq!(
            quantized_slots(&planned(&swapped, Target::TensorRt, &PrecisionFile::default()), &swapped, "add"),
            vec![0]
        );
        let ort = planned(&g, Target::OnnxRuntime, &PrecisionFile::default());
        assert!(quantized_slots(&ort, &g, "add").is_empty() && quantized_slots(&ort, &g, "gap").is_empty());
        // A denied Add or pooling node gets nothing.
        let deny = PrecisionFile {
            deny: crate::Selection { nodes: vec!["add".into(), "gap".into()], ops: vec![] },
            ..Default::default()
        };
        let denied = planned(&g, Target::TensorRt, &deny);
        assert!(quantized_slots(&denied, &g, "add").is_empty() && quantized_slots(&denied, &g, "gap").is_empty());
    }

    /// A transformer block: q/k/v projections, the two attention MatMuls, an output projection with a bias
    /// Add, and the residual Add of the block input.
    fn attention_block() -> GraphProto {
        let mut g = GraphProto::new();
        for w in ["wq", "wk", "wv", "wo"] {
            weight(&mut g, w, &[16, 16]);
        }
        weight(&mut g, "bo", &[16]);
        node(&mut g, "MatMul", "q", &["x", "wq"], "q_out");
        node(&mut g, "MatMul", "k", &["x", "wk"], "k_out");
        node(&mut g, "MatMul", "v", &["x", "wv"], "v_out");
        node(&mut g, "Transpose", "kt", &["k_out"], "kt_out");
        node(&mut g, "MatMul", "scores", &["q_out", "kt_out"], "s");
        node(&mut g, "Softmax", "softmax", &["s"], "p");
        node(&mut g, "MatMul", "context", &["p", "v_out"], "c");
        node(&mut g, "MatMul", "o", &["c", "wo"], "o_out");
        node(&mut g, "Add", "bias", &["o_out", "bo"], "ob");
        node(&mut g, "Add", "residual", &["x", "ob"], "y");
        g
    }

    #[test]
    fn attention_matmuls_are_int8_by_default_and_float_on_request() {
        let g = attention_block();
        let trt = planned(&g, Target::TensorRt, &PrecisionFile::default());
        assert_eq!(quantized_slots(&trt, &g, "scores"), vec![0, 1]);
        assert_eq!(quantized_slots(&trt, &g, "context"), vec![0, 1]);
        // The residual Add fuses into the output projection (through its bias Add): the block input is quantized.
        assert_eq!(quantized_slots(&trt, &g, "residual"), vec![0]);
        assert!(quantized_slots(&trt, &g, "bias").is_empty(), "a bias Add has no activation pair of its own");
        assert!(
            quantized_slots(&planned(&g, Target::OnnxRuntime, &PrecisionFile::default()), &g, "residual").is_empty()
        );
        // A float residual stream: the Add keeps both inputs float, everything else as before.
        let options = PlacementOptions {
            residual: crate::ResidualPrecision::Float,
            ..PlacementOptions::for_target(Target::TensorRt)
        };
        let float_residual = plan(&g, &decide(&g, &PrecisionFile::default(), &options, "test").unwrap(), &options);
        assert!(quantized_slots(&float_residual, &g, "residual").is_empty());
        assert_eq!(quantized_slots(&float_residual, &g, "scores"), vec![0, 1]);
        assert_eq!(float_residual.weights, trt.weights);

        let float = PrecisionFile { attention: Some(AttentionPrecision::Float), ..Default::default() };
        let kept = planned(&g, Target::TensorRt, &float);
        assert!(quantized_slots(&kept, &g, "scores").is_empty() && quantized_slots(&kept, &g, "context").is_empty());
        assert_eq!(quantized_slots(&kept, &g, "q"), vec![0], "projections stay INT8");
        let options = PlacementOptions {
            attention: Some(AttentionPrecision::Float),
            ..PlacementOptions::for_target(Target::TensorRt)
        };
        let decisions = decide(&g, &PrecisionFile::default(), &options, "test").unwrap();
        let scores = decisions.iter().find(|d| d.node == "scores").unwrap();
        assert!(!scores.int8 && scores.reason.contains("--attention"), "{scores:?}");
        // ONNX Runtime's default keeps attention float; --attention int8 (or the file) overrides it.
        let ort = planned(&g, Target::OnnxRuntime, &PrecisionFile::default());
        assert!(quantized_slots(&ort, &g, "scores").is_empty());
        let int8 = PrecisionFile { attention: Some(AttentionPrecision::Int8), ..Default::default() };
        assert_eq!(quantized_slots(&planned(&g, Target::OnnxRuntime, &int8), &g, "scores"), vec![0, 1]);
        // A precision-list entry still wins over the attention default.
        let allow = PrecisionFile {
            attention: Some(AttentionPrecision::Float),
            allow: crate::Selection { nodes: vec!["scores".into()], ops: vec![] },
            ..Default::default()
        };
        assert_eq!(quantized_slots(&planned(&g, Target::TensorRt, &allow), &g, "scores"), vec![0, 1]);
    }

    #[test]
    fn defaults_need_every_planned_tensor_of_both_targets() {
        let g = projection_block();
        let needed = needed_by_defaults(&g).unwrap();
        for t in ["x", "r", "s_out", "y"] {
            assert!(needed.contains(t), "{t} missing from {needed:?}");
        }
        assert!(!needed.contains("a2_out"), "the main branch is fused, not quantized");
    }

    #[test]
    fn an_add_of_a_reshaped_constant_is_no_residual_add() {
        // paddle2onnx's HardSwish offset: Conv output + Reshape(Constant 3): a bias-like Add, nothing to fuse.
        let mut g = GraphProto::new();
        weight(&mut g, "w", &[16, 16, 1, 1]);
        weight(&mut g, "three", &[1]);
        weight(&mut g, "shape", &[1]);
        node(&mut g, "Conv", "conv", &["x", "w"], "c");
        node(&mut g, "Reshape", "reshape", &["three", "shape"], "three_reshaped");
        node(&mut g, "Add", "offset", &["c", "three_reshaped"], "y");
        node(&mut g, "Add", "residual", &["c", "x"], "z");
        let constant = input_independent(&g);
        assert!(constant.contains("three_reshaped") && !constant.contains("c") && !constant.contains("y"));
        let trt = planned(&g, Target::TensorRt, &PrecisionFile::default());
        assert!(quantized_slots(&trt, &g, "offset").is_empty());
        assert_eq!(quantized_slots(&trt, &g, "residual"), vec![1]);
    }

    #[test]
    fn weights_behind_a_cast_are_weights() {
        let mut g = GraphProto::new();
        weight(&mut g, "w16", &[16, 16]);
        node(&mut g, "Cast", "cast", &["w16"], "w");
        node(&mut g, "MatMul", "mm", &["x", "w"], "y");
        let p = planned(&g, Target::TensorRt, &PrecisionFile::default());
        assert_eq!(p.weights, vec![(1, 1, 1)]);
        assert_eq!(p.activations.keys().collect::<Vec<_>>(), vec!["x"]);
    }
}
