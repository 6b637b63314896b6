//! ResNet-18/34/50/101 and DenseNet-121 against torchvision (scripts/make_torchvision_fixtures.py).
//!
//! The weights are not stored: both sides generate them from the same formula (FNV-1a of the
//! tensor name seeds SplitMix64), so only inputs, logits and gradients are fixtures. The Rust
//! side writes them to a safetensors file and loads it through a model description, exactly as
//! a user's checkpoint would be.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use unveil::engine::models::{self, Arch, Classifier, ModelDescription};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;

use crate::common::{cosine, fixture, max_abs_diff, repo, to_vec};

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// The generator of scripts/make_torchvision_fixtures.py.
fn generate(name: &str, shape: &[usize]) -> Vec<f32> {
    let seed = fnv1a64(name);
    let n: usize = shape.iter().product();
    let value = |u: f64| -> f64 {
        match shape.len() {
            _ if name == "input" => (2.0 * u - 1.0) * 2.0,
            4 => (2.0 * u - 1.0) * (3.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt(),
            2 => (2.0 * u - 1.0) * (3.0 / shape[1] as f64).sqrt(),
            _ if name.ends_with("running_var") => 0.5 + u,
            _ if name.ends_with("running_mean") => (2.0 * u - 1.0) * 0.1,
            _ if name.ends_with("weight") => 0.5 + u,
            _ => (2.0 * u - 1.0) * 0.1,
        }
    };
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            value((z >> 11) as f64 / (1u64 << 53) as f64) as f32
        })
        .collect()
}

fn json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo("tests/fixtures/torchvision/fixtures.json")).unwrap()).unwrap()
}

fn load(arch_name: &str, arch: Arch) -> std::sync::Arc<dyn Classifier> {
    let j = json();
    let mut tensors = HashMap::new();
    for entry in j["models"][arch_name]["weights"]["keys_sorted"].as_array().unwrap() {
        let (name, dims) = entry.as_str().unwrap().split_once(" [").unwrap();
        let shape: Vec<usize> = dims.trim_end_matches(']').split(", ").filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
        let t = Tensor::from_vec(generate(name, &shape), shape.as_slice(), &Device::Cpu).unwrap();
        tensors.insert(name.to_string(), t);
    }
    let dir = std::env::temp_dir().join(format!("unveil-tv-{}-{arch_name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{arch_name}.safetensors"));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let mut d = ModelDescription::ad_hoc(path, arch, None, arch == Arch::Densenet121);
    d.input_size = [64, 64];
    let m = models::load_custom(&d, &Device::Cpu, Backend::Fast).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    m
}

fn grad(m: &dyn Classifier, x: &Tensor, target: usize, mode: ReluMode) -> Vec<f32> {
    let v = Var::from_tensor(x).unwrap();
    let g = m.forward(v.as_tensor(), mode).unwrap().narrow(1, target, 1).unwrap().sum_all().unwrap().backward().unwrap();
    to_vec(g.get(v.as_tensor()).unwrap())
}

fn check(arch_name: &str, arch: Arch) -> (Vec<f32>, HashMap<String, Tensor>) {
    let f = fixture(&format!("torchvision/{arch_name}.safetensors"));
    assert_eq!(to_vec(&f["input"]), generate("input", &[1, 3, 64, 64]), "the generators agree");
    let m = load(arch_name, arch);
    let logits = m.forward(&f["input"], ReluMode::Plain).unwrap();
    let d = max_abs_diff(&to_vec(&logits), &to_vec(&f["logits"]));
    assert!(d < 1e-3, "{arch_name}: max abs logit difference {d}");
    let target = f["target"].to_vec1::<i64>().unwrap()[0] as usize;
    let guided = grad(m.as_ref(), &f["input"], target, ReluMode::Guided);
    let (cg, cv) = (
        cosine(&guided, &to_vec(&f["grad_guided"])),
        cosine(&grad(m.as_ref(), &f["input"], target, ReluMode::Plain), &to_vec(&f["grad_vanilla"])),
    );
    assert!(cg > 0.999 && cv > 0.999, "{arch_name}: cosine guided {cg}, vanilla {cv}");
    (guided, f)
}

#[test]
fn resnet18_matches_torchvision() {
    check("resnet18", Arch::Resnet18);
}

#[test]
fn resnet34_matches_torchvision() {
    check("resnet34", Arch::Resnet34);
}

#[test]
fn resnet50_matches_torchvision() {
    check("resnet50", Arch::Resnet50);
}

#[test]
fn resnet101_matches_torchvision() {
    check("resnet101", Arch::Resnet101);
}

#[test]
fn densenet121_guides_the_functional_relu_that_hooks_miss() {
    let (guided, f) = check("densenet121", Arch::Densenet121);
    // torchvision calls F.relu after norm5; module hooks do not see it. Ours is guided too,
    // so we are far closer to the fully guided reference than to the hooks-only one.
    let dist = |other: &[f32]| guided.iter().zip(other).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let (to_full, to_hooks) = (dist(&to_vec(&f["grad_guided"])), dist(&to_vec(&f["grad_guided_hooks_only"])));
    assert!(to_full < 0.1 * to_hooks, "distance to full guided {to_full}, to hooks-only {to_hooks}");
}
