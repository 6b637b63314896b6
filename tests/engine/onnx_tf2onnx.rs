//! Keras models exported with tf2onnx against TensorFlow
//! (scripts/fixtures/make_tf2onnx_fixtures.py): each graph of
//! tests/fixtures/onnx-tf2onnx/fixtures.json is loaded the way a user's file is, on the fast
//! CPU kernels and on the device-generic path, and its logits, vanilla and guided input
//! gradients are checked against the numbers TensorFlow computed. A Keras classifier ends in
//! its Dense's softmax (or sigmoid): unveil leaves that last op out, explains the logits
//! before it and scores them itself, so its probabilities must equal the Keras model's output.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use unveil::engine::models::{self, Classifier};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;
use unveil::engine::params::{Method, SaliencyParams};
use unveil::engine::predict::classify;

use crate::common::{cosine, max_abs_diff, repo, to_vec};

const DIR: &str = "tests/fixtures/onnx-tf2onnx";

fn json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo(&format!("{DIR}/fixtures.json"))).unwrap()).unwrap()
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        repo(&format!("{DIR}/expected.safetensors")),
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

fn load(file: &str, backend: Backend) -> Arc<dyn Classifier> {
    crate::onnx::load_in(DIR, file, backend)
}

/// Checks one graph on one input against TensorFlow (as `onnx::check` does against PyTorch,
/// plus the probabilities); returns what it measured.
fn check(
    model: &dyn Classifier,
    key: &str,
    (head, guided): (&str, bool),
    e: &HashMap<String, Tensor>,
) -> String {
    let said = crate::onnx::check(model, key, guided, e);
    // What the Keras model outputs after its softmax / sigmoid is what unveil reports (a
    // linear head's logits are scored with a softmax).
    let x = &e[&format!("{key}/input")];
    let probs = classify(model, &x.squeeze(0).unwrap()).unwrap();
    let mut keras = to_vec(&e[&format!("{key}/output")]);
    if head == "linear" {
        let sum: f32 = keras.iter().map(|v| v.exp()).sum();
        keras = keras.iter().map(|v| v.exp() / sum).collect();
    }
    let p_diff = max_abs_diff(&probs, &keras);
    assert!(p_diff <= 1e-5, "{key}: probabilities differ by {p_diff}");
    format!("{said}, probabilities {p_diff:.1e}")
}

#[test]
fn every_tf2onnx_export_matches_tensorflow() {
    let j = json();
    let e = expected();
    let mut checked = 0;
    for (name, m) in j["models"].as_object().unwrap() {
        let how = (m["head"].as_str().unwrap(), m["guided"].as_bool().unwrap());
        for backend in [Backend::Fast, Backend::Generic] {
            let model = load(m["file"].as_str().unwrap(), backend);
            for input in m["inputs"].as_object().unwrap().keys() {
                let said = check(model.as_ref(), &format!("{name}/{input}"), how, &e);
                eprintln!("{backend:?} {said}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "{checked} graphs x inputs checked");
}

#[test]
fn a_keras_softmax_or_sigmoid_head_is_left_out_and_said() {
    let j = json();
    for (name, m) in j["models"].as_object().unwrap() {
        let model = load(m["file"].as_str().unwrap(), Backend::Fast);
        let info = model.info();
        let head = m["head"].as_str().unwrap();
        let classes = m["classes"].as_u64().unwrap() as usize;
        assert_eq!(info.labels.len(), classes, "{name}");
        // Softmax scoring unless the graph ended in sigmoids (one per output).
        assert_eq!(info.multi_label, head == "sigmoid", "{name}");
        let said = info.description.to_lowercase();
        match head {
            "linear" => assert!(!said.contains("left out"), "{name}: {said}"),
            _ => assert!(
                said.contains(&format!("final {head} is left out")),
                "{name}: {said}"
            ),
        }
        // The graph's fixed size is used as it is; a dynamic one is assumed (224) and said.
        let [h, w] = [0, 1].map(|i| m["inputs"]["a"][i].as_u64().unwrap() as usize);
        if m["dynamic_spatial"].as_bool().unwrap() {
            assert_eq!(info.input_size, (224, 224), "{name}");
            assert!(info.assumed.iter().any(|a| a == "224 x 224"), "{name}");
        } else {
            assert_eq!(info.input_size, (h, w), "{name}");
        }
    }
}

/// Grad-CAM finds by itself the layer the reference read (the Keras layer `cam`: the last
/// 4-D activation before the pooling) and gives TensorFlow's map.
#[test]
fn grad_cam_on_tf2onnx_graphs_matches_tensorflow() {
    let j = json();
    let e = expected();
    for (name, m) in j["models"].as_object().unwrap() {
        let model = load(m["file"].as_str().unwrap(), Backend::Fast);
        let layer = model.feature_layer().unwrap_or_default();
        assert_eq!(layer, m["cam_tensor"].as_str().unwrap(), "{name}");
        let key = format!("{name}/a");
        let x = &e[&format!("{key}/input")];
        let target = e[&format!("{key}/target")].to_vec1::<i64>().unwrap()[0] as usize;
        let s = SaliencyParams {
            method: Method::GradCam,
            samples: 1,
            noise: 0.0,
            ..Default::default()
        };
        let cam = crate::methods::first_step(model.clone(), x, target, s).attribution;
        let c = cosine(&to_vec(&cam), &to_vec(&e[&format!("{key}/gradcam")]));
        assert!(c >= 0.999, "{name}: Grad-CAM cosine {c}");
        eprintln!("{name}: Grad-CAM on {layer}: cosine {c:.6}");
    }
}

/// The chest X-ray Xception (unlicensed weights: not in the repository) exported with tf2onnx
/// gives the native model's logits and maps. Run `unveil models fetch pneumonia-xception`,
/// then `scripts/fetch/tf2onnx_pneumonia_xception.py`, which writes the export next to the
/// fetched weights, then this test with `--ignored`.
#[test]
#[ignore = "needs the chest X-ray model's tf2onnx export (scripts/fetch/tf2onnx_pneumonia_xception.py)"]
fn the_chest_xray_xception_through_tf2onnx_gives_the_native_models_results() {
    let path = models::models_dir().join("pneumonia-xception-tf2onnx.onnx");
    assert!(
        path.exists(),
        "{}: run scripts/fetch/tf2onnx_pneumonia_xception.py first",
        path.display()
    );
    let onnx = models::load(
        path.to_str().unwrap(),
        &candle_core::Device::Cpu,
        Backend::Fast,
    )
    .unwrap();
    let native = crate::xception::model();
    let f = crate::common::fixture("pneumonia_xception.safetensors");
    let x = &f["inputs"];
    let a = to_vec(&onnx.forward(x, ReluMode::Plain).unwrap());
    let b = to_vec(&native.forward(x, ReluMode::Plain).unwrap());
    let largest = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (d_native, d_keras) = (
        max_abs_diff(&a, &b),
        max_abs_diff(&a, &to_vec(&f["logits_keras"])),
    );
    eprintln!("4 X-rays: logits vs native {d_native:.1e}, vs the Keras model {d_keras:.1e}");
    assert!(d_native <= 1e-4 * largest, "logits vs native: {d_native}");
    assert!(d_keras < 1e-3, "logits vs Keras: {d_keras}");
    assert_eq!(
        onnx.feature_layer().is_some(),
        native.feature_layer().is_some()
    );
    let x = x.narrow(0, 0, 1).unwrap();
    let target = f["target"].to_vec1::<i64>().unwrap()[0] as usize;
    for method in [
        Method::Guided,
        Method::Vanilla,
        Method::IntegratedGradients,
        Method::GradCam,
    ] {
        let s = SaliencyParams {
            method,
            samples: 1,
            noise: 0.0,
            ig_steps: 16,
            ..Default::default()
        };
        let m1 = crate::methods::first_step(onnx.clone(), &x, target, s.clone()).attribution;
        let m2 = crate::methods::first_step(native.clone(), &x, target, s).attribution;
        let c = cosine(&to_vec(&m1), &to_vec(&m2));
        eprintln!("Xception tf2onnx vs native {method:?}: cosine {c:.7}");
        assert!(c > 0.9999, "{method:?}: cosine {c}");
    }
}
