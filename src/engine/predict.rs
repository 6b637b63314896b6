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
    let probs: Vec<Vec<f32>> = p.to_vec2()?;
    if probs.iter().flatten().any(|p| !p.is_finite()) {
        return Err(Error::Numeric(
            "the model produced NaN or infinite scores".into(),
        ));
    }
    Ok(probs)
}

/// The `k` most probable classes.
pub fn top_k(model: &dyn Classifier, probs: &[f32], k: usize) -> Vec<Prediction> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
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
