//! ranges.json is versioned (FORMATS.md): this golden file pins its bytes, so that a renamed Rust field cannot
//! silently change it. A deliberate change bumps `RANGES_VERSION`, updates FORMATS.md and re-blesses
//! (`INT8KIT_BLESS=1`).

use placement::{Decision, PrecisionFile, Selection};
use quantizer::{NodeReport, Ranges, TensorRange, WeightRange};

#[test]
fn ranges_json_matches_the_golden_file() {
    let ranges = Ranges {
        format: quantizer::RANGES_FORMAT,
        version: quantizer::RANGES_VERSION,
        model: histograms::ModelInfo { file: "m.onnx".into(), sha256: "ab".repeat(32) },
        calibration_images: 1000,
        method: "entropy".into(),
        precision: PrecisionFile {
            deny: Selection { nodes: vec!["/head/*".into()], ops: vec![] },
            allow: Selection::default(),
            attention: Some(placement::AttentionPrecision::Float),
        },
        target: "tensorrt",
        attention: None,
        residual: "int8",
        float_type: "fp16",
        weight_clip: "auto",
        int8_flop_share: 0.875,
        nodes: vec![
            NodeReport {
                decision: Decision {
                    node: "/conv/Conv".into(),
                    op: "Conv".into(),
                    int8: true,
                    reason: "default".into(),
                },
                flops: Some(1.5e6),
            },
            NodeReport {
                decision: Decision {
                    node: "/head/Gemm".into(),
                    op: "Gemm".into(),
                    int8: false,
                    reason: "deny.nodes /head/*".into(),
                },
                flops: None,
            },
        ],
        tensors: vec![TensorRange {
            name: "input".into(),
            op: None,
            quantized: true,
            method: "max".into(),
            amax: 2.5,
            scale: 2.5 / 127.0,
            clipped: 0.0,
            amax_by_method: vec![("entropy".into(), 2.0), ("max".into(), 2.5)],
        }],
        weights: vec![WeightRange {
            name: "conv.weight".into(),
            axis: 0,
            channels: 4,
            amax_min: 0.25,
            amax_max: 1.5,
            clip: "mse",
            clip_ratio_min: 0.75,
        }],
        smoothing: Some(smoothquant::Smoothing {
            alpha: 0.5,
            tensors: vec![smoothquant::SmoothedTensor {
                tensor: "/ln/LayerNormalization_output_0".into(),
                quantized: "/ln/LayerNormalization_output_0".into(),
                applied: "layernorm".into(),
                node: "/ln/LayerNormalization".into(),
                gemms: vec!["/qkv/MatMul".into()],
                channels: 4,
                amax_before: 40.0,
                amax: 3.5,
                scale_min: 0.5,
                scale_max: 8.0,
            }],
            skipped: vec![("/fc2/MatMul_input".into(), "no per-channel maxima in the .hist".into())],
        }),
        equalization: Some(smoothquant::Equalization {
            tensors: vec![smoothquant::EqualizedTensor {
                tensor: "/dw/HardSwish_output_0".into(),
                quantized: "/dw/HardSwish_output_0_equalized".into(),
                node: "/dw/HardSwish_output_0_Equalize".into(),
                convs: vec!["/dw/Conv".into()],
                channels: 3,
                amax: 12.0,
                channel_min: 0.5,
                factor_max: 24.0,
            }],
            skipped: vec![("/dw2/Relu_output_0".into(), "no per-channel maxima".into())],
        }),
        chosen_by: "measurement",
        self_check: quantizer::SelfCheck {
            status: "measured",
            samples: "4 calibration samples held back from the statistics (calib)".into(),
            fidelity: Some(quantizer::measure::Fidelity {
                images: 4,
                agreement: 0.75,
                cosine_mean: 0.99,
                sqnr_db: 20.5,
            }),
            evaluation: Some("onnxruntime, graph optimization disabled".into()),
            output: Some(quantizer::MeasuredOutput { name: "logits".into(), of: 2 }),
        },
        search: Some(quantizer::search::SearchRecord {
            axes: vec!["method", "float_type"],
            samples: (0, 4),
            first_samples: None,
            tolerance_db: quantizer::search::TOLERANCE_DB,
            trials: vec![
                quantizer::search::Trial {
                    method: "entropy".into(),
                    attention: "default",
                    float_type: "fp16",
                    residual: "int8",
                    stage: "fine",
                    fidelity: Some(quantizer::measure::Fidelity {
                        images: 4,
                        agreement: 0.75,
                        cosine_mean: 0.99,
                        sqnr_db: 20.5,
                    }),
                    failed: None,
                    mean_sample_sqnr_db: Some(21.25),
                    gap_standard_error_db: Some(0.0),
                    worst_shape_sqnr_db: None,
                    seconds: 1.5,
                },
                quantizer::search::Trial {
                    method: "max".into(),
                    attention: "default",
                    float_type: "fp32",
                    residual: "int8",
                    stage: "fine",
                    fidelity: None,
                    failed: Some("not finite".into()),
                    mean_sample_sqnr_db: None,
                    gap_standard_error_db: None,
                    worst_shape_sqnr_db: None,
                    seconds: 1.5,
                },
            ],
            chosen: 0,
            not_continued: vec![quantizer::search::NotContinued {
                trial: 1,
                leader: 0,
                skipped: "float_type",
                behind_db: 2.75,
                gap_standard_error_db: 0.5,
            }],
            reason: "the best mean per-sample SQNR".into(),
            seconds: 0.5,
        }),
        weight_rounding: Some(quantizer::rounding::RoundingRecord {
            asked: "auto",
            chosen: "gptq",
            reason: "GPTQ measured better".into(),
            samples: 128,
            nearest_sqnr_db: Some(25.25),
            gptq_sqnr_db: Some(26.5),
            layers: vec![
                quantizer::rounding::RoundedLayer {
                    node: "/conv1/Conv".into(),
                    columns: 27,
                    patches: 12288,
                    rounding: "gptq".into(),
                },
                quantizer::rounding::RoundedLayer {
                    node: "/head/Gemm".into(),
                    columns: 256,
                    patches: 128,
                    rounding: "nearest: 128 input patches for 256 columns (GPTQ needs 8 per column)".into(),
                },
            ],
        }),
    };
    let bytes = ranges.to_json().unwrap();
    test_support::assert_golden(&test_support::golden(env!("CARGO_MANIFEST_DIR"), "ranges.json"), &bytes);
}

/// profile.json (version 1) of a CLIP-like input served at three sizes, most images calibrated at 336.
#[test]
fn profile_json_matches_the_golden_file_and_reads_back() {
    let recipe = datasets::Recipe::preset(datasets::Preset::Clip)
        .with_sizes(&[[224, 224], [336, 336], [448, 448]], "t")
        .unwrap();
    let profile = quantizer::profile::EngineProfile::derive("pixel_values", None, &recipe, &[100, 200, 100], 64);
    let bytes = profile.to_json().unwrap();
    let golden = test_support::golden(env!("CARGO_MANIFEST_DIR"), "profile.json");
    test_support::assert_golden(&golden, &bytes);
    let back: quantizer::profile::EngineProfile = serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    assert_eq!(back, profile);
}
