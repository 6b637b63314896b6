//! The rival saliency methods against independent references
//! (scripts/fixtures/make_method_fixtures.py: Captum's integrated gradients, Grad-CAM in plain
//! PyTorch, SmoothGrad recomputed with unveil's noise ported to numpy), through the whole
//! loop's first iteration.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::Tensor;
use unveil::engine::explainer::Explainer;
use unveil::engine::models::Classifier;
use unveil::engine::ops::Backend;
use unveil::engine::outcome::Step;
use unveil::engine::params::{Method, Reduction, SaliencyParams, StopParams, UnveilParams};

use crate::common::{cosine, fixture, lite0, to_vec};

/// Iteration 0 of a run of `method` on `x` (`[1, 3, h, w]`) for `target`.
pub(crate) fn first_step(
    model: Arc<dyn Classifier>,
    x: &Tensor,
    target: usize,
    s: SaliencyParams,
) -> Step {
    let params = UnveilParams {
        saliency: s,
        stop: StopParams {
            threshold: 0.0,
            max_iter: 1,
        },
        target: Some(target),
        ..Default::default()
    };
    let x = x.squeeze(0).unwrap();
    let out = Explainer::new(model)
        .explain_input(&x, &params, &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
    out.steps.into_iter().next().unwrap()
}

fn plain(method: Method) -> SaliencyParams {
    SaliencyParams {
        method,
        samples: 1,
        noise: 0.0,
        ig_steps: 32,
        ..Default::default()
    }
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let c = cosine(&to_vec(got), &to_vec(want));
    eprintln!("{name}: cosine {c:.7}");
    assert!(c > 0.999, "{name}: cosine {c}");
}

fn target(f: &HashMap<String, Tensor>) -> usize {
    f["target"].to_vec1::<i64>().unwrap()[0] as usize
}

#[test]
fn efficientnet_lite0_methods_match_captum_and_pytorch() {
    let f = fixture("efficientnet_lite0.safetensors");
    let r = fixture("methods/efficientnet_lite0.safetensors");
    let (x, t) = (&f["input"], target(&f));

    let ig = first_step(lite0(), x, t, plain(Method::IntegratedGradients));
    assert_close("integrated gradients", &ig.attribution, &r["ig"]);
    // Completeness: the sum of attributions and the score difference, as Captum computes them.
    let c = ig.completeness.expect("reported for integrated gradients");
    let want_sum = to_vec(&r["ig"]).iter().map(|&v| v as f64).sum::<f64>();
    let want_diff = to_vec(&r["logit_difference"])[0] as f64;
    assert!(
        (c.attribution_sum - want_sum).abs() < 1e-2 * want_sum.abs(),
        "{c:?} vs {want_sum}"
    );
    assert!(
        (c.logit_difference - want_diff).abs() < 1e-3 * want_diff.abs(),
        "{c:?} vs {want_diff}"
    );

    let smooth = SaliencyParams {
        samples: 2,
        noise: 0.15,
        seed: 3,
        ig_steps: 8,
        ..plain(Method::IntegratedGradients)
    };
    let ig_smooth = first_step(lite0(), x, t, smooth);
    assert_close(
        "integrated gradients with SmoothGrad",
        &ig_smooth.attribution,
        &r["ig_smooth"],
    );

    let cam = first_step(lite0(), x, t, plain(Method::GradCam));
    assert_close("Grad-CAM", &cam.attribution, &r["gradcam"]);

    for (reduction, key) in [
        (Reduction::Mean, "smoothgrad_guided_mean"),
        (Reduction::Squared, "smoothgrad_guided_squared"),
    ] {
        let s = SaliencyParams {
            method: Method::Guided,
            samples: 4,
            noise: 0.15,
            seed: 7,
            reduction,
            ..Default::default()
        };
        let step = first_step(lite0(), x, t, s);
        assert_close(key, &step.attribution, &r[key]);
    }
}

#[test]
fn resnet_and_densenet_methods_match_captum_and_pytorch() {
    for name in ["resnet18", "resnet50", "densenet121"] {
        let f = fixture(&format!("torchvision/{name}.safetensors"));
        let r = fixture(&format!("methods/{name}.safetensors"));
        let model = crate::torchvision::load(name, Backend::Fast);
        let (x, t) = (&f["input"], target(&f));
        let ig = first_step(model.clone(), x, t, plain(Method::IntegratedGradients));
        assert_close(
            &format!("{name} integrated gradients"),
            &ig.attribution,
            &r["ig"],
        );
        let cam = first_step(model, x, t, plain(Method::GradCam));
        assert_close(&format!("{name} Grad-CAM"), &cam.attribution, &r["gradcam"]);
    }
}

#[test]
fn xception_methods_match_captum_and_pytorch() {
    let f = fixture("pneumonia_xception.safetensors");
    let r = fixture("methods/pneumonia_xception.safetensors");
    let x = f["inputs"].narrow(0, 0, 1).unwrap();
    let t = target(&f);
    let model = crate::xception::model();
    let ig = first_step(model.clone(), &x, t, plain(Method::IntegratedGradients));
    assert_close("Xception integrated gradients", &ig.attribution, &r["ig"]);
    let cam = first_step(model, &x, t, plain(Method::GradCam));
    assert_close("Xception Grad-CAM", &cam.attribution, &r["gradcam"]);
}

#[test]
fn every_architecture_names_its_grad_cam_layer() {
    assert!(
        lite0()
            .feature_layer()
            .is_some_and(|l| l.contains("head convolution"))
    );
    let d = crate::torchvision::load("densenet121", Backend::Fast);
    assert!(d.feature_layer().is_some_and(|l| l.contains("norm5")));
}
