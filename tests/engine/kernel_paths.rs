//! The CPU kernels' code paths (portable, AVX2 + FMA, AVX-512) compute the same models: on
//! every architecture family, logits and input gradients on every path this CPU has agree
//! with the portable path's in one process up to float rounding, and differ from it by some
//! rounding (else the switch would not reach the kernels). `UNVEIL_KERNELS` is followed, and a bad value is one clear line from the binary.
//!
//! `scripts/ci/kernel_paths.sh` runs these and the PyTorch equality tests again with
//! `UNVEIL_KERNELS=portable`.

use std::process::Command;

use candle_core::Tensor;
use unveil::engine::models::Classifier;
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;
use unveil::engine::ops::kernel_path::{self, KernelPath};

use crate::common::{cosine, fixture, logit_gradient, max_abs_diff, to_vec};

#[test]
fn the_process_path_follows_unveil_kernels() {
    let want = match std::env::var(kernel_path::ENV_VAR) {
        Ok(v) => kernel_path::parse(&v).unwrap(),
        Err(_) => KernelPath::best(),
    };
    assert_eq!(kernel_path::from_env().unwrap(), want);
    assert_eq!(kernel_path::current(), want);
}

/// Logits and the guided and vanilla gradients of the top class on `path`.
fn outputs(path: KernelPath, m: &dyn Classifier, x: &Tensor) -> (Vec<f32>, Vec<Vec<f32>>) {
    kernel_path::with_path(path, || {
        let logits = to_vec(&m.forward(x, ReluMode::Plain).unwrap());
        let target = logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0;
        let grads = [ReluMode::Guided, ReluMode::Plain]
            .map(|mode| logit_gradient(m, x, target, mode))
            .to_vec();
        (logits, grads)
    })
    .unwrap()
}

fn same_on_every_path(name: &str, m: &dyn Classifier, x: &Tensor) {
    let (lp, gp) = outputs(KernelPath::Portable, m, x);
    for path in [KernelPath::Avx2, KernelPath::Avx512] {
        if !path.is_available() {
            let e = kernel_path::with_path(path, || ()).unwrap_err();
            assert!(e.to_string().contains("cannot run here"), "{e}");
            continue;
        }
        let (la, ga) = outputs(path, m, x);
        let scale = la.iter().fold(1f32, |s, v| s.max(v.abs()));
        let d = max_abs_diff(&lp, &la) / scale;
        let mut rounding = d > 0.0;
        for (mode, (gp, ga)) in ["guided", "vanilla"].iter().zip(gp.iter().zip(&ga)) {
            let c = cosine(gp, ga);
            let peak = ga.iter().fold(0f32, |s, v| s.max(v.abs()));
            let rel = max_abs_diff(gp, ga) / peak;
            eprintln!(
                "{name} {path} {mode}: logits {d:.1e}, gradient cosine {c:.9}, max diff {rel:.1e}"
            );
            assert!(peak > 0.0, "{name} {mode}: a zero gradient proves nothing");
            assert!(
                c > 0.99999,
                "{name} {path} {mode}: gradient cosine {c} against the portable path"
            );
            rounding |= rel > 0.0;
        }
        assert!(
            d < 1e-5,
            "{name} {path}: logits differ by {d} of the largest"
        );
        // On x86-64 the portable path multiplies and adds separately, the others fuse them:
        // identical bits everywhere would mean both runs took the same path.
        assert!(
            rounding,
            "{name} {path}: bit-identical to the portable path: the switch did not take"
        );
    }
}

/// Depthwise and 1 x 1 convolutions, ReLU6, stride-2 3 x 3 convolutions (224 x 224).
#[test]
fn efficientnet_lite0_is_the_same_on_every_kernel_path() {
    let f = fixture("efficientnet_lite0.safetensors");
    same_on_every_path(
        "efficientnet-lite0",
        crate::common::lite0().as_ref(),
        &f["input"],
    );
}

/// Winograd 3 x 3, the fused layer chain with residual adds, max pooling (64 x 64).
#[test]
fn resnet_is_the_same_on_every_kernel_path() {
    let f = fixture("torchvision/resnet18.safetensors");
    let m = crate::torchvision::load("resnet18", Backend::Fast);
    same_on_every_path("resnet18", m.as_ref(), &f["input"]);
}

/// Dense blocks: 1 x 1 convolutions over growing concatenations, then Winograd (64 x 64).
#[test]
fn densenet_is_the_same_on_every_kernel_path() {
    let f = fixture("torchvision/densenet121.safetensors");
    let m = crate::torchvision::load("densenet121", Backend::Fast);
    same_on_every_path("densenet121", m.as_ref(), &f["input"]);
}

/// Separable convolutions at 299 x 299 (needs the fetched chest X-ray model).
#[test]
fn xception_is_the_same_on_every_kernel_path() {
    let f = fixture("pneumonia_xception.safetensors");
    let x = f["inputs"].narrow(0, 0, 1).unwrap();
    same_on_every_path("pneumonia-xception", crate::xception::model().as_ref(), &x);
}

fn unveil_with_kernels(value: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unveil"))
        .arg("models")
        .env(kernel_path::ENV_VAR, value)
        .output()
        .unwrap()
}

#[test]
fn the_binary_refuses_an_unknown_kernel_path_in_one_line() {
    let o = unveil_with_kernels("avx9");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "unveil: UNVEIL_KERNELS=\"avx9\" is not a kernel path: use auto, portable, avx2 or \
         avx512"
    );
    assert!(
        o.stdout.is_empty(),
        "nothing ran: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    for ok in ["portable", "auto", ""] {
        let o = unveil_with_kernels(ok);
        assert!(
            o.status.success(),
            "{ok:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for path in [KernelPath::Avx2, KernelPath::Avx512] {
        let o = unveil_with_kernels(path.name());
        assert_eq!(o.status.success(), path.is_available());
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains(&format!("the {path} kernels cannot run here")),
                "{err}"
            );
        }
    }
}
