//! The iterative unveiling loop (Bordes et al., 2018).
//!
//! Iteration i feeds the model the image with the union of masks 0..i-1 filled in, records its
//! predictions, computes a saliency map for the target class on that input and smooths it into
//! mask i. After each iteration the next masked input is classified: once p(target) falls below
//! the stop threshold the model no longer sees the class and the loop ends (iteration 0 always
//! runs, so even a weak class gets one explanation). It also ends at `max_iter`, when a mask
//! adds nothing new (the next input would be the same), or when everything is masked.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::engine::mask::{self, Mask};
use crate::engine::models::Classifier;
use crate::engine::ops::activation::ReluMode;
use crate::engine::params::{FillMode, SaliencyParams, UnveilParams};
use crate::engine::saliency::{self, SaliencyMap};
use crate::error::{Error, Result};

/// One class and its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub class: usize,
    pub label: String,
    pub prob: f32,
}

/// Wall-clock time spent in each part of an iteration, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    pub classify_ms: f64,
    pub gradient_ms: f64,
    pub mask_ms: f64,
}

/// One iteration's results. Images are at the model's input size; tensors are on the CPU.
#[derive(Clone, Debug)]
pub struct Step {
    pub index: usize,
    /// The normalised tensor fed to the model, `[3, h, w]`: the image with masks 0..i-1 filled.
    pub input: Tensor,
    pub top5: Vec<Prediction>,
    pub p_target: f32,
    /// SmoothGrad-averaged input gradient `[3, h, w]`.
    pub gradient: Tensor,
    pub saliency: SaliencyMap,
    /// This iteration's smoothed mask.
    pub mask: Mask,
    /// Union of masks 0..=i.
    pub cumulative: Mask,
    /// The image with `cumulative` filled, `[3, h, w]`: the next iteration's input.
    pub masked: Tensor,
    /// True when the gradient came from the cache (no gradient was computed).
    pub cached: bool,
    pub timings: Timings,
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// p(target) of the masked image fell below the stop threshold.
    BelowThreshold,
    MaxIterations,
    /// The last mask added no pixel: the next input would not change.
    NoNewRegion,
    /// The whole image is masked.
    AllMasked,
    /// The gradient is exactly zero at every pixel: there is no salient region to mask.
    ZeroGradient,
}

impl StopReason {
    /// Why the loop ended, in words.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::BelowThreshold => "p(target) fell below the stop threshold",
            StopReason::MaxIterations => "reached the maximum number of iterations",
            StopReason::NoNewRegion => "the last mask added no new region",
            StopReason::AllMasked => "the whole image is masked",
            StopReason::ZeroGradient => {
                "the gradient is zero everywhere: the model's score for this class does not \
                 respond to any pixel of this input, so there is no region to show"
            }
        }
    }
}

/// The model's view of the image after the last mask.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub top5: Vec<Prediction>,
    pub p_target: f32,
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub target: usize,
    pub steps: Vec<Step>,
    pub stop: StopReason,
    /// Classification of the input with every mask applied (absent when nothing new was masked).
    pub after: Option<Probe>,
}

/// Where a run is, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub iteration: usize,
    pub max_iter: usize,
    pub chunk: usize,
    pub chunks: usize,
}

/// What a run reports while it works.
pub enum Event<'a> {
    Progress(Progress),
    Step(&'a Step),
}

/// Class probabilities of one normalised image `[3, h, w]`: a softmax, or for multi-label
/// models one sigmoid per label (each label scored on its own).
pub fn classify(model: &dyn Classifier, x: &Tensor) -> Result<Vec<f32>> {
    let logits = model.forward(&x.to_device(model.device())?.unsqueeze(0)?, ReluMode::Plain)?;
    let p = if model.info().multi_label {
        candle_nn::ops::sigmoid(&logits)?
    } else {
        candle_nn::ops::softmax_last_dim(&logits)?
    };
    let probs: Vec<f32> = p.squeeze(0)?.to_vec1()?;
    if probs.iter().any(|p| !p.is_finite()) {
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

/// Remembers input gradients so that changing only mask parameters never recomputes
/// iterations whose input is unchanged (iteration 0 always is). Shared between runs.
#[derive(Default)]
pub struct GradientCache {
    entries: Mutex<Vec<(u64, Arc<Tensor>)>>,
}

impl GradientCache {
    const CAPACITY: usize = 32;

    fn key(x: &Tensor, target: usize, p: &SaliencyParams) -> Result<u64> {
        let mut h = DefaultHasher::new();
        for v in x.flatten_all()?.to_vec1::<f32>()? {
            v.to_bits().hash(&mut h);
        }
        (target, p.method, p.samples, p.noise.to_bits(), p.seed).hash(&mut h);
        Ok(h.finish())
    }

    fn get(&self, key: u64) -> Option<Arc<Tensor>> {
        let mut e = self.entries.lock().ok()?;
        let pos = e.iter().position(|(k, _)| *k == key)?;
        let hit = e.remove(pos);
        let t = hit.1.clone();
        e.push(hit);
        Some(t)
    }

    fn put(&self, key: u64, t: Arc<Tensor>) {
        if let Ok(mut e) = self.entries.lock() {
            e.retain(|(k, _)| *k != key);
            if e.len() >= Self::CAPACITY {
                e.remove(0);
            }
            e.push((key, t));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The image with masked pixels replaced per `fill`. Works on the CPU.
pub struct Filler {
    original: Vec<f32>,
    fill: Vec<f32>,
    shape: (usize, usize, usize),
}

impl Filler {
    pub fn new(model: &dyn Classifier, x: &Tensor, mode: FillMode) -> Result<Self> {
        let (c, h, w) = x.dims3()?;
        let original: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let info = model.info();
        let plane = h * w;
        let fill = match mode {
            FillMode::Mean | FillMode::Black => {
                let rgb = if mode == FillMode::Mean {
                    info.dataset_mean
                } else {
                    [0.0; 3]
                };
                let v = info.normalise(rgb);
                (0..c * plane).map(|i| v[(i / plane).min(2)]).collect()
            }
            FillMode::Blur => {
                let r = (h.min(w) / 16).max(1);
                (0..c)
                    .flat_map(|ch| {
                        mask::blur_plane(&original[ch * plane..(ch + 1) * plane], w, h, r, 3)
                    })
                    .collect()
            }
        };
        Ok(Filler {
            original,
            fill,
            shape: (c, h, w),
        })
    }

    /// The image with `m` filled, `[c, h, w]` on `device`.
    pub fn apply(&self, m: &Mask, device: &Device) -> Result<Tensor> {
        let (c, h, w) = self.shape;
        let plane = h * w;
        let data: Vec<f32> = (0..c * plane)
            .map(|i| {
                if m.data[i % plane] {
                    self.fill[i]
                } else {
                    self.original[i]
                }
            })
            .collect();
        Ok(Tensor::from_vec(data, (c, h, w), device)?)
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs the loop on one normalised image `x` (`[3, h, w]`, the model's input size).
///
/// Steps are reported through `on_event` as soon as they exist, so a caller keeps what was
/// computed even if a later iteration fails or is cancelled.
pub fn run(
    model: &dyn Classifier,
    x: &Tensor,
    params: &UnveilParams,
    cache: Option<&GradientCache>,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> Result<Outcome> {
    params.validate()?;
    // A run superseded before it began (a slider dragged quickly) costs nothing.
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let device = model.device().clone();
    let (_, h, w) = x.dims3()?;
    let filler = Filler::new(model, x, params.fill)?;
    let mut cumulative = Mask::empty(w, h);
    let mut input = x.to_device(&device)?;

    let t = Instant::now();
    let mut probs = classify(model, &input)?;
    let mut classify_ms = ms(t);
    let target = params
        .target
        .unwrap_or_else(|| top_k(model, &probs, 1)[0].class);
    if target >= probs.len() {
        return Err(Error::ClassOutOfRange {
            class: target,
            num_classes: probs.len(),
        });
    }

    let max_iter = params.stop.max_iter;
    let mut steps: Vec<Step> = Vec::new();
    loop {
        let index = steps.len();
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let t = Instant::now();
        let key = cache
            .map(|_| GradientCache::key(&input, target, &params.saliency))
            .transpose()?;
        let hit = cache.zip(key).and_then(|(c, k)| c.get(k));
        let cached = hit.is_some();
        let gradient = match hit {
            Some(g) => (*g).clone(),
            None => {
                let mut report = |chunk, chunks| {
                    on_event(Event::Progress(Progress {
                        iteration: index,
                        max_iter,
                        chunk,
                        chunks,
                    }))
                };
                let g = saliency::input_gradient(
                    model,
                    &input,
                    target,
                    &params.saliency,
                    &mut report,
                    cancel,
                )?;
                if let (Some(c), Some(k)) = (cache, key) {
                    c.put(k, Arc::new(g.clone()));
                }
                g
            }
        };
        let gradient_ms = ms(t);
        let t = Instant::now();
        let saliency = saliency::saliency_map(&gradient)?;
        let mask = mask::make_mask(&saliency, &params.mask);
        let grows = mask.adds_to(&cumulative);
        cumulative = cumulative.union(&mask);
        let masked = filler.apply(&cumulative, &Device::Cpu)?;
        let mask_ms = ms(t);
        let step = Step {
            index,
            input: input.to_device(&Device::Cpu)?,
            top5: top_k(model, &probs, 5),
            p_target: probs[target],
            gradient,
            saliency,
            mask,
            cumulative: cumulative.clone(),
            masked: masked.clone(),
            cached,
            timings: Timings {
                classify_ms,
                gradient_ms,
                mask_ms,
            },
        };
        on_event(Event::Step(&step));
        steps.push(step);

        if !grows {
            let flat = steps
                .last()
                .is_some_and(|s| s.saliency.data.iter().all(|&v| v == 0.0));
            return Ok(Outcome {
                target,
                steps,
                stop: if flat {
                    StopReason::ZeroGradient
                } else {
                    StopReason::NoNewRegion
                },
                after: None,
            });
        }
        input = masked.to_device(&device)?;
        let t = Instant::now();
        probs = classify(model, &input)?;
        classify_ms = ms(t);
        let after = Some(Probe {
            top5: top_k(model, &probs, 5),
            p_target: probs[target],
        });
        let stop = if probs[target] < params.stop.threshold {
            Some(StopReason::BelowThreshold)
        } else if cumulative.count() == cumulative.data.len() {
            Some(StopReason::AllMasked)
        } else if steps.len() >= max_iter {
            Some(StopReason::MaxIterations)
        } else {
            None
        };
        if let Some(stop) = stop {
            return Ok(Outcome {
                target,
                steps,
                stop,
                after,
            });
        }
    }
}
