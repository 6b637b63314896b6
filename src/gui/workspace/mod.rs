//! What the app is working on, in slots: the model, the image, the run (with its pinned run and
//! chosen class), the sanity check and a model being fetched. Each slot owns its state and the
//! background work producing it, bumps its own version whenever what it shows changes (views
//! key their caches by it), and reports what finished in the background from its `poll` as
//! [`Event`] values, which the app applies like actions ([`crate::gui::app::App`]). Panels read
//! the slots; only the app changes them.

pub mod check;
pub mod event;
pub mod fetch;
pub mod image;
pub mod loaded;
pub mod model;
pub mod run;

use std::sync::Arc;

use crate::engine::explainer::Explainer;
use crate::engine::params::UnveilParams;
use crate::error::Result;
use crate::gui::worker::Subject;
use crate::install::Installer;

pub use check::{CheckSlot, CheckedFor};
pub use event::Event;
pub use fetch::FetchSlot;
pub use image::{ImageSlot, SAMPLES};
pub use loaded::Loaded;
pub use model::ModelSlot;
pub use run::{Pinned, RunSlot, StepState};

#[derive(Default)]
pub struct Workspace {
    pub model: ModelSlot,
    pub image: ImageSlot,
    pub run: RunSlot,
    pub check: CheckSlot,
    pub fetch: FetchSlot,
}

impl Workspace {
    /// An empty workspace whose fetches install with `installer`.
    pub fn new(installer: Installer) -> Self {
        Workspace {
            fetch: FetchSlot::new(installer),
            ..Default::default()
        }
    }

    /// What finished in every slot since the last frame, in the order the app applies it.
    pub fn poll(&mut self) -> Vec<Event> {
        let mut events = self.model.poll();
        events.extend(self.image.poll());
        events.extend(self.run.poll());
        events.extend(self.check.poll());
        events.extend(self.fetch.poll());
        events
    }

    /// Starts the requested run if the model and an image are there (the latest settings win).
    pub fn start_requested_run(
        &mut self,
        ctx: &egui::Context,
        params: &UnveilParams,
    ) -> Result<()> {
        let subject = self.subject();
        self.run
            .start_if_requested(ctx, self.model.explainer(), subject, params)
    }

    /// Redraws iteration 0 under new mask parameters at once (no gradient work).
    pub fn remask_first(&mut self, params: &UnveilParams) -> Result<()> {
        match self.model.explainer() {
            Some(explainer) => self.run.remask_first(explainer, params),
            None => Ok(()),
        }
    }

    /// Starts the sanity check of iteration 0's map with `params` (a check in flight stops).
    /// A check that cannot start says why, in words.
    pub fn start_check(
        &mut self,
        ctx: &egui::Context,
        params: &UnveilParams,
    ) -> std::result::Result<(), String> {
        let (Some(explainer), Some(subject)) = (self.model.explainer(), self.subject()) else {
            return Err("Nothing to check yet: wait for the model and the image.".into());
        };
        params.validate().map_err(|e| e.to_string())?;
        let explainer: Arc<Explainer> = explainer.clone();
        let for_what = self.checked_for(params);
        self.check.start(ctx, explainer, subject, params, for_what);
        Ok(())
    }

    /// What a run or check would look at now: the open image under the model's window.
    fn subject(&self) -> Option<Subject> {
        let img = self.image.loaded()?;
        Some(Subject {
            image: img.source.clone(),
            path: img.path.clone(),
            name: img
                .path
                .as_ref()
                .map_or(img.name.clone(), |p| p.display().to_string()),
            window: self.image.model_window(),
        })
    }

    /// What a check computed now with `params` and the chosen class would be for.
    pub fn checked_for(&self, params: &UnveilParams) -> CheckedFor {
        CheckedFor::new(
            self.model.version(),
            self.image.opened(),
            self.image.model_window(),
            params,
            self.run.target(),
        )
    }

    /// True when the check shown was computed for this model, image, window and `params`.
    pub fn check_is_current(&self, params: &UnveilParams) -> bool {
        self.check.is_current(&self.checked_for(params))
    }

    /// The class being explained: the finished run's, else the chosen one, else the top-1 of
    /// the results on screen.
    pub fn target(&self) -> Option<usize> {
        self.run
            .outcome()
            .map(|o| o.target)
            .or(self.run.target())
            .or_else(|| self.run.steps().first().map(|s| s.step.top5[0].class))
    }

    /// Busy with anything in the background (a run, a check, a fetch, or loading a model or an
    /// image).
    pub fn is_busy(&self) -> bool {
        self.run.is_busy()
            || self.check.is_running()
            || self.fetch.is_running()
            || self.is_loading()
    }

    /// Loading a model or decoding an image: promises, which do not wake the app by themselves.
    pub fn is_loading(&self) -> bool {
        self.model.is_loading() || self.image.is_loading()
    }

    pub fn live_worker_threads(&self) -> usize {
        self.run.live_threads() + self.check.live_threads() + self.fetch.live_threads()
    }
}
