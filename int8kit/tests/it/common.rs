//! What the binary's end-to-end tests share: running `int8kit` on the fixtures, and hostile inputs made from
//! them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_support::{calib_dir, model, recipe_path, val_dir};

/// stdout and stderr of a finished run.
pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// `int8kit SUBCOMMAND`, not yet run.
pub fn int8kit(subcommand: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_int8kit"));
    cmd.arg(subcommand);
    cmd
}

/// `int8kit SUBCOMMAND` on `model_path` with the fixture recipe and images (`--images` for calibrate and
/// quantize; `--calib` and, unless `extra` gives another, `--val` for validate), writing to `out`, with
/// `extra` flags; run.
pub fn on_fixtures(subcommand: &str, model_path: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = int8kit(subcommand);
    cmd.arg("--model").arg(model_path).arg("--recipe").arg(recipe_path()).arg("--out").arg(out);
    if subcommand == "validate" {
        cmd.arg("--calib").arg(calib_dir());
        if !extra.contains(&"--val") {
            cmd.arg("--val").arg(val_dir());
        }
    } else {
        cmd.arg("--images").arg(calib_dir());
    }
    cmd.args(extra).output().unwrap()
}

/// `int8kit validate` of `model` on `.npz` sample folders (no recipe), with `extra` flags, quiet, into `out`; run.
pub fn validate_samples(model: &Path, calib: &Path, val: &Path, extra: &[&str], out: &Path) -> Output {
    int8kit("validate")
        .arg("--model")
        .arg(model)
        .arg("--calib")
        .arg(calib)
        .arg("--val")
        .arg(val)
        .args(extra)
        .args(["--quiet", "--out"])
        .arg(out)
        .output()
        .unwrap()
}

/// A JSON file, parsed; a failure names the file.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The exit status was 2 and the output says `why`.
pub fn refused(o: &Output, why: &str) {
    assert_eq!(o.status.code(), Some(2), "expected exit 2 ({why}): {}", text(o));
    assert!(text(o).contains(why), "'{why}' missing from: {}", text(o));
}

/// The fixture ResNet.
pub fn resnet() -> PathBuf {
    model("fmnist_resnet_opset13.onnx")
}

/// The ResNet's statistics over 20 calibration images, written to `dir/r.hist`.
pub fn calibrated(dir: &Path) -> PathBuf {
    let hist = dir.join("r.hist");
    let o = on_fixtures("calibrate", &resnet(), &hist, &["--limit", "20", "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    hist
}

/// The ResNet with NaN in its classifier bias at `nan_at` (every logit row then holds NaN), in `dir`.
pub fn nan_resnet(dir: &Path, nan_at: &[usize]) -> PathBuf {
    resnet_with_head(dir, "nan.onnx", |_, bias| nan_at.iter().for_each(|&i| bias[i] = f32::NAN))
}

/// The ResNet whose classifier's weights and bias are all zero: logits of 0 for every image, in `dir`.
pub fn zero_head_resnet(dir: &Path) -> PathBuf {
    resnet_with_head(dir, "zero.onnx", |weights, bias| {
        weights.fill(0.0);
        bias.fill(0.0);
    })
}

/// The ResNet with an ArgMax of its logits as its first output ('label', int64), the logits second, or (without
/// `keep_logits`) its only output, in `dir`.
pub fn argmax_first_resnet(dir: &Path, keep_logits: bool) -> PathBuf {
    let int64 = graph::proto::tensor_proto::DataType::INT64 as i32;
    let mut m = test_support::resnet_with_head("ArgMax", "label", int64);
    let graph = m.proto.graph.mut_or_insert_default();
    let (logits, label) = (graph.output[0].clone(), graph.output[1].clone());
    graph.output = if keep_logits { vec![label, logits] } else { vec![label] };
    let path = dir.join(if keep_logits { "argmax_first.onnx" } else { "argmax_only.onnx" });
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    path
}

/// The ResNet with its logits passed through an If node (both branches an Identity, the condition a constant
/// true): a model with a subgraph, as detectors' post-processing exports have, below opset 19, in `dir`.
pub fn resnet_with_if(dir: &Path) -> PathBuf {
    use graph::proto::{attribute_proto::AttributeType, tensor_proto::DataType};
    let mut m = graph::Model::load(&resnet()).unwrap();
    let graph = m.proto.graph.mut_or_insert_default();
    let logits = graph.output[0].clone();
    let branch = |name: &str| {
        let mut g = graph::proto::GraphProto::new();
        g.name = name.into();
        let mut identity = graph::proto::NodeProto::new();
        identity.op_type = "Identity".into();
        identity.input = vec![logits.name.clone()];
        identity.output = vec![format!("{name}_out")];
        g.node.push(identity);
        let mut out = logits.clone();
        out.name = format!("{name}_out");
        g.output.push(out);
        let mut a = graph::proto::AttributeProto::new();
        a.name = format!("{name}_branch");
        a.type_ = AttributeType::GRAPH.into();
        a.g = Some(g).into();
        a
    };
    let mut cond = graph::proto::TensorProto::new();
    cond.name = "always".into();
    cond.data_type = DataType::BOOL as i32;
    cond.raw_data = vec![1];
    graph.initializer.push(cond);
    let mut node = graph::proto::NodeProto::new();
    node.op_type = "If".into();
    node.name = "pass_through".into();
    node.input = vec!["always".into()];
    node.output = vec!["logits_if".into()];
    node.attribute = vec![branch("then"), branch("else")];
    graph.node.push(node);
    let mut out = logits;
    out.name = "logits_if".into();
    graph.output = vec![out];
    let path = dir.join("if.onnx");
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    path
}

/// The ResNet with its classifier's (the Gemm's) weights and bias edited by `edit`, written to `dir/name`.
fn resnet_with_head(dir: &Path, name: &str, edit: impl FnOnce(&mut [f32], &mut [f32])) -> PathBuf {
    let mut m = graph::Model::load(&resnet()).unwrap();
    let graph = m.proto.graph.mut_or_insert_default();
    let head = graph.node.iter().find(|n| n.op_type == "Gemm").unwrap().input.clone();
    let floats = |t: &graph::proto::TensorProto| -> Vec<f32> {
        assert!(!t.raw_data.is_empty(), "{}: the fixture stores its weights as raw data", t.name);
        t.raw_data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let position = |name: &str| graph.initializer.iter().position(|t| t.name == name).unwrap();
    let (w, b) = (position(&head[1]), position(&head[2]));
    let (mut weights, mut bias) = (floats(&graph.initializer[w]), floats(&graph.initializer[b]));
    edit(&mut weights, &mut bias);
    graph.initializer[w].raw_data = weights.iter().flat_map(|v| v.to_le_bytes()).collect();
    graph.initializer[b].raw_data = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = dir.join(name);
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    path
}

/// A FIFO at `path`.
pub fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}
