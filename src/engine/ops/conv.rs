//! Dense 2-D convolution with constant weights whose backward computes only the input gradient.
//!
//! Stock candle back-propagates a convolution through a naive `conv_transpose2d` loop and always
//! computes the kernel gradient too, even for weights that are plain constants. Saliency needs
//! neither: here the forward runs through candle's own (im2col + GEMM) convolution on a detached
//! input, and a pass-through op carries a backward that is one GEMM (`W^T x grad`) plus, for
//! kernels larger than 1 x 1, the same col2im scatter as the fused ops ([`super::geometry`]).

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::geometry::{ConvGeometry, Padding, col2im};

/// Convolution of an already padded input `x` (`[n, cin, h, w]`) with `weight`
/// (`[cout, cin, k, k]`), plus `bias` (`[cout]`). Gradients flow to `x` only.
pub fn conv2d_const(x: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, wcin, k, _) = weight.dims4()?;
    if wcin != cin {
        candle_core::bail!("conv expects {wcin} input channels, got {cin}")
    }
    // Detached (weights too), so that even a weight passed as a `Var` stays out of the graph.
    let (detached, weight, bias) = (x.detach(), weight.detach(), bias.detach());
    let y = if k == 1 && stride == 1 {
        // A 1 x 1 convolution is a matrix product; skip im2col altogether.
        let w2 = weight.reshape((cout, cin))?;
        w2.broadcast_matmul(&detached.reshape((n, cin, h * w))?)?
            .reshape((n, cout, h, w))?
    } else {
        detached.conv2d(&weight, 0, stride, 1, 1)?
    };
    let y = y.broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op2(&y, InputGrad { weight, stride })
}

/// Forward: returns its second argument (the precomputed convolution) unchanged.
/// Backward: the convolution's input gradient, computed from the constant weight.
struct InputGrad {
    weight: Tensor,
    stride: usize,
}

fn pass_through<S: BackendStorage>(s: &S, l: &Layout) -> Result<(S, Shape)> {
    Ok((s.try_clone(l)?, l.shape().clone()))
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pass_through(y, l)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        y: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        pass_through(y, l)
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        y: &MetalStorage,
        l: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        pass_through(y, l)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, cin, h, w) = x.dims4()?;
        let (cout, _, k, _) = self.weight.dims4()?;
        let (_, _, oh, ow) = grad.dims4()?;
        let s = self.stride;
        let grad_x = if k == 1 && s == 1 {
            let wt = self.weight.reshape((cout, cin))?.t()?.contiguous()?;
            wt.broadcast_matmul(&grad.contiguous()?.reshape((n, cout, oh * ow))?)?
                .reshape((n, cin, h, w))?
        } else if x.device().is_cpu() {
            // cols[n] = W^T [cin*k*k, cout] x grad[n] [cout, oh*ow], then scatter back.
            let wt = self
                .weight
                .reshape((cout, cin * k * k))?
                .t()?
                .contiguous()?;
            let cols = wt.broadcast_matmul(&grad.contiguous()?.reshape((n, cout, oh * ow))?)?;
            let geo = ConvGeometry {
                cin,
                cout,
                k,
                stride: s,
                h,
                w,
                oh,
                ow,
                pad: Padding::default(),
            };
            let gx = super::with_cpu_f32(&cols, |cols| {
                let fill = |gx: &mut [MaybeUninit<f32>]| {
                    gx.par_chunks_mut(geo.in_plane())
                        .zip(cols.par_chunks(geo.patch() * geo.out_plane()))
                        .for_each(|(gx, cols)| col2im(cols, &geo, gx))
                };
                // SAFETY: `col2im` writes each sample's gradient whole.
                unsafe { super::vec_written_by(n * geo.in_plane(), fill) }
            })?;
            Tensor::from_vec(gx, (n, cin, h, w), x.device())?
        } else {
            // Rows and columns past the last window get no gradient. (candle's own conv backward
            // derives one output padding from the height alone, wrong when h and w differ.)
            let gx = grad.conv_transpose2d(&self.weight, 0, 0, s, 1)?;
            gx.pad_with_zeros(2, 0, h - gx.dim(2)?)?
                .pad_with_zeros(3, 0, w - gx.dim(3)?)?
        };
        Ok((Some(grad_x), None))
    }
}
