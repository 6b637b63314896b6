//! Convolutions and pools: the engine's layers (fast CPU kernels, device-generic path,
//! guided ReLUs) with ONNX's padding rules (explicit per side, `SAME_UPPER`, ceil mode).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use super::value::Ctx;
use crate::engine::models::layers::{Conv, PadMode};
use crate::engine::ops::activation::{ReluMode, ReluOp};
use crate::engine::ops::geometry::Padding;
use crate::error::{Error, Result};

/// How a convolution or pool pads its input.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pads {
    Explicit(Padding),
    /// `auto_pad = SAME_UPPER`: TensorFlow's "SAME".
    SameUpper,
}

/// A convolution's geometry, before its weights are folded and built.
#[derive(Clone, Debug)]
pub(crate) struct ConvSpec {
    pub(crate) strides: (usize, usize),
    pub(crate) pads: Pads,
    pub(crate) group: usize,
    /// The slot of a `Pad` node's pads computed at run time (from the input's shape, as
    /// exports of TensorFlow's "SAME" padding do), folded into this convolution.
    pub(crate) runtime_pads: Option<usize>,
}

/// A pooling window (square, one stride: what the engine's pools take).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) k: usize,
    pub(crate) stride: usize,
    pub(crate) pads: Pads,
    pub(crate) ceil: bool,
}

impl Window {
    /// The padding for an `h x w` input, with ceil mode's extra rows and columns after.
    pub(crate) fn padding(&self, h: usize, w: usize) -> Result<Padding> {
        let mut p = match self.pads {
            Pads::Explicit(p) => p,
            Pads::SameUpper => Padding::tf_same(h, w, self.k, self.stride),
        };
        if self.ceil {
            p.bottom += ceil_extra(h, p.top, p.bottom, self.k, self.stride);
            p.right += ceil_extra(w, p.left, p.right, self.k, self.stride);
        }
        if h + p.top + p.bottom < self.k || w + p.left + p.right < self.k {
            return Err(Error::InvalidParam(format!(
                "a {0} x {0} pool does not fit a {h} x {w} input",
                self.k
            )));
        }
        Ok(p)
    }
}

/// Ceil mode: extra padding after so that a last, partial window counts, unless it would start
/// in the padding (PyTorch's and ONNX's rule).
fn ceil_extra(n: usize, before: usize, after: usize, k: usize, s: usize) -> usize {
    let span = (n + before + after).saturating_sub(k);
    let mut out = span.div_ceil(s) + 1;
    if (out - 1) * s >= n + before {
        out -= 1;
    }
    ((out - 1) * s + k).saturating_sub(n + before + after)
}

/// A convolution (BatchNorm folded in) with what the graph applied after it.
#[derive(Debug)]
pub(crate) struct ConvStep {
    pub(crate) imp: ConvImpl,
    /// A ReLU or ReLU6 fused into the convolution.
    pub(crate) act: Option<bool>,
    /// The node's second input is added before the activation (a residual).
    pub(crate) residual: bool,
    /// Which input holds padding computed at run time (see [`ConvSpec::runtime_pads`]).
    pub(crate) runtime_pads: Option<usize>,
}

#[derive(Debug)]
pub(crate) enum ConvImpl {
    /// Square kernel, one stride, dense or depthwise: the engine's convolution.
    Layer(Conv),
    /// Grouped (neither dense nor depthwise): one dense convolution per group.
    Groups(Vec<Conv>),
    /// Non-square kernels (Inception's 1 x 7): candle's convolution on a padded input.
    Stock {
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        pad: Padding,
    },
}

/// Which ReLU-family activation is fused (`true`: ReLU6).
pub(crate) fn relu_op(relu6: bool, mode: ReluMode) -> ReluOp {
    if relu6 {
        ReluOp::relu6(mode)
    } else {
        ReluOp::relu(mode)
    }
}

impl ConvStep {
    pub(crate) fn run(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        extra: Padding,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let act = self.act.map(|r6| relu_op(r6, ctx.mode));
        if let ConvImpl::Layer(conv) = &self.imp {
            return conv.forward_padded(x, skip, act, ctx.backend, extra);
        }
        let padded;
        let x = if extra == Padding::default() {
            x
        } else {
            padded = x
                .pad_with_zeros(2, extra.top, extra.bottom)?
                .pad_with_zeros(3, extra.left, extra.right)?;
            &padded
        };
        let y = match &self.imp {
            ConvImpl::Layer(_) => unreachable!("returned above"),
            ConvImpl::Groups(convs) => {
                let cin = x.dim(1)? / convs.len();
                let parts = convs
                    .iter()
                    .enumerate()
                    .map(|(g, conv)| conv.forward(&x.narrow(1, g * cin, cin)?, ctx.backend))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)?
            }
            ConvImpl::Stock {
                weight,
                bias,
                stride,
                pad,
            } => {
                let x = x
                    .pad_with_zeros(2, pad.top, pad.bottom)?
                    .pad_with_zeros(3, pad.left, pad.right)?;
                x.conv2d(weight, 0, *stride, 1, 1)?
                    .broadcast_add(&bias.reshape((1, (), 1, 1))?)?
            }
        };
        let y = match skip {
            Some(s) => (y + s)?,
            None => y,
        };
        Ok(match act {
            Some(act) => act.forward_on(&y, ctx.backend)?,
            None => y,
        })
    }
}

/// An average pool as a depthwise convolution of constant weights (the engine's fast kernel
/// and its backward), one per channel count seen.
#[derive(Debug, Default)]
pub(crate) struct AvgConvs(Mutex<HashMap<usize, Arc<Conv>>>);

pub(crate) fn avg_pool(
    x: &Tensor,
    win: Window,
    include_pad: bool,
    convs: &AvgConvs,
    ctx: &Ctx,
) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let pad = win.padding(h, w)?;
    if win.ceil && pad != win.padding_floor(h, w) {
        return Err(Error::InvalidParam(
            "an average pool in ceil mode whose last window is partial is not supported".into(),
        ));
    }
    let conv = {
        let mut map = convs
            .0
            .lock()
            .map_err(|_| Error::Internal("pool lock".into()))?;
        match map.get(&c) {
            Some(conv) => conv.clone(),
            None => {
                let k = win.k;
                let weight = Tensor::full(1.0 / (k * k) as f32, (c, 1, k, k), &Device::Cpu)?;
                let bias = Tensor::zeros(c, DType::F32, &Device::Cpu)?;
                let pads = PadMode::Explicit(pad);
                let conv = Conv::new(vec![], weight, bias, win.stride, c, pads, &ctx.device)?;
                map.insert(c, Arc::new(conv));
                map[&c].clone()
            }
        }
    };
    let y = conv.forward(x, ctx.backend)?;
    if include_pad || pad == Padding::default() {
        return Ok(y);
    }
    // Average over the pixels inside the image only: rescale by k^2 / count.
    let (_, _, oh, ow) = y.dims4()?;
    let count = |o: usize, before: usize, n: usize| {
        let start = (o * win.stride) as isize - before as isize;
        let end = (start + win.k as isize).min(n as isize);
        (end - start.max(0)) as f32
    };
    let k2 = (win.k * win.k) as f32;
    let scale: Vec<f32> = (0..oh)
        .flat_map(|oy| (0..ow).map(move |ox| (oy, ox)))
        .map(|(oy, ox)| k2 / (count(oy, pad.top, h) * count(ox, pad.left, w)))
        .collect();
    let scale = Tensor::from_vec(scale, (1, 1, oh, ow), x.device())?;
    Ok(y.broadcast_mul(&scale)?)
}

impl Window {
    fn padding_floor(&self, h: usize, w: usize) -> Padding {
        match self.pads {
            Pads::Explicit(p) => p,
            Pads::SameUpper => Padding::tf_same(h, w, self.k, self.stride),
        }
    }
}
