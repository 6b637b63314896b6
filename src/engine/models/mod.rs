//! Classifiers the engine can explain, and the registry that loads them by name.
//!
//! Every model owns its activations (see [`crate::engine::ops::activation`]) so that guided
//! backprop reaches each ReLU; weights are plain tensors (constants), never variables.
//!
//! Layout: `info` (what feeding a model needs), `classifier` (the trait the engine uses and
//! its one implementation), `registry` (models known by name), `description` (models people
//! bring), `checkpoint` + `pth` (reading weights safely), `layers` (shared building blocks),
//! one file per architecture, and `fetch` (weights that may not be redistributed).

mod checkpoint;
mod classifier;
pub mod densenet;
mod description;
pub mod efficientnet_lite;
mod info;
pub mod layers;
mod pickle;
pub mod pth;
mod registry;
pub mod reinit;
pub mod resnet;
pub mod xception;

pub use checkpoint::read_weights;
pub use classifier::{Classifier, Model, Network};
pub use description::{Arch, LabelsSpec, ModelDescription, load_custom};
pub use info::{Crop, Domain, ModelInfo, Resize};
pub use registry::{
    ChestXception, DEFAULT_MODEL, Lite0, ModelEntry, ModelSource, PNEUMONIA_MODEL, entries,
    is_installed, load, models_dir, names, weights_path,
};
