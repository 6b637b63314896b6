//! The classifier interface the engine explains, and the one implementation: a network plus
//! what is needed to feed it.

use candle_core::{Device, Tensor};

use crate::engine::device;
use crate::engine::models::info::ModelInfo;
use crate::engine::ops::activation::ReluMode;
use crate::error::{Error, Result};

/// A network: logits for a normalised batch, with every ReLU back-propagating per `mode`.
pub trait Network: Send + Sync + std::fmt::Debug {
    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor>;
    /// Number of outputs (classes).
    fn num_classes(&self) -> usize;
}

/// A network with what the engine needs to feed it: the one [`Classifier`] implementation.
#[derive(Debug)]
pub struct Model<N> {
    net: N,
    info: ModelInfo,
    device: Device,
}

impl<N: Network> Model<N> {
    /// Checks that the network's outputs and the labels agree, and that there is at least one
    /// class: a classifier with no outputs has no probability to explain (and candle's softmax
    /// would panic on it), so it is refused here, at load time.
    pub fn new(net: N, info: ModelInfo, device: &Device) -> Result<Self> {
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

impl<N: Network> Classifier for Model<N> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        self.net.forward(x, mode)
    }
}

/// An image classifier whose input gradient we can take.
pub trait Classifier: Send + Sync {
    fn info(&self) -> &ModelInfo;
    fn device(&self) -> &Device;
    /// Logits (pre-softmax scores) `[n, classes]` for a normalised batch `[n, 3, h, w]`.
    /// `mode` chooses how every ReLU back-propagates.
    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor>;
}

impl std::fmt::Debug for dyn Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("name", &self.info().name)
            .field("device", &device::describe(self.device()))
            .finish()
    }
}
