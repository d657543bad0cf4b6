//! The evaluations' device invariants, on a GPU (`cargo test -p evaluate --features cuda --test gpu`, device
//! `INT8KIT_TEST_DEVICE`, default `cuda:0`; `cargo xtask gpu-pack` carries the test binary to a GPU machine
//! without Rust): the release gate's rows on the GPU are the CPU's within what FP16 kernels explain, and a
//! device list changes neither a report nor a sensitivity ranking.
#![cfg(feature = "cuda")]

use datasets::{Dataset, Feed, Recipe};
use evaluate::validate::{Calibration, ValidateConfig};
use evaluate::Classifier;
use runtime::{Device, Devices};

fn device() -> Device {
    let device = std::env::var("INT8KIT_TEST_DEVICE").unwrap_or_else(|_| "cuda:0".into());
    let device: Device = device.parse().expect("INT8KIT_TEST_DEVICE: cuda[:N]");
    runtime::use_device(device);
    runtime::cuda_device_check(device).expect("a CUDA device");
    device
}

fn feed() -> Feed {
    Feed::Images(Recipe::load(&test_support::recipe_path()).unwrap())
}

/// The release gate on a fixture with the default scheme, every image of both folders.
fn config(name: &str, zero_shot: bool, devices: Devices, out: std::path::PathBuf) -> ValidateConfig {
    let prototypes = test_support::prototypes();
    let calib = Calibration::Folder(test_support::calib_dir());
    ValidateConfig {
        collect: calibrate::CalibrateOptions { device: devices, ..Default::default() },
        classifier: Classifier::load(zero_shot.then_some(prototypes.as_path())).unwrap(),
        max_top1_drop: Some(0.5),
        ..ValidateConfig::new(test_support::model(name), calib, test_support::val_dir(), feed(), out)
    }
}

/// FP32 Top-1 within 0.05 pp, INT8 within 0.2 pp: the INT8 models have FP16 float parts, which the CUDA EP
/// computes in FP16 and the CPU provider in float32 between Casts (README, "Evaluating FP16 graphs"; measured on
/// an H200: up to 0.10 pp, 5 of 5000 images, apart).
#[test]
fn the_gate_on_the_gpu_is_the_cpu_gate_within_what_fp16_kernels_explain() {
    let gpu = device();
    let dir = tempfile::tempdir().unwrap();
    for (name, entry) in test_support::models() {
        let top1 = |device: Device| {
            let out = dir.path().join(format!("{name}-{}", device.to_string().replace(':', "_")));
            let r = evaluate::validate(
                &config(name, entry.zero_shot.is_some(), Devices::one(device), out),
                &mut |_, _, _| {},
            )
            .unwrap();
            (r.comparison.fp32.top1.unwrap(), r.comparison.int8.top1.unwrap())
        };
        let ((cpu32, cpu8), (gpu32, gpu8)) = (top1(Device::Cpu), top1(gpu));
        eprintln!("{name}: FP32 {cpu32} / {gpu32}, INT8 {cpu8} / {gpu8} (CPU / {gpu})");
        assert!(100.0 * (cpu32 - gpu32).abs() <= 0.05, "{name}: FP32 Top-1 {cpu32} on the CPU, {gpu32} on {gpu}");
        assert!(100.0 * (cpu8 - gpu8).abs() <= 0.2, "{name}: INT8 Top-1 {cpu8} on the CPU, {gpu8} on {gpu}");
    }
}

#[test]
fn a_device_list_changes_neither_the_report_nor_the_ranking() {
    let one = Devices::one(device());
    let list: Devices = format!("{one},{}", one.to_string().trim_start_matches("cuda:")).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = |devices: &Devices| {
        let out = dir.path().join(devices.to_string().replace([':', ','], "_"));
        let mut config = config("fmnist_vit_opset17.onnx", false, devices.clone(), out);
        config.limit_val = Some(1000);
        let r = evaluate::validate(&config, &mut |_, _, _| {}).unwrap();
        let mut v = serde_json::to_value((&r.comparison, &r.fp16, &r.criteria)).unwrap();
        // Speeds are per device set.
        for (i, row) in [(0, "fp32"), (0, "int8"), (1, "metrics")] {
            v[i][row]["images_per_s"] = 0.into();
        }
        v
    };
    assert_eq!(report(&one), report(&list), "validate");
    let model = test_support::model("fmnist_vit_opset17.onnx");
    let options = calibrate::CalibrateOptions { limit: Some(400), ..Default::default() };
    let (hist, _) =
        calibrate::calibrate(&model, &test_support::calib_dir(), &feed(), &options, &mut |_, _| {}).unwrap();
    let ranking = |devices: &Devices| {
        let inputs = evaluate::sensitivity::SensitivityInputs {
            model: model.clone(),
            hist: hist.clone(),
            dataset: Dataset::labelled(&test_support::val_dir(), None).unwrap().limit(200, 0),
            feed: feed(),
            classifier: Classifier::Logits,
            scheme: Default::default(),
            batch_size: None,
            threads: 0,
            device: devices.clone(),
        };
        let r = evaluate::sensitivity::sensitivity(&inputs, false, &mut |_, _| {}).unwrap();
        serde_json::to_value(r.nodes.iter().map(|n| (&n.node, &n.alone_int8, &n.alone_float)).collect::<Vec<_>>())
            .unwrap()
    };
    assert_eq!(ranking(&one), ranking(&list), "sensitivity");
}
