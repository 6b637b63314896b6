//! A linear layer `y = x w + bias` with constant weights (a transformer's projections and
//! MLPs, a classifier head) on the engine's packed GEMM, with its input-gradient backward
//! `g w^T`. Both `w` and `w^T` are packed once, when the layer is built; each call packs
//! only the activations, in blocks of rows that run in parallel.
//!
//! Why not candle's matmul: its CPU GEMM uses AVX2 micro-kernels only (AVX-512 needs a
//! nightly feature of the `gemm` crate), packs the constant weights anew on every call, and
//! its backward also multiplies out the weights' gradient, which saliency never reads.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::packed_gemm::{self, MR, PackedLhs};

/// The packed weights of one linear layer: `[k] -> [n]`.
pub(crate) struct PackedLinear {
    k: usize,
    n: usize,
    /// `w` `[k, n]` as a packed right operand.
    fwd: Vec<f32>,
    /// `w^T` `[n, k]` as a packed right operand.
    bwd: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedLinear({} -> {})", self.k, self.n)
    }
}

impl PackedLinear {
    /// From `w` (row-major `[k, n]`) and an optional bias of `n` values.
    pub(crate) fn new(w: &[f32], k: usize, n: usize, bias: Option<Vec<f32>>) -> Self {
        assert_eq!(w.len(), k * n);
        assert!(bias.as_ref().is_none_or(|b| b.len() == n));
        PackedLinear {
            k,
            n,
            fwd: packed_gemm::pack_rhs(k, n, |kk, j| w[kk * n + j]),
            bwd: packed_gemm::pack_rhs(n, k, |j, kk| w[kk * n + j]),
            bias,
        }
    }

    /// `x [.., k] -> [.., n]` joined to the graph with its input-gradient backward.
    pub(crate) fn apply(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        x.apply_op1(LinearOp(self.clone()))
    }

    /// `x` (`rows x k`) times `w`, plus the bias.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        product(x, self.k, &self.fwd, self.n, self.bias.as_deref())
    }

    /// `g` (`rows x n`) times `w^T`.
    fn backward(&self, g: &[f32]) -> Vec<f32> {
        product(g, self.n, &self.bwd, self.k, None)
    }
}

/// `a` (`rows x k`, row-major) times the packed `b` (`k x n`), plus `bias` on every row.
fn product(a: &[f32], k: usize, b: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let rows = a.len().checked_div(k).unwrap_or(0);
    if rows == 0 || n == 0 {
        return vec![0f32; rows * n];
    }
    // Blocks of whole micro-kernel rows, at least four per thread where the rows allow (one
    // image's 197 tokens still keep both cores busy), at most 96 (the GEMM's own row block).
    let per = rows.div_ceil(4 * rayon::current_num_threads());
    let block = per.next_multiple_of(2 * MR).clamp(2 * MR, 96);
    let mut y = Vec::with_capacity(rows * n);
    y.spare_capacity_mut()[..rows * n]
        .par_chunks_mut(block * n)
        .zip(a.par_chunks(block * k))
        .for_each(|(y, a)| {
            // Zeroed here, by the task that then writes it while it is in cache: one
            // allocation-wide zero fill on the calling thread cost as much as the products
            // of a small layer.
            let y = super::zeroed(y);
            let m = a.len() / k;
            let lhs = PackedLhs::from_block(a, m, k);
            packed_gemm::gemm(&lhs, None, b, n, y, n);
            if let Some(bias) = bias {
                for row in y.chunks_exact_mut(n) {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
            }
        });
    // SAFETY: every chunk of the first `rows * n` values was zeroed, then written, above.
    unsafe { y.set_len(rows * n) };
    y
}

struct LinearOp(Arc<PackedLinear>);

impl CustomOp1 for LinearOp {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        let mut dims = layout.dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == self.0.k => *last = self.0.n,
            _ => candle_core::bail!(
                "a linear layer of {} inputs applied to shape {dims:?}",
                self.0.k
            ),
        }
        Ok((CpuStorage::F32(self.0.forward(x)), Shape::from(dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let gx = super::with_cpu_f32(grad, |g| self.0.backward(g))?;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::kernel_path::{KernelPath, with_path};
    use candle_core::{Device, Var};

    /// Forward and input gradient against candle's matmul, on odd sizes (edges in every
    /// dimension, more rows than one block), on every kernel path this CPU has.
    #[test]
    fn packed_linear_matches_candles_matmul_and_its_gradient() {
        let dev = Device::Cpu;
        for (rows, k, n) in [(1, 1, 1), (7, 13, 17), (197, 64, 40), (300, 130, 3)] {
            let val = |i: usize, m: usize| ((i * 37 % m) as f32 / m as f32) - 0.5;
            let w: Vec<f32> = (0..k * n).map(|i| val(i, 101)).collect();
            let bias: Vec<f32> = (0..n).map(|i| val(i, 7)).collect();
            let x: Vec<f32> = (0..rows * k).map(|i| val(i, 89)).collect();
            let wt = Tensor::from_vec(w.clone(), (k, n), &dev).unwrap();
            let bt = Tensor::from_vec(bias.clone(), n, &dev).unwrap();
            let r = Tensor::from_vec((0..rows * n).map(|i| val(i, 53)).collect(), (rows, n), &dev)
                .unwrap();
            let lin = Arc::new(PackedLinear::new(&w, k, n, Some(bias)));
            let xv = Var::from_vec(x, (rows, k), &dev).unwrap();
            let want = xv.matmul(&wt).unwrap().broadcast_add(&bt).unwrap();
            let want_g = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let want_g = want_g.get(&xv).unwrap().flatten_all().unwrap();
            let want = want.flatten_all().unwrap();
            for path in KernelPath::ALL.into_iter().filter(|p| p.is_available()) {
                let (y, g) = with_path(path, || {
                    let y = lin.apply(&xv).unwrap();
                    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    (
                        y.flatten_all().unwrap(),
                        g.get(&xv).unwrap().flatten_all().unwrap(),
                    )
                })
                .unwrap();
                let diff = |a: &Tensor, b: &Tensor| {
                    (a - b)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                };
                let at = format!("{path}: {rows}x{k} -> {n}");
                assert!(
                    diff(&y, &want) < 1e-5,
                    "{at}: forward differs by {}",
                    diff(&y, &want)
                );
                assert!(diff(&g, &want_g) < 1e-5, "{at}: gradient differs");
                assert!(
                    want_g
                        .abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        > 0.0
                );
            }
        }
    }
}
