//! EfficientNet-Lite0 (Tan & Le, 2019, <https://arxiv.org/abs/1905.11946>; the "Lite" variant
//! from the TensorFlow model garden: no squeeze-excite, ReLU6, fixed stem and head).
//!
//! Tensor names follow the lukemelas PyTorch port (`_conv_stem`, `_blocks.N._depthwise_conv`,
//! ...) so its checkpoints load unchanged. BatchNorm (eps 1e-3) is folded into the convolutions
//! at load time, padding is TensorFlow "SAME" (asymmetric) as in the original, and every ReLU6
//! is our own op so that guided backprop reaches all of them. Recognised by `_conv_stem`; fed
//! `(x - 0.5) / 0.5` as the port was trained; the bundled ImageNet model is built on it.

use candle_core::{Device, Tensor};

use super::{Architecture, Defaults, Detection};
use crate::engine::models::classifier::Network;
use crate::engine::models::layers::{Body, Conv, Graph, Layer, Linear, PadMode, Weights};
use crate::engine::ops::Backend;
use crate::engine::ops::activation::{ReluMode, ReluOp};
use crate::error::Result;

const BN_EPS: f64 = 1e-3;

pub(crate) struct Lite0;

pub(crate) static EFFICIENTNET_LITE0: Lite0 = Lite0;

impl Architecture for Lite0 {
    fn name(&self) -> &'static str {
        "efficientnet-lite0"
    }

    fn about(&self) -> &'static str {
        "the lukemelas PyTorch port's names"
    }

    fn detect(&self, w: &Weights, _: Option<&str>) -> Detection {
        if w.shape("_conv_stem.weight").is_ok() {
            Detection::Yes
        } else {
            Detection::No
        }
    }

    fn build(&self, w: &Weights, device: &Device, backend: Backend) -> Result<Box<dyn Network>> {
        Ok(Box::new(EfficientNetLite::lite0(w, device, backend)?))
    }

    fn defaults(&self, _: usize, _: &Weights) -> Defaults {
        Defaults {
            mean: [0.5; 3],
            std: [0.5; 3],
            ..Defaults::imagenet()
        }
    }
}

/// One stage of the network: `repeats` MBConv blocks (stride applies to the first).
#[derive(Debug)]
struct Stage {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    out: usize,
}

/// EfficientNet-Lite0's stages (width and depth multipliers are 1.0).
const LITE0: [Stage; 7] = [
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 1,
        out: 16,
    },
    Stage {
        repeats: 2,
        kernel: 3,
        stride: 2,
        expand: 6,
        out: 24,
    },
    Stage {
        repeats: 2,
        kernel: 5,
        stride: 2,
        expand: 6,
        out: 40,
    },
    Stage {
        repeats: 3,
        kernel: 3,
        stride: 2,
        expand: 6,
        out: 80,
    },
    Stage {
        repeats: 3,
        kernel: 5,
        stride: 1,
        expand: 6,
        out: 112,
    },
    Stage {
        repeats: 4,
        kernel: 5,
        stride: 2,
        expand: 6,
        out: 192,
    },
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 6,
        out: 320,
    },
];
const STEM: usize = 32;
const HEAD: usize = 1280;

/// Mobile inverted bottleneck: [expand 1x1] -> depthwise kxk -> project 1x1 (+ identity skip).
#[derive(Debug)]
struct MbConv {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Conv,
    skip: bool,
}

impl MbConv {
    fn forward<G: Graph>(&self, g: &mut G, x: G::Value, mode: ReluMode) -> Result<G::Value> {
        let relu6 = Some(ReluOp::relu6(mode));
        let mut h = x.clone();
        if let Some(expand) = &self.expand {
            h = g.conv(expand, &h, None, relu6)?;
        }
        h = g.conv(&self.depthwise, &h, None, relu6)?;
        g.conv(&self.project, &h, self.skip.then_some(&x), None)
    }
}

#[derive(Debug)]
struct EfficientNetLite {
    stem: Conv,
    blocks: Vec<MbConv>,
    head: Conv,
    fc: Linear,
    backend: Backend,
}

impl EfficientNetLite {
    /// The head's width comes from `_fc.weight`.
    fn lite0(w: &Weights, device: &Device, backend: Backend) -> Result<Self> {
        let same = PadMode::TfSame;
        let stem = Conv::with_bn(
            w,
            "_conv_stem",
            "_bn0",
            BN_EPS,
            (3, STEM, 3),
            2,
            1,
            same,
            device,
        )?;
        let mut blocks = Vec::new();
        let mut cin = STEM;
        for stage in &LITE0 {
            for r in 0..stage.repeats {
                let p = format!("_blocks.{}", blocks.len());
                let stride = if r == 0 { stage.stride } else { 1 };
                let mid = cin * stage.expand;
                let expand = (stage.expand != 1)
                    .then(|| {
                        let (c, b) = (format!("{p}._expand_conv"), format!("{p}._bn0"));
                        Conv::with_bn(w, &c, &b, BN_EPS, (cin, mid, 1), 1, 1, same, device)
                    })
                    .transpose()?;
                let (c, b) = (format!("{p}._depthwise_conv"), format!("{p}._bn1"));
                let depthwise = Conv::with_bn(
                    w,
                    &c,
                    &b,
                    BN_EPS,
                    (mid, mid, stage.kernel),
                    stride,
                    mid,
                    same,
                    device,
                )?;
                let (c, b) = (format!("{p}._project_conv"), format!("{p}._bn2"));
                let project =
                    Conv::with_bn(w, &c, &b, BN_EPS, (mid, stage.out, 1), 1, 1, same, device)?;
                blocks.push(MbConv {
                    expand,
                    depthwise,
                    project,
                    skip: stride == 1 && cin == stage.out,
                });
                cin = stage.out;
            }
        }
        let head = Conv::with_bn(
            w,
            "_conv_head",
            "_bn1",
            BN_EPS,
            (cin, HEAD, 1),
            1,
            1,
            same,
            device,
        )?;
        let fc = Linear::head(w, "_fc", HEAD, device)?;
        Ok(EfficientNetLite {
            stem,
            blocks,
            head,
            fc,
            backend,
        })
    }
}

impl Network for EfficientNetLite {
    fn features(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        self.run_body(x, mode, self.backend)
    }

    fn head(&self, features: &Tensor, _mode: ReluMode) -> Result<Tensor> {
        self.fc.forward(&features.mean((2, 3))?)
    }

    fn num_classes(&self) -> usize {
        self.fc.out_features()
    }

    fn feature_layer(&self) -> &'static str {
        "the ReLU6 output of the head convolution (_conv_head + _bn1), 1280 channels at 1/32 of \
         the input size (7 x 7 for 224 x 224)"
    }

    fn last_stage(&self) -> &'static [&'static str] {
        &["_blocks.15.", "_conv_head.", "_bn1."]
    }

    fn layers(&self) -> Vec<Layer> {
        let blocks = self
            .blocks
            .iter()
            .flat_map(|b| b.expand.iter().chain([&b.depthwise, &b.project]));
        [&self.stem]
            .into_iter()
            .chain(blocks)
            .chain([&self.head])
            .map(Conv::layer)
            .chain([self.fc.layer()])
            .collect()
    }
}

impl Body for EfficientNetLite {
    fn body<G: Graph>(&self, g: &mut G, x: G::Value, mode: ReluMode) -> Result<G::Value> {
        let relu6 = Some(ReluOp::relu6(mode));
        let mut h = g.conv(&self.stem, &x, None, relu6)?;
        for block in &self.blocks {
            h = block.forward(g, h, mode)?;
        }
        g.conv(&self.head, &h, None, relu6)
    }
}
