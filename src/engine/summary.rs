//! `summary.json`: the machine-readable record of a run, one typed struct that the CLI and the
//! app write and that batch mode reads back (so the two can never disagree on a field).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::faithfulness::{Curves, Unveiling};
use crate::engine::models::ModelInfo;
use crate::engine::outcome::{Outcome, Probe, StopReason, Timings};
use crate::engine::params::UnveilParams;
use crate::engine::predict::Prediction;
use crate::engine::readout::{Readout, readout};
use crate::engine::saliency::Completeness;
use crate::engine::source_image::Window;
use crate::error::{Error, Result};

/// What a run's summary records besides its outcome.
pub struct RunInfo<'a> {
    pub image: &'a str,
    /// Exactly which file and how it was seen.
    pub record: ImageRecord,
    pub device: &'a str,
    pub params: &'a UnveilParams,
    pub model: &'a ModelInfo,
    pub total_ms: f64,
}

/// Which image a run explained, exactly: a result can be traced back to its file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The file's full path (absent for the built-in sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_path: Option<String>,
    /// SHA-256 of the file's bytes, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// Grayscale images: the window the model saw and the one on screen (the same on the
    /// command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowRecord>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub model_input: Window,
    pub display: Window,
}

impl ImageRecord {
    /// The record of `path` (full path and hash; the hash is left out when the file cannot be
    /// read again) seen through `model_input` and displayed through `display`.
    pub fn of(path: Option<&Path>, model_input: Option<Window>, display: Option<Window>) -> Self {
        use sha2::Digest;
        let image_path = path.map(|p| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        });
        let image_sha256 = path.and_then(|p| std::fs::read(p).ok()).map(|bytes| {
            sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        });
        ImageRecord {
            image_path,
            image_sha256,
            window: model_input.map(|m| WindowRecord {
                model_input: m,
                display: display.unwrap_or(m),
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub unveil_version: String,
    pub image: String,
    #[serde(flatten)]
    pub record: ImageRecord,
    pub device: String,
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
    pub after: Option<Probe>,
}

impl Summary {
    pub fn new(outcome: &Outcome, run: &RunInfo) -> Self {
        Summary {
            unveil_version: env!("CARGO_PKG_VERSION").to_string(),
            image: run.image.to_string(),
            record: run.record.clone(),
            device: run.device.to_string(),
            model: ModelSummary {
                name: run.model.name.clone(),
                description: run.model.description.clone(),
                input_size: [run.model.input_size.0, run.model.input_size.1],
            },
            params: run.params.clone(),
            target: outcome.target,
            target_label: run.model.label(outcome.target),
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
            readout: Some(readout(outcome, run.model, run.params.stop.threshold)),
            total_ms: run.total_ms,
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
