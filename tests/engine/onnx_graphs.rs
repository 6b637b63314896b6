//! ONNX graphs that are wrong or beyond unveil, built here field by field: each is refused
//! with one line naming what (every unsupported op type with its nodes, a custom domain, a
//! cycle, a dangling name), before anything runs; and what users run from the command line:
//! `--model FILE.onnx`, `--cam-layer`, fixed-batch graphs.

use std::path::PathBuf;
use std::process::Command;

use candle_core::{Device, Tensor};
use unveil::engine::models::{self, Classifier};
use unveil::engine::ops::Backend;
use unveil::engine::ops::activation::ReluMode;

use crate::common::{max_abs_diff, repo, to_vec};

use crate::onnx_malformed::{int_field as int, len_field as bytes, model_with};

/// A float tensor value `[1, 3, h, w]` (`h`, `w` symbolic).
fn value(name: &str) -> Vec<u8> {
    let dim = |d: Option<u64>| match d {
        Some(v) => bytes(1, &int(1, v)),
        None => bytes(1, &bytes(2, b"n")),
    };
    let shape = [dim(Some(1)), dim(Some(3)), dim(None), dim(None)].concat();
    let tensor_type = [int(1, 1), bytes(2, &shape)].concat();
    [bytes(1, name.as_bytes()), bytes(2, &bytes(1, &tensor_type))].concat()
}

/// `(op_type, name, inputs, outputs, domain)`.
type Node<'a> = (&'a str, &'a str, &'a [&'a str], &'a [&'a str], &'a str);

fn node((op, name, inputs, outputs, domain): Node) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        n.extend(bytes(1, i.as_bytes()));
    }
    for o in outputs {
        n.extend(bytes(2, o.as_bytes()));
    }
    n.extend(bytes(3, name.as_bytes()));
    n.extend(bytes(4, op.as_bytes()));
    if !domain.is_empty() {
        n.extend(bytes(7, domain.as_bytes()));
    }
    n
}

/// A model of `nodes` reading `inputs` and giving `output`, written to a temporary file.
fn graph(file: &str, nodes: &[Node], inputs: &[&str], output: &str) -> PathBuf {
    let mut g = Vec::new();
    for n in nodes {
        g.extend(bytes(1, &node(*n)));
    }
    g.extend(bytes(2, b"test"));
    for i in inputs {
        g.extend(bytes(11, &value(i)));
    }
    g.extend(bytes(12, &value(output)));
    let model = model_with(&g);
    let dir = std::env::temp_dir().join(format!("unveil-onnx-graphs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, model).unwrap();
    path
}

fn refusal(path: &std::path::Path) -> String {
    let started = std::time::Instant::now();
    let e = models::load(path.to_str().unwrap(), &Device::Cpu, Backend::Fast)
        .expect_err("refused")
        .to_string();
    assert!(started.elapsed().as_secs_f64() < 1.0, "{e}: slow");
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn unsupported_and_custom_ops_are_named_with_their_nodes_before_anything_runs() {
    let g = graph(
        "unsupported.onnx",
        &[
            ("Relu", "r", &["x"], &["a"], ""),
            ("Foo", "f1", &["a"], &["b"], ""),
            ("Bar", "b1", &["b"], &["c"], ""),
            ("Foo", "f2", &["c"], &["y"], ""),
        ],
        &["x"],
        "y",
    );
    let e = refusal(&g);
    assert!(
        e.contains("does not support: Bar (b1); Foo (f1, f2)"),
        "{e}"
    );
    let g = graph(
        "custom.onnx",
        &[("FusedConv", "fc", &["x"], &["y"], "com.microsoft")],
        &["x"],
        "y",
    );
    let e = refusal(&g);
    assert!(
        e.contains("custom-domain")
            && e.contains("FusedConv (domain com.microsoft)")
            && e.contains("fc"),
        "{e}"
    );
}

#[test]
fn cycles_dangling_names_and_extra_inputs_are_one_line_each() {
    let cycle = graph(
        "cycle.onnx",
        &[
            ("Relu", "a", &["x", "q"], &["p"], ""),
            ("Relu", "b", &["p"], &["q"], ""),
            ("Relu", "c", &["q"], &["y"], ""),
        ],
        &["x"],
        "y",
    );
    assert!(refusal(&cycle).contains("cycle"));
    let dangling = graph(
        "dangling.onnx",
        &[("Add", "add", &["x", "nowhere"], &["y"], "")],
        &["x"],
        "y",
    );
    let e = refusal(&dangling);
    assert!(e.contains("'add' reads 'nowhere'"), "{e}");
    let two = graph(
        "two-inputs.onnx",
        &[("Add", "add", &["x", "z"], &["y"], "")],
        &["x", "z"],
        "y",
    );
    assert!(refusal(&two).contains("2 inputs"));
    let no_output = graph(
        "no-output.onnx",
        &[
            ("Relu", "r", &["x"], &[], ""),
            ("Relu", "s", &["x"], &["y"], ""),
        ],
        &["x"],
        "y",
    );
    assert!(refusal(&no_output).contains("without an output"));
    let empty_concat = graph(
        "empty-concat.onnx",
        &[("Concat", "c", &[], &["y"], "")],
        &["x"],
        "y",
    );
    assert!(refusal(&empty_concat).contains("Concat"));
    let not_a_classifier = graph(
        "image-out.onnx",
        &[("Relu", "r", &["x"], &["y"], "")],
        &["x"],
        "y",
    );
    assert!(refusal(&not_a_classifier).contains("[n, classes]"));
}

#[test]
fn a_graph_with_a_batch_of_one_runs_batches_one_image_at_a_time() {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo("tests/fixtures/onnx/fixtures.json")).unwrap())
            .unwrap();
    // Every fixed-batch export (the dynamo exporter's default, and one TorchScript one).
    let mut seen = 0;
    for m in j["models"].as_object().unwrap().values() {
        for x in m["exports"].as_object().unwrap().values() {
            if x["dynamic_batch"].as_bool() != Some(false) {
                continue;
            }
            let path = repo(&format!(
                "tests/fixtures/onnx/{}",
                x["file"].as_str().unwrap()
            ));
            let model = models::load(path.to_str().unwrap(), &Device::Cpu, Backend::Fast).unwrap();
            let (h, w) = model.info().input_size;
            let batch = Tensor::randn(0f32, 1.0, (3, 3, h, w), &Device::Cpu).unwrap();
            let together = to_vec(&model.forward(&batch, ReluMode::Plain).unwrap());
            let alone: Vec<f32> = (0..3)
                .flat_map(|i| {
                    let x = batch.narrow(0, i, 1).unwrap();
                    to_vec(&model.forward(&x, ReluMode::Plain).unwrap())
                })
                .collect();
            assert!(max_abs_diff(&together, &alone) < 1e-5);
            seen += 1;
        }
    }
    assert!(seen >= 1, "no fixed-batch export among the fixtures");
}

fn unveil(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unveil"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn onnx_models_run_from_the_command_line_and_say_what_was_assumed() {
    let model = repo("tests/fixtures/onnx/resnet50.onnx");
    let out = std::env::temp_dir().join(format!("unveil-onnx-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = unveil(&[
        "run",
        repo("assets/chelsea.png").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--method",
        "grad-cam",
        "--max-iter",
        "1",
        "--no-faithfulness",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let assumed: Vec<&str> = s["model"]["assumed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        assumed,
        [
            "224 x 224",
            "ImageNet labels",
            "ImageNet mean/std",
            "bilinear"
        ]
    );
    assert_eq!(
        s["model"]["grad_cam_layer"],
        "/layer4/layer4.0/relu_2/Relu_output_0"
    );
    // A layer that is not one is refused with the candidates.
    let o = unveil(&[
        "run",
        repo("assets/chelsea.png").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--cam-layer",
        "no-such-layer",
        "--out",
        out.join("x").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("candidates: /layer4"),
        "{err}"
    );
    // A native model has no layer to choose.
    let o = unveil(&[
        "run",
        repo("assets/chelsea.png").to_str().unwrap(),
        "--cam-layer",
        "x",
        "--out",
        out.join("y").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("uses its own"), "{err}");
}

#[test]
fn the_sanity_checks_cascade_reaches_back_through_a_graphs_weights() {
    use unveil::engine::device::DeviceChoice;
    use unveil::engine::explainer::Explainer;
    use unveil::engine::models::ModelSource;
    use unveil::engine::models::reinit::Cascade;

    let path = repo("tests/fixtures/onnx/resnet50.onnx");
    let source = ModelSource::Named(path.to_str().unwrap().into());
    let e = Explainer::load(&source, DeviceChoice::Cpu).unwrap();
    let scope = |c| e.model().reinit_scope(c).unwrap();
    let (head, stage, quarter) = (
        scope(Cascade::Head),
        scope(Cascade::LastStage),
        scope(Cascade::LastQuarter),
    );
    // The head is the Gemm (weight and bias); the last stage is layer4 (from the node
    // names); the last quarter reaches further back; each includes the one before.
    assert_eq!(head.len(), 2, "{head:?}");
    assert!(head.is_subset(&stage) && stage.is_subset(&quarter));
    assert!(stage.len() > head.len() && quarter.len() >= stage.len());
    let x = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &Device::Cpu).unwrap();
    let logits = |m: &dyn Classifier| to_vec(&m.forward(&x, ReluMode::Plain).unwrap());
    let trained = logits(e.model().as_ref());
    for c in Cascade::ALL {
        let r = e.randomised(c, 0).unwrap();
        assert!(max_abs_diff(&logits(r.as_ref()), &trained) > 1e-3, "{c:?}");
    }
}

#[test]
fn a_description_names_an_onnx_file_and_sets_what_it_cannot_carry() {
    let dir = std::env::temp_dir().join(format!("unveil-onnx-desc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo("tests/fixtures/onnx/mobilenet_v2.onnx"),
        dir.join("m.onnx"),
    )
    .unwrap();
    let labels: Vec<String> = (0..10).map(|i| format!("finding {i}")).collect();
    let json = serde_json::json!({
        "name": "my-mobilenet",
        "weights": "m.onnx",
        "input_size": [128, 160],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "resize": "nearest",
        "labels": labels,
    });
    let path = dir.join("m.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let m = models::load(path.to_str().unwrap(), &Device::Cpu, Backend::Fast).unwrap();
    let info = m.info();
    assert_eq!(info.input_size, (128, 160));
    assert_eq!((info.mean, info.std), ([0.5; 3], [0.25; 3]));
    assert_eq!(info.label(3), "finding 3");
    assert!(info.assumed.is_empty(), "{:?}", info.assumed);
    // Without a description: the graph is dynamic, so 224 x 224 is assumed, and 10 outputs
    // have no label list to assume.
    let bare = models::load(
        dir.join("m.onnx").to_str().unwrap(),
        &Device::Cpu,
        Backend::Fast,
    )
    .unwrap();
    assert_eq!(
        bare.info().assumed,
        ["224 x 224", "ImageNet mean/std", "bilinear"]
    );
    assert_eq!(bare.info().label(3), "class 3");
    // What the app's Change… writes is a description that loads to the same model.
    let spelled = models::ModelDescription::spelled_out(&dir.join("m.onnx"), bare.info());
    let again = dir.join("again.json");
    let _ = std::fs::remove_file(&again);
    spelled.write_new(&again).unwrap();
    assert!(spelled.write_new(&again).is_err(), "never overwrites");
    let m2 = models::load(again.to_str().unwrap(), &Device::Cpu, Backend::Fast).unwrap();
    assert!(m2.info().assumed.is_empty());
    assert_eq!(m2.info().input_size, (224, 224));
}

/// What README says of candle's own layers, measured: candle-nn's fused LayerNorm and
/// softmax have no backward (the gradient silently stops), and candle's max pool has none
/// when its window and stride differ (ResNet's 3 x 3 / 2). If a candle release adds them,
/// these fail and README must change.
#[test]
fn candles_fused_layers_still_cut_the_gradient() {
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 8), &Device::Cpu).unwrap())
        .unwrap();
    let w = Tensor::ones(8, candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(8, candle_core::DType::F32, &Device::Cpu).unwrap();
    let reaches =
        |y: candle_core::Result<Tensor>| match y.and_then(|y| y.sqr()?.sum_all()?.backward()) {
            Ok(g) => g.get(x.as_tensor()).is_some(),
            Err(_) => false,
        };
    assert!(!reaches(candle_nn::ops::layer_norm(
        x.as_tensor(),
        &w,
        &b,
        1e-5
    )));
    assert!(!reaches(candle_nn::ops::softmax_last_dim(x.as_tensor())));
    let img = candle_core::Var::from_tensor(
        &Tensor::randn(0f32, 1.0, (1, 1, 8, 8), &Device::Cpu).unwrap(),
    )
    .unwrap();
    let pooled = img.as_tensor().max_pool2d_with_stride(3, 2).unwrap();
    assert!(pooled.sum_all().unwrap().backward().is_err());
}
