//! Running and measuring: the machine, processes, the quality variants.

use super::*;

pub(super) fn machine() -> Machine {
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

pub(super) fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{what}: starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs and measures every variant of `v` on workload `w` (its plain `.hist` is `hist`), each into its own
/// folder under `dir`; `quality` evaluates a Q/DQ model like the defaults'.
pub(super) fn run_variants(
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

/// Judges INT8 models of one workload against FP32 on its evaluation set: the FP32 reference runs once and is
/// replayed for every model.
pub(super) struct Judge<'w> {
    workload: &'w Workload,
    feed: datasets::Feed,
    set: Dataset,
    reference: Recorded,
}

impl<'w> Judge<'w> {
    /// Runs the FP32 model over the workload's evaluation set once.
    pub(super) fn new(w: &'w Workload) -> anyhow::Result<Judge<'w>> {
        let feed = datasets::Feed::Images(Recipe::load(&w.recipe)?);
        let mut fp32 = evaluation::ort_model(&w.model, &feed, Default::default())?;
        let set = match &w.eval {
            Eval::Top1 { val, limit } => {
                let ds = Dataset::labelled(val, None)?;
                match limit {
                    Some(n) => ds.limit(*n, 0),
                    None => ds,
                }
            }
            Eval::Fidelity { images } => Dataset::flat(images)?,
        };
        let reference = Recorded::record(fp32.as_mut(), &set, &feed)?;
        Ok(Judge { workload: w, feed, set, reference })
    }

    /// The INT8 model at `model` against the FP32 reference.
    pub(super) fn quality(&mut self, model: &Path) -> anyhow::Result<Quality> {
        self.reference.rewind();
        // As written (the search's measure), whatever the float type: comparisons across float types and tools.
        let mut int8 = evaluation::ort_model_as_written(model, &self.feed, Default::default())?;
        let (fp32, set, feed) = (&mut self.reference, &self.set, &self.feed);
        Ok(match &self.workload.eval {
            Eval::Top1 { .. } => {
                let c = evaluation::compare(fp32, int8.as_mut(), set, feed, &Classifier::Logits, &mut |_, _| {})?;
                Quality {
                    images: c.images,
                    fp32_top1: c.fp32.top1,
                    int8_top1: c.int8.top1,
                    agreement: c.agreement,
                    cosine_mean: c.cosine_mean,
                    sqnr_db: c.sqnr_db,
                    mean_sample_sqnr_db: None,
                    energies: Vec::new(),
                }
            }
            Eval::Fidelity { .. } => {
                let (f, images) = evaluation::fidelity_per_image(fp32, int8.as_mut(), set, feed)?;
                Quality {
                    images: f.images,
                    fp32_top1: None,
                    int8_top1: None,
                    agreement: f.agreement,
                    cosine_mean: f.cosine_mean,
                    sqnr_db: f.sqnr_db,
                    mean_sample_sqnr_db: Some(quantizer::search::mean_sample_sqnr_db(&images)),
                    energies: images.iter().map(|i| (i.signal, i.noise)).collect(),
                }
            }
        })
    }
}
