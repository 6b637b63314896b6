//! Faithfulness: does hiding what a map calls important change the model's mind?
//!
//! - **Deletion / insertion** (Petsiuk et al., 2018, the RISE protocol), per iteration: the
//!   pixels in descending saliency order (ties: lower index first) are, in 32 equal steps of
//!   the pixel count (step k covers the first `k * n / 32`), replaced by the run's fill in the
//!   model-input tensor (deletion), or put back into a blur of the model input (insertion).
//!   The AUC is the trapezoid rule's mean over the 33 values of p(target), in [0, 1]. A
//!   faithful map has a low deletion AUC (p falls fast) and a high insertion AUC.
//! - **Unveiling against one map**, per run: p(target) with only the unveiled union visible
//!   (everything else filled) and with it hidden, beside the same numbers for a region of the
//!   same area taken from iteration 0's map alone and smoothed the same way (scattered top
//!   pixels would wreck an image for reasons that have nothing to do with evidence).
//!
//! Forward passes only, batched, through [`Probe`]: no point the run already knows is
//! computed again. The loop traces an iteration's curves once it has stopped, so they never
//! hold back the next iteration's display.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::engine::maps::{Mask, SaliencyMap};
use crate::engine::mask;
use crate::engine::models::Classifier;
use crate::engine::params::MaskParams;
use crate::engine::predict::classify_batch;
use crate::error::{Error, Result};

/// Steps of the deletion and insertion curves (33 points, from nothing to everything).
pub const STEPS: usize = 32;

/// Inputs per forward pass on the CPU. Measured on 2 cores (EfficientNet-Lite0, 224 x 224,
/// forward only): the time per image falls from a batch of 1 to about 4-8 and rises past 11
/// (each layer's output for the whole batch leaves the cache); 7 divides the 63 images a
/// curve pair needs into full batches.
const CPU_BATCH: usize = 7;

/// Inputs per forward pass on `device`: on a GPU as many as a gradient pass would take (a
/// forward-only pass keeps no activations, so they fit), at least the CPU's.
fn batch_on(device: &Device, hw: (usize, usize)) -> usize {
    if device.is_cpu() {
        CPU_BATCH
    } else {
        crate::engine::device::batch_size(device, hw).max(CPU_BATCH)
    }
}

/// One iteration's deletion and insertion curves, p(target) at each of the 33 points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    pub deletion_auc: f64,
    pub insertion_auc: f64,
    pub deletion_curve: Vec<f32>,
    pub insertion_curve: Vec<f32>,
}

/// The unveiled union against a region of the same area from iteration 0's map alone.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unveiling {
    /// Share of the image the union of the run's masks covers.
    pub unveiled_area: f32,
    /// p(target) with only the union visible (the rest filled) / with the union filled.
    pub unveiled_only_p: f32,
    pub unveiled_hidden_p: f32,
    /// The same for the region of iteration 0's map with the closest area.
    pub single_map_area: f32,
    pub single_map_only_p: f32,
    pub single_map_hidden_p: f32,
}

/// Mean of the trapezoid rule over equally spaced values: the area under the curve on [0, 1].
pub fn auc(values: &[f32]) -> f64 {
    let n = values.len().saturating_sub(1).max(1) as f64;
    values
        .windows(2)
        .map(|w| (w[0] as f64 + w[1] as f64) / 2.0)
        .sum::<f64>()
        / n
}

/// Pixel indices by descending saliency, ties by index: the order of the curves.
pub fn order(s: &SaliencyMap) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..s.data.len()).collect();
    idx.sort_by(|&a, &b| s.data[b].total_cmp(&s.data[a]).then(a.cmp(&b)));
    idx
}

/// Forward passes for one run's faithfulness measures, on one model and one fill.
///
/// Each point the run already knows is taken, not recomputed: p(target) of an iteration's
/// own input (the first point of its deletion curve and the last of its insertion curve, which
/// the loop classified), of the fill image (the last deletion point of every iteration: every
/// pixel replaced, the same image each time), and of the input with the union hidden (the loop's
/// final classification). The rest goes through the model in batches of [`batch_on`] images,
/// built just before their pass and dropped after it; the inputs are plain tensors, so candle
/// records no graph and the layers free each activation after its last use.
pub struct Probe<'a> {
    model: &'a dyn Classifier,
    fill: &'a [f32],
    target: usize,
    cancel: &'a AtomicBool,
    /// p(target) of the fill image, once known.
    p_fill: Option<f32>,
}

/// An image to classify: `base` with `from` at the first `count` pixels of `order`, or with
/// `from` at the pixels of a region.
enum Recipe<'r> {
    Prefix {
        base: &'r [f32],
        from: &'r [f32],
        order: &'r [usize],
        count: usize,
    },
    Region {
        region: &'r Mask,
        /// The region shows `x` (the rest the fill), or the region is filled.
        only: bool,
    },
}

impl<'a> Probe<'a> {
    /// `fill`: the run's fill, `[c, h, w]` flattened.
    pub fn new(
        model: &'a dyn Classifier,
        fill: &'a [f32],
        target: usize,
        cancel: &'a AtomicBool,
    ) -> Self {
        Probe {
            model,
            fill,
            target,
            cancel,
            p_fill: None,
        }
    }

    /// The deletion and insertion curves of `input` (`[c, h, w]`) for pixels in `order` (most
    /// important first), with `blurred` (a blur of `input`) as the insertion's start and
    /// `p_input` the model's p(target) for `input` when the caller has it.
    pub fn curves(
        &mut self,
        input: &Tensor,
        order: &[usize],
        blurred: &[f32],
        p_input: Option<f32>,
    ) -> Result<Curves> {
        let dims = input.dims3()?;
        let x: Vec<f32> = input.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        let plane = dims.1 * dims.2;
        if order.len() != plane || self.fill.len() != x.len() || blurred.len() != x.len() {
            return Err(Error::Internal("faithfulness: sizes differ".into()));
        }
        // Point k takes `from` at the first k * n / 32 pixels in order, `base` elsewhere.
        let count = |k: usize| k * plane / STEPS;
        let mut deletion: Vec<Option<f32>> = vec![None; STEPS + 1];
        let mut insertion: Vec<Option<f32>> = vec![None; STEPS + 1];
        deletion[0] = p_input;
        deletion[STEPS] = self.p_fill;
        insertion[STEPS] = p_input;
        let mut wanted = Vec::new();
        let mut recipes = Vec::new();
        for (curve, values, base, from) in [
            (0, &deletion, &x[..], self.fill),
            (1, &insertion, blurred, &x[..]),
        ] {
            for (k, v) in values.iter().enumerate() {
                if v.is_none() {
                    wanted.push((curve, k));
                    recipes.push(Recipe::Prefix {
                        base,
                        from,
                        order,
                        count: count(k),
                    });
                }
            }
        }
        let p = self.probabilities(&x, dims, &recipes)?;
        for ((curve, k), p) in wanted.into_iter().zip(p) {
            if curve == 0 {
                deletion[k] = Some(p);
            } else {
                insertion[k] = Some(p);
            }
        }
        self.p_fill = deletion[STEPS];
        let done = |v: Vec<Option<f32>>| -> Result<Vec<f32>> {
            v.into_iter()
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| Error::Internal("faithfulness: a point was not measured".into()))
        };
        let (deletion, insertion) = (done(deletion)?, done(insertion)?);
        Ok(Curves {
            deletion_auc: auc(&deletion),
            insertion_auc: auc(&insertion),
            deletion_curve: deletion,
            insertion_curve: insertion,
        })
    }

    /// Both region tests for a finished run on its original input `x` (`[c, h, w]`): the union
    /// of its masks against the region of iteration 0's map with the closest area (smoothed
    /// with `params`). `p_union_hidden`: p(target) of `x` with the union filled, when known.
    pub fn unveiling(
        &mut self,
        x: &Tensor,
        first: &SaliencyMap,
        union: &Mask,
        params: &MaskParams,
        p_union_hidden: Option<f32>,
    ) -> Result<Unveiling> {
        let dims = x.dims3()?;
        let xv: Vec<f32> = x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        if self.fill.len() != xv.len() || union.data.len() != dims.1 * dims.2 {
            return Err(Error::Internal("faithfulness: sizes differ".into()));
        }
        let single = same_area_region(first, params, union.count());
        let region = |region, only| Recipe::Region { region, only };
        let mut recipes = vec![
            region(union, true),
            region(&single, true),
            region(&single, false),
        ];
        if p_union_hidden.is_none() {
            recipes.push(region(union, false));
        }
        let p = self.probabilities(&xv, dims, &recipes)?;
        Ok(Unveiling {
            unveiled_area: union.coverage(),
            unveiled_only_p: p[0],
            unveiled_hidden_p: p_union_hidden.unwrap_or_else(|| p[3]),
            single_map_area: single.coverage(),
            single_map_only_p: p[1],
            single_map_hidden_p: p[2],
        })
    }

    /// p(target) of the image of each recipe (`x`: the original input), in batches.
    fn probabilities(
        &self,
        x: &[f32],
        dims: (usize, usize, usize),
        recipes: &[Recipe],
    ) -> Result<Vec<f32>> {
        let (c, h, w) = dims;
        let (size, plane) = (x.len(), h * w);
        let device = self.model.device();
        let mut out = Vec::with_capacity(recipes.len());
        for group in recipes.chunks(batch_on(device, (h, w))) {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let mut data = vec![0.0f32; group.len() * size];
            for (img, recipe) in data.chunks_exact_mut(size).zip(group) {
                match *recipe {
                    Recipe::Prefix {
                        base,
                        from,
                        order,
                        count,
                    } => {
                        img.copy_from_slice(base);
                        for &p in &order[..count] {
                            for ch in 0..c {
                                img[ch * plane + p] = from[ch * plane + p];
                            }
                        }
                    }
                    Recipe::Region { region, only } => {
                        for (i, v) in img.iter_mut().enumerate() {
                            let keep = region.data[i % plane] == only;
                            *v = if keep { x[i] } else { self.fill[i] };
                        }
                    }
                }
            }
            let batch = Tensor::from_vec(data, (group.len(), c, h, w), device)?;
            out.extend(
                classify_batch(self.model, &batch)?
                    .into_iter()
                    .map(|p| p[self.target]),
            );
        }
        Ok(out)
    }
}

/// Pixels in the order a run unveiled them: iteration 0's region first, then each later
/// iteration's new pixels, each region by its own iteration's saliency (ties by index), then
/// every pixel never unveiled, by iteration 0's saliency. `maps[i]` and `unions[i]` are
/// iteration i's saliency map and union of masks 0..=i.
pub fn unveiling_order(maps: &[&SaliencyMap], unions: &[&Mask]) -> Vec<usize> {
    let n = maps.first().map_or(0, |m| m.data.len());
    // (iteration that unveiled the pixel, that iteration's saliency there).
    let key = |p: usize| match unions.iter().position(|u| u.data[p]) {
        Some(r) => (r, maps[r].data[p]),
        None => (unions.len(), maps[0].data[p]),
    };
    let keys: Vec<(usize, f32)> = (0..n).map(key).collect();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| {
        keys[a]
            .0
            .cmp(&keys[b].0)
            .then(keys[b].1.total_cmp(&keys[a].1))
            .then(a.cmp(&b))
    });
    idx
}

/// The deletion and insertion curves of `input` (`[c, h, w]`) under `saliency`, with `fill`
/// (the run's fill) and `blurred` (a blur of `input`), both the input's size.
pub fn curves(
    model: &dyn Classifier,
    input: &Tensor,
    saliency: &SaliencyMap,
    fill: &[f32],
    blurred: &[f32],
    target: usize,
    cancel: &AtomicBool,
) -> Result<Curves> {
    Probe::new(model, fill, target, cancel).curves(input, &order(saliency), blurred, None)
}

/// [`curves`] for pixels in a given order (most important first).
pub fn curves_in_order(
    model: &dyn Classifier,
    input: &Tensor,
    order: &[usize],
    fill: &[f32],
    blurred: &[f32],
    target: usize,
    cancel: &AtomicBool,
) -> Result<Curves> {
    Probe::new(model, fill, target, cancel).curves(input, order, blurred, None)
}

/// The region of iteration 0's map whose area is closest to `area` pixels, smoothed with
/// `params` (only the seed fraction changes). Masks only grow with the seed fraction, so a
/// bisection finds it.
pub fn same_area_region(first: &SaliencyMap, params: &MaskParams, area: usize) -> Mask {
    let make = |keep: f32| {
        mask::make_mask(
            first,
            &MaskParams {
                keep,
                ..params.clone()
            },
        )
    };
    let (mut lo, mut hi) = (0.0f32, 1.0f32);
    let mut best = make(hi);
    for _ in 0..24 {
        let mid = (lo + hi) / 2.0;
        let m = make(mid.max(f32::MIN_POSITIVE));
        if m.count().abs_diff(area) < best.count().abs_diff(area) {
            best = m.clone();
        }
        if m.count() < area {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    best
}

/// Both region tests for a finished run: the union of its masks against iteration 0's map
/// alone (see [`Probe::unveiling`]).
#[allow(clippy::too_many_arguments)]
pub fn unveiling(
    model: &dyn Classifier,
    x: &Tensor,
    fill: &[f32],
    first: &SaliencyMap,
    union: &Mask,
    params: &MaskParams,
    target: usize,
    cancel: &AtomicBool,
) -> Result<Unveiling> {
    Probe::new(model, fill, target, cancel).unveiling(x, first, union, params, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_the_trapezoid_mean() {
        assert_eq!(auc(&[1.0, 1.0, 1.0]), 1.0);
        assert_eq!(auc(&[1.0, 0.0]), 0.5);
        assert!((auc(&[0.0, 1.0, 1.0]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn unveiling_order_goes_region_by_region() {
        let map = |data: Vec<f32>| SaliencyMap {
            width: 4,
            height: 1,
            data,
        };
        let mask = |data: Vec<bool>| Mask {
            width: 4,
            height: 1,
            data,
        };
        let (m0, m1) = (map(vec![0.1, 0.9, 0.5, 0.3]), map(vec![0.0, 0.0, 0.2, 0.8]));
        let (u0, u1) = (
            mask(vec![false, true, false, false]),
            mask(vec![false, true, true, true]),
        );
        // Pixel 1 (iteration 0), then 3 and 2 by iteration 1's map, then 0.
        assert_eq!(unveiling_order(&[&m0, &m1], &[&u0, &u1]), [1, 3, 2, 0]);
    }

    #[test]
    fn ties_are_taken_by_index() {
        let s = SaliencyMap {
            width: 4,
            height: 1,
            data: vec![0.5, 1.0, 0.5, 0.0],
        };
        assert_eq!(order(&s), [1, 0, 2, 3]);
    }
}
