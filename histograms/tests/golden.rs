//! The `.hist` format is versioned (FORMATS.md): this golden file pins its bytes, so that a renamed Rust
//! field or a changed serializer cannot silently change the format. A deliberate change bumps
//! `HIST_VERSION`, updates FORMATS.md and re-blesses the file (`INT8KIT_BLESS=1`).

use histograms::{HistFile, HistogramInfo, ImagesInfo, ModelInfo, Selection, TensorRecord, TensorStats};

fn stats(values: &[f32]) -> TensorStats {
    let mut s = TensorStats::default();
    s.add(values);
    s
}

/// The image and attention probabilities keep their range only (`max_only`).
fn range_only(values: &[f32]) -> TensorStats {
    let mut s = TensorStats::range_only();
    s.add(values);
    s
}

fn sample() -> HistFile {
    HistFile {
        format: histograms::HIST_FORMAT.into(),
        version: histograms::HIST_VERSION,
        content_sha256: None,
        producer: "int8kit calibrate 0.1.0".into(),
        model: ModelInfo { file: "m.onnx".into(), sha256: "ab".repeat(32) },
        recipe: Some(datasets::Recipe::preset(datasets::Preset::Imagenet)),
        arrays: None,
        images: ImagesInfo {
            folder: "calib".into(),
            count: 2,
            skipped: 1,
            limit: Some(2),
            seed: 7,
            list_sha256: None,
            samples_sha256: Some("cd".repeat(32)),
            held_out: Some(histograms::HeldOut { count: 1, seed: 7, list_sha256: "12".repeat(32) }),
            sizes: Vec::new(),
            sizes_dealt: false,
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
            TensorRecord {
                name: "/attn/Softmax_output_0".into(),
                producer: Some("/attn/Softmax".into()),
                op: Some("Softmax".into()),
                stats: range_only(&[0.25, 0.75, 0.0, 1.0]),
            },
        ],
        shard: Some(histograms::ShardInfo {
            index: 2,
            count: 3,
            list_sha256: "ef".repeat(32),
            whole_list_sha256: Some("34".repeat(32)),
        }),
        smoothing: Some(histograms::SmoothingRecord {
            alpha: 0.5,
            samples: Some(2),
            channel_max: [(
                "/ln/LayerNormalization_output_0".to_string(),
                histograms::ChannelMax { max: vec![1e-3, 3.0] },
            )]
            .into(),
        }),
        equalization: Some(histograms::EqualizationRecord {
            samples: 2,
            channel_max: [("/dw/Relu_output_0".to_string(), histograms::ChannelMax { max: vec![0.5, 4.0, 0.0] })]
                .into(),
        }),
    }
}

#[test]
fn hist_bytes_match_the_golden_file() {
    let bytes = sample().to_json().unwrap();
    test_support::assert_golden(&test_support::golden(env!("CARGO_MANIFEST_DIR"), "sample.hist"), &bytes);
}

/// A calibration fed `.npz` samples: no recipe, the arrays instead.
fn sample_npz() -> HistFile {
    HistFile {
        recipe: None,
        arrays: Some(vec![
            histograms::ArraySpec { name: "attention_mask".into(), dtype: "int64".into(), shape: vec![1, 16] },
            histograms::ArraySpec { name: "input_ids".into(), dtype: "int64".into(), shape: vec![1, 16] },
        ]),
        smoothing: None,
        shard: None,
        ..sample()
    }
}

#[test]
fn npz_hist_bytes_match_the_golden_file() {
    let bytes = sample_npz().to_json().unwrap();
    test_support::assert_golden(&test_support::golden(env!("CARGO_MANIFEST_DIR"), "sample_npz.hist"), &bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.hist");
    sample_npz().write(&path).unwrap();
    assert_eq!(HistFile { content_sha256: None, ..HistFile::read(&path).unwrap() }, sample_npz());
}

/// A calibration over a recipe of several sizes (version 7): the recipe's `sizes` and the images per size.
fn sample_sizes() -> HistFile {
    let base = sample();
    let recipe = base.recipe.as_ref().unwrap().with_sizes(&[[224, 224], [336, 336], [448, 448]], "t").unwrap();
    HistFile {
        recipe: Some(recipe),
        images: ImagesInfo {
            sizes: vec![
                histograms::SizeImages { size: [224, 224], count: 1 },
                histograms::SizeImages { size: [336, 336], count: 0 },
                histograms::SizeImages { size: [448, 448], count: 1 },
            ],
            sizes_dealt: true,
            ..base.images.clone()
        },
        ..base
    }
}

#[test]
fn sizes_hist_bytes_match_the_golden_file() {
    let bytes = sample_sizes().to_json().unwrap();
    test_support::assert_golden(&test_support::golden(env!("CARGO_MANIFEST_DIR"), "sample_sizes.hist"), &bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.hist");
    sample_sizes().write(&path).unwrap();
    assert_eq!(HistFile { content_sha256: None, ..HistFile::read(&path).unwrap() }, sample_sizes());
}

#[test]
fn a_version_7_file_still_reads_with_its_path_list() {
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sample.v7.hist");
    let h = HistFile::read(&old).unwrap();
    assert_eq!((h.version, h.images.list_sha256, h.images.samples_sha256), (7, Some("cd".repeat(32)), None));
    assert_eq!(h.shard.unwrap().whole_list_sha256, None);
}

#[test]
fn a_version_8_file_needs_the_identity_of_its_samples() {
    let mut h = sample();
    h.images.samples_sha256 = None;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-identity.hist");
    std::fs::write(&path, h.to_json().unwrap()).unwrap();
    let e = HistFile::read(&path).unwrap_err().to_string();
    assert!(e.contains("images.samples_sha256 must be 64 hex digits"), "{e}");
}

#[test]
fn a_version_6_file_still_reads_as_one_size() {
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sample.v6.hist");
    let h = HistFile::read(&old).unwrap();
    assert_eq!((h.version, h.images.sizes.len(), h.recipe.unwrap().all_sizes()), (6, 0, vec![[224, 224]]));
}

#[test]
fn the_golden_file_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.hist");
    sample().write(&path).unwrap();
    let back = HistFile::read(&path).unwrap();
    assert_eq!(back.content_sha256, Some(sample().content_digest().unwrap()));
    assert_eq!(HistFile { content_sha256: None, ..back }, sample());
}

/// `sample()` as written, edited as JSON by `edit`, then read back.
fn read_edited(version: u32, edit: impl Fn(&mut serde_json::Value)) -> Result<HistFile, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.hist");
    let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json().unwrap()).unwrap();
    if version == 1 {
        // A version-1 file has no checksum: only the consistency checks stand between an edit and the scales.
        v.as_object_mut().unwrap().remove("content_sha256");
        v["version"] = 1.into();
    }
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    HistFile::read(&path).map_err(|e| e.to_string())
}

#[test]
fn a_version_2_file_still_reads() {
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sample.v2.hist");
    let h = HistFile::read(&old).unwrap();
    assert_eq!((h.version, h.tensors.len(), h.smoothing.is_none()), (2, 2, true));
}

#[test]
fn edited_statistics_are_refused_by_checksum_or_by_consistency() {
    assert!(read_edited(2, |_| {}).is_ok());
    assert!(read_edited(1, |_| {}).is_ok());
    let conv = |v: &mut serde_json::Value| v["tensors"][1].clone();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: Vec<(&str, Edit, &str)> = vec![
        (
            "all-zero counts",
            Box::new(|v| v["tensors"][1]["hist"]["counts"] = serde_json::json!([])),
            "histogram holds 0",
        ),
        ("count", Box::new(|v| v["tensors"][0]["count"] = 5.into()), "count 5 but the histogram holds 4"),
        ("bins", Box::new(|v| v["histogram"]["bins"] = 2048.into()), "2048 bins"),
        ("values", Box::new(|v| v["histogram"]["values"] = "signed".into()), "'signed'"),
        ("range", Box::new(|v| v["tensors"][0]["hist"]["range_exp"] = 3.into()), "range exponent"),
        ("min > max", Box::new(|v| v["tensors"][0]["min"] = 3.0.into()), "not an interval"),
        ("max", Box::new(|v| v["tensors"][0]["max"] = 1.0.into()), "needs"),
        ("alpha", Box::new(|v| v["smoothing"]["alpha"] = 1.5.into()), "alpha 1.5"),
        (
            "range-only with bins",
            Box::new(|v| v["tensors"][2]["hist"]["counts"] = serde_json::json!([4])),
            "range-only statistics that hold a histogram",
        ),
        ("range-only min > max", Box::new(|v| v["tensors"][2]["min"] = 2.0.into()), "count 4 with min"),
        (
            "channel max negative",
            Box::new(|v| v["smoothing"]["channel_max"]["/ln/LayerNormalization_output_0"] = serde_json::json!([-1.0])),
            "non-negative",
        ),
        (
            "duplicate",
            Box::new(move |v| {
                let t = conv(v);
                v["tensors"].as_array_mut().unwrap().push(t)
            }),
            "appears twice",
        ),
    ];
    for (what, edit, why) in &edits {
        let err = read_edited(1, edit).expect_err(what);
        assert!(err.contains(why) && err.contains("e.hist"), "{what}: {err}");
        let err = read_edited(2, edit).expect_err(what);
        assert!(err.contains("checksum"), "{what}: {err}");
    }
    // Any count moved to another bin: the checksum sees it.
    let err = read_edited(2, |v| v["tensors"][0]["hist"]["counts"][0] = 2.into()).unwrap_err();
    assert!(err.contains("does not match its checksum"), "{err}");
}
