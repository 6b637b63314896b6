//! Convolution geometry shared by the ops: zero padding, output sizes, and the patch matrix
//! (im2col) with its adjoint (col2im).
//!
//! What must hold: `col2im` is the exact adjoint of `im2col` for the same geometry (every
//! value a window read is where its gradient is added back), and both treat padding as zeros
//! that receive no gradient.

use std::mem::MaybeUninit;

use super::zeroed;

/// Zero padding on each side, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// For an `h x w` input padded by `self`: the padded size and the number of `k x k`
    /// windows at `stride`, `[(padded h, windows down), (padded w, windows across)]`, or an
    /// error naming `op` (a zero kernel or stride, a padding that overflows, an input smaller
    /// than the kernel).
    pub(crate) fn windows(
        &self,
        op: &str,
        (h, w): (usize, usize),
        k: usize,
        stride: usize,
    ) -> candle_core::Result<[(usize, usize); 2]> {
        if k == 0 || stride == 0 {
            candle_core::bail!("{op}: a {k}x{k} kernel with stride {stride}")
        }
        let padded = |x: usize, (a, b): (usize, usize)| {
            x.checked_add(a)
                .and_then(|v| v.checked_add(b))
                .filter(|&v| v <= super::MAX_VALUES)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("{op}: padding {a} + {b} is too large"))
                })
        };
        let ph = padded(h, (self.top, self.bottom))?;
        let pw = padded(w, (self.left, self.right))?;
        if ph < k || pw < k {
            candle_core::bail!("{op}: input {h}x{w} is smaller than the {k}x{k} kernel")
        }
        Ok([(ph, (ph - k) / stride + 1), (pw, (pw - k) / stride + 1)])
    }

    pub fn symmetric(p: usize) -> Self {
        Padding {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// TensorFlow "SAME" padding for one input size: output = ceil(input / stride), with the
    /// odd pixel of padding going after (bottom/right).
    pub fn tf_same(h: usize, w: usize, k: usize, stride: usize) -> Self {
        let total =
            |n: usize| (n.div_ceil(stride).saturating_sub(1) * stride + k).saturating_sub(n);
        let (th, tw) = (total(h), total(w));
        Padding {
            top: th / 2,
            bottom: th - th / 2,
            left: tw / 2,
            right: tw - tw / 2,
        }
    }
}

/// Valid output columns `[lo, hi)` for kernel column `kx` of a convolution with this stride and
/// left padding: those whose input column `ox * stride + off` (`off = kx - pad_left`) falls
/// inside an image `w` wide. Lets the inner loops run unchecked.
fn valid_columns(
    kx: usize,
    stride: usize,
    pad_left: usize,
    w: usize,
    ow: usize,
) -> (usize, usize, isize) {
    let off = kx as isize - pad_left as isize;
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let last = w as isize - 1 - off;
    let hi = if last < 0 {
        0
    } else {
        (last / s + 1).min(ow as isize)
    };
    (lo as usize, hi.max(lo) as usize, off)
}

/// Sizes of one convolution call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeometry {
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    pub(crate) k: usize,
    pub(crate) stride: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) pad: Padding,
}

impl ConvGeometry {
    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    pub(crate) fn patch(&self) -> usize {
        self.cin * self.k * self.k
    }

    pub(crate) fn in_plane(&self) -> usize {
        self.cin * self.h * self.w
    }

    pub(crate) fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1 x 1, stride 1, unpadded convolution reads the input as the GEMM operand directly.
    pub(crate) fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == Padding::default()
    }

    /// Output columns `[lo, hi)` that read input column `ox * stride + off` for kernel column
    /// `kx`; the others read padding.
    pub(crate) fn columns(&self, kx: usize) -> (usize, usize, isize) {
        valid_columns(kx, self.stride, self.pad.left, self.w, self.ow)
    }

    /// The input row read by output row `oy` at kernel row `ky`, if it is inside the image.
    pub(crate) fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad.top)
            .filter(|&iy| iy < self.h)
    }
}

/// The `[cin * k * k, oh * ow]` patch matrix of one sample, zeros where windows read
/// padding; every value written.
pub(crate) fn im2col(x: &[f32], g: &ConvGeometry, cols: &mut [MaybeUninit<f32>]) {
    let (k, s, plane) = (g.k, g.stride, g.out_plane());
    let zero = MaybeUninit::new(0.0);
    for c in 0..g.cin {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((c * k + ky) * k + kx) * plane..][..plane];
                let (lo, hi, off) = g.columns(kx);
                for (oy, dst) in row.chunks_exact_mut(g.ow).enumerate() {
                    let Some(iy) = g.input_row(oy, ky) else {
                        dst.fill(zero);
                        continue;
                    };
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    dst[..lo].fill(zero);
                    dst[hi..].fill(zero);
                    if s == 1 {
                        let start = (lo as isize + off) as usize;
                        let src = &src[start..start + hi - lo];
                        dst[lo..hi]
                            .iter_mut()
                            .zip(src)
                            .for_each(|(d, &v)| _ = d.write(v));
                    } else {
                        for (ox, d) in (lo..hi).zip(&mut dst[lo..hi]) {
                            d.write(src[((ox * s) as isize + off) as usize]);
                        }
                    }
                }
            }
        }
    }
}

/// Adds the patch matrix back into the image it was gathered from (the adjoint of `im2col`).
pub(crate) fn col2im(cols: &[f32], g: &ConvGeometry, x: &mut [MaybeUninit<f32>]) {
    let (k, s, plane) = (g.k, g.stride, g.out_plane());
    let x = zeroed(x);
    for c in 0..g.cin {
        let xc = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((c * k + ky) * k + kx) * plane..][..plane];
                let (lo, hi, off) = g.columns(kx);
                for (oy, src) in row.chunks_exact(g.ow).enumerate() {
                    let Some(iy) = g.input_row(oy, ky) else {
                        continue;
                    };
                    let dst = &mut xc[iy * g.w..(iy + 1) * g.w];
                    if s == 1 {
                        // Contiguous: one vectorised add.
                        let start = (lo as isize + off) as usize;
                        let dst = &mut dst[start..start + hi - lo];
                        dst.iter_mut().zip(&src[lo..hi]).for_each(|(d, v)| *d += v);
                    } else {
                        for (ox, v) in (lo..hi).zip(&src[lo..hi]) {
                            dst[((ox * s) as isize + off) as usize] += v;
                        }
                    }
                }
            }
        }
    }
}
