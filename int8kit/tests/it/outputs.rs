//! Outputs never clobber and never leave a mixture: a file output refuses devices, FIFOs, folders and its own
//! inputs; an artifact folder refuses foreign files and is replaced whole, and a validate run that fails
//! leaves no verdict behind.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::{int8kit, mkfifo, on_fixtures, refused, resnet, text};

fn calibrate(model_path: &Path, out: &Path) -> Output {
    on_fixtures("calibrate", model_path, out, &["--limit", "10", "--quiet"])
}

#[test]
fn a_file_output_is_never_a_device_a_fifo_a_folder_or_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let resnet = resnet();
    let o = calibrate(&resnet, Path::new("/dev/null"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("character device"), "{}", text(&o));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let o = calibrate(&resnet, &fifo);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("a FIFO"), "{}", text(&o));

    let o = calibrate(&resnet, dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    let copy = dir.path().join("m.onnx");
    std::fs::copy(&resnet, &copy).unwrap();
    let o = calibrate(&copy, &copy);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is the input --model"), "{}", text(&o));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&resnet).unwrap());
}

#[test]
fn an_artifact_folder_with_foreign_files_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let resnet = resnet();
    let hist = common::calibrated(dir.path());
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep me").unwrap();
    let analyze = |out: &Path| {
        int8kit("analyze")
            .args(["--quiet", "--model"])
            .arg(&resnet)
            .arg("--hist")
            .arg(&hist)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let o = analyze(&mine);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("int8kit did not write"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
    // Its own folder is replaced whole, with a manifest.
    let out = dir.path().join("int8");
    assert_eq!(analyze(&out).status.code(), Some(0));
    assert_eq!(analyze(&out).status.code(), Some(0));
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["int8kit.manifest.json", "model.qdq.onnx", "ranges.csv", "ranges.json"]);
}

#[test]
fn a_failed_validate_leaves_no_stale_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gate");
    let validate = |model_path: &Path| {
        on_fixtures(
            "validate",
            model_path,
            &out,
            &["--limit-calib", "20", "--limit-val", "20", "--max-top1-drop", "50", "--quiet"],
        )
    };
    let o = validate(&resnet());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(out.join("report.json").is_file());
    // The same model with NaN weights fails after calibration and analysis have run.
    let broken = common::nan_resnet(dir.path(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let o = validate(&broken);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!out.join("report.json").exists() && !out.join("junit.xml").exists(), "a stale verdict was left");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "staging folders were left: {leftovers:?}");
}

/// Every entry under `dir` ([`test_support::tree`]) but what `skip` names (the run's own outputs and staging
/// folders).
fn snapshot(dir: &Path, skip: &dyn Fn(&str) -> bool) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    test_support::tree(dir).into_iter().filter(|(rel, _)| !skip(rel)).collect()
}

/// A small copy of the fixture images (10 calibration images; 2 classes of 5 validation images) and the
/// ResNet with its statistics, all inside `t`, so that every input is also a victim whose bytes are checked.
fn workspace(t: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let copy_some = |from: &Path, to: &Path, n: usize| {
        std::fs::create_dir_all(to).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(from).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names.into_iter().filter(|p| p.is_file()).take(n) {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    };
    let calib = t.join("calib");
    copy_some(&test_support::calib_dir(), &calib, 10);
    let val = t.join("val");
    for class in ["0-t-shirt", "1-trouser"] {
        copy_some(&test_support::val_dir().join(class), &val.join(class), 5);
    }
    let model = t.join("m.onnx");
    std::fs::copy(resnet(), &model).unwrap();
    let hist = t.join("m.hist");
    let o = on_fixtures("calibrate", &model, &hist, &["--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    (model, hist, calib, val)
}

/// The command lines of every command that writes, each writing `out` (a folder, or a file for calibrate and
/// the .hist merge).
fn writers(t: &Path, out: &Path) -> Vec<(&'static str, Vec<std::ffi::OsString>)> {
    let (model, hist, calib, val) = (t.join("m.onnx"), t.join("m.hist"), t.join("calib"), t.join("val"));
    let recipe = test_support::recipe_path();
    let os = |parts: &[&dyn AsRef<std::ffi::OsStr>]| parts.iter().map(|p| p.as_ref().to_os_string()).collect();
    let common: Vec<std::ffi::OsString> = os(&[&"--quiet", &"--out", &out]);
    let with = |mut v: Vec<std::ffi::OsString>| {
        v.extend(common.clone());
        v
    };
    let sensitivity: Vec<std::ffi::OsString> = os(&[
        &"sensitivity",
        &"--model",
        &model,
        &"--hist",
        &hist,
        &"--val",
        &val,
        &"--recipe",
        &recipe,
        &"--limit",
        &"4",
    ]);
    vec![
        ("calibrate", with(os(&[&"calibrate", &"--model", &model, &"--images", &calib, &"--recipe", &recipe]))),
        ("quantize", with(os(&[&"quantize", &"--model", &model, &"--images", &calib, &"--recipe", &recipe]))),
        ("analyze", with(os(&[&"analyze", &"--model", &model, &"--hist", &hist]))),
        ("sensitivity", with(sensitivity.clone())),
        (
            "autoprecision",
            with([&["autoprecision".into()], &sensitivity[1..], &os(&[&"--min-cosine", &"0.5"])].concat()),
        ),
        (
            "validate",
            with(os(&[
                &"validate",
                &"--model",
                &model,
                &"--calib",
                &calib,
                &"--val",
                &val,
                &"--recipe",
                &recipe,
                &"--max-top1-drop",
                &"50",
            ])),
        ),
    ]
}

/// No command deletes, moves or overwrites a file it did not write: victims in and around OUTDIR (the
/// inputs, a file beside it, and a folder that only claims to be int8kit's) are byte for byte the same after
/// a refusal, a success and a kill.
#[test]
fn no_command_touches_a_file_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    workspace(t);
    std::fs::write(t.join("victim.txt"), "beside OUTDIR").unwrap();
    let out = t.join("out");
    let own =
        |rel: &str| rel == "out" || rel.starts_with("out/") || rel.starts_with(".out.") || rel.starts_with(".tmp");
    for (name, line) in writers(t, &out) {
        let run = || int8kit(line[0].to_str().unwrap()).args(&line[1..]).output().unwrap();
        // Refusal: OUTDIR holds a user's project and a manifest that proves nothing (empty, then another format).
        for manifest in ["", "{\"format\":\"other\"}"] {
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::remove_file(&out);
            std::fs::create_dir_all(out.join("src")).unwrap();
            std::fs::write(out.join("src/main.rs"), "fn main() {}").unwrap();
            std::fs::write(out.join("int8kit.manifest.json"), manifest).unwrap();
            let before = snapshot(t, &|_| false);
            let o = run();
            assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
            assert_eq!(snapshot(t, &|_| false), before, "{name}: a refusal changed something");
        }
        std::fs::remove_dir_all(&out).unwrap();
        // Success, twice (the second replaces the first's set), and kills at several moments.
        let before = snapshot(t, &own);
        for _ in 0..2 {
            let o = run();
            assert!(matches!(o.status.code(), Some(0 | 1)), "{name}: {}", text(&o));
            assert_eq!(snapshot(t, &own), before, "{name}: a victim changed on success");
        }
        for delay_ms in [50, 400, 1200] {
            let mut child = int8kit(line[0].to_str().unwrap()).args(&line[1..]).spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(snapshot(t, &own), before, "{name}: a victim changed on a kill after {delay_ms} ms");
            if out.is_dir() {
                safe_io::outputs::inspect(&out).unwrap_or_else(|e| panic!("{name}: killed after {delay_ms} ms: {e}"));
            }
        }
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_file(&out);
    }
}

/// An output is never an input, never holds one and never sits inside an input folder; each is refused
/// before any work, the input untouched.
#[test]
fn outputs_never_overwrite_hold_or_sit_inside_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let (model, hist, calib, val) = workspace(t);
    let image = std::fs::read_dir(val.join("0-t-shirt")).unwrap().next().unwrap().unwrap().path();
    let calib_image = std::fs::read_dir(&calib).unwrap().next().unwrap().unwrap().path();
    let precision = t.join("p.toml");
    std::fs::write(&precision, "[deny]\nnodes = []\n").unwrap();
    let recipe = t.join("r.toml");
    std::fs::copy(test_support::recipe_path(), &recipe).unwrap();
    let validate = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut c = int8kit("validate");
        c.arg("--model").arg(&model).arg("--calib").arg(&calib).arg("--val").arg(&val).arg("--recipe").arg(&recipe);
        c.args(["--max-top1-drop", "50", "--quiet"]);
        for e in extra {
            c.arg(e);
        }
        c.output().unwrap()
    };
    let before = snapshot(t, &|_| false);
    let shard: [&dyn AsRef<std::ffi::OsStr>; 4] = [&"--out", &t.join("o"), &"--shard", &"1/2"];
    for victim in [&model, &image, &precision, &recipe] {
        let mut extra = shard.to_vec();
        extra.extend([&"--partial-out" as &dyn AsRef<std::ffi::OsStr>, victim]);
        extra.extend([&"--precision" as &dyn AsRef<std::ffi::OsStr>, &precision]);
        let o = validate(&extra);
        assert_eq!(o.status.code(), Some(2), "--partial-out {}: {}", victim.display(), text(&o));
    }
    // OUTDIR inside --val would be read as a class next time; inside --calib as images.
    for inside in [val.join("report"), calib.join("report")] {
        let o = validate(&[&"--out", &inside]);
        refused(&o, "lies inside the input folder");
        assert!(!inside.exists());
    }
    // calibrate --out / quantize --save-hist over a calibration image.
    let calibrating = |command: &str, out: &Path, extra: &[&Path]| {
        let mut c = int8kit(command);
        c.arg("--model").arg(&model).arg("--images").arg(&calib).arg("--recipe").arg(&recipe).arg("--out").arg(out);
        c.arg("--quiet").args(extra).output().unwrap()
    };
    refused(&calibrating("calibrate", &calib_image, &[]), "lies inside the input folder --images");
    let save_hist = [Path::new("--save-hist"), &calib_image];
    refused(&calibrating("quantize", &t.join("q"), &save_hist), "lies inside the input folder --images");
    // An input inside OUTDIR would be deleted by the swap.
    let o = int8kit("analyze")
        .arg("--model")
        .arg(&model)
        .arg("--hist")
        .arg(&hist)
        .arg("--precision")
        .arg(&precision)
        .arg("--out")
        .arg(t)
        .output()
        .unwrap();
    refused(&o, "holds the input");
    assert_eq!(snapshot(t, &|_| false), before, "an input changed");
    // A leftover folder inside --val with no images is refused, not read as a class with none.
    std::fs::create_dir(val.join("2-report")).unwrap();
    std::fs::write(val.join("2-report/int8kit.manifest.json"), "{}").unwrap();
    let o = validate(&[&"--out", &t.join("o")]);
    refused(&o, "is an int8kit output folder, not a class");
}
