//! End to end on the bundled fixture models and on models built in the tests (needs ONNX Runtime: run through
//! `cargo xtask test`).

use calibrate::{calibrate, CalibrateOptions, HoldOut, Smooth};
use datasets::{BatchStream, Dataset, OnBadImage, StreamOptions};
use histograms::{HistFile, Selection};
use test_support::{calib_dir as calib, feed, model};

fn run(model_name: &str, limit: usize, batch_size: usize, threads: usize) -> HistFile {
    let options = CalibrateOptions {
        batch_size,
        threads,
        limit: Some(limit),
        selection: Selection::All,
        hold_out: HoldOut::Count(0),
        // The unmodified model's tensors, compared with plain runs of it.
        smooth: Smooth::Off,
        ..Default::default()
    };
    calibrate(&model(model_name), &calib(), &feed(), &options, &mut |_, _| {}).unwrap().0
}

/// Min and max of a model output over the same images, from a plain session on the unmodified model.
fn plain_output_range(model_name: &str, limit: usize) -> (String, f32, f32) {
    let m = graph::Model::load(&model(model_name)).unwrap();
    let output = m.proto.graph.output[0].name.clone();
    let mut cfg = runtime::SessionConfig::new(model_name);
    cfg.external_data_dir = Some(m.dir.clone());
    let mut session = runtime::session_from_bytes(&m.to_bytes().unwrap(), &cfg).unwrap();
    let input = m.resolve_input(None).unwrap().name.clone();
    let dataset = Dataset::flat(&calib()).unwrap().limit(limit, 0);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for batch in BatchStream::new(&dataset, &feed(), StreamOptions::default()) {
        let batch = batch.unwrap();
        for v in runtime::run_rows(&mut session, model_name, &batch.inputs(&input), &output).unwrap() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    (output, lo, hi)
}

#[test]
fn every_fixture_model_calibrates_and_its_output_range_matches_a_plain_run() {
    // Activation counts follow from each graph: the two opset-17/18 exports of the ViT have the same
    // float activations, the decomposed LayerNorm of opset 13 adds 5 tensors per LayerNorm (13 of them)
    // and its explicit Erf-GELU constants; the ResNet has one per conv/add/relu and the head.
    let expected = [
        ("fmnist_vit_opset13.onnx", 305),
        ("fmnist_vit_opset17.onnx", 201),
        ("fmnist_vit_opset18.onnx", 201),
        ("fmnist_resnet_opset13.onnx", 38),
        ("fmnist_clip_image_opset17.onnx", 137),
    ];
    assert_eq!(expected.len(), test_support::models().len(), "a fixture model has no expected activation count");
    for (name, tensors) in expected {
        let hist = run(name, 200, 16, 0);
        assert_eq!(hist.tensors.len(), tensors, "{name}: activation count");
        assert_eq!(hist.images.count, 200);
        let model = graph::Model::load(&test_support::model(name)).unwrap();
        let fixed = graph::roles::max_calibrated(&model.proto.graph);
        for t in &hist.tensors {
            assert!(t.stats.count > 0, "{name}: {} saw no values", t.name);
            // The image and attention probabilities keep their range only; every other tensor is binned.
            assert_eq!(t.stats.max_only, fixed.contains(&t.name), "{name}: {} range-only", t.name);
            let binned = if t.stats.max_only { 0 } else { t.stats.count };
            assert_eq!(t.stats.hist.total(), binned, "{name}: {} histogram total", t.name);
            assert_eq!(t.stats.nan + t.stats.pos_inf + t.stats.neg_inf, 0, "{name}: {}", t.name);
        }
        let (output, lo, hi) = plain_output_range(name, 200);
        let rec = hist.tensor(&output).unwrap_or_else(|| panic!("{name}: output {output} not collected"));
        // Exposing intermediate tensors can change which kernels ONNX Runtime fuses, so allow float rounding.
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
        assert!(
            close(rec.stats.min.unwrap(), lo) && close(rec.stats.max.unwrap(), hi),
            "{name}: output range [{:?}, {:?}] vs plain run [{lo}, {hi}]",
            rec.stats.min,
            rec.stats.max
        );
    }
}

#[test]
fn result_is_byte_identical_whatever_the_batch_size_and_thread_count() {
    let a = run("fmnist_vit_opset13.onnx", 100, 16, 2).to_json().unwrap();
    let b = run("fmnist_vit_opset13.onnx", 100, 7, 1).to_json().unwrap();
    let c = run("fmnist_vit_opset13.onnx", 100, 100, 3).to_json().unwrap();
    assert!(a == b && a == c, "the .hist bytes changed with batch size or threads");
}

#[test]
fn a_batch_run_in_parts_gives_the_same_bytes() {
    // A budget of a few samples' activations: each batch of 40 runs as several ONNX Runtime calls (the first
    // of one sample), as a large model's batches do under the default budget.
    let whole = CalibrateOptions {
        batch_size: 40,
        limit: Some(100),
        selection: Selection::All,
        hold_out: HoldOut::Count(0),
        ..Default::default()
    };
    let parts = CalibrateOptions { run_values_max: 300_000, ..whole.clone() };
    let model = model("fmnist_vit_opset13.onnx");
    let a = calibrate(&model, &calib(), &feed(), &whole, &mut |_, _| {}).unwrap().0.to_json().unwrap();
    let b = calibrate(&model, &calib(), &feed(), &parts, &mut |_, _| {}).unwrap().0.to_json().unwrap();
    assert!(a == b, "the .hist bytes changed when batches ran in parts");
}

#[test]
fn external_data_model_matches_the_inline_export() {
    let inline = run("fmnist_vit_opset17.onnx", 50, 16, 0);
    let external = run("fmnist_vit_opset18.onnx", 50, 16, 0);
    let (a, b) = (inline.tensor("logits").unwrap(), external.tensor("logits").unwrap());
    assert!((a.stats.max.unwrap() - b.stats.max.unwrap()).abs() < 1e-3);
    assert_ne!(inline.model.sha256, external.model.sha256);
}

#[test]
fn the_users_model_file_is_not_touched() {
    let path = model("fmnist_resnet_opset13.onnx");
    let before = std::fs::read(&path).unwrap();
    run("fmnist_resnet_opset13.onnx", 20, 16, 0);
    assert_eq!(before, std::fs::read(&path).unwrap());
}

#[test]
fn a_corrupt_image_fails_by_path_or_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    for (i, entry) in std::fs::read_dir(calib()).unwrap().take(5).enumerate() {
        std::fs::copy(entry.unwrap().path(), dir.path().join(format!("ok{i}.png"))).unwrap();
    }
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let m = model("fmnist_resnet_opset13.onnx");
    let err = calibrate(&m, dir.path(), &feed(), &CalibrateOptions::default(), &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("broken.png"), "{err}");
    let options = CalibrateOptions { on_bad_image: OnBadImage::Skip, ..Default::default() };
    let (hist, summary) = calibrate(&m, dir.path(), &feed(), &options, &mut |_, _| {}).unwrap();
    assert_eq!((hist.images.count, hist.images.skipped, summary.skipped.len()), (5, 1, 1));
}

#[test]
fn a_recipe_that_does_not_fit_the_model_input_is_refused_with_both_shapes() {
    let mut r = test_support::recipe();
    r.size = [32, 32];
    r.resize = datasets::ResizeMode::Exact;
    let err = calibrate(
        &model("fmnist_vit_opset17.onnx"),
        &calib(),
        &datasets::Feed::Images(r),
        &CalibrateOptions::default(),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("input") && err.contains("28") && err.contains("32"), "{err}");
}

#[test]
fn hist_file_round_trips_and_rejects_other_versions() {
    let hist = run("fmnist_clip_image_opset17.onnx", 20, 16, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.hist");
    hist.write(&path).unwrap();
    let back = HistFile::read(&path).unwrap();
    assert_eq!(back.content_sha256, Some(hist.content_digest().unwrap()));
    assert_eq!(HistFile { content_sha256: None, ..back }, hist);
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        &format!("\"version\":{}", histograms::HIST_VERSION),
        "\"version\":99",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let err = HistFile::read(&path).unwrap_err().to_string();
    assert!(err.contains("version") && err.contains("x.hist"), "{err}");
}

#[test]
fn quantizable_selection_keeps_what_the_default_lists_need() {
    let options = CalibrateOptions {
        limit: Some(50),
        selection: Selection::Quantizable,
        hold_out: HoldOut::Count(0),
        smooth: Smooth::Off,
        ..Default::default()
    };
    let (some, _) = calibrate(&model("fmnist_vit_opset17.onnx"), &calib(), &feed(), &options, &mut |_, _| {}).unwrap();
    let all = run("fmnist_vit_opset17.onnx", 50, 16, 0);
    assert!(some.tensors.len() < all.tensors.len() / 2, "{} of {}", some.tensors.len(), all.tensors.len());
    assert_eq!(some.collected, Selection::Quantizable);
    // Whatever is collected has the statistics of the full collection, up to float rounding: with fewer
    // tensors exposed ONNX Runtime fuses more (the Erf GELU chain into one kernel), which moves last bits.
    for t in &some.tensors {
        let full = all.tensor(&t.name).unwrap_or_else(|| panic!("{} not in the full collection", t.name));
        assert_eq!(t.stats.count, full.stats.count, "{}", t.name);
        let close =
            |a: Option<f32>, b: Option<f32>| (a.unwrap() - b.unwrap()).abs() <= 1e-5 * b.unwrap().abs().max(1.0);
        assert!(close(t.stats.min, full.stats.min) && close(t.stats.max, full.stats.max), "{}", t.name);
        let moved: u64 = t.stats.hist.counts.iter().zip(&full.stats.hist.counts).map(|(a, b)| a.abs_diff(*b)).sum();
        assert!(moved * 1000 <= t.stats.count, "{}: {moved} values changed bins", t.name);
    }
    // The GEMM inputs, the attention MatMuls' inputs (INT8 by default for TensorRT) and the residual inputs.
    for needed in [
        "input",
        "/blocks.0/n1/LayerNormalization_output_0",
        "/blocks.0/Mul_2_output_0",
        "/blocks.0/Softmax_output_0",
        "/blocks.0/Add_output_0",
        "logits",
    ] {
        assert!(some.tensor(needed).is_some(), "{needed} missing");
    }
    // Not read by any Q/DQ pair: the GELU's inner tensors.
    assert!(
        some.tensor("/blocks.0/fc1/Add_output_0").is_none() || some.tensors.iter().all(|t| !t.name.contains("Erf"))
    );
}

/// The tapped session computes the measured tensors and nothing past them: an ArgMax after the logits (a
/// classifier's label, or a detector's post-processing) is not in it, and its outputs are what is read back.
#[test]
fn the_tapped_model_holds_nothing_past_the_measured_tensors() {
    use graph::proto::tensor_proto::DataType;
    let mut m = test_support::resnet_with_head("ArgMax", "label", DataType::INT64 as i32);
    // And an initializer the ArgMax's branch alone reads, listed as a graph input too (as IR 3 exports list
    // every initializer): pruned with its input entry, else it would become an input to feed.
    let g = m.proto.graph.mut_or_insert_default();
    let mut k = graph::proto::TensorProto::new();
    k.name = "k".into();
    k.data_type = DataType::INT64 as i32;
    k.int64_data = vec![1];
    g.initializer.push(k);
    let mut k_input = g.output[1].clone();
    k_input.name = "k".into();
    g.input.push(k_input);
    let label = g.node.iter_mut().find(|n| n.op_type == "ArgMax").unwrap();
    label.op_type = "Add".into();
    label.input.clear();
    label.input.extend(["k".to_string(), "k".to_string()]);
    for selection in [Selection::Quantizable, Selection::All] {
        let tapped =
            calibrate::TappedModel::from_model(m.clone(), &feed(), selection, calibrate::ChannelMaxima::None).unwrap();
        let g = &tapped.model.proto.graph;
        assert!(g.node.iter().all(|n| n.op_type != "Add" || !n.input.contains(&"k".to_string())), "{selection:?}");
        let outputs: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
        assert_eq!(outputs, tapped.output_names(), "{selection:?}");
        assert!(g.input.iter().all(|i| i.name != "k") && g.initializer.iter().all(|t| t.name != "k"));
    }
    // Calibrates: no input is left without values.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tail.onnx");
    std::fs::write(&path, m.to_bytes().unwrap()).unwrap();
    let options = CalibrateOptions { limit: Some(20), hold_out: HoldOut::Count(0), ..Default::default() };
    calibrate(&path, &calib(), &feed(), &options, &mut |_, _| {}).unwrap();
}

/// `calibrate --shard I/N` for every I, merged: the one-process .hist byte for byte, for N = 1, 3 and 7 (the
/// 7 parts are uneven: 100 images do not split by 7).
#[test]
fn shards_merge_byte_identically_to_one_process() {
    let name = "fmnist_vit_opset17.onnx";
    let options = |shard| CalibrateOptions { limit: Some(100), shard, ..Default::default() };
    let whole = calibrate(&model(name), &calib(), &feed(), &options(None), &mut |_, _| {}).unwrap().0;
    for n in [1, 3, 7] {
        let parts: Vec<(std::path::PathBuf, HistFile)> = (1..=n)
            .rev() // any order
            .map(|i| {
                let h = calibrate(&model(name), &calib(), &feed(), &options(Some((i, n))), &mut |_, _| {}).unwrap().0;
                (format!("shard-{i}.hist").into(), h)
            })
            .collect();
        assert!(parts.iter().all(|(_, h)| h.images.count < 100 || n == 1));
        // The ViT is smoothed by default: every shard measured the maxima on the same subset of the whole list.
        assert!(parts.iter().all(|(_, h)| h.smoothing == whole.smoothing && h.smoothing.is_some()));
        let merged = histograms::merge(&parts).unwrap();
        assert_eq!(merged.to_json().unwrap(), whole.to_json().unwrap(), "N = {n}");
    }
}

/// Shards of another model, a shard given twice or missing, and a whole run are refused, naming the file.
#[test]
fn merging_mismatched_overlapping_or_incomplete_shards_is_refused() {
    // Nothing held back: the image counts below are the limit's.
    let options =
        |shard| CalibrateOptions { limit: Some(30), shard, hold_out: HoldOut::Count(0), ..Default::default() };
    let shard = |name: &str, i: usize, n: usize| {
        let h = calibrate(&model(name), &calib(), &feed(), &options(Some((i, n))), &mut |_, _| {}).unwrap().0;
        (std::path::PathBuf::from(format!("{name}-{i}.hist")), h)
    };
    let vit = "fmnist_vit_opset17.onnx";
    let err = |parts: &[(std::path::PathBuf, HistFile)]| histograms::merge(parts).unwrap_err().to_string();
    let (a, b) = (shard(vit, 1, 2), shard(vit, 2, 2));
    let other = shard("fmnist_resnet_opset13.onnx", 2, 2);
    assert!(err(&[a.clone(), other]).contains("the model differs"));
    let e = err(&[a.clone(), a.clone(), b.clone()]);
    assert!(e.contains("given twice") && e.contains("overlap"), "{e}");
    let e = err(std::slice::from_ref(&b));
    assert!(e.contains("shard 1/2 is missing"), "{e}");
    // One shard copied under the other's number: the same images and statistics.
    let mut copy = a.clone();
    copy.0 = "copy.hist".into();
    copy.1.shard.as_mut().unwrap().index = 2;
    let e = err(&[a.clone(), copy]);
    assert!(e.contains("copy.hist") && e.contains("copied"), "{e}");
    // A shard count far beyond the files given is a missing shard, not an allocation.
    let mut huge = b.clone();
    huge.1.shard.as_mut().unwrap().count = 1_000_000_000_000_000;
    assert!(err(&[huge]).contains("shard 1/1000000000000000 is missing"));
    // Counts that wrap at 2^64 once two bins gain 2^63 each, and an image count apart from the tensors: each
    // breaks a check that a wrapping sum would pass.
    let mut wrapped = b.1.clone();
    let t = wrapped.tensors.iter_mut().find(|t| t.stats.count > 0 && !t.stats.max_only).unwrap();
    let bins: Vec<usize> = (0..t.stats.hist.counts.len()).filter(|&i| t.stats.hist.counts[i] > 0).take(2).collect();
    for &i in &bins {
        t.stats.hist.counts[i] = t.stats.hist.counts[i].wrapping_add(1 << 63);
    }
    assert!(wrapped.check().unwrap_err().contains("beyond 2^64"));
    let mut recounted = b.1.clone();
    recounted.images.count += 2; // 15 images of 784 values: 17 cannot give 11760

    assert!(recounted.check().unwrap_err().contains("images cannot give"));
    let whole = calibrate(&model(vit), &calib(), &feed(), &options(None), &mut |_, _| {}).unwrap().0;
    let e = err(&[("whole.hist".into(), whole), b.clone()]);
    assert!(e.contains("whole.hist") && e.contains("is not a shard"), "{e}");
    // Another image subset (another --limit): the list differs.
    let other_list = {
        let o = CalibrateOptions { limit: Some(31), shard: Some((1, 2)), ..Default::default() };
        ("l.hist".into(), calibrate(&model(vit), &calib(), &feed(), &o, &mut |_, _| {}).unwrap().0)
    };
    assert!(err(&[other_list, b.clone()]).contains("the image list differs"));
    // A shard of another whole list (the same folder name, other files).
    let mut elsewhere = b.clone();
    elsewhere.1.shard.as_mut().unwrap().whole_list_sha256 = Some("00".repeat(32));
    assert!(err(&[a.clone(), elsewhere]).contains("the whole image list differs"));
    // An identity of the samples that is not one.
    let mut garbled = b.clone();
    garbled.1.images.samples_sha256 = Some("not hex".into());
    assert!(err(&[a.clone(), garbled]).contains("samples_sha256 is not 64 hex digits"));
    // A shard smoothed otherwise than the others (here not at all).
    let unsmoothed = CalibrateOptions { smooth: Smooth::Off, ..options(Some((2, 2))) };
    let c = calibrate(&model(vit), &calib(), &feed(), &unsmoothed, &mut |_, _| {}).unwrap().0;
    let e = err(&[a.clone(), ("unsmoothed.hist".into(), c)]);
    assert!(e.contains("unsmoothed.hist") && e.contains("the smoothing differs"), "{e}");
    // Out of range: refused before any work.
    let bad = CalibrateOptions { shard: Some((3, 2)), ..Default::default() };
    assert!(calibrate(&model(vit), &calib(), &feed(), &bad, &mut |_, _| {}).is_err());
}

/// The samples held back for the self-check and the `auto` search never reach the statistics: rewriting their
/// contents leaves the .hist byte-identical, rewriting one calibrated sample does not.
#[test]
fn the_held_back_slice_never_enters_the_statistics() {
    use test_support::conv_models::{tiny_channel_cnn, write_outlier_samples, write_samples};
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_channel_cnn(dir.path());
    let samples = write_samples(&dir.path().join("samples"), 0, 40);
    let feed = datasets::Feed::for_folder(&samples, None).unwrap();
    let options = CalibrateOptions { hold_out: HoldOut::Count(8), ..Default::default() };
    let run = || calibrate(&model, &samples, &feed, &options, &mut |_, _| {}).unwrap();
    let (before, summary) = run();
    let held = summary.held_out.expect("8 samples held back");
    assert_eq!(held.len(), 8);
    assert_eq!(before.images.count, 32);
    assert_eq!(before.images.held_out.as_ref().map(|h| h.count), Some(8));

    // Other contents under the held-back names (the outlier samples differ from these everywhere).
    let seed = |p: &std::path::Path| p.file_stem().unwrap().to_str().unwrap().parse::<u64>().unwrap();
    let other = dir.path().join("other");
    for item in &held.items {
        let s = seed(&item.path);
        write_outlier_samples(&other, s, 1);
        std::fs::copy(other.join(item.path.file_name().unwrap()), &item.path).unwrap();
    }
    let (after, _) = run();
    assert_eq!(after.to_json().unwrap(), before.to_json().unwrap(), "a held-back sample reached the statistics");

    // The same change to one calibrated sample shows: the comparison above can fail.
    let calibrated = (0..40).find(|s| !held.items.iter().any(|i| seed(&i.path) == *s)).unwrap();
    write_outlier_samples(&other, calibrated, 1);
    let name = format!("{calibrated:05}.npz");
    std::fs::copy(other.join(&name), samples.join(&name)).unwrap();
    assert_ne!(run().0.to_json().unwrap(), before.to_json().unwrap());
}

/// `analyze --images` finds the held-back samples again from the calibration folder, and refuses a folder with
/// another list: one more sample, or the held-back slice renamed.
#[test]
fn the_held_back_slice_is_found_again_only_in_the_calibration_folder() {
    use test_support::conv_models::{tiny_channel_cnn, write_samples};
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_channel_cnn(dir.path());
    let samples = write_samples(&dir.path().join("samples"), 0, 40);
    let feed = datasets::Feed::for_folder(&samples, None).unwrap();
    let options = CalibrateOptions { hold_out: HoldOut::Count(8), ..Default::default() };
    let (hist, summary) = calibrate(&model, &samples, &feed, &options, &mut |_, _| {}).unwrap();
    let names = |d: &Dataset| d.items.iter().map(|i| i.path.clone()).collect::<Vec<_>>();
    let again = calibrate::held_out_slice(&samples, &hist).unwrap().expect("a held-back slice");
    assert_eq!(names(&again), names(&summary.held_out.unwrap()));
    // The rest (what GPTQ's layer sums read) is the other 32 samples: none of the held-back ones.
    let rest = calibrate::held_in_slice(&samples, &hist).unwrap();
    assert_eq!(rest.len(), 32);
    assert!(names(&rest).iter().all(|p| !names(&again).contains(p)));

    // A .hist before version 8 held back the first of a seeded shuffle, and names its list by paths.
    let listed = Dataset::flat(&samples).unwrap();
    let old_slice = listed.clone().hold_out_before_v8(8, 0).1;
    assert_ne!(names(&old_slice), names(&again));
    let mut v7 = hist.clone();
    v7.version = 7;
    v7.images.samples_sha256 = None;
    v7.images.list_sha256 = Some(listed.list_sha256());
    v7.images.held_out.as_mut().unwrap().list_sha256 = old_slice.list_sha256();
    let found = calibrate::held_out_slice(&samples, &v7).unwrap().unwrap();
    assert_eq!(names(&found), names(&old_slice));

    let refused = |folder: &std::path::Path| calibrate::held_out_slice(folder, &hist).unwrap_err().to_string();
    write_samples(&samples, 40, 1);
    let e = refused(&samples);
    assert!(e.contains("this folder's sample list is not the one"), "{e}");
    std::fs::remove_file(samples.join("00040.npz")).unwrap();
    let first = again.items[0].path.clone();
    std::fs::rename(&first, samples.join("renamed.npz")).unwrap();
    let e = refused(&samples);
    assert!(e.contains("the slice chosen from this folder"), "{e}");
}
