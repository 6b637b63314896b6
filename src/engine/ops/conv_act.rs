//! Convolution + bias (+ residual) + optional ReLU/ReLU6 as one CPU op, with an
//! input-gradient-only backward.
//!
//! Why one op: through candle's autograd every op costs a pass over its output and, in the
//! backward, a zero-filled gradient buffer plus an add. A convolution layer as separate ops
//! (pad, conv, bias, residual add, activation) is up to six graph nodes; fused it is one, the
//! padding is folded into im2col, and bias, residual and activation are applied while the GEMM
//! output is still in cache. The activation's backward gates on the op's *output*
//! (`0 < y < cap` exactly when `0 < x < cap`), so nothing beyond the output is kept.

use std::borrow::Cow;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, TensorId};
use gemm::Parallelism;
use rayon::prelude::*;

use super::activation::ReluOp;
use super::depthwise::Padding;
use super::winograd::{self, WinogradWeights};
use super::{as_uninit, assume_init, vec_written_by, zeroed};

/// `act(conv(pad(x), weight) + bias)` for `x` `[n, cin, h, w]` and `weight` `[cout, cin, k, k]`
/// on the CPU, f32. Gradients flow to `x` only: the weights are constants.
pub fn conv_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Padding,
    act: Option<ReluOp>,
) -> Result<Tensor> {
    let op = Applied::for_input(x.dims4()?, weight, bias, stride, pad, act, Arc::default())?;
    op.apply(x, None)
}

/// `act(conv(pad(x), weight) + bias + skip)`: a residual block's last convolution, its
/// shortcut add and (ResNet) the ReLU after it, as one op. Gradients flow to `x` and `skip`.
#[allow(clippy::too_many_arguments)]
pub fn conv_add_act(
    x: &Tensor,
    skip: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Padding,
    act: Option<ReluOp>,
) -> Result<Tensor> {
    let op = Applied::for_input(x.dims4()?, weight, bias, stride, pad, act, Arc::default())?;
    op.apply(x, Some(skip))
}

/// What a layer keeps between calls: its kernels transformed for the Winograd path (made on
/// first use; 4 x the weights' size for each direction, forward and input gradient). Layers
/// that never take that path keep nothing.
#[derive(Default)]
pub struct ConvCache {
    /// The weight tensor this cache holds forms of: one cache serves one layer.
    owner: OnceLock<TensorId>,
    forward: OnceLock<WinogradWeights>,
    input_gradient: OnceLock<WinogradWeights>,
}

/// Valid output columns `[lo, hi)` for kernel column `kx` of a convolution with this stride and
/// left padding: those whose input column `ox * stride + off` (`off = kx - pad_left`) falls
/// inside an image `w` wide. Lets the inner loops run unchecked.
fn valid_columns(
    kx: usize,
    stride: usize,
    pad_left: usize,
    w: usize,
    ow: usize,
) -> (usize, usize, isize) {
    let off = kx as isize - pad_left as isize;
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let last = w as isize - 1 - off;
    let hi = if last < 0 {
        0
    } else {
        (last / s + 1).min(ow as isize)
    };
    (lo as usize, hi.max(lo) as usize, off)
}

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    pad: Padding,
}

impl Geometry {
    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn patch(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn in_plane(&self) -> usize {
        self.cin * self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1 x 1, stride 1, unpadded convolution reads the input as the GEMM operand directly.
    fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == Padding::default()
    }

    /// Output columns `[lo, hi)` that read input column `ox * stride + off` for kernel column
    /// `kx`; the others read padding.
    fn columns(&self, kx: usize) -> (usize, usize, isize) {
        valid_columns(kx, self.stride, self.pad.left, self.w, self.ow)
    }

    /// The input row read by output row `oy` at kernel row `ky`, if it is inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad.top)
            .filter(|&iy| iy < self.h)
    }
}

/// One convolution on inputs of known size; also a step of [`super::chain`].
pub(crate) struct Applied {
    weight: Tensor,
    bias: Tensor,
    geo: Geometry,
    batch: usize,
    act: Option<ReluOp>,
    cache: Arc<ConvCache>,
}

/// `dst [m x n] = lhs [m x k] * rhs [k x n]`, `dst` and `rhs` row-major and contiguous, `lhs`
/// read through the given row and column strides (a transposed weight needs no copy). `dst`
/// may be uninitialised (GEMM never reads it); the written `m * n` values are returned.
#[allow(clippy::too_many_arguments)]
fn matmul<'a>(
    (m, n, k): (usize, usize, usize),
    dst: &'a mut [MaybeUninit<f32>],
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    par: Parallelism,
) -> &'a mut [f32] {
    let dst = &mut dst[..m * n];
    if k == 0 {
        dst.fill(MaybeUninit::new(0.0));
    } else if m > 0 && n > 0 {
        assert!(rhs.len() >= k * n);
        assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
        // SAFETY: the asserts above (and `dst`'s length, m * n) bound every index gemm reads
        // (`i * lhs_rs + j * lhs_cs`, `j * n + c`) and writes (`i * n + c`) for i < m, j < k,
        // c < n. With `read_dst` false gemm writes `dst` before it reads it.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr().cast::<f32>(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    }
    // SAFETY: every one of the m * n values was written above.
    unsafe { assume_init(dst) }
}

thread_local! {
    /// Per-thread buffers (patch matrices, gathered weights and rows), kept between calls:
    /// each use rewrites what it reads, so reusing them saves an allocation and its page
    /// faults per convolution and sample.
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch buffer of `len` values (contents unspecified). The buffer is taken
/// out of the thread's pool while in use, so nested calls (several buffers at once, or rayon
/// running another sample's job on this thread while a parallel GEMM waits) each get their own.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| s.borrow_mut().push(buf));
    r
}

/// A GEMM over the live channels only when at most this fraction of them is live.
const COMPACT_AT_MOST: f32 = 0.875;

/// The channels of a batch `m` (`batch` x `channels` rows of `len` values) that hold a
/// non-zero value (NaN counts) in some sample, or `None` when too many do for skipping the
/// others to pay. A dead channel (a ReLU that never fired, or a guided gradient gated off
/// everywhere) only adds exact zeros to a GEMM, so leaving it out changes no value. Guided
/// backpropagation makes many: in EfficientNet-Lite0's expansion layers 10-75 % of the gated
/// gradient channels are zero in every sample of a SmoothGrad chunk.
fn live_channels(m: &[f32], batch: usize, channels: usize, len: usize) -> Option<Vec<usize>> {
    let nonzero = |row: &[f32]| {
        // Bits without the sign: -0.0 is as dead as 0.0. Blocks of 64 vectorise.
        let block = |c: &[f32]| c.iter().fold(0u32, |a, v| a | (v.to_bits() << 1)) != 0;
        row.chunks(64).any(block)
    };
    let live: Vec<usize> = (0..channels)
        .filter(|&c| (0..batch).any(|b| nonzero(&m[(b * channels + c) * len..][..len])))
        .collect();
    (live.len() as f32 <= COMPACT_AT_MOST * channels as f32).then_some(live)
}

/// Copies the `len`-long rows `rows` of `src` into `dst`, one after another.
fn gather_rows(src: &[f32], len: usize, rows: &[usize], dst: &mut [f32]) {
    if len == 1 {
        dst.iter_mut().zip(rows).for_each(|(d, &r)| *d = src[r]);
        return;
    }
    for (d, &r) in dst.chunks_exact_mut(len).zip(rows) {
        d.copy_from_slice(&src[r * len..(r + 1) * len]);
    }
}

/// Runs `f(sample, out_chunk)` for every sample: in parallel over samples when there are
/// enough of them to keep every thread busy, else one by one with a parallel GEMM.
fn for_each_sample(
    out: &mut [MaybeUninit<f32>],
    chunk: usize,
    f: impl Fn(usize, &mut [MaybeUninit<f32>], Parallelism) + Sync,
) {
    let threads = rayon::current_num_threads();
    let samples = out.len() / chunk.max(1);
    if samples >= threads {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o, Parallelism::None));
    } else {
        for (i, o) in out.chunks_mut(chunk).enumerate() {
            f(i, o, Parallelism::Rayon(threads));
        }
    }
}

/// The `[channels * k * k, oh * ow]` patch matrix of one sample's `channels`, zeros where
/// windows read padding.
fn im2col(x: &[f32], g: &Geometry, channels: &[usize], cols: &mut [f32]) {
    let (k, s, plane) = (g.k, g.stride, g.out_plane());
    for (i, &c) in channels.iter().enumerate() {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((i * k + ky) * k + kx) * plane..][..plane];
                let (lo, hi, off) = g.columns(kx);
                for (oy, dst) in row.chunks_exact_mut(g.ow).enumerate() {
                    let Some(iy) = g.input_row(oy, ky) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if s == 1 {
                        let start = (lo as isize + off) as usize;
                        dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                    } else {
                        for (ox, d) in (lo..hi).zip(&mut dst[lo..hi]) {
                            *d = src[((ox * s) as isize + off) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// Adds the patch matrix back into the image it was gathered from (the adjoint of `im2col`).
fn col2im(cols: &[f32], g: &Geometry, x: &mut [MaybeUninit<f32>]) {
    let (k, s, plane) = (g.k, g.stride, g.out_plane());
    let x = zeroed(x);
    for c in 0..g.cin {
        let xc = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((c * k + ky) * k + kx) * plane..][..plane];
                let (lo, hi, off) = g.columns(kx);
                for (oy, src) in row.chunks_exact(g.ow).enumerate() {
                    let Some(iy) = g.input_row(oy, ky) else {
                        continue;
                    };
                    let dst = &mut xc[iy * g.w..(iy + 1) * g.w];
                    if s == 1 {
                        // Contiguous: one vectorised add.
                        let start = (lo as isize + off) as usize;
                        let dst = &mut dst[start..start + hi - lo];
                        dst.iter_mut().zip(&src[lo..hi]).for_each(|(d, v)| *d += v);
                    } else {
                        for (ox, v) in (lo..hi).zip(&src[lo..hi]) {
                            dst[((ox * s) as isize + off) as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

impl Applied {
    /// For inputs `[n, cin, h, w]`.
    pub(crate) fn for_input(
        (n, cin, h, w): (usize, usize, usize, usize),
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        pad: Padding,
        act: Option<ReluOp>,
        cache: Arc<ConvCache>,
    ) -> Result<Self> {
        let (cout, wcin, k, _) = weight.dims4()?;
        if wcin != cin {
            candle_core::bail!("conv expects {wcin} input channels, got {cin}")
        }
        let (ph, pw) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
        if ph < k || pw < k {
            candle_core::bail!("conv: input {h}x{w} is smaller than the {k}x{k} kernel")
        }
        let geo = Geometry {
            cin,
            cout,
            k,
            stride,
            h,
            w,
            oh: (ph - k) / stride + 1,
            ow: (pw - k) / stride + 1,
            pad,
        };
        if *cache.owner.get_or_init(|| weight.id()) != weight.id() {
            candle_core::bail!("conv: a ConvCache is shared by two layers' weights")
        }
        Ok(Applied {
            weight: weight.detach().contiguous()?,
            bias: bias.detach().contiguous()?,
            geo,
            batch: n,
            act,
            cache,
        })
    }

    /// Runs the op on `x` (and adds `skip`, which must have the output's size).
    pub(crate) fn apply(self, x: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        match skip {
            None => x.contiguous()?.apply_op1(self),
            Some(skip) => {
                let out = self.out_dims();
                if skip.dims4()? != out {
                    candle_core::bail!("residual of shape {:?}, expected {out:?}", skip.dims())
                }
                x.contiguous()?.apply_op2(&skip.contiguous()?, self)
            }
        }
    }

    /// A 3 x 3, stride 1, padding 1 convolution runs as Winograd F(4 x 4, 3 x 3).
    fn winograd(&self) -> bool {
        let g = &self.geo;
        g.k == 3 && g.stride == 1 && g.pad == Padding::symmetric(1)
    }

    /// The layer's Winograd weights kept in `slot`, made by `make(weights, cout, cin)` on
    /// first use.
    fn winograd_weights<'a>(
        &self,
        slot: &'a OnceLock<WinogradWeights>,
        make: fn(&[f32], usize, usize) -> WinogradWeights,
    ) -> Result<&'a WinogradWeights> {
        if let Some(w) = slot.get() {
            return Ok(w);
        }
        let (cout, cin) = (self.geo.cout, self.geo.cin);
        let w = super::with_cpu_f32(&self.weight, |w| make(w, cout, cin))?;
        Ok(slot.get_or_init(|| w))
    }

    pub(crate) fn out_dims(&self) -> (usize, usize, usize, usize) {
        let g = &self.geo;
        (self.batch, g.cout, g.oh, g.ow)
    }

    fn out_shape(&self) -> Shape {
        Shape::from(self.out_dims())
    }

    /// One sample: GEMM over the input `channels` (`w` holds exactly their weights), then
    /// bias, residual and activation in one pass over the output, which is written whole.
    #[allow(clippy::too_many_arguments)]
    fn forward_sample(
        &self,
        (w, b): (&[f32], &[f32]),
        channels: &[usize],
        x: &[f32],
        skip: Option<&[f32]>,
        y: &mut [MaybeUninit<f32>],
        par: Parallelism,
    ) {
        let g = &self.geo;
        let plane = g.out_plane();
        let patch = channels.len() * g.k * g.k;
        let shape = (g.cout, plane, patch);
        let y = if g.direct() && channels.len() == g.cin {
            matmul(shape, y, w, (patch, 1), x, par)
        } else {
            with_scratch(patch * plane, |cols| {
                if g.direct() {
                    gather_rows(x, plane, channels, cols);
                } else {
                    im2col(x, g, channels, cols);
                }
                matmul(shape, y, w, (patch, 1), cols, par)
            })
        };
        self.finish(y, b, skip);
    }

    /// Bias, residual and activation on the GEMM's result `y` for one channel: one pass.
    fn finish_row(&self, row: &mut [f32], bias: f32, skip: Option<&[f32]>) {
        match (skip, self.act) {
            (None, None) => row.iter_mut().for_each(|v| *v += bias),
            (None, Some(a)) => row.iter_mut().for_each(|v| *v = a.apply(*v + bias)),
            (Some(s), None) => row.iter_mut().zip(s).for_each(|(v, &s)| *v = *v + bias + s),
            (Some(s), Some(a)) => {
                let each = |(v, &s): (&mut f32, &f32)| *v = a.apply(*v + bias + s);
                row.iter_mut().zip(s).for_each(each)
            }
        }
    }

    /// [`Self::finish_row`] for every channel of one sample's output.
    fn finish(&self, y: &mut [f32], b: &[f32], skip: Option<&[f32]>) {
        let plane = self.geo.out_plane();
        for (c, (row, &bias)) in y.chunks_exact_mut(plane).zip(b).enumerate() {
            self.finish_row(row, bias, skip.map(|s| &s[c * plane..(c + 1) * plane]));
        }
    }

    /// One sample's input gradient (written whole) from its gated output gradient `gy`
    /// (`rows` channels; `w` holds exactly their weights, `[rows, cin * k * k]`).
    fn backward_sample(
        &self,
        (w, rows): (&[f32], usize),
        gy: &[f32],
        gx: &mut [MaybeUninit<f32>],
        par: Parallelism,
    ) {
        let g = &self.geo;
        let plane = g.out_plane();
        // W^T [cin * k * k, rows] read from W with swapped strides.
        let wt_strides = (1, g.patch());
        if g.direct() {
            matmul((g.cin, plane, rows), gx, w, wt_strides, gy, par);
        } else {
            with_scratch(g.patch() * plane, |cols| {
                let cols = as_uninit(cols);
                let cols = matmul((g.patch(), plane, rows), cols, w, wt_strides, gy, par);
                col2im(cols, g, gx);
            });
        }
    }

    fn forward(&self, x: &[f32], skip: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(self.forward_vec(x, skip)?),
            self.out_shape(),
        ))
    }

    /// The output of the whole batch `x` (and `skip`), `out_dims()` row-major.
    pub(crate) fn forward_vec(&self, x: &[f32], skip: Option<&[f32]>) -> Result<Vec<f32>> {
        let g = self.geo;
        let chunk = g.cout * g.out_plane();
        let live = live_channels(x, self.batch, g.cin, g.h * g.w);
        if self.winograd() {
            let weights = self.winograd_weights(&self.cache.forward, WinogradWeights::forward)?;
            let dims = (self.batch, g.cin, g.h, g.w);
            let plane = g.out_plane();
            let y = super::with_cpu_f32(&self.bias, |b| {
                let finish = |s: usize, c: usize, row: &mut [f32]| {
                    let at = (s * g.cout + c) * plane;
                    self.finish_row(row, b[c], skip.map(|skip| &skip[at..at + plane]))
                };
                let fill = |y: &mut [MaybeUninit<f32>]| {
                    winograd::conv3x3(weights, x, dims, live.as_deref(), y, finish)
                };
                // SAFETY: `conv3x3` writes every value.
                unsafe { vec_written_by(self.batch * chunk, fill) }
            })?;
            return Ok(y);
        }
        let out = super::with_cpu_f32(&self.weight, |w| {
            // The weights of the live input channels, [cout, live * k * k], gathered once.
            let (w, channels): (Cow<[f32]>, Cow<[usize]>) = match live {
                None => (w.into(), (0..g.cin).collect()),
                Some(live) => {
                    let (kk, patch) = (g.k * g.k, live.len() * g.k * g.k);
                    let mut wl = vec![0f32; g.cout * patch];
                    if patch > 0 {
                        let rows = wl.chunks_exact_mut(patch).zip(w.chunks_exact(g.patch()));
                        rows.for_each(|(dst, src)| gather_rows(src, kk, &live, dst));
                    }
                    (wl.into(), live.into())
                }
            };
            super::with_cpu_f32(&self.bias, |b| {
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    for_each_sample(out, chunk, |i, y, par| {
                        let xi = &x[i * g.in_plane()..(i + 1) * g.in_plane()];
                        let si = skip.map(|s| &s[i * chunk..(i + 1) * chunk]);
                        self.forward_sample((&w, b), &channels, xi, si, y, par)
                    })
                };
                // SAFETY: `forward_sample` writes each sample's output whole.
                unsafe { vec_written_by(self.batch * chunk, fill) }
            })
        })??;
        Ok(out)
    }

    /// The gradient at the activation's input (= the residual's gradient), and `x`'s.
    fn backward(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let (gated, gx) = super::with_cpu_f32(res, |y| {
            super::with_cpu_f32(grad, |gy| self.backward_vec(y, gy))
        })???;
        let gated = match gated {
            Some(gated) => Tensor::from_vec(gated, self.out_shape(), arg.device())?,
            None => grad.contiguous()?,
        };
        Ok((gated, Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }

    /// From the output `y` and its gradient `gy`: the gradient at the activation's input
    /// (`None`: no activation, it is `gy`) and the input's gradient.
    pub(crate) fn backward_vec(
        &self,
        y: &[f32],
        gy: &[f32],
    ) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
        let g = self.geo;
        let (plane, chunk) = (g.out_plane(), g.cout * g.out_plane());
        let gated = self.act.map(|act| {
            let fill = |gated: &mut [MaybeUninit<f32>]| {
                gated
                    .par_chunks_mut(chunk)
                    .zip(y.par_chunks(chunk).zip(gy.par_chunks(chunk)))
                    .for_each(|(d, (y, gy))| act.grad_from_outputs(d, y, gy))
            };
            // SAFETY: `grad_from_outputs` writes all of `d`.
            unsafe { vec_written_by(gy.len(), fill) }
        });
        let gy = gated.as_deref().unwrap_or(gy);
        let live = live_channels(gy, self.batch, g.cout, plane);
        if self.winograd() {
            let slot = &self.cache.input_gradient;
            let weights = self.winograd_weights(slot, WinogradWeights::input_gradient)?;
            let dims = (self.batch, g.cout, g.h, g.w);
            let fill = |gx: &mut [MaybeUninit<f32>]| {
                winograd::conv3x3(weights, gy, dims, live.as_deref(), gx, |_, _, _| {})
            };
            // SAFETY: `conv3x3` writes every value.
            let gx = unsafe { vec_written_by(self.batch * g.in_plane(), fill) };
            return Ok((gated, gx));
        }
        let gx = super::with_cpu_f32(&self.weight, |w| {
            // The weights of the output channels with a gradient, [live, cin * k * k].
            let wl = live.as_ref().map(|live| {
                let mut wl = vec![0f32; live.len() * g.patch()];
                gather_rows(w, g.patch(), live, &mut wl);
                wl
            });
            let fill = |gx: &mut [MaybeUninit<f32>]| {
                for_each_sample(gx, g.in_plane(), |i, gxi, par| {
                    let gyi = &gy[i * chunk..(i + 1) * chunk];
                    match (&live, &wl) {
                        (Some(live), Some(wl)) => with_scratch(live.len() * plane, |gl| {
                            gather_rows(gyi, plane, live, gl);
                            self.backward_sample((wl, live.len()), gl, gxi, par)
                        }),
                        _ => self.backward_sample((w, g.cout), gyi, gxi, par),
                    }
                })
            };
            // SAFETY: `backward_sample` writes each sample's gradient whole.
            unsafe { vec_written_by(self.batch * g.in_plane(), fill) }
        })?;
        Ok((gated, gx))
    }
}

impl CustomOp1 for Applied {
    fn name(&self) -> &'static str {
        "conv2d-bias-act"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp1::name(self);
        self.forward(super::cpu_f32_slice(name, storage, layout)?, None)
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.backward(arg, res, grad)?.1))
    }
}

impl CustomOp2 for Applied {
    fn name(&self) -> &'static str {
        "conv2d-bias-add-act"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        skip: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp2::name(self);
        let skip = super::cpu_f32_slice(name, skip, sl)?;
        self.forward(super::cpu_f32_slice(name, x, xl)?, Some(skip))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _skip: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g_skip, g_x) = self.backward(x, res, grad)?;
        Ok((Some(g_x), Some(g_skip)))
    }
}
