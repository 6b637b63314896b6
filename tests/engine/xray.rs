//! Chest X-ray models as they are published (scripts/fixtures/make_xray_checkpoint_fixtures.py,
//! real torch.save files with seeded weights): CheXNet checkpoints in the legacy format and as
//! whole pickled models, TorchXRayVision whole models with their labels and operating points,
//! xrv's preprocessing, and malicious or broken files in these formats.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use unveil::engine::image;
use unveil::engine::models::{self, Classifier, Crop, ModelDescription, read_weights};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;
use unveil::engine::predict::{classify_batch, top_k};

use crate::common::{cosine, fixture, logit_gradient, max_abs_diff, repo, to_vec};
use crate::torchvision::{scratch, write_generated};

pub(crate) fn path(name: &str) -> PathBuf {
    repo(&format!("tests/fixtures/xray/{name}"))
}

fn described(p: PathBuf) -> Arc<dyn Classifier> {
    described_with(p, Backend::Fast, &Device::Cpu)
}

/// A fixture model file, loaded on `device` with `backend`.
pub(crate) fn described_with(p: PathBuf, backend: Backend, device: &Device) -> Arc<dyn Classifier> {
    let mut d = ModelDescription::ad_hoc(p.clone(), None, None, false);
    if !p.to_string_lossy().contains("xrv") {
        d.input_size = Some([64, 64]);
    }
    models::load_custom(&d, device, backend).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Probabilities (< 1e-4), the top finding and guided and vanilla gradients (cosine > 0.999)
/// against PyTorch. A one-channel model's input is given as three equal channels (what unveil
/// feeds it); the gradient of the one channel is the sum over the three.
fn check(file: &str, key: &str, expected_probs: &str) -> Arc<dyn Classifier> {
    let f = fixture("xray/expected.safetensors");
    let m = described(path(file));
    let xrv = key.starts_with("xrv");
    let x = &f[if xrv { "xrv/input" } else { "chexnet/input" }];
    let x3 = if xrv {
        x.repeat((1, 3, 1, 1)).unwrap()
    } else {
        x.clone()
    };
    let probs = classify_batch(m.as_ref(), &x3).unwrap().remove(0);
    let want = to_vec(&f[&format!("{key}/{expected_probs}")]);
    let d = max_abs_diff(&probs, &want);
    assert!(d < 1e-4, "{key}: max probability difference {d}");
    let target = f[&format!("{key}/target")].to_vec1::<i64>().unwrap()[0] as usize;
    assert_eq!(top_k(m.as_ref(), &probs, 1)[0].class, target, "{key}");
    if let Some(g) = f.get(&format!("{key}/grad_guided")) {
        let one_channel = |v: Vec<f32>| -> Vec<f32> {
            if !xrv {
                return v;
            }
            let plane = v.len() / 3;
            (0..plane)
                .map(|i| v[i] + v[plane + i] + v[2 * plane + i])
                .collect()
        };
        for (mode, want) in [
            (ReluMode::Guided, g),
            (ReluMode::Plain, &f[&format!("{key}/grad_vanilla")]),
        ] {
            let got = one_channel(logit_gradient(m.as_ref(), &x3, target, mode));
            let c = cosine(&got, &to_vec(want));
            assert!(c > 0.999, "{key} {mode:?}: cosine {c}");
        }
    }
    m
}

#[test]
fn a_chexnet_checkpoint_in_the_legacy_format_matches_pytorch() {
    // {'state_dict': DataParallel keys `module.densenet121.…norm.1…`, 'optimizer': Adam state,
    // …}, saved before the zip format; head `classifier.0` = Linear, then a Sigmoid.
    let m = check("chexnet_legacy.pth.tar", "chexnet_legacy", "probabilities");
    let info = m.info();
    assert!(info.multi_label);
    assert_eq!(info.labels.len(), 14);
    assert_eq!(
        (info.labels[1].as_str(), info.labels[2].as_str()),
        ("Cardiomegaly", "Effusion")
    );
}

#[test]
fn a_training_checkpoint_holding_the_whole_model_is_read_as_data() {
    // {'model': torchvision DenseNet object, 'rng_state': ByteTensor, 'LR': …}, zip and legacy.
    check(
        "chexnet_whole_model.pth",
        "chexnet_whole_model",
        "probabilities",
    );
    check(
        "chexnet_whole_model_legacy.pth",
        "chexnet_whole_model_legacy",
        "probabilities",
    );
}

#[test]
fn a_torchxrayvision_model_is_recognised_with_its_labels_and_preprocessing() {
    let m = check("xrv_densenet.pt", "xrv_densenet", "sigmoid");
    let info = m.info();
    assert!(info.multi_label && info.op_threshs.is_none());
    assert_eq!(info.crop, Crop::CenterSquare);
    assert!(
        info.description.starts_with("xrv-densenet121"),
        "{}",
        info.description
    );
    // The model's own `targets`: blank where the weights do not predict, never the top finding.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("fixtures.json")).unwrap()).unwrap();
    let want: Vec<String> =
        serde_json::from_value(json["models"]["xrv_densenet"]["pathologies"].clone()).unwrap();
    assert_eq!(info.labels, want);
    assert!(want.iter().any(String::is_empty));
    assert!((0..18).all(|c| info.predicts(c) != info.labels[c].is_empty()));
    let probs = vec![0.0f32; 18]
        .into_iter()
        .enumerate()
        .map(|(c, _)| if info.predicts(c) { 0.1 } else { 0.9 })
        .collect::<Vec<_>>();
    assert!(
        top_k(m.as_ref(), &probs, 18)
            .iter()
            .all(|p| !p.label.is_empty())
    );
}

#[test]
fn torchxrayvision_operating_points_are_applied_as_xrv_does() {
    let m = check(
        "xrv_densenet_opthreshs.pt",
        "xrv_densenet_opthreshs",
        "probabilities",
    );
    assert_eq!(m.info().op_threshs.as_ref().map(Vec::len), Some(18));
    // NIH thresholds include NaN for outputs the weights do not predict: xrv gives 0.5.
    check(
        "xrv_densenet_nih_opthreshs.pt",
        "xrv_densenet_nih_opthreshs",
        "probabilities",
    );
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&x| x as f64).sum::<f64>() / n,
        b.iter().map(|&x| x as f64).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn torchxrayvision_preprocessing_of_8_and_16_bit_images_matches_xrv() {
    let m = described(path("xrv_densenet.pt"));
    let f = fixture("xray/expected.safetensors");
    for (file, key) in [("xray_8bit.png", "8bit"), ("xray_16bit.png", "16bit")] {
        let img = image::load(&path(file)).unwrap();
        let x = image::to_model_input(&img, m.info(), &Device::Cpu).unwrap();
        assert_eq!(x.dims(), [3, 224, 224]);
        // unveil's input in xrv units ([-1024, 1024]); all three channels equal.
        let got = to_vec(&x.get(0).unwrap());
        let want = to_vec(&f[&format!("preprocess/{key}")]);
        let r = pearson(&got, &want);
        let mean_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / got.len() as f32;
        assert!(r >= 0.99, "{key}: correlation {r}");
        assert!(
            mean_diff < 20.0,
            "{key}: mean |difference| {mean_diff} of 2048"
        );
    }
}

#[test]
fn formats_are_recognised_from_the_bytes_whatever_the_name() {
    let dir = scratch("names");
    std::fs::create_dir_all(&dir).unwrap();
    let want = read_weights(&path("chexnet_legacy.pth.tar")).unwrap();
    let safetensors = write_generated("resnet18", &dir);
    for (src, name) in [
        (path("chexnet_legacy.pth.tar"), "a.ckpt"),
        (path("chexnet_legacy.pth.tar"), "noextension"),
        (path("chexnet_whole_model.pth"), "b.bin"),
        (safetensors.clone(), "weights.pth"),
    ] {
        let p = dir.join(name);
        std::fs::copy(&src, &p).unwrap();
        let w = read_weights(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        if src.ends_with("chexnet_legacy.pth.tar") {
            assert_eq!(w.shapes().count(), want.shapes().count(), "{name}");
        }
    }
    // A renamed ResNet checkpoint loads as one with no --arch: recognised from its tensors.
    let d = ModelDescription::ad_hoc(dir.join("weights.pth"), None, None, false);
    let m = models::load_custom(&d, &Device::Cpu, Backend::Fast).unwrap();
    assert!(
        m.info().description.starts_with("resnet18"),
        "{}",
        m.info().description
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn whole_model_and_legacy_files_that_would_run_code_are_refused() {
    let marker = std::path::Path::new("/tmp/unveil-pwned");
    let _ = std::fs::remove_file(marker);
    for file in [
        "evil_legacy_os_system.pth",
        "evil_whole_model.pth",
        "evil_whole_model_legacy.pth",
    ] {
        let err = read_weights(&path(file))
            .map(|_| ())
            .expect_err("must be refused")
            .to_string();
        assert!(
            err.contains("refused") && err.contains("system`") && !err.contains('\n'),
            "{file}: {err}"
        );
    }
    assert!(!marker.exists(), "nothing was executed");
}

#[test]
fn broken_legacy_files_give_one_clear_line() {
    for (file, says) in [
        ("legacy_truncated.pth", "truncated"),
        ("legacy_missing_storage.pth", "no data"),
        ("legacy_view_past_storage.pth", "outside"),
        ("legacy_huge_dims.pth", "overflows"),
        ("legacy_huge_count.pth", "truncated"),
    ] {
        let err = read_weights(&path(file))
            .map(|_| ())
            .expect_err("broken")
            .to_string();
        assert!(
            err.contains(file) && err.contains(says) && !err.contains('\n'),
            "{file}: {err}"
        );
    }
}

#[test]
fn a_single_output_model_is_a_sigmoid_not_a_softmax_of_one() {
    // torchvision's ResNet-18 weights (generated as in the torchvision fixtures) cut to one
    // output: p = sigmoid(logit 0), where a softmax would always say 1.0.
    let dir = scratch("one-output");
    let full = write_generated("resnet18", &dir);
    let mut t = candle_core::safetensors::load(&full, &Device::Cpu).unwrap();
    let w = t["fc.weight"].narrow(0, 0, 1).unwrap();
    let b = t["fc.bias"].narrow(0, 0, 1).unwrap();
    t.insert("fc.weight".into(), w);
    t.insert("fc.bias".into(), b);
    let one = dir.join("one.safetensors");
    candle_core::safetensors::save(&t, &one).unwrap();
    let mut d =
        ModelDescription::ad_hoc(one, Some(crate::torchvision::arch("resnet18")), None, false);
    d.input_size = Some([64, 64]);
    let m = models::load_custom(&d, &Device::Cpu, Backend::Fast).unwrap();
    let f = fixture("torchvision/resnet18.safetensors");
    let p = classify_batch(m.as_ref(), &f["input"]).unwrap()[0][0];
    let logit0 = to_vec(&f["logits"])[0];
    let want = 1.0 / (1.0 + (-logit0).exp());
    assert!((p - want).abs() < 1e-4, "p {p}, sigmoid(logit) {want}");
    assert!(p < 0.99);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_legacy_file_saved_on_a_gpu_loads_onto_the_cpu() {
    // torch.cuda.FloatStorage at 'cuda:0', as pre-1.6 CheXNet checkpoints were saved.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("fixtures.json")).unwrap()).unwrap();
    let w = read_weights(&path("legacy_cuda_storage.pth")).unwrap();
    for (name, shape) in [("a", vec![2, 3]), ("b", vec![4])] {
        let want: Vec<f32> =
            serde_json::from_value(json["crafted_base"][format!("{name}_values")].clone()).unwrap();
        assert_eq!(to_vec(&w.get(name, &shape).unwrap()), want, "{name}");
    }
}
