//! Saliency: determinism, SmoothGrad, chunking, normalisation, cancel.

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use unveil::Error;
use unveil::engine::params::{Method, SaliencyParams};
use unveil::engine::saliency::{input_gradient, saliency_map};

use crate::common::{cosine, fixture, lite0, max_abs_diff, to_vec};

fn fixture_input() -> (Tensor, usize, std::collections::HashMap<String, Tensor>) {
    let f = fixture("efficientnet_lite0.safetensors");
    let target = f["target"].to_vec1::<i64>().unwrap()[0] as usize;
    (f["input"].squeeze(0).unwrap(), target, f)
}

fn grad(x: &Tensor, target: usize, p: &SaliencyParams) -> Vec<f32> {
    let never = AtomicBool::new(false);
    to_vec(&input_gradient(lite0().as_ref(), x, target, p, &mut |_, _| {}, &never).unwrap())
}

#[test]
fn one_sample_without_noise_is_plain_guided_backprop() {
    let (x, target, f) = fixture_input();
    let p = SaliencyParams {
        method: Method::Guided,
        samples: 1,
        noise: 0.0,
        ..Default::default()
    };
    let c = cosine(&grad(&x, target, &p), &to_vec(&f["grad_guided"]));
    assert!(c > 0.999, "cosine {c}");
    let p = SaliencyParams {
        method: Method::Vanilla,
        ..p
    };
    let c = cosine(&grad(&x, target, &p), &to_vec(&f["grad_vanilla"]));
    assert!(c > 0.999, "cosine {c}");
}

#[test]
fn same_seed_same_map_other_seed_other_map() {
    let (x, target, _) = fixture_input();
    let p = SaliencyParams {
        samples: 4,
        noise: 0.2,
        seed: 7,
        chunk: Some(2),
        ..Default::default()
    };
    let a = grad(&x, target, &p);
    let b = grad(&x, target, &p);
    assert_eq!(a, b, "same settings and seed must give the same gradient");
    let c = grad(
        &x,
        target,
        &SaliencyParams {
            seed: 8,
            ..p.clone()
        },
    );
    assert!(max_abs_diff(&a, &c) > 0.0);
    // The chunk size bounds memory; it must not change the result.
    let d = grad(
        &x,
        target,
        &SaliencyParams {
            chunk: Some(3),
            ..p
        },
    );
    assert!(max_abs_diff(&a, &d) < 1e-4 * a.iter().fold(0f32, |m, v| m.max(v.abs())));
}

#[test]
fn smoothgrad_averages_noisy_gradients() {
    let (x, target, _) = fixture_input();
    let plain = grad(
        &x,
        target,
        &SaliencyParams {
            method: Method::Guided,
            samples: 1,
            noise: 0.0,
            ..Default::default()
        },
    );
    let smooth = grad(
        &x,
        target,
        &SaliencyParams {
            method: Method::Guided,
            samples: 6,
            noise: 0.15,
            ..Default::default()
        },
    );
    let c = cosine(&plain, &smooth);
    // Related to the plain map, but not the same one.
    assert!(c > 0.2 && c < 0.99, "cosine {c}");
}

#[test]
fn map_is_normalised_and_reduces_channels_by_max_abs() {
    let g = Tensor::from_vec(
        vec![0.0f32, -4.0, 1.0, 0.5, 2.0, -3.0, 0.0, 100.0],
        (2, 2, 2),
        &Device::Cpu,
    )
    .unwrap();
    let m = saliency_map(&g).unwrap();
    assert_eq!((m.width, m.height), (2, 2));
    assert!(m.data.iter().all(|v| (0.0..=1.0).contains(v)));
    // max |g| per pixel: [2, 4, 1, 100]; the 99th percentile of 4 values is the max (100).
    let expect = [0.02, 0.04, 0.01, 1.0];
    for (a, b) in m.data.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{:?}", m.data);
    }
}

#[test]
fn zero_gradient_gives_zero_map_and_nan_is_an_error() {
    let z = Tensor::zeros((3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(saliency_map(&z).unwrap().data.iter().all(|&v| v == 0.0));
    let mut v = vec![1.0f32; 48];
    v[5] = f32::NAN;
    let n = Tensor::from_vec(v, (3, 4, 4), &Device::Cpu).unwrap();
    assert!(matches!(saliency_map(&n), Err(Error::Numeric(_))));
}

#[test]
fn cancel_stops_before_the_next_chunk() {
    let (x, target, _) = fixture_input();
    let cancel = AtomicBool::new(false);
    let mut chunks_done = 0;
    let p = SaliencyParams {
        samples: 8,
        chunk: Some(2),
        ..Default::default()
    };
    let r = input_gradient(
        lite0().as_ref(),
        &x,
        target,
        &p,
        &mut |done, _| {
            chunks_done = done;
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        },
        &cancel,
    );
    assert!(matches!(r, Err(Error::Cancelled)));
    assert_eq!(chunks_done, 1, "work stops within one chunk of the cancel");
}
