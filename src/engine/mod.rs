//! The engine: everything that computes, with no GUI dependency. Synchronous and
//! device-agnostic; long calls take a progress callback and a cancel flag.
//!
//! Front ends start at [`explainer::Explainer`]; ARCHITECTURE.md maps the modules.

pub mod batch;
pub mod dataset;
pub mod device;
pub mod dicom;
pub mod eval;
pub mod explainer;
pub mod export;
pub mod faithfulness;
mod fill;
pub mod font;
mod gradient_cache;
pub mod image;
mod iterate;
pub mod maps;
pub mod mask;
// Allocator settings: a libc call (see the module's SAFETY note).
#[allow(unsafe_code)]
pub mod memory;
pub mod models;
// The kernels: SIMD intrinsics and raw buffers, each block with its SAFETY note.
#[allow(unsafe_code)]
pub mod ops;
pub mod outcome;
pub mod params;
pub mod predict;
pub mod readout;
pub mod render;
mod rng;
pub mod run;
pub mod saliency;
pub mod sanity;
pub mod similarity;
pub mod source_image;
pub mod suitability;
pub mod summary;
