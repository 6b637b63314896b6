//! Mask smoothing: the properties the paper's method relies on.

use std::sync::atomic::AtomicBool;

use unveil::engine::image;
use unveil::engine::maps::{Mask, SaliencyMap};
use unveil::engine::mask::{binarize, make_mask, smooth};
use unveil::engine::params::{MaskParams, Method, SaliencyParams};
use unveil::engine::predict::{classify, top_k};
use unveil::engine::saliency::{input_gradient, saliency_map};

use crate::common::{lite0, pseudo_random, repo};

fn shape(w: usize, h: usize, f: impl Fn(f32, f32) -> bool) -> Mask {
    Mask {
        width: w,
        height: h,
        data: (0..w * h)
            .map(|i| f((i % w) as f32, (i / w) as f32))
            .collect(),
    }
}

fn disc(cx: f32, cy: f32, r: f32) -> impl Fn(f32, f32) -> bool {
    move |x, y| (x - cx).powi(2) + (y - cy).powi(2) <= r * r
}

/// The smoothing rule computed the slow, obvious way.
fn brute_force(m: &Mask, k: usize, threshold: f32) -> Mask {
    let r = (k / 2) as isize;
    let (w, h) = (m.width as isize, m.height as isize);
    let data = (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let (mut on, mut all) = (0, 0);
            for yy in (y - r).max(0)..=(y + r).min(h - 1) {
                for xx in (x - r).max(0)..=(x + r).min(w - 1) {
                    all += 1;
                    on += m.data[(yy * w + xx) as usize] as usize;
                }
            }
            on as f32 >= threshold * all.min(121) as f32
        })
        .collect();
    Mask {
        width: m.width,
        height: m.height,
        data,
    }
}

#[test]
fn running_sums_equal_the_brute_force_window_mean() {
    let noise = pseudo_random(37 * 23, 3, 1.0);
    let m = Mask {
        width: 37,
        height: 23,
        data: noise.iter().map(|v| *v > 0.3).collect(),
    };
    for k in [1, 3, 5, 11, 31, 61] {
        for t in [0.1, 0.25, 0.5] {
            assert_eq!(smooth(&m, k, 1, t), brute_force(&m, k, t), "k={k} t={t}");
        }
    }
    // Large enough to be split between threads (from 512 x 512 pixels).
    let noise = pseudo_random(600 * 500, 5, 1.0);
    let m = Mask {
        width: 600,
        height: 500,
        data: noise.iter().map(|v| *v > 0.6).collect(),
    };
    for k in [3, 11, 25] {
        assert_eq!(smooth(&m, k, 1, 0.25), brute_force(&m, k, 0.25), "k={k}");
    }
    // Whole-window interiors at large k.
    let noise = pseudo_random(131 * 97, 4, 1.0);
    let m = Mask {
        width: 131,
        height: 97,
        data: noise.iter().map(|v| *v > 0.5).collect(),
    };
    for k in [3, 11, 51, 101] {
        assert_eq!(smooth(&m, k, 1, 0.25), brute_force(&m, k, 0.25), "k={k}");
    }
}

#[test]
fn zero_passes_leave_the_binary_map_unchanged() {
    let s = SaliencyMap {
        width: 40,
        height: 30,
        data: pseudo_random(1200, 5, 1.0)
            .iter()
            .map(|v| v.abs())
            .collect(),
    };
    let b = binarize(&s, 0.1);
    assert_eq!(b.count(), 120);
    let p = MaskParams {
        passes: 0,
        keep: 0.1,
        ..Default::default()
    };
    assert_eq!(make_mask(&s, &p), b);
}

#[test]
fn binarize_never_keeps_zero_saliency() {
    let s = SaliencyMap {
        width: 10,
        height: 10,
        data: vec![0.0; 100],
    };
    assert_eq!(binarize(&s, 0.5).count(), 0);
}

#[test]
fn isolated_specks_much_smaller_than_the_window_disappear() {
    let d = MaskParams::default();
    let speck = shape(100, 100, |x, y| {
        (x == 50.0 && y == 50.0) || ((20.0..23.0).contains(&x) && (70.0..73.0).contains(&y))
    });
    assert_eq!(speck.count(), 10);
    assert_eq!(smooth(&speck, d.kernel, 1, d.threshold).count(), 0);
}

#[test]
fn a_filled_disc_stays_a_disc() {
    let d = MaskParams::default();
    let m = smooth(
        &shape(200, 200, disc(100.0, 100.0, 30.0)),
        d.kernel,
        d.passes,
        d.threshold,
    );
    let dist =
        |i: usize| (((i % 200) as f32 - 100.0).powi(2) + ((i / 200) as f32 - 100.0).powi(2)).sqrt();
    let outer = (0..m.data.len())
        .filter(|&i| m.data[i])
        .map(dist)
        .fold(0f32, f32::max);
    let inner = (0..m.data.len())
        .filter(|&i| !m.data[i])
        .map(dist)
        .fold(f32::MAX, f32::min);
    assert!(inner >= 30.0, "it grew, never shrank: inner radius {inner}");
    assert!(
        outer - inner < 2.0,
        "round within 2 px: radii {inner}..{outer}"
    );
}

/// Mask areas for k = 1, 3, ..., 101, then for passes = 0..=10, with the other defaults.
fn areas(s: &SaliencyMap) -> (Vec<usize>, Vec<usize>) {
    let d = MaskParams::default();
    let by_k = (0..=50)
        .map(|i| {
            make_mask(
                s,
                &MaskParams {
                    kernel: 2 * i + 1,
                    ..d.clone()
                },
            )
            .count()
        })
        .collect();
    let by_passes = (0..=10)
        .map(|p| {
            make_mask(
                s,
                &MaskParams {
                    passes: p,
                    ..d.clone()
                },
            )
            .count()
        })
        .collect();
    (by_k, by_passes)
}

fn assert_non_decreasing(v: &[usize], what: &str) {
    assert!(v.windows(2).all(|w| w[0] <= w[1]), "{what}: areas {v:?}");
}

fn as_saliency(m: &Mask) -> SaliencyMap {
    SaliencyMap {
        width: m.width,
        height: m.height,
        data: m.data.iter().map(|&b| b as u8 as f32).collect(),
    }
}

#[test]
fn larger_kernel_or_more_passes_never_give_a_smaller_mask_on_shapes() {
    let blobs = shape(160, 120, |x, y| {
        disc(40.0, 40.0, 12.0)(x, y)
            || ((90.0..120.0).contains(&x) && (20.0..40.0).contains(&y))
            || disc(110.0, 90.0, 20.0)(x, y)
    });
    let s = as_saliency(&blobs);
    // keep = 1 keeps every non-zero pixel: the blobs themselves seed the mask.
    let d = MaskParams {
        keep: 1.0,
        ..Default::default()
    };
    let by_k: Vec<_> = (0..=50)
        .map(|i| {
            make_mask(
                &s,
                &MaskParams {
                    kernel: 2 * i + 1,
                    ..d.clone()
                },
            )
            .count()
        })
        .collect();
    let by_p: Vec<_> = (0..=10)
        .map(|p| {
            make_mask(
                &s,
                &MaskParams {
                    passes: p,
                    ..d.clone()
                },
            )
            .count()
        })
        .collect();
    assert_non_decreasing(&by_k, "blobs, by kernel");
    assert_non_decreasing(&by_p, "blobs, by passes");
    assert!(
        by_k[50] > by_k[0] && by_p[10] > by_p[0],
        "masks actually grow"
    );
}

#[test]
fn larger_kernel_or_more_passes_never_give_a_smaller_mask_on_a_real_saliency_map() {
    let model = lite0();
    let img = image::load(&repo("assets/chelsea.png")).unwrap();
    let x = image::to_model_input(&img, model.info(), &candle_core::Device::Cpu).unwrap();
    let target = top_k(model.as_ref(), &classify(model.as_ref(), &x).unwrap(), 1)[0].class;
    let map = |method| {
        let p = SaliencyParams {
            method,
            samples: 4,
            ..Default::default()
        };
        let never = AtomicBool::new(false);
        let g = input_gradient(model.as_ref(), &x, target, &p, &mut |_, _| {}, &never).unwrap();
        saliency_map(&g).unwrap()
    };
    // The paper's guided map is made of blobs: every kernel and every pass grows its mask.
    let (by_k, by_p) = areas(&map(Method::Guided));
    assert_non_decreasing(&by_k, "chelsea, guided, by kernel");
    assert_non_decreasing(&by_p, "chelsea, guided, by passes");
    assert!(by_k[0] > 0, "the default mask is not empty");
    // A vanilla map is speckled: windows up to 11 x 11 drop specks (its mask may shrink), and
    // from 11 x 11 up (the count cap) a larger kernel never gives a smaller mask.
    let (by_k, _) = areas(&map(Method::Vanilla));
    assert_non_decreasing(&by_k[5..], "chelsea, vanilla, by kernel from 11");
    assert!(by_k[5] > 0);
}
