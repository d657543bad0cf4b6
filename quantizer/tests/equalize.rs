//! Depthwise equalization end to end, on a depthwise-separable block built in the test whose depthwise Conv
//! reads channels 800 times apart in range: calibration equalizes it, the `.hist` records the maxima, the
//! float function stays the same, and the INT8 model is far closer to it than without equalization.

use analyze::scales::Method;
use calibrate::{calibrate, CalibrateOptions, HoldOut, Smooth};
use datasets::Feed;
use quantizer::measure::Probe;
use quantizer::{Quantizer, Scheme};
use test_support::conv_models::{depthwise_cnn, hybrid, write_samples, CHANNELS, DEPTHWISE_CHANNEL_SCALES};

mod common;

/// The INT8 model's output SQNR (max scales, ONNX Runtime target: the 8-channel Convs are too narrow for
/// TensorRT's INT8 kernels) on 16 held-back samples, with the quantizer and probe it was measured with.
fn quantized(equalize: bool) -> (f64, Quantizer, Probe, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let model = depthwise_cnn(dir.path());
    let samples = &write_samples(&dir.path().join("samples"), 0, 80);
    let feed = Feed::for_folder(samples, None).unwrap();
    let options = CalibrateOptions { hold_out: HoldOut::Count(16), equalize, ..Default::default() };
    let (quantizer, probe) = common::calibrated_with_probe(&model, samples, &feed, &options, 4, 1);
    assert_eq!(quantizer.hist().equalization.is_some(), equalize);
    let scheme = Scheme {
        method: Method::Max,
        placement: placement::PlacementOptions::for_target(placement::Target::OnnxRuntime),
        ..Default::default()
    };
    let artifacts = quantizer.artifacts(&scheme).unwrap();
    let outputs = probe.outputs_on(&artifacts.qdq, runtime::Device::Cpu, usize::MAX).unwrap();
    let sqnr = probe.fidelity(&outputs).unwrap().sqnr_db;
    (sqnr, quantizer, probe, dir)
}

#[test]
fn equalized_depthwise_inputs_keep_the_small_channels() {
    let (plain, _, _, _) = quantized(false);
    let (equalized, quantizer, probe, dir) = quantized(true);
    assert!(equalized > plain + 10.0, "equalized {equalized:.2} dB, without {plain:.2} dB");

    let record = &quantizer.hist().equalization.as_ref().unwrap().channel_max["activation"];
    assert_eq!(record.max.len(), CHANNELS);
    // The inputs are uniform in [-2, 2): each channel's maximum is close to 2 x its scale.
    for (m, s) in record.max.iter().zip(DEPTHWISE_CHANNEL_SCALES) {
        assert!((m / (2.0 * s) - 1.0).abs() < 0.05, "{:?}", record.max);
    }
    let done = quantizer.equalization().unwrap();
    assert_eq!((done.tensors.len(), done.tensors[0].convs.len()), (1, 1));
    assert!((done.tensors[0].factor_max - 800.0).abs() < 40.0, "{:?}", done.tensors[0]);

    // The equalized float model computes what the original does.
    let original = calibrate::load_model(&dir.path().join("depthwise_cnn.onnx")).unwrap();
    let outputs = probe.outputs_on(&original.proto, runtime::Device::Cpu, usize::MAX).unwrap();
    let same = probe.fidelity(&outputs).unwrap().sqnr_db;
    assert!(same > 100.0, "the float function changed: {same:.1} dB");
}

#[test]
fn an_iterable_is_equalized_on_its_first_samples_whatever_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let model = calibrate::load_model(&depthwise_cnn(dir.path())).unwrap();
    let samples = write_samples(&dir.path().join("samples"), 0, 100);
    let feed = Feed::for_folder(&samples, None).unwrap();
    let dataset = datasets::Dataset::flat(&samples).unwrap();
    let options = CalibrateOptions { hold_out: HoldOut::Count(0), ..Default::default() };
    let hist_in_batches_of = |size: usize| {
        let stream_options = datasets::StreamOptions { batch_size: size, ..Default::default() };
        let mut batches = datasets::BatchStream::new(&dataset, &feed, stream_options);
        let given = calibrate::GivenSamples { name: "samples".into(), batches: &mut batches, total: None };
        let (hist, _) = calibrate::calibrate_batches(&model, given, &feed, &options, &mut |_, _| {}).unwrap();
        hist
    };
    let (fives, forty_eights) = (hist_in_batches_of(5), hist_in_batches_of(48));
    let equalization = fives.equalization.as_ref().expect("equalized");
    assert_eq!(equalization.samples, calibrate::MAXIMA_SAMPLES as u64);
    assert_eq!(fives.images.count, 100, "every sample in the statistics, the first 64 too");
    assert_eq!(fives.to_json().unwrap(), forty_eights.to_json().unwrap());
}

#[test]
fn shards_equalize_alike_and_merge_into_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = depthwise_cnn(dir.path());
    let samples = &write_samples(&dir.path().join("samples"), 0, 90);
    let feed = Feed::for_folder(samples, None).unwrap();
    let whole = CalibrateOptions { hold_out: HoldOut::Count(10), ..Default::default() };
    let run = |options: &CalibrateOptions| calibrate(&model, samples, &feed, options, &mut |_, _| {}).unwrap().0;
    let all = run(&whole);
    let parts: Vec<(std::path::PathBuf, histograms::HistFile)> = (1..=3)
        .map(|i| (format!("part{i}.hist").into(), run(&CalibrateOptions { shard: Some((i, 3)), ..whole.clone() })))
        .collect();
    // Every shard measured the maxima on the same 64 samples of the whole list, not on its own part.
    assert!(parts.iter().all(|(_, p)| p.equalization == all.equalization && p.equalization.is_some()));
    let merged = histograms::merge(&parts).unwrap();
    assert_eq!(merged.to_json().unwrap(), all.to_json().unwrap());
}

/// A model both smoothed and equalized takes the maxima of both in one pass over the first samples (progress
/// counts them once), and each record is what a calibration with that rewrite alone measures; where one tensor
/// feeds a GEMM and a depthwise Conv (its channels on two axes), two passes.
#[test]
fn smoothing_and_equalization_share_one_maxima_pass() {
    let dir = tempfile::tempdir().unwrap();
    let samples = &write_samples(&dir.path().join("samples"), 0, 90);
    let feed = Feed::for_folder(samples, None).unwrap();
    let options =
        |smooth, equalize| CalibrateOptions { hold_out: HoldOut::Count(10), smooth, equalize, ..Default::default() };
    for (shared, passes) in [(false, 1), (true, 2)] {
        let model = hybrid(dir.path(), shared);
        let run = |options: &CalibrateOptions| {
            let mut total = 0;
            let hist = calibrate(&model, samples, &feed, options, &mut |_, t| total = t).unwrap().0;
            (hist, total)
        };
        let (both, total) = run(&options(Smooth::Alpha(0.5), true));
        assert_eq!(total, 80 + passes * calibrate::MAXIMA_SAMPLES as u64, "shared: {shared}");
        let smoothing = both.smoothing.as_ref().expect("smoothed");
        let equalization = both.equalization.as_ref().expect("equalized");
        assert_eq!((smoothing.channel_max.len(), equalization.channel_max.len()), (1, 1), "shared: {shared}");
        assert_eq!(smoothing.samples, Some(calibrate::MAXIMA_SAMPLES as u64));
        assert_eq!(equalization.samples, calibrate::MAXIMA_SAMPLES as u64);
        assert_eq!(both.smoothing, run(&options(Smooth::Alpha(0.5), false)).0.smoothing, "shared: {shared}");
        assert_eq!(both.equalization, run(&options(Smooth::Off, true)).0.equalization, "shared: {shared}");
    }
}
