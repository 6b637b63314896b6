//! The device-generic path (what CUDA and Metal run) against the fast CPU kernels on every
//! architecture: logits within 1e-4 of the largest, the same top class, and guided and vanilla
//! input gradients with cosine > 0.999.
//!
//! By default the generic side runs on the CPU (`Backend::Generic`). With
//! `UNVEIL_TEST_DEVICE=cuda` (or `metal`) it runs on that GPU instead, where the fast backend
//! is the generic path: `scripts/bench/gpu_check.sh` runs these tests so on a GPU machine.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use unveil::engine::device::{self, DeviceChoice};
use unveil::engine::models::{self, Classifier, DEFAULT_MODEL};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;

use crate::common::{cosine, fixture, logit_gradient, max_abs_diff, to_vec};

/// Where and how the generic side runs.
fn generic_side() -> (Device, Backend) {
    match std::env::var("UNVEIL_TEST_DEVICE").as_deref() {
        Err(_) | Ok("" | "cpu") => (Device::Cpu, Backend::Generic),
        Ok(d) => {
            let choice: DeviceChoice = d.parse().unwrap();
            let dev =
                device::open(choice).unwrap_or_else(|e| panic!("UNVEIL_TEST_DEVICE={d}: {e}"));
            (dev, Backend::Fast)
        }
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

/// The comparison itself; `x` is one input `[1, c, h, w]` on the CPU.
fn same_on_both_paths(name: &str, fast: &dyn Classifier, generic: &dyn Classifier, x: &Tensor) {
    let xg = x.to_device(generic.device()).unwrap();
    let on = device::describe(generic.device());
    let lf = to_vec(&fast.forward(x, ReluMode::Plain).unwrap());
    let lg = to_vec(&generic.forward(&xg, ReluMode::Plain).unwrap());
    let scale = lf.iter().fold(1f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&lf, &lg) / scale;
    assert!(
        d < 1e-4,
        "{name} on {on}: logits differ by {d} of the largest"
    );
    let target = argmax(&lf);
    assert_eq!(argmax(&lg), target, "{name} on {on}: top class");
    for mode in [ReluMode::Guided, ReluMode::Plain] {
        let gf = logit_gradient(fast, x, target, mode);
        let gg = logit_gradient(generic, &xg, target, mode);
        let c = cosine(&gf, &gg);
        let peak = gf.iter().fold(0f32, |m, v| m.max(v.abs()));
        let rel = max_abs_diff(&gf, &gg) / peak.max(f32::MIN_POSITIVE);
        eprintln!(
            "{name} {mode:?} on {on}: logits {d:.1e}, gradient cosine {c:.7}, max diff {rel:.1e}"
        );
        assert!(c > 0.999, "{name} {mode:?} on {on}: gradient cosine {c}");
        assert!(
            peak > 0.0,
            "{name} {mode:?}: a zero gradient proves nothing"
        );
    }
}

#[test]
fn efficientnet_lite0_generic_path_matches_the_cpu_kernels() {
    let f = fixture("efficientnet_lite0.safetensors");
    let (dev, backend) = generic_side();
    let fast = crate::common::lite0();
    let generic = models::load(DEFAULT_MODEL, &dev, backend).unwrap();
    same_on_both_paths(
        "efficientnet-lite0",
        fast.as_ref(),
        generic.as_ref(),
        &f["input"],
    );
}

#[test]
fn resnet_generic_path_matches_the_cpu_kernels() {
    let f = fixture("torchvision/resnet50.safetensors");
    let (dev, backend) = generic_side();
    for name in ["resnet18", "resnet50"] {
        let fast = crate::torchvision::load(name, Backend::Fast);
        let generic = crate::torchvision::load_on(name, backend, &dev);
        same_on_both_paths(name, fast.as_ref(), generic.as_ref(), &f["input"]);
    }
}

#[test]
fn densenet_generic_path_matches_the_cpu_kernels() {
    let f = fixture("torchvision/densenet121.safetensors");
    let (dev, backend) = generic_side();
    let fast = crate::torchvision::load("densenet121", Backend::Fast);
    let generic = crate::torchvision::load_on("densenet121", backend, &dev);
    same_on_both_paths("densenet121", fast.as_ref(), generic.as_ref(), &f["input"]);
}

#[test]
fn xrv_densenet_generic_path_matches_the_cpu_kernels() {
    let f = fixture("xray/expected.safetensors");
    let (dev, backend) = generic_side();
    let x = f["xrv/input"].repeat((1, 3, 1, 1)).unwrap();
    let path = crate::xray::path("xrv_densenet.pt");
    let fast: Arc<dyn Classifier> =
        crate::xray::described_with(path.clone(), Backend::Fast, &Device::Cpu);
    let generic = crate::xray::described_with(path, backend, &dev);
    same_on_both_paths("xrv-densenet121", fast.as_ref(), generic.as_ref(), &x);
}

/// Needs the fetched chest X-ray model (a GPU machine without network skips this one).
#[test]
fn xception_generic_path_matches_the_cpu_kernels() {
    let f = fixture("pneumonia_xception.safetensors");
    let (dev, backend) = generic_side();
    let x = f["inputs"].narrow(0, 0, 1).unwrap();
    let fast = crate::xception::model();
    let generic = crate::xception::load_with(backend, &dev);
    same_on_both_paths("pneumonia-xception", fast.as_ref(), generic.as_ref(), &x);
}
