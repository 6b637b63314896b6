//! ResNet-18/34/50/101 (He et al., 2016, <https://arxiv.org/abs/1512.03385>) with torchvision's
//! tensor names, so its checkpoints (and fine-tuned ones with any head width) load unchanged.
//! BatchNorm (eps 1e-5) is folded into the convolutions; every ReLU is our own op, and the
//! 3 x 3 / 2 stem max pool has a real backward (stock candle's has none when kernel != stride).
//! Recognised by `layer1.0.conv1.weight`, the depth by the third stage's blocks and whether
//! they are bottlenecks.

use candle_core::{Device, Tensor};

use super::{Architecture, Defaults, Detection};
use crate::engine::models::classifier::Network;
use crate::engine::models::layers::{Body, Conv, Graph, Layer, Linear, PadMode, Weights};
use crate::engine::ops::Backend;
use crate::engine::ops::activation::{ReluMode, ReluOp};
use crate::engine::ops::geometry::Padding;
use crate::engine::ops::pool::MaxPool2d;
use crate::error::Result;

const BN_EPS: f64 = 1e-5;

/// A ResNet of one depth: its name, blocks per stage, and whether they are bottlenecks.
pub(super) struct Depth {
    name: &'static str,
    blocks: [usize; 4],
    bottleneck: bool,
}

pub(super) static RESNET18: Depth = Depth {
    name: "resnet18",
    blocks: [2, 2, 2, 2],
    bottleneck: false,
};
pub(super) static RESNET34: Depth = Depth {
    name: "resnet34",
    blocks: [3, 4, 6, 3],
    bottleneck: false,
};
pub(super) static RESNET50: Depth = Depth {
    name: "resnet50",
    blocks: [3, 4, 6, 3],
    bottleneck: true,
};
pub(super) static RESNET101: Depth = Depth {
    name: "resnet101",
    blocks: [3, 4, 23, 3],
    bottleneck: true,
};

impl Architecture for Depth {
    fn name(&self) -> &'static str {
        self.name
    }

    fn about(&self) -> &'static str {
        "torchvision"
    }

    fn detect(&self, w: &Weights, _: Option<&str>) -> Detection {
        let has = |k: &str| w.shape(k).is_ok();
        if !has("layer1.0.conv1.weight") {
            return Detection::No;
        }
        let third = (0..)
            .take_while(|b| has(&format!("layer3.{b}.conv1.weight")))
            .count();
        let bottleneck = has("layer1.0.conv3.weight");
        if (third, bottleneck) == (self.blocks[2], self.bottleneck) {
            Detection::Yes
        } else {
            Detection::Unsupported(format!(
                "a ResNet with {third} blocks in its third stage{}: not one unveil knows",
                if bottleneck { " (bottleneck)" } else { "" }
            ))
        }
    }

    fn build(&self, w: &Weights, device: &Device, backend: Backend) -> Result<Box<dyn Network>> {
        Ok(Box::new(ResNet::load(w, self, device, backend)?))
    }

    fn defaults(&self, _: usize, _: &Weights) -> Defaults {
        Defaults::imagenet()
    }
}

#[derive(Debug)]
enum Block {
    Basic {
        conv1: Conv,
        conv2: Conv,
        down: Option<Conv>,
    },
    Bottleneck {
        conv1: Conv,
        conv2: Conv,
        conv3: Conv,
        down: Option<Conv>,
    },
}

impl Block {
    fn forward<G: Graph>(&self, g: &mut G, x: G::Value, mode: ReluMode) -> Result<G::Value> {
        let relu = Some(ReluOp::relu(mode));
        let (h, last, down) = match self {
            Block::Basic { conv1, conv2, down } => (g.conv(conv1, &x, None, relu)?, conv2, down),
            Block::Bottleneck {
                conv1,
                conv2,
                conv3,
                down,
            } => {
                let h = g.conv(conv1, &x, None, relu)?;
                (g.conv(conv2, &h, None, relu)?, conv3, down)
            }
        };
        let skip = match down {
            Some(d) => g.conv(d, &x, None, None)?,
            None => x,
        };
        g.conv(last, &h, Some(&skip), relu)
    }

    /// The shortcut's projection first: it reads the block's input, as the first convolution
    /// does.
    fn layers(&self) -> Vec<Layer> {
        let (down, convs) = match self {
            Block::Basic { conv1, conv2, down } => (down, vec![conv1, conv2]),
            Block::Bottleneck {
                conv1,
                conv2,
                conv3,
                down,
            } => (down, vec![conv1, conv2, conv3]),
        };
        down.iter().chain(convs).map(Conv::layer).collect()
    }
}

#[derive(Debug)]
struct ResNet {
    stem: Conv,
    blocks: Vec<Block>,
    fc: Linear,
    backend: Backend,
}

impl ResNet {
    /// Loads a torchvision-named checkpoint; the head's width comes from `fc.weight`.
    fn load(w: &Weights, depth: &Depth, device: &Device, backend: Backend) -> Result<Self> {
        let conv = |name: &str, bn: &str, io: (usize, usize, usize), stride: usize, pad: usize| {
            Conv::with_bn(
                w,
                name,
                bn,
                BN_EPS,
                io,
                stride,
                1,
                PadMode::Fixed(pad),
                device,
            )
        };
        let stem = conv("conv1", "bn1", (3, 64, 7), 2, 3)?;
        let expansion = if depth.bottleneck { 4 } else { 1 };
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (li, &n) in depth.blocks.iter().enumerate() {
            let width = 64 << li;
            for bi in 0..n {
                let p = format!("layer{}.{bi}", li + 1);
                let stride = if bi == 0 && li > 0 { 2 } else { 1 };
                let cout = width * expansion;
                let down = (bi == 0 && (stride != 1 || cin != cout))
                    .then(|| {
                        conv(
                            &format!("{p}.downsample.0"),
                            &format!("{p}.downsample.1"),
                            (cin, cout, 1),
                            stride,
                            0,
                        )
                    })
                    .transpose()?;
                let c = |i: usize, io, s, pad| {
                    conv(&format!("{p}.conv{i}"), &format!("{p}.bn{i}"), io, s, pad)
                };
                blocks.push(if depth.bottleneck {
                    Block::Bottleneck {
                        conv1: c(1, (cin, width, 1), 1, 0)?,
                        conv2: c(2, (width, width, 3), stride, 1)?,
                        conv3: c(3, (width, cout, 1), 1, 0)?,
                        down,
                    }
                } else {
                    Block::Basic {
                        conv1: c(1, (cin, width, 3), stride, 1)?,
                        conv2: c(2, (width, width, 3), 1, 1)?,
                        down,
                    }
                });
                cin = cout;
            }
        }
        let fc = Linear::head(w, "fc", cin, device)?;
        Ok(ResNet {
            stem,
            blocks,
            fc,
            backend,
        })
    }
}

impl Network for ResNet {
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
        "layer4's output (after the last block's ReLU), 2048 (ResNet-50/101) or 512 (18/34) \
         channels at 1/32 of the input size"
    }

    fn last_stage(&self) -> &'static [&'static str] {
        &["layer4."]
    }

    fn layers(&self) -> Vec<Layer> {
        let blocks = self.blocks.iter().flat_map(Block::layers);
        [self.stem.layer()]
            .into_iter()
            .chain(blocks)
            .chain([self.fc.layer()])
            .collect()
    }
}

impl Body for ResNet {
    fn body<G: Graph>(&self, g: &mut G, x: G::Value, mode: ReluMode) -> Result<G::Value> {
        let h = g.conv(&self.stem, &x, None, Some(ReluOp::relu(mode)))?;
        let pool = |_| MaxPool2d {
            k: 3,
            stride: 2,
            pad: Padding::symmetric(1),
        };
        let mut h = g.max_pool(&h, pool)?;
        for block in &self.blocks {
            h = block.forward(g, h, mode)?;
        }
        Ok(h)
    }
}
