//! Candidates that differ only in their activation scales share one evaluation session, fed each one's scales
//! at run time ([`quantizer::measure::fed_scales`]): on the fixture ViT's FP32 Q/DQ models (every scale method,
//! INT8 and float attention) one session per attention precision gives every method's outputs bit for bit.
//! And a candidate pruned to its measured output computes that output bit for bit.

use calibrate::CalibrateOptions;
use datasets::Feed;
use placement::{AttentionPrecision, FloatType};
use quantizer::measure::fed_scales;
use quantizer::Scheme;

mod common;

#[test]
fn one_session_fed_each_methods_scales_gives_each_models_own_outputs() {
    let model = test_support::model("fmnist_vit_opset17.onnx");
    let images = test_support::calib_dir();
    let feed = Feed::for_folder(&images, Some(test_support::recipe())).unwrap();
    let options = CalibrateOptions { limit: Some(96), ..Default::default() };
    let (quantizer, probe) = common::calibrated_with_probe(&model, &images, &feed, &options, 8, 2);
    let bits = |o: &[Vec<f32>]| o.iter().flatten().map(|v| v.to_bits()).collect::<Vec<u32>>();
    for attention in [AttentionPrecision::Int8, AttentionPrecision::Float] {
        let mut shared: Option<(Vec<u8>, runtime::Session)> = None;
        let mut scale_sets = Vec::new();
        for method in analyze::scales::Method::ALL_DEFAULT {
            let mut scheme = Scheme { method, ..Default::default() };
            scheme.placement.attention = Some(attention);
            scheme.placement.float_type = FloatType::Fp32;
            let written = quantizer.artifacts(&scheme).unwrap().qdq;
            let own = probe.outputs_on(&written, runtime::Device::Cpu, usize::MAX).unwrap();
            let mut template = written.clone();
            let scales = fed_scales(&mut template).expect("activation scales to feed");
            assert!(scales.names.len() > 10, "{method:?}/{attention:?}: {} scales", scales.names.len());
            let template = graph::proto::Message::write_to_bytes(&template).unwrap();
            let (first, session) = shared.get_or_insert_with(|| {
                // One thread, as the probe's own sessions ([`quantizer::measure::Probe::layout`]).
                let session = probe.session(&template, runtime::Device::Cpu, 1).unwrap();
                (template.clone(), session)
            });
            // The premise: the methods' models differ in their scales only.
            assert!(*first == template, "{method:?}/{attention:?}: another graph than the first method's");
            let sessions = std::slice::from_mut(session);
            let ((_, _), fed) = probe.measure_continuing_in(sessions, &scales, Vec::new(), usize::MAX).unwrap();
            assert!(!bits(&own).is_empty());
            assert!(bits(&own) == bits(&fed), "{method:?}/{attention:?}: fed scales computed other outputs");
            scale_sets.push(scales.values);
        }
        // Not a pass on nothing: the methods' scales differ.
        scale_sets.dedup();
        assert!(scale_sets.len() > 1, "{attention:?}: every method gave the same scales");
    }
}

/// A candidate is measured on its measured output alone ([`quantizer::measure::Probe::prune_to_measured`]):
/// the other outputs' heads are not run, and the measured output's values are bit for bit the whole model's.
#[test]
fn a_candidate_pruned_to_the_measured_output_computes_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    // A second head after the logits: a Sigmoid written as a second output.
    let source =
        test_support::resnet_with_head("Sigmoid", "probabilities", graph::proto::tensor_proto::DataType::FLOAT as i32);
    let logits = source.proto.graph.output[0].clone();
    let model = dir.path().join("two_outputs.onnx");
    graph::save_model(&source, source.proto.clone(), &model).unwrap();

    let images = test_support::calib_dir();
    let feed = Feed::for_folder(&images, Some(test_support::recipe())).unwrap();
    let options = CalibrateOptions { limit: Some(64), ..Default::default() };
    let (quantizer, probe) = common::calibrated_with_probe(&model, &images, &feed, &options, 4, 1);
    let written = quantizer.artifacts(&Scheme::default()).unwrap().qdq;
    assert_eq!(written.graph.output.len(), 2);
    let mut pruned = written.clone();
    assert!(probe.prune_to_measured(&mut pruned), "the second head is pruned");
    assert_eq!(pruned.graph.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), [logits.name.as_str()]);
    assert!(pruned.graph.node.iter().all(|n| n.op_type != "Sigmoid"));
    assert!(!probe.prune_to_measured(&mut pruned), "nothing left to prune");
    let bits = |o: &[Vec<f32>]| o.iter().flatten().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let whole = probe.outputs_on(&written, runtime::Device::Cpu, usize::MAX).unwrap();
    assert!(!whole.is_empty());
    assert!(bits(&whole) == bits(&probe.outputs_on(&pruned, runtime::Device::Cpu, usize::MAX).unwrap()));
}
