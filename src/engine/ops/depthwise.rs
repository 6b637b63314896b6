//! Depthwise 2-D convolution (one k x k filter per channel) as a single op.
//!
//! Stock candle runs a grouped convolution as one tiny convolution per channel followed by a
//! concat, so a 672-channel layer becomes 1,344 graph nodes, each with its own backward. This
//! op does the whole layer in one pass over the data, forward and backward, with the (possibly
//! asymmetric, TensorFlow-"same") zero padding folded in. Its backward returns only the input
//! gradient: the weights are constants.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::ReluOp;
use super::geometry::Padding;

/// Depthwise convolution with bias. `weight` is `[channels, k, k]` row-major.
#[derive(Clone, Debug)]
pub struct DepthwiseConv2d {
    weight: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    pub channels: usize,
    pub k: usize,
    pub stride: usize,
}

/// Sizes of one forward call.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    pad: Padding,
}

/// The op applied to one input; the padding depends on the input size. Also a step of
/// [`super::chain`].
pub(crate) struct Applied {
    conv: DepthwiseConv2d,
    geo: Geometry,
    batch: usize,
    act: Option<ReluOp>,
}

impl DepthwiseConv2d {
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, channels: usize, k: usize, stride: usize) -> Self {
        assert_eq!(weight.len(), channels * k * k, "depthwise weight size");
        assert_eq!(bias.len(), channels, "depthwise bias size");
        DepthwiseConv2d {
            weight: Arc::new(weight),
            bias: Arc::new(bias),
            channels,
            k,
            stride,
        }
    }

    /// `x`: `[n, channels, h, w]` on the CPU, f32.
    pub fn forward(&self, x: &Tensor, pad: Padding) -> Result<Tensor> {
        self.forward_act(x, pad, None)
    }

    /// The convolution followed by `act`, as one op (see [`super::conv_act`] for why).
    pub fn forward_act(&self, x: &Tensor, pad: Padding, act: Option<ReluOp>) -> Result<Tensor> {
        x.contiguous()?
            .apply_op1(self.for_input(x.dims4()?, pad, act)?)
    }

    /// The op for inputs `[n, channels, h, w]`.
    pub(crate) fn for_input(
        &self,
        (n, c, h, w): (usize, usize, usize, usize),
        pad: Padding,
        act: Option<ReluOp>,
    ) -> Result<Applied> {
        if c != self.channels {
            candle_core::bail!("depthwise conv expects {} channels, got {c}", self.channels)
        }
        let (ph, pw) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
        if ph < self.k || pw < self.k {
            candle_core::bail!("depthwise conv: input {h}x{w} is smaller than the kernel")
        }
        let geo = Geometry {
            h,
            w,
            oh: (ph - self.k) / self.stride + 1,
            ow: (pw - self.k) / self.stride + 1,
            pad,
        };
        Ok(Applied {
            conv: self.clone(),
            geo,
            batch: n,
            act,
        })
    }

    /// The padded input of one plane, split into `stride x stride` phases (phase `(ry, rx)`
    /// holds padded pixels `(qy * s + ry, qx * s + rx)` at `(qy, qx)`). In that layout kernel
    /// tap `(ky, kx)` reads, for every output pixel at once, one contiguous run of its phase
    /// starting at `(ky / s, kx / s)`: each tap is a single long multiply-add over the plane,
    /// which vectorises even for 7 x 7 planes, whatever the stride. Output rows are computed
    /// `pws` wide; the columns past `ow` are discarded (forward) or zero (backward).
    fn layout(&self, geo: &Geometry) -> PhaseLayout {
        let (k, s) = (self.k, self.stride);
        let rows = geo.oh + (k - 1) / s + 1;
        let cols = (geo.w + geo.pad.left + geo.pad.right).div_ceil(s);
        PhaseLayout { s, rows, cols }
    }

    /// Where tap `(ky, kx)` starts reading in the phase buffer.
    fn tap_offset(&self, ky: usize, kx: usize, l: &PhaseLayout) -> usize {
        let s = self.stride;
        ((ky % s) * s + kx % s) * l.phase_len() + (ky / s) * l.cols + kx / s
    }

    /// One plane's output, `act` applied, written whole into `out` (which may start
    /// uninitialised).
    fn forward_plane(
        &self,
        (ch, act): (usize, Option<ReluOp>),
        x: &[f32],
        out: &mut [MaybeUninit<f32>],
        geo: &Geometry,
        scratch: &mut Vec<f32>,
    ) {
        let k = self.k;
        let wt = &self.weight[ch * k * k..(ch + 1) * k * k];
        let l = self.layout(geo);
        let span = geo.oh * l.cols;
        if scratch.len() < l.len() + span {
            scratch.resize(l.len() + span, 0.0);
        }
        let (phases, acc) = scratch[..l.len() + span].split_at_mut(l.len());
        // The padding must read as zeros; `scatter` writes the rest.
        phases.fill(0.0);
        l.scatter(geo, x, phases);
        acc.fill(self.bias[ch]);
        for ky in 0..k {
            for kx in 0..k {
                let (wv, src) = (
                    wt[ky * k + kx],
                    &phases[self.tap_offset(ky, kx, &l)..][..span],
                );
                super::simd::axpy(acc, src, wv);
            }
        }
        let act = |v: f32| act.map_or(v, |a| a.apply(v));
        for (o, a) in out.chunks_exact_mut(geo.ow).zip(acc.chunks_exact(l.cols)) {
            o.iter_mut().zip(a).for_each(|(o, &a)| {
                o.write(act(a));
            });
        }
    }

    /// The input gradient of one plane: the adjoint of `forward_plane`.
    fn backward_plane(
        &self,
        ch: usize,
        gy: &[f32],
        gx: &mut [f32],
        geo: &Geometry,
        scratch: &mut Vec<f32>,
    ) {
        let k = self.k;
        let wt = &self.weight[ch * k * k..(ch + 1) * k * k];
        let l = self.layout(geo);
        let span = geo.oh * l.cols;
        scratch.clear();
        scratch.resize(l.len() + span, 0.0);
        let (phases, g) = scratch.split_at_mut(l.len());
        for (d, r) in g.chunks_exact_mut(l.cols).zip(gy.chunks_exact(geo.ow)) {
            d[..geo.ow].copy_from_slice(r);
        }
        for ky in 0..k {
            for kx in 0..k {
                let (wv, dst) = (
                    wt[ky * k + kx],
                    &mut phases[self.tap_offset(ky, kx, &l)..][..span],
                );
                super::simd::axpy(dst, g, wv);
            }
        }
        l.gather(geo, phases, gx);
    }
}

/// Sizes of the phase-split padded plane (see [`DepthwiseConv2d::layout`]).
struct PhaseLayout {
    s: usize,
    rows: usize,
    cols: usize,
}

impl PhaseLayout {
    fn phase_len(&self) -> usize {
        self.rows * self.cols
    }

    fn len(&self) -> usize {
        self.s * self.s * self.phase_len()
    }

    /// For input row `iy`: the start of its row in phase `(py % s, 0)`, or None when no
    /// window reads it.
    fn row_base(&self, geo: &Geometry, iy: usize) -> Option<usize> {
        let (s, py) = (self.s, iy + geo.pad.top);
        (py / s < self.rows).then(|| (py % s) * s * self.phase_len() + (py / s) * self.cols)
    }

    /// For each column phase `rx`: the first input column in it and its index in the phase.
    fn column_phases(&self, geo: &Geometry) -> impl Iterator<Item = (usize, usize, usize)> {
        let (s, pl) = (self.s, geo.pad.left);
        (0..s).filter_map(move |rx| {
            let ix0 = (rx + s - pl % s) % s;
            (ix0 < geo.w).then(|| (rx, ix0, (ix0 + pl) / s))
        })
    }

    /// Copies an input plane into the zeroed phase buffer.
    fn scatter(&self, geo: &Geometry, x: &[f32], phases: &mut [f32]) {
        for (iy, row) in x.chunks_exact(geo.w).enumerate() {
            let Some(base) = self.row_base(geo, iy) else {
                break;
            };
            for (rx, ix0, q0) in self.column_phases(geo) {
                let dst = &mut phases[base + rx * self.phase_len() + q0..];
                if self.s == 1 {
                    dst[..geo.w].copy_from_slice(row);
                } else {
                    dst.iter_mut()
                        .zip(row[ix0..].iter().step_by(self.s))
                        .for_each(|(d, &v)| *d = v);
                }
            }
        }
    }

    /// The inverse of `scatter`: reads an input-shaped plane back (rows no window reads: 0).
    fn gather(&self, geo: &Geometry, phases: &[f32], x: &mut [f32]) {
        for (iy, row) in x.chunks_exact_mut(geo.w).enumerate() {
            let Some(base) = self.row_base(geo, iy) else {
                row.fill(0.0);
                continue;
            };
            for (rx, ix0, q0) in self.column_phases(geo) {
                let src = &phases[base + rx * self.phase_len() + q0..];
                if self.s == 1 {
                    row.copy_from_slice(&src[..geo.w]);
                } else {
                    row[ix0..]
                        .iter_mut()
                        .step_by(self.s)
                        .zip(src)
                        .for_each(|(d, &v)| *d = v);
                }
            }
        }
    }
}

impl Applied {
    pub(crate) fn out_dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.conv.channels, self.geo.oh, self.geo.ow)
    }

    /// The output of the whole batch `x`, `out_dims()` row-major.
    pub(crate) fn forward_vec(&self, x: &[f32]) -> Vec<f32> {
        let (c, g) = (self.conv.channels, &self.geo);
        let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(out_plane)
                .enumerate()
                .for_each_init(Vec::new, |scratch, (i, o)| {
                    let xp = &x[i * in_plane..(i + 1) * in_plane];
                    self.conv
                        .forward_plane((i % c, self.act), xp, o, g, scratch);
                })
        };
        // SAFETY: `forward_plane` writes its plane whole.
        unsafe { super::vec_written_by(self.batch * c * out_plane, fill) }
    }

    /// The input gradient from the output `y` and its gradient `gy`.
    pub(crate) fn backward_vec(&self, y: &[f32], gy: &[f32]) -> Vec<f32> {
        let (c, g) = (self.conv.channels, &self.geo);
        let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        let mut gx = vec![0f32; self.batch * c * in_plane];
        gx.par_chunks_mut(in_plane).enumerate().for_each_init(
            || (vec![MaybeUninit::uninit(); out_plane], Vec::new()),
            |(gated, scratch), (i, gxp)| {
                let span = i * out_plane..(i + 1) * out_plane;
                let gyp = match self.act {
                    Some(act) => {
                        act.grad_from_outputs(gated, &y[span.clone()], &gy[span]);
                        // SAFETY: `grad_from_outputs` writes all of `gated` (`out_plane` long).
                        &*unsafe { super::assume_init(gated) }
                    }
                    None => &gy[span],
                };
                self.conv.backward_plane(i % c, gyp, gxp, g, scratch);
            },
        );
        gx
    }
}

impl CustomOp1 for Applied {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        Ok((
            CpuStorage::F32(self.forward_vec(x)),
            Shape::from(self.out_dims()),
        ))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let gx = super::with_cpu_f32(res, |y| {
            super::with_cpu_f32(grad, |gy| self.backward_vec(y, gy))
        })??;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}
