//! Models people bring: a JSON description (or `--weights/--arch`) naming an architecture,
//! a checkpoint with torchvision tensor names, labels and preprocessing.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::checkpoint::read_checkpoint;
use super::classifier::{Classifier, Model, Network};
use super::info::{
    CHESTXRAY14_LABELS, Crop, Domain, IMAGENET_LABELS, ModelInfo, Resize, XRV_LABELS,
};
use super::layers::{WeightEdit, Weights};
use super::pth::Checkpoint;
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
    /// torchvision's DenseNet-121 (and its relatives: the shape is read from the weights),
    /// e.g. CheXNet.
    Densenet121,
    /// TorchXRayVision's DenseNet-121: one input channel, its own preprocessing, 18 labels.
    #[serde(rename = "xrv-densenet121")]
    XrvDensenet121,
}

const ARCH_NAMES: &str = "resnet18, resnet34, resnet50, resnet101, densenet121, xrv-densenet121";

impl std::str::FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
            .map_err(|_| Error::InvalidParam(format!("unknown architecture '{s}' ({ARCH_NAMES})")))
    }
}

impl Arch {
    /// The architecture a checkpoint's contents say it is: a whole pickled model names its
    /// class; a state dict is recognised by its tensor names.
    pub fn detect(w: &Weights, ck: &Checkpoint) -> Result<Arch> {
        if ck
            .model_class
            .as_deref()
            .is_some_and(|c| c.starts_with("torchxrayvision."))
        {
            return Ok(Arch::XrvDensenet121);
        }
        let has = |k: &str| w.shape(k).is_ok();
        if has("features.denseblock1.denselayer1.conv1.weight")
            || has("features.denseblock1.denselayer1.conv.1.weight")
        {
            // One input channel is TorchXRayVision's DenseNet.
            let gray = w
                .shape("features.conv0.weight")
                .is_ok_and(|s| s.get(1) == Some(&1));
            return Ok(if gray {
                Arch::XrvDensenet121
            } else {
                Arch::Densenet121
            });
        }
        if has("layer1.0.conv1.weight") {
            let blocks = |layer: usize| {
                (0..)
                    .take_while(|b| has(&format!("layer{layer}.{b}.conv1.weight")))
                    .count()
            };
            let bottleneck = has("layer1.0.conv3.weight");
            return match (blocks(3), bottleneck) {
                (2, false) => Ok(Arch::Resnet18),
                (6, false) => Ok(Arch::Resnet34),
                (6, true) => Ok(Arch::Resnet50),
                (23, true) => Ok(Arch::Resnet101),
                (n, b) => Err(Error::Weights(format!(
                    "a ResNet with {n} blocks in its third stage{}: not one unveil knows",
                    if b { " (bottleneck)" } else { "" }
                ))),
            };
        }
        Err(Error::Weights(format!(
            "cannot tell the architecture from the weights{}; name it with --arch ({ARCH_NAMES})",
            ck.model_class
                .as_deref()
                .map(|c| format!(" (a whole `{c}` model)"))
                .unwrap_or_default()
        )))
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
    /// Recognised from the weights when absent.
    #[serde(default)]
    pub arch: Option<Arch>,
    /// Weights file (safetensors, or any PyTorch torch.save file: state dict, training
    /// checkpoint or whole model), relative to the description.
    pub weights: PathBuf,
    #[serde(default = "default_size")]
    pub input_size: [usize; 2],
    /// Normalisation `(x - mean) / std` of [0, 1] pixels; default: ImageNet's, or
    /// TorchXRayVision's [-1024, 1024] scaling for its models.
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    #[serde(default)]
    pub std: Option<[f32; 3]>,
    /// "rgb" (default) or "bgr".
    #[serde(default = "rgb")]
    pub channel_order: String,
    #[serde(default)]
    pub labels: Option<LabelsSpec>,
    /// Sigmoid outputs, one per label (multi-label), instead of a softmax. Implied for
    /// TorchXRayVision, CheXNet-style heads (`classifier.0` = Linear then Sigmoid), 14-output
    /// DenseNets (ChestX-ray14) and single-output models.
    #[serde(default)]
    pub multi_label: bool,
    /// "bilinear" (default) or "nearest".
    #[serde(default = "bilinear")]
    pub resize: String,
}

fn default_size() -> [usize; 2] {
    [224, 224]
}
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// TorchXRayVision's `normalize`: `(2 x - 1) * 1024` for x in [0, 1].
const XRV_MEAN: [f32; 3] = [0.5; 3];
const XRV_STD: [f32; 3] = [1.0 / 2048.0; 3];
fn rgb() -> String {
    "rgb".into()
}
fn bilinear() -> String {
    "bilinear".into()
}

impl ModelDescription {
    /// A description for `--weights PATH [--arch A] [--labels FILE] [--multi-label]`.
    pub fn ad_hoc(
        weights: PathBuf,
        arch: Option<Arch>,
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
            mean: None,
            std: None,
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
    DenseNet(densenet::DenseNet),
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
    let (w, ck) = read_checkpoint(&d.weights)?;
    let detected = Arch::detect(&w, &ck);
    let arch = match (d.arch, detected) {
        // A whole TorchXRayVision model is one, whatever DenseNet it was called.
        (Some(Arch::Densenet121) | None, Ok(Arch::XrvDensenet121)) => Arch::XrvDensenet121,
        (Some(a), _) => a,
        (None, detected) => detected?,
    };
    let xrv = arch == Arch::XrvDensenet121;
    // torchvision renamed DenseNet's layers (`norm.1` -> `norm1`); only DenseNet
    // checkpoints carry the old names.
    let mut w = match arch {
        Arch::Densenet121 | Arch::XrvDensenet121 => w.map_keys(densenet::modernise_key),
        _ => w,
    };
    edit(&mut w)?;
    let resnet = |depth| -> Result<Net> {
        Ok(Net::ResNet(resnet::ResNet::load(
            &w, depth, device, backend,
        )?))
    };
    let net = match arch {
        Arch::Resnet18 => resnet(resnet::Depth::R18)?,
        Arch::Resnet34 => resnet(resnet::Depth::R34)?,
        Arch::Resnet50 => resnet(resnet::Depth::R50)?,
        Arch::Resnet101 => resnet(resnet::Depth::R101)?,
        Arch::Densenet121 | Arch::XrvDensenet121 => {
            Net::DenseNet(densenet::DenseNet::load(&w, device, backend)?)
        }
    };
    let classes = net.num_classes();
    let lines =
        |text: &str| -> Vec<String> { text.lines().map(|l| l.trim().to_string()).collect() };
    let labels: Vec<String> = match &d.labels {
        Some(LabelsSpec::List(l)) => l.clone(),
        Some(LabelsSpec::File(f)) => std::fs::read_to_string(f)
            .map_err(|e| Error::io(f, e))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        // A whole model's own list (TorchXRayVision's `targets`, blanks included).
        None if ck.labels.as_ref().is_some_and(|l| l.len() == classes) => {
            ck.labels.clone().unwrap_or_default()
        }
        None if xrv && classes == 18 => lines(XRV_LABELS),
        None if matches!(arch, Arch::Densenet121) && classes == 14 => lines(CHESTXRAY14_LABELS),
        None if classes == 1000 => IMAGENET_LABELS.lines().map(str::to_string).collect(),
        None => (0..classes).map(|i| format!("class {i}")).collect(),
    };
    // ChestX-ray14's findings, whether from the default list or the user's.
    let chest_labels = lines(CHESTXRAY14_LABELS)
        .iter()
        .filter(|l| labels.contains(l))
        .count()
        >= 7;
    let multi_label = d.multi_label
        || xrv
        || classes == 1
        || densenet::classifier_name(&w) == "classifier.0"
        || (matches!(arch, Arch::Densenet121) && classes == 14);
    let op_threshs = match w.peek("op_threshs") {
        Some(t) if t.dims() == [classes] => {
            Some(t.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
        }
        Some(t) => {
            return Err(Error::Weights(format!(
                "op_threshs has shape {:?}, expected [{classes}]",
                t.dims()
            )));
        }
        None => None,
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
    let (mean0, std0) = if xrv {
        (XRV_MEAN, XRV_STD)
    } else {
        (IMAGENET_MEAN, IMAGENET_STD)
    };
    let (mean, std) = (d.mean.unwrap_or(mean0), d.std.unwrap_or(std0));
    let arch_name = serde_json::to_value(arch)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let info = ModelInfo {
        name: d.name.clone(),
        description: format!("{arch_name} from {}", d.weights.display()),
        input_size: (d.input_size[0], d.input_size[1]),
        mean,
        std,
        dataset_mean: mean,
        labels,
        resize,
        multi_label,
        bgr,
        crop: if xrv { Crop::CenterSquare } else { Crop::None },
        op_threshs,
        domain: if xrv || chest_labels {
            Domain::ChestXray
        } else if classes == 1000 {
            Domain::Photo
        } else {
            Domain::Other
        },
    };
    Ok(Arc::new(Model::new(net, info, device)?))
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

    fn layers(&self) -> Vec<super::layers::Layer> {
        match self {
            Net::ResNet(r) => r.layers(),
            Net::DenseNet(d) => d.layers(),
        }
    }
}
