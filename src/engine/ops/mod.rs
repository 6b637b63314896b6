//! Custom candle ops with hand-written backward passes.
//!
//! Why they exist: guided backpropagation needs a ReLU whose backward differs from the
//! derivative, and stock candle spends most of a saliency pass in a per-channel depthwise
//! convolution and in computing weight gradients nobody asked for. The ops here compute only
//! what saliency needs: the gradient with respect to the input.
//!
//! Every fast path is CPU code; on other devices the layers fall back to stock candle ops
//! (see [`Backend`]), so a missing GPU kernel costs speed, never correctness.

pub mod activation;
pub mod conv;
pub mod conv_act;
pub mod depthwise;
pub mod pool;
pub(crate) mod simd;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Device, Result, Storage, Tensor};

/// Which implementation the layers use. `Fast` uses this module's ops where the device has
/// them; `Stock` uses only candle's own ops (the reference the fast ops are tested against).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Fast,
    Stock,
}

impl Backend {
    /// True when the CPU-only fast kernels may be used for tensors on `device`.
    pub fn fast_cpu(self, device: &Device) -> bool {
        self == Backend::Fast && device.is_cpu()
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (copying only if it is strided).
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.contiguous()?
    };
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("expected an f32 tensor on the cpu, got {:?}", t.dtype())
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("tensor is not contiguous".into()))?;
    Ok(f(&data[start..end]))
}

/// The contiguous f32 slice of a CPU storage, or an error naming the op.
pub(crate) fn cpu_f32_slice<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &candle_core::Layout,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 is supported, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}
