//! What the slots report from their polls: a type of its own, so that the slots and the app
//! import it rather than each other.

use crate::engine::explainer::Explainer;
use crate::error::Result;
use crate::gui::worker::{CheckMsg, FetchMsg, Msg};
use crate::gui::workspace::loaded::Loaded;

/// What finished in the background (or went wrong on the way), as a value the app applies.
pub enum Event {
    /// A model load ended (the name, for its message).
    ModelLoaded(String, Result<Box<Explainer>>),
    /// The model's GPU failed and its work moved to the CPU (why): said once per model.
    FellBack(String),
    /// An image was decoded, or could not be.
    ImageOpened(Result<Box<Loaded>>),
    /// A message of run number `.0` (only the live run's count).
    Run(u64, Msg),
    /// A message of sanity check number `.0`.
    Check(u64, CheckMsg),
    /// A message of model fetch number `.0`.
    Fetch(u64, FetchMsg),
    /// A finished job to tell the user about.
    Info(String),
    Error(String),
}
