//! Background runs: one thread per run, results streamed over a channel, latest run wins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;

use crate::engine::explainer::Explainer;
use crate::engine::outcome::{Event, Outcome, Progress, Step};
use crate::engine::params::UnveilParams;
use crate::engine::source_image::{SourceImage, Window};
use crate::error::Result;

/// What a run thread reports.
pub enum Msg {
    Progress(Progress),
    Step(Box<Step>),
    Done(Result<Outcome>),
}

struct Job {
    cancel: Arc<AtomicBool>,
    rx: Receiver<Msg>,
    handle: JoinHandle<()>,
}

/// Owns the run threads. Only the newest run's messages are ever read.
#[derive(Default)]
pub struct Worker {
    current: Option<Job>,
    /// Cancelled runs that may still be finishing their last SmoothGrad chunk.
    retired: Vec<JoinHandle<()>>,
    runs_started: u64,
}

impl Worker {
    /// Cancels any run in flight and starts a new one.
    pub fn start(
        &mut self,
        ctx: &egui::Context,
        explainer: Arc<Explainer>,
        img: Arc<SourceImage>,
        window: Option<Window>,
        params: UnveilParams,
    ) {
        self.cancel();
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let ctx = ctx.clone();
        self.runs_started += 1;
        let handle = std::thread::Builder::new()
            .name(format!("unveil-run-{}", self.runs_started))
            .spawn(move || {
                let send = |m: Msg| {
                    let _ = tx.send(m);
                    ctx.request_repaint();
                };
                // The model sees the image under the window the user chose.
                let result = explainer.explain(
                    &img,
                    window,
                    &params,
                    &mut |e| match e {
                        Event::Progress(p) => send(Msg::Progress(p)),
                        Event::Step(s) => send(Msg::Step(Box::new(s.clone()))),
                    },
                    &flag,
                );
                send(Msg::Done(result));
            })
            .expect("spawning a thread");
        self.current = Some(Job { cancel, rx, handle });
    }

    /// Asks the current run to stop (within one SmoothGrad chunk).
    pub fn cancel(&mut self) {
        if let Some(job) = self.current.take() {
            job.cancel.store(true, Ordering::Relaxed);
            self.retired.push(job.handle);
        }
    }

    /// Drains the current run's messages. Once it reports `Done`, the run is over.
    pub fn poll(&mut self) -> Vec<Msg> {
        self.retired.retain(|h| !h.is_finished());
        let Some(job) = &self.current else {
            return Vec::new();
        };
        // Checked before draining, so every message a finished thread sent is read.
        let ended = job.handle.is_finished();
        let mut msgs: Vec<Msg> = job.rx.try_iter().collect();
        if ended && !msgs.iter().any(|m| matches!(m, Msg::Done(_))) {
            // The thread ended without reporting (it panicked): say so rather than stay busy.
            msgs.push(Msg::Done(Err(crate::Error::Internal(
                "the run stopped unexpectedly".into(),
            ))));
        }
        if msgs.iter().any(|m| matches!(m, Msg::Done(_)))
            && let Some(job) = self.current.take()
        {
            self.retired.push(job.handle);
        }
        msgs
    }

    pub fn is_running(&self) -> bool {
        self.current.is_some()
    }

    /// Run threads still alive (current and cancelled ones still finishing).
    pub fn live_threads(&self) -> usize {
        self.retired.iter().filter(|h| !h.is_finished()).count()
            + self
                .current
                .as_ref()
                .is_some_and(|j| !j.handle.is_finished()) as usize
    }

    pub fn runs_started(&self) -> u64 {
        self.runs_started
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel();
    }
}
