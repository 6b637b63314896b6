//! A linear layer `y = x w + bias` with constant weights (a transformer's projections and
//! MLPs, a classifier head) on the engine's packed GEMM, with its input-gradient backward
//! `g w^T`. Both `w` and `w^T` are packed once, when the layer is built; each call packs
//! only the activations, in blocks of rows that run in parallel.
//!
//! Why not candle's matmul: its CPU GEMM uses AVX2 micro-kernels only (AVX-512 needs a
//! nightly feature of the `gemm` crate), packs the constant weights anew on every call, and
//! its backward also multiplies out the weights' gradient, which saliency never reads.

use std::sync::Arc;

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::SharedOut;
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

    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// `x [.., k] -> [.., n]` joined to the graph with its input-gradient backward.
    pub(crate) fn apply(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        x.apply_op1(LinearOp(self.clone()))
    }

    /// `GELU(x w + bias)` (`tanh`: its tanh form) as one op: the GELU runs on each block of
    /// the product while it is in cache and keeps its derivative, which the backward folds
    /// into packing the gradient. Two passes over the layer's (wide) output less each way.
    pub(crate) fn apply_gelu(self: &Arc<Self>, x: &Tensor, tanh: bool) -> Result<Tensor> {
        x.apply_op1(LinearGeluOp {
            lin: self.clone(),
            tanh,
            derivative: OnceLock::new(),
        })
    }

    /// `transpose(x w + bias) + residual` for `x [b, h, w, k]` (channels last) and `residual
    /// [b, n, h, w]`: a ConvNeXt block's last layer, written straight into channel planes
    /// with the skip connection added; the backward reads the gradient's planes as rows. No
    /// transpose pass and no addition pass, forward or backward.
    pub(crate) fn apply_to_planes(
        self: &Arc<Self>,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let (b, h, w, k) = x.dims4()?;
        if k != self.k || residual.dims() != [b, self.n, h, w] {
            candle_core::bail!(
                "a linear layer {} -> {} into planes from {:?} with a residual of {:?}",
                self.k,
                self.n,
                x.dims(),
                residual.dims()
            )
        }
        x.apply_op2(residual, LinearToPlanesOp(self.clone()))
    }

    /// `x` (`rows x k`) times `w`, plus the bias.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        rows_of_blocks(rows, n, rows, |(r0, m), y| {
            let y = gemm_into(&PackedLhs::from_block(&x[r0 * k..], m, k), &self.fwd, n, y);
            self.add_bias(y);
        })
    }

    /// `g` (`rows x n`) times `w^T`, each value of `g` first times `scale`'s (if any).
    fn backward(&self, g: &[f32], rows: usize, scale: Option<&[f32]>) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        rows_of_blocks(rows, k, rows, |(r0, m), gx| {
            let lhs = match scale {
                Some(s) => PackedLhs::from_block_scaled(&g[r0 * n..], &s[r0 * n..], m, n),
                None => PackedLhs::from_block(&g[r0 * n..], m, n),
            };
            gemm_into(&lhs, &self.bwd, k, gx);
        })
    }

    fn add_bias(&self, y: &mut [f32]) {
        if let Some(bias) = &self.bias {
            for row in y.chunks_exact_mut(self.n) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
    }
}

/// Blocks of rows for parallel tasks, `(first row, rows)`, none crossing a multiple of
/// `group`: whole micro-kernel rows, at least four per thread where the rows allow (one
/// image's 197 tokens still keep both cores busy), at most 96 (the GEMM's own row block).
fn blocks(rows: usize, group: usize) -> Vec<(usize, usize)> {
    let per = rows.div_ceil(4 * rayon::current_num_threads());
    let block = per.next_multiple_of(2 * MR).clamp(2 * MR, 96);
    (0..rows)
        .step_by(group.max(1))
        .flat_map(|g0| {
            let end = (g0 + group).min(rows);
            (g0..end)
                .step_by(block)
                .map(move |r| (r, block.min(end - r)))
        })
        .collect()
}

/// A `rows x n` output whose blocks of rows (see [`blocks`]) `fill(block, values)` writes
/// whole, in parallel. Each task writes its block while it is in cache: no zero fill first.
fn rows_of_blocks(
    rows: usize,
    n: usize,
    group: usize,
    fill: impl Fn((usize, usize), &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let write = |out: &mut [MaybeUninit<f32>]| {
        let shared = SharedOut(out.as_mut_ptr().cast::<f32>());
        blocks(rows, group).into_par_iter().for_each(|(r0, m)| {
            // SAFETY: blocks are disjoint runs of rows inside the output.
            fill((r0, m), unsafe { shared.plane((r0 * n, m * n)) })
        });
    };
    // SAFETY: the blocks cover every row and each `fill` writes its block whole.
    unsafe { super::vec_written_by(rows * n, write) }
}

/// `c = lhs b` (`m x n`, row stride `n`), every value written; returned initialised.
fn gemm_into<'c>(
    lhs: &PackedLhs,
    b: &[f32],
    n: usize,
    c: &'c mut [MaybeUninit<f32>],
) -> &'c mut [f32] {
    // SAFETY: `gemm` writes every `c[i * n + j]` (`i < m`, `j < n`) before it reads any: whole
    // tiles are stored, not added, in its first depth block, and zeros when the depth is 0.
    let c = unsafe { super::assume_init(c) };
    packed_gemm::gemm(lhs, None, b, n, c, n);
    c
}

/// The rows of a linear layer's input laid out as `layout` (all axes but the last), and its
/// output's shape.
fn rows_and_out_dims(lin: &PackedLinear, layout: &Layout) -> Result<(usize, Shape)> {
    let mut dims = layout.dims().to_vec();
    match dims.last_mut() {
        Some(last) if *last == lin.k => *last = lin.n,
        _ => candle_core::bail!(
            "a linear layer of {} inputs applied to shape {dims:?}",
            lin.k
        ),
    }
    let rows = dims[..dims.len() - 1].iter().product();
    Ok((rows, Shape::from(dims)))
}

struct LinearOp(Arc<PackedLinear>);

impl CustomOp1 for LinearOp {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        let (rows, dims) = rows_and_out_dims(&self.0, layout)?;
        Ok((CpuStorage::F32(self.0.forward(x, rows)), dims))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let rows = arg.elem_count().checked_div(self.0.k).unwrap_or(0);
        let gx = super::with_cpu_f32(grad, |g| self.0.backward(g, rows, None))?;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}

struct LinearGeluOp {
    lin: Arc<PackedLinear>,
    tanh: bool,
    /// GELU's derivative at each of the product's values, for the backward.
    derivative: OnceLock<Vec<f32>>,
}

impl CustomOp1 for LinearGeluOp {
    fn name(&self) -> &'static str {
        "packed-linear-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        let (rows, dims) = rows_and_out_dims(&self.lin, layout)?;
        let (k, n) = (self.lin.k, self.lin.n);
        let mut derivative: Vec<f32> = Vec::with_capacity(rows * n);
        let d = SharedOut(derivative.spare_capacity_mut().as_mut_ptr().cast::<f32>());
        let y = rows_of_blocks(rows, n, rows, |(r0, m), y| {
            let y = gemm_into(
                &PackedLhs::from_block(&x[r0 * k..], m, k),
                &self.lin.fwd,
                n,
                y,
            );
            self.lin.add_bias(y);
            // SAFETY: blocks are disjoint runs of rows inside `derivative`'s capacity.
            let d = unsafe { d.plane((r0 * n, m * n)) };
            super::fused::gelu_keeping_derivative(y, d, self.tanh);
        });
        // SAFETY: every block wrote its rows of the derivative whole, above.
        unsafe { derivative.set_len(rows * n) };
        if self.derivative.set(derivative).is_err() {
            candle_core::bail!("{}: run twice", self.name())
        }
        Ok((CpuStorage::F32(y), dims))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(d) = self.derivative.get() else {
            candle_core::bail!("{}: backward before forward", self.name())
        };
        let rows = arg.elem_count().checked_div(self.lin.k).unwrap_or(0);
        let gx = super::with_cpu_f32(grad, |g| self.lin.backward(g, rows, Some(d)))?;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}

struct LinearToPlanesOp(Arc<PackedLinear>);

impl CustomOp2 for LinearToPlanesOp {
    fn name(&self) -> &'static str {
        "packed-linear-to-planes"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), s1, l1)?;
        let res = super::cpu_f32_slice(self.name(), s2, l2)?;
        let lin = &self.0;
        let (k, n) = (lin.k, lin.n);
        let (b, h, w, _) = l1.shape().dims4()?;
        let (rows, hw) = (b * h * w, h * w);
        let bias = |j: usize| lin.bias.as_ref().map_or(0.0, |b| b[j]);
        let write = |out: &mut [MaybeUninit<f32>]| {
            let shared = SharedOut(out.as_mut_ptr().cast::<f32>());
            blocks(rows, hw)
                .into_par_iter()
                .for_each_init(Vec::new, |scratch, (r0, m)| {
                    let lhs = PackedLhs::from_block(&x[r0 * k..], m, k);
                    scratch.resize(m * n, 0.0);
                    packed_gemm::gemm(&lhs, None, &lin.fwd, n, scratch, n);
                    let (img, p0) = (r0 / hw, r0 % hw);
                    for j in 0..n {
                        let at = (img * n + j) * hw + p0;
                        let (r, bj) = (&res[at..at + m], bias(j));
                        // SAFETY: pixels `p0..p0 + m` of plane `j` of image `img`: this
                        // block's, no other's.
                        let o = unsafe { shared.plane((at, m)) };
                        let y = scratch.iter().skip(j).step_by(n);
                        for ((o, &r), y) in o.iter_mut().zip(r).zip(y) {
                            o.write(y + bj + r);
                        }
                    }
                });
        };
        // SAFETY: the blocks cover every pixel of every image, each writing all its planes.
        let y = unsafe { super::vec_written_by(rows * n, write) };
        Ok((CpuStorage::F32(y), l2.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let lin = &self.0;
        let (k, n) = (lin.k, lin.n);
        let (b, h, w, _) = x.dims4()?;
        let hw = h * w;
        let gx = super::with_cpu_f32(grad, |g| {
            rows_of_blocks(b * hw, k, hw, |(r0, m), gx| {
                let (img, p0) = (r0 / hw, r0 % hw);
                let lhs = PackedLhs::from_planes(&g[img * n * hw + p0..], m, n, hw);
                gemm_into(&lhs, &lin.bwd, k, gx);
            })
        })?;
        let gx = Tensor::from_vec(gx, x.shape(), x.device())?;
        // The skip connection passes the gradient through unchanged.
        Ok((Some(gx), Some(grad.clone())))
    }
}

#[cfg(test)]
mod tests;
