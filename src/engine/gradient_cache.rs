//! Attributions kept between runs of one model, so that changing only mask parameters never
//! recomputes iterations whose input is unchanged (iteration 0 always is).
//!
//! What must hold: an entry is keyed by everything the attribution depends on except the model
//! (the exact input values, the target class, the saliency settings that change the result,
//! not the chunk size, which does not; and for integrated gradients the baseline's values).
//! The model is left out because the cache lives inside an
//! [`crate::engine::explainer::Explainer`] together with the one model it serves, so it can
//! never outlive that model or mix two.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;

use crate::engine::params::{Method, SaliencyParams};
use crate::engine::saliency::Attribution;
use crate::error::Result;

/// A small least-recently-used map from attribution keys to attributions. Shared between
/// threads.
#[derive(Debug, Default)]
pub(crate) struct GradientCache {
    entries: Mutex<Vec<(u64, Arc<Attribution>)>>,
}

impl GradientCache {
    const CAPACITY: usize = 32;

    pub(crate) fn key(
        x: &Tensor,
        target: usize,
        p: &SaliencyParams,
        baseline: &Tensor,
    ) -> Result<u64> {
        let mut h = DefaultHasher::new();
        let mut hash_values = |t: &Tensor| -> Result<()> {
            for v in t.flatten_all()?.to_vec1::<f32>()? {
                v.to_bits().hash(&mut h);
            }
            Ok(())
        };
        hash_values(x)?;
        if p.method == Method::IntegratedGradients {
            hash_values(baseline)?;
        }
        (target, p.method, p.samples, p.noise.to_bits(), p.seed).hash(&mut h);
        (p.reduction, p.ig_steps).hash(&mut h);
        Ok(h.finish())
    }

    pub(crate) fn get(&self, key: u64) -> Option<Arc<Attribution>> {
        let mut e = self.entries.lock().ok()?;
        let pos = e.iter().position(|(k, _)| *k == key)?;
        let hit = e.remove(pos);
        let t = hit.1.clone();
        e.push(hit);
        Some(t)
    }

    pub(crate) fn put(&self, key: u64, t: Arc<Attribution>) {
        if let Ok(mut e) = self.entries.lock() {
            e.retain(|(k, _)| *k != key);
            if e.len() >= Self::CAPACITY {
                e.remove(0);
            }
            e.push((key, t));
        }
    }
}
