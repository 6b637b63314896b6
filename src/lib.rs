//! unveil: which regions of an image does a CNN classifier rely on, one region after another?
//!
//! An implementation of Bordes et al. (2018), "Iteratively unveiling new regions of interest in
//! Deep Learning models": saliency by guided backpropagation averaged with SmoothGrad, smoothed
//! into a mask, the mask filled in, and the loop repeated on the masked image until the class
//! probability falls below a threshold.
//!
//! Layers: [`engine`] computes (no GUI code); [`cli`] and the desktop app (`gui` feature) are
//! thin front ends over the same engine calls.

pub mod cli;
pub mod engine;
pub mod error;
#[cfg(feature = "gui")]
pub mod gui;

pub use error::{Error, Result};
