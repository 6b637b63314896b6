//! Reading images and turning them into model inputs.
//!
//! Everything is converted to RGB f32 in [0, 1] first, so 8-bit, 16-bit, grayscale and alpha
//! images take the same path (grayscale is replicated to three channels; alpha is dropped).
//! The size is checked from the header before any pixel is decoded.

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageReader, Rgb32FImage, imageops::FilterType};

use crate::engine::models::ModelInfo;
use crate::error::{Error, Result};

/// Images larger than this many pixels are refused before decoding (100 megapixels).
pub const MAX_PIXELS: u64 = 100_000_000;

/// A decoded image, RGB in [0, 1].
#[derive(Clone, Debug)]
pub struct SourceImage {
    pub rgb: Rgb32FImage,
    /// True when the file had a single (gray) channel.
    pub grayscale: bool,
}

impl SourceImage {
    pub fn width(&self) -> u32 {
        self.rgb.width()
    }
    pub fn height(&self) -> u32 {
        self.rgb.height()
    }
}

/// Reads an image file (PNG, JPEG, TIFF; the format is sniffed from the content).
pub fn load(path: &Path) -> Result<SourceImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
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
        return Err(fail("not a PNG, JPEG or TIFF image".into()));
    }
    check_size(probe).map_err(|e| match e {
        Error::ImageDecode { reason, .. } => fail(reason),
        other => other,
    })?;
    let mut reader = reader(bytes)?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 16);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| fail(e.to_string()))?;
    Ok(from_dynamic(img))
}

fn check_size<R: BufRead + Seek>(reader: ImageReader<R>) -> Result<()> {
    let (w, h) = reader.into_dimensions().map_err(|e| Error::ImageDecode {
        path: "<header>".into(),
        reason: e.to_string(),
    })?;
    let (w, h) = (w as u64, h as u64);
    if w == 0 || h == 0 {
        return Err(Error::ImageDecode {
            path: "<header>".into(),
            reason: "the image has no pixels".into(),
        });
    }
    if w * h > MAX_PIXELS {
        return Err(Error::ImageTooLarge {
            width: w,
            height: h,
            limit: MAX_PIXELS,
        });
    }
    Ok(())
}

pub fn from_dynamic(img: DynamicImage) -> SourceImage {
    let grayscale = !img.color().has_color();
    SourceImage {
        rgb: img.into_rgb32f(),
        grayscale,
    }
}

/// Resizes (the whole image, no crop: what the user sees is what the model sees) and
/// normalises to the model's input: `[3, h, w]` f32 on `device`.
pub fn to_model_input(img: &SourceImage, info: &ModelInfo, device: &Device) -> Result<Tensor> {
    let (h, w) = info.input_size;
    let resized = image::imageops::resize(&img.rgb, w as u32, h as u32, FilterType::Triangle);
    let plane = h * w;
    let mut data = vec![0f32; 3 * plane];
    for (i, p) in resized.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = (p.0[c].clamp(0.0, 1.0) - info.mean[c]) / info.std[c];
        }
    }
    Ok(Tensor::from_vec(data, (3, h, w), device)?)
}
