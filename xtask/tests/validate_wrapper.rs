//! `cargo xtask validate` is the release gate as project automation: the same flags, outcome and exit
//! status as `int8kit validate`, because it parses and runs the very same command.

use std::process::Command;

#[test]
fn xtask_validate_gates_like_int8kit_validate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gate");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("validate")
        .arg("--model")
        .arg(test_support::model("fmnist_resnet_opset13.onnx"))
        .arg("--calib")
        .arg(test_support::calib_dir())
        .arg("--val")
        .arg(test_support::val_dir())
        .arg("--recipe")
        .arg(test_support::recipe_path())
        .args(["--limit-calib", "100", "--limit-val", "200", "--max-top1-drop", "-1", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL max-top1-drop"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(report["comparison"]["images"], 200);
}
