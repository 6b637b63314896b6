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
//! Forward passes only, batched.

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

/// Inputs per forward pass while tracing a curve.
const BATCH: usize = 11;

/// One iteration's deletion and insertion curves, p(target) at each of the 33 points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    pub deletion_auc: f64,
    pub insertion_auc: f64,
    pub deletion_curve: Vec<f32>,
    pub insertion_curve: Vec<f32>,
}

/// p(target) with a region visible only, and with it hidden, and the region's area.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionTest {
    /// Fraction of the image.
    pub area: f32,
    /// Only the region visible, everything else filled.
    pub only_p: f32,
    /// The region filled.
    pub hidden_p: f32,
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

/// Pixel indices by descending saliency, ties by index.
fn order(s: &SaliencyMap) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..s.data.len()).collect();
    idx.sort_by(|&a, &b| s.data[b].total_cmp(&s.data[a]).then(a.cmp(&b)));
    idx
}

/// p(target) of each image of `images` (each `[c, h, w]` flattened), `BATCH` per pass.
fn probabilities(
    model: &dyn Classifier,
    images: &[Vec<f32>],
    dims: (usize, usize, usize),
    target: usize,
    cancel: &AtomicBool,
) -> Result<Vec<f32>> {
    let (c, h, w) = dims;
    let mut out = Vec::with_capacity(images.len());
    for group in images.chunks(BATCH) {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let batch = Tensor::from_vec(group.concat(), (group.len(), c, h, w), model.device())?;
        out.extend(
            classify_batch(model, &batch)?
                .into_iter()
                .map(|p| p[target]),
        );
    }
    Ok(out)
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
    curves_in_order(
        model,
        input,
        &order(saliency),
        fill,
        blurred,
        target,
        cancel,
    )
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
    let dims = input.dims3()?;
    let x: Vec<f32> = input.flatten_all()?.to_vec1()?;
    let plane = dims.1 * dims.2;
    if order.len() != plane || fill.len() != x.len() || blurred.len() != x.len() {
        return Err(Error::Internal("faithfulness: sizes differ".into()));
    }
    // Image k takes `from` at the first k * n / 32 pixels in saliency order, `base` elsewhere.
    let trace = |base: &[f32], from: &[f32]| -> Result<Vec<f32>> {
        let images: Vec<Vec<f32>> = (0..=STEPS)
            .map(|k| {
                let mut img = base.to_vec();
                for &p in &order[..k * plane / STEPS] {
                    for ch in 0..dims.0 {
                        img[ch * plane + p] = from[ch * plane + p];
                    }
                }
                img
            })
            .collect();
        probabilities(model, &images, dims, target, cancel)
    };
    let deletion = trace(&x, fill)?;
    let insertion = trace(blurred, &x)?;
    Ok(Curves {
        deletion_auc: auc(&deletion),
        insertion_auc: auc(&insertion),
        deletion_curve: deletion,
        insertion_curve: insertion,
    })
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

/// p(target) with only `region` visible (the rest `fill`) and with `region` filled, for the
/// original input `x` (`[c, h, w]` flattened).
pub fn region_test(
    model: &dyn Classifier,
    x: &[f32],
    fill: &[f32],
    region: &Mask,
    dims: (usize, usize, usize),
    target: usize,
    cancel: &AtomicBool,
) -> Result<RegionTest> {
    let plane = dims.1 * dims.2;
    let pick = |keep_original: &dyn Fn(usize) -> bool| -> Vec<f32> {
        (0..x.len())
            .map(|i| {
                if keep_original(i % plane) {
                    x[i]
                } else {
                    fill[i]
                }
            })
            .collect()
    };
    let only = pick(&|p| region.data[p]);
    let hidden = pick(&|p| !region.data[p]);
    let p = probabilities(model, &[only, hidden], dims, target, cancel)?;
    Ok(RegionTest {
        area: region.coverage(),
        only_p: p[0],
        hidden_p: p[1],
    })
}

/// Both region tests for a finished run: the union of its masks against iteration 0's map
/// alone.
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
    let dims = x.dims3()?;
    let xv: Vec<f32> = x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let single = same_area_region(first, params, union.count());
    let unveiled = region_test(model, &xv, fill, union, dims, target, cancel)?;
    let single_map = region_test(model, &xv, fill, &single, dims, target, cancel)?;
    Ok(Unveiling {
        unveiled_area: unveiled.area,
        unveiled_only_p: unveiled.only_p,
        unveiled_hidden_p: unveiled.hidden_p,
        single_map_area: single_map.area,
        single_map_only_p: single_map.only_p,
        single_map_hidden_p: single_map.hidden_p,
    })
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
