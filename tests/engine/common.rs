//! Shared helpers: fixtures, the bundled model, small numeric utilities.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor, Var};
use unveil::engine::models::{self, Classifier, DEFAULT_MODEL};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;

/// A file of the repository: the checkout this binary was built in, or `$UNVEIL_REPO` (a test
/// binary built here and run on another machine, as `scripts/bench/gpu_check.sh` does).
pub(crate) fn repo(path: &str) -> PathBuf {
    std::env::var_os("UNVEIL_REPO")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join(path)
}

/// The bundled model with the fast ops, loaded once per test binary.
pub(crate) fn lite0() -> Arc<dyn Classifier> {
    static MODEL: OnceLock<Arc<dyn Classifier>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            models::load(DEFAULT_MODEL, &Device::Cpu, Backend::Fast).expect("bundled model loads")
        })
        .clone()
}

/// Tensors of a safetensors fixture under tests/fixtures.
pub(crate) fn fixture(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(repo(&format!("tests/fixtures/{name}")), &Device::Cpu)
        .expect("fixture loads")
}

pub(crate) fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Deterministic pseudo-random values in [-scale, scale].
pub(crate) fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Input gradient of logit `target` of a batch of one, ReLUs back-propagating per `mode`.
pub(crate) fn logit_gradient(
    model: &dyn Classifier,
    x: &Tensor,
    target: usize,
    mode: ReluMode,
) -> Vec<f32> {
    let v = Var::from_tensor(x).unwrap();
    let logits = model.forward(v.as_tensor(), mode).unwrap();
    let grads = logits
        .narrow(1, target, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    to_vec(grads.get(v.as_tensor()).unwrap())
}
