//! Max pooling in INT8: a MaxPool's input takes its output's range (quantization commutes with max pooling,
//! so the output's range is the one whose error counts), unless something else reads the input too.

use std::collections::BTreeMap;

use analyze::scales::Method;
use calibrate::{calibrate, CalibrateOptions, HoldOut};
use datasets::Feed;
use quantizer::{Quantizer, Scheme};
use test_support::conv_models::{max_pool_cnn, write_samples};

/// The model calibrated on 64 seeded samples.
fn calibrated(input_read_elsewhere: bool) -> (Quantizer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let model = max_pool_cnn(dir.path(), input_read_elsewhere);
    let samples = &write_samples(&dir.path().join("samples"), 0, 64);
    let feed = Feed::for_folder(samples, None).unwrap();
    let options = CalibrateOptions { hold_out: HoldOut::Count(0), ..Default::default() };
    let (hist, _) = calibrate(&model, samples, &feed, &options, &mut |_, _| {}).unwrap();
    (Quantizer::load(&model, hist).unwrap(), dir)
}

/// The stored scale (element type and bytes) of the QuantizeLinear that reads `tensor` in `model`.
fn scale_of(model: &graph::proto::ModelProto, tensor: &str) -> (i32, Vec<u8>, Vec<f32>) {
    let graph = &model.graph;
    let q = graph
        .node
        .iter()
        .find(|n| n.op_type == "QuantizeLinear" && n.input[0] == tensor)
        .unwrap_or_else(|| panic!("no QuantizeLinear reads {tensor}"));
    let scale = graph.initializer.iter().find(|t| t.name == q.input[1]).expect("the scale is an initializer");
    (scale.data_type, scale.raw_data.clone(), scale.float_data.clone())
}

#[test]
fn a_max_pools_input_takes_its_outputs_range() {
    let (quantizer, _dir) = calibrated(false);
    for method in [Method::Entropy, Method::Mse, Method::Max] {
        let amax = quantizer.amax(&Scheme { method, ..Default::default() });
        assert_eq!(amax["activated"], amax["pooled"], "{method:?}");
    }
    // Its own range (asked for by name) would be another: the window maxima are distributed otherwise than
    // the Relu's output.
    let own = Scheme {
        method: Method::Entropy,
        per_tensor: BTreeMap::from([("activated".to_string(), Method::Entropy)]),
        ..Default::default()
    };
    let amax = quantizer.amax(&own);
    assert_ne!(amax["activated"], amax["pooled"]);

    // TensorRT's placement quantizes the pool's input and the Conv's after it: one scale for both.
    let artifacts = quantizer.artifacts(&Scheme { method: Method::Entropy, ..Default::default() }).unwrap();
    assert_eq!(scale_of(&artifacts.qdq, "activated"), scale_of(&artifacts.qdq, "pooled"));
}

#[test]
fn a_max_pools_input_read_elsewhere_keeps_its_own_range() {
    let (quantizer, _dir) = calibrated(true);
    let amax = quantizer.amax(&Scheme { method: Method::Entropy, ..Default::default() });
    assert_ne!(amax["activated"], amax["pooled"]);
}
