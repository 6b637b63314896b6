//! Reading a checkpoint file into named tensors, without executing anything. The format is
//! recognised from the file's first bytes, whatever its name (`.pth.tar`, `.ckpt`, `.bin`, ...).
//!
//! Layout: `pth` (`torch.save` files, zip and legacy: storages and tensor views, sizes checked
//! before allocating), `pickle` (a pickle VM that builds data and never calls) with `value`
//! (what it builds; the allowlist of globals), `state` (the state dict inside the object
//! graph, whole models walked as data).

mod pickle;
mod pth;
mod state;
mod value;

use std::io::Read;
use std::path::Path;

use candle_core::Device;

pub(super) use pth::Checkpoint;

use super::layers::Weights;
use crate::error::{Error, Result};

/// What a file's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    Safetensors,
    /// `torch.save`, PyTorch >= 1.6 (a zip archive).
    TorchZip,
    /// `torch.save`, before PyTorch 1.6 (pickles, then raw storages).
    TorchLegacy,
}

/// Recognises a weights file from its first bytes.
pub(super) fn sniff(path: &Path) -> Result<Format> {
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut n = 0;
            while n < head.len() {
                match f.read(&mut head[n..])? {
                    0 => break,
                    k => n += k,
                }
            }
            Ok(n)
        })
        .map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    let fail = |what: &str| Err(Error::Weights(format!("{}: {what}", path.display())));
    match head {
        [b'P', b'K', 3 | 5, 4 | 6, ..] => Ok(Format::TorchZip),
        // safetensors: a u64 header length (its low byte may be anything), then the JSON.
        [_, _, _, _, _, _, _, _, b'{', ..] => Ok(Format::Safetensors),
        [0x80, ..] => Ok(Format::TorchLegacy),
        _ if path.extension().is_some_and(|e| e == "safetensors") => Ok(Format::Safetensors),
        [0x89, b'H', b'D', b'F', ..] => fail(
            "an HDF5 (Keras) file; unveil reads safetensors and PyTorch checkpoints (see \
             scripts/fetch/convert_pneumonia_xception.py for converting a Keras model)",
        ),
        [] => fail("an empty file"),
        _ => fail(
            "not a weights file unveil can read (safetensors, or a PyTorch torch.save file: \
             .pth, .pt, .pth.tar, .ckpt, .bin)",
        ),
    }
}

/// Reads any supported weights file, with what a whole pickled model says about itself.
pub(super) fn read_checkpoint(path: &Path) -> Result<(Weights, Checkpoint)> {
    let mut ck = match sniff(path)? {
        Format::Safetensors => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let tensors =
                candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
                    Error::Weights(format!(
                        "{}: not a valid safetensors file ({e})",
                        path.display()
                    ))
                })?;
            Checkpoint {
                tensors,
                ..Checkpoint::default()
            }
        }
        Format::TorchZip => pth::load_zip(path)?,
        Format::TorchLegacy => pth::load_legacy(path)?,
    };
    let tensors = std::mem::take(&mut ck.tensors)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, t)| (strip_wrappers(&k).to_string(), t))
        .collect();
    Ok((Weights::new(tensors), ck))
}

/// Reads weights (safetensors or a safe PyTorch read), normalising the key prefixes that
/// DataParallel (`module.`) and CheXNet-style wrappers (`densenet121.`, `model.`) add. Names are
/// otherwise left as they are: renaming for one architecture is that architecture's loader's job.
pub fn read_weights(path: &Path) -> Result<Weights> {
    Ok(read_checkpoint(path)?.0)
}

fn strip_wrappers(mut k: &str) -> &str {
    while let Some(rest) = ["module.", "densenet121.", "model."]
        .iter()
        .find_map(|p| k.strip_prefix(p))
    {
        k = rest;
    }
    k
}
