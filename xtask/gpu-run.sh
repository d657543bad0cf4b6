#!/bin/bash
# Runs on the lent GPU machine, from the repository copy, once the last chunk of `cargo xtask gpu-pack`
# has been appended to /tmp/i8/blob (see .int8kit/carry/plan.txt). `gpu-run.sh tests` runs the crates' device
# tests (the invariants); otherwise the arguments go to `bench gpu-check` (the measurements).
set -euo pipefail
here=$(pwd)
if [ ! -x /tmp/i8/bundle/bench ]; then
  (cd /tmp/i8 && "$here/.int8kit/carry/zstd" -d -q -c blob | tar xf -)
fi
# A rebuilt bench binary may travel on its own (10 MB) instead of a new bundle.
if [ -f .int8kit/carry/bench ]; then cp .int8kit/carry/bench /tmp/i8/bundle/bench; fi
nv=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=/tmp/i8/bundle/onnxruntime/capi:$nv/cu13/lib:$nv/cudnn/lib:/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export ORT_DYLIB_PATH=/tmp/i8/bundle/onnxruntime/capi/libonnxruntime.so.1.31.1
export INT8KIT_ROOT=$here
# Every CUDA stream capture logged with its thread and backtrace (bench/scripts/capture_trace.c).
if [ "${INT8KIT_TRACE_CAPTURES:-}" = 1 ]; then export LD_PRELOAD=/tmp/i8/bundle/capture_trace.so; fi
if [ "${1:-}" = tests ]; then
  shift
  export INT8KIT_TEST_DEVICE=${INT8KIT_TEST_DEVICE:-cuda:0}
  status=0
  /tmp/i8/bundle/tests/calibrate-device device_tests --test-threads 1 "$@" || status=1
  /tmp/i8/bundle/tests/evaluate-device --test-threads 1 "$@" || status=1
  exit $status
fi
exec /tmp/i8/bundle/bench gpu-check --bundle /tmp/i8/bundle --out "${OUT:-/tmp/i8/out}" "$@"
