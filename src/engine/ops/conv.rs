//! Dense 2-D convolution with constant weights whose backward computes only the input gradient.
//!
//! Stock candle back-propagates a convolution through a naive `conv_transpose2d` loop and always
//! computes the kernel gradient too, even for weights that are plain constants. Saliency needs
//! neither: here the forward runs through candle's own (im2col + GEMM) convolution on a detached
//! input, and a pass-through op carries a backward that is one GEMM (`W^T x grad`) plus, for
//! kernels larger than 1 x 1, the same col2im scatter as the fused ops ([`super::geometry`]) on
//! the CPU, or a convolution of the dilated gradient on other devices.

use std::mem::MaybeUninit;

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::generic;
use super::geometry::{ConvGeometry, Padding, col2im};

/// Convolution of an already padded input `x` (`[n, cin, h, w]`) with `weight`
/// (`[cout, cin, k, k]`), plus `bias` (`[cout]`). Gradients flow to `x` only. The backward is
/// the CPU's col2im unless `generic` (or off the CPU), then [`generic::conv_input_grad`].
pub fn conv2d_const(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    generic: bool,
) -> Result<Tensor> {
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
    let generic = generic || !x.device().is_cpu();
    generic::attach(x, y, move |x, _, grad| {
        input_grad(&weight, stride, generic, x, grad)
    })
}

/// The convolution's input gradient, computed from the constant weight.
fn input_grad(
    weight: &Tensor,
    s: usize,
    generic: bool,
    x: &Tensor,
    grad: &Tensor,
) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, _, k, _) = weight.dims4()?;
    let (_, _, oh, ow) = grad.dims4()?;
    if k == 1 && s == 1 {
        let wt = weight.reshape((cout, cin))?.t()?.contiguous()?;
        return wt
            .broadcast_matmul(&grad.contiguous()?.reshape((n, cout, oh * ow))?)?
            .reshape((n, cin, h, w));
    }
    if generic {
        return generic::conv_input_grad(weight, s, (h, w), grad);
    }
    // cols[n] = W^T [cin*k*k, cout] x grad[n] [cout, oh*ow], then scatter back.
    let wt = weight.reshape((cout, cin * k * k))?.t()?.contiguous()?;
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
    Tensor::from_vec(gx, (n, cin, h, w), x.device())
}
