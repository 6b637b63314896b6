//! Saliency: the gradient of the target class's logit (pre-softmax) with respect to the input,
//! vanilla or guided, optionally averaged over noisy copies (SmoothGrad, Smilkov et al., 2017).
//!
//! The map is `max` over channels of `|gradient|` (Simonyan et al., 2014), divided by its 99th
//! percentile and clipped to [0, 1], so a handful of extreme pixels cannot wash out the rest.
//! Noise comes from a seeded generator per sample index, so the result does not depend on the
//! chunk size and the same settings always give the same map.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Tensor, Var};
use rayon::prelude::*;

use crate::engine::maps::SaliencyMap;
use crate::engine::models::Classifier;
use crate::engine::params::SaliencyParams;
use crate::error::{Error, Result};

/// The SmoothGrad-averaged input gradient `[3, h, w]` (on the CPU) for `target`.
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
    let (c, h, w) = x.dims3()?;
    let n = params.samples.max(1);
    let chunk = params.chunk.clamp(1, n);
    let chunks = n.div_ceil(chunk);
    let flat: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (lo, hi) = flat
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let sigma = params.noise * (hi - lo).max(0.0);
    let mode = params.method.relu_mode();
    let mut total: Option<Tensor> = None;
    for ci in 0..chunks {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let first = ci * chunk;
        let b = chunk.min(n - first);
        // One noise stream per sample (seeded by its index), so samples fill in parallel.
        let mut batch = vec![0f32; b * flat.len()];
        batch
            .par_chunks_mut(flat.len())
            .enumerate()
            .for_each(|(i, dst)| {
                let mut rng = Normal::new(params.seed, (first + i) as u64);
                for (d, &v) in dst.iter_mut().zip(&flat) {
                    *d = if sigma > 0.0 {
                        v + sigma * rng.sample()
                    } else {
                        v
                    };
                }
            });
        let input = Var::from_tensor(&Tensor::from_vec(batch, (b, c, h, w), x.device())?)?;
        let g = on_worker_thread(|| {
            let logits = model.forward(input.as_tensor(), mode)?;
            let score = logits.narrow(1, target, 1)?.sum_all()?;
            let grads = score.backward()?;
            let g = grads.get(input.as_tensor()).ok_or_else(|| {
                Error::Numeric("the model's output does not depend on its input".into())
            })?;
            Ok::<_, Error>(g.sum(0)?)
        })?;
        total = Some(match total {
            None => g,
            Some(t) => (t + g)?,
        });
        progress(ci + 1, chunks);
    }
    let mean =
        (total.expect("at least one chunk") / n as f64)?.to_device(&candle_core::Device::Cpu)?;
    Ok(mean)
}

/// Runs `f` on one of rayon's worker threads (the caller waits, asleep). The ops' parallel
/// loops run on rayon's workers; driven from any other thread, the graph's serial work (autograd
/// bookkeeping, small ops) competes for the cores with workers spinning between loops. On a
/// worker, the driver is one of them: no more busy threads than cores.
fn on_worker_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Reduces a gradient `[c, h, w]` to a map in [0, 1]: max over channels of |g|, divided by
/// the 99th percentile, clipped. An all-zero gradient gives an all-zero map.
pub fn saliency_map(gradient: &Tensor) -> Result<SaliencyMap> {
    let (c, h, w) = gradient.dims3()?;
    let g: Vec<f32> = gradient.flatten_all()?.to_vec1()?;
    if g.iter().any(|v| !v.is_finite()) {
        return Err(Error::Numeric(
            "the gradient contains NaN or infinite values".into(),
        ));
    }
    let plane = h * w;
    let mut data: Vec<f32> = (0..plane)
        .map(|i| (0..c).map(|ch| g[ch * plane + i].abs()).fold(0.0, f32::max))
        .collect();
    let mut sorted = data.clone();
    sorted.sort_unstable_by(f32::total_cmp);
    let p99 = sorted[((plane - 1) as f32 * 0.99).round() as usize];
    let scale = if p99 > 0.0 { p99 } else { sorted[plane - 1] };
    if scale > 0.0 {
        data.iter_mut().for_each(|v| *v = (*v / scale).min(1.0));
    }
    Ok(SaliencyMap {
        width: w,
        height: h,
        data,
    })
}

/// Standard normal samples from SplitMix64 + Box-Muller: tiny, seeded and identical on every
/// platform (the noise must not depend on a crate's version).
pub(crate) struct Normal {
    state: u64,
    spare: Option<f32>,
}

impl Normal {
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        Normal {
            state: seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17),
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn sample(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        self.spare = Some((r * t.sin()) as f32);
        (r * t.cos()) as f32
    }
}
