//! Validation in shards: `validate --shard I/N --partial-out P.json` for every I, joined by `int8kit merge`,
//! gives the report one process writes (every number; only the measured speeds differ) for N = 1, 3, 7; parts
//! of another split, another image list, a part given twice and a missing part are refused.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{int8kit, refused, resnet, text};

/// `int8kit validate` of `model` with the fixture recipe on the fixture validation folder, its statistics
/// from `stats` (`("--calib", DIR)` or `("--hist", FILE)`), held to a Top-1 and a cosine gate; not yet run.
fn validate_cmd(model: &Path, stats: (&str, &Path)) -> Command {
    let mut cmd = int8kit("validate");
    cmd.arg("--model").arg(model).arg("--recipe").arg(test_support::recipe_path());
    cmd.arg(stats.0).arg(stats.1).arg("--val").arg(test_support::val_dir());
    cmd.args(["--max-top1-drop", "5", "--min-cosine", "0.9", "--quiet"]);
    cmd
}

/// `int8kit validate` on the ResNet, 40 calibration images and the fixture validation folder.
fn validate(out: &Path, extra: &[&str]) -> std::process::Output {
    validate_cmd(&resnet(), ("--calib", &test_support::calib_dir()))
        .args(["--limit-calib", "40", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// The shard's part file, after running it.
fn part(dir: &Path, index: usize, count: usize, limit_val: &str) -> PathBuf {
    let p = dir.join(format!("part-{count}-{index}-{limit_val}.json"));
    let shard = format!("{index}/{count}");
    let o = validate(
        &dir.join(format!("artifacts-{count}-{index}")),
        &["--limit-val", limit_val, "--shard", &shard, "--partial-out", p.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    p
}

fn merge(parts: &[PathBuf], out: &Path) -> std::process::Output {
    int8kit("merge").args(parts).arg("--out").arg(out).arg("--quiet").output().unwrap()
}

/// report.json without what each run measures for itself (its speeds), and without the shards' list.
fn numbers(dir: &Path) -> serde_json::Value {
    let mut r: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let o = r.as_object_mut().unwrap();
    o.remove("shards");
    o.insert("calibration_seconds".into(), 0.into());
    for m in ["fp32", "int8"] {
        r["comparison"][m]["images_per_s"] = 0.into();
    }
    r["fp16"]["metrics"]["images_per_s"] = 0.into();
    r
}

#[test]
fn merged_validation_parts_equal_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let o = validate(&whole, &["--limit-val", "70"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let reference = numbers(&whole);
    assert_eq!(reference["comparison"]["images"], 70);
    for n in [1usize, 3, 7] {
        // In reverse: the merge orders the parts itself.
        let parts: Vec<PathBuf> = (1..=n).rev().map(|i| part(dir.path(), i, n, "70")).collect();
        let merged = dir.path().join(format!("merged-{n}"));
        let o = merge(&parts, &merged);
        assert_eq!(o.status.code(), Some(0), "{n} shards: {}", text(&o));
        assert_eq!(numbers(&merged), reference, "{n} shards");
        for file in ["per_class.csv", "junit.xml"] {
            assert_eq!(
                std::fs::read(merged.join(file)).unwrap(),
                std::fs::read(whole.join(file)).unwrap(),
                "{file}, {n} shards"
            );
        }
        let shards = serde_json::from_slice::<serde_json::Value>(&std::fs::read(merged.join("report.json")).unwrap())
            .unwrap()["shards"]
            .clone();
        assert_eq!(shards.as_array().unwrap().len(), n, "each shard's speeds kept: {shards}");
    }

    // Statistics made beforehand (what a cluster's calibration shards merge into) serve validate and its
    // shards through --hist: the same numbers as calibrating there. GPTQ's rounding reads the calibration
    // folder, which --hist does not hold: the calibrating run compared with rounds to nearest.
    let nearest = dir.path().join("whole-nearest");
    let o = validate(&nearest, &["--limit-val", "70", "--weight-rounding", "nearest"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let reference = numbers(&nearest);
    let hist = dir.path().join("calib.hist");
    let o = int8kit("calibrate")
        .arg("--model")
        .arg(resnet())
        .arg("--recipe")
        .arg(test_support::recipe_path())
        .arg("--images")
        .arg(test_support::calib_dir())
        .args(["--limit", "40", "--quiet", "--out"])
        .arg(&hist)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let with_hist = |out: &Path, extra: &[&str]| {
        validate_cmd(&resnet(), ("--hist", &hist))
            .args(["--limit-val", "70", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    // The statistics hold no held-back samples to measure on: the choices the calibrating run made by
    // measurement are given as flags, and only how they were chosen and the self-check differ.
    let from_hist = dir.path().join("from-hist");
    let (method, float_type) = (reference["method"].as_str().unwrap(), reference["float_type"].as_str().unwrap());
    let o = with_hist(&from_hist, &["--method", method, "--float-type", float_type]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let without_choice = |mut r: serde_json::Value| {
        let o = r.as_object_mut().unwrap();
        o.remove("chosen_by");
        o.remove("self_check");
        r
    };
    assert_eq!(reference["chosen_by"], "measurement");
    assert_eq!(without_choice(numbers(&from_hist)), without_choice(reference.clone()));
    refused(&with_hist(&dir.path().join("h1"), &["--smooth", "0.5"]), "--smooth applies when validate calibrates");
    refused(&with_hist(&dir.path().join("h1"), &["--equalize", "off"]), "--equalize applies when validate calibrates");
    let o = int8kit("validate")
        .arg("--model")
        .arg(resnet())
        .args(["--preset", "imagenet", "--hist"])
        .arg(&hist)
        .arg("--val")
        .arg(test_support::val_dir())
        .arg("--out")
        .arg(dir.path().join("h2"))
        .output()
        .unwrap();
    refused(&o, "another preprocessing");

    // Refusals: a missing part, a part given twice, a part of another split, of another image list.
    let three: Vec<PathBuf> = (1..=3).map(|i| dir.path().join(format!("part-3-{i}-70.json"))).collect();
    refused(&merge(&three[..2], &dir.path().join("m1")), "shard 3/3 is missing");
    refused(&merge(&[three[0].clone(), three[0].clone(), three[1].clone()], &dir.path().join("m2")), "given twice");
    let seven = dir.path().join("part-7-3-70.json");
    refused(&merge(&[three[0].clone(), three[1].clone(), seven], &dir.path().join("m3")), "does not belong");
    let other_list = part(dir.path(), 3, 3, "71");
    refused(
        &merge(&[three[0].clone(), three[1].clone(), other_list], &dir.path().join("m4")),
        "`validation_list_sha256` differs",
    );
    assert!(!dir.path().join("m4").exists(), "a refused merge writes nothing");
    // A part of another model.
    let vit = dir.path().join("vit-3-3.json");
    let o = validate_cmd(&test_support::model("fmnist_vit_opset17.onnx"), ("--calib", &test_support::calib_dir()))
        .args(["--limit-calib", "40", "--limit-val", "70", "--shard", "3/3", "--partial-out", vit.to_str().unwrap()])
        .arg("--out")
        .arg(dir.path().join("vit-artifacts"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    refused(&merge(&[three[0].clone(), three[1].clone(), vit], &dir.path().join("m5")), "`model_sha256` differs");

    // Forged parts: each edit gives counts or shares that no run produces, and is refused, naming the file.
    let forged = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&three[0]).unwrap()).unwrap();
        edit(&mut v);
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        merge(&[path, three[1].clone(), three[2].clone()], &dir.path().join("forged"))
    };
    let add = |v: &mut serde_json::Value, by: u64| *v = (v.as_u64().unwrap() + by).into();
    let o = forged("top1.json", &|v| add(&mut v["parts"]["candidates"][0]["tally"]["top1"], 2));
    refused(&o, "impossible validation part");
    refused(&o, "top1.json");
    let o = forged("nan.json", &|v| {
        v["parts"]["candidates"][0]["fidelity"]["images"][0]["noise"] = f64::NAN.to_bits().into()
    });
    refused(&o, "sums of squares are finite");
    let o =
        forged("cos.json", &|v| v["parts"]["candidates"][0]["fidelity"]["images"][0]["cosine"] = 2f64.to_bits().into());
    refused(&o, "cosine is from -1 to 1");
    refused(&forged("gate.json", &|v| v["gates"]["max_top1_drop"] = (-1e308).into()), "--max-top1-drop");
    refused(&forged("classes.json", &|v| v["parts"]["classes"] = 1_000_000_000_000u64.into()), "classes");
    refused(&forged("count.json", &|v| v["shard"]["count"] = 1_000_000_000_000_000u64.into()), "is missing");
    refused(&forged("short.json", &|v| v["parts"]["images"] = 1.into()), "impossible validation part");
    let copy = dir.path().join("copy.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&three[0]).unwrap()).unwrap();
    v["shard"]["index"] = 2.into();
    std::fs::write(&copy, serde_json::to_vec(&v).unwrap()).unwrap();
    refused(&merge(&[three[0].clone(), copy, three[2].clone()], &dir.path().join("copied")), "copied");
    assert!(!dir.path().join("forged").exists() && !dir.path().join("copied").exists());
}

#[test]
fn a_shard_needs_its_part_file_outside_the_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let inside = out.join("p.json");
    let o = validate(&out, &["--limit-val", "10", "--shard", "1/2", "--partial-out", inside.to_str().unwrap()]);
    refused(&o, "overlaps the output --partial-out");
    let o = validate(&out, &["--limit-val", "10", "--shard", "1/2"]);
    assert_eq!(o.status.code(), Some(2), "--shard without --partial-out: {}", text(&o));
    let o = validate(&out, &["--limit-val", "10", "--shard", "3/11", "--partial-out", "p.json"]);
    refused(&o, "N may not exceed the 10 samples");
}
