//! Building blocks shared by the architectures: weight lookup with clear errors, BatchNorm
//! folding, a convolution layer that picks the fast or stock implementation, and [`Layer`]: the
//! tensors each layer is built from, which networks list in forward order.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::engine::ops::Backend;
use crate::engine::ops::activation::{ReluMode, ReluOp};
use crate::engine::ops::chain::{Chain, Value};
use crate::engine::ops::conv::conv2d_const;
use crate::engine::ops::conv_act::{Applied, ConvCache};
use crate::engine::ops::depthwise::DepthwiseConv2d;
use crate::engine::ops::generic::Depthwise;
use crate::engine::ops::geometry::Padding;
use crate::engine::ops::pool::MaxPool2d;
use crate::error::{Error, Result};

/// A change to a model's weights before it is built (the sanity check's re-initialisations).
pub type WeightEdit<'a> = &'a dyn Fn(&mut Weights) -> Result<()>;

/// Named tensors from a weights file, checked on lookup.
#[derive(Debug)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Weights { tensors }
    }

    /// The same tensors under names rewritten by `rename` (an architecture's legacy names).
    pub fn map_keys(self, rename: impl Fn(&str) -> String) -> Self {
        Weights::new(
            self.tensors
                .into_iter()
                .map(|(k, t)| (rename(&k), t))
                .collect(),
        )
    }

    /// Reads a safetensors file already in memory. Parsing never executes code.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| Error::Weights(format!("not a valid safetensors file ({e})")))?;
        Ok(Weights::new(tensors))
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

    /// A tensor that is not a layer's weight (e.g. calibration data): no [`Layer`] names it,
    /// so the sanity check never re-initialises it.
    pub fn peek(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Replaces tensor `name` (which must exist) by `t` of the same shape.
    pub fn replace(&mut self, name: &str, t: Tensor) -> Result<()> {
        match self.tensors.get_mut(name) {
            Some(old) if old.dims() == t.dims() => {
                *old = t;
                Ok(())
            }
            Some(old) => Err(Error::Internal(format!(
                "replacing '{name}' of shape {:?} by one of {:?}",
                old.dims(),
                t.dims()
            ))),
            None => Err(Error::Internal(format!(
                "replacing '{name}', which is missing"
            ))),
        }
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

/// What a layer is, for the sanity check's cascade (see [`super::reinit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A convolution, with the BatchNorm folded into it.
    Conv,
    /// A fully connected layer: the trailing ones are the classifier head.
    Linear,
    /// A normalisation of its own (DenseNet's BatchNorm before each convolution): re-initialised
    /// with the convolution or linear layer before it.
    Norm,
}

/// The tensors one layer is built from. A network lists its layers in forward order
/// ([`super::Network::layers`]): the sanity check re-initialises the last ones, and every
/// tensor the network reads is in exactly one layer (tested for every architecture).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub kind: LayerKind,
    /// Tensor names, the layer's own weight first.
    pub tensors: Vec<String>,
}

impl Layer {
    pub fn new(kind: LayerKind, tensors: Vec<String>) -> Self {
        Layer { kind, tensors }
    }
}

/// A BatchNorm's tensors, in the order [`fold_bn`] uses them.
pub fn bn_tensors(bn: &str) -> Vec<String> {
    ["weight", "bias", "running_mean", "running_var"]
        .map(|t| format!("{bn}.{t}"))
        .to_vec()
}

/// Folds the BatchNorm `{bn}.*` that follows a convolution into its weight and a bias:
/// `w * gamma / sqrt(var + eps)` and `beta - mean * gamma / sqrt(var + eps)`.
pub fn fold_bn(w: &Weights, weight: Tensor, bn: &str, eps: f64) -> Result<(Tensor, Tensor)> {
    let cout = weight.dim(0)?;
    let names = bn_tensors(bn);
    let get = |i: usize| w.get(&names[i], &[cout]);
    let (gamma, beta, mean, var) = (get(0)?, get(1)?, get(2)?, get(3)?);
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
    /// Given per side (ONNX `pads`, which may differ between sides).
    Explicit(Padding),
}

/// A convolution with BatchNorm folded into its weight and bias.
#[derive(Debug)]
pub struct Conv {
    /// The tensors it was built from.
    layer: Layer,
    weight: Tensor,
    bias: Tensor,
    k: usize,
    stride: usize,
    groups: usize,
    pad: PadMode,
    /// The CPU kernel's copy of a depthwise layer's weights.
    depthwise: Option<DepthwiseConv2d>,
    /// The device-generic form of a depthwise layer (per-tap weights on the device).
    depthwise_taps: Option<Depthwise>,
    /// Transformed weights the CPU kernel keeps between calls.
    cache: Arc<ConvCache>,
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
        let name = format!("{conv}.weight");
        let weight = w.get(&name, &[cout, cin / groups, k, k])?;
        let (weight, bias) = fold_bn(w, weight, bn, eps)?;
        let tensors = [vec![name], bn_tensors(bn)].concat();
        Self::new(tensors, weight, bias, stride, groups, pad, device)
    }

    /// A convolution of `weight` and `bias`, which were computed from `tensors` (its weight
    /// first).
    pub fn new(
        tensors: Vec<String>,
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
        let depthwise_taps = depthwise
            .is_some()
            .then(|| Depthwise::new(&weight, &bias, stride, device))
            .transpose()?;
        Ok(Conv {
            layer: Layer::new(LayerKind::Conv, tensors),
            weight: weight.to_device(device)?,
            bias: bias.to_device(device)?,
            k,
            stride,
            groups,
            pad,
            depthwise: depthwise.transpose()?,
            depthwise_taps,
            cache: Arc::default(),
        })
    }

    pub fn layer(&self) -> Layer {
        self.layer.clone()
    }

    fn padding(&self, h: usize, w: usize) -> Padding {
        match self.pad {
            PadMode::TfSame => Padding::tf_same(h, w, self.k, self.stride),
            PadMode::Fixed(p) => Padding::symmetric(p),
            PadMode::Explicit(p) => p,
        }
    }

    pub fn forward(&self, x: &Tensor, backend: Backend) -> Result<Tensor> {
        self.forward_residual(x, None, None, backend)
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
        self.forward_padded(x, skip, act, backend, Padding::default())
    }

    /// [`Conv::forward_residual`] with `extra` zero padding on top of the layer's own (an
    /// ONNX graph's `Pad` computed at run time, folded into the convolution after it).
    pub fn forward_padded(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        act: Option<ReluOp>,
        backend: Backend,
        extra: Padding,
    ) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let own = self.padding(h, w);
        let pad = Padding {
            top: own.top + extra.top,
            bottom: own.bottom + extra.bottom,
            left: own.left + extra.left,
            right: own.right + extra.right,
        };
        if backend.fast_cpu(x.device()) {
            let (wt, b, s) = (&self.weight, &self.bias, self.stride);
            match &self.depthwise {
                Some(dw) if skip.is_none() => return Ok(dw.forward_act(x, pad, act)?),
                None if self.groups == 1 => {
                    let cache = self.cache.clone();
                    let op = Applied::for_input(x.dims4()?, wt, b, s, pad, act, cache)?;
                    return Ok(op.apply(x, skip)?);
                }
                _ => {}
            }
        }
        let generic = backend.generic(x.device());
        let y = match &self.depthwise_taps {
            Some(dw) if generic && backend != Backend::Stock => dw.forward(x, pad)?,
            _ => {
                let x = pad_zeros(x, pad)?;
                if backend != Backend::Stock && self.groups == 1 {
                    conv2d_const(&x, &self.weight, &self.bias, self.stride, generic)?
                } else {
                    x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?
                        .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?
                }
            }
        };
        let y = match skip {
            Some(skip) => (y + skip)?,
            None => y,
        };
        Ok(match act {
            Some(act) => act.forward_on(&y, backend)?,
            None => y,
        })
    }

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
            None if self.groups == 1 => chain.conv(x, skip, (wt, b, &self.cache), s, pad, act)?,
            _ => {
                return Err(Error::Internal(format!(
                    "a {}-group convolution cannot join a layer chain",
                    self.groups
                )));
            }
        })
    }
}

/// Where a model's layers run: as separate candle ops ([`Ops`], any device and backend) or as
/// the steps of one layer chain (the CPU fast path, see `ops::chain`). Models describe their
/// structure once, generic over it ([`Body`]).
pub trait Graph {
    type Value: Clone;
    /// `act(conv(x) + skip)`.
    fn conv(
        &mut self,
        conv: &Conv,
        x: &Self::Value,
        skip: Option<&Self::Value>,
        act: Option<ReluOp>,
    ) -> Result<Self::Value>;
    fn act(&mut self, x: &Self::Value, act: ReluOp) -> Result<Self::Value>;
    fn add(&mut self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// A max pool whose settings may depend on its input's size `[n, c, h, w]`.
    fn max_pool(
        &mut self,
        x: &Self::Value,
        pool: impl Fn((usize, usize, usize, usize)) -> MaxPool2d,
    ) -> Result<Self::Value>;
}

/// Layers as separate candle ops.
pub struct Ops(pub Backend);

impl Graph for Ops {
    type Value = Tensor;

    fn conv(
        &mut self,
        conv: &Conv,
        x: &Tensor,
        skip: Option<&Tensor>,
        act: Option<ReluOp>,
    ) -> Result<Tensor> {
        conv.forward_residual(x, skip, act, self.0)
    }

    fn act(&mut self, x: &Tensor, act: ReluOp) -> Result<Tensor> {
        Ok(act.forward_on(x, self.0)?)
    }

    fn add(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }

    fn max_pool(
        &mut self,
        x: &Tensor,
        pool: impl Fn((usize, usize, usize, usize)) -> MaxPool2d,
    ) -> Result<Tensor> {
        Ok(pool(x.dims4()?).forward(x, self.0)?)
    }
}

impl Graph for Chain {
    type Value = Value;

    fn conv(
        &mut self,
        conv: &Conv,
        x: &Value,
        skip: Option<&Value>,
        act: Option<ReluOp>,
    ) -> Result<Value> {
        conv.chain(self, *x, skip.copied(), act)
    }

    fn act(&mut self, x: &Value, act: ReluOp) -> Result<Value> {
        Ok(Chain::act(self, *x, act))
    }

    fn add(&mut self, a: &Value, b: &Value) -> Result<Value> {
        Ok(Chain::add(self, *a, *b)?)
    }

    fn max_pool(
        &mut self,
        x: &Value,
        pool: impl Fn((usize, usize, usize, usize)) -> MaxPool2d,
    ) -> Result<Value> {
        Ok(Chain::max_pool(self, *x, pool(self.dims(*x))))
    }
}

/// A network body (input image to final feature map) written once for both [`Graph`]s.
pub trait Body {
    fn body<G: Graph>(&self, g: &mut G, x: G::Value, mode: ReluMode) -> Result<G::Value>;

    /// Runs the body on `x`: as one layer chain on the CPU fast path, else as separate ops.
    fn run_body(&self, x: &Tensor, mode: ReluMode, backend: Backend) -> Result<Tensor> {
        if backend.fast_cpu(x.device()) {
            let mut chain = Chain::new(x.dims4()?);
            let out = self.body(&mut chain, Chain::INPUT, mode)?;
            Ok(chain.run(x, out)?)
        } else {
            self.body(&mut Ops(backend), x.clone(), mode)
        }
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
#[derive(Debug)]
pub struct Linear {
    layer: Layer,
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
        let names = [format!("{prefix}.weight"), format!("{prefix}.bias")];
        let weight = w.get(&names[0], &[out, inp])?;
        let bias = w.get(&names[1], &[out])?;
        Ok(Linear {
            layer: Layer::new(LayerKind::Linear, names.to_vec()),
            weight_t: weight.t()?.contiguous()?.to_device(device)?,
            bias: bias.to_device(device)?,
        })
    }

    /// A classifier head `{prefix}` over `inputs` features, as wide as its weights say (a
    /// fine-tuned checkpoint may have any number of classes).
    pub fn head(w: &Weights, prefix: &str, inputs: usize, device: &Device) -> Result<Self> {
        let shape = w.shape(&format!("{prefix}.weight"))?;
        if shape.len() != 2 || shape[1] != inputs {
            return Err(Error::Weights(format!(
                "tensor '{prefix}.weight' has shape {shape:?}, expected [classes, {inputs}]"
            )));
        }
        Linear::load(w, prefix, (inputs, shape[0]), device)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight_t)?.broadcast_add(&self.bias)?)
    }

    pub fn layer(&self) -> Layer {
        self.layer.clone()
    }

    pub fn out_features(&self) -> usize {
        self.bias.dim(0).unwrap_or(0)
    }
}
