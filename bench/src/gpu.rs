//! GPU work on a machine without Rust: `cargo xtask gpu-pack` (here) bundles the bench binary, the crates'
//! device test binaries (`calibrate` and `evaluate` built with their `cuda` feature), onnxruntime-gpu, the
//! ViT-S/14 and the benchmark photos into chunks that fit device calls. On the GPU machine `gpu-run.sh tests`
//! runs the device tests (the invariants: they pass or fail), and `gpu-run.sh` runs `bench gpu-check`, the
//! measurements (speeds, CPU-vs-GPU differences), into gpu-check.json / gpu-check.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use datasets::{BatchStream, Dataset, Feed, Recipe, StreamOptions};
use histograms::TensorStats;
use rand::{Rng, SeedableRng};
use runtime::Device;
use serde::Serialize;

use crate::measure::{measure_tree, Run};
use crate::root;

#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// Size of each chunk: the repository (tracked files and .git, about 42 MB) plus one chunk must stay under
    /// a device call's 64 MiB.
    #[arg(long, default_value_t = 24)]
    chunk_mb: u64,
    /// Leave out the ViT-S/14 and the photos (88 MB): enough for the device tests and the measurements on the
    /// fixtures (kernels, hist, validate, sensitivity, fp16-evaluation), in fewer device calls.
    #[arg(long)]
    fixtures_only: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The unpacked bundle (holds bench, tests/, onnxruntime/capi, vits14/, photos/).
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, default_value = "cuda")]
    device: Device,
    /// Where gpu-check.json, gpu-check.md and the per-step logs go.
    #[arg(long)]
    out: PathBuf,
    /// Measurements to run (comma-separated): kernels, speed, hist, validate, sensitivity, devices (one GPU
    /// against a device list naming it twice: same .hist, same report), fp16-evaluation (the validate step's
    /// FP16 artifacts with ONNX Runtime's rewrites on and off; after validate); diagnose runs only when named.
    /// Default: all the others. The invariants are the crates' device tests.
    #[arg(long, value_delimiter = ',')]
    steps: Vec<String>,
    /// Runs of the steps in this one process: the first in the order above, each later one in a seeded random
    /// order. A failing step is recorded (round, step, error) and the others go on; any failure fails the check.
    /// Sessions of earlier steps stay alive in ONNX Runtime and CUDA, as in a long-running user process.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Measured pairs per speed workload (plain, then calibrate, each its own process, interleaved): the row's
    /// runs are each mode's fastest, and every pair's ratio is kept. Issue 24's limit is the best of 4.
    #[arg(long, default_value_t = 1)]
    speed_repeats: usize,
}

/// The measurements of `gpu-check`, in their default order.
const STEPS: &[&str] =
    &["kernels", "speed", "diagnose", "hist", "validate", "sensitivity", "devices", "fp16-evaluation"];

#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    #[command(flatten)]
    pass: crate::measure::PassArgs,
    #[arg(long)]
    device: Device,
    /// plain (the model's own outputs, copied to the host: the limit), plain-bound (the same through IoBinding,
    /// outputs left on the GPU), tapped-bound (quantizable activations exposed, no statistics) or calibrate
    /// (tapped-bound plus the statistics kernels).
    #[arg(long)]
    mode: String,
    /// Decode every image first and pass over them this many times (model and statistics time only); without
    /// it the images stream from disk as in `calibrate`.
    #[arg(long)]
    preload_passes: Option<usize>,
}

const ORT_GPU_LIBS: &[&str] = &[
    "onnxruntime/capi/libonnxruntime.so.1.31.1",
    "onnxruntime/capi/libonnxruntime_providers_cuda.so",
    "onnxruntime/capi/libonnxruntime_providers_shared.so",
];

fn carry_dir() -> PathBuf {
    root().join(".int8kit/carry")
}

/// Builds the bundle and splits it into chunks under .int8kit/carry, then prints the device calls to make.
pub fn pack(args: &PackArgs) -> anyhow::Result<()> {
    let staging = root().join(".int8kit/gpu-bundle");
    let bundle = staging.join("bundle");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(bundle.join("photos"))?;
    // The bench binary does everything on the device (no Rust there); stripped, it is a few MB.
    let bin = crate::measure::build_release("bench")?;
    std::fs::copy(&bin, bundle.join("bench"))?;
    ok(Command::new("strip").arg(bundle.join("bench")), "strip bench")?;
    std::fs::create_dir_all(bundle.join("tests"))?;
    for (name, test) in device_tests()? {
        let to = bundle.join("tests").join(name);
        std::fs::copy(&test, &to)?;
        ok(Command::new("strip").arg(&to), "strip a device test")?;
    }
    // A diagnostic preload library that logs every CUDA stream capture with its thread and backtrace
    // (`INT8KIT_TRACE_CAPTURES=1 gpu-run.sh ...`): what to run when "operation not permitted when stream is
    // capturing" appears.
    let cc = which("cc").context("a C compiler (cc) is needed to pack the capture tracer")?;
    ok(
        Command::new(cc)
            .args(["-O1", "-g", "-shared", "-fPIC", "-o"])
            .arg(bundle.join("capture_trace.so"))
            .arg(root().join("bench/scripts/capture_trace.c"))
            .args(["-ldl", "-lpthread"]),
        "compile bench/scripts/capture_trace.c",
    )?;
    // onnxruntime-gpu's libraries (CUDA 13 build); the GPU machine provides CUDA, cuBLAS and cuDNN.
    let members: Vec<String> = ORT_GPU_LIBS.iter().map(|s| s.to_string()).collect();
    let pin = crate::suite::linux_wheel("3.12");
    let spec = format!("onnxruntime-gpu=={}", runtime::ORT_GPU_VERSION);
    crate::suite::package_members(&spec, &pin, &members, &bundle)?;
    if !args.fixtures_only {
        std::fs::create_dir_all(bundle.join("vits14"))?;
        std::fs::copy(crate::suite::fetch_vits14()?, bundle.join("vits14/vit_s_focus.onnx"))?;
        for p in crate::suite::fetch_photos()? {
            let name = p.file_name().context("photo name")?;
            std::fs::copy(&p, bundle.join("photos").join(name))?;
        }
    }
    let carry = carry_dir();
    let _ = std::fs::remove_dir_all(&carry);
    std::fs::create_dir_all(&carry)?;
    let zstd = which("zstd").context("zstd is needed to pack (apt-get install zstd)")?;
    std::fs::copy(&zstd, carry.join("zstd"))?;
    eprintln!("compressing the bundle...");
    let script = format!(
        "set -euo pipefail; cd '{}' && tar cf - bundle | '{}' -12 -T0 -q | split -b {}M -d - '{}/p'",
        staging.display(),
        zstd.display(),
        args.chunk_mb,
        carry.display()
    );
    ok(Command::new("bash").args(["-c", &script]), "tar | zstd | split")?;
    let mut chunks: Vec<String> = std::fs::read_dir(&carry)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with('p'))
        .collect();
    chunks.sort();
    let mut plan = String::from("# device calls, back to back (the machine is given back 30 s after a call)\n");
    for (i, c) in chunks.iter().enumerate() {
        let start = if i == 0 { "mkdir -p /tmp/i8 && rm -f /tmp/i8/blob && " } else { "" };
        let mut cmd = format!("{start}cat .int8kit/carry/{c} >> /tmp/i8/blob");
        let mut carry_list = format!("[\".int8kit/carry/{c}\"");
        if i + 1 == chunks.len() {
            cmd.push_str(" && bash xtask/gpu-run.sh");
            carry_list.push_str(", \".int8kit/carry/zstd\"");
        }
        plan.push_str(&format!("carry: {carry_list}]\ncommand: {cmd}\n"));
    }
    std::fs::write(carry.join("plan.txt"), &plan)?;
    print!("{plan}");
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// Builds the crates' device tests (their `cuda` feature) without running them: (name in the bundle, binary).
fn device_tests() -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--release", "--no-run", "--message-format=json", "-p", "calibrate", "-p", "evaluate"])
        .args(["--features", "calibrate/cuda,evaluate/cuda", "--lib", "--test", "gpu"])
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the device tests failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str()) else { continue };
        let kinds = msg["target"]["kind"].to_string();
        let bundled = match (name, kinds.contains("lib")) {
            ("calibrate", true) => "calibrate-device",
            ("gpu", false) if msg["package_id"].as_str().is_some_and(|p| p.contains("evaluate")) => "evaluate-device",
            _ => continue,
        };
        found.push((bundled, PathBuf::from(exe)));
    }
    if found.len() != 2 {
        bail!("expected the calibrate and evaluate device tests, built {found:?}");
    }
    Ok(found)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

use crate::run_ok as ok;

#[derive(Debug, Default, Serialize)]
struct CheckReport {
    device: String,
    gpu: String,
    onnxruntime: String,
    kernels: Option<calibrate::gpu::KernelBench>,
    speed: Vec<SpeedRow>,
    hist: Option<HistDiff>,
    validate: Vec<ValidateRow>,
    sensitivity: Option<SensitivityDiff>,
    devices: Option<String>,
    fp16_evaluation: Vec<Fp16EvaluationRow>,
    /// Every step run, in order, with its time and error (`--rounds`).
    steps: Vec<StepRun>,
}

#[derive(Debug, Serialize)]
struct StepRun {
    round: usize,
    step: String,
    seconds: f64,
    error: Option<String>,
}

/// One FP16 artifact of the validate step (the INT8 Q/DQ model or the FP16 model) run on one device with
/// ONNX Runtime's graph rewrites on and off over the same images: whether the rewrites change the outputs
/// (README, "Evaluating FP16 graphs").
#[derive(Debug, Serialize)]
struct Fp16EvaluationRow {
    model: String,
    artifact: String,
    device: String,
    values: usize,
    /// Outputs that differ between the two sessions.
    differing: usize,
    max_abs_diff: f32,
    max_abs: f32,
}

#[derive(Debug, Serialize)]
struct SensitivityDiff {
    images: usize,
    nodes: usize,
    cpu_seconds: f64,
    cuda_seconds: f64,
    /// The five most sensitive nodes on each device.
    cpu_top5: Vec<String>,
    cuda_top5: Vec<String>,
    /// Largest difference of a node's Top-1 change (quantized alone) between the devices, pp.
    max_top1_delta_diff_pp: f64,
}

#[derive(Debug, Serialize)]
struct SpeedRow {
    workload: String,
    images: u64,
    batch: usize,
    preloaded: bool,
    plain: Run,
    plain_images_s: f64,
    plain_device_mb: f64,
    calibrate: Run,
    calibrate_images_s: f64,
    calibrate_device_mb: f64,
    /// The fastest calibrate run's time over the fastest plain run's.
    ratio: f64,
    /// Each interleaved pair's ratio, in order (one per `--speed-repeats`).
    pair_ratios: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct HistDiff {
    tensors: usize,
    identical: usize,
    same_count_and_range: usize,
    max_rel_amax_diff: f64,
    max_rel_entropy_amax_diff: f64,
    mean_hist_l1_share: f64,
}

#[derive(Debug, Serialize)]
struct ValidateRow {
    model: String,
    cpu_fp32: f64,
    cpu_int8: f64,
    cuda_fp32: f64,
    cuda_int8: f64,
    max_diff_pp: f64,
}

fn json_bytes(s: &TensorStats) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_default()
}

pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    runtime::use_device(args.device);
    runtime::cuda_device_check(args.device)?;
    let chosen: Vec<&str> = STEPS
        .iter()
        .copied()
        .filter(|s| {
            if *s == "diagnose" {
                args.steps.iter().any(|x| x == s)
            } else {
                args.steps.is_empty() || args.steps.iter().any(|x| x == s)
            }
        })
        .collect();
    if let Some(unknown) = args.steps.iter().find(|s| !STEPS.contains(&s.as_str())) {
        bail!("unknown step '{unknown}'; the steps are {}", STEPS.join(", "));
    }
    let mut report = CheckReport { device: args.device.to_string(), ..Default::default() };
    report.onnxruntime = runtime::version()?;
    report.gpu = gpu_name();
    eprintln!("GPU: {}, ONNX Runtime {}", report.gpu, report.onnxruntime);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for round in 1..=args.rounds.max(1) {
        let order = round_order(&chosen, round, &mut rng);
        eprintln!("round {round}: {}", order.join(", "));
        for step in order {
            let started = Instant::now();
            let outcome = run_step(step, args, &mut report);
            let seconds = started.elapsed().as_secs_f64();
            if let Err(e) = &outcome {
                eprintln!("round {round}, step {step} FAILED after {seconds:.1} s: {e:#}");
            }
            report.steps.push(StepRun {
                round,
                step: step.into(),
                seconds,
                error: outcome.err().map(|e| format!("{e:#}")),
            });
        }
    }
    std::fs::write(args.out.join("gpu-check.json"), serde_json::to_vec_pretty(&report)?)?;
    let md = markdown(&report);
    std::fs::write(args.out.join("gpu-check.md"), &md)?;
    println!("{md}");
    let failed: Vec<String> =
        report.steps.iter().filter(|s| s.error.is_some()).map(|s| format!("{} (round {})", s.step, s.round)).collect();
    if !failed.is_empty() {
        bail!("{} of {} step runs failed: {}", failed.len(), report.steps.len(), failed.join(", "));
    }
    Ok(())
}

/// The steps of one round: round 1 in the given order, later rounds shuffled by `rng`, with fp16-evaluation
/// (which reads what validate wrote) kept after validate.
fn round_order<'s>(chosen: &[&'s str], round: usize, rng: &mut impl rand::Rng) -> Vec<&'s str> {
    let mut order = chosen.to_vec();
    if round > 1 {
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), rng);
        let at = |order: &[&str], step: &str| order.iter().position(|s| *s == step);
        if let (Some(v), Some(f)) = (at(&order, "validate"), at(&order, "fp16-evaluation")) {
            if f < v {
                order.swap(v, f);
            }
        }
    }
    order
}

/// One step of `gpu-check`, its result stored in `report` (a later round overwrites an earlier one's).
fn run_step(step: &str, args: &CheckArgs, report: &mut CheckReport) -> anyhow::Result<()> {
    match step {
        "kernels" => {
            // A GELU-like activation: most values near zero (many hits on few bins), a long positive tail.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let values: Vec<f32> = (0..(256usize << 20))
                .map(|_| {
                    let x: f32 = (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5) * 2.0;
                    x * 0.5 * (1.0 + (x * 0.8).tanh())
                })
                .collect();
            let k = calibrate::gpu::bench_kernels(args.device, &values, 5)?;
            eprintln!("{}", kernels_line(&k));
            report.kernels = Some(k);
        }
        "speed" => report.speed = speed(args)?,
        "diagnose" => diagnose(args)?,
        "hist" => report.hist = Some(hist_diff(args.device)?),
        "validate" => report.validate = validate_both(args)?,
        "sensitivity" => report.sensitivity = Some(sensitivity_both(args.device)?),
        "devices" => report.devices = Some(devices_agree(args)?),
        "fp16-evaluation" => report.fp16_evaluation = fp16_evaluation(args)?,
        other => bail!("unknown step '{other}'"),
    }
    Ok(())
}

/// The fixture ViT calibrated and validated on one GPU and on a device list that names it twice (two
/// sessions on two threads of this process, as `--device cuda:0,1` runs them): the `.hist` bytes and the
/// report's rows must be the same.
fn devices_agree(args: &CheckArgs) -> anyhow::Result<String> {
    let one = runtime::Devices::one(args.device);
    let twice: runtime::Devices =
        format!("{one},{}", one.to_string().trim_start_matches("cuda:")).parse().map_err(anyhow::Error::msg)?;
    let feed = Feed::Images(Recipe::load(&test_support::recipe_path())?);
    let model = test_support::model("fmnist_vit_opset17.onnx");
    let hist = |devices: &runtime::Devices| -> anyhow::Result<Vec<u8>> {
        let options = calibrate::CalibrateOptions { device: devices.clone(), ..Default::default() };
        let (h, _) = calibrate::calibrate(&model, &test_support::calib_dir(), &feed, &options, &mut |_, _| {})?;
        Ok(h.to_json()?)
    };
    if hist(&one)? != hist(&twice)? {
        bail!("calibrate on {one} and on {twice} wrote different .hist files");
    }
    let report = |devices: &runtime::Devices| -> anyhow::Result<serde_json::Value> {
        let dir = args.out.join("devices").join(devices.to_string().replace([':', ','], "_"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = crate::demo::fixture_config("fmnist_vit_opset17.onnx", false, None, dir, args.device)?;
        config.collect.device = devices.clone();
        config.limit_val = Some(1000);
        let r = evaluate::validate(&config, &mut |_, _, _| {})?;
        let mut v = serde_json::to_value((&r.comparison, &r.fp16, &r.criteria))?;
        for (i, row) in [(0, "fp32"), (0, "int8"), (1, "metrics")] {
            v[i][row]["images_per_s"] = 0.into();
        }
        Ok(v)
    };
    if report(&one)? != report(&twice)? {
        bail!("validate on {one} and on {twice} reported different rows");
    }
    let line = format!("{one} and {twice}: the same .hist bytes and the same validate rows");
    eprintln!("devices: {line}");
    Ok(line)
}

fn kernels_line(k: &calibrate::gpu::KernelBench) -> String {
    format!(
        "Kernels over one {} MB tensor: device copy {:.0} GB/s (read + write), reduction {:.0} GB/s, histogram {:.0} GB/s \
         = {:.0} % of copy bandwidth; both passes {:.0} GB/s.",
        k.bytes / 1_000_000,
        k.copy_gb_s,
        k.reduce_gb_s,
        k.bin_gb_s,
        100.0 * k.bin_gb_s / k.copy_gb_s,
        k.stats_gb_s
    ) + &format!(
        " Histogram by values per block: {}.",
        k.bin_gb_s_by_chunk
            .iter()
            .map(|(chunk, gb_s)| format!("{chunk} {gb_s:.0} GB/s ({:.0} %)", 100.0 * gb_s / k.copy_gb_s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn gpu_name() -> String {
    Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// The benchmark photos carried in the bundle, in a stable order.
fn bundle_photos(bundle: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(bundle.join("photos"))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// One model over one image folder, as `gpu-child` runs it.
struct GpuWorkload {
    name: String,
    model: PathBuf,
    images: PathBuf,
    recipe: PathBuf,
    batch: usize,
    /// Passes over preloaded images; `None` streams them from disk.
    passes: Option<usize>,
}

impl GpuWorkload {
    /// The ViT-S/14 over N crops (made once in the temporary folder).
    fn vits14(args: &CheckArgs, n: usize, passes: Option<usize>) -> anyhow::Result<GpuWorkload> {
        let dir = std::env::temp_dir().join(format!("int8kit-crops/calib-{n}"));
        let images = crate::suite::make_crops(&bundle_photos(&args.bundle)?, &dir, n, crate::suite::CALIB_SEED)?;
        let how = if passes.is_some() { "preloaded" } else { "streamed from PNG" };
        Ok(GpuWorkload {
            name: format!("dinov2_vits14_224 N={n} ({how})"),
            model: args.bundle.join("vits14/vit_s_focus.onnx"),
            images,
            recipe: root().join("bench/scripts/dinov2_vits14.toml"),
            batch: 64,
            passes,
        })
    }

    /// Runs `gpu-child` in `mode` as its own process (log in `log`) and reads its result line.
    fn run(&self, args: &CheckArgs, mode: &str, log: &Path) -> anyhow::Result<(Run, ChildResult)> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("gpu-child")
            .args(["--model".as_ref(), self.model.as_os_str()])
            .args(["--images".as_ref(), self.images.as_os_str()])
            .args(["--recipe".as_ref(), self.recipe.as_os_str()])
            .args(["--batch-size", &self.batch.to_string(), "--device", &args.device.to_string(), "--mode", mode]);
        if let Some(p) = self.passes {
            cmd.args(["--preload-passes", &p.to_string()]);
        }
        let r = measure_tree(&mut cmd, log, None)?.ok().with_context(|| format!("see {}", log.display()))?;
        let text = std::fs::read_to_string(log)?;
        let line = text.lines().rev().find(|l| l.starts_with('{')).context("the child printed no result")?;
        Ok((r, serde_json::from_str(line)?))
    }
}

fn speed(args: &CheckArgs) -> anyhow::Result<Vec<SpeedRow>> {
    let mut workloads = vec![GpuWorkload {
        name: "fmnist_vit_opset17 (1000 images x 100 passes, preloaded)".into(),
        model: test_support::model("fmnist_vit_opset17.onnx"),
        images: test_support::calib_dir(),
        recipe: test_support::recipe_path(),
        batch: 512,
        passes: Some(100),
    }];
    for n in [640usize, 6400] {
        workloads.push(GpuWorkload::vits14(args, n, None)?);
        workloads.push(GpuWorkload::vits14(args, n, Some(1))?);
    }
    let mut rows = Vec::new();
    for w in workloads {
        let run = |mode: &str| w.run(args, mode, &args.out.join(format!("speed-{mode}.log")));
        // Warm-up (cuDNN/cuBLAS autotuning, file cache), then the measured pairs, interleaved; each mode's
        // fastest run stands for it.
        run("plain")?;
        let mut best: Option<((Run, ChildResult), (Run, ChildResult))> = None;
        let mut pair_ratios = Vec::new();
        for _ in 0..args.speed_repeats.max(1) {
            let plain = run("plain")?;
            let cal = run("calibrate")?;
            pair_ratios.push(cal.1.seconds / plain.1.seconds);
            best = Some(match best {
                None => (plain, cal),
                Some((bp, bc)) => (
                    if plain.1.seconds < bp.1.seconds { plain } else { bp },
                    if cal.1.seconds < bc.1.seconds { cal } else { bc },
                ),
            });
        }
        let ((plain, p), (cal, c)) = best.context("at least one measured pair")?;
        let row = SpeedRow {
            workload: w.name.clone(),
            images: p.images,
            batch: w.batch,
            preloaded: w.passes.is_some(),
            plain_images_s: p.images as f64 / p.seconds,
            plain_device_mb: p.device_mb,
            calibrate_images_s: c.images as f64 / c.seconds,
            calibrate_device_mb: c.device_mb,
            ratio: c.seconds / p.seconds,
            pair_ratios,
            plain,
            calibrate: cal,
        };
        eprintln!(
            "speed {}: plain {:.0} images/s, calibrate {:.0} images/s, ratio {:.2}",
            row.workload, row.plain_images_s, row.calibrate_images_s, row.ratio
        );
        rows.push(row);
    }
    Ok(rows)
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct ChildResult {
    images: u64,
    /// Seconds of the timed loop (model + statistics; decoding too when streamed).
    seconds: f64,
    /// Most GPU memory in use, whole device, MB.
    device_mb: f64,
    /// GPU time of the statistics kernels (CUDA events), seconds.
    #[serde(default)]
    stats_kernel_s: f64,
}

/// One measured GPU pass in its own process (so that its peak RSS is its own).
pub fn child(args: &ChildArgs) -> anyhow::Result<()> {
    runtime::use_device(args.device);
    let pass = &args.pass;
    let recipe = Feed::Images(Recipe::load(&pass.recipe)?);
    let dataset = Dataset::flat(&pass.images)?;
    let tapped = calibrate::TappedModel::new(
        &pass.model,
        &recipe,
        histograms::Selection::Quantizable,
        calibrate::ChannelMaxima::None,
    )?;
    // plain: the unmodified model, its outputs copied to the host (the limit). plain-bound: the same, outputs
    // left on the GPU. tapped-bound: the calibration model (activations exposed) without statistics.
    // calibrate: tapped-bound plus the statistics kernels (what `calibrate --device cuda` does).
    let mode = args.mode.as_str();
    if !["plain", "plain-bound", "tapped-bound", "calibrate"].contains(&mode) {
        bail!("--mode {mode}: expected plain, plain-bound, tapped-bound or calibrate");
    }
    let tapped_model = mode == "calibrate" || mode == "tapped-bound";
    let plain = graph::Model::load(&pass.model)?;
    let plain_outputs: Vec<String> = plain.proto.graph.output.iter().map(|o| o.name.clone()).collect();
    let bytes = if tapped_model { tapped.model.to_bytes()? } else { plain.to_bytes()? };
    let mut cfg = runtime::SessionConfig::new(pass.model.display().to_string());
    cfg.device = args.device;
    let mut session = runtime::session_from_bytes(&bytes, &cfg)?;
    let outputs = if tapped_model { tapped.output_names() } else { plain_outputs.clone() };
    let mut gpu =
        if mode == "calibrate" { Some(calibrate::gpu::GpuStats::new(args.device, outputs.len())?) } else { None };
    if let Some(g) = &mut gpu {
        g.time_kernels();
    }
    let mut bound =
        if mode != "plain" { Some(runtime::BoundRun::new(&session, args.device, &outputs, mode)?) } else { None };
    let ctx = cudarc::driver::CudaContext::new(match args.device {
        Device::Cuda(n) => n as usize,
        Device::Cpu => bail!("gpu-child needs --device cuda"),
    })?;
    let mut device_peak = 0usize;
    let opts = StreamOptions { batch_size: pass.batch_size, lookahead: 4, ..Default::default() };
    let preloaded: Option<Vec<datasets::Batch>> = match args.preload_passes {
        Some(_) => Some(BatchStream::new(&dataset, &recipe, opts.clone()).collect::<Result<_, _>>()?),
        None => None,
    };
    let mut images = 0u64;
    let mut step = |batch: &datasets::Batch| -> anyhow::Result<()> {
        match (&mut bound, &mut gpu) {
            (Some(b), Some(g)) => {
                // As calibrate: the kernels of one batch run while the model runs on the next.
                let t = b.run(&mut session, &tapped.input, &batch.shape, &batch.data)?;
                g.add_async(&t)?;
            }
            (Some(b), None) => {
                b.run(&mut session, &tapped.input, &batch.shape, &batch.data)?;
            }
            _ => {
                runtime::run(&mut session, "plain", &batch.inputs(&tapped.input), &plain_outputs)?;
            }
        }
        if let Ok((free, total)) = ctx.mem_get_info() {
            device_peak = device_peak.max(total - free);
        }
        images += batch.items.len() as u64;
        Ok(())
    };
    let start = Instant::now();
    match &preloaded {
        Some(batches) => {
            for _ in 0..args.preload_passes.unwrap_or(1) {
                for b in batches {
                    step(b)?;
                }
            }
        }
        None => {
            for b in BatchStream::new(&dataset, &recipe, opts) {
                step(&b?)?;
            }
        }
    }
    // The last batch's kernels are part of the pass.
    let stats_kernel_s = match &mut gpu {
        Some(g) => {
            g.wait()?;
            g.kernel_seconds()
        }
        None => 0.0,
    };
    let seconds = start.elapsed().as_secs_f64();
    let result = ChildResult { images, seconds, device_mb: device_peak as f64 / 1048576.0, stats_kernel_s };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Where calibration time goes on the ViT-S/14 (6,400 preloaded images): each mode of `gpu-child`.
fn diagnose(args: &CheckArgs) -> anyhow::Result<()> {
    let w = GpuWorkload::vits14(args, 6400, Some(1))?;
    for mode in ["plain", "plain", "plain-bound", "tapped-bound", "calibrate"] {
        let (_, r) = w.run(args, mode, &args.out.join(format!("diagnose-{mode}.log")))?;
        eprintln!(
            "diagnose {mode}: {:.0} images/s, {:.2} s, statistics kernels {:.3} s",
            r.images as f64 / r.seconds,
            r.seconds,
            r.stats_kernel_s
        );
    }
    Ok(())
}

/// The fixture ViT's .hist from both devices over the same 1000 images.
fn hist_diff(device: Device) -> anyhow::Result<HistDiff> {
    use analyze::scales::{amax, Method};
    let recipe = Feed::Images(Recipe::load(&test_support::recipe_path())?);
    let model = test_support::model("fmnist_vit_opset17.onnx");
    let images = test_support::calib_dir();
    let run = |device: Device| {
        let options = calibrate::CalibrateOptions { device: runtime::Devices::one(device), ..Default::default() };
        calibrate::calibrate(&model, &images, &recipe, &options, &mut |_, _| {}).map(|r| r.0)
    };
    let (cpu, gpu) = (run(Device::Cpu)?, run(device)?);
    let (mut identical, mut same, mut max_amax, mut max_ent, mut l1_sum) = (0, 0, 0f64, 0f64, 0f64);
    for (a, b) in cpu.tensors.iter().zip(&gpu.tensors) {
        if a.name != b.name {
            bail!("tensor lists differ: {} vs {}", a.name, b.name);
        }
        identical += (json_bytes(&a.stats) == json_bytes(&b.stats)) as usize;
        same += (a.stats.count == b.stats.count && a.stats.hist.range_exp == b.stats.hist.range_exp) as usize;
        let rel = |x: f64, y: f64| if x == y { 0.0 } else { (x - y).abs() / x.abs().max(y.abs()) };
        max_amax = max_amax.max(rel(a.stats.amax() as f64, b.stats.amax() as f64));
        max_ent = max_ent.max(rel(amax(&a.stats, Method::Entropy) as f64, amax(&b.stats, Method::Entropy) as f64));
        let mut merged_a = a.stats.hist.clone();
        let mut merged_b = b.stats.hist.clone();
        merged_a
            .merge(&histograms::AbsHistogram { range_exp: b.stats.hist.range_exp, counts: vec![0; histograms::BINS] });
        merged_b
            .merge(&histograms::AbsHistogram { range_exp: a.stats.hist.range_exp, counts: vec![0; histograms::BINS] });
        let l1: u64 = merged_a.counts.iter().zip(&merged_b.counts).map(|(x, y)| x.abs_diff(*y)).sum();
        l1_sum += l1 as f64 / (2.0 * a.stats.count.max(1) as f64);
    }
    let n = cpu.tensors.len();
    let d = HistDiff {
        tensors: n,
        identical,
        same_count_and_range: same,
        max_rel_amax_diff: max_amax,
        max_rel_entropy_amax_diff: max_ent,
        mean_hist_l1_share: l1_sum / n.max(1) as f64,
    };
    eprintln!("hist CPU vs GPU: {d:?}");
    Ok(d)
}

/// `analyze sensitivity` of the fixture ViT on 1000 validation images, on the CPU and on the GPU.
fn sensitivity_both(device: Device) -> anyhow::Result<SensitivityDiff> {
    let feed = Feed::Images(Recipe::load(&test_support::recipe_path())?);
    let model = test_support::model("fmnist_vit_opset17.onnx");
    let options = calibrate::CalibrateOptions::default();
    let (hist, _) = calibrate::calibrate(&model, &test_support::calib_dir(), &feed, &options, &mut |_, _| {})?;
    let val = Dataset::labelled(&test_support::val_dir(), None)?.limit(1000, 0);
    let inputs = evaluate::sensitivity::SensitivityInputs {
        model,
        hist,
        dataset: val,
        feed,
        classifier: evaluate::Classifier::Logits,
        scheme: Default::default(),
        batch_size: None,
        threads: 0,
        device: Default::default(),
    };
    let run = |device: Device| {
        let inputs =
            evaluate::sensitivity::SensitivityInputs { device: runtime::Devices::one(device), ..inputs.clone() };
        evaluate::sensitivity::sensitivity(&inputs, false, &mut |_, _| {})
    };
    let (cpu, gpu) = (run(Device::Cpu)?, run(device)?);
    let top = |r: &evaluate::sensitivity::SensitivityReport| r.nodes.iter().take(5).map(|n| n.node.clone()).collect();
    let max_diff = cpu
        .nodes
        .iter()
        .filter_map(|a| gpu.nodes.iter().find(|b| b.node == a.node).map(|b| (a, b)))
        .map(|(a, b)| {
            (a.alone_int8.top1_delta_pp.unwrap_or(f64::NAN) - b.alone_int8.top1_delta_pp.unwrap_or(f64::NAN)).abs()
        })
        .fold(0.0, f64::max);
    let d = SensitivityDiff {
        images: cpu.images,
        nodes: cpu.nodes.len(),
        cpu_seconds: cpu.seconds,
        cuda_seconds: gpu.seconds,
        cpu_top5: top(&cpu),
        cuda_top5: top(&gpu),
        max_top1_delta_diff_pp: max_diff,
    };
    eprintln!("sensitivity CPU vs GPU: {d:?}");
    Ok(d)
}

fn validate_both(args: &CheckArgs) -> anyhow::Result<Vec<ValidateRow>> {
    let mut rows = Vec::new();
    for (name, zero_shot) in &crate::demo::fixture_models() {
        let stem = name.trim_end_matches(".onnx");
        let mut top = Vec::new();
        for device in [Device::Cpu, args.device] {
            let dir = args.out.join("validate").join(stem).join(device.to_string().replace(':', "_"));
            let _ = std::fs::remove_dir_all(&dir);
            let config =
                crate::demo::fixture_config(name, *zero_shot, Some(analyze::scales::Method::Entropy), dir, device)?;
            let r = evaluate::validate(&config, &mut |_, _, _| {})?;
            let labelled = |m: &evaluate::ModelMetrics| m.top1.context("the fixture folder gave no Top-1");
            top.push((labelled(&r.comparison.fp32)?, labelled(&r.comparison.int8)?));
        }
        let row = ValidateRow {
            model: stem.into(),
            cpu_fp32: top[0].0,
            cpu_int8: top[0].1,
            cuda_fp32: top[1].0,
            cuda_int8: top[1].1,
            max_diff_pp: 100.0 * (top[0].0 - top[1].0).abs().max((top[0].1 - top[1].1).abs()),
        };
        eprintln!("validate {stem}: {row:?}");
        rows.push(row);
    }
    Ok(rows)
}

/// The validate step's FP16 artifacts (written for the GPU run) on the CPU and the GPU, each with ONNX
/// Runtime's graph rewrites on and off, over the first 256 validation images.
fn fp16_evaluation(args: &CheckArgs) -> anyhow::Result<Vec<Fp16EvaluationRow>> {
    let mut rows = Vec::new();
    for (name, zero_shot) in &crate::demo::fixture_models() {
        let stem = name.trim_end_matches(".onnx");
        let written = args.out.join("validate").join(stem).join(args.device.to_string().replace(':', "_"));
        let config = crate::demo::fixture_config(
            name,
            *zero_shot,
            Some(analyze::scales::Method::Entropy),
            written.clone(),
            args.device,
        )?;
        let val = datasets::Dataset::labelled_or_flat(&config.val, None)?.limit(256, 0);
        for artifact in ["model.qdq.onnx", "model.fp16.onnx"] {
            let path = written.join(artifact);
            let model = graph::Model::load(&path)
                .with_context(|| format!("{}: run the validate step first", path.display()))?;
            let input = calibrate::batch_input(&model, &config.feed)?;
            let bytes = model.to_bytes()?;
            for device in [Device::Cpu, args.device] {
                let run = |level: runtime::GraphOptimization| -> anyhow::Result<Vec<f32>> {
                    let mut cfg = runtime::SessionConfig::new(path.display().to_string());
                    cfg.device = device;
                    cfg.graph_optimization = level;
                    let mut session = runtime::session_from_bytes(&bytes, &cfg)?;
                    let output = model.measured_output()?.to_string();
                    let mut out = Vec::new();
                    let options = datasets::StreamOptions { batch_size: 64, ..Default::default() };
                    for batch in datasets::BatchStream::new(&val, &config.feed, options) {
                        let batch = batch?;
                        out.extend(runtime::run_rows(&mut session, "fp16", &batch.inputs(&input), &output)?);
                    }
                    Ok(out)
                };
                let (all, off) = (run(runtime::GraphOptimization::All)?, run(runtime::GraphOptimization::Disabled)?);
                let row = Fp16EvaluationRow {
                    model: stem.into(),
                    artifact: artifact.into(),
                    device: device.to_string(),
                    values: off.len(),
                    differing: all.iter().zip(&off).filter(|(a, b)| a != b).count(),
                    max_abs_diff: all.iter().zip(&off).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max),
                    max_abs: off.iter().map(|v| v.abs()).fold(0.0, f32::max),
                };
                eprintln!("fp16-evaluation {row:?}");
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

fn markdown(r: &CheckReport) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(md, "GPU: {} ({}), ONNX Runtime {} (CUDA EP, TF32 off).\n", r.gpu, r.device, r.onnxruntime);
    if !r.fp16_evaluation.is_empty() {
        let _ = writeln!(
            md,
            "FP16 artifacts, ONNX Runtime's graph rewrites on against off (256 validation images):\n\n\
             | model | artifact | device | outputs differing | max abs difference | max abs output |\n|---|---|---|---|---|---|"
        );
        for f in &r.fp16_evaluation {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} of {} | {:.3e} | {:.3} |",
                f.model, f.artifact, f.device, f.differing, f.values, f.max_abs_diff, f.max_abs
            );
        }
        md.push('\n');
    }
    if let Some(k) = &r.kernels {
        let _ = writeln!(md, "{}\n", kernels_line(k));
    }
    if let Some(d) = &r.devices {
        let _ = writeln!(md, "Device lists: {d}.\n");
    }
    let rounds = r.steps.iter().map(|s| s.round).max().unwrap_or(0);
    if rounds > 1 || r.steps.iter().any(|s| s.error.is_some()) {
        let failed = r.steps.iter().filter(|s| s.error.is_some()).count();
        let _ = writeln!(
            md,
            "Steps in one process, {rounds} round(s) (round 1 in order, later rounds shuffled): {} runs, {failed} failed.\n\n\
             | round | step | seconds | error |\n|---|---|---|---|",
            r.steps.len()
        );
        for s in &r.steps {
            let _ =
                writeln!(md, "| {} | {} | {:.1} | {} |", s.round, s.step, s.seconds, s.error.as_deref().unwrap_or(""));
        }
        md.push('\n');
    }
    if !r.speed.is_empty() {
        let _ = writeln!(
            md,
            "| workload | batch | plain CUDA EP images/s | calibrate images/s | ratio (time, best of each) | each pair's ratio | peak RSS plain / calibrate MB | GPU memory plain / calibrate MB |\n|---|---|---|---|---|---|---|---|"
        );
        for s in &r.speed {
            let pairs: Vec<String> = s.pair_ratios.iter().map(|x| format!("{x:.2}")).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {:.0} / {:.0} | {:.0} / {:.0} |",
                s.workload,
                s.batch,
                s.plain_images_s,
                s.calibrate_images_s,
                s.ratio,
                pairs.join(", "),
                s.plain.peak_rss_mb,
                s.calibrate.peak_rss_mb,
                s.plain_device_mb,
                s.calibrate_device_mb
            );
        }
        md.push('\n');
    }
    if let Some(h) = &r.hist {
        let _ = writeln!(
            md,
            "fmnist_vit_opset17 .hist, CPU vs GPU over the same 1000 images: {}/{} tensors identical, {} with equal count and range; \
             largest relative amax difference {:.2e}, entropy amax {:.2e}; mean histogram L1 share {:.2e}.\n",
            h.identical, h.tensors, h.same_count_and_range, h.max_rel_amax_diff, h.max_rel_entropy_amax_diff, h.mean_hist_l1_share
        );
    }
    if let Some(d) = &r.sensitivity {
        let _ = writeln!(
            md,
            "analyze sensitivity, fmnist_vit_opset17, {} images, {} nodes: CPU {:.1} s, GPU {:.1} s; five most sensitive \
             on the CPU {:?}, on the GPU {:?}; largest difference of a node's Top-1 change {:.2} pp.\n",
            d.images, d.nodes, d.cpu_seconds, d.cuda_seconds, d.cpu_top5, d.cuda_top5, d.max_top1_delta_diff_pp
        );
    }
    if !r.validate.is_empty() {
        let _ = writeln!(md, "| validate (5000 val images) | CPU FP32 | CPU INT8 | CUDA FP32 | CUDA INT8 | largest difference |\n|---|---|---|---|---|---|");
        for v in &r.validate {
            let _ = writeln!(
                md,
                "| {} | {:.2} % | {:.2} % | {:.2} % | {:.2} % | {:.2} pp |",
                v.model,
                100.0 * v.cpu_fp32,
                100.0 * v.cpu_int8,
                100.0 * v.cuda_fp32,
                100.0 * v.cuda_int8,
                v.max_diff_pp
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_rounds_shuffle_every_step_and_keep_fp16_evaluation_after_validate() {
        let chosen: Vec<&str> = STEPS.iter().copied().filter(|s| *s != "diagnose").collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        assert_eq!(round_order(&chosen, 1, &mut rng), chosen, "round 1 runs in the given order");
        let mut orders = std::collections::BTreeSet::new();
        for round in 2..40 {
            let order = round_order(&chosen, round, &mut rng);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            let mut expected = chosen.clone();
            expected.sort_unstable();
            assert_eq!(sorted, expected, "every step once");
            let at = |s: &str| order.iter().position(|x| *x == s).unwrap();
            assert!(at("validate") < at("fp16-evaluation"), "{order:?}");
            orders.insert(order);
        }
        assert!(orders.len() > 10, "the rounds are shuffled: {} distinct orders", orders.len());
    }
}
