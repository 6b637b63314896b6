//! A batched 2-D transpose `[batch, rows, cols] -> [batch, cols, rows]` on the CPU, in cache
//! blocks, with its backward (the transpose back). ConvNeXt's blocks switch between NCHW and
//! NHWC twice each way per pass; candle materialises a permuted view element by element.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Side of a block: a 16 x 16 block's source rows and destination rows stay in L1.
const B: usize = 16;

/// `x` viewed as `[batch, rows, cols]` (contiguous f32 on the CPU), transposed to
/// `[batch, cols, rows]`.
pub(crate) fn transpose_2d(
    x: &Tensor,
    (batch, rows, cols): (usize, usize, usize),
) -> Result<Tensor> {
    x.contiguous()?
        .reshape((batch, rows, cols))?
        .apply_op1(Transpose { rows, cols })
}

struct Transpose {
    rows: usize,
    cols: usize,
}

/// `dst [cols, rows]` of each batch entry from `src [rows, cols]`.
fn transpose_into(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    if rows * cols == 0 {
        return dst;
    }
    dst.par_chunks_mut(rows * cols)
        .zip(src.par_chunks(rows * cols))
        .for_each(|(dst, src)| {
            dst.par_chunks_mut(B * rows)
                .enumerate()
                .for_each(|(cb, dst)| {
                    let c0 = cb * B;
                    let width = dst.len() / rows;
                    for r0 in (0..rows).step_by(B) {
                        for r in r0..(r0 + B).min(rows) {
                            let from = &src[r * cols + c0..][..width];
                            for (c, &v) in from.iter().enumerate() {
                                dst[c * rows + r] = v;
                            }
                        }
                    }
                });
        });
    dst
}

impl CustomOp1 for Transpose {
    fn name(&self) -> &'static str {
        "transpose-2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        let batch = x.len().checked_div(self.rows * self.cols).unwrap_or(0);
        let y = transpose_into(x, self.rows, self.cols);
        Ok((
            CpuStorage::F32(y),
            Shape::from((batch, self.cols, self.rows)),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = Transpose {
            rows: self.cols,
            cols: self.rows,
        };
        let gx = super::with_cpu_f32(grad, |g| transpose_into(g, back.rows, back.cols))?;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    /// Against candle's permute, forward and gradient, on sizes off the block grid.
    #[test]
    fn transpose_2d_matches_candles_permute_and_its_gradient() {
        let dev = Device::Cpu;
        for (batch, rows, cols) in [(1, 1, 1), (2, 17, 5), (3, 40, 33), (1, 3136, 96)] {
            let n = batch * rows * cols;
            let x = Var::from_vec(
                (0..n).map(|i| i as f32).collect(),
                (batch, rows, cols),
                &dev,
            )
            .unwrap();
            let r = Tensor::from_vec(
                (0..n).map(|i| ((i * 31) % 97) as f32).collect(),
                (batch, cols, rows),
                &dev,
            )
            .unwrap();
            let y = super::transpose_2d(&x, (batch, rows, cols)).unwrap();
            let want = x.permute((0, 2, 1)).unwrap().contiguous().unwrap();
            let same = |a: &Tensor, b: &Tensor| {
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            assert!(same(&y, &want), "{batch}x{rows}x{cols}: forward");
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gw = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (g, gw) = (g.get(&x).unwrap(), gw.get(&x).unwrap());
            assert!(same(g, gw), "{batch}x{rows}x{cols}: gradient");
        }
    }
}
