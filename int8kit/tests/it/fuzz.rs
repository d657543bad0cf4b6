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
        if let Ok(p) = quantizer::placement::PrecisionFile::load(&path) {
            let m = graph::Model::load(&model("fmnist_vit_opset17.onnx")).unwrap();
            let _ = quantizer::placement::decide(&m.proto.graph, &p, &Default::default(), "fuzz");
        }
    }

    #[test]
    fn calibration_caches(bytes in inputs(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n(Unnamed Layer* 3) [Shuffle]_output: 0\n".to_vec())) {
        let _ = quantizer::cache::parse_cache(&String::from_utf8_lossy(&bytes), Path::new("fuzz.cache"));
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

    #[test]
    fn webp_tiff_gif_and_bmp_images(
        (name, bytes) in prop_oneof![
            mutated(read("datasets/testdata/photo_320x240.webp")).prop_map(|b| ("x.webp", b)),
            mutated(read("datasets/testdata/rgba_83x61_lossless.webp")).prop_map(|b| ("x.webp", b)),
            mutated(read("datasets/testdata/rgb_70x45_lzw.tiff")).prop_map(|b| ("x.tiff", b)),
            mutated(read("datasets/testdata/palette_64x48.gif")).prop_map(|b| ("x.gif", b)),
            mutated(read("datasets/testdata/rgb_60x50.bmp")).prop_map(|b| ("x.bmp", b)),
        ],
    ) {
        // Each format's decoder on mutated files of its kind: an error, never a panic, an abort or a hang.
        let (_d, path) = file(name, &bytes);
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
            for target in [quantizer::Target::TensorRt, quantizer::Target::OnnxRuntime] {
                let options = quantizer::placement::PlacementOptions::for_target(target);
                if let Ok(d) = quantizer::placement::decide(&m.proto.graph, &Default::default(), &options, "fuzz") {
                    let _ = quantizer::placement::plan(&m.proto.graph, &d, &options);
                }
            }
            // The FP16 rewrite and its inverse, and the TensorRT-rules checker, on whatever loaded.
            let fp16 = quantizer::float_type::convert(
                &m,
                m.proto.clone(),
                quantizer::placement::FloatType::Fp16,
                &Default::default(),
            );
            let _ = quantizer::placement::lint::lint(&m);
            if let Ok(proto) = fp16 {
                let mut twin = graph::Model { proto, ..m };
                let _ = twin.normalize_to_float32();
            }
        }
    }
}

/// Numbers of the JSON text replaced at random digits by `edits` (digit index, replacement).
fn edit_numbers(mut text: String, edits: &[(usize, String)]) -> String {
    for (at, number) in edits {
        let digits: Vec<usize> = text.char_indices().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).collect();
        if let Some(&i) = digits.get(at % digits.len().max(1)) {
            text.replace_range(i..i + 1, number);
        }
    }
    text
}

/// Counts that break naive arithmetic: 0, 1, near and at 2^63 and 2^64, huge shard and class counts.
fn nasty_count() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(1 << 63),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1_000_000_000_000_000),
        any::<u64>()
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Validation parts with edited numbers, merged alone and beside a copy under another shard number: an
    /// error or a report, never a panic or an abort; and a merged report never passes on non-finite numbers.
    #[test]
    fn validation_parts_with_edited_numbers(edits in prop::collection::vec((0usize..8192, nasty_number()), 1..6)) {
        let text = edit_numbers(String::from_utf8(read("evaluate/testdata/golden/part.json")).unwrap(), &edits);
        let (_d, path) = file("p.json", text.as_bytes());
        if let Ok(part) = evaluate::shards::ValidatePart::read(&path) {
            let mut alone = part.clone();
            alone.shard.index = 1;
            alone.shard.count = 1;
            if let Ok(report) = evaluate::shards::merge(&[(path.clone(), alone)]) {
                let c = &report.comparison;
                prop_assert!(!report.passed || (c.cosine_mean.is_finite() && c.sqnr_db.is_finite()));
            }
            let mut copy = part.clone();
            copy.shard.index = part.shard.index % part.shard.count.max(1) + 1;
            let _ = evaluate::shards::merge(&[(path.clone(), part), ("copy.json".into(), copy)]);
        }
    }

    /// `.hist` shards whose counts are edited and the checksum resealed: the consistency checks (not the
    /// checksum) must refuse wrapped or impossible counts, and a merge must never wrap.
    #[test]
    fn hist_shards_resealed(
        tensor in 0usize..64,
        bin in 0usize..4096,
        add in nasty_count(),
        images in nasty_count(),
        shard_count in nasty_count(),
    ) {
        let (_d0, golden) = file("g.hist", &read("histograms/testdata/golden/sample.hist"));
        let base = histograms::HistFile::read(&golden).unwrap();
        let shard = |index: usize, count: usize, list: &str| histograms::ShardInfo { index, count, list_sha256: list.into(), whole_list_sha256: None };
        let mut a = base.clone();
        a.shard = Some(shard(1, 2, "a"));
        let mut b = base.clone();
        b.shard = Some(shard(2, 2, "b"));
        if !b.tensors.is_empty() {
            let n = b.tensors.len();
            let t = &mut b.tensors[tensor % n].stats;
            t.hist.counts[bin] = t.hist.counts[bin].wrapping_add(add);
            t.count = t.count.wrapping_add(add);
        }
        b.images.count = images;
        a.shard.as_mut().unwrap().count = (shard_count as usize).max(1);
        let (_d1, pa) = file("a.hist", &a.to_json().unwrap());
        let (_d2, pb) = file("b.hist", &b.to_json().unwrap());
        let read_a = histograms::HistFile::read(&pa);
        let read_b = histograms::HistFile::read(&pb);
        if let (Ok(ra), Ok(rb)) = (read_a, read_b) {
            if let Ok(m) = histograms::merge(&[(pa, ra), (pb, rb)]) {
                // What merged is consistent: it reads back through every check.
                prop_assert!(m.check().is_ok(), "{:?}", m.check());
            }
        }
    }

    /// `.npz` samples with arbitrary headers (shapes, types, versions) and data lengths, stored or deflated:
    /// an error or arrays whose lengths match their shapes, never an abort from a declared size.
    #[test]
    fn npz_headers_and_entries(
        dims in prop::collection::vec(prop_oneof![Just(0u64), Just(1), 1u64..64, Just(28_000_000_000), Just(u64::MAX)], 0..5),
        descr in prop::sample::select(vec!["<f4", "<f8", "<i8", "|u1", "|b1", ">f4", "<c8", "O", "<U3"]),
        data_len in 0usize..4096,
        version in prop::sample::select(vec![1u8, 2, 3, 9]),
        fortran in any::<bool>(),
        name in prop::sample::select(vec!["x.npy", "x", "../x.npy", "a/x.npy", ".npy"]),
        deflate in any::<bool>(),
    ) {
        use std::io::Write;
        let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        let shape = if shape.len() == 1 { format!("({},)", shape[0]) } else { format!("({})", shape.join(", ")) };
        let fortran = if fortran { "True" } else { "False" };
        let dict = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n");
        let mut npy = b"\x93NUMPY".to_vec();
        npy.push(version);
        npy.push(0);
        if version == 1 {
            npy.extend((dict.len() as u16).to_le_bytes());
        } else {
            npy.extend((dict.len() as u32).to_le_bytes());
        }
        npy.extend(dict.as_bytes());
        npy.extend(std::iter::repeat_n(1u8, data_len));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.npz");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        z.start_file(name, zip::write::SimpleFileOptions::default().compression_method(method)).unwrap();
        z.write_all(&npy).unwrap();
        z.finish().unwrap();
        if let Ok(arrays) = datasets::read_npz(&path) {
            for a in arrays {
                prop_assert_eq!(a.shape.iter().product::<usize>(), a.data.len());
            }
        }
    }

    /// Random OUTDIR layouts (files, folders, symlinks, manifests true, stale or foreign): a set is either
    /// refused with nothing changed, or written, and then the folder held nothing int8kit did not write.
    #[test]
    fn output_folder_layouts(
        entries in prop::collection::vec((0u8..6, 0u8..4), 0..6),
        owned_first in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        if owned_first {
            let set = safe_io::OutputDir::new(&target).unwrap();
            std::fs::write(set.path().join("ranges.json"), "{}").unwrap();
            set.commit().unwrap();
        }
        std::fs::create_dir_all(&target).unwrap();
        for (i, (kind, name)) in entries.iter().enumerate() {
            let names = ["ranges.json", "int8kit.manifest.json", "notes.txt", "src"];
            let path = target.join(names[*name as usize]);
            let _ = match kind {
                0 => std::fs::write(&path, format!("user {i}")),
                1 => std::fs::create_dir_all(path.join("sub")).and_then(|()| std::fs::write(path.join("sub/f"), "x")),
                2 => std::os::unix::fs::symlink(dir.path(), &path),
                3 => std::fs::write(&path, ""),
                4 => std::fs::write(&path, r#"{"format":"int8kit.outputs","version":2,"files":[]}"#),
                _ => std::fs::remove_file(&path),
            };
        }
        let before = safe_io::outputs::inspect(&target);
        let tree = test_support::tree(dir.path());
        match safe_io::OutputDir::new(&target) {
            Err(_) => {
                prop_assert!(before.is_err());
                prop_assert_eq!(test_support::tree(dir.path()), tree, "a refusal changed something");
            }
            Ok(set) => {
                prop_assert!(before.is_ok(), "accepted a folder inspect refuses");
                std::fs::write(set.path().join("model.qdq.onnx"), "new").unwrap();
                set.commit().unwrap();
                // The layout may have written outside OUTDIR itself (a folder made through a symlink to the
                // temporary folder, the symlink then removed): that part must be as it was.
                let after = test_support::tree(dir.path());
                let in_out = |k: &String| k == "out" || k.starts_with("out/");
                let outside = |t: &std::collections::BTreeMap<String, Option<Vec<u8>>>| {
                    t.iter().filter(|(k, _)| !in_out(k)).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
                };
                prop_assert_eq!(outside(&after), outside(&tree), "something outside OUTDIR changed");
                let inside: Vec<String> = after.into_keys().filter(in_out).collect();
                prop_assert_eq!(inside, vec!["out".to_string(), "out/int8kit.manifest.json".into(), "out/model.qdq.onnx".into()]);
            }
        }
    }
}
