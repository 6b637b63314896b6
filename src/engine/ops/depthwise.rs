//! Depthwise 2-D convolution (one k x k filter per channel) as a single op.
//!
//! Stock candle runs a grouped convolution as one tiny convolution per channel followed by a
//! concat, so a 672-channel layer becomes 1,344 graph nodes, each with its own backward. This
//! op does the whole layer in one pass over the data, forward and backward, with the (possibly
//! asymmetric, TensorFlow-"same") zero padding folded in. Its backward returns only the input
//! gradient: the weights are constants.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::ReluOp;

/// Zero padding on each side, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    pub fn symmetric(p: usize) -> Self {
        Padding {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// TensorFlow "SAME" padding for one input size: output = ceil(input / stride), with the
    /// odd pixel of padding going after (bottom/right).
    pub fn tf_same(h: usize, w: usize, k: usize, stride: usize) -> Self {
        let total =
            |n: usize| (n.div_ceil(stride).saturating_sub(1) * stride + k).saturating_sub(n);
        let (th, tw) = (total(h), total(w));
        Padding {
            top: th / 2,
            bottom: th - th / 2,
            left: tw / 2,
            right: tw - tw / 2,
        }
    }
}

/// Valid output columns `[lo, hi)` for kernel column `kx` of a convolution with this stride and
/// left padding: those whose input column `ox * stride + off` (`off = kx - pad_left`) falls
/// inside an image `w` wide. Lets the inner loops run unchecked.
pub(crate) fn valid_columns(
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

/// Depthwise convolution with bias. `weight` is `[channels, k, k]` row-major.
#[derive(Clone, Debug)]
pub struct DepthwiseConv2d {
    weight: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    pub channels: usize,
    pub k: usize,
    pub stride: usize,
}

/// Sizes of one forward call.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    pad: Padding,
}

/// The op applied to one input; the padding depends on the input size.
struct Applied {
    conv: DepthwiseConv2d,
    geo: Geometry,
    batch: usize,
    act: Option<ReluOp>,
}

impl DepthwiseConv2d {
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, channels: usize, k: usize, stride: usize) -> Self {
        assert_eq!(weight.len(), channels * k * k, "depthwise weight size");
        assert_eq!(bias.len(), channels, "depthwise bias size");
        DepthwiseConv2d {
            weight: Arc::new(weight),
            bias: Arc::new(bias),
            channels,
            k,
            stride,
        }
    }

    /// `x`: `[n, channels, h, w]` on the CPU, f32.
    pub fn forward(&self, x: &Tensor, pad: Padding) -> Result<Tensor> {
        self.forward_act(x, pad, None)
    }

    /// The convolution followed by `act`, as one op (see [`super::conv_act`] for why).
    pub fn forward_act(&self, x: &Tensor, pad: Padding, act: Option<ReluOp>) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if c != self.channels {
            candle_core::bail!("depthwise conv expects {} channels, got {c}", self.channels)
        }
        let (ph, pw) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
        if ph < self.k || pw < self.k {
            candle_core::bail!("depthwise conv: input {h}x{w} is smaller than the kernel")
        }
        let geo = Geometry {
            h,
            w,
            oh: (ph - self.k) / self.stride + 1,
            ow: (pw - self.k) / self.stride + 1,
            pad,
        };
        x.contiguous()?.apply_op1(Applied {
            conv: self.clone(),
            geo,
            batch: n,
            act,
        })
    }

    fn col_range(&self, kx: usize, geo: &Geometry) -> (usize, usize, isize) {
        valid_columns(kx, self.stride, geo.pad.left, geo.w, geo.ow)
    }

    fn forward_plane(&self, ch: usize, x: &[f32], out: &mut [f32], geo: &Geometry) {
        let (k, s) = (self.k, self.stride);
        let wt = &self.weight[ch * k * k..(ch + 1) * k * k];
        out.fill(self.bias[ch]);
        let ranges: Vec<_> = (0..k).map(|kx| self.col_range(kx, geo)).collect();
        for oy in 0..geo.oh {
            let out_row = &mut out[oy * geo.ow..(oy + 1) * geo.ow];
            for ky in 0..k {
                let iy = (oy * s + ky) as isize - geo.pad.top as isize;
                if iy < 0 || iy >= geo.h as isize {
                    continue;
                }
                let in_row = &x[iy as usize * geo.w..(iy as usize + 1) * geo.w];
                for (kx, &(lo, hi, off)) in ranges.iter().enumerate() {
                    let wv = wt[ky * k + kx];
                    for (ox, o) in out_row[lo..hi].iter_mut().enumerate() {
                        let ix = ((ox + lo) * s) as isize + off;
                        *o += wv * in_row[ix as usize];
                    }
                }
            }
        }
    }

    fn backward_plane(&self, ch: usize, gy: &[f32], gx: &mut [f32], geo: &Geometry) {
        let (k, s) = (self.k, self.stride);
        let wt = &self.weight[ch * k * k..(ch + 1) * k * k];
        gx.fill(0.0);
        let ranges: Vec<_> = (0..k).map(|kx| self.col_range(kx, geo)).collect();
        for oy in 0..geo.oh {
            let g_row = &gy[oy * geo.ow..(oy + 1) * geo.ow];
            for ky in 0..k {
                let iy = (oy * s + ky) as isize - geo.pad.top as isize;
                if iy < 0 || iy >= geo.h as isize {
                    continue;
                }
                let gx_row = &mut gx[iy as usize * geo.w..(iy as usize + 1) * geo.w];
                for (kx, &(lo, hi, off)) in ranges.iter().enumerate() {
                    let wv = wt[ky * k + kx];
                    for (ox, &g) in g_row[lo..hi].iter().enumerate() {
                        let ix = ((ox + lo) * s) as isize + off;
                        gx_row[ix as usize] += wv * g;
                    }
                }
            }
        }
    }
}

impl CustomOp1 for Applied {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        let (c, g) = (self.conv.channels, &self.geo);
        let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        let mut out = vec![0f32; self.batch * c * out_plane];
        out.par_chunks_mut(out_plane)
            .enumerate()
            .for_each(|(i, o)| {
                let xp = &x[i * in_plane..(i + 1) * in_plane];
                self.conv.forward_plane(i % c, xp, o, g);
                if let Some(act) = self.act {
                    o.iter_mut().for_each(|v| *v = act.apply(*v));
                }
            });
        Ok((
            CpuStorage::F32(out),
            Shape::from((self.batch, c, g.oh, g.ow)),
        ))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (c, g) = (self.conv.channels, &self.geo);
        let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        let gx = super::with_cpu_f32(res, |y| {
            super::with_cpu_f32(grad, |gy| {
                let mut gx = vec![0f32; self.batch * c * in_plane];
                gx.par_chunks_mut(in_plane).enumerate().for_each_init(
                    || vec![0f32; out_plane],
                    |gated, (i, gxp)| {
                        let span = i * out_plane..(i + 1) * out_plane;
                        let gyp = match self.act {
                            Some(act) => {
                                for ((d, &y), &g) in
                                    gated.iter_mut().zip(&y[span.clone()]).zip(&gy[span])
                                {
                                    *d = act.grad_from_output(y, g);
                                }
                                &gated[..]
                            }
                            None => &gy[span],
                        };
                        self.conv.backward_plane(i % c, gyp, gxp, g);
                    },
                );
                gx
            })
        })??;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}
