//! TorchXRayVision's DenseNet-121 (Cohen et al., 2022, <https://arxiv.org/abs/2111.00595>):
//! torchvision's DenseNet with one input channel and xrv's own preprocessing, so it refines
//! `densenet121`. Recognised by a whole model's class (`torchxrayvision.models.DenseNet`) or by
//! its one-channel first convolution.
//!
//! Fed as xrv feeds it: the pixels scaled to [-1024, 1024] (`(2 x - 1) * 1024` for x in
//! [0, 1]), the centred square of the image; its 18 outputs are sigmoids, labelled with xrv's
//! default pathologies unless the file brings its own list.

use candle_core::Device;

use super::densenet::{DenseNet, is_densenet, modernise_key};
use super::{Architecture, Defaults, Detection};
use crate::engine::models::classifier::Network;
use crate::engine::models::info::{Crop, Domain, XRV_LABELS};
use crate::engine::models::layers::Weights;
use crate::engine::ops::Backend;
use crate::error::Result;

/// TorchXRayVision's `normalize`: `(2 x - 1) * 1024` for x in [0, 1].
const XRV_MEAN: [f32; 3] = [0.5; 3];
const XRV_STD: [f32; 3] = [1.0 / 2048.0; 3];

pub(super) struct XrvDenseNet121;

pub(super) static XRV_DENSENET121: XrvDenseNet121 = XrvDenseNet121;

impl Architecture for XrvDenseNet121 {
    fn name(&self) -> &'static str {
        "xrv-densenet121"
    }

    fn about(&self) -> &'static str {
        "TorchXRayVision"
    }

    fn detect(&self, w: &Weights, model_class: Option<&str>) -> Detection {
        let xrv_class = model_class.is_some_and(|c| c.starts_with("torchxrayvision."));
        let gray = w
            .shape("features.conv0.weight")
            .is_ok_and(|s| s.get(1) == Some(&1));
        if is_densenet(w) && (xrv_class || gray) {
            Detection::Yes
        } else {
            Detection::No
        }
    }

    fn refines(&self) -> Option<&'static str> {
        Some("densenet121")
    }

    fn fix_key(&self, key: &str) -> String {
        modernise_key(key)
    }

    fn build(&self, w: &Weights, device: &Device, backend: Backend) -> Result<Box<dyn Network>> {
        Ok(Box::new(DenseNet::load(w, device, backend)?))
    }

    fn defaults(&self, classes: usize, _: &Weights) -> Defaults {
        Defaults {
            mean: XRV_MEAN,
            std: XRV_STD,
            dataset_mean: XRV_MEAN,
            crop: Crop::CenterSquare,
            labels: (classes == 18).then(|| XRV_LABELS.lines().map(|l| l.trim().into()).collect()),
            multi_label: true,
            domain: Some(Domain::ChestXray),
        }
    }
}
