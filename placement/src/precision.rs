//! Which nodes run in INT8: defaults after TensorRT's Q/DQ placement guidance, overridden by a precision file.

use std::path::Path;

use globset::{Glob, GlobMatcher};
use graph::proto::{GraphProto, NodeProto};
use graph::GraphIndex;
use serde::{Deserialize, Serialize};

use crate::{PlacementError, PlacementOptions, Target};

/// Ops quantized by default: their activation inputs and weights get Q/DQ.
pub const GEMM_OPS: &[&str] = &["Conv", "ConvTranspose", "MatMul", "Gemm"];

/// Node names (exact or globs) and op types.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Node names, exact or glob (`/blocks.0/*`).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Op types (`Softmax`).
    #[serde(default)]
    pub ops: Vec<String>,
}

/// The precision file: `[deny]` keeps nodes in float, `[allow]` forces them into INT8.
/// Precedence: deny.nodes, allow.nodes, deny.ops, allow.ops, then the defaults (`attention` sets the
/// default of attention MatMuls).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecisionFile {
    /// Default precision of MatMuls whose two inputs are both activations (attention Q*K^T and attn*V):
    /// `"int8"` or `"float"`; absent, the target's default (INT8 for TensorRT, float for ONNX Runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionPrecision>,
    /// Kept in float.
    #[serde(default)]
    pub deny: Selection,
    /// Forced into INT8.
    #[serde(default)]
    pub allow: Selection,
}

impl PrecisionFile {
    /// Reads a precision TOML file.
    pub fn load(path: &Path) -> Result<PrecisionFile, PlacementError> {
        let text = safe_io::read_to_string(path, safe_io::limits::TEXT, "a precision file")?;
        toml::from_str(&text).map_err(|e| PlacementError::Precision { path: path.into(), message: e.to_string() })
    }

    /// The file as TOML, readable by [`PrecisionFile::load`].
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// The default precision of attention MatMuls, as a precision file writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionPrecision {
    /// Both inputs quantized (TensorRT's fused INT8 attention, ModelOpt's default).
    Int8,
    /// Kept in the float type.
    Float,
}

/// One node's precision and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op: String,
    /// Whether it runs in INT8.
    pub int8: bool,
    /// Why (list entry or default rule).
    pub reason: String,
}

fn matchers(patterns: &[String], origin: &str) -> Result<Vec<(String, GlobMatcher)>, PlacementError> {
    patterns
        .iter()
        .map(|p| {
            Glob::new(p)
                .map(|g| (p.clone(), g.compile_matcher()))
                .map_err(|e| PlacementError::Precision { path: origin.into(), message: format!("pattern '{p}': {e}") })
        })
        .collect()
}

/// Decides every node's precision. Nodes outside GEMM_OPS appear only when a list names them, and ONNX
/// Attention nodes and Einsum products, which stay float ([`ATTENTION_OP`], [`is_einsum_product`]).
pub fn decide(
    graph: &GraphProto,
    file: &PrecisionFile,
    options: &PlacementOptions,
    origin: &str,
) -> Result<Vec<Decision>, PlacementError> {
    let (attention, attention_from) = match (options.attention, file.attention) {
        (Some(a), _) => (a, "--attention"),
        (None, Some(a)) => (a, "precision file attention"),
        (None, None) => (options.target.default_attention(), "default"),
    };
    let index = GraphIndex::new(graph);
    // Everything downstream reads a GEMM/Conv node's data input, weight and output: a malformed node is
    // reported here rather than indexed blindly.
    if let Some(node) = graph.node.iter().find(|n| {
        GEMM_OPS.contains(&n.op_type.as_str())
            && (n.input.len() < 2 || n.input[0].is_empty() || n.input[1].is_empty() || n.output.is_empty())
    }) {
        return Err(PlacementError::Model {
            path: origin.into(),
            message: format!(
                "node '{}' ({}) has {} inputs and {} outputs: not a valid ONNX {} (it needs a data input, a weight \
                 and an output)",
                node.name,
                node.op_type,
                node.input.len(),
                node.output.len(),
                node.op_type
            ),
        });
    }
    let deny_nodes = matchers(&file.deny.nodes, origin)?;
    let allow_nodes = matchers(&file.allow.nodes, origin)?;
    let fixed = graph::fixed_tensors(graph);
    let mut out = Vec::new();
    for node in &graph.node {
        let hit = |m: &[(String, GlobMatcher)]| {
            m.iter().find(|(p, g)| *p == node.name || g.is_match(&node.name)).map(|(p, _)| p.clone())
        };
        let op = node.op_type.as_str();
        let (int8, reason) = if let Some(p) = hit(&deny_nodes) {
            (false, format!("deny.nodes '{p}'"))
        } else if let Some(p) = hit(&allow_nodes) {
            (true, format!("allow.nodes '{p}'"))
        } else if file.deny.ops.iter().any(|o| o == op) {
            (false, format!("deny.ops '{op}'"))
        } else if file.allow.ops.iter().any(|o| o == op) {
            (true, format!("allow.ops '{op}'"))
        } else if GEMM_OPS.contains(&op) {
            let attention_matmul = is_attention_matmul(node, graph, &index);
            if attention_matmul && attention == AttentionPrecision::Float {
                let target = options.target.name();
                (
                    false,
                    format!(
                        "{attention_from} (target {target}): attention MatMul (both inputs activations) stays float"
                    ),
                )
            } else if attention_matmul {
                let target = options.target.name();
                (true, format!("{attention_from} (target {target}): attention MatMul, both activation inputs in INT8"))
            } else if fixed.contains(&node.input[0]) {
                // Its data input has no statistics to quantize it with; an INT8 weight alone would leave a
                // half-quantized node that TensorRT runs in float anyway.
                let x = &node.input[0];
                (
                    false,
                    format!(
                        "default: its data input '{x}' is the same for every sample (computed from constants and shapes, \
                         like an RNN's zero initial state): no statistics to quantize it with, so the node stays float"
                    ),
                )
            } else if let Some(why) = tensorrt_kernel_misfit(node, graph, &index, options.target) {
                (false, format!("default (target tensorrt): {why}"))
            } else {
                (true, format!("default: {op} inputs and weights in INT8"))
            }
        } else if is_attention_op(node) {
            (false, ATTENTION_OP_REASON.to_string())
        } else if is_einsum_product(node) {
            (false, EINSUM_REASON.to_string())
        } else {
            continue;
        };
        out.push(Decision { node: node.name.clone(), op: op.to_string(), int8, reason });
    }
    check_entries_match(graph, file, origin, &deny_nodes, &allow_nodes)?;
    Ok(out)
}

/// ONNX's own attention op (opset 23): Q*K^T, the softmax and attn*V in one node. Its matrix products have no
/// tensor between them for a Q/DQ pair, so they run in the float type; the node is listed (and its FLOPs counted)
/// so that the INT8 share and `--attention` say so rather than pass over it.
pub const ATTENTION_OP: &str = "Attention";

/// Whether `node` is ONNX's own Attention op ([`ATTENTION_OP`]), not a custom domain's op of that name.
pub fn is_attention_op(node: &NodeProto) -> bool {
    node.op_type == ATTENTION_OP && graph::is_default_domain(&node.domain)
}

/// Whether `graph` computes attention: a MatMul of two activations (Q*K^T, attn*V; FP16-stored weights behind
/// a Cast count as constants), an ONNX Attention node, or an Einsum product (MaxViT writes its attention so).
/// Transformer blocks, whose LayerNorm and GELU outputs carry outlier channels (`--smooth auto`).
pub fn has_attention(graph: &GraphProto) -> bool {
    let index = GraphIndex::new(graph);
    graph.node.iter().any(|node| {
        (graph::is_default_domain(&node.domain) && is_attention_matmul(node, graph, &index))
            || is_attention_op(node)
            || is_einsum_product(node)
    })
}

/// Whether `node` is a MatMul of two activations (attention's Q*K^T or attn*V): no input is a constant, also
/// through Cast/Identity (FP16-stored weights read through a Cast are weights, not attention).
fn is_attention_matmul(node: &NodeProto, graph: &GraphProto, index: &GraphIndex) -> bool {
    node.op_type == "MatMul"
        && node.input.iter().all(|i| i.is_empty() || crate::rules::constant_behind(graph, index, i).is_none())
}

/// Why an ONNX Attention node stays float, whatever attention precision was asked for.
const ATTENTION_OP_REASON: &str = "ONNX Attention op: Q*K^T and attn*V run inside the node, with no tensor between \
                                   them for Q/DQ, so they stay in the float type whatever --attention says (export \
                                   attention as MatMuls, opset 22 or lower, for INT8 attention)";

/// Why an Einsum that multiplies tensors stays float.
const EINSUM_REASON: &str = "Einsum: a matrix product int8kit places no Q/DQ on (only Conv, ConvTranspose, MatMul and \
                             Gemm take them), so it stays in the float type (export it as a MatMul for INT8)";

/// Whether `node` is an ONNX Einsum of two or more tensors that sums over an index: a matrix product (MaxViT's
/// attention is written so), listed as float with its FLOPs rather than passed over.
pub fn is_einsum_product(node: &NodeProto) -> bool {
    node.op_type == "Einsum"
        && graph::is_default_domain(&node.domain)
        && node.input.iter().filter(|i| !i.is_empty()).count() >= 2
        && einsum_terms(node).is_some_and(|(inputs, output)| {
            inputs.iter().flat_map(|t| t.chars()).any(|c| c.is_ascii_alphabetic() && !output.contains(c))
        })
}

/// An Einsum's input terms and output term, letters only (spaces dropped), or `None` without an explicit
/// output (`->`).
pub fn einsum_terms(node: &NodeProto) -> Option<(Vec<String>, String)> {
    let equation = node.attribute.iter().find(|a| a.name == "equation")?;
    let equation: String = String::from_utf8_lossy(&equation.s).chars().filter(|c| !c.is_whitespace()).collect();
    let (inputs, output) = equation.split_once("->")?;
    Some((inputs.split(',').map(str::to_string).collect(), output.to_string()))
}

/// The smallest GEMM dimension and channel count TensorRT's INT8 Tensor Core kernels take well: a smaller
/// layer gets Q/DQ overhead and no INT8 kernel (ModelOpt 0.47 leaves such layers out of INT8 for the same
/// reason, `_MIN_MATMUL_DIM` and the small-channel Conv check in its graph_utils). Such a layer is typically a
/// classifier head or a stem, where INT8 also costs the most output fidelity (on the zoo's OriNet, the 4-class
/// head in INT8 cost 10 dB of output SQNR).
pub const TENSORRT_MIN_CHANNELS: i64 = 16;

/// Why TensorRT has no good INT8 kernel for this GEMM-like node with a constant weight, if so (target
/// TensorRT only): a MatMul/Gemm with K or N below 16; a Conv with fewer than 16 input (per group) or output
/// channels, unless it is a plain Conv with a square kernel and a channel count that is a multiple of 8 that
/// reads the graph input or has 16 channels on its other side, or a grouped Conv with a multiple of 8 output
/// channels and kernels of at least 3.
fn tensorrt_kernel_misfit(node: &NodeProto, graph: &GraphProto, index: &GraphIndex, target: Target) -> Option<String> {
    if target != Target::TensorRt {
        return None;
    }
    let min = TENSORRT_MIN_CHANNELS;
    let weight = node.input.get(1).and_then(|w| crate::rules::constant_behind(graph, index, w))?;
    let dims = &weight.dims;
    let int_attribute = |name: &str| node.attribute.iter().find(|a| a.name == name);
    match node.op_type.as_str() {
        "MatMul" | "Gemm" if dims.len() == 2 => {
            let trans_b = node.op_type == "Gemm" && int_attribute("transB").is_some_and(|a| a.i != 0);
            let (k, n) = if trans_b { (dims[1], dims[0]) } else { (dims[0], dims[1]) };
            (k < min || n < min).then(|| {
                format!(
                    "{} with K = {k}, N = {n} stays float (TensorRT's INT8 GEMM kernels need K and N >= {min})",
                    node.op_type
                )
            })
        }
        "Conv" if dims.len() >= 3 => {
            let (out_channels, in_channels) = (dims[0], dims[1]);
            if out_channels >= min && in_channels >= min {
                return None;
            }
            let group = int_attribute("group").map_or(1, |a| a.i);
            let kernel: Vec<i64> = int_attribute("kernel_shape").map_or_else(|| dims[2..].to_vec(), |a| a.ints.clone());
            let reads_graph_input = node.input.first().is_some_and(|i| graph.input.iter().any(|g| &g.name == i));
            let supported = if group == 1 {
                (out_channels % 8 == 0 || in_channels % 8 == 0)
                    && (reads_graph_input || out_channels >= min || in_channels >= min)
                    && kernel.windows(2).all(|k| k[0] == k[1])
            } else {
                out_channels % 8 == 0 && kernel.iter().all(|&k| k >= 3)
            };
            (!supported).then(|| {
                format!(
                    "Conv with {out_channels} output and {in_channels} input channels per group (group {group}) stays \
                     float (TensorRT's INT8 convolutions need {min} channels, or a multiple of 8 in the shapes it \
                     supports)"
                )
            })
        }
        _ => None,
    }
}

/// Every list entry must name something in the graph: a misspelt op type or node name would otherwise be
/// ignored, and the node it meant would silently keep its precision.
fn check_entries_match(
    graph: &GraphProto,
    file: &PrecisionFile,
    origin: &str,
    deny_nodes: &[(String, GlobMatcher)],
    allow_nodes: &[(String, GlobMatcher)],
) -> Result<(), PlacementError> {
    let names: Vec<&str> = graph.node.iter().map(|n| n.name.as_str()).collect();
    let ops: std::collections::BTreeSet<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    let unmatched = |list: &str, entry: &str, candidates: &mut dyn Iterator<Item = &str>| PlacementError::Precision {
        path: origin.into(),
        message: format!("{list} entry '{entry}' matches nothing in the model{}", suggestion(entry, candidates)),
    };
    for (list, matchers) in [("deny.nodes", deny_nodes), ("allow.nodes", allow_nodes)] {
        for (entry, glob) in matchers {
            if !names.iter().any(|n| n == entry || glob.is_match(n)) {
                return Err(unmatched(list, entry, &mut names.iter().copied()));
            }
        }
    }
    for (list, entries) in [("deny.ops", &file.deny.ops), ("allow.ops", &file.allow.ops)] {
        if let Some(entry) = entries.iter().find(|e| !ops.contains(e.as_str())) {
            return Err(unmatched(list, entry, &mut ops.iter().copied()));
        }
    }
    Ok(())
}

/// "; did you mean 'X'?" for the closest candidate (case-insensitive edit distance), when one is close.
fn suggestion(entry: &str, candidates: &mut dyn Iterator<Item = &str>) -> String {
    let lower = entry.to_lowercase();
    let best = candidates
        .map(|c| (strsim::levenshtein(&lower, &c.to_lowercase()), c))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    match best {
        Some((distance, name)) if distance <= (entry.len() / 2).max(2) => format!("; did you mean '{name}'?"),
        _ => " (check the spelling against the model's node names and op types)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::proto::tensor_proto::DataType;
    use graph::proto::{attribute_proto::AttributeType, AttributeProto, TensorProto, ValueInfoProto};

    fn layer(
        g: &mut GraphProto,
        op: &str,
        name: &str,
        input: &str,
        weight_dims: &[i64],
        attributes: &[(&str, &[i64])],
    ) {
        let mut w = TensorProto::new();
        w.name = format!("{name}_w");
        w.data_type = DataType::FLOAT as i32;
        w.dims = weight_dims.to_vec();
        w.float_data = vec![0.5; weight_dims.iter().product::<i64>() as usize];
        g.initializer.push(w);
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = name.into();
        n.input = vec![input.into(), format!("{name}_w")];
        n.output = vec![format!("{name}_out")];
        for (key, values) in attributes {
            let mut a = AttributeProto::new();
            a.name = key.to_string();
            if values.len() == 1 && *key != "kernel_shape" {
                a.type_ = AttributeType::INT.into();
                a.i = values[0];
            } else {
                a.type_ = AttributeType::INTS.into();
                a.ints = values.to_vec();
            }
            n.attribute.push(a);
        }
        g.node.push(n);
    }

    /// A stem on the RGB input, a depthwise and a pointwise Conv, a narrow Conv, a pooled classifier.
    fn small_cnn() -> GraphProto {
        let mut g = GraphProto::new();
        let mut x = ValueInfoProto::new();
        x.name = "x".into();
        g.input.push(x);
        layer(&mut g, "Conv", "stem", "x", &[16, 3, 3, 3], &[]);
        layer(&mut g, "Conv", "depthwise", "stem_out", &[16, 1, 3, 3], &[("group", &[16])]);
        layer(&mut g, "Conv", "narrow", "depthwise_out", &[4, 12, 1, 1], &[]);
        layer(&mut g, "Conv", "narrow_depthwise", "narrow_out", &[4, 1, 3, 3], &[("group", &[4])]);
        layer(&mut g, "Gemm", "hidden", "narrow_depthwise_out", &[32, 16], &[("transB", &[1])]);
        layer(&mut g, "Gemm", "head", "hidden_out", &[4, 32], &[("transB", &[1])]);
        layer(&mut g, "MatMul", "projection", "head_out", &[4, 64], &[]);
        g
    }

    fn int8_nodes(target: Target) -> Vec<String> {
        let options = PlacementOptions::for_target(target);
        let decisions = decide(&small_cnn(), &PrecisionFile::default(), &options, "test").unwrap();
        decisions.into_iter().filter(|d| d.int8).map(|d| d.node).collect()
    }

    #[test]
    fn layers_too_narrow_for_tensorrt_int8_kernels_stay_float_for_tensorrt_only() {
        // The stem reads the graph input with 16 output channels and a square kernel, the depthwise Conv has 16
        // channels and a 3x3 kernel, the hidden Gemm K = 16, N = 32: INT8. The 4-channel Convs, the 4-class head
        // (N = 4) and the MatMul with K = 4 stay float.
        assert_eq!(int8_nodes(Target::TensorRt), ["stem", "depthwise", "hidden"]);
        let all = ["stem", "depthwise", "narrow", "narrow_depthwise", "hidden", "head", "projection"];
        assert_eq!(int8_nodes(Target::OnnxRuntime), all);
        let options = PlacementOptions::for_target(Target::TensorRt);
        let decisions = decide(&small_cnn(), &PrecisionFile::default(), &options, "test").unwrap();
        let head = decisions.iter().find(|d| d.node == "head").unwrap();
        assert!(head.reason.contains("K = 32, N = 4"), "{}", head.reason);
        // A precision file still forces such a layer into INT8.
        let file = PrecisionFile { allow: Selection { nodes: vec!["head".into()], ops: vec![] }, ..Default::default() };
        let forced = decide(&small_cnn(), &file, &options, "test").unwrap();
        assert!(forced.iter().any(|d| d.node == "head" && d.int8));
    }

    #[test]
    fn a_gemm_whose_data_input_is_the_same_for_every_sample_stays_float() {
        // An unrolled RNN's first step: h0 = ConstantOfShape(Shape(x)) (zeros), Gemm(h0, W); the input's own
        // Gemm is INT8.
        let mut g = GraphProto::new();
        let mut x = ValueInfoProto::new();
        x.name = "x".into();
        g.input.push(x);
        for (op, input, output) in [("Shape", "x", "x_shape"), ("ConstantOfShape", "x_shape", "h0")] {
            let mut n = NodeProto::new();
            n.op_type = op.into();
            n.name = output.into();
            n.input = vec![input.into()];
            n.output = vec![output.into()];
            g.node.push(n);
        }
        layer(&mut g, "Gemm", "first_step", "h0", &[32, 32], &[("transB", &[1])]);
        layer(&mut g, "Gemm", "input_step", "x", &[32, 32], &[("transB", &[1])]);
        for target in [Target::TensorRt, Target::OnnxRuntime] {
            let d = decide(&g, &PrecisionFile::default(), &PlacementOptions::for_target(target), "test").unwrap();
            let first = d.iter().find(|d| d.node == "first_step").unwrap();
            assert!(!first.int8 && first.reason.contains("same for every sample"), "{}", first.reason);
            assert!(d.iter().any(|d| d.node == "input_step" && d.int8));
        }
    }

    #[test]
    fn a_matmul_with_fp16_weights_behind_a_cast_is_no_attention_matmul() {
        let mut g = GraphProto::new();
        layer(&mut g, "MatMul", "fc", "x", &[64, 32], &[]);
        // The weight stored as FP16 and cast to float in the graph, as FP16-storage exporters write it.
        g.initializer[0].name = "fc_w16".into();
        let mut cast = NodeProto::new();
        cast.op_type = "Cast".into();
        cast.name = "fc_w_cast".into();
        cast.input = vec!["fc_w16".into()];
        cast.output = vec!["fc_w".into()];
        g.node.insert(0, cast);
        let float_attention = PlacementOptions {
            attention: Some(AttentionPrecision::Float),
            ..PlacementOptions::for_target(Target::TensorRt)
        };
        let d = decide(&g, &PrecisionFile::default(), &float_attention, "test").unwrap();
        let fc = d.iter().find(|d| d.node == "fc").unwrap();
        assert!(fc.int8 && !fc.reason.contains("attention"), "{}", fc.reason);
    }

    #[test]
    fn onnx_attention_nodes_and_einsum_products_are_listed_as_float_whatever_attention_is_asked() {
        let mut g = small_cnn();
        let mut scores = NodeProto::new();
        scores.op_type = "Einsum".into();
        scores.name = "scores".into();
        scores.input = vec!["q".into(), "k".into()];
        scores.output = vec!["s".into()];
        let mut equation = AttributeProto::new();
        equation.name = "equation".into();
        equation.s = b"bhid,bhjd->bhij".to_vec();
        scores.attribute.push(equation);
        g.node.push(scores);
        let mut attention = NodeProto::new();
        attention.op_type = ATTENTION_OP.into();
        attention.name = "sdpa".into();
        attention.input = vec!["q".into(), "k".into(), "v".into()];
        attention.output = vec!["y".into()];
        g.node.push(attention.clone());
        // A custom-domain op of the same name is not ONNX's: not listed.
        attention.name = "custom".into();
        attention.domain = "com.example".into();
        g.node.push(attention);
        for asked in [AttentionPrecision::Int8, AttentionPrecision::Float] {
            let options = PlacementOptions { attention: Some(asked), ..PlacementOptions::for_target(Target::TensorRt) };
            let d = decide(&g, &PrecisionFile::default(), &options, "test").unwrap();
            let sdpa = d.iter().find(|d| d.node == "sdpa").unwrap();
            assert!(!sdpa.int8 && sdpa.reason.contains("whatever --attention says"), "{}", sdpa.reason);
            let scores = d.iter().find(|d| d.node == "scores").unwrap();
            assert!(!scores.int8 && scores.reason.starts_with("Einsum: a matrix product"), "{}", scores.reason);
            assert!(d.iter().all(|d| d.node != "custom"));
        }
    }
}
