//! The ops a graph may use, with their attributes parsed, and how each runs.
//!
//! Every float op is built from the engine's layers (convolutions, pools and ReLUs with their
//! fast CPU kernels, device-generic path and guided backward) or from candle tensor ops that
//! have an input-gradient backward (checked op by op in the tests): nothing here may cut the
//! gradient. Integer ops (shape arithmetic) run on the host; see [`super::value`].
//! LayerNormalization, Softmax and GELU take the fused CPU kernels of
//! [`crate::engine::ops::fused`] on the fast CPU path, these tensor-op formulas elsewhere.

use candle_core::{D, DType, Tensor};

pub(crate) use super::conv::{AvgConvs, ConvImpl, ConvStep, Pads, Window};
use super::conv::{avg_pool, relu_op};
use super::linear::{LinearStep, by_weight};
pub(crate) use super::value::Ctx;
pub(crate) use super::value::{Binary, input, opt};
use super::value::{Val, axis, broadcast};
use super::{ints, shape_ops};
use crate::engine::ops::activation::ReluMode;
use crate::engine::ops::geometry::Padding;
use crate::engine::ops::pool::MaxPool2d;
use crate::engine::ops::{Backend, fused};
use crate::error::{Error, Result};

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

/// A lowered node's op.
#[derive(Debug)]
pub(crate) enum Kind {
    Conv(Box<ConvStep>),
    /// A convolution before its weights are folded and built (see `fuse`).
    ConvSpec(super::conv::ConvSpec),
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
    /// A `Gemm` or `MatMul` by constant weights, with its bias (see `fuse`).
    Linear(Box<LinearStep>),
    /// Per-channel `x * scale + shift` (a BatchNorm no convolution absorbed).
    Affine(Tensor, Tensor),
    LayerNorm {
        axis: i64,
        eps: f64,
    },
    /// A transpose of planes `[b, c, h, w]` to channels-last rows, then LayerNorm over `c`.
    LayerNormFromPlanes {
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
    Resize(super::resize::Resize),
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
                let extra = match step.runtime_pads {
                    Some(k) => runtime_padding(&input(inputs, k)?.ints("Pad pads")?.data)?,
                    None => Padding::default(),
                };
                one(step.run(&f(0)?, skip.as_ref(), extra, ctx)?)
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
            Kind::Unary(u) => one(unary(&f(0)?, *u, ctx.backend)?),
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
                let mut y = if b.track_op() {
                    a.contiguous()?.matmul(&b.contiguous()?)?
                } else {
                    by_weight(&a.contiguous()?, &b.contiguous()?)?
                };
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
            Kind::MatMul => one(matmul(&f(0)?, &f(1)?, ctx.backend)?),
            Kind::Linear(step) => {
                let residual = if step.to_planes { Some(f(1)?) } else { None };
                one(step.run(&f(0)?, residual.as_ref(), ctx)?)
            }
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
                one(layer_norm(
                    &f(0)?,
                    &f(1)?,
                    bias.as_ref(),
                    (*a, *eps),
                    ctx.backend,
                )?)
            }
            Kind::LayerNormFromPlanes { eps } => {
                let bias = opt(inputs, 2).map(|b| b.float(&ctx.device)).transpose()?;
                one(layer_norm_from_planes(
                    &f(0)?,
                    &f(1)?,
                    bias.as_ref(),
                    *eps,
                    ctx.backend,
                )?)
            }
            Kind::Softmax { axis: a, legacy } => one(softmax(&f(0)?, *a, *legacy, ctx.backend)?),
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
            Kind::Resize(r) => Ok(vec![r.run(inputs, ctx)?]),
            Kind::ConvSpec(_) | Kind::BatchNorm(_) => Err(Error::Internal(
                "an unbuilt convolution or BatchNorm ran".into(),
            )),
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

/// True when `x` takes the fused CPU kernels on `backend`.
fn fused_here(x: &Tensor, backend: Backend) -> bool {
    backend.fast_cpu(x.device()) && fused::fits(x)
}

pub(crate) fn unary(x: &Tensor, u: Unary, backend: Backend) -> Result<Tensor> {
    Ok(match u {
        Unary::Gelu(tanh) => fused::gelu_on(x, tanh, backend)?,
        Unary::Sigmoid => candle_nn::ops::sigmoid(x)?,
        Unary::Tanh => x.tanh()?,
        Unary::Erf => x.erf()?,
        Unary::Exp => x.exp()?,
        Unary::Log => x.log()?,
        Unary::Sqrt => x.sqrt()?,
        Unary::Neg => x.neg()?,
        Unary::Reciprocal => x.recip()?,
        Unary::Abs => x.abs()?,
        Unary::HardSigmoid(a, b) => x.affine(a as f64, b as f64)?.clamp(0f32, 1f32)?,
        Unary::HardSwish => (x * x.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?)?,
        Unary::Softplus => (x.exp()? + 1.0)?.log()?,
    })
}

fn binary(op: Binary, a: &Val, b: &Val, ctx: &Ctx) -> Result<Val> {
    if let (Val::I(a), Val::I(b)) = (a, b) {
        return Ok(Val::I(ints::binary_ints(op, a, b)?));
    }
    let comparison = matches!(
        op,
        Binary::Equal | Binary::Less | Binary::Greater | Binary::Mod | Binary::And | Binary::Or
    );
    if comparison {
        // Masks and indices: integers, computed on the host (never on an activation).
        let (a, b) = (a.ints("comparison")?, b.ints("comparison")?);
        return Ok(Val::I(ints::binary_ints(op, &a, &b)?));
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
        return Ok(Val::I(ints::where_ints(&cond, a, b)?));
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
fn matmul(a: &Tensor, b: &Tensor, backend: Backend) -> Result<Tensor> {
    if a.rank() >= 2 && b.rank() == 2 && !b.track_op() {
        return by_weight(&a.contiguous()?, b);
    }
    // Two activations with the same batch dimensions (attention): the packed GEMM.
    let r = a.rank();
    if r >= 3
        && b.rank() == r
        && a.dims()[..r - 2] == b.dims()[..r - 2]
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && backend.fast_cpu(a.device())
    {
        let (m, k, n) = (a.dim(r - 2)?, a.dim(r - 1)?, b.dim(r - 1)?);
        if b.dim(r - 2)? == k {
            let batch: usize = a.dims()[..r - 2].iter().product();
            let y = crate::engine::ops::products::batched_product(
                &a.reshape((batch, m, k))?,
                &b.reshape((batch, k, n))?,
            )?;
            let mut dims = a.dims().to_vec();
            dims[r - 1] = n;
            return Ok(y.reshape(dims)?);
        }
    }
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

/// Normalises over the dimensions from `axis` on, then scales and shifts. The fused kernel
/// where scale and bias are constants of the normalised shape (no broadcast), else tensor ops
/// (candle-nn's fused `layer_norm` has no backward).
/// [`Kind::LayerNormFromPlanes`]: one op on the fast CPU path when the scale and bias are
/// one constant per channel, else the transpose and the LayerNorm as the graph had them.
fn layer_norm_from_planes(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
    backend: Backend,
) -> Result<Tensor> {
    let c = x.dims().get(1).copied().unwrap_or(0);
    let per_channel = |t: &Tensor| !t.track_op() && t.elem_count() == c;
    if fused_here(x, backend) && x.rank() == 4 && per_channel(scale) && bias.is_none_or(per_channel)
    {
        let values = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        let bias = match bias {
            Some(b) => values(b)?,
            None => vec![0.0; c],
        };
        return Ok(fused::planes::layer_norm_from_planes(
            x,
            values(scale)?,
            bias,
            eps as f32,
        )?);
    }
    layer_norm(&x.permute((0, 2, 3, 1))?, scale, bias, (-1, eps), backend)
}

fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    (a, eps): (i64, f64),
    backend: Backend,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let a = axis(a, dims.len(), "LayerNormalization")?;
    let rows: usize = dims[..a].iter().product();
    // Shapes equal up to leading 1s: the kernel reads one value per normalised element.
    let unit = |d: &[usize]| {
        d.iter()
            .skip_while(|&&n| n == 1)
            .copied()
            .collect::<Vec<_>>()
    };
    let whole = |t: &Tensor| !t.track_op() && unit(t.dims()) == unit(&dims[a..]);
    if fused_here(x, backend) && whole(scale) && bias.is_none_or(whole) {
        let y = fused::layer_norm(&x.reshape((rows, ()))?, scale, bias, eps as f32)?;
        return Ok(y.reshape(dims)?);
    }
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

/// Softmax: the fused kernel over the last axis, else tensor ops (candle-nn's
/// `softmax_last_dim` has no backward). `legacy` (opset < 13): over all dimensions from
/// `axis` on, as one.
fn softmax(x: &Tensor, a: i64, legacy: bool, backend: Backend) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let a = axis(a, dims.len(), "Softmax")?;
    if legacy && a + 1 != dims.len() {
        let rows: usize = dims[..a].iter().product();
        return softmax(&x.reshape((rows, ()))?, -1, false, backend)?
            .reshape(dims)
            .map_err(Into::into);
    }
    if a + 1 == dims.len() && fused_here(x, backend) {
        return Ok(fused::softmax_last(x)?);
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

/// A 4-D `Pad`'s pads (all befores, then all afters) as an image's padding: only height and
/// width, never negative.
fn runtime_padding(p: &[i64]) -> Result<Padding> {
    match p {
        [0, 0, t, l, 0, 0, b, r] if [t, l, b, r].iter().all(|&&v| (0..1 << 16).contains(&v)) => {
            Ok(Padding {
                top: *t as usize,
                left: *l as usize,
                bottom: *b as usize,
                right: *r as usize,
            })
        }
        _ => Err(Error::InvalidParam(format!(
            "Pad {p:?} before a convolution: only non-negative height and width padding is supported"
        ))),
    }
}
