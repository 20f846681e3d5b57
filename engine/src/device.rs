//! Choosing where tensors live: `--device auto|cpu|cuda`.

use std::str::FromStr;

use candle_core::Device;

use crate::error::{Error, Result};

/// The user's device request. `Auto` takes CUDA when the build has the `cuda` feature and a GPU
/// answers, the CPU otherwise; `Cuda` fails clearly rather than falling back silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    /// Resolves the request to a concrete candle device.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda => cuda_device(),
            DeviceChoice::Auto => Ok(cuda_device().unwrap_or(Device::Cpu)),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device> {
    // candle appends a backtrace to its driver errors; the first line says what went wrong.
    Device::new_cuda(0).map_err(|e| Error::DeviceUnavailable {
        requested: "cuda".into(),
        reason: e.to_string().lines().next().unwrap_or_default().to_string(),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device> {
    Err(Error::DeviceUnavailable {
        requested: "cuda".into(),
        reason: "this build of Trio has no CUDA support (rebuild with `--features cuda`)".into(),
    })
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            other => Err(Error::InvalidArgument(format!(
                "unknown device `{other}`: expected auto, cpu or cuda"
            ))),
        }
    }
}

/// A short human name for a device, for logs and `--json` output.
pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices_and_rejects_unknown() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn auto_always_resolves() {
        assert!(DeviceChoice::Auto.resolve().is_ok());
        assert!(DeviceChoice::Cpu.resolve().unwrap().is_cpu());
    }
}
