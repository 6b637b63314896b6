//! Choosing where the model runs: CUDA or Metal when built in and present, else the CPU.

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

/// A GPU backend candle may have been built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gpu {
    Cuda,
    Metal,
}

impl Gpu {
    fn name(self) -> &'static str {
        match self {
            Gpu::Cuda => "cuda",
            Gpu::Metal => "metal",
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

/// The choices worth offering on this machine: `Auto`, each GPU that opens, and the CPU.
/// Probing opens each GPU once: call it once (at start), not per frame.
pub fn options() -> Vec<DeviceChoice> {
    let mut v = vec![DeviceChoice::Auto];
    for (gpu, choice) in [
        (Gpu::Cuda, DeviceChoice::Cuda),
        (Gpu::Metal, DeviceChoice::Metal),
    ] {
        if matches!(gpu.open(), Some(Ok(_))) {
            v.push(choice);
        }
    }
    v.push(DeviceChoice::Cpu);
    v
}

/// Opens the chosen device; `Auto` tries each GPU once and falls back to the CPU.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    open_with(choice, &mut Gpu::open)
}

/// [`open`] with the GPU opener given (tests count and fake the attempts).
fn open_with(
    choice: DeviceChoice,
    open_gpu: &mut dyn FnMut(Gpu) -> Option<candle_core::Result<Device>>,
) -> Result<Device> {
    let gpu = match choice {
        DeviceChoice::Cpu => return Ok(Device::Cpu),
        DeviceChoice::Auto => {
            for gpu in [Gpu::Cuda, Gpu::Metal] {
                if let Some(Ok(device)) = open_gpu(gpu) {
                    return Ok(device);
                }
            }
            return Ok(Device::Cpu);
        }
        DeviceChoice::Cuda => Gpu::Cuda,
        DeviceChoice::Metal => Gpu::Metal,
    };
    match open_gpu(gpu) {
        Some(Ok(device)) => Ok(device),
        // The real reason (no driver, no device, out of memory...), not a guess.
        Some(Err(e)) => Err(Error::Device(format!(
            "cannot open {} device 0: {e}",
            gpu.name()
        ))),
        None => Err(Error::Device(format!(
            "{0} is not available: this build has no {0} support (build with --features {0})",
            gpu.name()
        ))),
    }
}

/// A short name for people: "cpu", "cuda:0", "metal:0".
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine whose CUDA opens (as the CPU, standing in) or fails with `err`.
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
    fn auto_opens_a_present_gpu_exactly_once() {
        let mut calls = Vec::new();
        open_with(DeviceChoice::Auto, &mut fake(None, &mut calls)).unwrap();
        assert_eq!(calls, [Gpu::Cuda], "one attempt, no probe before it");
    }

    #[test]
    fn a_failing_cuda_device_reports_the_driver_error() {
        let mut calls = Vec::new();
        let err = open_with(
            DeviceChoice::Cuda,
            &mut fake(Some("CUDA_ERROR_NO_DEVICE"), &mut calls),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cannot open cuda device 0") && err.contains("CUDA_ERROR_NO_DEVICE"),
            "{err}"
        );
        assert_eq!(calls, [Gpu::Cuda]);
        // Auto falls back to the CPU, trying each GPU once.
        let mut calls = Vec::new();
        let d = open_with(
            DeviceChoice::Auto,
            &mut fake(Some("CUDA_ERROR_NO_DEVICE"), &mut calls),
        )
        .unwrap();
        assert!(d.is_cpu());
        assert_eq!(calls, [Gpu::Cuda, Gpu::Metal]);
    }

    #[test]
    fn a_gpu_this_build_lacks_is_named_with_the_feature_to_build() {
        let err = open_with(DeviceChoice::Metal, &mut |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features metal"), "{err}");
    }
}
