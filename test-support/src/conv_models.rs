//! Small convolutional models built in the tests, with seeded weights and `.npz` samples, for what the
//! fixtures cannot show: weight channels whose scales leave FP16's normal range (all zero, tiny, tiny but
//! amplified by a BatchNormalization left unfolded, as Paddle and TensorFlow exports keep it), and an FP16
//! Q/DQ graph that ONNX Runtime's optimized CPU session computes differently from the graph.

use std::path::{Path, PathBuf};

use graph::proto::tensor_proto::DataType;
use graph::proto::{
    attribute_proto::AttributeType, AttributeProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TypeProto, ValueInfoProto,
};

/// Channels of the models' input and of every Conv.
pub const CHANNELS: usize = 8;
/// Height and width of the models' input.
pub const SIDE: usize = 12;
/// The models' input name.
pub const INPUT: &str = "x";

/// Seeded values in [-scale, scale) (xorshift: reproducible, not good, randomness); the text tower's too.
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

pub(crate) fn tensor(name: &str, data_type: DataType, dims: &[usize], raw: Vec<u8>) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = data_type as i32;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.raw_data = raw;
    t
}

pub(crate) fn floats(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    tensor(name, DataType::FLOAT, dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn halves(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    let raw = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    tensor(name, DataType::FLOAT16, dims, raw)
}

/// A node named `<op>_<output>` with one output.
pub fn node(op: &str, inputs: &[&str], output: &str, attributes: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("{op}_{output}");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output.push(output.into());
    n.attribute = attributes;
    n
}

/// An ints attribute.
pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

fn tensor_attribute(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::TENSOR.into();
    a.t = Some(t).into();
    a
}

/// A float32 tensor [batch, CHANNELS, SIDE, SIDE].
fn image_value(name: &str) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    let mut t = TypeProto::new();
    let tensor = t.mut_tensor_type();
    tensor.elem_type = DataType::FLOAT as i32;
    let shape = tensor.shape.mut_or_insert_default();
    let mut batch = graph::proto::tensor_shape_proto::Dimension::new();
    batch.set_dim_param("batch".into());
    shape.dim.push(batch);
    for d in [CHANNELS, SIDE, SIDE] {
        let mut dim = graph::proto::tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d as i64);
        shape.dim.push(dim);
    }
    v.type_ = Some(t).into();
    v
}

fn model(opset: i64, ir_version: i64) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = ir_version;
    let mut o = OperatorSetIdProto::new();
    o.version = opset;
    m.opset_import.push(o);
    let g = m.graph.mut_or_insert_default();
    g.name = "conv".into();
    g.input.push(image_value(INPUT));
    g.output.push(image_value("y"));
    m
}

fn write(m: &ModelProto, path: PathBuf) -> PathBuf {
    std::fs::write(&path, m.write_to_bytes().expect("the model encodes")).expect("the model is written");
    path
}

/// 3x3 Conv weights [CHANNELS, CHANNELS, 3, 3] whose output channels have max |w| of `amax[c]` (0: all zero).
fn conv_weights(seed: u64, amax: &[f32]) -> Vec<f32> {
    let per = CHANNELS * 9;
    let mut w = random(CHANNELS * per, seed, 1.0);
    for (c, &a) in amax.iter().enumerate() {
        let ch = &mut w[c * per..(c + 1) * per];
        let m = ch.iter().fold(0f32, |m, v| m.max(v.abs()));
        ch.iter_mut().for_each(|v| *v *= a / m);
    }
    w
}

/// An FP32 CNN (opset 13) whose first Conv has an all-zero output channel, one of max |w| 1e-6 (its FP16 scale
/// amax/127 underflows to 0), two of 2e-4 and 1e-3 (FP16 subnormal scales), the rest ordinary; a
/// BatchNormalization left unfolded amplifies the 2e-4 and 1e-3 channels back to the others' size, a ReLU,
/// a second Conv, and the output. Written to `dir/tiny_channels.onnx`.
pub fn tiny_channel_cnn(dir: &Path) -> PathBuf {
    let mut m = model(13, 7);
    let g = m.graph.mut_or_insert_default();
    let mut amax1 = vec![0.4f32; CHANNELS];
    amax1[1] = 0.0;
    amax1[2] = 1e-6;
    amax1[3] = 2e-4;
    amax1[4] = 1e-3;
    // BN: y = gamma (x - mean) / sqrt(var + eps) + beta; gamma brings the small channels to the others' size.
    let mut gamma = vec![1.0f32; CHANNELS];
    gamma[3] = 0.4 / 2e-4;
    gamma[4] = 0.4 / 1e-3;
    let var = vec![1.0f32; CHANNELS];
    let mean = vec![0.0f32; CHANNELS];
    let beta = random(CHANNELS, 11, 0.05);
    g.initializer.extend([
        floats("w1", &[CHANNELS, CHANNELS, 3, 3], &conv_weights(1, &amax1)),
        floats("b1", &[CHANNELS], &random(CHANNELS, 2, 0.01)),
        floats("gamma", &[CHANNELS], &gamma),
        floats("beta", &[CHANNELS], &beta),
        floats("mean", &[CHANNELS], &mean),
        floats("var", &[CHANNELS], &var),
        floats("w2", &[CHANNELS, CHANNELS, 3, 3], &conv_weights(3, &[0.3; CHANNELS])),
        floats("b2", &[CHANNELS], &random(CHANNELS, 4, 0.01)),
    ]);
    let pads = || vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3])];
    g.node.extend([
        node("Conv", &[INPUT, "w1", "b1"], "c1", pads()),
        node("BatchNormalization", &["c1", "gamma", "beta", "mean", "var"], "bn", vec![]),
        node("Relu", &["bn"], "r", vec![]),
        node("Conv", &["r", "w2", "b2"], "y", pads()),
    ]);
    write(&m, dir.join("tiny_channels.onnx"))
}

/// An FP16 Q/DQ graph (opset 19) as a Paddle export quantized with FP16 float parts looks: x -> Cast FP16 ->
/// Q/DQ -> Conv (int8 weights behind a DequantizeLinear with FP16 scales) -> HardSwish written out
/// (x * Clip(x + 3, 0, 6) / 6, its constants Constant -> Cast FP16 nodes) -> Q/DQ -> Conv -> Cast float32 -> y.
/// ONNX Runtime's CPU provider has no FP16 kernels for these ops; with its graph rewrites on, constant folding
/// turns the Constant -> Cast chains into initializers and the float32 islands it runs the FP16 layers in
/// grow, dropping FP16 roundings the graph has: the optimized session's outputs differ from the graph's.
/// Written to `dir/fp16_qdq_hardswish.onnx`.
pub fn fp16_qdq_hardswish(dir: &Path) -> PathBuf {
    let mut m = model(19, 9);
    let g = m.graph.mut_or_insert_default();
    let weights = |seed: u64| -> Vec<u8> {
        random(CHANNELS * CHANNELS * 9, seed, 127.0).iter().map(|v| v.round() as i8 as u8).collect()
    };
    g.initializer.extend([
        tensor("wq", DataType::INT8, &[CHANNELS, CHANNELS, 3, 3], weights(5)),
        tensor("wq2", DataType::INT8, &[CHANNELS, CHANNELS, 3, 3], weights(6)),
        halves("w_scale", &[CHANNELS], &[0.002; CHANNELS]),
        tensor("w_zero", DataType::INT8, &[CHANNELS], vec![0; CHANNELS]),
        tensor("zero_point", DataType::INT8, &[], vec![0]),
        halves("x_scale", &[], &[3.0 / 127.0]),
        halves("a_scale", &[], &[4.0 / 127.0]),
    ]);
    let to16 = || vec![int("to", DataType::FLOAT16 as i64)];
    let pads = || vec![ints("pads", &[1, 1, 1, 1])];
    let mut nodes = vec![
        node("Cast", &[INPUT], "x16", to16()),
        node("QuantizeLinear", &["x16", "x_scale", "zero_point"], "xq", vec![]),
        node("DequantizeLinear", &["xq", "x_scale", "zero_point"], "xd", vec![]),
        node("DequantizeLinear", &["wq", "w_scale", "w_zero"], "wd", vec![int("axis", 0)]),
        node("Conv", &["xd", "wd"], "c", pads()),
    ];
    for (name, v) in [("three", 3.0f32), ("low", 0.0), ("six", 6.0)] {
        let constant = format!("{name}_f32");
        nodes.push(node("Constant", &[], &constant, vec![tensor_attribute("value", floats(name, &[], &[v]))]));
        nodes.push(node("Cast", &[&constant], name, to16()));
    }
    nodes.extend([
        node("Add", &["c", "three"], "shifted", vec![]),
        node("Clip", &["shifted", "low", "six"], "clipped", vec![]),
        node("Mul", &["c", "clipped"], "gated", vec![]),
        node("Div", &["gated", "six"], "hardswish", vec![]),
        node("QuantizeLinear", &["hardswish", "a_scale", "zero_point"], "aq", vec![]),
        node("DequantizeLinear", &["aq", "a_scale", "zero_point"], "ad", vec![]),
        node("DequantizeLinear", &["wq2", "w_scale", "w_zero"], "wd2", vec![int("axis", 0)]),
        node("Conv", &["ad", "wd2"], "c2", pads()),
        node("Cast", &["c2"], "y", vec![int("to", DataType::FLOAT as i64)]),
    ]);
    g.node.extend(nodes);
    write(&m, dir.join("fp16_qdq_hardswish.onnx"))
}

/// `n` samples of the models' input (seeds `first..first + n`, values in [-2, 2)) as `.npz` files in `dir`
/// (created), named so that they sort in seed order.
pub fn write_samples(dir: &Path, first: u64, n: u64) -> PathBuf {
    write_sample_files(dir, first, n, |seed| random(CHANNELS * SIDE * SIDE, seed + 1000, 2.0))
}

fn write_sample_files(dir: &Path, first: u64, n: u64, values: impl Fn(u64) -> Vec<f32>) -> PathBuf {
    std::fs::create_dir_all(dir).expect("the sample folder is created");
    for seed in first..first + n {
        let a = ndarray::Array4::from_shape_vec((1, CHANNELS, SIDE, SIDE), values(seed)).expect("a sample");
        let file = std::fs::File::create(dir.join(format!("{seed:05}.npz"))).expect("the .npz is created");
        let mut npz = ndarray_npy::NpzWriter::new(file);
        npz.add_array(INPUT, &a).expect("the array is written");
        npz.finish().expect("the .npz is finished");
    }
    dir.to_path_buf()
}

/// An FP32 model (opset 13) for the scale methods' trade-off: Neg, then a 3x3 Conv as the output (the Neg makes
/// the Conv's input an activation: a graph input is the image, whose range is always its max). Fed
/// [`write_outlier_samples`], the Conv's quantized input is a dense bulk with rare large values in channel 0.
/// With `reads_outliers` the output needs them (a method that clips them, entropy here, loses them); without,
/// the Conv's weights for channel 0 are zero, so only the bulk's resolution counts (max calibration spends it
/// on the outliers). Written to `dir/outlier_conv.onnx` or `dir/outlier_conv_ignored.onnx`.
pub fn outlier_conv(dir: &Path, reads_outliers: bool) -> PathBuf {
    let mut m = model(13, 7);
    let g = m.graph.mut_or_insert_default();
    let mut w = conv_weights(21, &[0.3; CHANNELS]);
    if !reads_outliers {
        for per_output in w.chunks_mut(CHANNELS * 9) {
            per_output[..9].fill(0.0);
        }
    }
    g.initializer
        .extend([floats("w", &[CHANNELS, CHANNELS, 3, 3], &w), floats("b", &[CHANNELS], &random(CHANNELS, 22, 0.01))]);
    let attrs = vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3])];
    g.node.extend([node("Neg", &[INPUT], "activation", vec![]), node("Conv", &["activation", "w", "b"], "y", attrs)]);
    write(&m, dir.join(if reads_outliers { "outlier_conv.onnx" } else { "outlier_conv_ignored.onnx" }))
}

/// Input channels' scales of [`depthwise_cnn`]: ranges 800 times apart, as depthwise Conv inputs of real
/// CNNs reach (on the Paddle PP-LCNet a median channel a twentieth of the largest, the smallest a hundredth).
pub const DEPTHWISE_CHANNEL_SCALES: [f32; CHANNELS] = [4.0, 0.02, 0.3, 0.005, 1.5, 0.05, 0.8, 0.01];

/// A depthwise block (opset 13): the input times [`DEPTHWISE_CHANNEL_SCALES`] per channel, a 3x3 depthwise
/// Conv (group = channels), and the output divided by the same scales (a float Mul), so that every channel
/// counts alike in the output. The depthwise Conv's input channels span ranges 800 times apart, so one
/// per-tensor INT8 scale leaves the small ones almost nothing. Written to `dir/depthwise_cnn.onnx`.
pub fn depthwise_cnn(dir: &Path) -> PathBuf {
    let mut m = model(13, 7);
    let g = m.graph.mut_or_insert_default();
    let inverse: Vec<f32> = DEPTHWISE_CHANNEL_SCALES.iter().map(|s| 1.0 / s).collect();
    g.initializer.extend([
        floats("scales", &[1, CHANNELS, 1, 1], &DEPTHWISE_CHANNEL_SCALES),
        floats("dw", &[CHANNELS, 1, 3, 3], &random(CHANNELS * 9, 31, 1.0)),
        floats("inverse", &[1, CHANNELS, 1, 1], &inverse),
    ]);
    let dw = vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3]), int("group", CHANNELS as i64)];
    g.node.extend([
        node("Mul", &[INPUT, "scales"], "activation", vec![]),
        node("Conv", &["activation", "dw"], "depthwise", dw),
        node("Mul", &["depthwise", "inverse"], "y", vec![]),
    ]);
    write(&m, dir.join("depthwise_cnn.onnx"))
}

/// Channels of [`max_pool_cnn`]'s pooled layers: enough for TensorRT's INT8 convolutions.
pub const POOLED_CHANNELS: usize = 16;

/// A model whose output holds the batch on its second axis, as CTC recognizers exported sequence-first do
/// (`[time, batch, classes]`): `y = Transpose(x, [1, 0, 2, 3])`, declared `[CHANNELS, batch, SIDE, SIDE]`. Each
/// sample's values, moved back to the front, are its input's. Written to `dir/sequence_first.onnx`.
pub fn sequence_first(dir: &Path) -> PathBuf {
    let mut m = model(13, 7);
    let g = m.graph.mut_or_insert_default();
    g.node.push(node("Transpose", &[INPUT], "y", vec![ints("perm", &[1, 0, 2, 3])]));
    let dims = &mut g.output[0].type_.mut_or_insert_default().mut_tensor_type().shape.mut_or_insert_default().dim;
    dims.swap(0, 1);
    write(&m, dir.join("sequence_first.onnx"))
}

/// Who else reads the input of [`max_pool_cnn`]'s pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolInput {
    /// The pool alone.
    Alone,
    /// Also an Add after the second Conv, as a residual input: quantized for TensorRT.
    AlsoAdded,
    /// Also a Concat with the second Conv's output, as YOLO's SPPF block has it: read in float.
    AlsoConcatenated,
    /// Also a wider (5x5) MaxPool, whose output `pooled_wide` is added to the second Conv's output, as SPP
    /// blocks pool one tensor at several sizes.
    AlsoPooledWider,
}

/// A CNN (opset 13) with a max pool between Convs, as ResNet stems, OriNet and MTCNN have them: Conv (to
/// [`POOLED_CHANNELS`]) -> Relu -> `activated` -> MaxPool 3x3 (stride 1, same size) -> `pooled` -> Conv -> Relu ->
/// 1x1 Conv (back to [`CHANNELS`]) -> `y`; `reader` says what else reads `activated`. Written to
/// `dir/max_pool_cnn_<reader>.onnx`.
pub fn max_pool_cnn(dir: &Path, reader: PoolInput) -> PathBuf {
    let mut m = model(13, 7);
    let g = m.graph.mut_or_insert_default();
    let p = POOLED_CHANNELS;
    let last_in = if reader == PoolInput::AlsoConcatenated { 2 * p } else { p };
    g.initializer.extend([
        floats("w1", &[p, CHANNELS, 3, 3], &random(p * CHANNELS * 9, 41, 0.3)),
        floats("w2", &[p, p, 3, 3], &random(p * p * 9, 43, 0.2)),
        floats("w3", &[CHANNELS, last_in, 1, 1], &random(CHANNELS * last_in, 47, 0.3)),
    ]);
    let pads = || vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3])];
    let pool = vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3]), ints("strides", &[1, 1])];
    g.node.extend([
        node("Conv", &[INPUT, "w1"], "c1", pads()),
        node("Relu", &["c1"], "activated", vec![]),
        node("MaxPool", &["activated"], "pooled", pool),
        node("Conv", &["pooled", "w2"], "c2", pads()),
    ]);
    let second = match reader {
        PoolInput::Alone => "c2",
        PoolInput::AlsoAdded => {
            g.node.push(node("Add", &["c2", "activated"], "sum", vec![]));
            "sum"
        }
        PoolInput::AlsoConcatenated => {
            g.node.push(node("Concat", &["c2", "activated"], "sum", vec![int("axis", 1)]));
            "sum"
        }
        PoolInput::AlsoPooledWider => {
            let wide = vec![ints("pads", &[2, 2, 2, 2]), ints("kernel_shape", &[5, 5]), ints("strides", &[1, 1])];
            g.node.push(node("MaxPool", &["activated"], "pooled_wide", wide));
            g.node.push(node("Add", &["c2", "pooled_wide"], "sum", vec![]));
            "sum"
        }
    };
    g.node.extend([
        node("Relu", &[second], "r2", vec![]),
        node("Conv", &["r2", "w3"], "y", vec![ints("kernel_shape", &[1, 1])]),
    ]);
    write(&m, dir.join(format!("max_pool_cnn_{reader:?}.onnx")))
}

/// A hybrid block (opset 13), as MobileViT-like models mix them: [`depthwise_cnn`]'s depthwise block, then a
/// linear layer over its channels (Transpose to channels last, MatMul by a constant `[CHANNELS, CHANNELS]`,
/// Transpose back), so that the model has a depthwise Conv input to equalize and a GEMM input to smooth. With
/// `shared`, the MatMul reads the depthwise Conv's input itself (over its last axis, SIDE wide) and its output is
/// added to the depthwise block's: one tensor read by both kinds. Written to `dir/hybrid.onnx` or
/// `dir/hybrid_shared.onnx`.
pub fn hybrid(dir: &Path, shared: bool) -> PathBuf {
    let mut m = model(13, 7);
    let g = m.graph.mut_or_insert_default();
    let inverse: Vec<f32> = DEPTHWISE_CHANNEL_SCALES.iter().map(|s| 1.0 / s).collect();
    let k = if shared { SIDE } else { CHANNELS };
    g.initializer.extend([
        floats("scales", &[1, CHANNELS, 1, 1], &DEPTHWISE_CHANNEL_SCALES),
        floats("dw", &[CHANNELS, 1, 3, 3], &random(CHANNELS * 9, 31, 1.0)),
        floats("inverse", &[1, CHANNELS, 1, 1], &inverse),
        floats("w", &[k, k], &random(k * k, 37, 0.5)),
    ]);
    let dw = vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3]), int("group", CHANNELS as i64)];
    g.node.extend([
        node("Mul", &[INPUT, "scales"], "activation", vec![]),
        node("Conv", &["activation", "dw"], "depthwise", dw),
        node("Mul", &["depthwise", "inverse"], "block", vec![]),
    ]);
    if shared {
        g.node.extend([
            node("MatMul", &["activation", "w"], "mixed", vec![]),
            node("Add", &["block", "mixed"], "y", vec![]),
        ]);
    } else {
        g.node.extend([
            node("Transpose", &["block"], "tokens", vec![ints("perm", &[0, 2, 3, 1])]),
            node("MatMul", &["tokens", "w"], "mixed", vec![]),
            node("Transpose", &["mixed"], "y", vec![ints("perm", &[0, 3, 1, 2])]),
        ]);
    }
    let name = if shared { "hybrid_shared.onnx" } else { "hybrid.onnx" };
    write(&m, dir.join(name))
}

/// A residual block on the [`outlier_conv`] input: `y = activation + Conv(activation)`, the Conv's weights
/// small (0.02), so the output is mostly the residual stream itself. Quantizing the Add's residual input
/// rounds the whole output at that tensor's resolution (and clips or coarsens it, whatever the method, on
/// [`write_outlier_samples`]); kept float, only the small Conv branch carries INT8 error. Written to
/// `dir/residual_conv.onnx`.
pub fn residual_conv(dir: &Path) -> PathBuf {
    let mut m = model(13, 7);
    let g = m.graph.mut_or_insert_default();
    g.initializer.extend([
        floats("w", &[CHANNELS, CHANNELS, 3, 3], &conv_weights(23, &[0.02; CHANNELS])),
        floats("b", &[CHANNELS], &random(CHANNELS, 24, 0.01)),
    ]);
    let attrs = vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3])];
    g.node.extend([
        node("Neg", &[INPUT], "activation", vec![]),
        node("Conv", &["activation", "w", "b"], "branch", attrs),
        node("Add", &["activation", "branch"], "y", vec![]),
    ]);
    write(&m, dir.join("residual_conv.onnx"))
}

/// Like [`write_samples`], but values in [-0.2, 0.2), and in channel 0 about one in 67 replaced by one of
/// magnitude 0.5 to 6: a bulk with a sparse tail reaching 30 times its edge, in about 9 samples of 10 (2.2 per
/// sample), so that clipping it costs most samples, not a few.
pub fn write_outlier_samples(dir: &Path, first: u64, n: u64) -> PathBuf {
    write_sample_files(dir, first, n, |seed| {
        let mut values = random(CHANNELS * SIDE * SIDE, seed + 5000, 0.2);
        let channel = SIDE * SIDE;
        let picks = random(channel, seed + 9000, 1.0);
        let sizes = random(channel, seed + 13000, 1.0);
        for ((v, p), size) in values[..channel].iter_mut().zip(picks).zip(sizes) {
            if p.abs() > 0.985 {
                *v = (0.5 + 5.5 * size.abs()) * p.signum();
            }
        }
        values
    })
}
