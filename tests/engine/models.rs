//! The bundled EfficientNet-Lite0 against PyTorch fixtures (scripts/fixtures/make_fixtures.py).

use candle_core::{Device, Tensor};
use unveil::engine::image;
use unveil::engine::models::layers::Weights;
use unveil::engine::models::{self, DEFAULT_MODEL};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;
use unveil::engine::predict::{classify, top_k};

use crate::common::{cosine, fixture, lite0, logit_gradient, max_abs_diff, repo, to_vec};

fn target_and_input() -> (usize, Tensor, std::collections::HashMap<String, Tensor>) {
    let f = fixture("efficientnet_lite0.safetensors");
    let target = f["target"].to_vec1::<i64>().unwrap()[0] as usize;
    (target, f["input"].clone(), f)
}

#[test]
fn logits_match_pytorch() {
    let (_, x, f) = target_and_input();
    let logits = lite0().forward(&x, ReluMode::Plain).unwrap();
    let d = max_abs_diff(&to_vec(&logits), &to_vec(&f["logits"]));
    assert!(d < 1e-3, "max abs logit difference {d}");
}

#[test]
fn guided_and_vanilla_gradients_match_pytorch() {
    let (target, x, f) = target_and_input();
    for (mode, key) in [
        (ReluMode::Guided, "grad_guided"),
        (ReluMode::Plain, "grad_vanilla"),
    ] {
        let g = logit_gradient(lite0().as_ref(), &x, target, mode);
        let c = cosine(&g, &to_vec(&f[key]));
        assert!(c > 0.999, "{key}: cosine {c}");
    }
}

#[test]
fn fast_ops_match_stock_candle_on_the_whole_model() {
    let (target, x, _) = target_and_input();
    // A smaller input keeps the stock path (slow by design) quick; TF padding handles any size.
    let x = x
        .narrow(2, 40, 96)
        .unwrap()
        .narrow(3, 60, 96)
        .unwrap()
        .contiguous()
        .unwrap();
    let stock = models::load(DEFAULT_MODEL, &Device::Cpu, Backend::Stock).unwrap();
    let fast = lite0();
    let (lf, ls) = (
        fast.forward(&x, ReluMode::Plain).unwrap(),
        stock.forward(&x, ReluMode::Plain).unwrap(),
    );
    assert!(max_abs_diff(&to_vec(&lf), &to_vec(&ls)) < 1e-3);
    let gf = logit_gradient(fast.as_ref(), &x, target, ReluMode::Guided);
    let gs = logit_gradient(stock.as_ref(), &x, target, ReluMode::Guided);
    let c = cosine(&gf, &gs);
    assert!(c > 0.9999, "cosine {c}");
    assert!(max_abs_diff(&gf, &gs) < 1e-4 * gs.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-6);
}

#[test]
fn guided_gradient_differs_from_vanilla() {
    // Guarding against a guided mode that silently falls back to the plain derivative.
    let (target, x, _) = target_and_input();
    let g = logit_gradient(lite0().as_ref(), &x, target, ReluMode::Guided);
    let v = logit_gradient(lite0().as_ref(), &x, target, ReluMode::Plain);
    assert!(cosine(&g, &v) < 0.9);
}

fn top1(file: &str) -> (usize, String, f32) {
    let img = image::load(&repo(file)).unwrap();
    let model = lite0();
    let x = image::to_model_input(&img, model.info(), &Device::Cpu).unwrap();
    let p = classify(model.as_ref(), &x).unwrap();
    let t = &top_k(model.as_ref(), &p, 1)[0];
    (t.class, t.label.clone(), t.prob)
}

#[test]
fn sample_photos_are_recognised() {
    let (class, label, p) = top1("assets/chelsea.png");
    assert!((281..=285).contains(&class), "chelsea: {class} {label} {p}");
    let (class, label, p) = top1("assets/coffee.png");
    // 504 coffee mug, 967 espresso, 968 cup.
    assert!(
        [504, 967, 968].contains(&class),
        "coffee: {class} {label} {p}"
    );
}

#[test]
fn corrupt_weights_give_an_error_not_a_panic() {
    let err = Weights::from_safetensors(b"not a safetensors file")
        .and_then(|w| models::from_weights(DEFAULT_MODEL, &w, &Device::Cpu, Backend::Fast))
        .map(|_| ())
        .expect_err("must fail");
    assert!(err.to_string().contains("safetensors"), "{err}");
}
