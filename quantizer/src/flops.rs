//! Multiply-accumulate counts of GEMM/Conv nodes for one sample, from tensor shapes that ONNX Runtime
//! reports on a run over one sample of zeros (shape inference on every exporter's output is ONNX Runtime's
//! job): an image as the calibration's recipe makes it, or the arrays its `.npz` samples held.

use std::collections::HashMap;

use graph::proto::{TypeProto, ValueInfoProto};
use graph::{GraphIndex, Model};

use datasets::{ArrayData, NamedArray};
use histograms::HistFile;

use crate::QuantizeError;

/// One batch of zeros shaped like the calibration's samples (the model's fixed batch, else one sample), and
/// that batch's size.
fn zero_batch(model: &Model, hist: &HistFile) -> Result<(Vec<NamedArray>, usize), QuantizeError> {
    let zeros = |name: String, dtype: &str, shape: Vec<usize>| {
        let data = ArrayData::zeros(dtype, shape.iter().product()).ok_or_else(|| QuantizeError::Model {
            path: model.path.clone(),
            message: format!("the .hist's array '{name}' has element type '{dtype}', which int8kit does not feed"),
        })?;
        Ok::<_, QuantizeError>(NamedArray { name, shape, data })
    };
    match (&hist.recipe, &hist.arrays) {
        (Some(recipe), _) => {
            let input = model.resolve_input(recipe.name.as_deref())?.name.clone();
            let batch = model.fixed_batch(&input).unwrap_or(1);
            let dtype = if recipe.dtype.is_float32() { "float32" } else { "uint8" };
            Ok((vec![zeros(input, dtype, recipe.batch_shape(batch).to_vec())?], batch))
        }
        (None, Some(arrays)) => {
            let batch = arrays.first().and_then(|a| model.fixed_batch(&a.name)).unwrap_or(1);
            let arrays = arrays
                .iter()
                .map(|a| {
                    let mut shape = a.shape.clone();
                    if let Some(b) = shape.first_mut() {
                        *b = batch;
                    }
                    zeros(a.name.clone(), &a.dtype, shape)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((arrays, batch))
        }
        (None, None) => Err(QuantizeError::Model {
            path: model.path.clone(),
            message: "its .hist names neither a recipe nor .npz arrays, so no sample can be made to measure FLOPs: \
                      calibrate again with int8kit"
                .into(),
        }),
    }
}

/// FLOPs (2 x MACs) per sample and node name, for Conv/ConvTranspose/MatMul/Gemm nodes, ONNX Attention nodes
/// (their two matrix products) and Einsum products, for samples like the calibration's.
pub fn gemm_flops(model: &Model, hist: &HistFile) -> Result<HashMap<String, f64>, QuantizeError> {
    let (fed, batch) = zero_batch(model, hist)?;
    let is_fed = |t: &str| fed.iter().any(|a| a.name == t);
    let graph = &model.proto.graph;
    let index = GraphIndex::new(graph);
    let (is_attention, einsum) = (placement::is_attention_op, placement::is_einsum_product);
    let gemm: Vec<usize> = (0..graph.node.len())
        .filter(|&i| {
            let n = &graph.node[i];
            placement::GEMM_OPS.contains(&n.op_type.as_str()) || is_attention(n) || einsum(n)
        })
        .filter(|&i| graph.node[i].input.len() >= 2 && !graph.node[i].output.is_empty())
        .collect();
    // Shapes needed: each node's output, and its first input (MatMul/Gemm inner dimension, ConvTranspose).
    let mut wanted: Vec<String> = Vec::new();
    for &i in &gemm {
        let n = &graph.node[i];
        // An Attention node's key too (its sequence length), every input of an Einsum (its index sizes).
        let more: Vec<&String> = if is_attention(n) {
            vec![&n.input[1]]
        } else if einsum(n) {
            n.input.iter().filter(|i| !i.is_empty()).collect()
        } else {
            vec![]
        };
        for t in [&n.output[0], &n.input[0]].into_iter().chain(more) {
            if !wanted.contains(t) && !index.initializers.contains_key(t) {
                wanted.push(t.clone());
            }
        }
    }
    let mut probe = model.clone();
    let existing: Vec<String> = probe.proto.graph.output.iter().map(|o| o.name.clone()).collect();
    for t in wanted.iter().filter(|t| !existing.contains(t) && !is_fed(t)) {
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
    let outputs: Vec<String> = wanted.iter().filter(|t| !is_fed(t)).cloned().collect();
    let inputs: Vec<runtime::Input<'_>> = fed.iter().map(NamedArray::input).collect();
    let shapes: HashMap<String, Vec<i64>> =
        runtime::run_shapes(&mut session, &model.path.display().to_string(), &inputs, &outputs)?
            .into_iter()
            .chain(fed.iter().map(|a| (a.name.clone(), a.shape.iter().map(|&d| d as i64).collect())))
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
            // Q*K^T: every query value meets every key position; attn*V: every output value does too
            // (K is [batch, heads, positions, size] or [batch, positions, heads * size]).
            "Attention" => {
                let positions = shapes.get(&n.input[1]).and_then(|s| s.get(if s.len() == 4 { 2 } else { 1 }));
                if let (Some(&p), Some(q), Some(y)) = (positions, numel(&n.input[0]), numel(&n.output[0])) {
                    flops.insert(n.name.clone(), 2.0 * p as f64 * (q + y) / batch as f64);
                }
                continue;
            }
            // One multiply-add per combination of every index's values (those summed over included).
            "Einsum" => {
                if let Some(f) = einsum_flops(n, &shapes) {
                    flops.insert(n.name.clone(), f / batch as f64);
                }
                continue;
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

/// FLOPs of an Einsum product: 2 x the product of every index's size, the sizes read from the inputs' shapes;
/// `None` with an ellipsis, or a shape that does not fit its term.
fn einsum_flops(n: &graph::proto::NodeProto, shapes: &HashMap<String, Vec<i64>>) -> Option<f64> {
    let (terms, _) = placement::einsum_terms(n)?;
    let mut sizes: HashMap<char, i64> = HashMap::new();
    for (term, input) in terms.iter().zip(n.input.iter().filter(|i| !i.is_empty())) {
        let shape = shapes.get(input)?;
        if term.contains('.') || term.chars().count() != shape.len() {
            return None;
        }
        for (c, &d) in term.chars().zip(shape) {
            sizes.insert(c, d.max(*sizes.get(&c).unwrap_or(&1)));
        }
    }
    Some(2.0 * sizes.values().map(|&d| d as f64).product::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn einsum(equation: &str, inputs: &[&str]) -> graph::proto::NodeProto {
        let mut n = graph::proto::NodeProto::new();
        n.op_type = "Einsum".into();
        n.input = inputs.iter().map(|i| i.to_string()).collect();
        n.output = vec!["y".into()];
        let mut a = graph::proto::AttributeProto::new();
        a.name = "equation".into();
        a.s = equation.as_bytes().to_vec();
        n.attribute.push(a);
        n
    }

    #[test]
    fn an_einsum_product_counts_a_multiply_add_per_combination_of_its_indices() {
        let shapes: HashMap<String, Vec<i64>> =
            [("q".to_string(), vec![2, 3, 49, 32]), ("k".to_string(), vec![2, 3, 49, 32])].into();
        // MaxViT's attention scores, spaces and capitals as its exporter writes them: 2 x B*H*I*J*D.
        let scores = einsum("B H I D, B H J D -> B H I J", &["q", "k"]);
        assert!(placement::is_einsum_product(&scores));
        assert_eq!(einsum_flops(&scores, &shapes), Some(2.0 * (2 * 3 * 49 * 49 * 32) as f64));
        // A term that does not fit its input's rank, or an ellipsis, gives no count.
        assert_eq!(einsum_flops(&einsum("bhd,bhjd->bhj", &["q", "k"]), &shapes), None);
        assert_eq!(einsum_flops(&einsum("...id,...jd->...ij", &["q", "k"]), &shapes), None);
        // No index summed over, or one input: no product, not listed.
        assert!(!placement::is_einsum_product(&einsum("bhid,bhid->bhid", &["q", "k"])));
        assert!(!placement::is_einsum_product(&einsum("bhid->bhdi", &["q"])));
    }
}
