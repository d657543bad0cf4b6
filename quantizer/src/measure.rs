//! How close a built model's outputs are to the float model's: the sessions that compute what an ONNX graph
//! means ([`evaluation_config`]), the fidelity sums (agreement, cosine, SQNR; [`OutputFidelity`]) and a
//! [`Probe`], samples decoded once with the float model's outputs on them, that any number of candidate
//! models are measured against (the self-check, the `auto` search, sensitivity).

use std::path::{Path, PathBuf};

use datasets::{Batch, BatchStream, Dataset, Feed, OnBadImage, StreamOptions};
use graph::Model;
use serde::{Deserialize, Serialize};

use crate::QuantizeError;

/// The session that evaluates `graph` as it is written. A graph that computes in FP16 or BF16 runs with ONNX
/// Runtime's graph rewrites off: its CPU provider has no FP16 kernels for most ops and runs such layers in
/// float32 between inserted Casts, and which FP16 roundings survive depends on the rewrites (constant folding
/// of Constant -> Cast chains, for one, merges float32 islands and drops roundings the graph has), so an
/// optimized session computes another function than the graph's (README, "Evaluating FP16 graphs").
pub fn evaluation_config(
    label: &str,
    placement: runtime::Placement,
    graph: &graph::proto::GraphProto,
) -> runtime::SessionConfig {
    let mut cfg = runtime::SessionConfig::new(label).place(placement);
    cfg.graph_optimization = graph_optimization_for(graph);
    cfg
}

/// How much ONNX Runtime may rewrite `graph` in an evaluation (see [`evaluation_config`]).
pub fn graph_optimization_for(graph: &graph::proto::GraphProto) -> runtime::GraphOptimization {
    if graph::computes_in_low_precision(graph) {
        runtime::GraphOptimization::Disabled
    } else {
        runtime::GraphOptimization::All
    }
}

/// Index of the largest score (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a))).unwrap_or(0)
}

/// One image's share of the fidelity sums. Float sums depend on their order, so a shard keeps these and the
/// merge adds them up in the order one process would (`f64` stored as its bits, so JSON cannot round them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageFidelity {
    /// Whether both models predict the same class.
    pub agree: bool,
    /// Cosine of the two output rows.
    #[serde(with = "f64_bits")]
    pub cosine: f64,
    /// Sum of squares of the FP32 row.
    #[serde(with = "f64_bits")]
    pub signal: f64,
    /// Sum of squared differences.
    #[serde(with = "f64_bits")]
    pub noise: f64,
}

/// An `f64` as the integer of its bits: exact through any JSON reader.
mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f64::from_bits(u64::deserialize(d)?))
    }
}

/// What a shard keeps of one comparison's fidelity: every image's share, and the NaN/Inf counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FidelityParts {
    /// Per image, in evaluation order.
    pub images: Vec<ImageFidelity>,
    /// NaN/Inf output values and the images that had any, per model (FP32, INT8).
    pub non_finite: [(u64, u64); 2],
}

/// Why a fidelity could not be measured: a gate or a choice must never rest on no images or on NaN.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unmeasured {
    /// No image was compared.
    #[error("no image was compared")]
    NoImages,
    /// An output was NaN or infinite.
    #[error("the models produced values that are not finite numbers on {images} images: FP32 {fp32_values} NaN/Inf values in {fp32_images} images, INT8 {int8_values} in {int8_images}")]
    NonFinite {
        /// Images compared.
        images: u64,
        /// NaN/Inf values in the FP32 outputs.
        fp32_values: u64,
        /// Images with any.
        fp32_images: u64,
        /// NaN/Inf values in the INT8 outputs.
        int8_values: u64,
        /// Images with any.
        int8_images: u64,
    },
    /// The float model's outputs were zero on every image: any INT8 output would measure as perfect or as
    /// pure noise, so there is nothing to judge.
    #[error("the float model's outputs are zero on all {images} images, so there is no signal to compare the INT8 outputs with")]
    NoSignal {
        /// Images compared.
        images: u64,
    },
}

/// How close the INT8 outputs are to the FP32 ones, accumulated image by image.
#[derive(Debug, Default)]
pub struct OutputFidelity {
    images: u64,
    agree: u64,
    cos_sum: f64,
    signal: f64,
    noise: f64,
    /// NaN/Inf output values and the images that had any, per model (FP32, INT8).
    non_finite: [(u64, u64); 2],
    /// Every image's share, when a shard keeps them for the merge.
    kept: Option<Vec<ImageFidelity>>,
}

impl OutputFidelity {
    /// An accumulator that also keeps every image's share ([`OutputFidelity::parts`]).
    pub fn keeping() -> OutputFidelity {
        OutputFidelity { kept: Some(Vec::new()), ..Default::default() }
    }

    /// One image: both output rows and the class each model predicts.
    pub fn add(&mut self, ra: &[f32], rb: &[f32], pa: usize, pb: usize) {
        for (count, row) in self.non_finite.iter_mut().zip([ra, rb]) {
            let bad = row.iter().filter(|v| !v.is_finite()).count() as u64;
            *count = (count.0 + bad, count.1 + (bad > 0) as u64);
        }
        let dot: f64 = ra.iter().zip(rb).map(|(x, y)| *x as f64 * *y as f64).sum();
        let sa: f64 = ra.iter().map(|x| (*x as f64).powi(2)).sum();
        let sb: f64 = rb.iter().map(|x| (*x as f64).powi(2)).sum();
        let (na, nb) = (sa.sqrt(), sb.sqrt());
        self.push(ImageFidelity {
            agree: pa == pb,
            cosine: if na > 0.0 && nb > 0.0 { dot / (na * nb) } else { (na == nb) as u8 as f64 },
            signal: sa,
            noise: ra.iter().zip(rb).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>(),
        });
    }

    /// Adds one image's share: the one place the sums grow, for a run and for a merge alike.
    fn push(&mut self, image: ImageFidelity) {
        self.agree += image.agree as u64;
        self.cos_sum += image.cosine;
        self.signal += image.signal;
        self.noise += image.noise;
        self.images += 1;
        if let Some(kept) = &mut self.kept {
            kept.push(image);
        }
    }

    /// What a shard keeps (every image's share: only from [`OutputFidelity::keeping`]).
    pub fn parts(&self) -> FidelityParts {
        FidelityParts { images: self.kept.clone().unwrap_or_default(), non_finite: self.non_finite }
    }

    /// The accumulator after the kept images, in order: the sums one process makes.
    pub fn replay(parts: &FidelityParts) -> OutputFidelity {
        let mut acc = OutputFidelity { non_finite: parts.non_finite, ..Default::default() };
        for image in &parts.images {
            acc.push(*image);
        }
        acc
    }

    /// The fidelity, or why there is none: no image, an output that was not a number, or float outputs that
    /// are zero on every image (a gate would pass on nothing: cosine 1 and an infinite SQNR).
    pub fn finish(&self) -> Result<Fidelity, Unmeasured> {
        let fidelity = self.finish_any_signal()?;
        if self.signal == 0.0 {
            return Err(Unmeasured::NoSignal { images: self.images });
        }
        Ok(fidelity)
    }

    /// [`OutputFidelity::finish`] that also measures float outputs that are all zero: for part of the samples
    /// of a [`Probe`], which checked the whole for signal (a detector's maps of a few photos without text may
    /// all be zero).
    fn finish_any_signal(&self) -> Result<Fidelity, Unmeasured> {
        if self.images == 0 {
            return Err(Unmeasured::NoImages);
        }
        let [(fp32_values, fp32_images), (int8_values, int8_images)] = self.non_finite;
        if fp32_values + int8_values > 0 {
            return Err(Unmeasured::NonFinite {
                images: self.images,
                fp32_values,
                fp32_images,
                int8_values,
                int8_images,
            });
        }
        let n = self.images as f64;
        Ok(Fidelity {
            images: self.images,
            agreement: self.agree as f64 / n,
            cosine_mean: self.cos_sum / n,
            // Identical outputs: no noise at all, an infinite ratio (written as null in JSON).
            sqnr_db: if self.noise > 0.0 { 10.0 * (self.signal / self.noise).log10() } else { f64::INFINITY },
        })
    }
}

/// Output fidelity of INT8 against FP32 on the same images (labels not needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Images compared.
    pub images: u64,
    /// Share of images whose output argmax is the same.
    pub agreement: f64,
    /// Mean per-image cosine similarity of the output rows.
    pub cosine_mean: f64,
    /// Signal-to-quantization-noise ratio over all outputs, in dB.
    pub sqnr_db: f64,
}

/// A measurement with every sample's share, and the outputs it was made on (per batch), for a later
/// measurement of the same model on more batches.
pub type MeasuredOutputs = ((Fidelity, Vec<ImageFidelity>), Vec<Vec<f32>>);

/// `proto` as ONNX bytes, what a session is made from.
fn encode(proto: &graph::proto::ModelProto) -> Result<Vec<u8>, QuantizeError> {
    Ok(graph::proto::Message::write_to_bytes(proto).map_err(graph::GraphError::Encode)?)
}

/// Activation scales taken out of a Q/DQ model to be fed at run time ([`fed_scales`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleFeed {
    /// The graph inputs the scales became, in the order they were initializers.
    pub names: Vec<String>,
    /// Their values.
    pub values: Vec<f32>,
}

/// Turns every float32 scalar that a QuantizeLinear or DequantizeLinear reads as its scale into a graph input,
/// and returns their values; `None` (and `proto` unchanged) when there is none. Candidate models that differ
/// only in those values (the scale methods of one placement) then share one session, fed each one's scales:
/// a session costs ONNX Runtime as much as running two batches of a small model, and an unoptimized session
/// computes the same whether a scale is an initializer or an input (no constant folding).
pub fn fed_scales(proto: &mut graph::proto::ModelProto) -> Option<ScaleFeed> {
    use graph::proto::tensor_proto::DataType;
    let graph = proto.graph.mut_or_insert_default();
    let scales: std::collections::HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear"))
        .filter_map(|n| n.input.get(1).map(String::as_str))
        .collect();
    let scalar = |t: &graph::proto::TensorProto| -> Option<f32> {
        if t.data_type != DataType::FLOAT as i32 || !t.dims.is_empty() || !t.external_data.is_empty() {
            return None;
        }
        match (t.float_data.as_slice(), t.raw_data.as_slice()) {
            ([v], []) => Some(*v),
            ([], raw) => Some(f32::from_le_bytes(raw.try_into().ok()?)),
            _ => None,
        }
    };
    let fed: Vec<(usize, f32)> = graph
        .initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| scales.contains(t.name.as_str()))
        .filter_map(|(i, t)| scalar(t).map(|v| (i, v)))
        .collect();
    if fed.is_empty() {
        return None;
    }
    let mut feed = ScaleFeed { names: Vec::with_capacity(fed.len()), values: Vec::with_capacity(fed.len()) };
    for &(i, v) in fed.iter().rev() {
        let t = graph.initializer.remove(i);
        feed.names.push(t.name);
        feed.values.push(v);
    }
    feed.names.reverse();
    feed.values.reverse();
    for name in &feed.names {
        let mut input = graph::proto::ValueInfoProto::new();
        input.name = name.clone();
        let mut ty = graph::proto::TypeProto::new();
        let tensor = ty.mut_tensor_type();
        tensor.elem_type = DataType::FLOAT as i32;
        // A scalar: a shape with no dimensions (no shape at all would be any rank).
        tensor.shape = Some(graph::proto::TensorShapeProto::new()).into();
        input.type_ = Some(ty).into();
        graph.input.push(input);
    }
    Some(feed)
}

/// Samples decoded once, with the float model's outputs on them: the yardstick that candidate models built
/// from one [`crate::Quantizer`] are measured against, each in its own unoptimized session. Models are
/// compared on their first float32 output ([`graph::Model::measured_output`]).
pub struct Probe {
    /// Samples of several shapes (a recipe's sizes, `.npz` lengths) take turns batch by batch, so that the
    /// first batches (the search's coarse stage) hold every shape.
    batches: Vec<Batch>,
    /// Per batch, the index of its sample shape (in the order first seen).
    groups: Vec<usize>,
    fp32: Vec<Vec<f32>>,
    input: String,
    output: String,
    /// The output's axis that holds the batch's samples ([`graph::Model::output_batch_axis`]): outputs are kept
    /// with it first, so that each sample's values are one row.
    batch_axis: usize,
    threads: usize,
    /// Values in the float model's initializers ([`Probe::layout`]).
    weights: u64,
    external_data_dir: PathBuf,
    label: String,
    source: PathBuf,
    /// Whether the samples were given to measure on (`--check DIR`) rather than held back from the calibration.
    given: bool,
}

/// Models with more weight values than this are measured in one session on all the threads given; smaller
/// ones in one-thread sessions, several at once ([`Probe::layout`]). Above it, a session per thread would
/// hold that many copies of a large model (a ViT-L/14 has 304 million weights).
pub const ONE_THREAD_SESSIONS_MAX_WEIGHTS: u64 = 64 << 20;

/// The most weight values the one-thread sessions of one measurement hold together: a ViT-S/14 (22 million)
/// runs in at most 12 at once, whatever the thread count.
const ONE_THREAD_SESSIONS_WEIGHTS: u64 = 256 << 20;

/// How a measurement runs ([`Probe::layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// This many one-thread sessions at once, each on a contiguous part of the batches.
    OneThreadSessions(usize),
    /// One session of this many intra-op threads (0: ONNX Runtime's default).
    OneSession(usize),
}

/// How `batches` batches of a model of `weights` weight values run on `threads` threads (0: one per core):
/// [`Probe::layout`], for any pass whose results must not depend on `--threads`.
pub fn layout(weights: u64, device: runtime::Device, threads: usize, batches: usize) -> Layout {
    let threads = runtime::threads_or_cores(threads);
    match one_thread_sessions_max(weights, device) {
        None => Layout::OneSession(threads),
        Some(by_memory) => Layout::OneThreadSessions(threads.min(by_memory).min(batches).max(1)),
    }
}

/// [`Probe::one_thread_sessions_max`] of a model of `weights` weight values.
fn one_thread_sessions_max(weights: u64, device: runtime::Device) -> Option<usize> {
    if device.is_cuda() || weights > ONE_THREAD_SESSIONS_MAX_WEIGHTS {
        return None;
    }
    Some((ONE_THREAD_SESSIONS_WEIGHTS / weights.max(1)).max(1) as usize)
}

/// `batches` reordered so that their sample shapes take turns (the first batch of each shape, then the second
/// of each...), with each batch's shape index; one shape keeps its order.
fn interleave_shapes(batches: Vec<Batch>) -> (Vec<Batch>, Vec<usize>) {
    let mut shapes: Vec<Vec<Vec<usize>>> = Vec::new();
    let mut queues: Vec<std::collections::VecDeque<Batch>> = Vec::new();
    for b in batches {
        let shape = b.sample_shape();
        let g = match shapes.iter().position(|s| *s == shape) {
            Some(g) => g,
            None => {
                shapes.push(shape);
                queues.push(Default::default());
                shapes.len() - 1
            }
        };
        queues[g].push_back(b);
    }
    let (mut out, mut groups) = (Vec::new(), Vec::new());
    while queues.iter().any(|q| !q.is_empty()) {
        for (g, q) in queues.iter_mut().enumerate() {
            if let Some(b) = q.pop_front() {
                out.push(b);
                groups.push(g);
            }
        }
    }
    (out, groups)
}

/// How a [`Probe`] reads its samples and runs its sessions.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// Samples per ONNX Runtime call (a model's fixed batch wins).
    pub batch_size: usize,
    /// Intra-op threads (0: one per core).
    pub threads: usize,
    /// What to do with an unreadable sample.
    pub on_bad_image: OnBadImage,
    /// Where the float model runs ([`Probe::measure`] runs candidates on the CPU).
    pub device: runtime::Device,
}

/// `range` cut into `parts` contiguous ranges whose lengths differ by at most one (the longer first).
fn parts_of(range: std::ops::Range<usize>, parts: usize) -> Vec<std::ops::Range<usize>> {
    let (n, parts) = (range.len(), parts.max(1));
    let mut start = range.start;
    (0..parts)
        .map(|i| {
            let len = n / parts + usize::from(i < n % parts);
            start += len;
            start - len..start
        })
        .collect()
}

/// `dataset` in batches of `batch_size` (at least 1), or of `model`'s fixed batch where its `input` has one: then
/// only the samples that fill whole batches.
pub(crate) fn whole_batches(model: &Model, input: &str, dataset: &Dataset, batch_size: usize) -> (Dataset, usize) {
    let mut dataset = dataset.clone();
    match model.fixed_batch(input) {
        Some(fixed) => {
            dataset.items.truncate(dataset.len() / fixed * fixed);
            (dataset, fixed)
        }
        None => (dataset, batch_size.max(1)),
    }
}

/// The outputs of parts of `model`'s runs on scoped threads, in the parts' order: the first error if any failed.
pub(crate) fn collect_parts<T>(
    runs: Vec<std::thread::ScopedJoinHandle<'_, Result<Vec<T>, QuantizeError>>>,
    model: &str,
) -> Result<Vec<T>, QuantizeError> {
    let mut outputs = Vec::new();
    for run in runs {
        let part = run.join().map_err(|_| QuantizeError::Model {
            path: model.into(),
            message: "a thread measuring the model panicked".into(),
        })??;
        outputs.extend(part);
    }
    Ok(outputs)
}

impl Probe {
    /// Decodes `dataset` and runs `reference` (the float model the candidates are built from) over it once.
    /// A model with a fixed batch above 1 is measured on the whole batches the samples fill.
    pub fn new(
        reference: &Model,
        dataset: &Dataset,
        feed: &Feed,
        options: ProbeOptions,
    ) -> Result<Probe, QuantizeError> {
        let input = calibrate::batch_input(reference, feed)?;
        let output = reference.measured_output()?.to_string();
        let (dataset, batch_size) = whole_batches(reference, &input, dataset, options.batch_size);
        let stream = StreamOptions { batch_size, on_bad_image: options.on_bad_image, ..Default::default() };
        let batches = BatchStream::new(&dataset, feed, stream).collect::<Result<Vec<_>, _>>()?;
        let (batches, groups) = interleave_shapes(batches);
        let batch_axis = reference.output_batch_axis(&input, &output);
        let mut probe = Probe {
            batches,
            groups,
            fp32: Vec::new(),
            input,
            output,
            batch_axis,
            threads: options.threads,
            weights: reference.weight_values(),
            external_data_dir: reference.dir.clone(),
            label: reference.path.display().to_string(),
            source: dataset.root.clone(),
            given: false,
        };
        probe.fp32 = probe.outputs_on(&reference.proto, options.device, probe.batches.len())?;
        // A reference that is not finite measures nothing: say so here, not as every candidate failing.
        let (values, samples) = probe.non_finite(&probe.fp32);
        if values > 0 {
            return Err(QuantizeError::Model {
                path: reference.path.clone(),
                message: format!(
                    "the float model's outputs are not finite numbers on {samples} of the {} samples from {} \
                     ({values} NaN/Inf values), so no INT8 model can be measured against them; check the model \
                     and its inputs",
                    probe.samples(),
                    probe.source.display()
                ),
            });
        }
        // Nor does one that is zero everywhere: every candidate would measure as perfect (or as pure noise).
        if probe.samples() > 0 && probe.fp32.iter().flatten().all(|&v| v == 0.0) {
            return Err(QuantizeError::Model {
                path: reference.path.clone(),
                message: format!(
                    "the float model's output '{}' is zero on all {} samples from {}, so no INT8 model can be \
                     measured against it; check the model and its inputs (the recipe), or measure on other samples",
                    probe.output,
                    probe.samples(),
                    probe.source.display()
                ),
            });
        }
        Ok(probe)
    }

    /// The intra-op threads its sessions run on (one per core when the options said 0).
    pub fn threads(&self) -> usize {
        runtime::threads_or_cores(self.threads)
    }

    /// Samples measured on.
    pub fn samples(&self) -> usize {
        self.batches.iter().map(Batch::len).sum()
    }

    /// NaN/Inf values in `outputs` (of the first `outputs.len()` batches) and the samples that have any.
    pub fn non_finite(&self, outputs: &[Vec<f32>]) -> (u64, u64) {
        let (mut values, mut samples) = (0u64, 0u64);
        for (batch, rows) in self.batches.iter().zip(outputs) {
            let width = (rows.len() / batch.len().max(1)).max(1);
            for row in rows.chunks(width) {
                let bad = row.iter().filter(|v| !v.is_finite()).count() as u64;
                values += bad;
                samples += (bad > 0) as u64;
            }
        }
        (values, samples)
    }

    /// Distinct sample shapes measured on (several for a recipe of several sizes).
    pub fn shapes(&self) -> usize {
        self.groups.iter().max().map_or(0, |g| g + 1)
    }

    /// Per sample, in the order of [`Probe::batches`] and of the per-sample shares, the index of its shape.
    pub fn sample_shapes(&self) -> Vec<usize> {
        self.batches.iter().zip(&self.groups).flat_map(|(b, &g)| std::iter::repeat_n(g, b.len())).collect()
    }

    /// The decoded batches.
    pub fn batches(&self) -> &[Batch] {
        &self.batches
    }

    /// The float model's outputs, per batch.
    pub fn reference(&self) -> &[Vec<f32>] {
        &self.fp32
    }

    /// The graph output the measurements compare ([`graph::Model::measured_output`]).
    pub fn output(&self) -> &str {
        &self.output
    }

    /// The folder the samples came from (for messages).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// This probe, its samples said to be given to measure on (`--check DIR`), not held back from the
    /// calibration ([`Probe::describe`]).
    pub fn given(self) -> Probe {
        Probe { given: true, ..self }
    }

    /// What the samples are, for ranges.json's `self_check.samples`: `64 calibration samples held back from the
    /// statistics (calib)`, or `24 samples given to measure on (check)`. The folder's name only: artifacts
    /// hold no absolute paths.
    pub fn describe(&self) -> String {
        let folder =
            self.source.file_name().map_or_else(|| self.source.display().to_string(), |n| n.to_string_lossy().into());
        match self.given {
            true => format!("{} samples given to measure on ({folder}, --check)", self.samples()),
            false => format!("{} calibration samples held back from the statistics ({folder})", self.samples()),
        }
    }

    /// `proto`'s outputs on the first `batches` batches, on `device`.
    pub fn outputs_on(
        &self,
        proto: &graph::proto::ModelProto,
        device: runtime::Device,
        batches: usize,
    ) -> Result<Vec<Vec<f32>>, QuantizeError> {
        self.outputs_between(&encode(proto)?, device, 0, batches, self.threads)
    }

    /// [`Probe::outputs_on`] of an encoded model, for batches `skip..batches` only, on `threads` threads
    /// ([`Probe::layout`]).
    fn outputs_between(
        &self,
        model: &[u8],
        device: runtime::Device,
        skip: usize,
        batches: usize,
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, QuantizeError> {
        let end = batches.min(self.batches.len());
        let parts = match self.layout(device, threads, end.saturating_sub(skip)) {
            Layout::OneSession(threads) => {
                let mut session = self.session(model, device, threads)?;
                return self.outputs_in(&mut session, &[], skip, end);
            }
            Layout::OneThreadSessions(n) => n,
        };
        self.in_parts(vec![(); parts], skip, end, |(), r| {
            let mut session = self.session(model, device, 1)?;
            self.outputs_in(&mut session, &[], r.start, r.end)
        })
    }

    /// The outputs of batches `skip..end`, cut into one contiguous part per slot ([`parts_of`]), `run` on
    /// each part with its slot at once (on scoped threads when there are several), in the parts' order.
    fn in_parts<T: Send>(
        &self,
        slots: Vec<T>,
        skip: usize,
        end: usize,
        run: impl Fn(T, std::ops::Range<usize>) -> Result<Vec<Vec<f32>>, QuantizeError> + Sync,
    ) -> Result<Vec<Vec<f32>>, QuantizeError> {
        let ranges = parts_of(skip..end, slots.len());
        if let ([_], [range]) = (slots.as_slice(), ranges.as_slice()) {
            let range = range.clone();
            return run(slots.into_iter().next().expect("one slot"), range);
        }
        let run = &run;
        std::thread::scope(|scope| {
            let runs: Vec<_> =
                slots.into_iter().zip(ranges).map(|(slot, r)| scope.spawn(move || run(slot, r))).collect();
            collect_parts(runs, &self.label)
        })
    }

    /// How `batches` batches are measured on `threads` threads (0: one per core). In one-thread sessions, as
    /// many at once as threads (each a contiguous part of the batches), because ONNX Runtime's CPU GEMMs
    /// round differently with another intra-op thread count (MLAS splits a wide GEMM by columns and sizes its
    /// K blocks by the columns a thread gets: on 8 random inputs the OriNet's Q/DQ models gave 25 of 32
    /// outputs other bits on 2 threads than on 1):
    /// one thread each makes a measurement the same whatever `--threads` says. A model above
    /// [`ONE_THREAD_SESSIONS_MAX_WEIGHTS`], or one on a GPU, runs in one session of all the threads.
    pub fn layout(&self, device: runtime::Device, threads: usize, batches: usize) -> Layout {
        layout(self.weights, device, threads, batches)
    }

    /// The most one-thread sessions of this model that one measurement holds at once (bounded by
    /// 256 Mi weight values together), or `None` where it runs in one session ([`Probe::layout`]).
    pub fn one_thread_sessions_max(&self, device: runtime::Device) -> Option<usize> {
        one_thread_sessions_max(self.weights, device)
    }

    /// A session of an encoded model as the probe runs candidates. Every candidate runs unoptimized, so all are
    /// measured the same way: what the graph means (Q/DQ as simulated quantization), not what ONNX Runtime's
    /// integer kernels or FP16 rewrites make of it, which differ between FP32 and FP16 float parts and would
    /// tilt the comparison.
    pub fn session(
        &self,
        model: &[u8],
        device: runtime::Device,
        threads: usize,
    ) -> Result<runtime::Session, QuantizeError> {
        let placement = runtime::Placement { threads, device };
        let mut cfg = runtime::SessionConfig::new(&self.label).place(placement);
        cfg.graph_optimization = runtime::GraphOptimization::Disabled;
        cfg.external_data_dir = Some(self.external_data_dir.clone());
        Ok(runtime::session_from_bytes(model, &cfg)?)
    }

    /// The outputs of batches `skip..batches` in `session`, fed `scales` beside each batch.
    fn outputs_in(
        &self,
        session: &mut runtime::Session,
        scales: &[(&str, f32)],
        skip: usize,
        batches: usize,
    ) -> Result<Vec<Vec<f32>>, QuantizeError> {
        let scalar: &[usize] = &[];
        self.batches
            .iter()
            .take(batches)
            .skip(skip)
            .map(|b| {
                let mut inputs = b.inputs(&self.input);
                inputs.extend(scales.iter().map(|(name, value)| runtime::Input {
                    name,
                    shape: scalar,
                    values: runtime::Values::F32(std::slice::from_ref(value)),
                }));
                runtime::run_per_sample(session, &self.label, &inputs, &self.output, self.batch_axis)
                    .map_err(Into::into)
            })
            .collect()
    }

    /// The outputs of batches `skip..batches`, split into contiguous parts run at once, one per session of
    /// `sessions` (one-thread sessions: [`Probe::layout`]), fed `scales`.
    fn outputs_in_parts(
        &self,
        sessions: &mut [runtime::Session],
        scales: &[(&str, f32)],
        skip: usize,
        batches: usize,
    ) -> Result<Vec<Vec<f32>>, QuantizeError> {
        let end = batches.min(self.batches.len());
        self.in_parts(sessions.iter_mut().collect(), skip, end, |session, r| {
            self.outputs_in(session, scales, r.start, r.end)
        })
    }

    /// How close `outputs` (of the first `outputs.len()` batches) are to the float model's; agreement is on
    /// the raw outputs' argmax.
    pub fn fidelity(&self, outputs: &[Vec<f32>]) -> Result<Fidelity, Unmeasured> {
        self.sums(outputs).finish_any_signal()
    }

    /// The fidelity sums of `outputs`, keeping every sample's share.
    fn sums(&self, outputs: &[Vec<f32>]) -> OutputFidelity {
        let mut acc = OutputFidelity::keeping();
        for ((batch, a), b) in self.batches.iter().zip(&self.fp32).zip(outputs) {
            let width = (a.len() / batch.len().max(1)).max(1);
            for (ra, rb) in a.chunks(width).zip(b.chunks(width)) {
                acc.add(ra, rb, argmax(ra), argmax(rb));
            }
        }
        acc
    }

    /// Prunes a candidate to what the measured output needs ([`graph::prune_to_outputs`]): the other outputs of
    /// a detector with several heads are not computed. The measured output's values are the same, as the
    /// probe's candidate sessions run without graph rewrites (node by node). Returns whether it changed.
    pub fn prune_to_measured(&self, proto: &mut graph::proto::ModelProto) -> bool {
        graph::prune_to_outputs(proto.graph.mut_or_insert_default(), std::slice::from_ref(&self.output), |name| {
            let mut v = graph::proto::ValueInfoProto::new();
            v.name = name.to_string();
            v
        })
    }

    /// Runs `proto` on the first `batches` batches (all: `usize::MAX`) on the CPU and measures it.
    pub fn measure(&self, proto: &graph::proto::ModelProto, batches: usize) -> Result<Fidelity, QuantizeError> {
        Ok(self.measure_per_sample(proto, batches)?.0)
    }

    /// [`Probe::measure`], with every sample's share of the sums (for how certain a comparison is).
    pub fn measure_per_sample(
        &self,
        proto: &graph::proto::ModelProto,
        batches: usize,
    ) -> Result<(Fidelity, Vec<ImageFidelity>), QuantizeError> {
        // Only what the measured output needs runs, and FP16 candidates run their quantization in float32: the
        // same outputs faster ([`Probe::prune_to_measured`], [`crate::fp16_quantize`]). The model (weights and
        // all) is copied only where one of them changes it.
        let bytes = if proto.graph.output.len() > 1 {
            let mut run = proto.clone();
            self.prune_to_measured(&mut run);
            crate::fp16_quantize::for_cpu_evaluation(&mut run);
            encode(&run)?
        } else {
            match crate::fp16_quantize::rewritten_for_cpu(proto) {
                Some(faster) => encode(&faster)?,
                None => encode(proto)?,
            }
        };
        Ok(self.measure_continuing(&bytes, Vec::new(), batches, self.threads())?.0)
    }

    /// [`Probe::measure_per_sample`] of an encoded model (the search has its bytes already) whose outputs on the
    /// first `earlier.len()` batches are known (from a measurement on fewer batches): only the rest run, in a
    /// session of `threads` intra-op threads. Also returns the outputs of all of them.
    pub fn measure_continuing(
        &self,
        model: &[u8],
        earlier: Vec<Vec<f32>>,
        batches: usize,
        threads: usize,
    ) -> Result<MeasuredOutputs, QuantizeError> {
        self.continuing(earlier, batches, |skip| {
            self.outputs_between(model, runtime::Device::Cpu, skip, batches, threads)
        })
    }

    /// [`Probe::measure_continuing`] in `sessions` (one-thread sessions made by [`Probe::session`], each
    /// running a contiguous part of the batches at once, or one of any threads) of a model whose scales
    /// [`fed_scales`] took out, fed `scales`: candidates that differ only in their scales share the sessions.
    pub fn measure_continuing_in(
        &self,
        sessions: &mut [runtime::Session],
        scales: &ScaleFeed,
        earlier: Vec<Vec<f32>>,
        batches: usize,
    ) -> Result<MeasuredOutputs, QuantizeError> {
        let fed: Vec<(&str, f32)> =
            scales.names.iter().map(String::as_str).zip(scales.values.iter().copied()).collect();
        self.continuing(earlier, batches, |skip| self.outputs_in_parts(sessions, &fed, skip, batches))
    }

    /// The measurement on the first `batches` batches, of which `earlier` holds the outputs of the first
    /// ones; `rest(skip)` computes the outputs of batches `skip..batches`.
    fn continuing(
        &self,
        earlier: Vec<Vec<f32>>,
        batches: usize,
        rest: impl FnOnce(usize) -> Result<Vec<Vec<f32>>, QuantizeError>,
    ) -> Result<MeasuredOutputs, QuantizeError> {
        let mut outputs = earlier;
        let known = outputs.len().min(batches);
        outputs.truncate(known);
        if known < batches.min(self.batches.len()) {
            outputs.extend(rest(known)?);
        }
        if outputs.iter().zip(&self.fp32).any(|(b, a)| a.len() != b.len()) {
            return Err(QuantizeError::Model {
                path: self.label.clone().into(),
                message: "the INT8 model's output differs in size from the float model's".into(),
            });
        }
        let sums = self.sums(&outputs);
        let fidelity =
            sums.finish_any_signal().map_err(|source| QuantizeError::Measure { path: self.source.clone(), source })?;
        Ok(((fidelity, sums.parts().images), outputs))
    }

    /// How the probe's sessions run a candidate (for reports).
    pub fn evaluation() -> String {
        format!("onnxruntime, graph optimization {}", runtime::GraphOptimization::Disabled.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(side: usize, n: usize) -> Batch {
        let items = (0..n).map(|i| datasets::ImageItem { path: format!("{side}-{i}").into(), label: None }).collect();
        Batch { data: Vec::new(), shape: [n, 3, side, side], items, tensors: Vec::new() }
    }

    #[test]
    fn parts_cover_the_batches_in_order_with_lengths_one_apart() {
        assert_eq!(parts_of(3..10, 3), vec![3..6, 6..8, 8..10]);
        assert_eq!(parts_of(0..2, 1), vec![0..2]);
        for (n, parts) in [(8, 2), (9, 4), (1, 3), (64, 12)] {
            let p = parts_of(5..5 + n, parts);
            assert_eq!(p.len(), parts);
            assert!(p.windows(2).all(|w| w[0].end == w[1].start), "{p:?}");
            assert_eq!((p[0].start, p[parts - 1].end), (5, 5 + n));
            let lens: Vec<usize> = p.iter().map(|r| r.len()).collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
        }
    }

    #[test]
    fn sizes_take_turns_so_that_the_first_batches_hold_every_size() {
        // As the batch stream yields them: every sample at the first size, then at the second.
        let stream = vec![batch(28, 4), batch(28, 4), batch(28, 2), batch(56, 2), batch(56, 2), batch(56, 2)];
        let (batches, groups) = interleave_shapes(stream);
        let sides: Vec<usize> = batches.iter().map(|b| b.shape[2]).collect();
        assert_eq!(sides, vec![28, 56, 28, 56, 28, 56]);
        assert_eq!(groups, vec![0, 1, 0, 1, 0, 1]);
        assert_eq!(batches[4].len(), 2, "each size keeps its own batch order");
        // One size: the order is untouched.
        let (one, groups) = interleave_shapes(vec![batch(28, 4), batch(28, 1)]);
        assert_eq!(one.iter().map(Batch::len).collect::<Vec<_>>(), vec![4, 1]);
        assert_eq!(groups, vec![0, 0]);
    }
}
