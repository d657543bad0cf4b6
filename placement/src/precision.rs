//! Which nodes run in INT8: defaults after TensorRT's Q/DQ placement guidance, overridden by a precision file.

use std::path::Path;

use globset::{Glob, GlobMatcher};
use graph::proto::GraphProto;
use graph::GraphIndex;
use serde::{Deserialize, Serialize};

use crate::{PlacementError, PlacementOptions};

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

/// Decides every node's precision. Nodes outside GEMM_OPS appear only when a list names them.
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
            let constant_inputs =
                node.input.iter().filter(|i| !i.is_empty() && index.constant(graph, i).is_some()).count();
            if op == "MatMul" && constant_inputs == 0 && attention == AttentionPrecision::Float {
                let target = options.target.name();
                (
                    false,
                    format!(
                        "{attention_from} (target {target}): attention MatMul (both inputs activations) stays float"
                    ),
                )
            } else if op == "MatMul" && constant_inputs == 0 {
                let target = options.target.name();
                (true, format!("{attention_from} (target {target}): attention MatMul, both activation inputs in INT8"))
            } else {
                (true, format!("default: {op} inputs and weights in INT8"))
            }
        } else {
            continue;
        };
        out.push(Decision { node: node.name.clone(), op: op.to_string(), int8, reason });
    }
    check_entries_match(graph, file, origin, &deny_nodes, &allow_nodes)?;
    Ok(out)
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
