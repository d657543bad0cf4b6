//! The `auto` search on models built in the tests, where the right scale method is known from how the model
//! uses its quantized tensor: a Conv whose output needs the rare large inputs (entropy calibration clips them
//! away) and the same Conv with zero weights on the channel that holds them (max calibration wastes the bulk's
//! resolution on them).

use analyze::scales::Method;
use calibrate::{calibrate, CalibrateOptions, HoldOut};
use datasets::Feed;
use quantizer::measure::{Probe, ProbeOptions};
use quantizer::search::{search, AutoChoices, SearchRecord, TOLERANCE_DB};
use quantizer::{Quantizer, Scheme};
use test_support::conv_models::{outlier_conv, write_outlier_samples};

/// Builds [`outlier_conv`], calibrates it on 80 outlier samples (16 held back) and runs the method search on
/// the held-back ones: the method chosen, the record, and its trials as text for failure messages.
fn searched(reads_outliers: bool) -> (Method, SearchRecord, String) {
    let dir = tempfile::tempdir().unwrap();
    let samples = &write_outlier_samples(&dir.path().join("samples"), 0, 80);
    let model = &outlier_conv(dir.path(), reads_outliers);
    let feed = Feed::for_folder(samples, None).unwrap();
    let options = CalibrateOptions { hold_out: HoldOut::Count(16), ..Default::default() };
    let (hist, summary) = calibrate(model, samples, &feed, &options, &mut |_, _| {}).unwrap();
    let quantizer = Quantizer::load(model, hist).unwrap();

    let held = summary.held_out.expect("16 samples held back");
    let probe_options = ProbeOptions {
        batch_size: 4,
        threads: 1,
        on_bad_image: datasets::OnBadImage::Fail,
        device: runtime::Device::Cpu,
    };
    let probe = Probe::new(quantizer.model(), &held, &feed, probe_options).unwrap();
    let auto = AutoChoices { method: true, ..Default::default() };
    // The ONNX Runtime target: an 8-channel Conv is too narrow for TensorRT's INT8 kernels and would stay float.
    let scheme = Scheme {
        placement: placement::PlacementOptions::for_target(placement::Target::OnnxRuntime),
        ..Default::default()
    };
    let (scheme, record) = search(&quantizer, &scheme, auto, &probe, &mut |_, _| {}).unwrap();
    let table = table(&record);
    (scheme.method, record, table)
}

/// The SQNR of `method` in the first stage, where every method is measured on the same samples (16 held-back
/// samples are too few for a coarse stage: every method is measured in the fine one).
fn coarse(record: &SearchRecord, method: Method) -> f64 {
    let trial = record.trials.iter().find(|t| t.method == method.name());
    trial.and_then(|t| t.fidelity.as_ref()).map(|f| f.sqnr_db).expect("every method is measured")
}

fn table(record: &SearchRecord) -> String {
    record
        .trials
        .iter()
        .map(|t| format!("{} {} {:?}\n", t.method, t.stage, t.fidelity.as_ref().map(|f| f.sqnr_db)))
        .collect()
}

#[test]
fn auto_keeps_the_tail_a_linear_output_needs_where_entropy_clips_it() {
    let (method, record, t) = searched(true);
    assert_ne!(method, Method::Entropy, "{t}");
    assert!(coarse(&record, method) > coarse(&record, Method::Entropy) + 3.0, "entropy should lose clearly:\n{t}");
    assert_eq!(record.axes, ["method"]);
    assert_eq!(record.trials[record.chosen].method, method.name());
}

#[test]
fn auto_keeps_entropy_where_the_output_ignores_the_tail() {
    let (method, record, t) = searched(false);
    assert_eq!(method, Method::Entropy, "{t}");
    let fine = |t: &&quantizer::search::Trial| t.stage == "fine";
    let best = record
        .trials
        .iter()
        .filter(fine)
        .filter_map(|x| x.fidelity.as_ref())
        .map(|f| f.sqnr_db)
        .fold(f64::MIN, f64::max);
    let chosen = record.trials[record.chosen].fidelity.as_ref().unwrap().sqnr_db;
    assert!(chosen >= best - TOLERANCE_DB, "{t}");
    assert!(coarse(&record, Method::Entropy) > coarse(&record, Method::Max) + 3.0, "max should lose clearly:\n{t}");
}
