//! Several input sizes (recipe `sizes`, `--sizes`) on a ViT with dynamic height and width built in the test:
//! validate reports each size's rows in every report file, holds each gate at every size and names the worst
//! size; a fixed-size model and what evaluates one size only are refused.

use crate::common;

use std::path::Path;

use common::{int8kit, read_json, refused, text};
use test_support::{calib_dir, dynamic_models, val_dir};

/// The fixtures' recipe at 28x28 and 56x56 (resized exactly), written to `dir/sizes.toml`.
fn recipe_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("sizes.toml");
    std::fs::write(&path, dynamic_models::recipe(&[[28, 28], [56, 56]]).to_toml()).unwrap();
    path
}

/// `int8kit calibrate` of `model` on the fixtures' calibration images through `recipe`, quietly, to `out`.
fn calibrate(model: &Path, recipe: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    on_calib_images("calibrate", model, recipe, out, extra)
}

/// `int8kit SUBCOMMAND` (calibrate or quantize) of `model` on the fixtures' calibration images through
/// `recipe`, quietly, to `out`.
fn on_calib_images(subcommand: &str, model: &Path, recipe: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    int8kit(subcommand)
        .arg("--model")
        .arg(model)
        .arg("--recipe")
        .arg(recipe)
        .args(["--quiet", "--images"])
        .arg(calib_dir())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn validate(model: &Path, recipe: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    int8kit("validate")
        .arg("--model")
        .arg(model)
        .arg("--recipe")
        .arg(recipe)
        .arg("--val")
        .arg(val_dir())
        // Every choice explicit: the run from --hist, which has no held-back samples to choose on, builds the
        // same model as the one that calibrated.
        .args(["--method", "mse", "--attention", "int8", "--float-type", "fp16"])
        .args(["--limit-val", "120", "--quiet", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn validate_reports_every_size_and_a_gate_holds_only_where_it_holds_at_each() {
    let dir = tempfile::tempdir().unwrap();
    let model = dynamic_models::dynamic_vit(dir.path());
    let recipe = recipe_file(dir.path());
    let first = dir.path().join("first");
    let calib = calib_dir();
    let o = validate(
        &model,
        &recipe,
        &first,
        &["--calib", calib.to_str().unwrap(), "--limit", "60", "--min-cosine", "0", "--max-top1-drop", "100"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("at 28x28:") && text(&o).contains("at 56x56:") && text(&o).contains("worst size"));
    let report = read_json(&first.join("report.json"));
    let sizes = report["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    assert_eq!(
        (sizes[0]["size"].clone(), sizes[1]["size"].clone()),
        (serde_json::json!([28, 28]), serde_json::json!([56, 56]))
    );
    // The top rows are over both sizes' images; each size's over its own.
    assert_eq!(report["comparison"]["images"], 240);
    assert!(sizes
        .iter()
        .all(|s| s["comparison"]["images"] == 120 && s["fp16"]["cosine_mean"].is_number() && s["calibrated"] == true));
    let cosine = |k: usize| sizes[k]["comparison"]["cosine_mean"].as_f64().unwrap();
    assert_ne!(cosine(0), cosine(1), "the sizes measured alike");
    // Each criterion once per size, named by it.
    let criteria = report["criteria"].as_array().unwrap();
    let cases: Vec<String> =
        criteria.iter().map(|c| format!("{}@{}x{}", c["name"].as_str().unwrap(), c["size"][0], c["size"][1])).collect();
    assert_eq!(cases, ["max-top1-drop@28x28", "min-cosine@28x28", "max-top1-drop@56x56", "min-cosine@56x56"]);
    let junit = std::fs::read_to_string(first.join("junit.xml")).unwrap();
    assert!(junit.contains("name=\"min-cosine@56x56\"") && junit.contains("tests=\"4\""), "{junit}");
    let summary = std::fs::read_to_string(first.join("summary.csv")).unwrap();
    assert!(
        summary.starts_with("size,metric,")
            && summary.contains("\n28x28,cosine_mean,")
            && summary.contains("\nall,top1,")
    );
    // The TensorRT profile beside the Q/DQ model: batch 1..64, each side's smallest and largest size.
    let profile = read_json(&first.join("profile.json"));
    assert_eq!(profile["format"], "int8kit.profile");
    assert_eq!(profile["input"], dynamic_models::INPUT);
    assert_eq!(
        (profile["min"].clone(), profile["opt"].clone(), profile["max"].clone()),
        (serde_json::json!([1, 1, 28, 28]), serde_json::json!([64, 1, 28, 28]), serde_json::json!([64, 1, 56, 56]))
    );
    let manifest = std::fs::read_to_string(first.join("int8kit.manifest.json")).unwrap();
    assert!(manifest.contains("profile.json"), "the artifact set lists it: {manifest}");
    let html = std::fs::read_to_string(first.join("report.html")).unwrap();
    assert!(html.contains("Per input size") && html.contains("data-key=\"sizes.1.comparison.cosine_mean\""));

    // A cosine floor between the two sizes' cosines fails at the worse size only, and the run fails.
    let (worse, better) = if cosine(0) < cosine(1) { (0, 1) } else { (1, 0) };
    let floor = ((cosine(0) + cosine(1)) / 2.0).to_string();
    let second = dir.path().join("second");
    let hist = first.join("calibration.hist");
    let o = validate(&model, &recipe, &second, &["--hist", hist.to_str().unwrap(), "--min-cosine", &floor]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let report = read_json(&second.join("report.json"));
    let failed: Vec<&serde_json::Value> =
        report["criteria"].as_array().unwrap().iter().filter(|c| c["passed"] == false).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["size"], sizes[worse]["size"]);
    let worse_size = sizes[worse]["size"].as_array().unwrap().iter().map(|v| v.to_string()).collect::<Vec<_>>();
    assert!(text(&o).contains(&format!("worst size: {}", worse_size.join("x"))), "{}", text(&o));
    assert!(report["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["size"] == sizes[better]["size"] && c["passed"] == true));
}

#[test]
fn fixed_sizes_and_one_size_evaluations_are_refused_for_several_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.hist");
    // The fixture ResNet's input is [batch, 1, 28, 28].
    let o = common::on_fixtures("calibrate", &common::resnet(), &out, &["--sizes", "28,56"]);
    refused(&o, "height and width are fixed");
    assert!(!out.exists());
    // --sizes needs images through a recipe.
    let o = int8kit("calibrate")
        .arg("--model")
        .arg(common::resnet())
        .arg("--images")
        .arg(calib_dir())
        .args(["--sizes", "28", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    refused(&o, "--sizes");
    let o = common::on_fixtures("calibrate", &common::resnet(), &out, &["--sizes", "28x0"]);
    refused(&o, "from 1 to 16384");
    // validate's shards evaluate one size.
    let model = dynamic_models::dynamic_vit(dir.path());
    let recipe = recipe_file(dir.path());
    let part = dir.path().join("part.json");
    let o = validate(
        &model,
        &recipe,
        &dir.path().join("v"),
        &["--calib", calib_dir().to_str().unwrap(), "--shard", "1/2", "--partial-out", part.to_str().unwrap()],
    );
    refused(&o, "--shard evaluates one input size");
}

#[test]
fn statistics_of_one_size_gate_at_several_and_the_report_marks_the_sizes_they_never_saw() {
    let dir = tempfile::tempdir().unwrap();
    let model = dynamic_models::dynamic_vit(dir.path());
    let recipe = recipe_file(dir.path());
    let hist = dir.path().join("28.hist");
    let o = calibrate(&model, &recipe, &hist, &["--sizes", "28", "--limit", "40"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(read_json(&hist)["images"].get("sizes").is_none(), "one size records no sizes");
    let out = dir.path().join("v");
    let o = validate(&model, &recipe, &out, &["--hist", hist.to_str().unwrap(), "--min-cosine", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("at 56x56 (a size the statistics never saw)"), "{}", text(&o));
    let report = read_json(&out.join("report.json"));
    let calibrated: Vec<bool> =
        report["sizes"].as_array().unwrap().iter().map(|s| s["calibrated"].as_bool().unwrap()).collect();
    assert_eq!(calibrated, [true, false]);
    // Statistics of one size: no profile (a one-size engine varies only its batch).
    assert!(!out.join("profile.json").exists());
    // Another preprocessing is still refused.
    let other = dir.path().join("other.toml");
    let mut r = dynamic_models::recipe(&[[28, 28], [56, 56]]);
    r.mean = vec![0.5];
    std::fs::write(&other, r.to_toml()).unwrap();
    let o = validate(&model, &other, &dir.path().join("w"), &["--hist", hist.to_str().unwrap()]);
    refused(&o, "another preprocessing");
}

#[test]
fn a_model_pinned_to_one_size_by_a_constant_reshape_is_named_by_lint_and_refused_for_several_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = dynamic_models::pinned_vit(dir.path());
    let lint = |model: &Path| int8kit("lint").arg("--json").arg(model).output().unwrap();
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&lint(&pinned).stdout).unwrap();
    let pins: Vec<&serde_json::Value> = findings.iter().filter(|f| f["rule"] == "size-pinned").collect();
    assert_eq!(pins.len(), 1, "{findings:?}");
    assert_eq!(pins[0]["severity"], "warning");
    assert!(pins[0]["message"].as_str().unwrap().contains("[0, 16, 49]"), "{:?}", pins[0]);
    // The same model with the token count computed from the input: nothing pinned.
    let flexible = dynamic_models::dynamic_vit(dir.path());
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&lint(&flexible).stdout).unwrap();
    assert!(findings.iter().all(|f| f["rule"] != "size-pinned"), "{findings:?}");
    // Several sizes: refused before any work, naming the Reshape; one size runs.
    let recipe = recipe_file(dir.path());
    let out = dir.path().join("both.hist");
    let o = calibrate(&pinned, &recipe, &out, &["--sizes", "28,56", "--limit", "20"]);
    refused(&o, "reshapes to the constant shape [0, 16, 49]");
    assert!(text(&o).contains("Reshape"), "{}", text(&o));
    assert!(!out.exists());
    let o = calibrate(&pinned, &recipe, &dir.path().join("one.hist"), &["--sizes", "28", "--limit", "20"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn sensitivity_over_several_sizes_takes_each_nodes_worst_size() {
    let dir = tempfile::tempdir().unwrap();
    let model = dynamic_models::dynamic_vit(dir.path());
    let recipe = recipe_file(dir.path());
    let hist = dir.path().join("both.hist");
    let o = calibrate(&model, &recipe, &hist, &["--limit", "40"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let sensitivity = |sizes: &str| {
        let out = dir.path().join(format!("s{}", sizes.replace(',', "_")));
        let o = int8kit("sensitivity")
            .arg("--model")
            .arg(&model)
            .arg("--hist")
            .arg(&hist)
            .arg("--recipe")
            .arg(&recipe)
            .args(["--sizes", sizes, "--limit", "40", "--quiet"])
            .args(["--method", "mse", "--attention", "int8", "--float-type", "fp32", "--val"])
            .arg(val_dir())
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        read_json(&out.join("sensitivity.json"))
    };
    let (both, small, large) = (sensitivity("28,56"), sensitivity("28"), sensitivity("56"));
    let sqnr = |report: &serde_json::Value, node: &str, which: &str| -> f64 {
        let n = report["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).unwrap();
        n[which]["sqnr_db"].as_f64().unwrap_or(f64::INFINITY)
    };
    let nodes: Vec<String> =
        both["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap().to_string()).collect();
    assert!(nodes.len() >= 3, "{nodes:?}");
    let mut sizes_differ = false;
    for node in &nodes {
        for which in ["alone_int8", "alone_float"] {
            let (a, b) = (sqnr(&small, node, which), sqnr(&large, node, which));
            sizes_differ |= (a - b).abs() > 1e-6;
            let worst = a.min(b);
            let got = sqnr(&both, node, which);
            assert!((got - worst).abs() <= 1e-9 * worst.abs().max(1.0), "{node} {which}: {got} vs worst of {a}, {b}");
        }
    }
    assert!(sizes_differ, "the two sizes measured every node alike: the test shows nothing");
    let cosine = |r: &serde_json::Value| r["int8"]["cosine_mean"].as_f64().unwrap();
    assert_eq!(cosine(&both), cosine(&small).min(cosine(&large)));
}

/// With a recipe of several sizes the auto search ranks candidates by the size each does worst on (never above
/// its mean per-sample SQNR over all sizes), keeps one within the tolerance of the best such worst size, and says so.
#[test]
fn the_auto_search_over_several_sizes_ranks_by_each_candidates_worst_size() {
    let dir = tempfile::tempdir().unwrap();
    let model = dynamic_models::dynamic_vit(dir.path());
    let recipe = recipe_file(dir.path());
    let out = dir.path().join("q");
    let o = on_calib_images("quantize", &model, &recipe, &out, &["--limit", "200"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let search = &read_json(&out.join("ranges.json"))["search"];
    assert!(search["reason"].as_str().unwrap().contains("2 shapes"), "{}", search["reason"]);
    let trials = search["trials"].as_array().unwrap();
    let worst = |t: &serde_json::Value| t["worst_shape_sqnr_db"].as_f64().unwrap();
    for t in trials {
        assert!(worst(t) <= t["mean_sample_sqnr_db"].as_f64().unwrap() + 1e-9, "{t}");
    }
    let best = trials.iter().filter(|t| t["stage"] == "fine").map(worst).fold(f64::NEG_INFINITY, f64::max);
    let chosen = &trials[search["chosen"].as_u64().unwrap() as usize];
    assert!(worst(chosen) >= best - quantizer::search::MAX_TOLERANCE_DB, "{chosen} against {best}");
}
