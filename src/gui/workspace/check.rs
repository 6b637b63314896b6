//! The check slot: the latest sanity check, what it was computed for, and the check in flight.
//!
//! A check shown stays on screen when the image or the settings change, marked as out of date
//! ([`CheckedFor`] says for what it holds); a new model clears it. `version` changes whenever
//! the check shown changes.

use std::sync::Arc;

use crate::engine::explainer::Explainer;
use crate::engine::params::{FillMode, SaliencyParams, UnveilParams};
use crate::engine::sanity::{Check, CheckProgress};
use crate::engine::source_image::Window;
use crate::error::Error;
use crate::gui::worker::{CheckMsg, Subject, Worker};
use crate::gui::workspace::event::Event;

/// A finished sanity check and what it was computed for.
pub struct CheckView {
    pub check: Box<Check>,
    for_what: CheckedFor,
}

/// What a sanity check depends on: the model, the image and the window the model saw, and the
/// saliency settings, fill and class (not the mask or stop settings).
#[derive(Clone, PartialEq)]
pub struct CheckedFor {
    model: u64,
    image: u64,
    window: Option<Window>,
    saliency: SaliencyParams,
    fill: FillMode,
    target: Option<usize>,
}

impl CheckedFor {
    /// `model` and `image` are the versions that tell models and images apart.
    pub fn new(
        model: u64,
        image: u64,
        window: Option<Window>,
        params: &UnveilParams,
        target: Option<usize>,
    ) -> Self {
        CheckedFor {
            model,
            image,
            window,
            saliency: params.saliency.clone(),
            fill: params.fill,
            target,
        }
    }
}

#[derive(Default)]
pub struct CheckSlot {
    shown: Option<CheckView>,
    progress: Option<CheckProgress>,
    worker: Worker<CheckMsg>,
    /// The check whose messages count (the worker's job number) and what it is for.
    live: Option<(u64, CheckedFor)>,
    version: u64,
}

impl CheckSlot {
    /// Starts checking iteration 0's map of `image` with `params` (a check in flight stops).
    pub fn start(
        &mut self,
        ctx: &egui::Context,
        explainer: Arc<Explainer>,
        subject: Subject,
        params: &UnveilParams,
        for_what: CheckedFor,
    ) {
        self.progress = None;
        self.worker
            .start_check(ctx, explainer, subject, params.clone());
        self.live = Some((self.worker.started(), for_what));
    }

    /// Stops the check in flight; the one shown stays.
    pub fn cancel(&mut self) {
        self.worker.cancel();
        self.live = None;
        self.progress = None;
    }

    /// Stops the check in flight and forgets the one shown (another model).
    pub fn clear(&mut self) {
        self.cancel();
        self.shown = None;
        self.version += 1;
    }

    /// The check's messages since the last frame, each with its check's number.
    pub fn poll(&mut self) -> Vec<Event> {
        let job = self.worker.started();
        self.worker
            .poll()
            .into_iter()
            .map(|m| Event::Check(job, m))
            .collect()
    }

    /// Takes in a message of check `job`; a failure comes back in words.
    pub fn absorb(&mut self, job: u64, msg: CheckMsg) -> Option<String> {
        if self.live.as_ref().is_none_or(|(j, _)| *j != job) {
            return None;
        }
        match msg {
            CheckMsg::Progress(p) => self.progress = Some(p),
            CheckMsg::Done(result) => {
                self.progress = None;
                let (_, for_what) = self.live.take()?;
                match result {
                    Ok(check) => {
                        self.shown = Some(CheckView { check, for_what });
                        self.version += 1;
                    }
                    Err(Error::Cancelled) => {}
                    Err(e) => return Some(format!("Sanity check failed: {e}")),
                }
            }
        }
        None
    }

    /// The latest finished check.
    pub fn result(&self) -> Option<&CheckView> {
        self.shown.as_ref()
    }

    /// True when the check shown was computed for `now`.
    pub fn is_current(&self, now: &CheckedFor) -> bool {
        self.shown.as_ref().is_some_and(|c| c.for_what == *now)
    }

    pub fn progress(&self) -> Option<CheckProgress> {
        self.progress
    }

    pub fn is_running(&self) -> bool {
        self.worker.is_running()
    }

    pub fn live_threads(&self) -> usize {
        self.worker.live_threads()
    }

    /// Changes whenever the check shown changes.
    pub fn version(&self) -> u64 {
        self.version
    }
}
