//! Inputs that would hang, exhaust memory or fail late get a clear error first: FIFOs where files are
//! expected, absurd thread counts, models with a fixed batch, and Constants whose data is external are
//! handled so that every written model loads on its own.

use crate::common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{mkfifo, on_fixtures, resnet, text};
use graph::proto::{tensor_proto::DataLocation, AttributeProto, NodeProto, StringStringEntryProto};
use test_support::model;

fn quantize(model_path: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--quiet"];
    args.extend_from_slice(extra);
    on_fixtures("quantize", model_path, out, &args)
}

#[test]
fn fifos_as_model_or_external_data_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("m.onnx");
    mkfifo(&fifo);
    let start = Instant::now();
    let o = quantize(&fifo, &dir.path().join("out"), &["--limit", "10"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("a FIFO"), "{}", text(&o));
    // The external-data ViT with its .data file replaced by a FIFO.
    let vit = model("fmnist_vit_opset18.onnx");
    let copy = dir.path().join("vit.onnx");
    std::fs::copy(&vit, &copy).unwrap();
    mkfifo(&dir.path().join("fmnist_vit_opset18.onnx.data"));
    let o = quantize(&copy, &dir.path().join("out2"), &["--limit", "10"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("a FIFO"), "{}", text(&o));
    assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());
}

#[test]
fn absurd_thread_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = quantize(&resnet(), &dir.path().join("out"), &["--threads", "10000"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--threads 10000: at most 1024"), "{}", text(&o));
}

/// The ResNet with its input's batch dimension fixed to `batch`.
fn fixed_batch_model(dir: &Path, batch: i64) -> std::path::PathBuf {
    let mut m = graph::Model::load(&resnet()).unwrap();
    let graph = m.proto.graph.mut_or_insert_default();
    let shape = graph.input[0].type_.mut_or_insert_default().mut_tensor_type().shape.mut_or_insert_default();
    shape.dim[0].set_dim_value(batch);
    let path = dir.join(format!("batch{batch}.onnx"));
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    path
}

#[test]
fn a_fixed_batch_is_read_up_front() {
    let dir = tempfile::tempdir().unwrap();
    // Batch 1: runs, one image at a time, whatever --batch-size says.
    let one = fixed_batch_model(dir.path(), 1);
    let o = quantize(&one, &dir.path().join("one"), &["--limit", "10", "--batch-size", "16"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Batch 4: 12 images run in three batches; 10 images are refused before any work, saying what to do.
    let four = fixed_batch_model(dir.path(), 4);
    let o = quantize(&four, &dir.path().join("four"), &["--limit", "12"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // GPTQ's pass runs the float model on whole fixed batches too (PicoDet's batch of 1 failed there).
    for (model, name) in [(&one, "one-gptq"), (&four, "four-gptq")] {
        let o = quantize(model, &dir.path().join(name), &["--limit", "12", "--weight-rounding", "gptq"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let ranges = common::read_json(&dir.path().join(name).join("ranges.json"));
        assert_eq!(ranges["weight_rounding"]["asked"], "gptq", "{ranges}");
    }
    let o = quantize(&four, &dir.path().join("ten"), &["--limit", "10"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("fixed batch of 4") && text(&o).contains("multiple of 4"), "{}", text(&o));
    // Skipping unreadable images could leave a short batch: refused up front too.
    let o = quantize(&four, &dir.path().join("skip"), &["--limit", "12", "--on-bad-image", "skip"]);
    common::refused(&o, "a skipped image would leave a batch short");
}

#[test]
fn a_constant_with_external_data_is_written_inline() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // The ResNet's classifier bias moved from an initializer to a Constant node whose data is external.
    let mut m = graph::Model::load(&resnet()).unwrap();
    let graph = m.proto.graph.mut_or_insert_default();
    let head = graph.node.iter().find(|n| n.op_type == "Gemm").unwrap().input[2].clone();
    let at = graph.initializer.iter().position(|t| t.name == head).unwrap();
    let mut tensor = graph.initializer.remove(at);
    std::fs::write(src.join("bias.bin"), &tensor.raw_data).unwrap();
    let length = tensor.raw_data.len();
    tensor.raw_data.clear();
    tensor.data_location = DataLocation::EXTERNAL.into();
    for (k, v) in [("location", "bias.bin".to_string()), ("offset", "0".into()), ("length", length.to_string())] {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v;
        tensor.external_data.push(e);
    }
    let mut value = AttributeProto::new();
    value.name = "value".into();
    value.type_ = graph::proto::attribute_proto::AttributeType::TENSOR.into();
    value.t = Some(tensor).into();
    let mut constant = NodeProto::new();
    constant.op_type = "Constant".into();
    constant.name = "bias_constant".into();
    constant.output.push(head);
    constant.attribute.push(value);
    graph.node.insert(0, constant);
    let edited = src.join("m.onnx");
    std::fs::write(&edited, m.to_bytes().unwrap()).unwrap();

    let out = dir.path().join("out");
    let o = quantize(&edited, &out, &["--limit", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The written model loads from a folder without bias.bin: nothing in it is external any more.
    let alone = dir.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(out.join("model.qdq.onnx"), alone.join("model.qdq.onnx")).unwrap();
    let written = graph::Model::load(&alone.join("model.qdq.onnx")).unwrap();
    assert!(!written.has_external_data);
    let node = written.proto.graph.node.iter().find(|n| n.name == "bias_constant").unwrap();
    assert_eq!(node.attribute[0].t.raw_data.len(), length);
}

#[test]
fn an_already_quantized_model_is_refused_and_element_types_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8");
    let o = quantize(&resnet(), &out, &["--limit", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = quantize(&out.join("model.qdq.onnx"), &dir.path().join("again"), &["--limit", "10"]);
    common::refused(&o, "is already quantized");
    assert!(text(&o).contains("QuantizeLinear"), "{}", text(&o));
    // A uint8 image input is named as such, not by its ONNX code.
    let mut m = graph::Model::load(&resnet()).unwrap();
    let graph = m.proto.graph.mut_or_insert_default();
    graph.input[0].type_.mut_or_insert_default().mut_tensor_type().elem_type = graph::ElemType::UINT8.0;
    let uint8 = dir.path().join("u8.onnx");
    std::fs::write(&uint8, m.to_bytes().unwrap()).unwrap();
    let o = quantize(&uint8, &dir.path().join("u8"), &["--limit", "10"]);
    common::refused(&o, "is uint8 (raw pixel levels");
    assert!(!text(&o).contains("element type 2"), "{}", text(&o));
}
