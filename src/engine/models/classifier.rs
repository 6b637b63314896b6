//! The classifier interface the engine explains, and the one implementation: a network plus
//! what is needed to feed it.

use std::collections::HashSet;

use candle_core::{Device, Tensor};

use super::layers::Layer;
use super::reinit::{self, Cascade};
use crate::engine::device;
use crate::engine::models::info::ModelInfo;
use crate::engine::ops::activation::ReluMode;
use crate::error::{Error, Result};

/// A network: logits for a normalised batch, with every ReLU back-propagating per `mode`.
pub trait Network: Send + Sync + std::fmt::Debug {
    /// The last convolutional feature map after its activation, `[n, c, h', w']`: where the
    /// image part of the network ends (Grad-CAM's layer).
    fn features(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor>;
    /// Logits `[n, classes]` from [`Network::features`]' output.
    fn head(&self, features: &Tensor, mode: ReluMode) -> Result<Tensor>;
    /// Logits `[n, classes]` for a normalised batch `[n, 3, h, w]`.
    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        self.head(&self.features(x, mode)?, mode)
    }
    /// Number of outputs (classes).
    fn num_classes(&self) -> usize;
    /// Which layer [`Network::features`] returns, for people.
    fn feature_layer(&self) -> &'static str;
    /// Name prefixes of the weights of the last block or stage before the head (the sanity
    /// check's second re-initialisation).
    fn last_stage(&self) -> &'static [&'static str];
    /// Every layer's tensors in forward order (branches that read the same input, such as a
    /// residual block's shortcut, in either order): the sanity check's cascade takes the
    /// network's depth from it. Every tensor the network reads is in exactly one layer.
    fn layers(&self) -> Vec<Layer>;
}

/// A network with what the engine needs to feed it: the one [`Classifier`] implementation.
#[derive(Debug)]
pub struct Model {
    net: Box<dyn Network>,
    info: ModelInfo,
    device: Device,
}

impl Model {
    /// Checks that the network's outputs and the labels agree, and that there is at least one
    /// class: a classifier with no outputs has no probability to explain (and candle's softmax
    /// would panic on it), so it is refused here, at load time.
    pub fn new(net: Box<dyn Network>, mut info: ModelInfo, device: &Device) -> Result<Self> {
        if info.cam_layers.is_empty() {
            info.cam_layers = vec![net.feature_layer().to_string()];
        }
        let outputs = net.num_classes();
        if outputs == 0 {
            return Err(Error::Weights(
                "the classifier has 0 outputs: there is no class to explain".into(),
            ));
        }
        if info.labels.len() != outputs {
            return Err(Error::InvalidParam(format!(
                "{} labels for a model with {outputs} outputs",
                info.labels.len()
            )));
        }
        Ok(Model {
            net,
            info,
            device: device.clone(),
        })
    }
}

impl Classifier for Model {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        self.net.forward(x, mode)
    }

    fn feature_layer(&self) -> Option<&str> {
        Some(self.net.feature_layer())
    }

    fn cam_pass(&self, x: &Tensor) -> Result<CamPass> {
        let features = self.net.features(x, ReluMode::Plain)?.detach();
        let a = candle_core::Var::from_tensor(&features)?;
        let logits = self.net.head(a.as_tensor(), ReluMode::Plain)?;
        Ok(CamPass {
            activation: a.as_tensor().clone(),
            logits,
            grid: CamGrid::Channels,
        })
    }

    fn reinit_scope(&self, cascade: Cascade) -> Option<HashSet<String>> {
        Some(reinit::scope(
            &self.net.layers(),
            self.net.last_stage(),
            cascade,
        ))
    }
}

/// An image classifier whose input gradient we can take.
pub trait Classifier: Send + Sync {
    fn info(&self) -> &ModelInfo;
    fn device(&self) -> &Device;
    /// Logits (pre-softmax scores) `[n, classes]` for a normalised batch `[n, 3, h, w]`.
    /// `mode` chooses how every ReLU back-propagates.
    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor>;

    /// Grad-CAM's forward pass: its layer's activation as a variable, and the logits
    /// computed from it.
    fn cam_pass(&self, _x: &Tensor) -> Result<CamPass> {
        Err(no_feature_map(self.info()))
    }

    /// Which layer Grad-CAM reads, for people.
    fn feature_layer(&self) -> Option<&str> {
        None
    }

    /// The weight tensors a re-initialisation at `cascade` replaces, when the model knows its
    /// layers' order (see [`super::reinit`]).
    fn reinit_scope(&self, _cascade: Cascade) -> Option<HashSet<String>> {
        None
    }
}

/// Grad-CAM's forward pass (see [`Classifier::cam_pass`]).
pub struct CamPass {
    /// The layer's activation, a variable: its gradient is what Grad-CAM weighs.
    pub activation: Tensor,
    pub logits: Tensor,
    /// How the activation reads as a `[n, c, h, w]` grid.
    pub grid: CamGrid,
}

/// How Grad-CAM's activation (and its gradient) read as a `[n, c, h, w]` grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CamGrid {
    /// Already `[n, c, h, w]` (a CNN's feature map).
    Channels,
    /// Tokens `[n, t, d]` of a vision transformer: the first `skip` (class and distillation
    /// tokens) dropped, the rest an `h x w` patch grid (pytorch-grad-cam's `reshape_transform`).
    Tokens { skip: usize, h: usize, w: usize },
}

impl CamGrid {
    pub fn apply(self, t: &Tensor) -> Result<Tensor> {
        Ok(match self {
            CamGrid::Channels => t.clone(),
            CamGrid::Tokens { skip, h, w } => {
                let (n, _, d) = t.dims3()?;
                t.narrow(1, skip, h * w)?
                    .reshape((n, h, w, d))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?
            }
        })
    }
}

fn no_feature_map(info: &ModelInfo) -> Error {
    Error::InvalidParam(format!(
        "model '{}' does not expose its last convolutional feature map (needed by Grad-CAM)",
        info.name
    ))
}

impl std::fmt::Debug for dyn Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("name", &self.info().name)
            .field("device", &device::describe(self.device()))
            .finish()
    }
}
