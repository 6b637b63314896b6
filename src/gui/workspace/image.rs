//! The image slot: the open image, its display copy and the two windows (what the screen shows,
//! what the model sees), and the decoding in flight.
//!
//! The display window never reruns anything (as in a PACS viewer); the model window is changed
//! only on purpose, and the app reruns then. `version` changes whenever what the slot shows
//! changes (a new image, either window); `opened` only with a new image, which is what a
//! sanity check was computed for.

use std::path::PathBuf;
use std::sync::Arc;

use poll_promise::Promise;

use crate::engine::image;
use crate::engine::source_image::{Grayscale, SourceImage, Window};
use crate::engine::suitability;
use crate::error::Result;
use crate::gui::workspace::event::Event;
use crate::gui::workspace::loaded::Loaded;

/// The bundled sample images, compiled in so the app works from any folder, offline: the
/// first is shown on first start. (CC0 photos from scikit-image, CC BY 4.0 X-rays from Kermany
/// et al.: assets/ATTRIBUTION.md.)
pub const SAMPLES: [(&str, &[u8]); 4] = [
    ("chelsea.png", include_bytes!("../../../assets/chelsea.png")),
    ("coffee.png", include_bytes!("../../../assets/coffee.png")),
    (
        "chest-xray-pneumonia.jpeg",
        include_bytes!("../../../assets/chest-xray-pneumonia.jpeg"),
    ),
    (
        "chest-xray-normal.jpeg",
        include_bytes!("../../../assets/chest-xray-normal.jpeg"),
    ),
];

/// Decodes and makes the (at most 1024 px) display copy: both can take a while on big files.
fn decode(
    name: String,
    path: Option<PathBuf>,
    load: impl FnOnce() -> Result<SourceImage>,
) -> Result<Box<Loaded>> {
    let source = load()?;
    let rgb = ::image::DynamicImage::ImageRgb32F(source.rgb.clone()).to_rgb8();
    Ok(Box::new(Loaded {
        name,
        path,
        preview: fit(&rgb, 1024),
        preview_gray: source.gray.as_ref().map(|g| fit_gray(g, 1024)),
        looks_gray: suitability::looks_gray(&source),
        source: Arc::new(source),
    }))
}

#[derive(Default)]
pub struct ImageSlot {
    loaded: Option<Loaded>,
    /// The grayscale display window (None for colour images).
    window: Option<Window>,
    /// The window the model sees: the file's own until the user chooses otherwise.
    model_window: Option<Window>,
    job: Option<Promise<Result<Box<Loaded>>>>,
    version: u64,
    opened: u64,
}

impl ImageSlot {
    /// Opens an image file, off the UI thread.
    pub fn open_path(&mut self, path: PathBuf) {
        self.job = Some(Promise::spawn_thread("decode-image", move || {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            decode(name, Some(path.clone()), || image::load(&path))
        }));
    }

    /// Opens bundled sample `i` ([`SAMPLES`]), off the UI thread.
    pub fn open_sample(&mut self, i: usize) {
        let (name, bytes) = SAMPLES[i.min(SAMPLES.len() - 1)];
        self.job = Some(Promise::spawn_thread("decode-sample", move || {
            decode(format!("{name} (sample)"), None, || image::decode(bytes))
        }));
    }

    /// The decoded image, or why it could not be, once decoding ends.
    pub fn poll(&mut self) -> Option<Event> {
        match self.job.take()?.try_take() {
            Ok(result) => Some(Event::ImageOpened(result)),
            Err(job) => {
                self.job = Some(job);
                None
            }
        }
    }

    /// Shows a decoded image, under its file's own window.
    pub fn set(&mut self, loaded: Loaded) {
        self.window = loaded.source.gray.as_ref().map(|g| g.default_window);
        self.model_window = self.window;
        self.loaded = Some(loaded);
        self.version += 1;
        self.opened += 1;
    }

    /// Sets the grayscale display window: only the screen changes.
    pub fn set_window(&mut self, w: Window) {
        let Some(img) = self.loaded.as_mut() else {
            return;
        };
        let Some(g) = &img.preview_gray else { return };
        let w = positive(w);
        if self.window == Some(w) {
            return;
        }
        self.window = Some(w);
        img.preview = ::image::DynamicImage::ImageRgb32F(g.render(w)).to_rgb8();
        self.version += 1;
    }

    /// Sets the window the model sees; true when it changed (the app reruns).
    pub fn set_model_window(&mut self, w: Window) -> bool {
        if self.loaded.as_ref().is_none_or(|i| i.source.gray.is_none()) {
            return false;
        }
        let w = positive(w);
        if self.model_window == Some(w) {
            return false;
        }
        self.model_window = Some(w);
        self.version += 1;
        true
    }

    pub fn loaded(&self) -> Option<&Loaded> {
        self.loaded.as_ref()
    }

    /// The open image's name ("" without one).
    pub fn name(&self) -> &str {
        self.loaded.as_ref().map_or("", |i| i.name.as_str())
    }

    pub fn window(&self) -> Option<Window> {
        self.window
    }

    pub fn model_window(&self) -> Option<Window> {
        self.model_window
    }

    /// Decoding an image: a promise, which does not wake the app by itself.
    pub fn is_loading(&self) -> bool {
        self.job.is_some()
    }

    /// Changes whenever what the slot shows changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Changes with each image opened (not with the windows).
    pub fn opened(&self) -> u64 {
        self.opened
    }
}

fn positive(w: Window) -> Window {
    Window {
        center: w.center,
        width: w.width.max(1e-6),
    }
}

/// Shrinks an image so that its longer side is at most `max` (display only).
fn fit(img: &::image::RgbImage, max: u32) -> ::image::RgbImage {
    let (w, h) = img.dimensions();
    if w.max(h) <= max {
        return img.clone();
    }
    let s = max as f32 / w.max(h) as f32;
    let (nw, nh) = (
        ((w as f32 * s).round() as u32).max(1),
        ((h as f32 * s).round() as u32).max(1),
    );
    ::image::imageops::resize(img, nw, nh, ::image::imageops::FilterType::Triangle)
}

/// Nearest-neighbour shrink of grayscale intensities to at most `max` pixels on the long side.
fn fit_gray(g: &Grayscale, max: u32) -> Grayscale {
    let (w, h) = (g.width, g.height);
    let s = (max as f32 / w.max(h) as f32).min(1.0);
    let (nw, nh) = (
        ((w as f32 * s).round() as u32).max(1),
        ((h as f32 * s).round() as u32).max(1),
    );
    let values = (0..nh)
        .flat_map(|y| {
            (0..nw).map(move |x| {
                let sx = ((x as u64 * w as u64) / nw as u64) as u32;
                let sy = ((y as u64 * h as u64) / nh as u64) as u32;
                g.values[(sy * w + sx) as usize]
            })
        })
        .collect();
    Grayscale {
        width: nw,
        height: nh,
        values,
        invert: g.invert,
        function: g.function,
        default_window: g.default_window,
        range: g.range,
    }
}
