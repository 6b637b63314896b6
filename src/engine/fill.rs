//! What hidden pixels become: the image with a mask's pixels replaced by a fill (the dataset's
//! mean colour, black, or a heavy blur of the image itself).
//!
//! The fill is computed once per image, in the model's normalised input space, so applying a
//! mask is a per-pixel choice between two buffers; every iteration of a run, and the app's
//! instant redraw of iteration 0, fill the same way.

use candle_core::{Device, Tensor};

use crate::engine::maps::Mask;
use crate::engine::models::ModelInfo;
use crate::engine::params::FillMode;
use crate::error::Result;

/// The image with masked pixels replaced per `fill`. Works on the CPU.
pub(super) struct Filler {
    original: Vec<f32>,
    fill: Vec<f32>,
    shape: (usize, usize, usize),
}

impl Filler {
    /// For the normalised image `x` (`[c, h, w]`) of a model described by `info`.
    pub(super) fn new(info: &ModelInfo, x: &Tensor, mode: FillMode) -> Result<Self> {
        let (c, h, w) = x.dims3()?;
        let original: Vec<f32> = x.flatten_all()?.to_vec1()?;
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
                    .flat_map(|ch| blur_plane(&original[ch * plane..(ch + 1) * plane], w, h, r, 3))
                    .collect()
            }
        };
        Ok(Filler {
            original,
            fill,
            shape: (c, h, w),
        })
    }

    /// The fill itself: the image with every pixel hidden, `[c, h, w]` on `device` (integrated
    /// gradients' baseline).
    pub(super) fn baseline(&self, device: &Device) -> Result<Tensor> {
        let (c, h, w) = self.shape;
        Ok(Tensor::from_vec(self.fill.clone(), (c, h, w), device)?)
    }

    /// The fill's values, `[c, h, w]` flattened.
    pub(super) fn fill_values(&self) -> &[f32] {
        &self.fill
    }

    /// The image with `m` filled, `[c, h, w]` on `device`.
    pub(super) fn apply(&self, m: &Mask, device: &Device) -> Result<Tensor> {
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

/// Sums of `v` over the (2r+1) x (2r+1) window around each pixel, clipped to the image.
/// Running sums along rows, then down the columns a whole row at a time (contiguous memory,
/// vectorisable): O(1) work per pixel for any r.
fn box_sum<T>(v: &[T], w: usize, h: usize, r: usize, out: &mut [T])
where
    T: Copy + Default + std::ops::AddAssign + std::ops::SubAssign,
{
    let mut rows = vec![T::default(); v.len()];
    for (src, dst) in v.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
        running_window(src, 1, w, r, dst, 1);
    }
    let mut acc = vec![T::default(); w];
    for row in rows.chunks_exact(w).take(r.min(h)) {
        acc.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
    }
    for y in 0..h {
        if y + r < h {
            acc.iter_mut()
                .zip(&rows[(y + r) * w..(y + r + 1) * w])
                .for_each(|(a, &b)| *a += b);
        }
        if y > r {
            acc.iter_mut()
                .zip(&rows[(y - r - 1) * w..(y - r) * w])
                .for_each(|(a, &b)| *a -= b);
        }
        out[y * w..(y + 1) * w].copy_from_slice(&acc);
    }
}

/// Sliding-window sum along one line of `n` elements spaced `stride` apart.
fn running_window<T>(src: &[T], stride: usize, n: usize, r: usize, dst: &mut [T], dst_stride: usize)
where
    T: Copy + Default + std::ops::AddAssign + std::ops::SubAssign,
{
    let mut acc = T::default();
    for i in 0..r.min(n) {
        acc += src[i * stride];
    }
    for i in 0..n {
        if i + r < n {
            acc += src[(i + r) * stride];
        }
        if i > r {
            acc -= src[(i - r - 1) * stride];
        }
        dst[i * dst_stride] = acc;
    }
}

/// Number of in-image pixels in each pixel's window.
fn window_areas(w: usize, h: usize, r: usize, out: &mut [u32]) {
    let span = |i: usize, n: usize| (i + r).min(n - 1) + 1 - i.saturating_sub(r);
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (span(x, w) * span(y, h)) as u32;
        }
    }
}

/// Box blur of one f32 plane (window 2r+1, repeated `passes` times: close to a Gaussian).
fn blur_plane(v: &[f32], w: usize, h: usize, r: usize, passes: usize) -> Vec<f32> {
    let mut areas = vec![0u32; v.len()];
    window_areas(w, h, r, &mut areas);
    let mut cur: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    let mut sums = vec![0f64; v.len()];
    for _ in 0..passes {
        box_sum(&cur, w, h, r, &mut sums);
        for ((c, s), a) in cur.iter_mut().zip(&sums).zip(&areas) {
            *c = s / *a as f64;
        }
    }
    cur.into_iter().map(|x| x as f32).collect()
}
