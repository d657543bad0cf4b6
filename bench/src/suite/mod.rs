//! `cargo xtask bench [--quick]`: int8kit against the lower limit (one plain FP32 ONNX Runtime pass) and
//! against the peers (ONNX Runtime's `quantize_static`, NVIDIA ModelOpt's ONNX PTQ), on the same machine, the
//! same images, in one run, with the Q/DQ placement diffed against ModelOpt's.
//! Writes `bench.json` and the generated part of `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use datasets::{Dataset, Recipe};
use evaluate::compare::{self as evaluation, Classifier, Recorded};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::measure::{build_int8kit, int8kit, measure_tree, median_run, Run};
use crate::root;

mod peers;
mod running;
mod tables;
mod workloads;
mod zoo;

use peers::*;
pub use peers::{venv_python, PEER_PINS};
pub use running::meminfo_kb;
use running::*;
use tables::*;
use workloads::*;
pub use workloads::{bench_home, fetch_photos, fetch_vits14, linux_wheel, make_crops, package_members, CALIB_SEED};
pub use zoo::{run as zoo, ZooArgs};

#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// A reduced set in a few minutes: the fixture workloads, the ViT-S/14 at N = 64 without the peer, the
    /// peer's Entropy on the fixture ViT only. Writes under target/bench/quick instead of the repository.
    #[arg(long)]
    quick: bool,
    /// Leave out ONNX Runtime's quantize_static.
    #[arg(long)]
    skip_peer: bool,
    /// Leave out NVIDIA ModelOpt (a 6 GB venv with torch, installed on first use).
    #[arg(long)]
    skip_modelopt: bool,
}

enum Eval {
    /// Top-1 of FP32 and INT8 on a labelled folder (a seeded subset of `limit` images if given).
    Top1 { val: PathBuf, limit: Option<usize> },
    /// Output fidelity of INT8 against FP32 on unlabelled images.
    Fidelity { images: PathBuf },
}

struct Workload {
    name: String,
    model: PathBuf,
    calib: PathBuf,
    recipe: PathBuf,
    batch: usize,
    repeat: usize,
    also_all_tensors: bool,
    peer_methods: Vec<&'static str>,
    /// Run ModelOpt's INT8 PTQ (entropy) on this workload.
    modelopt: bool,
    eval: Eval,
    /// int8kit's quality options measured beside the defaults.
    variants: Option<Variants>,
}

/// The quality options of issue 14 measured on one workload: MSE weight clips, smoothing at several alphas,
/// per-tensor methods and weight clips chosen by sensitivity (`--method auto --weight-clip auto`), and the
/// fidelity-budget autoprecision on the best smoothing.
struct Variants {
    alphas: &'static [f32],
    /// The autoprecision budget: `--min-cosine` value.
    min_cosine: f64,
    /// Images of the calibration folder the sensitivity searches use (`--limit`).
    search_limit: usize,
}

/// One variant's cost and result.
#[derive(Debug, Clone, Serialize)]
struct VariantResult {
    name: String,
    /// Every command of the variant, run one after the other (wall times add, peak RSS the largest).
    run: Run,
    quality: Option<Quality>,
    /// Share of GEMM/Conv FLOPs in INT8 (ranges.json).
    int8_flop_share: Option<f64>,
    /// Why there is no model (autoprecision missed its budget), when that happened.
    note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Quality {
    images: u64,
    /// Top-1 of FP32 and INT8 on labelled images; absent for fidelity-only workloads.
    fp32_top1: Option<f64>,
    int8_top1: Option<f64>,
    agreement: f64,
    cosine_mean: f64,
    sqnr_db: f64,
    /// The mean over the images of each image's output SQNR in dB, the statistic `auto` ranks its candidates by
    /// (`quantizer::search::mean_sample_sqnr_db`); absent for Top-1 workloads and in results before 2026-12-06.
    #[serde(default)]
    mean_sample_sqnr_db: Option<f64>,
    /// Each image's (signal, noise) energies, for the zoo's standard error of a difference between two models
    /// on the same images; not written.
    #[serde(skip)]
    energies: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
struct Tool {
    name: String,
    run: Run,
    quality: Option<Quality>,
    /// Why a peer's model has no INT8 result (ONNX Runtime could not run it), when that happened.
    quality_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct WorkloadResult {
    name: String,
    model: String,
    model_sha256: String,
    images: usize,
    batch: usize,
    repeat: usize,
    limit: Run,
    /// The forward passes alone over the preloaded images (median over the repeats), seconds: issue 24's limit.
    forward_preloaded_s: f64,
    calibrate: Run,
    analyze: Run,
    /// calibrate + analyze: wall times add, peak RSS is the larger.
    ours: Tool,
    all_tensors: Option<Run>,
    peers: Vec<Tool>,
    /// int8kit's Q/DQ placement against ModelOpt's, when ModelOpt ran.
    placement: Option<PlacementDiff>,
    /// int8kit's quality options (issue 14), when measured on this workload.
    variants: Vec<VariantResult>,
    ratios: Ratios,
    /// Every measured command, in the order run (paths relative to the repository).
    commands: Vec<String>,
}

/// Which node inputs read a dequantized tensor, int8kit's model against ModelOpt's.
#[derive(Debug, Clone, Serialize)]
struct PlacementDiff {
    /// Nodes with at least one quantized input.
    ours_nodes: usize,
    modelopt_nodes: usize,
    /// Op type -> count of nodes only one tool quantizes.
    only_ours: BTreeMap<String, usize>,
    only_modelopt: BTreeMap<String, usize>,
    /// Nodes both quantize on different input slots (e.g. the other input of a residual Add).
    other_slots: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Ratios {
    calibrate_over_limit: f64,
    /// Calibrate (whole process) over the forward passes alone over preloaded images.
    calibrate_over_forward: f64,
    ours_over_limit: f64,
    /// Peer Entropy wall time / ours (calibrate + analyze); absent when the peer did not finish.
    peer_entropy_over_ours_time: Option<f64>,
    /// Peer Entropy peak RSS / ours. When the peer was stopped for memory, this is a lower bound.
    peer_entropy_over_ours_rss: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Suite {
    format: &'static str,
    version: u32,
    mode: &'static str,
    machine: Machine,
    onnxruntime: String,
    peer: Vec<&'static str>,
    modelopt: Vec<&'static str>,
    commands: Vec<String>,
    workloads: Vec<WorkloadResult>,
    /// Peak RSS of int8kit on the ViT-S/14 at N = 640 over N = 64.
    rss_640_over_64: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gb: f64,
}

pub fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    let bin = build_int8kit()?;
    let me = std::env::current_exe()?;
    let work = root().join(if args.quick { "target/bench/quick" } else { "target/bench/suite" });
    std::fs::create_dir_all(&work)?;
    let python = if args.skip_peer { None } else { Some(venv_python("peer-venv", PEER_PINS)?) };
    let modelopt_python = if args.skip_modelopt { None } else { Some(venv_python("modelopt-venv", MODELOPT_PINS)?) };
    let list = workloads(args)?;
    let mut results = Vec::new();
    let commands = vec![format!("cargo xtask bench{}", if args.quick { " --quick" } else { "" })];
    for w in &list {
        eprintln!("== {} ==", w.name);
        let dir = work.join(&w.name);
        std::fs::create_dir_all(&dir)?;
        let images = Dataset::flat(&w.calib)?.len();
        let common = |cmd: &mut Command| {
            cmd.args(["--model".as_ref(), w.model.as_os_str()])
                .args(["--images".as_ref(), w.calib.as_os_str()])
                .args(["--recipe".as_ref(), w.recipe.as_os_str()])
                .args(["--batch-size", &w.batch.to_string()]);
        };
        let hist = dir.join("calib.hist");
        let calibrate_cmd = |tensors: &str| {
            let mut cmd = int8kit(&bin, "calibrate");
            common(&mut cmd);
            cmd.args(["--tensors", tensors, "--quiet", "--out"]).arg(&hist);
            cmd
        };
        let (mut limits, mut cals, mut forwards) = (Vec::new(), Vec::new(), Vec::new());
        let mut shown_commands = Vec::new();
        for i in 0..w.repeat {
            // Interleaved, so that machine noise hits both alike.
            let mut plain = Command::new(&me);
            plain.arg("bench-child");
            common(&mut plain);
            if i == 0 {
                shown_commands.push(shown(&plain));
                shown_commands.push(shown(&calibrate_cmd("quantizable")));
            }
            limits.push(measure_tree(&mut plain, &dir.join("limit.log"), None)?.ok()?);
            cals.push(measure_tree(&mut calibrate_cmd("quantizable"), &dir.join("calibrate.log"), None)?.ok()?);
            let seconds_file = dir.join("forward-preloaded.txt");
            let mut preloaded = Command::new(&me);
            preloaded.arg("bench-child").arg("--preloaded-seconds").arg(&seconds_file);
            common(&mut preloaded);
            if i == 0 {
                shown_commands.push(shown(&preloaded));
            }
            measure_tree(&mut preloaded, &dir.join("forward-preloaded.log"), None)?.ok()?;
            forwards.push(std::fs::read_to_string(&seconds_file)?.trim().parse::<f64>()?);
            eprintln!(
                "  run {}: plain pass {:.2} s (forward alone, preloaded {:.2} s), calibrate {:.2} s",
                i + 1,
                limits[i].wall_s,
                forwards[i],
                cals[i].wall_s
            );
        }
        let (limit, cal) = (median_run(limits), median_run(cals));
        forwards.sort_by(f64::total_cmp);
        let forward_preloaded_s = forwards[forwards.len() / 2];
        let ours_dir = dir.join("int8kit");
        // Scratch from an earlier run (possibly of an int8kit that wrote no manifest): start afresh.
        let _ = std::fs::remove_dir_all(&ours_dir);
        let mut analyze_cmd = int8kit(&bin, "analyze");
        analyze_cmd
            .args(["--model".as_ref(), w.model.as_os_str()])
            .args(["--hist".as_ref(), hist.as_os_str()])
            .args(["--method", "entropy", "--quiet", "--out"])
            .arg(&ours_dir);
        shown_commands.push(shown(&analyze_cmd));
        let an = measure_tree(&mut analyze_cmd, &dir.join("analyze.log"), None)?.ok()?;
        eprintln!("  analyze {:.2} s", an.wall_s);
        let all_tensors = if w.also_all_tensors {
            shown_commands.push(shown(&calibrate_cmd("all")));
            let r = measure_tree(&mut calibrate_cmd("all"), &dir.join("calibrate-all.log"), None)?.ok()?;
            eprintln!("  calibrate --tensors all {:.2} s, {:.0} MB", r.wall_s, r.peak_rss_mb);
            Some(r)
        } else {
            None
        };
        let ours_run = Run::combined(&cal, &an);

        let pythons = Pythons { ort: python.as_deref(), modelopt: modelopt_python.as_deref() };
        let (peers, modelopt_model) = run_peers(w, &dir, &me, images, &pythons, &common, &mut shown_commands)?;
        let placement = match &modelopt_model {
            Some(m) => Some(placement_diff(&ours_dir.join("model.qdq.onnx"), m)?),
            None => None,
        };

        // INT8 results: the FP32 reference runs once and is replayed for every INT8 model.
        let mut judge = Judge::new(w)?;
        let ours_quality = judge.quality(&ours_dir.join("model.qdq.onnx"))?;
        let ours = Tool {
            name: "int8kit calibrate + analyze (entropy)".into(),
            run: ours_run,
            quality: Some(ours_quality),
            quality_error: None,
        };
        let mut peer_tools = Vec::new();
        for (name, run, model) in peers {
            // A peer's model that ONNX Runtime cannot run is a result about the peer, not a bench failure.
            let (quality, quality_error) = match model.map(|m| judge.quality(&m)) {
                Some(Ok(q)) => (Some(q), None),
                Some(Err(e)) => {
                    let text = e.to_string().replace(&format!("{}/", root().display()), "");
                    let first = text.lines().next().unwrap_or_default().to_string();
                    eprintln!("  {name}: its model does not run: {first}");
                    (None, Some(first))
                }
                None => (None, None),
            };
            peer_tools.push(Tool { name, run, quality, quality_error });
        }
        let variants = match &w.variants {
            Some(v) => run_variants(w, v, &bin, &dir, &hist, &mut shown_commands, &mut |m| judge.quality(m))?,
            None => Vec::new(),
        };
        let entropy = peer_tools.iter().find(|t| t.name.ends_with("Entropy"));
        let ratios = Ratios {
            calibrate_over_limit: cal.wall_s / limit.wall_s,
            calibrate_over_forward: cal.wall_s / forward_preloaded_s,
            ours_over_limit: ours.run.wall_s / limit.wall_s,
            peer_entropy_over_ours_time: entropy
                .filter(|t| t.run.outcome == "ok")
                .map(|t| t.run.wall_s / ours.run.wall_s),
            peer_entropy_over_ours_rss: entropy.map(|t| t.run.peak_rss_mb / ours.run.peak_rss_mb),
        };
        results.push(WorkloadResult {
            name: w.name.clone(),
            model: display(&w.model),
            model_sha256: sha256_file(&w.model)?,
            images,
            batch: w.batch,
            repeat: w.repeat,
            limit,
            forward_preloaded_s,
            calibrate: cal,
            analyze: an,
            ours,
            all_tensors,
            peers: peer_tools,
            placement,
            variants,
            ratios,
            commands: shown_commands,
        });
    }
    let rss = |name: &str| results.iter().find(|r| r.name == name).map(|r| r.ours.run.peak_rss_mb);
    let rss_640_over_64 = match (rss("dinov2_vits14_224_n64"), rss("dinov2_vits14_224_n640")) {
        (Some(a), Some(b)) => Some(b / a),
        _ => None,
    };
    let suite = Suite {
        format: "int8kit-bench",
        version: 1,
        mode: if args.quick { "quick" } else { "full" },
        machine: machine(),
        onnxruntime: runtime::version()?,
        peer: PEER_PINS.to_vec(),
        modelopt: if args.skip_modelopt { vec![] } else { MODELOPT_PINS.to_vec() },
        commands,
        workloads: results,
        rss_640_over_64,
    };
    let (json_path, md_path) = if args.quick {
        (work.join("bench.json"), work.join("BENCHMARKS.md"))
    } else {
        (root().join("bench.json"), root().join("BENCHMARKS.md"))
    };
    safe_io::write_atomic(&json_path, &serde_json::to_vec_pretty(&suite)?)?;
    let generated = markdown(&suite);
    let doc = std::fs::read_to_string(&md_path).unwrap_or_else(|_| "# Benchmarks\n".into());
    safe_io::write_atomic(&md_path, splice(&doc, &generated).as_bytes())?;
    println!("{generated}");
    println!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}
