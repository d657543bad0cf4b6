//! FP32-vs-INT8 comparison: Top-1/Top-5 of a classifier, or zero-shot Top-1 of an embedding model against
//! class prototypes, over a labelled image folder, and the output fidelity (agreement, cosine, SQNR).

use std::path::Path;

use datasets::{BatchStream, Dataset, Feed, StreamOptions};

use crate::EvaluateError;
pub use quantizer::measure::{
    argmax, evaluation_config, graph_optimization_for, Fidelity, FidelityParts, ImageFidelity,
};
use quantizer::measure::{OutputFidelity, Unmeasured};

/// [`Unmeasured`] as the evaluation's error, naming the folder evaluated.
pub(crate) fn unmeasured(source: &Path) -> impl Fn(Unmeasured) -> EvaluateError + '_ {
    move |u| match u {
        Unmeasured::NoImages => EvaluateError::NoImages { path: source.to_path_buf() },
        Unmeasured::NonFinite { images, fp32_values, fp32_images, int8_values, int8_images } => {
            EvaluateError::NonFinite {
                path: source.to_path_buf(),
                images,
                fp32_values,
                fp32_images,
                int8_values,
                int8_images,
            }
        }
        Unmeasured::NoSignal { images } => EvaluateError::NoSignal { path: source.to_path_buf(), images },
    }
}

/// The fidelity part of a comparison.
pub fn fidelity_of(c: &Comparison) -> Fidelity {
    Fidelity { images: c.images, agreement: c.agreement, cosine_mean: c.cosine_mean, sqnr_db: c.sqnr_db }
}

/// How an output row becomes class scores: a classifier's logits as they are, or an embedding's cosine
/// against one prototype per class (CLIP zero-shot).
#[derive(Debug, Clone, PartialEq)]
pub enum Classifier {
    /// The output row holds one score per class.
    Logits,
    /// The output row is an embedding; its class is the prototype row it is closest to by cosine.
    ZeroShot {
        /// One L2-normalised row per class.
        prototypes: Vec<Vec<f32>>,
    },
}

impl Classifier {
    /// Zero-shot against the prototypes in `zero_shot` (a float32 `[classes, dim]` `.npy`), else logits.
    pub fn load(zero_shot: Option<&Path>) -> Result<Classifier, EvaluateError> {
        Ok(match zero_shot {
            Some(path) => Classifier::ZeroShot { prototypes: load_prototypes(path)? },
            None => Classifier::Logits,
        })
    }

    /// Class scores of one output row.
    pub fn scores(&self, row: &[f32]) -> Vec<f32> {
        match self {
            Classifier::Logits => row.to_vec(),
            Classifier::ZeroShot { prototypes } => {
                let r = normalised(row);
                prototypes.iter().map(|c| c.iter().zip(&r).map(|(a, b)| a * b).sum()).collect()
            }
        }
    }

    /// The label of `item` (`None` in an unlabelled folder), checked against an output row of `width` values:
    /// a class id the model cannot predict, or prototypes of another dimension than the embedding, would make
    /// a silently wrong Top-1.
    pub fn check(&self, width: usize, item: &datasets::ImageItem) -> Result<Option<usize>, EvaluateError> {
        let bad = |message: String| EvaluateError::Input { path: item.path.clone(), message };
        if let Classifier::ZeroShot { prototypes } = self {
            let dim = prototypes.first().map_or(0, Vec::len);
            if dim != width {
                return Err(bad(format!(
                    "the model outputs embeddings of {width} values, the zero-shot prototypes have {dim}: they \
                     belong to another model"
                )));
            }
        }
        let Some(label) = item.label else { return Ok(None) };
        match self {
            Classifier::Logits if label >= width => Err(bad(format!(
                "class id {label}, but the model outputs {width} scores per image: the folder has classes the \
                 model cannot predict (check the class folders or --classes)"
            ))),
            Classifier::ZeroShot { prototypes } if label >= prototypes.len() => {
                Err(bad(format!("class id {label}, but there are {} zero-shot prototypes", prototypes.len())))
            }
            _ => Ok(Some(label)),
        }
    }

    /// Whether outputs are embeddings (divergence is then 1 - cosine rather than a KL of softmaxes).
    pub fn is_embedding(&self) -> bool {
        matches!(self, Classifier::ZeroShot { .. })
    }

    /// Number of classes the prototypes define (`None` for logits).
    pub fn classes(&self) -> Option<usize> {
        match self {
            Classifier::Logits => None,
            Classifier::ZeroShot { prototypes } => Some(prototypes.len()),
        }
    }
}

/// Class prototypes from a numpy `.npy` file (float32, shape `[classes, dim]`), L2-normalised.
pub fn load_prototypes(path: &Path) -> Result<Vec<Vec<f32>>, EvaluateError> {
    use ndarray_npy::ReadNpyExt;
    let file = safe_io::open(path, safe_io::limits::ARRAY, "a .npy array")?;
    let array = ndarray::Array2::<f32>::read_npy(std::io::BufReader::new(file))
        .map_err(|source| EvaluateError::Prototypes { path: path.into(), source })?;
    if array.ncols() == 0 || array.nrows() == 0 {
        return Err(EvaluateError::Input {
            path: path.into(),
            message: format!("prototypes have shape {:?}; expected [classes, dim] with both non-zero", array.shape()),
        });
    }
    Ok(array.rows().into_iter().map(|r| normalised(&r.to_vec())).collect())
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| if n > 0.0 { x / n } else { *x }).collect()
}

/// Top-1 of one model on a labelled folder.
pub struct EvalResult {
    /// Share of images whose predicted class is the label.
    pub top1: f64,
    /// Images evaluated.
    pub images: usize,
    /// Seconds spent running the model.
    pub seconds: f64,
}

/// Runs `model_path` over `dataset` (on the CPU) and counts correct predictions.
pub fn evaluate(
    model_path: &Path,
    dataset: &Dataset,
    feed: &Feed,
    classifier: &Classifier,
) -> Result<EvalResult, EvaluateError> {
    let mut model = ort_model(model_path, feed, runtime::Placement::default())?;
    let (mut right, mut n) = (0usize, 0usize);
    let batching = batching(&[model.as_ref()], dataset, feed)?;
    for batch in BatchStream::new(dataset, feed, batching) {
        let batch = batch?;
        let rows = model.run(&batch)?;
        let width = rows.len() / batch.items.len().max(1);
        for (row, item) in rows.chunks(width.max(1)).zip(&batch.items) {
            right += (Some(argmax(&classifier.scores(row))) == item.label) as usize;
            n += 1;
        }
    }
    Ok(EvalResult { top1: right as f64 / n.max(1) as f64, images: n, seconds: model.seconds() })
}

use reports::{Comparison, ModelMetrics};

/// Something that maps a batch of preprocessed images to its output rows (flattened, one row per image).
/// `Send`: with several devices each device's models run on a thread of their own.
pub trait BatchModel: Send {
    /// The output rows of one batch, flattened (one row per image).
    fn run(&mut self, batch: &datasets::Batch) -> Result<Vec<f32>, EvaluateError>;
    /// Seconds spent in `run` so far.
    fn seconds(&self) -> f64;
    /// The batch size the model is fixed to, if any (batches must then hold exactly that many images).
    fn fixed_batch(&self) -> Option<usize> {
        None
    }
    /// What computes the outputs, for the report (`onnxruntime, graph optimization all`, ...).
    fn evaluation(&self) -> String;
}

/// Images per batch in evaluations of images up to 224x224, unless a model fixes its batch.
pub const EVAL_BATCH: usize = 64;

/// The images per evaluation batch unless told: [`EVAL_BATCH`] images of up to 224x224 (most vision models'
/// size), proportionally fewer of larger ones (at least two: see [`datasets::Recipe::batch_at`]), so that a default batch of 960x960 detector
/// inputs holds no more pixels than 64 ViT inputs; `.npz` samples, whose size a recipe does not say, take
/// [`EVAL_BATCH`]. With several sizes this counts at the smallest ([`datasets::Recipe::batch_at`] scales the rest).
pub fn default_eval_batch(feed: &Feed) -> usize {
    const PIXELS: u64 = EVAL_BATCH as u64 * 224 * 224;
    let Some(recipe) = feed.recipe() else { return EVAL_BATCH };
    ((PIXELS / recipe.smallest_pixels().max(1)) as usize).clamp(2, EVAL_BATCH)
}

/// How `models` take `dataset` in batches: the default evaluation batch ([`default_eval_batch`]), or the
/// fixed batch of a model that has one, which must then divide the number of images.
fn batching(models: &[&dyn BatchModel], dataset: &Dataset, feed: &Feed) -> Result<StreamOptions, EvaluateError> {
    batching_of(models, dataset, default_eval_batch(feed))
}

/// [`batching`] with `wanted` images per batch where no model fixes its batch.
fn batching_of(models: &[&dyn BatchModel], dataset: &Dataset, wanted: usize) -> Result<StreamOptions, EvaluateError> {
    let fixed: Vec<usize> = models.iter().filter_map(|m| m.fixed_batch()).collect();
    match fixed.first() {
        None => Ok(StreamOptions { batch_size: wanted, ..Default::default() }),
        Some(&b) if fixed.iter().all(|&f| f == b) && dataset.len().is_multiple_of(b) => {
            Ok(StreamOptions { batch_size: b, fixed_batch: true, ..Default::default() })
        }
        Some(&b) => Err(EvaluateError::Input {
            path: dataset.root.clone(),
            message: format!(
                "the model has a fixed batch of {b} and {} images do not split into batches of {b}: take a \
                 multiple of {b} (--limit-val), or export the model with a dynamic batch dimension",
                dataset.len()
            ),
        }),
    }
}

/// An ONNX Runtime (CPU) session over a model file, as a [`BatchModel`].
pub fn ort_model(
    path: &Path,
    feed: &Feed,
    placement: runtime::Placement,
) -> Result<Box<dyn BatchModel>, EvaluateError> {
    Ok(Box::new(Runner::new(path, feed, placement, None)?))
}

/// [`ort_model`] with every graph rewrite of ONNX Runtime off, whatever the graph's float type: the nodes run
/// as written, Q/DQ as simulated quantization, as the `auto` search measures candidates. On FP32 Q/DQ graphs
/// the optimized session fuses Q/DQ pairs into integer kernels that round otherwise (the zoo measured the
/// TensorFlow open_nsfw ResNet 2.5 dB apart, BENCHMARKS.md); comparisons across float types need this.
pub fn ort_model_as_written(
    path: &Path,
    feed: &Feed,
    placement: runtime::Placement,
) -> Result<Box<dyn BatchModel>, EvaluateError> {
    Ok(Box::new(Runner::new(path, feed, placement, Some(runtime::GraphOptimization::Disabled))?))
}

struct Runner {
    session: runtime::Session,
    input: String,
    output: String,
    label: String,
    seconds: f64,
    fixed_batch: Option<usize>,
    graph_optimization: runtime::GraphOptimization,
    /// The output's axis that holds the batch's samples, moved first so that each sample is one row.
    batch_axis: usize,
}

impl Runner {
    fn new(
        path: &Path,
        feed: &Feed,
        placement: runtime::Placement,
        optimization: Option<runtime::GraphOptimization>,
    ) -> Result<Runner, EvaluateError> {
        let mut m = graph::Model::load(path)?;
        let output = m.measured_output()?.to_string();
        let input = calibrate::batch_input(&m, feed)?;
        let label = path.display().to_string();
        let mut cfg = evaluation_config(&label, placement, &m.proto.graph);
        if let Some(optimization) = optimization {
            cfg.graph_optimization = optimization;
        }
        cfg.external_data_dir = Some(m.dir.clone());
        // Two sessions take turns: a spinning idle pool of one would steal the cores of the other.
        cfg.spinning = false;
        // An FP16 graph on the CPU quantizes in float32: the same outputs, faster (quantizer::fp16_quantize).
        if !placement.device.is_cuda() && cfg.graph_optimization == runtime::GraphOptimization::Disabled {
            quantizer::fp16_quantize::for_cpu_evaluation(&mut m.proto);
        }
        let session = runtime::session_from_bytes(&m.to_bytes()?, &cfg)?;
        let fixed_batch = m.fixed_batch(&input);
        let graph_optimization = cfg.graph_optimization;
        let batch_axis = m.output_batch_axis(&input, &output);
        Ok(Runner { session, input, output, label, seconds: 0.0, fixed_batch, graph_optimization, batch_axis })
    }
}

impl BatchModel for Runner {
    fn seconds(&self) -> f64 {
        self.seconds
    }

    fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    fn evaluation(&self) -> String {
        format!("onnxruntime, graph optimization {}", self.graph_optimization.name())
    }

    fn run(&mut self, batch: &datasets::Batch) -> Result<Vec<f32>, EvaluateError> {
        let start = std::time::Instant::now();
        let inputs = batch.inputs(&self.input);
        let out = runtime::run_per_sample(&mut self.session, &self.label, &inputs, &self.output, self.batch_axis)?;
        self.seconds += start.elapsed().as_secs_f64();
        Ok(out)
    }
}

fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Top-1/Top-5 counts of one model; integers, so shards add up exactly.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    labelled: u64,
    top1: u64,
    top5: u64,
    per_class: Vec<(u64, u64)>,
}

impl Tally {
    /// What counts of `images` images over `classes` classes always satisfy: Top-1 <= Top-5 <= the labelled
    /// images <= the images, each class's correct <= its images, and the per-class counts add up to the
    /// totals. A part that breaks one was edited, and merging it could flip a verdict.
    fn check(&self, images: u64, classes: usize) -> Result<(), String> {
        if self.labelled > images || self.top5 > self.labelled || self.top1 > self.top5 {
            return Err(format!(
                "Top-1 {} <= Top-5 {} <= labelled {} <= images {images} does not hold",
                self.top1, self.top5, self.labelled
            ));
        }
        if self.per_class.len() > classes {
            return Err(format!("{} per-class counts for {classes} classes", self.per_class.len()));
        }
        let (mut correct, mut total) = (0u64, 0u64);
        for (i, &(c, n)) in self.per_class.iter().enumerate() {
            if c > n {
                return Err(format!("class {i}: {c} correct of {n} images"));
            }
            correct = correct.checked_add(c).ok_or("per-class counts overflow")?;
            total = total.checked_add(n).ok_or("per-class counts overflow")?;
        }
        if correct != self.top1 || total != self.labelled {
            return Err(format!(
                "the per-class counts add up to {correct} correct of {total}, but Top-1 is {} of {}",
                self.top1, self.labelled
            ));
        }
        Ok(())
    }

    /// Adds another part's counts, refusing an overflow (only edited parts can reach one).
    fn checked_absorb(&mut self, other: &Tally) -> Option<()> {
        self.labelled = self.labelled.checked_add(other.labelled)?;
        self.top1 = self.top1.checked_add(other.top1)?;
        self.top5 = self.top5.checked_add(other.top5)?;
        if self.per_class.len() < other.per_class.len() {
            self.per_class.resize(other.per_class.len(), (0, 0));
        }
        for (a, b) in self.per_class.iter_mut().zip(&other.per_class) {
            *a = (a.0.checked_add(b.0)?, a.1.checked_add(b.1)?);
        }
        Some(())
    }

    /// One image's scores and label (none in an unlabelled folder); returns the predicted class.
    fn add(&mut self, scores: &[f32], label: Option<usize>) -> usize {
        let top = top_k(scores, 5);
        let Some(label) = label else { return top.first().copied().unwrap_or(0) };
        self.labelled += 1;
        if self.per_class.len() <= label {
            self.per_class.resize(label + 1, (0, 0));
        }
        self.per_class[label].1 += 1;
        if top.first() == Some(&label) {
            self.top1 += 1;
            self.per_class[label].0 += 1;
        }
        self.top5 += top.contains(&label) as u64;
        top.first().copied().unwrap_or(0)
    }

    /// Top-1/Top-5 over the labelled images (`None` when there were none), speed over all `n`.
    fn metrics(mut self, n: u64, seconds: f64, classes: usize) -> ModelMetrics {
        let share = |k: u64| (self.labelled > 0).then(|| k as f64 / self.labelled as f64);
        let (top1, top5) = (share(self.top1), share(self.top5));
        if self.labelled > 0 {
            self.per_class.resize(self.per_class.len().max(classes), (0, 0));
        }
        ModelMetrics {
            top1,
            top5,
            per_class: self.per_class,
            images_per_s: if seconds > 0.0 { n as f64 / seconds } else { 0.0 },
        }
    }
}

/// Both models' output rows for one batch, checked to have the same size.
fn batch_rows(
    fp32: &mut dyn BatchModel,
    int8: &mut dyn BatchModel,
    batch: &datasets::Batch,
    root: &Path,
) -> Result<(Vec<f32>, Vec<f32>, usize), EvaluateError> {
    let (a, b) = (fp32.run(batch)?, int8.run(batch)?);
    let width = a.len() / batch.items.len().max(1);
    if width == 0 || b.len() != a.len() {
        return Err(EvaluateError::Model {
            path: root.to_path_buf(),
            message: format!("outputs differ in size: FP32 {} values, INT8 {}", a.len(), b.len()),
        });
    }
    Ok((a, b, width))
}

/// Runs both models over the same (unlabelled) images and measures how far INT8 is from FP32.
pub fn fidelity(
    fp32: &mut dyn BatchModel,
    int8: &mut dyn BatchModel,
    dataset: &Dataset,
    feed: &Feed,
) -> Result<Fidelity, EvaluateError> {
    let acc = output_fidelity(OutputFidelity::default(), fp32, int8, dataset, feed)?;
    acc.finish().map_err(unmeasured(&dataset.root))
}

/// [`fidelity`], and each image's share of it (in the dataset's order): for statistics of the samples one by
/// one, such as the mean per-sample SQNR the `auto` search ranks by ([`quantizer::search::mean_sample_sqnr_db`]).
pub fn fidelity_per_image(
    fp32: &mut dyn BatchModel,
    int8: &mut dyn BatchModel,
    dataset: &Dataset,
    feed: &Feed,
) -> Result<(Fidelity, Vec<quantizer::measure::ImageFidelity>), EvaluateError> {
    let acc = output_fidelity(OutputFidelity::keeping(), fp32, int8, dataset, feed)?;
    let fidelity = acc.finish().map_err(unmeasured(&dataset.root))?;
    Ok((fidelity, acc.parts().images))
}

/// Both models' outputs over `dataset`, accumulated into `acc` image by image.
fn output_fidelity(
    mut acc: OutputFidelity,
    fp32: &mut dyn BatchModel,
    int8: &mut dyn BatchModel,
    dataset: &Dataset,
    feed: &Feed,
) -> Result<OutputFidelity, EvaluateError> {
    let batching = batching(&[&*fp32, &*int8], dataset, feed)?;
    for batch in BatchStream::new(dataset, feed, batching) {
        let batch = batch?;
        let (a, b, width) = batch_rows(fp32, int8, &batch, &dataset.root)?;
        for (ra, rb) in a.chunks(width).zip(b.chunks(width)) {
            acc.add(ra, rb, argmax(ra), argmax(rb));
        }
    }
    Ok(acc)
}

/// Runs both models over the same labelled batches and compares them.
pub fn compare(
    fp32: &mut dyn BatchModel,
    int8: &mut dyn BatchModel,
    dataset: &Dataset,
    feed: &Feed,
    classifier: &Classifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Comparison, EvaluateError> {
    let mut all = compare_each(fp32, &mut [int8], dataset, feed, classifier, progress)?;
    Ok(all.remove(0))
}

/// Runs the reference and every candidate over the same labelled batches (the reference once) and compares
/// each candidate with the reference: one [`Comparison`] per candidate, in order, its `fp32` the reference.
pub fn compare_each(
    fp32: &mut dyn BatchModel,
    candidates: &mut [&mut dyn BatchModel],
    dataset: &Dataset,
    feed: &Feed,
    classifier: &Classifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<Comparison>, EvaluateError> {
    compare_each_parts(fp32, candidates, dataset, feed, classifier, progress)?.finish(&dataset.root)
}

/// The counts and sums behind [`compare_each`]'s comparisons. Those of contiguous parts of an image list,
/// joined in order ([`ComparisonParts::join`]), finish into exactly the whole list's comparisons.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ComparisonParts {
    /// Images evaluated.
    pub images: u64,
    /// Classes of the folder.
    pub classes: usize,
    /// The reference's counts.
    pub reference: Tally,
    /// Seconds the reference ran.
    pub reference_seconds: f64,
    /// Per candidate: its counts, its fidelity against the reference and its seconds.
    pub candidates: Vec<CandidateParts>,
}

/// One candidate's part of a [`ComparisonParts`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CandidateParts {
    /// Top-1/Top-5 counts.
    pub tally: Tally,
    /// Every image's fidelity share.
    pub fidelity: FidelityParts,
    /// Seconds it ran.
    pub seconds: f64,
}

impl ComparisonParts {
    /// Images per label (the reference's per-class totals; empty when unlabelled).
    pub fn label_counts(&self) -> Vec<u64> {
        self.reference.per_class.iter().map(|c| c.1).collect()
    }

    /// The comparisons, one per candidate (an error on no images or NaN/Inf outputs).
    pub fn finish(&self, root: &Path) -> Result<Vec<Comparison>, EvaluateError> {
        let reference = self.reference.clone().metrics(self.images, self.reference_seconds, self.classes);
        self.candidates
            .iter()
            .map(|c| {
                let f = OutputFidelity::replay(&c.fidelity).finish().map_err(unmeasured(root))?;
                Ok(Comparison {
                    images: f.images,
                    fp32: reference.clone(),
                    int8: c.tally.clone().metrics(f.images, c.seconds, self.classes),
                    agreement: f.agreement,
                    cosine_mean: f.cosine_mean,
                    sqnr_db: f.sqnr_db,
                })
            })
            .collect()
    }

    /// What one process's parts always satisfy, so that a merge of parts that pass can only give a verdict
    /// one process could have given on some consistent input: every count within its images (see
    /// [`Tally`]), one fidelity share per image, cosines in [-1, 1], sums of squares finite and >= 0, NaN/Inf
    /// counts within the images, seconds finite and >= 0, and `classes` the folder's class count.
    pub fn check(&self, folder_classes: usize) -> Result<(), String> {
        if self.classes != folder_classes {
            return Err(format!("{} classes, but the validation folder has {folder_classes}", self.classes));
        }
        self.reference.check(self.images, self.classes).map_err(|e| format!("FP32 counts: {e}"))?;
        let seconds_ok = |s: f64| s.is_finite() && s >= 0.0;
        if !seconds_ok(self.reference_seconds) {
            return Err(format!("FP32 seconds {} are not a duration", self.reference_seconds));
        }
        if self.candidates.is_empty() {
            return Err("no candidate (INT8) counts".into());
        }
        for (k, c) in self.candidates.iter().enumerate() {
            let what = if k == 0 { "INT8".to_string() } else { format!("candidate {}", k + 1) };
            c.tally.check(self.images, self.classes).map_err(|e| format!("{what} counts: {e}"))?;
            if !seconds_ok(c.seconds) {
                return Err(format!("{what} seconds {} are not a duration", c.seconds));
            }
            if c.fidelity.images.len() as u64 != self.images {
                return Err(format!("{what}: {} fidelity shares for {} images", c.fidelity.images.len(), self.images));
            }
            for (i, f) in c.fidelity.images.iter().enumerate() {
                let ok = (-1.0 - 1e-6..=1.0 + 1e-6).contains(&f.cosine)
                    && f.signal.is_finite()
                    && f.signal >= 0.0
                    && f.noise.is_finite()
                    && f.noise >= 0.0;
                if !ok {
                    return Err(format!(
                        "{what}: image {} of the part has cosine {}, signal {}, noise {} (a cosine is from -1 to 1, \
                         sums of squares are finite and >= 0)",
                        i + 1,
                        f.cosine,
                        f.signal,
                        f.noise
                    ));
                }
            }
            for (model, (values, images)) in ["FP32", "INT8"].iter().zip(c.fidelity.non_finite) {
                if images > self.images || (images > 0) != (values > 0) || values < images {
                    return Err(format!(
                        "{what}: {values} non-finite {model} values in {images} of {} images is impossible",
                        self.images
                    ));
                }
            }
        }
        Ok(())
    }

    /// The parts of contiguous pieces of one list, in list order, as one: counts and seconds add, every
    /// image's fidelity share follows the previous piece's. `None` when there are none, when the parts do not
    /// have the same candidates and classes, or when a count overflows.
    pub fn join(parts: &[&ComparisonParts]) -> Option<ComparisonParts> {
        let (first, rest) = parts.split_first()?;
        let mut all = (*first).clone();
        for p in rest {
            if p.classes != all.classes || p.candidates.len() != all.candidates.len() {
                return None;
            }
            all.images = all.images.checked_add(p.images)?;
            all.reference.checked_absorb(&p.reference)?;
            all.reference_seconds += p.reference_seconds;
            for (a, b) in all.candidates.iter_mut().zip(&p.candidates) {
                a.tally.checked_absorb(&b.tally)?;
                a.fidelity.images.extend_from_slice(&b.fidelity.images);
                for (x, y) in a.fidelity.non_finite.iter_mut().zip(b.fidelity.non_finite) {
                    *x = (x.0.checked_add(y.0)?, x.1.checked_add(y.1)?);
                }
                a.seconds += b.seconds;
            }
        }
        Some(all)
    }
}

/// [`compare_each`]'s counts and every image's fidelity share (32 bytes per image and candidate, the size of
/// the image list itself): what a shard hands to the merge, and what one process finishes directly.
pub fn compare_each_parts(
    fp32: &mut dyn BatchModel,
    candidates: &mut [&mut dyn BatchModel],
    dataset: &Dataset,
    feed: &Feed,
    classifier: &Classifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ComparisonParts, EvaluateError> {
    let mut models: Vec<&dyn BatchModel> = vec![&*fp32];
    models.extend(candidates.iter().map(|c| &**c));
    let batching = batching(&models, dataset, feed)?;
    let samples = Samples { root: &dataset.root, classes: dataset.classes.len(), total: dataset.len() as u64 };
    let mut acc = Accumulation::new(candidates.len(), &samples, classifier);
    for batch in BatchStream::new(dataset, feed, batching) {
        let batch = batch?;
        let mut timed = vec![run_timed(&mut *fp32, &batch)?];
        for c in candidates.iter_mut() {
            timed.push(run_timed(&mut **c, &batch)?);
        }
        let (rows, seconds): (Vec<_>, Vec<_>) = timed.into_iter().unzip();
        acc.add(&batch, &rows, &seconds)?;
        progress(acc.done, dataset.len() as u64);
    }
    Ok(acc.parts())
}

/// [`compare_each_parts`] with one set of models per device (each `[reference, candidates...]`, the same
/// models on another device): each set runs on a thread of its own, batches are dealt to them in turn, and
/// the rows are taken in list order, so the result is the one-device result (speeds aside: seconds add).
pub fn compare_each_spread(
    sets: &mut [Vec<Box<dyn BatchModel>>],
    dataset: &Dataset,
    feed: &Feed,
    classifier: &Classifier,
    batch_size: Option<usize>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ComparisonParts, EvaluateError> {
    let all: Vec<&dyn BatchModel> = sets.iter().flatten().map(|m| &**m).collect();
    let batching = batching_of(&all, dataset, batch_size.unwrap_or_else(|| default_eval_batch(feed)))?;
    let mut stream = BatchStream::new(dataset, feed, batching);
    let samples = Samples { root: &dataset.root, classes: dataset.classes.len(), total: dataset.len() as u64 };
    let groups = compare_spread_by_shape(sets, &mut stream, &samples, classifier, progress)?;
    // One listed folder of one shape (validate splits several shapes or sizes into lists of their own).
    let parts: Vec<&ComparisonParts> = groups.iter().map(|(_, p)| p).collect();
    match ComparisonParts::join(&parts) {
        Some(all) => Ok(all),
        None => {
            Ok(Accumulation::new(sets.first().map_or(0, |s| s.len().saturating_sub(1)), &samples, classifier).parts())
        }
    }
}

/// What the samples of an evaluation are, beside their batches.
pub struct Samples<'a> {
    /// The folder (or the stream's name), for messages.
    pub root: &'a Path,
    /// The folder's classes; 0 for a stream, whose labels say how many.
    pub classes: usize,
    /// Samples expected, for progress (0: unknown).
    pub total: u64,
}

/// One batch's rows from every model of a set, and the seconds each took on it.
type SetRows = Result<(Vec<Vec<f32>>, Vec<f64>), EvaluateError>;

/// Runs every model of `set` on `batch`.
fn run_set(set: &mut [Box<dyn BatchModel>], batch: &datasets::Batch) -> SetRows {
    set.iter_mut().map(|m| run_timed(&mut **m, batch)).collect::<Result<Vec<_>, _>>().map(|r| r.into_iter().unzip())
}

/// One model's output rows on `batch` and the seconds it took.
fn run_timed(model: &mut dyn BatchModel, batch: &datasets::Batch) -> Result<(Vec<f32>, f64), EvaluateError> {
    let before = model.seconds();
    let rows = model.run(batch)?;
    Ok((rows, model.seconds() - before))
}

/// [`compare_each_spread`] over any batches (a folder's, or a stream's regrouped by
/// [`datasets::Rebatched`]): per sample shape, in the order first seen, that shape's parts, each added in the
/// order its batches came.
pub fn compare_spread_by_shape(
    sets: &mut [Vec<Box<dyn BatchModel>>],
    batches: &mut dyn Iterator<Item = Result<datasets::Batch, datasets::DatasetError>>,
    samples: &Samples<'_>,
    classifier: &Classifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<(datasets::ShapeKey, ComparisonParts)>, EvaluateError> {
    let candidates = sets.first().map_or(0, |s| s.len().saturating_sub(1));
    let mut groups: Vec<(datasets::ShapeKey, Accumulation)> = Vec::new();
    let mut done = 0u64;
    let mut add = |batch: &datasets::Batch, rows: &[Vec<f32>], seconds: &[f64]| -> Result<(), EvaluateError> {
        let key = batch.shape_key();
        let g = match groups.iter().position(|(k, _)| *k == key) {
            Some(g) => g,
            None => {
                groups.push((key, Accumulation::new(candidates, samples, classifier)));
                groups.len() - 1
            }
        };
        groups[g].1.add(batch, rows, seconds)?;
        done += batch.len() as u64;
        progress(done, samples.total.max(done));
        Ok(())
    };
    if let [one] = sets {
        for batch in batches {
            let batch = batch?;
            let (rows, seconds) = run_set(one, &batch)?;
            add(&batch, &rows, &seconds)?;
        }
        return Ok(groups.into_iter().map(|(k, a)| (k, a.parts())).collect());
    }
    type Done = (usize, datasets::Batch, SetRows);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
    std::thread::scope(|scope| -> Result<(), EvaluateError> {
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for set in sets.iter_mut() {
            // One batch running and one waiting per device: memory stays bounded.
            let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, datasets::Batch)>(1);
            senders.push(tx);
            let done_tx = done_tx.clone();
            workers.push(scope.spawn(move || {
                for (i, batch) in rx {
                    let rows = run_set(set, &batch);
                    let failed = rows.is_err();
                    if done_tx.send((i, batch, rows)).is_err() || failed {
                        break;
                    }
                }
            }));
        }
        drop(done_tx);
        // Rows come back in any order; they are added in list order.
        let mut waiting = std::collections::BTreeMap::new();
        let mut next = 0usize;
        let mut take = |result: Done| -> Result<(), EvaluateError> {
            waiting.insert(result.0, (result.1, result.2));
            while let Some((batch, rows)) = waiting.remove(&next) {
                let (rows, seconds) = rows?;
                add(&batch, &rows, &seconds)?;
                next += 1;
            }
            Ok(())
        };
        let mut dealt = 0usize;
        let mut outcome = Ok(());
        for (i, batch) in batches.enumerate() {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            };
            if senders[i % senders.len()].send((i, batch)).is_err() {
                break; // that device's thread stopped on an error, which comes back below
            }
            dealt += 1;
            while let Ok(result) = done_rx.try_recv() {
                take(result)?;
            }
        }
        drop(senders);
        for result in done_rx.iter() {
            if outcome.is_ok() {
                outcome = take(result);
            }
        }
        for worker in workers {
            worker.join().map_err(|_| EvaluateError::Model {
                path: samples.root.to_path_buf(),
                message: "a device's evaluation thread panicked".into(),
            })?;
        }
        outcome?;
        if next != dealt {
            return Err(EvaluateError::Model {
                path: samples.root.to_path_buf(),
                message: format!("{} of {dealt} batches came back from the devices", next),
            });
        }
        Ok(())
    })?;
    Ok(groups.into_iter().map(|(k, a)| (k, a.parts())).collect())
}

/// The counts and fidelity shares of a comparison, added batch by batch in list order (the only order that
/// gives the same float sums whatever ran the batches).
struct Accumulation<'a> {
    classifier: &'a Classifier,
    root: &'a Path,
    classes: usize,
    reference: Tally,
    tallies: Vec<Tally>,
    fidelity: Vec<OutputFidelity>,
    /// Seconds each model ran on these batches (the reference first).
    seconds: Vec<f64>,
    done: u64,
}

impl<'a> Accumulation<'a> {
    fn new(candidates: usize, samples: &Samples<'a>, classifier: &'a Classifier) -> Accumulation<'a> {
        Accumulation {
            classifier,
            root: samples.root,
            classes: samples.classes,
            reference: Tally::default(),
            tallies: vec![Tally::default(); candidates],
            fidelity: (0..candidates).map(|_| OutputFidelity::keeping()).collect(),
            seconds: vec![0.0; candidates + 1],
            done: 0,
        }
    }

    /// One batch: `rows[0]` the reference's output rows, then each candidate's, and the seconds each took.
    fn add(&mut self, batch: &datasets::Batch, rows: &[Vec<f32>], seconds: &[f64]) -> Result<(), EvaluateError> {
        self.seconds.iter_mut().zip(seconds).for_each(|(a, b)| *a += b);
        let Some((a, candidates)) = rows.split_first() else { return Ok(()) };
        let width = a.len() / batch.items.len().max(1);
        let mut labels = Vec::with_capacity(batch.items.len());
        let mut predicted = Vec::with_capacity(batch.items.len());
        for (ra, item) in a.chunks(width.max(1)).zip(&batch.items) {
            let label = self.classifier.check(width, item)?;
            predicted.push(self.reference.add(&self.classifier.scores(ra), label));
            labels.push(label);
        }
        for ((b, tally), acc) in candidates.iter().zip(&mut self.tallies).zip(&mut self.fidelity) {
            if width == 0 || b.len() != a.len() {
                return Err(EvaluateError::Model {
                    path: self.root.to_path_buf(),
                    message: format!("outputs differ in size: FP32 {} values, the other model {}", a.len(), b.len()),
                });
            }
            for (((ra, rb), &label), &pa) in a.chunks(width).zip(b.chunks(width)).zip(&labels).zip(&predicted) {
                let pb = tally.add(&self.classifier.scores(rb), label);
                acc.add(ra, rb, pa, pb);
            }
        }
        self.done += batch.items.len() as u64;
        Ok(())
    }

    /// The parts, with each model's seconds.
    fn parts(self) -> ComparisonParts {
        let seconds = self.seconds;
        ComparisonParts {
            images: self.done,
            classes: self.classes,
            reference: self.reference,
            reference_seconds: seconds.first().copied().unwrap_or(0.0),
            candidates: self
                .tallies
                .into_iter()
                .zip(&self.fidelity)
                .zip(seconds.iter().skip(1))
                .map(|((tally, acc), &seconds)| CandidateParts { tally, fidelity: acc.parts(), seconds })
                .collect(),
        }
    }
}

/// A [`BatchModel`] that records another's outputs, so that a reference model runs once for many comparisons.
pub struct Recorded {
    rows: Vec<Vec<f32>>,
    next: usize,
    seconds: f64,
    fixed_batch: Option<usize>,
    evaluation: String,
}

impl Recorded {
    /// Runs `model` over `dataset` in the batches `compare`/`fidelity` use and keeps every batch's rows.
    pub fn record(model: &mut dyn BatchModel, dataset: &Dataset, feed: &Feed) -> Result<Recorded, EvaluateError> {
        let mut rows = Vec::new();
        let batching = batching(&[&*model], dataset, feed)?;
        for batch in BatchStream::new(dataset, feed, batching) {
            let batch = batch?;
            rows.push(model.run(&batch)?);
        }
        Ok(Recorded {
            rows,
            next: 0,
            seconds: model.seconds(),
            fixed_batch: model.fixed_batch(),
            evaluation: model.evaluation(),
        })
    }

    /// Starts the replay from the first batch again.
    pub fn rewind(&mut self) {
        self.next = 0;
    }
}

impl BatchModel for Recorded {
    fn run(&mut self, _batch: &datasets::Batch) -> Result<Vec<f32>, EvaluateError> {
        let rows = self.rows.get(self.next).cloned().ok_or_else(|| EvaluateError::Model {
            path: "recorded outputs".into(),
            message: format!("replayed past the {} recorded batches", self.rows.len()),
        })?;
        self.next += 1;
        Ok(rows)
    }

    fn seconds(&self) -> f64 {
        self.seconds
    }

    fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    fn evaluation(&self) -> String {
        self.evaluation.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_breaks_ties_by_index_and_tally_counts_classes() {
        assert_eq!(top_k(&[0.1, 0.9, 0.9, 0.3, 0.0, 0.2], 3), vec![1, 2, 3]);
        let mut t = Tally::default();
        assert_eq!(t.add(&[0.0, 1.0, 0.5, 0.0, 0.0, 0.0], Some(2)), 1);
        t.add(&[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], Some(2));
        let m = t.metrics(2, 1.0, 4);
        assert_eq!((m.top1, m.top5, m.per_class.clone()), (Some(0.5), Some(1.0), vec![(0, 0), (0, 0), (1, 2), (0, 0)]));
        // Unlabelled images: a prediction, no accuracy.
        let mut t = Tally::default();
        assert_eq!(t.add(&[0.0, 1.0], None), 1);
        let m = t.metrics(1, 1.0, 0);
        assert_eq!((m.top1, m.top5, m.per_class.len()), (None, None, 0));
    }

    #[test]
    fn fidelity_of_identical_and_of_noisy_outputs() {
        let mut same = OutputFidelity::default();
        same.add(&[1.0, 2.0], &[1.0, 2.0], 1, 1);
        let f = same.finish().map_err(unmeasured(Path::new("val"))).unwrap();
        assert_eq!((f.images, f.agreement, f.sqnr_db), (1, 1.0, f64::INFINITY));
        assert!((f.cosine_mean - 1.0).abs() < 1e-12);
        let mut noisy = OutputFidelity::default();
        noisy.add(&[3.0, 4.0], &[3.0, 3.0], 1, 0);
        noisy.add(&[0.0, 0.0], &[0.0, 0.0], 0, 0);
        let f = noisy.finish().map_err(unmeasured(Path::new("val"))).unwrap();
        // signal 25, noise 1: 10 log10(25); cosine of (3,4) and (3,3) is 21 / (5 * sqrt 18); zeros count as 1.
        assert!((f.sqnr_db - 10.0 * 25f64.log10()).abs() < 1e-9, "{}", f.sqnr_db);
        assert!((f.cosine_mean - (21.0 / (5.0 * 18f64.sqrt()) + 1.0) / 2.0).abs() < 1e-9);
        assert_eq!(f.agreement, 0.5);
    }

    #[test]
    fn no_images_or_a_non_finite_output_is_an_error_not_a_perfect_score() {
        let empty = OutputFidelity::default().finish().map_err(unmeasured(Path::new("val"))).unwrap_err().to_string();
        assert!(empty.contains("no image was evaluated"), "{empty}");
        let mut nan = OutputFidelity::default();
        nan.add(&[1.0, 2.0], &[1.0, 2.0], 1, 1);
        nan.add(&[1.0, 2.0], &[f32::NAN, f32::INFINITY], 1, 0);
        let err = nan.finish().map_err(unmeasured(Path::new("val"))).unwrap_err().to_string();
        assert!(err.contains("on 2 images") && err.contains("INT8 2 in 1"), "{err}");
    }

    #[test]
    fn float_outputs_that_are_zero_on_every_image_measure_nothing() {
        let mut zero = OutputFidelity::default();
        zero.add(&[0.0, 0.0], &[0.0, 0.0], 0, 0);
        zero.add(&[0.0, -0.0], &[0.5, 0.0], 0, 0);
        let err = zero.finish().map_err(unmeasured(Path::new("val"))).unwrap_err().to_string();
        assert!(err.contains("val: the float model's outputs are zero on all 2 images"), "{err}");
        // One image with signal is something to judge.
        zero.add(&[0.0, 1.0], &[0.0, 1.0], 1, 1);
        let f = zero.finish().map_err(unmeasured(Path::new("val"))).unwrap();
        assert!(f.sqnr_db.is_finite() && f.images == 3, "{f:?}");
    }

    #[test]
    fn labels_beyond_the_output_and_prototypes_of_another_size_are_refused() {
        let item = |label| datasets::ImageItem { path: "val/9-x/a.png".into(), label: Some(label) };
        assert_eq!(Classifier::Logits.check(10, &item(9)).unwrap(), Some(9));
        let err = Classifier::Logits.check(10, &item(10)).unwrap_err().to_string();
        assert!(err.contains("class id 10") && err.contains("10 scores") && err.contains("a.png"), "{err}");
        let zero_shot = Classifier::ZeroShot { prototypes: vec![vec![1.0, 0.0]; 3] };
        assert_eq!(zero_shot.check(2, &item(2)).unwrap(), Some(2));
        assert!(zero_shot.check(3, &item(0)).unwrap_err().to_string().contains("prototypes have 2"));
        // Unlabelled: no label, but the embedding width is still checked.
        let unlabelled = datasets::ImageItem { path: "val/a.png".into(), label: None };
        assert_eq!(zero_shot.check(2, &unlabelled).unwrap(), None);
        assert!(zero_shot.check(3, &unlabelled).is_err());
        assert!(zero_shot.check(2, &item(3)).unwrap_err().to_string().contains("3 zero-shot prototypes"));
    }

    #[test]
    fn recorded_outputs_replay_in_order_and_rewind() {
        let batch = datasets::Batch { items: vec![], shape: [0; 4], data: vec![], tensors: vec![] };
        let mut rec = Recorded {
            rows: vec![vec![1.0], vec![2.0]],
            next: 0,
            seconds: 0.0,
            fixed_batch: None,
            evaluation: String::new(),
        };
        assert_eq!(rec.run(&batch).unwrap(), vec![1.0]);
        assert_eq!(rec.run(&batch).unwrap(), vec![2.0]);
        assert!(rec.run(&batch).unwrap_err().to_string().contains("2 recorded batches"));
        rec.rewind();
        assert_eq!(rec.run(&batch).unwrap(), vec![1.0]);
    }

    #[test]
    fn zero_shot_scores_are_cosines_against_normalised_prototypes() {
        let zero_shot = Classifier::ZeroShot { prototypes: vec![normalised(&[1.0, 0.0]), normalised(&[1.0, 1.0])] };
        let s = zero_shot.scores(&[3.0, 3.0]);
        assert!((s[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6 && (s[1] - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&s), 1);
    }
}
