"""What the peer scripts of `cargo xtask bench` share: their command line and the batch check.

Each peer runs in a venv of its own, but both scripts sit beside this file, so Python finds it.
"""

import argparse
import sys


def parse(methods, extra=lambda p: None):
    """The peers' arguments (`methods`: the accepted --method values; `extra` adds a peer's own flags), and the
    image batch shape, checked to split into batches of --batch."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True, help="raw float32 file of N*C*H*W values")
    p.add_argument("--shape", required=True, help="N,C,H,W")
    p.add_argument("--input-name", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--method", choices=methods, required=True)
    extra(p)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    shape = tuple(int(x) for x in a.shape.split(","))
    if shape[0] % a.batch != 0:
        sys.exit(f"batch {a.batch} does not divide {shape[0]} images")
    return a, shape


def as_input_type(data, model_path, input_name):
    """The preprocessed images (float32, as int8kit dumps them) in the element type the model's input takes:
    a model with a uint8 input gets the pixel levels as uint8 (they are whole numbers in float32)."""
    import numpy as np
    import onnx

    model = onnx.load(model_path, load_external_data=False)
    for i in model.graph.input:
        if i.name == input_name and i.type.tensor_type.elem_type == onnx.TensorProto.UINT8:
            return np.asarray(data).astype(np.uint8)
    return data
