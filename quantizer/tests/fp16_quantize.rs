//! FP16 candidates quantize in float32 in their evaluation sessions ([`quantizer::fp16_quantize`]): on the fixture
//! ViT's FP16 Q/DQ models (every scale method, INT8 and float attention) the outputs are the written graph's
//! bit for bit, and the rewrite leaves no float16 QuantizeLinear behind.

use calibrate::CalibrateOptions;
use datasets::Feed;
use graph::proto::tensor_proto::DataType;
use placement::{AttentionPrecision, FloatType};
use quantizer::Scheme;

mod common;

#[test]
fn fp16_candidates_give_the_written_graphs_outputs_bit_for_bit() {
    let model = test_support::model("fmnist_vit_opset17.onnx");
    let images = test_support::calib_dir();
    let feed = Feed::for_folder(&images, Some(test_support::recipe())).unwrap();
    let options = CalibrateOptions { limit: Some(96), ..Default::default() };
    let (quantizer, probe) = common::calibrated_with_probe(&model, &images, &feed, &options, 8, 2);
    assert!(quantizer::fp16_quantize::float32_quantize_is_exact(), "this ONNX Runtime fails the rewrite's check");
    for method in analyze::scales::Method::ALL_DEFAULT {
        for attention in [AttentionPrecision::Int8, AttentionPrecision::Float] {
            let mut scheme = Scheme { method, ..Default::default() };
            scheme.placement.attention = Some(attention);
            scheme.placement.float_type = FloatType::Fp16;
            let written = quantizer.artifacts(&scheme).unwrap().qdq;
            let faster = quantizer::fp16_quantize::rewritten_for_cpu(&written).expect("an FP16 model to rewrite");
            let fp16_quantize = |m: &graph::proto::ModelProto| {
                let g = &m.graph;
                g.node
                    .iter()
                    .filter(|n| n.op_type == "QuantizeLinear")
                    .filter(|n| {
                        g.initializer.iter().any(|t| t.name == n.input[1] && t.data_type == DataType::FLOAT16 as i32)
                    })
                    .count()
            };
            assert!(fp16_quantize(&written) > 0);
            assert_eq!(fp16_quantize(&faster), 0, "{method:?}/{attention:?}");
            let a = probe.outputs_on(&written, runtime::Device::Cpu, usize::MAX).unwrap();
            let b = probe.outputs_on(&faster, runtime::Device::Cpu, usize::MAX).unwrap();
            let bits = |o: &Vec<Vec<f32>>| o.iter().flatten().map(|v| v.to_bits()).collect::<Vec<u32>>();
            assert!(!bits(&a).is_empty());
            assert!(bits(&a) == bits(&b), "{method:?}/{attention:?}: the rewritten graph computes other outputs");
        }
    }
}
