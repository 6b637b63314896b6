//! Convolution + bias (+ residual) + optional ReLU/ReLU6 as one CPU op, with an
//! input-gradient-only backward.
//!
//! Why one op: through candle's autograd every op costs a pass over its output and, in the
//! backward, a zero-filled gradient buffer plus an add. A convolution layer as separate ops
//! (pad, conv, bias, residual add, activation) is up to six graph nodes; fused it is one, the
//! padding is folded into im2col, and bias, residual and activation are applied while the GEMM
//! output is still in cache. 3 x 3 stride-1 layers run as Winograd convolutions
//! ([`super::winograd`]), the others as one [`super::batch_gemm`] product per batch. The
//! activation's backward gates on the op's *output* (`0 < y < cap` exactly when
//! `0 < x < cap`), so nothing beyond the output is kept.

use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, TensorId};
use rayon::prelude::*;

use super::activation::ReluOp;
use super::batch_gemm;
use super::geometry::{ConvGeometry, Padding, col2im, im2col};
use super::packed_gemm::PackedLhs;
use super::vec_written_by;
use super::winograd::{self, WinogradWeights};

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

/// What a layer keeps between calls, made on first use for each direction (forward, input
/// gradient): its kernels transformed for the Winograd path (4 x the weights' size each), or
/// its weights packed for the batch GEMM (1 x the size each, the input gradient's transposed).
#[derive(Default)]
pub struct ConvCache {
    /// The weight tensor this cache holds forms of: one cache serves one layer.
    owner: OnceLock<TensorId>,
    forward: OnceLock<WinogradWeights>,
    input_gradient: OnceLock<WinogradWeights>,
    packed: OnceLock<PackedLhs>,
    packed_t: OnceLock<PackedLhs>,
}

impl std::fmt::Debug for ConvCache {
    /// Which forms are built (their contents are large and opaque).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvCache")
            .field("winograd_forward", &self.forward.get().is_some())
            .field(
                "winograd_input_gradient",
                &self.input_gradient.get().is_some(),
            )
            .field("packed", &self.packed.get().is_some())
            .field("packed_transposed", &self.packed_t.get().is_some())
            .finish()
    }
}

/// One convolution on inputs of known size; also a step of [`super::chain`].
pub(crate) struct Applied {
    weight: Tensor,
    bias: Tensor,
    geo: ConvGeometry,
    batch: usize,
    act: Option<ReluOp>,
    cache: Arc<ConvCache>,
}

/// Winograd's GEMMs run over the live channels only when at most this fraction is live.
const COMPACT_AT_MOST: f32 = 0.875;

/// The channels of a batch `m` (`batch` x `channels` rows of `len` values) that hold a
/// non-zero value (NaN counts) in some sample, or `None` when too many do for skipping the
/// others to pay. A dead channel (a ReLU that never fired, or a guided gradient gated off
/// everywhere) only adds exact zeros to a GEMM, so leaving it out changes no value. (The batch
/// GEMM needs no such list: it skips zero runs as it packs.)
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
        let [(_, oh), (_, ow)] = pad.windows("conv", (h, w), k, stride)?;
        let geo = ConvGeometry {
            cin,
            cout,
            k,
            stride,
            h,
            w,
            oh,
            ow,
            pad,
        };
        // The output, and the patch matrices of the batch.
        super::checked_size("conv", &[n, cout, geo.oh, geo.ow])?;
        super::checked_size("conv", &[n, cin * k * k, geo.oh, geo.ow])?;
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

    /// The weights as a `[cout, cin * k * k]` matrix (or its transpose) packed in `slot` on
    /// first use.
    fn packed_weights<'a>(
        &self,
        slot: &'a OnceLock<PackedLhs>,
        transposed: bool,
    ) -> Result<&'a PackedLhs> {
        if let Some(w) = slot.get() {
            return Ok(w);
        }
        let (cout, patch) = (self.geo.cout, self.geo.patch());
        let w = super::with_cpu_f32(&self.weight, |w| match transposed {
            false => PackedLhs::from_rows(w, cout, patch, (patch, 1)),
            true => PackedLhs::from_rows(w, patch, cout, (1, patch)),
        })?;
        Ok(slot.get_or_init(|| w))
    }

    pub(crate) fn out_dims(&self) -> (usize, usize, usize, usize) {
        let g = &self.geo;
        (self.batch, g.cout, g.oh, g.ow)
    }

    fn out_shape(&self) -> Shape {
        Shape::from(self.out_dims())
    }

    /// Bias, residual and activation on the GEMM's result `y` for one channel: one pass.
    #[inline(always)]
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
        if self.winograd() {
            let live = live_channels(x, self.batch, g.cin, g.h * g.w);
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
        // W [cout, cin * k * k] times the input (1 x 1) or its patch matrices, all samples in
        // one product; bias, residual and activation applied as rows finish.
        let a = self.packed_weights(&self.cache.packed, false)?;
        let plane = g.out_plane();
        let product = |rhs: &[f32], dims| {
            super::with_cpu_f32(&self.bias, |b| {
                let finish = |s: usize, c: usize, p: usize, vals: &mut [f32]| {
                    let at = (s * g.cout + c) * plane + p;
                    let skip = skip.map(|skip| &skip[at..at + vals.len()]);
                    self.finish_row(vals, b[c], skip)
                };
                let fill =
                    |y: &mut [MaybeUninit<f32>]| batch_gemm::product(a, rhs, dims, y, finish);
                // SAFETY: `product` writes every value.
                unsafe { vec_written_by(self.batch * chunk, fill) }
            })
        };
        if g.direct() {
            return product(x, (self.batch, g.cin, plane));
        }
        // Patch matrices of all samples (dead channels give zero rows, which the product
        // skips), then one product over them.
        let patches = |cols: &mut [MaybeUninit<f32>]| {
            let per = g.patch() * plane;
            cols.par_chunks_mut(per)
                .zip(x.par_chunks(g.in_plane()))
                .for_each(|(cols, x)| im2col(x, &g, cols))
        };
        // SAFETY: `im2col` writes every value.
        let cols = unsafe { vec_written_by(self.batch * g.patch() * plane, patches) };
        product(&cols, (self.batch, g.patch(), plane))
    }

    /// The gradient at the activation's input (= the residual's gradient), and `x`'s.
    fn backward(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let (gated, gx) = super::with_cpu_f32(res, |y| {
            super::with_cpu_f32(grad, |gy| self.backward_vec(y, gy, true))
        })???;
        let gated = match gated {
            Some(gated) => Tensor::from_vec(gated, self.out_shape(), arg.device())?,
            None => grad.contiguous()?,
        };
        Ok((gated, Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }

    /// From the output `y` and its gradient `gy`: the gradient at the activation's input
    /// (`None`: no activation, it is `gy`; or not `keep_gated`, then it may not be made) and
    /// the input's gradient.
    pub(crate) fn backward_vec(
        &self,
        y: &[f32],
        gy: &[f32],
        keep_gated: bool,
    ) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
        let g = self.geo;
        let (plane, chunk) = (g.out_plane(), g.cout * g.out_plane());
        // Only the batch GEMM can gate while it packs.
        let gate_in_gemm = self.act.filter(|_| !keep_gated && !self.winograd());
        let gated = self.act.filter(|_| gate_in_gemm.is_none()).map(|act| {
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
        if self.winograd() {
            let live = live_channels(gy, self.batch, g.cout, plane);
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
        // W^T [cin * k * k, cout] times the gradient, all samples in one product (its zero
        // runs skipped); then, unless the layer is a plain 1 x 1, the patch gradients are
        // added back into the image (col2im).
        let a = self.packed_weights(&self.cache.packed_t, true)?;
        let dims = (self.batch, g.cout, plane);
        let product = |out: &mut [MaybeUninit<f32>]| match gate_in_gemm {
            Some(act) => {
                let gated = batch_gemm::Gated { y, g: gy, act };
                batch_gemm::product(a, &gated, dims, out, |_, _, _, _| {})
            }
            None => batch_gemm::product(a, gy, dims, out, |_, _, _, _| {}),
        };
        if g.direct() {
            // SAFETY: `product` writes every value.
            let gx = unsafe { vec_written_by(self.batch * g.in_plane(), product) };
            return Ok((gated, gx));
        }
        // SAFETY: `product` writes every value.
        let cols = unsafe { vec_written_by(self.batch * g.patch() * plane, product) };
        let fill = |gx: &mut [MaybeUninit<f32>]| {
            gx.par_chunks_mut(g.in_plane())
                .zip(cols.par_chunks(g.patch() * plane))
                .for_each(|(gx, cols)| col2im(cols, &g, gx))
        };
        // SAFETY: `col2im` writes each sample's gradient whole.
        let gx = unsafe { vec_written_by(self.batch * g.in_plane(), fill) };
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
