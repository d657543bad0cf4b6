//! Choices by measurement: the `auto` scale method, attention precision, residual precision and float type.
//! From one calibration, candidate INT8 models are built in memory and measured on the held-back samples
//! against the float model's outputs (computed once, [`Probe`]); the best output fidelity wins, and among
//! candidates that measure no worse than it beyond the measurement's own uncertainty ([`TOLERANCE_DB`], or
//! one standard error of the paired difference, whichever is larger) the one with more INT8 and FP16 (more
//! of TensorRT's fast kernels): Breiman's one-standard-error rule, with the simpler model read as the faster
//! one.
//!
//! Fidelity here is the mean over the samples of each sample's output SQNR in dB, not the SQNR of all samples
//! pooled: that is set by the few samples with the largest outputs (on 25 held-back crops two candidates 10 dB
//! apart on other photos measured equal: the DINOv2 ViT-S/14, BENCHMARKS.md). Resampling the zoo's held-back
//! crops, the mean of per-sample dB picked closest to the best combination on other photos; averaging
//! per-sample noise ratios instead (which weighs the worst samples more) did no better than the pooled SQNR.
//!
//! The axes are searched together, not one at a time (on the ViT-S/14, MSE scales and float attention each
//! gain little alone and 10.8 dB together), coarse to fine: every scale method with every attention
//! precision in FP32 float parts (the cheapest session) on a quarter of the samples (at least 32; a smaller
//! probe ranks on all of them), then the best two of those on all of them with the residual input of Adds
//! after an INT8 GEMM/Conv INT8 and float (where the model has such Adds), and the best two of these in every
//! float type. Candidates that build the same model are measured once (unless two of one stage are measured at
//! the same time: `PARALLEL_TRIALS`, more on many threads). The coarse stage starts with a first look at half
//! its samples, and a candidate far behind a stage's leader ([`DROP_STANDARD_ERRORS`]) is measured no further:
//! most of the search's time goes to candidates that cannot win.

use std::collections::HashMap;

use analyze::scales::Method;
use placement::{AttentionPrecision, FloatType, ResidualPrecision, Target};
use serde::Serialize;

use crate::measure::{Fidelity, ImageFidelity, Layout, Probe, Unmeasured};
use crate::{QuantizeError, Quantizer, Scheme};

/// Candidates whose mean per-sample SQNR is within this many dB of the best (or within one standard error of the
/// difference, when that is larger, up to [`MAX_TOLERANCE_DB`]) are counted equal, and the one with more INT8
/// (then FP16) wins among them: differences this small do not survive another set of photos.
pub const TOLERANCE_DB: f64 = 0.25;

/// The most measured fidelity auto gives up for speed, however noisy the measurement: on outputs whose
/// per-sample error varies widely (a detector's map over photos with and without text) one standard error
/// reached 7 dB, and the preference for FP16 then chose a candidate 1 dB below the best.
pub const MAX_TOLERANCE_DB: f64 = 0.5;

/// Candidates' outputs kept for the fine stage beyond the float reference's size: 256 MB of float32.
const CACHED_OUTPUTS_MAX_FLOATS: usize = 64 << 20;

/// A best mean per-sample SQNR below this on the held-back samples (the INT8 error about as large as the signal) is
/// said in the search's reason.
const LOW_FIDELITY_DB: f64 = 3.0;

/// A sample's output energy is counted as at least this share of the samples' mean when its SQNR is taken:
/// an output that is almost all zeros (a detector's map of a photo without text) would otherwise give minus
/// infinity and outweigh every other sample.
pub const SIGNAL_FLOOR: f64 = 0.01;

/// A sample's SQNR is counted as at most this many dB (and at least its negative): float32's own rounding
/// (2^-24) is 144 dB, so an output reproduced exactly (no noise) does not count as infinitely good.
pub const SQNR_MAX_DB: f64 = 140.0;

/// The fewest samples the coarse stage ranks candidates on.
const MIN_COARSE_SAMPLES: usize = 32;

/// The fewest samples of the coarse stage's first look ([`DROP_STANDARD_ERRORS`]).
const MIN_FIRST_SAMPLES: usize = 16;

/// Ranked candidates (method and attention precision) measured in every float type.
const FINE_CANDIDATES: usize = 2;

/// Candidates measured at once, each in a session of its share of the threads (at least one): on small models
/// a second intra-op thread gains nothing, two sessions at once halve the search. Two, not more: each session
/// holds a candidate model and its activations.
const PARALLEL_TRIALS: usize = 2;

/// Models with more weights than this (values of their initializers) measure one candidate at a time: a second
/// session would hold another copy of a large model (a ViT-L/14 has 304 million weights) against the memory
/// bounds `bench large` states, and runs that big are GEMM-bound, where intra-op threads already scale.
const PARALLEL_TRIALS_MAX_WEIGHTS: u64 = 64 << 20;

/// Models with more weight values than this give every candidate sessions of its own: an idle shared session
/// holds a copy of the model, and on models this large creating a session is a small share of a trial (on the
/// fixture ViT, 10 ms of a 16-sample trial's 40 ms).
const SHARED_SESSIONS_MAX_WEIGHTS: u64 = 16 << 20;

/// How many candidates to measure at once for a model of `weights` values.
fn parallel_trials(weights: u64) -> usize {
    if weights <= PARALLEL_TRIALS_MAX_WEIGHTS {
        PARALLEL_TRIALS
    } else {
        1
    }
}

/// What decides how many candidates [`Searcher::trials`] measures at once.
#[derive(Debug, Clone, Copy)]
struct TrialLoad {
    /// The model's [`parallel_trials`].
    parallel: usize,
    /// Candidates to measure.
    candidates: usize,
    /// Batches each candidate has left to measure, at least.
    new_batches: usize,
    /// Threads given.
    threads: usize,
    /// [`Probe::one_thread_sessions_max`]: `None` where a measurement runs in one session of all threads.
    one_thread_sessions_max: Option<usize>,
}

/// Candidates measured at once: the model's [`parallel_trials`], or more where one candidate's batches leave
/// threads idle. A measurement runs one one-thread session per batch (at most), so on 16 threads a first look
/// at 2 batches kept 4 cores busy with two candidates at once (the ViT-S/14's `quantize` took 2.9-3.3x the
/// FP32 pass on a 16-core Xeon, 1.5x on 2 cores). More at once, never more sessions than threads nor, together,
/// than one measurement's memory bound. Which candidates run together changes no measurement (each runs in
/// one-thread sessions on fixed batches), so the result is the same for any count.
fn trial_workers(load: TrialLoad) -> usize {
    let TrialLoad { parallel, candidates, new_batches, threads, one_thread_sessions_max } = load;
    let mut workers = parallel;
    if let (true, Some(max_sessions)) = (parallel > 1, one_thread_sessions_max) {
        let per_candidate = new_batches.min(threads).min(max_sessions).max(1);
        workers = workers.max((threads / per_candidate).min(max_sessions / per_candidate));
    }
    // Never more sessions at once than threads asked for: `--threads 1` runs one at a time.
    workers.min(candidates).min(threads).max(1)
}

/// A runner-up is not measured further (on more samples, or in other float types) when it trails the leader of
/// the same samples by more than [`MAX_TOLERANCE_DB`] plus this many standard errors of the paired gap: more
/// samples or FP16 float parts would have to close a gap that large for it to come within the tolerance of the
/// best, and each measurement it skips is another pass over the held-back samples (on the ViT-S/14 at 640
/// images, the runner-up's FP16 trial alone was 7 % of `quantize`'s time).
pub const DROP_STANDARD_ERRORS: f64 = 2.0;

/// Which of a scheme's choices are made by measurement rather than fixed (an explicit flag fixes its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct AutoChoices {
    /// The activations' scale method (entropy, percentile, MSE, max).
    pub method: bool,
    /// Attention MatMuls INT8 or float (models without any have nothing to choose).
    pub attention: bool,
    /// FP16 or FP32 float parts (TensorRT target; a model stored in FP16 stays FP16).
    pub float_type: bool,
    /// The residual input of Adds after an INT8 GEMM/Conv: INT8 or float (models without such Adds have
    /// nothing to choose).
    pub residual: bool,
}

impl AutoChoices {
    /// Every choice by measurement: `int8kit`'s default.
    pub const ALL: AutoChoices = AutoChoices { method: true, attention: true, float_type: true, residual: true };

    /// Whether anything is left to measure.
    pub fn any(self) -> bool {
        self.method || self.attention || self.float_type || self.residual
    }
}

/// One candidate measured.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Scale method.
    pub method: String,
    /// Attention MatMuls: `int8`, `float`, or `default` (the precision file's, then the target's).
    pub attention: &'static str,
    /// Float parts.
    pub float_type: &'static str,
    /// The residual input of Adds after an INT8 GEMM/Conv: `int8` or `float`.
    pub residual: &'static str,
    /// `first` (the coarse stage's first look), `coarse` (a quarter of the samples) or `fine` (all of them).
    pub stage: &'static str,
    /// The measurement; absent when the model's outputs were not finite numbers.
    pub fidelity: Option<Fidelity>,
    /// Why there is no measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// The mean over the samples of each sample's output SQNR (dB): what the candidates are ranked by (with
    /// one shape). Absent when the outputs were not finite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_sample_sqnr_db: Option<f64>,
    /// Fine stage: the standard error, in dB, of this candidate's mean gap to the best one (the paired
    /// per-sample differences, both measured on the same samples); 0 for the best.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_standard_error_db: Option<f64>,
    /// Samples of several shapes (a recipe's sizes): the mean per-sample SQNR of the shape it does worst on, what
    /// the candidates are then ranked by, so that the choice serves every size the engine will see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_shape_sqnr_db: Option<f64>,
    /// Seconds the trial took, building the model included (printed, not written: artifacts are the same
    /// bytes on every run).
    #[serde(skip)]
    pub seconds: f64,
}

/// What the search tried and why the winner won (ranges.json `search`).
#[derive(Debug, Clone, Serialize)]
pub struct SearchRecord {
    /// The axes searched (`method`, `attention`, `float_type`).
    pub axes: Vec<&'static str>,
    /// Samples of the coarse and of the fine stage.
    pub samples: (usize, usize),
    /// Samples of the coarse stage's first look (trials of stage `first`); absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_samples: Option<usize>,
    /// [`TOLERANCE_DB`].
    pub tolerance_db: f64,
    /// Every measurement, in the order made.
    pub trials: Vec<Trial>,
    /// Index into `trials` of the winner (a fine-stage trial).
    pub chosen: usize,
    /// Runners-up measured no further because they trailed the leader of the same samples by far.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_continued: Vec<NotContinued>,
    /// Why it won.
    pub reason: String,
    /// Seconds the search took (printed, not written: artifacts are the same bytes on every run).
    #[serde(skip)]
    pub seconds: f64,
}

/// A runner-up left out of a later stage ([`DROP_STANDARD_ERRORS`]).
#[derive(Debug, Clone, Serialize)]
pub struct NotContinued {
    /// Index into `trials` of its last measurement.
    pub trial: usize,
    /// Index into `trials` of the leader it was compared with (measured on the same samples).
    pub leader: usize,
    /// What it was left out of: `coarse` (the coarse stage, after the first look), `fine` (the fine stage),
    /// `variants` (the other residual precision and float types, when the ranking ran on every sample) or
    /// `float_type` (the other float types).
    pub skipped: &'static str,
    /// How far it trailed, in dB of the ranking score.
    pub behind_db: f64,
    /// The standard error of that gap (paired per-sample differences).
    pub gap_standard_error_db: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    method: Method,
    attention: Option<AttentionPrecision>,
    float_type: FloatType,
    residual: ResidualPrecision,
}

impl Candidate {
    fn attention_name(&self) -> &'static str {
        match self.attention {
            None => "default",
            Some(AttentionPrecision::Int8) => "int8",
            Some(AttentionPrecision::Float) => "float",
        }
    }

    /// Sort key of the preference among near-equal candidates: INT8 attention, then the INT8 residual input
    /// (the Add fuses), then FP16, the choices that make the engine faster. The scale method changes no speed,
    /// so it is left to the measurement.
    fn preference(&self) -> (u8, u8, u8) {
        let attention = (self.attention == Some(AttentionPrecision::Float)) as u8;
        let residual = (self.residual == ResidualPrecision::Float) as u8;
        let float = (self.float_type == FloatType::Fp32) as u8;
        (attention, residual, float)
    }

    /// The method order of [`Method::ALL_DEFAULT`]: the last tie-break, so that equal measurements are
    /// decided the same way every run.
    fn method_rank(&self) -> usize {
        Method::ALL_DEFAULT.iter().position(|m| *m == self.method).unwrap_or(usize::MAX)
    }

    fn scheme(&self, base: &Scheme) -> Scheme {
        let mut s = base.clone();
        s.method = self.method;
        s.placement.attention = self.attention;
        s.placement.float_type = self.float_type;
        s.placement.residual = self.residual;
        s
    }
}

/// One candidate's measurement with every sample's share, or why its outputs could not be measured.
type Measured = Result<(Fidelity, Vec<ImageFidelity>), String>;

/// What the search's trials share, read by every measuring thread: the quantizer that builds candidates, the
/// probe that measures them, and what earlier trials measured.
struct Lab<'a> {
    quantizer: &'a Quantizer,
    base: &'a Scheme,
    probe: &'a Probe,
    memo: std::sync::Mutex<Memo>,
    /// Idle sessions of candidates with their scales fed ([`crate::measure::fed_scales`]), by the hash of the
    /// model without its scales and the sessions' intra-op threads; `None`: every candidate gets sessions of its
    /// own ([`SHARED_SESSIONS_MAX_WEIGHTS`]).
    sessions: Option<SharedSessions>,
}

/// Idle sessions by the hash of the model they run and their intra-op threads ([`Lab::sessions`]).
type SharedSessions = std::sync::Mutex<HashMap<(u64, usize), Vec<runtime::Session>>>;

#[derive(Default)]
struct Memo {
    /// Measured models by their bytes' hash and the batches measured: one measurement per distinct model.
    seen: HashMap<(u64, usize), Measured>,
    /// The outputs each measured model gave, per batch, by its bytes' hash.
    outputs: HashMap<u64, Vec<Vec<f32>>>,
}

/// A candidate built and measured, not yet recorded.
struct Outcome {
    candidate: Candidate,
    hash: u64,
    built_s: f64,
    result: Measured,
    /// The outputs of a fresh measurement (`None`: the result is an earlier trial's, or failed).
    outputs: Option<Vec<Vec<f32>>>,
    fresh: bool,
    seconds: f64,
}

impl Lab<'_> {
    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Builds candidate `c` and measures it on the first `batches` batches in a session of `threads` threads.
    fn run(&self, c: Candidate, batches: usize, threads: usize) -> Result<Outcome, QuantizeError> {
        let start = std::time::Instant::now();
        let scheme = c.scheme(self.base);
        let decisions = self.quantizer.decide(&scheme)?;
        let amax = self.quantizer.amax(&scheme);
        let (mut proto, _) = self.quantizer.build(&decisions, &scheme.placement, &amax, &scheme.weight_clip)?;
        let bytes = graph::proto::Message::write_to_bytes(&proto).map_err(graph::GraphError::Encode)?;
        // What the session runs: only what the measured output needs, and an FP16 candidate quantizes in
        // float32, the same outputs faster ([`Probe::prune_to_measured`], [`crate::fp16_quantize`]); the record
        // keeps the written model's hash.
        let pruned = self.probe.prune_to_measured(&mut proto);
        let rewritten = crate::fp16_quantize::for_cpu_evaluation(&mut proto);
        let run_bytes = if pruned || rewritten {
            Some(graph::proto::Message::write_to_bytes(&proto).map_err(graph::GraphError::Encode)?)
        } else {
            None
        };
        let hash = siphash(&bytes);
        let built_s = start.elapsed().as_secs_f64();
        let known = {
            let mut memo = self.memo();
            match memo.seen.get(&(hash, batches)) {
                Some(r) => Err(r.clone()),
                // A model the coarse stage measured on fewer batches runs only the rest in the fine stage.
                None => Ok(memo.outputs.remove(&hash).unwrap_or_default()),
            }
        };
        let (result, outputs, fresh) = match known {
            Err(r) => (r, None, false),
            Ok(earlier) => {
                let run_bytes = run_bytes.as_ref().unwrap_or(&bytes);
                let measured = match &self.sessions {
                    Some(sessions) if !rewritten => {
                        self.measure_shared(sessions, proto, run_bytes, earlier, batches, threads)
                    }
                    _ => {
                        drop(proto);
                        self.probe.measure_continuing(run_bytes, earlier, batches, threads)
                    }
                };
                match measured {
                    Ok((f, outputs)) => (Ok(f), Some(outputs), true),
                    Err(QuantizeError::Measure { source: u @ Unmeasured::NonFinite { .. }, .. }) => {
                        (Err(u.to_string()), None, true)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(Outcome { candidate: c, hash, built_s, result, outputs, fresh, seconds: start.elapsed().as_secs_f64() })
    }
}

impl Lab<'_> {
    /// Measures candidate `proto` in a session shared with the candidates that differ from it only in their
    /// activation scales, fed at run time (bit for bit what its own session gives: `quantizer/tests/fed_scales.rs`).
    fn measure_shared(
        &self,
        sessions: &SharedSessions,
        mut proto: graph::proto::ModelProto,
        bytes: &[u8],
        earlier: Vec<Vec<f32>>,
        batches: usize,
        threads: usize,
    ) -> Result<crate::measure::MeasuredOutputs, QuantizeError> {
        let Some(scales) = crate::measure::fed_scales(&mut proto) else {
            return self.probe.measure_continuing(bytes, earlier, batches, threads);
        };
        let template = graph::proto::Message::write_to_bytes(&proto).map_err(graph::GraphError::Encode)?;
        drop(proto);
        let remaining = batches.min(self.probe.batches().len()).saturating_sub(earlier.len());
        let (count, intra) = match self.probe.layout(runtime::Device::Cpu, threads, remaining) {
            Layout::OneThreadSessions(n) => (n, 1),
            Layout::OneSession(t) => (1, t),
        };
        let key = (siphash(&template), intra);
        let lock = || sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut taken: Vec<runtime::Session> = {
            let mut pool = lock();
            let idle = pool.entry(key).or_default();
            let keep = idle.len().saturating_sub(count);
            idle.split_off(keep)
        };
        while taken.len() < count {
            taken.push(self.probe.session(&template, runtime::Device::Cpu, intra)?);
        }
        let measured = self.probe.measure_continuing_in(&mut taken, &scales, earlier, batches);
        lock().entry(key).or_default().extend(taken);
        measured
    }

    /// Closes the idle shared sessions (the stages after this one measure other models).
    fn close_idle_sessions(&self) {
        if let Some(sessions) = &self.sessions {
            sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        }
    }
}

struct Searcher<'a> {
    lab: &'a Lab<'a>,
    /// Candidates measured at once, each in a session of its share of the threads: small models gain nothing
    /// from a second intra-op thread (the fixture ViT's trials took as long on one thread as on two).
    parallel: usize,
    trials: Vec<Trial>,
    candidates: Vec<Candidate>,
    /// Per trial, every sample's output SQNR in dB ([`sample_sqnr_db`]; empty when it failed).
    per_sample: Vec<Vec<f64>>,
    /// Per sample, the index of its shape ([`Probe::sample_shapes`]); one shape: all 0.
    shapes: Vec<usize>,
}

impl Searcher<'_> {
    /// Builds and measures `cs` on the first `batches` batches, several at once ([`trial_workers`]), and
    /// records them in their order (so the record does not depend on which finished first); `done` is called
    /// as each is recorded. `measured` is how many of the first batches every candidate of `cs` may already
    /// have measured (an earlier round's): what is left for each says how many one-thread sessions one
    /// candidate keeps busy.
    fn trials(
        &mut self,
        cs: &[Candidate],
        (measured, batches): (usize, usize),
        stage: &'static str,
        done: &mut dyn FnMut(),
    ) -> Result<Vec<usize>, QuantizeError> {
        let lab = self.lab;
        let workers = trial_workers(TrialLoad {
            parallel: self.parallel,
            candidates: cs.len(),
            new_batches: batches.saturating_sub(measured),
            threads: lab.probe.threads(),
            one_thread_sessions_max: lab.probe.one_thread_sessions_max(runtime::Device::Cpu),
        });
        let threads = (lab.probe.threads() / workers).max(1);
        let mut recorded = Vec::with_capacity(cs.len());
        if workers == 1 {
            for &c in cs {
                let outcome = lab.run(c, batches, lab.probe.threads())?;
                recorded.push(self.record(outcome, batches, stage));
                done();
            }
            return Ok(recorded);
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel();
            for _ in 0..workers {
                let (tx, next) = (tx.clone(), &next);
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&c) = cs.get(i) else { break };
                    let outcome = lab.run(c, batches, threads);
                    let failed = outcome.is_err();
                    // A closed channel: the recording thread returned an error and the rest is not needed.
                    if tx.send((i, outcome)).is_err() || failed {
                        break;
                    }
                });
            }
            drop(tx);
            let mut pending = std::collections::BTreeMap::new();
            for (i, outcome) in rx {
                pending.insert(i, outcome);
                while let Some(outcome) = pending.remove(&recorded.len()) {
                    recorded.push(self.record(outcome?, batches, stage));
                    done();
                }
            }
            Ok::<(), QuantizeError>(())
        })?;
        Ok(recorded)
    }

    /// Records a measured candidate as the next trial, and what it measured for later trials.
    fn record(&mut self, o: Outcome, batches: usize, stage: &'static str) -> usize {
        let c = o.candidate;
        if o.fresh {
            let probe = self.lab.probe;
            let mut memo = self.lab.memo();
            memo.seen.insert((o.hash, batches), o.result.clone());
            if let Some(outputs) = o.outputs {
                // Kept within 4 times the float reference's size and at most 256 MB more, so that a model with
                // large outputs (a segmentation map) does not multiply the probe's memory: past it, the fine
                // stage re-runs the batches.
                let size = |o: &Vec<Vec<f32>>| o.iter().map(Vec::len).sum::<usize>();
                let reference = probe.reference().iter().map(Vec::len).sum::<usize>();
                let budget = reference + (3 * reference).min(CACHED_OUTPUTS_MAX_FLOATS);
                if memo.outputs.values().map(size).sum::<usize>() + size(&outputs) <= budget {
                    memo.outputs.insert(o.hash, outputs);
                }
            }
        }
        let result = o.result;
        tracing::info!(target: "int8kit::search", method = %c.method.name(), attention = c.attention_name(),
            float_type = c.float_type.name(), stage, built_s = o.built_s, sqnr_db = result.as_ref().map(|f| f.0.sqnr_db).unwrap_or(f64::NAN));
        let (fidelity, failed, samples) = match result {
            Ok((f, samples)) => (Some(f), None, samples),
            Err(e) => (None, Some(e), Vec::new()),
        };
        let several = self.shapes.iter().any(|&g| g > 0);
        let sample_db = sample_sqnr_db(&samples);
        let mean_sample_sqnr_db = fidelity.is_some().then(|| mean(&sample_db));
        let worst_shape_sqnr_db = (several && fidelity.is_some())
            .then(|| shape_means(&sample_db, &self.shapes).into_iter().fold(f64::INFINITY, f64::min));
        self.trials.push(Trial {
            method: c.method.name(),
            attention: c.attention_name(),
            float_type: c.float_type.name(),
            residual: c.residual.name(),
            stage,
            fidelity,
            failed,
            mean_sample_sqnr_db,
            gap_standard_error_db: None,
            worst_shape_sqnr_db,
            seconds: o.seconds,
        });
        self.per_sample.push(sample_db);
        self.candidates.push(c);
        self.trials.len() - 1
    }

    /// What candidates are ranked by: the mean per-sample output SQNR, of the worst shape when there are
    /// several.
    fn score(&self, trial: usize) -> f64 {
        let t = &self.trials[trial];
        match (t.mean_sample_sqnr_db, t.worst_shape_sqnr_db) {
            (None, _) => f64::NEG_INFINITY,
            (Some(_), Some(worst)) => worst,
            (Some(all), None) => all,
        }
    }

    /// Whether trial `t` trails `leader` (measured on the same samples) by more than [`MAX_TOLERANCE_DB`] plus
    /// [`DROP_STANDARD_ERRORS`] standard errors of the gap: then it is measured no further, and `stopped` says
    /// so (`skipped`: the stage it leaves out). A candidate whose outputs were not finite always stops behind a
    /// finite leader (its trial says why).
    fn stops(&self, leader: usize, t: usize, skipped: &'static str, stopped: &mut Vec<NotContinued>) -> bool {
        let (lead, score) = (self.score(leader), self.score(t));
        if t == leader || lead == f64::NEG_INFINITY {
            return false;
        }
        if score == f64::NEG_INFINITY {
            return true;
        }
        let se = self.gap_standard_error(leader, t);
        let behind_db = lead - score;
        let far = beyond_reach(behind_db, se);
        if far {
            stopped.push(NotContinued { trial: t, leader, skipped, behind_db, gap_standard_error_db: se });
        }
        far
    }

    /// The standard error of trial `t`'s mean gap to `leader` (both measured on the same samples), on the
    /// samples the gap is judged on ([`Searcher::judged_samples`]).
    fn gap_standard_error(&self, leader: usize, t: usize) -> f64 {
        let judged = self.judged_samples(leader);
        let on_judged = |samples: &[f64]| -> Vec<f64> {
            samples.iter().zip(&judged).filter(|(_, &j)| j).map(|(x, _)| *x).collect()
        };
        gap_standard_error(&on_judged(&self.per_sample[leader]), &on_judged(&self.per_sample[t]))
    }

    /// The samples a gap to `leader` is judged on: those of the leader's worst shape (all of them for one).
    fn judged_samples(&self, leader: usize) -> Vec<bool> {
        let per_shape = shape_means(&self.per_sample[leader], &self.shapes);
        let worst = (0..per_shape.len()).min_by(|&a, &b| per_shape[a].total_cmp(&per_shape[b])).unwrap_or(0);
        let several = per_shape.len() > 1;
        self.shapes.iter().map(|&g| !several || g == worst).collect()
    }
}

/// What a candidate is ranked by: the mean per-sample output SQNR (dB) over `samples`, of the sample shape it
/// does worst on when `shapes` (per sample, its shape's index) holds several.
pub(crate) fn ranking_db(samples: &[ImageFidelity], shapes: &[usize]) -> f64 {
    let db = sample_sqnr_db(samples);
    shape_means(&db, shapes).into_iter().fold(f64::INFINITY, f64::min)
}

/// Each sample's output SQNR in dB, its output energy counted as at least [`SIGNAL_FLOOR`] of the samples'
/// mean, within [`SQNR_MAX_DB`] either way. Candidates measured on the same samples share the floor (the signal
/// is the float model's).
pub fn sample_sqnr_db(samples: &[ImageFidelity]) -> Vec<f64> {
    let floor = SIGNAL_FLOOR * mean(&samples.iter().map(|s| s.signal).collect::<Vec<_>>());
    samples
        .iter()
        .map(|s| {
            let signal = s.signal.max(floor).max(f64::MIN_POSITIVE);
            (10.0 * (signal / s.noise.max(f64::MIN_POSITIVE)).log10()).clamp(-SQNR_MAX_DB, SQNR_MAX_DB)
        })
        .collect()
}

/// The statistic the search ranks candidates by: the mean of [`sample_sqnr_db`] (NaN without samples).
pub fn mean_sample_sqnr_db(samples: &[ImageFidelity]) -> f64 {
    mean(&sample_sqnr_db(samples))
}

/// Whether a runner-up `gap` dB behind (standard error `se`) is too far behind to come within the tolerance of
/// the best on more samples: [`DROP_STANDARD_ERRORS`].
fn beyond_reach(gap: f64, se: f64) -> bool {
    gap > MAX_TOLERANCE_DB + DROP_STANDARD_ERRORS * se
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// The mean of `values` (one per sample measured, a prefix of `shapes`) per sample shape (index: the shape's);
/// a shape with no sample measured is left out (+inf: never the worst).
fn shape_means(values: &[f64], shapes: &[usize]) -> Vec<f64> {
    let count = shapes.iter().max().map_or(1, |g| g + 1);
    let mut sums = vec![(0.0f64, 0usize); count];
    for (v, &g) in values.iter().zip(shapes) {
        sums[g].0 += v;
        sums[g].1 += 1;
    }
    sums.iter().map(|&(sum, n)| if n == 0 { f64::INFINITY } else { sum / n as f64 }).collect()
}

/// The standard error, in dB, of the mean gap between two models' per-sample SQNR measured on the same
/// samples: the spread of the paired differences over the square root of their count.
fn gap_standard_error(best: &[f64], other: &[f64]) -> f64 {
    let differences: Vec<f64> = best.iter().zip(other).map(|(b, o)| b - o).collect();
    let n = differences.len();
    if n < 2 {
        return 0.0;
    }
    let m = mean(&differences);
    let variance = differences.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    (variance / n as f64).sqrt()
}

/// The fewest of `probe`'s first batches that hold at least `wanted` samples (all of them when they hold fewer).
fn batches_covering(probe: &Probe, wanted: usize) -> usize {
    let mut covered = 0;
    probe
        .batches()
        .iter()
        .take_while(|b| {
            let more = covered < wanted;
            covered += b.len();
            more
        })
        .count()
}

/// Samples in `probe`'s first `batches` batches.
fn samples_in(probe: &Probe, batches: usize) -> usize {
    probe.batches().iter().take(batches).map(|b| b.len()).sum()
}

fn siphash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Whether the attention precision changes any decision of `scheme`'s placement: not on a model without
/// attention MatMuls (a CNN, or a ViT whose attention is ONNX Attention nodes).
pub fn attention_matters(quantizer: &Quantizer, scheme: &Scheme) -> Result<bool, QuantizeError> {
    let with = |a| {
        let mut s = scheme.clone();
        s.placement.attention = Some(a);
        quantizer.decide(&s)
    };
    Ok(with(AttentionPrecision::Int8)? != with(AttentionPrecision::Float)?)
}

/// Chooses `scheme`'s `auto` choices by measuring candidates on `probe`: returns the scheme with every
/// choice fixed, and what was tried. `progress(done, total)` follows the measurements.
pub fn search(
    quantizer: &Quantizer,
    scheme: &Scheme,
    auto: AutoChoices,
    probe: &Probe,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Scheme, SearchRecord), QuantizeError> {
    let start = std::time::Instant::now();
    let methods: Vec<Method> = if auto.method { Method::ALL_DEFAULT.to_vec() } else { vec![scheme.method] };
    let mut attentions = vec![scheme.placement.attention];
    // Only where the choice changes a decision: a model without attention MatMuls has nothing to choose.
    if auto.attention && attention_matters(quantizer, scheme)? {
        attentions = vec![Some(AttentionPrecision::Int8), Some(AttentionPrecision::Float)];
    }
    let floats = if auto.float_type
        && quantizer.model().low_precision_source.is_none()
        && scheme.placement.target == Target::TensorRt
    {
        vec![FloatType::Fp16, FloatType::Fp32]
    } else {
        vec![scheme.placement.float_type]
    };
    let mut residuals = vec![scheme.placement.residual];
    if auto.residual {
        // Only where the model has Adds whose residual input the placement quantizes (a ViT whose projections
        // are scaled before the Add has none).
        let decisions = quantizer.decide(scheme)?;
        let graph = &quantizer.model().proto.graph;
        let with = |residual| {
            let options = placement::PlacementOptions { residual, ..scheme.placement };
            placement::plan(graph, &decisions, &options).activations
        };
        if with(ResidualPrecision::Int8) != with(ResidualPrecision::Float) {
            residuals = vec![ResidualPrecision::Int8, ResidualPrecision::Float];
        }
    }
    let mut axes = Vec::new();
    for (name, n) in [
        ("method", methods.len()),
        ("attention", attentions.len()),
        ("residual", residuals.len()),
        ("float_type", floats.len()),
    ] {
        if n > 1 {
            axes.push(name);
        }
    }

    let all = probe.batches().len();
    // A quarter of the samples, but never fewer than MIN_COARSE_SAMPLES: ranking methods on a handful of
    // samples ranks the samples, not the methods. A probe too small for that has no coarse stage.
    let coarse_batches = batches_covering(probe, (probe.samples() / 4).max(MIN_COARSE_SAMPLES));
    let pairs: Vec<(Method, Option<AttentionPrecision>)> =
        methods.iter().flat_map(|&m| attentions.iter().map(move |&a| (m, a))).collect();
    let coarse = pairs.len() > FINE_CANDIDATES && coarse_batches < all;
    let finalists = pairs.len().min(FINE_CANDIDATES);
    // Without a coarse stage the ranking runs on every sample and its trials are already fine ones: only the
    // finalists' other float types remain.
    let ranking_batches = if coarse { coarse_batches } else { all };
    // A coarse stage starts with a first look on about half its samples (at least MIN_FIRST_SAMPLES): the
    // candidates far behind its leader stop there, the others continue to the coarse stage's samples.
    let first_batches = batches_covering(probe, (samples_in(probe, coarse_batches) / 2).max(MIN_FIRST_SAMPLES));
    let mut rounds = Vec::new();
    if coarse && first_batches < coarse_batches {
        rounds.push((first_batches, "first"));
    }
    rounds.push((ranking_batches, if coarse { "coarse" } else { "fine" }));
    let total = pairs.len() * rounds.len()
        + finalists * (residuals.len() - (!coarse) as usize)
        + finalists * (floats.len() - 1);
    let weights = quantizer.model().weight_values();
    let sessions = (weights <= SHARED_SESSIONS_MAX_WEIGHTS).then(Default::default);
    let lab = Lab { quantizer, base: scheme, probe, memo: Default::default(), sessions };
    let mut s = Searcher {
        lab: &lab,
        parallel: parallel_trials(weights),
        trials: Vec::new(),
        candidates: Vec::new(),
        per_sample: Vec::new(),
        shapes: probe.sample_shapes(),
    };
    let mut done = 0u64;
    let mut tick = || {
        done += 1;
        progress(done, total as u64)
    };

    // Ranking: every method with every attention precision in the cheapest float type (the float type moves
    // every candidate's fidelity alike, a fraction of what the method and attention precision move, so it is
    // measured for the finalists only), the residual input INT8 (the fused layout) where that is searched.
    let cheap = *floats.last().unwrap_or(&scheme.placement.float_type);
    let ranked_residual = residuals[0];
    let mut measured = Vec::new();
    let mut fine = Vec::new();
    let mut not_continued = Vec::new();
    let mut alive = pairs.clone();
    let mut before = 0;
    for (round, &(batches, stage)) in rounds.iter().enumerate() {
        measured.clear();
        let cs: Vec<Candidate> = alive
            .iter()
            .map(|&(method, attention)| Candidate { method, attention, float_type: cheap, residual: ranked_residual })
            .collect();
        for (&pair, t) in alive.iter().zip(s.trials(&cs, (before, batches), stage, &mut tick)?) {
            if stage == "fine" {
                fine.push(t);
            }
            measured.push((pair, s.score(t), t));
        }
        before = batches;
        // Stable: equal scores keep the candidates' order.
        measured.sort_by(|a, b| b.1.total_cmp(&a.1));
        if round + 1 < rounds.len() {
            let leader = measured[0].2;
            alive.clear();
            for &(pair, _, t) in &measured {
                if !s.stops(leader, t, "coarse", &mut not_continued) {
                    alive.push(pair);
                }
            }
            // The few left are the finalists anyway: the fine stage measures them on every sample.
            if alive.len() <= finalists {
                measured.retain(|m| alive.contains(&m.0));
                break;
            }
        }
    }
    // Fine: the finalists with every residual precision on every sample, in the cheapest float type; then the
    // best of those in the other float types. A runner-up far behind its stage's leader goes no further.
    let more_to_measure = coarse || residuals.len() > 1 || floats.len() > 1;
    let ranking_leader = measured.first().map(|m| m.2);
    let mut variants = Vec::new();
    for &((method, attention), _, ranked) in measured.iter().take(finalists) {
        if let Some(leader) = ranking_leader.filter(|_| more_to_measure) {
            if s.stops(leader, ranked, if coarse { "fine" } else { "variants" }, &mut not_continued) {
                continue;
            }
        }
        variants.extend(residuals.iter().map(|&residual| Candidate { method, attention, float_type: cheap, residual }));
    }
    let to_measure: Vec<Candidate> =
        variants.iter().copied().filter(|c| !fine.iter().any(|&t| s.candidates[t] == *c)).collect();
    // The residual variants not ranked yet start from nothing.
    fine.extend(s.trials(&to_measure, (0, all), "fine", &mut tick)?);
    let mut combos: Vec<(Candidate, f64, usize)> = variants
        .iter()
        .map(|&c| {
            let t = *fine.iter().find(|&&t| s.candidates[t] == c).expect("every variant was measured");
            (c, s.score(t), t)
        })
        .collect();
    combos.sort_by(|a, b| b.1.total_cmp(&a.1));
    let combo_leader = combos.first().map(|c| c.2);
    let mut other_floats = Vec::new();
    for &(c, _, t) in combos.iter().take(finalists) {
        if let Some(leader) = combo_leader.filter(|_| floats.len() > 1) {
            if s.stops(leader, t, "float_type", &mut not_continued) {
                continue;
            }
        }
        other_floats.extend(floats.iter().filter(|&&f| f != cheap).map(|&float_type| Candidate { float_type, ..c }));
    }
    // The other float types are other graphs: the shared sessions' memory goes back first.
    lab.close_idle_sessions();
    fine.extend(s.trials(&other_floats, (0, all), "fine", &mut tick)?);
    // Runners-up left out end the count early.
    progress(total as u64, total as u64);
    let best = fine.iter().map(|&t| s.score(t)).fold(f64::NEG_INFINITY, f64::max);
    if best == f64::NEG_INFINITY {
        return Err(QuantizeError::Model {
            path: quantizer.model().path.clone(),
            message: format!(
                "no candidate INT8 model gave finite outputs on the {} held-back samples ({}); check the model \
                 and its inputs, or pick the options by hand",
                probe.samples(),
                s.trials.iter().filter_map(|t| t.failed.as_deref()).next().unwrap_or("")
            ),
        });
    }
    let leader = *fine.iter().find(|&&t| s.score(t) == best).expect("the best is a fine trial");
    let mut near = Vec::new();
    for &t in &fine {
        if s.trials[t].fidelity.is_none() {
            continue;
        }
        let se = s.gap_standard_error(leader, t);
        s.trials[t].gap_standard_error_db = Some(se);
        if s.score(t) >= best - se.clamp(TOLERANCE_DB, MAX_TOLERANCE_DB) {
            near.push(t);
        }
    }
    let chosen = *near
        .iter()
        .min_by(|&&a, &&b| {
            let (ca, cb) = (&s.candidates[a], &s.candidates[b]);
            ca.preference()
                .cmp(&cb.preference())
                .then(s.score(b).total_cmp(&s.score(a)))
                .then(ca.method_rank().cmp(&cb.method_rank()))
        })
        .expect("the best trial is near itself");
    let winner = s.candidates[chosen];
    let margin = format!("by no more than {TOLERANCE_DB} dB or one standard error (at most {MAX_TOLERANCE_DB} dB)");
    let reason = if near.len() == 1 {
        format!(
            "the best mean per-sample SQNR ({best:.2} dB); every other candidate was below it by more than {TOLERANCE_DB} dB \
             and one standard error (or {MAX_TOLERANCE_DB} dB)"
        )
    } else if chosen == leader {
        format!(
            "the best mean per-sample SQNR ({best:.2} dB); of it and the {} below it {margin}, it also keeps the \
             most INT8 (attention {}, residual {}) and float type {}",
            match near.len() - 1 {
                1 => "one candidate".to_string(),
                n => format!("{n} candidates"),
            },
            winner.attention_name(),
            winner.residual.name(),
            winner.float_type.name()
        )
    } else {
        format!(
            "mean per-sample SQNR {:.2} dB, below the best ({best:.2} dB) {margin}; of the {} candidates that \
             close (the best included) it keeps the most INT8 (attention {}, residual {}) and float type {}",
            s.score(chosen),
            near.len(),
            winner.attention_name(),
            winner.residual.name(),
            winner.float_type.name()
        )
    };
    // No candidate close to the float model on the held-back samples: either their float outputs carry almost
    // no signal (a text detector on photos without text sees near-empty maps) and the samples cannot rank the
    // candidates, or the model quantizes poorly. Said, not hidden.
    let shapes = probe.shapes();
    let reason = if shapes > 1 {
        format!(
            "{reason}. With samples of {shapes} shapes (sizes), every candidate is ranked by the shape it \
             does worst on"
        )
    } else {
        reason
    };
    let reason = if best < LOW_FIDELITY_DB {
        tracing::warn!(target: "int8kit::search", best_db = best, "no candidate reached {LOW_FIDELITY_DB} dB");
        format!(
            "{reason}. No candidate reached {LOW_FIDELITY_DB} dB on the held-back samples: if their float outputs \
             carry little signal (images unlike what the model serves), they cannot rank the candidates; check \
             the calibration images, then validate on representative ones"
        )
    } else {
        reason
    };
    let record = SearchRecord {
        axes,
        samples: (samples_in(probe, coarse_batches) * coarse as usize, probe.samples()),
        first_samples: (rounds.len() > 1).then(|| samples_in(probe, first_batches)),
        tolerance_db: TOLERANCE_DB,
        trials: s.trials,
        chosen,
        not_continued,
        reason,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((winner.scheme(scheme), record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(signal: &[f64], noise: &[f64]) -> Vec<ImageFidelity> {
        signal
            .iter()
            .zip(noise)
            .map(|(&signal, &noise)| ImageFidelity { agree: true, cosine: 1.0, signal, noise })
            .collect()
    }

    #[test]
    fn each_shape_gets_its_own_mean_and_a_shape_not_yet_measured_is_never_the_worst() {
        let per_shape = shape_means(&[10.0, 7.0, 12.0, 9.0], &[0, 1, 0, 1]);
        assert_eq!(per_shape, [11.0, 8.0]);
        let per_shape = shape_means(&[10.0, 7.0], &[0, 1, 2, 0]);
        assert_eq!(per_shape, [10.0, 7.0, f64::INFINITY]);
    }

    #[test]
    fn every_sample_counts_alike_whatever_its_output_energy() {
        // One sample with a hundred times the others' energy: pooled, its 10 dB set the SQNR (10.4 dB); per
        // sample, the three at 30 dB count as much as it does (25 dB).
        let db = sample_sqnr_db(&samples(&[100.0, 1.0, 1.0, 1.0], &[10.0, 1e-3, 1e-3, 1e-3]));
        assert!((db[0] - 10.0).abs() < 1e-9 && (db[1] - 30.0).abs() < 1e-9, "{db:?}");
        assert!((mean(&db) - 25.0).abs() < 1e-9);
    }

    #[test]
    fn an_empty_output_is_judged_against_the_floor_and_extremes_are_capped() {
        // Mean signal 1, so the floor is 0.01: an all-zero output with noise 1e-4 counts as 20 dB, not -inf.
        let db = sample_sqnr_db(&samples(&[0.0, 2.0, 1.0, 1.0], &[1e-4, 0.0, 1e-2, 1e-2]));
        assert!((db[0] - 20.0).abs() < 1e-9, "{db:?}");
        assert_eq!(db[1], SQNR_MAX_DB);
        // No signal on any sample: no floor either, yet a number the search can rank and call low.
        assert_eq!(sample_sqnr_db(&samples(&[0.0], &[1e-3])), [-SQNR_MAX_DB]);
    }

    #[test]
    fn large_models_measure_one_candidate_at_a_time() {
        // The DINOv2 ViT-S/14 (22 million weights) measures two at once, a ViT-L/14 (304 million) one.
        assert_eq!(parallel_trials(22_000_000), 2);
        assert_eq!(parallel_trials(PARALLEL_TRIALS_MAX_WEIGHTS), 2);
        assert_eq!(parallel_trials(PARALLEL_TRIALS_MAX_WEIGHTS + 1), 1);
        assert_eq!(parallel_trials(304_000_000), 1);
    }

    #[test]
    fn many_threads_measure_more_candidates_at_once_within_the_threads_and_memory() {
        let load = |candidates, new_batches, threads, max| TrialLoad {
            parallel: PARALLEL_TRIALS,
            candidates,
            new_batches,
            threads,
            one_thread_sessions_max: max,
        };
        // 2 cores: two candidates at once, one session each (as before).
        assert_eq!(trial_workers(load(8, 2, 2, Some(12))), 2);
        // 16 threads, a first look at 2 batches: 8 candidates of 2 sessions fill them...
        assert_eq!(trial_workers(load(8, 2, 16, Some(64))), 8);
        // ...but no more sessions together than one measurement's memory bound (the ViT-S/14: 12)...
        assert_eq!(trial_workers(load(8, 2, 16, Some(12))), 6);
        // ...nor more candidates than there are, nor more workers than threads.
        assert_eq!(trial_workers(load(3, 2, 16, Some(64))), 3);
        assert_eq!(trial_workers(load(8, 1, 4, Some(64))), 4);
        // All 8 batches left: two candidates of 8 sessions.
        assert_eq!(trial_workers(load(4, 8, 16, Some(64))), 2);
        // One thread: one at a time; a model measured in one session: its parallel_trials.
        assert_eq!(trial_workers(load(8, 2, 1, Some(64))), 1);
        assert_eq!(trial_workers(load(8, 2, 16, None)), 2);
        assert_eq!(trial_workers(TrialLoad { parallel: 1, ..load(8, 2, 16, Some(64)) }), 1);
    }

    #[test]
    fn a_runner_up_stops_only_when_its_gap_exceeds_the_tolerance_by_two_standard_errors() {
        assert!(beyond_reach(0.6, 0.0), "certain and beyond the tolerance");
        assert!(!beyond_reach(0.4, 0.0), "within the tolerance: it could still be chosen");
        assert!(beyond_reach(3.0, 1.0));
        assert!(!beyond_reach(2.4, 1.0), "a noisy gap keeps the runner-up in");
        assert!(!beyond_reach(f64::NAN, 0.0));
    }

    #[test]
    fn the_gap_is_certain_when_every_sample_agrees_and_uncertain_when_one_sample_makes_it() {
        let best = [20.0, 25.0, 30.0, 22.0];
        assert!(gap_standard_error(&best, &[17.0, 22.0, 27.0, 19.0]) < 1e-9);
        assert_eq!(gap_standard_error(&best, &best), 0.0);
        let se = gap_standard_error(&best, &[20.0, 25.0, 30.0, 10.0]);
        assert!((se - 3.0).abs() < 1e-9, "{se}");
        assert_eq!(gap_standard_error(&best[..1], &[10.0]), 0.0, "one sample has no spread to measure");
    }
}
