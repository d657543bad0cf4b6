//! Per-node sensitivity: the effect on accuracy and output fidelity of quantizing one node alone (all others
//! float), and of keeping one node alone in float (all others INT8). FP32 outputs are computed once and
//! reused; every variant is a Q/DQ model built in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use analyze::placement::{decide, Decision, PlacementOptions, PrecisionFile};
use analyze::scales::{self, Method};
use datasets::{Batch, BatchStream, Dataset, Recipe, StreamOptions};
use graph::Model;
use histograms::HistFile;
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
    /// Preprocessing.
    pub recipe: Recipe,
    /// Logits or zero-shot prototypes.
    pub classifier: Classifier,
    /// Scale method for every activation.
    pub method: Method,
    /// The INT8 configuration (default lists when empty).
    pub precision: PrecisionFile,
    /// Where the variants run.
    pub placement: runtime::Placement,
    /// Target runtime and attention default of the Q/DQ placement.
    pub qdq: PlacementOptions,
}

/// What one model variant does to the evaluation subset, against FP32.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Effect {
    /// Top-1 of the variant (share).
    pub top1: f64,
    /// INT8-variant Top-1 minus FP32 Top-1, percentage points.
    pub top1_delta_pp: f64,
    /// Share of images with the FP32 prediction.
    pub agreement: f64,
    /// Mean KL(softmax FP32 || softmax variant) for classifiers; mean 1 - cosine for embeddings.
    pub divergence: f64,
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

/// The sensitivity of every INT8 node (sensitivity.json).
#[derive(Debug, Clone, Serialize)]
pub struct SensitivityReport {
    /// Images evaluated.
    pub images: usize,
    /// Scale method of the INT8 configuration.
    pub method: String,
    /// FP32 Top-1 (share).
    pub fp32_top1: f64,
    /// The full INT8 configuration (the precision file's, default lists if none).
    pub int8: Effect,
    /// Most sensitive first (largest divergence when quantized alone).
    pub nodes: Vec<NodeSensitivity>,
    /// Per quantized tensor, the method giving the best output fidelity (empty unless asked for).
    pub methods: Vec<MethodChoice>,
    /// Wall time of the measurement.
    pub seconds: f64,
}

struct Evaluator<'a> {
    model: &'a Model,
    batches: Vec<Batch>,
    fp32: Vec<Vec<f32>>,
    input: String,
    output: String,
    classifier: &'a Classifier,
    placement: runtime::Placement,
    qdq: PlacementOptions,
    hist: &'a HistFile,
}

fn softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = v.iter().map(|x| (*x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

impl<'a> Evaluator<'a> {
    /// Decodes the evaluation images once and runs the FP32 model over them once.
    fn new(model: &'a Model, inputs: &'a SensitivityInputs) -> Result<Evaluator<'a>, EvaluateError> {
        let (dataset, recipe) = (&inputs.dataset, &inputs.recipe);
        let input = model.resolve_input(recipe.name.as_deref())?.name.clone();
        let no_output = || EvaluateError::Model { path: model.path.clone(), message: "the model has no output".into() };
        let output = model.proto.graph.output.first().ok_or_else(no_output)?.name.clone();
        let batch_size = model.batch_size_for(&input, 100, dataset.len())?;
        let batches = BatchStream::new(dataset, recipe, StreamOptions { batch_size, ..Default::default() })
            .collect::<Result<Vec<_>, _>>()?;
        if batches.is_empty() {
            return Err(EvaluateError::NoImages { path: dataset.root.clone() });
        }
        let (classifier, placement) = (&inputs.classifier, inputs.placement);
        let mut ev = Evaluator {
            model,
            batches,
            fp32: Vec::new(),
            input,
            output,
            classifier,
            placement,
            qdq: inputs.qdq,
            hist: &inputs.hist,
        };
        ev.fp32 = ev.outputs(&model.to_bytes()?)?;
        ev.check_finite(&ev.fp32, true)?;
        for (batch, rows) in ev.batches.iter().zip(&ev.fp32) {
            let width = rows.len() / batch.items.len().max(1);
            for item in &batch.items {
                classifier.check(width, item)?;
            }
        }
        Ok(ev)
    }

    /// NaN/Inf outputs (of FP32, or of an INT8 variant) fail the run instead of scoring as a divergence.
    fn check_finite(&self, outputs: &[Vec<f32>], fp32: bool) -> Result<(), EvaluateError> {
        let (mut values, mut images) = (0u64, 0u64);
        for (batch, rows) in self.batches.iter().zip(outputs) {
            let width = (rows.len() / batch.items.len().max(1)).max(1);
            for row in rows.chunks(width) {
                let bad = row.iter().filter(|v| !v.is_finite()).count() as u64;
                values += bad;
                images += (bad > 0) as u64;
            }
        }
        if values == 0 {
            return Ok(());
        }
        let total = self.batches.iter().map(|b| b.items.len() as u64).sum();
        let (fp32_values, fp32_images, int8_values, int8_images) =
            if fp32 { (values, images, 0, 0) } else { (0, 0, values, images) };
        Err(EvaluateError::NonFinite {
            path: self.model.path.clone(),
            images: total,
            fp32_values,
            fp32_images,
            int8_values,
            int8_images,
        })
    }

    fn outputs(&self, bytes: &[u8]) -> Result<Vec<Vec<f32>>, EvaluateError> {
        let label = self.model.path.display().to_string();
        let mut cfg = runtime::SessionConfig::new(&label).place(self.placement);
        cfg.external_data_dir = Some(self.model.dir.clone());
        let mut session = runtime::session_from_bytes(bytes, &cfg)?;
        let out = std::slice::from_ref(&self.output);
        self.batches
            .iter()
            .map(|b| {
                runtime::run_f32(&mut session, &label, &self.input, &b.shape, &b.data, out, |o| o[0].to_vec())
                    .map_err(Into::into)
            })
            .collect()
    }

    fn effect(&self, variant: &[Vec<f32>]) -> Effect {
        let (mut right, mut right32, mut agree, mut div, mut n) = (0usize, 0usize, 0usize, 0f64, 0usize);
        for ((batch, a), b) in self.batches.iter().zip(&self.fp32).zip(variant) {
            let width = a.len() / batch.items.len().max(1);
            for ((ra, rb), item) in a.chunks(width.max(1)).zip(b.chunks(width.max(1))).zip(&batch.items) {
                let (sa, sb) = (self.classifier.scores(ra), self.classifier.scores(rb));
                let (pa, pb) = (argmax(&sa), argmax(&sb));
                right += (Some(pb) == item.label) as usize;
                right32 += (Some(pa) == item.label) as usize;
                agree += (pa == pb) as usize;
                div += match self.classifier {
                    Classifier::ZeroShot { .. } => {
                        let dot: f64 = ra.iter().zip(rb).map(|(x, y)| *x as f64 * *y as f64).sum();
                        let na = ra.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                        let nb = rb.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                        1.0 - if na > 0.0 && nb > 0.0 { dot / (na * nb) } else { 1.0 }
                    }
                    Classifier::Logits => {
                        let (p, q) = (softmax(ra), softmax(rb));
                        p.iter()
                            .zip(&q)
                            .filter(|(p, _)| **p > 0.0)
                            .map(|(p, q)| p * (p / q.max(1e-300)).ln())
                            .sum::<f64>()
                    }
                };
                n += 1;
            }
        }
        let n = n.max(1) as f64;
        Effect {
            top1: right as f64 / n,
            top1_delta_pp: 100.0 * (right as f64 - right32 as f64) / n,
            agreement: agree as f64 / n,
            divergence: div / n,
        }
    }

    fn variant(&self, decisions: &[Decision], amax: &HashMap<String, f32>) -> Result<Effect, EvaluateError> {
        let (proto, _) = analyze::build_qdq(self.model, decisions, &self.qdq, amax, self.hist)?;
        let bytes = graph::proto::Message::write_to_bytes(&proto).map_err(graph::GraphError::Encode)?;
        let outputs = self.outputs(&bytes)?;
        self.check_finite(&outputs, false)?;
        Ok(self.effect(&outputs))
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
    let graph = &ev.model.proto.graph;
    let amax = analyze::activation_amax(hist, graph, method, &Default::default());
    let (_, summary) = analyze::qdq::insert_qdq(ev.model, decisions, &ev.qdq, &amax)?;
    let image = analyze::max_calibrated(graph);
    let mut out = Vec::new();
    for (tensor, _) in &summary.activations {
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

/// Measures every node that the INT8 configuration puts in INT8, on the inputs' images. With
/// `choose_methods`, also picks each quantized tensor's best scale method.
pub fn sensitivity(
    inputs: &SensitivityInputs,
    choose_methods: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SensitivityReport, EvaluateError> {
    let start = std::time::Instant::now();
    let mut model = Model::load(&inputs.model)?;
    model.check_not_quantized()?;
    model.normalize_to_float32()?;
    let ev = Evaluator::new(&model, inputs)?;
    measure_nodes(&ev, inputs, choose_methods, progress, start)
}

fn measure_nodes(
    ev: &Evaluator,
    inputs: &SensitivityInputs,
    choose_methods: bool,
    progress: &mut dyn FnMut(usize, usize),
    start: std::time::Instant,
) -> Result<SensitivityReport, EvaluateError> {
    let (model, hist, recipe, method, precision) =
        (ev.model, &inputs.hist, &inputs.recipe, inputs.method, &inputs.precision);
    let amax = analyze::activation_amax(hist, &model.proto.graph, method, &Default::default());
    let decisions =
        decide(&model.proto.graph, precision, &inputs.qdq, "precision").map_err(analyze::AnalyzeError::from)?;
    let fp32_top1 = ev.effect(&ev.fp32).top1;
    let int8 = ev.variant(&decisions, &amax)?;

    let flops = analyze::flops::gemm_flops(model, recipe, &ev.input)?;
    let total_flops: f64 = flops.values().sum();
    let targets: Vec<&Decision> = decisions.iter().filter(|d| d.int8).collect();
    let mut nodes = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let only: Vec<Decision> =
            decisions.iter().map(|d| Decision { int8: d.node == target.node, ..d.clone() }).collect();
        let all_but: Vec<Decision> =
            decisions.iter().map(|d| Decision { int8: d.int8 && d.node != target.node, ..d.clone() }).collect();
        nodes.push(NodeSensitivity {
            node: target.node.clone(),
            op: target.op.clone(),
            flop_share: flops.get(&target.node).map_or(0.0, |f| f / total_flops.max(1.0)),
            alone_int8: ev.variant(&only, &amax)?,
            alone_float: ev.variant(&all_but, &amax)?,
        });
        progress(i + 1, targets.len());
    }
    nodes.sort_by(|a, b| b.alone_int8.divergence.total_cmp(&a.alone_int8.divergence).then(a.node.cmp(&b.node)));
    let methods = if choose_methods { method_choices(ev, &decisions, hist, method, &int8)? } else { Vec::new() };
    Ok(SensitivityReport {
        images: ev.batches.iter().map(|b| b.items.len()).sum(),
        method: method.name(),
        fp32_top1,
        int8,
        nodes,
        methods,
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
}

/// Greedy search for a small deny list meeting `max_top1_drop` (pp) on the inputs' images: nodes are denied
/// in order of damage per FLOP when quantized alone (so cheap, harmful nodes go first and the INT8 FLOP share
/// stays high), re-evaluating the whole configuration after each, until the budget holds or every node is
/// float.
pub fn auto_precision(
    inputs: &SensitivityInputs,
    max_top1_drop: f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<AutoPrecision, EvaluateError> {
    crate::check_limit("--max-top1-drop", max_top1_drop)?;
    let start = std::time::Instant::now();
    let mut model = Model::load(&inputs.model)?;
    model.check_not_quantized()?;
    model.normalize_to_float32()?;
    let ev = Evaluator::new(&model, inputs)?;
    let report = measure_nodes(&ev, inputs, false, progress, start)?;
    let (hist, method, base) = (&inputs.hist, inputs.method, &inputs.precision);
    let amax = analyze::activation_amax(hist, &model.proto.graph, method, &Default::default());

    let mut order: Vec<&NodeSensitivity> = report.nodes.iter().collect();
    let damage_per_flop = |n: &NodeSensitivity| n.alone_int8.divergence / n.flop_share.max(1e-9);
    order.sort_by(|a, b| damage_per_flop(b).total_cmp(&damage_per_flop(a)).then(a.node.cmp(&b.node)));
    let mut precision = base.clone();
    let mut denied = Vec::new();
    let mut effect = report.int8.clone();
    for next in std::iter::once(None).chain(order.iter().map(Some)) {
        if let Some(n) = next {
            denied.push(n.node.clone());
            precision.deny.nodes.push(n.node.clone());
            let decisions = decide(&model.proto.graph, &precision, &inputs.qdq, "autoprecision")
                .map_err(analyze::AnalyzeError::from)?;
            effect = ev.variant(&decisions, &amax)?;
        }
        if -effect.top1_delta_pp <= max_top1_drop {
            break;
        }
    }
    let met = -effect.top1_delta_pp <= max_top1_drop;
    let int8_flop_share = report.nodes.iter().filter(|n| !denied.contains(&n.node)).map(|n| n.flop_share).sum::<f64>();
    Ok(AutoPrecision { precision, denied, search: effect, met, int8_flop_share, sensitivity: report })
}

/// One row of `sensitivity.csv`.
#[derive(Serialize)]
struct CsvRow<'a> {
    rank: usize,
    node: &'a str,
    op: &'a str,
    flop_share: f64,
    alone_int8_top1_delta_pp: f64,
    alone_int8_agreement: f64,
    alone_int8_divergence: f64,
    alone_float_top1_delta_pp: f64,
    alone_float_agreement: f64,
    alone_float_divergence: f64,
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
                alone_float_top1_delta_pp: n.alone_float.top1_delta_pp,
                alone_float_agreement: n.alone_float.agreement,
                alone_float_divergence: n.alone_float.divergence,
            })?;
        }
        w.into_inner().map_err(|e| EvaluateError::Csv(e.into_error().into()))
    }

    /// Writes `sensitivity.json` and `sensitivity.csv` as a set that replaces `dir` whole.
    pub fn write(&self, dir: &Path) -> Result<(), EvaluateError> {
        let stage = graph::OutputDir::new(dir)?;
        graph::write_atomic(&stage.path().join("sensitivity.json"), &crate::pretty_json(self)?)?;
        graph::write_atomic(&stage.path().join("sensitivity.csv"), &self.to_csv()?)?;
        Ok(stage.commit()?)
    }
}

/// Each tensor's chosen method from a sensitivity.json written with `--choose-methods` (for `--method auto`).
pub fn load_method_choices(path: &Path) -> Result<std::collections::BTreeMap<String, Method>, EvaluateError> {
    #[derive(serde::Deserialize)]
    struct Choices {
        methods: Vec<MethodChoice>,
    }
    let bad = |message: String| EvaluateError::Input { path: path.into(), message };
    let text = safe_io::read_to_string(path, safe_io::limits::JSON, "a sensitivity.json")?;
    let choices: Choices = serde_json::from_str(&text).map_err(|e| bad(format!("not a sensitivity.json: {e}")))?;
    if choices.methods.is_empty() {
        return Err(bad("no per-tensor methods; run `int8kit sensitivity --choose-methods`".into()));
    }
    choices
        .methods
        .into_iter()
        .map(|c| {
            let method = c.method.parse::<Method>().map_err(|e| bad(format!("tensor {}: {e}", c.tensor)))?;
            Ok((c.tensor, method))
        })
        .collect()
}
