//! Fused CPU kernels, each with its hand-written input-gradient backward, for the row-wise and
//! elementwise chains of transformer-style graphs: layer normalisation and softmax over the
//! last axis, and GELU (erf and tanh forms).
//!
//! Why: written as candle tensor ops, each of these is 6-10 ops, every one a full pass over
//! memory into a fresh buffer forward and several more backward (a fifth of a ViT's or a
//! ConvNeXt's SmoothGrad sample). Here each is one pass per row forward and one backward, with
//! a vectorisable `exp` and `erf` instead of a libm call per element.
//!
//! What must hold:
//! - Same function as the tensor-op formulas they replace (within float rounding: sums run in
//!   16 f32 lanes, the variance in two passes; `exp` within ~2e-7 relative, `erf` within 2e-7
//!   absolute), and never a NaN for finite input (`exp` of a very negative input is 0).
//! - The backward returns the gradient for `x` only: scale and bias are constants (callers
//!   take the tensor-op path where they are not).
//! - CPU f32 only ([`fits`]); callers keep the device-generic tensor ops everywhere else.
//! - The AVX2 + FMA variants run only where [`super::simd::has_avx2_fma`] says so (the
//!   [`super::kernel_path`] switch), so the portable code is the same source, compiled plainly.
//!
//! They live with the other CPU kernels (not in the ONNX module) because nothing in them is
//! ONNX's: any model written in the engine's ops may use them.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::{assume_init, generic, vec_written_by, with_cpu_f32};

/// Elements per parallel task: enough to amortise the task, small enough to spread.
const TASK: usize = 1 << 14;
/// Independent accumulators per sum: two AVX2 registers, so adds overlap.
const LANES: usize = 16;

/// True when `x` may take these kernels: a non-empty f32 tensor on the CPU.
pub(crate) fn fits(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.elem_count() > 0
}

/// Defines `$name(args)`, which runs `$body::<true>` compiled for AVX-512 or AVX2 + FMA where
/// the kernel path says so, else the portable body (fused multiply-adds per
/// `simd::PORTABLE_FMA`). The AVX-512 build is the same source (same operations in the same
/// order, so the same values), in registers twice as wide.
macro_rules! dispatch {
    ($name:ident => $body:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if super::simd::has_avx512() {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body::<true>($($arg),*)
                }
                // SAFETY: the CPU supports the features `avx512` is compiled for.
                return unsafe { avx512($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if super::simd::has_avx2_fma() {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body::<true>($($arg),*)
                }
                // SAFETY: the CPU supports the features `avx2` is compiled for.
                return unsafe { avx2($($arg),*) };
            }
            $body::<{ super::simd::PORTABLE_FMA }>($($arg),*)
        }
    };
}

/// `a * b + c`, fused where the path has FMA (a software `fmaf` elsewhere would be slow).
#[inline(always)]
fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x`: Cephes' range reduction `x = n ln2 + r`, `|r| <= ln2 / 2` (ln 2 split so that
/// `n * 0.693359375` is exact), and its polynomial; `2^n` applied as two halves so that results
/// below `f32::MIN_POSITIVE` round to subnormals or 0 and those above `f32::MAX` to infinity,
/// without branches.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub(crate) fn exp<const F: bool>(x: f32) -> f32 {
    // Past these, e^x is 0 or infinite in f32 (and n stays well inside i32).
    let x = x.clamp(-104.0, 89.0);
    // Round to nearest by the 1.5 * 2^23 trick (`round` is not vectorised): `t`'s low
    // mantissa bits then hold n as an integer too (`as i32` would saturate lane by lane).
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = fma::<F>(n, -0.693359375, x);
    let r = fma::<F>(n, 2.12194440e-4, r);
    let mut p = 1.9875691500e-4;
    for c in [
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        0.5,
    ] {
        p = fma::<F>(p, r, c);
    }
    let p = fma::<F>(p * r, r, r) + 1.0;
    let n = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let half = n >> 1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    p * pow2(half) * pow2(n - half)
}

/// `erf(x)` with its own exponential: what the tests check of [`erf_with`].
#[cfg(test)]
pub(crate) fn erf<const F: bool>(x: f32) -> f32 {
    erf_with::<F>(x, exp::<F>(-x * x))
}

/// `erf(x)` given `e = e^{-x^2}` (which GELU shares with the normal density), in f32 with one
/// division: below |x| = 1 its Taylor series to x^19 (1.3e-7 from erf), above it Abramowitz &
/// Stegun 7.1.26, `1 - (a1 t + ... + a5 t^5) e^{-x^2}` with `t = 1 / (1 + p |x|)` (1.8e-7; the
/// formula PyTorch's vectorised CPU `erf`, and so its GELU, uses everywhere, whose f32
/// cancellation near 0 reaches 5e-7). Both are computed for every lane and one is selected,
/// so the loop vectorises. (Session 10's rational approximation in f64 was closer, 6.5e-8,
/// but its f64 division made GELU 5 % of ConvNeXt-Tiny's time.)
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn erf_with<const F: bool>(x: f32, e: f32) -> f32 {
    // 2 / sqrt(pi) (-1)^k / (k! (2k + 1)), k = 9 down to 0.
    const SERIES: [f32; 10] = [
        -1.636584469e-07,
        1.646211437e-06,
        -1.492565036e-05,
        1.205533298e-04,
        -8.548327023e-04,
        5.223977625e-03,
        -2.686617065e-02,
        1.128379167e-01,
        -3.761263890e-01,
        std::f32::consts::FRAC_2_SQRT_PI,
    ];
    let x2 = x * x;
    let mut p = SERIES[0];
    for c in &SERIES[1..] {
        p = fma::<F>(p, x2, *c);
    }
    let near = x * p;
    let t = 1.0 / fma::<F>(0.327_591_1, x.abs(), 1.0);
    let mut r = 1.061_405_429;
    for c in [-1.453_152_027, 1.421_413_741, -0.284_496_736, 0.254_829_592] {
        r = fma::<F>(r, t, c);
    }
    let far = (1.0 - r * t * e).copysign(x);
    if x.abs() < 1.0 { near } else { far }
}

/// `(Phi(x), e^{-x^2/2})`: the standard normal CDF, `(1 + erf(x / sqrt 2)) / 2`, and the
/// exponential it shares with the density `e^{-x^2/2} / sqrt(2 pi)`.
#[inline(always)]
fn normal_cdf<const F: bool>(x: f32) -> (f32, f32) {
    let e = exp::<F>(-0.5 * x * x);
    let erf = erf_with::<F>(x * std::f32::consts::FRAC_1_SQRT_2, e);
    (0.5 * (1.0 + erf), e)
}

/// Sum of `f(a[i], b[i])` in [`LANES`] accumulators (so that it vectorises).
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = (ca.remainder().iter().zip(cb.remainder()))
        .map(|(&a, &b)| f(a, b))
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f(ca[l], cb[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rows per parallel task for rows of `d` elements.
fn rows_per_task(d: usize) -> usize {
    (TASK / d.max(1)).max(1)
}

/// A CPU tensor shaped like `like` from `data`.
fn shaped(data: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(data, like.shape(), like.device())
}

// ---- Layer normalisation over the last axis ----

/// `(x - mean) / sqrt(var + eps) * scale + bias` over the last axis of a CPU f32 `x`
/// (biased variance, as ONNX and PyTorch), `scale` and `bias` holding one value per element
/// of that axis. Differentiable in `x` only.
pub(crate) fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(1);
    let values = |t: &Tensor, what: &str| -> Result<Vec<f32>> {
        if t.elem_count() != d {
            candle_core::bail!("layer norm: {what} has {} values for {d}", t.elem_count())
        }
        t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
    };
    let scale = values(scale, "scale")?;
    let bias = match bias {
        Some(b) => values(b, "bias")?,
        None => vec![0.0; d],
    };
    // Per row: mean and 1 / std, kept for the backward.
    let mut stats = vec![(0f32, 0f32); x.elem_count() / d.max(1)];
    let y = with_cpu_f32(x, |xs| {
        let per = rows_per_task(d);
        let fill = |out: &mut [MaybeUninit<f32>]| {
            (out.par_chunks_mut(per * d).zip(xs.par_chunks(per * d)))
                .zip(stats.par_chunks_mut(per))
                .for_each(|((o, x), s)| ln_forward(x, &scale, &bias, eps, o, s))
        };
        // SAFETY: `ln_forward` writes every element of each chunk.
        unsafe { vec_written_by(xs.len(), fill) }
    })?;
    let y = shaped(y, x)?;
    let stats = Arc::new(stats);
    generic::attach(x, y, move |x, _, g| {
        let dx = with_cpu_f32(x, |xs| {
            with_cpu_f32(g, |gs| {
                let per = rows_per_task(d);
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    (out.par_chunks_mut(per * d).zip(xs.par_chunks(per * d)))
                        .zip(gs.par_chunks(per * d).zip(stats.par_chunks(per)))
                        .for_each(|((o, x), (g, s))| ln_backward(x, g, &scale, s, o))
                };
                // SAFETY: `ln_backward` writes every element of each chunk.
                unsafe { vec_written_by(xs.len(), fill) }
            })
        })??;
        shaped(dx, x)
    })
}

dispatch!(ln_forward => ln_forward_rows(
    x: &[f32], scale: &[f32], bias: &[f32], eps: f32,
    out: &mut [MaybeUninit<f32>], stats: &mut [(f32, f32)]
));

#[inline(always)]
fn ln_forward_rows<const F: bool>(
    x: &[f32],
    scale: &[f32],
    bias: &[f32],
    eps: f32,
    out: &mut [MaybeUninit<f32>],
    stats: &mut [(f32, f32)],
) {
    let d = scale.len();
    for ((x, o), st) in x.chunks(d).zip(out.chunks_mut(d)).zip(stats) {
        let inv_d = 1.0 / d as f32;
        let mean = lane_sum(x, x, |a, _| a) * inv_d;
        // Two passes: no cancellation when the mean is large against the spread.
        let var = lane_sum(x, x, |a, _| (a - mean) * (a - mean)) * inv_d;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((o, &x), &s), &b) in o.iter_mut().zip(x).zip(scale).zip(bias) {
            o.write(fma::<F>((x - mean) * rstd, s, b));
        }
        *st = (mean, rstd);
    }
}

dispatch!(ln_backward => ln_backward_rows(
    x: &[f32], g: &[f32], scale: &[f32], stats: &[(f32, f32)], out: &mut [MaybeUninit<f32>]
));

/// `dx = rstd (gs - mean(gs) - xhat mean(gs xhat))` with `gs = g scale`, per row.
#[inline(always)]
fn ln_backward_rows<const F: bool>(
    x: &[f32],
    g: &[f32],
    scale: &[f32],
    stats: &[(f32, f32)],
    out: &mut [MaybeUninit<f32>],
) {
    let d = scale.len();
    let rows = x.chunks(d).zip(g.chunks(d)).zip(out.chunks_mut(d));
    for (((x, g), o), &(mean, rstd)) in rows.zip(stats) {
        let (mut sg, mut sgx) = ([0f32; LANES], [0f32; LANES]);
        let (mut tg, mut tgx) = (0f32, 0f32);
        let (cx, cg, cs) = (
            x.chunks_exact(LANES),
            g.chunks_exact(LANES),
            scale.chunks_exact(LANES),
        );
        for ((&x, &g), &s) in cx
            .remainder()
            .iter()
            .zip(cg.remainder())
            .zip(cs.remainder())
        {
            let gs = g * s;
            tg += gs;
            tgx += gs * (x - mean);
        }
        for ((x, g), s) in cx.zip(cg).zip(cs) {
            for l in 0..LANES {
                let gs = g[l] * s[l];
                sg[l] += gs;
                sgx[l] = fma::<F>(gs, x[l] - mean, sgx[l]);
            }
        }
        let inv_d = 1.0 / d as f32;
        let mean_g = (sg.iter().sum::<f32>() + tg) * inv_d;
        let mean_gx = (sgx.iter().sum::<f32>() + tgx) * inv_d * rstd;
        for (((o, &x), &g), &s) in o.iter_mut().zip(x).zip(g).zip(scale) {
            let xhat = (x - mean) * rstd;
            o.write(rstd * fma::<F>(-xhat, mean_gx, g * s - mean_g));
        }
    }
}

// ---- Softmax over the last axis ----

/// `exp(x - max) / sum(exp(x - max))` over the last axis of a CPU f32 `x`, differentiable.
pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(1);
    let y = with_cpu_f32(x, |xs| {
        let per = rows_per_task(d) * d;
        let fill = |out: &mut [MaybeUninit<f32>]| {
            (out.par_chunks_mut(per).zip(xs.par_chunks(per)))
                .for_each(|(o, x)| softmax_forward(x, d, o))
        };
        // SAFETY: `softmax_forward` writes every element of each chunk.
        unsafe { vec_written_by(xs.len(), fill) }
    })?;
    let y = shaped(y, x)?;
    generic::attach(x, y, move |x, y, g| {
        let dx = with_cpu_f32(y, |ys| {
            with_cpu_f32(g, |gs| {
                let per = rows_per_task(d) * d;
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    (out.par_chunks_mut(per).zip(ys.par_chunks(per)))
                        .zip(gs.par_chunks(per))
                        .for_each(|((o, y), g)| softmax_backward(y, g, d, o))
                };
                // SAFETY: `softmax_backward` writes every element of each chunk.
                unsafe { vec_written_by(ys.len(), fill) }
            })
        })??;
        shaped(dx, x)
    })
}

dispatch!(softmax_forward => softmax_forward_rows(
    x: &[f32], d: usize, out: &mut [MaybeUninit<f32>]
));

#[inline(always)]
fn softmax_forward_rows<const F: bool>(x: &[f32], d: usize, out: &mut [MaybeUninit<f32>]) {
    for (x, o) in x.chunks(d).zip(out.chunks_mut(d)) {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let cx = x.chunks_exact(LANES);
        let mut max = cx
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for c in cx {
            for l in 0..LANES {
                lanes[l] = lanes[l].max(c[l]);
            }
        }
        max = lanes.iter().fold(max, |m, &v| m.max(v));
        for (o, &x) in o.iter_mut().zip(x) {
            o.write(exp::<F>(x - max));
        }
        // SAFETY: every element of the row was just written.
        let o = unsafe { assume_init(o) };
        let inv = 1.0 / lane_sum(o, o, |a, _| a);
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

dispatch!(softmax_backward => softmax_backward_rows(
    y: &[f32], g: &[f32], d: usize, out: &mut [MaybeUninit<f32>]
));

/// `dx = y (g - sum(g y))`, per row.
#[inline(always)]
fn softmax_backward_rows<const F: bool>(
    y: &[f32],
    g: &[f32],
    d: usize,
    out: &mut [MaybeUninit<f32>],
) {
    for ((y, g), o) in y.chunks(d).zip(g.chunks(d)).zip(out.chunks_mut(d)) {
        let dot = lane_sum(y, g, |y, g| y * g);
        for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
            o.write(y * (g - dot));
        }
    }
}

// ---- GELU ----

/// GELU on `backend`'s path for `x`: [`gelu`] where it fits the fast CPU path, candle's
/// formulas (which have a backward) elsewhere.
pub(crate) fn gelu_on(x: &Tensor, tanh: bool, backend: super::Backend) -> Result<Tensor> {
    match (backend.fast_cpu(x.device()) && fits(x), tanh) {
        (true, _) => gelu(x, tanh),
        (false, true) => x.gelu(),
        (false, false) => x.gelu_erf(),
    }
}

/// `x Phi(x)` (`tanh`: PyTorch's tanh approximation of it) on a CPU f32 `x`, differentiable.
pub(crate) fn gelu(x: &Tensor, tanh: bool) -> Result<Tensor> {
    let y = with_cpu_f32(x, |xs| {
        let fill = |out: &mut [MaybeUninit<f32>]| {
            (out.par_chunks_mut(TASK).zip(xs.par_chunks(TASK)))
                .for_each(|(o, x)| gelu_forward(x, tanh, o))
        };
        // SAFETY: `gelu_forward` writes every element of each chunk.
        unsafe { vec_written_by(xs.len(), fill) }
    })?;
    let y = shaped(y, x)?;
    generic::attach(x, y, move |x, _, g| {
        let dx = with_cpu_f32(x, |xs| {
            with_cpu_f32(g, |gs| {
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    (out.par_chunks_mut(TASK).zip(xs.par_chunks(TASK)))
                        .zip(gs.par_chunks(TASK))
                        .for_each(|((o, x), g)| gelu_backward(x, g, tanh, o))
                };
                // SAFETY: `gelu_backward` writes every element of each chunk.
                unsafe { vec_written_by(xs.len(), fill) }
            })
        })??;
        shaped(dx, x)
    })
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const TANH_CUBIC: f32 = 0.044_715;

/// `(tanh u, du/dx)` of the tanh form's `u = sqrt(2/pi) (x + 0.044715 x^3)`. Past |x| = 10,
/// tanh u is +-1 in f32; clamping there keeps `x^3` finite, so no `0 * inf` later.
#[inline(always)]
fn tanh_form<const F: bool>(x: f32) -> (f32, f32) {
    let x = x.clamp(-10.0, 10.0);
    let x2 = x * x;
    let u = SQRT_2_OVER_PI * x * fma::<F>(TANH_CUBIC, x2, 1.0);
    // tanh u = 1 - 2 / (e^{2u} + 1): exact limits +-1 as e^{2u} overflows or vanishes.
    let t = 1.0 - 2.0 / (exp::<F>(2.0 * u) + 1.0);
    (t, SQRT_2_OVER_PI * fma::<F>(3.0 * TANH_CUBIC, x2, 1.0))
}

dispatch!(gelu_forward => gelu_forward_all(x: &[f32], tanh: bool, out: &mut [MaybeUninit<f32>]));

#[inline(always)]
fn gelu_forward_all<const F: bool>(x: &[f32], tanh: bool, out: &mut [MaybeUninit<f32>]) {
    if tanh {
        for (o, &x) in out.iter_mut().zip(x) {
            let (t, _) = tanh_form::<F>(x);
            o.write(0.5 * x * (1.0 + t));
        }
    } else {
        for (o, &x) in out.iter_mut().zip(x) {
            o.write(x * normal_cdf::<F>(x).0);
        }
    }
}

dispatch!(gelu_backward => gelu_backward_all(
    x: &[f32], g: &[f32], tanh: bool, out: &mut [MaybeUninit<f32>]
));

/// `dx = g (Phi(x) + x phi(x))` (the tanh form: the derivative of its own formula).
#[inline(always)]
fn gelu_backward_all<const F: bool>(
    x: &[f32],
    g: &[f32],
    tanh: bool,
    out: &mut [MaybeUninit<f32>],
) {
    // 1 / sqrt(2 pi): the standard normal density's constant.
    const PDF: f32 = 0.398_942_3;
    if tanh {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
            let (t, du) = tanh_form::<F>(x);
            let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
            o.write(g * d);
        }
    } else {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
            // e^{-x^2/2} is 0 (never NaN) however large x is.
            let (cdf, e) = normal_cdf::<F>(x);
            o.write(g * fma::<F>(x, PDF * e, cdf));
        }
    }
}

dispatch!(gelu_in_place => gelu_in_place_all(
    x: &mut [f32], d: &mut [MaybeUninit<f32>], tanh: bool
));

/// `x <- GELU(x)` in place, writing its derivative at the input into `d` (every element up to
/// the shorter of the two): a linear layer's epilogue, while its output is still in cache.
/// The backward then multiplies by `d`, with no pass of its own (see `ops::linear`).
pub(crate) fn gelu_keeping_derivative(x: &mut [f32], d: &mut [MaybeUninit<f32>], tanh: bool) {
    gelu_in_place(x, d, tanh)
}

#[inline(always)]
fn gelu_in_place_all<const F: bool>(x: &mut [f32], d: &mut [MaybeUninit<f32>], tanh: bool) {
    const PDF: f32 = 0.398_942_3;
    if tanh {
        for (x, d) in x.iter_mut().zip(d) {
            let v = *x;
            let (t, du) = tanh_form::<F>(v);
            d.write(0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
            *x = 0.5 * v * (1.0 + t);
        }
    } else {
        for (x, d) in x.iter_mut().zip(d) {
            let v = *x;
            let (cdf, e) = normal_cdf::<F>(v);
            d.write(fma::<F>(v, PDF * e, cdf));
            *x = v * cdf;
        }
    }
}

pub(crate) mod planes;

#[cfg(test)]
mod tests;
