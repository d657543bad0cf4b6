//! The `int8kit` binary from outside the checkout: `quantize` gives the artifacts `calibrate` + `analyze`
//! give, byte for byte; bad input exits 2 with a message naming the problem.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::text;
use test_support::{calib_dir, model, recipe_path};

/// `int8kit ARGS` run from `cwd`.
fn int8kit(cwd: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_int8kit")).current_dir(cwd).args(args).output().unwrap()
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

/// A scratch folder to run in, the fixture ResNet, the calibration folder and its recipe.
fn resnet_run() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    (tempfile::tempdir().unwrap(), model("fmnist_resnet_opset13.onnx"), calib_dir(), recipe_path())
}

#[test]
fn quantize_equals_calibrate_then_analyze_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let m = model("fmnist_vit_opset18.onnx"); // external data: read from the model's folder, not the cwd
    let (images, recipe) = (calib_dir(), recipe_path());
    let common: &[&std::ffi::OsStr] =
        args!["--model", &m, "--images", &images, "--recipe", &recipe, "--limit", "120", "--quiet"];
    // Unsmoothed, and with smoothing (calibration flag; the ViT's default) and MSE weight clips (analysis flag).
    let variants: [(&str, &[&std::ffi::OsStr], &[&std::ffi::OsStr]); 2] =
        [("", args!["--smooth", "off"], args![]), ("s", args![], args!["--weight-clip", "mse"])];
    for (tag, calibration, analysis) in variants {
        let name = |base: &str| format!("{base}{tag}");
        let (qh, q, ch, a) = (name("q.hist"), name("q"), name("c.hist"), name("a"));
        let quantize =
            [args!["quantize"] as &[_], common, calibration, analysis, args!["--save-hist", &qh, "--out", &q]];
        let o = int8kit(cwd, &quantize.concat());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = int8kit(cwd, &[args!["calibrate"] as &[_], common, calibration, args!["--out", &ch]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        // With the calibration folder, analyze finds the held-back samples and makes the same auto choices.
        let analyze = [
            args!["analyze", "--model", &m, "--hist", &ch, "--images", &images, "--out", &a, "--quiet"] as &[_],
            analysis,
        ];
        let o = int8kit(cwd, &analyze.concat());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let read = |p: &str| std::fs::read(cwd.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(read(&qh), read(&ch), "--save-hist differs from calibrate's .hist");
        for f in ["model.qdq.onnx", "ranges.csv", "ranges.json"] {
            assert_eq!(
                read(&format!("{q}/{f}")),
                read(&format!("{a}/{f}")),
                "{f} differs between quantize and analyze"
            );
        }
        let ranges = String::from_utf8(read(&format!("{a}/ranges.json"))).unwrap();
        assert_eq!(ranges.contains("\"smoothing\""), !tag.is_empty(), "ranges.json records the smoothing");
        assert_eq!(ranges.contains("\"clip\": \"mse\""), !tag.is_empty(), "ranges.json records the weight clip");
        // Both rounded the weights from the same held-in samples, and measured it the same way.
        assert!(ranges.contains("\"weight_rounding\""), "ranges.json records the weight rounding");
    }
    // Nothing but the outputs was written.
    let mut written: Vec<String> =
        std::fs::read_dir(cwd).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    written.sort();
    assert_eq!(written, ["a", "as", "c.hist", "c.hists", "q", "q.hist", "q.hists", "qs"]);
}

#[test]
fn bad_input_exits_2_naming_the_problem() {
    let (dir, m, images, recipe) = resnet_run();
    let cwd = dir.path();
    // --weight-clip auto without the sensitivity file, refused before any calibration.
    let o = int8kit(
        cwd,
        args![
            "quantize",
            "--model",
            &m,
            "--images",
            &images,
            "--recipe",
            &recipe,
            "--weight-clip",
            "auto",
            "--out",
            "x"
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--sensitivity"), "{}", text(&o));
    // An unknown method names the choices.
    let o = int8kit(
        cwd,
        args!["quantize", "--model", &m, "--images", &images, "--recipe", &recipe, "--method", "kl", "--out", "x"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("entropy, mse, percentile[:P] or max"), "{}", text(&o));
    // A .hist that is not one.
    std::fs::write(cwd.join("bad.hist"), b"{\"format\": \"something else\"}").unwrap();
    let o = int8kit(cwd, args!["analyze", "--model", &m, "--hist", "bad.hist", "--out", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("bad.hist") && text(&o).contains("int8kit.hist"), "{}", text(&o));
    // Value enums list their values.
    let o = int8kit(cwd, args!["calibrate", "--model", &m, "--images", &images, "--preset", "coco", "--out", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("imagenet") && text(&o).contains("clip"), "{}", text(&o));
    assert!(!cwd.join("x").exists(), "a refused run wrote output");
}

#[test]
fn version_and_every_subcommand_are_there() {
    let cwd = std::env::temp_dir();
    let o = int8kit(&cwd, args!["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o).trim(), format!("int8kit {}", env!("CARGO_PKG_VERSION")));
    let help = text(&int8kit(&cwd, args!["--help"]));
    for sub in
        ["quantize", "calibrate", "analyze", "sensitivity", "autoprecision", "validate", "setup", "merge", "lint"]
    {
        assert!(help.contains(sub), "{sub} missing from --help:\n{help}");
    }
}

#[test]
fn messages_say_each_thing_once_suggest_only_real_flags_and_stay_plain_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let (images, recipe) = (calib_dir(), recipe_path());
    let o = int8kit(
        cwd,
        args!["calibrate", "--model", "missing.onnx", "--images", &images, "--recipe", &recipe, "--out", "x.hist"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(text(&o).matches("No such file").count(), 1, "{}", text(&o));
    // A folder with one good and one broken image.
    let bad = cwd.join("bad");
    std::fs::create_dir(&bad).unwrap();
    let first = std::fs::read_dir(&images).unwrap().next().unwrap().unwrap().path();
    std::fs::copy(&first, bad.join("a.png")).unwrap();
    std::fs::write(bad.join("b.png"), b"not a png").unwrap();
    let m = model("fmnist_resnet_opset13.onnx");
    let o = int8kit(cwd, args!["calibrate", "--model", &m, "--images", &bad, "--recipe", &recipe, "--out", "x.hist"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("b.png") && text(&o).contains("--on-bad-image skip"), "{}", text(&o));
    // validate has no such flag, so it does not suggest one.
    let val = test_support::val_dir();
    let o = int8kit(
        cwd,
        args!["validate", "--model", &m, "--calib", &bad, "--val", &val, "--recipe", &recipe, "--quiet", "--out", "v"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("b.png") && !text(&o).contains("--on-bad-image"), "{}", text(&o));
    // Logs piped to a file carry no colour codes.
    let o = Command::new(env!("CARGO_BIN_EXE_int8kit"))
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .args(args!["calibrate", "--model", &m, "--images", &bad, "--recipe", &recipe, "--on-bad-image", "skip"])
        .args(args!["--out", "y.hist"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("WARN") && !text(&o).contains('\u{1b}'), "{}", text(&o));
}

#[test]
fn calibrate_shards_merge_into_the_one_process_hist() {
    let (dir, m, images, recipe) = resnet_run();
    let cwd = dir.path();
    let common: &[&std::ffi::OsStr] =
        args!["calibrate", "--model", &m, "--images", &images, "--recipe", &recipe, "--limit", "40", "--quiet"];
    for (shard, out) in [(None, "whole.hist"), (Some("2/2"), "b.hist"), (Some("1/2"), "a.hist")] {
        let extra: &[&std::ffi::OsStr] = match shard {
            Some(s) => args!["--shard", s, "--out", out],
            None => args!["--out", out],
        };
        let o = int8kit(cwd, &[common, extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = int8kit(cwd, args!["merge", "b.hist", "a.hist", "--out", "merged.hist"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let read = |p: &str| std::fs::read(cwd.join(p)).unwrap();
    assert_eq!(read("merged.hist"), read("whole.hist"));
    // One shard alone is refused with exit 2, naming what is missing; nothing is written.
    let o = int8kit(cwd, args!["merge", "a.hist", "--out", "half.hist"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("shard 2/2 is missing") && !cwd.join("half.hist").exists(), "{}", text(&o));
    let o = int8kit(cwd, &[common, args!["--shard", "3/2", "--out", "x.hist"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("expected I/N"), "{}", text(&o));
}

/// `quantize` reads its model file once and runs each graph in one ONNX Runtime session (the calibration's
/// tapped model, the one-sample FLOPs probe), as its debug logs say; a candidate graph at most once per
/// candidate measured at once (two on `--threads 2`: two candidates sharing a graph, measured at the same time,
/// each take a session of it). (Its few held-back samples fill one batch; a measurement of more batches runs
/// them in one-thread sessions at once, `Probe::layout`.)
#[test]
fn quantize_reads_the_model_once_and_opens_one_session_per_graph() {
    let dir = tempfile::tempdir().unwrap();
    let m = model("fmnist_vit_opset17.onnx");
    let (images, recipe) = (calib_dir(), recipe_path());
    for smooth in [Some("off"), None] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_int8kit"));
        cmd.current_dir(dir.path()).env("RUST_LOG", "int8kit::sessions=debug,int8kit::files=debug");
        cmd.args(args!["quantize", "--model", &m, "--images", &images, "--recipe", &recipe, "--limit", "20"]);
        cmd.args(["--threads", "2"]);
        if let Some(alpha) = smooth {
            cmd.args(["--smooth", alpha]);
        }
        let o = cmd.args(["--quiet", "--out", "q"]).output().unwrap();
        let log = text(&o);
        assert_eq!(o.status.code(), Some(0), "{log}");
        let reads = log.lines().filter(|l| l.contains("model read") && l.contains("fmnist_vit_opset17.onnx")).count();
        assert_eq!(reads, 1, "smooth {smooth:?}: the model file was read {reads} times:\n{log}");
        // The once-per-process check of how FP16 candidates are measured (two sessions of a small graph of its
        // own, quantizer::fp16_quantize) is not the model's.
        let check = "model=float16 quantize check";
        let checks = log.lines().filter(|l| l.contains("int8kit::sessions") && l.contains(check)).count();
        assert!(checks <= 2, "smooth {smooth:?}: {checks} check sessions:\n{log}");
        let graphs: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("int8kit::sessions") && !l.contains(check))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("graph=")))
            .collect();
        // Calibration (smoothed, the ViT's default: the maxima pass and the smoothed model's pass), the FLOPs
        // probe, the float model on the held-back samples, and one session per distinct candidate of the auto
        // search.
        let base = if smooth.is_none() { 3 } else { 2 };
        let ranges: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("q/ranges.json")).unwrap()).unwrap();
        let trials = ranges["search"]["trials"].as_array().unwrap().len();
        assert!(
            (base + 2..=base + 1 + trials).contains(&graphs.len()),
            "smooth {smooth:?}: {} sessions for {trials} trials:\n{log}",
            graphs.len()
        );
        let mut sessions: std::collections::BTreeMap<&str, usize> = Default::default();
        graphs.iter().for_each(|g| *sessions.entry(*g).or_default() += 1);
        let most = sessions.values().copied().max().unwrap_or(0);
        assert!(most <= 2, "smooth {smooth:?}: a graph got {most} sessions:\n{log}");
        // The calibration's graph (the first session) is never shared.
        assert_eq!(sessions[graphs[0]], 1, "smooth {smooth:?}: the calibration graph got two sessions:\n{log}");
    }
}

/// The auto search ranks every scale method with every attention precision in FP32 float parts and measures
/// FP16 for the two best of them only: on a coarse stage's first look at 16 and then 32 of 64 held-back samples
/// (the finalists then measured on all of them in both float types), and on all of 24 (too few for a coarse
/// stage, so the ranking is the fine FP32 measurement). A candidate far behind its stage's leader stops early,
/// and ranges.json says which and by how much.
#[test]
fn the_search_measures_fp16_for_the_two_best_ranked_candidates_only() {
    let dir = tempfile::tempdir().unwrap();
    // What the search ranks by.
    let sqnr = |t: &serde_json::Value| t["mean_sample_sqnr_db"].as_f64().unwrap_or(f64::NEG_INFINITY);
    let pair = |t: &serde_json::Value| (t["method"].as_str().unwrap().to_string(), t["attention"].to_string());
    for (held, ranking_stage) in [("64", "first"), ("24", "fine")] {
        let out = dir.path().join(format!("q{held}"));
        let extra = ["--quiet", "--hold-out", held];
        let o = common::on_fixtures("quantize", &model("fmnist_vit_opset17.onnx"), &out, &extra);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let ranges = common::read_json(&out.join("ranges.json"));
        let search = &ranges["search"];
        let trials = search["trials"].as_array().unwrap();
        let (ranking, rest) = trials.split_at(8);
        assert!(ranking.iter().all(|t| t["float_type"] == "fp32" && t["stage"] == ranking_stage), "{trials:?}");
        let pairs: std::collections::BTreeSet<_> = ranking.iter().map(pair).collect();
        assert_eq!(pairs.len(), 8, "4 methods x 2 attention precisions: {trials:?}");
        let stopped: Vec<&serde_json::Value> =
            search["not_continued"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
        for n in &stopped {
            let se = n["gap_standard_error_db"].as_f64().unwrap();
            assert!(n["behind_db"].as_f64().unwrap() > 0.5 + 2.0 * se, "{n}");
        }
        let fp16: Vec<_> = rest.iter().filter(|t| t["float_type"] == "fp16").collect();
        assert!((1..=2).contains(&fp16.len()), "held back {held}: {trials:?}");
        // The last ranking measurement of each pair (the first look, or the coarse stage after it).
        let last_ranked = |p: &(String, String)| {
            let ranking_row =
                |t: &&serde_json::Value| t["float_type"] == "fp32" && (t["stage"] != "fine" || held == "24");
            trials.iter().rev().filter(ranking_row).find(|t| pair(t) == *p).map(sqnr).unwrap()
        };
        let finalists: Vec<_> = fp16.iter().map(|t| pair(t)).collect();
        let worst_finalist = finalists.iter().map(last_ranked).fold(f64::INFINITY, f64::min);
        for p in pairs.iter().filter(|p| !finalists.contains(p)) {
            let stopped_early = stopped.iter().any(|n| pair(&trials[n["trial"].as_u64().unwrap() as usize]) == *p);
            assert!(stopped_early || last_ranked(p) <= worst_finalist, "{p:?} ranked above a finalist: {trials:?}");
        }
    }
}

/// With two threads the search measures two candidates at once (a session of one thread each) and records them
/// in the order it asked for them; with one it measures them in turn. Both write the same bytes, and the
/// trials appear in the same order whichever finished first.
#[test]
fn the_search_writes_the_same_artifacts_one_candidate_or_two_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let run = |threads: &str, batch: &str| {
        let out = dir.path().join(format!("t{threads}-b{batch}"));
        let extra = ["--quiet", "--threads", threads, "--batch-size", batch];
        let o = common::on_fixtures("quantize", &model("fmnist_vit_opset17.onnx"), &out, &extra);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        out
    };
    let one = run("1", "16");
    let ranges = common::read_json(&one.join("ranges.json"));
    assert!(ranges["search"]["trials"].as_array().unwrap().len() >= 8, "{ranges}");
    for other in [run("2", "16"), run("2", "7")] {
        for file in ["model.qdq.onnx", "ranges.json"] {
            let (a, b) = (std::fs::read(one.join(file)).unwrap(), std::fs::read(other.join(file)).unwrap());
            assert!(a == b, "{file} differs between {} and {}", one.display(), other.display());
        }
    }
}

/// What the search and the self-check measure does not depend on `--threads`: ONNX Runtime's CPU GEMMs round
/// differently on another intra-op thread count (here on the held-back samples' last batch, of one sample: 25
/// = 8 + 8 + 8 + 1), so every measuring session runs on one thread and more threads run more sessions; on 16
/// threads more candidates are measured at once too (four, each on its four batches).
#[test]
fn the_search_measures_the_same_on_one_four_or_sixteen_threads() {
    let dir = tempfile::tempdir().unwrap();
    let run = |threads: &str| {
        let out = dir.path().join(format!("t{threads}"));
        let extra = ["--quiet", "--threads", threads, "--hold-out", "25", "--limit", "300"];
        let o = common::on_fixtures("quantize", &model("fmnist_vit_opset17.onnx"), &out, &extra);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        out
    };
    let one = run("1");
    for threads in ["4", "16"] {
        let many = run(threads);
        for file in ["model.qdq.onnx", "ranges.json"] {
            let (a, b) = (std::fs::read(one.join(file)).unwrap(), std::fs::read(many.join(file)).unwrap());
            assert!(a == b, "{file} differs between one thread and {threads}");
        }
    }
}

#[test]
fn quantize_measures_on_check_samples_as_analyze_does_and_holds_nothing_back() {
    let (dir, m, images, recipe) = resnet_run();
    let cwd = dir.path();
    let check = test_support::val_dir().join("0-t-shirt");
    let common: &[&std::ffi::OsStr] =
        args!["--model", &m, "--images", &images, "--recipe", &recipe, "--limit", "100", "--quiet"];
    let o = int8kit(
        cwd,
        &[args!["quantize"] as &[_], common, args!["--check", &check, "--weight-rounding", "nearest", "--out", "q"]]
            .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The same as statistics of every calibration sample, analyzed against the same check samples.
    let o = int8kit(cwd, &[args!["calibrate"] as &[_], common, args!["--hold-out", "0", "--out", "c.hist"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o =
        int8kit(cwd, args!["analyze", "--model", &m, "--hist", "c.hist", "--check", &check, "--out", "a", "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let read = |p: &str| std::fs::read(cwd.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    for f in ["model.qdq.onnx", "ranges.json"] {
        assert!(read(&format!("q/{f}")) == read(&format!("a/{f}")), "{f} differs between quantize and analyze");
    }
    let ranges = common::read_json(&cwd.join("q/ranges.json"));
    let files = std::fs::read_dir(&check).unwrap().count();
    assert_eq!(ranges["self_check"]["samples"], format!("{files} samples given to measure on (0-t-shirt, --check)"));
    assert_eq!(ranges["chosen_by"], "measurement");
    // Held-back samples nothing would measure are refused, before any output.
    let o = int8kit(
        cwd,
        &[args!["quantize"] as &[_], common, args!["--check", &check, "--hold-out", "8", "--out", "h"]].concat(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--hold-out would hold back calibration samples that nothing measures"), "{}", text(&o));
    assert!(!cwd.join("h").exists(), "an output folder was made");
}

#[test]
fn check_samples_measure_what_a_hist_without_its_held_back_samples_builds() {
    let (dir, m, images, recipe) = resnet_run();
    let cwd = dir.path();
    // The check samples: images the statistics did not see (a class folder of the validation set).
    let check = test_support::val_dir().join("0-t-shirt");
    let o = int8kit(
        cwd,
        args![
            "calibrate",
            "--model",
            &m,
            "--images",
            &images,
            "--recipe",
            &recipe,
            "--limit",
            "100",
            "--out",
            "c.hist"
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let analyze = |out: &str, extra: &[&std::ffi::OsStr]| {
        let base = args!["analyze", "--model", &m, "--hist", "c.hist", "--out", out, "--quiet"];
        let o = int8kit(cwd, &[base as &[_], extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        common::read_json(&cwd.join(out).join("ranges.json"))
    };
    let without = analyze("a", args![]);
    assert_eq!(
        (without["chosen_by"].as_str(), without["self_check"]["status"].as_str()),
        (Some("defaults"), Some("skipped"))
    );
    let with = analyze("b", args!["--check", &check]);
    assert_eq!(with["chosen_by"], "measurement");
    assert_eq!(with["self_check"]["status"], "measured");
    let samples = with["self_check"]["samples"].as_str().unwrap();
    assert!(samples.ends_with("given to measure on (0-t-shirt, --check)"), "the folder's name only: {samples}");
    // validate takes it with --hist only (--calib holds its own samples back).
    let val = test_support::val_dir();
    let o = int8kit(
        cwd,
        args![
            "validate", "--model", &m, "--calib", &images, "--check", &check, "--val", &val, "--recipe", &recipe,
            "--out", "v"
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--check is for statistics given with --hist"), "{}", text(&o));
    let o = int8kit(
        cwd,
        args![
            "validate",
            "--model",
            &m,
            "--hist",
            "c.hist",
            "--check",
            &check,
            "--val",
            &val,
            "--recipe",
            &recipe,
            "--limit-val",
            "200",
            "--min-cosine",
            "0.9",
            "--out",
            "v",
            "--quiet"
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report = common::read_json(&cwd.join("v/report.json"));
    assert_eq!(report["chosen_by"], "measurement");
    assert_eq!(report["self_check"]["status"], "measured");
}

/// `--attention` on a model without attention MatMuls (the fixture ResNet) has nothing to act on: it is said,
/// not silently accepted; on the fixture ViT it acts, and nothing is said.
#[test]
fn an_attention_flag_with_nothing_to_act_on_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let warning = "--attention int8 changes nothing here: the model has no attention MatMul";
    for (name, said) in [("fmnist_resnet_opset13.onnx", true), ("fmnist_vit_opset17.onnx", false)] {
        let out = dir.path().join(name);
        let o = common::on_fixtures("quantize", &model(name), &out, &["--limit", "60", "--attention", "int8"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(text(&o).contains(warning), said, "{name}: {}", text(&o));
    }
}

/// A model with a subgraph (an If) below opset 19 cannot take FP16 Q/DQ scales: the auto float type keeps FP32
/// and says why (before, the default quantize failed on it); an explicit `--float-type fp16` is refused.
#[test]
fn the_auto_float_type_keeps_fp32_where_fp16_qdq_cannot_be_built() {
    let dir = tempfile::tempdir().unwrap();
    let with_if = common::resnet_with_if(dir.path());
    let out = dir.path().join("auto");
    let o = common::on_fixtures("quantize", &with_if, &out, &["--limit", "60"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("float parts stay FP32 (FP16 not tried): node 'pass_through' (If)"), "{}", text(&o));
    let ranges: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ranges.json")).unwrap()).unwrap();
    assert_eq!(ranges["float_type"], "fp32");
    assert!(ranges["self_check"]["fidelity"]["cosine_mean"].as_f64().unwrap() > 0.99, "{ranges}");
    let o =
        common::on_fixtures("quantize", &with_if, &dir.path().join("fp16"), &["--limit", "60", "--float-type", "fp16"]);
    common::refused(&o, "its subgraphs are not moved to opset 19");
}
