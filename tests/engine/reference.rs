//! Faithfulness and sanity-check numbers against an independent recomputation
//! (scripts/fixtures/make_eval_fixtures.py: numpy, PyTorch, scipy, scikit-image) on two photos.

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Tensor};
use unveil::engine::device::DeviceChoice;
use unveil::engine::explainer::Explainer;
use unveil::engine::models::{DEFAULT_MODEL, ModelSource};
use unveil::engine::params::{Method, SaliencyParams, StopParams, UnveilParams};

use crate::common::{fixture, repo};

/// The model input of a stored uint8 image: (x / 255 - 0.5) / 0.5, `[3, 224, 224]`.
fn input(u8: &Tensor) -> Tensor {
    let x = u8.to_dtype(DType::F32).unwrap().permute((2, 0, 1)).unwrap();
    ((x / 255.0).unwrap() - 0.5)
        .unwrap()
        .affine(2.0, 0.0)
        .unwrap()
        .contiguous()
        .unwrap()
}

fn close(what: &str, got: f64, want: f64) {
    let d = (got - want).abs();
    if !what.contains("point") {
        eprintln!("{what}: {got:.6} vs {want:.6} (difference {d:.1e})");
    }
    assert!(d < 1e-3, "{what}: {got} vs {want}");
}

#[test]
fn faithfulness_and_randomisation_match_the_python_recomputation() {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo("tests/fixtures/eval/expected.json")).unwrap())
            .unwrap();
    let images = fixture("eval/inputs.safetensors")["images"].clone();
    let e = Explainer::load(&ModelSource::Named(DEFAULT_MODEL.into()), DeviceChoice::Cpu).unwrap();
    let never = AtomicBool::new(false);
    for (i, name) in ["chelsea.png", "coffee.png"].into_iter().enumerate() {
        let x = input(&images.get(i).unwrap());
        let want = &expected["images"][name];
        for method in [Method::Guided, Method::Vanilla] {
            let w = &want[method.name()];
            let params = UnveilParams {
                saliency: SaliencyParams {
                    method,
                    samples: 4,
                    noise: 0.15,
                    seed: 0,
                    ..Default::default()
                },
                stop: StopParams {
                    threshold: 0.0,
                    max_iter: 1,
                },
                ..Default::default()
            };
            let what = |s: &str| format!("{name} {}: {s}", method.name());
            let out = e.explain_input(&x, &params, &mut |_| {}, &never).unwrap();
            assert_eq!(out.target as u64, want["target"].as_u64().unwrap());
            let f = out.steps[0].faithfulness.as_ref().unwrap();
            close(
                &what("deletion AUC"),
                f.deletion_auc,
                w["deletion_auc"].as_f64().unwrap(),
            );
            close(
                &what("insertion AUC"),
                f.insertion_auc,
                w["insertion_auc"].as_f64().unwrap(),
            );
            for (k, (got, want)) in f
                .deletion_curve
                .iter()
                .zip(w["deletion_curve"].as_array().unwrap())
                .enumerate()
            {
                close(
                    &what(&format!("deletion point {k}")),
                    *got as f64,
                    want.as_f64().unwrap(),
                );
            }
            let check = e
                .check_input(&x, &params, &mut |_| {}, &never)
                .unwrap()
                .report;
            assert_eq!(
                check.other_class.class as u64,
                want["runner_up"].as_u64().unwrap()
            );
            close(
                &what("runner-up rho"),
                check.other_class.spearman.unwrap(),
                w["other_class_spearman"].as_f64().unwrap(),
            );
            for (got, want) in check
                .randomisation
                .iter()
                .zip(w["randomisation"].as_array().unwrap())
            {
                assert_eq!(
                    got.reinitialised.name(),
                    want["reinitialised"].as_str().unwrap()
                );
                let level = got.reinitialised.name();
                close(
                    &what(&format!("{level} rho")),
                    got.spearman.unwrap(),
                    want["spearman"].as_f64().unwrap(),
                );
                close(
                    &what(&format!("{level} SSIM")),
                    got.ssim,
                    want["ssim"].as_f64().unwrap(),
                );
            }
        }
    }
}
