//! Graph pieces the unit tests build models from.

use onnx_protobuf::NodeProto;

/// A node `op` named `{op}_{output}` reading `inputs` and writing `output`.
pub fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("{op}_{output}");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n
}
