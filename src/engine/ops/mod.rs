//! Custom candle ops with hand-written backward passes.
//!
//! Why they exist: guided backpropagation needs a ReLU whose backward differs from the
//! derivative, and stock candle spends most of a saliency pass in a per-channel depthwise
//! convolution and in computing weight gradients nobody asked for. The ops here compute only
//! what saliency needs: the gradient with respect to the input.
//!
//! The fast kernels are CPU code. GPUs (and the CPU, when asked) run [`generic`]: the same
//! input-gradient-only layers written with stock candle tensor ops that have CUDA and Metal
//! kernels (see [`Backend`]). On the CPU, the kernels take their AVX2 code or the portable
//! one as [`kernel_path`] says (`UNVEIL_KERNELS`).

pub mod activation;
pub(crate) mod affine_act;
pub(crate) mod batch_gemm;
pub mod chain;
pub mod conv;
pub mod conv_act;
pub mod depthwise;
pub(crate) mod fused;
pub mod generic;
pub mod geometry;
pub mod kernel_path;
pub(crate) mod linear;
pub(crate) mod packed_gemm;
pub mod pool;
pub(crate) mod products;
pub(crate) mod simd;
pub(crate) mod transpose;
pub(crate) mod winograd;

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Device, Result, Storage, Tensor};

/// Which implementation the layers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// The fastest for the device: the CPU kernels on the CPU, [`Backend::Generic`] elsewhere.
    #[default]
    Fast,
    /// The device-generic path ([`generic`]) on every device: what a GPU runs, and on the CPU
    /// what tests compare with the fast kernels.
    Generic,
    /// Candle's own convolutions (the reference the fast ops are tested against); the
    /// activations and pools, which candle lacks, take the generic path off the CPU.
    Stock,
}

impl Backend {
    /// True when the CPU-only fast kernels may be used for tensors on `device`.
    pub fn fast_cpu(self, device: &Device) -> bool {
        self == Backend::Fast && device.is_cpu()
    }

    /// True when our ops (activations, pools, convolutions) take the device-generic path.
    pub fn generic(self, device: &Device) -> bool {
        self == Backend::Generic || !device.is_cpu()
    }
}

/// The most values one op's output may hold (4 GiB of f32): a model file whose sizes ask for
/// more (a mutated padding, say) gets an error, not an allocation that aborts the process.
pub(crate) const MAX_VALUES: usize = 1 << 30;

/// The number of values of `dims`, or an error naming `op` when it passes [`MAX_VALUES`].
pub(crate) fn checked_size(op: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: an output of {dims:?} is too large")))
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

/// # Safety
/// Every element of `s` must have been written.
pub(crate) unsafe fn assume_init(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the caller vouches for the values.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Zeroes `s` and returns it as initialised values.
pub(crate) fn zeroed(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    s.fill(MaybeUninit::new(0.0));
    // SAFETY: just written.
    unsafe { assume_init(s) }
}

/// A `Vec` of `len` values written by `fill`, which must write every one of them: output
/// buffers are overwritten whole, so zero-filling them first (`vec![0.0; len]`) is a wasted
/// pass over memory.
///
/// # Safety
/// `fill` must initialise its whole argument.
pub(crate) unsafe fn vec_written_by(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` initialised the first `len` values.
    unsafe { v.set_len(len) };
    v
}

/// A pointer that parallel tasks write through (output planes, packed panels, the columns of
/// a transposed output), each task to indices no other task touches.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: only used for writes to disjoint indices from parallel tasks (each user says why).
unsafe impl Send for SharedOut {}
// SAFETY: as for `Send`: tasks sharing it write disjoint indices and never read each other's.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A method, so that closures capture the whole (`Sync`) struct, not its pointer field.
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }

    /// # Safety
    /// The `len` values from `start` are in bounds and no other task uses them.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn plane<'a>(
        self,
        (start, len): (usize, usize),
    ) -> &'a mut [MaybeUninit<f32>] {
        // SAFETY: in bounds and unshared, as the caller vouches; `MaybeUninit<f32>` has the
        // layout of `f32`.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start).cast(), len) }
    }

    /// # Safety
    /// `i..i + vals.len()` is in bounds and no other task writes it.
    #[inline(always)]
    pub(crate) unsafe fn write(self, i: usize, vals: &[f32]) {
        // A loop, not `copy_nonoverlapping`: runs are at most 16 values, too short for a
        // `memcpy` call to pay.
        for (o, &v) in vals.iter().enumerate() {
            // SAFETY: `o < vals.len()`: inside the range the caller vouches for.
            unsafe { self.0.add(i + o).write(v) }
        }
    }
}
