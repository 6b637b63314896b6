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

use rayon::prelude::*;

use crate::engine::maps::{Mask, SaliencyMap};
use crate::engine::params::{MAX_KERNEL, MaskParams};

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
/// the image; counted as at most 11 x 11, see the module docs) is set. `kernel` is at most
/// [`MAX_KERNEL`] (larger values are treated as that).
///
/// One pass: running row sums into a u16 buffer, then a running sum of those down the
/// columns (a window holds at most 255 x 255 = 65,025 pixels, so u16 holds every sum), with
/// the threshold applied as each row of window sums is produced. Inner loops are contiguous and
/// vectorised; large images are split into horizontal bands, one per thread.
pub fn smooth(mask: &Mask, kernel: usize, passes: usize, threshold: f32) -> Mask {
    let (w, h) = (mask.width, mask.height);
    let mut cur: Vec<u8> = mask.data.iter().map(|&b| b as u8).collect();
    if passes > 0 && w > 0 && h > 0 {
        let rule = Rule::new(w, h, kernel.min(MAX_KERNEL) / 2, threshold);
        let mut rows = vec![0u16; w * h];
        let row_pass = |(dst, src): (&mut [u16], &[u8])| {
            for (d, s) in dst.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
                row_sums(s, d, rule.r);
            }
        };
        // Masks at the model's input size (the app's, redrawn on the UI thread while a run
        // may keep the thread pool busy) stay on the calling thread: 224 x 224 takes ~0.2 ms.
        if w * h < PARALLEL_PIXELS {
            for _ in 0..passes {
                row_pass((&mut rows, &cur));
                rule.threshold_band(&rows, 0, &mut cur);
            }
        } else {
            let band = h.div_ceil(rayon::current_num_threads().max(1)) * w;
            for _ in 0..passes {
                rows.par_chunks_mut(band)
                    .zip(cur.par_chunks(band))
                    .for_each(row_pass);
                cur.par_chunks_mut(band)
                    .enumerate()
                    .for_each(|(i, out)| rule.threshold_band(&rows, i * band / w, out));
            }
        }
    }
    Mask {
        width: w,
        height: h,
        data: cur.into_iter().map(|b| b != 0).collect(),
    }
}

/// Images from this size up are smoothed by all threads, in horizontal bands.
const PARALLEL_PIXELS: usize = 512 * 512;

/// Running sums of one row over a window of radius `r`, clipped to the row.
fn row_sums(src: &[u8], dst: &mut [u16], r: usize) {
    let w = src.len();
    let mut sum: u16 = src[..r.min(w)].iter().map(|&b| b as u16).sum();
    if w < 2 * r + 1 {
        for x in 0..w {
            if x + r < w {
                sum += src[x + r] as u16;
            }
            if x > r {
                sum -= src[x - r - 1] as u16;
            }
            dst[x] = sum;
        }
        return;
    }
    // Left edge, interior (add one, drop one, no branches), right edge.
    for x in 0..=r {
        sum += src[x + r] as u16;
        dst[x] = sum;
    }
    for ((d, &add), &sub) in dst[r + 1..w - r].iter_mut().zip(&src[2 * r + 1..]).zip(src) {
        sum = sum + add as u16 - sub as u16;
        *d = sum;
    }
    for x in w - r..w {
        sum -= src[x - r - 1] as u16;
        dst[x] = sum;
    }
}

/// The smoothing rule for one image size: window radius, and the number of set pixels a
/// window needs, by its (clipped) area.
struct Rule {
    w: usize,
    h: usize,
    r: usize,
    /// Window extent of each column (clipped to the image).
    span_x: Vec<u32>,
    /// `needed[a]`: set pixels needed in a window of area `a` (capped at 11 x 11). The
    /// comparison `count >= threshold * area` as integers: exact, the count is an integer.
    needed: Vec<u16>,
}

impl Rule {
    fn new(w: usize, h: usize, r: usize, threshold: f32) -> Self {
        let cap = REFERENCE_WINDOW * REFERENCE_WINDOW;
        Rule {
            w,
            h,
            r,
            span_x: (0..w).map(|x| span(x, w, r) as u32).collect(),
            needed: (0..=cap)
                .map(|a| (threshold * a as f32).ceil().clamp(0.0, u16::MAX as f32) as u16)
                .collect(),
        }
    }

    fn needed(&self, area: u32) -> u16 {
        self.needed[(area as usize).min(self.needed.len() - 1)]
    }

    /// Thresholds the window sums of the rows starting at `y0` into `out` (whole rows).
    fn threshold_band(&self, rows: &[u16], y0: usize, out: &mut [u8]) {
        let (w, h, r) = (self.w, self.h, self.r);
        let row = |y: usize| &rows[y * w..(y + 1) * w];
        let mut acc = vec![0u16; w];
        for y in y0.saturating_sub(r)..(y0 + r + 1).min(h) {
            add_row(&mut acc, row(y));
        }
        for (i, out_row) in out.chunks_exact_mut(w).enumerate() {
            let y = y0 + i;
            if i > 0 {
                if y + r < h {
                    add_row(&mut acc, row(y + r));
                }
                if y > r {
                    sub_row(&mut acc, row(y - r - 1));
                }
            }
            let span_y = span(y, h, r) as u32;
            // Columns whose window is whole need the same count: one vectorised comparison.
            let (lo, hi) = (r.min(w), w.saturating_sub(r).max(r.min(w)));
            let inner = self.needed((2 * r as u32 + 1) * span_y);
            at_least(&mut out_row[lo..hi], &acc[lo..hi], inner);
            for x in (0..lo).chain(hi..w) {
                out_row[x] = (acc[x] >= self.needed(self.span_x[x] * span_y)) as u8;
            }
        }
    }
}

/// Pixels in the window of radius `r` around `i`, along an axis of `n` pixels.
fn span(i: usize, n: usize, r: usize) -> usize {
    (i + r).min(n - 1) + 1 - i.saturating_sub(r)
}

fn add_row(acc: &mut [u16], row: &[u16]) {
    acc.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
}

fn sub_row(acc: &mut [u16], row: &[u16]) {
    acc.iter_mut().zip(row).for_each(|(a, &b)| *a -= b);
}

fn at_least(out: &mut [u8], acc: &[u16], needed: u16) {
    out.iter_mut()
        .zip(acc)
        .for_each(|(o, &a)| *o = (a >= needed) as u8);
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
