//! Weights that reach their GEMM through a Transpose of a constant (recent PyTorch exporters leave
//! `MatMul(x, Transpose(W))` where their constant folding stops at large tensors): the Transpose is folded into
//! an initializer, so that the placement sees a weight, quantizes it per channel and the Q/DQ model holds it
//! as INT8. The values are the same (a transpose is exact), and TensorRT folds such a Transpose itself.

use std::collections::HashSet;

use onnx_protobuf::{tensor_proto::DataType, GraphProto, NodeProto, TensorProto};

use crate::{GraphError, GraphIndex, Model};

/// How many Cast/Identity nodes may sit between a constant and its Transpose.
const MAX_CHAIN: usize = 8;

impl Model {
    /// Folds every Transpose of a float constant (an initializer or Constant, possibly behind Identity nodes
    /// or Casts to float32) into an initializer named as the Transpose's output, and drops the nodes and
    /// initializers that nothing reads any more. Returns how many Transposes were folded.
    pub fn fold_constant_transposes(&mut self) -> Result<usize, GraphError> {
        let graph = &self.proto.graph;
        let index = GraphIndex::new(graph);
        let mut folded: Vec<(usize, TensorProto)> = Vec::new();
        for (i, node) in graph.node.iter().enumerate() {
            if node.op_type != "Transpose" || node.input.is_empty() || node.output.len() != 1 {
                continue;
            }
            let Some(source) = constant_source(graph, &index, &node.input[0]) else { continue };
            let values = self.tensor_f32(source)?;
            let dims: Vec<usize> = source.dims.iter().map(|&d| d as usize).collect();
            let perm = permutation(node, dims.len()).ok_or_else(|| GraphError::TensorData {
                tensor: node.output[0].clone(),
                message: format!(
                    "Transpose '{}' has a perm that is not a permutation of {} axes",
                    node.name,
                    dims.len()
                ),
            })?;
            if dims.iter().product::<usize>() != values.len() {
                continue;
            }
            let mut t = TensorProto::new();
            t.name = node.output[0].clone();
            t.dims = perm.iter().map(|&p| dims[p] as i64).collect();
            crate::set_float32(&mut t, &transpose(&values, &dims, &perm));
            folded.push((i, t));
        }
        if folded.is_empty() {
            return Ok(0);
        }
        let count = folded.len();
        tracing::info!("{}: {count} Transposes of constants folded into initializers", self.path.display());
        let drop: HashSet<usize> = folded.iter().map(|(i, _)| *i).collect();
        let graph = self.proto.graph.mut_or_insert_default();
        let mut k = 0;
        graph.node.retain(|_| {
            k += 1;
            !drop.contains(&(k - 1))
        });
        graph.initializer.extend(folded.into_iter().map(|(_, t)| t));
        // What only fed the folded Transposes (the constants, Casts between) goes.
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        crate::prune_to_outputs(graph, &outputs, |_| onnx_protobuf::ValueInfoProto::new());
        Ok(count)
    }
}

/// The float constant behind `name`: an initializer or Constant, through Identity nodes and Casts to float32.
fn constant_source<'g>(graph: &'g GraphProto, index: &GraphIndex, name: &str) -> Option<&'g TensorProto> {
    let float = [DataType::FLOAT as i32, DataType::FLOAT16 as i32];
    let mut name = name;
    for _ in 0..MAX_CHAIN {
        if let Some(t) = index.constant(graph, name) {
            return float.contains(&t.data_type).then_some(t);
        }
        let node = &graph.node[*index.producer.get(name)?];
        let to_float =
            node.op_type == "Cast" && node.attribute.iter().any(|a| a.name == "to" && a.i == DataType::FLOAT as i64);
        if !(to_float || node.op_type == "Identity") || node.input.is_empty() {
            return None;
        }
        name = &node.input[0];
    }
    None
}

/// The Transpose's `perm` (reversed axes when absent), if it is a permutation of `rank` axes.
fn permutation(node: &NodeProto, rank: usize) -> Option<Vec<usize>> {
    let perm: Vec<usize> = match node.attribute.iter().find(|a| a.name == "perm") {
        Some(a) => a.ints.iter().map(|&p| usize::try_from(p).ok()).collect::<Option<_>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    for &p in &perm {
        if p >= rank || std::mem::replace(&mut seen[p], true) {
            return None;
        }
    }
    (perm.len() == rank).then_some(perm)
}

/// `values` (row-major, `dims`) with its axes permuted: output axis k is input axis `perm[k]`.
fn transpose(values: &[f32], dims: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = dims.len();
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let mut in_strides = vec![1usize; rank];
    for k in (0..rank.saturating_sub(1)).rev() {
        in_strides[k] = in_strides[k + 1] * dims[k + 1];
    }
    // The input stride of each output axis.
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut out = Vec::with_capacity(values.len());
    let mut at = vec![0usize; rank];
    for _ in 0..values.len() {
        out.push(values[at.iter().zip(&strides).map(|(a, s)| a * s).sum::<usize>()]);
        for k in (0..rank).rev() {
            at[k] += 1;
            if at[k] < out_dims[k] {
                break;
            }
            at[k] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_graphs::node;
    use onnx_protobuf::{AttributeProto, ModelProto, ValueInfoProto};

    fn named(name: &str) -> ValueInfoProto {
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        v
    }

    fn weight(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = dims.to_vec();
        crate::set_float32(&mut t, values);
        t
    }

    /// `MatMul(x, Transpose(w))`, `MatMul(x, Transpose(Cast(v)))` where `v` is also read by an Add, and a
    /// Transpose of the input (an activation, left alone).
    #[test]
    fn transposes_of_constants_become_initializers_and_what_only_fed_them_goes() {
        let mut g = GraphProto::new();
        g.input.push(named("x"));
        g.initializer.push(weight("w", &[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
        g.initializer.push(weight("v", &[3, 2], &[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]));
        g.node.push(node("Transpose", &["w"], "wt"));
        let mut cast = node("Cast", &["v"], "vf");
        let mut to = AttributeProto::new();
        to.name = "to".into();
        to.i = DataType::FLOAT as i64;
        cast.attribute.push(to);
        g.node.push(cast);
        let mut t = node("Transpose", &["vf"], "vt");
        let mut perm = AttributeProto::new();
        perm.name = "perm".into();
        perm.ints = vec![1, 0];
        t.attribute.push(perm);
        g.node.push(t);
        g.node.push(node("MatMul", &["x", "wt"], "a"));
        g.node.push(node("MatMul", &["a", "vt"], "b"));
        g.node.push(node("Add", &["v", "v"], "c"));
        g.node.push(node("Transpose", &["b"], "y"));
        g.output.extend([named("y"), named("c")]);
        let mut proto = ModelProto::new();
        proto.graph = Some(g).into();
        let mut m = Model {
            proto,
            path: "t.onnx".into(),
            dir: Default::default(),
            sha256: String::new(),
            has_external_data: false,
            low_precision_source: None,
            low_precision_io: Vec::new(),
        };
        assert_eq!(m.fold_constant_transposes().unwrap(), 2);
        let g = &m.proto.graph;
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["MatMul", "MatMul", "Add", "Transpose"], "the activation's Transpose stays");
        let init = |name: &str| g.initializer.iter().find(|t| t.name == name);
        let wt = init("wt").unwrap();
        assert_eq!(
            (wt.dims.as_slice(), m.tensor_f32(wt).unwrap()),
            ([2i64, 3].as_slice(), vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0])
        );
        assert_eq!(m.tensor_f32(init("vt").unwrap()).unwrap(), [6.0, 8.0, 10.0, 7.0, 9.0, 11.0]);
        assert!(init("w").is_none(), "nothing reads w any more");
        assert!(init("v").is_some(), "the Add still reads v");
        assert_eq!(m.fold_constant_transposes().unwrap(), 0, "nothing left to fold");
    }

    #[test]
    fn a_transpose_permutes_axes_as_onnx_does() {
        // [2, 3] -> [3, 2]
        let v: Vec<f32> = (0..6).map(|x| x as f32).collect();
        assert_eq!(transpose(&v, &[2, 3], &[1, 0]), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // [2, 3, 4] with perm [2, 0, 1]: out[k][i][j] = in[i][j][k].
        let v: Vec<f32> = (0..24).map(|x| x as f32).collect();
        let out = transpose(&v, &[2, 3, 4], &[2, 0, 1]);
        for k in 0..4 {
            for i in 0..2 {
                for j in 0..3 {
                    assert_eq!(out[k * 6 + i * 3 + j], v[i * 12 + j * 4 + k]);
                }
            }
        }
    }
}
