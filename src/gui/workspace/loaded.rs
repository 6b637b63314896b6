//! The opened image: a type of its own, kept by the image slot and reported by its decoding.

use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::source_image::{Grayscale, SourceImage};

/// The opened image, decoded with its display copy (both made off the UI thread).
pub struct Loaded {
    pub name: String,
    /// None for a bundled sample.
    pub path: Option<PathBuf>,
    pub source: Arc<SourceImage>,
    /// What the screen shows: at most 1024 px, under the display window.
    pub preview: ::image::RgbImage,
    /// Display-size intensities of a grayscale image, re-windowed as the window changes.
    pub preview_gray: Option<Grayscale>,
    /// A grayscale file, or colour pixels that are all gray (what X-ray models expect).
    pub looks_gray: bool,
}
