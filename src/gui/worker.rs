//! Background jobs (runs, sanity checks, model fetches): one thread per job, results streamed
//! over a channel, latest job wins: starting one cancels the one before.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;

use crate::engine::explainer::Explainer;
use crate::engine::faithfulness::Curves;
use crate::engine::outcome::{Event, Progress, Step};
use crate::engine::params::UnveilParams;
use crate::engine::run::{RunRecord, RunRequest};
use crate::engine::sanity::{Check, CheckEvent, CheckProgress};
use crate::engine::source_image::{SourceImage, Window};
use crate::error::{Error, Result};
use crate::install::Installer;

/// What a job thread reports; the last message of a job is its `done` one.
pub trait Message: Send + 'static {
    fn is_done(&self) -> bool;
    /// The message that ends a job whose thread died without reporting (a panic of ours).
    fn died() -> Self;
}

/// What a run thread reports.
pub enum Msg {
    Progress(Progress),
    Step(Box<Step>),
    /// An iteration's faithfulness curves, after its step.
    Curves(usize, Box<Curves>),
    /// The finished run with its provenance (what an export writes).
    Done(Result<Box<RunRecord>>),
}

/// What a run or a check looks at: the image, where it came from (for the record), and the
/// window the model sees.
#[derive(Clone)]
pub struct Subject {
    pub image: Arc<SourceImage>,
    /// The file (`None` for a bundled sample).
    pub path: Option<PathBuf>,
    /// The full path, or the sample's name.
    pub name: String,
    pub window: Option<Window>,
}

impl Subject {
    fn request<'a>(&'a self, params: &'a UnveilParams) -> RunRequest<'a> {
        RunRequest {
            image: &self.image,
            path: self.path.as_deref(),
            name: &self.name,
            window: self.window,
            display_window: None,
            params,
        }
    }
}

impl Message for Msg {
    fn is_done(&self) -> bool {
        matches!(self, Msg::Done(_))
    }

    fn died() -> Self {
        Msg::Done(Err(died()))
    }
}

/// What a sanity-check thread reports.
pub enum CheckMsg {
    Progress(CheckProgress),
    Done(Result<Box<Check>>),
}

impl Message for CheckMsg {
    fn is_done(&self) -> bool {
        matches!(self, CheckMsg::Done(_))
    }

    fn died() -> Self {
        CheckMsg::Done(Err(died()))
    }
}

/// What a model fetch reports: the installer's progress lines, then where it installed.
pub enum FetchMsg {
    Line(String),
    Done(Result<PathBuf>),
}

impl Message for FetchMsg {
    fn is_done(&self) -> bool {
        matches!(self, FetchMsg::Done(_))
    }

    fn died() -> Self {
        FetchMsg::Done(Err(died()))
    }
}

fn died() -> Error {
    Error::Internal("the run stopped unexpectedly".into())
}

/// Requests a repaint when dropped (also while a panic unwinds).
struct Wake(egui::Context);

impl Drop for Wake {
    fn drop(&mut self) {
        self.0.request_repaint();
    }
}

struct Job<M> {
    cancel: Arc<AtomicBool>,
    rx: Receiver<M>,
    handle: JoinHandle<()>,
}

/// Owns one kind of job's threads. Only the newest job's messages are ever read.
pub struct Worker<M> {
    current: Option<Job<M>>,
    /// Cancelled jobs that may still be finishing their last SmoothGrad chunk.
    retired: Vec<JoinHandle<()>>,
    started: u64,
}

impl<M> Default for Worker<M> {
    fn default() -> Self {
        Worker {
            current: None,
            retired: Vec::new(),
            started: 0,
        }
    }
}

impl<M: Message> Worker<M> {
    /// Cancels any job in flight and starts `work(send, cancel)` on a new thread; every message
    /// sent asks for a repaint.
    pub fn start(
        &mut self,
        ctx: &egui::Context,
        name: &str,
        work: impl FnOnce(&dyn Fn(M), &AtomicBool) + Send + 'static,
    ) {
        self.cancel();
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let ctx = ctx.clone();
        self.started += 1;
        let handle = std::thread::Builder::new()
            .name(format!("unveil-{name}-{}", self.started))
            .spawn(move || {
                // However the thread ends (done, cancelled, or a panic of ours), the app wakes
                // to see it: it does not poll while a job runs.
                let _wake = Wake(ctx.clone());
                let send = |m: M| {
                    let _ = tx.send(m);
                    ctx.request_repaint();
                };
                work(&send, &flag);
            })
            .expect("spawning a thread");
        self.current = Some(Job { cancel, rx, handle });
    }

    /// Asks the current job to stop (within one SmoothGrad chunk).
    pub fn cancel(&mut self) {
        if let Some(job) = self.current.take() {
            job.cancel.store(true, Ordering::Relaxed);
            self.retired.push(job.handle);
        }
    }

    /// Drains the current job's messages. Once it reports done, the job is over.
    pub fn poll(&mut self) -> Vec<M> {
        self.retired.retain(|h| !h.is_finished());
        let Some(job) = &self.current else {
            return Vec::new();
        };
        // Checked before draining, so every message a finished thread sent is read.
        let ended = job.handle.is_finished();
        let mut msgs: Vec<M> = job.rx.try_iter().collect();
        if ended && !msgs.iter().any(M::is_done) {
            // The thread ended without reporting (it panicked): say so rather than stay busy.
            msgs.push(M::died());
        }
        if msgs.iter().any(M::is_done)
            && let Some(job) = self.current.take()
        {
            self.retired.push(job.handle);
        }
        msgs
    }

    pub fn is_running(&self) -> bool {
        self.current.is_some()
    }

    /// Job threads still alive (current and cancelled ones still finishing).
    pub fn live_threads(&self) -> usize {
        self.retired.iter().filter(|h| !h.is_finished()).count()
            + self
                .current
                .as_ref()
                .is_some_and(|j| !j.handle.is_finished()) as usize
    }

    /// Jobs started so far.
    pub fn started(&self) -> u64 {
        self.started
    }
}

impl Worker<Msg> {
    /// Cancels any run in flight and starts a new one: `subject` explained.
    pub fn start_run(
        &mut self,
        ctx: &egui::Context,
        explainer: Arc<Explainer>,
        subject: Subject,
        params: UnveilParams,
    ) {
        self.start(ctx, "run", move |send, cancel| {
            let req = subject.request(&params);
            let result = explainer.run(
                &req,
                &mut |e| match e {
                    Event::Progress(p) => send(Msg::Progress(p)),
                    Event::Step(s) => send(Msg::Step(Box::new(s.clone()))),
                    Event::Curves { index, curves } => {
                        send(Msg::Curves(index, Box::new(curves.clone())))
                    }
                    // The workspace reads it from the explainer (runs and checks alike).
                    Event::FellBack(_) => {}
                },
                cancel,
            );
            send(Msg::Done(result.map(Box::new)));
        });
    }
}

impl Worker<CheckMsg> {
    /// Cancels any check in flight and starts a new one.
    pub fn start_check(
        &mut self,
        ctx: &egui::Context,
        explainer: Arc<Explainer>,
        subject: Subject,
        params: UnveilParams,
    ) {
        self.start(ctx, "check", move |send, cancel| {
            let req = subject.request(&params);
            let result = explainer.check(
                &req,
                &mut |e| {
                    if let CheckEvent::Progress(p) = e {
                        send(CheckMsg::Progress(p))
                    }
                },
                cancel,
            );
            send(CheckMsg::Done(result.map(|r| Box::new(r.check))));
        });
    }
}

impl Worker<FetchMsg> {
    /// Cancels any fetch in flight and starts fetching model `name` with `installer`.
    pub fn start_fetch(&mut self, ctx: &egui::Context, installer: Installer, name: String) {
        self.start(ctx, "fetch", move |send, cancel| {
            let result = installer.fetch(
                &name,
                &mut |line| send(FetchMsg::Line(line.to_string())),
                cancel,
            );
            send(FetchMsg::Done(result));
        });
    }
}

impl<M> Drop for Worker<M> {
    fn drop(&mut self) {
        if let Some(job) = self.current.take() {
            job.cancel.store(true, Ordering::Relaxed);
        }
    }
}
