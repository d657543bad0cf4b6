//! End to end on the fixtures: the INT8 models keep FP32 accuracy in ONNX Runtime; sensitivity and
//! autoprecision find a node planted with a wrong scale.

use analyze::scales::Method;
use calibrate::{calibrate, CalibrateOptions};
use evaluate::compare::{evaluate, fidelity, fidelity_per_image, ort_model, Classifier};
use evaluate::gates::FidelityGates;
use evaluate::sensitivity::{auto_precision, sensitivity, Budget, SensitivityInputs};
use histograms::HistFile;
use placement::PrecisionFile;
use quantizer::{Quantizer, Scheme};
use test_support::{calib_dir, feed, model, val_subset};

fn hist(name: &str) -> HistFile {
    let options = CalibrateOptions { limit: Some(300), ..Default::default() };
    calibrate(&model(name), &calib_dir(), &feed(), &options, &mut |_, _| {}).unwrap().0
}

fn options_for(method: Method, precision: PrecisionFile) -> Scheme {
    Scheme::new(method, precision, "test")
}

/// Top-1 on a seeded subset of the validation images.
fn top1(path: &std::path::Path, images: usize, classifier: &Classifier) -> f64 {
    evaluate(path, &val_subset(images, 1), &feed(), classifier).unwrap().top1
}

/// The planted ResNet's sensitivity inputs on 200 validation images.
fn planted_inputs() -> (SensitivityInputs, String) {
    let (hist, planted) = planted_resnet_hist();
    let inputs = SensitivityInputs {
        model: model("fmnist_resnet_opset13.onnx"),
        hist,
        dataset: val_subset(200, 3),
        feed: feed(),
        classifier: Classifier::Logits,
        scheme: Scheme::default(),
        batch_size: None,
        threads: 0,
        device: Default::default(),
    };
    (inputs, planted)
}

#[test]
fn qdq_models_run_in_onnx_runtime_and_keep_fp32_accuracy() {
    let zero_shot = Classifier::load(Some(&test_support::prototypes())).unwrap();
    for (name, entry) in test_support::models() {
        let name = name.as_str();
        let h = hist(name);
        let q = Quantizer::load(&model(name), h.clone()).unwrap();
        let a = q.artifacts(&options_for(Method::Entropy, PrecisionFile::default())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        a.write(dir.path()).unwrap();
        let qdq_path = dir.path().join("model.qdq.onnx");
        let qdq = graph::Model::load(&qdq_path).unwrap();
        let original = graph::Model::load(&model(name)).unwrap();
        let io = |m: &graph::Model| {
            (
                m.feed_inputs().iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
                m.proto.graph.output.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(io(&qdq), io(&original), "{name}: inputs/outputs changed");
        assert!(!qdq.has_external_data, "{name}: written self-contained");
        let classifier = if entry.zero_shot.is_some() { &zero_shot } else { &Classifier::Logits };
        let (fp32, int8) = (top1(&model(name), 1000, classifier), top1(&qdq_path, 1000, classifier));
        eprintln!("{name}: FP32 {fp32:.4}, INT8 {int8:.4}, INT8 FLOP share {:.3}", a.ranges.int8_flop_share);
        assert!((fp32 - int8).abs() <= 0.01, "{name}: FP32 {fp32} vs INT8 {int8}");
        assert!(a.ranges.int8_flop_share > 0.8, "{name}");
    }
}

#[test]
fn each_images_share_adds_up_to_the_pooled_fidelity() {
    let name = "fmnist_resnet_opset13.onnx";
    let scheme = options_for(Method::Entropy, PrecisionFile::default());
    let q = Quantizer::load(&model(name), hist(name)).unwrap();
    let a = q.artifacts(&scheme).unwrap();
    let dir = tempfile::tempdir().unwrap();
    a.write(dir.path()).unwrap();
    let images = val_subset(96, 4);
    let run = |per_image: bool| {
        let mut fp32 = ort_model(&model(name), &feed(), Default::default()).unwrap();
        let mut int8 = ort_model(&dir.path().join("model.qdq.onnx"), &feed(), Default::default()).unwrap();
        if per_image {
            fidelity_per_image(fp32.as_mut(), int8.as_mut(), &images, &feed()).unwrap()
        } else {
            (fidelity(fp32.as_mut(), int8.as_mut(), &images, &feed()).unwrap(), Vec::new())
        }
    };
    let ((pooled, shares), (alone, _)) = (run(true), run(false));
    assert_eq!(pooled, alone, "keeping the shares changed the result");
    assert_eq!(shares.len(), 96);
    let (signal, noise): (f64, f64) =
        shares.iter().map(|s| (s.signal, s.noise)).fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(
        (10.0 * (signal / noise).log10() - pooled.sqnr_db).abs() < 1e-9,
        "{} vs {}",
        signal / noise,
        pooled.sqnr_db
    );
    let agree = shares.iter().filter(|s| s.agree).count() as f64 / 96.0;
    assert_eq!(agree, pooled.agreement);
    let per_sample = quantizer::search::mean_sample_sqnr_db(&shares);
    assert!(per_sample.is_finite() && per_sample > 10.0, "{per_sample}");
}

/// The ResNet's .hist with the input of its fourth INT8 Conv given statistics of tiny values, so that its
/// scale clips almost everything; returns the .hist and that node's name.
fn planted_resnet_hist() -> (HistFile, String) {
    let name = "fmnist_resnet_opset13.onnx";
    let mut h = hist(name);
    let m = graph::Model::load(&model(name)).unwrap();
    let decisions = placement::decide(&m.proto.graph, &PrecisionFile::default(), &Default::default(), "test").unwrap();
    let planted = decisions.iter().filter(|d| d.int8 && d.op == "Conv").nth(3).unwrap().node.clone();
    let node = m.proto.graph.node.iter().find(|n| n.name == planted).unwrap();
    let mut tiny = histograms::TensorStats::default();
    tiny.add(&[0.001, -0.002, 0.0005]);
    h.tensors.iter_mut().find(|t| t.name == node.input[0]).unwrap().stats = tiny;
    (h, planted)
}

#[test]
fn autoprecision_denies_the_planted_node_and_its_list_round_trips() {
    let name = "fmnist_resnet_opset13.onnx";
    let (inputs, planted) = planted_inputs();
    let budget = Budget { max_top1_drop: Some(1.0), ..Default::default() };
    let auto = auto_precision(&inputs, &budget, &mut |_, _| {}).unwrap();
    let h = &inputs.hist;
    assert!(auto.met, "{:?}", auto.search);
    assert_eq!(auto.denied.first(), Some(&planted), "{:?}", auto.denied);
    assert!(auto.int8_flop_share > 0.8, "{}", auto.int8_flop_share);
    // The written list is what `analyze --precision` reads, unchanged, and it keeps the node float.
    let text = auto.precision.to_toml();
    let back: PrecisionFile = toml::from_str(&text).unwrap();
    assert_eq!(back, auto.precision);
    let q = Quantizer::load(&model(name), h.clone()).unwrap();
    let a = q.artifacts(&options_for(Method::Entropy, back)).unwrap();
    let node = a.qdq.graph.node.iter().find(|n| n.name == planted).unwrap();
    assert!(!a.qdq.graph.node.iter().any(|n| n.op_type == "DequantizeLinear" && node.input.contains(&n.output[0])));
}

#[test]
fn a_node_planted_with_a_wrong_scale_is_ranked_most_sensitive() {
    let name = "fmnist_resnet_opset13.onnx";
    let (inputs, planted) = planted_inputs();
    let report = sensitivity(&inputs, true, &mut |_, _| {}).unwrap();
    let h = &inputs.hist;
    // A method was chosen for every quantized tensor but the graph input (always max).
    let q = Quantizer::load(&model(name), h.clone()).unwrap();
    let a = q.artifacts(&options_for(Method::Entropy, PrecisionFile::default())).unwrap();
    let quantized = a.ranges.tensors.iter().filter(|t| t.quantized && t.op.is_some()).count();
    assert_eq!(report.methods.len(), quantized);
    let planted_input = &a.qdq.graph.node.iter().find(|n| n.name == planted).unwrap().input[0];
    let choice = report.methods.iter().find(|m| planted_input.starts_with(&m.tensor)).unwrap();
    assert!(choice.divergence_by_method.iter().all(|(_, d)| d.is_finite()), "{choice:?}");
    // Every INT8 Conv/Gemm got a weight clip choice: the clip with the smaller divergence, max on a tie.
    let weighted = a.ranges.nodes.iter().filter(|n| n.decision.int8 && n.flops.is_some()).count();
    assert_eq!(report.weight_clips.len(), weighted);
    for c in &report.weight_clips {
        let d: std::collections::HashMap<&str, f64> =
            c.divergence_by_clip.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let best = if d["mse"] < d["max"] { "mse" } else { "max" };
        assert_eq!(c.clip, best, "{c:?}");
    }
    assert_eq!(
        report.nodes[0].node,
        planted,
        "ranking: {:?}",
        report.nodes.iter().map(|n| &n.node).collect::<Vec<_>>()
    );
    assert!(report.nodes[0].alone_int8.top1_delta_pp.unwrap() < -5.0, "{:?}", report.nodes[0]);
    // Keeping the planted node float recovers most of the loss of the full INT8 model.
    assert!(
        report.nodes[0].alone_float.top1.unwrap() > report.int8.top1.unwrap(),
        "{:?} vs {:?}",
        report.nodes[0].alone_float,
        report.int8
    );
    // Shares of all GEMM/Conv FLOPs: the ranked (INT8) nodes carry all but the 10-class head's sliver (N = 10,
    // float by default for TensorRT, too narrow for its INT8 kernels).
    let flops: f64 = report.nodes.iter().map(|n| n.flop_share).sum();
    assert!(flops <= 1.0 + 1e-9 && flops > 0.999, "FLOP shares sum to {flops}");
}

/// The FP16 rewrite alone (no Q/DQ) keeps every fixture's outputs within FP16 rounding of FP32 on 200
/// validation images: mean cosine >= 0.9999, >= 99 % of predictions unchanged. Inputs and outputs stay
/// FP32 under their names.
#[test]
fn fp16_float_parts_stay_within_tolerance_of_fp32() {
    use placement::FloatType;
    use quantizer::float_type::convert;
    let zero_shot = Classifier::load(Some(&test_support::prototypes())).unwrap();
    for (name, entry) in test_support::models() {
        let source = graph::Model::load(&model(name)).unwrap();
        let converted = convert(&source, source.proto.clone(), FloatType::Fp16, &Default::default()).unwrap();
        let floats = |p: &graph::proto::ModelProto| {
            let types = graph::infer_element_types(&p.graph);
            p.graph
                .node
                .iter()
                .flat_map(|n| n.output.iter())
                .filter(|o| types.get(*o).is_some_and(|t| t.0 == 10))
                .count()
        };
        assert!(floats(&converted) > 0, "{name}: nothing converted to FP16");
        let io_types = |p: &graph::proto::ModelProto| {
            p.graph
                .input
                .iter()
                .chain(&p.graph.output)
                .map(|v| (v.name.clone(), v.type_.tensor_type().elem_type))
                .collect::<Vec<_>>()
        };
        assert_eq!(io_types(&converted), io_types(&source.proto), "{name}: inputs/outputs changed");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.fp16.onnx");
        graph::save_model(&source, converted, &path).unwrap();
        let classifier = if entry.zero_shot.is_some() { &zero_shot } else { &Classifier::Logits };
        let placement = runtime::Placement::default();
        let mut fp32 = evaluate::compare::ort_model(&model(name), &feed(), placement).unwrap();
        let mut fp16 = evaluate::compare::ort_model(&path, &feed(), placement).unwrap();
        let c = evaluate::compare::compare(
            &mut *fp32,
            &mut *fp16,
            &val_subset(200, 2),
            &feed(),
            classifier,
            &mut |_, _| {},
        )
        .unwrap();
        eprintln!("{name}: FP16 float parts: cosine {:.6}, agreement {:.4}", c.cosine_mean, c.agreement);
        assert!(c.cosine_mean >= 0.9999, "{name}: cosine {}", c.cosine_mean);
        assert!(c.agreement >= 0.99, "{name}: agreement {}", c.agreement);
    }
}

#[test]
fn a_fidelity_budget_finds_the_planted_node_without_labels_and_a_top1_budget_needs_them() {
    let (mut inputs, planted) = planted_inputs();
    // The same images with their labels taken away.
    for item in &mut inputs.dataset.items {
        item.label = None;
    }
    inputs.dataset.classes.clear();
    let top1 = Budget { max_top1_drop: Some(1.0), ..Default::default() };
    let err = auto_precision(&inputs, &top1, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("--max-top1-drop") && err.contains("needs labels") && err.contains("--min-cosine"), "{err}");
    let none = auto_precision(&inputs, &Budget::default(), &mut |_, _| {}).unwrap_err().to_string();
    assert!(none.contains("no budget"), "{none}");

    let budget =
        Budget { fidelity: FidelityGates { min_sqnr_db: Some(20.0), ..Default::default() }, ..Default::default() };
    let auto = auto_precision(&inputs, &budget, &mut |_, _| {}).unwrap();
    assert!(auto.met && auto.search.sqnr_db >= 20.0, "{:?}", auto.search);
    assert_eq!(auto.search.top1, None, "no labels, no Top-1");
    assert_eq!(auto.denied.first(), Some(&planted), "{:?}", auto.denied);
    // The full INT8 configuration (planted node included) misses the budget: the search had work to do.
    assert!(auto.sensitivity.int8.sqnr_db < 20.0, "{:?}", auto.sensitivity.int8);
    assert!(auto.int8_flop_share > 0.8, "{}", auto.int8_flop_share);
}

/// Several sessions (here CPU ones; GPUs on a GPU machine, `xtask gpu-check --steps devices`) share a
/// comparison batch by batch and a sensitivity node by node: the results are those of one session.
#[test]
fn work_spread_over_several_sessions_gives_the_one_session_result() {
    use evaluate::compare::{compare_each_spread, ort_model, ComparisonParts};
    let val = val_subset(300, 5);
    let placement = runtime::Placement { threads: 1, device: runtime::Device::Cpu };
    let set = || {
        ["fmnist_resnet_opset13.onnx", "fmnist_vit_opset17.onnx"]
            .map(|m| ort_model(&model(m), &feed(), placement).unwrap())
            .into_iter()
            .collect::<Vec<_>>()
    };
    let spread = |sets: usize| {
        let mut sets: Vec<_> = (0..sets).map(|_| set()).collect();
        let mut p = compare_each_spread(&mut sets, &val, &feed(), &Classifier::Logits, None, &mut |_, _| {}).unwrap();
        (p.reference_seconds, p.candidates[0].seconds) = (0.0, 0.0);
        p
    };
    let one: ComparisonParts = spread(1);
    assert_eq!(one.images, 300);
    assert_eq!(spread(3), one, "5 batches dealt to 3 sessions");

    let (inputs, _) = planted_inputs();
    let two_cpus = SensitivityInputs {
        device: runtime::Devices::new(vec![runtime::Device::Cpu; 2]).unwrap(),
        threads: 1,
        ..inputs.clone()
    };
    let (a, b) =
        (sensitivity(&inputs, false, &mut |_, _| {}).unwrap(), sensitivity(&two_cpus, false, &mut |_, _| {}).unwrap());
    let effects = |r: &evaluate::sensitivity::SensitivityReport| {
        r.nodes.iter().map(|n| (n.node.clone(), n.alone_int8.clone(), n.alone_float.clone())).collect::<Vec<_>>()
    };
    assert_eq!(effects(&a), effects(&b));
    assert!(a.nodes.len() > 2, "{}", a.nodes.len());
}
