"""INT8 speed on a CPU whose ONNX Runtime INT8 kernels are real (the GPU machine's Xeon: AMX, AVX512-VNNI).

Times every *.onnx beside this script (FP32 and each tool's Q/DQ model of a 1x28x28 fixture) on ONNX
Runtime's CPU provider: 16 threads, batch given on the command line (256), random inputs, three warm-up runs,
then the median of 5 rounds of 4 runs. See BENCHMARKS.md, "INT8 speed on the Xeon", for the steps.
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
for path in sorted(glob.glob(os.path.join(here, "*.onnx"))):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 16
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
    for _ in range(3):
        s.run(None, {i.name: x})
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            s.run(None, {i.name: x})
        times.append((time.perf_counter() - t) / 4)
    t = sorted(times)[2]
    print(f"{os.path.basename(path)}: {batch / t:.0f} images/s (median of 5 x 4 runs, batch {batch}, 16 threads)", flush=True)
