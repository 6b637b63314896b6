//! Re-initialising a trained model's last layers, for the model-randomisation sanity check
//! (Adebayo et al., 2018, "Sanity Checks for Saliency Maps"): a map that does not change when
//! the layers that make the decision are randomised does not show the model's reasons.
//!
//! The cascade re-initialises, from the output back: the classifier head, then also the last
//! block or stage, then the last quarter of the network. Which tensors those are comes from
//! the order the model read its weights (its forward order): a layer starts at each weight of
//! two or more dimensions (a convolution or a linear layer), and the one-dimensional tensors
//! read after it (bias, BatchNorm) belong to it. New values (seeded per tensor name, so they
//! do not depend on the order or the device): weights He-normal (std sqrt(2 / fan-in)),
//! BatchNorm scale U(0.5, 1.5), shift and running mean N(0, 0.1), running variance
//! U(0.5, 1.5); other biases zero.

use std::collections::HashSet;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::layers::Weights;
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

/// The layers of a read order: each a weight of 2+ dimensions and the 1-D tensors after it.
fn layers(order: &[(String, usize)]) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    for (name, dims) in order {
        match out.last_mut() {
            Some(layer) if *dims < 2 => layer.push(name),
            _ => out.push(vec![name]),
        }
    }
    out
}

/// The tensors re-initialised at `cascade`, given the model's read order and the name prefixes
/// of its last stage.
pub fn scope(order: &[(String, usize)], last_stage: &[&str], cascade: Cascade) -> HashSet<String> {
    let layers = layers(order);
    let dims = |name: &str| order.iter().find(|(n, _)| n == name).map_or(0, |(_, d)| *d);
    // The head: the trailing linear layers (2-D weights).
    let head = layers
        .iter()
        .rev()
        .take_while(|l| dims(l[0]) == 2)
        .count()
        .max(1);
    let from = match cascade {
        Cascade::Head => layers.len() - head,
        Cascade::LastStage => {
            let first_of_stage = layers.iter().position(|l| {
                l.iter()
                    .any(|n| last_stage.iter().any(|p| n.starts_with(p)))
            });
            first_of_stage
                .unwrap_or(layers.len() - head)
                .min(layers.len() - head)
        }
        Cascade::LastQuarter => {
            let quarter = layers.len().div_ceil(4);
            let stage = scope(order, last_stage, Cascade::LastStage);
            let before_stage = layers
                .iter()
                .position(|l| l.iter().any(|n| stage.contains(*n)))
                .unwrap_or(layers.len());
            (layers.len() - quarter).min(before_stage)
        }
    };
    layers[from..]
        .iter()
        .flatten()
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

    fn order(names: &[(&str, usize)]) -> Vec<(String, usize)> {
        names.iter().map(|(n, d)| (n.to_string(), *d)).collect()
    }

    #[test]
    fn the_cascade_grows_from_the_head_backwards() {
        // A toy ResNet: a stem, two stages of two convolutions, a linear head.
        let o = order(&[
            ("conv1.weight", 4),
            ("bn1.weight", 1),
            ("layer1.0.conv1.weight", 4),
            ("layer1.0.bn1.weight", 1),
            ("layer1.0.conv2.weight", 4),
            ("layer2.0.conv1.weight", 4),
            ("layer2.0.bn1.weight", 1),
            ("layer2.0.conv2.weight", 4),
            ("fc.weight", 2),
            ("fc.bias", 1),
        ]);
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
}
