//! Reading images and turning them into model inputs.
//!
//! Everything is converted to RGB f32 in [0, 1] first, so 8-bit, 16-bit, grayscale and alpha
//! images take the same path (grayscale is replicated to three channels; alpha is dropped).
//! Grayscale images also keep their intensities ([`Grayscale`]) so that a window (centre and
//! width, as in radiology viewers) can remap them; the model sees the windowed image. The size
//! is checked from the header before any pixel is decoded.

use std::io::Cursor;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageReader, Rgb32FImage, imageops::FilterType};

use crate::engine::models::{ModelInfo, Resize};
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

/// Reads an image file: PNG, JPEG, TIFF (sniffed from the content) or DICOM.
pub fn load(path: &Path) -> Result<SourceImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if crate::engine::dicom::is_dicom(&bytes) {
        return crate::engine::dicom::load(path);
    }
    decode_named(&bytes, path)
}

/// Decodes an image held in memory.
pub fn decode(bytes: &[u8]) -> Result<SourceImage> {
    decode_named(bytes, Path::new("<memory>"))
}

fn decode_named(bytes: &[u8], path: &Path) -> Result<SourceImage> {
    let fail = |reason: String| Error::ImageDecode {
        path: path.to_path_buf(),
        reason,
    };
    let reader = |b| -> Result<ImageReader<Cursor<&[u8]>>> {
        ImageReader::new(Cursor::new(b))
            .with_guessed_format()
            .map_err(|e| fail(e.to_string()))
    };
    let probe = reader(bytes)?;
    if probe.format().is_none() {
        return Err(fail("not a PNG, JPEG, TIFF or DICOM image".into()));
    }
    // JPEG decoders fill a cut-off file with gray and report success: a silently wrong picture.
    if probe.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(fail(
            "the JPEG file is truncated (no end-of-image marker)".into(),
        ));
    }
    let (w, h) = probe.into_dimensions().map_err(|e| fail(e.to_string()))?;
    if w == 0 || h == 0 {
        return Err(fail("the image has no pixels".into()));
    }
    check_pixel_count(w as u64, h as u64)?;
    let mut reader = reader(bytes)?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 16);
    reader.limits(limits);
    // Camera JPEGs store their rotation in EXIF: apply it, so the model sees the photo upright.
    let mut decoder = reader.into_decoder().map_err(|e| fail(e.to_string()))?;
    let orientation = image::ImageDecoder::orientation(&mut decoder)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| fail(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(from_dynamic(img))
}

/// True when the JPEG data ends with its end-of-image marker. (Inside the entropy-coded data
/// 0xFF is always followed by 0x00 or a restart marker, so FF D9 near the end is the real EOI;
/// some writers append padding after it.)
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    bytes[bytes.len().saturating_sub(1024)..]
        .windows(2)
        .any(|w| w == [0xFF, 0xD9])
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

/// Source indices of Pillow's NEAREST resize along one axis. Pillow accumulates the step in
/// f64 from half a step and truncates, which differs from `floor((i + 0.5) * in / out)` for
/// about 1 % of indices; a model trained on Pillow's output should get exactly that input.
pub fn pil_nearest_indices(input: u32, output: u32) -> Vec<u32> {
    let step = input as f64 / output as f64;
    let mut v = step * 0.5;
    (0..output)
        .map(|_| {
            let i = (v as u32).min(input - 1);
            v += step;
            i
        })
        .collect()
}

fn resize_nearest_like_pil(img: &Rgb32FImage, w: u32, h: u32) -> Rgb32FImage {
    let cols = pil_nearest_indices(img.width(), w);
    let rows = pil_nearest_indices(img.height(), h);
    Rgb32FImage::from_fn(w, h, |x, y| {
        *img.get_pixel(cols[x as usize], rows[y as usize])
    })
}

/// Resizes (the whole image, no crop: what the user sees is what the model sees) and
/// normalises to the model's input: `[3, h, w]` f32 on `device`.
pub fn to_model_input(img: &SourceImage, info: &ModelInfo, device: &Device) -> Result<Tensor> {
    let (h, w) = info.input_size;
    let resized = match info.resize {
        Resize::Bilinear => {
            image::imageops::resize(&img.rgb, w as u32, h as u32, FilterType::Triangle)
        }
        Resize::Nearest => resize_nearest_like_pil(&img.rgb, w as u32, h as u32),
    };
    let plane = h * w;
    let mut data = vec![0f32; 3 * plane];
    for (i, p) in resized.pixels().enumerate() {
        for c in 0..3 {
            let src = if info.bgr { 2 - c } else { c };
            data[c * plane + i] = (p.0[src].clamp(0.0, 1.0) - info.mean[c]) / info.std[c];
        }
    }
    Ok(Tensor::from_vec(data, (3, h, w), device)?)
}
