//! ONNX graphs against PyTorch (scripts/fixtures/make_onnx_fixtures.py): every exported model
//! of tests/fixtures/onnx/fixtures.json is loaded the way a user's file is (`--model
//! FILE.onnx`), and its logits, vanilla and guided input gradients, integrated gradients,
//! Grad-CAM (with the layer it finds by itself) are checked against the PyTorch model the
//! graph was exported from.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use unveil::engine::models::{self, Classifier};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;
use unveil::engine::params::{Method, SaliencyParams};

use crate::common::{cosine, logit_gradient, max_abs_diff, repo, to_vec};

fn json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo("tests/fixtures/onnx/fixtures.json")).unwrap())
        .unwrap()
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        repo("tests/fixtures/onnx/expected.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

pub(crate) fn load(file: &str, backend: Backend) -> Arc<dyn Classifier> {
    load_in("tests/fixtures/onnx", file, backend)
}

/// A graph of fixture folder `dir`, loaded the way a user's file is.
pub(crate) fn load_in(dir: &str, file: &str, backend: Backend) -> Arc<dyn Classifier> {
    let path = repo(&format!("{dir}/{file}"));
    models::load(path.to_str().unwrap(), &candle_core::Device::Cpu, backend)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Checks one export on one input against the reference framework's numbers under `key`
/// (logits, vanilla and, with `guided`, guided input gradients); returns what it measured.
pub(crate) fn check(
    model: &dyn Classifier,
    key: &str,
    guided: bool,
    e: &HashMap<String, Tensor>,
) -> String {
    let x = &e[&format!("{key}/input")];
    let target = e[&format!("{key}/target")].to_vec1::<i64>().unwrap()[0] as usize;
    let want = to_vec(&e[&format!("{key}/logits")]);
    let got = to_vec(&model.forward(x, ReluMode::Plain).unwrap());
    let largest = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&got, &want);
    assert!(
        diff <= 1e-4 * largest,
        "{key}: logits differ by {diff} (largest {largest})"
    );
    let vanilla = cosine(
        &logit_gradient(model, x, target, ReluMode::Plain),
        &to_vec(&e[&format!("{key}/grad_vanilla")]),
    );
    assert!(vanilla >= 0.999, "{key}: vanilla gradient cosine {vanilla}");
    let mut said = format!("{key}: logits {diff:.1e}, vanilla {vanilla:.6}");
    if guided {
        let g = cosine(
            &logit_gradient(model, x, target, ReluMode::Guided),
            &to_vec(&e[&format!("{key}/grad_guided")]),
        );
        assert!(g >= 0.999, "{key}: guided gradient cosine {g}");
        said += &format!(", guided {g:.6}");
    }
    said
}

fn first_step(model: Arc<dyn Classifier>, x: &Tensor, target: usize, method: Method) -> Tensor {
    let s = SaliencyParams {
        method,
        samples: 1,
        noise: 0.0,
        ig_steps: 16,
        ..Default::default()
    };
    crate::methods::first_step(model, x, target, s).attribution
}

#[test]
fn every_exported_graph_matches_pytorch() {
    let j = json();
    let e = expected();
    let mut checked = 0;
    for (name, m) in j["models"].as_object().unwrap() {
        let guided = m["guided"].as_bool().unwrap_or(false);
        for (export, x) in m["exports"].as_object().unwrap() {
            if x["data_file_committed"] == false {
                continue; // see an_export_of_a_native_model_gives_the_native_models_results
            }
            let model = load(x["file"].as_str().unwrap(), Backend::Fast);
            for input in m["inputs"].as_object().unwrap().keys() {
                let dynamic = x["dynamic_spatial"].as_bool().unwrap_or(false);
                if input != "a" && !dynamic {
                    continue;
                }
                let said = check(model.as_ref(), &format!("{name}/{input}"), guided, &e);
                eprintln!("{export} {said}");
                checked += 1;
            }
            if let Some(cam) = x["grad_cam_tensor_candidates"].as_array() {
                let layer = model.feature_layer().unwrap_or_default().to_string();
                assert!(
                    cam.iter().any(|c| c.as_str() == Some(&layer)),
                    "{export}: Grad-CAM layer {layer}, PyTorch's is one of {cam:?}"
                );
            }
        }
    }
    assert!(checked >= 2, "{checked} graphs checked");
}

#[test]
fn methods_on_graphs_match_captum_and_pytorch() {
    let j = json();
    let e = expected();
    for (name, m) in j["models"].as_object().unwrap() {
        let (export, x) = m["exports"].as_object().unwrap().iter().next().unwrap();
        if x["data_file_committed"] == false {
            continue;
        }
        let model = load(x["file"].as_str().unwrap(), Backend::Fast);
        let key = format!("{name}/a");
        let input = &e[&format!("{key}/input")];
        let target = e[&format!("{key}/target")].to_vec1::<i64>().unwrap()[0] as usize;
        let ig = first_step(model.clone(), input, target, Method::IntegratedGradients);
        let c = cosine(&to_vec(&ig), &to_vec(&e[&format!("{key}/ig")]));
        assert!(c >= 0.999, "{export}: integrated gradients cosine {c}");
        let cam = first_step(model, input, target, Method::GradCam);
        let g = cosine(&to_vec(&cam), &to_vec(&e[&format!("{key}/gradcam")]));
        assert!(g >= 0.999, "{export}: Grad-CAM cosine {g}");
        eprintln!("{export}: integrated gradients {c:.6}, Grad-CAM {g:.6}");
    }
}

/// The torchvision ResNet-18 of the native tests (weights from the fixtures' rule), exported
/// to ONNX with its BatchNorms and state-dict names kept: the weights file is not stored but
/// written here from the same rule, at the offsets the export recorded.
fn resnet18_export() -> std::path::PathBuf {
    let j = json();
    let x = &j["models"]["resnet18_native"]["exports"]["resnet18_native"];
    let dir = std::env::temp_dir().join(format!("unveil-onnx-native-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let graph = dir.join("resnet18_native.onnx");
    std::fs::copy(repo("tests/fixtures/onnx/resnet18_native.onnx"), &graph).unwrap();
    let mut data = Vec::new();
    for t in x["external_data"]["initializers"].as_array().unwrap() {
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t["offset"].as_u64().unwrap() as usize, data.len());
        let values = crate::torchvision::generate(t["name"].as_str().unwrap(), &shape);
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    std::fs::write(dir.join("resnet18_native.onnx.data"), data).unwrap();
    graph
}

#[test]
fn an_export_of_a_native_model_gives_the_native_models_results() {
    let onnx = models::load(
        resnet18_export().to_str().unwrap(),
        &candle_core::Device::Cpu,
        Backend::Fast,
    )
    .unwrap();
    let native = crate::torchvision::load("resnet18", Backend::Fast);
    let e = expected();
    let key = "resnet18_native/a";
    let said = check(onnx.as_ref(), key, true, &e);
    eprintln!("resnet18_native {said}");
    let x = &e[&format!("{key}/input")];
    let target = e[&format!("{key}/target")].to_vec1::<i64>().unwrap()[0] as usize;
    let (a, b) = (
        to_vec(&onnx.forward(x, ReluMode::Plain).unwrap()),
        to_vec(&native.forward(x, ReluMode::Plain).unwrap()),
    );
    let largest = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&a, &b) <= 1e-4 * largest, "logits");
    for method in [
        Method::Guided,
        Method::Vanilla,
        Method::IntegratedGradients,
        Method::GradCam,
    ] {
        let m1 = first_step(onnx.clone(), x, target, method);
        let m2 = first_step(native.clone(), x, target, method);
        let c = cosine(&to_vec(&m1), &to_vec(&m2));
        eprintln!("resnet18 ONNX vs native {method:?}: cosine {c:.7}");
        assert!(c > 0.9999, "{method:?}: cosine {c}");
    }
}
