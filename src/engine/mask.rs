//! Mask smoothing as in the paper: binarise the saliency map, then repeat "mean over a k x k
//! window of ones, then threshold".
//!
//! The rule: a pixel is in the mask after a pass when at least `threshold` of its k x k window
//! is, where windows larger than the paper's 11 x 11 never need more set pixels than an
//! 11 x 11 window does (`threshold * 121`). Why the cap: with a pure fraction, a window much
//! larger than a salient blob dilutes it below the threshold and the mask *shrinks*, then
//! vanishes, as k grows (on the bundled cat photo: gone at k = 101). With the cap, the count of
//! set pixels in a window only grows with k, so for k >= 11 a larger window never gives a
//! smaller mask, and below 11 the plain fraction keeps small-k masks tight.
//!
//! What must hold: `passes == 0` returns the binary map unchanged; with a threshold below 0.5 a
//! filled region grows by about `k * (1/2 - threshold)` pixels per pass, so larger k and more
//! passes give larger, smoother masks, while a speck much smaller than the window disappears.
//! Window sums use running sums, so the work per pixel does not depend on k. Near the border
//! the window is clipped to the image, so borders neither grow nor shrink masks by themselves.

use crate::engine::params::MaskParams;
use crate::engine::saliency::SaliencyMap;

/// A binary mask, row-major, `true` = masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub data: Vec<bool>,
}

impl Mask {
    pub fn empty(width: usize, height: usize) -> Self {
        Mask {
            width,
            height,
            data: vec![false; width * height],
        }
    }

    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&b| b).count()
    }

    /// Fraction of the image covered, in [0, 1].
    pub fn coverage(&self) -> f32 {
        self.count() as f32 / self.data.len().max(1) as f32
    }

    /// Combines two masks of the same size pixel by pixel.
    fn zip_with(&self, other: &Mask, f: impl Fn(bool, bool) -> bool) -> Mask {
        assert_eq!((self.width, self.height), (other.width, other.height));
        Mask {
            width: self.width,
            height: self.height,
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(a, b)| f(*a, *b))
                .collect(),
        }
    }

    /// Pixel-wise OR.
    pub fn union(&self, other: &Mask) -> Mask {
        self.zip_with(other, |a, b| a || b)
    }

    /// Pixels set in `self` but not in `other`.
    pub fn minus(&self, other: &Mask) -> Mask {
        self.zip_with(other, |a, b| a && !b)
    }

    /// True where `self` has a pixel that `other` lacks.
    pub fn adds_to(&self, other: &Mask) -> bool {
        self.data.iter().zip(&other.data).any(|(a, b)| *a && !*b)
    }
}

/// Keeps the `keep` fraction of pixels with the highest saliency (ties included), never a
/// pixel whose saliency is zero.
pub fn binarize(s: &SaliencyMap, keep: f32) -> Mask {
    let n = s.data.len();
    let mut sorted: Vec<f32> = s.data.clone();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let k = ((keep.clamp(0.0, 1.0) * n as f32).ceil() as usize).clamp(1, n.max(1));
    let cut = sorted.get(k - 1).copied().unwrap_or(f32::INFINITY);
    Mask {
        width: s.width,
        height: s.height,
        data: s.data.iter().map(|&v| v > 0.0 && v >= cut).collect(),
    }
}

/// The paper's window side: larger windows need no more set pixels than this one.
pub const REFERENCE_WINDOW: usize = 11;

/// `passes` times: a pixel is set when at least `threshold` of its k x k window (clipped to
/// the image; counted as at most 11 x 11, see the module docs) is set.
///
/// One pass reads the mask once and writes it once: row sums go to a u16 buffer (a window
/// holds at most 255 x 255 pixels, so sums fit), the column sums are kept in one running row,
/// and the threshold is applied as that row is produced. The window area is separable
/// (`span_x * span_y`), so the required count comes from a 122-entry table.
pub fn smooth(mask: &Mask, kernel: usize, passes: usize, threshold: f32) -> Mask {
    let (w, h, r) = (mask.width, mask.height, kernel / 2);
    let mut cur: Vec<u8> = mask.data.iter().map(|&b| b as u8).collect();
    if passes > 0 && w > 0 && h > 0 {
        let span = |i: usize, n: usize| ((i + r).min(n - 1) + 1 - i.saturating_sub(r)) as u32;
        let (sx, sy): (Vec<u32>, Vec<u32>) = (
            (0..w).map(|x| span(x, w)).collect(),
            (0..h).map(|y| span(y, h)).collect(),
        );
        let cap = (REFERENCE_WINDOW * REFERENCE_WINDOW) as u32;
        // `count >= threshold * area` as an integer comparison (exact: the count is an integer).
        let needed: Vec<u32> = (0..=cap)
            .map(|a| (threshold * a as f32).ceil() as u32)
            .collect();
        let mut rows = vec![0u16; w * h];
        let mut acc = vec![0u32; w];
        for _ in 0..passes {
            for (src, dst) in cur.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
                let mut sum = src[..r.min(w)].iter().map(|&b| b as u16).sum::<u16>();
                for x in 0..w {
                    if x + r < w {
                        sum += src[x + r] as u16;
                    }
                    if x > r {
                        sum -= src[x - r - 1] as u16;
                    }
                    dst[x] = sum;
                }
            }
            acc.fill(0);
            for row in rows.chunks_exact(w).take(r.min(h)) {
                acc.iter_mut().zip(row).for_each(|(a, &b)| *a += b as u32);
            }
            for y in 0..h {
                if y + r < h {
                    acc.iter_mut()
                        .zip(&rows[(y + r) * w..(y + r + 1) * w])
                        .for_each(|(a, &b)| *a += b as u32);
                }
                if y > r {
                    acc.iter_mut()
                        .zip(&rows[(y - r - 1) * w..(y - r) * w])
                        .for_each(|(a, &b)| *a -= b as u32);
                }
                let out = &mut cur[y * w..(y + 1) * w];
                for ((o, &c), &spx) in out.iter_mut().zip(&acc).zip(&sx) {
                    *o = (c >= needed[(spx * sy[y]).min(cap) as usize]) as u8;
                }
            }
        }
    }
    Mask {
        width: w,
        height: h,
        data: cur.into_iter().map(|b| b != 0).collect(),
    }
}

/// Binarise then smooth, with `params`.
pub fn make_mask(s: &SaliencyMap, params: &MaskParams) -> Mask {
    smooth(
        &binarize(s, params.keep),
        params.kernel,
        params.passes,
        params.threshold,
    )
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
pub fn blur_plane(v: &[f32], w: usize, h: usize, r: usize, passes: usize) -> Vec<f32> {
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
