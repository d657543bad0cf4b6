//! Property tests over the parsers of user files: arbitrary bytes and structured mutations of valid files
//! must give a value or an error, never a panic, an abort or a hang. CI runs a bounded number of cases per
//! parser (`PROPTEST_CASES`, 48 by default here); `cargo xtask fuzz` runs many more.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use test_support::{model, root};

/// Cases per parser unless PROPTEST_CASES says otherwise; every case must finish within the timeout.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48);
    ProptestConfig { cases, timeout: 20_000, failure_persistence: None, ..ProptestConfig::default() }
}

/// Edits of a valid file: byte flips, truncations, insertions and removals at random places.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len().max(1);
    prop::collection::vec((0..len, any::<u8>(), 0u8..4), 1..12).prop_map(move |edits| {
        let mut b = seed.clone();
        for (pos, byte, kind) in edits {
            let pos = pos.min(b.len());
            match kind {
                0 if pos < b.len() => b[pos] = byte,
                1 => b.truncate(pos),
                2 => b.insert(pos, byte),
                _ if pos < b.len() => {
                    b.remove(pos);
                }
                _ => {}
            }
        }
        b
    })
}

/// Arbitrary bytes or a mutation of `seed`.
fn inputs(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated(seed)]
}

/// `bytes` written to `name` in a fresh folder.
fn file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(root().join(path)).unwrap()
}

/// Numbers that break naive code: zero, huge, negative, not numbers at all.
fn nasty_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f32>().prop_map(|f| format!("{f:?}")),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("18446744073709551615".to_string()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hist_files(bytes in inputs(read("histograms/testdata/golden/sample.hist"))) {
        let (_d, path) = file("x.hist", &bytes);
        let _ = histograms::HistFile::read(&path);
    }

    #[test]
    fn hist_files_with_edited_numbers(edits in prop::collection::vec((0usize..4096, nasty_number()), 1..6)) {
        // Structured: numbers swapped in the JSON of a version-1 file (no checksum), so that the consistency
        // checks, not the checksum, see them.
        let mut v: serde_json::Value = serde_json::from_slice(&read("histograms/testdata/golden/sample.hist")).unwrap();
        v.as_object_mut().unwrap().remove("content_sha256");
        v["version"] = 1.into();
        let mut text = serde_json::to_string(&v).unwrap();
        for (at, number) in edits {
            let digits: Vec<usize> = text.char_indices().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).collect();
            if let Some(&i) = digits.get(at % digits.len().max(1)) {
                text.replace_range(i..i + 1, &number);
            }
        }
        let (_d, path) = file("x.hist", text.as_bytes());
        let _ = histograms::HistFile::read(&path);
    }

    #[test]
    fn recipes(bytes in inputs(read("fixtures/fmnist.toml"))) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = datasets::Recipe::from_toml(&text, "fuzz");
    }

    #[test]
    fn recipes_with_nasty_numbers(
        size in (nasty_number(), nasty_number()),
        resize_to in nasty_number(),
        scale in nasty_number(),
        mean in nasty_number(),
        std in nasty_number(),
        resize in prop::sample::select(vec!["shorter", "exact", "none", "bogus"]),
    ) {
        let text = format!(
            "[input]\nchannels = \"gray\"\nsize = [{}, {}]\nresize = \"{resize}\"\nresize_to = {resize_to}\nscale = {scale}\nmean = [{mean}]\nstd = [{std}]\n",
            size.0, size.1
        );
        if let Ok(recipe) = datasets::Recipe::from_toml(&text, "fuzz") {
            // An accepted recipe has bounded sizes: preprocessing a real image with it must not blow up.
            prop_assert!(recipe.size.iter().all(|s| (1..=datasets::MAX_SIDE).contains(s)));
            let image = root().join("datasets/testdata/gray_40x33.png");
            let mut out = vec![0f32; recipe.image_len()];
            let _ = datasets::preprocess_file(&image, &recipe, &mut out);
        }
    }

    #[test]
    fn precision_files(bytes in inputs(b"[deny]\nnodes = [\"/blocks.0/*\", \"/head/Gemm\"]\nops = [\"Conv\"]\n[allow]\nnodes = []\nops = [\"MatMul\"]\n".to_vec())) {
        let (_d, path) = file("p.toml", &bytes);
        if let Ok(p) = analyze::placement::PrecisionFile::load(&path) {
            let m = graph::Model::load(&model("fmnist_vit_opset17.onnx")).unwrap();
            let _ = analyze::placement::decide(&m.proto.graph, &p, &Default::default(), "fuzz");
        }
    }

    #[test]
    fn calibration_caches(bytes in inputs(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n(Unnamed Layer* 3) [Shuffle]_output: 0\n".to_vec())) {
        let _ = analyze::cache::parse_cache(&String::from_utf8_lossy(&bytes), Path::new("fuzz.cache"));
    }

    #[test]
    fn npy_prototypes(bytes in inputs(read("fixtures/models/fmnist_clip_text_prototypes.npy"))) {
        let (_d, path) = file("p.npy", &bytes);
        let _ = evaluate::compare::load_prototypes(&path);
    }

    #[test]
    fn images(bytes in inputs(read("datasets/testdata/rgb_300x250.png"))) {
        let (_d, path) = file("x.png", &bytes);
        let recipe = datasets::Recipe::preset(datasets::Preset::Imagenet);
        let mut out = vec![0f32; recipe.image_len()];
        let _ = datasets::preprocess_file(&path, &recipe, &mut out);
    }

    #[test]
    fn jpeg_images(bytes in mutated(read("datasets/testdata/photo_320x240.jpg"))) {
        let (_d, path) = file("x.jpg", &bytes);
        let _ = datasets::load_pixels(&path, datasets::Channels::Rgb);
    }
}

proptest! {
    // Models are larger: fewer cases by default.
    #![proptest_config(ProptestConfig { cases: config().cases.div_ceil(4), ..config() })]

    #[test]
    fn onnx_models_with_external_data(
        model_bytes in mutated(read("fixtures/models/fmnist_vit_opset18.onnx")),
        data_len in prop_oneof![Just(usize::MAX), 0usize..4_799_488],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fmnist_vit_opset18.onnx");
        std::fs::write(&path, &model_bytes).unwrap();
        let data = read("fixtures/models/fmnist_vit_opset18.onnx.data");
        std::fs::write(dir.path().join("fmnist_vit_opset18.onnx.data"), &data[..data_len.min(data.len())]).unwrap();
        if let Ok(m) = graph::Model::load(&path) {
            for t in &m.proto.graph.initializer {
                let _ = m.tensor_raw_bytes(t);
            }
            let _ = graph::find_activations(&m);
            let _ = m.input_files();
            for target in [analyze::Target::TensorRt, analyze::Target::OnnxRuntime] {
                let options = analyze::placement::PlacementOptions::for_target(target);
                if let Ok(d) = analyze::placement::decide(&m.proto.graph, &Default::default(), &options, "fuzz") {
                    let _ = analyze::placement::plan(&m.proto.graph, &d, &options);
                }
            }
            // The FP16 rewrite and its inverse, and the TensorRT-rules checker, on whatever loaded.
            let fp16 = analyze::float_type::convert(
                &m,
                m.proto.clone(),
                analyze::float_type::FloatType::Fp16,
                &Default::default(),
            );
            let _ = analyze::lint::lint(&m);
            if let Ok(proto) = fp16 {
                let mut twin = graph::Model { proto, ..m };
                let _ = twin.normalize_to_float32();
            }
        }
    }
}
