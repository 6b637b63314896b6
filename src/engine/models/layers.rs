//! Building blocks shared by the architectures: weight lookup with clear errors, BatchNorm
//! folding, and a convolution layer that picks the fast or stock implementation.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::engine::ops::Backend;
use crate::engine::ops::activation::ReluOp;
use crate::engine::ops::chain::{Chain, Value};
use crate::engine::ops::conv::conv2d_const;
use crate::engine::ops::conv_act::{conv_act, conv_add_act};
use crate::engine::ops::depthwise::{DepthwiseConv2d, Padding};
use crate::error::{Error, Result};

/// Named tensors from a weights file, checked on lookup.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Weights { tensors }
    }

    /// Reads a safetensors file already in memory. Parsing never executes code.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| Error::Weights(format!("not a valid safetensors file ({e})")))?;
        Ok(Weights { tensors })
    }

    /// The f32 tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::Weights(format!("tensor '{name}' is missing")))?;
        if t.dims() != shape {
            return Err(Error::Weights(format!(
                "tensor '{name}' has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    /// All tensor names and shapes, for architectures that find layers by shape.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.tensors.iter().map(|(k, t)| (k.as_str(), t.dims()))
    }

    /// The shape of `name`, for architectures that read sizes from the checkpoint.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| Error::Weights(format!("tensor '{name}' is missing")))
    }
}

/// Folds the BatchNorm `{bn}.*` that follows a convolution into its weight and a bias:
/// `w * gamma / sqrt(var + eps)` and `beta - mean * gamma / sqrt(var + eps)`.
pub fn fold_bn(w: &Weights, weight: Tensor, bn: &str, eps: f64) -> Result<(Tensor, Tensor)> {
    let cout = weight.dim(0)?;
    let gamma = w.get(&format!("{bn}.weight"), &[cout])?;
    let beta = w.get(&format!("{bn}.bias"), &[cout])?;
    let mean = w.get(&format!("{bn}.running_mean"), &[cout])?;
    let var = w.get(&format!("{bn}.running_var"), &[cout])?;
    let scale = gamma.div(&(var + eps)?.sqrt()?)?;
    let weight = weight.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
    let bias = beta.sub(&mean.mul(&scale)?)?;
    Ok((weight, bias))
}

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug)]
pub enum PadMode {
    /// TensorFlow "SAME": output = ceil(input / stride), odd pixel after.
    TfSame,
    /// The same number of pixels on every side (PyTorch style).
    Fixed(usize),
}

/// A convolution with BatchNorm folded into its weight and bias.
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    k: usize,
    stride: usize,
    groups: usize,
    pad: PadMode,
    /// The CPU kernel's copy of a depthwise layer's weights.
    depthwise: Option<DepthwiseConv2d>,
}

impl Conv {
    /// Loads `{conv}.weight` (`[cout, cin / groups, k, k]`) and folds the BatchNorm `{bn}.*`
    /// (`weight`, `bias`, `running_mean`, `running_var`) into it.
    #[allow(clippy::too_many_arguments)]
    pub fn with_bn(
        w: &Weights,
        conv: &str,
        bn: &str,
        eps: f64,
        (cin, cout, k): (usize, usize, usize),
        stride: usize,
        groups: usize,
        pad: PadMode,
        device: &Device,
    ) -> Result<Self> {
        let weight = w.get(&format!("{conv}.weight"), &[cout, cin / groups, k, k])?;
        let (weight, bias) = fold_bn(w, weight, bn, eps)?;
        Self::new(weight, bias, stride, groups, pad, device)
    }

    pub fn new(
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        groups: usize,
        pad: PadMode,
        device: &Device,
    ) -> Result<Self> {
        let (cout, cin_g, k, _) = weight.dims4()?;
        let depthwise = (groups > 1 && groups == cout && cin_g == 1).then(|| -> Result<_> {
            Ok(DepthwiseConv2d::new(
                weight.flatten_all()?.to_vec1()?,
                bias.to_vec1()?,
                cout,
                k,
                stride,
            ))
        });
        Ok(Conv {
            weight: weight.to_device(device)?,
            bias: bias.to_device(device)?,
            k,
            stride,
            groups,
            pad,
            depthwise: depthwise.transpose()?,
        })
    }

    fn padding(&self, h: usize, w: usize) -> Padding {
        match self.pad {
            PadMode::TfSame => Padding::tf_same(h, w, self.k, self.stride),
            PadMode::Fixed(p) => Padding::symmetric(p),
        }
    }

    pub fn forward(&self, x: &Tensor, backend: Backend) -> Result<Tensor> {
        self.forward_act(x, None, backend)
    }

    /// The convolution followed by `act`: one fused op on the CPU fast path, separate ops
    /// elsewhere.
    pub fn forward_act(&self, x: &Tensor, act: Option<ReluOp>, backend: Backend) -> Result<Tensor> {
        self.forward_residual(x, None, act, backend)
    }

    /// `act(conv(x) + skip)`: a residual block's last convolution, shortcut and activation,
    /// one fused op on the CPU fast path.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        act: Option<ReluOp>,
        backend: Backend,
    ) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pad = self.padding(h, w);
        if backend.fast_cpu(x.device()) {
            let (wt, b, s) = (&self.weight, &self.bias, self.stride);
            match (&self.depthwise, skip) {
                (Some(dw), None) => return Ok(dw.forward_act(x, pad, act)?),
                (None, Some(skip)) if self.groups == 1 => {
                    return Ok(conv_add_act(x, skip, wt, b, s, pad, act)?);
                }
                (None, None) if self.groups == 1 => return Ok(conv_act(x, wt, b, s, pad, act)?),
                _ => {}
            }
        }
        let x = pad_zeros(x, pad)?;
        let y = if backend == Backend::Fast && self.groups == 1 {
            conv2d_const(&x, &self.weight, &self.bias, self.stride)?
        } else {
            x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?
                .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?
        };
        let y = match skip {
            Some(skip) => (y + skip)?,
            None => y,
        };
        Ok(match act {
            Some(act) => act.forward(&y)?,
            None => y,
        })
    }
}

impl Conv {
    /// Adds the convolution, `skip` and `act` (as [`Conv::forward_residual`]) to a chain of
    /// CPU layers. Every layer of the models can join one: plain convolutions, and depthwise
    /// ones without a residual.
    pub fn chain(
        &self,
        chain: &mut Chain,
        x: Value,
        skip: Option<Value>,
        act: Option<ReluOp>,
    ) -> Result<Value> {
        let (_, _, h, w) = chain.dims(x);
        let pad = self.padding(h, w);
        let (wt, b, s) = (&self.weight, &self.bias, self.stride);
        Ok(match &self.depthwise {
            Some(dw) if skip.is_none() => chain.depthwise(x, dw, pad, act)?,
            None if self.groups == 1 => chain.conv(x, skip, (wt, b), s, pad, act)?,
            _ => {
                return Err(Error::Internal(format!(
                    "a {}-group convolution cannot join a layer chain",
                    self.groups
                )));
            }
        })
    }
}

fn pad_zeros(x: &Tensor, p: Padding) -> candle_core::Result<Tensor> {
    let x = if p.top + p.bottom > 0 {
        x.pad_with_zeros(2, p.top, p.bottom)?
    } else {
        x.clone()
    };
    if p.left + p.right > 0 {
        x.pad_with_zeros(3, p.left, p.right)
    } else {
        Ok(x)
    }
}

/// A fully connected layer: `x [n, in] -> [n, out]`.
pub struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn load(
        w: &Weights,
        prefix: &str,
        (inp, out): (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let weight = w.get(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = w.get(&format!("{prefix}.bias"), &[out])?;
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?.to_device(device)?,
            bias: bias.to_device(device)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight_t)?.broadcast_add(&self.bias)?)
    }

    pub fn out_features(&self) -> usize {
        self.bias.dim(0).unwrap_or(0)
    }
}
