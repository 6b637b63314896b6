//! ResNet-18/34/50/101 and DenseNet-121 against torchvision
//! (scripts/fixtures/make_torchvision_fixtures.py).
//!
//! The weights are not stored: both sides generate them from the same formula (FNV-1a of the
//! tensor name seeds SplitMix64), so only inputs, logits and gradients are fixtures. The Rust
//! side writes them to a safetensors file and loads it through a model description, exactly as
//! a user's checkpoint would be.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use unveil::engine::models::{self, Arch, Classifier, ModelDescription};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;

use crate::common::{cosine, fixture, logit_gradient, max_abs_diff, repo, to_vec};

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The generator of scripts/fixtures/make_torchvision_fixtures.py.
pub(crate) fn generate(name: &str, shape: &[usize]) -> Vec<f32> {
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
    serde_json::from_slice(
        &std::fs::read(repo("tests/fixtures/torchvision/fixtures.json")).unwrap(),
    )
    .unwrap()
}

/// Writes the generated weights of `arch_name` to `dir/{arch_name}.safetensors`.
pub(crate) fn write_generated(arch_name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let j = json();
    let mut tensors = HashMap::new();
    for entry in j["models"][arch_name]["weights"]["keys_sorted"]
        .as_array()
        .unwrap()
    {
        let (name, dims) = entry.as_str().unwrap().split_once(" [").unwrap();
        let shape: Vec<usize> = dims
            .trim_end_matches(']')
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let t = Tensor::from_vec(generate(name, &shape), shape.as_slice(), &Device::Cpu).unwrap();
        tensors.insert(name.to_string(), t);
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{arch_name}.safetensors"));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

/// A folder of its own for each call: tests run in parallel and several load one model.
pub(crate) fn scratch(name: &str) -> std::path::PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("unveil-tv-{}-{name}-{n}", std::process::id()))
}

/// The architecture called `name`.
pub(crate) fn arch(name: &str) -> Arch {
    name.parse().unwrap()
}

/// The generated checkpoint of the architecture `arch_name`, loaded as it.
pub(crate) fn load(arch_name: &str, backend: Backend) -> std::sync::Arc<dyn Classifier> {
    load_on(arch_name, backend, &Device::Cpu)
}

pub(crate) fn load_on(
    arch_name: &str,
    backend: Backend,
    device: &Device,
) -> std::sync::Arc<dyn Classifier> {
    let dir = scratch(arch_name);
    let mut d = ModelDescription::ad_hoc(
        write_generated(arch_name, &dir),
        Some(arch(arch_name)),
        None,
        arch_name == "densenet121",
    );
    d.input_size = Some([64, 64]);
    let m = models::load_custom(&d, device, backend).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    m
}

fn check(arch_name: &str) -> (Vec<f32>, HashMap<String, Tensor>) {
    check_with(arch_name, Backend::Fast)
}

fn check_with(arch_name: &str, backend: Backend) -> (Vec<f32>, HashMap<String, Tensor>) {
    let f = fixture(&format!("torchvision/{arch_name}.safetensors"));
    assert_eq!(
        to_vec(&f["input"]),
        generate("input", &[1, 3, 64, 64]),
        "the generators agree"
    );
    let m = load(arch_name, backend);
    let logits = m.forward(&f["input"], ReluMode::Plain).unwrap();
    let d = max_abs_diff(&to_vec(&logits), &to_vec(&f["logits"]));
    assert!(d < 1e-3, "{arch_name}: max abs logit difference {d}");
    let target = f["target"].to_vec1::<i64>().unwrap()[0] as usize;
    let guided = logit_gradient(m.as_ref(), &f["input"], target, ReluMode::Guided);
    let (cg, cv) = (
        cosine(&guided, &to_vec(&f["grad_guided"])),
        cosine(
            &logit_gradient(m.as_ref(), &f["input"], target, ReluMode::Plain),
            &to_vec(&f["grad_vanilla"]),
        ),
    );
    assert!(
        cg > 0.999 && cv > 0.999,
        "{arch_name}: cosine guided {cg}, vanilla {cv}"
    );
    (guided, f)
}

#[test]
fn resnet18_matches_torchvision() {
    check("resnet18");
}

/// The same network as separate stock candle ops (the path GPUs take): ResNet runs as one
/// layer chain on the CPU fast path, so this checks the other side of the shared structure.
#[test]
fn resnet18_on_stock_ops_matches_torchvision() {
    check_with("resnet18", Backend::Stock);
}

#[test]
fn resnet34_matches_torchvision() {
    check("resnet34");
}

#[test]
fn resnet50_matches_torchvision() {
    check("resnet50");
}

#[test]
fn resnet101_matches_torchvision() {
    check("resnet101");
}

#[test]
fn densenet121_guides_the_functional_relu_that_hooks_miss() {
    let (guided, f) = check("densenet121");
    // torchvision calls F.relu after norm5; module hooks do not see it. Ours is guided too,
    // so we are far closer to the fully guided reference than to the hooks-only one.
    let dist = |other: &[f32]| {
        guided
            .iter()
            .zip(other)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (to_full, to_hooks) = (
        dist(&to_vec(&f["grad_guided"])),
        dist(&to_vec(&f["grad_guided_hooks_only"])),
    );
    assert!(
        to_full < 0.1 * to_hooks,
        "distance to full guided {to_full}, to hooks-only {to_hooks}"
    );
}

#[test]
fn a_checkpoint_of_another_architecture_names_the_first_mismatch() {
    let dir = scratch("mismatch");
    let d = ModelDescription::ad_hoc(
        write_generated("resnet18", &dir),
        Some(arch("resnet50")),
        None,
        false,
    );
    let err = models::load_custom(&d, &Device::Cpu, Backend::Fast)
        .map(|_| ())
        .expect_err("wrong architecture")
        .to_string();
    // ResNet-50's first block needs a projection that ResNet-18 lacks: named in the error.
    assert!(
        err.contains("'layer1.0.downsample.0.weight' is missing"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_json_description_gives_labels_size_and_multi_label_sigmoid() {
    use unveil::engine::explainer::Explainer;
    use unveil::engine::outcome::StopReason;
    use unveil::engine::params::{MaskParams, SaliencyParams, StopParams, UnveilParams};
    use unveil::engine::predict::classify;
    let dir = scratch("description");
    write_generated("densenet121", &dir);
    let labels: Vec<String> = (0..14).map(|i| format!("finding {i}")).collect();
    let desc = serde_json::json!({
        "name": "toy-chexnet", "arch": "densenet121", "weights": "densenet121.safetensors",
        "input_size": [64, 64], "labels": labels, "multi_label": true
    });
    let path = dir.join("toy-chexnet.json");
    std::fs::write(&path, desc.to_string()).unwrap();
    let m = models::load(path.to_str().unwrap(), &Device::Cpu, Backend::Fast).unwrap();
    assert_eq!(
        (
            m.info().name.as_str(),
            m.info().input_size,
            m.info().label(3)
        ),
        ("toy-chexnet", (64, 64), "finding 3".to_string())
    );
    let f = fixture("torchvision/densenet121.safetensors");
    let x = f["input"].squeeze(0).unwrap();
    let p = classify(m.as_ref(), &x).unwrap();
    let logits = to_vec(&f["logits"]);
    for (p, l) in p.iter().zip(&logits) {
        assert!(
            (p - 1.0 / (1.0 + (-l).exp())).abs() < 1e-4,
            "sigmoid per label"
        );
    }
    // The stop threshold applies to the chosen label's own probability.
    let target = 5;
    let params = UnveilParams {
        saliency: SaliencyParams {
            samples: 1,
            noise: 0.0,
            ..Default::default()
        },
        // A 64 x 64 input: a smaller window and a larger seed keep the first mask non-empty.
        mask: MaskParams {
            kernel: 5,
            keep: 0.3,
            ..Default::default()
        },
        stop: StopParams {
            threshold: p[target] + 0.2,
            max_iter: 4,
        },
        target: Some(target),
        ..Default::default()
    };
    let out = Explainer::new(m.clone())
        .explain_input(
            &x,
            &params,
            &mut |_| {},
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(out.steps[0].p_target, p[target]);
    assert_eq!(out.stop, StopReason::BelowThreshold);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint whose classifier has no outputs used to load, then panic inside candle-nn's
/// softmax ("chunk_size must not be zero") on the first run: it is refused at load time.
#[test]
fn a_classifier_with_zero_outputs_is_refused_at_load_time() {
    let dir = scratch("zero-outputs");
    let path = write_generated("resnet18", &dir);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.insert(
        "fc.weight".into(),
        Tensor::zeros((0, 512), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "fc.bias".into(),
        Tensor::zeros(0, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let d = ModelDescription::ad_hoc(path, Some(arch("resnet18")), None, false);
    let err = models::load_custom(&d, &Device::Cpu, Backend::Fast)
        .map(|_| ())
        .expect_err("no class to explain")
        .to_string();
    assert!(err.contains("0 outputs"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// torchvision's published DenseNet checkpoints (and CheXNet's) use the legacy layer names
/// (`denselayer1.norm.1.weight`); DenseNet's loader renames them, and gives the same model.
#[test]
fn a_densenet_checkpoint_with_legacy_layer_names_loads_the_same_model() {
    let dir = scratch("legacy-names");
    let modern = write_generated("densenet121", &dir);
    let tensors = candle_core::safetensors::load(&modern, &Device::Cpu).unwrap();
    let legacy: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| {
            let mut k = k;
            for (new, old) in [
                (".norm1.", ".norm.1."),
                (".conv1.", ".conv.1."),
                (".norm2.", ".norm.2."),
                (".conv2.", ".conv.2."),
            ] {
                if k.contains("denselayer") {
                    k = k.replace(new, old);
                }
            }
            (k, t)
        })
        .collect();
    assert!(legacy.keys().any(|k| k.contains(".norm.1.")));
    let legacy_path = dir.join("legacy.safetensors");
    candle_core::safetensors::save(&legacy, &legacy_path).unwrap();
    let load = |p: std::path::PathBuf| {
        let mut d = ModelDescription::ad_hoc(p, Some(arch("densenet121")), None, true);
        d.input_size = Some([64, 64]);
        models::load_custom(&d, &Device::Cpu, Backend::Fast).unwrap()
    };
    let f = fixture("torchvision/densenet121.safetensors");
    let (a, b) = (load(modern), load(legacy_path));
    let la = a.forward(&f["input"], ReluMode::Plain).unwrap();
    let lb = b.forward(&f["input"], ReluMode::Plain).unwrap();
    assert_eq!(to_vec(&la), to_vec(&lb));
    let _ = std::fs::remove_dir_all(&dir);
}
