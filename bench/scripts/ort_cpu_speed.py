"""INT8 speed on a CPU whose ONNX Runtime INT8 kernels are real (the GPU machine's Xeon: AMX, AVX512-VNNI).

Times every *.onnx beside this script (FP32 and each tool's Q/DQ model of a 1x28x28 fixture) on ONNX
Runtime's CPU provider: 16 threads, batch given on the command line (256), random inputs of the model's
input shape, three warm-up runs, then the median of 5 rounds of ROUND runs (second argument, default 4).
Optional third argument: a glob of models (default *.onnx beside this script). See BENCHMARKS.md, "INT8
speed on the Xeon", for the steps.
"""
import onnxruntime as ort, numpy as np, time, sys, glob, os, platform
print("onnxruntime", ort.__version__, "cpus", os.cpu_count())
try:
    print(open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0])
    flags = open("/proc/cpuinfo").read()
    print("amx_int8" in flags, "avx512_vnni" in flags)
except Exception as e:
    print(e)
here = os.path.dirname(os.path.abspath(__file__))
batch = int(sys.argv[1]) if len(sys.argv) > 1 else 256
per_round = int(sys.argv[2]) if len(sys.argv) > 2 else 4
pattern = sys.argv[3] if len(sys.argv) > 3 else os.path.join(here, "*.onnx")
for path in sorted(glob.glob(pattern)):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 16
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) else 1 for d in i.shape[1:]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(3):
        s.run(None, {i.name: x})
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(per_round):
            s.run(None, {i.name: x})
        times.append((time.perf_counter() - t) / per_round)
    t = sorted(times)[2]
    print(f"{os.path.basename(path)}: {batch / t:.1f} images/s (median of 5 x {per_round} runs, batch {batch}, 16 threads)", flush=True)
