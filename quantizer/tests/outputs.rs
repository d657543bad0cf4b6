//! Outputs whose batch is not on their first axis are measured per sample all the same.

use calibrate::load_model;
use datasets::Feed;
use quantizer::measure::{Probe, ProbeOptions};
use test_support::conv_models::{sequence_first, write_samples, CHANNELS, SIDE};

#[test]
fn a_sequence_first_output_is_kept_one_sample_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let model = load_model(&sequence_first(dir.path())).unwrap();
    assert_eq!(model.output_batch_axis("x", "y"), 1);
    let samples = write_samples(&dir.path().join("samples"), 0, 6);
    let feed = Feed::for_folder(&samples, None).unwrap();
    let dataset = datasets::Dataset::flat(&samples).unwrap();
    let options = ProbeOptions {
        batch_size: 4,
        threads: 1,
        on_bad_image: datasets::OnBadImage::Fail,
        device: runtime::Device::Cpu,
    };
    let probe = Probe::new(&model, &dataset, &feed, options).unwrap();
    // y is x with its first two axes swapped: with the batch moved back to the front, each row is a sample's
    // input, in the batch's order.
    let per_sample = CHANNELS * SIDE * SIDE;
    for (batch, rows) in probe.batches().iter().zip(probe.reference()) {
        assert_eq!(rows.len(), batch.len() * per_sample);
        let inputs = batch.inputs("x");
        let (runtime::Values::F32(fed) | runtime::Values::Pixels(fed)) = inputs[0].values else {
            panic!("the samples are float32")
        };
        assert_eq!(rows.as_slice(), fed);
    }
}
