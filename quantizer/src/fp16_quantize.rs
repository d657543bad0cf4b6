//! FP16 graphs measured faster on the CPU, with the same outputs. ONNX Runtime's CPU provider (1.32) quantizes
//! a float16 tensor one element at a time, as round-half-even(float32(x) / float32(scale)): on the fixture ViT's
//! FP16 candidate its QuantizeLinear nodes took 52 ms of 203 ms per 64 samples, against 4 ms in the FP32
//! candidate. Its float32 kernel is vectorized and computes the same on the cast values (the same int8 for
//! every finite float16 value at four scales and for 42 million random values), so an evaluation session may
//! run each such QuantizeLinear on a Cast to float32 of its input, with the float32 value of its scale.
//!
//! One trap: the Cast insertion that ONNX Runtime runs even with its rewrites off merges a float32 -> float16
//! -> float32 pair of Casts, so a Cast straight after a producer it runs in float32 (Erf, Sqrt...) would drop
//! the float16 rounding the graph has before the QuantizeLinear (outputs off by a quantization step). An
//! Identity between keeps that rounding. Since both facts are ONNX Runtime's behaviour, not ONNX's, a small
//! graph checks them once per process ([`float32_quantize_is_exact`]) and the rewrite is left out when they do
//! not hold.

use std::collections::HashMap;
use std::sync::OnceLock;

use graph::proto::tensor_proto::DataType;
use graph::proto::{ModelProto, NodeProto, TensorProto};
use graph::GraphPatch;

use crate::float_type::cast_node;

/// Rewrites `proto` for a CPU evaluation session, in place: every QuantizeLinear whose scale is a float16
/// initializer reads `Cast(float32)` of `Identity` of its input and the scale's float32 value. Returns whether
/// it changed anything (never when this process's ONNX Runtime would compute other outputs that way).
pub fn for_cpu_evaluation(proto: &mut ModelProto) -> bool {
    if !has_float16_quantize(proto) || !float32_quantize_is_exact() {
        return false;
    }
    rewrite(proto)
}

/// [`for_cpu_evaluation`] of a copy of `proto`, made only when there is something to rewrite.
pub fn rewritten_for_cpu(proto: &ModelProto) -> Option<ModelProto> {
    if !has_float16_quantize(proto) || !float32_quantize_is_exact() {
        return None;
    }
    let mut copy = proto.clone();
    rewrite(&mut copy).then_some(copy)
}

/// Whether any QuantizeLinear of `proto` quantizes a float16 tensor (its scale a float16 initializer).
fn has_float16_quantize(proto: &ModelProto) -> bool {
    let graph = &proto.graph;
    graph.node.iter().any(|n| float16_scale(graph, n).is_some())
}

/// The float16 scale initializer of `n` if it is a QuantizeLinear of a float16 tensor.
fn float16_scale<'g>(graph: &'g graph::proto::GraphProto, n: &NodeProto) -> Option<&'g TensorProto> {
    if n.op_type != "QuantizeLinear" || !graph::is_default_domain(&n.domain) || n.input.len() < 2 {
        return None;
    }
    graph
        .initializer
        .iter()
        .find(|t| t.name == n.input[1] && t.data_type == DataType::FLOAT16 as i32 && t.external_data.is_empty())
}

fn float16_values(t: &TensorProto) -> Vec<f32> {
    if t.raw_data.is_empty() {
        // ONNX keeps float16 bits in int32_data when not raw.
        t.int32_data.iter().map(|&b| half::f16::from_bits(b as u16).to_f32()).collect()
    } else {
        t.raw_data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
    }
}

fn unary(op: &str, name: String, input: &str, output: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name;
    n.input = vec![input.into()];
    n.output = vec![output.into()];
    n
}

fn rewrite(proto: &mut ModelProto) -> bool {
    let graph = proto.graph.mut_or_insert_default();
    let targets: Vec<(usize, TensorProto)> =
        (0..graph.node.len()).filter_map(|i| float16_scale(graph, &graph.node[i]).map(|t| (i, t.clone()))).collect();
    if targets.is_empty() {
        return false;
    }
    let mut patch = GraphPatch::new(graph);
    let (mut casts, mut scales) = (HashMap::new(), HashMap::new());
    for (i, scale) in targets {
        let x = graph.node[i].input[0].clone();
        let cast = match casts.get(&x) {
            Some(c) => String::clone(c),
            None => {
                let kept = patch.fresh(&format!("{x}_float16"));
                let cast = patch.fresh(&format!("{x}_float32"));
                let identity = unary("Identity", patch.fresh(&format!("{x}_keep_float16")), &x, &kept);
                let to_float =
                    cast_node(&patch.fresh(&format!("{x}_to_float32")), &kept, &cast, DataType::FLOAT as i32);
                patch.insert_after_producer_of(&x, identity);
                patch.insert_after_producer_of(&x, to_float);
                casts.insert(x, cast.clone());
                cast
            }
        };
        let scale32 = match scales.get(&scale.name) {
            Some(s) => String::clone(s),
            None => {
                let mut t = TensorProto::new();
                t.name = patch.fresh(&format!("{}_float32", scale.name));
                t.dims = scale.dims.clone();
                graph::set_float32(&mut t, &float16_values(&scale));
                let name = t.name.clone();
                patch.add_initializer(t);
                scales.insert(scale.name.clone(), name.clone());
                name
            }
        };
        GraphPatch::rewire(graph, i, 0, &cast);
        GraphPatch::rewire(graph, i, 1, &scale32);
    }
    patch.apply(graph);
    true
}

/// Whether this process's ONNX Runtime computes the rewrite's outputs bit for bit, checked once on a small
/// graph: float32 input -> Cast(float16) -> Sqrt (run in float32 between inserted Casts) -> QuantizeLinear
/// with a float16 scale -> DequantizeLinear -> Cast(float32), over 16 384 values many of which sit on a
/// rounding tie, as written and rewritten. Any failure (no runtime, another result) leaves the rewrite out.
pub fn float32_quantize_is_exact() -> bool {
    static EXACT: OnceLock<bool> = OnceLock::new();
    *EXACT.get_or_init(|| match check() {
        Ok(true) => true,
        Ok(false) => {
            tracing::debug!(target: "int8kit::sessions", "float16 QuantizeLinear in float32 differs here: measured as written");
            false
        }
        Err(e) => {
            tracing::debug!(target: "int8kit::sessions", error = %e, "float16 QuantizeLinear check failed: measured as written");
            false
        }
    })
}

fn check() -> Result<bool, runtime::RuntimeError> {
    const N: usize = 16_384;
    let scale = half::f16::from_f32(0.0123);
    let mut proto = ModelProto::new();
    proto.ir_version = 9;
    let mut opset = graph::proto::OperatorSetIdProto::new();
    opset.version = 19;
    proto.opset_import.push(opset);
    let graph = proto.graph.mut_or_insert_default();
    let value = |name: &str, ty: DataType| {
        let mut v = graph::proto::ValueInfoProto::new();
        v.name = name.into();
        let mut t = graph::proto::TypeProto::new();
        t.mut_tensor_type().elem_type = ty as i32;
        v.type_ = Some(t).into();
        v
    };
    graph.input.push(value("x", DataType::FLOAT));
    graph.output.push(value("y", DataType::FLOAT));
    let mut s = TensorProto::new();
    s.name = "s".into();
    s.data_type = DataType::FLOAT16 as i32;
    s.raw_data = scale.to_le_bytes().to_vec();
    let mut z = TensorProto::new();
    z.name = "z".into();
    z.data_type = DataType::INT8 as i32;
    z.raw_data = vec![0];
    graph.initializer.extend([s, z]);
    let mut q = unary("QuantizeLinear", "q".into(), "r", "qy");
    q.input.extend(["s".to_string(), "z".to_string()]);
    let mut dq = unary("DequantizeLinear", "dq".into(), "qy", "d");
    dq.input.extend(["s".to_string(), "z".to_string()]);
    graph.node.extend([
        cast_node("c16", "x", "h", DataType::FLOAT16 as i32),
        unary("Sqrt", "sqrt".into(), "h", "r"),
        q,
        dq,
        cast_node("c32", "d", "y", DataType::FLOAT as i32),
    ]);
    // Squares of values on and near half-steps of the scale, so that the square roots land on ties.
    let step = scale.to_f32();
    let x: Vec<f32> = (0..N)
        .map(|i| {
            let k = (i % 4096) as f32 * 0.5 - 1024.0;
            let r = (k.abs() * step) * (1.0 + (i / 4096) as f32 * 1e-3);
            r * r
        })
        .collect();
    let shape = [N];
    let inputs = [runtime::Input { name: "x", shape: &shape, values: runtime::Values::F32(&x) }];
    let run = |p: &ModelProto| -> Result<Vec<f32>, runtime::RuntimeError> {
        let bytes = graph::proto::Message::write_to_bytes(p).map_err(|e| runtime::RuntimeError::Run {
            model: "float16 quantize check".into(),
            message: e.to_string(),
        })?;
        let mut cfg = runtime::SessionConfig::new("float16 quantize check");
        cfg.intra_threads = 1;
        cfg.graph_optimization = runtime::GraphOptimization::Disabled;
        let mut session = runtime::session_from_bytes(&bytes, &cfg)?;
        runtime::run_rows(&mut session, "float16 quantize check", &inputs, "y")
    };
    let written = run(&proto)?;
    let mut rewritten = proto.clone();
    rewrite(&mut rewritten);
    let faster = run(&rewritten)?;
    Ok(written.len() == N && written.iter().map(|v| v.to_bits()).eq(faster.iter().map(|v| v.to_bits())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_onnx_runtime_quantizes_float16_in_float32_exactly() {
        // The pinned ONNX Runtime passes its own check: a new version that fails it would be measured as
        // written (slower), and this test says so.
        assert!(check().unwrap());
    }

    #[test]
    fn a_float16_quantize_reads_a_kept_rounding_cast_to_float32() {
        let mut m = crate::test_models::empty_model(19);
        let g = m.graph.mut_or_insert_default();
        let mut s = TensorProto::new();
        s.name = "s".into();
        s.data_type = DataType::FLOAT16 as i32;
        s.raw_data = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        g.initializer.push(s);
        let mut q = unary("QuantizeLinear", "q".into(), "a", "qa");
        q.input.push("s".into());
        let mut dq = unary("DequantizeLinear", "dq".into(), "qa", "d");
        dq.input.push("s".into());
        g.node.extend([unary("Sqrt", "sqrt".into(), "x", "a"), q, dq]);
        assert!(rewrite(&mut m));
        let g = &m.graph;
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Sqrt", "Identity", "Cast", "QuantizeLinear", "DequantizeLinear"]);
        let q = &g.node[3];
        assert_eq!(q.input[0], g.node[2].output[0]);
        assert_eq!(g.node[2].input[0], g.node[1].output[0]);
        let scale32 = g.initializer.iter().find(|t| t.name == q.input[1]).unwrap();
        assert_eq!(scale32.data_type, DataType::FLOAT as i32);
        assert_eq!(scale32.raw_data, 0.5f32.to_le_bytes());
        // The DequantizeLinear still reads the float16 scale: only the quantization moves to float32.
        assert_eq!(g.node[4].input[1], "s");
        assert!(!rewrite(&mut crate::test_models::empty_model(19)));
    }
}
