//! The ops a graph may use, with their attributes parsed, and how each runs.
//!
//! Every float op is built from the engine's layers (convolutions, pools and ReLUs with their
//! fast CPU kernels, device-generic path and guided backward) or from candle tensor ops that
//! have an input-gradient backward (checked op by op in the tests): nothing here may cut the
//! gradient. Integer ops (shape arithmetic) run on the host; see [`super::value`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{D, DType, Device, Tensor};

use super::shape_ops;
use super::value::{Val, axis, broadcast};
use crate::engine::models::layers::{Conv, PadMode};
use crate::engine::ops::Backend;
use crate::engine::ops::activation::{ReluMode, ReluOp};
use crate::engine::ops::geometry::Padding;
use crate::engine::ops::pool::MaxPool2d;
use crate::error::{Error, Result};

/// What one evaluation needs besides the values.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) mode: ReluMode,
    pub(crate) backend: Backend,
    pub(crate) device: Device,
}

/// How a convolution or pool pads its input.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pads {
    Explicit(Padding),
    /// `auto_pad = SAME_UPPER`: TensorFlow's "SAME".
    SameUpper,
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
    fn padding(&self, h: usize, w: usize) -> Result<Padding> {
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
fn relu_op(relu6: bool, mode: ReluMode) -> ReluOp {
    if relu6 {
        ReluOp::relu6(mode)
    } else {
        ReluOp::relu(mode)
    }
}

impl ConvStep {
    fn run(&self, x: &Tensor, skip: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        let act = self.act.map(|r6| relu_op(r6, ctx.mode));
        let y = match &self.imp {
            ConvImpl::Layer(conv) => {
                return conv.forward_residual(x, skip, act, ctx.backend);
            }
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

/// Elementwise ops of one input.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unary {
    Sigmoid,
    Tanh,
    Erf,
    Exp,
    Log,
    Sqrt,
    Neg,
    Reciprocal,
    Abs,
    /// `approximate = "tanh"` when true.
    Gelu(bool),
    HardSigmoid(f32, f32),
    HardSwish,
    Softplus,
}

/// Elementwise ops of two broadcast inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Equal,
    Less,
    Greater,
    Mod,
    And,
    Or,
}

/// A lowered node's op.
#[derive(Debug)]
pub(crate) enum Kind {
    Conv(Box<ConvStep>),
    /// A convolution before its weights are folded and built (see `fuse`).
    ConvSpec(super::attrs::ConvSpec),
    /// A BatchNorm before it is folded into a convolution or made an affine step.
    BatchNorm(f64),
    MaxPool(Window),
    AvgPool(Window, bool, AvgConvs),
    GlobalAvgPool,
    GlobalMaxPool,
    /// ReLU (`false`) or ReLU6 (`true`), guided when asked.
    Relu(bool),
    Clip(f32, f32),
    LeakyRelu(f32),
    Unary(Unary),
    Binary(Binary),
    Not,
    Where,
    /// `y = alpha A B + beta C`, `B` already transposed if the node said so.
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    /// Per-channel `x * scale + shift` (a BatchNorm no convolution absorbed).
    Affine(Tensor, Tensor),
    LayerNorm {
        axis: i64,
        eps: f64,
    },
    Softmax {
        axis: i64,
        legacy: bool,
    },
    Reduce {
        op: Reduce,
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    Identity,
    Arrange(shape_ops::Arrange),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reduce {
    Mean,
    Sum,
    Max,
}

impl Kind {
    /// Runs the op on its inputs (`None` for an omitted optional input).
    pub(crate) fn run(&self, inputs: &[Option<&Val>], ctx: &Ctx) -> Result<Vec<Val>> {
        let f = |i: usize| -> Result<Tensor> { input(inputs, i)?.float(&ctx.device) };
        let one = |t: Tensor| Ok(vec![Val::F(t)]);
        match self {
            Kind::Conv(step) => {
                let skip = if step.residual { Some(f(1)?) } else { None };
                one(step.run(&f(0)?, skip.as_ref(), ctx)?)
            }
            Kind::MaxPool(win) => {
                let x = f(0)?;
                let (_, _, h, w) = x.dims4()?;
                let pool = MaxPool2d {
                    k: win.k,
                    stride: win.stride,
                    pad: win.padding(h, w)?,
                };
                one(pool.forward(&x, ctx.backend)?)
            }
            Kind::AvgPool(win, include_pad, convs) => {
                one(avg_pool(&f(0)?, *win, *include_pad, convs, ctx)?)
            }
            Kind::GlobalAvgPool => one(f(0)?.mean_keepdim((2, 3))?),
            Kind::GlobalMaxPool => {
                let x = f(0)?;
                let (n, c, _, _) = x.dims4()?;
                one(x.flatten_from(2)?.max_keepdim(2)?.reshape((n, c, 1, 1))?)
            }
            Kind::Relu(r6) => one(relu_op(*r6, ctx.mode).forward_on(&f(0)?, ctx.backend)?),
            Kind::Clip(lo, hi) => one(f(0)?.clamp(*lo, *hi)?),
            Kind::LeakyRelu(alpha) => one(leaky_relu(&f(0)?, *alpha, ctx.mode)?),
            Kind::Unary(u) => one(unary(&f(0)?, *u)?),
            Kind::Binary(b) => Ok(vec![binary(*b, input(inputs, 0)?, input(inputs, 1)?, ctx)?]),
            Kind::Not => {
                let mut i = input(inputs, 0)?.ints("Not")?;
                i.data.iter_mut().for_each(|v| *v = (*v == 0) as i64);
                Ok(vec![Val::I(i)])
            }
            Kind::Where => Ok(vec![where_(inputs, ctx)?]),
            Kind::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                let a = if *trans_a { f(0)?.t()? } else { f(0)? };
                let b = if *trans_b { f(1)?.t()? } else { f(1)? };
                let mut y = a.contiguous()?.matmul(&b.contiguous()?)?;
                if *alpha != 1.0 {
                    y = (y * *alpha as f64)?;
                }
                if let Some(c) = opt(inputs, 2) {
                    let c = c.float(&ctx.device)?;
                    let c = if *beta != 1.0 { (c * *beta as f64)? } else { c };
                    y = y.broadcast_add(&c)?;
                }
                one(y)
            }
            Kind::MatMul => one(matmul(&f(0)?, &f(1)?)?),
            Kind::Affine(scale, shift) => {
                let x = f(0)?;
                let mut shape = vec![1; x.rank()];
                shape[1] = scale.elem_count();
                one(x
                    .broadcast_mul(&scale.reshape(shape.as_slice())?)?
                    .broadcast_add(&shift.reshape(shape.as_slice())?)?)
            }
            Kind::LayerNorm { axis: a, eps } => {
                let bias = opt(inputs, 2).map(|b| b.float(&ctx.device)).transpose()?;
                one(layer_norm(&f(0)?, &f(1)?, bias.as_ref(), *a, *eps)?)
            }
            Kind::Softmax { axis: a, legacy } => one(softmax(&f(0)?, *a, *legacy)?),
            Kind::Reduce {
                op,
                axes,
                keepdims,
                noop_with_empty_axes,
            } => {
                let axes = match (axes, opt(inputs, 1)) {
                    (Some(a), _) => Some(a.clone()),
                    (None, Some(v)) => Some(v.ints("reduce axes")?.data),
                    (None, None) => None,
                };
                let x = f(0)?;
                one(reduce(&x, *op, axes, *keepdims, *noop_with_empty_axes)?)
            }
            Kind::Identity => Ok(vec![input(inputs, 0)?.clone()]),
            Kind::Arrange(op) => op.run(inputs, ctx),
            Kind::ConvSpec(_) | Kind::BatchNorm(_) => Err(Error::Internal(
                "an unbuilt convolution or BatchNorm ran".into(),
            )),
        }
    }
}

pub(crate) fn input<'a>(inputs: &[Option<&'a Val>], i: usize) -> Result<&'a Val> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| Error::Weights(format!("input {i} of a node is missing")))
}

pub(crate) fn opt<'a>(inputs: &[Option<&'a Val>], i: usize) -> Option<&'a Val> {
    inputs.get(i).copied().flatten()
}

fn avg_pool(
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

/// `max(x, alpha x)`; guided backprop also drops negative incoming gradients.
fn leaky_relu(x: &Tensor, alpha: f32, mode: ReluMode) -> Result<Tensor> {
    let d = x.detach();
    let y = d.maximum(&(&d * alpha as f64)?)?;
    Ok(crate::engine::ops::generic::attach(
        x,
        y,
        move |x, _, g| {
            let slope = x
                .ge(0f32)?
                .to_dtype(DType::F32)?
                .affine(1.0 - alpha as f64, alpha as f64)?;
            let g = match mode {
                ReluMode::Plain => g.clone(),
                ReluMode::Guided => g.relu()?,
            };
            g * slope
        },
    )?)
}

fn unary(x: &Tensor, u: Unary) -> Result<Tensor> {
    Ok(match u {
        Unary::Sigmoid => candle_nn::ops::sigmoid(x)?,
        Unary::Tanh => x.tanh()?,
        Unary::Erf => x.erf()?,
        Unary::Exp => x.exp()?,
        Unary::Log => x.log()?,
        Unary::Sqrt => x.sqrt()?,
        Unary::Neg => x.neg()?,
        Unary::Reciprocal => x.recip()?,
        Unary::Abs => x.abs()?,
        Unary::Gelu(true) => x.gelu()?,
        Unary::Gelu(false) => x.gelu_erf()?,
        Unary::HardSigmoid(a, b) => x.affine(a as f64, b as f64)?.clamp(0f32, 1f32)?,
        Unary::HardSwish => (x * x.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?)?,
        Unary::Softplus => (x.exp()? + 1.0)?.log()?,
    })
}

fn binary(op: Binary, a: &Val, b: &Val, ctx: &Ctx) -> Result<Val> {
    if let (Val::I(a), Val::I(b)) = (a, b) {
        return Ok(Val::I(shape_ops::binary_ints(op, a, b)?));
    }
    let comparison = matches!(
        op,
        Binary::Equal | Binary::Less | Binary::Greater | Binary::Mod | Binary::And | Binary::Or
    );
    if comparison {
        // Masks and indices: integers, computed on the host (never on an activation).
        let (a, b) = (a.ints("comparison")?, b.ints("comparison")?);
        return Ok(Val::I(shape_ops::binary_ints(op, &a, &b)?));
    }
    let (a, b) = (a.float(&ctx.device)?, b.float(&ctx.device)?);
    Ok(Val::F(match op {
        Binary::Add => a.broadcast_add(&b)?,
        Binary::Sub => a.broadcast_sub(&b)?,
        Binary::Mul => a.broadcast_mul(&b)?,
        Binary::Div => a.broadcast_div(&b)?,
        Binary::Pow => pow(&a, &b)?,
        _ => unreachable_binary(op)?,
    }))
}

fn unreachable_binary(op: Binary) -> Result<Tensor> {
    Err(Error::Internal(format!("{op:?} on floats")))
}

/// `a ^ b` for a constant scalar exponent (what normalisations use), else `exp(b ln a)`.
fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if b.elem_count() == 1 && !b.track_op() {
        let e = b.flatten_all()?.to_vec1::<f32>()?[0];
        return Ok(match e {
            1.0 => a.clone(),
            2.0 => a.sqr()?,
            0.5 => a.sqrt()?,
            _ => a.powf(e as f64)?,
        });
    }
    Ok(a.log()?.broadcast_mul(b)?.exp()?)
}

fn where_(inputs: &[Option<&Val>], ctx: &Ctx) -> Result<Val> {
    let cond = input(inputs, 0)?.ints("Where condition")?;
    let (a, b) = (input(inputs, 1)?, input(inputs, 2)?);
    if let (Val::I(a), Val::I(b)) = (a, b) {
        return Ok(Val::I(shape_ops::where_ints(&cond, a, b)?));
    }
    let (a, b) = (a.float(&ctx.device)?, b.float(&ctx.device)?);
    let dims = broadcast(
        &broadcast(&cond.dims, a.dims(), "Where")?,
        b.dims(),
        "Where",
    )?;
    let c: Vec<u8> = cond.data.iter().map(|&v| (v != 0) as u8).collect();
    let c = Tensor::from_vec(c, cond.dims.as_slice(), &ctx.device)?;
    let c = c.broadcast_as(dims.as_slice())?.contiguous()?;
    let a = a.broadcast_as(dims.as_slice())?.contiguous()?;
    let b = b.broadcast_as(dims.as_slice())?.contiguous()?;
    Ok(Val::F(c.where_cond(&a, &b)?))
}

/// ONNX MatMul (numpy semantics): batch dimensions broadcast, 1-D operands promoted.
fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a1, b1) = (a.rank() == 1, b.rank() == 1);
    let a = if a1 { a.unsqueeze(0)? } else { a.clone() };
    let b = if b1 { b.unsqueeze(1)? } else { b.clone() };
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let y = if a.rank() == b.rank() && a.dims()[..a.rank() - 2] == b.dims()[..b.rank() - 2] {
        a.matmul(&b)?
    } else {
        a.broadcast_matmul(&b)?
    };
    let y = if a1 { y.squeeze(D::Minus2)? } else { y };
    Ok(if b1 { y.squeeze(D::Minus1)? } else { y })
}

/// Normalises over the dimensions from `axis` on, then scales and shifts. Written in tensor
/// ops (candle-nn's fused `layer_norm` has no backward).
fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    a: i64,
    eps: f64,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let a = axis(a, dims.len(), "LayerNormalization")?;
    let rows: usize = dims[..a].iter().product();
    let x2 = x.reshape((rows, ()))?;
    let mean = x2.mean_keepdim(1)?;
    let xc = x2.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims)?;
    let y = y.broadcast_mul(scale)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Softmax in tensor ops (candle-nn's `softmax_last_dim` has no backward). `legacy` (opset
/// < 13): over all dimensions from `axis` on, as one.
fn softmax(x: &Tensor, a: i64, legacy: bool) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let a = axis(a, dims.len(), "Softmax")?;
    if legacy && a + 1 != dims.len() {
        let rows: usize = dims[..a].iter().product();
        return softmax(&x.reshape((rows, ()))?, -1, false)?
            .reshape(dims)
            .map_err(Into::into);
    }
    let max = x.detach().max_keepdim(a)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(a)?)?)
}

fn reduce(
    x: &Tensor,
    op: Reduce,
    axes: Option<Vec<i64>>,
    keepdims: bool,
    noop_with_empty_axes: bool,
) -> Result<Tensor> {
    let rank = x.rank();
    let mut axes: Vec<usize> = match axes {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&a| axis(a, rank, "Reduce"))
            .collect::<Result<_>>()?,
        _ if noop_with_empty_axes => return Ok(x.clone()),
        _ => (0..rank).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    let mut y = match op {
        Reduce::Mean => x.mean_keepdim(axes.clone())?,
        Reduce::Sum => x.sum_keepdim(axes.clone())?,
        Reduce::Max => {
            let mut y = x.clone();
            for &a in &axes {
                y = y.max_keepdim(a)?;
            }
            y
        }
    };
    if !keepdims {
        for &a in axes.iter().rev() {
            y = y.squeeze(a)?;
        }
    }
    Ok(y)
}
