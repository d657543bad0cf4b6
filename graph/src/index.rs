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
