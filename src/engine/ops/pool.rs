//! Max pooling with any kernel, stride and (TensorFlow-"same" or symmetric) padding, with a
//! backward pass.
//!
//! Stock candle has no backward for `max_pool2d` when kernel != stride (Xception's and ResNet's
//! 3 x 3 / 2 pools). Padding never wins the max (it acts as -inf). The backward routes each
//! output's gradient to the first input position holding the maximum, as PyTorch does.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::geometry::Padding;
use super::{Backend, generic};

#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d {
    pub k: usize,
    pub stride: usize,
    pub pad: Padding,
}

impl MaxPool2d {
    fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let ph = h + self.pad.top + self.pad.bottom;
        let pw = w + self.pad.left + self.pad.right;
        (
            (ph - self.k) / self.stride + 1,
            (pw - self.k) / self.stride + 1,
        )
    }

    /// Max-pools `x` `[n, c, h, w]`: the CPU kernel, or the device-generic taps (any device)
    /// where `backend` says so.
    pub fn forward(&self, x: &Tensor, backend: Backend) -> Result<Tensor> {
        if backend.generic(x.device()) {
            return generic::max_pool(x, self.k, self.stride, self.pad);
        }
        x.contiguous()?.apply_op1(*self)
    }

    /// The input rows (or columns) `[start, end)` of output row (column) `o`'s window, clipped
    /// to an image `n` long with `pad` pixels of padding before it.
    fn window(&self, o: usize, pad: usize, n: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - pad as isize;
        let end = (start + self.k as isize).clamp(0, n as isize) as usize;
        (start.max(0) as usize, end)
    }

    /// Index (within the plane) of the first maximum of output `(oy, ox)` in row-major window
    /// order, or None if the window holds no input pixel.
    fn argmax(&self, plane: &[f32], h: usize, w: usize, oy: usize, ox: usize) -> Option<usize> {
        let (y0, y1) = self.window(oy, self.pad.top, h);
        let (x0, x1) = self.window(ox, self.pad.left, w);
        if y0 >= y1 || x0 >= x1 {
            return None;
        }
        let (mut best, mut value) = (y0 * w + x0, plane[y0 * w + x0]);
        for iy in y0..y1 {
            let row = &plane[iy * w..(iy + 1) * w];
            for (ix, &v) in row.iter().enumerate().take(x1).skip(x0) {
                if v > value {
                    (best, value) = (iy * w + ix, v);
                }
            }
        }
        Some(best)
    }

    /// Output sizes for inputs `[n, c, h, w]`.
    pub(crate) fn out_dims(
        &self,
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> (usize, usize, usize, usize) {
        let (oh, ow) = self.out_size(h, w);
        (n, c, oh, ow)
    }

    /// Pools the whole batch `x` of size `dims`.
    pub(crate) fn forward_vec(&self, x: &[f32], dims: (usize, usize, usize, usize)) -> Vec<f32> {
        let (n, c, h, w) = dims;
        let (oh, ow) = self.out_size(h, w);
        // Column windows are the same for every row and plane: clip them once.
        let cols: Vec<(usize, usize)> = (0..ow)
            .map(|ox| self.window(ox, self.pad.left, w))
            .collect();
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(p, o)| {
            let plane = &x[p * h * w..(p + 1) * h * w];
            for (oy, o) in o.chunks_exact_mut(ow).enumerate() {
                let (y0, y1) = self.window(oy, self.pad.top, h);
                for (o, &(x0, x1)) in o.iter_mut().zip(&cols) {
                    // As `argmax`: the first value of the window, then any strictly greater.
                    *o = if y0 < y1 && x0 < x1 {
                        let mut m = plane[y0 * w + x0];
                        for iy in y0..y1 {
                            for &v in &plane[iy * w + x0..iy * w + x1] {
                                if v > m {
                                    m = v;
                                }
                            }
                        }
                        m
                    } else {
                        f32::NEG_INFINITY
                    };
                }
            }
        });
        out
    }

    /// The input gradient from the input `x` (of size `dims`) and the output gradient `g`.
    pub(crate) fn backward_vec(
        &self,
        x: &[f32],
        dims: (usize, usize, usize, usize),
        g: &[f32],
    ) -> Vec<f32> {
        let (n, c, h, w) = dims;
        let (oh, ow) = self.out_size(h, w);
        let mut gx = vec![0f32; n * c * h * w];
        gx.par_chunks_mut(h * w).enumerate().for_each(|(p, gxp)| {
            let plane = &x[p * h * w..(p + 1) * h * w];
            let gp = &g[p * oh * ow..(p + 1) * oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    let go = gp[oy * ow + ox];
                    // Most guided gradients are 0: no window search for them.
                    if go != 0.0
                        && let Some(i) = self.argmax(plane, h, w, oy, ox)
                    {
                        gxp[i] += go;
                    }
                }
            }
        });
        gx
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        let dims = layout.shape().dims4()?;
        Ok((
            CpuStorage::F32(self.forward_vec(x, dims)),
            Shape::from(self.out_dims(dims)),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dims = arg.dims4()?;
        let gx = super::with_cpu_f32(arg, |x| {
            super::with_cpu_f32(grad, |g| self.backward_vec(x, dims, g))
        })??;
        Ok(Some(Tensor::from_vec(gx, dims, arg.device())?))
    }
}
