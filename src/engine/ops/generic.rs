//! The device-generic path: the layers' forward and input-gradient passes written with stock
//! candle tensor ops that have CUDA and Metal kernels (views, elementwise and broadcast ops,
//! `cat`, im2col convolution). No per-channel loops, no host round trips: it is what runs on a
//! GPU, and it runs on the CPU too, so `cargo test` checks it against the fast CPU kernels.
//!
//! Strided windows without copies: a padded input `[n, c, H, W]` whose sides are multiples of
//! the stride `s` is viewed, for free, as `[n, c, H/s, s, W/s, s]`; tap `(dy, dx)` of a k x k
//! window is then the view `[.., dy/s .. dy/s + oh, dy%s, dx/s .. dx/s + ow, dx%s]`.

use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Layout, MetalStorage, Result, Shape, Tensor,
};

use super::geometry::Padding;

/// A backward from `(input, output, output gradient)` to the input gradient.
type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// `y`, computed from a detached `x`, joined to the graph with `bwd` as its backward to `x`:
/// the forward needs no graph nodes and the backward computes only what saliency needs.
pub(crate) fn attach(
    x: &Tensor,
    y: Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y);
    }
    // The op hands `y`'s storage on whole, so it must start at the storage's first element.
    let y = if y.is_contiguous() && y.layout().start_offset() == 0 {
        y
    } else {
        y.copy()?
    };
    x.apply_op2(&y, Attached(Box::new(bwd)))
}

struct Attached(Box<Backward>);

fn pass_through<S: candle_core::backend::BackendStorage>(s: &S, l: &Layout) -> Result<(S, Shape)> {
    Ok((s.try_clone(l)?, l.shape().clone()))
}

impl CustomOp2 for Attached {
    fn name(&self) -> &'static str {
        "generic-input-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pass_through(y, l)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        y: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        pass_through(y, l)
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        y: &MetalStorage,
        l: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        pass_through(y, l)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.0)(x, res, grad)?), None))
    }
}

/// `x` `[n, c, h, w]` with `top`/`bottom`/`left`/`right` pixels of `value` around it.
pub(crate) fn pad2d(x: &Tensor, (top, bottom, left, right): Pad4, value: f32) -> Result<Tensor> {
    let side = |x: &Tensor, dim: usize, before: usize, after: usize| -> Result<Tensor> {
        if before + after == 0 {
            return Ok(x.clone());
        }
        if value == 0.0 {
            return x.pad_with_zeros(dim, before, after);
        }
        let mut dims = x.dims().to_vec();
        let mut parts = Vec::with_capacity(3);
        if before > 0 {
            dims[dim] = before;
            parts.push(Tensor::full(value, dims.as_slice(), x.device())?);
        }
        parts.push(x.clone());
        if after > 0 {
            dims[dim] = after;
            parts.push(Tensor::full(value, dims.as_slice(), x.device())?);
        }
        Tensor::cat(&parts, dim)
    };
    side(&side(x, 2, top, bottom)?, 3, left, right)
}

/// Pixels added on each side: `(top, bottom, left, right)`.
type Pad4 = (usize, usize, usize, usize);

/// Inserts `s - 1` zeros after every row and column: `[n, c, h, w] -> [n, c, h*s, w*s]`.
fn dilate(g: &Tensor, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(g.clone());
    }
    let (n, c, h, w) = g.dims4()?;
    g.reshape((n, c, h, 1, w, 1))?
        .pad_with_zeros(3, 0, s - 1)?
        .pad_with_zeros(5, 0, s - 1)?
        .reshape((n, c, h * s, w * s))
}

/// Where the taps of a k x k window with stride `s` read a padded input.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taps {
    pub k: usize,
    pub s: usize,
    pub pad: Padding,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    /// The padded input's sides, rounded up to multiples of `s`, divided by `s`.
    hq: usize,
    wq: usize,
}

impl Taps {
    pub(crate) fn new((h, w): (usize, usize), k: usize, s: usize, pad: Padding) -> Result<Self> {
        let (hp, wp) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
        if hp < k || wp < k || s == 0 {
            candle_core::bail!("a {k} x {k} window does not fit a {h} x {w} input")
        }
        Ok(Taps {
            k,
            s,
            pad,
            h,
            w,
            oh: (hp - k) / s + 1,
            ow: (wp - k) / s + 1,
            hq: hp.div_ceil(s),
            wq: wp.div_ceil(s),
        })
    }

    /// The padding, then up to multiples of `s` (never read by a tap).
    fn full_pad(&self) -> Pad4 {
        let (p, s) = (self.pad, self.s);
        (
            p.top,
            self.hq * s - self.h - p.top,
            p.left,
            self.wq * s - self.w - p.left,
        )
    }

    /// `x` `[n, c, h, w]` padded with `value` and viewed as `[n, c, hq, s, wq, s]`.
    pub(crate) fn padded(&self, x: &Tensor, value: f32) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let s = self.s;
        pad2d(x, self.full_pad(), value)?.reshape((n, c, self.hq, s, self.wq, s))
    }

    /// Tap `(dy, dx)` of a [`Taps::padded`] input: `[n, c, oh, ow]`, a strided view.
    pub(crate) fn view(&self, xq: &Tensor, dy: usize, dx: usize) -> Result<Tensor> {
        let s = self.s;
        xq.narrow(2, dy / s, self.oh)?
            .narrow(3, dy % s, 1)?
            .narrow(4, dx / s, self.ow)?
            .narrow(5, dx % s, 1)?
            .squeeze(5)?
            .squeeze(3)
    }

    /// The taps in row-major window order.
    pub(crate) fn all(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let k = self.k;
        (0..k * k).map(move |t| (t / k, t % k))
    }

    /// The sum of `parts[tap]` `[n, c, oh, ow]`, each put back where its tap read: the adjoint
    /// of [`Taps::view`], as a gradient for the unpadded input `[n, c, h, w]`.
    pub(crate) fn scatter(&self, parts: Vec<Option<Tensor>>) -> Result<Tensor> {
        let (s, k) = (self.s, self.k);
        // One slab per residue (dy % s, dx % s): the taps sharing it land on the same phase.
        let mut slabs: Vec<Option<Tensor>> = vec![None; s * s];
        for ((dy, dx), part) in self.all().zip(parts) {
            let Some(part) = part else { continue };
            let (qy, qx) = (dy / s, dx / s);
            let placed = pad2d(
                &part,
                (qy, self.hq - self.oh - qy, qx, self.wq - self.ow - qx),
                0.0,
            )?;
            let slab = &mut slabs[(dy % s) * s + dx % s];
            *slab = Some(match slab.take() {
                None => placed,
                Some(acc) => (acc + placed)?,
            });
        }
        let Some(any) = slabs.iter().flatten().next().cloned() else {
            candle_core::bail!("a {k} x {k} window without taps")
        };
        let slabs = slabs
            .into_iter()
            .map(|slab| slab.map_or_else(|| any.zeros_like(), Ok))
            .collect::<Result<Vec<_>>>()?;
        let (n, c, _, _) = any.dims4()?;
        let full = if s == 1 {
            slabs.into_iter().next().expect("one slab")
        } else {
            // [n, c, hq, wq] per (ry, rx) -> [n, c, hq, s, wq, s] -> [n, c, hq*s, wq*s].
            let rows = slabs
                .chunks(s)
                .map(|row| Tensor::stack(row, 4))
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&rows, 3)?.reshape((n, c, self.hq * s, self.wq * s))?
        };
        self.crop(&full)
    }

    /// The unpadded part `[n, c, h, w]` of a padded, rounded-up `[n, c, hq*s, wq*s]`.
    fn crop(&self, full: &Tensor) -> Result<Tensor> {
        full.narrow(2, self.pad.top, self.h)?
            .narrow(3, self.pad.left, self.w)
    }
}

/// Depthwise convolution: one k x k filter per channel, as a sum over taps of shifted views
/// times per-channel weights.
#[derive(Clone, Debug)]
pub struct Depthwise {
    /// Tap `t = dy * k + dx`'s weights, `[1, c, 1, 1]` each, on the model's device.
    taps: std::sync::Arc<Vec<Tensor>>,
    bias: Tensor,
    k: usize,
    stride: usize,
}

impl Depthwise {
    /// From `weight` `[c, 1, k, k]` and `bias` `[c]`, placed on `device`.
    pub fn new(
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let (c, _, k, _) = weight.dims4()?;
        let flat = weight.reshape((c, k * k))?;
        let taps = (0..k * k)
            .map(|t| {
                flat.narrow(1, t, 1)?
                    .reshape((1, c, 1, 1))?
                    .to_device(device)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Depthwise {
            taps: std::sync::Arc::new(taps),
            bias: bias.reshape((1, c, 1, 1))?.to_device(device)?,
            k,
            stride,
        })
    }

    pub fn forward(&self, x: &Tensor, pad: Padding) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let taps = Taps::new((h, w), self.k, self.stride, pad)?;
        let xq = taps.padded(&x.detach(), 0.0)?;
        let mut acc = self.bias.clone();
        for (t, (dy, dx)) in taps.all().enumerate() {
            acc = taps
                .view(&xq, dy, dx)?
                .broadcast_mul(&self.taps[t])?
                .broadcast_add(&acc)?;
        }
        let weights = self.taps.clone();
        attach(x, acc, move |_, _, g| {
            depthwise_input_grad(&taps, &weights, g)
        })
    }
}

/// The input gradient of a depthwise convolution: the output gradient spread back over the
/// taps. Written as a correlation of the (dilated, padded) gradient with the flipped filter,
/// so that every tap is a view and nothing is scattered.
fn depthwise_input_grad(taps: &Taps, weights: &[Tensor], g: &Tensor) -> Result<Tensor> {
    let (k, s) = (taps.k, taps.s);
    let (rows, cols) = (taps.hq * s, taps.wq * s);
    let gd = dilate(&g.contiguous()?, s)?;
    let (_, _, gh, gw) = gd.dims4()?;
    // gx[y] = sum over dy of gd[y - dy] w[dy] = sum of gp[y + k - 1 - dy] w[dy].
    let gp = pad2d(
        &gd,
        (
            k - 1,
            rows.saturating_sub(gh),
            k - 1,
            cols.saturating_sub(gw),
        ),
        0.0,
    )?;
    let mut acc: Option<Tensor> = None;
    for (t, (dy, dx)) in taps.all().enumerate() {
        let view = gp
            .narrow(2, k - 1 - dy, rows)?
            .narrow(3, k - 1 - dx, cols)?;
        let term = view.broadcast_mul(&weights[t])?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    taps.crop(&acc.expect("k >= 1"))
}

/// Max pooling: the maximum over the taps' views (padding reads -inf, so it never wins).
pub fn max_pool(x: &Tensor, k: usize, stride: usize, pad: Padding) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let taps = Taps::new((h, w), k, stride, pad)?;
    let xq = taps.padded(&x.detach(), f32::NEG_INFINITY)?;
    let mut out: Option<Tensor> = None;
    for (dy, dx) in taps.all() {
        let v = taps.view(&xq, dy, dx)?;
        out = Some(match out {
            None => v.contiguous()?,
            Some(m) => m.maximum(&v)?,
        });
    }
    let out = out.expect("k >= 1");
    attach(x, out, move |x, y, g| max_pool_input_grad(&taps, x, y, g))
}

/// Each output's gradient goes to the first input of its window (row-major) that holds the
/// maximum, as PyTorch and the CPU kernel do: a first-maximum mask per tap.
fn max_pool_input_grad(taps: &Taps, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let xq = taps.padded(&x.detach(), f32::NEG_INFINITY)?;
    let mut taken = y.zeros_like()?;
    let mut parts = Vec::with_capacity(taps.k * taps.k);
    for (dy, dx) in taps.all() {
        let hit = taps.view(&xq, dy, dx)?.eq(y)?.to_dtype(DType::F32)?;
        let first = hit.mul(&taken.affine(-1.0, 1.0)?)?;
        taken = (taken + &first)?;
        parts.push(Some(first.mul(g)?));
    }
    taps.scatter(parts)
}

/// The input gradient of a dense convolution (`weight` `[cout, cin, k, k]`, stride `s`, input
/// already padded to `h x w`): a stride-1 convolution of the dilated, padded output gradient
/// with the flipped, transposed filter, so that it runs on the device's im2col + GEMM.
pub(crate) fn conv_input_grad(
    weight: &Tensor,
    s: usize,
    (h, w): (usize, usize),
    g: &Tensor,
) -> Result<Tensor> {
    let (_, _, k, _) = weight.dims4()?;
    let gd = dilate(&g.contiguous()?, s)?;
    let (_, _, gh, gw) = gd.dims4()?;
    let gp = pad2d(
        &gd,
        (k - 1, h.saturating_sub(gh), k - 1, w.saturating_sub(gw)),
        0.0,
    )?;
    let flipped = flip_spatial(weight)?.transpose(0, 1)?.contiguous()?;
    // Rows and columns past the last window get no gradient (the dilation's zeros).
    gp.conv2d(&flipped, 0, 1, 1, 1)?
        .narrow(2, 0, h)?
        .narrow(3, 0, w)
}

/// `w` `[.., k, k]` turned by 180 degrees, from views and one `cat` per axis (candle's `flip`
/// gathers with i64 indices, which not every device supports).
fn flip_spatial(w: &Tensor) -> Result<Tensor> {
    let mut out = w.clone();
    for dim in [2, 3] {
        let k = out.dim(dim)?;
        let rows = (0..k)
            .rev()
            .map(|i| out.narrow(dim, i, 1))
            .collect::<Result<Vec<_>>>()?;
        out = Tensor::cat(&rows, dim)?;
    }
    Ok(out)
}
