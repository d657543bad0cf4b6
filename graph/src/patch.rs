//! Graph rewrites through one type, in the spirit of tract's `ModelPatch`: a [`GraphPatch`] collects new nodes
//! (each placed right after the producer of what it reads, so the graph stays topologically sorted), new
//! initializers and fresh names, while the caller rewires consumers; [`GraphPatch::apply`] splices everything
//! in at once, after [`GraphPatch::prune`] has dropped what nothing reads any more. The Q/DQ rewrite, the
//! float-type rewrite and smoothing all edit graphs through it.

use std::collections::{BTreeMap, HashMap, HashSet};

use onnx_protobuf::{GraphProto, NodeProto, TensorProto};

use crate::UniqueNames;

/// Pending edits of one graph. Node positions refer to the graph as it was when the patch was made (pruning
/// keeps them in step).
#[derive(Debug)]
pub struct GraphPatch {
    names: UniqueNames,
    producer: HashMap<String, usize>,
    /// New nodes by the original node they follow (`None`: before every node), in insertion order.
    after: BTreeMap<Option<usize>, Vec<NodeProto>>,
    initializers: Vec<TensorProto>,
}

impl GraphPatch {
    /// A patch of `graph` as it is now: its names are taken, its producers known.
    pub fn new(graph: &GraphProto) -> GraphPatch {
        let producer = graph
            .node
            .iter()
            .enumerate()
            .flat_map(|(n, node)| node.output.iter().filter(|o| !o.is_empty()).map(move |o| (o.clone(), n)))
            .collect();
        GraphPatch { names: UniqueNames::of(graph), producer, after: BTreeMap::new(), initializers: Vec::new() }
    }

    /// A name no node, tensor or initializer of the graph or of this patch has: `base`, else `base_1`, ...
    pub fn fresh(&mut self, base: &str) -> String {
        self.names.fresh(base)
    }

    /// The node that outputs `tensor` in the graph the patch was made of (`None` for inputs and initializers).
    pub fn producer(&self, tensor: &str) -> Option<usize> {
        self.producer.get(tensor).copied()
    }

    /// Places `node` right after the node at `position` (`None`: before every node), after what was placed
    /// there before.
    pub fn insert_after(&mut self, position: Option<usize>, node: NodeProto) {
        self.after.entry(position).or_default().push(node);
    }

    /// Places `node` right after the producer of `tensor` (first, for a graph input or an initializer): the
    /// place of a node that reads `tensor`.
    pub fn insert_after_producer_of(&mut self, tensor: &str, node: NodeProto) {
        self.insert_after(self.producer(tensor), node);
    }

    /// Adds an initializer (after the graph's own, in the order added).
    pub fn add_initializer(&mut self, tensor: TensorProto) {
        self.initializers.push(tensor);
    }

    /// Makes input `slot` of node `node` read `tensor` instead.
    pub fn rewire(graph: &mut GraphProto, node: usize, slot: usize, tensor: &str) {
        graph.node[node].input[slot] = tensor.to_string();
    }

    /// Removes, until none is left, the nodes that `removable` accepts whose outputs nothing reads (no node,
    /// new or old, and no graph output), unless new nodes follow them; then the initializers nothing reads.
    pub fn prune(&mut self, graph: &mut GraphProto, removable: impl Fn(&NodeProto) -> bool) {
        loop {
            let read = self.read(graph);
            let dead: HashSet<usize> = graph
                .node
                .iter()
                .enumerate()
                .filter(|(i, n)| {
                    removable(n) && !self.after.contains_key(&Some(*i)) && n.output.iter().all(|o| !read.contains(o))
                })
                .map(|(i, _)| i)
                .collect();
            if dead.is_empty() {
                break;
            }
            // Removing nodes shifts positions: the new nodes move with the node they follow.
            let mut kept = Vec::new();
            let mut moved: BTreeMap<Option<usize>, Vec<NodeProto>> = BTreeMap::new();
            if let Some(first) = self.after.remove(&None) {
                moved.insert(None, first);
            }
            for (i, n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
                if dead.contains(&i) {
                    continue;
                }
                if let Some(extra) = self.after.remove(&Some(i)) {
                    moved.insert(Some(kept.len()), extra);
                }
                kept.push(n);
            }
            graph.node = kept;
            self.after = moved;
        }
        let read = self.read(graph);
        graph.initializer.retain(|t| read.contains(&t.name));
    }

    /// Every tensor name a node (old or new) or a graph output reads.
    fn read(&self, graph: &GraphProto) -> HashSet<String> {
        graph
            .node
            .iter()
            .chain(self.after.values().flatten())
            .flat_map(|n| n.input.iter().cloned())
            .chain(graph.output.iter().map(|o| o.name.clone()))
            .collect()
    }

    /// Splices the new nodes in after the nodes they follow and appends the new initializers.
    pub fn apply(mut self, graph: &mut GraphProto) {
        graph.initializer.extend(self.initializers);
        if self.after.is_empty() {
            return;
        }
        let mut nodes = self.after.remove(&None).unwrap_or_default();
        for (i, n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
            nodes.push(n);
            nodes.extend(self.after.remove(&Some(i)).unwrap_or_default());
        }
        // Positions past the end (none should be) still come last rather than vanish.
        nodes.extend(self.after.into_values().flatten());
        graph.node = nodes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = name.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n
    }

    fn names(g: &GraphProto) -> Vec<&str> {
        g.node.iter().map(|n| n.name.as_str()).collect()
    }

    /// x -> a -> b -> y, w an initializer cast by c (read by b).
    fn chain() -> GraphProto {
        let mut g = GraphProto::new();
        g.node.push(node("Relu", "a", &["x"], "a_out"));
        g.node.push(node("Cast", "c", &["w"], "w_cast"));
        g.node.push(node("MatMul", "b", &["a_out", "w_cast"], "y"));
        let mut w = TensorProto::new();
        w.name = "w".into();
        g.initializer.push(w);
        let mut out = onnx_protobuf::ValueInfoProto::new();
        out.name = "y".into();
        g.output.push(out);
        g
    }

    #[test]
    fn new_nodes_follow_their_producer_in_insertion_order_and_names_stay_unique() {
        let mut g = chain();
        let mut patch = GraphPatch::new(&g);
        assert_eq!(patch.fresh("a_out"), "a_out_1", "a tensor name is taken");
        assert_eq!(patch.fresh("a"), "a_1", "a node name is taken");
        patch.insert_after_producer_of("a_out", node("Neg", "n1", &["a_out"], "n1_out"));
        patch.insert_after_producer_of("a_out", node("Neg", "n2", &["n1_out"], "n2_out"));
        patch.insert_after_producer_of("x", node("Abs", "first", &["x"], "x_abs"));
        GraphPatch::rewire(&mut g, 2, 0, "n2_out");
        patch.apply(&mut g);
        assert_eq!(names(&g), ["first", "a", "n1", "n2", "c", "b"]);
        assert_eq!(g.node[5].input[0], "n2_out");
    }

    #[test]
    fn pruning_drops_unread_chains_and_initializers_but_keeps_what_new_nodes_read() {
        let mut g = chain();
        let mut patch = GraphPatch::new(&g);
        let mut q = TensorProto::new();
        q.name = "w_q".into();
        patch.add_initializer(q);
        patch.insert_after(None, node("DequantizeLinear", "dq", &["w_q"], "w_dq"));
        GraphPatch::rewire(&mut g, 2, 1, "w_dq");
        patch.prune(&mut g, |n| n.op_type == "Cast");
        patch.apply(&mut g);
        assert_eq!(names(&g), ["dq", "a", "b"], "the Cast nobody reads went");
        let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(inits, ["w_q"], "the float weight nobody reads went, the new one stayed");

        // A node that a new node follows stays even when unread.
        let mut g = chain();
        let mut patch = GraphPatch::new(&g);
        patch.insert_after(Some(1), node("Identity", "keep", &["x"], "k"));
        GraphPatch::rewire(&mut g, 2, 1, "w");
        patch.prune(&mut g, |n| n.op_type == "Cast");
        patch.apply(&mut g);
        assert_eq!(names(&g), ["a", "c", "keep", "b"]);
    }
}
