//! Recipes of several input sizes, on models with dynamic height and width built here (needs ONNX Runtime:
//! run through `cargo xtask test`).

use std::path::Path;

use calibrate::{calibrate, CalibrateOptions, HoldOut, Smooth};
use datasets::Feed;
use histograms::HistFile;
use test_support::dynamic_models;

const SIZES: [[u32; 2]; 3] = [[28, 28], [40, 40], [56, 56]];

fn options(batch_size: usize, threads: usize) -> CalibrateOptions {
    // Not smoothed: one size's smoothing factors would come from that size's maxima, another model than the
    // all-sizes run's.
    CalibrateOptions {
        batch_size,
        threads,
        limit: Some(40),
        hold_out: HoldOut::Count(0),
        smooth: Smooth::Off,
        ..Default::default()
    }
}

fn calibrate_at(model: &Path, sizes: &[[u32; 2]], options: &CalibrateOptions) -> HistFile {
    let feed = Feed::Images(dynamic_models::recipe(sizes));
    calibrate(model, &test_support::calib_dir(), &feed, options, &mut |_, _| {}).unwrap().0
}

#[test]
fn several_sizes_fold_into_one_hist_the_exact_merge_of_each_sizes_statistics() {
    let dir = tempfile::tempdir().unwrap();
    for model in [dynamic_models::dynamic_cnn(dir.path()), dynamic_models::dynamic_vit(dir.path())] {
        let name = model.file_name().unwrap().to_string_lossy().to_string();
        let single: Vec<HistFile> = SIZES.iter().map(|s| calibrate_at(&model, &[*s], &options(16, 0))).collect();
        let all = calibrate_at(&model, &SIZES, &options(16, 0));
        assert_eq!(all.recipe.as_ref().unwrap().all_sizes(), SIZES.to_vec(), "{name}");
        let per_size: Vec<([u32; 2], u64)> = all.images.sizes.iter().map(|s| (s.size, s.count)).collect();
        assert_eq!(per_size, SIZES.iter().map(|s| (*s, 40)).collect::<Vec<_>>(), "{name}");
        assert_eq!(all.images.count, 40, "{name}: images, not passes");
        assert!(!all.images.sizes_dealt);
        // One size's file records no sizes: what a one-size calibration always wrote.
        assert!(single[0].images.sizes.is_empty() && single[0].recipe.as_ref().unwrap().sizes.is_empty());
        for (i, t) in all.tensors.iter().enumerate() {
            let mut merged = single[0].tensors[i].stats.clone();
            single[1..].iter().for_each(|h| merged.merge(&h.tensors[i].stats));
            assert_eq!(t.stats, merged, "{name}: tensor {} is not the merge of its sizes' statistics", t.name);
        }
        // Ranges move with the size: some activation's range at 56x56 is not its range at 28x28.
        let differs = single[0]
            .tensors
            .iter()
            .zip(&single[2].tensors)
            .filter(|(a, b)| a.producer.is_some() && (a.stats.amax() - b.stats.amax()).abs() > 1e-3 * a.stats.amax())
            .count();
        assert!(differs > 0, "{name}: no activation's range differs between 28x28 and 56x56");
        // Byte-identical whatever the batch size and the thread count.
        let again = calibrate_at(&model, &SIZES, &options(3, 1));
        assert_eq!(again.to_json().unwrap(), all.to_json().unwrap(), "{name}: batch size or threads changed the .hist");
    }
}

#[test]
fn the_vits_attention_probabilities_flatten_with_more_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = dynamic_models::dynamic_vit(dir.path());
    let amax = |h: &HistFile| h.tensor("probs").expect("the softmax output is collected").stats.amax();
    let small = calibrate_at(&model, &SIZES[..1], &options(16, 0));
    let large = calibrate_at(&model, &SIZES[2..], &options(16, 0));
    let all = calibrate_at(&model, &SIZES, &options(16, 0));
    assert!(amax(&large) < amax(&small), "49 tokens {} vs 196 tokens {}", amax(&small), amax(&large));
    assert_eq!(amax(&all), amax(&small), "the range over every size is the widest size's");
}

#[test]
fn dealt_sizes_give_each_image_one_size_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let model = dynamic_models::dynamic_cnn(dir.path());
    let dealt = |seed: u64| {
        let options = CalibrateOptions { deal_sizes: true, seed, ..options(16, 0) };
        calibrate_at(&model, &SIZES, &options)
    };
    let a = dealt(0);
    assert!(a.images.sizes_dealt);
    let counts: Vec<u64> = a.images.sizes.iter().map(|s| s.count).collect();
    assert_eq!(counts, vec![14, 13, 13]);
    assert_eq!(a.images.count, 40);
    assert_eq!(dealt(0).to_json().unwrap(), a.to_json().unwrap(), "the deal is seeded");
    assert_ne!(dealt(1).tensors, a.tensors, "another seed deals otherwise");
    // The image input's values: 40 images, each at one size.
    let pixels: u64 = SIZES.iter().zip(&counts).map(|(s, n)| (s[0] * s[1]) as u64 * n).sum();
    assert_eq!(a.tensor(dynamic_models::INPUT).unwrap().stats.count, pixels);
}

#[test]
fn one_listed_size_is_the_one_size_recipe_and_a_fixed_size_model_is_refused() {
    let one = datasets::Recipe::from_toml(
        "[input]\nchannels = \"gray\"\nsizes = [[28, 28]]\nresize = \"exact\"\nmean = [0.5]\nstd = [0.5]",
        "t",
    )
    .unwrap();
    let plain = datasets::Recipe::from_toml(
        "[input]\nchannels = \"gray\"\nsize = [28, 28]\nresize = \"exact\"\nmean = [0.5]\nstd = [0.5]",
        "t",
    )
    .unwrap();
    assert_eq!(one, plain);
    assert_eq!(one.to_toml(), plain.to_toml());

    let feed = Feed::Images(dynamic_models::recipe(&SIZES));
    let fixed = test_support::model("fmnist_resnet_opset13.onnx");
    let err =
        calibrate(&fixed, &test_support::calib_dir(), &feed, &options(16, 0), &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("input 'input' has shape [batch, 1, 28, 28]") && err.contains("fixed"), "{err}");
    // Dealing needs several sizes.
    let options = CalibrateOptions { deal_sizes: true, ..options(16, 0) };
    let err = calibrate(&fixed, &test_support::calib_dir(), &test_support::feed(), &options, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("--deal-sizes"), "{err}");
}

#[test]
fn npz_samples_of_two_sequence_lengths_are_batched_by_length_and_fold_exactly() {
    use test_support::text_tower::{write_dynamic_model, write_samples_of};
    let dir = tempfile::tempdir().unwrap();
    let model = write_dynamic_model(dir.path());
    let long = |seed: u64| if seed.is_multiple_of(3) { 20 } else { 12 };
    let mixed = write_samples_of(&dir.path().join("mixed"), 0, 30, &long);
    // The same samples split by length into two folders.
    let (short_dir, long_dir) = (dir.path().join("short"), dir.path().join("long"));
    for seed in 0..30u64 {
        let to = if long(seed) == 20 { &long_dir } else { &short_dir };
        write_samples_of(to, seed, 1, &long);
    }
    let run = |folder: &Path, batch_size: usize, threads: usize| {
        let options = CalibrateOptions { batch_size, threads, hold_out: HoldOut::Count(0), ..Default::default() };
        calibrate(&model, folder, &Feed::Tensors, &options, &mut |_, _| {}).unwrap().0
    };
    let all = run(&mixed, 16, 0);
    assert_eq!(all.images.count, 30);
    let (short, long_only) = (run(&short_dir, 16, 0), run(&long_dir, 16, 0));
    for (i, t) in all.tensors.iter().enumerate() {
        let mut merged = short.tensors[i].stats.clone();
        merged.merge(&long_only.tensors[i].stats);
        assert_eq!(t.stats, merged, "tensor {}", t.name);
    }
    // Every token's values: 20 samples of 12 tokens and 10 of 20, 32 values each.
    let normed = all.tensor("normed").unwrap();
    assert_eq!(normed.stats.count, (20 * 12 + 10 * 20) * 32);
    assert_eq!(run(&mixed, 3, 1).tensors, all.tensors, "batch size or threads changed the statistics");
}

#[test]
fn shards_of_a_calibration_over_several_sizes_merge_into_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = dynamic_models::dynamic_cnn(dir.path());
    for deal_sizes in [false, true] {
        let whole = CalibrateOptions { deal_sizes, ..options(16, 0) };
        let all = calibrate_at(&model, &SIZES, &whole);
        let parts: Vec<(std::path::PathBuf, HistFile)> = (1..=3)
            .map(|i| {
                let part = CalibrateOptions { shard: Some((i, 3)), ..whole.clone() };
                (format!("part{i}.hist").into(), calibrate_at(&model, &SIZES, &part))
            })
            .collect();
        let merged = histograms::merge(&parts).unwrap();
        assert_eq!(merged.to_json().unwrap(), all.to_json().unwrap(), "deal_sizes {deal_sizes}");
    }
}
