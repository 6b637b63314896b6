//! The fused LayerNormalization, Softmax and GELU kernels (the fast CPU path) against the
//! tensor-op formulas they replace (the device-generic path), forward and backward, on both
//! kernel paths, including rows of large magnitude; and the exporters' five-node GELU landing
//! on the fused kernel. (Their gradients against finite differences: [`super::op_gradients`].)

use candle_core::{Device, Tensor, Var};

use super::ops::{Ctx, Kind, Unary};
use super::value::Val;
use crate::engine::ops::Backend;
use crate::engine::ops::activation::ReluMode;
use crate::engine::ops::kernel_path::{KernelPath, with_path};

/// Pseudo-normal values (sum of uniforms) times `scale`, plus `shift`.
fn values(n: usize, seed: u64, scale: f32, shift: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * scale + shift)
        .collect()
}

/// `[rows, d]`-shaped `dims`: ordinary rows, then rows 100x and 1000x larger, one shifted far
/// from 0 (softmax's max subtraction, the variance's cancellation) and one constant.
fn input(dims: &[usize], seed: u64) -> Tensor {
    let d = *dims.last().unwrap();
    let rows: usize = dims.iter().product::<usize>() / d;
    let mut v = Vec::new();
    for r in 0..rows {
        let (scale, shift) = match r % 5 {
            0 | 1 => (1.0, 0.0),
            2 => (100.0, 0.0),
            3 => (1000.0, 500.0),
            _ => (0.0, 3.0),
        };
        v.extend(values(d, seed + r as u64, scale, shift));
    }
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Output and input gradient of `kind` on `backend`, for the loss `sum(y * r)`.
fn forward_backward(kind: &Kind, backend: Backend, xs: &[Tensor]) -> (Vec<f32>, Vec<f32>) {
    let x = Var::from_tensor(&xs[0]).unwrap();
    let mut vals = vec![Val::F(x.as_tensor().clone())];
    vals.extend(xs[1..].iter().map(|t| Val::F(t.clone())));
    let refs: Vec<Option<&Val>> = vals.iter().map(Some).collect();
    let ctx = Ctx {
        mode: ReluMode::Plain,
        backend,
        device: Device::Cpu,
    };
    let Val::F(y) = kind.run(&refs, &ctx).unwrap().remove(0) else {
        panic!("an integer output")
    };
    let n = y.elem_count();
    let r = Tensor::from_vec(values(n, 77, 1.0, 0.0), y.dims(), &Device::Cpu).unwrap();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (flat(&y), flat(grads.get(x.as_tensor()).unwrap()))
}

/// Largest `|a - b|`, with where.
fn max_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    let diffs = a.iter().zip(b).map(|(a, b)| (a - b).abs());
    diffs
        .enumerate()
        .fold((0.0, 0), |m, (i, d)| if d > m.0 { (d, i) } else { m })
}

/// The ops and inputs compared, with the tolerance on the gradient, which is relative to its
/// largest value (a 1000x row's softmax has gradients far larger than an ordinary one's).
fn cases() -> Vec<(String, Kind, Vec<Tensor>)> {
    let cpu = &Device::Cpu;
    let c = |d: usize, seed: u64| Tensor::from_vec(values(d, seed, 0.5, 1.0), d, cpu).unwrap();
    let mut out = Vec::new();
    for (dims, d) in [
        (vec![2, 5, 768], 768),
        (vec![10, 7], 7),
        (vec![3, 5, 37], 37),
    ] {
        for with_bias in [true, false] {
            let mut xs = vec![input(&dims, 1), c(d, 2)];
            if with_bias {
                xs.push(c(d, 3));
            }
            let kind = Kind::LayerNorm {
                axis: -1,
                eps: 1e-5,
            };
            out.push((format!("LayerNorm {dims:?} bias {with_bias}"), kind, xs));
        }
        for (axis, legacy) in [(-1, false), (1, true)] {
            let kind = Kind::Softmax { axis, legacy };
            let name = format!("Softmax {dims:?} axis {axis}");
            out.push((name, kind, vec![input(&dims, 4)]));
        }
        for tanh in [false, true] {
            let kind = Kind::Unary(Unary::Gelu(tanh));
            let name = format!("Gelu tanh {tanh} {dims:?}");
            out.push((name, kind, vec![input(&dims, 5)]));
        }
    }
    // Over the last two axes, scale and bias of that shape: the kernel on the flattened rows.
    let x = input(&[4, 3, 40], 6);
    let sb = |seed| c(120, seed).reshape((3, 40)).unwrap();
    let kind = Kind::LayerNorm { axis: 1, eps: 1e-6 };
    out.push(("LayerNorm over 2 axes".into(), kind, vec![x, sb(7), sb(8)]));
    out
}

#[test]
fn fused_kernels_equal_the_tensor_op_formulas_forward_and_backward_on_both_paths() {
    let reference: Vec<_> = cases()
        .into_iter()
        .map(|(name, kind, xs)| {
            let r = forward_backward(&kind, Backend::Generic, &xs);
            (name, kind, xs, r)
        })
        .collect();
    for path in KernelPath::ALL.into_iter().filter(|p| p.is_available()) {
        with_path(path, || {
            for (name, kind, xs, (y0, g0)) in &reference {
                let (y, g) = forward_backward(kind, Backend::Fast, xs);
                let (dy, at) = max_diff(&y, y0);
                // GELU passes large inputs through: compare relative to the value there.
                let tol = 1e-5 * y0[at].abs().max(1.0);
                assert!(dy < tol, "{path} {name}: output differs by {dy:e} at {at}");
                let top = g0.iter().fold(0f32, |m, v| m.max(v.abs()));
                let (dg, at) = max_diff(&g, g0);
                assert!(
                    dg <= 1e-4 * top.max(1.0),
                    "{path} {name}: gradient differs by {dg:e} at {at} (largest {top:e})"
                );
            }
        })
        .unwrap();
    }
}

#[test]
fn the_fused_ops_never_make_nan_from_extreme_finite_inputs() {
    let x = Tensor::new(
        &[[-1e30f32, -3e4, 0.0, 88.0, 1e30, -f32::MAX, f32::MAX, 2.0]],
        &Device::Cpu,
    )
    .unwrap();
    for kind in [
        Kind::Unary(Unary::Gelu(false)),
        Kind::Unary(Unary::Gelu(true)),
        Kind::Softmax {
            axis: -1,
            legacy: false,
        },
    ] {
        let (y, g) = forward_backward(&kind, Backend::Fast, std::slice::from_ref(&x));
        assert!(
            y.iter().chain(&g).all(|v| !v.is_nan()),
            "{kind:?}: {y:?} {g:?}"
        );
    }
    // GELU: x for large positive x, 0 for large negative, with gradients 1 and 0.
    let (y, g) = forward_backward(&Kind::Unary(Unary::Gelu(false)), Backend::Fast, &[x]);
    assert_eq!((y[0], y[4], y[6]), (0.0, 1e30, f32::MAX));
    assert_eq!(g[1], 0.0);
}

#[test]
fn the_exporters_five_node_gelu_runs_on_the_fused_kernel() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/onnx/convnext_tiny.onnx"
    );
    let file = super::read_onnx(std::path::Path::new(path)).unwrap();
    let m = &file.model;
    let erfs = m.graph.node.iter().filter(|n| n.op_type == "Erf").count();
    assert!(erfs > 0, "the fixture no longer spells GELU out");
    let opset = m.opset_import.iter().map(|o| o.version).max().unwrap_or(1);
    let w = crate::engine::models::layers::Weights::new(file.initializers.clone());
    let p = super::lower::lower(&m.graph, opset, &w, &Device::Cpu).unwrap();
    // Each a GELU step, or absorbed by the linear layer before it.
    let gelus = p
        .steps
        .iter()
        .filter(|s| match &s.kind {
            Kind::Unary(Unary::Gelu(false)) => true,
            Kind::Linear(l) => l.gelu == Some(false),
            _ => false,
        })
        .count();
    let left = p
        .steps
        .iter()
        .filter(|s| matches!(s.kind, Kind::Unary(Unary::Erf)))
        .count();
    assert_eq!((gelus, left), (erfs, 0), "GELUs folded, Erfs left");
    // And a GELU step is the fused kernel's value, bit for bit (the tensor-op formula rounds
    // differently somewhere in a million values).
    let x = input(&[1000, 1000], 9);
    let kind = Kind::Unary(Unary::Gelu(false));
    let (y, _) = forward_backward(&kind, Backend::Fast, std::slice::from_ref(&x));
    let fused = crate::engine::ops::fused::gelu(&x, false).unwrap();
    assert_eq!(y, fused.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let (generic, _) = forward_backward(&kind, Backend::Generic, &[x]);
    assert_ne!(y, generic);
}
