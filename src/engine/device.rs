//! Choosing where the model runs: CUDA or Metal when built in and present, else the CPU.
//!
//! Each GPU kind is probed once per process ([`probe`]): the app's device menu, `auto` and an
//! explicit choice all read the same result, and a GPU that cannot be used says why (not
//! compiled in, no driver, no device, a driver too old) with the driver's own error.

use std::sync::OnceLock;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A device preference, as chosen in the app or on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The first GPU available, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
    Metal,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            "metal" => Ok(DeviceChoice::Metal),
            _ => Err(Error::InvalidParam(format!(
                "unknown device '{s}' (auto, cpu, cuda, metal)"
            ))),
        }
    }
}

impl DeviceChoice {
    /// How the app's device menu names it.
    pub fn label(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "Auto (GPU if present)",
            DeviceChoice::Cpu => "CPU",
            DeviceChoice::Cuda => "CUDA GPU",
            DeviceChoice::Metal => "Metal GPU",
        }
    }
}

/// A GPU backend candle may have been built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gpu {
    Cuda,
    Metal,
}

impl Gpu {
    const ALL: [Gpu; 2] = [Gpu::Cuda, Gpu::Metal];

    fn name(self) -> &'static str {
        match self {
            Gpu::Cuda => "cuda",
            Gpu::Metal => "metal",
        }
    }

    fn choice(self) -> DeviceChoice {
        match self {
            Gpu::Cuda => DeviceChoice::Cuda,
            Gpu::Metal => DeviceChoice::Metal,
        }
    }

    /// Opens device 0 of this kind: `None` when this build has no support for it (nothing is
    /// tried), else the result of one attempt.
    fn open(self) -> Option<candle_core::Result<Device>> {
        match self {
            Gpu::Cuda => candle_core::utils::cuda_is_available().then(|| Device::new_cuda(0)),
            Gpu::Metal => candle_core::utils::metal_is_available().then(|| Device::new_metal(0)),
        }
    }
}

/// What one probe of a GPU kind found.
#[derive(Clone, Debug)]
pub enum Found {
    /// Opened: the device, and a line about it ("NVIDIA H200, 139.8 GiB").
    Ready(Device, String),
    /// This build has no support for it.
    NotCompiled,
    /// Compiled in, but opening it failed: why, in words, with the driver's error.
    Failed(String),
}

/// The result of probing every GPU kind once.
#[derive(Clone, Debug)]
pub struct Probe {
    pub gpus: Vec<(Gpu, Found)>,
}

/// One entry of the app's device menu.
#[derive(Clone, Debug)]
pub struct DeviceOption {
    pub choice: DeviceChoice,
    /// Whether choosing it can work.
    pub usable: bool,
    /// What was found, or why it cannot be used.
    pub detail: String,
}

impl Probe {
    /// Tries each GPU kind once with `open_gpu`.
    fn run(open_gpu: &mut dyn FnMut(Gpu) -> Option<candle_core::Result<Device>>) -> Self {
        let gpus = Gpu::ALL
            .into_iter()
            .map(|gpu| {
                let found = match open_gpu(gpu) {
                    None => Found::NotCompiled,
                    Some(Ok(device)) => {
                        let about = about(&device);
                        Found::Ready(device, about)
                    }
                    Some(Err(e)) => Found::Failed(explain_open_error(gpu, &without_backtrace(&e))),
                };
                (gpu, found)
            })
            .collect();
        Probe { gpus }
    }

    /// The chosen device: `Auto` is the first GPU that opened, else the CPU.
    pub fn open(&self, choice: DeviceChoice) -> Result<Device> {
        let gpu = match choice {
            DeviceChoice::Cpu => return Ok(Device::Cpu),
            DeviceChoice::Auto => {
                let ready = self.gpus.iter().find_map(|(_, f)| match f {
                    Found::Ready(d, _) => Some(d.clone()),
                    _ => None,
                });
                return Ok(ready.unwrap_or(Device::Cpu));
            }
            DeviceChoice::Cuda => Gpu::Cuda,
            DeviceChoice::Metal => Gpu::Metal,
        };
        match self.gpus.iter().find(|(g, _)| *g == gpu).map(|(_, f)| f) {
            Some(Found::Ready(device, _)) => Ok(device.clone()),
            Some(Found::Failed(why)) => Err(Error::Device(why.clone())),
            Some(Found::NotCompiled) | None => Err(Error::Device(format!(
                "{0} is not available: this build has no {0} support (build with --features {0})",
                gpu.name()
            ))),
        }
    }

    /// Why `Auto` runs on the CPU although this build has GPU support (None when a GPU opened
    /// or none is compiled in).
    pub fn why_no_gpu(&self) -> Option<String> {
        if self.gpus.iter().any(|(_, f)| matches!(f, Found::Ready(..))) {
            return None;
        }
        let why: Vec<&str> = self
            .gpus
            .iter()
            .filter_map(|(_, f)| match f {
                Found::Failed(why) => Some(why.as_str()),
                _ => None,
            })
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The app's device menu: `Auto` (saying what it picks), each GPU kind (usable or why
    /// not), the CPU.
    pub fn options(&self) -> Vec<DeviceOption> {
        let auto = self
            .gpus
            .iter()
            .find_map(|(g, f)| matches!(f, Found::Ready(..)).then(|| g.name().to_uppercase()))
            .map_or("no GPU found: the CPU".to_string(), |g| {
                format!("the {g} GPU")
            });
        let mut v = vec![DeviceOption {
            choice: DeviceChoice::Auto,
            usable: true,
            detail: format!("Picks {auto}"),
        }];
        for (gpu, found) in &self.gpus {
            let (usable, detail) = match found {
                Found::Ready(_, about) => (true, about.clone()),
                Found::NotCompiled => (
                    false,
                    format!(
                        "Not compiled into this build (build with --features {})",
                        gpu.name()
                    ),
                ),
                Found::Failed(why) => (false, why.clone()),
            };
            v.push(DeviceOption {
                choice: gpu.choice(),
                usable,
                detail,
            });
        }
        v.push(DeviceOption {
            choice: DeviceChoice::Cpu,
            usable: true,
            detail: format!(
                "{} threads",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
        });
        v
    }
}

/// This process's one probe of the GPUs (the first call opens each GPU kind once).
pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| Probe::run(&mut Gpu::open))
}

/// Opens the chosen device (see [`Probe::open`]).
pub fn open(choice: DeviceChoice) -> Result<Device> {
    probe().open(choice)
}

/// The error's message without the backtrace candle attaches when `RUST_BACKTRACE` is set.
fn without_backtrace(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(inner),
        e => e.to_string(),
    }
}

/// Why a GPU did not open, in words, followed by the driver's own error.
fn explain_open_error(gpu: Gpu, err: &str) -> String {
    let why = match gpu {
        Gpu::Cuda if err.contains("CUDA_ERROR_STUB_LIBRARY") => {
            "no NVIDIA driver is installed (only the stub libcuda.so.1 was found)"
        }
        Gpu::Cuda if err.contains("CUDA_ERROR_NO_DEVICE") => "no NVIDIA GPU was found",
        Gpu::Cuda if err.contains("CUDA_ERROR_INSUFFICIENT_DRIVER") => {
            "the NVIDIA driver is older than the CUDA 13.0 this build needs"
        }
        Gpu::Cuda if err.contains("CUDA_ERROR_OUT_OF_MEMORY") => "the GPU has no memory left",
        _ => "it could not be opened",
    };
    format!("cannot use {} device 0: {why} ({err})", gpu.name())
}

/// A line about an opened GPU: its name and memory where the driver tells them.
fn about(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        let ctx = cuda.cuda_stream().context().clone();
        let name = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        return match ctx.total_mem() {
            Ok(total) => format!("{name}, {:.1} GiB", total as f64 / (1u64 << 30) as f64),
            Err(_) => name,
        };
    }
    describe(device)
}

/// Free memory on `device` in bytes, where the driver tells it (CUDA); `None` elsewhere.
pub fn free_memory(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        return cuda
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64);
    }
    let _ = device;
    None
}

/// Inputs per forward/backward pass when the user set none: as many as fit in half the
/// device's free memory, at about 384 MiB per 224 x 224 input (ResNet-50 and DenseNet-121 need
/// less), and 8 where the free memory is unknown; on the CPU at most 4 (its kernels are
/// fastest in small batches), fewer where the memory available is short (4 if unknown).
pub fn batch_size(device: &Device, (h, w): (usize, usize)) -> usize {
    if device.is_cpu() {
        return batch_for(available_ram(), (h, w)).min(4);
    }
    batch_for(free_memory(device), (h, w))
}

fn batch_for(free: Option<u64>, (h, w): (usize, usize)) -> usize {
    let per_input = ((384u64 << 20) * (h * w) as u64 / (224 * 224)).max(1);
    free.map_or(8, |free| (free / 2 / per_input).max(1) as usize)
}

/// The memory the system can give without swapping (Linux' `MemAvailable`); `None` where
/// unknown.
fn available_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// A short name for people: "cpu", "cuda:0", "metal:0".
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Whether an error from a run on a GPU is the device failing (out of memory, a kernel that
/// cannot launch, a lost device) rather than the input, the settings or a bug of ours: only
/// such a run is worth redoing on the CPU. A shape or dtype error would fail there too, and
/// calling it "the GPU failed" would hide the bug.
pub fn is_device_failure(e: &Error) -> bool {
    match e {
        Error::Device(_) => true,
        Error::Candle(c) => is_device_error(c),
        _ => false,
    }
}

/// Markers of device errors in the texts of errors that reach us as strings (cudarc's
/// `DriverError(CUDA_ERROR_OUT_OF_MEMORY, ..)`, Metal's buffer allocation failures).
const DEVICE_ERROR_MARKERS: [&str; 5] = [
    "CUDA_ERROR",
    "out of memory",
    "OUT_OF_MEMORY",
    "DriverError",
    "Metal error",
];

fn is_device_error(e: &candle_core::Error) -> bool {
    use candle_core::Error as E;
    match e {
        E::Cuda(_) | E::Metal(_) => true,
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            is_device_error(inner)
        }
        E::Msg(_) | E::Wrapped(_) | E::WrappedContext { .. } => {
            let text = e.to_string();
            DEVICE_ERROR_MARKERS.iter().any(|m| text.contains(m))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_device_errors_count_as_the_device_failing() {
        let msg = |m: &str| Error::Candle(candle_core::Error::Msg(m.into()));
        let oom = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
        assert!(is_device_failure(&msg(oom)));
        assert!(is_device_failure(&Error::Candle(
            candle_core::Error::Msg(oom.into()).bt()
        )));
        assert!(is_device_failure(&Error::Device("no NVIDIA driver".into())));
        // A bug of ours (a shape mismatch) fails on every device: not retried on the CPU.
        let shape = candle_core::Error::ShapeMismatchBinaryOp {
            lhs: (2, 3).into(),
            rhs: (3, 2).into(),
            op: "add",
        };
        assert!(!is_device_failure(&Error::Candle(shape)));
        assert!(!is_device_failure(&msg(
            "unexpected rank, expected: 4, got: 3"
        )));
        assert!(!is_device_failure(&Error::InvalidParam("kernel".into())));
        assert!(!is_device_failure(&Error::Cancelled));
    }

    /// A machine whose CUDA opens (as the CPU, standing in) or fails with `err`; no Metal.
    fn fake<'a>(
        cuda: Option<&'static str>,
        calls: &'a mut Vec<Gpu>,
    ) -> impl FnMut(Gpu) -> Option<candle_core::Result<Device>> + 'a {
        move |gpu| {
            calls.push(gpu);
            match (gpu, cuda) {
                (Gpu::Cuda, None) => Some(Ok(Device::Cpu)),
                (Gpu::Cuda, Some(err)) => Some(Err(candle_core::Error::Msg(err.into()))),
                (Gpu::Metal, _) => None,
            }
        }
    }

    #[test]
    fn each_gpu_kind_is_probed_once_and_every_choice_reads_that_probe() {
        let mut calls = Vec::new();
        let probe = Probe::run(&mut fake(None, &mut calls));
        probe.open(DeviceChoice::Auto).unwrap();
        probe.open(DeviceChoice::Cuda).unwrap();
        let options = probe.options();
        assert_eq!(calls, [Gpu::Cuda, Gpu::Metal], "one attempt per kind");
        let cuda = options
            .iter()
            .find(|o| o.choice == DeviceChoice::Cuda)
            .unwrap();
        assert!(cuda.usable);
        assert!(options[0].detail.contains("CUDA"), "{}", options[0].detail);
        assert_eq!(probe.why_no_gpu(), None);
    }

    #[test]
    fn a_failing_cuda_device_reports_why_with_the_driver_error() {
        for (err, why) in [
            (
                "DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device\")",
                "no NVIDIA GPU",
            ),
            (
                "DriverError(CUDA_ERROR_STUB_LIBRARY, \"stub\")",
                "no NVIDIA driver",
            ),
            (
                "DriverError(CUDA_ERROR_INSUFFICIENT_DRIVER, \"\")",
                "driver is older",
            ),
        ] {
            let mut calls = Vec::new();
            let probe = Probe::run(&mut fake(Some(err), &mut calls));
            let msg = probe.open(DeviceChoice::Cuda).unwrap_err().to_string();
            assert!(
                msg.contains("cannot use cuda device 0") && msg.contains(why) && msg.contains(err),
                "{msg}"
            );
            // Auto falls back to the CPU; the menu says why CUDA is unusable.
            assert!(probe.open(DeviceChoice::Auto).unwrap().is_cpu());
            let options = probe.options();
            let cuda = options
                .iter()
                .find(|o| o.choice == DeviceChoice::Cuda)
                .unwrap();
            assert!(!cuda.usable && cuda.detail.contains(why), "{}", cuda.detail);
            assert!(
                options[0].detail.contains("the CPU"),
                "{}",
                options[0].detail
            );
        }
    }

    #[test]
    fn a_gpu_this_build_lacks_is_named_with_the_feature_to_build() {
        let probe = Probe::run(&mut |_| None);
        let err = probe.open(DeviceChoice::Metal).unwrap_err().to_string();
        assert!(err.contains("--features metal"), "{err}");
        let metal = probe
            .options()
            .into_iter()
            .find(|o| o.choice == DeviceChoice::Metal)
            .unwrap();
        assert!(!metal.usable && metal.detail.contains("Not compiled"));
        assert_eq!(probe.why_no_gpu(), None, "a CPU build says nothing");
    }

    #[test]
    fn batches_follow_the_free_memory() {
        let gib = 1u64 << 30;
        // This machine has gigabytes available: the CPU's 4. Were 1 GiB available, one
        // 224 x 224 input at a time.
        if cfg!(target_os = "linux") {
            assert!(available_ram().is_some_and(|b| b > 3 * gib));
            assert_eq!(batch_size(&Device::Cpu, (224, 224)), 4);
        }
        assert_eq!(batch_for(Some(gib), (224, 224)).min(4), 1);
        assert_eq!(batch_for(Some(3 * gib), (224, 224)).min(4), 4);
        // An H200 with 139 GiB free takes a whole 25-sample SmoothGrad at once; a laptop GPU
        // with 6 GiB free takes 8; a 1024 x 1024 input on it, one; unknown memory, 8.
        assert_eq!(batch_for(Some(139 * gib), (224, 224)), 185);
        assert_eq!(batch_for(Some(6 * gib), (224, 224)), 8);
        assert_eq!(batch_for(Some(6 * gib), (1024, 1024)), 1);
        assert_eq!(batch_for(None, (224, 224)), 8);
    }
}
