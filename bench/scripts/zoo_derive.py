"""Storage variants of a zoo model (`cargo xtask bench zoo`, `derive` in bench/zoo/zoo.toml): the same network
and weights as the pinned file, stored the ways deployed models often are, so that the zoo covers them with
real weights.

usage: python zoo_derive.py IN.onnx OUT.onnx [--fp16-weights] [--uint8-input MEAN,MEAN,MEAN] [--dynamic-size]
                          [--embedding TENSOR]

--fp16-weights: every float32 initializer stored as float16, read through a Cast to float32 (what FP16
    "storage" exporters write: the arithmetic stays float32).
--uint8-input: the graph input becomes the uint8 pixel levels; a Cast to float32 and a Sub of the per-channel
    MEAN (last axis, NHWC) feed what the model read before, as TF exports with in-graph preprocessing do.
--dynamic-size: the first input's height and width (NCHW axes 2 and 3) become symbolic, for a graph that
    computes every shape from its input (Shape ops, position embeddings resized in the graph) but was exported
    with the size it was traced at declared fixed; the inferred value_info of that size is dropped.
--embedding: the model's only output becomes `embedding`, the first token of TENSOR ([batch, tokens, width]:
    a ViT's class token after its last LayerNorm, what embedding users read); the nodes only the old outputs
    needed are dropped.
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def fp16_weights(model):
    g = model.graph
    casts = []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(values, name + "_fp16"))
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], name=name + "_to_fp32", to=TensorProto.FLOAT))
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    # Initializers listed as graph inputs (IR < 4) are now computed: drop them from the inputs.
    computed = {c.output[0] for c in casts}
    kept = [i for i in g.input if i.name not in computed]
    del g.input[:]
    g.input.extend(kept)


def uint8_input(model, mean):
    g = model.graph
    x = g.input[0]
    name = x.name
    x.type.tensor_type.elem_type = TensorProto.UINT8
    raw = name + "_uint8"
    x.name = raw
    mean_name = name + "_mean"
    g.initializer.append(numpy_helper.from_array(np.array(mean, np.float32), mean_name))
    pre = [
        helper.make_node("Cast", [raw], [name + "_levels"], name=name + "_cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", [name + "_levels", mean_name], [name], name=name + "_minus_mean"),
    ]
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(pre + nodes)


def dynamic_size(model):
    g = model.graph
    dims = g.input[0].type.tensor_type.shape.dim
    for axis, name in ((2, "height"), (3, "width")):
        dims[axis].ClearField("dim_value")
        dims[axis].dim_param = name
    for output in g.output:
        for d in output.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 1:
                d.ClearField("dim_value")
    del g.value_info[:]


def embedding(model, tensor):
    g = model.graph
    index = tensor + "_first_token"
    g.initializer.append(numpy_helper.from_array(np.array(0, np.int64), index))
    g.node.append(helper.make_node("Gather", [tensor, index], ["embedding"], name="embedding_gather", axis=1))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch_size", "width"]))
    # Keep what the new output needs, in the original order.
    needed, kept = {"embedding"}, []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del g.node[:]
    g.node.extend(reversed(kept))
    used = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(used)
    del g.value_info[:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--fp16-weights", action="store_true")
    p.add_argument("--uint8-input")
    p.add_argument("--dynamic-size", action="store_true")
    p.add_argument("--embedding")
    a = p.parse_args()
    model = onnx.load(a.input)
    if a.fp16_weights:
        fp16_weights(model)
    if a.uint8_input:
        uint8_input(model, [float(v) for v in a.uint8_input.split(",")])
    if a.dynamic_size:
        dynamic_size(model)
    if a.embedding:
        embedding(model, a.embedding)
    onnx.checker.check_model(model)
    onnx.save(model, a.output)


if __name__ == "__main__":
    main()
