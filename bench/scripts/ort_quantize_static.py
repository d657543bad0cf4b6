"""The peer in `cargo xtask bench`: ONNX Runtime's own quantize_static on the images int8kit calibrates with.

The images arrive already preprocessed by int8kit (raw little-endian float32, NCHW), so both tools see
exactly the same tensors. Settings are the ones the benchmark issue fixes: QDQ format, per-channel
weights, symmetric INT8 activations and weights; everything else is quantize_static's default.
Run by xtask inside its own venv; its wall time and peak RSS are measured from outside.
"""

import time

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

import peer_args


class RawBatches(CalibrationDataReader):
    """Yields the preprocessed images in batches that divide their number (a short last batch crashed it)."""

    def __init__(self, data, input_name, batch):
        self.data = data
        self.input_name = input_name
        self.batch = batch
        self.next = 0

    def get_next(self):
        if self.next >= len(self.data):
            return None
        chunk = np.ascontiguousarray(self.data[self.next : self.next + self.batch])
        self.next += self.batch
        return {self.input_name: chunk}

    def rewind(self):
        self.next = 0


def main():
    a, shape = peer_args.parse(["Entropy", "Percentile", "MinMax"])
    data = peer_args.as_input_type(np.memmap(a.inputs, dtype="<f4", mode="r", shape=shape), a.model, a.input_name)
    start = time.monotonic()
    quantize_static(
        a.model,
        a.out,
        RawBatches(data, a.input_name, a.batch),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, a.method),
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    print(
        f"quantize_static {a.method}: {shape[0]} images in {time.monotonic() - start:.1f} s "
        f"(onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, numpy {np.__version__})"
    )


if __name__ == "__main__":
    main()
