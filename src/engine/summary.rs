//! `summary.json`: the machine-readable record of a run, one typed struct made from a
//! [`RunRecord`] that the CLI and the app write and that batch mode reads back (so they can
//! never disagree on a field).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::faithfulness::{Curves, Unveiling};
use crate::engine::outcome::{Classification, StopReason, Timings};
use crate::engine::params::{Method, UnveilParams};
use crate::engine::predict::Prediction;
use crate::engine::readout::{Readout, readout};
use crate::engine::run::{ImageRecord, RunRecord};
use crate::engine::saliency::Completeness;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub unveil_version: String,
    pub image: String,
    #[serde(flatten)]
    pub record: ImageRecord,
    pub device: String,
    /// Why the run moved from the GPU to the CPU, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fell_back: Option<String>,
    pub model: ModelSummary,
    pub params: UnveilParams,
    pub target: usize,
    pub target_label: String,
    pub iterations: Vec<IterationSummary>,
    pub stop: StopSummary,
    /// The unveiled union against a region of the same area from iteration 0's map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unveiling: Option<Unveiling>,
    /// The run in plain words, and what a reader should not miss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readout: Option<Readout>,
    pub total_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub description: String,
    /// Height and width.
    pub input_size: [usize; 2],
    /// What unveil assumed because the model file does not say (an ONNX graph's input size,
    /// normalisation, labels, resampling).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assumed: Vec<String>,
    /// The layer Grad-CAM read (runs with Grad-CAM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_cam_layer: Option<String>,
    /// What guided backpropagation meant for this model (runs with guided backpropagation on
    /// a model with non-ReLU nonlinearities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IterationSummary {
    pub index: usize,
    pub top5: Vec<Prediction>,
    pub p_target: f32,
    pub mask_coverage: f32,
    pub cumulative_coverage: f32,
    pub gradient_cached: bool,
    pub timings: Timings,
    /// Integrated gradients' completeness check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completeness: Option<Completeness>,
    /// Deletion and insertion AUCs and curves (33 points each).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<Curves>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopSummary {
    pub reason: StopReason,
    /// The model's view with every mask applied (absent when the last mask added nothing).
    pub after: Option<Classification>,
}

impl Summary {
    pub fn new(run: &RunRecord) -> Self {
        let (outcome, p) = (&run.outcome, &run.provenance);
        Summary {
            unveil_version: env!("CARGO_PKG_VERSION").to_string(),
            image: p.image.clone(),
            record: p.record.clone(),
            device: p.device.clone(),
            fell_back: p.fell_back.clone(),
            model: ModelSummary {
                name: p.model.name.clone(),
                description: p.model.description.clone(),
                input_size: [p.model.input_size.0, p.model.input_size.1],
                assumed: p.model.assumed.clone(),
                grad_cam_layer: (p.params.saliency.method == Method::GradCam)
                    .then(|| p.model.cam_layers.first().cloned())
                    .flatten(),
                guided: (p.params.saliency.method == Method::Guided)
                    .then(|| p.model.guided_note.clone())
                    .flatten(),
            },
            params: p.params.clone(),
            target: outcome.target,
            target_label: p.model.label(outcome.target),
            iterations: outcome
                .steps
                .iter()
                .map(|s| IterationSummary {
                    index: s.index,
                    top5: s.top5.clone(),
                    p_target: s.p_target,
                    mask_coverage: s.mask.coverage(),
                    cumulative_coverage: s.cumulative.coverage(),
                    gradient_cached: s.cached,
                    timings: s.timings.clone(),
                    completeness: s.completeness,
                    faithfulness: s.faithfulness.clone(),
                })
                .collect(),
            stop: StopSummary {
                reason: outcome.stop,
                after: outcome.after.clone(),
            },
            unveiling: outcome.unveiling,
            readout: Some(readout(outcome, &p.model, p.params.stop.threshold)),
            total_ms: p.total_ms,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a summary always serialises")
    }

    /// Reads a `summary.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let fail = |reason: String| Error::Summary {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))
    }
}
