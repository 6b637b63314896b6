//! Input gradients kept between runs of one model, so that changing only mask parameters never
//! recomputes iterations whose input is unchanged (iteration 0 always is).
//!
//! What must hold: an entry is keyed by everything the gradient depends on except the model
//! (the exact input values, the target class, and the saliency settings that change the
//! result; not the chunk size, which does not). The model is left out because the cache lives
//! inside an [`crate::engine::explainer::Explainer`] together with the one model it serves, so
//! it can never outlive that model or mix two.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;

use crate::engine::params::SaliencyParams;
use crate::error::Result;

/// A small least-recently-used map from gradient keys to gradients. Shared between threads.
#[derive(Debug, Default)]
pub(crate) struct GradientCache {
    entries: Mutex<Vec<(u64, Arc<Tensor>)>>,
}

impl GradientCache {
    const CAPACITY: usize = 32;

    pub(crate) fn key(x: &Tensor, target: usize, p: &SaliencyParams) -> Result<u64> {
        let mut h = DefaultHasher::new();
        for v in x.flatten_all()?.to_vec1::<f32>()? {
            v.to_bits().hash(&mut h);
        }
        (target, p.method, p.samples, p.noise.to_bits(), p.seed).hash(&mut h);
        Ok(h.finish())
    }

    pub(crate) fn get(&self, key: u64) -> Option<Arc<Tensor>> {
        let mut e = self.entries.lock().ok()?;
        let pos = e.iter().position(|(k, _)| *k == key)?;
        let hit = e.remove(pos);
        let t = hit.1.clone();
        e.push(hit);
        Some(t)
    }

    pub(crate) fn put(&self, key: u64, t: Arc<Tensor>) {
        if let Ok(mut e) = self.entries.lock() {
            e.retain(|(k, _)| *k != key);
            if e.len() >= Self::CAPACITY {
                e.remove(0);
            }
            e.push((key, t));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}
