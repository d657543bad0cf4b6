//! Weight rounding by GPTQ (Frantar et al., 2022): a layer's INT8 weight columns are rounded one at a time, and
//! each column's rounding error is spread over the columns not yet rounded, weighted by how the layer's inputs
//! correlate (the inverse of `H = E[x x^T]` over its input patches), so that the layer's *output* error is small
//! rather than each weight's. The scales stay those of nearest rounding; only the integers change.
//!
//! `H` comes from the float model's layer inputs over held-in calibration samples ([`Hessians::collect`]), never
//! from the held-back ones that measure the result. A layer with fewer input patches than
//! [`MIN_PATCHES_PER_COLUMN`] per weight column keeps nearest rounding (its `H` would describe those samples
//! alone), and so does one wider than [`MAX_COLUMNS`] (its `K^3` factorization would cost more than the
//! calibration pass).

use std::collections::BTreeMap;

use graph::proto::{ModelProto, NodeProto};
use graph::Model;
use ndarray::{Array2, ArrayView2, Axis, Slice};

use crate::QuantizeError;

/// How INT8 weights are rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightRounding {
    /// GPTQ where the held-back samples measure it better than nearest rounding (when there are none:
    /// nearest).
    #[default]
    Auto,
    /// Each weight to its nearest integer.
    Nearest,
    /// GPTQ wherever a layer has enough input patches.
    Gptq,
}

impl WeightRounding {
    /// Whether it rounds a layer of this kind by GPTQ: `gptq` every layer, `auto` the Convs only. On the zoo,
    /// GPTQ measured better on the held-back crops of the DINOv2 ViT-S/14's MatMuls and 2.8 dB worse on other
    /// photos, while on the CNNs' Convs it kept what the held-back crops said (BENCHMARKS.md).
    pub fn rounds(self, patches: &Patches) -> bool {
        match self {
            WeightRounding::Nearest => false,
            WeightRounding::Auto => matches!(patches, Patches::Conv { .. }),
            WeightRounding::Gptq => true,
        }
    }

    /// The name on the command line and in ranges.json.
    pub fn name(self) -> &'static str {
        match self {
            WeightRounding::Auto => "auto",
            WeightRounding::Nearest => "nearest",
            WeightRounding::Gptq => "gptq",
        }
    }
}

impl std::str::FromStr for WeightRounding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WeightRounding::Auto),
            "nearest" => Ok(WeightRounding::Nearest),
            "gptq" => Ok(WeightRounding::Gptq),
            other => Err(format!("'{other}': expected 'auto', 'nearest' or 'gptq'")),
        }
    }
}

/// A layer keeps nearest rounding below this many input patches per weight column.
pub const MIN_PATCHES_PER_COLUMN: u64 = 8;

/// A layer keeps nearest rounding above this many weight columns (input channels x kernel positions).
pub const MAX_COLUMNS: usize = 1152;

/// Input patches taken from one sample for one layer, at most (spread evenly over its positions).
pub const PATCHES_PER_SAMPLE: usize = 96;

/// Input patches a layer's `H` is made of, per weight column, where the samples have that many: above
/// [`MIN_PATCHES_PER_COLUMN`], and no more, since each patch costs `columns^2` multiply-adds.
pub const PATCHES_PER_COLUMN: usize = 12;

/// Held-in samples whose layer inputs make `H`, at most.
pub const SAMPLES: usize = 128;

/// `H += damping x mean(diag H)` before it is inverted (GPTQ's default): keeps the inverse finite where inputs
/// are nearly dependent.
const DAMPING: f64 = 0.01;

/// How a layer's input becomes rows of its weight's columns.
#[derive(Debug, Clone, PartialEq)]
pub enum Patches {
    /// A Conv: every output position's receptive field (im2col), channel-major like the weight.
    Conv {
        /// Kernel height and width.
        kernel: [usize; 2],
        /// Strides (height, width).
        strides: [usize; 2],
        /// Where the padding goes.
        padding: Padding,
        /// Dilations (height, width).
        dilations: [usize; 2],
    },
    /// A Gemm or MatMul: the input's last axis.
    LastAxis,
}

/// A Conv's padding: explicit, or `auto_pad`'s, which depends on the input size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Padding {
    /// Top, left, bottom, right.
    Explicit([usize; 4]),
    /// `SAME_UPPER` (the odd pixel at the end) or `SAME_LOWER` (at the start): outputs `ceil(input / stride)`.
    Same {
        /// Whether the odd pixel goes at the end.
        upper: bool,
    },
}

impl Padding {
    /// Top, left, bottom, right for an input of `size` (height, width).
    fn pads(self, size: [usize; 2], kernel: [usize; 2], strides: [usize; 2], dilations: [usize; 2]) -> [usize; 4] {
        match self {
            Padding::Explicit(p) => p,
            Padding::Same { upper } => {
                let total = |i: usize| {
                    let out = size[i].div_ceil(strides[i].max(1));
                    ((out.max(1) - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1).saturating_sub(size[i])
                };
                let (th, tw) = (total(0), total(1));
                let (small_h, small_w) = (th / 2, tw / 2);
                if upper {
                    [small_h, small_w, th - small_h, tw - small_w]
                } else {
                    [th - small_h, tw - small_w, small_h, small_w]
                }
            }
        }
    }
}

/// A layer whose weight GPTQ can round.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// The node's name, or its output's where it has none (exporters leave names empty).
    pub node: String,
    /// The node's first output: what identifies it in the Q/DQ model built from this one.
    pub output: String,
    /// Its data input (a tensor of the float model).
    pub input: String,
    /// Its weight initializer.
    pub weight: String,
    /// How the input becomes patches.
    pub patches: Patches,
    /// Weight columns per output channel.
    pub columns: usize,
}

fn ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
}

fn int(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// The layers of `model` whose weights GPTQ can round: 2-D Convs with one group, Gemms (not transposing A) and
/// MatMuls whose weight is a constant (an initializer or a Constant node, possibly behind Casts) read by that
/// node alone.
pub fn layers(model: &Model) -> Vec<Layer> {
    let graph = &model.proto.graph;
    let index = graph::GraphIndex::new(graph);
    let mut readers: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &graph.node {
        for i in &n.input {
            *readers.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for n in &graph.node {
        let (Some(input), Some(weight)) = (n.input.first(), n.input.get(1)) else { continue };
        let Some(w) = placement::constant_behind(graph, &index, weight) else { continue };
        if readers.get(weight.as_str()) != Some(&1) {
            continue;
        }
        let dims: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
        let (patches, columns) = match n.op_type.as_str() {
            "Conv" if dims.len() == 4 && int(n, "group").unwrap_or(1) == 1 => {
                let pair = |name: &str| ints(n, name).filter(|v| v.len() == 2).map(|v| [v[0] as usize, v[1] as usize]);
                let auto_pad = n.attribute.iter().find(|a| a.name == "auto_pad").map(|a| a.s.clone());
                let padding = match auto_pad.as_deref() {
                    None | Some(b"") | Some(b"NOTSET") => {
                        let pads = ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
                        if pads.len() != 4 || pads.iter().any(|&p| p < 0) {
                            continue;
                        }
                        Padding::Explicit([pads[0] as usize, pads[1] as usize, pads[2] as usize, pads[3] as usize])
                    }
                    Some(b"VALID") => Padding::Explicit([0; 4]),
                    Some(b"SAME_UPPER") => Padding::Same { upper: true },
                    Some(b"SAME_LOWER") => Padding::Same { upper: false },
                    Some(_) => continue,
                };
                let patches = Patches::Conv {
                    kernel: [dims[2], dims[3]],
                    strides: pair("strides").unwrap_or([1, 1]),
                    padding,
                    dilations: pair("dilations").unwrap_or([1, 1]),
                };
                (patches, dims[1] * dims[2] * dims[3])
            }
            "Gemm" if dims.len() == 2 && int(n, "transA").unwrap_or(0) == 0 => {
                (Patches::LastAxis, if int(n, "transB").unwrap_or(0) == 1 { dims[1] } else { dims[0] })
            }
            "MatMul" if dims.len() == 2 => (Patches::LastAxis, dims[0]),
            _ => continue,
        };
        let Some(output) = n.output.first() else { continue };
        let node = if n.name.is_empty() { output.clone() } else { n.name.clone() };
        out.push(Layer {
            node,
            output: output.clone(),
            input: input.clone(),
            weight: weight.clone(),
            patches,
            columns,
        });
    }
    out
}

/// One layer's input over a batch: its shape (the batch axis first) and values.
pub type LayerInput<'a> = (Vec<usize>, &'a [f32]);

/// `E[x x^T]` of one layer's input patches, accumulated.
#[derive(Debug, Clone)]
pub struct Hessian {
    /// Sum of `x x^T` over the patches (columns x columns).
    pub sum: Array2<f64>,
    /// Patches summed.
    pub patches: u64,
}

impl Hessian {
    /// Whether there are enough patches for GPTQ ([`MIN_PATCHES_PER_COLUMN`]).
    pub fn usable(&self) -> bool {
        self.patches >= MIN_PATCHES_PER_COLUMN * self.sum.nrows() as u64
    }
}

/// The rows (patches) of one sample's input `x` (shape without the batch axis) for `layer`, at most `take` of
/// them, spread evenly; appended to `rows`.
pub fn sample_patches(layer: &Layer, x: &[f32], shape: &[usize], take: usize, rows: &mut Vec<f32>) {
    match &layer.patches {
        Patches::LastAxis => {
            let k = layer.columns;
            let n = x.len() / k.max(1);
            let step = n.div_ceil(take.max(1)).max(1);
            for r in (0..n).step_by(step) {
                rows.extend_from_slice(&x[r * k..(r + 1) * k]);
            }
        }
        Patches::Conv { kernel, strides, padding, dilations } => {
            let [c, h, w] = [shape[0], shape[1], shape[2]];
            let pads = padding.pads([h, w], *kernel, *strides, *dilations);
            let span = |size: usize, k: usize, s: usize, p0: usize, p1: usize, d: usize| {
                (size + p0 + p1).checked_sub((k - 1) * d + 1).map_or(0, |v| v / s + 1)
            };
            let oh = span(h, kernel[0], strides[0], pads[0], pads[2], dilations[0]);
            let ow = span(w, kernel[1], strides[1], pads[1], pads[3], dilations[1]);
            let n = oh * ow;
            let step = n.div_ceil(take.max(1)).max(1);
            for pos in (0..n).step_by(step) {
                let (oy, ox) = (pos / ow, pos % ow);
                for ch in 0..c {
                    for ky in 0..kernel[0] {
                        let y = (oy * strides[0] + ky * dilations[0]) as isize - pads[0] as isize;
                        for kx in 0..kernel[1] {
                            let xx = (ox * strides[1] + kx * dilations[1]) as isize - pads[1] as isize;
                            let inside = y >= 0 && (y as usize) < h && xx >= 0 && (xx as usize) < w;
                            rows.push(if inside { x[(ch * h + y as usize) * w + xx as usize] } else { 0.0 });
                        }
                    }
                }
            }
        }
    }
}

/// Columns of the product computed by one GEMM in [`upper_gram`].
const GRAM_PANEL: usize = 128;

/// The upper triangle (diagonal included) of `x^T x` into `out` (`k x k`, `k` the columns of `x`); below the
/// diagonal `out` holds stale values. Half the work of the whole product, whose entries it equals bit for bit:
/// each is one product-sum over the rows in row order, wherever its panel starts (tested), and `a * b` rounds as
/// `b * a`, so the lower triangle would have been the upper one's mirror.
fn upper_gram(x: &ArrayView2<'_, f32>, out: &mut Array2<f32>) {
    let k = x.ncols();
    for r0 in (0..k).step_by(GRAM_PANEL) {
        let r1 = (r0 + GRAM_PANEL).min(k);
        let mut panel = out.slice_axis_mut(Axis(0), Slice::from(r0..r1));
        panel.slice_axis_inplace(Axis(1), Slice::from(r0..));
        let rows = x.slice_axis(Axis(1), Slice::from(r0..r1));
        ndarray::linalg::general_mat_mul(1.0, &rows.t(), &x.slice_axis(Axis(1), Slice::from(r0..)), 0.0, &mut panel);
    }
}

/// Copies the upper triangle of the square `m` onto the lower one.
fn mirror_upper(m: &mut Array2<f64>) {
    for r in 1..m.nrows() {
        for c in 0..r {
            m[[r, c]] = m[[c, r]];
        }
    }
}

/// Tapped values one run of GPTQ's pass makes, at most (unless one sample makes more): 128 MB of float32. Two
/// one-thread sessions on this 2-core Xeon, the sums' seconds: trueocr_orient (768x768, 4.9 M values per sample)
/// 5.8-6.7 in runs of 16 samples, 2.3-2.4 in runs of 6 (this budget), 2.0 in runs of 3; open_nsfw_tf
/// (4.4 M) 3.1-3.2 in runs of 16, 2.9-3.3 in runs of 7, 3.5-3.6 in runs of 3.
pub const RUN_VALUES: usize = 32 << 20;

/// The float model tapped at the layers' inputs, as GPTQ's pass runs it.
struct Pass<'p> {
    model: &'p Model,
    layers: &'p [Layer],
    /// The tapped layer inputs (the fed input is read from the batch).
    names: &'p [String],
    input: &'p str,
    label: &'p str,
}

impl Pass<'_> {
    /// Runs `batches[i]` on `sessions[i]`, all at once; each batch's outputs (none without sessions).
    fn run(
        &self,
        sessions: &mut [runtime::Session],
        batches: &[datasets::Batch],
    ) -> Result<Vec<Vec<runtime::OwnedOutput>>, QuantizeError> {
        if sessions.is_empty() {
            return Ok(batches.iter().map(|_| Vec::new()).collect());
        }
        let (names, label, input) = (self.names, self.label, self.input);
        std::thread::scope(|scope| {
            let runs: Vec<_> = sessions
                .iter_mut()
                .zip(batches)
                .map(|(session, batch)| {
                    scope.spawn(move || {
                        let outputs = runtime::run(session, label, &batch.inputs(input), names)?;
                        Ok::<_, QuantizeError>(vec![outputs])
                    })
                })
                .collect();
            crate::measure::collect_parts(runs, label)
        })
    }
}

/// A stream's batches after its first sample: `first` (the rest of its first batch), then the stream's.
struct AfterFirst<'s> {
    first: Option<datasets::Batch>,
    stream: &'s mut datasets::BatchStream,
}

impl Iterator for AfterFirst<'_> {
    type Item = Result<datasets::Batch, datasets::DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.first.take().map(Ok).or_else(|| self.stream.next())
    }
}

impl datasets::BatchSource for AfterFirst<'_> {
    fn skipped(&self) -> Vec<(std::path::PathBuf, String)> {
        self.stream.skipped()
    }
}

/// Samples per batch the pass reads (a model's fixed batch wins); each run takes at most this many ([`RUN_VALUES`]).
/// The sums depend on neither.
const BATCH: usize = 16;

/// The `H` of every layer [`layers`] finds, from the float model's layer inputs.
#[derive(Debug, Clone, Default)]
pub struct Hessians {
    /// By layer, keyed by its node's first output ([`Layer::output`]).
    pub by_node: BTreeMap<String, Hessian>,
    /// Samples they came from.
    pub samples: usize,
    /// Samples they will come from: sets how many patches each gives ([`PATCHES_PER_COLUMN`]).
    pub expected: usize,
}

impl Hessians {
    /// Adds one run's layer inputs: `inputs[i]` is `layers[i]`'s input tensor over the batch (shape with the
    /// batch axis first). Samples are taken in order, each one's patches summed on their own, so the sums do
    /// not depend on how samples were batched.
    pub fn add(&mut self, layers: &[Layer], inputs: &[LayerInput]) {
        use rayon::prelude::*;
        // Each layer's sum is its own, so layers run in parallel without changing any sum.
        let mut work: Vec<(&Layer, &LayerInput, Hessian)> = layers
            .iter()
            .zip(inputs)
            .map(|(l, i)| {
                let k = l.columns;
                let h = self.by_node.remove(&l.output);
                (l, i, h.unwrap_or_else(|| Hessian { sum: Array2::zeros((k, k)), patches: 0 }))
            })
            .collect();
        let expected = self.expected.max(1);
        work.par_iter_mut().for_each(|(layer, (shape, values), h)| {
            let Some(&batch) = shape.first() else { return };
            let per = values.len() / batch.max(1);
            let k = layer.columns;
            let take = (PATCHES_PER_COLUMN * k).div_ceil(expected).clamp(1, PATCHES_PER_SAMPLE);
            let mut rows = Vec::new();
            // One sample's products in float32 (at most PATCHES_PER_SAMPLE terms each), summed in f64; the upper
            // triangle only, mirrored once the batch is in.
            let mut product = Array2::<f32>::zeros((k, k));
            for s in 0..batch {
                rows.clear();
                sample_patches(layer, &values[s * per..(s + 1) * per], &shape[1..], take, &mut rows);
                let count = rows.len() / k.max(1);
                if count == 0 {
                    continue;
                }
                let x = ArrayView2::from_shape((count, k), &rows).expect("rows hold whole patches");
                upper_gram(&x, &mut product);
                for (r, (mut sum, p)) in h.sum.outer_iter_mut().zip(product.outer_iter()).enumerate() {
                    let upper = Slice::from(r..);
                    sum.slice_axis_inplace(Axis(0), upper);
                    sum.zip_mut_with(&p.slice_axis(Axis(0), upper), |a, &b| *a += b as f64);
                }
                h.patches += count as u64;
            }
            mirror_upper(&mut h.sum);
        });
        for (layer, _, h) in work {
            self.by_node.insert(layer.output.clone(), h);
        }
        self.samples += inputs.first().and_then(|(shape, _)| shape.first()).copied().unwrap_or(0);
    }

    /// Adds the layer inputs of `batches`, in order, from their runs' `outputs` ([`Pass::run`]).
    fn add_parts(
        &mut self,
        pass: &Pass<'_>,
        batches: &[datasets::Batch],
        outputs: &[Vec<runtime::OwnedOutput>],
    ) -> Result<(), QuantizeError> {
        for (batch, outputs) in batches.iter().zip(outputs) {
            let mut inputs: Vec<LayerInput> = Vec::with_capacity(pass.layers.len());
            for l in pass.layers {
                if l.input == pass.input {
                    inputs.push((batch.shape.to_vec(), &batch.data[..]));
                    continue;
                }
                let o = &outputs[pass.names.iter().position(|n| *n == l.input).expect("every input tapped")];
                let shape = o.shape().iter().map(|&d| d as usize).collect();
                let values = o.as_f32().ok_or_else(|| QuantizeError::Model {
                    path: pass.model.path.clone(),
                    message: format!(
                        "GPTQ reads the input '{}' of layer '{}' as floats, and the model gave another type \
                         (give --weight-rounding nearest)",
                        l.input, l.node
                    ),
                })?;
                inputs.push((shape, values));
            }
            self.add(pass.layers, &inputs);
        }
        Ok(())
    }

    /// The `H` of `model`'s layers (at most [`MAX_COLUMNS`] columns) over `dataset` (held-in calibration
    /// samples), the float model run with the layers' inputs as outputs, each run making at most `run_values`
    /// of them ([`RUN_VALUES`]; the sums do not depend on it).
    pub fn collect(
        model: &Model,
        rounding: WeightRounding,
        dataset: &datasets::Dataset,
        feed: &datasets::Feed,
        threads: usize,
        on_bad_image: datasets::OnBadImage,
        run_values: usize,
    ) -> Result<Hessians, QuantizeError> {
        let layers: Vec<Layer> =
            layers(model).into_iter().filter(|l| l.columns <= MAX_COLUMNS && rounding.rounds(&l.patches)).collect();
        if layers.is_empty() || dataset.is_empty() {
            return Ok(Hessians::default());
        }
        let input = calibrate::batch_input(model, feed)?;
        // A model with a fixed batch runs whole batches of it (PicoDet's is 1): the samples that fill them.
        let (dataset, batch_size) = crate::measure::whole_batches(model, &input, dataset, BATCH);
        let mut hessians = Hessians { expected: dataset.len(), ..Default::default() };
        let mut names: Vec<String> = Vec::new();
        for l in &layers {
            if l.input != input && !names.contains(&l.input) {
                names.push(l.input.clone());
            }
        }
        // The layers' inputs as the only outputs, nothing computed past them (a detector's post-processing); no
        // session where every layer reads the fed input. One-thread sessions, each on its own part, where the
        // model is small enough to hold several: ONNX Runtime's CPU GEMMs round differently on another
        // intra-op thread count ([`crate::measure::Probe::layout`]), and the integers must not depend on
        // `--threads`.
        let label = model.path.display().to_string();
        let fixed_batch = model.fixed_batch(&input).is_some();
        let weights = model.weight_values();
        // One-thread sessions unless the model is too large to hold several ([`crate::measure::layout`]); how
        // many follows from the parts, known after the first run.
        let session_threads = match crate::measure::layout(weights, runtime::Device::Cpu, threads, 1) {
            crate::measure::Layout::OneThreadSessions(_) => 1,
            crate::measure::Layout::OneSession(threads) => threads,
        };
        let tapped = if names.is_empty() {
            None
        } else {
            let mut tapped = model.clone();
            tapped.prune_to_outputs(&names, calibrate::float_output);
            Some(tapped.to_bytes()?)
        };
        let mut cfg = runtime::SessionConfig::new(&label)
            .place(runtime::Placement { threads: session_threads, device: runtime::Device::Cpu });
        cfg.external_data_dir = Some(model.dir.clone());
        let new_session = || tapped.as_deref().map(|bytes| runtime::session_from_bytes(bytes, &cfg)).transpose();
        let mut sessions: Vec<runtime::Session> = new_session()?.into_iter().collect();
        let options = datasets::StreamOptions { batch_size, on_bad_image, ..Default::default() };
        let mut stream = datasets::BatchStream::new(&dataset, feed, options);
        let pass = Pass { model, layers: &layers, names: &names, input: &input, label: &label };
        // Batches run in parts of at most `run_values` tapped values, measured on a first part of one sample (a
        // model with a fixed batch runs it whole): the sums do not depend on the parts ([`RUN_VALUES`]).
        let (per_run, rest) = match stream.next() {
            Some(first) if !fixed_batch && !sessions.is_empty() => {
                let mut first = first?;
                let rest = first.split_off(1);
                let outputs = pass.run(&mut sessions[..1], std::slice::from_ref(&first))?;
                let per_sample: usize = outputs.iter().flatten().map(|o| o.as_f32().map_or(0, <[f32]>::len)).sum();
                hessians.add_parts(&pass, std::slice::from_ref(&first), &outputs)?;
                let per_run = (run_values / per_sample.max(1)).clamp(1, batch_size);
                tracing::debug!(target: "int8kit::rounding", per_sample, per_run, "GPTQ's pass: tapped values per sample, samples per run");
                (per_run, Some(rest))
            }
            first => (batch_size, first.transpose()?),
        };
        if let crate::measure::Layout::OneThreadSessions(n) =
            crate::measure::layout(weights, runtime::Device::Cpu, threads, dataset.len().div_ceil(per_run))
        {
            while !sessions.is_empty() && sessions.len() < n {
                sessions.extend(new_session()?);
            }
        }
        let mut rest = AfterFirst { first: rest, stream: &mut stream };
        let mut parts = datasets::Rebatched::new(&mut rest, per_run);
        loop {
            // Up to one part per session, run at once; their sums are added in the samples' order.
            let batches = parts.by_ref().take(sessions.len().max(1)).collect::<Result<Vec<_>, _>>()?;
            if batches.is_empty() {
                break;
            }
            let outputs = pass.run(&mut sessions, &batches)?;
            hessians.add_parts(&pass, &batches, &outputs)?;
        }
        Ok(hessians)
    }
}

/// Lower Cholesky factor (row-major, `n x n`) of the symmetric positive definite `a`, or `None` if it is not.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for j in 0..n {
        let d = a[j * n + j] - (0..j).map(|k| l[j * n + k] * l[j * n + k]).sum::<f64>();
        if !(d > 0.0 && d.is_finite()) {
            return None;
        }
        let d = d.sqrt();
        l[j * n + j] = d;
        for i in j + 1..n {
            let (ri, rj) = (&l[i * n..i * n + j], &l[j * n..j * n + j]);
            let s = a[i * n + j] - ri.iter().zip(rj).map(|(x, y)| x * y).sum::<f64>();
            l[i * n + j] = s / d;
        }
    }
    Some(l)
}

/// The inverse of a lower triangular matrix (row-major, `n x n`), itself lower triangular.
fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let mut inv = vec![0f64; n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0 / l[i * n + i];
        for j in 0..i {
            let s: f64 = (j..i).map(|k| l[i * n + k] * inv[k * n + j]).sum();
            inv[i * n + j] = -s / l[i * n + i];
        }
    }
    inv
}

/// The upper Cholesky factor (row-major) of `(H + damping)^-1`, which GPTQ's column updates read row by row.
fn inverse_factor(h: &Hessian) -> Option<Vec<f64>> {
    let n = h.sum.nrows();
    let mut a: Vec<f64> = h.sum.iter().map(|v| v / h.patches.max(1) as f64).collect();
    let mean = (0..n).map(|i| a[i * n + i]).sum::<f64>() / n.max(1) as f64;
    for i in 0..n {
        // A column no patch ever reaches gets a unit diagonal: its weight is rounded alone.
        if a[i * n + i] == 0.0 {
            a[i * n + i] = 1.0;
        }
        a[i * n + i] += DAMPING * mean.max(f64::MIN_POSITIVE);
    }
    let l_inv = ndarray::Array2::from_shape_vec((n, n), lower_inverse(&cholesky(&a, n)?, n)).ok()?;
    let inverse = l_inv.t().dot(&l_inv);
    let lower = cholesky(inverse.as_slice()?, n)?;
    // The upper factor is the lower one transposed.
    let mut upper = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            upper[j * n + i] = lower[i * n + j];
        }
    }
    Some(upper)
}

/// GPTQ's integers for a weight laid out as `rows` output channels of `columns` values each (the layer's
/// column order), `scale[r]` per row; `None` when `H` cannot be factored.
pub fn gptq(weights: &[f32], rows: usize, scale: &[f32], h: &Hessian) -> Option<Vec<i8>> {
    let k = h.sum.nrows();
    let u = inverse_factor(h)?;
    let mut w: Vec<f64> = weights.iter().map(|&v| v as f64).collect();
    let mut q = vec![0i8; rows * k];
    for r in 0..rows {
        let s = scale[r] as f64;
        let row = &mut w[r * k..(r + 1) * k];
        for i in 0..k {
            let v = (row[i] / s).clamp(-127.0, 127.0).round_ties_even();
            q[r * k + i] = v as i8;
            let err = (row[i] - v * s) / u[i * k + i];
            let ui = &u[i * k..(i + 1) * k];
            for (x, &f) in row[i + 1..].iter_mut().zip(&ui[i + 1..]) {
                *x -= err * f;
            }
        }
    }
    Some(q)
}

/// `values`, a row-major `rows x cols` matrix, transposed.
fn transposed<T: Copy + Default>(values: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); values.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = values[i * cols + j];
        }
    }
    t
}

/// A layer's weights as rows of its columns, `(values, rows)`, from the initializer stored as the node reads it
/// (Conv `[out, in, kh, kw]` and Gemm with transB `[out, in]` as they are; otherwise `[in, out]`, transposed).
fn as_rows(values: &[f32], dims: &[i64], by_columns: bool) -> (Vec<f32>, usize) {
    if !by_columns {
        return (values.to_vec(), dims[0] as usize);
    }
    let (k, n) = (dims[0] as usize, dims[1] as usize);
    (transposed(values, k, n), n)
}

/// One layer's outcome in ranges.json.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoundedLayer {
    /// The node.
    pub node: String,
    /// Weight columns.
    pub columns: usize,
    /// Input patches behind its `H`.
    pub patches: u64,
    /// `gptq`, or why it kept nearest rounding.
    pub rounding: String,
}

/// ranges.json `weight_rounding`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoundingRecord {
    /// What was asked: `auto` or `gptq`.
    pub asked: &'static str,
    /// What the written model has: `gptq` or `nearest`.
    pub chosen: &'static str,
    /// Why.
    pub reason: String,
    /// Held-in calibration samples behind the layers' `H`.
    pub samples: usize,
    /// The held-back samples' mean per-sample output SQNR (dB; of the worst sample shape with several) of the
    /// model with nearest rounding and with GPTQ's, where measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nearest_sqnr_db: Option<f64>,
    /// See `nearest_sqnr_db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gptq_sqnr_db: Option<f64>,
    /// Every layer GPTQ could round, and what it got.
    pub layers: Vec<RoundedLayer>,
}

/// Rewrites the INT8 weights of `proto` (a Q/DQ model built from `model`) that [`layers`] finds and `hessians`
/// covers with GPTQ's integers, keeping their scales; returns what each layer got.
pub fn apply(
    proto: &mut ModelProto,
    model: &Model,
    hessians: &Hessians,
    rounding: WeightRounding,
) -> Result<Vec<RoundedLayer>, QuantizeError> {
    let source = &model.proto.graph;
    let index = graph::GraphIndex::new(source);
    let graph = proto.graph.mut_or_insert_default();
    // The weight DequantizeLinear feeding each node: its int8 and scale initializers.
    let dq_of: BTreeMap<String, (String, String)> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear" && n.input.len() >= 2)
        .map(|n| (n.output[0].clone(), (n.input[0].clone(), n.input[1].clone())))
        .collect();
    let feeding: BTreeMap<String, (String, String, bool)> = graph
        .node
        .iter()
        .filter_map(|n| {
            let by_columns = match n.op_type.as_str() {
                "MatMul" => true,
                "Gemm" => int(n, "transB").unwrap_or(0) == 0,
                _ => false,
            };
            let (q, scale) = dq_of.get(n.input.get(1)?)?.clone();
            Some((n.output.first()?.clone(), (q, scale, by_columns)))
        })
        .collect();
    let initializer = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    /// One layer's work: its weights as rows, their scales, and where the integers go.
    struct Job<'a> {
        layer: Layer,
        h: &'a Hessian,
        values: Vec<f32>,
        rows: usize,
        scale: Vec<f32>,
        dims: Vec<i64>,
        by_columns: bool,
        q_name: String,
    }
    let mut report = Vec::new();
    let mut jobs = Vec::new();
    for layer in layers(model) {
        let Some((q_name, scale_name, by_columns)) = feeding.get(&layer.output) else { continue };
        let kept = |why: String, patches: u64| RoundedLayer {
            node: layer.node.clone(),
            columns: layer.columns,
            patches,
            rounding: format!("nearest: {why}"),
        };
        if !rounding.rounds(&layer.patches) {
            report
                .push(kept("a Gemm/MatMul (auto rounds Convs by GPTQ; --weight-rounding gptq every layer)".into(), 0));
            continue;
        }
        if layer.columns > MAX_COLUMNS {
            report.push(kept(format!("{} columns, more than {MAX_COLUMNS}", layer.columns), 0));
            continue;
        }
        let Some(h) = hessians.by_node.get(&layer.output) else { continue };
        if !h.usable() {
            let why = format!(
                "{} input patches for {} columns (GPTQ needs {MIN_PATCHES_PER_COLUMN} per column)",
                h.patches, layer.columns
            );
            report.push(kept(why, h.patches));
            continue;
        }
        let Some(w) = placement::constant_behind(source, &index, &layer.weight) else { continue };
        let (values, rows) = as_rows(&model.tensor_f32(w)?, &w.dims, *by_columns);
        let Some(scale) = initializer(scale_name).and_then(|t| model.tensor_f32(t).ok()) else { continue };
        let scale: Vec<f32> = if scale.len() == 1 { vec![scale[0]; rows] } else { scale };
        if scale.len() != rows || values.len() != rows * layer.columns {
            continue;
        }
        let job = Job {
            layer,
            h,
            values,
            rows,
            scale,
            dims: w.dims.clone(),
            by_columns: *by_columns,
            q_name: q_name.clone(),
        };
        jobs.push(job);
    }
    use rayon::prelude::*;
    let rounded: Vec<Option<Vec<i8>>> = jobs.par_iter().map(|j| gptq(&j.values, j.rows, &j.scale, j.h)).collect();
    for (job, q) in jobs.into_iter().zip(rounded) {
        let outcome = |rounding: &str| RoundedLayer {
            node: job.layer.node.clone(),
            columns: job.layer.columns,
            patches: job.h.patches,
            rounding: rounding.to_string(),
        };
        let Some(q) = q else {
            report.push(outcome("nearest: its H could not be factored"));
            continue;
        };
        // Back to the stored `[in, out]` layout: the rows were the `out` channels.
        let q = if job.by_columns { transposed(&q, job.dims[1] as usize, job.dims[0] as usize) } else { q };
        if let Some(t) = graph.initializer.iter_mut().find(|t| t.name == job.q_name) {
            t.raw_data = q.iter().map(|&v| v as u8).collect();
            report.push(outcome("gptq"));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer's output error `sum over rows of (w - q s) H (w - q s)^T`.
    fn output_error(w: &[f32], q: &[i8], scale: &[f32], h: &Array2<f64>, rows: usize) -> f64 {
        let k = h.nrows();
        let d = Array2::from_shape_fn((rows, k), |(r, i)| w[r * k + i] as f64 - q[r * k + i] as f64 * scale[r] as f64);
        (d.dot(h) * &d).sum()
    }

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    #[test]
    fn gptq_lowers_the_output_error_of_correlated_inputs_below_nearest_rounding() {
        // Inputs whose columns share a common component: nearest rounding's errors add up along it.
        let (k, rows, n) = (24, 6, 2000);
        let mut seed = 7;
        let mut x = Vec::with_capacity(n * k);
        for _ in 0..n {
            let common = lcg(&mut seed);
            x.extend((0..k).map(|_| common + 0.2 * lcg(&mut seed)));
        }
        let xv = ArrayView2::from_shape((n, k), &x).unwrap();
        let h = Hessian { sum: xv.t().dot(&xv), patches: n as u64 };
        let w: Vec<f32> = (0..rows * k).map(|_| lcg(&mut seed) as f32).collect();
        let scale: Vec<f32> =
            (0..rows).map(|r| w[r * k..(r + 1) * k].iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).collect();
        let nearest: Vec<i8> =
            (0..rows * k).map(|i| (w[i] / scale[i / k]).round_ties_even().clamp(-127.0, 127.0) as i8).collect();
        let rounded = gptq(&w, rows, &scale, &h).unwrap();
        let e = |q: &[i8]| output_error(&w, q, &scale, &(&h.sum / n as f64), rows);
        assert!(e(&rounded) < 0.5 * e(&nearest), "gptq {} against nearest {}", e(&rounded), e(&nearest));
        // Every integer is at most one step from the weight: GPTQ moves roundings, not values.
        for i in 0..rows * k {
            assert!((rounded[i] as f32 - w[i] / scale[i / k]).abs() <= 1.5, "weight {i}");
        }
    }

    #[test]
    fn with_uncorrelated_inputs_gptq_rounds_to_nearest() {
        // H diagonal: no column's error can be taken back by another.
        let k = 5;
        let mut sum = Array2::zeros((k, k));
        for i in 0..k {
            sum[[i, i]] = 1.0;
        }
        let h = Hessian { sum, patches: 1 };
        let w = [0.26f32, -0.74, 0.5, 0.1, -0.9];
        let q = gptq(&w, 1, &[0.1], &h).unwrap();
        assert_eq!(q, vec![3, -7, 5, 1, -9]);
    }

    #[test]
    fn conv_patches_are_the_receptive_fields_in_weight_order() {
        // One channel 3x3, kernel 2x2, stride 1, pad 1 on the top-left only: 3x3 outputs.
        let layer = Layer {
            node: "c".into(),
            output: "y".into(),
            input: "x".into(),
            weight: "w".into(),
            patches: Patches::Conv {
                kernel: [2, 2],
                strides: [1, 1],
                padding: Padding::Explicit([1, 1, 0, 0]),
                dilations: [1, 1],
            },
            columns: 4,
        };
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut rows = Vec::new();
        sample_patches(&layer, &x, &[1, 3, 3], 9, &mut rows);
        assert_eq!(rows.len(), 9 * 4);
        assert_eq!(&rows[..4], &[0.0, 0.0, 0.0, 1.0]); // output (0, 0): the padded corner
        assert_eq!(&rows[4 * 4..5 * 4], &[1.0, 2.0, 4.0, 5.0]); // output (1, 1)
        assert_eq!(&rows[8 * 4..], &[5.0, 6.0, 8.0, 9.0]); // output (2, 2)
    }

    #[test]
    fn same_padding_puts_the_odd_pixel_where_auto_pad_says() {
        // 5 wide, kernel 2, stride 2: 3 outputs need 6 input columns, one pad.
        let upper = Padding::Same { upper: true }.pads([5, 5], [2, 2], [2, 2], [1, 1]);
        let lower = Padding::Same { upper: false }.pads([5, 5], [2, 2], [2, 2], [1, 1]);
        assert_eq!((upper, lower), ([0, 0, 1, 1], [1, 1, 0, 0]));
        // Kernel 3, stride 1: one each side.
        assert_eq!(Padding::Same { upper: true }.pads([4, 4], [3, 3], [1, 1], [1, 1]), [1, 1, 1, 1]);
    }

    /// The upper triangle by panels equals the whole product bit for bit (so `H` is what it was before the
    /// lower triangle was left out), for column counts below, at and across panel edges.
    #[test]
    fn the_upper_gram_equals_the_whole_product() {
        let mut seed = 7u64;
        for (rows, k) in [(96, 1), (96, 127), (96, 128), (37, 300), (96, 1152)] {
            let x: Vec<f32> = (0..rows * k).map(|_| (lcg(&mut seed) * 4.0 - 2.0) as f32).collect();
            let x = ArrayView2::from_shape((rows, k), &x).unwrap();
            let mut whole = Array2::<f32>::zeros((k, k));
            ndarray::linalg::general_mat_mul(1.0, &x.t(), &x, 0.0, &mut whole);
            let mut upper = Array2::<f32>::from_elem((k, k), f32::NAN);
            upper_gram(&x, &mut upper);
            for r in 0..k {
                for c in r..k {
                    assert_eq!(upper[[r, c]].to_bits(), whole[[r, c]].to_bits(), "k {k}, ({r}, {c})");
                    assert_eq!(whole[[c, r]].to_bits(), whole[[r, c]].to_bits(), "the product is symmetric");
                }
            }
        }
        let mut m = Array2::from_shape_fn((3, 3), |(r, c)| (r * 3 + c) as f64);
        mirror_upper(&mut m);
        assert_eq!(m, ndarray::array![[0.0, 1.0, 2.0], [1.0, 4.0, 5.0], [2.0, 5.0, 8.0]]);
    }

    /// GPTQ's pass over the fixture ResNet in runs of one sample each gives the same sums as in whole batches.
    #[test]
    fn runs_of_any_size_sum_alike() {
        let model = Model::load(&test_support::model("fmnist_resnet_opset13.onnx")).unwrap();
        let dataset = datasets::Dataset::flat(&test_support::calib_dir()).unwrap().limit(37, 0);
        let feed = test_support::feed();
        let sums = |run_values| {
            let fail = datasets::OnBadImage::Fail;
            Hessians::collect(&model, WeightRounding::Gptq, &dataset, &feed, 2, fail, run_values).unwrap()
        };
        let (whole, single) = (sums(usize::MAX), sums(1));
        assert_eq!((whole.samples, single.samples), (37, 37));
        assert!(!whole.by_node.is_empty());
        for (node, h) in &whole.by_node {
            assert_eq!(h.sum, single.by_node[node].sum, "{node}");
            assert_eq!(h.patches, single.by_node[node].patches, "{node}");
        }
    }

    #[test]
    fn sums_do_not_depend_on_batching() {
        let layer = Layer {
            node: "g".into(),
            output: "y".into(),
            input: "x".into(),
            weight: "w".into(),
            patches: Patches::LastAxis,
            columns: 3,
        };
        let x: Vec<f32> = (0..24).map(|v| (v as f32).sin()).collect();
        let mut one = Hessians { expected: 4, ..Default::default() };
        one.add(std::slice::from_ref(&layer), &[(vec![4, 2, 3], &x[..])]);
        let mut two = Hessians { expected: 4, ..Default::default() };
        two.add(std::slice::from_ref(&layer), &[(vec![2, 2, 3], &x[..12])]);
        two.add(std::slice::from_ref(&layer), &[(vec![2, 2, 3], &x[12..])]);
        assert_eq!(one.by_node["y"].sum, two.by_node["y"].sum);
        assert_eq!((one.samples, one.by_node["y"].patches), (4, 8));
    }
}
