//! Reading image files and turning them into model inputs.
//!
//! Everything is converted to RGB f32 in [0, 1] first ([`SourceImage`]), so 8-bit, 16-bit,
//! grayscale and alpha images take the same path (grayscale is replicated to three channels;
//! alpha is dropped); the model sees the windowed image. The size is checked from the header
//! before any pixel is decoded. A file is read once: the format is sniffed from those bytes, and
//! DICOM's checks and its parser see the very same bytes.

use std::io::Cursor;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageReader, Rgb32FImage, imageops::FilterType};

use crate::engine::dicom;
use crate::engine::models::{Crop, ModelInfo, Resize};
use crate::engine::source_image::{MAX_PIXELS, SourceImage, check_pixel_count};
use crate::error::{Error, Result};

/// Reads an image file: PNG, JPEG, TIFF or DICOM (sniffed from the content, not the name).
pub fn load(path: &Path) -> Result<SourceImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_named(&bytes, path)
}

/// Decodes an image file held in memory.
pub fn decode(bytes: &[u8]) -> Result<SourceImage> {
    decode_named(bytes, Path::new("<memory>"))
}

fn decode_named(bytes: &[u8], path: &Path) -> Result<SourceImage> {
    if dicom::is_dicom(bytes) {
        return dicom::decode(bytes, path);
    }
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
    Ok(SourceImage::from_dynamic(img))
}

/// True when the JPEG data ends with its end-of-image marker. (Inside the entropy-coded data
/// 0xFF is always followed by 0x00 or a restart marker, so FF D9 near the end is the real EOI;
/// some writers append padding after it.)
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    bytes[bytes.len().saturating_sub(1024)..]
        .windows(2)
        .any(|w| w == [0xFF, 0xD9])
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

/// The part of a `width` x `height` image the model sees: `(x, y, w, h)`. TorchXRayVision's
/// `XRayCenterCrop`: the centred square of the shorter side, starting at
/// `width / 2 - side / 2` (integer division).
pub fn crop_rect(crop: Crop, width: u32, height: u32) -> (u32, u32, u32, u32) {
    match crop {
        Crop::None => (0, 0, width, height),
        Crop::CenterSquare => {
            let side = width.min(height);
            (width / 2 - side / 2, height / 2 - side / 2, side, side)
        }
    }
}

/// Crops as the model was trained (usually not at all: what the user sees is what the model
/// sees), resizes and normalises to the model's input: `[3, h, w]` f32 on `device`.
pub fn to_model_input(img: &SourceImage, info: &ModelInfo, device: &Device) -> Result<Tensor> {
    let (h, w) = info.input_size;
    let (x0, y0, cw, ch) = crop_rect(info.crop, img.rgb.width(), img.rgb.height());
    let cropped;
    let src = if (cw, ch) == (img.rgb.width(), img.rgb.height()) {
        &img.rgb
    } else {
        cropped = image::imageops::crop_imm(&img.rgb, x0, y0, cw, ch).to_image();
        &cropped
    };
    let resized = match info.resize {
        Resize::Bilinear => image::imageops::resize(src, w as u32, h as u32, FilterType::Triangle),
        Resize::Nearest => resize_nearest_like_pil(src, w as u32, h as u32),
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
