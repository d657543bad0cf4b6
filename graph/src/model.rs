use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use onnx_protobuf::{tensor_proto::DataType, Message, ModelProto, TensorProto};
use sha2::{Digest, Sha256};

use crate::external;
use crate::GraphError;

/// An ONNX model read from disk. External data stays on disk and is read on demand, so that large models cost
/// no more memory than their graph; every external location has been checked to lie inside the model's folder.
#[derive(Debug, Clone)]
pub struct Model {
    /// The parsed model (external data not loaded).
    pub proto: ModelProto,
    /// The file the model was read from.
    pub path: PathBuf,
    /// The folder that external data locations are relative to.
    pub dir: PathBuf,
    /// SHA-256 of the model file followed by each external data file it uses (in location order), hex.
    pub sha256: String,
    /// Whether any initializer keeps its data in an external file.
    pub has_external_data: bool,
    /// The low-precision type the file computes in (not only stores weights in), once it has been turned into
    /// float32 in memory ([`Model::normalize_to_float32`]); what is written from it goes back to FP16.
    pub low_precision_source: Option<LowPrecision>,
    /// The inputs and outputs the file declares FP16/BF16 (name, ONNX element type), float32 in the twin:
    /// what is written from it declares them so again.
    pub low_precision_io: Vec<(String, i32)>,
}

/// The low-precision float type a model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowPrecision {
    /// IEEE half precision.
    Fp16,
    /// bfloat16.
    Bf16,
}

impl LowPrecision {
    /// `fp16` or `bf16`, as reports write it.
    pub fn name(self) -> &'static str {
        match self {
            LowPrecision::Fp16 => "fp16",
            LowPrecision::Bf16 => "bf16",
        }
    }

    /// BF16 where the graph's tensors, Casts and declared types name BF16 and never FP16; FP16 otherwise.
    fn of_graph(graph: &onnx_protobuf::GraphProto) -> LowPrecision {
        let (fp16, bf16) = (DataType::FLOAT16 as i32, DataType::BFLOAT16 as i32);
        let declared = graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
            .filter_map(|v| v.type_.as_ref().filter(|t| t.has_tensor_type()).map(|t| t.tensor_type().elem_type));
        let stored = graph.initializer.iter().map(|t| t.data_type);
        let cast_to = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Cast")
            .flat_map(|n| n.attribute.iter().filter(|a| a.name == "to").map(|a| a.i as i32));
        let types: Vec<i32> = declared.chain(stored).chain(cast_to).collect();
        if types.contains(&bf16) && !types.contains(&fp16) {
            LowPrecision::Bf16
        } else {
            LowPrecision::Fp16
        }
    }
}

impl Model {
    /// A model built in memory (no file behind it): `path` names it in messages, external data is not
    /// expected.
    pub fn in_memory(proto: ModelProto, path: impl Into<PathBuf>) -> Model {
        Model {
            proto,
            path: path.into(),
            dir: PathBuf::from("."),
            sha256: String::new(),
            has_external_data: false,
            low_precision_source: None,
            low_precision_io: Vec::new(),
        }
    }

    /// Reads and checks a model. External data files are hashed but not loaded.
    pub fn load(path: &Path) -> Result<Model, GraphError> {
        // For `RUST_LOG=int8kit::files=debug`: a test checks that `quantize` reads its model once.
        tracing::debug!(target: "int8kit::files", path = %path.display(), "model read");
        let bytes = safe_io::read(path, safe_io::limits::MODEL, "an ONNX model")?;
        let proto = ModelProto::parse_from_bytes(&bytes)
            .map_err(|source| GraphError::Decode { path: path.to_path_buf(), source })?;
        // Protobuf reads an empty (or nearly empty) file as a valid, empty model: a check on it would pass on
        // nothing.
        let g = &proto.graph;
        if g.node.is_empty() && g.output.is_empty() && g.input.is_empty() && g.initializer.is_empty() {
            return Err(GraphError::EmptyModel { path: path.to_path_buf(), bytes: bytes.len() });
        }
        let dir = model_dir(path);

        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        let mut files = BTreeSet::new();
        for tensor in stored_tensors(&proto.graph) {
            if let Some(ext) = external::parse_ref(path, tensor)? {
                external::check_inside(path, &dir, tensor, &ext)?;
                files.insert(ext.location.clone());
            }
        }
        for location in &files {
            let file = dir.join(location);
            // Streamed: external data can be larger than memory should hold at once.
            let mut data = safe_io::open(&file, u64::MAX, "external data")?;
            std::io::copy(&mut data, &mut hasher).map_err(|source| GraphError::Read { path: file.clone(), source })?;
        }
        let has_external_data = !files.is_empty();
        // Bounds are checked now so that a truncated .data file is reported before any work starts.
        for tensor in stored_tensors(&proto.graph) {
            if let Some(ext) = external::parse_ref(path, tensor)? {
                external::check_bounds(path, &dir, tensor, &ext)?;
            }
        }
        Ok(Model {
            proto,
            path: path.to_path_buf(),
            dir,
            sha256: hex(&hasher.finalize()),
            has_external_data,
            low_precision_source: None,
            low_precision_io: Vec::new(),
        })
    }

    /// Turns a model stored in FP16 (or BF16) into its float32 twin in memory: low-precision initializers and
    /// Constants become float32, Casts to FP16 become Casts to float32, value_info follows, and inputs and
    /// outputs declared FP16/BF16 are declared float32 (recorded in `low_precision_io`: samples are fed as
    /// float32 and converted at the model's edge, outputs read back as float32). Calibration then measures every
    /// activation as float32 (FP16 rounding aside, the same values), and the placement sees weights as
    /// weights. Returns whether anything changed; `low_precision_source` records whether the graph computed in
    /// low precision (weights that only Casts to float32 read are storage, not computation).
    pub fn normalize_to_float32(&mut self) -> Result<bool, GraphError> {
        let low = [DataType::FLOAT16 as i32, DataType::BFLOAT16 as i32];
        let inits: BTreeSet<String> = self.proto.graph.initializer.iter().map(|t| t.name.clone()).collect();
        let kind = LowPrecision::of_graph(&self.proto.graph);
        let mut computes_low = false;
        {
            let graph = self.proto.graph.mut_or_insert_default();
            let edges = graph.input.iter_mut().filter(|i| !inits.contains(&i.name)).chain(graph.output.iter_mut());
            for v in edges {
                let Some(tp) = v.type_.as_mut().filter(|t| t.has_tensor_type()) else { continue };
                let elem = tp.tensor_type().elem_type;
                if low.contains(&elem) {
                    self.low_precision_io.push((v.name.clone(), elem));
                    tp.mut_tensor_type().elem_type = DataType::FLOAT as i32;
                    computes_low = true;
                }
            }
        }
        let graph = &self.proto.graph;
        let mut changed = computes_low;
        // Whether the graph computes in low precision, rather than only storing weights that Casts turn into
        // float32 (then the model is float32 in all but storage, and stays so when written).
        let storage_only = |name: &str| {
            graph.node.iter().filter(|n| n.input.iter().any(|i| i == name)).all(|n| {
                n.op_type == "Cast" && n.attribute.iter().any(|a| a.name == "to" && a.i == DataType::FLOAT as i64)
            })
        };
        for t in graph.initializer.iter().filter(|t| low.contains(&t.data_type)) {
            computes_low |= !storage_only(&t.name);
        }
        for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
            if node.attribute.iter().any(|a| a.t.as_ref().is_some_and(|t| low.contains(&t.data_type))) {
                computes_low |= node.output.iter().any(|o| !storage_only(o));
            }
        }
        // Initializers and Constant tensors (possibly external).
        let mut converted: Vec<(usize, Vec<f32>)> = Vec::new();
        for (i, t) in self.proto.graph.initializer.iter().enumerate().filter(|(_, t)| low.contains(&t.data_type)) {
            converted.push((i, self.low_tensor_f32(t)?));
        }
        for (i, values) in converted {
            set_float32(&mut self.proto.graph.mut_or_insert_default().initializer[i], &values);
            changed = true;
        }
        let mut constants: Vec<(usize, usize, Vec<f32>)> = Vec::new();
        for (n, node) in self.proto.graph.node.iter().enumerate() {
            for (a, attr) in node.attribute.iter().enumerate() {
                if let Some(t) = attr.t.as_ref().filter(|t| low.contains(&t.data_type)) {
                    constants.push((n, a, self.low_tensor_f32(t)?));
                }
            }
        }
        let graph = self.proto.graph.mut_or_insert_default();
        for (n, a, values) in constants {
            if let Some(t) = graph.node[n].attribute[a].t.as_mut() {
                set_float32(t, &values);
                changed = true;
            }
        }
        for node in graph.node.iter_mut() {
            for attr in node.attribute.iter_mut() {
                let dtype_attr =
                    matches!((node.op_type.as_str(), attr.name.as_str()), ("Cast", "to")) || attr.name == "dtype";
                if dtype_attr && low.contains(&(attr.i as i32)) {
                    attr.i = DataType::FLOAT as i64;
                    changed = true;
                    computes_low = true;
                }
            }
        }
        for vi in graph.value_info.iter_mut() {
            if let Some(tp) = vi.type_.as_mut().filter(|t| t.has_tensor_type()) {
                if low.contains(&tp.tensor_type().elem_type) {
                    tp.mut_tensor_type().elem_type = DataType::FLOAT as i32;
                    changed = true;
                    computes_low = true;
                }
            }
        }
        if computes_low && self.low_precision_source.is_none() {
            self.low_precision_source = Some(kind);
        }
        Ok(changed)
    }

    /// The values of an FP16 or BF16 tensor as f32.
    fn low_tensor_f32(&self, t: &TensorProto) -> Result<Vec<f32>, GraphError> {
        if t.data_type == DataType::FLOAT16 as i32 {
            return self.tensor_f32(t);
        }
        let raw = self.tensor_raw_bytes(t)?.map(|b| b.into_owned());
        Ok(match raw {
            Some(raw) => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            None => t.int32_data.iter().map(|&b| half::bf16::from_bits(b as u16).to_f32()).collect(),
        })
    }

    /// Refuses a model that is already quantized (it holds QuantizeLinear/DequantizeLinear or integer ops):
    /// calibrating it would measure quantized activations, and quantizing it again would stack Q/DQ pairs.
    pub fn check_not_quantized(&self) -> Result<(), GraphError> {
        const QUANTIZED_OPS: [&str; 7] = [
            "QuantizeLinear",
            "DequantizeLinear",
            "DynamicQuantizeLinear",
            "QLinearConv",
            "QLinearMatMul",
            "MatMulInteger",
            "ConvInteger",
        ];
        let quantized: Vec<&onnx_protobuf::NodeProto> =
            self.proto.graph.node.iter().filter(|n| QUANTIZED_OPS.contains(&n.op_type.as_str())).collect();
        match quantized.first() {
            None => Ok(()),
            Some(first) => Err(GraphError::AlreadyQuantized {
                model: self.path.clone(),
                nodes: quantized.len(),
                example: format!("{} '{}'", first.op_type, first.name),
            }),
        }
    }

    /// The output every evaluation compares (the self-check, the auto search, validate, sensitivity): the first
    /// graph output that is float32, FP16 or BF16 (or of unrecorded type), so that a model whose first output is
    /// a class index or a box count (an argmax or NMS in the graph) is measured on its scores.
    pub fn measured_output(&self) -> Result<&str, GraphError> {
        let measurable =
            [DataType::FLOAT, DataType::FLOAT16, DataType::BFLOAT16, DataType::UNDEFINED].map(|d| d as i32);
        let float = |v: &&onnx_protobuf::ValueInfoProto| {
            v.type_.as_ref().is_none_or(|t| measurable.contains(&t.tensor_type().elem_type))
        };
        match self.proto.graph.output.iter().find(float) {
            Some(v) => Ok(&v.name),
            None => Err(GraphError::NoMeasurableOutput {
                model: self.path.clone(),
                available: match self.proto.graph.output.iter().map(describe_value).collect::<Vec<_>>() {
                    names if names.is_empty() => "none".into(),
                    names => names.join(", "),
                },
            }),
        }
    }

    /// The axis of the output `output` that holds the samples fed through the input `input` in one batch: the
    /// one named by the input's batch symbol (a CTC recognizer exported sequence-first declares `[time, batch,
    /// classes]`), else 0 (the first, as most models have it; also where the batch is a number).
    pub fn output_batch_axis(&self, input: &str, output: &str) -> usize {
        let dims = |values: &[onnx_protobuf::ValueInfoProto], name: &str| {
            let v = values.iter().find(|v| v.name == name)?;
            Some(v.type_.as_ref()?.tensor_type().shape.as_ref()?.dim.clone())
        };
        let graph = &self.proto.graph;
        let Some(batch) = dims(&graph.input, input).and_then(|d| d.first().cloned()) else { return 0 };
        if !batch.has_dim_param() || batch.dim_param().is_empty() {
            return 0;
        }
        let symbol = batch.dim_param();
        let axes = dims(&graph.output, output).unwrap_or_default();
        axes.iter().position(|d| d.has_dim_param() && d.dim_param() == symbol).unwrap_or(0)
    }

    /// The batch size the input `input` is fixed to, when its first dimension is a number rather than a
    /// symbol (some exporters write batch 1).
    pub fn fixed_batch(&self, input: &str) -> Option<usize> {
        let vi = self.proto.graph.input.iter().find(|i| i.name == input)?;
        let dim = vi.type_.as_ref()?.tensor_type().shape.as_ref()?.dim.first()?;
        (dim.has_dim_value() && dim.dim_value() > 0).then(|| dim.dim_value() as usize)
    }

    /// The batch size to run `images` images through the input `input` with: the model's fixed batch if it
    /// has one, else `wanted`. A fixed batch above 1 must divide the number of images (a short last batch
    /// would not fit), which is checked here, before any work.
    pub fn batch_size_for(&self, input: &str, wanted: usize, images: usize) -> Result<usize, GraphError> {
        match self.fixed_batch(input) {
            None => Ok(wanted.max(1)),
            Some(batch) if images.is_multiple_of(batch) => Ok(batch),
            Some(batch) => Err(GraphError::FixedBatch { model: self.path.clone(), input: input.into(), batch, images }),
        }
    }

    /// The files this model is read from: the model file and every external data file it references. An
    /// output must not overwrite any of them.
    pub fn input_files(&self) -> Vec<PathBuf> {
        referenced_files(&self.path, &self.dir, &self.proto.graph)
    }

    /// [`Model::input_files`] of the model at `path`, from its protobuf alone: the external data is neither
    /// read nor hashed (for the check of a command line's outputs, before any work).
    pub fn files_of(path: &Path) -> Result<Vec<PathBuf>, GraphError> {
        let bytes = safe_io::read(path, safe_io::limits::MODEL, "an ONNX model")?;
        let proto = ModelProto::parse_from_bytes(&bytes)
            .map_err(|source| GraphError::Decode { path: path.to_path_buf(), source })?;
        Ok(referenced_files(path, &model_dir(path), &proto.graph))
    }

    /// [`prune_to_outputs`] of this model's graph.
    pub fn prune_to_outputs(
        &mut self,
        outputs: &[String],
        describe: impl Fn(&str) -> onnx_protobuf::ValueInfoProto,
    ) -> bool {
        prune_to_outputs(self.proto.graph.mut_or_insert_default(), outputs, describe)
    }

    /// Serialized protobuf bytes of the (possibly edited) model. External data stays referenced, so the bytes
    /// must be loaded with `dir` as the external data folder.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GraphError> {
        self.proto.write_to_bytes().map_err(GraphError::Encode)
    }

    /// The raw little-endian bytes of an initializer, whether stored inline or in an external file.
    pub fn tensor_raw_bytes<'a>(&self, tensor: &'a TensorProto) -> Result<Option<Cow<'a, [u8]>>, GraphError> {
        if let Some(ext) = external::parse_ref(&self.path, tensor)? {
            return external::read(&self.path, &self.dir, tensor, &ext).map(|v| Some(Cow::Owned(v)));
        }
        if !tensor.raw_data.is_empty() {
            return Ok(Some(Cow::Borrowed(&tensor.raw_data)));
        }
        Ok(None)
    }

    /// How many values the initializers hold (weights, biases and other constants stored as initializers): how
    /// large the model is, for choices that hold copies of it.
    pub fn weight_values(&self) -> u64 {
        self.proto.graph.initializer.iter().map(|t| t.dims.iter().product::<i64>().max(0) as u64).sum()
    }

    /// The values of a float32 or float16 initializer (as f32), from raw_data, float_data/int32_data or
    /// external data. FP16 weights (behind a Cast in the graph) are read this way to be quantized.
    pub fn tensor_f32(&self, tensor: &TensorProto) -> Result<Vec<f32>, GraphError> {
        let width = match tensor.data_type {
            t if t == DataType::FLOAT as i32 => 4,
            t if t == DataType::FLOAT16 as i32 => 2,
            t => {
                return Err(GraphError::TensorData {
                    tensor: tensor.name.clone(),
                    message: format!("expected float32 or float16 data, found {}", crate::ElemType(t).name()),
                })
            }
        };
        let expected: i64 = tensor.dims.iter().product();
        let values: Vec<f32> = match self.tensor_raw_bytes(tensor)? {
            Some(raw) => {
                if raw.len() % width != 0 {
                    return Err(GraphError::TensorData {
                        tensor: tensor.name.clone(),
                        message: format!("raw data has {} bytes, not a multiple of {width}", raw.len()),
                    });
                }
                if width == 4 {
                    raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                } else {
                    raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                }
            }
            // ONNX stores float16 values' bits in int32_data when not raw.
            None if width == 2 => tensor.int32_data.iter().map(|&b| half::f16::from_bits(b as u16).to_f32()).collect(),
            None => tensor.float_data.clone(),
        };
        if values.len() as i64 != expected {
            return Err(GraphError::TensorData {
                tensor: tensor.name.clone(),
                message: format!("holds {} values but its dims {:?} need {}", values.len(), tensor.dims, expected),
            });
        }
        Ok(values)
    }

    /// Names of the graph inputs that are not initializers (what a caller must feed).
    pub fn feed_inputs(&self) -> Vec<&onnx_protobuf::ValueInfoProto> {
        let inits: BTreeSet<&str> = self.proto.graph.initializer.iter().map(|t| t.name.as_str()).collect();
        self.proto.graph.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect()
    }

    /// The input to feed: the named one, or the only one.
    pub fn resolve_input(&self, name: Option<&str>) -> Result<&onnx_protobuf::ValueInfoProto, GraphError> {
        let inputs = self.feed_inputs();
        let available = inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => inputs.iter().find(|i| i.name == n).copied().ok_or_else(|| GraphError::NoSuchInput {
                model: self.path.clone(),
                name: n.to_string(),
                available,
            }),
            None if inputs.len() == 1 => Ok(inputs[0]),
            None => Err(GraphError::NoSuchInput {
                model: self.path.clone(),
                name: "<unspecified>".into(),
                available: format!(
                    "{available}; the model has {} inputs, name one with [input] name = ...",
                    inputs.len()
                ),
            }),
        }
    }
}

/// Makes `outputs` the graph's only outputs and drops every node, initializer and value_info they do not need
/// (names that subgraphs read count as needed), so that a session computes nothing else: a pass that reads
/// some activations does not run a detector's post-processing or a head past the last of them, and a
/// measurement of one output does not run the others' heads. `outputs` are described by `describe` where the
/// graph does not declare them as outputs already. Returns whether the graph changed.
pub fn prune_to_outputs(
    graph: &mut onnx_protobuf::GraphProto,
    outputs: &[String],
    describe: impl Fn(&str) -> onnx_protobuf::ValueInfoProto,
) -> bool {
    let mut needed: std::collections::HashSet<String> = outputs.iter().cloned().collect();
    let mut keep = vec![false; graph.node.len()];
    for (n, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[n] = true;
            needed.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
            for attr in &node.attribute {
                for g in attr.g.as_ref().into_iter().chain(&attr.graphs) {
                    needed.extend(subgraph_reads(g));
                }
            }
        }
    }
    let same_outputs = graph.output.iter().map(|o| &o.name).eq(outputs.iter());
    let (nodes, initializers, value_info) = (graph.node.len(), graph.initializer.len(), graph.value_info.len());
    let mut n = 0;
    graph.node.retain(|_| {
        n += 1;
        keep[n - 1]
    });
    // An initializer that old exporters (IR < 4) also list as a graph input goes with its input entry, which
    // would otherwise become an input to feed.
    let dropped: std::collections::HashSet<String> =
        graph.initializer.iter().filter(|t| !needed.contains(&t.name)).map(|t| t.name.clone()).collect();
    graph.input.retain(|i| !dropped.contains(&i.name));
    graph.initializer.retain(|t| needed.contains(&t.name));
    graph.value_info.retain(|v| needed.contains(&v.name));
    let declared: Vec<onnx_protobuf::ValueInfoProto> = std::mem::take(&mut graph.output);
    graph.output = outputs
        .iter()
        .map(|o| declared.iter().find(|d| d.name == *o).cloned().unwrap_or_else(|| describe(o)))
        .collect();
    !same_outputs
        || (nodes, initializers, value_info) != (graph.node.len(), graph.initializer.len(), graph.value_info.len())
}

/// Every tensor name the nodes of `graph` and of its own subgraphs read (outer-scope names among them).
fn subgraph_reads(graph: &onnx_protobuf::GraphProto) -> Vec<String> {
    let mut reads = Vec::new();
    for node in &graph.node {
        reads.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
        for attr in &node.attribute {
            for g in attr.g.as_ref().into_iter().chain(&attr.graphs) {
                reads.extend(subgraph_reads(g));
            }
        }
    }
    reads
}

/// Whether an op-set domain is ONNX's default one (written empty or as `ai.onnx`).
pub fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// The model's opset of the default ONNX domain (0 when it declares none).
pub fn default_opset(proto: &ModelProto) -> i64 {
    proto.opset_import.iter().find(|o| is_default_domain(&o.domain)).map(|o| o.version).unwrap_or(0)
}

/// Rewrites a tensor as float32 with these values, inline (any external data reference dropped).
pub fn set_float32(t: &mut TensorProto, values: &[f32]) {
    t.data_type = DataType::FLOAT as i32;
    t.int32_data.clear();
    t.float_data.clear();
    t.external_data.clear();
    t.data_location = onnx_protobuf::tensor_proto::DataLocation::DEFAULT.into();
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
}

/// Every tensor the graph stores: its initializers and the tensors of its nodes' attributes (a Constant's
/// `value`), any of which may keep its data in an external file.
pub(crate) fn stored_tensors(graph: &onnx_protobuf::GraphProto) -> impl Iterator<Item = &TensorProto> {
    graph.initializer.iter().chain(
        graph
            .node
            .iter()
            .flat_map(|n| n.attribute.iter().flat_map(|a| a.t.as_ref().into_iter().chain(a.tensors.iter()))),
    )
}

/// [`stored_tensors`], to edit.
pub(crate) fn stored_tensors_mut(graph: &mut onnx_protobuf::GraphProto) -> Vec<&mut TensorProto> {
    let mut out: Vec<&mut TensorProto> = graph.initializer.iter_mut().collect();
    for node in graph.node.iter_mut() {
        for a in node.attribute.iter_mut() {
            out.extend(a.t.as_mut());
            out.extend(a.tensors.iter_mut());
        }
    }
    out
}

/// The folder external data is read from: the model's own.
fn model_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The model file and every external data file its tensors reference, each once.
fn referenced_files(path: &Path, dir: &Path, graph: &onnx_protobuf::GraphProto) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    for tensor in stored_tensors(graph) {
        if let Ok(Some(ext)) = external::parse_ref(path, tensor) {
            let file = dir.join(&ext.location);
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }
    files
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A graph input or output as `'name' (element type)`, for messages.
fn describe_value(v: &onnx_protobuf::ValueInfoProto) -> String {
    let elem = v.type_.as_ref().map_or(0, |t| t.tensor_type().elem_type);
    format!("'{}' ({})", v.name, crate::ElemType(elem).name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_graphs::node;
    use onnx_protobuf::{GraphProto, ValueInfoProto};

    fn named(name: &str) -> ValueInfoProto {
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        v
    }

    #[test]
    fn pruning_to_outputs_keeps_what_they_need_and_what_subgraphs_read() {
        let mut g = GraphProto::new();
        g.input.push(named("x"));
        g.node.push(node("Relu", &["x"], "r"));
        g.node.push(node("Neg", &["x"], "t"));
        g.node.push(node("Sigmoid", &["r"], "s"));
        g.node.push(node("Exp", &["s"], "e"));
        g.node.push(node("Add", &["e", "w"], "y"));
        // An If whose branch reads `t` from the outer scope.
        let mut branch = GraphProto::new();
        branch.node.push(node("Identity", &["t"], "o"));
        let mut attr = onnx_protobuf::AttributeProto::new();
        attr.name = "then_branch".into();
        attr.g = Some(branch).into();
        let mut iff = node("If", &["c"], "k");
        iff.attribute.push(attr);
        g.node.push(iff);
        for name in ["w", "c"] {
            let mut t = TensorProto::new();
            t.name = name.into();
            g.initializer.push(t);
        }
        // `w` and `c` also listed as inputs, as IR 3 exports list every initializer.
        g.input.extend([named("w"), named("c")]);
        g.value_info.extend([named("e"), named("r")]);
        g.output.push(named("y"));
        let mut proto = ModelProto::new();
        proto.graph = Some(g).into();
        let mut model = Model::in_memory(proto, "pruned.onnx");
        let wanted = ["s".to_string(), "k".to_string()];
        assert!(model.prune_to_outputs(&wanted, named));
        let g = &model.proto.graph;
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Relu", "Neg", "Sigmoid", "If"], "Exp and Add only served the dropped output");
        let names = |v: &[ValueInfoProto]| v.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&g.output), ["s", "k"]);
        assert_eq!(g.initializer.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["c"]);
        assert_eq!(names(&g.value_info), ["r"]);
        assert_eq!(names(&g.input), ["x", "c"], "inputs stay declared, but not as dropped initializers");
        assert!(!model.prune_to_outputs(&wanted, named), "nothing left to prune");
    }

    /// A model of one weight `w` (of `elem`, two values) added to the input, through a Cast to float32 when
    /// `storage_only`.
    fn weighted(elem: DataType, storage_only: bool) -> Model {
        let mut g = GraphProto::new();
        g.input.push(named("x"));
        let mut w = TensorProto::new();
        w.name = "w".into();
        w.data_type = elem as i32;
        w.dims = vec![2];
        w.int32_data = vec![0x3c00, 0x4000];
        if elem == DataType::BFLOAT16 {
            w.int32_data = vec![0x3f80, 0x4000];
        }
        g.initializer.push(w);
        if storage_only {
            let mut cast = node("Cast", &["w"], "wf");
            let mut to = onnx_protobuf::AttributeProto::new();
            to.name = "to".into();
            to.i = DataType::FLOAT as i64;
            cast.attribute.push(to);
            g.node.push(cast);
            g.node.push(node("Add", &["x", "wf"], "y"));
        } else {
            g.node.push(node("Add", &["x", "w"], "y"));
        }
        g.output.push(named("y"));
        let mut proto = ModelProto::new();
        proto.graph = Some(g).into();
        Model::in_memory(proto, "weighted.onnx")
    }

    /// Which low precision a model computes in is recorded (reports name the reference row by it); weights
    /// only stored so are not computation.
    #[test]
    fn the_low_precision_a_model_computes_in_is_recorded() {
        for (elem, storage_only, expected) in [
            (DataType::FLOAT16, false, Some(LowPrecision::Fp16)),
            (DataType::BFLOAT16, false, Some(LowPrecision::Bf16)),
            (DataType::FLOAT16, true, None),
        ] {
            let mut model = weighted(elem, storage_only);
            assert!(model.normalize_to_float32().unwrap());
            assert_eq!(model.low_precision_source, expected, "{elem:?}, storage only: {storage_only}");
            let w = &model.proto.graph.initializer[0];
            assert_eq!((w.data_type, model.tensor_f32(w).unwrap()), (DataType::FLOAT as i32, vec![1.0f32, 2.0]));
        }
    }
}
