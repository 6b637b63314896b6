//! A run as one engine concept: a [`RunRequest`] (an image, where it came from, how the model
//! sees it, the settings) goes in; a record with its outcome and its provenance (which file,
//! which window, which model on which device, how long, whether the GPU gave up) comes out.
//!
//! Front ends never assemble a record: the CLI's run, batch, check and eval and the app's run,
//! check and export all go through [`Explainer::run`], [`Explainer::check`] and
//! [`Explainer::evaluate`], and write what they return with [`crate::engine::export`]. So a
//! field added to the provenance reaches every `summary.json` at once.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::engine::device;
use crate::engine::explainer::Explainer;
use crate::engine::models::ModelInfo;
use crate::engine::outcome::{Event, Outcome};
use crate::engine::params::UnveilParams;
use crate::engine::sanity::{Check, CheckEvent};
use crate::engine::source_image::{SourceImage, Window};
use crate::error::Result;

/// What to explain.
#[derive(Clone, Copy, Debug)]
pub struct RunRequest<'a> {
    pub image: &'a SourceImage,
    /// The file the image was read from (absent for a built-in sample): recorded with its
    /// full path and SHA-256.
    pub path: Option<&'a Path>,
    /// The image's name for people: the path as given, or the sample's name.
    pub name: &'a str,
    /// The window the model sees (grayscale images only; `None`: the file's own).
    pub window: Option<Window>,
    /// The window on screen, recorded beside the model's (`None`: the same).
    pub display_window: Option<Window>,
    pub params: &'a UnveilParams,
}

impl<'a> RunRequest<'a> {
    /// A file seen through its own window (the command line's case), named by its path.
    pub fn file(
        image: &'a SourceImage,
        path: &'a Path,
        name: &'a str,
        params: &'a UnveilParams,
    ) -> Self {
        RunRequest {
            image,
            path: Some(path),
            name,
            window: None,
            display_window: None,
            params,
        }
    }

    /// The same request with the model seeing the image through `window`.
    pub fn with_window(self, window: Option<Window>) -> Self {
        RunRequest { window, ..self }
    }
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

/// Where a result came from, exactly.
#[derive(Clone, Debug)]
pub struct Provenance {
    /// The image's name for people.
    pub image: String,
    /// Which file, seen how.
    pub record: ImageRecord,
    pub model: ModelInfo,
    /// Where it ran ("cpu", "cuda:0"): the CPU when a GPU failed on the way.
    pub device: String,
    pub params: UnveilParams,
    pub total_ms: f64,
    /// Why the work moved from the GPU to the CPU, when it did.
    pub fell_back: Option<String>,
}

/// A finished run and where it came from: what `summary.json` and the run folder are made of.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub outcome: Outcome,
    pub provenance: Provenance,
}

/// A finished sanity check and where it came from: `check.json` and `check.png`.
#[derive(Clone, Debug)]
pub struct CheckRecord {
    pub check: Check,
    pub provenance: Provenance,
}

impl Explainer {
    /// Explains the request's image: the whole iterative loop, reported through `on_event` as
    /// it goes (steps survive a later failure or a cancel).
    pub fn run(
        &self,
        req: &RunRequest,
        on_event: &mut dyn FnMut(Event),
        cancel: &AtomicBool,
    ) -> Result<RunRecord> {
        let start = Instant::now();
        req.params.validate()?;
        // Made on the host: were the GPU to fail, the CPU rerun must not read from it.
        let x = self.input_on(req.image, req.window, &Device::Cpu)?;
        let outcome = self.explain_input(&x, req.params, on_event, cancel)?;
        Ok(RunRecord {
            outcome,
            provenance: self.provenance(req, start),
        })
    }

    /// The sanity checks (model randomisation, class sensitivity) of the request's image with
    /// its method and settings (see [`crate::engine::sanity`]).
    pub fn check(
        &self,
        req: &RunRequest,
        on_event: &mut dyn FnMut(CheckEvent),
        cancel: &AtomicBool,
    ) -> Result<CheckRecord> {
        let start = Instant::now();
        req.params.validate()?;
        let x = self.input_on(req.image, req.window, &Device::Cpu)?;
        let check = self.check_input(&x, req.params, on_event, cancel)?;
        Ok(CheckRecord {
            check,
            provenance: self.provenance(req, start),
        })
    }

    /// The provenance of work on `req` that started at `start`. Hashing the file happens
    /// here, on the worker's thread.
    pub(crate) fn provenance(&self, req: &RunRequest, start: Instant) -> Provenance {
        let window = req.image.window_or_default(req.window);
        Provenance {
            image: req.name.to_string(),
            record: ImageRecord::of(req.path, window, req.display_window.or(window)),
            model: self.info().clone(),
            device: device::describe(self.device()),
            params: req.params.clone(),
            total_ms: start.elapsed().as_secs_f64() * 1e3,
            fell_back: self.fell_back().map(str::to_string),
        }
    }
}
