//! Activation statistics computed on the GPU, next to the tensors ONNX Runtime's CUDA EP left there.
//!
//! The rules are the CPU path's ([`histograms::histogram`]): finite count, min, max, NaN/±Inf counts and the |x|
//! histogram over `[0, 2^e)` whose range only grows by pair-merging bins. Per batch three kernels run: a
//! reduction (min/max/counts per tensor), an update (grow the range, merge bins, fold the batch into the
//! running totals) and the binning scatter at the updated range. Bin indices come from multiplying by a
//! power of two, which is exact in float32 on both devices, so for equal activations the GPU and CPU
//! statistics are equal bit for bit. Only the final statistics (and a small table of tensor addresses per
//! batch) cross between host and device.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use histograms::{AbsHistogram, TensorStats, BINS};

/// Errors of the device path; they name what failed so that the user can fall back to `--device cpu`.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// ONNX Runtime or the device check failed.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// A CUDA driver call failed.
    #[error("CUDA driver call failed ({what}): {source}")]
    Driver {
        /// What was being done.
        what: String,
        /// The driver's error.
        source: cudarc::driver::DriverError,
    },
    /// The statistics need a CUDA device.
    #[error("device statistics need a CUDA device, not {0}")]
    NotCuda(runtime::Device),
    /// NVRTC is not installed.
    #[error("libnvrtc is not on this machine (it ships with the CUDA toolkit); install it or use --device cpu")]
    NoNvrtc,
    /// NVRTC rejected the kernels.
    #[error("NVRTC could not compile the statistics kernels: {0}")]
    Compile(#[source] cudarc::nvrtc::CompileError),
}

fn driver(what: &str) -> impl Fn(cudarc::driver::DriverError) -> GpuError + '_ {
    move |source| GpuError::Driver { what: what.to_string(), source }
}

/// Values per block of the reduction kernel.
const CHUNK: u64 = 1 << 16;
/// Values per block of the binning kernel: each block zeroes and flushes a 4096-bin table, so larger chunks spend
/// less on that. On the H200 (gpu-check, 2026-12-03) 2^16 reached 79 % of copy bandwidth, 2^17 91 %, 2^18 98 %,
/// 2^19 77 % (too few blocks).
const BIN_CHUNK: u64 = 1 << 18;
/// The binning chunks `bench_kernels` measures beside the default.
pub const BIN_CHUNKS_MEASURED: [u64; 4] = [1 << 16, 1 << 17, 1 << 18, 1 << 19];
const THREADS: u32 = 256;
/// Words per tensor in the running state and in the per-batch slots.
const WORDS: usize = 8;
const NO_RANGE: i64 = i64::MIN;

/// The CUDA source, compiled at run time by NVRTC.
const KERNELS: &str = include_str!("kernels.cu");

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
    /// The chunk table of the binned tensors only (`range_only` ones left out).
    bin_chunks: CudaSlice<u64>,
    /// Values per block of the binning kernel.
    bin_chunk: u64,
    tensors: usize,
    /// Per tensor: whether only its range is kept (no histogram kernel runs over it).
    range_only: Vec<bool>,
    /// Most device memory in use (bytes, whole device) seen after a batch.
    memory_peak: usize,
    /// The batch whose kernels may still run, with its timing events when kernels are timed.
    in_flight: Option<Vec<cudarc::driver::CudaEvent>>,
    /// Whether [`GpuStats::add_async`] times its kernels ([`GpuStats::kernel_seconds`]).
    timing: bool,
    kernel_ms: f64,
}

impl GpuStats {
    /// Compiles the kernels with NVRTC and allocates the state for `tensors` tensors on `device`.
    pub fn new(device: runtime::Device, tensors: usize) -> Result<GpuStats, GpuError> {
        runtime::cuda_device_check(device)?;
        let runtime::Device::Cuda(ordinal) = device else {
            return Err(GpuError::NotCuda(device));
        };
        let ctx = CudaContext::new(ordinal as usize).map_err(driver("creating the CUDA context"))?;
        // A stream of its own that does not wait for ONNX Runtime's (non-blocking): one batch's kernels run
        // while the model runs on the next ([`GpuStats::add_async`]).
        let stream = ctx.new_stream().map_err(driver("creating the statistics stream"))?;
        // SAFETY: only tries to open the NVRTC library by its usual names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(GpuError::NoNvrtc);
        }
        // Exact float arithmetic: no flush-to-zero of subnormals, no fused multiply-add.
        let opts = cudarc::nvrtc::CompileOptions {
            ftz: Some(false),
            fmad: Some(false),
            use_fast_math: Some(false),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(KERNELS, opts).map_err(GpuError::Compile)?;
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
        let bin_chunks = stream.alloc_zeros::<u64>(3 * 1024).map_err(driver("allocating the chunk table"))?;
        let range_only = vec![false; tensors];
        Ok(GpuStats {
            stream,
            reduce,
            update,
            bin,
            batch,
            state,
            hist,
            chunks,
            bin_chunks,
            bin_chunk: BIN_CHUNK,
            tensors,
            range_only,
            memory_peak: 0,
            in_flight: None,
            timing: false,
            kernel_ms: 0.0,
        })
    }

    /// Keeps only the range of the tensors marked `true` (`TensorStats::range_only`): the histogram kernel
    /// skips them, and [`GpuStats::finish`] gives exactly what the CPU pass gives for them.
    pub fn keep_range_only(&mut self, which: &[bool]) {
        assert_eq!(which.len(), self.tensors, "one flag per tracked tensor");
        self.range_only = which.to_vec();
    }

    /// Folds one batch: `values[t]` holds tensor t's values for this batch. Waits until the GPU is done, so
    /// the caller may let ONNX Runtime overwrite the buffers afterwards.
    pub fn add(&mut self, values: &[DeviceTensor]) -> Result<(), GpuError> {
        self.add_async(values)?;
        self.wait()
    }

    /// Starts folding one batch and returns while its kernels run on the statistics stream (first waiting for
    /// the batch before, if any): `values` must stay valid until the next `add_async`, [`GpuStats::wait`] or
    /// [`GpuStats::finish`] returns. Batches fold in the order added, so the statistics are
    /// [`GpuStats::add`]'s.
    pub fn add_async(&mut self, values: &[DeviceTensor]) -> Result<(), GpuError> {
        self.wait()?;
        let events = self.launch(values, self.timing)?;
        self.in_flight = Some(events);
        Ok(())
    }

    /// Waits for the kernels of the batch last added, if they may still run.
    pub fn wait(&mut self) -> Result<(), GpuError> {
        let Some(events) = self.in_flight.take() else {
            return Ok(());
        };
        self.synchronize()?;
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            self.kernel_ms += first.elapsed_ms(last).map_err(driver("reading event times"))? as f64;
        }
        Ok(())
    }

    /// Waits for every kernel launched so far and notes the device memory in use.
    fn synchronize(&mut self) -> Result<(), GpuError> {
        self.stream.synchronize().map_err(driver("waiting for the statistics kernels"))?;
        if let Ok((free, total)) = self.stream.context().mem_get_info() {
            self.memory_peak = self.memory_peak.max(total - free);
        }
        Ok(())
    }

    /// Times the kernels of every batch added from now on (CUDA events; [`GpuStats::kernel_seconds`]).
    pub fn time_kernels(&mut self) {
        self.timing = true;
    }

    /// GPU time of the timed batches' kernels, seconds.
    pub fn kernel_seconds(&self) -> f64 {
        self.kernel_ms / 1000.0
    }

    /// As [`GpuStats::add`], timing each kernel with CUDA events: (reduce, update, bin) in milliseconds.
    pub fn add_timed(&mut self, values: &[DeviceTensor]) -> Result<[f32; 3], GpuError> {
        self.wait()?;
        let events = self.launch(values, true)?;
        self.synchronize()?;
        let ms = |a: usize| events[a].elapsed_ms(&events[a + 1]).map_err(driver("reading event times"));
        Ok([ms(0)?, ms(1)?, ms(2)?])
    }

    /// Enqueues the kernels over one batch; with `timed`, an event before and after each of them.
    fn launch(&mut self, values: &[DeviceTensor], timed: bool) -> Result<Vec<cudarc::driver::CudaEvent>, GpuError> {
        assert_eq!(values.len(), self.tensors, "one device tensor per tracked tensor");
        let table = chunk_table(values, |_| true, CHUNK);
        let count = table.len() / 3;
        let bin_table = chunk_table(values, |t| !self.range_only[t], self.bin_chunk);
        let bin_count = bin_table.len() / 3;
        for (table, slot) in [(&table, &mut self.chunks), (&bin_table, &mut self.bin_chunks)] {
            if table.is_empty() {
                continue;
            }
            if slot.len() < table.len() {
                *slot = self.stream.alloc_zeros::<u64>(table.len()).map_err(driver("growing the chunk table"))?;
            }
            self.stream.memcpy_htod(table, slot).map_err(driver("uploading the chunk table"))?;
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
            if bin_count > 0 {
                self.stream
                    .launch_builder(&self.bin)
                    .arg(&self.bin_chunks)
                    .arg(&self.state)
                    .arg(&mut self.hist)
                    .launch(grid(bin_count))
                    .map_err(driver("bin_values"))?;
            }
            mark(&self.stream)?;
        }
        Ok(events)
    }

    /// Most GPU memory in use (whole device: ONNX Runtime's arena included) seen after a batch, in MB.
    pub fn memory_peak_mb(&self) -> f64 {
        self.memory_peak as f64 / (1024.0 * 1024.0)
    }

    /// Copies the statistics to the host (after the kernels of the batch last added).
    pub fn finish(&mut self) -> Result<Vec<TensorStats>, GpuError> {
        self.wait()?;
        let state = self.stream.clone_dtoh(&self.state).map_err(driver("reading the state"))?;
        let hist = self.stream.clone_dtoh(&self.hist).map_err(driver("reading histograms"))?;
        Ok((0..self.tensors)
            .map(|t| {
                let st = &state[WORDS * t..WORDS * (t + 1)];
                let finite = st[3] as u64;
                let key = |k: i64| float_of_key(k as u32);
                let stats = TensorStats {
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
                    max_only: false,
                };
                if self.range_only[t] {
                    stats.into_range_only()
                } else {
                    stats
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

/// Splits every tensor that `keep(index)` accepts into chunks of at most `chunk` values (a multiple of 4, so
/// every chunk of an aligned buffer starts 16-byte aligned): (address, length, tensor index) triples.
fn chunk_table(values: &[DeviceTensor], keep: impl Fn(usize) -> bool, chunk: u64) -> Vec<u64> {
    let mut table = Vec::new();
    for (t, v) in values.iter().enumerate().filter(|(t, _)| keep(*t)) {
        let mut start = 0u64;
        while start < v.len as u64 {
            let len = chunk.min(v.len as u64 - start);
            table.extend([v.ptr + 4 * start, len, t as u64]);
            start += len;
        }
    }
    table
}

/// Throughput of the statistics kernels over one large tensor, against a device-to-device copy of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelBench {
    /// Size of the tensor, bytes.
    pub bytes: u64,
    /// Copy bandwidth counting bytes read and written (2 x size / time), GB/s.
    pub copy_gb_s: f64,
    /// Bytes of activations read per second by each kernel, GB/s.
    pub reduce_gb_s: f64,
    /// Binning kernel throughput, GB/s.
    pub bin_gb_s: f64,
    /// Both passes together (what a batch costs).
    pub stats_gb_s: f64,
    /// Binning kernel throughput with each block binning this many values (`BIN_CHUNKS_MEASURED`), GB/s;
    /// `bin_gb_s` is the one calibrate uses.
    pub bin_gb_s_by_chunk: Vec<(u64, f64)>,
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
    let default_chunk = gpu.bin_chunk;
    let mut bin_gb_s_by_chunk = Vec::new();
    for chunk in BIN_CHUNKS_MEASURED {
        gpu.bin_chunk = chunk;
        let mut ms = f32::INFINITY;
        for _ in 0..repeats.max(1) {
            ms = ms.min(gpu.add_timed(&[tensor])?[2]);
        }
        bin_gb_s_by_chunk.push((chunk, gb_s(ms)));
    }
    gpu.bin_chunk = default_chunk;
    Ok(KernelBench {
        bin_gb_s_by_chunk,
        bytes,
        copy_gb_s: 2.0 * gb_s(copy_ms),
        reduce_gb_s: gb_s(reduce_ms),
        bin_gb_s: gb_s(bin_ms),
        stats_gb_s: gb_s(reduce_ms + bin_ms),
    })
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
        let table = chunk_table(&values, |_| true, CHUNK);
        let rows: Vec<&[u64]> = table.chunks(3).collect();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[3], &[1000 + 4 * 3 * CHUNK, 5, 0]);
        assert_eq!(rows[4], &[8, 7, 2]);
        let per_tensor0: u64 = rows.iter().filter(|r| r[2] == 0).map(|r| r[1]).sum();
        assert_eq!(per_tensor0, 3 * CHUNK + 5);
        // The binning table leaves out the range-only tensors, and only them.
        let binned = chunk_table(&values, |t| t != 0, CHUNK);
        assert_eq!(binned, vec![8, 7, 2]);
    }
}

/// The device invariants, on a GPU (`cargo test -p calibrate --features cuda`, device `INT8KIT_TEST_DEVICE`,
/// default `cuda:0`; `cargo xtask gpu-pack` carries the test binary to a GPU machine without Rust): the GPU
/// statistics follow the CPU rules exactly, so equal activations give equal statistics, and a device list
/// gives the one-device `.hist`.
#[cfg(all(test, feature = "cuda"))]
mod device_tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The device statistics of host data (uploaded first): `batches[b][t]` holds tensor t's values in batch b.
    fn stats_of_host_batches(device: runtime::Device, batches: &[Vec<Vec<f32>>]) -> Result<Vec<TensorStats>, GpuError> {
        stats_with_range_only(device, batches, &vec![false; batches.first().map_or(0, Vec::len)])
    }

    /// [`stats_of_host_batches`] keeping only the range of the tensors marked in `range_only`.
    fn stats_with_range_only(
        device: runtime::Device,
        batches: &[Vec<Vec<f32>>],
        range_only: &[bool],
    ) -> Result<Vec<TensorStats>, GpuError> {
        let tensors = batches.first().map_or(0, Vec::len);
        let mut gpu = GpuStats::new(device, tensors)?;
        gpu.keep_range_only(range_only);
        let mut previous: Option<Vec<CudaSlice<f32>>> = None;
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
            // As calibrate folds them: each batch's kernels run while the next one uploads, and its buffers
            // stay alive until the next batch is added.
            gpu.add_async(&tensors)?;
            previous = Some(uploaded);
        }
        let stats = gpu.finish();
        drop(previous);
        stats
    }

    fn device() -> runtime::Device {
        let device = std::env::var("INT8KIT_TEST_DEVICE").unwrap_or_else(|_| "cuda:0".into());
        let device: runtime::Device = device.parse().expect("INT8KIT_TEST_DEVICE: cuda[:N]");
        runtime::use_device(device);
        runtime::cuda_device_check(device).expect("a CUDA device");
        device
    }

    fn cpu_stats(batches: &[Vec<Vec<f32>>]) -> Vec<TensorStats> {
        let mut stats = vec![TensorStats::default(); batches.first().map_or(0, Vec::len)];
        for batch in batches {
            for (s, v) in stats.iter_mut().zip(batch) {
                s.add(v);
            }
        }
        stats
    }

    /// The tensors whose statistics differ between the CPU and the device, as their JSON says.
    fn differing(batches: &[Vec<Vec<f32>>]) -> Vec<String> {
        let json = |s: &TensorStats| serde_json::to_string(s).unwrap();
        let (cpu, gpu) = (cpu_stats(batches), stats_of_host_batches(device(), batches).unwrap());
        assert_eq!(cpu.len(), gpu.len());
        cpu.iter()
            .zip(&gpu)
            .enumerate()
            .filter(|(_, (a, b))| json(a) != json(b))
            .map(|(i, (a, b))| {
                let brief = |s: &TensorStats| {
                    format!("count {} min {:?} max {:?} e {:?}", s.count, s.min, s.max, s.hist.range_exp)
                };
                format!("tensor {i}: cpu {}, gpu {}", brief(a), brief(b))
            })
            .collect()
    }

    /// Values that exercise every rule: signs, zeros of both signs, NaN/Inf, subnormals, huge and tiny ranges,
    /// and ranges that grow across batches (pair merges of 1 step, several steps and more than 12).
    fn synthetic_batches(seed: u64) -> Vec<Vec<Vec<f32>>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut normal = |scale: f32, n: usize| -> Vec<f32> {
            (0..n).map(|_| (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5) * scale).collect()
        };
        (0..3)
            .map(|b| {
                let grow = [1.0f32, 3.0, 1e5][b];
                let mut specials = normal(grow, 70_001);
                specials.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 1e-45, -3e-39]);
                vec![
                    normal(grow, 1 << 20),
                    specials,
                    vec![0.0; 1000 * (b + 1)],
                    normal(1e-40 * grow, 5000),
                    normal(1e37, 3000),
                    vec![],
                    normal(grow * 0.01, 65_536 * 2 + 17),
                ]
            })
            .collect()
    }

    #[test]
    fn device_statistics_equal_the_cpu_statistics_on_every_rule() {
        let differ = differing(&synthetic_batches(1));
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    }

    /// Range-only tensors (every other one here) are not binned on the device and give exactly the CPU's
    /// range-only statistics; the binned ones are unaffected.
    #[test]
    fn range_only_tensors_equal_the_cpu_range_only_statistics() {
        let batches = synthetic_batches(2);
        let range_only: Vec<bool> = (0..batches[0].len()).map(|t| t % 2 == 0).collect();
        let gpu = stats_with_range_only(device(), &batches, &range_only).unwrap();
        let cpu: Vec<TensorStats> = cpu_stats(&batches)
            .into_iter()
            .zip(&range_only)
            .map(|(s, &r)| if r { s.into_range_only() } else { s })
            .collect();
        let json = |s: &[TensorStats]| serde_json::to_string(s).unwrap();
        assert_eq!(json(&cpu), json(&gpu));
        assert!(gpu.iter().zip(&range_only).all(|(s, &r)| s.max_only == r && (!r || s.hist.range_exp.is_none())));
    }

    #[test]
    fn device_statistics_equal_the_cpu_statistics_on_real_activations() {
        // The fixture ViT's activations, computed once on the CPU, reduced by both devices.
        let feed = datasets::Feed::Images(datasets::Recipe::load(&test_support::recipe_path()).unwrap());
        let tapped = crate::TappedModel::new(
            &test_support::model("fmnist_vit_opset17.onnx"),
            &feed,
            histograms::Selection::All,
            crate::ChannelMaxima::None,
        )
        .unwrap();
        let cfg = runtime::SessionConfig::new("fixture ViT (CPU EP)");
        let mut session = runtime::session_from_bytes(&tapped.model.to_bytes().unwrap(), &cfg).unwrap();
        let outputs = tapped.output_names();
        let dataset = datasets::Dataset::flat(&test_support::calib_dir()).unwrap().limit(192, 1);
        let options = datasets::StreamOptions { batch_size: 64, ..Default::default() };
        let mut batches = Vec::new();
        for batch in datasets::BatchStream::new(&dataset, &feed, options) {
            let batch = batch.unwrap();
            let outs = runtime::run(&mut session, "vit", &batch.inputs(&tapped.input), &outputs).unwrap();
            batches.push(outs.iter().map(|o| o.as_f32().unwrap_or(&[]).to_vec()).collect());
        }
        let differ = differing(&batches);
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    }

    #[test]
    fn a_device_list_gives_the_one_device_hist() {
        let one = runtime::Devices::one(device());
        let list: runtime::Devices = format!("{one},{}", one.to_string().trim_start_matches("cuda:")).parse().unwrap();
        let feed = datasets::Feed::Images(datasets::Recipe::load(&test_support::recipe_path()).unwrap());
        let hist = |devices: runtime::Devices| {
            let options = crate::CalibrateOptions { device: devices, limit: Some(400), ..Default::default() };
            let model = test_support::model("fmnist_vit_opset17.onnx");
            crate::calibrate(&model, &test_support::calib_dir(), &feed, &options, &mut |_, _| {})
                .unwrap()
                .0
                .to_json()
                .unwrap()
        };
        assert!(hist(one) == hist(list), "a device list changed the .hist");
    }
}
