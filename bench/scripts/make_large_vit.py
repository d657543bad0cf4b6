"""Builds a random-weight ViT of a real size as ONNX (opset 17), for `cargo xtask bench --large`.

The graph is what timm/torch exports of a ViT look like: Conv patch embedding, class token and position
embedding, per block LayerNormalization -> QKV MatMul -> attention (MatMul, Softmax, MatMul) -> projection,
residual Add, LayerNormalization -> MLP (MatMul, Gelu as Erf, MatMul), residual Add; final LayerNorm and a head
on the class token. Weights are seeded normal values scaled like a trained model's, so activations have
realistic ranges; the function is meaningless. Models above protobuf's 2 GiB limit (or with --external) keep
their weights in one external data file beside the model.

    python make_large_vit.py --preset vit_l14 --out DIR      # ViT-L/14: 304 M parameters, 1.2 GB
    python make_large_vit.py --preset vit_h14 --out DIR      # ViT-H/14: 632 M parameters, 2.5 GB (external)
"""

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRESETS = {
    # name: (depth, width, heads, mlp, patch, image)
    "vit_l14": (24, 1024, 16, 4096, 14, 224),
    "vit_h14": (32, 1280, 16, 5120, 14, 224),
    "vit_tiny": (2, 64, 2, 128, 14, 224),  # for a quick check of this script
}


def build(depth, width, heads, mlp, patch, image, seed):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def w(name, shape, std):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape, dtype=np.float32) * std), name))
        return name

    def const(name, values, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.array(values, dtype=dtype), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=f"/{output}/{op}", **attrs))
        return output

    tokens = (image // patch) ** 2 + 1
    head_dim = width // heads
    x = node("Conv", ["pixel_values", w("patch.weight", (width, 3, patch, patch), 0.02), w("patch.bias", (width,), 0.02)],
             "patch", kernel_shape=[patch, patch], strides=[patch, patch])
    x = node("Reshape", [x, const("shape_bwn", [0, width, -1])], "patch_flat")
    x = node("Transpose", [x], "patch_tokens", perm=[0, 2, 1])
    batch_shape = node("Shape", ["pixel_values"], "input_shape", start=0, end=1)
    cls_shape = node("Concat", [batch_shape, const("one_one_width", [1, width])], "cls_shape", axis=0)
    cls = node("Expand", [w("cls_token", (1, 1, width), 0.02), cls_shape], "cls")
    x = node("Concat", [cls, x], "tokens", axis=1)
    x = node("Add", [x, w("pos_embed", (1, tokens, width), 0.02)], "embedded")
    qkv_shape = const("shape_qkv", [0, 0, 3, heads, head_dim])
    merged_shape = const("shape_merged", [0, 0, width])
    scale = const("attn_scale", [head_dim ** -0.5], np.float32)
    sqrt2 = const("sqrt2", [2 ** 0.5], np.float32)
    one, half = const("one", [1.0], np.float32), const("half", [0.5], np.float32)
    for b in range(depth):
        p = f"blocks.{b}"
        ones = lambda n, name: const(name, np.ones(n) + rng.standard_normal(n) * 0.1, np.float32)
        h = node("LayerNormalization", [x, ones(width, f"{p}.ln1.weight"), w(f"{p}.ln1.bias", (width,), 0.02)],
                 f"{p}.ln1", axis=-1, epsilon=1e-6)
        h = node("MatMul", [h, w(f"{p}.qkv.weight", (width, 3 * width), width ** -0.5)], f"{p}.qkv_mm")
        h = node("Add", [h, w(f"{p}.qkv.bias", (3 * width,), 0.02)], f"{p}.qkv")
        h = node("Reshape", [h, qkv_shape], f"{p}.qkv_split")
        h = node("Transpose", [h], f"{p}.qkv_heads", perm=[2, 0, 3, 1, 4])
        q = node("Gather", [h, const(f"{p}.i0", 0)], f"{p}.q", axis=0)
        k = node("Gather", [h, const(f"{p}.i1", 1)], f"{p}.k", axis=0)
        v = node("Gather", [h, const(f"{p}.i2", 2)], f"{p}.v", axis=0)
        q = node("Mul", [q, scale], f"{p}.q_scaled")
        kt = node("Transpose", [k], f"{p}.k_t", perm=[0, 1, 3, 2])
        a = node("MatMul", [q, kt], f"{p}.scores")
        a = node("Softmax", [a], f"{p}.probs", axis=-1)
        a = node("MatMul", [a, v], f"{p}.context")
        a = node("Transpose", [a], f"{p}.context_t", perm=[0, 2, 1, 3])
        a = node("Reshape", [a, merged_shape], f"{p}.context_merged")
        a = node("MatMul", [a, w(f"{p}.proj.weight", (width, width), width ** -0.5)], f"{p}.proj_mm")
        a = node("Add", [a, w(f"{p}.proj.bias", (width,), 0.02)], f"{p}.proj")
        x = node("Add", [x, a], f"{p}.residual1")
        h = node("LayerNormalization", [x, ones(width, f"{p}.ln2.weight"), w(f"{p}.ln2.bias", (width,), 0.02)],
                 f"{p}.ln2", axis=-1, epsilon=1e-6)
        h = node("MatMul", [h, w(f"{p}.fc1.weight", (width, mlp), width ** -0.5)], f"{p}.fc1_mm")
        h = node("Add", [h, w(f"{p}.fc1.bias", (mlp,), 0.02)], f"{p}.fc1")
        g = node("Div", [h, sqrt2], f"{p}.gelu_div")
        g = node("Erf", [g], f"{p}.gelu_erf")
        g = node("Add", [g, one], f"{p}.gelu_add")
        g = node("Mul", [h, g], f"{p}.gelu_mul")
        h = node("Mul", [g, half], f"{p}.gelu")
        h = node("MatMul", [h, w(f"{p}.fc2.weight", (mlp, width), mlp ** -0.5)], f"{p}.fc2_mm")
        h = node("Add", [h, w(f"{p}.fc2.bias", (width,), 0.02)], f"{p}.fc2")
        x = node("Add", [x, h], f"{p}.residual2")
    x = node("LayerNormalization", [x, const("norm.weight", np.ones(width), np.float32), w("norm.bias", (width,), 0.02)],
             "norm", axis=-1, epsilon=1e-6)
    x = node("Gather", [x, const("cls_index", 0)], "cls_out", axis=1)
    x = node("Gemm", ["cls_out", w("head.weight", (1000, width), width ** -0.5), w("head.bias", (1000,), 0.02)],
             "logits", transB=1)
    graph = helper.make_graph(
        nodes, "vit",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="int8kit bench")
    model.ir_version = 8
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), required=True)
    p.add_argument("--out", required=True, help="folder for <preset>.onnx (and <preset>.onnx.data)")
    p.add_argument("--external", action="store_true", help="weights in an external data file even below 2 GiB")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    model = build(*PRESETS[a.preset], a.seed)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"{a.preset}.onnx")
    size = sum(t.ByteSize() for t in model.graph.initializer)
    external = a.external or size > (2 << 30) - (64 << 20)
    tmp = path + ".tmp"
    if external:
        data = f"{a.preset}.onnx.data"
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                        size_threshold=1024)
    else:
        onnx.save_model(model, tmp)
    os.replace(tmp, path)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"{path}: {params / 1e6:.0f} M parameters, {size / 1e9:.2f} GB of weights{' (external data)' if external else ''}")


if __name__ == "__main__":
    main()
