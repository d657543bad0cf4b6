use std::path::PathBuf;

/// Everything that can go wrong reading, checking or writing an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid ONNX model (protobuf decode failed: {message}); check that the file is a complete .onnx export")]
    Decode { path: PathBuf, message: String },
    #[error("cannot serialize the model: {0}")]
    Encode(String),
    #[error("{model}: initializer '{tensor}' points to external data '{location}' outside the model's folder; external data must sit beside the model (move the file and fix the location)")]
    ExternalOutsideFolder { model: PathBuf, tensor: String, location: String },
    #[error("{model}: initializer '{tensor}' reads bytes {offset}..{end} of external file {file}, which has only {file_len} bytes; the .data file is truncated or does not belong to this model")]
    ExternalOutOfBounds { model: PathBuf, tensor: String, file: PathBuf, offset: u64, end: u64, file_len: u64 },
    #[error("{model}: initializer '{tensor}' has a malformed external_data entry: {message}")]
    ExternalMalformed { model: PathBuf, tensor: String, message: String },
    #[error("tensor '{tensor}': {message}")]
    TensorData { tensor: String, message: String },
    #[error("{model}: the graph has no input named '{name}' (inputs: {available})")]
    NoSuchInput { model: PathBuf, name: String, available: String },
}
