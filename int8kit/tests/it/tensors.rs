//! Tensors as calibration and evaluation data: a folder of `.npz` samples (one array per model input, by
//! name) feeds a model that does not take one image, here a text-tower-shaped model with two int64 inputs
//! built in the test. calibrate, quantize, validate (fidelity gates) and autoprecision (fidelity budget) run
//! on it without a recipe; a recipe, a mixed folder, a missing input or a wrong element type are refused.

use crate::common;

use std::path::Path;

use common::{int8kit, read_json, refused, text, validate_samples};
use test_support::text_tower::{sample, write_model, write_npz, write_samples};

/// `int8kit SUBCOMMAND --model MODEL --images SAMPLES EXTRA --quiet --out OUT` (no recipe), run.
fn on_samples(subcommand: &str, model: &Path, samples: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    int8kit(subcommand)
        .arg("--model")
        .arg(model)
        .arg("--images")
        .arg(samples)
        .args(extra)
        .args(["--quiet", "--out"])
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn npz_samples_calibrate_quantize_and_gate_a_text_tower() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path());
    let calib = write_samples(&dir.path().join("calib"), 0, 40);
    let val = write_samples(&dir.path().join("val"), 1000, 48);

    // calibrate: no recipe; the .hist names the arrays instead.
    let hist = dir.path().join("t.hist");
    let o = on_samples("calibrate", &model, &calib, &hist, &["--batch-size", "16"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let h = read_json(&hist);
    assert!(h.get("recipe").is_none(), "{}", h["arrays"]);
    assert_eq!(h["arrays"][1]["name"], "input_ids");
    assert_eq!(h["arrays"][1]["dtype"], "int64");
    assert_eq!(h["arrays"][1]["shape"], serde_json::json!([1, 12]));
    // A tenth of the 40 held back for the self-check: 36 samples in the statistics.
    assert_eq!(h["images"]["count"], 36);
    assert_eq!(h["images"]["held_out"]["count"], 4);
    let names: Vec<&str> = h["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"normed") && names.contains(&"activated"), "{names:?}");
    let embedded = h["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "normed").unwrap();
    assert!(embedded["count"].as_u64().unwrap() == 36 * 12 * 32, "every token's values: {embedded}");

    // A recipe for .npz samples is refused, not ignored.
    let o = on_samples("calibrate", &model, &calib, &dir.path().join("x.hist"), &["--preset", "imagenet"]);
    refused(&o, "fed as stored");

    // quantize: the MatMuls go INT8 and FLOPs come from a probe with int64 zeros.
    let q = dir.path().join("q");
    let o = on_samples("quantize", &model, &calib, &q, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ranges = read_json(&q.join("ranges.json"));
    let share = ranges["int8_flop_share"].as_f64().unwrap_or_else(|| panic!("{}", ranges["int8_flop_share"]));
    eprintln!("text tower: {share} of GEMM FLOPs INT8");
    assert!(share > 0.9, "{share}");

    // validate with fidelity gates: passes at a reachable bar, fails (exit 1) at an unreachable one.
    let validate = |out: &str, gates: &[&str]| validate_samples(&model, &calib, &val, gates, &dir.path().join(out));
    let o = validate("pass", &["--min-cosine", "0.99", "--min-sqnr", "15"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report = read_json(&dir.path().join("pass/report.json"));
    let c = &report["comparison"];
    eprintln!("text tower, INT8 vs FP32 on 48 samples: {c}");
    assert_eq!(c["images"], 48);
    assert!(c["fp32"]["top1"].is_null(), "{c}");
    assert!(report["recipe"].is_null(), "{}", report["recipe"]);
    assert!(report.get("shapes").is_none(), "samples of one shape need no per-shape rows");
    let cosine = c["cosine_mean"].as_f64().unwrap();
    assert!(cosine > 0.99 && cosine < 1.0, "{c}");
    let o = validate("fail", &["--min-cosine", "0.9999999"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    refused(&validate("top1", &["--max-top1-drop", "1"]), "needs labels");

    // autoprecision with a fidelity budget: finds a list and verifies it on the samples.
    let auto = dir.path().join("auto");
    let o = int8kit("autoprecision")
        .arg("--model")
        .arg(&model)
        .arg("--hist")
        .arg(&hist)
        .arg("--val")
        .arg(&val)
        // Entropy scales, fixed: the auto search finds scales that meet this budget with nothing denied, and the
        // test is of the denials.
        .args(["--limit", "48", "--min-cosine", "0.9995", "--method", "entropy", "--quiet", "--out"])
        .arg(&auto)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let a = read_json(&auto.join("autoprecision.json"));
    eprintln!("autoprecision: {} denied {} ({} of GEMM FLOPs INT8)", a["search"], a["denied"], a["int8_flop_share"]);
    assert!(a["search"]["cosine_mean"].as_f64().unwrap() >= 0.9995, "{a}");
    assert!(
        !a["denied"].as_array().unwrap().is_empty(),
        "the FP32 comparison above misses 0.9995: something is denied: {a}"
    );
}

#[test]
fn samples_that_do_not_fit_the_model_are_refused_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path());
    let calibrate = |samples: &Path| on_samples("calibrate", &model, samples, &dir.path().join("x.hist"), &[]);
    let (ids, mask) = sample(1);

    // An input missing from the samples.
    let missing = dir.path().join("missing");
    std::fs::create_dir_all(&missing).unwrap();
    write_npz(&missing.join("a.npz"), &[("input_ids", &ids)]);
    let o = calibrate(&missing);
    refused(&o, "model input 'attention_mask' (int64) gets no values");

    // An array of another name.
    let extra = dir.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    write_npz(&extra.join("a.npz"), &[("input_ids", &ids), ("attention_mask", &mask), ("token_type_ids", &mask)]);
    let o = calibrate(&extra);
    refused(&o, "'token_type_ids' is not an input of the model");

    // A mixed folder: images beside .npz samples.
    let mixed = write_samples(&dir.path().join("mixed"), 0, 2);
    std::fs::copy(
        std::fs::read_dir(test_support::calib_dir()).unwrap().next().unwrap().unwrap().path(),
        mixed.join("image.png"),
    )
    .unwrap();
    let o = calibrate(&mixed);
    refused(&o, "holds both images");

    // The wrong element type.
    let wrong = dir.path().join("int32");
    std::fs::create_dir_all(&wrong).unwrap();
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(wrong.join("a.npz")).unwrap());
    let ids32: Vec<i32> = ids.iter().map(|&v| v as i32).collect();
    npz.add_array("input_ids", &ndarray::Array2::from_shape_vec((1, ids32.len()), ids32).unwrap()).unwrap();
    npz.add_array("attention_mask", &ndarray::Array2::from_shape_vec((1, mask.len()), mask.clone()).unwrap()).unwrap();
    npz.finish().unwrap();
    let o = calibrate(&wrong);
    refused(&o, "input 'input_ids' takes int64 but is given int32");

    // Images need a recipe; its absence is named.
    let o = on_samples("calibrate", &model, &test_support::calib_dir(), &dir.path().join("y.hist"), &[]);
    refused(&o, "need a preprocessing recipe");
}

#[test]
fn samples_of_several_sequence_lengths_calibrate_and_gate_together() {
    let dir = tempfile::tempdir().unwrap();
    let (model, calib, val) = test_support::text_tower::write_three_length_set(dir.path(), 48);
    let out = dir.path().join("v");
    let o = validate_samples(&model, &calib, &val, &["--min-cosine", "0.99"], &out);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["comparison"]["images"], 48, "every sample, whatever its length");
    assert!(report["comparison"]["cosine_mean"].as_f64().unwrap() >= 0.99);
    // Each length's rows: the three shapes, their samples adding up to all, every array with its length.
    let shapes = report["shapes"].as_array().expect("per-shape rows");
    let mut lengths: Vec<u64> = Vec::new();
    let mut images = 0;
    for row in shapes {
        let arrays = row["shape"].as_array().unwrap();
        assert!(arrays.len() >= 2 && arrays.iter().all(|a| a["dims"] == arrays[0]["dims"]), "{row}");
        lengths.push(arrays[0]["dims"][0].as_u64().unwrap());
        images += row["comparison"]["images"].as_u64().unwrap();
        assert!(row["comparison"]["cosine_mean"].as_f64().unwrap() > 0.0 && row["fp16"]["sqnr_db"].is_number());
    }
    lengths.sort();
    assert_eq!((lengths, images), (vec![8, 12, 20], 48));
    assert!(text(&o).contains("shape attention_mask [8], input_ids [8] ("), "{}", text(&o));
    // The fixed-length model refuses the other lengths, naming the input.
    let fixed = write_model(dir.path());
    let o = on_samples("calibrate", &fixed, &calib, &dir.path().join("x.hist"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("input_ids") || text(&o).contains("attention_mask"), "{}", text(&o));
}
