//! An ONNX file as a model: the graph lowered onto the engine's ops, and what ONNX does not
//! carry (preprocessing, labels) from the description, else assumed and said so.

use std::sync::Arc;

use candle_core::Device;

use super::lower::lower;
use super::net::{CamLayer, OnnxModel, cam_candidates};
use super::ops::Ctx;
use super::program::Head;
use super::proto::{Dim, ModelProto};
use crate::engine::models::classifier::{CamGrid, Classifier};
use crate::engine::models::description::{LabelsSpec, ModelDescription};
use crate::engine::models::info::{Crop, Domain, IMAGENET_LABELS, ModelInfo};
use crate::engine::models::layers::{LayerKind, WeightEdit, Weights};
use crate::engine::ops::Backend;
use crate::engine::ops::activation::ReluMode;
use crate::error::{Error, Result};

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Loads the ONNX model `d` describes, its weights changed by `edit` first.
pub(crate) fn load(
    d: &ModelDescription,
    device: &Device,
    backend: Backend,
    edit: WeightEdit,
) -> Result<Arc<dyn Classifier>> {
    let file = super::read_onnx(&d.weights)?;
    let model = &file.model;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version);
    let mut w = Weights::new(file.initializers.clone());
    edit(&mut w)?;
    let program = lower(&model.graph, opset, &w, device)?;

    let input = &model.graph.input[program_input_index(model, &w)?];
    let dims = input.shape.clone().unwrap_or_default();
    if !dims.is_empty() && dims.len() != 4 {
        return Err(Error::Weights(format!(
            "the graph's input '{}' has {} dimensions; an image classifier takes [n, 3, h, w]",
            input.name,
            dims.len()
        )));
    }
    let fixed = |i: usize| match dims.get(i) {
        Some(Dim::Value(v)) if *v > 0 => Some(*v as usize),
        _ => None,
    };
    if fixed(1).is_some_and(|c| c != 3) {
        return Err(Error::Weights(format!(
            "the graph takes {} input channels; unveil feeds RGB images (3)",
            fixed(1).unwrap_or(0)
        )));
    }
    let batch_one = fixed(0) == Some(1);
    let graph_size = fixed(2).zip(fixed(3));
    let mut assumed = Vec::new();
    let size = match (d.input_size, graph_size) {
        (Some([h, w]), Some(g)) if (h, w) != g => {
            return Err(Error::InvalidParam(format!(
                "the description says {h} x {w}, but the graph takes {} x {} inputs",
                g.0, g.1
            )));
        }
        (Some([h, w]), _) => (h, w),
        (None, Some(g)) => g,
        (None, None) => {
            assumed.push("224 x 224".to_string());
            (224, 224)
        }
    };
    let ctx = Ctx {
        mode: ReluMode::Plain,
        backend,
        device: device.clone(),
    };
    let shapes = program.shapes(size, &ctx)?;
    let classes = match shapes[program.output].as_deref() {
        Some([1, c]) if *c > 0 => *c,
        other => {
            return Err(Error::Weights(format!(
                "the graph's output has shape {other:?}; a classifier's is [n, classes]"
            )));
        }
    };

    let labels = labels(d, model, classes, &mut assumed)?;
    let (mean, std) = match (d.mean, d.std) {
        (Some(m), Some(s)) => (m, s),
        (m, s) => {
            if m.is_none() && s.is_none() {
                assumed.push("ImageNet mean/std".into());
            }
            (m.unwrap_or(IMAGENET_MEAN), s.unwrap_or(IMAGENET_STD))
        }
    };
    let resize = d.resize.unwrap_or_default();
    if d.resize.is_none() {
        assumed.push(format!("{resize:?}").to_lowercase());
    }

    let candidates = cam_candidates(&program, &shapes);
    let cam = match &d.cam_layer {
        Some(name) => Some(choose_cam(&program, &shapes, &candidates, name)?),
        None => candidates.first().cloned(),
    };
    let stage = last_stage(&program);
    let domain = if classes == 1000 {
        Domain::Photo
    } else {
        Domain::Other
    };
    let mut description = format!("ONNX graph from {}", d.weights.display());
    match program.head {
        Some(Head::Softmax) => description.push_str(
            "; its final Softmax is left out (unveil explains the logits before it and scores them with a softmax)",
        ),
        Some(Head::Sigmoid) => description.push_str(
            "; its final Sigmoid is left out (unveil explains the logits before it and scores each with a sigmoid)",
        ),
        None => {}
    }
    let info = ModelInfo {
        name: d.name.clone(),
        description,
        input_size: size,
        mean,
        std,
        dataset_mean: mean,
        labels,
        resize,
        multi_label: d.multi_label || classes == 1 || program.head == Some(Head::Sigmoid),
        bgr: d.channel_order == crate::engine::models::ChannelOrder::Bgr,
        crop: Crop::None,
        op_threshs: None,
        domain,
        assumed,
        cam_layers: cam_layers(&program, &candidates, cam.as_ref()),
        guided_note: program.guided_note(),
    };
    Ok(Arc::new(OnnxModel {
        program,
        info,
        device: device.clone(),
        backend,
        batch_one,
        cam,
        stage,
    }))
}

/// Grad-CAM's possible layers, the one it reads first.
fn cam_layers(
    p: &super::program::Program,
    candidates: &[CamLayer],
    chosen: Option<&CamLayer>,
) -> Vec<String> {
    let mut names: Vec<String> = chosen.iter().map(|c| p.names[c.slot].clone()).collect();
    for c in candidates {
        if !names.contains(&p.names[c.slot]) {
            names.push(p.names[c.slot].clone());
        }
    }
    names
}

/// The graph input that is not an initializer (older exporters list weights as inputs too).
fn program_input_index(model: &ModelProto, w: &Weights) -> Result<usize> {
    model
        .graph
        .input
        .iter()
        .position(|v| w.peek(&v.name).is_none())
        .ok_or_else(|| Error::Weights("the graph has no input".into()))
}

fn labels(
    d: &ModelDescription,
    model: &ModelProto,
    classes: usize,
    assumed: &mut Vec<String>,
) -> Result<Vec<String>> {
    let labels: Vec<String> = match &d.labels {
        Some(LabelsSpec::List(l)) => l.clone(),
        Some(LabelsSpec::File(f)) => std::fs::read_to_string(f)
            .map_err(|e| Error::io(f, e))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        None => match metadata_labels(model).filter(|l| l.len() == classes) {
            Some(l) => l,
            None if classes == 1000 => {
                assumed.push("ImageNet labels".into());
                IMAGENET_LABELS.lines().map(str::to_string).collect()
            }
            None => (0..classes).map(|i| format!("class {i}")).collect(),
        },
    };
    if labels.len() != classes {
        return Err(Error::InvalidParam(format!(
            "{} labels for a graph with {classes} outputs",
            labels.len()
        )));
    }
    Ok(labels)
}

/// Labels a graph's metadata carries (`labels` or `classes`: a JSON list, or one per line or
/// comma).
fn metadata_labels(model: &ModelProto) -> Option<Vec<String>> {
    let (_, v) = model
        .metadata_props
        .iter()
        .find(|(k, _)| matches!(k.as_str(), "labels" | "classes" | "class_names"))?;
    if let Ok(list) = serde_json::from_str::<Vec<String>>(v) {
        return Some(list);
    }
    let sep = if v.contains('\n') { '\n' } else { ',' };
    Some(v.split(sep).map(|s| s.trim().to_string()).collect())
}

/// Grad-CAM's layer named by the user: a candidate, or any 4-D activation.
fn choose_cam(
    p: &super::program::Program,
    shapes: &[Option<Vec<usize>>],
    candidates: &[CamLayer],
    name: &str,
) -> Result<CamLayer> {
    if let Some(c) = candidates.iter().find(|c| p.names[c.slot] == name) {
        return Ok(c.clone());
    }
    match p.names.iter().position(|n| n == name) {
        Some(slot) if matches!(shapes[slot].as_deref(), Some([_, _, _, _])) => Ok(CamLayer {
            slot,
            grid: CamGrid::Channels,
        }),
        _ => {
            let list: Vec<&str> = candidates
                .iter()
                .take(8)
                .map(|c| p.names[c.slot].as_str())
                .collect();
            Err(Error::InvalidParam(format!(
                "--cam-layer '{name}' is not a 4-D activation or token grid of the graph (candidates: {})",
                list.join(", ")
            )))
        }
    }
}

/// The last stage, from the weight-bearing nodes' names (exporters name nodes by module path,
/// `/layer4/layer4.2/conv1/Conv`): the shortest path prefix of the last non-head layer that
/// at least two and at most half of the layers share. The index of its first layer.
fn last_stage(p: &super::program::Program) -> Option<usize> {
    let weighted: Vec<&super::program::Step> =
        p.steps.iter().filter(|s| s.layer.is_some()).collect();
    let last = weighted.iter().rev().find(|s| {
        s.layer
            .as_ref()
            .is_some_and(|l| l.kind != LayerKind::Linear)
    })?;
    let parts: Vec<&str> = last.name.split('/').filter(|s| !s.is_empty()).collect();
    for len in 1..parts.len() {
        let prefix = format!("/{}/", parts[..len].join("/"));
        let members = weighted
            .iter()
            .filter(|s| s.name.starts_with(&prefix))
            .count();
        if members >= 2 && members * 2 <= weighted.len() {
            return weighted.iter().position(|s| s.name.starts_with(&prefix));
        }
    }
    None
}
