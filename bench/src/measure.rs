//! `cargo xtask bench`: wall time and peak RSS of int8kit against the lower limit, each workload in its own
//! child process so that the kernel's peak-RSS figure belongs to it alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use datasets::{BatchStream, Dataset, Feed, Recipe, StreamOptions};
use serde::Serialize;

use crate::root;

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// Calibration of a fixture model over the 1000 calibration images, against a plain FP32 ORT pass.
    Calibrate {
        /// Model to calibrate.
        #[arg(long, default_value = "fixtures/models/fmnist_vit_opset17.onnx")]
        model: PathBuf,
        /// Runs of each workload; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Scale computation for every tensor of a .hist, per method (target: entropy under 1 s for
    /// fmnist_vit_opset17).
    Analyze(AnalyzeBenchArgs),
    /// Random-weight ViT-L/14 (1.2 GB) and ViT-H/14 (2.5 GB, external data) through calibrate, analyze and
    /// validate: time and peak RSS against the model's size.
    Large,
    /// torchvision's architectures (random weights, BatchNorm statistics from photo crops) exported by two
    /// PyTorch exporters, through `quantize` with the defaults, lint, and a second run at one thread and
    /// batch 5: a robustness sweep over model families, not an accuracy benchmark.
    Archs,
    /// The real-model zoo (bench/zoo/zoo.toml): per model, every explicit combination of int8kit's options,
    /// its default (auto), ONNX Runtime's quantize_static and ModelOpt on crops of photos calibration never
    /// saw; writes zoo.json and the zoo table of BENCHMARKS.md.
    Zoo(crate::suite::ZooArgs),
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeBenchArgs {
    /// A .hist file; by default one is made from the model with the fixture calibration images.
    #[arg(long)]
    hist: Option<PathBuf>,
    /// Model the .hist belongs to.
    #[arg(long, default_value = "fixtures/models/fmnist_vit_opset17.onnx")]
    model: PathBuf,
}

/// One pass of a model over a folder of images, as the measured child processes take it.
#[derive(Debug, clap::Args)]
pub struct PassArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub images: PathBuf,
    #[arg(long)]
    pub recipe: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// ONNX Runtime's intra-op threads (0: its own default), to match `int8kit calibrate --threads`.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    #[command(flatten)]
    pass: PassArgs,
    /// Instead of timing a plain pass, write the preprocessed images as raw little-endian float32 (NCHW) for
    /// the peer, so that both tools see exactly the same tensors.
    #[arg(long)]
    dump_raw: Option<PathBuf>,
    /// Decode every image first, then time the forward passes alone and write their seconds here: the limit
    /// of issue 24 (the FP32 forward pass over preloaded images, same threads).
    #[arg(long)]
    preloaded_seconds: Option<PathBuf>,
}

/// A plain FP32 pass: the same images, decoded the same way, through the unmodified model with all threads.
pub fn child(args: ChildArgs) -> anyhow::Result<()> {
    let recipe = Recipe::load(&args.pass.recipe)?;
    if let Some(path) = &args.dump_raw {
        return dump_raw(&args, &recipe, path);
    }
    let model = graph::Model::load(&args.pass.model)?;
    let input = model.resolve_input(recipe.name.as_deref())?.name.clone();
    let feed = Feed::Images(recipe);
    let outputs: Vec<String> = model.proto.graph.output.iter().map(|o| o.name.clone()).collect();
    let mut cfg = runtime::SessionConfig::new(args.pass.model.display().to_string());
    cfg.external_data_dir = Some(model.dir.clone());
    cfg.intra_threads = args.pass.threads;
    let mut session = runtime::session_from_bytes(&model.to_bytes()?, &cfg)?;
    let dataset = Dataset::flat(&args.pass.images)?;
    let stream =
        BatchStream::new(&dataset, &feed, StreamOptions { batch_size: args.pass.batch_size, ..Default::default() });
    let mut n = 0usize;
    if let Some(out) = &args.preloaded_seconds {
        let batches = stream.collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        for batch in &batches {
            runtime::run(&mut session, "plain", &batch.inputs(&input), &outputs)?;
            n += batch.items.len();
        }
        let seconds = started.elapsed().as_secs_f64();
        std::fs::write(out, format!("{seconds}\n")).with_context(|| format!("{}", out.display()))?;
        eprintln!("forward passes over {n} preloaded images: {seconds:.2} s");
        return Ok(());
    }
    for batch in stream {
        let batch = batch?;
        runtime::run(&mut session, "plain", &batch.inputs(&input), &outputs)?;
        n += batch.items.len();
    }
    eprintln!("plain pass over {n} images");
    Ok(())
}

fn dump_raw(args: &ChildArgs, recipe: &Recipe, path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let dataset = Dataset::flat(&args.pass.images)?;
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?);
    for batch in BatchStream::new(
        &dataset,
        &Feed::Images(recipe.clone()),
        StreamOptions { batch_size: args.pass.batch_size, ..Default::default() },
    ) {
        for v in batch?.data {
            out.write_all(&v.to_le_bytes())?;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// One measured process: wall time, peak RSS of its whole process tree, and how it ended.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Run {
    pub wall_s: f64,
    pub peak_rss_mb: f64,
    /// "ok", "failed (...)" with the last line it printed, or "out of memory" when stopped at the cap.
    pub outcome: String,
}

impl Run {
    /// Errors unless the process finished normally.
    pub fn ok(self) -> anyhow::Result<Run> {
        if self.outcome != "ok" {
            bail!("a benchmarked process {}", self.outcome);
        }
        Ok(self)
    }

    /// Two steps run one after the other: times add, the peak is the larger.
    pub fn combined(a: &Run, b: &Run) -> Run {
        Run { wall_s: a.wall_s + b.wall_s, peak_rss_mb: a.peak_rss_mb.max(b.peak_rss_mb), outcome: "ok".into() }
    }

    pub fn summary(&self) -> String {
        format!("{} in {:.1} s, peak RSS {:.0} MB", self.outcome, self.wall_s, self.peak_rss_mb)
    }
}

/// The median wall time, and the largest peak RSS, of repeated runs.
pub fn median_run(mut v: Vec<Run>) -> Run {
    v.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
    let rss = v.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max);
    let mid = v.swap_remove(v.len() / 2);
    Run { peak_rss_mb: rss, ..mid }
}

/// Peak resident memory of a process and all its live descendants, in MB: the sum of each one's VmHWM (its
/// own high-water mark since exec). wait4's ru_maxrss is not used: Linux carries the parent's peak into a
/// child across fork and exec, so a child of a large parent would report the parent's size.
fn tree_peak_rss_mb(pid: i32) -> f64 {
    let mut parent = std::collections::HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ')'.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
            let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok());
            if let Some(pp) = ppid {
                parent.insert(p, pp);
            }
        }
    }
    let in_tree = |mut q: i32| loop {
        if q == pid {
            return true;
        }
        match parent.get(&q) {
            Some(&pp) if pp > 1 => q = pp,
            _ => return false,
        }
    };
    let hwm_kb = |p: i32| -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("");
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    parent.keys().filter(|&&p| in_tree(p)).map(|&p| hwm_kb(p)).sum::<f64>() / 1024.0
}

/// Runs a command to completion, its output into `log`, sampling its process tree's peak RSS every 50 ms;
/// with `cap_mb`, a tree that grows past it is killed and recorded as out of memory.
pub fn measure_tree(cmd: &mut Command, log: &Path, cap_mb: Option<f64>) -> anyhow::Result<Run> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdout(file.try_clone()?).stderr(file).process_group(0);
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let (mut sampled, mut killed) = (0f64, false);
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child; status and usage are valid for writes for the whole call.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            bail!("wait4 failed for {cmd:?}");
        }
        sampled = sampled.max(tree_peak_rss_mb(pid));
        if cap_mb.is_some_and(|cap| sampled > cap) && !killed {
            // SAFETY: signalling the process group we created for this child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let wall_s = start.elapsed().as_secs_f64();
    let peak_rss_mb = sampled;
    let outcome = if killed {
        format!("out of memory (stopped at {:.1} GB, the machine's available memory)", cap_mb.unwrap_or(0.0) / 1024.0)
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        "ok".to_string()
    } else {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        let how = if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exit {}", libc::WEXITSTATUS(status))
        };
        format!("crashed ({how}: {})", last.chars().take(200).collect::<String>())
    };
    Ok(Run { wall_s, peak_rss_mb, outcome })
}

/// Builds a package's release binary (named as the package) and returns its path.
pub fn build_release(package: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--quiet", "-p", package]);
    if !cmd.current_dir(root()).status()?.success() {
        bail!("building {package} failed");
    }
    Ok(root().join("target/release").join(package))
}

/// The release `int8kit` binary, built now.
pub fn build_int8kit() -> anyhow::Result<PathBuf> {
    build_release("int8kit")
}

/// `int8kit <subcommand>` with the given binary.
pub fn int8kit(bin: &Path, subcommand: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg(subcommand);
    cmd
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Calibrate { model, repeat } => bench_calibrate(&model, repeat.max(1)),
        Which::Analyze(args) => bench_analyze(&args),
        // Dispatched by main, beside the suite it shares its helpers with.
        Which::Large | Which::Archs | Which::Zoo(_) => {
            bail!("internal: `bench large`, `bench archs` and `bench zoo` are dispatched by main")
        }
    }
}

fn bench_calibrate(model: &Path, repeat: usize) -> anyhow::Result<()> {
    let bin = build_int8kit()?;
    let root = root();
    let model = root.join(model);
    let images = root.join("fixtures/fmnist/calib");
    let recipe = root.join("fixtures/fmnist.toml");
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let hist = out_dir.join("bench.hist");
    let me = std::env::current_exe()?;
    // The calibrate binary on the bench workload, with extra flags.
    let log = out_dir.join("bench.log");
    let calibrate_run = |extra: &[&str]| {
        measure_tree(
            int8kit(&bin, "calibrate")
                .args(["--model".as_ref(), model.as_os_str()])
                .args(["--images".as_ref(), images.as_os_str()])
                .args(["--recipe".as_ref(), recipe.as_os_str()])
                .args(["--out".as_ref(), hist.as_os_str(), "--quiet".as_ref()])
                .args(extra),
            &log,
            None,
        )?
        .ok()
    };
    let (mut ours, mut limit, mut fast) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..repeat {
        // Interleaved, so that machine noise hits both alike.
        limit.push(
            measure_tree(
                Command::new(&me)
                    .arg("bench-child")
                    .args(["--model".as_ref(), model.as_os_str()])
                    .args(["--images".as_ref(), images.as_os_str()])
                    .args(["--recipe".as_ref(), recipe.as_os_str()]),
                &log,
                None,
            )?
            .ok()?,
        );
        ours.push(calibrate_run(&["--tensors", "all"])?);
        fast.push(calibrate_run(&["--tensors", "quantizable"])?);
        eprintln!(
            "run {}: plain {:.2} s, calibrate {:.2} s, calibrate --tensors quantizable {:.2} s",
            i + 1,
            limit[i].wall_s,
            ours[i].wall_s,
            fast[i].wall_s
        );
    }
    let (ours, limit, fast) = (median_run(ours), median_run(limit), median_run(fast));
    // Memory must not grow with the number of images: the same run on a quarter of them.
    let quarter = calibrate_run(&["--tensors", "all", "--limit", "250"])?;
    let images_n = Dataset::flat(&images)?.len() as f64;
    let ratio = ours.wall_s / limit.wall_s;
    println!(
        "calibrate bench: {} over {} images ({} runs, median wall time, max peak RSS)",
        model.display(),
        images_n,
        repeat
    );
    println!("| workload | wall s | images/s | peak RSS MB |");
    println!("|---|---|---|---|");
    println!(
        "| int8kit calibrate --tensors all | {:.2} | {:.0} | {:.0} |",
        ours.wall_s,
        images_n / ours.wall_s,
        ours.peak_rss_mb
    );
    println!(
        "| plain FP32 ORT pass (limit) | {:.2} | {:.0} | {:.0} |",
        limit.wall_s,
        images_n / limit.wall_s,
        limit.peak_rss_mb
    );
    println!(
        "ratio calibrate / limit: {ratio:.2} (target <= 1.3); peak RSS {:.0} MB (target < 1024)",
        ours.peak_rss_mb
    );
    #[derive(Serialize)]
    struct Report<'a> {
        model: &'a str,
        images: f64,
        repeat: usize,
        calibrate: Run,
        plain_pass: Run,
        ratio: f64,
        calibrate_250_images: Run,
        calibrate_quantizable: Run,
    }
    let report = Report {
        model: &model.display().to_string(),
        images: images_n,
        repeat,
        calibrate: ours,
        plain_pass: limit,
        ratio,
        calibrate_250_images: quarter,
        calibrate_quantizable: fast,
    };
    let json = out_dir.join("calibrate.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", json.display());
    Ok(())
}

fn bench_analyze(args: &AnalyzeBenchArgs) -> anyhow::Result<()> {
    use analyze::scales::{amax, Method};
    let root = root();
    let hist = match &args.hist {
        Some(p) => histograms::HistFile::read(p)?,
        None => {
            let feed = Feed::Images(Recipe::load(&root.join("fixtures/fmnist.toml"))?);
            let options = calibrate::CalibrateOptions::default();
            calibrate::calibrate(
                &root.join(&args.model),
                &root.join("fixtures/fmnist/calib"),
                &feed,
                &options,
                &mut |_, _| {},
            )?
            .0
        }
    };
    println!("scale computation for {} tensors of {} (one thread)", hist.tensors.len(), hist.model.file);
    println!("| method | wall s |");
    println!("|---|---|");
    for method in Method::ALL_DEFAULT {
        let start = Instant::now();
        let total: f64 = hist.tensors.iter().map(|t| amax(&t.stats, method) as f64).sum();
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(total);
        println!("| {} | {secs:.3} |", method.name());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_the_childs_own_and_a_cap_stops_it() {
        // The parent holds 300 MB: with wait4's ru_maxrss a small child would report at least that much.
        let big = vec![1u8; 300 << 20];
        std::hint::black_box(&big);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let grow = "import time\nb = bytearray(200 * 1024 * 1024)\ntime.sleep(0.4)";
        let small = measure_tree(Command::new("sleep").arg("0.3"), &log, None).unwrap();
        assert!(small.outcome == "ok" && small.peak_rss_mb < 50.0, "{small:?}");
        let r = measure_tree(Command::new("python3").args(["-c", grow]), &log, None).unwrap();
        assert!(r.outcome == "ok" && (200.0..400.0).contains(&r.peak_rss_mb), "{r:?}");
        let capped = measure_tree(Command::new("python3").args(["-c", grow]), &log, Some(100.0)).unwrap();
        assert!(capped.outcome.starts_with("out of memory"), "{capped:?}");
        let failed =
            measure_tree(Command::new("python3").args(["-c", "raise SystemExit('no input')"]), &log, None).unwrap();
        assert!(failed.outcome.starts_with("crashed (exit 1: no input"), "{failed:?}");
    }
}
