//! The decoded image, whatever file it came from: RGB in [0, 1], and for single-channel images
//! their intensities too, so that a window (centre and width, as in radiology viewers) can
//! remap them. Types and their pure conversions only; reading files is `image`'s and `dicom`'s
//! job, and both build these.

use image::{DynamicImage, Rgb32FImage};

use crate::error::{Error, Result};

/// Images larger than this many pixels are refused before decoding (100 megapixels).
pub const MAX_PIXELS: u64 = 100_000_000;

/// A decoded image, RGB in [0, 1] as the model will see it.
#[derive(Clone, Debug)]
pub struct SourceImage {
    pub rgb: Rgb32FImage,
    /// True when the file had a single (gray) channel.
    pub grayscale: bool,
    /// The intensities of a grayscale image, before windowing.
    pub gray: Option<Grayscale>,
}

impl SourceImage {
    pub fn width(&self) -> u32 {
        self.rgb.width()
    }
    pub fn height(&self) -> u32 {
        self.rgb.height()
    }

    /// The window a run sees: `chosen`, else the file's own (grayscale images only).
    pub fn window_or_default(&self, chosen: Option<Window>) -> Option<Window> {
        self.gray
            .as_ref()
            .map(|g| chosen.unwrap_or(g.default_window))
    }

    /// The same image under another window (grayscale images only; others are returned as is).
    pub fn windowed(&self, w: Window) -> SourceImage {
        match &self.gray {
            Some(g) => SourceImage {
                rgb: g.render(w),
                grayscale: true,
                gray: Some(g.clone()),
            },
            None => self.clone(),
        }
    }
}

/// A display window: intensities `center - width / 2 .. center + width / 2` map to black..white.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub center: f32,
    pub width: f32,
}

/// How a window maps intensities (DICOM PS3.3 C.11.2.1.2 and C.11.2.1.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowFn {
    /// DICOM's default LINEAR function (integer-centred: width 256 spans 256 stored values).
    Linear,
    /// LINEAR_EXACT: `(x - center) / width + 0.5`, clipped. Used for non-DICOM images, where a
    /// window of centre 0.5 and width 1 is the identity on [0, 1].
    LinearExact,
}

/// A single-channel image's intensities (DICOM: modality values; other files: [0, 1]).
#[derive(Clone, Debug)]
pub struct Grayscale {
    pub width: u32,
    pub height: u32,
    pub values: Vec<f32>,
    /// MONOCHROME1: the lowest value is displayed white.
    pub invert: bool,
    pub function: WindowFn,
    /// The file's own window, or the full range of its values.
    pub default_window: Window,
    /// Smallest and largest value.
    pub range: (f32, f32),
}

impl Grayscale {
    pub fn new(
        width: u32,
        height: u32,
        values: Vec<f32>,
        invert: bool,
        function: WindowFn,
        window: Option<Window>,
    ) -> Self {
        let range = values
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let full = match function {
            // LINEAR maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] to [0, 1].
            WindowFn::Linear => Window {
                center: (range.0 + range.1) / 2.0 + 0.5,
                width: (range.1 - range.0 + 1.0).max(1.0),
            },
            WindowFn::LinearExact => Window {
                center: (range.0 + range.1) / 2.0,
                width: (range.1 - range.0).max(f32::EPSILON),
            },
        };
        Grayscale {
            width,
            height,
            values,
            invert,
            function,
            default_window: window.unwrap_or(full),
            range,
        }
    }

    /// One intensity through the window, in [0, 1] (inverted for MONOCHROME1). Computed in
    /// f64 so that a MONOCHROME1 file and its MONOCHROME2 twin give bit-identical images.
    pub fn map(&self, x: f32, w: Window) -> f32 {
        let (x, c) = (x as f64, w.center as f64);
        let y = match self.function {
            WindowFn::Linear => {
                let w = (w.width as f64).max(1.0);
                if x <= c - 0.5 - (w - 1.0) / 2.0 {
                    0.0
                } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                    1.0
                } else {
                    (x - (c - 0.5)) / (w - 1.0) + 0.5
                }
            }
            WindowFn::LinearExact => (x - c) / (w.width as f64).max(f64::EPSILON) + 0.5,
        }
        .clamp(0.0, 1.0);
        (if self.invert { 1.0 - y } else { y }) as f32
    }

    /// The windowed image, gray replicated to RGB.
    pub fn render(&self, w: Window) -> Rgb32FImage {
        Rgb32FImage::from_fn(self.width, self.height, |x, y| {
            let v = self.map(self.values[(y * self.width + x) as usize], w);
            image::Rgb([v, v, v])
        })
    }

    /// The image under its default window.
    pub fn into_source(self) -> SourceImage {
        SourceImage {
            rgb: self.render(self.default_window),
            grayscale: true,
            gray: Some(self),
        }
    }
}

/// Refuses images over [`MAX_PIXELS`], from their header, before any pixel is allocated.
pub fn check_pixel_count(width: u64, height: u64) -> Result<()> {
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(Error::ImageTooLarge {
            width,
            height,
            limit: MAX_PIXELS,
        });
    }
    Ok(())
}

impl SourceImage {
    /// A decoded raster: grayscale ones keep their intensities (identity window on [0, 1]).
    pub fn from_dynamic(img: DynamicImage) -> SourceImage {
        if !img.color().has_color() {
            let luma = img.to_luma32f();
            let (w, h) = luma.dimensions();
            let identity = Window {
                center: 0.5,
                width: 1.0,
            };
            return Grayscale::new(
                w,
                h,
                luma.into_raw(),
                false,
                WindowFn::LinearExact,
                Some(identity),
            )
            .into_source();
        }
        SourceImage {
            rgb: img.into_rgb32f(),
            grayscale: false,
            gray: None,
        }
    }
}
