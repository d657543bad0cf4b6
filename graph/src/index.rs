use std::collections::HashMap;

use onnx_protobuf::{GraphProto, TensorProto};

/// Who produces and who consumes each tensor of a graph, and which tensors are initializers.
#[derive(Debug, Default)]
pub struct GraphIndex {
    /// Tensor name -> index of the node that outputs it.
    pub producer: HashMap<String, usize>,
    /// Tensor name -> (node index, input slot) of every node that reads it, in graph order.
    pub consumers: HashMap<String, Vec<(usize, usize)>>,
    /// Initializer name -> index in `graph.initializer`.
    pub initializers: HashMap<String, usize>,
}

impl GraphIndex {
    /// Indexes a graph's nodes, producers, consumers and initializers.
    pub fn new(graph: &GraphProto) -> GraphIndex {
        let mut idx = GraphIndex::default();
        for (i, t) in graph.initializer.iter().enumerate() {
            idx.initializers.insert(t.name.clone(), i);
        }
        for (n, node) in graph.node.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                idx.producer.insert(out.clone(), n);
            }
            for (slot, input) in node.input.iter().enumerate().filter(|(_, i)| !i.is_empty()) {
                idx.consumers.entry(input.clone()).or_default().push((n, slot));
            }
        }
        idx
    }

    /// The initializer called `name`.
    pub fn initializer<'g>(&self, graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
        self.initializers.get(name).map(|&i| &graph.initializer[i])
    }

    /// The node that outputs `tensor`, and, when that node is a bias Add (an Add with exactly one constant
    /// operand), the node behind it: where a GEMM's output may come from once its bias is a separate Add.
    pub fn producers_through_bias_add(&self, graph: &GraphProto, tensor: &str) -> Vec<usize> {
        let Some(&p) = self.producer.get(tensor) else { return Vec::new() };
        let mut out = vec![p];
        let node = &graph.node[p];
        if node.op_type == "Add" && node.input.len() == 2 {
            let constant = |i: usize| self.constant(graph, &node.input[i]).is_some();
            let other = match (constant(0), constant(1)) {
                (false, true) => Some(0),
                (true, false) => Some(1),
                _ => None,
            };
            out.extend(other.and_then(|i| self.producer.get(&node.input[i]).copied()));
        }
        out
    }

    /// A tensor's constant value: an initializer, or the output of a `Constant` node.
    pub fn constant<'g>(&self, graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
        if let Some(t) = self.initializer(graph, name) {
            return Some(t);
        }
        let node = &graph.node[*self.producer.get(name)?];
        if node.op_type != "Constant" {
            return None;
        }
        node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref())
    }
}

/// Every node, tensor, initializer and input name of a graph, for making new ones: ONNX requires names to
/// be unique within the graph.
#[derive(Debug, Default)]
pub struct UniqueNames(std::collections::HashSet<String>);

impl UniqueNames {
    /// The names `graph` already uses.
    pub fn of(graph: &GraphProto) -> UniqueNames {
        UniqueNames(
            graph
                .node
                .iter()
                .flat_map(|n| std::iter::once(n.name.clone()).chain(n.output.iter().cloned()))
                .chain(graph.initializer.iter().map(|t| t.name.clone()))
                .chain(graph.input.iter().map(|i| i.name.clone()))
                .collect(),
        )
    }

    /// `base`, or `base_1`, `base_2`, ... : the first that is not taken, now taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.0.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.0.insert(name.clone());
        name
    }
}
