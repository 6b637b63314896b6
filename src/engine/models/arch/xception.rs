//! Xception (Chollet, 2017, <https://arxiv.org/abs/1610.02357>) as in keras.applications, with
//! the chest X-ray head of the PyPI package `pneumonia-model-package` 0.3.0: global average
//! pooling, Dense(128, ReLU), Dropout, Dense(2).
//!
//! Tensor names are the Keras layer names (`block1_conv1`, `block2_sepconv1_bn`, ...), converted
//! to PyTorch layouts by `scripts/fetch/convert_pneumonia_xception.py`. The residual 1 x 1
//! convolutions, their BatchNorms and the two Dense layers carry generic Keras names
//! (`conv2d_3`, `dense_1`) that depend on how the model was built, so they are found by shape
//! (each has a unique width).
//! BatchNorm (eps 1e-3) is folded into the preceding convolution; every ReLU is our own op.
//! Recognised by `block1_conv1`; fed `x / 127.5 - 1` (Keras' `xception.preprocess_input`). The
//! registry's chest X-ray model is built on it.

use candle_core::{Device, Tensor};

use super::{Architecture, Defaults, Detection};
use crate::engine::models::classifier::Network;
use crate::engine::models::layers::{
    Body, Conv, Graph, Layer, Linear, PadMode, Weights, bn_tensors, fold_bn,
};
use crate::engine::ops::Backend;
use crate::engine::ops::activation::{ReluMode, ReluOp};
use crate::engine::ops::geometry::Padding;
use crate::engine::ops::pool::MaxPool2d;
use crate::error::{Error, Result};

const BN_EPS: f64 = 1e-3;

pub(crate) struct KerasXception;

pub(crate) static XCEPTION: KerasXception = KerasXception;

impl Architecture for KerasXception {
    fn name(&self) -> &'static str {
        "xception"
    }

    fn about(&self) -> &'static str {
        "Keras names and the chest X-ray model's head, as \
         scripts/fetch/convert_pneumonia_xception.py writes them"
    }

    fn detect(&self, w: &Weights, _: Option<&str>) -> Detection {
        if w.shape("block1_conv1.weight").is_ok() {
            Detection::Yes
        } else {
            Detection::No
        }
    }

    fn build(&self, w: &Weights, device: &Device, backend: Backend) -> Result<Box<dyn Network>> {
        Ok(Box::new(Xception::load(w, device, backend)?))
    }

    fn defaults(&self, _: usize, _: &Weights) -> Defaults {
        Defaults {
            mean: [0.5; 3],
            std: [0.5; 3],
            // The training set's mean is not published: mid-gray is the neutral fill.
            dataset_mean: [0.5; 3],
            ..Defaults::imagenet()
        }
    }
}

/// Depthwise 3 x 3 ("same") then pointwise 1 x 1, BatchNorm folded into the pointwise part.
#[derive(Debug)]
struct SepConv {
    depthwise: Conv,
    pointwise: Conv,
}

impl SepConv {
    fn load(w: &Weights, name: &str, cin: usize, cout: usize, device: &Device) -> Result<Self> {
        let (dw_name, pw_name) = (
            format!("{name}.depthwise_weight"),
            format!("{name}.pointwise_weight"),
        );
        let dw = w.get(&dw_name, &[cin, 1, 3, 3])?;
        let zeros = Tensor::zeros(cin, candle_core::DType::F32, &Device::Cpu)?;
        let pw = w.get(&pw_name, &[cout, cin, 1, 1])?;
        let bn = format!("{name}_bn");
        let (pw, pb) = fold_bn(w, pw, &bn, BN_EPS)?;
        let pw_tensors = [vec![pw_name], bn_tensors(&bn)].concat();
        Ok(SepConv {
            depthwise: Conv::new(vec![dw_name], dw, zeros, 1, cin, PadMode::TfSame, device)?,
            pointwise: Conv::new(pw_tensors, pw, pb, 1, 1, PadMode::TfSame, device)?,
        })
    }

    /// Depthwise then pointwise (with `act`, the ReLU that starts the next separable
    /// convolution, where nothing else reads its input).
    fn forward<G: Graph>(&self, g: &mut G, x: &G::Value, act: Option<ReluOp>) -> Result<G::Value> {
        let h = g.conv(&self.depthwise, x, None, None)?;
        g.conv(&self.pointwise, &h, None, act)
    }

    fn layers(&self) -> [Layer; 2] {
        [self.depthwise.layer(), self.pointwise.layer()]
    }
}

impl DownBlock {
    /// The residual projection last: it reads the block's input, as the separable
    /// convolutions do.
    fn layers(&self) -> Vec<Layer> {
        [self.sep1.layers(), self.sep2.layers()]
            .concat()
            .into_iter()
            .chain([self.residual.layer()])
            .collect()
    }
}

#[derive(Debug)]
struct DownBlock {
    relu_first: bool,
    sep1: SepConv,
    sep2: SepConv,
    residual: Conv,
}

#[derive(Debug)]
struct Xception {
    conv1: Conv,
    conv2: Conv,
    down: Vec<DownBlock>,
    middle: Vec<[SepConv; 3]>,
    exit1: SepConv,
    exit2: SepConv,
    fc1: Linear,
    fc2: Linear,
    backend: Backend,
}

/// The unique tensor prefix among non-`block*` layers whose `suffix` tensor has `shape`.
fn find(w: &Weights, suffix: &str, shape: &[usize]) -> Result<String> {
    find_by(w, suffix, &format!("{shape:?}"), |s| s == shape)
}

/// The unique tensor prefix among non-`block*` layers whose `suffix` tensor's shape `fits`
/// (described by `shape` in errors).
fn find_by(w: &Weights, suffix: &str, shape: &str, fits: impl Fn(&[usize]) -> bool) -> Result<String> {
    let hits: Vec<&str> = w
        .shapes()
        .filter(|(k, s)| !k.starts_with("block") && k.ends_with(suffix) && fits(s))
        .map(|(k, _)| k.trim_end_matches(suffix))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::Weights(format!(
            "no tensor '*{suffix}' of shape {shape}"
        ))),
        _ => Err(Error::Weights(format!(
            "several tensors '*{suffix}' of shape {shape}: {hits:?}"
        ))),
    }
}

impl Xception {
    /// The head's width comes from the last Dense layer, `[classes, 128]`.
    fn load(w: &Weights, device: &Device, backend: Backend) -> Result<Self> {
        let valid = PadMode::Fixed(0);
        let conv1 = Conv::with_bn(
            w,
            "block1_conv1",
            "block1_conv1_bn",
            BN_EPS,
            (3, 32, 3),
            2,
            1,
            valid,
            device,
        )?;
        let conv2 = Conv::with_bn(
            w,
            "block1_conv2",
            "block1_conv2_bn",
            BN_EPS,
            (32, 64, 3),
            1,
            1,
            valid,
            device,
        )?;
        let residual = |cin: usize, cout: usize| -> Result<Conv> {
            let conv = find(w, ".weight", &[cout, cin, 1, 1])?;
            let bn = find(w, ".running_mean", &[cout])?;
            Conv::with_bn(
                w,
                &conv,
                &bn,
                BN_EPS,
                (cin, cout, 1),
                2,
                1,
                PadMode::TfSame,
                device,
            )
        };
        let down_block = |block: usize, cin, mid, cout| -> Result<DownBlock> {
            Ok(DownBlock {
                relu_first: block != 2,
                sep1: SepConv::load(w, &format!("block{block}_sepconv1"), cin, mid, device)?,
                sep2: SepConv::load(w, &format!("block{block}_sepconv2"), mid, cout, device)?,
                residual: residual(cin, cout)?,
            })
        };
        let mut down = vec![
            down_block(2, 64, 128, 128)?,
            down_block(3, 128, 256, 256)?,
            down_block(4, 256, 728, 728)?,
        ];
        let middle = (5..=12)
            .map(|b| -> Result<[SepConv; 3]> {
                Ok([
                    SepConv::load(w, &format!("block{b}_sepconv1"), 728, 728, device)?,
                    SepConv::load(w, &format!("block{b}_sepconv2"), 728, 728, device)?,
                    SepConv::load(w, &format!("block{b}_sepconv3"), 728, 728, device)?,
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        down.push(down_block(13, 728, 728, 1024)?);
        let fc1 = find(w, ".weight", &[128, 2048])?;
        let fc2 = find_by(w, ".weight", "[classes, 128]", |s| {
            matches!(s, [_, 128])
        })?;
        let num_classes = w.shape(&format!("{fc2}.weight"))?[0];
        Ok(Xception {
            conv1,
            conv2,
            down,
            middle,
            exit1: SepConv::load(w, "block14_sepconv1", 1024, 1536, device)?,
            exit2: SepConv::load(w, "block14_sepconv2", 1536, 2048, device)?,
            fc1: Linear::load(w, &fc1, (2048, 128), device)?,
            fc2: Linear::load(w, &fc2, (128, num_classes), device)?,
            backend,
        })
    }
}

impl Network for Xception {
    fn features(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        self.run_body(x, mode, self.backend)
    }

    fn head(&self, features: &Tensor, mode: ReluMode) -> Result<Tensor> {
        let pooled = features.mean((2, 3))?;
        let f = ReluOp::relu(mode).forward_on(&self.fc1.forward(&pooled)?, self.backend)?;
        self.fc2.forward(&f)
    }

    fn num_classes(&self) -> usize {
        self.fc2.out_features()
    }

    fn feature_layer(&self) -> &'static str {
        "the ReLU output of the exit flow's last separable convolution (block14_sepconv2_act), \
         2048 channels at 1/32 of the input size (5 x 5 for 150 x 150)"
    }

    fn last_stage(&self) -> &'static [&'static str] {
        &[
            "block13_",
            "block14_",
            "conv2d_3.",
            "batch_normalization_3.",
        ]
    }

    /// Entry flow (blocks 1-4), middle flow (5-12), exit flow (13, 14), head.
    fn layers(&self) -> Vec<Layer> {
        let (entry, exit) = self.down.split_at(3);
        let sep = |s: &SepConv| s.layers().to_vec();
        [
            vec![self.conv1.layer(), self.conv2.layer()],
            entry.iter().flat_map(DownBlock::layers).collect(),
            self.middle.iter().flatten().flat_map(sep).collect(),
            exit.iter().flat_map(DownBlock::layers).collect(),
            sep(&self.exit1),
            sep(&self.exit2),
            vec![self.fc1.layer(), self.fc2.layer()],
        ]
        .concat()
    }
}

impl Body for Xception {
    /// Entry, middle and exit flows.
    fn body<G: Graph>(&self, g: &mut G, x: G::Value, mode: ReluMode) -> Result<G::Value> {
        let r = ReluOp::relu(mode);
        let mut h = g.conv(&self.conv1, &x, None, Some(r))?;
        h = g.conv(&self.conv2, &h, None, Some(r))?;
        for (i, d) in self.down.iter().enumerate() {
            if i == 3 {
                for [s1, s2, s3] in &self.middle {
                    let mut m = g.act(&h, r)?;
                    m = s1.forward(g, &m, Some(r))?;
                    m = s2.forward(g, &m, Some(r))?;
                    m = s3.forward(g, &m, None)?;
                    h = g.add(&m, &h)?;
                }
            }
            let res = g.conv(&d.residual, &h, None, None)?;
            let m = if d.relu_first { g.act(&h, r)? } else { h };
            let m = d.sep1.forward(g, &m, Some(r))?;
            let m = d.sep2.forward(g, &m, None)?;
            // The entry and exit flows' 3 x 3 / 2 max pool, TensorFlow "same" padded.
            let pool = |(_, _, h, w)| MaxPool2d {
                k: 3,
                stride: 2,
                pad: Padding::tf_same(h, w, 3, 2),
            };
            let m = g.max_pool(&m, pool)?;
            h = g.add(&m, &res)?;
        }
        h = self.exit1.forward(g, &h, Some(r))?;
        self.exit2.forward(g, &h, Some(r))
    }
}
