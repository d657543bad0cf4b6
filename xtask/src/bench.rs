//! `cargo xtask bench`: wall time and peak RSS of int8kit against the lower limit, each workload in its own
//! child process so that the kernel's peak-RSS figure belongs to it alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use datasets::{BatchStream, Dataset, Recipe, StreamOptions};
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

#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    images: PathBuf,
    #[arg(long)]
    recipe: PathBuf,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
}

/// A plain FP32 pass: the same images, decoded the same way, through the unmodified model with all threads.
pub fn child(args: ChildArgs) -> anyhow::Result<()> {
    let recipe = Recipe::load(&args.recipe)?;
    let model = graph::Model::load(&args.model)?;
    let input = model.resolve_input(recipe.name.as_deref())?.name.clone();
    let outputs: Vec<String> = model.proto.graph.output.iter().map(|o| o.name.clone()).collect();
    let mut cfg = runtime::SessionConfig::new(args.model.display().to_string());
    cfg.external_data_dir = Some(model.dir.clone());
    let mut session = runtime::session_from_bytes(&model.to_bytes()?, &cfg)?;
    let dataset = Dataset::flat(&args.images)?;
    let stream =
        BatchStream::new(&dataset, &recipe, StreamOptions { batch_size: args.batch_size, ..Default::default() });
    let mut n = 0usize;
    for batch in stream {
        let batch = batch?;
        runtime::run_f32(&mut session, "plain", &input, &batch.shape, &batch.data, &outputs, |_| ())?;
        n += batch.items.len();
    }
    eprintln!("plain pass over {n} images");
    Ok(())
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Measure {
    wall_s: f64,
    peak_rss_mb: f64,
}

/// Runs a command to completion and measures its wall time and peak RSS (from wait4's rusage).
fn measure(cmd: &mut Command) -> anyhow::Result<Measure> {
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall_s = start.elapsed().as_secs_f64();
    if r != pid {
        bail!("wait4 failed for {cmd:?}");
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    Ok(Measure { wall_s, peak_rss_mb: usage.ru_maxrss as f64 / 1024.0 })
}

fn median(mut v: Vec<Measure>) -> Measure {
    v.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
    let wall = v[v.len() / 2].wall_s;
    let rss = v.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max);
    Measure { wall_s: wall, peak_rss_mb: rss }
}

fn build_release_binaries() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status =
        Command::new(cargo).args(["build", "--release", "--quiet", "-p", "calibrate"]).current_dir(root()).status()?;
    if !status.success() {
        bail!("building the calibrate binary failed");
    }
    Ok(root().join("target/release"))
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Calibrate { model, repeat } => bench_calibrate(&model, repeat.max(1)),
        Which::Analyze(args) => bench_analyze(&args),
    }
}

fn bench_calibrate(model: &Path, repeat: usize) -> anyhow::Result<()> {
    let bin = build_release_binaries()?;
    let root = root();
    let model = root.join(model);
    let images = root.join("fixtures/fmnist/calib");
    let recipe = root.join("fixtures/fmnist.toml");
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let hist = out_dir.join("bench.hist");
    let me = std::env::current_exe()?;
    // The calibrate binary on the bench workload, with extra flags.
    let calibrate_run = |extra: &[&str]| {
        measure(
            Command::new(bin.join("calibrate"))
                .args(["--model".as_ref(), model.as_os_str()])
                .args(["--images".as_ref(), images.as_os_str()])
                .args(["--recipe".as_ref(), recipe.as_os_str()])
                .args(["--out".as_ref(), hist.as_os_str(), "--quiet".as_ref()])
                .args(extra),
        )
    };
    let (mut ours, mut limit, mut fast) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..repeat {
        // Interleaved, so that machine noise hits both alike.
        limit.push(measure(
            Command::new(&me)
                .arg("bench-child")
                .args(["--model".as_ref(), model.as_os_str()])
                .args(["--images".as_ref(), images.as_os_str()])
                .args(["--recipe".as_ref(), recipe.as_os_str()]),
        )?);
        ours.push(calibrate_run(&[])?);
        fast.push(calibrate_run(&["--tensors", "quantizable"])?);
        eprintln!(
            "run {}: plain {:.2} s, calibrate {:.2} s, calibrate --tensors quantizable {:.2} s",
            i + 1,
            limit[i].wall_s,
            ours[i].wall_s,
            fast[i].wall_s
        );
    }
    let (ours, limit, fast) = (median(ours), median(limit), median(fast));
    // Memory must not grow with the number of images: the same run on a quarter of them.
    let quarter = calibrate_run(&["--limit", "250"])?;
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
    println!("| int8kit calibrate | {:.2} | {:.0} | {:.0} |", ours.wall_s, images_n / ours.wall_s, ours.peak_rss_mb);
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
        calibrate: Measure,
        plain_pass: Measure,
        ratio: f64,
        calibrate_250_images: Measure,
        calibrate_quantizable: Measure,
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
        Some(p) => calibrate::HistFile::read(p)?,
        None => {
            let recipe = Recipe::load(&root.join("fixtures/fmnist.toml"))?;
            let options = calibrate::CalibrateOptions::default();
            calibrate::calibrate(
                &root.join(&args.model),
                &root.join("fixtures/fmnist/calib"),
                &recipe,
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
