//! `act(x * scale[c] + shift[c])` over `[n, c, h, w]`: a BatchNorm that cannot be folded into a
//! convolution (DenseNet's, before each convolution) and the ReLU after it, as one CPU pass
//! each way with an input-gradient-only backward (scale and shift are constants). As tensor
//! ops it is three graph nodes (a broadcast multiply, a broadcast add, the activation), each a
//! pass over memory forward and back plus a zero-filled gradient buffer.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::ReluOp;

/// Values per parallel task: whole planes, at least this many values.
const TASK: usize = 1 << 14;

/// A per-channel affine map and its activation (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct AffineAct {
    scale: Arc<[f32]>,
    shift: Arc<[f32]>,
    act: ReluOp,
}

impl AffineAct {
    /// `scale` and `shift` are per channel, the same length.
    pub(crate) fn new(scale: Vec<f32>, shift: Vec<f32>, act: ReluOp) -> Self {
        assert_eq!(scale.len(), shift.len(), "one shift per scale");
        AffineAct {
            scale: scale.into(),
            shift: shift.into(),
            act,
        }
    }

    /// The op on a CPU tensor `[n, c, h, w]` with `c` this op's channels.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(1)?;
        if c != self.scale.len() {
            candle_core::bail!("affine: {c} channels, {} scales", self.scale.len())
        }
        x.contiguous()?.apply_op1(self.clone())
    }

    /// Parallel tasks of whole planes: `(values per task, plane length)`.
    fn tasks(&self, shape: &Shape) -> Result<(usize, usize)> {
        let (_, _, h, w) = shape.dims4()?;
        let plane = (h * w).max(1);
        Ok((plane * TASK.div_ceil(plane), plane))
    }
}

impl CustomOp1 for AffineAct {
    fn name(&self) -> &'static str {
        "affine-act"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        let (task, plane) = self.tasks(layout.shape())?;
        let c = self.scale.len();
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(task)
                .zip(x.par_chunks(task))
                .enumerate()
                .for_each(|(t, (o, x))| {
                    let first = t * task / plane;
                    for (p, (o, x)) in o.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
                        let ch = (first + p) % c;
                        let (s, b) = (self.scale[ch], self.shift[ch]);
                        o.iter_mut().zip(x).for_each(|(o, &x)| {
                            o.write(self.act.apply(x * s + b));
                        });
                    }
                })
        };
        // SAFETY: the chunks of `out` and `x` pair up one to one and each value is written.
        let y = unsafe { super::vec_written_by(x.len(), fill) };
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (task, plane) = self.tasks(arg.shape())?;
        let c = self.scale.len();
        let gx = super::with_cpu_f32(res, |y| {
            super::with_cpu_f32(grad, |g| {
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    out.par_chunks_mut(task)
                        .zip(y.par_chunks(task).zip(g.par_chunks(task)))
                        .enumerate()
                        .for_each(|(t, (o, (y, g)))| {
                            let first = t * task / plane;
                            let planes = o
                                .chunks_mut(plane)
                                .zip(y.chunks(plane).zip(g.chunks(plane)));
                            for (p, (o, (y, g))) in planes.enumerate() {
                                let s = self.scale[(first + p) % c];
                                o.iter_mut().zip(y.iter().zip(g)).for_each(|(o, (&y, &g))| {
                                    o.write(self.act.grad_at(y, g) * s);
                                });
                            }
                        })
                };
                // SAFETY: as in the forward, every value of `out` is written.
                unsafe { super::vec_written_by(y.len(), fill) }
            })
        })??;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::activation::ReluMode;
    use candle_core::{Device, Var};

    /// Against the tensor-op formula (broadcast multiply, add, candle's relu) forward and
    /// backward, plain and guided, on planes smaller and larger than a task.
    #[test]
    fn matches_the_tensor_op_formula_forward_and_backward() -> Result<()> {
        for (dims, mode) in [
            ((2, 5, 7, 7), ReluMode::Plain),
            ((3, 4, 90, 70), ReluMode::Guided),
            ((1, 3, 1, 1), ReluMode::Plain),
        ] {
            let (n, c, h, w) = dims;
            let dev = Device::Cpu;
            // Deterministic values of both signs (a random draw of three values can leave
            // every output at zero, which would check nothing).
            let wave = |len: usize, phase: f32| -> Vec<f32> {
                (0..len)
                    .map(|i| (i as f32 * 1.37 + phase).sin() * 2.0)
                    .collect()
            };
            let x = Tensor::from_vec(wave(n * c * h * w, 0.3), (n, c, h, w), &dev)?;
            let x = Var::from_tensor(&x)?;
            let scale = Tensor::from_vec(wave(c, 1.1), c, &dev)?;
            let shift = Tensor::from_vec(wave(c, 2.9), c, &dev)?;
            let g = Tensor::from_vec(wave(n * c * h * w, 0.7), (n, c, h, w), &dev)?;
            let op = AffineAct::new(scale.to_vec1()?, shift.to_vec1()?, ReluOp::relu(mode));
            let y = op.forward(&x)?;
            let gx = (y.clone() * &g)?.sum_all()?.backward()?;
            let gx = gx.get(&x).unwrap();
            let pre = x
                .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
                .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
            let want = pre.relu()?;
            let diff = (&y - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{dims:?}: forward off by {diff}");
            // d/dx: g where the output is positive (and, guided, g > 0), times the scale.
            let mut gate = want.gt(0f32)?.to_dtype(candle_core::DType::F32)?;
            if mode == ReluMode::Guided {
                gate = (gate * g.gt(0f32)?.to_dtype(candle_core::DType::F32)?)?;
            }
            let want_gx = (g * gate)?.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?;
            let diff = (gx - &want_gx)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{dims:?}: backward off by {diff}");
            let live = want_gx.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert!(live > 0.0, "{dims:?}: a zero gradient checks nothing");
        }
        Ok(())
    }
}
