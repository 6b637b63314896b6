//! Inner loops compiled for AVX2 + FMA when the CPU has them (checked once at run time), so
//! the release build stays portable to any x86-64 while the hot loops use 8-wide FMAs.

use std::mem::MaybeUninit;

/// Whether the portable kernels fuse their multiply-adds: only where the CPU surely has FMA
/// (every aarch64 CPU does); on an x86-64 without it, `mul_add` is a libm call per element.
pub(crate) const PORTABLE_FMA: bool = !cfg!(target_arch = "x86_64");

/// True when the kernels called on this thread take their AVX2 + FMA code (on the AVX-512
/// path too): every kernel asks here, so [`super::kernel_path`] (`UNVEIL_KERNELS`, tests)
/// decides for all of them.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    use super::kernel_path::{KernelPath, current};
    matches!(current(), KernelPath::Avx2 | KernelPath::Avx512)
}

/// True when the GEMM micro-kernels called on this thread take their AVX-512 code.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    super::kernel_path::current() == super::kernel_path::KernelPath::Avx512
}

/// The backward of a ReLU (`cap` = infinity) or ReLU6 (`cap` = 6) from its output `y`:
/// `dst = g` where `0 < y < cap`, else 0; with `guided`, negative `g` become 0 too. Writes
/// every element of `dst` (which may start uninitialised) up to the shorter input.
pub(crate) fn relu_grad(
    dst: &mut [MaybeUninit<f32>],
    y: &[f32],
    g: &[f32],
    cap: f32,
    guided: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { relu_grad_avx2(dst, y, g, cap, guided) };
    }
    relu_grad_any(dst, y, g, cap, guided)
}

#[inline(always)]
fn relu_grad_any(dst: &mut [MaybeUninit<f32>], y: &[f32], g: &[f32], cap: f32, guided: bool) {
    let floor = if guided { 0.0 } else { f32::NEG_INFINITY };
    for ((d, &y), &g) in dst.iter_mut().zip(y).zip(g) {
        d.write(if y > 0.0 && y < cap {
            g.max(floor)
        } else {
            0.0
        });
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn relu_grad_avx2(dst: &mut [MaybeUninit<f32>], y: &[f32], g: &[f32], cap: f32, guided: bool) {
    relu_grad_any(dst, y, g, cap, guided)
}
