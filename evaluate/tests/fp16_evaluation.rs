//! Evaluations compute what the ONNX graph says. An FP16 Q/DQ graph that ONNX Runtime's optimized CPU session
//! computes differently (built in the test, as a Paddle export quantized with FP16 float parts looks) is run by
//! every evaluation session (`ort_model`, behind validate's rows, and `evaluation_config`, behind sensitivity and
//! autoprecision) exactly as an unoptimized session runs it; a float32 model keeps the optimized session.

use datasets::{BatchStream, Dataset, Feed, StreamOptions};
use evaluate::compare::{evaluation_config, ort_model};
use runtime::{GraphOptimization, Placement};
use test_support::conv_models::{fp16_qdq_hardswish, tiny_channel_cnn, write_samples, INPUT};

/// The first output of `model` over every batch of `samples`, from a session built with `cfg`.
fn outputs(model: &std::path::Path, samples: &Dataset, feed: &Feed, cfg: &runtime::SessionConfig) -> Vec<f32> {
    let bytes = std::fs::read(model).unwrap();
    let mut session = runtime::session_from_bytes(&bytes, cfg).unwrap();
    let options = StreamOptions { batch_size: 4, ..Default::default() };
    BatchStream::new(samples, feed, options)
        .flat_map(|b| {
            let b = b.unwrap();
            runtime::run_rows(&mut session, "test", &b.inputs(INPUT), "y").unwrap()
        })
        .collect()
}

fn evaluated(model: &std::path::Path, samples: &Dataset, feed: &Feed) -> (Vec<f32>, String) {
    let mut m = ort_model(model, feed, Placement::default()).unwrap();
    let options = StreamOptions { batch_size: 4, ..Default::default() };
    let rows = BatchStream::new(samples, feed, options).flat_map(|b| m.run(&b.unwrap()).unwrap()).collect();
    (rows, m.evaluation())
}

fn config(level: GraphOptimization) -> runtime::SessionConfig {
    let mut cfg = runtime::SessionConfig::new("test");
    cfg.graph_optimization = level;
    cfg
}

#[test]
fn an_fp16_qdq_graph_is_evaluated_as_written_not_as_onnx_runtime_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = fp16_qdq_hardswish(dir.path());
    let samples_dir = write_samples(&dir.path().join("samples"), 0, 12);
    let feed = Feed::for_folder(&samples_dir, None).unwrap();
    let samples = Dataset::flat(&samples_dir).unwrap();

    let as_written = outputs(&model, &samples, &feed, &config(GraphOptimization::Disabled));
    let rewritten = outputs(&model, &samples, &feed, &config(GraphOptimization::All));
    let differ = as_written.iter().zip(&rewritten).filter(|(a, b)| a != b).count();
    assert!(differ > 0, "ONNX Runtime's rewrites no longer change this graph: the test shows nothing");

    let (rows, how) = evaluated(&model, &samples, &feed);
    assert_eq!(rows, as_written, "validate's rows must equal an unoptimized session's outputs, bit for bit");
    assert_eq!(how, "onnxruntime, graph optimization disabled");
    let proto = graph::Model::load(&model).unwrap().proto;
    let cfg = evaluation_config("test", Placement::default(), &proto.graph);
    assert_eq!(cfg.graph_optimization, GraphOptimization::Disabled, "sensitivity's sessions too");
}

#[test]
fn a_float32_model_keeps_onnx_runtimes_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_channel_cnn(dir.path());
    let samples_dir = write_samples(&dir.path().join("samples"), 0, 4);
    let feed = Feed::for_folder(&samples_dir, None).unwrap();
    let samples = Dataset::flat(&samples_dir).unwrap();
    let (rows, how) = evaluated(&model, &samples, &feed);
    assert_eq!(how, "onnxruntime, graph optimization all");
    assert_eq!(rows, outputs(&model, &samples, &feed, &config(GraphOptimization::All)));
}
