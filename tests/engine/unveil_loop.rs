//! The iterative loop on the bundled model and sample photo.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use unveil::Error;
use unveil::engine::explainer::Explainer;
use unveil::engine::image;
use unveil::engine::outcome::{Event, Outcome, StopReason};
use unveil::engine::params::{
    FillMode, MaskParams, Method, SaliencyParams, StopParams, UnveilParams,
};
use unveil::engine::predict::classify;

use crate::common::{lite0, repo, to_vec};

fn chelsea() -> Tensor {
    let img = image::load(&repo("assets/chelsea.png")).unwrap();
    image::to_model_input(&img, lite0().info(), &Device::Cpu).unwrap()
}

/// One run of the bundled model with nothing cached.
fn run(
    x: &Tensor,
    params: &UnveilParams,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> unveil::Result<Outcome> {
    Explainer::new(lite0()).explain_input(x, params, on_event, cancel)
}

fn quick() -> UnveilParams {
    UnveilParams {
        saliency: SaliencyParams {
            samples: 2,
            ..Default::default()
        },
        stop: StopParams {
            threshold: 0.0,
            max_iter: 3,
        },
        ..Default::default()
    }
}

#[test]
fn masks_accumulate_and_each_input_hides_all_earlier_masks() {
    let x = chelsea();
    let model = lite0();
    let never = AtomicBool::new(false);
    let mut seen = Vec::new();
    let out = run(
        &x,
        &quick(),
        &mut |e| {
            if let Event::Step(s) = e {
                seen.push(s.index)
            }
        },
        &never,
    )
    .unwrap();
    assert_eq!(out.stop, StopReason::MaxIterations);
    assert_eq!(out.steps.len(), 3);
    assert_eq!(seen, [0, 1, 2], "every step is reported as it finishes");
    let probs = classify(model.as_ref(), &x).unwrap();
    assert_eq!(
        out.target, out.steps[0].top5[0].class,
        "default target is the top-1 class"
    );
    assert!((out.steps[0].p_target - probs[out.target]).abs() < 1e-6);
    assert_eq!(
        to_vec(&out.steps[0].input),
        to_vec(&x),
        "iteration 0 sees the original image"
    );

    let fill = model.info().normalise(model.info().dataset_mean);
    let plane = 224 * 224;
    for (i, s) in out.steps.iter().enumerate() {
        assert!(s.mask.count() > 0, "step {i} has a mask");
        let prev = if i == 0 {
            None
        } else {
            Some(&out.steps[i - 1].cumulative)
        };
        assert_eq!(
            s.cumulative,
            prev.map_or(s.mask.clone(), |p| p.union(&s.mask))
        );
        // The input is the original outside earlier masks and the dataset mean inside.
        let input = to_vec(&s.input);
        let orig = to_vec(&x);
        for p in 0..plane {
            let hidden = prev.is_some_and(|m| m.data[p]);
            for c in 0..3 {
                let v = input[c * plane + p];
                let want = if hidden { fill[c] } else { orig[c * plane + p] };
                assert_eq!(v, want, "step {i} pixel {p} channel {c}");
            }
        }
        if i + 1 < out.steps.len() {
            assert_eq!(to_vec(&s.masked), to_vec(&out.steps[i + 1].input));
        }
    }
    let cover: Vec<f32> = out.steps.iter().map(|s| s.cumulative.coverage()).collect();
    assert!(
        cover.windows(2).all(|w| w[0] < w[1]),
        "each iteration unveils a new region: {cover:?}"
    );
}

#[test]
fn masking_the_salient_region_lowers_the_class_probability() {
    let x = chelsea();
    let never = AtomicBool::new(false);
    let p = UnveilParams {
        stop: StopParams {
            threshold: 0.0,
            max_iter: 1,
        },
        saliency: SaliencyParams {
            method: Method::Guided,
            ..Default::default()
        },
        ..Default::default()
    };
    let out = run(&x, &p, &mut |_| {}, &never).unwrap();
    let after = out.after.unwrap().p_target;
    assert!(
        after < out.steps[0].p_target - 0.05,
        "p {} -> {after}",
        out.steps[0].p_target
    );
}

#[test]
fn stop_threshold_ends_the_loop_once_p_target_falls_below_it() {
    let x = chelsea();
    let never = AtomicBool::new(false);
    let p = UnveilParams {
        stop: StopParams {
            threshold: 0.999,
            max_iter: 5,
        },
        ..quick()
    };
    let out = run(&x, &p, &mut |_| {}, &never).unwrap();
    assert_eq!(out.stop, StopReason::BelowThreshold);
    assert_eq!(
        out.steps.len(),
        1,
        "iteration 0 always runs; p after it is below 0.999"
    );
    assert!(out.after.unwrap().p_target < 0.999);
}

#[test]
fn changing_only_mask_parameters_reuses_the_first_gradient() {
    let x = chelsea();
    let never = AtomicBool::new(false);
    let explainer = Explainer::new(lite0());
    let a = explainer
        .explain_input(&x, &quick(), &mut |_| {}, &never)
        .unwrap();
    assert!(a.steps.iter().all(|s| !s.cached));
    let wider = UnveilParams {
        mask: MaskParams {
            kernel: 21,
            ..Default::default()
        },
        ..quick()
    };
    let mut progress_in_step0 = false;
    let b = explainer
        .explain_input(
            &x,
            &wider,
            &mut |e| {
                if let Event::Progress(p) = e {
                    progress_in_step0 |= p.iteration == 0;
                }
            },
            &never,
        )
        .unwrap();
    assert!(
        b.steps[0].cached && !progress_in_step0,
        "no gradient work for iteration 0"
    );
    assert_eq!(
        to_vec(&a.steps[0].attribution),
        to_vec(&b.steps[0].attribution)
    );
    assert!(
        b.steps[0].mask.count() > a.steps[0].mask.count(),
        "k = 21 gives a larger mask than 11"
    );
}

#[test]
fn cancel_keeps_the_steps_already_reported() {
    let x = chelsea();
    let cancel = AtomicBool::new(false);
    let mut steps = 0;
    let p = UnveilParams {
        saliency: SaliencyParams {
            samples: 4,
            chunk: Some(2),
            ..Default::default()
        },
        ..quick()
    };
    let r = run(
        &x,
        &p,
        &mut |e| match e {
            Event::Step(_) => steps += 1,
            Event::Progress(p) if p.iteration == 1 => cancel.store(true, Ordering::Relaxed),
            _ => {}
        },
        &cancel,
    );
    assert!(matches!(r, Err(Error::Cancelled)));
    assert_eq!(steps, 1);
}

#[test]
fn black_and_blur_fills_replace_masked_pixels() {
    let x = chelsea();
    let never = AtomicBool::new(false);
    let one = |fill| UnveilParams {
        fill,
        stop: StopParams {
            threshold: 0.0,
            max_iter: 1,
        },
        ..quick()
    };
    let black = run(&x, &one(FillMode::Black), &mut |_| {}, &never).unwrap();
    let s = &black.steps[0];
    let (m, v) = (&s.cumulative, to_vec(&s.masked));
    let p = m.data.iter().position(|&b| b).unwrap();
    assert_eq!(v[p], -1.0, "black is (0 - 0.5) / 0.5 after normalisation");
    let blur = run(&x, &one(FillMode::Blur), &mut |_| {}, &never).unwrap();
    let (orig, vb) = (to_vec(&x), to_vec(&blur.steps[0].masked));
    let changed = m
        .data
        .iter()
        .enumerate()
        .filter(|(i, b)| **b && (vb[*i] - orig[*i]).abs() > 1e-6)
        .count();
    assert!(changed > m.count() / 2, "blur changes masked pixels");
    let outside = m.data.iter().position(|&b| !b).unwrap();
    assert_eq!(vb[outside], orig[outside]);
}

#[test]
fn invalid_parameters_are_refused() {
    let x = chelsea();
    let never = AtomicBool::new(false);
    for bad in [
        UnveilParams {
            mask: MaskParams {
                kernel: 4,
                ..Default::default()
            },
            ..quick()
        },
        UnveilParams {
            stop: StopParams {
                threshold: 1.5,
                max_iter: 3,
            },
            ..quick()
        },
        UnveilParams {
            target: Some(5000),
            ..quick()
        },
    ] {
        let r = run(&x, &bad, &mut |_| {}, &never);
        assert!(
            matches!(
                r,
                Err(Error::InvalidParam(_)) | Err(Error::ClassOutOfRange { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn all_regions_picture_paints_each_new_region_in_its_iteration_colour() {
    use unveil::engine::render;
    let x = chelsea();
    let never = AtomicBool::new(false);
    let out = run(&x, &quick(), &mut |_| {}, &never).unwrap();
    let mut pic = ::image::RgbImage::new(224, 224);
    let steps: Vec<_> = out.steps.iter().collect();
    render::regions_overlay(&mut pic, &steps, 1.0);
    for (i, s) in out.steps.iter().enumerate() {
        let new = if i == 0 {
            s.mask.clone()
        } else {
            s.mask.minus(&out.steps[i - 1].cumulative)
        };
        let p = new
            .data
            .iter()
            .position(|&b| b)
            .expect("each iteration adds pixels");
        let px = pic.get_pixel((p % 224) as u32, (p / 224) as u32).0;
        assert_eq!(px, render::iteration_color(i), "iteration {i}");
    }
    let untouched = out
        .steps
        .last()
        .unwrap()
        .cumulative
        .data
        .iter()
        .position(|&b| !b)
        .unwrap();
    assert_eq!(
        pic.get_pixel((untouched % 224) as u32, (untouched / 224) as u32)
            .0,
        [0, 0, 0]
    );
}

/// The app redraws iteration 0 at once when only mask parameters change: the engine decides
/// which changes qualify, and the redrawn step is exactly what a rerun computes.
#[test]
fn remasking_iteration_0_gives_exactly_what_a_rerun_computes() {
    use unveil::engine::params::Change;
    let x = chelsea();
    let never = AtomicBool::new(false);
    let explainer = Explainer::new(lite0());
    let first = explainer
        .explain_input(&x, &quick(), &mut |_| {}, &never)
        .unwrap();
    let wider = UnveilParams {
        mask: MaskParams {
            kernel: 31,
            passes: 4,
            ..Default::default()
        },
        ..quick()
    };
    assert_eq!(wider.change_from(&quick()), Change::MaskOnly);
    assert_eq!(quick().change_from(&quick()), Change::None);
    for other in [
        UnveilParams {
            fill: FillMode::Blur,
            ..wider.clone()
        },
        UnveilParams {
            target: Some(3),
            ..wider.clone()
        },
        UnveilParams {
            stop: StopParams {
                threshold: 0.5,
                max_iter: 3,
            },
            ..wider.clone()
        },
    ] {
        assert_eq!(other.change_from(&quick()), Change::Rerun, "{other:?}");
    }
    let redrawn = explainer.remask_first(&first.steps[0], &wider).unwrap();
    let rerun = explainer
        .explain_input(&x, &wider, &mut |_| {}, &never)
        .unwrap();
    let want = &rerun.steps[0];
    assert!(want.cached, "the rerun reused iteration 0's gradient");
    assert_ne!(redrawn.mask, first.steps[0].mask, "k = 31 changes the mask");
    assert_eq!(redrawn.mask, want.mask);
    assert_eq!(redrawn.cumulative, want.cumulative);
    assert_eq!(to_vec(&redrawn.masked), to_vec(&want.masked));
    assert!(
        rerun.steps[1..].iter().all(|s| !s.cached),
        "one gradient per distinct input: only iteration 0's is shared"
    );
    assert!(first.steps.iter().all(|s| !s.cached), "a fresh explainer");
}
