//! Model-local functions (`ModelProto.functions`, written by exporters that keep modules as functions):
//! expanded into the graph, so that every pass sees, taps and quantizes the nodes inside them. ONNX Runtime
//! inlines them the same way when it builds a session, so the expanded graph computes what the file does.

use std::collections::HashMap;

use onnx_protobuf::{AttributeProto, FunctionProto, GraphProto, NodeProto};

use crate::{GraphError, Model, UniqueNames};

/// Function calls nested deeper than this are taken for a cycle.
const MAX_DEPTH: usize = 32;

/// A function's key: (domain, name, overload).
type Key = (String, String, String);

fn key_of_call(node: &NodeProto) -> Key {
    (node.domain.clone(), node.op_type.clone(), node.overload.clone())
}

impl Model {
    /// Expands every call of a model-local function into the function's nodes (recursively), drops the
    /// functions and the opset imports that only they used. Inner tensors and nodes get names prefixed by
    /// the call's, unique in the graph; attributes that refer to the call's (`ref_attr_name`) take its values
    /// or the function's defaults. Returns whether anything was expanded. A function this cannot expand
    /// faithfully (another ONNX opset than the model's, a subgraph inside) is an error naming it, never a
    /// silent float island.
    pub fn inline_local_functions(&mut self) -> Result<bool, GraphError> {
        if self.proto.functions.is_empty() {
            return Ok(false);
        }
        let functions: HashMap<Key, FunctionProto> = self
            .proto
            .functions
            .iter()
            .map(|f| ((f.domain.clone(), f.name.clone(), f.overload.clone()), f.clone()))
            .collect();
        let opset = crate::default_opset(&self.proto);
        for f in functions.values() {
            let fail = |message: String| function_error(&self.path, f, message);
            if let Some(v) = f.opset_import.iter().find(|o| crate::is_default_domain(&o.domain)).map(|o| o.version) {
                if v != opset {
                    return Err(fail(format!("it uses ONNX opset {v}, the model opset {opset}")));
                }
            }
            if let Some(n) = f.node.iter().find(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())) {
                return Err(fail(format!("its node '{}' ({}) holds a subgraph", n.name, n.op_type)));
            }
        }
        let graph = self.proto.graph.mut_or_insert_default();
        let mut names = UniqueNames::of(graph);
        let mut expanded = false;
        let mut nodes = Vec::with_capacity(graph.node.len());
        for node in std::mem::take(&mut graph.node) {
            expanded |= expand(&self.path, node, &functions, &mut names, 0, &mut nodes)?;
        }
        graph.node = nodes;
        expanded |= expand_in_subgraphs(&self.path, graph, &functions, &mut names)?;
        self.proto.functions.clear();
        // Opset imports of domains no node uses any more (the functions' own).
        let used = used_domains(&self.proto.graph);
        self.proto.opset_import.retain(|o| crate::is_default_domain(&o.domain) || used.contains(&o.domain));
        Ok(expanded)
    }
}

/// Why `f` cannot be expanded.
fn function_error(model: &std::path::Path, f: &FunctionProto, message: String) -> GraphError {
    GraphError::Function { model: model.to_path_buf(), function: format!("{}::{}", f.domain, f.name), message }
}

/// Pushes `node` onto `out`, or, where it calls a function, the function's nodes (renamed). Returns whether
/// it expanded a call.
fn expand(
    model: &std::path::Path,
    node: NodeProto,
    functions: &HashMap<Key, FunctionProto>,
    names: &mut UniqueNames,
    depth: usize,
    out: &mut Vec<NodeProto>,
) -> Result<bool, GraphError> {
    let Some(f) = functions.get(&key_of_call(&node)) else {
        out.push(node);
        return Ok(false);
    };
    let fail = |message: String| function_error(model, f, message);
    if depth >= MAX_DEPTH {
        return Err(fail(format!("calls nest deeper than {MAX_DEPTH} (a function that calls itself?)")));
    }
    if node.input.len() > f.input.len() || node.output.len() > f.output.len() {
        return Err(fail(format!(
            "node '{}' passes {} inputs and {} outputs, the function takes {} and {}",
            node.name,
            node.input.len(),
            node.output.len(),
            f.input.len(),
            f.output.len()
        )));
    }
    let prefix = if node.name.is_empty() { f.name.clone() } else { node.name.clone() };
    // The function's formal names -> the call's actual ones; an input not passed is an absent optional ("").
    let mut rename: HashMap<String, String> = HashMap::new();
    for (i, formal) in f.input.iter().enumerate() {
        rename.insert(formal.clone(), node.input.get(i).cloned().unwrap_or_default());
    }
    for (i, formal) in f.output.iter().enumerate() {
        let actual = match node.output.get(i).filter(|o| !o.is_empty()) {
            Some(o) => o.clone(),
            None => names.fresh(&format!("{prefix}/{formal}")),
        };
        rename.insert(formal.clone(), actual);
    }
    let mut map = |name: &String, names: &mut UniqueNames| -> String {
        if name.is_empty() {
            return String::new();
        }
        rename.entry(name.clone()).or_insert_with(|| names.fresh(&format!("{prefix}/{name}"))).clone()
    };
    for inner in &f.node {
        let mut n = inner.clone();
        n.name = names.fresh(&format!("{prefix}/{}", if inner.name.is_empty() { &inner.op_type } else { &inner.name }));
        n.input = inner.input.iter().map(|i| map(i, names)).collect();
        n.output = inner.output.iter().map(|o| map(o, names)).collect();
        n.attribute = inner.attribute.iter().filter_map(|a| resolve_attribute(a, &node, f)).collect();
        expand(model, n, functions, names, depth + 1, out)?;
    }
    Ok(true)
}

/// An inner node's attribute: itself, or where it refers to the call's (`ref_attr_name`) the call's value,
/// else the function's default, else none (an optional attribute the call leaves out).
fn resolve_attribute(a: &AttributeProto, call: &NodeProto, f: &FunctionProto) -> Option<AttributeProto> {
    if a.ref_attr_name.is_empty() {
        return Some(a.clone());
    }
    let given = call.attribute.iter().chain(&f.attribute_proto).find(|c| c.name == a.ref_attr_name)?;
    let mut resolved = given.clone();
    resolved.name = a.name.clone();
    Some(resolved)
}

/// Function calls inside the main graph's subgraphs (an If's branches, a Loop's body).
fn expand_in_subgraphs(
    model: &std::path::Path,
    graph: &mut GraphProto,
    functions: &HashMap<Key, FunctionProto>,
    names: &mut UniqueNames,
) -> Result<bool, GraphError> {
    let mut expanded = false;
    for node in graph.node.iter_mut() {
        for attr in node.attribute.iter_mut() {
            let subgraphs = attr.g.as_mut().into_iter().chain(attr.graphs.iter_mut());
            for sub in subgraphs {
                let mut nodes = Vec::with_capacity(sub.node.len());
                for n in std::mem::take(&mut sub.node) {
                    expanded |= expand(model, n, functions, names, 0, &mut nodes)?;
                }
                sub.node = nodes;
                expanded |= expand_in_subgraphs(model, sub, functions, names)?;
            }
        }
    }
    Ok(expanded)
}

/// Every node domain of `graph` and its subgraphs.
fn used_domains(graph: &GraphProto) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for node in &graph.node {
        out.insert(node.domain.clone());
        for attr in &node.attribute {
            for sub in attr.g.as_ref().into_iter().chain(&attr.graphs) {
                out.extend(used_domains(sub));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_graphs::node;
    use onnx_protobuf::{ModelProto, OperatorSetIdProto};

    fn opset(domain: &str, version: i64) -> OperatorSetIdProto {
        let mut o = OperatorSetIdProto::new();
        o.domain = domain.into();
        o.version = version;
        o
    }

    fn float_attr(name: &str, f: f32) -> AttributeProto {
        let mut a = AttributeProto::new();
        a.name = name.into();
        a.f = f;
        a
    }

    fn reference(name: &str, to: &str) -> AttributeProto {
        let mut a = AttributeProto::new();
        a.name = name.into();
        a.ref_attr_name = to.into();
        a
    }

    fn function(name: &str, input: &[&str], output: &[&str], nodes: Vec<NodeProto>, version: i64) -> FunctionProto {
        let mut f = FunctionProto::new();
        f.domain = "local".into();
        f.name = name.into();
        f.input = input.iter().map(|s| s.to_string()).collect();
        f.output = output.iter().map(|s| s.to_string()).collect();
        f.node = nodes;
        f.opset_import = vec![opset("", version), opset("local", 1)];
        f
    }

    fn call(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        let mut n = node(op, inputs, output);
        n.domain = "local".into();
        n
    }

    /// `x -> Block(alpha 0.25) -> y`, twice, where Block is `LeakyRelu(alpha from the call) -> Inner`, and
    /// Inner is `Elu(alpha from its default) -> Neg` with an unused second output.
    fn model(inner_version: i64) -> Model {
        let mut leaky = node("LeakyRelu", &["a"], "t");
        leaky.attribute.push(reference("alpha", "alpha"));
        let block = function("Block", &["a"], &["b"], vec![leaky, call("Inner", &["t"], "b")], 17);
        let mut elu = node("Elu", &["p"], "e");
        elu.attribute.push(reference("alpha", "alpha"));
        let mut inner = function(
            "Inner",
            &["p"],
            &["q", "unused"],
            vec![elu, node("Neg", &["e"], "q"), node("Abs", &["e"], "unused")],
            inner_version,
        );
        inner.attribute_proto.push(float_attr("alpha", 2.0));
        let mut g = GraphProto::new();
        for (i, (input, output)) in [("x", "h"), ("h", "y")].into_iter().enumerate() {
            let mut c = call("Block", &[input], output);
            c.name = format!("block{i}");
            c.attribute.push(float_attr("alpha", 0.25));
            g.node.push(c);
        }
        let mut proto = ModelProto::new();
        proto.graph = Some(g).into();
        proto.functions = vec![block, inner];
        proto.opset_import = vec![opset("", 17), opset("local", 1)];
        Model::in_memory(proto, "f.onnx")
    }

    #[test]
    fn calls_expand_into_the_functions_nodes_with_their_attributes_and_unique_names() {
        let mut m = model(17);
        assert!(m.inline_local_functions().unwrap());
        let g = &m.proto.graph;
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["LeakyRelu", "Elu", "Neg", "Abs", "LeakyRelu", "Elu", "Neg", "Abs"]);
        assert!(m.proto.functions.is_empty());
        assert_eq!(m.proto.opset_import.iter().map(|o| o.domain.as_str()).collect::<Vec<_>>(), [""]);
        // The call's inputs and outputs keep their names; inner ones are the call's, prefixed and unique.
        assert_eq!(g.node[0].input, ["x"]);
        assert_eq!(g.node[2].output, ["h"]);
        assert_eq!(g.node[4].input, ["h"]);
        assert_eq!(g.node[6].output, ["y"]);
        assert_eq!(g.node[1].input, g.node[0].output);
        assert_eq!(g.node[0].output, ["block0/t"]);
        let names: std::collections::HashSet<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names.len(), g.node.len(), "node names stay unique");
        let outputs: std::collections::HashSet<&String> = g.node.iter().flat_map(|n| &n.output).collect();
        assert_eq!(outputs.len(), g.node.len(), "tensor names stay unique");
        // Attributes: the call's value, the function's default, never a dangling reference.
        let alpha =
            |n: &NodeProto| n.attribute.iter().find(|a| a.name == "alpha").map(|a| (a.f, a.ref_attr_name.clone()));
        assert_eq!(alpha(&g.node[0]), Some((0.25, String::new())));
        assert_eq!(alpha(&g.node[1]), Some((2.0, String::new())));
        assert!(!model(17).proto.functions.is_empty() && !m.inline_local_functions().unwrap(), "nothing left to do");
    }

    #[test]
    fn a_function_of_another_onnx_opset_is_refused_naming_it() {
        let err = model(13).inline_local_functions().unwrap_err().to_string();
        assert!(err.contains("local::Inner") && err.contains("opset 13") && err.contains("onnx.inliner"), "{err}");
    }
}
