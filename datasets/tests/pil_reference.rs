//! Preprocessing against reference values that PIL produced (`testdata/make_reference.py`).

use std::path::{Path, PathBuf};

use datasets::{apply_geometry, load_pixels, preprocess_file, Channels, Recipe};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn recipe_from_json(v: &serde_json::Value) -> Recipe {
    let r: Recipe = serde_json::from_value(v.clone()).expect("reference recipe");
    r.validate("reference").expect("valid reference recipe");
    r
}

#[test]
fn matches_pil_within_one_level_per_pixel() {
    let text = std::fs::read_to_string(testdata().join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 13);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let recipe = recipe_from_json(&case["recipe"]);
        let source = testdata().join(case["source"].as_str().unwrap());

        // Pixels after convert/resize/crop, against PIL's.
        let ours = apply_geometry(&source, load_pixels(&source, recipe.channels).unwrap(), &recipe).unwrap();
        let expected = image::open(testdata().join(case["expected_pixels"].as_str().unwrap())).unwrap();
        let expected: Vec<u8> = match recipe.channels {
            Channels::Gray => expected.to_luma8().into_raw(),
            _ => expected.to_rgb8().into_raw(),
        };
        assert_eq!(ours.data.len(), expected.len(), "{name}: size");
        let diffs: Vec<i32> = ours.data.iter().zip(&expected).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
        let max = diffs.iter().copied().max().unwrap();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        eprintln!("{name}: max |diff| = {max}/255, mean = {mean:.4}/255");
        // Lossless sources (PNG, lossless WebP, BMP, TIFF, GIF) must agree to 1/255. Lossy decoders differ (the
        // image crate's are not libjpeg-turbo's or libwebp's: IDCT and chroma upsampling), by up to 4/255 at
        // sharp edges and well under 1/255 on average.
        let source_name = case["source"].as_str().unwrap();
        let lossy =
            source_name.ends_with(".jpg") || (source_name.ends_with(".webp") && !source_name.contains("lossless"));
        let limit = if lossy { 4 } else { 1 };
        assert!(max <= limit, "{name}: max pixel difference {max} > {limit}");
        assert!(mean <= if lossy { 0.5 } else { 0.05 }, "{name}: mean pixel difference {mean}");

        // Floats after ToTensor/Normalize, at sampled positions.
        let mut out = vec![0f32; recipe.image_len()];
        preprocess_file(&source, &recipe, &mut out).unwrap();
        let min_std = recipe.std.iter().copied().fold(f32::INFINITY, f32::min);
        let tol = limit as f32 / 255.0 / recipe.scale * 255.0 / min_std + 1e-5;
        for s in case["samples"].as_array().unwrap() {
            let (i, want) = (s[0].as_u64().unwrap() as usize, s[1].as_f64().unwrap() as f32);
            assert!((out[i] - want).abs() <= tol, "{name}: float[{i}] = {} vs {want} (tol {tol})", out[i]);
        }
    }
}
