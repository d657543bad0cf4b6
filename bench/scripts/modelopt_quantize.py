"""The second peer in `cargo xtask bench`: NVIDIA ModelOpt's ONNX INT8 PTQ on the images int8kit calibrates with.

The images arrive already preprocessed by int8kit (raw little-endian float32, NCHW), so all tools see exactly
the same tensors. ModelOpt's defaults otherwise (its TensorRT-oriented Q/DQ placement, FP16 float parts),
calibrated on the CPU (`calibration_eps=["cpu"]`) with the requested batch (`calibration_shapes`), entropy
calibration (ONNX Runtime's histogram calibrator underneath). Run by xtask inside its own venv; its wall
time and peak RSS are measured from outside.
"""

import time

import numpy as np
import onnx

import peer_args


def main():
    a, shape = peer_args.parse(
        ["entropy", "max"],
        lambda p: p.add_argument("--float-type", choices=["fp16", "fp32"], default="fp16"),
    )
    # ModelOpt's own entry point does not log to stdout when imported this way; keep it quiet and timed.
    from modelopt.onnx.quantization import quantize
    import modelopt

    data = peer_args.as_input_type(np.fromfile(a.inputs, dtype="<f4").reshape(shape), a.model, a.input_name)
    start = time.monotonic()
    quantize(
        onnx_path=a.model,
        quantize_mode="int8",
        calibration_data=data,
        calibration_method=a.method,
        calibration_eps=["cpu"],
        calibration_shapes=f"{a.input_name}:{a.batch}x{'x'.join(str(d) for d in shape[1:])}",
        high_precision_dtype=a.float_type,
        output_path=a.out,
    )
    print(
        f"modelopt {modelopt.__version__} int8 {a.method}, float parts {a.float_type}: {shape[0]} images in "
        f"{time.monotonic() - start:.1f} s (onnx {onnx.__version__}, numpy {np.__version__})"
    )


if __name__ == "__main__":
    main()
