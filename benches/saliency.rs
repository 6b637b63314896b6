//! Benchmarks (a plain bench binary: `cargo bench --bench saliency [-- --json PATH]`):
//! end-to-end loop on the bundled model (5 iterations x 25 samples) with the process's peak
//! memory; guided-backprop SmoothGrad per sample for EfficientNet-Lite0 and ResNet-50 at
//! 224 x 224 and the chest X-ray Xception at 150 x 150 (seeded weights; our ops, and stock
//! candle ops for comparison); one 25-sample ResNet-50 map; mask smoothing per pass at
//! 512 / 1024 / 2048 px for k = 3, 11, 51, 101. `--device cuda` runs the models on the GPU,
//! `--backend generic` runs the GPU's path on the CPU. `scripts/bench/bench.sh` runs the PyTorch
//! reference beside it and prints the ratios; `scripts/bench/gpu_check.sh` does so on a GPU.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde_json::json;
use unveil::engine::device::{self, DeviceChoice};
use unveil::engine::explainer::Explainer;
use unveil::engine::image;
use unveil::engine::maps::Mask;
use unveil::engine::mask::smooth;
use unveil::engine::models::layers::Weights;
use unveil::engine::models::{self, Classifier, DEFAULT_MODEL, ModelDescription, PNEUMONIA_MODEL};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;
use unveil::engine::params::{Method, SaliencyParams, StopParams, UnveilParams};
use unveil::engine::predict::{classify, top_k};
use unveil::engine::saliency::input_gradient;

/// A file of the repository: the checkout this was built in, or `$UNVEIL_REPO` (a bench binary
/// built here and run on another machine, as `scripts/bench/gpu_check.sh` does).
fn repo(path: &str) -> std::path::PathBuf {
    std::env::var_os("UNVEIL_REPO")
        .map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        )
        .join(path)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// How the benchmark's ResNet-50 gets its (seeded, untrained) weights. The fused convolution
/// skips dead channels, so unlike PyTorch's, our time depends on the weights' statistics.
#[derive(Clone, Copy)]
enum ResNetInit {
    /// torchvision's initialisation, as `scripts/bench/bench_pytorch.py` uses: convolutions Kaiming
    /// normal (fan out), BatchNorm the identity. Every channel is live: our worst case.
    Torchvision,
    /// Random BatchNorm statistics (shift up to +-1 per channel): about 40 % of the channels
    /// never fire, closer to what a trained network's guided gradients give.
    RandomBn,
}

/// Names and shapes of ResNet-50's tensors (from the torchvision fixtures).
fn resnet50_keys() -> Vec<(String, Vec<usize>)> {
    let j: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo("tests/fixtures/torchvision/fixtures.json")).unwrap(),
    )
    .unwrap();
    j["models"]["resnet50"]["weights"]["keys_sorted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let (name, dims) = entry.as_str().unwrap().split_once(" [").unwrap();
            let shape = dims
                .trim_end_matches(']')
                .split(", ")
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            (name.to_string(), shape)
        })
        .collect()
}

/// Names and shapes of the chest X-ray Xception's tensors (benches/xception-shapes.txt).
fn xception_keys() -> Vec<(String, Vec<usize>)> {
    include_str!("xception-shapes.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().unwrap().to_string();
            (name, parts.map(|d| d.parse().unwrap()).collect())
        })
        .collect()
}

/// Names and shapes of torchvision's DenseNet-121 with CheXNet's 14 outputs.
fn densenet121_keys() -> Vec<(String, Vec<usize>)> {
    let mut keys = Vec::new();
    let bn = |keys: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for t in ["weight", "bias", "running_mean", "running_var"] {
            keys.push((format!("{p}.{t}"), vec![c]));
        }
    };
    keys.push(("features.conv0.weight".into(), vec![64, 3, 7, 7]));
    bn(&mut keys, "features.norm0", 64);
    let mut c = 64;
    for (b, n) in [6, 12, 24, 16].into_iter().enumerate() {
        for l in 0..n {
            let p = format!("features.denseblock{}.denselayer{}", b + 1, l + 1);
            let cin = c + l * 32;
            bn(&mut keys, &format!("{p}.norm1"), cin);
            keys.push((format!("{p}.conv1.weight"), vec![128, cin, 1, 1]));
            bn(&mut keys, &format!("{p}.norm2"), 128);
            keys.push((format!("{p}.conv2.weight"), vec![32, 128, 3, 3]));
        }
        c += n * 32;
        if b < 3 {
            let p = format!("features.transition{}", b + 1);
            bn(&mut keys, &format!("{p}.norm"), c);
            keys.push((format!("{p}.conv.weight"), vec![c / 2, c, 1, 1]));
            c /= 2;
        }
    }
    bn(&mut keys, "features.norm5", c);
    keys.push(("classifier.weight".into(), vec![14, c]));
    keys.push(("classifier.bias".into(), vec![14]));
    keys
}

/// Seeded weights for `keys` (timing does not depend on trained values, except through dead
/// channels: see [`ResNetInit`]).
fn seeded(keys: Vec<(String, Vec<usize>)>, init: ResNetInit) -> HashMap<String, Tensor> {
    let mut tensors = HashMap::new();
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    };
    for (name, shape) in keys {
        let n: usize = shape.iter().product();
        let fan_in = shape[1..].iter().product::<usize>();
        let conv = shape.len() == 4;
        let bn_scale = shape.len() == 1 && (name.ends_with("weight") || name.ends_with("var"));
        let v: Vec<f32> = (0..n)
            .map(|_| match init {
                ResNetInit::Torchvision if conv => {
                    // Kaiming normal, fan out (Box-Muller).
                    let std = (2.0 / (shape[0] * shape[2] * shape[3]) as f32).sqrt();
                    let (u1, u2) = (uniform(), uniform());
                    std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                }
                ResNetInit::Torchvision if bn_scale => 1.0,
                ResNetInit::Torchvision if shape.len() == 1 && !name.starts_with("fc") => 0.0,
                ResNetInit::RandomBn if bn_scale => 0.5 + uniform(),
                _ => (2.0 * uniform() - 1.0) / (fan_in.max(1) as f32).sqrt(),
            })
            .collect();
        tensors.insert(
            name,
            Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap(),
        );
    }
    tensors
}

/// ResNet-50 with arbitrary (seeded) weights.
fn resnet50(backend: Backend, init: ResNetInit, device: &Device) -> Arc<dyn Classifier> {
    seeded_arch("resnet50", resnet50_keys(), init, backend, device)
}

/// An architecture of the registry with seeded weights for `keys`, loaded as a user's
/// checkpoint is.
fn seeded_arch(
    arch: &str,
    keys: Vec<(String, Vec<usize>)>,
    init: ResNetInit,
    backend: Backend,
    device: &Device,
) -> Arc<dyn Classifier> {
    let path = std::env::temp_dir().join(format!(
        "unveil-bench-{arch}-{}.safetensors",
        std::process::id()
    ));
    candle_core::safetensors::save(&seeded(keys, init), &path).unwrap();
    let m = models::load_custom(
        &ModelDescription::ad_hoc(path.clone(), Some(arch.parse().unwrap()), None, false),
        device,
        backend,
    )
    .unwrap();
    let _ = std::fs::remove_file(&path);
    m
}

/// The chest X-ray Xception (150 x 150) with seeded weights: its architecture, not its
/// (non-redistributable) training.
fn xception(backend: Backend, device: &Device) -> Arc<dyn Classifier> {
    let w = Weights::new(seeded(xception_keys(), ResNetInit::Torchvision));
    models::from_weights(PNEUMONIA_MODEL, &w, device, backend).unwrap()
}

/// CheXNet's shape (DenseNet-121, 14 outputs) with seeded weights, as
/// `scripts/bench/bench_pytorch.py`'s densenet121 row.
fn densenet121(backend: Backend, device: &Device) -> Arc<dyn Classifier> {
    seeded_arch(
        "densenet121",
        densenet121_keys(),
        ResNetInit::Torchvision,
        backend,
        device,
    )
}

fn ms_per_sample(model: &dyn Classifier, x: &Tensor, samples: usize) -> f64 {
    ms_per_sample_with(model, x, samples, Method::default())
}

fn ms_per_sample_with(model: &dyn Classifier, x: &Tensor, samples: usize, method: Method) -> f64 {
    let never = AtomicBool::new(false);
    let target = top_k(model, &classify(model, x).unwrap(), 1)[0].class;
    let chunk = std::env::args()
        .skip_while(|a| a != "--chunk")
        .nth(1)
        .map(|c| c.parse().unwrap());
    let p = SaliencyParams {
        method,
        samples,
        chunk,
        ..Default::default()
    };
    let (_, h, w) = x.dims3().unwrap();
    let chunk = p.batch(x.device(), (h, w)).min(samples);
    // Warm-up: one full chunk, as the PyTorch script does.
    input_gradient(
        model,
        x,
        target,
        &SaliencyParams {
            samples: chunk,
            ..p.clone()
        },
        &mut |_, _| {},
        &never,
    )
    .unwrap();
    let t = Instant::now();
    input_gradient(model, x, target, &p, &mut |_, _| {}, &never).unwrap();
    t.elapsed().as_secs_f64() * 1e3 / samples as f64
}

fn main() {
    // As the app and the CLI do.
    unveil::engine::memory::tune_allocator();
    let json_out = std::env::args().skip_while(|a| a != "--json").nth(1);
    // `--only a,b` runs only the named sections: e2e, efficientnet-lite0, resnet50,
    // resnet50-random-bn, xception, densenet121, onnx-resnet50, onnx-lite0, onnx-vit_b_16,
    // onnx-convnext_tiny, smoothgrad25, stock, mask.
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let wanted = |section: &str| {
        only.as_ref()
            .is_none_or(|o| o.split(',').any(|s| s == section))
    };
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    // `--device cuda` runs the models on the GPU (the device-generic path); `--backend generic`
    // runs that path on the CPU.
    let choice = arg("--device").map_or(DeviceChoice::Cpu, |d| d.parse().unwrap());
    let device = device::open(choice).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let backend = match arg("--backend").as_deref() {
        None | Some("fast") => Backend::Fast,
        Some("generic") => Backend::Generic,
        Some(b) => panic!("unknown backend {b} (fast, generic)"),
    };
    let on = device::describe(&device);
    println!("device {on}, backend {backend:?}\n");
    let img = image::load(&repo("assets/chelsea.png")).unwrap();
    let never = AtomicBool::new(false);

    // End to end first, so the peak memory is this run's.
    let lite = models::load(DEFAULT_MODEL, &device, backend).unwrap();
    let mut e2e_json = serde_json::Value::Null;
    if wanted("e2e") {
        let params = UnveilParams {
            saliency: SaliencyParams {
                samples: 25,
                ..Default::default()
            },
            stop: StopParams {
                threshold: 0.0,
                max_iter: 5,
            },
            ..Default::default()
        };
        let t = Instant::now();
        let x = image::to_model_input(&img, lite.info(), &device).unwrap();
        let out = Explainer::new(lite.clone())
            .explain_input(&x, &params, &mut |_| {}, &never)
            .unwrap();
        let e2e_s = t.elapsed().as_secs_f64();
        let peak = peak_rss_mib();
        println!(
            "end to end (EfficientNet-Lite0, {} iterations x 25 samples): {e2e_s:.2} s, peak memory {peak:.0} MiB\n",
            out.steps.len()
        );
        e2e_json = json!({ "seconds": e2e_s, "iterations": out.steps.len(), "samples": 25, "peak_rss_mib": peak });
    }

    println!("| model | ops | ms per sample (fwd + guided bwd) |\n|---|---|---|");
    let mut models_json = serde_json::Map::new();
    type Load<'a> = Box<dyn Fn(Backend) -> Arc<dyn Classifier> + 'a>;
    let dev = &device;
    let sections: [(&str, Load, bool); 5] = [
        (
            "efficientnet-lite0",
            Box::new(|b| models::load(DEFAULT_MODEL, dev, b).unwrap()),
            true,
        ),
        (
            "resnet50",
            Box::new(|b| resnet50(b, ResNetInit::Torchvision, dev)),
            false,
        ),
        (
            "resnet50-random-bn",
            Box::new(|b| resnet50(b, ResNetInit::RandomBn, dev)),
            false,
        ),
        ("xception", Box::new(|b| xception(b, dev)), false),
        ("densenet121", Box::new(|b| densenet121(b, dev)), false),
    ];
    for (name, load, with_stock) in sections {
        if !wanted(name) {
            continue;
        }
        let model = load(backend);
        let stock = (with_stock && wanted("stock")).then(|| load(Backend::Stock));
        let x = image::to_model_input(&img, model.info(), &device).unwrap();
        let ms = ms_per_sample(model.as_ref(), &x, 32);
        println!("| {name} | unveil | {ms:.2} |");
        let mut entry = json!({ "ms_per_sample": ms, "samples_per_s": 1e3 / ms });
        if let Some(stock) = stock {
            let ms_stock = ms_per_sample(stock.as_ref(), &x, 2);
            println!("| {name} | stock candle | {ms_stock:.0} |");
            entry["stock_candle_ms_per_sample"] = json!(ms_stock);
        }
        models_json.insert(name.to_string(), entry);
    }

    // ONNX graphs (written by scripts/bench/export_bench_onnx.py into target/bench-onnx/),
    // loaded as a user loads them. ResNet-50 and Lite0 run beside their native twins (the same
    // weights, input tensor, method and chunks) for a same-run ratio, guided; ViT-B/16 and
    // ConvNeXt-Tiny have no ReLU, so vanilla, against PyTorch's rows of bench_pytorch.py.
    let onnx_dir = repo("target/bench-onnx");
    type Native<'a> = Option<Box<dyn Fn() -> Arc<dyn Classifier> + 'a>>;
    let onnx_sections: [(&str, &str, Method, Native); 4] = [
        (
            "onnx-resnet50",
            "resnet50.onnx",
            Method::Guided,
            Some(Box::new(|| resnet50(backend, ResNetInit::Torchvision, dev))),
        ),
        (
            "onnx-lite0",
            "efficientnet-lite0.onnx",
            Method::Guided,
            Some(Box::new(|| {
                models::load(DEFAULT_MODEL, dev, backend).unwrap()
            })),
        ),
        ("onnx-vit_b_16", "vit_b_16.onnx", Method::Vanilla, None),
        (
            "onnx-convnext_tiny",
            "convnext_tiny.onnx",
            Method::Vanilla,
            None,
        ),
    ];
    for (name, file, method, native) in onnx_sections {
        if !wanted(name) {
            continue;
        }
        let path = onnx_dir.join(file);
        if !path.is_file() {
            println!(
                "| {name} | skipped: no {} (run scripts/bench/export_bench_onnx.py) | |",
                path.display()
            );
            continue;
        }
        let t = Instant::now();
        let model = models::load(path.to_str().unwrap(), dev, backend).unwrap();
        let load_s = t.elapsed().as_secs_f64();
        let native = native.map(|load| load());
        // The native model's preprocessing where there is one: both see the same tensor.
        let info = native.as_ref().map_or(model.info(), |n| n.info());
        let x = image::to_model_input(&img, info, dev).unwrap();
        let ms = ms_per_sample_with(model.as_ref(), &x, 32, method);
        println!("| {name} | unveil, ONNX graph, {method:?} | {ms:.2} |");
        let mut entry = json!({
            "ms_per_sample": ms, "samples_per_s": 1e3 / ms,
            "method": format!("{method:?}"), "load_s": load_s,
        });
        if let Some(native) = native {
            let logits = |m: &dyn Classifier| m.forward(&x.unsqueeze(0).unwrap(), ReluMode::Plain);
            let (a, b) = (
                logits(model.as_ref()).unwrap(),
                logits(native.as_ref()).unwrap(),
            );
            let max = |t: Tensor| t.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>();
            let diff = max((&a - &b).unwrap().abs().unwrap()).unwrap();
            let scale = max(b.abs().unwrap()).unwrap();
            let ms_native = ms_per_sample_with(native.as_ref(), &x, 32, method);
            println!("| {name} | unveil, native, {method:?} | {ms_native:.2} |");
            println!(
                "|   | ONNX / native {:.2}x; logits max abs diff {diff:.2e} (largest {scale:.2e}) | |",
                ms / ms_native
            );
            entry["native_ms_per_sample"] = json!(ms_native);
            entry["onnx_over_native"] = json!(ms / ms_native);
            entry["max_abs_logit_diff"] = json!(diff);
        }
        models_json.insert(name.to_string(), entry);
    }

    // One whole 25-sample guided SmoothGrad map of ResNet-50, the noise made and the map read
    // back included: the median of 5.
    let mut smoothgrad_json = serde_json::Value::Null;
    if wanted("smoothgrad25") {
        let model = resnet50(backend, ResNetInit::Torchvision, &device);
        let x = image::to_model_input(&img, model.info(), &device).unwrap();
        let target = top_k(model.as_ref(), &classify(model.as_ref(), &x).unwrap(), 1)[0].class;
        let p = SaliencyParams {
            samples: 25,
            ..Default::default()
        };
        let run = || {
            let t = Instant::now();
            input_gradient(model.as_ref(), &x, target, &p, &mut |_, _| {}, &never).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        };
        run();
        let mut times: Vec<f64> = (0..5).map(|_| run()).collect();
        times.sort_by(f64::total_cmp);
        println!(
            "\nResNet-50, one 25-sample guided SmoothGrad map: {:.1} ms (median of 5; {:.1} - {:.1})",
            times[2], times[0], times[4]
        );
        smoothgrad_json = json!({ "median_ms": times[2], "min_ms": times[0], "max_ms": times[4] });
    }

    if wanted("mask") {
        println!(
            "\n| mask side | k = 3 | k = 11 | k = 51 | k = 101 | (ms per pass) |\n|---|---|---|---|---|---|"
        );
    }
    let mut mask_json = Vec::new();
    for side in [512usize, 1024, 2048]
        .into_iter()
        .filter(|_| wanted("mask"))
    {
        let mut state = 88172645463325252u64;
        let data = (0..side * side)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.is_multiple_of(20)
            })
            .collect();
        let m = Mask {
            width: side,
            height: side,
            data,
        };
        let mut row = format!("| {side} |");
        for k in [3, 11, 51, 101] {
            let reps = if side >= 2048 { 3 } else { 10 };
            smooth(&m, k, 1, 0.25);
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(smooth(&m, k, 1, 0.25));
            }
            let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
            row.push_str(&format!(" {ms:.1} |"));
            mask_json.push(json!({ "side": side, "k": k, "ms_per_pass": ms }));
        }
        println!("{row} |");
    }
    if let Some(path) = json_out {
        let doc = json!({
            "device": on,
            "backend": format!("{backend:?}"),
            "end_to_end": e2e_json,
            "smoothgrad25_resnet50": smoothgrad_json,
            "models": models_json,
            "mask": mask_json,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("\nwrote {path}");
    }
}
