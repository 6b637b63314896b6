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

/// The devices this build can use on this machine, CPU last.
pub fn available() -> Vec<DeviceChoice> {
    let mut v = Vec::new();
    if candle_core::utils::cuda_is_available() && Device::new_cuda(0).is_ok() {
        v.push(DeviceChoice::Cuda);
    }
    if candle_core::utils::metal_is_available() && Device::new_metal(0).is_ok() {
        v.push(DeviceChoice::Metal);
    }
    v.push(DeviceChoice::Cpu);
    v
}

/// Opens the chosen device; `Auto` falls back to the CPU.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    let unavailable = |what: &str| {
        Error::InvalidParam(format!(
            "{what} is not available (build with --features {what} on a machine that has one)"
        ))
    };
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => Device::new_cuda(0).map_err(|_| unavailable("cuda")),
        DeviceChoice::Metal => Device::new_metal(0).map_err(|_| unavailable("metal")),
        DeviceChoice::Auto => Ok(available()
            .into_iter()
            .find_map(|c| match c {
                DeviceChoice::Cuda => Device::new_cuda(0).ok(),
                DeviceChoice::Metal => Device::new_metal(0).ok(),
                _ => None,
            })
            .unwrap_or(Device::Cpu)),
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
