//! `cargo xtask bench zoo`: int8kit on real models that other people trained and ship inside PyPI packages
//! (`bench/zoo/zoo.toml`), each against every explicit combination of int8kit's options, its default (auto),
//! ONNX Runtime's `quantize_static` and ModelOpt, on crops of photos that calibration never saw. Writes
//! `zoo.json` and the zoo part of `BENCHMARKS.md`. `--prepare` only fetches (checking every model's SHA-256)
//! and writes the crops, with `ci.json` for the end-to-end tests.

use super::*;

#[path = "zoo_sizes.rs"]
mod sizes;

/// The zoo's manifest, `bench/zoo/zoo.toml`.
#[derive(Debug, Deserialize)]
struct Manifest {
    photos: Photos,
    model: Vec<ZooModel>,
}

#[derive(Debug, Deserialize)]
struct Photos {
    package: String,
    calibration: Vec<String>,
    evaluation: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct ZooModel {
    name: String,
    package: String,
    member: String,
    sha256: String,
    /// The external data file the model names (its weights), a member of the same package, pinned too.
    #[serde(default)]
    external_data: Option<Pinned>,
    what: String,
    /// Its output row holds class scores (agreement of the top class means something).
    #[serde(default)]
    classes: bool,
    /// Small enough for the end-to-end tests.
    #[serde(default)]
    ci: bool,
    /// The floor of the end-to-end test: INT8 (defaults) output SQNR on the evaluation crops.
    #[serde(default)]
    ci_min_sqnr_db: Option<f64>,
    /// Side of the square crops (resized by the model's recipe).
    #[serde(default = "default_crop")]
    crop: u32,
    /// A storage variant of the pinned file (same network and weights), made by bench/scripts/zoo_derive.py.
    #[serde(default)]
    derive: Option<Derive>,
    /// Sizes the model serves (dynamic height/width): `--sizes` compares calibrating at the recipe's size
    /// with calibrating at all of them, at each.
    #[serde(default)]
    sizes: Vec<[u32; 2]>,
    /// Side of the square crops for `--sizes` (the largest size's scale).
    #[serde(default)]
    sizes_crop: Option<u32>,
    /// Measured by `--sizes` only (a dynamic-size variant of a model the zoo already measures).
    #[serde(default)]
    sizes_only: bool,
}

/// A package member pinned by its SHA-256.
#[derive(Debug, Clone, Deserialize, Serialize)]
struct Pinned {
    member: String,
    sha256: String,
}

/// How a zoo model is derived from its package's file: FP16 storage behind Casts and/or a uint8 NHWC input
/// with the mean subtracted in the graph, pinned by the derived file's SHA-256.
#[derive(Debug, Clone, Deserialize, Serialize)]
struct Derive {
    #[serde(default)]
    fp16_weights: bool,
    #[serde(default)]
    uint8_input_mean: Option<Vec<f32>>,
    /// The input's height and width declared dynamic (a graph that computes its shapes from its input).
    #[serde(default)]
    dynamic_size: bool,
    /// The model cut to one output: the first token of this `[batch, tokens, width]` tensor (a ViT's class
    /// token, the image embedding).
    #[serde(default)]
    embedding: Option<String>,
    sha256: String,
}

fn default_crop() -> u32 {
    320
}

#[derive(Debug, clap::Args)]
pub struct ZooArgs {
    /// Only these models (comma-separated names from bench/zoo/zoo.toml).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Only the models marked `ci`.
    #[arg(long)]
    ci: bool,
    /// Fetch the models and write the crops (and ci.json), nothing else.
    #[arg(long)]
    prepare: bool,
    /// Calibration crops per model (a multiple of the batch, 16, for quantize_static).
    #[arg(long, default_value_t = 256)]
    calib: usize,
    /// Evaluation crops per model.
    #[arg(long, default_value_t = 64)]
    eval: usize,
    /// Leave out ONNX Runtime's quantize_static.
    #[arg(long)]
    skip_peer: bool,
    /// Leave out NVIDIA ModelOpt.
    #[arg(long)]
    skip_modelopt: bool,
    /// Only the dynamic-shape comparison, on the models that list `sizes`: INT8 fidelity at each size when
    /// calibrated at the recipe's one size against at every size (writes zoo_sizes.json and its part of
    /// BENCHMARKS.md).
    #[arg(long)]
    sizes: bool,
    /// Also the residual axis (issue 22: whether `--residual auto` should join the default search): `quantize
    /// --residual auto` as a second auto row and, where the model has residual inputs to choose, every
    /// combination again with `--residual float` (zoo.json `residual`).
    #[arg(long)]
    residual_axis: bool,
    /// Only the peers (quantize_static, and ModelOpt unless `--skip-modelopt`), judged again: int8kit's rows
    /// (the FP32 pass, auto, every combination) are carried from zoo.json's row of the same model file and
    /// crops; a model without such a row is an error.
    #[arg(long, conflicts_with_all = ["skip_peer", "residual_axis", "sizes"])]
    peers_only: bool,
}

/// Where the zoo's models and crops live (ignored by git).
pub fn zoo_home() -> PathBuf {
    bench_home().join("zoo")
}

/// Samples per ONNX Runtime call, unless the model fixes its batch (the layout detector takes 1).
const BATCH: usize = 16;

const EVAL_SEED: u64 = 11;

/// One model ready to run: the file (hash checked), its recipe and its crops.
struct Prepared {
    spec: ZooModel,
    model: PathBuf,
    recipe: PathBuf,
    calib: PathBuf,
    eval: PathBuf,
}

fn manifest() -> anyhow::Result<Manifest> {
    let path = root().join("bench/zoo/zoo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn prepare(args: &ZooArgs) -> anyhow::Result<Vec<Prepared>> {
    let m = manifest()?;
    let unknown: Vec<&String> = args.models.iter().filter(|n| !m.model.iter().any(|z| &z.name == *n)).collect();
    if !unknown.is_empty() {
        bail!("--models: no zoo model named {unknown:?} in bench/zoo/zoo.toml");
    }
    let chosen: Vec<ZooModel> = m
        .model
        .into_iter()
        .filter(|z| (args.models.is_empty() || args.models.contains(&z.name)) && (!args.ci || z.ci))
        .filter(|z| if args.sizes { !z.sizes.is_empty() } else { !z.sizes_only })
        .collect();
    let home = zoo_home();
    let photo_dir = home.join("photos");
    let member = |p: &String| format!("skimage/data/{p}");
    let members: Vec<String> = m.photos.calibration.iter().chain(&m.photos.evaluation).map(member).collect();
    package_members(&m.photos.package, &linux_wheel("3.11"), &members, &photo_dir)?;
    let photos = |list: &[String]| list.iter().map(|p| photo_dir.join(member(p))).collect::<Vec<_>>();
    let (calib_photos, eval_photos) = (photos(&m.photos.calibration), photos(&m.photos.evaluation));
    let mut out = Vec::new();
    for spec in chosen {
        let dest = home.join("packages");
        let pinned: Vec<(&String, &String)> = std::iter::once((&spec.member, &spec.sha256))
            .chain(spec.external_data.iter().map(|d| (&d.member, &d.sha256)))
            .collect();
        let members: Vec<String> = pinned.iter().map(|(m, _)| m.to_string()).collect();
        package_members(&spec.package, &[], &members, &dest)?;
        for (member, sha256) in pinned {
            let file = dest.join(member);
            let got = sha256_file(&file)?;
            if got != *sha256 {
                bail!(
                    "{}: SHA-256 {got}, but bench/zoo/zoo.toml pins {sha256} for {} ({}): the package changed; check \
                     it and update the pin",
                    file.display(),
                    spec.name,
                    spec.package
                );
            }
        }
        let model = dest.join(&spec.member);
        let model = match &spec.derive {
            None => model,
            Some(d) => derived(&model, &spec.name, d)?,
        };
        let side = if args.sizes { spec.sizes_crop.unwrap_or(spec.crop) } else { spec.crop };
        // The folder names the photo list it was cut from, so that a changed split never reuses old crops.
        let crops = |photos: &[String], paths: &[PathBuf], set: &str, n: usize, seed: u64| {
            let digest = Sha256::digest(photos.join("\n").as_bytes());
            let tag: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
            make_crops_sized(paths, &home.join(format!("crops/{set}-{side}-{n}-{tag}")), n, seed, side)
        };
        let calib = crops(&m.photos.calibration, &calib_photos, "calib", args.calib, CALIB_SEED)?;
        let eval = crops(&m.photos.evaluation, &eval_photos, "eval", args.eval, EVAL_SEED)?;
        let recipe = root().join(format!("bench/zoo/recipes/{}.toml", spec.name));
        Recipe::load(&recipe).with_context(|| format!("the recipe of zoo model {}", spec.name))?;
        out.push(Prepared { spec, model, recipe, calib, eval });
    }
    Ok(out)
}

/// The storage variant `d` of `source`, made once into the zoo's `derived/` folder and hash-checked.
fn derived(source: &Path, name: &str, d: &Derive) -> anyhow::Result<PathBuf> {
    let out = zoo_home().join(format!("derived/{name}.onnx"));
    if !out.is_file() || sha256_file(&out)? != d.sha256 {
        std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
        let python = venv_python("peer-venv", PEER_PINS)?;
        let mut cmd = Command::new(python);
        cmd.arg(root().join("bench/scripts/zoo_derive.py")).arg(source).arg(&out);
        if d.fp16_weights {
            cmd.arg("--fp16-weights");
        }
        if let Some(mean) = &d.uint8_input_mean {
            cmd.arg("--uint8-input").arg(mean.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(","));
        }
        if d.dynamic_size {
            cmd.arg("--dynamic-size");
        }
        if let Some(tensor) = &d.embedding {
            cmd.arg("--embedding").arg(tensor);
        }
        run_ok(&mut cmd, &format!("deriving zoo model {name}"))?;
    }
    let got = sha256_file(&out)?;
    if got != d.sha256 {
        bail!("{}: SHA-256 {got}, but bench/zoo/zoo.toml pins {} for the derived {name}", out.display(), d.sha256);
    }
    Ok(out)
}

/// What the end-to-end tests read (`int8kit/tests/it/zoo.rs`).
#[derive(Debug, Serialize)]
struct CiCase<'a> {
    name: &'a str,
    what: &'a str,
    model: &'a Path,
    recipe: &'a Path,
    calib: &'a Path,
    eval: &'a Path,
    min_sqnr_db: Option<f64>,
}

pub fn run(args: &ZooArgs) -> anyhow::Result<()> {
    let prepared = prepare(args)?;
    let manifest_order: Vec<String> = manifest()?.model.into_iter().map(|m| m.name).collect();
    if args.prepare {
        let cases: Vec<CiCase> = prepared
            .iter()
            .filter(|p| p.spec.ci)
            .map(|p| CiCase {
                name: &p.spec.name,
                what: &p.spec.what,
                model: &p.model,
                recipe: &p.recipe,
                calib: &p.calib,
                eval: &p.eval,
                min_sqnr_db: p.spec.ci_min_sqnr_db,
            })
            .collect();
        // Only a preparation for the tests (`--ci`, its crop counts) says what the tests run on: preparing
        // other models for a bench run leaves the tests' list alone.
        if !args.ci {
            eprintln!("{} zoo models ready", prepared.len());
            return Ok(());
        }
        let path = zoo_home().join("ci.json");
        safe_io::write_atomic(&path, &serde_json::to_vec_pretty(&cases)?)?;
        eprintln!("{} zoo models ready; {} for the tests in {}", prepared.len(), cases.len(), path.display());
        return Ok(());
    }
    let bin = build_int8kit()?;
    if args.sizes {
        return sizes::run(&prepared, args, &bin);
    }
    let me = std::env::current_exe()?;
    let python = if args.skip_peer { None } else { Some(venv_python("peer-venv", PEER_PINS)?) };
    let modelopt_python = if args.skip_modelopt { None } else { Some(venv_python("modelopt-venv", MODELOPT_PINS)?) };
    let pythons = Pythons { ort: python.as_deref(), modelopt: modelopt_python.as_deref() };
    let work = root().join("target/bench/zoo");
    let earlier: Option<Zoo> = if args.peers_only {
        let path = root().join("zoo.json");
        let bytes = std::fs::read(&path).with_context(|| {
            format!("--peers-only carries int8kit's rows from {}: run the zoo first", path.display())
        })?;
        Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?)
    } else {
        None
    };
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for p in &prepared {
        eprintln!("== {} ({}) ==", p.spec.name, p.spec.what);
        match run_model(p, args, &bin, &me, &work.join(&p.spec.name), &pythons, earlier.as_ref()) {
            Ok(r) => results.push(r),
            // One model's failure is a result to fix, not a reason to lose the others' hour of measurements.
            Err(e) => {
                eprintln!("  {}: {e:#}", p.spec.name);
                failed.push(format!("{}: {e:#}", p.spec.name));
            }
        }
        // Written after every model, so that an interrupted run keeps what it measured.
        write_zoo(args, &manifest_order, &results)?;
    }
    if !failed.is_empty() {
        bail!("the zoo could not measure {} model(s):\n{}", failed.len(), failed.join("\n"));
    }
    Ok(())
}

/// zoo.json and the zoo part of BENCHMARKS.md from `results`, with the earlier zoo.json's rows of the models
/// this run has not measured (yet), which the command line then says.
fn write_zoo(args: &ZooArgs, manifest_order: &[String], results: &[ZooResult]) -> anyhow::Result<()> {
    let json_path = root().join("zoo.json");
    let earlier: Option<Zoo> = std::fs::read(&json_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut models = results.to_vec();
    let carried = match &earlier {
        Some(z) => carry_peers(z, &mut models, args.skip_peer, args.skip_modelopt),
        None => Vec::new(),
    };
    let pins = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Rows kept from an earlier run keep the peers that run had.
    let (mut peer, mut modelopt) = (pins(PEER_PINS), pins(MODELOPT_PINS));
    let kept: Vec<ZooResult> = match earlier {
        Some(z) => {
            let measured_on = z.machine.clone();
            let kept: Vec<ZooResult> = z
                .models
                .into_iter()
                .filter(|m| !results.iter().any(|r| r.name == m.name))
                .map(|m| ZooResult { machine: m.machine.or_else(|| Some(measured_on.clone())), ..m })
                .collect();
            if args.skip_peer && ((kept.is_empty() && carried.is_empty()) || z.peer.is_empty()) {
                peer.clear();
            }
            if args.skip_modelopt && ((kept.is_empty() && carried.is_empty()) || z.modelopt.is_empty()) {
                modelopt.clear();
            }
            kept
        }
        None => {
            if args.skip_peer {
                peer.clear();
            }
            if args.skip_modelopt {
                modelopt.clear();
            }
            Vec::new()
        }
    };
    let kept_names: Vec<String> = kept.iter().map(|m| m.name.clone()).collect();
    models.extend(kept);
    models.sort_by_key(|r| manifest_order.iter().position(|n| *n == r.name).unwrap_or(usize::MAX));
    let mut command = format!("cargo xtask bench zoo --calib {} --eval {}", args.calib, args.eval);
    if !args.models.is_empty() {
        command += &format!(" --models {}", args.models.join(","));
    }
    if args.skip_peer {
        command += " --skip-peer";
    }
    if args.skip_modelopt {
        command += " --skip-modelopt";
    }
    if args.residual_axis {
        command += " --residual-axis";
    }
    if args.peers_only {
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        command +=
            &format!(" --peers-only; int8kit's rows of {} from an earlier run on the same crops", names.join(", "));
    }
    if !kept_names.is_empty() {
        command += &format!("; the rows of {} from an earlier run", kept_names.join(", "));
    }
    if !carried.is_empty() {
        let whose = match (args.skip_peer, args.skip_modelopt) {
            (true, false) => "quantize_static's",
            (false, true) => "ModelOpt's",
            _ => "the peers'",
        };
        command += &format!("; {whose} rows of {} from an earlier run on the same crops", carried.join(", "));
    }
    let zoo = Zoo {
        format: "int8kit-bench-zoo".into(),
        version: 1,
        machine: machine(),
        onnxruntime: runtime::version()?,
        peer,
        modelopt,
        command,
        models,
    };
    safe_io::write_atomic(&json_path, &serde_json::to_vec_pretty(&zoo)?)?;
    let generated = zoo_markdown(&zoo);
    let md_path = root().join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&md_path).unwrap_or_else(|_| "# Benchmarks\n".into());
    safe_io::write_atomic(&md_path, splice_between(&doc, ZOO_BEGIN, ZOO_END, &generated).as_bytes())?;
    eprintln!("  wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

/// A peer left out this run (`skip_peer`: quantize_static, `skip_modelopt`: ModelOpt) keeps its rows from
/// `earlier` where they were measured on the same model file and crops (peers do not depend on int8kit).
/// zoo.json files from before the crops were recorded count as the same crops: the split they were made with
/// is the current one (BENCHMARKS.md says so). Returns the models whose rows were carried.
fn carry_peers(earlier: &Zoo, results: &mut [ZooResult], skip_peer: bool, skip_modelopt: bool) -> Vec<String> {
    let mut carried = Vec::new();
    for r in results.iter_mut() {
        let Some(e) = earlier.models.iter().find(|e| {
            e.name == r.name
                && e.sha256 == r.sha256
                && e.calibration_images == r.calibration_images
                && e.evaluation_images == r.evaluation_images
                && e.crops.as_ref().is_none_or(|c| Some(c) == r.crops.as_ref())
        }) else {
            continue;
        };
        let mut any = false;
        for (m, run) in
            e.peers.iter().filter(|(m, _)| if is_quantize_static(&m.label) { skip_peer } else { skip_modelopt })
        {
            any = true;
            match r.peers.iter_mut().find(|(now, _)| now.label == m.label) {
                // Measured again from the model it wrote then: that run's time, this measurement.
                Some((_, placeholder)) => *placeholder = run.clone(),
                None => r.peers.push((m.clone(), run.clone())),
            }
        }
        if any {
            carried.push(r.name.clone());
        }
    }
    carried
}

#[derive(Debug, Serialize, Deserialize)]
struct Zoo {
    format: String,
    version: u32,
    machine: Machine,
    onnxruntime: String,
    peer: Vec<String>,
    modelopt: Vec<String>,
    command: String,
    models: Vec<ZooResult>,
}

/// One artifact measured on the evaluation crops.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measured {
    /// "entropy/int8/fp16"-style label of the explicit options, or the tool's name.
    label: String,
    quality: Option<Quality>,
    /// Why there is no quality (the tool failed, or ONNX Runtime could not run its model).
    error: Option<String>,
    /// `int8kit lint` errors and warnings of the artifact.
    lint: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ZooResult {
    name: String,
    what: String,
    package: String,
    sha256: String,
    classes: bool,
    calibration_images: usize,
    evaluation_images: usize,
    /// The FP32 forward pass over the calibration images (preloaded by the bench child, same threads).
    fp32_forward: Run,
    /// `int8kit quantize` with its defaults, from the images: calibration, the auto search, the self-check.
    auto_run: Run,
    /// What auto chose (method/attention/float type) and why.
    auto_chose: String,
    auto_reason: String,
    auto: Measured,
    /// Every explicit combination of method x attention (where the model has attention MatMuls) x float type
    /// x weight rounding (nearest, and `gptq` labelled so; rows before 2026-12-06 have nearest only).
    combinations: Vec<Measured>,
    peers: Vec<(Measured, Run)>,
    /// The crop folders measured on (their names hash the photo split, size and count): peers' rows carried
    /// over from an earlier run must come from the same ones. Absent in zoo.json files before 2026-12-04.
    #[serde(default)]
    crops: Option<String>,
    /// With `--residual-axis`: the search with the residual axis, and the combinations with a float residual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    residual: Option<ResidualRows>,
    /// The machine this row was measured on: rows carried over from an earlier run keep theirs. Absent in
    /// zoo.json files before 2026-12-05 (sixth stop), whose rows were all measured on the file's `machine`.
    #[serde(default)]
    machine: Option<Machine>,
    /// The standard error of auto's pooled SQNR minus the best combination's, over the evaluation crops
    /// (paired bootstrap, the best combination fixed): how far the table's gap is resolved by these crops.
    /// Absent in rows before 2026-12-06 (tenth stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auto_gap_se_db: Option<f64>,
}

/// The residual axis measured (`--residual-axis`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResidualRows {
    /// `quantize --residual auto`: its run, what it chose (method/attention/float type/residual) and its
    /// measurement.
    auto_run: Run,
    auto_chose: String,
    auto: Measured,
    /// Whether the model has residual inputs to choose (the search's axes name it); without, no combinations.
    searched: bool,
    /// Every combination of `combinations` again with `--residual float`.
    combinations: Vec<Measured>,
}

/// Whether a peer's row is ONNX Runtime's quantize_static (else ModelOpt's).
fn is_quantize_static(label: &str) -> bool {
    label.starts_with(QUANTIZE_STATIC_LABEL)
}

fn run_model(
    p: &Prepared,
    args: &ZooArgs,
    bin: &Path,
    me: &Path,
    dir: &Path,
    pythons: &Pythons,
    earlier: Option<&Zoo>,
) -> anyhow::Result<ZooResult> {
    std::fs::create_dir_all(dir)?;
    let loaded = graph::Model::load(&p.model)?;
    let batch = loaded.fixed_batch(&loaded.resolve_input(None)?.name).unwrap_or(BATCH);
    let common = |cmd: &mut Command| {
        cmd.args(["--model".as_ref(), p.model.as_os_str()])
            .args(["--images".as_ref(), p.calib.as_os_str()])
            .args(["--recipe".as_ref(), p.recipe.as_os_str()])
            .args(["--batch-size", &batch.to_string()]);
    };
    if let Some(earlier) = earlier {
        let crops = crops_name(p);
        let Some(row) = earlier.models.iter().find(|e| {
            e.name == p.spec.name
                && e.sha256 == p.spec.sha256
                && e.calibration_images == args.calib
                && e.evaluation_images == args.eval
                && e.crops.as_deref() == Some(crops.as_str())
        }) else {
            bail!("zoo.json has no row of {} on these crops to carry int8kit's results from", p.spec.name);
        };
        let w = workload(p, args, batch);
        let peer_runs = zoo_peer_runs(&w, args, dir, me, pythons, &common)?;
        let peers = judge_peers(&mut Judge::new(&w)?, peer_runs);
        let best = peers.iter().filter_map(|(m, _)| m.quality.as_ref()).map(|q| q.sqnr_db).fold(f64::NAN, f64::max);
        eprintln!("  best peer {best:.2} dB (int8kit's rows carried)");
        return Ok(ZooResult { peers, ..row.clone() });
    }
    let mut plain = Command::new(me);
    plain.arg("bench-child");
    common(&mut plain);
    let fp32_forward = measure_tree(&mut plain, &dir.join("limit.log"), None)?.ok()?;
    eprintln!("  FP32 forward pass {:.1} s", fp32_forward.wall_s);

    // `int8kit quantize` with the defaults and `extra` flags into `dir/name`: its run and its ranges.json.
    let quantize = |name: &str, extra: &[&str]| -> anyhow::Result<(Run, serde_json::Value)> {
        let out = dir.join(name);
        let _ = std::fs::remove_dir_all(&out);
        let mut quantize = int8kit(bin, "quantize");
        common(&mut quantize);
        quantize.args(extra).args(["--quiet", "--out"]).arg(&out);
        let run = measure_tree(&mut quantize, &dir.join(format!("{name}.log")), None)?.ok()?;
        Ok((run, serde_json::from_slice(&std::fs::read(out.join("ranges.json"))?)?))
    };
    // No attention MatMuls: ranges.json has null for the attention choice.
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| "default".to_string(), str::to_string);
    let chose =
        |ranges: &serde_json::Value, keys: &[&str]| keys.iter().map(|k| text(&ranges[k])).collect::<Vec<_>>().join("/");
    let searched = |ranges: &serde_json::Value, axis: &str| {
        ranges["search"]["axes"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str() == Some(axis)))
    };
    let auto_dir = dir.join("auto");
    let (auto_run, ranges) = quantize("auto", &[])?;
    // Weight rounding is named where GPTQ's was written, as the combinations' labels name it.
    let gptq = |ranges: &serde_json::Value| {
        if ranges["weight_rounding"]["chosen"] == "gptq" {
            "/gptq"
        } else {
            ""
        }
    };
    let auto_chose = chose(&ranges, &["method", "attention", "float_type"]) + gptq(&ranges);
    let auto_reason = text(&ranges["search"]["reason"]);
    let searched_attention = searched(&ranges, "attention");
    eprintln!("  auto {:.1} s: {auto_chose}", auto_run.wall_s);

    let residual_auto = if args.residual_axis {
        let (run, ranges) = quantize("auto-residual", &["--residual", "auto"])?;
        let chose = chose(&ranges, &["method", "attention", "float_type", "residual"]) + gptq(&ranges);
        let searched = searched(&ranges, "residual");
        eprintln!("  auto with the residual axis {:.1} s: {chose} (residual searched: {searched})", run.wall_s);
        Some((run, chose, searched, dir.join("auto-residual").join("model.qdq.onnx")))
    } else {
        None
    };
    let hist = dir.join("calib.hist");
    let mut calibrate = int8kit(bin, "calibrate");
    common(&mut calibrate);
    calibrate.args(["--quiet", "--out"]).arg(&hist);
    measure_tree(&mut calibrate, &dir.join("calibrate.log"), None)?.ok()?;
    let attentions: &[&str] = if searched_attention { &["int8", "float"] } else { &["default"] };
    let residuals: &[&str] = match &residual_auto {
        Some((_, _, true, _)) => &["default", "float"],
        _ => &["default"],
    };
    let (mut combos, mut residual_combos) = (Vec::new(), Vec::new());
    for &residual in residuals {
        // GPTQ's rounding is one of the explicit options (auto may choose it): every combination of the
        // default residual again with `--weight-rounding gptq`, which reads the calibration folder.
        let roundings: &[&str] = if residual == "default" { &["nearest", "gptq"] } else { &["nearest"] };
        for &rounding in roundings {
            for method in ["entropy", "mse", "percentile", "max"] {
                for &attention in attentions {
                    for float in ["fp16", "fp32"] {
                        let mut label = format!("{method}/{attention}/{float}");
                        for (axis, default) in [(residual, "default"), (rounding, "nearest")] {
                            if axis != default {
                                label += &format!("/{axis}");
                            }
                        }
                        let out = dir.join(label.replace('/', "-"));
                        let _ = std::fs::remove_dir_all(&out);
                        let mut analyze = int8kit(bin, "analyze");
                        analyze
                            .args(["--model".as_ref(), p.model.as_os_str(), "--hist".as_ref(), hist.as_os_str()])
                            .args(["--method", method, "--float-type", float, "--quiet", "--out"])
                            .arg(&out);
                        if attention != "default" {
                            analyze.args(["--attention", attention]);
                        }
                        if residual != "default" {
                            analyze.args(["--residual", residual]);
                        }
                        if rounding != "nearest" {
                            analyze.args(["--weight-rounding", rounding]).arg("--images").arg(&p.calib);
                        }
                        let r = measure_tree(&mut analyze, &dir.join("analyze.log"), None)?;
                        let list = if residual == "default" { &mut combos } else { &mut residual_combos };
                        list.push((label, r, out.join("model.qdq.onnx")));
                    }
                }
            }
        }
    }
    let w = workload(p, args, batch);
    let peer_runs = zoo_peer_runs(&w, args, dir, me, pythons, &common)?;

    let mut judge = Judge::new(&w)?;
    let mut measure = |label: String, model: Option<&Path>, ours: bool| -> anyhow::Result<Measured> {
        let lint = match (ours, model) {
            (true, Some(model)) => Some(lint_counts(bin, model)?),
            _ => None,
        };
        Ok(judged(&mut judge, label, model, lint))
    };
    let auto = measure("auto".into(), Some(&auto_dir.join("model.qdq.onnx")), true)?;
    let mut measure_all = |list: &[(String, Run, PathBuf)]| -> anyhow::Result<Vec<Measured>> {
        let mut measured = Vec::new();
        for (label, r, model) in list {
            let written = (r.outcome == "ok").then_some(model.as_path());
            let mut m = measure(label.clone(), written, true)?;
            if r.outcome != "ok" {
                m.error = Some(r.outcome.clone());
            }
            measured.push(m);
        }
        Ok(measured)
    };
    let combinations = measure_all(&combos)?;
    let residual_combinations = measure_all(&residual_combos)?;
    let residual = match residual_auto {
        Some((auto_run, auto_chose, searched, model)) => Some(ResidualRows {
            auto: measure("auto, --residual auto".into(), Some(&model), true)?,
            auto_run,
            auto_chose,
            searched,
            combinations: residual_combinations,
        }),
        None => None,
    };
    let peers = judge_peers(&mut judge, peer_runs);
    let sqnr = |m: &Measured| m.quality.as_ref().map_or(f64::NAN, |q| q.sqnr_db);
    if let Some(r) = &residual {
        eprintln!(
            "  residual axis: auto {:.2} dB ({}); best float-residual combination {:.2} dB",
            sqnr(&r.auto),
            r.auto_chose,
            r.combinations.iter().map(sqnr).fold(f64::NAN, f64::max)
        );
    }
    eprintln!(
        "  auto {:.2} dB; best combination {:.2} dB; best peer {:.2} dB",
        sqnr(&auto),
        combinations.iter().map(sqnr).fold(f64::NAN, f64::max),
        peers.iter().map(|(m, _)| sqnr(m)).fold(f64::NAN, f64::max)
    );
    let auto_gap_se_db = gap_standard_error(&auto, &combinations);
    Ok(ZooResult {
        name: p.spec.name.clone(),
        what: p.spec.what.clone(),
        package: p.spec.package.clone(),
        sha256: p.spec.sha256.clone(),
        classes: p.spec.classes,
        calibration_images: args.calib,
        evaluation_images: args.eval,
        fp32_forward,
        auto_run,
        auto_chose,
        auto_reason,
        auto,
        combinations,
        peers,
        crops: Some(crops_name(p)),
        auto_gap_se_db,
        residual,
        machine: Some(machine()),
    })
}

/// Resamples of the evaluation crops behind [`gap_standard_error`].
const GAP_RESAMPLES: usize = 2000;

/// The paired bootstrap standard error (dB) of `auto`'s pooled SQNR minus that of the best of `combinations`
/// (by pooled SQNR, fixed): every resample draws the crops with replacement and measures both models on the
/// same draw. Seeded, so a row is reproducible. `None` without per-image energies for both.
fn gap_standard_error(auto: &Measured, combinations: &[Measured]) -> Option<f64> {
    use rand::{Rng, SeedableRng};
    fn energies(m: &Measured) -> Option<&[(f64, f64)]> {
        m.quality.as_ref().map(|q| q.energies.as_slice()).filter(|e| !e.is_empty())
    }
    let best = combinations
        .iter()
        .filter(|m| energies(m).is_some())
        .max_by(|a, b| a.quality.as_ref().unwrap().sqnr_db.total_cmp(&b.quality.as_ref().unwrap().sqnr_db))?;
    let (a, b) = (energies(auto)?, energies(best)?);
    if a.len() != b.len() {
        return None;
    }
    let pooled = |e: &[(f64, f64)], draw: &[usize]| {
        let (signal, noise) = draw.iter().fold((0.0, 0.0), |(s, n), &i| (s + e[i].0, n + e[i].1));
        10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(GAP_RESAMPLES as u64);
    let mut draw = vec![0; a.len()];
    let gaps: Vec<f64> = (0..GAP_RESAMPLES)
        .map(|_| {
            draw.iter_mut().for_each(|i| *i = rng.gen_range(0..a.len()));
            pooled(a, &draw) - pooled(b, &draw)
        })
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    Some((gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (gaps.len() - 1) as f64).sqrt())
}

/// The zoo's workload of one model: its crops, recipe and the peers this run measures.
fn workload(p: &Prepared, args: &ZooArgs, batch: usize) -> Workload {
    Workload {
        name: p.spec.name.clone(),
        model: p.model.clone(),
        calib: p.calib.clone(),
        recipe: p.recipe.clone(),
        batch,
        repeat: 1,
        also_all_tensors: false,
        peer_methods: if args.skip_peer { vec![] } else { vec!["Entropy", "Percentile", "MinMax"] },
        modelopt: !args.skip_modelopt,
        eval: Eval::Fidelity { images: p.eval.clone() },
        variants: None,
    }
}

/// The peers' runs of `w`; a skipped peer's models from an earlier run on the same crops are measured again,
/// as everything else is (their rows and times are carried from zoo.json; `carry_peers` keeps these
/// measurements).
fn zoo_peer_runs(
    w: &Workload,
    args: &ZooArgs,
    dir: &Path,
    me: &Path,
    pythons: &Pythons,
    common: &dyn Fn(&mut Command),
) -> anyhow::Result<Vec<PeerRun>> {
    let (mut runs, _) = run_peers(w, dir, me, args.calib, pythons, common, &mut Vec::new())?;
    runs.extend(kept_peer_models(dir, args.skip_peer, args.skip_modelopt));
    Ok(runs)
}

/// `model` judged on the evaluation crops (`None`: the tool wrote none); an error becomes the row's error.
fn judged(judge: &mut Judge, label: String, model: Option<&Path>, lint: Option<(usize, usize)>) -> Measured {
    let Some(model) = model else {
        return Measured { label, quality: None, error: Some("wrote no model".into()), lint: None };
    };
    match judge.quality(model) {
        Ok(q) => Measured { label, quality: Some(q), error: None, lint },
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            Measured { label, quality: None, error: Some(first), lint }
        }
    }
}

/// Every peer's model judged, beside the run that wrote it (a failed run's outcome is its row's error).
fn judge_peers(judge: &mut Judge, runs: Vec<PeerRun>) -> Vec<(Measured, Run)> {
    runs.into_iter()
        .map(|(name, run, model)| {
            let mut m = judged(judge, name, model.as_deref(), None);
            if run.outcome != "ok" {
                m.error = Some(run.outcome.clone());
            }
            (m, run)
        })
        .collect()
}

/// The models a skipped peer wrote in an earlier run in `dir` (its runs are carried from zoo.json, with the
/// time they took then; the run here is a placeholder that [`carry_peers`] replaces).
fn kept_peer_models(dir: &Path, skip_peer: bool, skip_modelopt: bool) -> Vec<PeerRun> {
    let mut kept = Vec::new();
    let placeholder = || Run { wall_s: 0.0, peak_rss_mb: 0.0, outcome: "ok".into() };
    if skip_peer {
        for method in ["Entropy", "Percentile", "MinMax"] {
            let model = dir.join(format!("peer-{}.onnx", method.to_lowercase()));
            if model.is_file() {
                kept.push((format!("{QUANTIZE_STATIC_LABEL} {method}"), placeholder(), Some(model)));
            }
        }
    }
    let modelopt = dir.join("modelopt-entropy.onnx");
    if skip_modelopt && modelopt.is_file() {
        kept.push(("ModelOpt 0.47 entropy (FP16 float parts)".into(), placeholder(), Some(modelopt)));
    }
    kept
}

/// `calib-.../eval-...`: the crop folders' names.
fn crops_name(p: &Prepared) -> String {
    let name = |d: &Path| d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{}/{}", name(&p.calib), name(&p.eval))
}

/// Auto's mean per-sample SQNR against the best combination's by that statistic: `+0.12 (label 30.45)`, or `-`
/// where either was not recorded.
fn per_sample_gap(auto: &Measured, combinations: &[Measured]) -> String {
    let per_sample = |m: &Measured| m.quality.as_ref().and_then(|q| q.mean_sample_sqnr_db);
    let best = combinations.iter().filter_map(|m| Some((per_sample(m)?, m))).max_by(|a, b| a.0.total_cmp(&b.0));
    match (per_sample(auto), best) {
        (Some(a), Some((b, m))) => format!("{:+.2} ({} {b:.2})", a - b, m.label),
        _ => "-".into(),
    }
}

/// `int8kit lint --json`: (errors, warnings).
fn lint_counts(bin: &Path, model: &Path) -> anyhow::Result<(usize, usize)> {
    let out = int8kit(bin, "lint").arg("--json").arg(model).output()?;
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!("int8kit lint --json {}: {}", model.display(), String::from_utf8_lossy(&out.stderr))
    })?;
    let count = |s: &str| findings.iter().filter(|f| f["severity"] == s).count();
    Ok((count("error"), count("warning")))
}

const ZOO_BEGIN: &str = "<!-- generated by `cargo xtask bench zoo`: begin -->";

const ZOO_END: &str = "<!-- generated by `cargo xtask bench zoo`: end -->";

fn zoo_markdown(z: &Zoo) -> String {
    let db = |m: &Measured| match &m.quality {
        Some(q) => format!("{:.2}", q.sqnr_db),
        None => "fails".into(),
    };
    let best = |list: &mut dyn Iterator<Item = &Measured>| {
        list.filter(|m| m.quality.is_some())
            .max_by(|a, b| a.quality.as_ref().unwrap().sqnr_db.total_cmp(&b.quality.as_ref().unwrap().sqnr_db))
            .cloned()
    };
    let mut s = format!(
        "Measured by `{}` on {} ({} cores), ONNX Runtime {}; peers {} and {}. Output SQNR (dB) of each INT8 model \
         against the FP32 model on crops of photos that calibration never saw; agreement (top class) where the \
         model has classes. INT8 models run unoptimized (what their graphs compute).\n\n",
        z.command,
        z.machine.cpu,
        z.machine.cores,
        z.onnxruntime,
        z.peer.join(" "),
        if z.modelopt.is_empty() { "no ModelOpt".to_string() } else { z.modelopt.join(" ") }
    );
    // Rows carried over from runs on other machines say which (their times are that machine's).
    let mut elsewhere: Vec<(&Machine, Vec<&str>)> = Vec::new();
    for r in z.models.iter() {
        let Some(m) = r.machine.as_ref().filter(|m| **m != z.machine) else { continue };
        match elsewhere.iter_mut().find(|(other, _)| *other == m) {
            Some((_, names)) => names.push(&r.name),
            None => elsewhere.push((m, vec![&r.name])),
        }
    }
    for (m, names) in &elsewhere {
        s += &format!(
            "The rows of {} were measured on {} ({} cores), their times on that machine.\n\n",
            names.join(", "),
            m.cpu,
            m.cores
        );
    }
    s += "The column `auto - best, per sample` compares by the statistic auto ranks its candidates by, the mean \
          over the crops of each crop's SQNR in dB, with the best combination by that statistic (`-` for rows \
          measured before it was recorded). `auto - best` carries, where recorded, the standard error of that gap \
          over the evaluation crops (`+- x`: paired bootstrap of the crops, the best combination fixed): a gap \
          within about two of them is not resolved by these crops.\n\n";
    s += "| model | what | best combination | auto (default) | auto - best | auto - best, per sample | best peer | \
          auto - best peer | auto time / FP32 pass | lint errors |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for r in &z.models {
        let best_combo = best(&mut r.combinations.iter());
        let best_peer = best(&mut r.peers.iter().map(|(m, _)| m));
        let agreement = |m: &Measured| match (&m.quality, r.classes) {
            (Some(q), true) => format!(", {:.3}", q.agreement),
            _ => String::new(),
        };
        let diff = |a: &Measured, b: &Option<Measured>| match (&a.quality, b.as_ref().and_then(|b| b.quality.as_ref()))
        {
            (Some(a), Some(b)) => format!("{:+.2}", a.sqnr_db - b.sqnr_db),
            _ => "-".into(),
        };
        let lint_errors: usize =
            std::iter::once(&r.auto).chain(&r.combinations).filter_map(|m| m.lint).map(|(e, _)| e).sum();
        s += &format!(
            "| {} | {} | {} | {} ({}{}) | {} | {} | {} | {} | {:.1} s / {:.1} s = {:.2}x | {} |\n",
            r.name,
            r.what,
            best_combo.as_ref().map_or("-".into(), |m| format!("{} {}{}", m.label, db(m), agreement(m))),
            db(&r.auto),
            r.auto_chose,
            agreement(&r.auto),
            diff(&r.auto, &best_combo) + &r.auto_gap_se_db.map_or(String::new(), |se| format!(" +- {se:.2}")),
            per_sample_gap(&r.auto, &r.combinations),
            best_peer.as_ref().map_or("-".into(), |m| format!("{} {}", m.label, db(m))),
            diff(&r.auto, &best_peer),
            r.auto_run.wall_s,
            r.fp32_forward.wall_s,
            r.auto_run.wall_s / r.fp32_forward.wall_s,
            lint_errors
        );
    }
    s += "\nEvery combination (SQNR, dB; attention columns only for models with attention MatMuls; `/gptq`: \
          `--weight-rounding gptq`, measured since 2026-12-06):\n\n";
    for r in &z.models {
        let cells: Vec<String> = r.combinations.iter().map(|m| format!("{} {}", m.label, db(m))).collect();
        let peers: Vec<String> = r.peers.iter().map(|(m, _)| format!("{} {}", m.label, db(m))).collect();
        s += &format!(
            "- **{}**: {}; peers: {}\n",
            r.name,
            cells.join(", "),
            if peers.is_empty() { "-".into() } else { peers.join(", ") }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, crops: Option<&str>, peers: &[&str]) -> ZooResult {
        let run = Run { wall_s: 1.0, peak_rss_mb: 1.0, outcome: "ok".into() };
        let measured = |label: &str| Measured { label: label.into(), quality: None, error: None, lint: None };
        ZooResult {
            name: name.into(),
            what: String::new(),
            package: String::new(),
            sha256: "abc".into(),
            classes: false,
            calibration_images: 256,
            evaluation_images: 64,
            fp32_forward: run.clone(),
            auto_run: run.clone(),
            auto_chose: String::new(),
            auto_reason: String::new(),
            auto: measured("auto"),
            combinations: Vec::new(),
            peers: peers.iter().map(|p| (measured(p), run.clone())).collect(),
            crops: crops.map(str::to_string),
            residual: None,
            machine: None,
            auto_gap_se_db: None,
        }
    }

    fn zoo(models: Vec<ZooResult>) -> Zoo {
        Zoo {
            format: String::new(),
            version: 1,
            machine: machine(),
            onnxruntime: String::new(),
            peer: Vec::new(),
            modelopt: Vec::new(),
            command: String::new(),
            models,
        }
    }

    #[test]
    fn the_per_sample_gap_is_to_the_best_combination_by_that_statistic() {
        let measured = |label: &str, pooled: f64, per_sample: Option<f64>| Measured {
            label: label.into(),
            quality: Some(Quality {
                images: 64,
                fp32_top1: None,
                int8_top1: None,
                agreement: 1.0,
                cosine_mean: 0.99,
                sqnr_db: pooled,
                mean_sample_sqnr_db: per_sample,
                energies: Vec::new(),
            }),
            error: None,
            lint: None,
        };
        let auto = measured("auto", 31.0, Some(33.0));
        // The best by pooled SQNR is not the best per sample.
        let combinations = [measured("a", 32.0, Some(32.5)), measured("b", 31.5, Some(33.25))];
        assert_eq!(per_sample_gap(&auto, &combinations), "-0.25 (b 33.25)");
        assert_eq!(per_sample_gap(&measured("auto", 31.0, None), &combinations), "-");
        assert_eq!(per_sample_gap(&auto, &[measured("old", 30.0, None)]), "-");
    }

    #[test]
    fn the_gap_standard_error_is_zero_for_the_same_model_and_grows_with_crops_that_disagree() {
        let measured = |label: &str, energies: Vec<(f64, f64)>| {
            let (signal, noise) = energies.iter().fold((0.0, 0.0), |(s, n), e| (s + e.0, n + e.1));
            Measured {
                label: label.into(),
                quality: Some(Quality {
                    images: energies.len() as u64,
                    fp32_top1: None,
                    int8_top1: None,
                    agreement: 1.0,
                    cosine_mean: 0.99,
                    sqnr_db: 10.0 * (signal / noise).log10(),
                    mean_sample_sqnr_db: None,
                    energies,
                }),
                error: None,
                lint: None,
            }
        };
        let even: Vec<(f64, f64)> = (0..64).map(|i| (1.0 + i as f64, 0.01)).collect();
        // The same outputs as the best combination: every resample gives a gap of 0.
        let same = gap_standard_error(&measured("auto", even.clone()), &[measured("a", even.clone())]);
        assert_eq!(same, Some(0.0));
        // Half the crops better, half worse by a factor of 4 in noise: the gap depends on which are drawn.
        let mixed: Vec<(f64, f64)> =
            even.iter().enumerate().map(|(i, &(s, n))| (s, if i % 2 == 0 { n * 4.0 } else { n / 4.0 })).collect();
        let se = gap_standard_error(&measured("auto", mixed.clone()), &[measured("a", even.clone())]).unwrap();
        assert!(se > 0.3 && se < 3.0, "{se}");
        // Against the best combination by pooled SQNR, whichever comes first; deterministic.
        let worse: Vec<(f64, f64)> = even.iter().map(|&(s, n)| (s, n * 10.0)).collect();
        let list = [measured("worse", worse), measured("a", even.clone())];
        assert_eq!(gap_standard_error(&measured("auto", mixed.clone()), &list), Some(se));
        // Without per-image energies (rows read back from zoo.json) there is none.
        assert_eq!(gap_standard_error(&measured("auto", Vec::new()), &[measured("a", even)]), None);
    }

    #[test]
    fn rows_from_another_machine_say_so() {
        let elsewhere = Machine { cpu: "Other CPU".into(), cores: 4, memory_gb: 8.0 };
        let mut z = zoo(vec![result("here", None, &[]), result("there", None, &[]), result("old", None, &[])]);
        z.models[0].machine = Some(z.machine.clone());
        z.models[1].machine = Some(elsewhere);
        let text = zoo_markdown(&z);
        assert!(text.contains("The rows of there were measured on Other CPU (4 cores)"), "{text}");
        assert_eq!(text.matches("were measured on").count(), 1, "{text}");
    }

    #[test]
    fn skipped_peers_keep_their_rows_only_from_the_same_model_and_crops() {
        let quantize_static = format!("{QUANTIZE_STATIC_LABEL} Entropy");
        let peers = [quantize_static.as_str(), "ModelOpt 0.47 entropy (FP16 float parts)"];
        let earlier = zoo(vec![
            result("same", Some("calib-a/eval-b"), &peers),
            result("other-crops", Some("calib-x/eval-b"), &peers),
            result("unrecorded", None, &peers),
        ]);
        let mut now = vec![
            result("same", Some("calib-a/eval-b"), &[]),
            result("other-crops", Some("calib-a/eval-b"), &[]),
            result("unrecorded", Some("calib-a/eval-b"), &[]),
            result("new", Some("calib-a/eval-b"), &[]),
        ];
        let carried = carry_peers(&earlier, &mut now, true, false);
        assert_eq!(carried, vec!["same".to_string(), "unrecorded".to_string()]);
        // Only the skipped peer's rows: ModelOpt ran (or will) this time.
        let labels = |r: &ZooResult| r.peers.iter().map(|(m, _)| m.label.clone()).collect::<Vec<_>>();
        assert_eq!(labels(&now[0]), vec![peers[0].to_string()]);
        assert!(now[1].peers.is_empty(), "rows measured on other crops are not carried");
        // A peer model measured again keeps this measurement and takes the earlier run's time.
        let mut remeasured = vec![result("same", Some("calib-a/eval-b"), &[peers[0]])];
        remeasured[0].peers[0].0.error = Some("measured again".into());
        remeasured[0].peers[0].1.wall_s = 0.0;
        carry_peers(&earlier, &mut remeasured, true, false);
        assert_eq!(remeasured[0].peers.len(), 1, "{:?}", remeasured[0].peers);
        assert_eq!(remeasured[0].peers[0].0.error.as_deref(), Some("measured again"));
        assert_eq!(remeasured[0].peers[0].1.wall_s, 1.0, "the earlier run's time");
        let mut changed = vec![result("same", Some("calib-a/eval-b"), &[])];
        changed[0].sha256 = "def".into();
        assert!(carry_peers(&earlier, &mut changed, true, true).is_empty(), "another model file carries nothing");
    }
}
