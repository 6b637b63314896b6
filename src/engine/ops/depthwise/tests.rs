//! The kernel against a naive direct convolution and its adjoint, on every kernel path.

use super::*;
use crate::engine::ops::activation::ReluMode;
use crate::engine::ops::kernel_path::{KernelPath, with_path};

/// Deterministic values in `[-1, 1)`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The direct convolution in f64 (`act` applied) and, from an output gradient `gy`, its
/// adjoint through the activation's backward at the op's output `y`.
struct Naive<'a> {
    x: &'a [f64],
    w: &'a [f64],
    b: &'a [f64],
    dims: (usize, usize, usize, usize),
    k: usize,
    s: usize,
    pad: Padding,
}

impl Naive<'_> {
    /// For every output pixel `(plane, oy, ox)` and tap `t`: the input index it reads, if
    /// not padding.
    fn taps(&self, (oh, ow): (usize, usize), mut f: impl FnMut(usize, usize, Option<usize>)) {
        let (n, c, h, w) = self.dims;
        for plane in 0..n * c {
            for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                for t in 0..self.k * self.k {
                    let iy = (oy * self.s + t / self.k).checked_sub(self.pad.top);
                    let ix = (ox * self.s + t % self.k).checked_sub(self.pad.left);
                    let at = iy
                        .zip(ix)
                        .filter(|&(iy, ix)| iy < h && ix < w)
                        .map(|(iy, ix)| plane * h * w + iy * w + ix);
                    f(
                        (plane * oh + oy) * ow + ox,
                        (plane % c) * self.k * self.k + t,
                        at,
                    );
                }
            }
        }
    }

    fn forward(&self, out: (usize, usize), act: Option<ReluOp>) -> Vec<f64> {
        let (n, c, _, _) = self.dims;
        let mut y: Vec<f64> = (0..n * c * out.0 * out.1)
            .map(|i| self.b[i / (out.0 * out.1) % c])
            .collect();
        self.taps(out, |o, t, at| {
            y[o] += self.w[t] * at.map_or(0.0, |i| self.x[i])
        });
        y.iter()
            .map(|&v| act.map_or(v, |a| a.apply(v as f32) as f64))
            .collect()
    }

    fn backward(&self, out: (usize, usize), gated: &[f64]) -> Vec<f64> {
        let mut gx = vec![0.0; self.x.len()];
        self.taps(out, |o, t, at| {
            if let Some(i) = at {
                gx[i] += self.w[t] * gated[o]
            }
        });
        gx
    }
}

#[test]
fn forward_and_backward_match_the_direct_convolution_on_every_path() {
    let relu = ReluOp::relu(ReluMode::Plain);
    let relu6 = ReluOp::relu6(ReluMode::Plain);
    let guided = ReluOp::relu6(ReluMode::Guided);
    let asym = |top, bottom, left, right| Padding {
        top,
        bottom,
        left,
        right,
    };
    // (k, stride, h, w, padding, activation): planes narrower than a vector, spans of one
    // to several register blocks, asymmetric padding, rows no window reads (stride 2 with
    // too little padding after), and planes smaller than the padding.
    let cases = [
        (3, 1, 5, 3, asym(1, 1, 1, 1), None),
        (3, 2, 9, 7, asym(0, 1, 0, 1), Some(relu6)),
        (3, 2, 10, 10, asym(0, 0, 1, 0), Some(relu)),
        (5, 1, 7, 6, asym(2, 1, 1, 2), Some(relu)),
        (5, 2, 23, 37, asym(1, 2, 2, 1), Some(guided)),
        (7, 1, 14, 14, Padding::symmetric(3), None),
        (7, 1, 29, 70, asym(3, 2, 0, 4), Some(relu6)),
        (7, 2, 17, 19, asym(3, 3, 2, 4), None),
        (7, 1, 3, 2, Padding::symmetric(3), Some(relu6)),
        (3, 1, 1, 1, Padding::symmetric(1), None),
    ];
    for (case, &(k, s, h, w, pad, act)) in cases.iter().enumerate() {
        let (n, c) = (2, 3);
        let (x, wt, b) = (
            values(n * c * h * w, 10 + case as u64),
            values(c * k * k, 20 + case as u64),
            values(c, 30 + case as u64),
        );
        let conv = DepthwiseConv2d::new(wt.clone(), b.clone(), c, k, s);
        let op = conv.for_input((n, c, h, w), pad, act).unwrap();
        let (_, _, oh, ow) = op.out_dims();
        let f64s = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (x64, w64, b64) = (f64s(&x), f64s(&wt), f64s(&b));
        let naive = Naive {
            x: &x64,
            w: &w64,
            b: &b64,
            dims: (n, c, h, w),
            k,
            s,
            pad,
        };
        let y_ref = naive.forward((oh, ow), act);
        let gy = values(y_ref.len(), 40 + case as u64);
        for path in KernelPath::ALL.into_iter().filter(|p| p.is_available()) {
            let (y, gx) = with_path(path, || {
                let y = op.forward_vec(&x);
                let gx = op.backward_vec(&y, &gy);
                (y, gx)
            })
            .unwrap();
            let what = format!("case {case} (k={k} s={s} {h}x{w} {pad:?} {act:?}) on {path}");
            assert_eq!((y.len(), gx.len()), (y_ref.len(), x.len()), "{what}");
            let err = y.iter().zip(&y_ref).map(|(&a, &b)| (a as f64 - b).abs());
            let worst = err.fold(0.0, f64::max);
            assert!(worst < 1e-5, "{what}: forward off by {worst}");
            // The adjoint through the activation's backward at the op's own outputs.
            let gated: Vec<f64> = match act {
                Some(a) => y
                    .iter()
                    .zip(&gy)
                    .map(|(&y, &g)| a.grad_at(y, g) as f64)
                    .collect(),
                None => f64s(&gy),
            };
            let gx_ref = naive.backward((oh, ow), &gated);
            let err = gx.iter().zip(&gx_ref).map(|(&a, &b)| (a as f64 - b).abs());
            let worst = err.fold(0.0, f64::max);
            assert!(worst < 1e-5, "{what}: backward off by {worst}");
        }
    }
}

/// Forward + backward times of the layer shapes the ConvNeXt-Tiny and EfficientNet profiles
/// spend the most in (median of several runs). `cargo test --release --lib depthwise_speed --
/// --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check"]
fn depthwise_speed() {
    for (n, c, hw, k, s) in [(8, 96, 56, 7, 1), (8, 384, 14, 7, 1), (8, 96, 112, 3, 2)] {
        let conv = DepthwiseConv2d::new(values(c * k * k, 1), values(c, 2), c, k, s);
        let pad = Padding::tf_same(hw, hw, k, s);
        let op = conv.for_input((n, c, hw, hw), pad, None).unwrap();
        let x = values(n * c * hw * hw, 3);
        let y = op.forward_vec(&x);
        let gy = values(y.len(), 4);
        let time = |f: &dyn Fn()| {
            let mut t: Vec<f64> = (0..9)
                .map(|_| {
                    let t0 = std::time::Instant::now();
                    f();
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        };
        let fwd = time(&|| {
            std::hint::black_box(op.forward_vec(&x));
        });
        let bwd = time(&|| {
            std::hint::black_box(op.backward_vec(&y, &gy));
        });
        println!(
            "[{n}, {c}, {hw}, {hw}] k={k} s={s} ({}): forward {fwd:.2} ms, backward {bwd:.2} ms",
            crate::engine::ops::kernel_path::current()
        );
    }
}
