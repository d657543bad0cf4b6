"""Output SQNR and cosine of INT8 models against the FP32 model on a folder of 224x224 crops (ImageNet
mean/std), and the FP32 forward pass's time over them (BENCHMARKS.md, "Choices by measurement").

usage: python auto_eval.py FP32.onnx CROPS_DIR [INT8.onnx ...]
INT8 models run unoptimized (what their graphs compute), FP32 optimized; 2 threads, batch 16.
"""
import glob
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def load(folder):
    files = sorted(glob.glob(folder + "/*.png"))
    pixels = [np.asarray(Image.open(f).convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0 for f in files]
    return np.stack([(p - MEAN) / STD for p in pixels]).astype(np.float32)


def run(path, x, optimized):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    start = time.time()
    out = [s.run(None, {name: x[i:i + 16]})[0].reshape(len(x[i:i + 16]), -1) for i in range(0, len(x), 16)]
    return np.concatenate(out), time.time() - start


if __name__ == "__main__":
    x = load(sys.argv[2])
    ref, seconds = run(sys.argv[1], x, True)
    print(f"FP32 forward over {len(x)} preloaded images: {seconds:.1f} s")
    for m in sys.argv[3:]:
        out, _ = run(m, x, False)
        sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - out) ** 2).sum())
        cos = np.mean((ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1))
        print(f"{m}: SQNR {sqnr:.2f} dB, cosine {cos:.5f} on {len(x)} images")
