//! Outputs never clobber and never leave a mixture: a file output refuses devices, FIFOs, folders and its own
//! inputs; an artifact folder refuses foreign files and is replaced whole, and a validate run that fails
//! leaves no verdict behind.

mod common;

use std::path::Path;
use std::process::Output;

use common::{int8kit, mkfifo, on_fixtures, resnet, text};

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
    assert!(text(&o).contains("would overwrite the input"), "{}", text(&o));
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
