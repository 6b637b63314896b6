//! Models people bring: a JSON description (or `--weights/--arch`) naming an architecture,
//! a checkpoint with torchvision tensor names, labels and preprocessing.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::checkpoint::read_weights;
use super::classifier::{Classifier, Model, Network};
use super::info::{IMAGENET_LABELS, ModelInfo, Resize};
use super::layers::WeightEdit;
use super::{densenet, resnet};
use crate::engine::ops::Backend;
use crate::engine::ops::activation::ReluMode;
use crate::error::{Error, Result};

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

/// The architectures a description can name.
#[derive(Debug)]
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
    load_described(d, device, backend, &|_| Ok(()))
}

/// Loads a described model, its weights changed by `edit` first.
pub(super) fn load_described(
    d: &ModelDescription,
    device: &Device,
    backend: Backend,
    edit: WeightEdit,
) -> Result<Arc<dyn Classifier>> {
    let w = read_weights(&d.weights)?;
    // torchvision renamed DenseNet's layers (`norm.1` -> `norm1`); only DenseNet
    // checkpoints carry the old names.
    let mut w = match d.arch {
        Arch::Densenet121 => w.map_keys(densenet::modernise_key),
        _ => w,
    };
    edit(&mut w)?;
    let resnet = |depth| -> Result<Net> {
        Ok(Net::ResNet(resnet::ResNet::load(
            &w, depth, device, backend,
        )?))
    };
    let net = match d.arch {
        Arch::Resnet18 => resnet(resnet::Depth::R18)?,
        Arch::Resnet34 => resnet(resnet::Depth::R34)?,
        Arch::Resnet50 => resnet(resnet::Depth::R50)?,
        Arch::Resnet101 => resnet(resnet::Depth::R101)?,
        Arch::Densenet121 => Net::DenseNet(densenet::DenseNet121::load(&w, device, backend)?),
    };
    let classes = net.num_classes();
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
    Ok(Arc::new(Model::new(net, info, device, &w)?))
}

impl Network for Net {
    fn features(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        match self {
            Net::ResNet(r) => r.features(x, mode),
            Net::DenseNet(d) => d.features(x, mode),
        }
    }

    fn head(&self, features: &Tensor, mode: ReluMode) -> Result<Tensor> {
        match self {
            Net::ResNet(r) => r.head(features, mode),
            Net::DenseNet(d) => d.head(features, mode),
        }
    }

    fn feature_layer(&self) -> &'static str {
        match self {
            Net::ResNet(r) => r.feature_layer(),
            Net::DenseNet(d) => d.feature_layer(),
        }
    }

    fn last_stage(&self) -> &'static [&'static str] {
        match self {
            Net::ResNet(r) => r.last_stage(),
            Net::DenseNet(d) => d.last_stage(),
        }
    }

    fn num_classes(&self) -> usize {
        match self {
            Net::ResNet(r) => r.num_classes(),
            Net::DenseNet(d) => d.num_classes(),
        }
    }
}
