//! Max pooling in INT8: a max pool's input that only pools read in INT8 takes the pool output's range
//! (quantization commutes with max pooling, so the output's range is the one whose error counts); an input that
//! another node reads in INT8 too keeps its own.

use analyze::scales::Method;
use calibrate::{calibrate, CalibrateOptions, HoldOut};
use datasets::Feed;
use quantizer::{Quantizer, Scheme};
use test_support::conv_models::{max_pool_cnn, write_samples, PoolInput};

/// The model calibrated on 64 seeded samples.
fn calibrated(reader: PoolInput) -> (Quantizer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let model = max_pool_cnn(dir.path(), reader);
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
fn a_max_pools_input_takes_its_outputs_range_unless_another_node_reads_it_in_int8() {
    for (reader, shared) in
        [(PoolInput::Alone, true), (PoolInput::AlsoConcatenated, true), (PoolInput::AlsoAdded, false)]
    {
        let (quantizer, _dir) = calibrated(reader);
        for method in [Method::Entropy, Method::Mse] {
            let scheme = Scheme { method, ..Default::default() };
            // The statistics' own ranges differ (what the model would get without the rule)...
            let amax = quantizer.amax(&scheme);
            assert_ne!(amax["activated"], amax["pooled"], "{reader:?} {method:?}");
            // ...and TensorRT's placement quantizes the pool's input and the Conv's after it.
            let qdq = quantizer.artifacts(&scheme).unwrap().qdq;
            let same = scale_of(&qdq, "activated") == scale_of(&qdq, "pooled");
            assert_eq!(same, shared, "{reader:?} {method:?}");
        }
    }
}

#[test]
fn an_input_that_several_pools_read_takes_the_largest_of_their_ranges() {
    let (quantizer, _dir) = calibrated(PoolInput::AlsoPooledWider);
    // MSE ranges: entropy's, bin edges of the histograms, happen to coincide for the two pools here.
    let scheme = Scheme { method: Method::Mse, ..Default::default() };
    let amax = quantizer.amax(&scheme);
    assert_ne!(amax["pooled"], amax["pooled_wide"]);
    let widest = if amax["pooled"] > amax["pooled_wide"] { "pooled" } else { "pooled_wide" };
    // The wide pool's output is an Add's residual input, quantized with its own range.
    let qdq = quantizer.artifacts(&scheme).unwrap().qdq;
    assert_eq!(scale_of(&qdq, "activated"), scale_of(&qdq, widest));
}
