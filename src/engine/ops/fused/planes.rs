//! Layer normalisation over the channels of planes: `x [b, c, h, w]` in, channels-last rows
//! `[b, h, w, c]` out, normalised over `c` (a ConvNeXt block's `permute(0, 2, 3, 1)` then
//! `LayerNorm`, as one op). Each task transposes a block of pixels into rows while they are
//! in cache and normalises them there; the backward reads the gradient's rows and writes
//! planes the same way. A transpose pass over memory less each way, and no copy of the
//! output (a `CustomOp1`, not [`generic::attach`](super::generic::attach)).
//!
//! Same values as the transpose followed by [`super::layer_norm`]: the rows are the same,
//! normalised by the same kernels.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::super::SharedOut;
use super::{ln_backward, ln_forward};

/// Pixels per task: rows of `c` values that, with their planes' runs, stay in L1/L2.
const PIXELS: usize = 32;

/// The normalisation of `x [b, c, h, w]` (CPU f32) over `c`, as rows `[b, h, w, c]`, with
/// `scale` and `bias` of `c` values. Differentiable in `x` only.
pub(crate) fn layer_norm_from_planes(
    x: &Tensor,
    scale: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if scale.len() != c || bias.len() != c {
        candle_core::bail!(
            "layer norm over {c} channels with {} scales and {} biases",
            scale.len(),
            bias.len()
        )
    }
    x.contiguous()?.apply_op1(PlanesNorm {
        scale,
        bias,
        eps,
        stats: OnceLock::new(),
    })
}

struct PlanesNorm {
    scale: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
    /// Per pixel: the mean and 1 / std of its channels, kept for the backward.
    stats: OnceLock<Vec<(f32, f32)>>,
}

/// `(image, first pixel, pixels)` of each task over `b` images of `hw` pixels.
fn tasks(b: usize, hw: usize) -> Vec<(usize, usize, usize)> {
    (0..b)
        .flat_map(|i| {
            (0..hw)
                .step_by(PIXELS)
                .map(move |p| (i, p, PIXELS.min(hw - p)))
        })
        .collect()
}

/// Copies pixels `p0..p0 + m` of the `c` planes (`hw` long) at `planes` into rows `m x c`.
fn planes_to_rows(planes: &[f32], (c, hw): (usize, usize), p0: usize, rows: &mut [f32]) {
    for ch in 0..c {
        let run = &planes[ch * hw + p0..][..rows.len() / c];
        for (i, &v) in run.iter().enumerate() {
            rows[i * c + ch] = v;
        }
    }
}

impl CustomOp1 for PlanesNorm {
    fn name(&self) -> &'static str {
        "layer-norm-from-planes"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::super::cpu_f32_slice(self.name(), storage, layout)?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let hw = h * w;
        let mut stats = vec![(0f32, 0f32); b * hw];
        let st = SharedStats(stats.as_mut_ptr());
        let fill = |out: &mut [MaybeUninit<f32>]| {
            let out = SharedOut(out.as_mut_ptr().cast::<f32>());
            tasks(b, hw)
                .into_par_iter()
                .for_each_init(Vec::new, |rows, (img, p0, m)| {
                    rows.resize(m * c, 0.0);
                    planes_to_rows(&x[img * c * hw..], (c, hw), p0, rows);
                    let at = img * hw + p0;
                    // SAFETY: pixels `at..at + m` (their rows and stats) are this task's.
                    let (o, s) = unsafe { (out.plane((at * c, m * c)), st.run(at, m)) };
                    ln_forward(rows, &self.scale, &self.bias, self.eps, o, s);
                });
        };
        // SAFETY: the tasks cover every pixel of every image, each writing its rows whole.
        let y = unsafe { super::vec_written_by(b * hw * c, fill) };
        if self.stats.set(stats).is_err() {
            candle_core::bail!("{}: run twice", self.name())
        }
        Ok((CpuStorage::F32(y), Shape::from((b, h, w, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(stats) = self.stats.get() else {
            candle_core::bail!("{}: backward before forward", self.name())
        };
        let (b, c, h, w) = arg.dims4()?;
        let hw = h * w;
        let dx = super::with_cpu_f32(arg, |x| {
            super::with_cpu_f32(grad, |g| {
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    let out = SharedOut(out.as_mut_ptr().cast::<f32>());
                    tasks(b, hw).into_par_iter().for_each_init(
                        || (Vec::new(), Vec::new()),
                        |(rows, dx), (img, p0, m)| {
                            rows.resize(m * c, 0.0);
                            dx.resize(m * c, MaybeUninit::uninit());
                            planes_to_rows(&x[img * c * hw..], (c, hw), p0, rows);
                            let at = img * hw + p0;
                            let (g, s) = (&g[at * c..][..m * c], &stats[at..at + m]);
                            ln_backward(rows, g, &self.scale, s, dx);
                            // SAFETY: `ln_backward` wrote every value of `dx`.
                            let dx = unsafe { super::assume_init(dx) };
                            for ch in 0..c {
                                // SAFETY: pixels `p0..p0 + m` of plane `ch` of image `img`:
                                // this task's, no other's.
                                let o = unsafe { out.plane(((img * c + ch) * hw + p0, m)) };
                                for (i, o) in o.iter_mut().enumerate() {
                                    o.write(dx[i * c + ch]);
                                }
                            }
                        },
                    );
                };
                // SAFETY: the tasks cover every pixel of every plane.
                unsafe { super::vec_written_by(b * c * hw, fill) }
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Per-pixel statistics written by parallel tasks, each its own pixels.
#[derive(Clone, Copy)]
struct SharedStats(*mut (f32, f32));
// SAFETY: tasks write disjoint runs (see `cpu_fwd`).
unsafe impl Send for SharedStats {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedStats {}

impl SharedStats {
    /// # Safety
    /// `at..at + len` is in bounds and no other task uses it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn run<'a>(self, at: usize, len: usize) -> &'a mut [(f32, f32)] {
        // SAFETY: as the caller vouches.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::engine::ops::kernel_path::{KernelPath, with_path};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The op equals candle's permute followed by layer normalisation written in tensor ops,
    /// forward and input gradient, on every kernel path; images that are not a whole number
    /// of tasks, a mean far from 0, channel counts off the vector width.
    #[test]
    fn layer_norm_from_planes_matches_permute_and_tensor_ops() {
        let dev = Device::Cpu;
        for (b, c, h, w) in [(1, 1, 1, 1), (2, 20, 5, 7), (3, 96, 7, 9)] {
            let n = b * c * h * w;
            let val = |i: usize, m: usize| ((i * 37 % m) as f32 / m as f32) - 0.5;
            let x = Var::from_vec(
                (0..n).map(|i| 3.0 + val(i, 89)).collect(),
                (b, c, h, w),
                &dev,
            )
            .unwrap();
            let scale: Vec<f32> = (0..c).map(|i| 1.0 + val(i, 7)).collect();
            let bias: Vec<f32> = (0..c).map(|i| val(i, 11)).collect();
            let r =
                Tensor::from_vec((0..n).map(|i| val(i, 53)).collect(), (b, h, w, c), &dev).unwrap();
            let st = Tensor::new(scale.as_slice(), &dev).unwrap();
            let bt = Tensor::new(bias.as_slice(), &dev).unwrap();
            let rows = x.permute((0, 2, 3, 1)).unwrap();
            let mean = rows.mean_keepdim(3).unwrap();
            let xc = rows.broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(3).unwrap();
            let want = xc
                .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&st)
                .unwrap()
                .broadcast_add(&bt)
                .unwrap();
            let grad = |y: &Tensor| {
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(&x).unwrap().clone()
            };
            let want_g = grad(&want);
            for path in KernelPath::ALL.into_iter().filter(|p| p.is_available()) {
                let (y, g) = with_path(path, || {
                    let y = layer_norm_from_planes(&x, scale.clone(), bias.clone(), 1e-6).unwrap();
                    let g = grad(&y);
                    (y, g)
                })
                .unwrap();
                let at = format!("{path}: [{b}, {c}, {h}, {w}]");
                assert_eq!(y.dims(), [b, h, w, c], "{at}");
                assert!(
                    max_diff(&y, &want) < 1e-4,
                    "{at}: forward {}",
                    max_diff(&y, &want)
                );
                assert!(
                    max_diff(&g, &want_g) < 1e-4,
                    "{at}: gradient {}",
                    max_diff(&g, &want_g)
                );
            }
        }
        let x = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(layer_norm_from_planes(&x, vec![1.0; 2], vec![0.0; 3], 1e-5).is_err());
    }
}
