//! The peers: ONNX Runtime's `quantize_static` and NVIDIA ModelOpt, each in a pinned venv of its own, and the
//! Q/DQ placement diff against ModelOpt's.

use super::*;

/// The peer's pinned environment, installed by the bench into its own venv.
pub const PEER_PINS: &[&str] = &["onnxruntime==1.32.0", "onnx==1.23.2", "numpy==2.4.6"];

/// The second peer, NVIDIA ModelOpt's ONNX PTQ (with torch about 6 GB), in a venv of its own.
pub(super) const MODELOPT_PINS: &[&str] = &["nvidia-modelopt[onnx]==0.47.0"];

/// How quantize_static's rows are labelled (followed by the calibration method): the zoo tells them from
/// ModelOpt's by it.
pub(super) const QUANTIZE_STATIC_LABEL: &str = "ORT quantize_static";

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
pub(super) fn quantized_inputs(path: &Path) -> anyhow::Result<BTreeMap<String, (String, Vec<usize>)>> {
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

pub(super) fn placement_diff(ours: &Path, modelopt: &Path) -> anyhow::Result<PlacementDiff> {
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

/// The peers' Python interpreters, where they take part.
pub(super) struct Pythons<'a> {
    /// ONNX Runtime's `quantize_static`.
    pub ort: Option<&'a Path>,
    /// NVIDIA ModelOpt.
    pub modelopt: Option<&'a Path>,
}

/// A peer's name, its measured run, and the model it wrote (when it wrote one).
pub(super) type PeerRun = (String, Run, Option<PathBuf>);

/// Runs every peer that takes part in workload `w` on the same images (dumped once as raw float32 by the
/// bench child `me`), each measured: their runs, and ModelOpt's model for the placement diff.
pub(super) fn run_peers(
    w: &Workload,
    dir: &Path,
    me: &Path,
    images: usize,
    pythons: &Pythons,
    common: &dyn Fn(&mut Command),
    commands: &mut Vec<String>,
) -> anyhow::Result<(Vec<PeerRun>, Option<PathBuf>)> {
    let mut peers = Vec::new();
    let ort_peer = pythons.ort.filter(|_| !w.peer_methods.is_empty());
    let modelopt_peer = pythons.modelopt.filter(|_| w.modelopt);
    let mut modelopt_model = None;
    if ort_peer.is_some() || modelopt_peer.is_some() {
        let raw = dir.join("inputs.f32");
        let mut dump = Command::new(me);
        dump.arg("bench-child");
        common(&mut dump);
        dump.arg("--dump-raw").arg(&raw);
        commands.push(shown(&dump));
        let shape = {
            measure_tree(&mut dump, &dir.join("dump.log"), None)?.ok()?;
            let recipe = Recipe::load(&w.recipe)?;
            let s = recipe.batch_shape(images);
            s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
        };
        let source = graph::Model::load(&w.model)?;
        let input_name = source.resolve_input(None)?.name.clone();
        // ModelOpt 0.47 writes its input model back in place (shape-inferred): each peer gets a copy, so that the
        // file int8kit and the FP32 reference read stays the one pinned.
        let peer_input = dir.join("peer-input.onnx");
        // Leave the rest of the machine a margin: past it a peer is stopped and recorded as out of memory.
        let cap_mb = meminfo_kb("MemAvailable").map(|kb| kb as f64 / 1024.0 - 768.0);
        let mut copied = Vec::new();
        let mut peer_args =
            |cmd: &mut Command| -> anyhow::Result<()> {
                copied = copy_model(&source, &peer_input)?;
                // Their temporary files (ModelOpt's shape inference writes some beside the working folder, and
                // leaves them where external data is involved) stay in the run's folder.
                cmd.current_dir(dir);
                cmd.args(["--model".as_ref(), peer_input.as_os_str()])
                    .args(["--inputs".as_ref(), raw.as_os_str()])
                    .args(["--shape", &shape, "--input-name", &input_name, "--batch", &w.batch.to_string()]);
                Ok(())
            };
        for method in ort_peer.map(|_| w.peer_methods.as_slice()).unwrap_or_default() {
            let out = dir.join(format!("peer-{}.onnx", method.to_lowercase()));
            let _ = std::fs::remove_file(&out);
            let mut cmd = Command::new(ort_peer.unwrap_or(Path::new("")));
            cmd.arg(root().join("bench/scripts/ort_quantize_static.py"));
            peer_args(&mut cmd)?;
            cmd.args(["--method", method, "--out"]).arg(&out);
            let log = dir.join(format!("peer-{}.log", method.to_lowercase()));
            commands.push(shown(&cmd));
            let r = measure_tree(&mut cmd, &log, cap_mb)?;
            eprintln!("  quantize_static {method}: {}", r.summary());
            let ok = r.outcome == "ok" && out.is_file();
            peers.push((format!("{QUANTIZE_STATIC_LABEL} {method}"), r, ok.then_some(out)));
        }
        if let Some(mo) = modelopt_peer {
            let out = dir.join("modelopt-entropy.onnx");
            let _ = std::fs::remove_file(&out);
            let mut cmd = Command::new(mo);
            cmd.arg(root().join("bench/scripts/modelopt_quantize.py"));
            peer_args(&mut cmd)?;
            cmd.args(["--method", "entropy", "--out"]).arg(&out);
            commands.push(shown(&cmd));
            let r = measure_tree(&mut cmd, &dir.join("modelopt.log"), cap_mb)?;
            eprintln!("  ModelOpt entropy: {}", r.summary());
            let ok = r.outcome == "ok" && out.is_file();
            modelopt_model = ok.then(|| out.clone());
            peers.push(("ModelOpt 0.47 entropy (FP16 float parts)".into(), r, ok.then_some(out)));
        }
        let _ = std::fs::remove_file(&raw);
        for file in std::iter::once(&peer_input).chain(&copied) {
            let _ = std::fs::remove_file(file);
        }
    }
    Ok((peers, modelopt_model))
}

/// Copies `model`'s file to `to`, with the external data files it reads ([`graph::Model::input_files`]) at the
/// same places beside it (a model stored with external data is unreadable without them); returns the data
/// files written.
fn copy_model(model: &graph::Model, to: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let into = to.parent().unwrap_or(Path::new("."));
    let mut written = Vec::new();
    for source in model.input_files() {
        let target = if source == model.path { to.to_path_buf() } else { into.join(source.strip_prefix(&model.dir)?) };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&source, &target).with_context(|| format!("copying {} for a peer", source.display()))?;
        if source != model.path {
            written.push(target);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_copied_for_a_peer_takes_its_external_data_along() {
        let source = root().join("fixtures/models/fmnist_vit_opset18.onnx");
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("peer-input.onnx");
        let written = copy_model(&graph::Model::load(&source).unwrap(), &copy).unwrap();
        assert_eq!(written, [dir.path().join("fmnist_vit_opset18.onnx.data")]);
        // The copy reads as the same model, its weights included.
        let (a, b) = (graph::Model::load(&source).unwrap(), graph::Model::load(&copy).unwrap());
        assert!(b.has_external_data);
        assert_eq!(a.sha256, b.sha256);
        // A self-contained model brings nothing along.
        let plain = dir.path().join("plain.onnx");
        let self_contained = graph::Model::load(&root().join("fixtures/models/fmnist_vit_opset17.onnx")).unwrap();
        assert!(copy_model(&self_contained, &plain).unwrap().is_empty());
        assert!(plain.is_file());
    }
}
