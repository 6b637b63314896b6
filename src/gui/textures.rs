//! Engine pictures to egui textures.

use egui::{ColorImage, TextureHandle, TextureOptions};
use image::RgbImage;

pub fn color_image(img: &RgbImage) -> ColorImage {
    ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw())
}

pub fn upload(ctx: &egui::Context, name: &str, img: &RgbImage) -> TextureHandle {
    ctx.load_texture(name, color_image(img), TextureOptions::LINEAR)
}

/// Shrinks an image so that its longer side is at most `max` (display only).
pub fn fit(img: &RgbImage, max: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.max(h) <= max {
        return img.clone();
    }
    let s = max as f32 / w.max(h) as f32;
    let (nw, nh) = (
        ((w as f32 * s).round() as u32).max(1),
        ((h as f32 * s).round() as u32).max(1),
    );
    image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle)
}

/// Nearest-neighbour shrink of grayscale intensities to at most `max` pixels on the long side.
pub fn fit_gray(
    g: &crate::engine::source_image::Grayscale,
    max: u32,
) -> crate::engine::source_image::Grayscale {
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
    crate::engine::source_image::Grayscale {
        width: nw,
        height: nh,
        values,
        invert: g.invert,
        function: g.function,
        default_window: g.default_window,
        range: g.range,
    }
}
