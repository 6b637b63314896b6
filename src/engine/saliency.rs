//! Saliency: what the model's score for the target class (its logit, pre-softmax) owes to
//! each input value, by one of four methods ([`Method`]):
//!
//! - **guided** / **vanilla**: the input gradient, with guided or plain ReLU backward passes,
//!   over noisy copies (SmoothGrad, Smilkov et al., 2017) combined by their mean or the mean of
//!   their squares ([`Reduction`]);
//! - **integrated gradients** (Sundararajan et al., 2017): `(x - b) * mean gradient` along the
//!   straight path from the baseline `b` (the run's fill image) to `x`, midpoint Riemann sum of
//!   `ig_steps` points, per noisy copy; its completeness (the attributions sum to
//!   `f(x) - f(b)`) is reported;
//! - **Grad-CAM** (Selvaraju et al., 2017): the last convolutional feature map's channels
//!   weighted by the spatial mean of their gradient, summed, rectified, and upsampled
//!   bilinearly (half-pixel centres) to the input size; one exact pass, no noise.
//!
//! The map is `max` over channels of `|attribution|` (Simonyan et al., 2014), divided by its
//! 99th percentile and clipped to [0, 1], so a handful of extreme pixels cannot wash out the
//! rest. Noise comes from a seeded generator per copy index, so the result does not depend on
//! the chunk size and the same settings always give the same map.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::maps::SaliencyMap;
use crate::engine::models::Classifier;
use crate::engine::ops::activation::ReluMode;
use crate::engine::params::{Method, Reduction, SaliencyParams};
use crate::engine::rng::Normal;
use crate::error::{Error, Result};

/// What a map is made of, `[c, h, w]` on the CPU (`c` = 1 for Grad-CAM).
#[derive(Clone, Debug)]
pub struct Attribution {
    pub values: Tensor,
    /// Integrated gradients with mean reduction: how far the attributions are from summing to
    /// the score difference they explain.
    pub completeness: Option<Completeness>,
}

/// Integrated gradients' completeness check: `attribution_sum` should equal
/// `logit_difference` (the target logit at the noisy copies, on average, minus at the
/// baseline) up to the Riemann sum's error.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completeness {
    pub attribution_sum: f64,
    pub logit_difference: f64,
}

/// The attribution of `target` for one normalised image `x` (`[3, h, w]` on the model's
/// device) by `params.method`. `baseline` (same shape) is integrated gradients' starting point.
/// `progress(done, total)` is called after each chunk of passes; `cancel` is checked before each.
pub fn attribution(
    model: &dyn Classifier,
    x: &Tensor,
    target: usize,
    params: &SaliencyParams,
    baseline: &Tensor,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
) -> Result<Attribution> {
    let values = match params.method {
        Method::Guided | Method::Vanilla => smoothgrad(model, x, target, params, progress, cancel)?,
        Method::IntegratedGradients => {
            return integrated_gradients(model, x, target, params, baseline, progress, cancel);
        }
        Method::GradCam => {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let cam = on_worker_thread(|| grad_cam(model, x, target))?;
            progress(1, 1);
            cam
        }
    };
    Ok(Attribution {
        values,
        completeness: None,
    })
}

/// The SmoothGrad-averaged input gradient `[3, h, w]` (on the CPU) for `target`, with the
/// ReLU backward of `params.method` (always the mean, whatever `params.reduction` says).
///
/// `x` is one normalised image `[3, h, w]` on the model's device. `progress(done, total)` is
/// called after each chunk; `cancel` is checked before each chunk.
pub fn input_gradient(
    model: &dyn Classifier,
    x: &Tensor,
    target: usize,
    params: &SaliencyParams,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
) -> Result<Tensor> {
    let mean = SaliencyParams {
        reduction: Reduction::Mean,
        ..params.clone()
    };
    smoothgrad(model, x, target, &mean, progress, cancel)
}

/// SmoothGrad's noise level for `x`: `noise` times the input's max - min range.
/// How every ReLU back-propagates for `method`: guided for guided backpropagation, else as
/// derived. (Decided here, where methods meet the model, so the parameter types stay free of
/// the kernels' types.)
pub fn relu_mode(method: Method) -> ReluMode {
    match method {
        Method::Guided => ReluMode::Guided,
        Method::Vanilla | Method::IntegratedGradients | Method::GradCam => ReluMode::Plain,
    }
}

fn noise_sigma(x: &[f32], params: &SaliencyParams) -> f32 {
    let (lo, hi) = x
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    params.noise * (hi - lo).max(0.0)
}

/// Noisy copy `i` of `x` (its own seeded stream, so copies fill in parallel) into `dst`.
fn noisy_copy(x: &[f32], sigma: f32, seed: u64, i: usize, dst: &mut [f32]) {
    let mut rng = Normal::new(seed, i as u64);
    for (d, &v) in dst.iter_mut().zip(x) {
        *d = if sigma > 0.0 {
            v + sigma * rng.sample()
        } else {
            v
        };
    }
}

/// The gradient of the target logit for each input of a batch `[b, c, h, w]`, with every ReLU
/// back-propagating per `mode`.
fn batch_gradient(
    model: &dyn Classifier,
    inputs: Tensor,
    target: usize,
    mode: ReluMode,
) -> Result<Tensor> {
    let input = Var::from_tensor(&inputs)?;
    let logits = model.forward(input.as_tensor(), mode)?;
    let score = logits.narrow(1, target, 1)?.sum_all()?;
    let grads = score.backward()?;
    grads
        .get(input.as_tensor())
        .cloned()
        .ok_or_else(|| Error::Numeric("the model's output does not depend on its input".into()))
}

/// Gradient methods: noisy copies' gradients combined per `params.reduction`.
fn smoothgrad(
    model: &dyn Classifier,
    x: &Tensor,
    target: usize,
    params: &SaliencyParams,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
) -> Result<Tensor> {
    let (c, h, w) = x.dims3()?;
    let n = params.samples.max(1);
    let chunk = params.batch(x.device(), (h, w)).min(n);
    let chunks = n.div_ceil(chunk);
    let flat: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let sigma = noise_sigma(&flat, params);
    let mode = relu_mode(params.method);
    let mut total: Option<Tensor> = None;
    for ci in 0..chunks {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let first = ci * chunk;
        let b = chunk.min(n - first);
        let mut batch = vec![0f32; b * flat.len()];
        batch
            .par_chunks_mut(flat.len())
            .enumerate()
            .for_each(|(i, dst)| noisy_copy(&flat, sigma, params.seed, first + i, dst));
        let inputs = Tensor::from_vec(batch, (b, c, h, w), x.device())?;
        let g = on_worker_thread(|| {
            let g = batch_gradient(model, inputs, target, mode)?;
            Ok::<_, Error>(match params.reduction {
                Reduction::Mean => g.sum(0)?,
                Reduction::Squared => g.sqr()?.sum(0)?,
            })
        })?;
        total = Some(match total {
            None => g,
            Some(t) => (t + g)?,
        });
        progress(ci + 1, chunks);
    }
    let mean = (total.expect("at least one chunk") / n as f64)?.to_device(&Device::Cpu)?;
    Ok(mean)
}

/// Integrated gradients from `baseline`, per noisy copy, combined per `params.reduction`.
fn integrated_gradients(
    model: &dyn Classifier,
    x: &Tensor,
    target: usize,
    params: &SaliencyParams,
    baseline: &Tensor,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
) -> Result<Attribution> {
    let (c, h, w) = x.dims3()?;
    if baseline.dims() != x.dims() {
        return Err(Error::Internal(format!(
            "the baseline has shape {:?}, the input {:?}",
            baseline.dims(),
            x.dims()
        )));
    }
    let size = c * h * w;
    let (n, m) = (params.samples.max(1), params.ig_steps.max(1));
    let flat: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let base: Vec<f32> = baseline.flatten_all()?.to_vec1()?;
    let sigma = noise_sigma(&flat, params);
    let copy = |i: usize| {
        let mut v = vec![0f32; size];
        noisy_copy(&flat, sigma, params.seed, i, &mut v);
        v
    };
    let points = n * m;
    let chunk = params.batch(x.device(), (h, w)).min(points);
    let chunks = points.div_ceil(chunk);
    // Point j is step k = j % m of copy i = j / m: rows of one copy are consecutive, so one
    // copy's path sum is open at a time.
    let (mut building, mut folding) = (LastCopy(None), LastCopy(None));
    let mut path_sum = vec![0f32; size];
    let mut total = vec![0f32; size];
    for ci in 0..chunks {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let first = ci * chunk;
        let b = chunk.min(points - first);
        let mut batch = vec![0f32; b * size];
        for (r, dst) in batch.chunks_exact_mut(size).enumerate() {
            let (i, k) = ((first + r) / m, (first + r) % m);
            let xi = building.get(i, &copy);
            let alpha = (k as f32 + 0.5) / m as f32;
            dst.par_iter_mut()
                .zip(xi.par_iter().zip(&base))
                .for_each(|(d, (&v, &b0))| *d = b0 + alpha * (v - b0));
        }
        let inputs = Tensor::from_vec(batch, (b, c, h, w), x.device())?;
        let g: Vec<f32> = on_worker_thread(|| {
            batch_gradient(model, inputs, target, ReluMode::Plain)?
                .flatten_all()?
                .to_vec1::<f32>()
                .map_err(Error::from)
        })?;
        for (r, gj) in g.chunks_exact(size).enumerate() {
            let (i, k) = ((first + r) / m, (first + r) % m);
            path_sum.iter_mut().zip(gj).for_each(|(s, v)| *s += v);
            if k + 1 < m {
                continue;
            }
            let xi = folding.get(i, &copy);
            for (((t, s), &v), &b0) in total.iter_mut().zip(&mut path_sum).zip(xi).zip(&base) {
                let a = (v - b0) * *s / m as f32;
                *t += match params.reduction {
                    Reduction::Mean => a,
                    Reduction::Squared => a * a,
                };
                *s = 0.0;
            }
        }
        progress(ci + 1, chunks);
    }
    total.iter_mut().for_each(|t| *t /= n as f32);
    let completeness = match params.reduction {
        Reduction::Mean => {
            let inputs = (0..n).map(copy).chain([base.clone()]);
            let logits = target_logits(model, inputs, (c, h, w), target, chunk, x.device())?;
            let (at_copies, at_base) = logits.split_at(n);
            Some(Completeness {
                attribution_sum: total.iter().map(|&v| v as f64).sum(),
                logit_difference: at_copies.iter().sum::<f64>() / n as f64 - at_base[0],
            })
        }
        Reduction::Squared => None,
    };
    Ok(Attribution {
        values: Tensor::from_vec(total, (c, h, w), &Device::Cpu)?,
        completeness,
    })
}

/// The noisy copy last asked for, kept until another is (copies are visited in order).
struct LastCopy(Option<(usize, Vec<f32>)>);

impl LastCopy {
    fn get(&mut self, i: usize, make: &dyn Fn(usize) -> Vec<f32>) -> &[f32] {
        if self.0.as_ref().is_none_or(|(j, _)| *j != i) {
            self.0 = Some((i, make(i)));
        }
        &self.0.as_ref().expect("just set").1
    }
}

/// The target logit of each input, forward passes only, `chunk` inputs at a time.
fn target_logits(
    model: &dyn Classifier,
    inputs: impl Iterator<Item = Vec<f32>>,
    (c, h, w): (usize, usize, usize),
    target: usize,
    chunk: usize,
    device: &Device,
) -> Result<Vec<f64>> {
    let inputs: Vec<Vec<f32>> = inputs.collect();
    let mut out = Vec::with_capacity(inputs.len());
    for group in inputs.chunks(chunk.max(1)) {
        let batch = Tensor::from_vec(group.concat(), (group.len(), c, h, w), device)?;
        let logits = on_worker_thread(|| model.forward(&batch, ReluMode::Plain))?;
        let t: Vec<f32> = logits.narrow(1, target, 1)?.flatten_all()?.to_vec1()?;
        out.extend(t.into_iter().map(f64::from));
    }
    Ok(out)
}

/// Grad-CAM `[1, h, w]` on the CPU: `relu(sum_c w_c A_c)` with `w_c` the spatial mean of the
/// target logit's gradient on channel `c` of the feature map `A`, upsampled to the input.
fn grad_cam(model: &dyn Classifier, x: &Tensor, target: usize) -> Result<Tensor> {
    let (_, h, w) = x.dims3()?;
    let input = x.to_device(model.device())?.unsqueeze(0)?;
    let pass = model.cam_pass(&input)?;
    let grads = pass.logits.narrow(1, target, 1)?.sum_all()?.backward()?;
    let g = grads.get(&pass.activation).ok_or_else(|| {
        Error::Numeric("the model's output does not depend on its feature map".into())
    })?;
    let (features, g) = (pass.grid.apply(&pass.activation)?, pass.grid.apply(g)?);
    let weights = g.mean_keepdim((2, 3))?;
    let cam = features
        .broadcast_mul(&weights)?
        .sum(1)?
        .relu()?
        .squeeze(0)?;
    let (fh, fw) = cam.dims2()?;
    let cam: Vec<f32> = cam.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let up = upsample_bilinear(&cam, (fh, fw), (h, w));
    Ok(Tensor::from_vec(up, (1, h, w), &Device::Cpu)?)
}

/// Bilinear resampling with half-pixel centres (PyTorch's `align_corners=False`): output pixel
/// `o` samples the input at `(o + 0.5) * in / out - 0.5`, clamped to the edge.
pub fn upsample_bilinear(
    src: &[f32],
    (sh, sw): (usize, usize),
    (dh, dw): (usize, usize),
) -> Vec<f32> {
    let taps = |out: usize, n: usize| -> Vec<(usize, usize, f32)> {
        (0..out)
            .map(|o| {
                let s = ((o as f32 + 0.5) * n as f32 / out as f32 - 0.5).max(0.0);
                let i0 = (s as usize).min(n - 1);
                let i1 = (i0 + 1).min(n - 1);
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let (ys, xs) = (taps(dh, sh), taps(dw, sw));
    let mut out = Vec::with_capacity(dh * dw);
    for &(y0, y1, ly) in &ys {
        for &(x0, x1, lx) in &xs {
            let at = |y: usize, x: usize| src[y * sw + x];
            let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
            let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
            out.push((1.0 - ly) * top + ly * bottom);
        }
    }
    out
}

/// Runs `f` on one of rayon's worker threads (the caller waits, asleep). The ops' parallel
/// loops run on rayon's workers; driven from any other thread, the graph's serial work (autograd
/// bookkeeping, small ops) competes for the cores with workers spinning between loops. On a
/// worker, the driver is one of them: no more busy threads than cores.
fn on_worker_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Reduces an attribution `[c, h, w]` to a map in [0, 1]: max over channels of |a|, divided
/// by the 99th percentile, clipped. An all-zero attribution gives an all-zero map.
pub fn saliency_map(attribution: &Tensor) -> Result<SaliencyMap> {
    let mut map = magnitude(attribution)?;
    let mut sorted = map.data.clone();
    sorted.sort_unstable_by(f32::total_cmp);
    let last = sorted.len() - 1;
    let p99 = sorted[(last as f32 * 0.99).round() as usize];
    let scale = if p99 > 0.0 { p99 } else { sorted[last] };
    if scale > 0.0 {
        map.data.iter_mut().for_each(|v| *v = (*v / scale).min(1.0));
    }
    Ok(map)
}

/// Max over channels of |a| per pixel, unscaled: the map before [`saliency_map`]'s
/// normalisation (rank statistics use it: clipping would tie the top pixels).
pub fn magnitude(attribution: &Tensor) -> Result<SaliencyMap> {
    let (c, h, w) = attribution.dims3()?;
    let g: Vec<f32> = attribution.flatten_all()?.to_vec1()?;
    if g.iter().any(|v| !v.is_finite()) {
        return Err(Error::Numeric(
            "the gradient contains NaN or infinite values".into(),
        ));
    }
    let plane = h * w;
    let data: Vec<f32> = (0..plane)
        .map(|i| (0..c).map(|ch| g[ch * plane + i].abs()).fold(0.0, f32::max))
        .collect();
    Ok(SaliencyMap {
        width: w,
        height: h,
        data,
    })
}
