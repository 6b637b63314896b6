//! DenseNet (Huang et al., 2017, <https://arxiv.org/abs/1608.06993>) with torchvision's
//! tensor names: DenseNet-121 and its relatives (growth rate, bottleneck width, block sizes and
//! input channels are read from the weights' shapes), any classifier width (CheXNet's 14
//! ChestX-ray14 labels, TorchXRayVision's 18), CheXNet's `Sequential(Linear, Sigmoid)` head
//! (`classifier.0`), and the legacy `norm.1`-style names of old checkpoints.
//!
//! A one-channel model (TorchXRayVision) sees the mean of the three input channels, as
//! TorchXRayVision's own pipeline turns a colour image into its input (`img.mean(2)`): its
//! first convolution's weights are spread over the three channels, divided by three.
//!
//! torchvision applies one ReLU functionally (`F.relu` after `features.norm5` in `forward`),
//! which hook-based guided-backprop tools miss; here it is our op like every other ReLU.
//! The BatchNorms after a convolution (`norm0`, each dense layer's `norm2`) are folded into it
//! and their ReLUs fused; the others precede a convolution, so they run as a per-channel affine
//! map with the ReLU after it (eval mode, eps 1e-5; one fused op on the fast CPU path).
//!
//! Recognised by its first dense layer's convolution (under either name). The network is
//! shared with TorchXRayVision's DenseNet (`xrv_densenet.rs`), which refines this one.

use candle_core::{Device, Tensor};

use super::{Architecture, Defaults, Detection};
use crate::engine::models::classifier::Network;
use crate::engine::models::info::CHESTXRAY14_LABELS;
use crate::engine::models::layers::{
    Conv, Layer, LayerKind, Linear, PadMode, Weights, bn_tensors, fold_bn,
};
use crate::engine::ops::Backend;
use crate::engine::ops::activation::{ReluMode, ReluOp};
use crate::engine::ops::affine_act::AffineAct;
use crate::engine::ops::geometry::Padding;
use crate::engine::ops::pool::MaxPool2d;
use crate::error::{Error, Result};

const BN_EPS: f64 = 1e-5;

/// torchvision's DenseNet-121 and its relatives, CheXNet included.
pub(super) struct DenseNet121;

pub(super) static DENSENET121: DenseNet121 = DenseNet121;

impl Architecture for DenseNet121 {
    fn name(&self) -> &'static str {
        "densenet121"
    }

    fn about(&self) -> &'static str {
        "any torchvision DenseNet, CheXNet included"
    }

    fn detect(&self, w: &Weights, _: Option<&str>) -> Detection {
        if is_densenet(w) {
            Detection::Yes
        } else {
            Detection::No
        }
    }

    fn fix_key(&self, key: &str) -> String {
        modernise_key(key)
    }

    fn build(&self, w: &Weights, device: &Device, backend: Backend) -> Result<Box<dyn Network>> {
        Ok(Box::new(DenseNet::load(w, device, backend)?))
    }

    /// ImageNet's preprocessing; a 14-output head is CheXNet's (ChestX-ray14's findings,
    /// sigmoids), and so is a `Sequential(Linear, Sigmoid)` head (`classifier.0`) of any width.
    fn defaults(&self, classes: usize, w: &Weights) -> Defaults {
        let chexnet = classes == 14;
        Defaults {
            labels: chexnet.then(|| CHESTXRAY14_LABELS.lines().map(|l| l.trim().into()).collect()),
            multi_label: chexnet || classifier_name(w) == "classifier.0",
            ..Defaults::imagenet()
        }
    }
}

/// A DenseNet's first dense layer, under its modern or legacy name.
pub(super) fn is_densenet(w: &Weights) -> bool {
    w.shape("features.denseblock1.denselayer1.conv1.weight").is_ok()
        || w.shape("features.denseblock1.denselayer1.conv.1.weight").is_ok()
}

/// A DenseNet's shape, read from its weights: DenseNet-121 is growth 32, bottleneck 4 x 32,
/// blocks [6, 12, 24, 16], 64 initial features, 3 input channels.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Config {
    in_channels: usize,
    init: usize,
    growth: usize,
    /// Bottleneck width (`bn_size * growth` in torchvision).
    bottleneck: usize,
    blocks: Vec<usize>,
}

impl Config {
    fn from_weights(w: &Weights) -> Result<Self> {
        let conv0 = w.shape("features.conv0.weight")?;
        let conv1 = w.shape("features.denseblock1.denselayer1.conv1.weight")?;
        let conv2 = w.shape("features.denseblock1.denselayer1.conv2.weight")?;
        let (Some(&init), Some(&in_channels), Some(&bottleneck), Some(&growth)) =
            (conv0.first(), conv0.get(1), conv1.first(), conv2.first())
        else {
            return Err(Error::Weights(
                "malformed DenseNet convolution weights".into(),
            ));
        };
        let blocks: Vec<usize> = (1..)
            .map_while(|b| {
                let n = (1..)
                    .take_while(|l| {
                        w.shape(&format!(
                            "features.denseblock{b}.denselayer{l}.conv1.weight"
                        ))
                        .is_ok()
                    })
                    .count();
                (n > 0).then_some(n)
            })
            .collect();
        if !matches!(in_channels, 1 | 3) {
            return Err(Error::Weights(format!(
                "a DenseNet with {in_channels} input channels; unveil feeds 1 (grayscale) or 3"
            )));
        }
        Ok(Config {
            in_channels,
            init,
            growth,
            bottleneck,
            blocks,
        })
    }
}

/// Eval-mode BatchNorm as `x * scale + shift`, always followed by a ReLU: one fused op on the
/// fast CPU path, tensor ops elsewhere.
#[derive(Debug)]
struct Norm {
    layer: Layer,
    scale: Tensor,
    shift: Tensor,
    /// The CPU op, one per ReLU mode.
    fused: [AffineAct; 2],
}

impl Norm {
    fn load(w: &Weights, p: &str, c: usize, device: &Device) -> Result<Self> {
        let names = bn_tensors(p);
        let get = |i: usize| w.get(&names[i], &[c]);
        let (gamma, beta, mean, var) = (get(0)?, get(1)?, get(2)?, get(3)?);
        let scale = gamma.div(&(var + BN_EPS)?.sqrt()?)?;
        let shift = beta.sub(&mean.mul(&scale)?)?;
        let (s, b) = (scale.to_vec1::<f32>()?, shift.to_vec1::<f32>()?);
        let fused = [ReluMode::Plain, ReluMode::Guided]
            .map(|m| AffineAct::new(s.clone(), b.clone(), ReluOp::relu(m)));
        Ok(Norm {
            fused,
            layer: Layer::new(LayerKind::Norm, names),
            scale: scale.reshape((1, c, 1, 1))?.to_device(device)?,
            shift: shift.reshape((1, c, 1, 1))?.to_device(device)?,
        })
    }

    /// `relu(x * scale + shift)`.
    fn forward_relu(&self, x: &Tensor, mode: ReluMode, backend: Backend) -> Result<Tensor> {
        if backend.fast_cpu(x.device()) {
            return Ok(self.fused[(mode == ReluMode::Guided) as usize].forward(x)?);
        }
        let y = x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)?;
        Ok(ReluOp::relu(mode).forward_on(&y, backend)?)
    }
}

fn conv(
    w: &Weights,
    name: &str,
    (cin, cout, k): (usize, usize, usize),
    stride: usize,
    pad: usize,
    device: &Device,
) -> Result<Conv> {
    let name = format!("{name}.weight");
    let weight = w.get(&name, &[cout, cin, k, k])?;
    let zeros = Tensor::zeros(cout, candle_core::DType::F32, &Device::Cpu)?;
    Conv::new(
        vec![name],
        weight,
        zeros,
        stride,
        1,
        PadMode::Fixed(pad),
        device,
    )
}

#[derive(Debug)]
struct DenseLayer {
    norm1: Norm,
    /// With `norm2` folded in; the ReLU after it fused.
    conv1: Conv,
    conv2: Conv,
}

#[derive(Debug)]
struct Transition {
    norm: Norm,
    conv: Conv,
}

#[derive(Debug)]
pub(super) struct DenseNet {
    /// With `norm0` folded in; the ReLU after it fused.
    conv0: Conv,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: Norm,
    classifier: Linear,
    backend: Backend,
}

impl DenseNet {
    pub(super) fn load(w: &Weights, device: &Device, backend: Backend) -> Result<Self> {
        let Config {
            in_channels,
            init,
            growth,
            bottleneck,
            ref blocks,
        } = Config::from_weights(w)?;
        let conv0 = {
            let name = "features.conv0.weight";
            let weight = w.get(name, &[init, in_channels, 7, 7])?;
            // One channel: the mean of three, folded into the weights.
            let weight = if in_channels == 1 {
                (weight.repeat((1, 3, 1, 1))? / 3.0)?
            } else {
                weight
            };
            let (weight, bias) = fold_bn(w, weight, "features.norm0", BN_EPS)?;
            let tensors = [vec![name.into()], bn_tensors("features.norm0")].concat();
            Conv::new(tensors, weight, bias, 2, 1, PadMode::Fixed(3), device)?
        };
        let (mut layer_blocks, mut transitions) = (Vec::new(), Vec::new());
        let mut c = init;
        for (bi, &n) in blocks.iter().enumerate() {
            let mut layers = Vec::new();
            for li in 0..n {
                let p = format!("features.denseblock{}.denselayer{}", bi + 1, li + 1);
                let cin = c + li * growth;
                layers.push(DenseLayer {
                    norm1: Norm::load(w, &format!("{p}.norm1"), cin, device)?,
                    conv1: Conv::with_bn(
                        w,
                        &format!("{p}.conv1"),
                        &format!("{p}.norm2"),
                        BN_EPS,
                        (cin, bottleneck, 1),
                        1,
                        1,
                        PadMode::Fixed(0),
                        device,
                    )?,
                    conv2: conv(
                        w,
                        &format!("{p}.conv2"),
                        (bottleneck, growth, 3),
                        1,
                        1,
                        device,
                    )?,
                });
            }
            layer_blocks.push(layers);
            c += n * growth;
            if bi + 1 < blocks.len() {
                let p = format!("features.transition{}", bi + 1);
                transitions.push(Transition {
                    norm: Norm::load(w, &format!("{p}.norm"), c, device)?,
                    conv: conv(w, &format!("{p}.conv"), (c, c / 2, 1), 1, 0, device)?,
                });
                c /= 2;
            }
        }
        let norm5 = Norm::load(w, "features.norm5", c, device)?;
        let classifier = Linear::head(w, classifier_name(w), c, device)?;
        Ok(DenseNet {
            conv0,
            blocks: layer_blocks,
            transitions,
            norm5,
            classifier,
            backend,
        })
    }
}

impl Network for DenseNet {
    fn features(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        let b = self.backend;
        let relu = Some(ReluOp::relu(mode));
        let h = self.conv0.forward_residual(x, None, relu, b)?;
        let mut h = MaxPool2d {
            k: 3,
            stride: 2,
            pad: Padding::symmetric(1),
        }
        .forward(&h, b)?;
        for (bi, layers) in self.blocks.iter().enumerate() {
            let mut features = vec![h.clone()];
            for l in layers {
                let cat = Tensor::cat(&features, 1)?;
                let y = l.norm1.forward_relu(&cat, mode, b)?;
                let y = l.conv1.forward_residual(&y, None, relu, b)?;
                let y = l.conv2.forward(&y, b)?;
                features.push(y);
            }
            h = Tensor::cat(&features, 1)?;
            if let Some(t) = self.transitions.get(bi) {
                h = t
                    .conv
                    .forward(&t.norm.forward_relu(&h, mode, b)?, b)?
                    .avg_pool2d(2)?;
            }
        }
        // torchvision: `F.relu(features)` in forward, the ReLU hooks never see.
        self.norm5.forward_relu(&h, mode, b)
    }

    fn head(&self, features: &Tensor, _mode: ReluMode) -> Result<Tensor> {
        self.classifier.forward(&features.mean((2, 3))?)
    }

    fn num_classes(&self) -> usize {
        self.classifier.out_features()
    }

    fn feature_layer(&self) -> &'static str {
        "the ReLU of norm5 (torchvision applies it functionally in forward), 1024 channels at \
         1/32 of the input size for DenseNet-121"
    }

    fn last_stage(&self) -> &'static [&'static str] {
        &["features.denseblock4.", "features.norm5."]
    }

    /// Pre-activation order: each convolution's BatchNorm before it.
    fn layers(&self) -> Vec<Layer> {
        let mut out = vec![self.conv0.layer()];
        for (bi, layers) in self.blocks.iter().enumerate() {
            for l in layers {
                out.extend([l.norm1.layer.clone(), l.conv1.layer(), l.conv2.layer()]);
            }
            if let Some(t) = self.transitions.get(bi) {
                out.extend([t.norm.layer.clone(), t.conv.layer()]);
            }
        }
        out.extend([self.norm5.layer.clone(), self.classifier.layer()]);
        out
    }
}

/// torchvision's `classifier`, or CheXNet's `Sequential(Linear, Sigmoid)` head `classifier.0`.
pub(super) fn classifier_name(w: &Weights) -> &'static str {
    if w.shape("classifier.weight").is_err() && w.shape("classifier.0.weight").is_ok() {
        "classifier.0"
    } else {
        "classifier"
    }
}

/// Renames legacy DenseNet keys (`denselayer1.norm.1.weight` -> `denselayer1.norm1.weight`):
/// torchvision renamed the layers, and only DenseNet checkpoints carry the old names.
pub(super) fn modernise_key(key: &str) -> String {
    let mut out = key.to_string();
    for part in ["norm", "relu", "conv"] {
        for d in ['1', '2'] {
            out = out.replace(&format!(".{part}.{d}."), &format!(".{part}{d}."));
        }
    }
    out
}
