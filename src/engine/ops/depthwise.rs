//! Depthwise 2-D convolution (one k x k filter per channel) as a single op.
//!
//! Stock candle runs a grouped convolution as one tiny convolution per channel followed by a
//! concat, so a 672-channel layer becomes 1,344 graph nodes, each with its own backward. This
//! op does the whole layer in one pass over the data, forward and backward, with the (possibly
//! asymmetric, TensorFlow-"same") zero padding folded in. Its backward returns only the input
//! gradient: the weights are constants.
//!
//! Each plane is copied once into a zero-padded, stride-phase-split buffer in which every
//! output is a sum of `k x k` taps at fixed offsets from its position (see
//! [`DepthwiseConv2d::layout`]); [`kernel`] sums blocks of positions in registers over all the
//! taps. The backward is the same sum the other way round (a gather over the zero-padded
//! output gradient, not a scatter), so it too stores each value once. What must hold: every
//! value of the output (forward) and of the input gradient (backward) is written exactly
//! once, padding reads as zero, and the taps are summed in row-major order on every kernel
//! path (only the rounding of fused multiply-adds differs between paths).

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::ReluOp;
use super::geometry::Padding;

mod kernel;

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
        let op = "depthwise conv";
        let [(ph, oh), (pw, ow)] = pad.windows(op, (h, w), self.k, self.stride)?;
        let geo = Geometry { h, w, oh, ow, pad };
        // The output, and the padded phase planes each task keeps.
        super::checked_size(op, &[n, c, geo.oh, geo.ow])?;
        super::checked_size(op, &[ph + self.stride, pw + self.stride])?;
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
    /// starting at `(ky / s, kx / s)`: each output is a sum of taps at fixed offsets from its
    /// position, over one contiguous span, which vectorises even for 7 x 7 planes, whatever
    /// the stride. Output rows are computed `cols` wide; the columns past `ow` are discarded
    /// (forward) or zero (backward).
    fn layout(&self, geo: &Geometry) -> PhaseLayout {
        let (k, s) = (self.k, self.stride);
        let rows = geo.oh + (k - 1) / s + 1;
        let cols = (geo.w + geo.pad.left + geo.pad.right).div_ceil(s);
        PhaseLayout { s, rows, cols }
    }

    /// Where each tap `(ky, kx)` reads, row-major, in the phase buffer (forward) and in the
    /// padded output gradient (backward).
    fn taps(&self, geo: &Geometry) -> Taps {
        let (s, l) = (self.stride, self.layout(geo));
        let offs: Vec<usize> = (0..self.k * self.k)
            .map(|t| {
                let (ky, kx) = (t / self.k, t % self.k);
                ((ky % s) * s + kx % s) * l.phase_len() + (ky / s) * l.cols + kx / s
            })
            .collect();
        let reach = offs.iter().copied().max().unwrap_or(0);
        // Row-major within each phase, so the sums keep the forward's tap order.
        let phase = |t: usize| (t / self.k % s) * s + t % self.k % s;
        let mut order: Vec<usize> = (0..self.k * self.k).collect();
        order.sort_by_key(|&t| phase(t));
        let by_phase = (0..s * s)
            .map(|ph| {
                let start = order.partition_point(|&t| phase(t) < ph);
                start..order.partition_point(|&t| phase(t) <= ph)
            })
            .collect();
        // Tap `t` reads `g[q - offs[t]]` at `gpad[reach - offs[t] + q]`.
        let back = order.iter().map(|&t| reach - offs[t]).collect();
        Taps {
            offs,
            order,
            by_phase,
            back,
            reach,
        }
    }

    /// One plane's output, `act` applied, written whole into `out` (which may start
    /// uninitialised).
    fn forward_plane(
        &self,
        ch_act: (usize, Option<ReluOp>),
        x: &[f32],
        out: &mut [MaybeUninit<f32>],
        geo_taps: (&Geometry, &Taps),
        scratch: &mut Vec<f32>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { self.forward_plane_avx2(ch_act, x, out, geo_taps, scratch) };
        }
        self.forward_plane_any(ch_act, x, out, geo_taps, scratch)
    }

    /// [`Self::forward_plane`] built for AVX2, so that the phase copies and the loops around
    /// the kernel are too (built for the baseline x86-64, they ran as SSE2).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn forward_plane_avx2(
        &self,
        ch_act: (usize, Option<ReluOp>),
        x: &[f32],
        out: &mut [MaybeUninit<f32>],
        geo_taps: (&Geometry, &Taps),
        scratch: &mut Vec<f32>,
    ) {
        self.forward_plane_any(ch_act, x, out, geo_taps, scratch)
    }

    #[inline(always)]
    fn forward_plane_any(
        &self,
        (ch, act): (usize, Option<ReluOp>),
        x: &[f32],
        out: &mut [MaybeUninit<f32>],
        (geo, taps): (&Geometry, &Taps),
        scratch: &mut Vec<f32>,
    ) {
        let wt = &self.weight[ch * self.k * self.k..][..self.k * self.k];
        let l = self.layout(geo);
        scratch.resize(l.len() + kernel::MAX_LANES, 0.0);
        let (phases, tail) = scratch.split_at_mut(l.len());
        l.scatter(geo, x, phases);
        // Read only by the last block, whose values there are dropped: any finite values do.
        tail.fill(0.0);
        let (bias, span, cols) = (self.bias[ch], geo.oh * l.cols, (l.cols, geo.ow));
        let src = &scratch[..];
        match act {
            Some(a) => {
                let mut rows = ToRows {
                    out,
                    cols,
                    f: |v| a.apply(v),
                };
                kernel::tap_sums(src, &taps.offs, wt, bias, span, &mut rows)
            }
            None => {
                let mut rows = ToRows {
                    out,
                    cols,
                    f: |v| v,
                };
                kernel::tap_sums(src, &taps.offs, wt, bias, span, &mut rows)
            }
        }
    }

    /// The input gradient of one plane: the adjoint of `forward_plane`, as a gather so that
    /// it too keeps its sums in registers: phase value `q` gets `w[t] * g[q - offs[t]]` from
    /// each tap `t` reading its phase, `g` being the output gradient laid out `cols` wide
    /// and zero-padded by the largest offset on both sides (`gpad`, in `scratch`). `gated`:
    /// the output gradient is `act`'s backward of (`y`, `gy`) rather than `gy`.
    fn backward_plane(
        &self,
        ch_gated: (usize, Option<(ReluOp, &[f32])>),
        gy: &[f32],
        gx: &mut [MaybeUninit<f32>],
        geo_taps: (&Geometry, &Taps),
        scratch: &mut Vec<f32>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { self.backward_plane_avx2(ch_gated, gy, gx, geo_taps, scratch) };
        }
        self.backward_plane_any(ch_gated, gy, gx, geo_taps, scratch)
    }

    /// [`Self::backward_plane`] built for AVX2 (the gated gradient, the copies).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn backward_plane_avx2(
        &self,
        ch_gated: (usize, Option<(ReluOp, &[f32])>),
        gy: &[f32],
        gx: &mut [MaybeUninit<f32>],
        geo_taps: (&Geometry, &Taps),
        scratch: &mut Vec<f32>,
    ) {
        self.backward_plane_any(ch_gated, gy, gx, geo_taps, scratch)
    }

    #[inline(always)]
    fn backward_plane_any(
        &self,
        (ch, gated): (usize, Option<(ReluOp, &[f32])>),
        gy: &[f32],
        gx: &mut [MaybeUninit<f32>],
        (geo, taps): (&Geometry, &Taps),
        scratch: &mut Vec<f32>,
    ) {
        let kk = self.k * self.k;
        let wt = &self.weight[ch * kk..][..kk];
        let l = self.layout(geo);
        let reach = taps.reach;
        let (ow, cols) = (geo.ow, l.cols);
        let gpad_len = reach + l.len() + kernel::MAX_LANES;
        scratch.resize(kk + l.len() + gpad_len, 0.0);
        let (wsorted, rest) = scratch.split_at_mut(kk);
        let (phases, gpad) = rest.split_at_mut(l.len());
        for (d, &t) in wsorted.iter_mut().zip(&taps.order) {
            *d = wt[t];
        }
        let (head, rest) = gpad.split_at_mut(reach);
        head.fill(0.0);
        let (rows, tail) = rest.split_at_mut(geo.oh * cols);
        for (r, (d, gy)) in rows
            .chunks_exact_mut(cols)
            .zip(gy.chunks_exact(ow))
            .enumerate()
        {
            let (d, zeros) = d.split_at_mut(ow);
            match gated {
                Some((act, y)) => d
                    .iter_mut()
                    .zip(gy.iter().zip(&y[r * ow..]))
                    .for_each(|(d, (&g, &y))| *d = act.grad_at(y, g)),
                None => d.copy_from_slice(gy),
            }
            zeros.fill(0.0);
        }
        tail.fill(0.0);
        let pl = l.phase_len();
        for (ph, ts) in taps.by_phase.iter().enumerate() {
            // Only the phase rows holding input pixels are gathered, only from the taps that
            // read this phase (the others' terms are all zero).
            let (top, s) = (geo.pad.top, l.s);
            let (ry, rx) = (ph / s, ph % s);
            let lo = top.saturating_sub(ry).div_ceil(s).min(l.rows);
            let hi = (top + geo.h).saturating_sub(ry).div_ceil(s).min(l.rows);
            let q0 = (ry * s + rx) * pl + lo * cols;
            let dst = &mut phases[q0..q0 + (hi.max(lo) - lo) * cols];
            let (back, w) = (&taps.back[ts.clone()], &wsorted[ts.clone()]);
            let n = dst.len();
            kernel::tap_sums(&gpad[q0..], back, w, 0.0, n, &mut ToSlice(dst));
        }
        l.gather(geo, phases, gx);
    }
}

/// The tap offsets of one geometry (see [`DepthwiseConv2d::taps`]).
struct Taps {
    offs: Vec<usize>,
    /// The taps sorted by the phase they read (backward).
    order: Vec<usize>,
    /// Each phase's taps: a range of `order`.
    by_phase: Vec<std::ops::Range<usize>>,
    /// Where each tap of `order` reads in the padded gradient (backward).
    back: Vec<usize>,
    /// The largest offset: the zero padding on each side of the backward's gradient.
    reach: usize,
}

/// Sums into the output rows, through `f` (see [`emit_rows`]).
struct ToRows<'a, F> {
    out: &'a mut [MaybeUninit<f32>],
    /// The span's width, the output's.
    cols: (usize, usize),
    f: F,
}

impl<F: Fn(f32) -> f32> kernel::Emit for ToRows<'_, F> {
    #[inline(always)]
    fn emit(&mut self, p: usize, sums: &[f32]) {
        emit_rows(self.out, self.cols, p, sums, &self.f)
    }
}

/// Sums copied into consecutive values.
struct ToSlice<'a>(&'a mut [f32]);

impl kernel::Emit for ToSlice<'_> {
    #[inline(always)]
    fn emit(&mut self, p: usize, sums: &[f32]) {
        self.0[p..p + sums.len()].copy_from_slice(sums)
    }
}

/// Writes a block of sums at positions `p..` of the `cols`-wide span into the `ow`-wide
/// output rows they cover, through `f` (the activation); columns past `ow` are dropped.
#[inline(always)]
fn emit_rows(
    out: &mut [MaybeUninit<f32>],
    (cols, ow): (usize, usize),
    p: usize,
    sums: &[f32],
    f: impl Fn(f32) -> f32,
) {
    let (mut r, mut c, mut i) = (p / cols, p % cols, 0);
    while i < sums.len() {
        let run = (cols - c).min(sums.len() - i);
        if c < ow {
            let n = (ow - c).min(run);
            let o = &mut out[r * ow + c..][..n];
            o.iter_mut().zip(&sums[i..i + n]).for_each(|(o, &v)| {
                o.write(f(v));
            });
        }
        (r, c, i) = (r + 1, 0, i + run);
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

    /// Writes the whole phase buffer from an input plane: its pixels, zeros everywhere else
    /// (each value once: no zero-fill first). Inlined, as `gather` is, into the per-path
    /// plane functions, whose instruction set it then uses.
    #[inline(always)]
    fn scatter(&self, geo: &Geometry, x: &[f32], phases: &mut [f32]) {
        let (s, top) = (self.s, geo.pad.top);
        for (ph, phase) in phases.chunks_exact_mut(self.phase_len()).enumerate() {
            let (ry, rx) = (ph / s, ph % s);
            // The phase columns holding input columns: `q0 .. q0 + n`, from column `ix0`.
            let q0 = geo.pad.left.saturating_sub(rx).div_ceil(s);
            let ix0 = q0 * s + rx - geo.pad.left;
            let n = geo.w.saturating_sub(ix0).div_ceil(s);
            for (qy, row) in phase.chunks_exact_mut(self.cols).enumerate() {
                let iy = (qy * s + ry).checked_sub(top).filter(|&iy| iy < geo.h);
                let Some(iy) = iy.filter(|_| n > 0) else {
                    row.fill(0.0);
                    continue;
                };
                let (before, rest) = row.split_at_mut(q0);
                let (data, after) = rest.split_at_mut(n);
                before.fill(0.0);
                let src = &x[iy * geo.w + ix0..(iy + 1) * geo.w];
                match s {
                    1 => data.copy_from_slice(src),
                    // As pairs, which vectorise (a `step_by(2)` does not).
                    2 => {
                        let (pairs, odd) = src.as_chunks::<2>();
                        let (d, last) = data.split_at_mut(pairs.len());
                        d.iter_mut().zip(pairs).for_each(|(d, p)| *d = p[0]);
                        last.iter_mut().zip(odd).for_each(|(d, &v)| *d = v);
                    }
                    _ => data
                        .iter_mut()
                        .zip(src.iter().step_by(s))
                        .for_each(|(d, &v)| *d = v),
                }
                after.fill(0.0);
            }
        }
    }

    /// Reads an input-shaped plane back from the phases, writing every value of `x` (rows no
    /// window reads: 0); the adjoint of `scatter`.
    #[inline(always)]
    fn gather(&self, geo: &Geometry, phases: &[f32], x: &mut [MaybeUninit<f32>]) {
        for (iy, row) in x.chunks_exact_mut(geo.w).enumerate() {
            let Some(base) = self.row_base(geo, iy) else {
                row.fill(MaybeUninit::new(0.0));
                continue;
            };
            let src =
                |(rx, _, q0): (usize, usize, usize)| &phases[base + rx * self.phase_len() + q0..];
            if self.s == 2 && geo.w >= 2 {
                // Both column phases at once, as pairs, which vectorise.
                let mut phases = self.column_phases(geo);
                let (a, b) = (phases.next().unwrap(), phases.next().unwrap());
                let (even, odd) = if a.1 == 0 {
                    (src(a), src(b))
                } else {
                    (src(b), src(a))
                };
                let (pairs, last) = row.as_chunks_mut::<2>();
                for (p, (&e, &o)) in pairs.iter_mut().zip(even.iter().zip(odd)) {
                    p[0].write(e);
                    p[1].write(o);
                }
                if let Some(d) = last.first_mut() {
                    d.write(even[pairs.len()]);
                }
                continue;
            }
            for (rx, ix0, q0) in self.column_phases(geo) {
                let src = src((rx, ix0, q0));
                row[ix0..]
                    .iter_mut()
                    .step_by(self.s)
                    .zip(src)
                    .for_each(|(d, &v)| {
                        d.write(v);
                    });
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
        let taps = self.conv.taps(g);
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(out_plane)
                .enumerate()
                .for_each_init(Vec::new, |scratch, (i, o)| {
                    let xp = &x[i * in_plane..(i + 1) * in_plane];
                    self.conv
                        .forward_plane((i % c, self.act), xp, o, (g, &taps), scratch);
                })
        };
        // SAFETY: `forward_plane` writes its plane whole.
        unsafe { super::vec_written_by(self.batch * c * out_plane, fill) }
    }

    /// The input gradient from the output `y` and its gradient `gy`.
    pub(crate) fn backward_vec(&self, y: &[f32], gy: &[f32]) -> Vec<f32> {
        let (c, g) = (self.conv.channels, &self.geo);
        let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        let taps = self.conv.taps(g);
        let fill = |gx: &mut [MaybeUninit<f32>]| {
            gx.par_chunks_mut(in_plane)
                .enumerate()
                .for_each_init(Vec::new, |scratch, (i, gxp)| {
                    let span = i * out_plane..(i + 1) * out_plane;
                    let gated = self.act.map(|a| (a, &y[span.clone()]));
                    self.conv
                        .backward_plane((i % c, gated), &gy[span], gxp, (g, &taps), scratch);
                })
        };
        // SAFETY: `backward_plane` writes its plane whole (`gather` writes every value).
        unsafe { super::vec_written_by(self.batch * c * in_plane, fill) }
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

#[cfg(test)]
mod tests;
