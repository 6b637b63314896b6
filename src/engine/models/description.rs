//! Models people bring: a JSON description (or `--weights/--arch`) naming an architecture of
//! [`super::arch`] (or letting the checkpoint say which), a checkpoint, labels and
//! preprocessing. Nothing here knows one architecture from another: what differs comes from
//! the architecture's declaration.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;

use super::arch::Arch;
use super::checkpoint::read_checkpoint;
use super::classifier::{Classifier, Model};
use super::info::{CHESTXRAY14_LABELS, Domain, IMAGENET_LABELS, ModelInfo, Resize};
use super::layers::WeightEdit;
use crate::engine::ops::Backend;
use crate::error::{Error, Result};

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
    /// Default: 224 x 224 (an ONNX graph's own size where it has one).
    #[serde(default)]
    pub input_size: Option<[usize; 2]>,
    /// Normalisation `(x - mean) / std` of [0, 1] pixels; default: the architecture's
    /// (ImageNet's for torchvision's, TorchXRayVision's [-1024, 1024] scaling for its models).
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    #[serde(default)]
    pub std: Option<[f32; 3]>,
    /// "rgb" (default) or "bgr".
    #[serde(default, deserialize_with = "channel_order")]
    pub channel_order: ChannelOrder,
    #[serde(default)]
    pub labels: Option<LabelsSpec>,
    /// Sigmoid outputs, one per label (multi-label), instead of a softmax. Implied where the
    /// architecture says so (TorchXRayVision; DenseNets with CheXNet's `classifier.0` head,
    /// Linear then Sigmoid, or 14 outputs, ChestX-ray14's) and for single-output models.
    #[serde(default)]
    pub multi_label: bool,
    /// "bilinear" (default) or "nearest".
    #[serde(default, deserialize_with = "resize")]
    pub resize: Option<Resize>,
    /// Grad-CAM's layer in an ONNX graph (a value name); default: found automatically.
    #[serde(default)]
    pub cam_layer: Option<String>,
}

/// The order of a model's input channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    /// Caffe-style checkpoints.
    Bgr,
}

fn channel_order<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<ChannelOrder, D::Error> {
    choice(
        d,
        "channel_order",
        &[("rgb", ChannelOrder::Rgb), ("bgr", ChannelOrder::Bgr)],
    )
}

fn resize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Resize>, D::Error> {
    choice(
        d,
        "resize",
        &[("bilinear", Resize::Bilinear), ("nearest", Resize::Nearest)],
    )
    .map(Some)
}

/// One of a field's `allowed` values (any case), or an error that names the field and them:
/// a description is checked when it is read, not when the model loads.
fn choice<'de, D: serde::Deserializer<'de>, T: Copy>(
    d: D,
    field: &str,
    allowed: &[(&str, T)],
) -> std::result::Result<T, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    allowed
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(&s))
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
            serde::de::Error::custom(format!("{field} must be {}, got '{s}'", names.join(" or ")))
        })
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
            input_size: None,
            mean: None,
            std: None,
            channel_order: ChannelOrder::Rgb,
            labels: labels.map(LabelsSpec::File),
            multi_label,
            resize: None,
            cam_layer: None,
        }
    }

    /// A description of the model file `weights` that writes down what it was loaded with
    /// (what unveil assumed, for an ONNX graph), to be edited: its weights and labels by
    /// file name, as it is saved next to them.
    pub fn spelled_out(weights: &std::path::Path, info: &super::ModelInfo) -> Self {
        let file = weights
            .file_name()
            .map_or_else(|| weights.into(), PathBuf::from);
        ModelDescription {
            name: info.name.clone(),
            arch: None,
            weights: file,
            input_size: Some([info.input_size.0, info.input_size.1]),
            mean: Some(info.mean),
            std: Some(info.std),
            channel_order: if info.bgr {
                ChannelOrder::Bgr
            } else {
                ChannelOrder::Rgb
            },
            labels: None,
            multi_label: info.multi_label,
            resize: Some(info.resize),
            cam_layer: info.cam_layers.first().cloned(),
        }
    }

    /// Writes the description as JSON to `path`, which must not exist (nothing the user
    /// made is overwritten).
    pub fn write_new(&self, path: &std::path::Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Internal(format!("description to JSON: {e}")))?;
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| f.write_all(json.as_bytes()))
            .map_err(|e| Error::io(path, e))
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

/// Loads a described model (a checkpoint of one of [`super::arch`]'s architectures; ONNX
/// graphs go to [`super::onnx`], see `registry::load_described`), its weights changed by
/// `edit` first. What the description leaves
/// out comes from the checkpoint (a whole model's labels and operating points), from the
/// architecture's defaults, then from the head's width (ImageNet's labels for 1000 outputs; a
/// single output is a sigmoid).
pub(super) fn load_checkpoint(
    d: &ModelDescription,
    device: &Device,
    backend: Backend,
    edit: WeightEdit,
) -> Result<Arc<dyn Classifier>> {
    if let Some(layer) = &d.cam_layer {
        return Err(Error::InvalidParam(format!(
            "cam_layer '{layer}' chooses a layer of an ONNX graph; {} is not one",
            d.weights.display()
        )));
    }
    let (w, ck) = read_checkpoint(&d.weights)?;
    let arch = Arch::resolve(d.arch, &w, ck.model_class.as_deref())?;
    let mut w = arch.fix_keys(w);
    edit(&mut w)?;
    let net = arch.build(&w, device, backend)?;
    let classes = net.num_classes();
    let defaults = arch.defaults(classes, &w);
    let labels: Vec<String> = match (&d.labels, defaults.labels) {
        (Some(LabelsSpec::List(l)), _) => l.clone(),
        (Some(LabelsSpec::File(f)), _) => std::fs::read_to_string(f)
            .map_err(|e| Error::io(f, e))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        // A whole model's own list (TorchXRayVision's `targets`, blanks included).
        (None, _) if ck.labels.as_ref().is_some_and(|l| l.len() == classes) => {
            ck.labels.clone().unwrap_or_default()
        }
        (None, Some(labels)) => labels,
        (None, None) if classes == 1000 => IMAGENET_LABELS.lines().map(str::to_string).collect(),
        (None, None) => (0..classes).map(|i| format!("class {i}")).collect(),
    };
    // ChestX-ray14's findings, whether from the default list or the user's.
    let chest_labels = CHESTXRAY14_LABELS
        .lines()
        .filter(|l| labels.iter().any(|x| x == l.trim()))
        .count()
        >= 7;
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
    let info = ModelInfo {
        name: d.name.clone(),
        description: format!("{arch} from {}", d.weights.display()),
        input_size: d.input_size.map_or((224, 224), |[h, w]| (h, w)),
        mean: d.mean.unwrap_or(defaults.mean),
        std: d.std.unwrap_or(defaults.std),
        dataset_mean: d.mean.unwrap_or(defaults.dataset_mean),
        labels,
        resize: d.resize.unwrap_or_default(),
        multi_label: d.multi_label || defaults.multi_label || classes == 1,
        bgr: d.channel_order == ChannelOrder::Bgr,
        crop: defaults.crop,
        op_threshs,
        domain: defaults.domain.unwrap_or(if chest_labels {
            Domain::ChestXray
        } else if classes == 1000 {
            Domain::Photo
        } else {
            Domain::Other
        }),
        assumed: Vec::new(),
        cam_layers: Vec::new(),
        guided_note: None,
    };
    Ok(Arc::new(Model::new(net, info, device)?))
}
