//! Re-initialising a trained model's last layers, for the model-randomisation sanity check
//! (Adebayo et al., 2018, "Sanity Checks for Saliency Maps"): a map that does not change when
//! the layers that make the decision are randomised does not show the model's reasons.
//!
//! The cascade re-initialises, from the output back: the classifier head, then also the last
//! block or stage, then the last quarter of the network. Which tensors those are comes from
//! the layers the network declares in forward order ([`super::Network::layers`]): a unit
//! starts at each convolution or linear layer (with its bias and folded BatchNorm), and a
//! normalisation of its own joins the unit before it. New values (seeded per tensor name, so they
//! do not depend on the order or the device): weights He-normal (std sqrt(2 / fan-in)),
//! BatchNorm scale U(0.5, 1.5), shift and running mean N(0, 0.1), running variance
//! U(0.5, 1.5); other biases zero.

use std::collections::HashSet;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::layers::{Layer, LayerKind, Weights};
use crate::engine::rng::Normal;
use crate::error::Result;

/// How much of the network a randomisation re-initialises; each level includes the previous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cascade {
    #[serde(rename = "head")]
    Head,
    #[serde(rename = "head+last-stage")]
    LastStage,
    #[serde(rename = "last-quarter")]
    LastQuarter,
}

impl Cascade {
    pub const ALL: [Cascade; 3] = [Cascade::Head, Cascade::LastStage, Cascade::LastQuarter];

    /// As in check.json.
    pub fn name(self) -> &'static str {
        match self {
            Cascade::Head => "head",
            Cascade::LastStage => "head+last-stage",
            Cascade::LastQuarter => "last-quarter",
        }
    }

    /// For people.
    pub fn describe(self) -> &'static str {
        match self {
            Cascade::Head => "the classifier head",
            Cascade::LastStage => "the head and the last stage",
            Cascade::LastQuarter => "the last quarter of the network",
        }
    }
}

/// A network's layers as units of re-initialisation: each convolution or linear layer with
/// the normalisations after it; whether the unit is linear, and its tensors.
fn units(layers: &[Layer]) -> Vec<(bool, Vec<&str>)> {
    let mut out: Vec<(bool, Vec<&str>)> = Vec::new();
    for layer in layers {
        let names = layer.tensors.iter().map(String::as_str);
        match out.last_mut() {
            Some((_, unit)) if layer.kind == LayerKind::Norm => unit.extend(names),
            _ => out.push((layer.kind == LayerKind::Linear, names.collect())),
        }
    }
    out
}

/// The tensors re-initialised at `cascade`, given the network's layers in forward order and
/// the name prefixes of its last stage.
pub fn scope(layers: &[Layer], last_stage: &[&str], cascade: Cascade) -> HashSet<String> {
    let first = layers.iter().position(|l| {
        l.tensors
            .iter()
            .any(|n| last_stage.iter().any(|p| n.starts_with(p)))
    });
    scope_at(layers, first, cascade)
}

/// [`scope`] with the last stage starting at layer `stage` (None: no stage is known, so it is
/// the head alone).
pub fn scope_at(layers: &[Layer], stage: Option<usize>, cascade: Cascade) -> HashSet<String> {
    let all = units(layers);
    let units = &all;
    let n = units.len();
    // The head: the trailing linear layers.
    let head = units
        .iter()
        .rev()
        .take_while(|(linear, _)| *linear)
        .count()
        .max(1);
    let before_head = n.saturating_sub(head);
    // The unit holding layer `stage`: as many units as its predecessors form, less one when
    // it joins the last of them (a normalisation of its own).
    let stage_unit = stage.map(|i| {
        let before = self::units(&layers[..i.min(layers.len())]).len();
        match layers.get(i) {
            Some(l) if l.kind == LayerKind::Norm => before.saturating_sub(1),
            _ => before,
        }
    });
    let stage_from = stage_unit.unwrap_or(before_head).min(before_head);
    let from = match cascade {
        Cascade::Head => before_head,
        Cascade::LastStage => stage_from,
        Cascade::LastQuarter => (n - n.div_ceil(4)).min(stage_from),
    };
    units[from..]
        .iter()
        .flat_map(|(_, names)| names)
        .map(|n| n.to_string())
        .collect()
}

/// FNV-1a of a name: each tensor's own random stream.
fn stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Replaces every tensor of `names` by new values (see the module docs), seeded by `seed`.
pub fn reinitialise(w: &mut Weights, names: &HashSet<String>, seed: u64) -> Result<()> {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    for name in sorted {
        let shape = w.shape(name)?;
        let n: usize = shape.iter().product();
        let mut rng = Normal::new(seed, stream(name));
        let sibling = |suffix: &str| {
            let stem = name.rsplit_once('.').map_or("", |(s, _)| s);
            w.shape(&format!("{stem}.{suffix}")).is_ok()
        };
        let is_bn = shape.len() == 1 && sibling("running_var");
        let last = name.rsplit('.').next().unwrap_or("");
        let values: Vec<f32> = if shape.len() >= 2 {
            let fan_in: usize = shape[1..].iter().product();
            let std = (2.0 / fan_in.max(1) as f32).sqrt();
            (0..n).map(|_| std * rng.sample()).collect()
        } else if is_bn && matches!(last, "weight" | "running_var") {
            (0..n).map(|_| 0.5 + rng.uniform() as f32).collect()
        } else if is_bn {
            (0..n).map(|_| 0.1 * rng.sample()).collect()
        } else {
            vec![0.0; n]
        };
        w.replace(
            name,
            Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(kind: LayerKind, names: &[&str]) -> Layer {
        Layer::new(kind, names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn the_cascade_grows_from_the_head_backwards() {
        // A toy ResNet: a stem, two stages of two convolutions, a linear head.
        let conv = |names: &[&str]| layer(LayerKind::Conv, names);
        let o = [
            conv(&["conv1.weight", "bn1.weight"]),
            conv(&["layer1.0.conv1.weight", "layer1.0.bn1.weight"]),
            conv(&["layer1.0.conv2.weight"]),
            conv(&["layer2.0.conv1.weight", "layer2.0.bn1.weight"]),
            conv(&["layer2.0.conv2.weight"]),
            layer(LayerKind::Linear, &["fc.weight", "fc.bias"]),
        ];
        let head = scope(&o, &["layer2."], Cascade::Head);
        assert_eq!(head, ["fc.weight", "fc.bias"].map(String::from).into());
        let stage = scope(&o, &["layer2."], Cascade::LastStage);
        assert_eq!(stage.len(), 5, "{stage:?}");
        assert!(stage.contains("layer2.0.bn1.weight") && !stage.contains("layer1.0.conv2.weight"));
        // 6 layers: the last quarter is 2 layers, fewer than the stage: the stage's start wins.
        assert_eq!(scope(&o, &["layer2."], Cascade::LastQuarter), stage);
        // With a short last stage the quarter reaches further back.
        let quarter = scope(&o, &["fc."], Cascade::LastQuarter);
        assert_eq!(quarter.len(), 3, "the last 2 of 6 layers: {quarter:?}");
    }

    #[test]
    fn a_normalisation_of_its_own_joins_the_layer_before_it() {
        // DenseNet's pre-activation order: norm, conv, norm, conv, ..., norm, linear.
        let o = [
            layer(LayerKind::Conv, &["conv0.weight"]),
            layer(LayerKind::Norm, &["norm0.weight"]),
            layer(LayerKind::Norm, &["block1.norm1.weight"]),
            layer(LayerKind::Conv, &["block1.conv1.weight"]),
            layer(LayerKind::Norm, &["block2.norm1.weight"]),
            layer(LayerKind::Conv, &["block2.conv1.weight"]),
            layer(LayerKind::Norm, &["norm5.weight"]),
            layer(LayerKind::Linear, &["classifier.weight", "classifier.bias"]),
        ];
        let head = scope(&o, &["block2."], Cascade::Head);
        assert_eq!(head.len(), 2, "{head:?}");
        // block2's norm belongs to block1's convolution, which the stage therefore takes.
        let stage = scope(&o, &["block2."], Cascade::LastStage);
        let want = [
            "block1.conv1.weight",
            "block2.norm1.weight",
            "block2.conv1.weight",
            "norm5.weight",
            "classifier.weight",
            "classifier.bias",
        ];
        assert_eq!(stage, want.map(String::from).into());
    }
}
