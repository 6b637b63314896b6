//! The engine: everything that computes, with no GUI dependency. Synchronous and
//! device-agnostic; long calls take a progress callback and a cancel flag.

pub mod batch;
pub mod device;
pub mod dicom;
pub mod export;
pub mod image;
pub mod mask;
pub mod memory;
pub mod models;
pub mod ops;
pub mod params;
pub mod render;
pub mod saliency;
pub mod unveil;
