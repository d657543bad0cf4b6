//! Everything that can go wrong reading, checking or writing an ONNX model; each error names the model,
//! tensor or file and says what to do.

use std::path::PathBuf;

/// Errors of the graph layer.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A file could not be read safely (missing, not a regular file, too large).
    #[error(transparent)]
    Input(#[from] safe_io::ReadError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An output could not be written safely (see `safe_io::outputs`).
    #[error(transparent)]
    Output(#[from] safe_io::WriteError),
    /// The file is not an ONNX model.
    #[error("{path} is not a valid ONNX model (protobuf decode failed: {source}); check that the file is a complete .onnx export")]
    Decode {
        /// The model file.
        path: PathBuf,
        /// The protobuf decoder's error.
        source: protobuf::Error,
    },
    /// The file parses as a model that holds no graph.
    #[error("{path} ({bytes} bytes) holds no graph (no nodes, inputs, outputs or initializers): it is empty, truncated or not an ONNX model; give the complete .onnx export")]
    EmptyModel {
        /// The model file.
        path: PathBuf,
        /// Its size.
        bytes: usize,
    },
    /// A model could not be serialized.
    #[error("cannot serialize the model: {0}")]
    Encode(#[source] protobuf::Error),
    /// External data outside the model's folder.
    #[error("{model}: initializer '{tensor}' points to external data '{location}' outside the model's folder; external data must sit beside the model (move the file and fix the location)")]
    ExternalOutsideFolder {
        /// The model file.
        model: PathBuf,
        /// The initializer.
        tensor: String,
        /// The location it names.
        location: String,
    },
    /// External data beyond the end of its file.
    #[error("{model}: initializer '{tensor}' reads bytes {offset}..{end} of external file {file}, which has only {file_len} bytes; the .data file is truncated or does not belong to this model")]
    ExternalOutOfBounds {
        /// The model file.
        model: PathBuf,
        /// The initializer.
        tensor: String,
        /// The external data file.
        file: PathBuf,
        /// First byte read.
        offset: u64,
        /// One past the last byte read.
        end: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A malformed external-data entry.
    #[error("{model}: initializer '{tensor}' has a malformed external_data entry: {message}")]
    ExternalMalformed {
        /// The model file.
        model: PathBuf,
        /// The initializer.
        tensor: String,
        /// What is malformed.
        message: String,
    },
    /// A tensor's data does not match its type or shape.
    #[error("tensor '{tensor}': {message}")]
    TensorData {
        /// The tensor.
        tensor: String,
        /// What does not match.
        message: String,
    },
    /// A model with a fixed batch dimension cannot take the images in whole batches.
    #[error("{model}: input '{input}' has a fixed batch of {batch}, and {images} images do not split into batches of {batch}: take a multiple of {batch} (--limit / --limit-val), or export the model with a dynamic batch dimension")]
    FixedBatch {
        /// The model file.
        model: PathBuf,
        /// The input.
        input: String,
        /// Its fixed batch.
        batch: usize,
        /// The images to run.
        images: usize,
    },
    /// The model is already quantized.
    #[error("{model} is already quantized: it holds {nodes} quantization node(s), e.g. {example}; give int8kit the float model it was made from")]
    AlreadyQuantized {
        /// The model file.
        model: PathBuf,
        /// How many quantization nodes it holds.
        nodes: usize,
        /// The first of them.
        example: String,
    },
    /// The recipe names an input the graph lacks.
    #[error("{model}: the graph has no input named '{name}' (inputs: {available})")]
    NoSuchInput {
        /// The model file.
        model: PathBuf,
        /// The name asked for.
        name: String,
        /// The inputs the graph has.
        available: String,
    },
    /// A model-local function that cannot be expanded into the graph faithfully.
    #[error("{model}: cannot expand the model-local function {function}: {message}; inline it first (Python: onnx.inliner.inline_local_functions) and give int8kit that model")]
    Function {
        /// The model file.
        model: PathBuf,
        /// The function (domain::name).
        function: String,
        /// Why.
        message: String,
    },
    /// No graph output is a float tensor, so no output can be compared.
    #[error("{model}: no output is float32, FP16 or BF16 (outputs: {available}); int8kit measures the first float output (a detector's scores, a classifier's logits): export one, e.g. the scores before an argmax or NMS")]
    NoMeasurableOutput {
        /// The model file.
        model: PathBuf,
        /// The graph's outputs and their element types.
        available: String,
    },
}
