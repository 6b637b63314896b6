//! Faithfulness measures on the bundled model: the curves' end points are known
//! classifications, the region tests agree with the loop's own numbers, every step is
//! reported before the curves, and no known point is computed again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use candle_core::{Device, IndexOp, Tensor};
use unveil::engine::explainer::Explainer;
use unveil::engine::faithfulness::{self, Probe, STEPS, auc};
use unveil::engine::image;
use unveil::engine::maps::SaliencyMap;
use unveil::engine::models::{Classifier, ModelInfo};
use unveil::engine::ops::activation::ReluMode;
use unveil::engine::outcome::Event;
use unveil::engine::params::{SaliencyParams, StopParams, UnveilParams};
use unveil::engine::predict::classify;

use crate::common::{lite0, pseudo_random, repo, to_vec};

#[test]
fn curves_run_from_the_input_to_the_fill_and_from_the_blur_back() {
    let img = image::load(&repo("assets/chelsea.png")).unwrap();
    let x = image::to_model_input(&img, lite0().info(), &Device::Cpu).unwrap();
    let params = UnveilParams {
        saliency: SaliencyParams {
            samples: 2,
            ..Default::default()
        },
        stop: StopParams {
            threshold: 0.0,
            max_iter: 2,
        },
        ..Default::default()
    };
    // Every step is reported before any curves, which follow in order.
    let mut events = Vec::new();
    let out = Explainer::new(lite0())
        .explain_input(
            &x,
            &params,
            &mut |e| match e {
                Event::Step(s) => events.push(('s', s.index, None)),
                Event::Curves { index, curves } => events.push(('c', index, Some(curves.clone()))),
                _ => {}
            },
            &AtomicBool::new(false),
        )
        .unwrap();
    let order: Vec<(char, usize)> = events.iter().map(|&(k, i, _)| (k, i)).collect();
    assert_eq!(order, [('s', 0), ('s', 1), ('c', 0), ('c', 1)]);
    for (e, s) in events[2..].iter().zip(&out.steps) {
        assert_eq!(e.2.as_ref(), s.faithfulness.as_ref());
    }
    let model = lite0();
    for s in &out.steps {
        let f = s.faithfulness.as_ref().expect("measured by default");
        assert_eq!(f.deletion_curve.len(), STEPS + 1);
        assert_eq!(f.insertion_curve.len(), STEPS + 1);
        // Nothing deleted: the iteration's own input. Everything put back: the input again.
        assert!((f.deletion_curve[0] - s.p_target).abs() < 1e-5, "{f:?}");
        assert!(s.timings.curves_ms > 0.0);
        assert!(
            (f.insertion_curve[STEPS] - s.p_target).abs() < 1e-5,
            "{f:?}"
        );
        // Everything deleted: the fill image.
        let fill = model.info().normalise(model.info().dataset_mean);
        let plain = Tensor::from_vec(
            (0..3 * 224 * 224)
                .map(|i| fill[i / (224 * 224)])
                .collect::<Vec<f32>>(),
            (3, 224, 224),
            &Device::Cpu,
        )
        .unwrap();
        let p_fill = classify(model.as_ref(), &plain).unwrap()[out.target];
        assert!((f.deletion_curve[STEPS] - p_fill).abs() < 1e-5);
        assert_eq!(f.deletion_auc, auc(&f.deletion_curve));
        assert!((0.0..=1.0).contains(&f.deletion_auc) && (0.0..=1.0).contains(&f.insertion_auc));
    }
    // Hiding the salient eyes costs the cat class more than a blurred cat regains.
    let first = out.steps[0].faithfulness.as_ref().unwrap();
    assert!(first.deletion_auc < first.insertion_auc, "{first:?}");

    let u = out.unveiling.expect("measured by default");
    let union = &out.steps.last().unwrap().cumulative;
    assert_eq!(u.unveiled_area, union.coverage());
    assert!(
        (u.unveiled_hidden_p - out.after.as_ref().unwrap().p_target).abs() < 1e-5,
        "the union hidden is the loop's last input"
    );
    assert!(
        (u.single_map_area - u.unveiled_area).abs() < 0.01,
        "the same area: {u:?}"
    );
}

#[test]
fn faithfulness_can_be_skipped() {
    let img = image::load(&repo("assets/coffee.png")).unwrap();
    let x = image::to_model_input(&img, lite0().info(), &Device::Cpu).unwrap();
    let params = UnveilParams {
        saliency: SaliencyParams {
            samples: 1,
            ..Default::default()
        },
        stop: StopParams {
            threshold: 0.0,
            max_iter: 1,
        },
        faithfulness: false,
        ..Default::default()
    };
    let out = Explainer::new(lite0())
        .explain_input(&x, &params, &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
    assert!(out.steps[0].faithfulness.is_none() && out.unveiling.is_none());
}

/// The bundled model, counting the images it classifies.
struct Counting {
    inner: Arc<dyn Classifier>,
    images: AtomicUsize,
}

impl Classifier for Counting {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn forward(&self, x: &Tensor, mode: ReluMode) -> unveil::error::Result<Tensor> {
        assert!(!x.track_op(), "a forward-only pass records no graph");
        self.images.fetch_add(x.dims()[0], Ordering::Relaxed);
        self.inner.forward(x, mode)
    }
}

#[test]
fn known_points_are_taken_not_recomputed() {
    // A 64 x 64 crop keeps the test cheap: the curves do not depend on the size.
    let img = image::load(&repo("assets/chelsea.png")).unwrap();
    let full = image::to_model_input(&img, lite0().info(), &Device::Cpu).unwrap();
    let x = full
        .i((.., 80..144, 80..144))
        .unwrap()
        .contiguous()
        .unwrap();
    let n = 64 * 64;
    let model = Counting {
        inner: lite0(),
        images: AtomicUsize::new(0),
    };
    let count = || model.images.swap(0, Ordering::Relaxed);
    let probs = classify(&model, &x).unwrap();
    let target = (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .unwrap();
    count();
    let fill = vec![0.1f32; 3 * n];
    let blurred: Vec<f32> = to_vec(&x).iter().map(|v| v * 0.5).collect();
    let saliency = SaliencyMap {
        width: 64,
        height: 64,
        data: pseudo_random(n, 7, 1.0),
    };
    let order = faithfulness::order(&saliency);
    let never = AtomicBool::new(false);

    let reference =
        faithfulness::curves_in_order(&model, &x, &order, &fill, &blurred, target, &never).unwrap();
    assert_eq!(count(), 2 * (STEPS + 1), "nothing known: every point");
    let mut probe = Probe::new(&model, &fill, target, &never);
    let p = probs[target];
    let first = probe.curves(&x, &order, &blurred, Some(p)).unwrap();
    assert_eq!(
        count(),
        2 * (STEPS + 1) - 2,
        "the input's p given: both ends on it"
    );
    let second = probe.curves(&x, &order, &blurred, Some(p)).unwrap();
    assert_eq!(
        count(),
        2 * (STEPS + 1) - 3,
        "and the fill image's p is kept"
    );
    assert_eq!(
        (first.deletion_curve[0], first.insertion_curve[STEPS]),
        (p, p)
    );
    assert_eq!(second.deletion_curve[STEPS], first.deletion_curve[STEPS]);
    for c in [&first, &second] {
        for (a, b) in c.deletion_curve.iter().chain(&c.insertion_curve).zip(
            reference
                .deletion_curve
                .iter()
                .chain(&reference.insertion_curve),
        ) {
            assert!((a - b).abs() < 1e-5, "{c:?} vs {reference:?}");
        }
    }
}
