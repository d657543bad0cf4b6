//! ONNX model I/O and a typed view of the graph.
//!
//! This crate knows the ONNX file format (protobuf, external data) and the graph's structure (nodes, tensors,
//! element types). It knows nothing of execution: running a model is the `runtime` crate's job.

#![forbid(unsafe_code)]

mod activations;
mod error;
mod external;
mod functions;
mod index;
mod infer;
mod model;
mod patch;
pub mod roles;
mod save;
mod size_pins;
#[cfg(test)]
mod test_graphs;

pub use activations::{find_activations, fixed_tensors, Activation};
pub use error::GraphError;
pub use index::{GraphIndex, UniqueNames};
pub use infer::{computes_in_low_precision, infer_element_types, ElemType};
pub use model::{default_opset, is_default_domain, prune_to_outputs, set_float32, LowPrecision, Model};
/// The generated ONNX protobuf messages, re-exported so that callers use the same version.
pub use onnx_protobuf as proto;
pub use patch::GraphPatch;
pub use save::save_model;
pub use size_pins::{dynamic_inputs, size_pins, SizePin};

/// FP16's smallest normal value, 2^-14. A smaller scale is an FP16 subnormal (fewer significant bits, flushed
/// to zero where denormals are off) or, below 2^-25, zero, which TensorRT's ONNX parser refuses ("Scale
/// coefficients must all be positive", onnx-tensorrt's QuantizeLinear/DequantizeLinear importer).
pub const FP16_MIN_NORMAL: f32 = 6.103_515_6e-5;
/// FP16's largest finite value.
pub const FP16_MAX: f32 = 65504.0;

/// Ops whose first output holds exactly the values of their first input, only rearranged (Dropout is the
/// identity at inference): statistics pass through them unchanged (calibrate copies rather than measures),
/// attention probabilities stay probabilities, and TensorRT propagates Q/DQ across them. The one list.
pub const REARRANGING_OPS: &[&str] =
    &["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout"];
