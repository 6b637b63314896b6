//! The architectures unveil can build: one file each, declaring everything unveil knows about
//! it ([`Architecture`]: its name, how to recognise it in a checkpoint, its key fix-ups, how to
//! build the network, how to feed it and read its output by default), and ONE list, [`ALL`],
//! which drives everything else: `--arch NAME` and a description's `"arch"` ([`Arch`]'s
//! parsing), `--arch`'s help ([`arch_help`]), recognising a checkpoint ([`Arch::detect`]), and
//! the named models of the registry, which are built on these architectures.
//!
//! **Adding an architecture**: write `arch/my_net.rs` with the network (`impl Network`:
//! `features` up to the last convolutional activation, `head`, `last_stage`, and `layers` in
//! forward order) and a `pub(super) static MY_NET: MyNet` that implements [`Architecture`]; then
//! add one line, `my_net => [MY_NET],`, to the list below. Nothing else names architectures:
//! parsing, help, detection and the sanity check's layers follow. Then give it a checkpoint in
//! `tests/engine/architectures.rs` (what it becomes, its cascade scopes, its declared layers).
//!
//! What must hold: names are unique and lowercase; an architecture claims a checkpoint only
//! from its own tensor names and shapes (or a whole model's class), and where two claim one,
//! one must [`Architecture::refines`] the other (TorchXRayVision's DenseNet refines
//! torchvision's) or the first in the list wins; `build` reads tensors under the names
//! `fix_key` gives, and `layers` names each tensor `build` reads exactly once.

use std::fmt;

use candle_core::Device;

use super::classifier::Network;
use super::info::{Crop, Domain};
use super::layers::Weights;
use crate::engine::ops::Backend;
use crate::error::{Error, Result};

/// Declares the architecture files and the list, in the order detection tries them and help
/// lists them. One line per file: the module, then the statics it declares.
macro_rules! architectures {
    ($($file:ident => [$($arch:ident),+ $(,)?]),+ $(,)?) => {
        $(mod $file;)+
        /// Every architecture unveil knows.
        static ALL: &[&dyn Architecture] = &[$($(&$file::$arch),+),+];
    };
}

architectures! {
    resnet => [RESNET18, RESNET34, RESNET50, RESNET101],
    densenet => [DENSENET121],
    xrv_densenet => [XRV_DENSENET121],
    efficientnet_lite => [EFFICIENTNET_LITE0],
    xception => [XCEPTION],
}

// The registry's named models are built on these.
pub(super) use efficientnet_lite::EFFICIENTNET_LITE0;
pub(super) use xception::XCEPTION;

/// Everything unveil knows about one architecture (see the module docs).
pub trait Architecture: Send + Sync {
    /// As `--arch` and a description's `"arch"` name it: lowercase, unique.
    fn name(&self) -> &'static str;
    /// A few words for `--arch`'s help: whose checkpoints it reads. Neighbours in the list
    /// with the same words share them.
    fn about(&self) -> &'static str;
    /// Whether a checkpoint holds this architecture: its tensors (names as saved, wrapper
    /// prefixes removed) and, for a whole pickled model, its class.
    fn detect(&self, w: &Weights, model_class: Option<&str>) -> Detection;
    /// The architecture this one is a special case of: it wins where both claim a
    /// checkpoint, and a checkpoint named as that one but recognised as this one is this one.
    fn refines(&self) -> Option<&'static str> {
        None
    }
    /// A tensor's name as [`Architecture::build`] reads it (legacy names renamed).
    fn fix_key(&self, key: &str) -> String {
        key.to_string()
    }
    /// The network, from weights whose names [`Architecture::fix_key`] gave. The number of
    /// classes comes from the weights.
    fn build(&self, w: &Weights, device: &Device, backend: Backend) -> Result<Box<dyn Network>>;
    /// How to feed the network and read its `classes` outputs when nothing else says.
    fn defaults(&self, classes: usize, w: &Weights) -> Defaults;
}

/// What an architecture says about a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detection {
    No,
    Yes,
    /// Its kind, in a shape unveil does not know: why, said when nothing claims the checkpoint.
    Unsupported(String),
}

/// How an architecture's checkpoints are fed and read by default: what a model description
/// or a named model does not say itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    /// Normalisation `(x - mean) / std` of [0, 1] pixels.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The training set's mean colour in [0, 1] (the neutral fill), when no mean is given.
    pub dataset_mean: [f32; 3],
    pub crop: Crop,
    /// Labels for this head, when the checkpoint brings none.
    pub labels: Option<Vec<String>>,
    /// Sigmoid outputs, one per label.
    pub multi_label: bool,
    /// What the model was trained on, when the architecture alone says it.
    pub domain: Option<Domain>,
}

/// ImageNet's normalisation, as torchvision's models expect.
pub(super) const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub(super) const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Defaults {
    /// torchvision's ImageNet preprocessing, a softmax head, labels by the head's width.
    pub fn imagenet() -> Self {
        Defaults {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            dataset_mean: IMAGENET_MEAN,
            crop: Crop::None,
            labels: None,
            multi_label: false,
            domain: None,
        }
    }
}

/// One of the architectures of the list.
#[derive(Clone, Copy)]
pub struct Arch(&'static dyn Architecture);

impl Arch {
    /// All of them, in the list's order.
    pub fn all() -> impl Iterator<Item = Arch> {
        ALL.iter().map(|&a| Arch(a))
    }

    /// The architecture called `name` (any case).
    pub fn named(name: &str) -> Option<Arch> {
        Arch::all().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// The architecture a checkpoint's contents say it is: the first that claims it and is
    /// not refined by another that does; else why not, in one line.
    pub fn detect(w: &Weights, model_class: Option<&str>) -> Result<Arch> {
        let mut claims = Vec::new();
        let mut unsupported = None;
        for a in Arch::all() {
            match a.0.detect(w, model_class) {
                Detection::Yes => claims.push(a),
                Detection::Unsupported(why) => {
                    unsupported.get_or_insert(why);
                }
                Detection::No => {}
            }
        }
        let refined = |a: &Arch| claims.iter().any(|b| b.refines() == Some(a.name()));
        if let Some(&a) = claims.iter().find(|a| !refined(a)) {
            return Ok(a);
        }
        Err(Error::Weights(unsupported.unwrap_or_else(|| {
            format!(
                "cannot tell the architecture from the weights{}; name it with --arch ({})",
                model_class
                    .map(|c| format!(" (a whole `{c}` model)"))
                    .unwrap_or_default(),
                arch_names()
            )
        })))
    }

    /// The architecture to build: `named` (by the user), unless the checkpoint is recognised
    /// as a refinement of it (a TorchXRayVision DenseNet named `densenet121`); recognised from
    /// the checkpoint when nothing is named.
    pub fn resolve(named: Option<Arch>, w: &Weights, model_class: Option<&str>) -> Result<Arch> {
        let detected = Arch::detect(w, model_class);
        match (named, detected) {
            (None, detected) => detected,
            (Some(n), Ok(d)) if d.refines() == Some(n.name()) => Ok(d),
            (Some(n), _) => Ok(n),
        }
    }

    /// The weights under the names the architecture reads.
    pub fn fix_keys(self, w: Weights) -> Weights {
        w.map_keys(|k| self.0.fix_key(k))
    }
}

impl std::ops::Deref for Arch {
    type Target = dyn Architecture;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Arch) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Arch {}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Arch({})", self.name())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Arch> {
        Arch::named(s).ok_or_else(|| {
            Error::InvalidParam(format!("unknown architecture '{s}' ({})", arch_names()))
        })
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Arch, D::Error> {
        let name = String::deserialize(d)?;
        Arch::named(&name).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown architecture '{name}' ({})", arch_names()))
        })
    }
}

/// The architectures' names, as errors list them: `resnet18, resnet34, ...`.
pub fn arch_names() -> String {
    Arch::all().map(|a| a.name()).collect::<Vec<_>>().join(", ")
}

/// The architectures for `--arch`'s help: names, with whose checkpoints they read
/// (`resnet18, resnet34, resnet50, resnet101 (torchvision), densenet121 (...), ...`).
pub fn arch_help() -> String {
    let mut groups: Vec<(Vec<&str>, &str)> = Vec::new();
    for a in Arch::all() {
        match groups.last_mut() {
            Some((names, about)) if *about == a.about() => names.push(a.name()),
            _ => groups.push((vec![a.name()], a.about())),
        }
    }
    groups
        .iter()
        .map(|(names, about)| format!("{} ({about})", names.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_and_refinements_name_listed_architectures() {
        let names: Vec<&str> = Arch::all().map(|a| a.name()).collect();
        let unique: std::collections::HashSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(names.iter().all(|n| n.to_ascii_lowercase() == *n));
        for a in Arch::all() {
            if let Some(r) = a.refines() {
                assert!(Arch::named(r).is_some_and(|r| r != a), "{a} refines {r}");
            }
        }
    }

    #[test]
    fn names_parse_in_any_case_and_unknown_ones_list_the_known() {
        assert_eq!("ResNet50".parse::<Arch>().unwrap().name(), "resnet50");
        let err = "vgg16".parse::<Arch>().unwrap_err().to_string();
        assert!(
            err.contains("'vgg16'") && err.contains("xrv-densenet121"),
            "{err}"
        );
        let json: Arch = serde_json::from_str("\"xception\"").unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), "\"xception\"");
    }
}
