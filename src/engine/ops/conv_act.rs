//! Convolution + bias (+ residual) + optional ReLU/ReLU6 as one CPU op, with an
//! input-gradient-only backward.
//!
//! Why one op: through candle's autograd every op costs a pass over its output and, in the
//! backward, a zero-filled gradient buffer plus an add. A convolution layer as separate ops
//! (pad, conv, bias, residual add, activation) is up to six graph nodes; fused it is one, the
//! padding is folded into im2col, and bias, residual and activation are applied while the GEMM
//! output is still in cache. The activation's backward gates on the op's *output*
//! (`0 < y < cap` exactly when `0 < x < cap`), so nothing beyond the output is kept.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::activation::ReluOp;
use super::depthwise::Padding;

/// `act(conv(pad(x), weight) + bias)` for `x` `[n, cin, h, w]` and `weight` `[cout, cin, k, k]`
/// on the CPU, f32. Gradients flow to `x` only: the weights are constants.
pub fn conv_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Padding,
    act: Option<ReluOp>,
) -> Result<Tensor> {
    let op = Applied::new(x, weight, bias, stride, pad, act)?;
    x.contiguous()?.apply_op1(op)
}

/// `act(conv(pad(x), weight) + bias + skip)`: a residual block's last convolution, its
/// shortcut add and (ResNet) the ReLU after it, as one op. Gradients flow to `x` and `skip`.
#[allow(clippy::too_many_arguments)]
pub fn conv_add_act(
    x: &Tensor,
    skip: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Padding,
    act: Option<ReluOp>,
) -> Result<Tensor> {
    let op = Applied::new(x, weight, bias, stride, pad, act)?;
    let out = (x.dim(0)?, op.geo.cout, op.geo.oh, op.geo.ow);
    if skip.dims4()? != out {
        candle_core::bail!("residual of shape {:?}, expected {out:?}", skip.dims())
    }
    x.contiguous()?.apply_op2(&skip.contiguous()?, op)
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

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    pad: Padding,
}

impl Geometry {
    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn patch(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn in_plane(&self) -> usize {
        self.cin * self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1 x 1, stride 1, unpadded convolution reads the input as the GEMM operand directly.
    fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == Padding::default()
    }

    /// Output columns `[lo, hi)` that read input column `ox * stride + off` for kernel column
    /// `kx`; the others read padding.
    fn columns(&self, kx: usize) -> (usize, usize, isize) {
        valid_columns(kx, self.stride, self.pad.left, self.w, self.ow)
    }

    /// The input row read by output row `oy` at kernel row `ky`, if it is inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad.top)
            .filter(|&iy| iy < self.h)
    }
}

struct Applied {
    weight: Tensor,
    bias: Tensor,
    geo: Geometry,
    batch: usize,
    act: Option<ReluOp>,
}

/// `dst [m x n] = lhs [m x k] * rhs [k x n]`, `dst` and `rhs` row-major and contiguous, `lhs`
/// read through the given row and column strides (a transposed weight needs no copy).
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    assert!(dst.len() >= m * n && rhs.len() >= k * n);
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    // SAFETY: the asserts above bound every index gemm reads (`i * lhs_rs + j * lhs_cs`,
    // `j * n + c`) and writes (`i * n + c`) for i < m, j < k, c < n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Runs `f(sample, out_chunk)` for every sample: in parallel over samples when there are
/// enough of them to keep every thread busy, else one by one with a parallel GEMM.
fn for_each_sample(
    out: &mut [f32],
    chunk: usize,
    f: impl Fn(usize, &mut [f32], Parallelism) + Sync,
) {
    let threads = rayon::current_num_threads();
    let samples = out.len() / chunk.max(1);
    if samples >= threads {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o, Parallelism::None));
    } else {
        for (i, o) in out.chunks_mut(chunk).enumerate() {
            f(i, o, Parallelism::Rayon(threads));
        }
    }
}

/// The `[cin * k * k, oh * ow]` patch matrix of one sample, zeros where windows read padding.
fn im2col(x: &[f32], g: &Geometry, cols: &mut [f32]) {
    let (k, s, plane) = (g.k, g.stride, g.out_plane());
    for c in 0..g.cin {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((c * k + ky) * k + kx) * plane..][..plane];
                let (lo, hi, off) = g.columns(kx);
                for (oy, dst) in row.chunks_exact_mut(g.ow).enumerate() {
                    let Some(iy) = g.input_row(oy, ky) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if s == 1 {
                        let start = (lo as isize + off) as usize;
                        dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                    } else {
                        for (ox, d) in (lo..hi).zip(&mut dst[lo..hi]) {
                            *d = src[((ox * s) as isize + off) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// Adds the patch matrix back into the image it was gathered from (the adjoint of `im2col`).
fn col2im(cols: &[f32], g: &Geometry, x: &mut [f32]) {
    let (k, s, plane) = (g.k, g.stride, g.out_plane());
    x.fill(0.0);
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
                    for (ox, v) in (lo..hi).zip(&src[lo..hi]) {
                        dst[((ox * s) as isize + off) as usize] += v;
                    }
                }
            }
        }
    }
}

impl Applied {
    fn new(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        pad: Padding,
        act: Option<ReluOp>,
    ) -> Result<Self> {
        let (n, cin, h, w) = x.dims4()?;
        let (cout, wcin, k, _) = weight.dims4()?;
        if wcin != cin {
            candle_core::bail!("conv expects {wcin} input channels, got {cin}")
        }
        let (ph, pw) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
        if ph < k || pw < k {
            candle_core::bail!("conv: input {h}x{w} is smaller than the {k}x{k} kernel")
        }
        let geo = Geometry {
            cin,
            cout,
            k,
            stride,
            h,
            w,
            oh: (ph - k) / stride + 1,
            ow: (pw - k) / stride + 1,
            pad,
        };
        Ok(Applied {
            weight: weight.detach().contiguous()?,
            bias: bias.detach().contiguous()?,
            geo,
            batch: n,
            act,
        })
    }

    fn out_shape(&self) -> Shape {
        let g = &self.geo;
        Shape::from((self.batch, g.cout, g.oh, g.ow))
    }

    /// One sample: GEMM, then bias, residual and activation in one pass over the output.
    fn forward_sample(
        &self,
        (w, b): (&[f32], &[f32]),
        x: &[f32],
        skip: Option<&[f32]>,
        y: &mut [f32],
        par: Parallelism,
    ) {
        let g = &self.geo;
        let plane = g.out_plane();
        let mut cols = Vec::new();
        let rhs = if g.direct() {
            x
        } else {
            cols.resize(g.patch() * plane, 0.0);
            im2col(x, g, &mut cols);
            &cols
        };
        matmul((g.cout, plane, g.patch()), y, w, (g.patch(), 1), rhs, par);
        for (c, (row, &bias)) in y.chunks_exact_mut(plane).zip(b).enumerate() {
            let skip = skip.map(|s| &s[c * plane..(c + 1) * plane]);
            match (skip, self.act) {
                (None, None) => row.iter_mut().for_each(|v| *v += bias),
                (None, Some(a)) => row.iter_mut().for_each(|v| *v = a.apply(*v + bias)),
                (Some(s), None) => row.iter_mut().zip(s).for_each(|(v, &s)| *v = *v + bias + s),
                (Some(s), Some(a)) => {
                    let each = |(v, &s): (&mut f32, &f32)| *v = a.apply(*v + bias + s);
                    row.iter_mut().zip(s).for_each(each)
                }
            }
        }
    }

    /// One sample's input gradient from its (already gated) output gradient.
    fn backward_sample(&self, w: &[f32], gy: &[f32], gx: &mut [f32], par: Parallelism) {
        let g = &self.geo;
        let plane = g.out_plane();
        // W^T: [cin * k * k, cout], read from W [cout, cin * k * k] with swapped strides.
        let wt_strides = (1, g.patch());
        if g.direct() {
            matmul((g.cin, plane, g.cout), gx, w, wt_strides, gy, par);
        } else {
            let mut cols = vec![0f32; g.patch() * plane];
            matmul(
                (g.patch(), plane, g.cout),
                &mut cols,
                w,
                wt_strides,
                gy,
                par,
            );
            col2im(&cols, g, gx);
        }
    }

    fn forward(&self, x: &[f32], skip: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let g = self.geo;
        let chunk = g.cout * g.out_plane();
        let mut out = vec![0f32; self.batch * chunk];
        super::with_cpu_f32(&self.weight, |w| {
            super::with_cpu_f32(&self.bias, |b| {
                for_each_sample(&mut out, chunk, |i, y, par| {
                    let xi = &x[i * g.in_plane()..(i + 1) * g.in_plane()];
                    let si = skip.map(|s| &s[i * chunk..(i + 1) * chunk]);
                    self.forward_sample((w, b), xi, si, y, par)
                })
            })
        })??;
        Ok((CpuStorage::F32(out), self.out_shape()))
    }

    /// The gradient at the activation's input (= the residual's gradient), and `x`'s.
    fn backward(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let g = self.geo;
        let chunk = g.cout * g.out_plane();
        let gated = match self.act {
            Some(act) => {
                let gated = super::with_cpu_f32(res, |y| {
                    super::with_cpu_f32(grad, |gy| {
                        let mut gated = vec![0f32; gy.len()];
                        gated
                            .par_chunks_mut(chunk)
                            .zip(y.par_chunks(chunk).zip(gy.par_chunks(chunk)))
                            .for_each(|(d, (y, gy))| act.grad_from_outputs(d, y, gy));
                        gated
                    })
                })??;
                Tensor::from_vec(gated, self.out_shape(), arg.device())?
            }
            None => grad.contiguous()?,
        };
        let mut gx = vec![0f32; self.batch * g.in_plane()];
        super::with_cpu_f32(&self.weight, |w| {
            super::with_cpu_f32(&gated, |gy| {
                for_each_sample(&mut gx, g.in_plane(), |i, gxi, par| {
                    self.backward_sample(w, &gy[i * chunk..(i + 1) * chunk], gxi, par)
                })
            })
        })??;
        Ok((gated, Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}

impl CustomOp1 for Applied {
    fn name(&self) -> &'static str {
        "conv2d-bias-act"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp1::name(self);
        self.forward(super::cpu_f32_slice(name, storage, layout)?, None)
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.backward(arg, res, grad)?.1))
    }
}

impl CustomOp2 for Applied {
    fn name(&self) -> &'static str {
        "conv2d-bias-add-act"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        skip: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp2::name(self);
        let skip = super::cpu_f32_slice(name, skip, sl)?;
        self.forward(super::cpu_f32_slice(name, x, xl)?, Some(skip))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _skip: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g_skip, g_x) = self.backward(x, res, grad)?;
        Ok((Some(g_x), Some(g_skip)))
    }
}
