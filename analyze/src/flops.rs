//! Multiply-accumulate counts of GEMM/Conv nodes for one image, from tensor shapes that ONNX Runtime
//! reports on a single-image run (shape inference on every exporter's output is ONNX Runtime's job).

use std::collections::HashMap;

use graph::proto::{TypeProto, ValueInfoProto};
use graph::{GraphIndex, Model};

use crate::AnalyzeError;

/// FLOPs (2 x MACs) per node name, for Conv/ConvTranspose/MatMul/Gemm nodes.
pub fn gemm_flops(model: &Model, recipe: &datasets::Recipe, input: &str) -> Result<HashMap<String, f64>, AnalyzeError> {
    let graph = &model.proto.graph;
    let index = GraphIndex::new(graph);
    let gemm: Vec<usize> =
        (0..graph.node.len()).filter(|&i| placement::GEMM_OPS.contains(&graph.node[i].op_type.as_str())).collect();
    // Shapes needed: each node's output, and its first input (MatMul/Gemm inner dimension, ConvTranspose).
    let mut wanted: Vec<String> = Vec::new();
    for &i in &gemm {
        let n = &graph.node[i];
        for t in [&n.output[0], &n.input[0]] {
            if !wanted.contains(t) && !index.initializers.contains_key(t) {
                wanted.push(t.clone());
            }
        }
    }
    let mut probe = model.clone();
    let existing: Vec<String> = probe.proto.graph.output.iter().map(|o| o.name.clone()).collect();
    for t in wanted.iter().filter(|t| !existing.contains(t) && *t != input) {
        let mut vi = ValueInfoProto::new();
        vi.name = t.clone();
        let mut tp = TypeProto::new();
        tp.mut_tensor_type().elem_type = graph::ElemType::FLOAT.0;
        vi.type_ = Some(tp).into();
        probe.proto.graph.mut_or_insert_default().output.push(vi);
    }
    let mut cfg = runtime::SessionConfig::new(model.path.display().to_string());
    cfg.external_data_dir = Some(model.dir.clone());
    cfg.intra_threads = 1;
    let mut session = runtime::session_from_bytes(&probe.to_bytes()?, &cfg)?;
    // One image, or the model's fixed batch; FLOPs are per image.
    let batch = model.fixed_batch(input).unwrap_or(1);
    let shape = recipe.batch_shape(batch);
    let zeros = vec![0f32; recipe.image_len() * batch];
    let outputs: Vec<String> = wanted.iter().filter(|t| *t != input).cloned().collect();
    let shapes: HashMap<String, Vec<i64>> =
        runtime::run_f32_shapes(&mut session, &model.path.display().to_string(), input, &shape, &zeros, &outputs)?
            .into_iter()
            .chain(std::iter::once((input.to_string(), shape.iter().map(|&d| d as i64).collect())))
            .collect();
    let numel = |t: &str| shapes.get(t).map(|s| s.iter().product::<i64>() as f64);
    let mut flops = HashMap::new();
    for &i in &gemm {
        let n = &graph.node[i];
        let weight_dims = n.input.get(1).and_then(|w| index.constant(graph, w)).map(|t| t.dims.clone());
        let k = match n.op_type.as_str() {
            "Conv" => weight_dims.as_ref().map(|d| d[1..].iter().product::<i64>() as f64),
            "ConvTranspose" => weight_dims.as_ref().map(|d| d[1..].iter().product::<i64>() as f64),
            "MatMul" => shapes.get(&n.input[0]).and_then(|s| s.last()).map(|&d| d as f64),
            "Gemm" => {
                let trans_a = n.attribute.iter().find(|a| a.name == "transA").map(|a| a.i).unwrap_or(0);
                shapes.get(&n.input[0]).and_then(|s| s.get(if trans_a != 0 { 0 } else { 1 })).map(|&d| d as f64)
            }
            _ => None,
        };
        // ConvTranspose: every input element meets (Cout/g * kh * kw) weights.
        let base = if n.op_type == "ConvTranspose" { numel(&n.input[0]) } else { numel(&n.output[0]) };
        if let (Some(k), Some(e)) = (k, base) {
            flops.insert(n.name.clone(), 2.0 * e * k / batch as f64);
        }
    }
    Ok(flops)
}
