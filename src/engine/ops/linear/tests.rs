//! The linear ops against candle's own ops (matmul, GELU, permute, add) and their
//! autograd, on every kernel path this CPU has.

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
        let r =
            Tensor::from_vec((0..rows * n).map(|i| val(i, 53)).collect(), (rows, n), &dev).unwrap();
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

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.flatten_all().unwrap() - b.flatten_all().unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Values in [-0.5, 0.5) without a generator (`m` sets the period).
fn values(len: usize, m: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 37 % m) as f32 / m as f32) - 0.5)
        .collect()
}

/// `loss = sum(y * r)` and the gradients of `vars`.
fn gradients(y: &Tensor, r: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter().map(|v| g.get(v).unwrap().clone()).collect()
}

/// The GELU a linear layer absorbs equals candle's GELU after candle's matmul, forward and
/// backward, both forms, on every kernel path; block edges and several blocks included.
#[test]
fn linear_with_gelu_matches_candles_ops() {
    let dev = Device::Cpu;
    for (rows, k, n) in [(7, 13, 17), (197, 64, 40), (300, 33, 70)] {
        // Wide weights so the products reach GELU's curved part and its tails.
        let w: Vec<f32> = values(k * n, 101).iter().map(|v| v * 4.0).collect();
        let bias = values(n, 7);
        let wt = Tensor::from_vec(w.clone(), (k, n), &dev).unwrap();
        let bt = Tensor::from_vec(bias.clone(), n, &dev).unwrap();
        let r = Tensor::from_vec(values(rows * n, 53), (rows, n), &dev).unwrap();
        let lin = Arc::new(PackedLinear::new(&w, k, n, Some(bias)));
        let xv = Var::from_vec(values(rows * k, 89), (rows, k), &dev).unwrap();
        for tanh in [false, true] {
            let u = xv.matmul(&wt).unwrap().broadcast_add(&bt).unwrap();
            let want = if tanh { u.gelu() } else { u.gelu_erf() }.unwrap();
            let want_g = gradients(&want, &r, &[&xv]).remove(0);
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
            for path in KernelPath::ALL.into_iter().filter(|p| p.is_available()) {
                let (y, g) = with_path(path, || {
                    let y = lin.apply_gelu(&xv, tanh).unwrap();
                    let g = gradients(&y, &r, &[&xv]).remove(0);
                    (y, g)
                })
                .unwrap();
                let at = format!("{path}: {rows}x{k} -> {n}, tanh {tanh}");
                assert!(
                    max_diff(&y, &want) < 2e-5,
                    "{at}: forward {}",
                    max_diff(&y, &want)
                );
                assert!(
                    max_diff(&g, &want_g) < 2e-5,
                    "{at}: gradient {}",
                    max_diff(&g, &want_g)
                );
            }
        }
    }
}

/// A linear layer written into planes with the residual added equals candle's matmul,
/// permute and add, forward and both gradients, on every kernel path: images of one pixel,
/// images that are not a whole number of blocks, and images larger than one block.
#[test]
fn linear_into_planes_matches_candles_permute_and_add() {
    let dev = Device::Cpu;
    let (k, n) = (13, 20);
    let w = values(k * n, 101);
    let bias = values(n, 7);
    let wt = Tensor::from_vec(w.clone(), (k, n), &dev).unwrap();
    let bt = Tensor::from_vec(bias.clone(), n, &dev).unwrap();
    let lin = Arc::new(PackedLinear::new(&w, k, n, Some(bias)));
    for (b, h, wd) in [(3, 1, 1), (2, 5, 7), (2, 14, 15)] {
        let xv = Var::from_vec(values(b * h * wd * k, 89), (b, h, wd, k), &dev).unwrap();
        let res = Var::from_vec(values(b * n * h * wd, 61), (b, n, h, wd), &dev).unwrap();
        let r = Tensor::from_vec(values(b * n * h * wd, 53), (b, n, h, wd), &dev).unwrap();
        let want = xv
            .broadcast_matmul(&wt)
            .unwrap()
            .broadcast_add(&bt)
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap()
            .add(&res)
            .unwrap();
        let want_g = gradients(&want, &r, &[&xv, &res]);
        for path in KernelPath::ALL.into_iter().filter(|p| p.is_available()) {
            let (y, g) = with_path(path, || {
                let y = lin.apply_to_planes(&xv, &res).unwrap();
                let g = gradients(&y, &r, &[&xv, &res]);
                (y, g)
            })
            .unwrap();
            let at = format!("{path}: [{b}, {h}, {wd}, {k}] -> {n}");
            assert_eq!(y.dims(), [b, n, h, wd], "{at}");
            assert!(
                max_diff(&y, &want) < 1e-5,
                "{at}: forward {}",
                max_diff(&y, &want)
            );
            for (i, (g, w)) in g.iter().zip(&want_g).enumerate() {
                assert!(
                    max_diff(g, w) < 1e-5,
                    "{at}: gradient {i} {}",
                    max_diff(g, w)
                );
            }
        }
    }
    // Shapes the op does not take are refused, not misread.
    let x = Tensor::zeros((1, 2, 2, k), candle_core::DType::F32, &dev).unwrap();
    let wrong = Tensor::zeros((1, n, 2, 3), candle_core::DType::F32, &dev).unwrap();
    assert!(lin.apply_to_planes(&x, &wrong).is_err());
}
