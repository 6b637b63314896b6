//! Reading a checkpoint file into named tensors, without executing anything.

use candle_core::Device;

use super::layers::Weights;
use super::pth;
use crate::error::{Error, Result};

/// Reads weights (safetensors or a safe .pth read), normalising the key prefixes that
/// DataParallel (`module.`) and CheXNet-style wrappers (`densenet121.`, `model.`) add. Names are
/// otherwise left as they are: renaming for one architecture is that architecture's loader's job.
pub fn read_weights(path: &std::path::Path) -> Result<Weights> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let raw = if is_safetensors {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            Error::Weights(format!(
                "{}: not a valid safetensors file ({e})",
                path.display()
            ))
        })?
    } else {
        pth::load(path)?
    };
    let tensors = raw
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, t)| {
            let mut k = k.as_str();
            while let Some(rest) = ["module.", "densenet121.", "model."]
                .iter()
                .find_map(|p| k.strip_prefix(p))
            {
                k = rest;
            }
            (k.to_string(), t)
        })
        .collect();
    Ok(Weights::new(tensors))
}
