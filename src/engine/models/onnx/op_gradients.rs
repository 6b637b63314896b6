//! Every float op's input gradient against central finite differences, op by op: the
//! interpreter must not cut or bend a gradient anywhere (the model tests check whole graphs
//! against PyTorch; these pin each op, including the ones no fixture graph uses).

use candle_core::{DType, Device, Tensor, Var};

use super::conv::ConvSpec;
use super::fuse::build_conv;
use super::ops::{AvgConvs, Binary, ConvStep, Ctx, Kind, Pads, Reduce, Unary, Window};
use super::shape_ops::Arrange;
use super::value::{Ints, Val};
use crate::engine::ops::Backend;
use crate::engine::ops::activation::ReluMode;
use crate::engine::ops::geometry::Padding;

fn ctx(backend: Backend) -> Ctx {
    Ctx {
        mode: ReluMode::Plain,
        backend,
        device: Device::Cpu,
    }
}

/// Distinct values in [-1, 1], in random order, at least `1 / (n + 1)` from each other and from
/// 0 (more than the finite-difference step: no difference straddles a ReLU's kink or swaps
/// a pool's maximum).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let keys: Vec<u64> = (0..n).map(|_| next()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| keys[i]);
    let mut v = vec![0f32; n];
    for (rank, &i) in order.iter().enumerate() {
        let m = (rank + 1) as f32 / (n + 1) as f32;
        v[i] = if keys[i] & 8 == 0 { m } else { -m };
    }
    v
}

fn tensor(dims: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(data(dims.iter().product(), seed), dims, &Device::Cpu).unwrap()
}

/// `sum(op(inputs) * r)` for fixed random `r`, as f64.
fn loss(op: &dyn Fn(&[Tensor]) -> Tensor, xs: &[Tensor]) -> (Tensor, f64) {
    let y = op(xs).to_dtype(DType::F64).unwrap();
    let r = tensor(y.dims(), 99).to_dtype(DType::F64).unwrap();
    let l = (y * r).unwrap().sum_all().unwrap();
    let v = l.to_scalar::<f64>().unwrap();
    (l, v)
}

/// Checks the gradient of every input against central differences at up to 24 coordinates.
fn check(name: &str, op: &dyn Fn(&[Tensor]) -> Tensor, xs: Vec<Tensor>) {
    let vars: Vec<Var> = xs.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (l, _) = loss(op, &ts);
    let grads = l.backward().unwrap();
    let eps = 1e-3f32;
    for (i, x) in xs.iter().enumerate() {
        let g = grads
            .get(&ts[i])
            .unwrap_or_else(|| panic!("{name}: no gradient reaches input {i}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = base.len();
        let step = (n / 24).max(1);
        let (mut dot, mut gg, mut ff) = (0f64, 0f64, 0f64);
        for k in (0..n).step_by(step) {
            let at = |d: f32| {
                let mut v = base.clone();
                v[k] += d;
                let mut inputs = xs.clone();
                inputs[i] = Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap();
                loss(op, &inputs).1
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            dot += fd * g[k] as f64;
            gg += (g[k] as f64).powi(2);
            ff += fd * fd;
        }
        let cos = dot / (gg.sqrt() * ff.sqrt()).max(1e-30);
        assert!(
            cos > 0.999 || (gg < 1e-12 && ff < 1e-12),
            "{name}: input {i} gradient cosine {cos} against finite differences"
        );
    }
}

fn run(kind: &Kind, backend: Backend) -> impl Fn(&[Tensor]) -> Tensor + '_ {
    move |xs: &[Tensor]| {
        let vals: Vec<Val> = xs.iter().map(|x| Val::F(x.clone())).collect();
        let refs: Vec<Option<&Val>> = vals.iter().map(Some).collect();
        match kind.run(&refs, &ctx(backend)).unwrap().remove(0) {
            Val::F(t) => t,
            Val::I(_) => panic!("an integer output"),
        }
    }
}

/// A Kind whose extra inputs are constants (indices, shapes, axes).
fn with_consts<'a>(kind: &'a Kind, consts: Vec<Val>) -> impl Fn(&[Tensor]) -> Tensor + 'a {
    move |xs: &[Tensor]| {
        let mut vals: Vec<Val> = xs.iter().map(|x| Val::F(x.clone())).collect();
        vals.extend(consts.iter().cloned());
        let refs: Vec<Option<&Val>> = vals.iter().map(Some).collect();
        match kind.run(&refs, &ctx(Backend::Fast)).unwrap().remove(0) {
            Val::F(t) => t,
            Val::I(_) => panic!("an integer output"),
        }
    }
}

fn ints(v: &[i64]) -> Val {
    Val::I(Ints::vector(v.to_vec()))
}

#[test]
fn convolutions_and_pools_back_propagate_on_both_paths() {
    let pad = |t, l, b, r| {
        Pads::Explicit(Padding {
            top: t,
            left: l,
            bottom: b,
            right: r,
        })
    };
    let convs = [
        (
            "dense 3x3 s2 asymmetric pad",
            [4, 3, 3, 3],
            1,
            pad(0, 1, 1, 0),
            (2, 2),
        ),
        ("depthwise 3x3", [3, 1, 3, 3], 3, pad(1, 1, 1, 1), (1, 1)),
        ("grouped 3x3", [4, 1, 3, 3], 2, pad(1, 1, 1, 1), (1, 1)),
        ("1x3 (non-square)", [4, 3, 1, 3], 1, pad(0, 1, 0, 1), (1, 1)),
    ];
    for (name, wdims, group, pads, strides) in convs {
        let cin = if group == 2 { 2 } else { 3 };
        let w = tensor(&wdims, 1);
        let b = tensor(&[wdims[0]], 2);
        let spec = ConvSpec {
            runtime_pads: None,
            strides,
            pads,
            group,
        };
        for backend in [Backend::Fast, Backend::Generic] {
            let imp = build_conv(w.clone(), b.clone(), &spec, vec![], &Device::Cpu).unwrap();
            let kind = Kind::Conv(Box::new(ConvStep {
                imp,
                act: None,
                residual: false,
                runtime_pads: None,
            }));
            let x = tensor(&[2, if group == 3 { 3 } else { cin }, 7, 6], 3);
            check(
                &format!("Conv {name} {backend:?}"),
                &run(&kind, backend),
                vec![x],
            );
        }
    }
    let win = |k, stride, pads, ceil| Window {
        k,
        stride,
        pads,
        ceil,
    };
    for (name, kind) in [
        (
            "MaxPool 3/2 ceil",
            Kind::MaxPool(win(3, 2, pad(1, 1, 1, 1), true)),
        ),
        (
            "MaxPool 2/2 same",
            Kind::MaxPool(win(2, 2, Pads::SameUpper, false)),
        ),
        (
            "AveragePool 3/1 with pad",
            Kind::AvgPool(win(3, 1, pad(1, 1, 1, 1), false), true, AvgConvs::default()),
        ),
        (
            "AveragePool 3/2 pad excluded",
            Kind::AvgPool(
                win(3, 2, pad(1, 1, 1, 1), false),
                false,
                AvgConvs::default(),
            ),
        ),
        ("GlobalAveragePool", Kind::GlobalAvgPool),
        ("GlobalMaxPool", Kind::GlobalMaxPool),
    ] {
        for backend in [Backend::Fast, Backend::Generic] {
            check(
                &format!("{name} {backend:?}"),
                &run(&kind, backend),
                vec![tensor(&[2, 3, 7, 7], 4)],
            );
        }
    }
}

#[test]
fn activations_and_arithmetic_back_propagate() {
    let x = || tensor(&[2, 3, 4], 5);
    let pos = || {
        tensor(&[2, 3, 4], 6)
            .abs()
            .unwrap()
            .affine(1.0, 0.5)
            .unwrap()
    };
    let unary = [
        Unary::Sigmoid,
        Unary::Tanh,
        Unary::Erf,
        Unary::Exp,
        Unary::Neg,
        Unary::Abs,
        Unary::Gelu(true),
        Unary::Gelu(false),
        Unary::HardSigmoid(0.2, 0.5),
        Unary::HardSwish,
        Unary::Softplus,
    ];
    for u in unary {
        check(
            &format!("{u:?}"),
            &run(&Kind::Unary(u), Backend::Fast),
            vec![x()],
        );
    }
    for u in [Unary::Log, Unary::Sqrt, Unary::Reciprocal] {
        check(
            &format!("{u:?}"),
            &run(&Kind::Unary(u), Backend::Fast),
            vec![pos()],
        );
    }
    for kind in [
        Kind::Relu(false),
        Kind::Relu(true),
        Kind::LeakyRelu(0.1),
        Kind::Clip(-0.5, 0.5),
    ] {
        for backend in [Backend::Fast, Backend::Generic] {
            check(
                &format!("{kind:?} {backend:?}"),
                &run(&kind, backend),
                vec![x().affine(8.0, 0.0).unwrap()],
            );
        }
    }
    for b in [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div] {
        // Broadcast: [2, 3, 4] with [3, 1].
        check(
            &format!("{b:?}"),
            &run(&Kind::Binary(b), Backend::Fast),
            vec![
                x(),
                pos()
                    .narrow(0, 0, 1)
                    .unwrap()
                    .narrow(2, 0, 1)
                    .unwrap()
                    .squeeze(0)
                    .unwrap(),
            ],
        );
    }
    check(
        "Pow",
        &run(&Kind::Binary(Binary::Pow), Backend::Fast),
        vec![pos(), tensor(&[1], 8).abs().unwrap()],
    );
    let pow2 = Kind::Binary(Binary::Pow);
    check(
        "Pow 2",
        &with_consts(
            &pow2,
            vec![Val::F(Tensor::new(&[2f32], &Device::Cpu).unwrap())],
        ),
        vec![x()],
    );
    let scale = tensor(&[4], 9);
    let shift = tensor(&[4], 10);
    check(
        "Affine",
        &run(&Kind::Affine(scale, shift), Backend::Fast),
        vec![tensor(&[2, 4, 3, 3], 11)],
    );
}

#[test]
fn linear_algebra_and_normalisations_back_propagate() {
    let gemm = Kind::Gemm {
        alpha: 0.5,
        beta: 2.0,
        trans_a: true,
        trans_b: true,
    };
    check(
        "Gemm",
        &run(&gemm, Backend::Fast),
        vec![tensor(&[5, 2], 1), tensor(&[3, 5], 2), tensor(&[3], 3)],
    );
    check(
        "MatMul batched",
        &run(&Kind::MatMul, Backend::Fast),
        vec![tensor(&[2, 3, 4, 5], 4), tensor(&[2, 3, 5, 2], 5)],
    );
    check(
        "MatMul broadcast",
        &run(&Kind::MatMul, Backend::Fast),
        vec![tensor(&[2, 4, 5], 6), tensor(&[5, 3], 7)],
    );
    let ln = Kind::LayerNorm {
        axis: -1,
        eps: 1e-5,
    };
    check(
        "LayerNormalization",
        &run(&ln, Backend::Fast),
        vec![tensor(&[2, 3, 6], 8), tensor(&[6], 9), tensor(&[6], 10)],
    );
    let ln2 = Kind::LayerNorm { axis: 1, eps: 1e-5 };
    check(
        "LayerNormalization over 2 axes",
        &run(&ln2, Backend::Fast),
        vec![
            tensor(&[2, 3, 4], 8),
            tensor(&[3, 4], 9),
            tensor(&[3, 4], 10),
        ],
    );
    for (axis, legacy) in [(-1, false), (1, false), (1, true)] {
        let k = Kind::Softmax { axis, legacy };
        check(
            &format!("Softmax axis {axis} legacy {legacy}"),
            &run(&k, Backend::Fast),
            vec![tensor(&[2, 3, 4], 11).affine(3.0, 0.0).unwrap()],
        );
    }
    for op in [Reduce::Mean, Reduce::Sum, Reduce::Max] {
        let k = Kind::Reduce {
            op,
            axes: Some(vec![1, -1]),
            keepdims: false,
            noop_with_empty_axes: false,
        };
        check(
            &format!("{op:?}"),
            &run(&k, Backend::Fast),
            vec![tensor(&[2, 3, 4], 12)],
        );
    }
}

#[test]
fn data_movement_back_propagates() {
    let x = || tensor(&[2, 3, 4], 13);
    let arrange = |a: Arrange| Kind::Arrange(a);
    let cases: Vec<(&str, Kind, Vec<Val>)> = vec![
        (
            "Reshape",
            arrange(Arrange::Reshape { allow_zero: false }),
            vec![ints(&[0, -1, 2])],
        ),
        (
            "Transpose",
            arrange(Arrange::Transpose(Some(vec![2, 0, 1]))),
            vec![],
        ),
        ("Flatten", arrange(Arrange::Flatten(2)), vec![]),
        (
            "Slice step 2",
            arrange(Arrange::Slice(None)),
            vec![ints(&[1]), ints(&[4]), ints(&[2]), ints(&[2])],
        ),
        (
            "Slice backwards",
            arrange(Arrange::Slice(None)),
            vec![ints(&[-1]), ints(&[-10]), ints(&[1]), ints(&[-1])],
        ),
        (
            "Gather",
            arrange(Arrange::Gather(2)),
            vec![Val::I(Ints::new(vec![2, 2], vec![3, 0, -1, 1]).unwrap())],
        ),
        (
            "Gather scalar",
            arrange(Arrange::Gather(0)),
            vec![Val::I(Ints::scalar(1))],
        ),
        (
            "Squeeze+Unsqueeze",
            arrange(Arrange::Unsqueeze(Some(vec![0, 3]))),
            vec![],
        ),
        (
            "Expand",
            arrange(Arrange::Expand),
            vec![ints(&[2, 2, 3, 4])],
        ),
        (
            "Pad",
            arrange(Arrange::Pad(Some(vec![0, 1, 0, 0, 2, 1]), 0.5)),
            vec![],
        ),
        (
            "Split",
            arrange(Arrange::Split {
                axis: 2,
                split: Some(vec![1, 3]),
                outputs: 2,
            }),
            vec![],
        ),
    ];
    for (name, kind, consts) in &cases {
        check(name, &with_consts(kind, consts.clone()), vec![x()]);
    }
    let concat = arrange(Arrange::Concat(1));
    check(
        "Concat",
        &run(&concat, Backend::Fast),
        vec![x(), tensor(&[2, 2, 4], 14)],
    );
    let cond = Val::I(Ints::new(vec![3, 1], vec![1, 0, 1]).unwrap());
    let w = Kind::Where;
    let where_ = |xs: &[Tensor]| {
        let vals = [cond.clone(), Val::F(xs[0].clone()), Val::F(xs[1].clone())];
        let refs: Vec<Option<&Val>> = vals.iter().map(Some).collect();
        match w.run(&refs, &ctx(Backend::Fast)).unwrap().remove(0) {
            Val::F(t) => t,
            Val::I(_) => panic!("an integer output"),
        }
    };
    check("Where", &where_, vec![x(), tensor(&[4], 15)]);
}

#[test]
fn resize_interpolates_like_pytorch_and_back_propagates() {
    use super::resize::{Coords, Interp, Resize, Rounding};
    let x = tensor(&[1, 2, 5, 4], 21);
    let floats = |v: &[f32]| Val::F(Tensor::new(v, &Device::Cpu).unwrap());
    let cases = [
        (
            "nearest x2",
            Interp::Nearest(Rounding::PreferFloor),
            Coords::Asymmetric,
            floats(&[1.0, 1.0, 2.0, 2.0]),
        ),
        (
            "linear x1.5",
            Interp::Linear,
            Coords::HalfPixel,
            floats(&[1.0, 1.0, 1.5, 1.5]),
        ),
        (
            "linear align corners",
            Interp::Linear,
            Coords::AlignCorners,
            floats(&[1.0, 1.0, 0.6, 1.75]),
        ),
    ];
    for (name, interp, coords, scales) in cases {
        let kind = Kind::Resize(Resize {
            interp,
            coords,
            scales_at: 2,
        });
        let roi = Val::F(Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap());
        let op = |xs: &[Tensor]| {
            let vals = [Val::F(xs[0].clone()), roi.clone(), scales.clone()];
            let refs: Vec<Option<&Val>> = vals.iter().map(Some).collect();
            match kind.run(&refs, &ctx(Backend::Fast)).unwrap().remove(0) {
                Val::F(t) => t,
                Val::I(_) => panic!("an integer output"),
            }
        };
        check(&format!("Resize {name}"), &op, vec![x.clone()]);
    }
    // Half-pixel linear is PyTorch's bilinear with align_corners=False, to 8 x 6.
    let kind = Kind::Resize(Resize {
        interp: Interp::Linear,
        coords: Coords::HalfPixel,
        scales_at: 2,
    });
    let sizes = Val::I(Ints::vector(vec![1, 2, 8, 6]));
    let vals = [
        Val::F(x.clone()),
        Val::F(Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap()),
        Val::F(Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap()),
        sizes,
    ];
    let refs: Vec<Option<&Val>> = vals.iter().map(Some).collect();
    let Val::F(y) = kind.run(&refs, &ctx(Backend::Fast)).unwrap().remove(0) else {
        panic!()
    };
    let plane = x
        .narrow(1, 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = bilinear(&plane, (5, 4), (8, 6));
    let got = y
        .narrow(1, 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-6, "{diff}");
}

/// PyTorch's `interpolate(mode="bilinear", align_corners=False)` of one plane, written out:
/// output pixel `o` samples the input at `(o + 0.5) * in / out - 0.5`, clamped to the edge.
fn bilinear(src: &[f32], (sh, sw): (usize, usize), (dh, dw): (usize, usize)) -> Vec<f32> {
    let tap = |o: usize, n: usize, out: usize| {
        let x = ((o as f32 + 0.5) * n as f32 / out as f32 - 0.5).max(0.0);
        let i0 = (x as usize).min(n - 1);
        (i0, (i0 + 1).min(n - 1), x - i0 as f32)
    };
    let mut out = Vec::with_capacity(dh * dw);
    for oy in 0..dh {
        let (y0, y1, ty) = tap(oy, sh, dh);
        for ox in 0..dw {
            let (x0, x1, tx) = tap(ox, sw, dw);
            let at = |y: usize, x: usize| src[y * sw + x];
            let top = (1.0 - tx) * at(y0, x0) + tx * at(y0, x1);
            let bottom = (1.0 - tx) * at(y1, x0) + tx * at(y1, x1);
            out.push((1.0 - ty) * top + ty * bottom);
        }
    }
    out
}
