//! Classifiers the engine can explain, and the registry that loads them by name.
//!
//! Every model owns its activations (see [`crate::engine::ops::activation`]) so that guided
//! backprop reaches each ReLU; weights are plain tensors (constants), never variables.
//!
//! Layout: `info` (what feeding a model needs), `classifier` (the traits the engine uses and
//! the one model type), `arch` (one file per architecture and the one list of them: adding an
//! architecture is a file there and a line in that list), `registry` (models known by name,
//! built on those architectures), `description` (models people bring), `checkpoint` (reading
//! weights safely: safetensors, and PyTorch's pickles read as data), `layers` (shared building
//! blocks and the layers networks declare) and `reinit` (the sanity check's
//! re-initialisations). Fetching weights that may not be redistributed is installer work, in
//! `crate::install`: the engine only reads the file it writes.

mod arch;
mod checkpoint;
mod classifier;
mod description;
mod info;
pub mod layers;
pub mod onnx;
mod registry;
pub mod reinit;

pub use arch::{Arch, Architecture, Defaults, Detection, arch_help, arch_names};
pub use checkpoint::read_weights;
pub use classifier::{Classifier, Model, Network};
pub use description::{ChannelOrder, LabelsSpec, ModelDescription};
pub use info::{Crop, Domain, ModelInfo, Resize};
pub use registry::{
    DEFAULT_MODEL, ModelEntry, ModelSource, PNEUMONIA_MODEL, entries, from_weights, is_installed,
    load, load_custom, models_dir, names, weights_path,
};
