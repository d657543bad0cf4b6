//! Where a model runs, and runs whose outputs stay in GPU memory (ONNX Runtime IoBinding).

#[cfg(feature = "cuda")]
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
#[cfg(feature = "cuda")]
use ort::session::Session;

use crate::RuntimeError;

/// An execution device: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA execution provider on GPU N.
    Cuda(u32),
}

impl Device {
    /// Whether this is a GPU.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("'{other}': expected cpu, cuda or cuda:N (N a GPU index)")),
        }
    }
}

/// The devices a run spreads its batches over, one session each: `cpu`, `cuda`, `cuda:N`, a list of GPUs
/// `cuda:0,1,...` (a GPU named twice gets two sessions) or `cuda:all` (every GPU of the machine). Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices(Vec<Device>);

impl Devices {
    /// These devices, in order (`None` for none). The command line takes GPU lists only; a library caller
    /// may also spread over several CPU sessions (the tests do, to check the dealing without a GPU).
    pub fn new(list: Vec<Device>) -> Option<Devices> {
        (!list.is_empty()).then_some(Devices(list))
    }

    /// One device.
    pub fn one(device: Device) -> Devices {
        Devices(vec![device])
    }

    /// The first device (the only one, mostly).
    pub fn first(&self) -> Device {
        self.0[0]
    }

    /// Every device, in the order batches are dealt to them.
    pub fn list(&self) -> &[Device] {
        &self.0
    }

    /// Whether these are GPUs.
    pub fn is_cuda(&self) -> bool {
        self.first().is_cuda()
    }
}

impl Default for Devices {
    fn default() -> Self {
        Devices::one(Device::Cpu)
    }
}

impl std::fmt::Display for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                let ids: Vec<String> =
                    many.iter().map(|d| if let Device::Cuda(n) = d { n.to_string() } else { d.to_string() }).collect();
                write!(f, "cuda:{}", ids.join(","))
            }
        }
    }
}

impl std::str::FromStr for Devices {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Some(list) = s.strip_prefix("cuda:").filter(|l| l.contains(',') || *l == "all") else {
            return s.parse::<Device>().map(Devices::one);
        };
        if list == "all" {
            let count = cuda_device_count().map_err(|e| format!("'{s}': {e}"))?;
            if count == 0 {
                return Err(format!("'{s}': this machine has no CUDA device"));
            }
            return Ok(Devices((0..count as u32).map(Device::Cuda).collect()));
        }
        list.split(',')
            .map(|n| n.trim().parse().map(Device::Cuda))
            .collect::<Result<Vec<_>, _>>()
            .map(Devices)
            .map_err(|_| format!("'{s}': expected cuda:N,M,... (GPU indexes), cuda:all, cuda:N, cuda or cpu"))
    }
}

/// GPUs the CUDA driver sees.
#[cfg(feature = "cuda")]
pub fn cuda_device_count() -> Result<usize, RuntimeError> {
    let err = |message: String| RuntimeError::NoCuda { device: "cuda:all".into(), message };
    // SAFETY: only tries to open the driver library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(err("the NVIDIA driver library (libcuda.so) is not on this machine".into()));
    }
    cudarc::driver::result::init().map_err(|e| err(format!("the CUDA driver did not initialise: {e}")))?;
    let count = cudarc::driver::result::device::get_count().map_err(|e| err(format!("counting GPUs: {e}")))?;
    Ok(count.max(0) as usize)
}

/// Without the `cuda` feature there are no GPUs to count.
#[cfg(not(feature = "cuda"))]
pub fn cuda_device_count() -> Result<usize, RuntimeError> {
    Err(RuntimeError::NoCuda {
        device: "cuda:all".into(),
        message: "this build has no CUDA support (the runtime crate's `cuda` feature is off)".into(),
    })
}

/// Where and with how many CPU threads a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    /// Intra-op threads (0 = one per core).
    pub threads: usize,
    /// The device.
    pub device: Device,
}

/// Checks that the CUDA driver library is present and the GPU exists, before anything that would crash
/// without them (cudarc panics when libcuda is missing; ONNX Runtime's CUDA EP aborts on some setups).
#[cfg(feature = "cuda")]
pub fn cuda_device_check(device: Device) -> Result<(), RuntimeError> {
    let Device::Cuda(id) = device else { return Ok(()) };
    let err = |message: String| RuntimeError::NoCuda { device: device.to_string(), message };
    // SAFETY: only tries to open the driver library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(err("the NVIDIA driver library (libcuda.so) is not on this machine: run on a machine with an \
                        NVIDIA GPU and driver, or use --device cpu"
            .into()));
    }
    cudarc::driver::result::init().map_err(|e| err(format!("the CUDA driver did not initialise: {e}")))?;
    let count = cudarc::driver::result::device::get_count().map_err(|e| err(format!("counting GPUs: {e}")))?;
    if id as i32 >= count {
        return Err(err(format!("GPU {id} does not exist: this machine has {count} CUDA device(s)")));
    }
    Ok(())
}

/// Without the `cuda` feature every CUDA device is refused: a CUDA session must never quietly run on the CPU.
#[cfg(not(feature = "cuda"))]
pub fn cuda_device_check(device: Device) -> Result<(), RuntimeError> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(_) => Err(RuntimeError::NoCuda {
            device: device.to_string(),
            message: "this build has no CUDA support (the runtime crate's `cuda` feature is off)".into(),
        }),
    }
}

/// One output of a `BoundRun`: a float32 tensor in GPU memory.
#[derive(Debug, Clone, Copy)]
pub struct DeviceTensor {
    /// CUDA device pointer (`CUdeviceptr`).
    pub ptr: u64,
    /// Number of float32 values.
    pub len: usize,
}

#[cfg(feature = "cuda")]
/// A session run through an IoBinding whose outputs are left in GPU memory. A run's outputs stay valid until
/// the run after the next one starts, so that they can be read on another stream while the next run computes.
pub struct BoundRun {
    binding: ort::session::IoBinding,
    memory: MemoryInfo<'static>,
    outputs: Vec<String>,
    /// The last run's outputs, and the one's before it.
    values: Vec<ort::value::DynValue>,
    previous: Vec<ort::value::DynValue>,
    label: String,
    /// The input batch lives in a GPU tensor that ONNX Runtime allocated (and owns); we copy each batch into
    /// it. Binding a host tensor instead made ONNX Runtime copy it at bind time, which cost a third of the
    /// ViT-S/14's throughput on an H100.
    allocator: ort::memory::Allocator,
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    input: Option<(Vec<usize>, ort::value::Tensor<f32>)>,
}

#[cfg(feature = "cuda")]
impl BoundRun {
    /// Binds `outputs` to memory on the session's GPU.
    pub fn new(session: &Session, device: Device, outputs: &[String], label: &str) -> Result<BoundRun, RuntimeError> {
        let Device::Cuda(id) = device else {
            return Err(RuntimeError::Run {
                model: label.into(),
                message: "device-bound outputs need a CUDA session".into(),
            });
        };
        let run_err = |e: ort::Error| RuntimeError::Run { model: label.to_string(), message: e.to_string() };
        let _exclusive = crate::setting_up_cuda();
        let binding = session.create_binding().map_err(run_err)?;
        let memory = MemoryInfo::new(AllocationDevice::CUDA, id as i32, AllocatorType::Device, MemoryType::Default)
            .map_err(run_err)?;
        let allocator = ort::memory::Allocator::new(session, memory.clone()).map_err(run_err)?;
        cuda_device_check(device)?;
        let ctx = cudarc::driver::CudaContext::new(id as usize)
            .map_err(|e| RuntimeError::NoCuda { device: device.to_string(), message: e.to_string() })?;
        Ok(BoundRun {
            binding,
            memory,
            outputs: outputs.to_vec(),
            values: Vec::new(),
            previous: Vec::new(),
            label: label.to_string(),
            allocator,
            ctx,
            input: None,
        })
    }

    /// Runs one float32 batch (copied into the GPU input tensor) and returns the outputs' device addresses,
    /// in the order of the bound names. The run has finished on the GPU when this returns.
    pub fn run(
        &mut self,
        session: &mut Session,
        input_name: &str,
        shape: &[usize],
        data: &[f32],
    ) -> Result<Vec<DeviceTensor>, RuntimeError> {
        let label = self.label.clone();
        let run_err = |e: ort::Error| RuntimeError::Run { model: label.clone(), message: e.to_string() };
        // The run before last's outputs go back to ONNX Runtime's arena; the last run's stay alive.
        self.previous = std::mem::take(&mut self.values);
        // Bound afresh every run: after a run ORT treats the outputs as pre-allocated, and a batch of another
        // size (the last, short one) would not fit them.
        self.binding.clear_outputs();
        for name in &self.outputs {
            self.binding.bind_output_to_device(name, &self.memory).map_err(run_err)?;
        }
        if data.len() != shape.iter().product::<usize>() {
            return Err(RuntimeError::Run {
                model: label.clone(),
                message: format!("{} input values for shape {shape:?}", data.len()),
            });
        }
        // The GPU input tensor is reused while batches keep their shape, and replaced when one does not.
        let tensor = match &mut self.input {
            Some((s, tensor)) if s.as_slice() == shape => tensor,
            slot => {
                let tensor = ort::value::Tensor::<f32>::new(&self.allocator, shape.to_vec()).map_err(run_err)?;
                &mut slot.insert((shape.to_vec(), tensor)).1
            }
        };
        let cuda_err =
            |e: cudarc::driver::DriverError| RuntimeError::Run { model: label.clone(), message: e.to_string() };
        let _shared = crate::running();
        self.ctx.bind_to_thread().map_err(cuda_err)?;
        // SAFETY: the tensor holds shape.product() == data.len() float32 values in GPU memory on this context.
        unsafe { cudarc::driver::result::memcpy_htod_sync(tensor.data_ptr_mut() as u64, data) }.map_err(cuda_err)?;
        self.binding.bind_input(input_name, &*tensor).map_err(run_err)?;
        let mut result = session.run_binding(&self.binding).map_err(run_err)?;
        let mut out = Vec::with_capacity(self.outputs.len());
        let mut values = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let value = result.remove(name.as_str()).ok_or_else(|| RuntimeError::Run {
                model: label.clone(),
                message: format!("output '{name}' missing from the results"),
            })?;
            let tensor = value.downcast::<ort::value::DynTensorValueType>().map_err(run_err)?;
            let ort::value::ValueType::Tensor { ty, shape, .. } = tensor.dtype() else {
                return Err(RuntimeError::Run {
                    model: label.clone(),
                    message: format!("output '{name}' is not a tensor"),
                });
            };
            if *ty != ort::value::TensorElementType::Float32 {
                return Err(RuntimeError::Run {
                    model: label.clone(),
                    message: format!("output '{name}' is {ty:?}, not float32"),
                });
            }
            let len = shape.iter().map(|&d| d.max(0) as usize).product();
            out.push(DeviceTensor { ptr: tensor.data_ptr() as u64, len });
            values.push(tensor.into_dyn());
        }
        // No `synchronize_outputs`: on the CUDA EP it synchronises the whole device, which fails while another
        // thread's run has a stream captured (see `CUDA_WORK`); the run already synchronised its streams.
        drop(result);
        self.values = values;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse_and_print_back() {
        let d: Devices = "cuda:0,1".parse().unwrap();
        assert_eq!(d.list(), &[Device::Cuda(0), Device::Cuda(1)]);
        assert_eq!(d.to_string(), "cuda:0,1");
        let twice: Devices = "cuda:0,0".parse().unwrap();
        assert_eq!(twice.list().len(), 2, "a GPU named twice gets two sessions");
        assert_eq!("cuda:3".parse::<Devices>().unwrap(), Devices::one(Device::Cuda(3)));
        assert_eq!("cpu".parse::<Devices>().unwrap().to_string(), "cpu");
        for bad in ["cuda:0,x", "cuda:,1", "cpu,cpu", "gpu"] {
            assert!(bad.parse::<Devices>().is_err(), "{bad}");
        }
    }

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
            let err = bad.parse::<Device>().unwrap_err();
            assert!(err.contains(bad) && err.contains("cuda:N"), "{err}");
        }
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn a_machine_without_the_nvidia_driver_gets_an_error_not_a_panic() {
        // SAFETY: only tries to open the driver library.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            return; // a GPU machine: covered by `xtask gpu-check`
        }
        let err = cuda_device_check(Device::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("libcuda") && err.contains("--device cpu"), "{err}");
        assert!(cuda_device_check(Device::Cpu).is_ok());
    }
}
