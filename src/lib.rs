//! unveil: which regions of an image does a CNN classifier rely on, one region after another?
//!
//! An implementation of Bordes et al. (2018), "Iteratively unveiling new regions of interest in
//! Deep Learning models": saliency by guided backpropagation averaged with SmoothGrad, smoothed
//! into a mask, the mask filled in, and the loop repeated on the masked image until the class
//! probability falls below a threshold.
//!
//! The library is the engine ([`engine`], no GUI code; its entry point is
//! [`engine::explainer::Explainer`]) and the desktop app ([`gui`], feature `gui`). The command
//! line is the binary's own module, a front end over the same public API as the app.
//! ARCHITECTURE.md maps the modules and the data flow.

pub mod engine;
pub mod error;
#[cfg(feature = "gui")]
pub mod gui;
pub mod install;

pub use error::{Error, Result};
