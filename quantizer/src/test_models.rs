//! What the unit tests of this crate share to build small ONNX models by hand.

use graph::proto::{tensor_proto::DataType, Message, ModelProto, OperatorSetIdProto, TypeProto, ValueInfoProto};
use graph::Model;

/// A float32 graph input or output called `name`.
pub fn float_value(name: &str) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    let mut t = TypeProto::new();
    t.mut_tensor_type().elem_type = DataType::FLOAT as i32;
    v.type_ = Some(t).into();
    v
}

/// An empty model importing the default domain at `opset`.
pub fn empty_model(opset: i64) -> ModelProto {
    let mut m = ModelProto::new();
    let mut o = OperatorSetIdProto::new();
    o.version = opset;
    m.opset_import.push(o);
    m
}

/// `m` written to `path` and loaded back, as a user's file would be.
pub fn load_written(m: &ModelProto, path: &std::path::Path) -> Model {
    std::fs::write(path, m.write_to_bytes().unwrap()).unwrap();
    Model::load(path).unwrap()
}
