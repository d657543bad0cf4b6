//! Per-node sensitivity: the effect on accuracy and output fidelity of quantizing one node alone (all others
//! float), and of keeping one node alone in float (all others INT8). FP32 outputs are computed once and
//! reused; every variant is a Q/DQ model built in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use analyze::scales::{self, Method};
use datasets::{Dataset, Feed, OnBadImage};
use histograms::HistFile;
use placement::{decide, Decision, PrecisionFile};
use quantizer::measure::{Probe, ProbeOptions};
use quantizer::qdq::{WeightClip, WeightClips};
use quantizer::{Quantizer, Scheme};
use serde::Serialize;

use crate::compare::{argmax, Classifier};
use crate::EvaluateError;

/// What sensitivity and autoprecision measure: a model, its statistics, the evaluation images and how
/// outputs are scored, and the INT8 configuration whose nodes are measured.
#[derive(Debug, Clone)]
pub struct SensitivityInputs {
    /// The FP32 model.
    pub model: PathBuf,
    /// Its calibration statistics.
    pub hist: HistFile,
    /// The labelled images the variants are evaluated on (the search subset for autoprecision).
    pub dataset: Dataset,
    /// How samples become inputs: images through a recipe, or `.npz` samples.
    pub feed: Feed,
    /// Logits or zero-shot prototypes.
    pub classifier: Classifier,
    /// The INT8 configuration whose nodes are measured.
    pub scheme: Scheme,
    /// Images per ONNX Runtime call (default 100; a model's fixed batch wins).
    pub batch_size: Option<usize>,
    /// CPU threads per session (0 = one per core).
    pub threads: usize,
    /// Where the variants run; with several GPUs the nodes are dealt to them in turn, each node's variants
    /// measured on one of them.
    pub device: runtime::Devices,
}

/// What one model variant does to the evaluation subset, against FP32.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Effect {
    /// Top-1 of the variant (share); `None` on unlabelled images.
    pub top1: Option<f64>,
    /// INT8-variant Top-1 minus FP32 Top-1, percentage points; `None` on unlabelled images.
    pub top1_delta_pp: Option<f64>,
    /// Share of images with the FP32 prediction.
    pub agreement: f64,
    /// Mean KL(softmax FP32 || softmax variant) for classifiers; mean 1 - cosine for embeddings.
    pub divergence: f64,
    /// Mean per-image cosine of the outputs against FP32's.
    #[serde(default)]
    pub cosine_mean: f64,
    /// SQNR of the outputs against FP32's, dB (infinite, JSON `null`, when identical).
    #[serde(default, with = "reports::infinite_as_null")]
    pub sqnr_db: f64,
}

impl Effect {
    /// The output fidelity part.
    pub fn fidelity(&self, images: u64) -> crate::compare::Fidelity {
        crate::compare::Fidelity {
            images,
            agreement: self.agreement,
            cosine_mean: self.cosine_mean,
            sqnr_db: self.sqnr_db,
        }
    }
}

/// What autoprecision must meet against FP32: every limit given. At least one is needed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    /// Allowed Top-1 drop, percentage points (needs labelled images).
    pub max_top1_drop: Option<f64>,
    /// Output fidelity floors (no labels needed).
    pub fidelity: crate::gates::FidelityGates,
}

impl Budget {
    /// Refuses an empty budget, limits out of range, and a Top-1 budget on unlabelled images.
    pub fn check(&self, dataset: &Dataset) -> Result<(), EvaluateError> {
        if let Some(limit) = self.max_top1_drop {
            crate::check_limit("--max-top1-drop", limit)?;
            if !dataset.is_labelled() {
                return Err(EvaluateError::Input {
                    path: dataset.root.clone(),
                    message: "--max-top1-drop is a Top-1 budget, which needs labels, and this folder has none \
                              (images at its top level, no class sub-folders): give a labelled folder, or a \
                              fidelity budget (--min-cosine, --min-sqnr), which compares with FP32 and needs no \
                              labels"
                        .into(),
                });
            }
        }
        self.fidelity.check()?;
        if self.max_top1_drop.is_none() && !self.fidelity.any() {
            return Err(EvaluateError::Input {
                path: dataset.root.clone(),
                message: "no budget: give --max-top1-drop, --min-cosine or --min-sqnr".into(),
            });
        }
        Ok(())
    }

    /// Whether `effect` (against FP32, on `images` images) meets every limit.
    pub fn met(&self, effect: &Effect, images: u64) -> bool {
        let top1 = match (self.max_top1_drop, effect.top1_delta_pp) {
            (None, _) => true,
            (Some(limit), Some(delta)) => -delta <= limit,
            (Some(_), None) => false,
        };
        top1 && self.fidelity.criteria(&effect.fidelity(images), "FP32").iter().all(|c| c.passed)
    }

    /// The damage a node's quantization does, in the budget's own measure (larger is worse): the SQNR's noise
    /// share or 1 - cosine for a fidelity budget, else the output divergence.
    fn damage(&self, effect: &Effect) -> f64 {
        if self.max_top1_drop.is_none() {
            if self.fidelity.min_sqnr_db.is_some() {
                return 10f64.powf(-effect.sqnr_db / 10.0);
            }
            if self.fidelity.min_cosine.is_some() {
                return 1.0 - effect.cosine_mean;
            }
        }
        effect.divergence
    }

    /// The budget in words, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.max_top1_drop {
            parts.push(format!("Top-1 drop <= {v} pp"));
        }
        if let Some(v) = self.fidelity.min_cosine {
            parts.push(format!("cosine >= {v}"));
        }
        if let Some(v) = self.fidelity.min_sqnr_db {
            parts.push(format!("SQNR >= {v} dB"));
        }
        if let Some(v) = self.fidelity.min_agreement {
            parts.push(format!("agreement >= {v}"));
        }
        parts.join(", ")
    }
}

/// One node's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct NodeSensitivity {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op: String,
    /// This node's share of the GEMM/Conv FLOPs.
    pub flop_share: f64,
    /// Only this node in INT8.
    pub alone_int8: Effect,
    /// Every other node of the INT8 configuration in INT8, this one float.
    pub alone_float: Effect,
}

/// The scale method that gives a tensor the best output fidelity, the others' divergences beside it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MethodChoice {
    /// Tensor name.
    pub tensor: String,
    /// The chosen method.
    pub method: String,
    /// (method, divergence of the full INT8 configuration with this tensor's amax from that method).
    pub divergence_by_method: Vec<(String, f64)>,
}

/// Whether a weighted node's output is closer to FP32 with MSE-searched weight clips than with max.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct WeightClipChoice {
    /// Node name.
    pub node: String,
    /// The chosen clip (`max` or `mse`).
    pub clip: String,
    /// (clip, divergence of the full INT8 configuration with this node's weights clipped so).
    pub divergence_by_clip: Vec<(String, f64)>,
}

/// The sensitivity of every INT8 node (sensitivity.json).
#[derive(Debug, Clone, Serialize)]
pub struct SensitivityReport {
    /// Images evaluated.
    pub images: usize,
    /// Scale method of the INT8 configuration.
    pub method: String,
    /// FP32 Top-1 (share); `None` on unlabelled images.
    pub fp32_top1: Option<f64>,
    /// The full INT8 configuration (the precision file's, default lists if none).
    pub int8: Effect,
    /// Most sensitive first (largest divergence when quantized alone).
    pub nodes: Vec<NodeSensitivity>,
    /// Per quantized tensor, the method giving the best output fidelity (empty unless asked for).
    pub methods: Vec<MethodChoice>,
    /// Per INT8 node with a weight, the weight clip giving the better output fidelity (empty unless asked
    /// for).
    #[serde(default)]
    pub weight_clips: Vec<WeightClipChoice>,
    /// How the outputs were computed: ONNX Runtime's graph optimization level for the FP32 model and for the
    /// INT8 variants (`all`, or `disabled` for graphs that compute in FP16).
    #[serde(default)]
    pub evaluation: SensitivityEvaluation,
    /// Wall time of the measurement.
    pub seconds: f64,
}

/// ONNX Runtime's graph optimization level of the sessions behind a sensitivity measurement.
#[derive(Debug, Clone, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct SensitivityEvaluation {
    /// The FP32 reference.
    pub fp32: String,
    /// Every INT8 variant (their float parts share one type).
    pub int8: String,
}

struct Evaluator<'a> {
    quantizer: &'a Quantizer,
    /// The inputs' scheme with its `auto` choices made (measured on the evaluation images).
    scheme: Scheme,
    probe: Probe,
    /// The probe's batches grouped by sample shape (one group unless sizes or `.npz` shapes differ).
    shape_groups: Vec<Vec<usize>>,
    classifier: &'a Classifier,
    devices: &'a [runtime::Device],
}

/// Each measure's worst over `effects` (one per sample shape): lowest Top-1, Top-1 change, agreement, cosine
/// and SQNR, highest divergence. One effect is itself.
fn worst_effect(effects: Vec<Effect>) -> Effect {
    let mut it = effects.into_iter();
    let first = it.next().unwrap_or(Effect {
        top1: None,
        top1_delta_pp: None,
        agreement: 0.0,
        divergence: f64::INFINITY,
        cosine_mean: 0.0,
        sqnr_db: f64::NEG_INFINITY,
    });
    let lower = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    it.fold(first, |w, e| Effect {
        top1: lower(w.top1, e.top1),
        top1_delta_pp: lower(w.top1_delta_pp, e.top1_delta_pp),
        agreement: w.agreement.min(e.agreement),
        divergence: w.divergence.max(e.divergence),
        cosine_mean: w.cosine_mean.min(e.cosine_mean),
        sqnr_db: w.sqnr_db.min(e.sqnr_db),
    })
}

fn softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = v.iter().map(|x| (*x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

impl<'a> Evaluator<'a> {
    /// Decodes the evaluation images once and runs the FP32 model over them once.
    fn new(quantizer: &'a Quantizer, inputs: &'a SensitivityInputs) -> Result<Evaluator<'a>, EvaluateError> {
        let model = quantizer.model();
        let (dataset, feed) = (&inputs.dataset, &inputs.feed);
        let input = calibrate::batch_input(model, feed)?;
        let batch_size = model.batch_size_for(&input, inputs.batch_size.unwrap_or(100), dataset.len())?;
        let devices = inputs.device.list();
        let options =
            ProbeOptions { batch_size, threads: inputs.threads, on_bad_image: OnBadImage::Fail, device: devices[0] };
        let probe = Probe::new(model, dataset, feed, options)?;
        if probe.batches().is_empty() {
            return Err(EvaluateError::NoImages { path: dataset.root.clone() });
        }
        let classifier = &inputs.classifier;
        // The probe refused a float model whose outputs are not finite.
        let mut groups: Vec<(Vec<Vec<usize>>, Vec<usize>)> = Vec::new();
        for (i, batch) in probe.batches().iter().enumerate() {
            let shape = batch.sample_shape();
            match groups.iter_mut().find(|(s, _)| *s == shape) {
                Some((_, members)) => members.push(i),
                None => groups.push((shape, vec![i])),
            }
        }
        let shape_groups = groups.into_iter().map(|(_, members)| members).collect();
        let mut ev = Evaluator { quantizer, scheme: inputs.scheme.clone(), probe, shape_groups, classifier, devices };
        // The `auto` choices, made on the images every node is measured on: a ranking under another method
        // or float type than the artifacts get would rank the wrong model.
        if inputs.scheme.auto.any() {
            let auto = inputs.scheme.auto;
            ev.scheme = quantizer::search::search(quantizer, &inputs.scheme, auto, &ev.probe, &mut |_, _| {})?.0;
        }
        for (batch, rows) in ev.probe.batches().iter().zip(ev.probe.reference()) {
            let width = rows.len() / batch.items.len().max(1);
            for item in &batch.items {
                classifier.check(width, item)?;
            }
        }
        Ok(ev)
    }

    /// NaN/Inf outputs of an INT8 variant fail the run instead of scoring as a divergence (the probe refuses a
    /// float model whose outputs are not finite).
    fn check_finite(&self, outputs: &[Vec<f32>]) -> Result<(), EvaluateError> {
        let (int8_values, int8_images) = self.probe.non_finite(outputs);
        if int8_values == 0 {
            return Ok(());
        }
        Err(EvaluateError::NonFinite {
            path: self.quantizer.model().path.clone(),
            images: self.probe.samples() as u64,
            fp32_values: 0,
            fp32_images: 0,
            int8_values,
            int8_images,
        })
    }

    /// The outputs of a model variant on one device.
    fn outputs_on(
        &self,
        proto: &graph::proto::ModelProto,
        device: runtime::Device,
    ) -> Result<Vec<Vec<f32>>, EvaluateError> {
        Ok(self.probe.outputs_on(proto, device, usize::MAX)?)
    }

    /// The variant's effect: over all images with one sample shape; with several (a recipe's sizes, `.npz`
    /// samples of several shapes) each measure is the worst over the shapes, so a node's effect is what it
    /// does at the size it hurts most and a budget holds only where it holds at every size.
    fn effect(&self, variant: &[Vec<f32>]) -> Result<Effect, EvaluateError> {
        let effects = self
            .shape_groups
            .iter()
            .map(|members| self.effect_over(variant, members))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(worst_effect(effects))
    }

    /// [`Evaluator::effect`] over the probe batches `members`.
    fn effect_over(&self, variant: &[Vec<f32>], members: &[usize]) -> Result<Effect, EvaluateError> {
        let (mut right, mut right32, mut labelled, mut kl) = (0usize, 0usize, 0usize, 0f64);
        let mut fidelity = quantizer::measure::OutputFidelity::default();
        let (batches, reference) = (self.probe.batches(), self.probe.reference());
        for &m in members {
            let (batch, a, b) = (&batches[m], &reference[m], &variant[m]);
            let width = a.len() / batch.items.len().max(1);
            for ((ra, rb), item) in a.chunks(width.max(1)).zip(b.chunks(width.max(1))).zip(&batch.items) {
                let (sa, sb) = (self.classifier.scores(ra), self.classifier.scores(rb));
                let (pa, pb) = (argmax(&sa), argmax(&sb));
                if let Some(label) = item.label {
                    labelled += 1;
                    right += (pb == label) as usize;
                    right32 += (pa == label) as usize;
                }
                fidelity.add(ra, rb, pa, pb);
                if let Classifier::Logits = self.classifier {
                    let (p, q) = (softmax(ra), softmax(rb));
                    kl += p
                        .iter()
                        .zip(&q)
                        .filter(|(p, _)| **p > 0.0)
                        .map(|(p, q)| p * (p / q.max(1e-300)).ln())
                        .sum::<f64>();
                }
            }
        }
        let f = fidelity.finish().map_err(crate::compare::unmeasured(&self.quantizer.model().path))?;
        let n = f.images as f64;
        let share = |k: usize| (labelled > 0).then(|| k as f64 / labelled as f64);
        Ok(Effect {
            top1: share(right),
            top1_delta_pp: (labelled > 0).then(|| 100.0 * (right as f64 - right32 as f64) / labelled as f64),
            agreement: f.agreement,
            divergence: if self.classifier.is_embedding() { 1.0 - f.cosine_mean } else { kl / n },
            cosine_mean: f.cosine_mean,
            sqnr_db: f.sqnr_db,
        })
    }

    fn variant(&self, decisions: &[Decision], amax: &HashMap<String, f32>) -> Result<Effect, EvaluateError> {
        self.variant_with(decisions, amax, &self.scheme.weight_clip)
    }

    /// The INT8 model of `decisions` with activation ranges `amax` and weight clips `clips`.
    fn build(
        &self,
        decisions: &[Decision],
        amax: &HashMap<String, f32>,
        clips: &WeightClips,
    ) -> Result<graph::proto::ModelProto, EvaluateError> {
        Ok(self.quantizer.build(decisions, &self.scheme.placement, amax, clips)?.0)
    }

    /// [`Evaluator::variant`] on one device.
    fn variant_on(
        &self,
        decisions: &[Decision],
        amax: &HashMap<String, f32>,
        device: runtime::Device,
    ) -> Result<Effect, EvaluateError> {
        self.measure(&self.build(decisions, amax, &self.scheme.weight_clip)?, device)
    }

    /// [`Evaluator::variant`] with other weight clips.
    fn variant_with(
        &self,
        decisions: &[Decision],
        amax: &HashMap<String, f32>,
        clips: &WeightClips,
    ) -> Result<Effect, EvaluateError> {
        self.measure(&self.build(decisions, amax, clips)?, self.devices[0])
    }

    /// The effect of a built INT8 variant on one device.
    fn measure(&self, proto: &graph::proto::ModelProto, device: runtime::Device) -> Result<Effect, EvaluateError> {
        let outputs = self.outputs_on(proto, device)?;
        self.check_finite(&outputs)?;
        self.effect(&outputs)
    }
}

/// For each tensor the INT8 configuration quantizes (the image and attention probabilities excepted: they
/// always use max), the
/// method whose amax, with every other tensor at `method`, gives the smallest output divergence. Ties keep
/// the earlier method in entropy, mse, percentile, max order.
fn method_choices(
    ev: &Evaluator,
    decisions: &[Decision],
    hist: &HistFile,
    method: Method,
    base: &Effect,
) -> Result<Vec<MethodChoice>, EvaluateError> {
    let (model, scheme) = (ev.quantizer.model(), &ev.scheme);
    let graph = &model.proto.graph;
    let amax = ev.quantizer.amax(scheme);
    let scale_type = ev.quantizer.float_type(&scheme.placement);
    // Only the activations' scales are read here: no weights worth keeping.
    let memo = quantizer::qdq::WeightMemo::default();
    let (_, summary) =
        quantizer::qdq::insert_qdq(model, decisions, &scheme.placement, &amax, &scheme.weight_clip, scale_type, &memo)?;
    let image = analyze::max_calibrated(graph);
    let mut out = Vec::new();
    for (tensor, ..) in &summary.activations {
        // The image always uses max: nothing to choose.
        let Some(record) = hist.tensor(tensor).filter(|t| t.producer.is_some() && !image.contains(&t.name)) else {
            continue;
        };
        let mut tried = Vec::new();
        for m in Method::ALL_DEFAULT {
            let divergence = if m == method {
                base.divergence
            } else {
                let mut a = amax.clone();
                a.insert(tensor.clone(), scales::amax(&record.stats, m));
                ev.variant(decisions, &a)?.divergence
            };
            tried.push((m.name(), divergence));
        }
        let best = tried.iter().fold(&tried[0], |b, t| if t.1 < b.1 { t } else { b });
        out.push(MethodChoice { tensor: tensor.clone(), method: best.0.clone(), divergence_by_method: tried.clone() });
    }
    Ok(out)
}

/// For each INT8 node with a weight: the full INT8 configuration with that node's weights MSE-clipped (the
/// others as configured) against the configuration itself; `mse` only when it lowers the output divergence.
fn clip_choices(
    ev: &Evaluator,
    decisions: &[Decision],
    amax: &HashMap<String, f32>,
    base: &Effect,
) -> Result<Vec<WeightClipChoice>, EvaluateError> {
    let graph = &ev.quantizer.model().proto.graph;
    let index = graph::GraphIndex::new(graph);
    let mut out = Vec::new();
    for d in decisions.iter().filter(|d| d.int8) {
        let Some(node) = graph.node.iter().find(|n| n.name == d.node) else { continue };
        if placement::weight_slot(node, graph, &index).is_none() {
            continue;
        }
        let mut tried = vec![(ev.scheme.weight_clip.of(&d.node), base.divergence)];
        let other = if tried[0].0 == WeightClip::Mse { WeightClip::Max } else { WeightClip::Mse };
        let mut clips = ev.scheme.weight_clip.clone();
        clips.per_node.insert(d.node.clone(), other);
        tried.push((other, ev.variant_with(decisions, amax, &clips)?.divergence));
        tried.sort_by_key(|(c, _)| *c != WeightClip::Max);
        let best = if tried[1].1 < tried[0].1 { tried[1].0 } else { tried[0].0 };
        out.push(WeightClipChoice {
            node: d.node.clone(),
            clip: best.name().into(),
            divergence_by_clip: tried.iter().map(|(c, d)| (c.name().to_string(), *d)).collect(),
        });
    }
    Ok(out)
}

/// Measures every node that the INT8 configuration puts in INT8, on the inputs' images. With
/// `choose_methods`, also picks each quantized tensor's best scale method.
pub fn sensitivity(
    inputs: &SensitivityInputs,
    choose_methods: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SensitivityReport, EvaluateError> {
    let start = std::time::Instant::now();
    let quantizer = Quantizer::load(&inputs.model, inputs.hist.clone())?;
    let ev = Evaluator::new(&quantizer, inputs)?;
    measure_nodes(&ev, inputs, choose_methods, progress, start)
}

fn measure_nodes(
    ev: &Evaluator,
    inputs: &SensitivityInputs,
    choose_methods: bool,
    progress: &mut dyn FnMut(usize, usize),
    start: std::time::Instant,
) -> Result<SensitivityReport, EvaluateError> {
    let (model, hist, scheme) = (ev.quantizer.model(), &inputs.hist, &ev.scheme);
    let method = scheme.method;
    let amax = ev.quantizer.amax(scheme);
    let decisions = decide(&model.proto.graph, &scheme.precision, &scheme.placement, "precision")
        .map_err(quantizer::QuantizeError::from)?;
    let fp32_top1 = ev.effect(ev.probe.reference())?.top1;
    // The full configuration is built here once: its graph also says how every variant is evaluated.
    let full = ev.build(&decisions, &amax, &scheme.weight_clip)?;
    let int8 = ev.measure(&full, ev.devices[0])?;
    let level = |g: &graph::proto::GraphProto| crate::compare::graph_optimization_for(g).name().to_string();
    let evaluation = SensitivityEvaluation { fp32: level(&model.proto.graph), int8: level(&full.graph) };
    drop(full);

    let flops = ev.quantizer.flops()?;
    let total_flops: f64 = flops.values().sum();
    let targets: Vec<&Decision> = decisions.iter().filter(|d| d.int8).collect();
    let measure = |target: &Decision, device: runtime::Device| -> Result<NodeSensitivity, EvaluateError> {
        let only: Vec<Decision> =
            decisions.iter().map(|d| Decision { int8: d.node == target.node, ..d.clone() }).collect();
        let all_but: Vec<Decision> =
            decisions.iter().map(|d| Decision { int8: d.int8 && d.node != target.node, ..d.clone() }).collect();
        Ok(NodeSensitivity {
            node: target.node.clone(),
            op: target.op.clone(),
            flop_share: flops.get(&target.node).map_or(0.0, |f| f / total_flops.max(1.0)),
            alone_int8: ev.variant_on(&only, &amax, device)?,
            alone_float: ev.variant_on(&all_but, &amax, device)?,
        })
    };
    let mut nodes = Vec::new();
    if let [device] = ev.devices {
        for (i, target) in targets.iter().enumerate() {
            nodes.push(measure(target, *device)?);
            progress(i + 1, targets.len());
        }
    } else {
        // Nodes dealt to the devices in turn, each on a thread of its own; the ranking below sorts them.
        let (tx, rx) = std::sync::mpsc::channel::<Result<NodeSensitivity, EvaluateError>>();
        std::thread::scope(|scope| {
            for (d, &device) in ev.devices.iter().enumerate() {
                let (tx, targets, measure) = (tx.clone(), &targets, &measure);
                scope.spawn(move || {
                    for target in targets.iter().skip(d).step_by(ev.devices.len()) {
                        let result = measure(target, device);
                        let failed = result.is_err();
                        if tx.send(result).is_err() || failed {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for result in rx {
                nodes.push(result?);
                progress(nodes.len(), targets.len());
            }
            Ok::<(), EvaluateError>(())
        })?;
        if nodes.len() != targets.len() {
            return Err(EvaluateError::Model {
                path: model.path.clone(),
                message: format!("{} of {} nodes came back from the devices", nodes.len(), targets.len()),
            });
        }
    }
    nodes.sort_by(|a, b| b.alone_int8.divergence.total_cmp(&a.alone_int8.divergence).then(a.node.cmp(&b.node)));
    let methods = if choose_methods { method_choices(ev, &decisions, hist, method, &int8)? } else { Vec::new() };
    let weight_clips = if choose_methods { clip_choices(ev, &decisions, &amax, &int8)? } else { Vec::new() };
    Ok(SensitivityReport {
        images: ev.probe.batches().iter().map(|b| b.items.len()).sum(),
        method: method.name(),
        fp32_top1,
        int8,
        nodes,
        methods,
        weight_clips,
        evaluation,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The outcome of the automatic precision search.
#[derive(Debug, Clone, Serialize)]
pub struct AutoPrecision {
    /// The precision file to use: the input one plus the nodes the search denied.
    pub precision: PrecisionFile,
    /// Nodes denied, in the order the search added them.
    pub denied: Vec<String>,
    /// Effect of the chosen configuration on the search subset.
    pub search: Effect,
    /// Whether the budget was met on the search subset.
    pub met: bool,
    /// Share of GEMM/Conv FLOPs left in INT8.
    pub int8_flop_share: f64,
    /// The measurement the search ranked by.
    pub sensitivity: SensitivityReport,
    /// The scheme searched under (the `auto` choices made): the artifacts are built with it.
    #[serde(skip)]
    pub scheme: Scheme,
}

/// Greedy search for a small deny list meeting `budget` on the inputs' images: nodes are denied in order of
/// damage per FLOP when quantized alone (damage in the budget's own measure, so cheap, harmful nodes go first
/// and the INT8 FLOP share stays high), re-evaluating the whole configuration after each, until the budget
/// holds or every node is float.
pub fn auto_precision(
    inputs: &SensitivityInputs,
    budget: &Budget,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<AutoPrecision, EvaluateError> {
    let quantizer = Quantizer::load(&inputs.model, inputs.hist.clone())?;
    auto_precision_with(&quantizer, inputs, budget, progress)
}

/// [`auto_precision`] on a model prepared already (`inputs.model` and `inputs.hist` are `quantizer`'s).
pub fn auto_precision_with(
    quantizer: &Quantizer,
    inputs: &SensitivityInputs,
    budget: &Budget,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<AutoPrecision, EvaluateError> {
    budget.check(&inputs.dataset)?;
    let start = std::time::Instant::now();
    let model = quantizer.model();
    let ev = Evaluator::new(quantizer, inputs)?;
    let images = ev.probe.batches().iter().map(|b| b.items.len() as u64).sum();
    let report = measure_nodes(&ev, inputs, false, progress, start)?;
    let base = &ev.scheme.precision;
    let amax = quantizer.amax(&ev.scheme);

    let mut order: Vec<&NodeSensitivity> = report.nodes.iter().collect();
    let damage_per_flop = |n: &NodeSensitivity| budget.damage(&n.alone_int8) / n.flop_share.max(1e-9);
    order.sort_by(|a, b| damage_per_flop(b).total_cmp(&damage_per_flop(a)).then(a.node.cmp(&b.node)));
    let mut precision = base.clone();
    let mut denied = Vec::new();
    let mut effect = report.int8.clone();
    for next in std::iter::once(None).chain(order.iter().map(Some)) {
        if let Some(n) = next {
            denied.push(n.node.clone());
            precision.deny.nodes.push(n.node.clone());
            let decisions = decide(&model.proto.graph, &precision, &ev.scheme.placement, "autoprecision")
                .map_err(quantizer::QuantizeError::from)?;
            effect = ev.variant(&decisions, &amax)?;
        }
        if budget.met(&effect, images) {
            break;
        }
    }
    let met = budget.met(&effect, images);
    let int8_flop_share = report.nodes.iter().filter(|n| !denied.contains(&n.node)).map(|n| n.flop_share).sum::<f64>();
    let scheme = ev.scheme.clone();
    Ok(AutoPrecision { precision, denied, search: effect, met, int8_flop_share, sensitivity: report, scheme })
}

/// One row of `sensitivity.csv`.
#[derive(Serialize)]
struct CsvRow<'a> {
    rank: usize,
    node: &'a str,
    op: &'a str,
    flop_share: f64,
    alone_int8_top1_delta_pp: Option<f64>,
    alone_int8_agreement: f64,
    alone_int8_divergence: f64,
    alone_int8_cosine: f64,
    alone_int8_sqnr_db: f64,
    alone_float_top1_delta_pp: Option<f64>,
    alone_float_agreement: f64,
    alone_float_divergence: f64,
    alone_float_cosine: f64,
    alone_float_sqnr_db: f64,
}

impl SensitivityReport {
    /// `sensitivity.csv`: the ranking, one node per row, most sensitive first.
    pub fn to_csv(&self) -> Result<Vec<u8>, EvaluateError> {
        let mut w = csv::Writer::from_writer(Vec::new());
        for (i, n) in self.nodes.iter().enumerate() {
            w.serialize(CsvRow {
                rank: i + 1,
                node: &safe_io::csv_text(&n.node),
                op: &safe_io::csv_text(&n.op),
                flop_share: n.flop_share,
                alone_int8_top1_delta_pp: n.alone_int8.top1_delta_pp,
                alone_int8_agreement: n.alone_int8.agreement,
                alone_int8_divergence: n.alone_int8.divergence,
                alone_int8_cosine: n.alone_int8.cosine_mean,
                alone_int8_sqnr_db: n.alone_int8.sqnr_db,
                alone_float_top1_delta_pp: n.alone_float.top1_delta_pp,
                alone_float_agreement: n.alone_float.agreement,
                alone_float_divergence: n.alone_float.divergence,
                alone_float_cosine: n.alone_float.cosine_mean,
                alone_float_sqnr_db: n.alone_float.sqnr_db,
            })?;
        }
        w.into_inner().map_err(|e| EvaluateError::Csv(e.into_error().into()))
    }

    /// Writes `sensitivity.json` and `sensitivity.csv` as a set that replaces `dir` whole.
    pub fn write(&self, dir: &Path) -> Result<(), EvaluateError> {
        let stage = safe_io::OutputDir::new(dir)?;
        safe_io::write_atomic(&stage.path().join("sensitivity.json"), &crate::pretty_json(self)?)?;
        safe_io::write_atomic(&stage.path().join("sensitivity.csv"), &self.to_csv()?)?;
        Ok(stage.commit()?)
    }
}

/// Each tensor's chosen method from a sensitivity.json written with `--choose-methods` (for `--method auto`).
pub fn load_method_choices(path: &Path) -> Result<MethodChoices, EvaluateError> {
    load_method_choices_if_any(path)?.ok_or_else(|| EvaluateError::Input {
        path: path.into(),
        message: "no per-tensor methods; run `int8kit sensitivity --choose-methods`".into(),
    })
}

/// [`load_method_choices`], or `None` for a sensitivity.json that is a ranking only (written without
/// `--choose-methods`): `validate` charts such a file and makes its own choices.
pub fn load_method_choices_if_any(path: &Path) -> Result<Option<MethodChoices>, EvaluateError> {
    #[derive(serde::Deserialize)]
    struct Choices {
        #[serde(default)]
        methods: Vec<MethodChoice>,
        #[serde(default)]
        weight_clips: Vec<WeightClipChoice>,
    }
    let bad = |message: String| EvaluateError::Input { path: path.into(), message };
    let text = safe_io::read_to_string(path, safe_io::limits::JSON, "a sensitivity.json")?;
    let choices: Choices = serde_json::from_str(&text).map_err(|e| bad(format!("not a sensitivity.json: {e}")))?;
    if choices.methods.is_empty() && choices.weight_clips.is_empty() {
        return Ok(None);
    }
    let methods = choices
        .methods
        .into_iter()
        .map(|c| {
            let method = c.method.parse::<Method>().map_err(|e| bad(format!("tensor {}: {e}", c.tensor)))?;
            Ok((c.tensor, method))
        })
        .collect::<Result<_, EvaluateError>>()?;
    let weight_clips = choices
        .weight_clips
        .into_iter()
        .map(|c| Ok((c.clip.parse::<WeightClip>().map_err(|e| bad(format!("node {}: {e}", c.node)))?, c.node)))
        .map(|r: Result<_, EvaluateError>| r.map(|(clip, node)| (node, clip)))
        .collect::<Result<_, EvaluateError>>()?;
    Ok(Some(MethodChoices { methods, weight_clips }))
}

/// What `--method auto` / `--weight-clip auto` read from a sensitivity.json.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodChoices {
    /// Tensor -> scale method.
    pub methods: std::collections::BTreeMap<String, Method>,
    /// Node -> weight clip.
    pub weight_clips: std::collections::BTreeMap<String, WeightClip>,
}
