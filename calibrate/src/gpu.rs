//! Activation statistics computed on the GPU, next to the tensors ONNX Runtime's CUDA EP left there.
//!
//! The rules are the CPU path's ([`crate::histogram`]): finite count, min, max, NaN/±Inf counts and the |x|
//! histogram over `[0, 2^e)` whose range only grows by pair-merging bins. Per batch three kernels run: a
//! reduction (min/max/counts per tensor), an update (grow the range, merge bins, fold the batch into the
//! running totals) and the binning scatter at the updated range. Bin indices come from multiplying by a
//! power of two, which is exact in float32 on both devices, so for equal activations the GPU and CPU
//! statistics are equal bit for bit. Only the final statistics (and a small table of tensor addresses per
//! batch) cross between host and device.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use crate::histogram::{AbsHistogram, TensorStats, BINS};

/// Errors of the device path; they name what failed so that the user can fall back to `--device cpu`.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("CUDA driver call failed ({what}): {message}")]
    Driver { what: String, message: String },
    #[error("NVRTC could not compile the statistics kernels: {0}")]
    Compile(String),
}

fn driver(what: &str) -> impl Fn(cudarc::driver::DriverError) -> GpuError + '_ {
    move |e| GpuError::Driver { what: what.to_string(), message: e.to_string() }
}

/// Values per block of the reduction and binning kernels.
const CHUNK: u64 = 1 << 16;
const THREADS: u32 = 256;
/// Words per tensor in the running state and in the per-batch slots.
const WORDS: usize = 8;
const NO_RANGE: i64 = i64::MIN;

const KERNELS: &str = r#"
typedef unsigned long long u64;
typedef long long i64;
#define BINS 4096
#define LOG2_BINS 12
#define WORDS 8
#define NO_RANGE (-9223372036854775807LL - 1)

// Order-preserving key of a finite float (after +0.0 so that -0.0 and 0.0 share one key).
__device__ __forceinline__ unsigned int key_of(float x) {
    unsigned int b = __float_as_uint(x + 0.0f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float float_of(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
// The smallest e with a < 2^e, for finite a > 0 (as histogram.rs: range_exp_for).
__device__ __forceinline__ int range_exp_for(float a) {
    unsigned int bits = __float_as_uint(a) & 0x7fffffffu;
    int biased = (int)(bits >> 23);
    if (biased == 0) { return 32 - __clz(bits & 0x007fffffu) - 149; }
    return biased - 126;
}

// Chunk starts are multiples of 2^16 values from 256-byte aligned buffers: float4 loads (more bytes in
// flight per thread) with a scalar tail.
#define FOR_EACH_VALUE(x, n, VISIT) { \
    u64 n4 = (((u64)(x) & 15) == 0) ? (n) / 4 : 0; \
    const float4* x4 = (const float4*)(x); \
    for (u64 i = threadIdx.x; i < n4; i += blockDim.x) { \
        float4 q = x4[i]; VISIT(q.x); VISIT(q.y); VISIT(q.z); VISIT(q.w); } \
    for (u64 i = 4 * n4 + threadIdx.x; i < (n); i += blockDim.x) { VISIT((x)[i]); } }

// chunks[3*c] = device address, [3*c+1] = values in this chunk, [3*c+2] = tensor index.
// batch[WORDS*t]: 0 min key, 1 max key, 2 finite, 3 nan, 4 +inf, 5 -inf.
extern "C" __global__ void reduce_stats(const u64* chunks, u64* batch) {
    const float* x = (const float*)chunks[3 * blockIdx.x];
    u64 n = chunks[3 * blockIdx.x + 1];
    u64* slot = batch + WORDS * chunks[3 * blockIdx.x + 2];
    unsigned int lo = 0xffffffffu, hi = 0u;
    unsigned int finite = 0, nan = 0, pinf = 0, ninf = 0;
#define STAT(v) { float w = (v); \
        if (isfinite(w)) { unsigned int k = key_of(w); lo = min(lo, k); hi = max(hi, k); finite++; } \
        else if (isnan(w)) { nan++; } else if (w > 0.0f) { pinf++; } else { ninf++; } }
    FOR_EACH_VALUE(x, n, STAT)
    for (int o = 16; o > 0; o >>= 1) {
        lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
        finite += __shfl_xor_sync(0xffffffffu, finite, o);
        nan += __shfl_xor_sync(0xffffffffu, nan, o);
        pinf += __shfl_xor_sync(0xffffffffu, pinf, o);
        ninf += __shfl_xor_sync(0xffffffffu, ninf, o);
    }
    if ((threadIdx.x & 31) == 0) {
        if (finite) { atomicMin(&slot[0], (u64)lo); atomicMax(&slot[1], (u64)hi); atomicAdd(&slot[2], (u64)finite); }
        if (nan) atomicAdd(&slot[3], (u64)nan);
        if (pinf) atomicAdd(&slot[4], (u64)pinf);
        if (ninf) atomicAdd(&slot[5], (u64)ninf);
    }
}

// One block per tensor. state[WORDS*t]: 0 range exponent (NO_RANGE = none yet), 1 min key, 2 max key,
// 3 finite, 4 nan, 5 +inf, 6 -inf. Folds the batch slot into the state, grows the histogram range by
// pair-merging bins, and resets the slot for the next batch.
extern "C" __global__ void update_state(u64* batch, i64* state, u64* hist) {
    __shared__ u64 old[BINS];
    u64* slot = batch + WORDS * blockIdx.x;
    i64* st = state + WORDS * blockIdx.x;
    u64* h = hist + (u64)BINS * blockIdx.x;
    u64 finite = slot[2];
    i64 cur = st[0];
    i64 grow = cur;
    if (finite) {
        float a = fmaxf(fabsf(float_of((unsigned int)slot[0])), fabsf(float_of((unsigned int)slot[1])));
        if (a > 0.0f) {
            i64 e = range_exp_for(a);
            if (cur == NO_RANGE || e > cur) grow = e;
        }
    }
    if (grow != cur && cur != NO_RANGE) {
        int steps = (int)(grow - cur);
        for (int i = threadIdx.x; i < BINS; i += blockDim.x) old[i] = h[i];
        __syncthreads();
        for (int j = threadIdx.x; j < BINS; j += blockDim.x) {
            u64 s = 0;
            if (steps > LOG2_BINS) {
                if (j == 0) for (int i = 0; i < BINS; i++) s += old[i];
            } else if (j < (BINS >> steps)) {
                for (int i = j << steps; i < ((j + 1) << steps); i++) s += old[i];
            }
            h[j] = s;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        st[0] = grow;
        if (finite) {
            if (st[3] == 0) { st[1] = (i64)slot[0]; st[2] = (i64)slot[1]; }
            else { st[1] = min((u64)st[1], slot[0]); st[2] = max((u64)st[2], slot[1]); }
        }
        st[3] += (i64)finite; st[4] += (i64)slot[3]; st[5] += (i64)slot[4]; st[6] += (i64)slot[5];
        slot[0] = 0xffffffffull; slot[1] = 0; slot[2] = 0; slot[3] = 0; slot[4] = 0; slot[5] = 0;
    }
}

// Bins finite |x| at the tensor's (already updated) range into a shared table, then adds it to the
// tensor's running histogram.
extern "C" __global__ void bin_values(const u64* chunks, const i64* state, u64* hist) {
    __shared__ unsigned int table[BINS];
    for (int i = threadIdx.x; i < BINS; i += blockDim.x) table[i] = 0;
    __syncthreads();
    const float* x = (const float*)chunks[3 * blockIdx.x];
    u64 n = chunks[3 * blockIdx.x + 1];
    u64 t = chunks[3 * blockIdx.x + 2];
    i64 e = state[WORDS * t];
    int shift = (e == NO_RANGE) ? 0 : (int)(LOG2_BINS - e);
    if (shift >= -126 && shift <= 126) {
        float k = __uint_as_float((unsigned int)(shift + 127) << 23);
#define BIN(v) { float w = (v); if (isfinite(w)) { \
        atomicAdd(&table[min(__float2uint_rz(__fmul_rn(fabsf(w), k)), (unsigned int)(BINS - 1))], 1u); } }
        FOR_EACH_VALUE(x, n, BIN)
    } else {
        // 2^shift is not a normal float32: bin in double, still exact (as the CPU path does).
        double k = exp2((double)shift);
        for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
            float v = x[i];
            if (isfinite(v)) {
                double p = (double)fabsf(v) * k;
                unsigned int b = p >= (double)(BINS - 1) ? (BINS - 1) : (unsigned int)p;
                atomicAdd(&table[b], 1u);
            }
        }
    }
    __syncthreads();
    u64* h = hist + (u64)BINS * t;
    for (int i = threadIdx.x; i < BINS; i += blockDim.x) {
        if (table[i]) atomicAdd(&h[i], (u64)table[i]);
    }
}
"#;

/// A tensor's values in GPU memory: a CUDA device address and a float32 count.
pub use runtime::DeviceTensor;

/// Running statistics of a fixed list of tensors, kept in GPU memory.
pub struct GpuStats {
    stream: Arc<CudaStream>,
    reduce: CudaFunction,
    update: CudaFunction,
    bin: CudaFunction,
    batch: CudaSlice<u64>,
    state: CudaSlice<i64>,
    hist: CudaSlice<u64>,
    chunks: CudaSlice<u64>,
    tensors: usize,
    /// Most device memory in use (bytes, whole device) seen after a batch.
    memory_peak: usize,
}

impl GpuStats {
    /// Compiles the kernels with NVRTC and allocates the state for `tensors` tensors on `device`.
    pub fn new(device: runtime::Device, tensors: usize) -> Result<GpuStats, GpuError> {
        runtime::cuda_device_check(device)?;
        let runtime::Device::Cuda(ordinal) = device else {
            return Err(GpuError::Driver { what: "device".into(), message: "GpuStats needs a CUDA device".into() });
        };
        let ctx = CudaContext::new(ordinal as usize).map_err(driver("creating the CUDA context"))?;
        let stream = ctx.default_stream();
        // SAFETY: only tries to open the NVRTC library by its usual names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(GpuError::Compile("libnvrtc is not on this machine (it ships with the CUDA toolkit)".into()));
        }
        // Exact float arithmetic: no flush-to-zero of subnormals, no fused multiply-add.
        let opts = cudarc::nvrtc::CompileOptions {
            ftz: Some(false),
            fmad: Some(false),
            use_fast_math: Some(false),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(KERNELS, opts).map_err(|e| GpuError::Compile(e.to_string()))?;
        let module = ctx.load_module(ptx).map_err(driver("loading the kernels"))?;
        let function = |name: &str| module.load_function(name).map_err(driver("finding a kernel"));
        let (reduce, update, bin) = (function("reduce_stats")?, function("update_state")?, function("bin_values")?);
        let mut batch_init = vec![0u64; WORDS * tensors.max(1)];
        for slot in batch_init.chunks_mut(WORDS) {
            slot[0] = u32::MAX as u64;
        }
        let batch = stream.clone_htod(&batch_init).map_err(driver("allocating batch slots"))?;
        let mut state_init = vec![0i64; WORDS * tensors.max(1)];
        for st in state_init.chunks_mut(WORDS) {
            st[0] = NO_RANGE;
        }
        let state = stream.clone_htod(&state_init).map_err(driver("allocating the state"))?;
        let hist = stream.alloc_zeros::<u64>(BINS * tensors.max(1)).map_err(driver("allocating histograms"))?;
        let chunks = stream.alloc_zeros::<u64>(3 * 1024).map_err(driver("allocating the chunk table"))?;
        Ok(GpuStats { stream, reduce, update, bin, batch, state, hist, chunks, tensors, memory_peak: 0 })
    }

    /// Folds one batch: `values[t]` holds tensor t's values for this batch. Waits until the GPU is done, so
    /// the caller may let ONNX Runtime overwrite the buffers afterwards.
    pub fn add(&mut self, values: &[DeviceTensor]) -> Result<(), GpuError> {
        self.launch(values, false).map(|_| ())
    }

    /// As [`GpuStats::add`], timing each kernel with CUDA events: (reduce, update, bin) in milliseconds.
    pub fn add_timed(&mut self, values: &[DeviceTensor]) -> Result<[f32; 3], GpuError> {
        self.launch(values, true).map(|t| t.unwrap_or_default())
    }

    fn launch(&mut self, values: &[DeviceTensor], timed: bool) -> Result<Option<[f32; 3]>, GpuError> {
        assert_eq!(values.len(), self.tensors, "one device tensor per tracked tensor");
        let table = chunk_table(values);
        let count = table.len() / 3;
        if count > 0 {
            if self.chunks.len() < table.len() {
                self.chunks = self.stream.alloc_zeros::<u64>(table.len()).map_err(driver("growing the chunk table"))?;
            }
            self.stream.memcpy_htod(&table, &mut self.chunks).map_err(driver("uploading the chunk table"))?;
        }
        let grid =
            |n: usize| LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut events = Vec::new();
        let mut mark = |stream: &Arc<CudaStream>| -> Result<(), GpuError> {
            if timed {
                let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
                events.push(stream.record_event(flags).map_err(driver("recording an event"))?);
            }
            Ok(())
        };
        mark(&self.stream)?;
        // SAFETY: the kernels read `count` chunk entries (uploaded above) pointing at live device tensors, and
        // index batch/state/hist by tensor indices below `self.tensors` (the buffers' sizes).
        unsafe {
            if count > 0 {
                self.stream
                    .launch_builder(&self.reduce)
                    .arg(&self.chunks)
                    .arg(&mut self.batch)
                    .launch(grid(count))
                    .map_err(driver("reduce_stats"))?;
            }
            mark(&self.stream)?;
            self.stream
                .launch_builder(&self.update)
                .arg(&mut self.batch)
                .arg(&mut self.state)
                .arg(&mut self.hist)
                .launch(grid(self.tensors))
                .map_err(driver("update_state"))?;
            mark(&self.stream)?;
            if count > 0 {
                self.stream
                    .launch_builder(&self.bin)
                    .arg(&self.chunks)
                    .arg(&self.state)
                    .arg(&mut self.hist)
                    .launch(grid(count))
                    .map_err(driver("bin_values"))?;
            }
            mark(&self.stream)?;
        }
        self.stream.synchronize().map_err(driver("waiting for the statistics kernels"))?;
        if let Ok((free, total)) = self.stream.context().mem_get_info() {
            self.memory_peak = self.memory_peak.max(total - free);
        }
        if !timed {
            return Ok(None);
        }
        let ms = |a: usize| events[a].elapsed_ms(&events[a + 1]).map_err(driver("reading event times"));
        Ok(Some([ms(0)?, ms(1)?, ms(2)?]))
    }

    /// Most GPU memory in use (whole device: ONNX Runtime's arena included) seen after a batch, in MB.
    pub fn memory_peak_mb(&self) -> f64 {
        self.memory_peak as f64 / (1024.0 * 1024.0)
    }

    /// Copies the statistics to the host.
    pub fn finish(&self) -> Result<Vec<TensorStats>, GpuError> {
        let state = self.stream.clone_dtoh(&self.state).map_err(driver("reading the state"))?;
        let hist = self.stream.clone_dtoh(&self.hist).map_err(driver("reading histograms"))?;
        Ok((0..self.tensors)
            .map(|t| {
                let st = &state[WORDS * t..WORDS * (t + 1)];
                let finite = st[3] as u64;
                let key = |k: i64| float_of_key(k as u32);
                TensorStats {
                    count: finite,
                    min: (finite > 0).then(|| key(st[1])),
                    max: (finite > 0).then(|| key(st[2])),
                    nan: st[4] as u64,
                    pos_inf: st[5] as u64,
                    neg_inf: st[6] as u64,
                    hist: AbsHistogram {
                        range_exp: (st[0] != NO_RANGE).then_some(st[0] as i32),
                        counts: hist[BINS * t..BINS * (t + 1)].to_vec(),
                    },
                }
            })
            .collect())
    }

    /// The stream the kernels run on (for timing them).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

/// Inverse of the kernels' order-preserving key.
fn float_of_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 { k & 0x7fff_ffff } else { !k })
}

/// Splits every tensor into chunks of at most [`CHUNK`] values: (address, length, tensor index) triples.
fn chunk_table(values: &[DeviceTensor]) -> Vec<u64> {
    let mut table = Vec::new();
    for (t, v) in values.iter().enumerate() {
        let mut start = 0u64;
        while start < v.len as u64 {
            let len = CHUNK.min(v.len as u64 - start);
            table.extend([v.ptr + 4 * start, len, t as u64]);
            start += len;
        }
    }
    table
}

/// Throughput of the statistics kernels over one large tensor, against a device-to-device copy of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelBench {
    pub bytes: u64,
    /// Copy bandwidth counting bytes read and written (2 x size / time), GB/s.
    pub copy_gb_s: f64,
    /// Bytes of activations read per second by each kernel, GB/s.
    pub reduce_gb_s: f64,
    pub bin_gb_s: f64,
    /// Both passes together (what a batch costs).
    pub stats_gb_s: f64,
}

/// Times a device copy and the kernels over `values` (best of `repeats`).
pub fn bench_kernels(device: runtime::Device, values: &[f32], repeats: usize) -> Result<KernelBench, GpuError> {
    let mut gpu = GpuStats::new(device, 1)?;
    let stream = gpu.stream.clone();
    let src = stream.clone_htod(values).map_err(driver("uploading the benchmark tensor"))?;
    let mut dst = stream.alloc_zeros::<f32>(values.len()).map_err(driver("allocating the copy target"))?;
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut copy_ms = f32::INFINITY;
    for _ in 0..repeats.max(1) {
        let a = stream.record_event(flags).map_err(driver("recording an event"))?;
        stream.memcpy_dtod(&src, &mut dst).map_err(driver("device copy"))?;
        let b = stream.record_event(flags).map_err(driver("recording an event"))?;
        stream.synchronize().map_err(driver("waiting for the copy"))?;
        copy_ms = copy_ms.min(a.elapsed_ms(&b).map_err(driver("reading event times"))?);
    }
    let tensor = {
        use cudarc::driver::DevicePtr;
        let (ptr, _sync) = src.device_ptr(&stream);
        DeviceTensor { ptr, len: values.len() }
    };
    let (mut reduce_ms, mut bin_ms) = (f32::INFINITY, f32::INFINITY);
    for _ in 0..repeats.max(1) {
        let [r, _, b] = gpu.add_timed(&[tensor])?;
        reduce_ms = reduce_ms.min(r);
        bin_ms = bin_ms.min(b);
    }
    let bytes = 4 * values.len() as u64;
    let gb_s = |ms: f32| bytes as f64 / (ms as f64 * 1e-3) / 1e9;
    Ok(KernelBench {
        bytes,
        copy_gb_s: 2.0 * gb_s(copy_ms),
        reduce_gb_s: gb_s(reduce_ms),
        bin_gb_s: gb_s(bin_ms),
        stats_gb_s: gb_s(reduce_ms + bin_ms),
    })
}

/// Runs the device statistics over host data (uploaded first): for tests and the device self-check.
/// `batches[b][t]` holds tensor t's values in batch b.
pub fn stats_of_host_batches(device: runtime::Device, batches: &[Vec<Vec<f32>>]) -> Result<Vec<TensorStats>, GpuError> {
    let tensors = batches.first().map_or(0, Vec::len);
    let mut gpu = GpuStats::new(device, tensors)?;
    for batch in batches {
        let uploaded: Vec<CudaSlice<f32>> = batch
            .iter()
            .map(|v| gpu.stream.clone_htod(&if v.is_empty() { vec![0f32; 0] } else { v.clone() }))
            .collect::<Result<_, _>>()
            .map_err(driver("uploading test values"))?;
        let tensors: Vec<DeviceTensor> = uploaded
            .iter()
            .zip(batch)
            .map(|(d, v)| {
                use cudarc::driver::DevicePtr;
                let (ptr, _sync) = d.device_ptr(&gpu.stream);
                DeviceTensor { ptr, len: v.len() }
            })
            .collect();
        gpu.add(&tensors)?;
        drop(uploaded);
    }
    gpu.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_floats_and_invert() {
        // Mirrors the kernel's key_of: the order of keys is the order of the floats; -0.0 maps to +0.0.
        fn key_of(x: f32) -> u32 {
            let b = (x + 0.0).to_bits();
            if b & 0x8000_0000 != 0 {
                !b
            } else {
                b | 0x8000_0000
            }
        }
        let xs = [f32::MIN, -3.5, -1e-40, -0.0, 0.0, 1e-45, 2.0, f32::MAX];
        for w in xs.windows(2) {
            assert!(key_of(w[0]) <= key_of(w[1]), "{} vs {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(float_of_key(key_of(x)).to_bits(), (x + 0.0).to_bits());
        }
    }

    #[test]
    fn chunk_table_covers_every_value_once() {
        let values = [
            DeviceTensor { ptr: 1000, len: 3 * CHUNK as usize + 5 },
            DeviceTensor { ptr: 1 << 40, len: 0 },
            DeviceTensor { ptr: 8, len: 7 },
        ];
        let table = chunk_table(&values);
        let rows: Vec<&[u64]> = table.chunks(3).collect();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[3], &[1000 + 4 * 3 * CHUNK, 5, 0]);
        assert_eq!(rows[4], &[8, 7, 2]);
        let per_tensor0: u64 = rows.iter().filter(|r| r[2] == 0).map(|r| r[1]).sum();
        assert_eq!(per_tensor0, 3 * CHUNK + 5);
    }
}
