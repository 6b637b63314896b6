//! The device-generic path (what CUDA and Metal run, `Backend::Generic`) against the fast CPU
//! kernels on every architecture: logits within 1e-4 of the largest, the same top class, and
//! guided and vanilla input gradients with cosine > 0.999.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use unveil::engine::models::{Arch, Classifier, Lite0};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;

use crate::common::{cosine, fixture, logit_gradient, max_abs_diff, to_vec};

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

/// The comparison itself; `x` is one input `[1, c, h, w]`.
fn same_on_both_paths(name: &str, fast: &dyn Classifier, generic: &dyn Classifier, x: &Tensor) {
    let lf = to_vec(&fast.forward(x, ReluMode::Plain).unwrap());
    let lg = to_vec(&generic.forward(x, ReluMode::Plain).unwrap());
    let scale = lf.iter().fold(1f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&lf, &lg) / scale;
    assert!(d < 1e-4, "{name}: logits differ by {d} of the largest");
    let target = argmax(&lf);
    assert_eq!(argmax(&lg), target, "{name}: top class");
    for mode in [ReluMode::Guided, ReluMode::Plain] {
        let gf = logit_gradient(fast, x, target, mode);
        let gg = logit_gradient(generic, x, target, mode);
        let c = cosine(&gf, &gg);
        let peak = gf.iter().fold(0f32, |m, v| m.max(v.abs()));
        let rel = max_abs_diff(&gf, &gg) / peak.max(f32::MIN_POSITIVE);
        eprintln!("{name} {mode:?}: logits {d:.1e}, gradient cosine {c:.7}, max diff {rel:.1e}");
        assert!(c > 0.999, "{name} {mode:?}: gradient cosine {c}");
        assert!(
            peak > 0.0,
            "{name} {mode:?}: a zero gradient proves nothing"
        );
    }
}

#[test]
fn efficientnet_lite0_generic_path_matches_the_cpu_kernels() {
    let f = fixture("efficientnet_lite0.safetensors");
    let fast = crate::common::lite0();
    let generic = Lite0::bundled(&Device::Cpu, Backend::Generic).unwrap();
    same_on_both_paths("efficientnet-lite0", fast.as_ref(), &generic, &f["input"]);
}

#[test]
fn resnet_generic_path_matches_the_cpu_kernels() {
    let f = fixture("torchvision/resnet50.safetensors");
    for (name, arch) in [("resnet18", Arch::Resnet18), ("resnet50", Arch::Resnet50)] {
        let fast = crate::torchvision::load(name, arch, Backend::Fast);
        let generic = crate::torchvision::load(name, arch, Backend::Generic);
        same_on_both_paths(name, fast.as_ref(), generic.as_ref(), &f["input"]);
    }
}

#[test]
fn densenet_generic_path_matches_the_cpu_kernels() {
    let f = fixture("torchvision/densenet121.safetensors");
    let fast = crate::torchvision::load("densenet121", Arch::Densenet121, Backend::Fast);
    let generic = crate::torchvision::load("densenet121", Arch::Densenet121, Backend::Generic);
    same_on_both_paths("densenet121", fast.as_ref(), generic.as_ref(), &f["input"]);
}

#[test]
fn xrv_densenet_generic_path_matches_the_cpu_kernels() {
    let f = fixture("xray/expected.safetensors");
    let x = f["xrv/input"].repeat((1, 3, 1, 1)).unwrap();
    let path = crate::xray::path("xrv_densenet.pt");
    let fast: Arc<dyn Classifier> = crate::xray::described_with(path.clone(), Backend::Fast);
    let generic = crate::xray::described_with(path, Backend::Generic);
    same_on_both_paths("xrv-densenet121", fast.as_ref(), generic.as_ref(), &x);
}

#[test]
fn xception_generic_path_matches_the_cpu_kernels() {
    let f = fixture("pneumonia_xception.safetensors");
    let x = f["inputs"].narrow(0, 0, 1).unwrap();
    let fast = crate::xception::model();
    let generic = crate::xception::load_with(Backend::Generic);
    same_on_both_paths("pneumonia-xception", fast.as_ref(), generic.as_ref(), &x);
}
