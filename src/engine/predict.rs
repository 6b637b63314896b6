//! Reading a model's output: class probabilities of one image, and the most probable classes.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::engine::models::Classifier;
use crate::engine::ops::activation::ReluMode;
use crate::error::{Error, Result};

/// One class and its probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub class: usize,
    pub label: String,
    pub prob: f32,
}

/// Class probabilities of one normalised image `[3, h, w]`: a softmax, or for multi-label
/// models one sigmoid per label (each label scored on its own).
pub fn classify(model: &dyn Classifier, x: &Tensor) -> Result<Vec<f32>> {
    let mut probs = classify_batch(model, &x.unsqueeze(0)?)?;
    Ok(probs.remove(0))
}

/// Class probabilities of each image of a normalised batch `[n, 3, h, w]`, as [`classify`].
pub fn classify_batch(model: &dyn Classifier, x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let logits = model.forward(&x.to_device(model.device())?, ReluMode::Plain)?;
    let p = if model.info().multi_label {
        candle_nn::ops::sigmoid(&logits)?
    } else {
        candle_nn::ops::softmax_last_dim(&logits)?
    };
    let mut probs: Vec<Vec<f32>> = p.to_vec2()?;
    if let Some(t) = &model.info().op_threshs {
        for row in &mut probs {
            for (p, &t) in row.iter_mut().zip(t) {
                *p = operating_point(*p, t);
            }
        }
    }
    if probs.iter().flatten().any(|p| !p.is_finite()) {
        return Err(Error::Numeric(
            "the model produced NaN or infinite scores".into(),
        ));
    }
    Ok(probs)
}

/// TorchXRayVision's `op_norm`: rescales a sigmoid output so that its label's operating point
/// `t` maps to 0.5; a NaN threshold (a label the weights do not predict) gives 0.5.
pub fn operating_point(p: f32, t: f32) -> f32 {
    if t.is_nan() {
        0.5
    } else if p < t {
        p / (t * 2.0)
    } else {
        1.0 - (1.0 - p) / ((1.0 - t) * 2.0)
    }
}

/// The `k` most probable classes among those the model predicts (blank labels are skipped).
pub fn top_k(model: &dyn Classifier, probs: &[f32], k: usize) -> Vec<Prediction> {
    let info = model.info();
    let mut idx: Vec<usize> = (0..probs.len()).filter(|&c| info.predicts(c)).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    idx.into_iter()
        .take(k)
        .map(|class| Prediction {
            class,
            label: model.info().label(class),
            prob: probs[class],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::operating_point;

    #[test]
    fn operating_points_map_the_threshold_to_one_half() {
        // torchxrayvision.models.op_norm on [0.01, 0.2, 0.6, 0.3] with thresholds
        // [0.04, 0.2, 0.2, nan]: [0.125, 0.5, 0.75, 0.5].
        let got: Vec<f32> = [(0.01, 0.04), (0.2, 0.2), (0.6, 0.2), (0.3, f32::NAN)]
            .iter()
            .map(|&(p, t)| operating_point(p, t))
            .collect();
        for (g, w) in got.iter().zip([0.125, 0.5, 0.75, 0.5]) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }
}
