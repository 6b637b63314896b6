//! `a @ b` for two activations (attention's query-key and weights-value products), batched,
//! on the packed GEMM, with the input gradients to both: `ga = g b^T`, `gb = a^T g`. Each
//! batch entry packs its own operands (a transpose is a swap of strides while packing), and
//! the entries run in parallel. Candle's matmul, which this replaces on the CPU, uses AVX2
//! micro-kernels only.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::packed_gemm::{self, PackedLhs};

/// `a [batch, m, k] @ b [batch, k, n]`; both contiguous f32 on the CPU.
pub(crate) fn batched_product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, Product)
}

struct Product;

/// `[batch, rows, cols]` of a contiguous rank-3 layout.
fn dims3(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[b, r, c] => Ok((b, r, c)),
        d => candle_core::bail!("a batched product of shape {d:?}"),
    }
}

/// `c[e] = op_a(a[e]) @ op_b(b[e])` for every batch entry `e`: `a_at(e, i, kk)` and
/// `b_at(e, kk, j)` read the operands, `(m, k, n)` the product's sizes.
fn product(
    batch: usize,
    (m, k, n): (usize, usize, usize),
    a: &(dyn Fn(usize) -> PackedLhs + Sync),
    b_at: &(dyn Fn(usize, usize, usize) -> f32 + Sync),
) -> Vec<f32> {
    let mut c = vec![0f32; batch * m * n];
    if m * n == 0 {
        return c;
    }
    c.par_chunks_mut(m * n).enumerate().for_each(|(e, c)| {
        let lhs = a(e);
        let rhs = packed_gemm::pack_rhs(k, n, |kk, j| b_at(e, kk, j));
        packed_gemm::gemm(&lhs, None, &rhs, n, c, n);
    });
    c
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "packed-batched-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = super::cpu_f32_slice(self.name(), s1, l1)?;
        let b = super::cpu_f32_slice(self.name(), s2, l2)?;
        let ((batch, m, k), (b2, k2, n)) = (dims3(l1)?, dims3(l2)?);
        if batch != b2 || k != k2 {
            candle_core::bail!("a batched product of {:?} and {:?}", l1.dims(), l2.dims());
        }
        let y = product(
            batch,
            (m, k, n),
            &|e| PackedLhs::from_block(&a[e * m * k..], m, k),
            &|e, kk, j| b[e * k * n + kk * n + j],
        );
        Ok((CpuStorage::F32(y), Shape::from((batch, m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (batch, m, k) = a.dims3()?;
        let n = b.dim(2)?;
        let dev = a.device();
        let ga = if a.track_op() {
            let ga = super::with_cpu_f32(g, |g| {
                super::with_cpu_f32(b, |b| {
                    // g [m, n] @ b^T [n, k]
                    product(
                        batch,
                        (m, n, k),
                        &|e| PackedLhs::from_block(&g[e * m * n..], m, n),
                        &|e, j, kk| b[e * k * n + kk * n + j],
                    )
                })
            })??;
            Some(Tensor::from_vec(ga, (batch, m, k), dev)?)
        } else {
            None
        };
        let gb = if b.track_op() {
            let gb = super::with_cpu_f32(g, |g| {
                super::with_cpu_f32(a, |a| {
                    // a^T [k, m] @ g [m, n]
                    product(
                        batch,
                        (k, m, n),
                        &|e| PackedLhs::from_rows(&a[e * m * k..], k, m, (1, k)),
                        &|e, i, j| g[e * m * n + i * n + j],
                    )
                })
            })??;
            Some(Tensor::from_vec(gb, (batch, k, n), dev)?)
        } else {
            None
        };
        Ok((ga, gb))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use crate::engine::ops::kernel_path::{KernelPath, with_path};

    /// Forward and both input gradients against candle's matmul, odd sizes, every path.
    #[test]
    fn batched_product_matches_candles_matmul_and_its_gradients() {
        let dev = Device::Cpu;
        let val = |i: usize, m: usize| ((i * 37 % m) as f32 / m as f32) - 0.5;
        for (batch, m, k, n) in [
            (1, 1, 1, 1),
            (3, 7, 13, 17),
            (2, 197, 64, 40),
            (5, 20, 3, 33),
        ] {
            let t = |len: usize, md: usize, shape: (usize, usize, usize)| {
                Var::from_vec((0..len).map(|i| val(i, md)).collect(), shape, &dev).unwrap()
            };
            let a = t(batch * m * k, 89, (batch, m, k));
            let b = t(batch * k * n, 101, (batch, k, n));
            let r = t(batch * m * n, 53, (batch, m, n));
            let grads = |y: &Tensor| {
                let g = (y * r.as_tensor())
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                [g.get(&a).unwrap().clone(), g.get(&b).unwrap().clone()]
            };
            let want = a.matmul(&b).unwrap();
            let want_g = grads(&want);
            for path in KernelPath::ALL.into_iter().filter(|p| p.is_available()) {
                let (y, g) = with_path(path, || {
                    let y = super::batched_product(&a, &b).unwrap();
                    let g = grads(&y);
                    (y, g)
                })
                .unwrap();
                let diff = |x: &Tensor, y: &Tensor| {
                    let d = (x - y).unwrap().abs().unwrap().flatten_all().unwrap();
                    d.max(0).unwrap().to_scalar::<f32>().unwrap()
                };
                let at = format!("{path}: {batch} x {m}x{k} @ {k}x{n}");
                assert!(diff(&y, &want) < 1e-5, "{at}: forward");
                for (got, want) in g.iter().zip(&want_g) {
                    assert!(diff(got, want) < 1e-5, "{at}: gradient");
                    let norm = want
                        .abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(norm > 0.0);
                }
            }
        }
    }
}
