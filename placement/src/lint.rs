//! Checks a Q/DQ model (int8kit's, ModelOpt's, ONNX Runtime's) against TensorRT's explicit-quantization
//! rules: what its ONNX parser rejects (errors) and what keeps a layer out of INT8 or unfused (warnings).
//!
//! Sources, cited per rule below:
//! - [TRT-QDQ] TensorRT Developer Guide, "Working with Quantized Types": explicit quantization, Q/DQ
//!   layer-placement recommendations (quantize all inputs of weighted ops; quantize the residual input of an
//!   Add that follows a weighted op; per-channel weights along the output-channel axis; scales are build-time
//!   constants).
//! - [ONNX-TRT] onnx/onnx-tensorrt, the QuantizeLinear/DequantizeLinear importers: zero points must be
//!   all zero (symmetric), INT8 quantized type, constant scale.
//! - [TRT-DYN] TensorRT Developer Guide, "Working with Dynamic Shapes": an engine serves every shape of its
//!   optimization profiles, so no layer may fix an extent the profile varies.
//! - [ONNX-TRT-PLUGIN] onnx/onnx-tensorrt: a node with no importer of its own ("No importer registered for
//!   op") is imported only as a plugin registered under its op name (the fallback plugin importer).

use std::collections::HashSet;

use graph::proto::{tensor_proto::DataType, GraphProto, NodeProto};
use graph::{GraphIndex, Model};
use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// TensorRT keeps the layer in float or leaves a fusion out.
    Warning,
    /// TensorRT refuses the model.
    Error,
}

/// The rule id of a residual Add after an INT8 GEMM/Conv with no quantized input (TensorRT cannot fuse it).
pub const RESIDUAL_INPUT: &str = "residual-input";

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Stable rule id (`zero-point`, `residual-input`, ...).
    pub rule: &'static str,
    /// The node it is about.
    pub node: String,
    /// What is wrong and what to do.
    pub message: String,
    /// Where the rule comes from.
    pub source: &'static str,
}

const TRT_QDQ: &str = "TensorRT Developer Guide, Working with Quantized Types (Q/DQ layer placement)";
const ONNX_TRT: &str = "onnx-tensorrt QuantizeLinear/DequantizeLinear importer";
const TRT_DYNAMIC: &str = "TensorRT Developer Guide, Working with Dynamic Shapes (optimization profiles)";
const ONNX_TRT_PLUGIN: &str = "onnx-tensorrt, nodes without an importer are imported as plugins of the same name";

/// The rule id of a node outside the ONNX domain (ONNX Runtime's contrib ops, custom ops).
pub const NON_ONNX_OP: &str = "non-onnx-op";

/// Ops that only move or reshape data: TensorRT propagates Q/DQ across them.
const DATA_MOVEMENT: &[&str] = graph::REARRANGING_OPS;

/// ONNX Runtime's QOperator format, which TensorRT does not import.
const QOPERATOR_OPS: &[&str] = &[
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QLinearAdd",
    "QLinearMul",
    "DynamicQuantizeLinear",
];

fn is_qdq(op: &str) -> bool {
    matches!(op, "QuantizeLinear" | "DequantizeLinear")
}

/// Every finding for `model`, errors first, then in graph order.
pub fn lint(model: &Model) -> Result<Vec<Finding>, graph::GraphError> {
    lint_proto(&model.proto, model)
}

/// [`lint`] of a model built in memory (`proto`), whose external data, if any, is `data`'s: what `quantizer`
/// checks before it writes anything.
pub fn lint_proto(proto: &graph::proto::ModelProto, data: &Model) -> Result<Vec<Finding>, graph::GraphError> {
    let model = data;
    let graph = &proto.graph;
    let index = GraphIndex::new(graph);
    let input_independent = crate::rules::input_independent(graph);
    let mut out = Vec::new();
    let mut push = |severity, rule, node: &NodeProto, message: String, source| {
        out.push(Finding { severity, rule, node: node.name.clone(), message, source });
    };
    let opset = graph::default_opset(proto);
    let dq_outputs: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
        .filter_map(|n| n.output.first())
        .map(String::as_str)
        .collect();
    let has_qdq = !dq_outputs.is_empty();

    for node in &graph.node {
        let op = node.op_type.as_str();
        // [ONNX-TRT-PLUGIN] A warning, not an error: an application may register a plugin of that name.
        if !graph::is_default_domain(&node.domain) {
            let origin = if node.domain.starts_with("com.microsoft") {
                "; com.microsoft ops are ONNX Runtime's own (its transformer optimizer or a saved optimized \
                 session writes them): give int8kit the model as exported"
            } else {
                ""
            };
            push(
                Severity::Warning,
                NON_ONNX_OP,
                node,
                format!(
                    "{}::{op} is not an ONNX op: TensorRT's ONNX parser imports it only as a plugin registered \
                     under the name {op}, and refuses the model without one{origin}",
                    node.domain
                ),
                ONNX_TRT_PLUGIN,
            );
        }
        if QOPERATOR_OPS.contains(&op) {
            push(
                Severity::Error,
                "qoperator-format",
                node,
                format!("{op} is ONNX Runtime's QOperator format; TensorRT imports only QuantizeLinear/DequantizeLinear pairs (quantize with QDQ format)"),
                TRT_QDQ,
            );
            continue;
        }
        if !is_qdq(op) {
            continue;
        }
        if node.input.len() < 2 {
            push(Severity::Error, "scale", node, format!("{op} has no scale input"), ONNX_TRT);
            continue;
        }
        if node.output.is_empty() {
            push(Severity::Error, "malformed", node, format!("{op} has no output"), ONNX_TRT);
        }
        // [ONNX-TRT] the scale is a build-time constant, finite and positive.
        match index.constant(graph, &node.input[1]) {
            None => push(
                Severity::Error,
                "scale",
                node,
                format!(
                    "scale '{}' is computed at run time; TensorRT needs a constant (an initializer)",
                    node.input[1]
                ),
                ONNX_TRT,
            ),
            Some(t) => {
                if let Ok(values) = model.tensor_f32(t) {
                    if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                        push(
                            Severity::Error,
                            "scale",
                            node,
                            format!("scale '{}' holds {v}; every scale must be finite and positive", node.input[1]),
                            ONNX_TRT,
                        );
                    } else if t.data_type == DataType::FLOAT16 as i32 {
                        // Positive, so TensorRT's parser takes it, but an FP16 subnormal keeps few significant
                        // bits (or is flushed to zero where denormals are off): the int8 values no longer
                        // mean what they were quantized for.
                        let subnormal = values.iter().filter(|v| **v < graph::FP16_MIN_NORMAL).count();
                        if subnormal > 0 {
                            push(
                                Severity::Warning,
                                "scale-subnormal",
                                node,
                                format!(
                                    "{subnormal} of the {} values of FP16 scale '{}' are FP16 subnormals (below \
                                     2^-14): they keep few significant bits; quantize with scales of at least \
                                     2^-14, or keep the scales in FP32",
                                    values.len(),
                                    node.input[1]
                                ),
                                ONNX_TRT,
                            );
                        }
                    }
                }
                if t.dims.iter().product::<i64>() > 1 && opset < 13 {
                    push(
                        Severity::Error,
                        "per-channel-opset",
                        node,
                        format!("per-channel scale at opset {opset}: the axis attribute needs opset 13 or later"),
                        ONNX_TRT,
                    );
                }
            }
        }
        // [ONNX-TRT] symmetric INT8: zero point all zero, of type int8.
        match node.input.get(2).filter(|z| !z.is_empty()) {
            None if op == "QuantizeLinear" => push(
                Severity::Error,
                "zero-point",
                node,
                "QuantizeLinear without a zero point quantizes to uint8; TensorRT needs an int8 zero point of 0".into(),
                ONNX_TRT,
            ),
            None => {}
            Some(zp) => match index.constant(graph, zp) {
                None => {
                    push(Severity::Error, "zero-point", node, format!("zero point '{zp}' is not a constant"), ONNX_TRT)
                }
                Some(t) => {
                    if t.data_type != DataType::INT8 as i32 {
                        push(
                            Severity::Error,
                            "zero-point",
                            node,
                            format!(
                                "zero point '{zp}' is {}; TensorRT's INT8 Q/DQ is signed int8 (re-quantize with int8 activations and weights)",
                                graph::ElemType(t.data_type).name()
                            ),
                            ONNX_TRT,
                        );
                    } else {
                        let bytes = model.tensor_raw_bytes(t)?.map(|b| b.into_owned()).unwrap_or_default();
                        if bytes.iter().any(|&b| b != 0) || t.int32_data.iter().any(|&v| v != 0) {
                            push(
                                Severity::Error,
                                "zero-point",
                                node,
                                format!(
                                    "zero point '{zp}' is not all zero; TensorRT supports only symmetric quantization"
                                ),
                                ONNX_TRT,
                            );
                        }
                    }
                }
            },
        }
    }

    for (n, node) in graph.node.iter().enumerate() {
        let op = node.op_type.as_str();
        let reads_dq = |slot: usize| node.input.get(slot).is_some_and(|i| dq_outputs.contains(i.as_str()));
        // [TRT-QDQ] weighted ops run in INT8 only with both the data input and the weight quantized.
        if has_qdq && matches!(op, "Conv" | "ConvTranspose" | "MatMul" | "Gemm") && node.input.len() >= 2 {
            let (data, weight) = (reads_dq(0), reads_dq(1));
            if data != weight {
                let (missing, present) = if data { ("weight", "data input") } else { ("data input", "weight") };
                push(
                    Severity::Warning,
                    "partial-gemm",
                    node,
                    format!(
                        "{op} has a quantized {present} but a float {missing} ('{}'); TensorRT runs it in float",
                        node.input[if data { 1 } else { 0 }]
                    ),
                    TRT_QDQ,
                );
            }
            if data && weight {
                check_weight_axis(graph, &index, n, &mut push);
            }
            if matches!(op, "Conv" | "ConvTranspose" | "Gemm") && reads_dq(2) {
                push(
                    Severity::Warning,
                    "quantized-bias",
                    node,
                    "the bias is quantized; TensorRT fuses a float bias into the INT8 kernel, leave it float".into(),
                    TRT_QDQ,
                );
            }
        }
        // [TRT-QDQ] an Add after a quantized weighted op fuses into it only when its other input is quantized.
        if has_qdq && op == "Add" && node.input.len() == 2 {
            let from_int8_gemm = |i: usize| int8_gemm_behind(graph, &index, &dq_outputs, &node.input[i]);
            let constant = |i: usize| input_independent.contains(&node.input[i]);
            if !constant(0) && !constant(1) {
                let (a, b) = (from_int8_gemm(0), from_int8_gemm(1));
                if (a.is_some() || b.is_some()) && !reads_dq(0) && !reads_dq(1) {
                    let other = if a.is_some() { 1 } else { 0 };
                    let gemm = a.or(b).unwrap_or_default();
                    push(
                        Severity::Warning,
                        RESIDUAL_INPUT,
                        node,
                        format!(
                            "residual Add after INT8 '{gemm}' has no quantized input; TensorRT cannot fuse it into \
                             '{gemm}': quantize its other input ('{}')",
                            node.input[other]
                        ),
                        TRT_QDQ,
                    );
                }
            }
        }
        // A QuantizeLinear fed by a DequantizeLinear through data-movement ops re-quantizes what was already
        // INT8: TensorRT cannot drop the pair and the chain runs dequantized.
        if op == "QuantizeLinear" {
            let Some(first) = node.input.first() else { continue };
            let mut tensor = first.as_str();
            let mut chain = Vec::new();
            while let Some(&p) = index.producer.get(tensor) {
                let producer = &graph.node[p];
                if producer.op_type == "DequantizeLinear" {
                    if !chain.is_empty() {
                        push(
                            Severity::Warning,
                            "requantize-chain",
                            node,
                            format!(
                                "re-quantizes the output of DequantizeLinear '{}' through {}: put one Q/DQ pair after \
                                 the {} chain instead of one on each side",
                                producer.name,
                                chain.join(" -> "),
                                chain.last().map(String::as_str).unwrap_or("data-movement")
                            ),
                            TRT_QDQ,
                        );
                    }
                    break;
                }
                if !DATA_MOVEMENT.contains(&producer.op_type.as_str()) || producer.input.is_empty() {
                    break;
                }
                chain.insert(0, producer.op_type.clone());
                tensor = &producer.input[0];
            }
        }
    }
    // A dynamic-size model pinned to one size by a constant Reshape: TensorRT's profile over sizes fails to
    // build (its shape checks see the constant extent against the input's range).
    for pin in graph::size_pins(graph) {
        out.push(Finding {
            severity: Severity::Warning,
            rule: "size-pinned",
            node: pin.node.clone(),
            message: format!(
                "{} '{}' reshapes to the constant shape {:?}, which holds the extent of one input size, though \
                 its input follows the size of the model's dynamic input(s) {:?}: the model runs only at that \
                 size, and a TensorRT profile over sizes fails to build; export with the shape computed from the \
                 input (a -1, or Shape-derived sizes), or build for one size",
                pin.op,
                pin.node,
                pin.shape,
                graph::dynamic_inputs(graph)
            ),
            source: TRT_DYNAMIC,
        });
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Ok(out)
}

/// The name of the INT8 weighted op (both inputs dequantized) that produces `tensor`, directly or through a
/// bias Add with a constant operand: the placement's own residual rule ([`crate::rules::int8_gemm_behind`]).
fn int8_gemm_behind(graph: &GraphProto, index: &GraphIndex, dq: &HashSet<&str>, tensor: &str) -> Option<String> {
    let both_dequantized = |p: usize| {
        let n = &graph.node[p];
        n.input.len() >= 2 && dq.contains(n.input[0].as_str()) && dq.contains(n.input[1].as_str())
    };
    crate::rules::int8_gemm_behind(graph, index, tensor, crate::GEMM_OPS, both_dequantized)
        .map(|p| graph.node[p].name.clone())
}

/// [TRT-QDQ] per-channel weight scales run along the output-channel axis and have one scale per channel.
fn check_weight_axis(
    graph: &GraphProto,
    index: &GraphIndex,
    n: usize,
    push: &mut dyn FnMut(Severity, &'static str, &NodeProto, String, &'static str),
) {
    let node = &graph.node[n];
    let Some(&d) = index.producer.get(&node.input[1]) else { return };
    let dq = &graph.node[d];
    let Some(weight) = dq.input.first().and_then(|w| index.constant(graph, w)) else { return };
    let Some(scale) = dq.input.get(1).and_then(|s| index.constant(graph, s)) else { return };
    let channels: i64 = scale.dims.iter().product();
    if scale.dims.is_empty() || channels <= 1 {
        return;
    }
    let rank = weight.dims.len() as i64;
    let expected = match node.op_type.as_str() {
        "Conv" => 0,
        "ConvTranspose" => 1,
        "MatMul" => rank - 1,
        _ => {
            let trans_b = node.attribute.iter().find(|a| a.name == "transB").map(|a| a.i).unwrap_or(0);
            if trans_b != 0 {
                0
            } else {
                1
            }
        }
    };
    let axis = dq.attribute.iter().find(|a| a.name == "axis").map(|a| a.i).unwrap_or(1);
    let axis = if axis < 0 { axis + rank } else { axis };
    if axis != expected || weight.dims.get(expected as usize) != Some(&channels) {
        push(
            Severity::Error,
            "weight-axis",
            node,
            format!(
                "per-channel weight scale of '{}' runs along axis {axis} ({channels} scales, weight dims {:?}); {} \
                 needs it along its output-channel axis {expected}",
                dq.input[0], weight.dims, node.op_type
            ),
            TRT_QDQ,
        );
    }
}
