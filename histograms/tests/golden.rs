//! The `.hist` format is versioned (FORMATS.md): this golden file pins its bytes, so that a renamed Rust
//! field or a changed serializer cannot silently change the format. A deliberate change bumps
//! `HIST_VERSION`, updates FORMATS.md and re-blesses the file (`INT8KIT_BLESS=1`).

use histograms::{HistFile, HistogramInfo, ImagesInfo, ModelInfo, Selection, TensorRecord, TensorStats};

fn stats(values: &[f32]) -> TensorStats {
    let mut s = TensorStats::default();
    s.add(values);
    s
}

fn sample() -> HistFile {
    HistFile {
        format: histograms::HIST_FORMAT.into(),
        version: histograms::HIST_VERSION,
        producer: "int8kit calibrate 0.1.0".into(),
        model: ModelInfo { file: "m.onnx".into(), sha256: "ab".repeat(32) },
        recipe: datasets::Recipe::preset(datasets::Preset::Imagenet),
        images: ImagesInfo {
            folder: "calib".into(),
            count: 2,
            skipped: 1,
            limit: Some(2),
            seed: 7,
            list_sha256: "cd".repeat(32),
        },
        onnxruntime: "1.32.0".into(),
        histogram: HistogramInfo { bins: histograms::BINS, values: "abs".into() },
        collected: Selection::Quantizable,
        tensors: vec![
            TensorRecord { name: "input".into(), producer: None, op: None, stats: stats(&[0.0, -1.5, 2.25, 0.5]) },
            TensorRecord {
                name: "/conv/Conv_output_0".into(),
                producer: Some("/conv/Conv".into()),
                op: Some("Conv".into()),
                stats: stats(&[f32::NAN, f32::INFINITY, -3.0, 1e-3, -0.0]),
            },
        ],
    }
}

#[test]
fn hist_bytes_match_the_golden_file() {
    let bytes = sample().to_json().unwrap();
    test_support::assert_golden(&test_support::golden(env!("CARGO_MANIFEST_DIR"), "sample.hist"), &bytes);
}

#[test]
fn the_golden_file_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.hist");
    sample().write(&path).unwrap();
    assert_eq!(HistFile::read(&path).unwrap(), sample());
}
