//! ONNX model I/O and a typed view of the graph.
//!
//! This crate knows the ONNX file format (protobuf, external data) and the graph's structure (nodes, tensors,
//! element types). It knows nothing of execution: running a model is the `runtime` crate's job.

#![forbid(unsafe_code)]

mod activations;
mod error;
mod external;
mod index;
mod infer;
mod model;
mod save;

pub use activations::{find_activations, Activation};
pub use error::GraphError;
pub use index::{GraphIndex, UniqueNames};
pub use infer::{computes_in_low_precision, infer_element_types, ElemType};
pub use model::{default_opset, is_default_domain, set_float32, Model};
/// The generated ONNX protobuf messages, re-exported so that callers use the same version.
pub use onnx_protobuf as proto;
pub use save::save_model;
