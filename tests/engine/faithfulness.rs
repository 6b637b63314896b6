//! Faithfulness measures on the bundled model: the curves' end points are known
//! classifications, and the region tests agree with the loop's own numbers.

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use unveil::engine::explainer::Explainer;
use unveil::engine::faithfulness::{STEPS, auc};
use unveil::engine::image;
use unveil::engine::params::{SaliencyParams, StopParams, UnveilParams};
use unveil::engine::predict::classify;

use crate::common::{lite0, repo};

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
    let out = Explainer::new(lite0())
        .explain_input(&x, &params, &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
    let model = lite0();
    for s in &out.steps {
        let f = s.faithfulness.as_ref().expect("measured by default");
        assert_eq!(f.deletion_curve.len(), STEPS + 1);
        assert_eq!(f.insertion_curve.len(), STEPS + 1);
        // Nothing deleted: the iteration's own input. Everything put back: the input again.
        assert!((f.deletion_curve[0] - s.p_target).abs() < 1e-5, "{f:?}");
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
