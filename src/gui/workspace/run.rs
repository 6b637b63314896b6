//! The run slot: the iterations on screen, the finished outcome, the run in flight, the class
//! being explained and a pinned run kept for comparison.
//!
//! What must hold: the latest run wins (starting one cancels the one before, and messages of
//! a run that is no longer the live one are dropped); `version` changes whenever the results
//! change (not with progress), and each step carries the version at which its pictures' inputs
//! last changed, which is what the view cache keys pictures by. The chosen class belongs to the
//! results: [`RunSlot::reset`] (new model or image) forgets both.

use std::sync::Arc;

use crate::engine::explainer::Explainer;
use crate::engine::outcome::{Outcome, Progress, Step};
use crate::engine::params::UnveilParams;
use crate::engine::run::RunRecord;
use crate::error::{Error, Result};
use crate::gui::worker::{Msg, Subject, Worker};
use crate::gui::workspace::event::Event;

/// One iteration on screen.
#[derive(Clone)]
pub struct StepState {
    pub step: Step,
    /// From an earlier run; replaced as the current run produces its own.
    pub stale: bool,
    /// The slot's version when this step last changed: keys its pictures.
    pub version: u64,
}

/// A finished run kept for comparison with the next ones (same image and model).
pub struct Pinned {
    pub steps: Vec<StepState>,
    pub outcome: Outcome,
    /// Its settings in a few words ("guided, kernel 11, 3 passes").
    pub label: String,
}

#[derive(Default)]
pub struct RunSlot {
    steps: Vec<StepState>,
    /// The finished run with its provenance: what the views show and an export writes.
    record: Option<RunRecord>,
    progress: Option<Progress>,
    pinned: Option<Pinned>,
    /// The class chosen for this image and model; `None`: the model's top-1.
    target: Option<usize>,
    worker: Worker<Msg>,
    /// The run whose messages count (the worker's job number), while it runs.
    live: Option<u64>,
    /// The results are out of date: a run starts once the model and an image are there.
    requested: bool,
    version: u64,
}

impl RunSlot {
    /// Forgets the results and the chosen class (a new model or image: class numbers and
    /// regions belong to them); the run in flight stops.
    pub fn reset(&mut self) {
        self.clear();
        self.target = None;
    }

    /// Forgets the results (the same model on another device); the run in flight stops.
    pub fn clear(&mut self) {
        self.stop();
        self.steps.clear();
        self.record = None;
        self.pinned = None;
        self.bump();
    }

    fn stop(&mut self) {
        self.worker.cancel();
        self.live = None;
        self.progress = None;
    }

    /// Marks the results out of date: a run starts once the model and an image are there.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Chooses the class to explain; true when it changed (the app reruns).
    pub fn set_target(&mut self, target: Option<usize>) -> bool {
        let changed = self.target != target;
        self.target = target;
        changed
    }

    /// Starts the requested run of `subject` with `params`, if one is requested and the model
    /// and the image are there; the run before is cancelled. Invalid parameters are the user's
    /// error: the request is dropped and the error returned.
    pub fn start_if_requested(
        &mut self,
        ctx: &egui::Context,
        explainer: Option<&Arc<Explainer>>,
        subject: Option<Subject>,
        params: &UnveilParams,
    ) -> Result<()> {
        let (true, Some(explainer), Some(subject)) = (self.requested, explainer, subject) else {
            return Ok(());
        };
        self.requested = false;
        params.validate()?;
        for s in &mut self.steps {
            s.stale = true;
        }
        self.record = None;
        self.progress = None;
        self.worker
            .start_run(ctx, explainer.clone(), subject, params.clone());
        self.live = Some(self.worker.started());
        self.bump();
        Ok(())
    }

    /// Stops the run; the iterations it finished stay. True when one was running.
    pub fn cancel(&mut self) -> bool {
        if !self.worker.is_running() {
            return false;
        }
        self.stop();
        self.steps.retain(|s| !s.stale);
        self.bump();
        true
    }

    /// The run's messages since the last frame, each with its run's number.
    pub fn poll(&mut self) -> Vec<Event> {
        let job = self.worker.started();
        self.worker
            .poll()
            .into_iter()
            .map(|m| Event::Run(job, m))
            .collect()
    }

    /// Takes in a message of run `job`; a failure comes back in words.
    pub fn absorb(&mut self, job: u64, msg: Msg) -> Option<String> {
        if self.live != Some(job) {
            return None;
        }
        match msg {
            Msg::Progress(p) => self.progress = Some(p),
            Msg::Step(step) => {
                let version = self.bump();
                let i = step.index;
                let state = StepState {
                    step: *step,
                    stale: false,
                    version,
                };
                if i < self.steps.len() {
                    self.steps[i] = state;
                } else {
                    self.steps.push(state);
                }
            }
            Msg::Curves(index, curves) => {
                if let Some(s) = self.steps.get_mut(index).filter(|s| !s.stale) {
                    s.step.faithfulness = Some(*curves);
                    self.bump();
                }
            }
            Msg::Done(result) => {
                self.live = None;
                self.progress = None;
                self.bump();
                match result {
                    Ok(record) => {
                        self.steps.truncate(record.outcome.steps.len());
                        self.record = Some(*record);
                    }
                    Err(e) => {
                        self.steps.retain(|s| !s.stale);
                        if !matches!(e, Error::Cancelled) {
                            return Some(format!("Run failed: {e}"));
                        }
                    }
                }
            }
        }
        None
    }

    /// Redraws iteration 0 under new mask parameters at once, from its kept saliency map (no
    /// gradient work); the later iterations need a rerun.
    pub fn remask_first(&mut self, explainer: &Explainer, params: &UnveilParams) -> Result<()> {
        let Some(first) = self.steps.first() else {
            return Ok(());
        };
        let step = explainer.remask_first(&first.step, params)?;
        let version = self.bump();
        self.steps[0].step = step;
        self.steps[0].version = version;
        Ok(())
    }

    /// Keeps the finished run (computed with `params`) on screen next to the following ones.
    pub fn pin(&mut self, params: &UnveilParams) {
        let Some(outcome) = self.outcome().cloned() else {
            return;
        };
        let p = params;
        let label = format!(
            "{}, kernel {}, {} passes, fill {:?}",
            p.saliency.method.name(),
            p.mask.kernel,
            p.mask.passes,
            p.fill
        );
        self.pinned = Some(Pinned {
            steps: self.steps.clone(),
            outcome,
            label: label.to_lowercase(),
        });
        self.bump();
    }

    pub fn unpin(&mut self) {
        self.pinned = None;
        self.bump();
    }

    pub fn steps(&self) -> &[StepState] {
        &self.steps
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.record.as_ref().map(|r| &r.outcome)
    }

    /// The finished run with its provenance.
    pub fn record(&self) -> Option<&RunRecord> {
        self.record.as_ref()
    }

    pub fn progress(&self) -> Option<Progress> {
        self.progress
    }

    pub fn pinned(&self) -> Option<&Pinned> {
        self.pinned.as_ref()
    }

    /// The class chosen for this image and model (`None`: the model's top-1).
    pub fn target(&self) -> Option<usize> {
        self.target
    }

    pub fn is_running(&self) -> bool {
        self.worker.is_running()
    }

    /// A run is asked for or in flight.
    pub fn is_busy(&self) -> bool {
        self.requested || self.worker.is_running()
    }

    /// Runs started so far.
    pub fn started(&self) -> u64 {
        self.worker.started()
    }

    pub fn live_threads(&self) -> usize {
        self.worker.live_threads()
    }

    /// Changes whenever the results change.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}
