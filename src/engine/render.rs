//! Turning engine results into RGB pictures: colour maps, masks, overlays, montages.
//! Shared by the CLI's files and the app's textures.

use candle_core::Tensor;
use image::{Rgb, RgbImage};

use crate::engine::font;
use crate::engine::maps::{Mask, SaliencyMap};
use crate::engine::models::ModelInfo;
use crate::engine::outcome::{Outcome, Step};
use crate::engine::sanity::Check;
use crate::error::Result;

/// Inferno (matplotlib), sampled at 9 points: perceptually uniform and readable in grayscale.
const INFERNO: [[f32; 3]; 9] = [
    [0.0, 0.0, 4.0],
    [31.0, 12.0, 72.0],
    [85.0, 15.0, 109.0],
    [136.0, 34.0, 106.0],
    [186.0, 54.0, 85.0],
    [227.0, 89.0, 51.0],
    [249.0, 140.0, 10.0],
    [249.0, 201.0, 50.0],
    [252.0, 255.0, 164.0],
];

/// Distinct colours for successive iterations' regions (Okabe-Ito, colour-blind safe).
pub const ITERATION_COLORS: [[u8; 3]; 8] = [
    [230, 159, 0],
    [86, 180, 233],
    [0, 158, 115],
    [240, 228, 66],
    [0, 114, 178],
    [213, 94, 0],
    [204, 121, 167],
    [255, 255, 255],
];

/// The colour of iteration `i` in overlays and legends.
pub fn iteration_color(i: usize) -> [u8; 3] {
    ITERATION_COLORS[i % ITERATION_COLORS.len()]
}

/// Inferno colour of `v` in [0, 1] (NaN is drawn as 0).
pub fn inferno(v: f32) -> [u8; 3] {
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = v * (INFERNO.len() - 1) as f32;
    let i = (x.floor() as usize).min(INFERNO.len() - 2);
    let f = x - i as f32;
    std::array::from_fn(|c| (INFERNO[i][c] * (1.0 - f) + INFERNO[i + 1][c] * f).round() as u8)
}

pub fn saliency_rgb(s: &SaliencyMap) -> RgbImage {
    RgbImage::from_fn(s.width as u32, s.height as u32, |x, y| {
        Rgb(inferno(s.data[y as usize * s.width + x as usize]))
    })
}

/// White where masked, black elsewhere.
pub fn mask_rgb(m: &Mask) -> RgbImage {
    RgbImage::from_fn(m.width as u32, m.height as u32, |x, y| {
        let on = m.data[y as usize * m.width + x as usize];
        Rgb(if on { [255; 3] } else { [0; 3] })
    })
}

/// Undoes the model's normalisation of a `[3, h, w]` tensor.
pub fn input_rgb(t: &Tensor, info: &ModelInfo) -> Result<RgbImage> {
    let (_, h, w) = t.dims3()?;
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let plane = h * w;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        Rgb(std::array::from_fn(|c| {
            let u = v[c * plane + i] * info.std[c] + info.mean[c];
            (u.clamp(0.0, 1.0) * 255.0).round() as u8
        }))
    }))
}

/// Paints `color` over `base` where `mask` is set, with opacity `alpha` in [0, 1].
/// The mask may have another size than the image: it is sampled nearest-neighbour.
pub fn overlay(base: &mut RgbImage, mask: &Mask, color: [u8; 3], alpha: f32) {
    let (w, h) = base.dimensions();
    let a = alpha.clamp(0.0, 1.0);
    for (x, y, p) in base.enumerate_pixels_mut() {
        let mx = (x as usize * mask.width) / w as usize;
        let my = (y as usize * mask.height) / h as usize;
        if mask.data[my * mask.width + mx] {
            for (v, &c) in p.0.iter_mut().zip(&color) {
                *v = (*v as f32 * (1.0 - a) + c as f32 * a).round() as u8;
            }
        }
    }
}

/// Paints, for each iteration, the region it unveiled (its mask minus all earlier masks) in
/// that iteration's colour: every region that mattered, in one picture.
pub fn regions_overlay(base: &mut RgbImage, steps: &[&Step], alpha: f32) {
    let mut seen: Option<&Mask> = None;
    for s in steps {
        let new = match seen {
            Some(prev) => s.mask.minus(prev),
            None => s.mask.clone(),
        };
        overlay(base, &new, iteration_color(s.index), alpha);
        seen = Some(&s.cumulative);
    }
}

/// Tiles rows of images (each row left to right) with `gap` pixels of dark gray between.
pub fn montage(rows: &[Vec<RgbImage>], gap: u32) -> RgbImage {
    let cell_w = rows.iter().flatten().map(|i| i.width()).max().unwrap_or(1);
    let cell_h = rows.iter().flatten().map(|i| i.height()).max().unwrap_or(1);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let w = cols * cell_w + (cols + 1) * gap;
    let h = rows.len() as u32 * cell_h + (rows.len() as u32 + 1) * gap;
    let mut out = RgbImage::from_pixel(w.max(1), h.max(1), Rgb([32, 32, 32]));
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let x0 = gap + c as u32 * (cell_w + gap);
            let y0 = gap + r as u32 * (cell_h + gap);
            image::imageops::overlay(&mut out, img, x0 as i64, y0 as i64);
        }
    }
    out
}

/// One iteration's pictures, as the app's row and the montage's row show them: what the model
/// saw, the saliency map, the mask, and the image with every mask so far filled.
pub fn step_images(step: &Step, model: &ModelInfo) -> Result<[RgbImage; 4]> {
    Ok([
        input_rgb(&step.input, model)?,
        saliency_rgb(&step.saliency),
        mask_rgb(&step.mask),
        input_rgb(&step.masked, model)?,
    ])
}

/// Every iteration of a run, one row each ([`step_images`]).
pub fn run_montage(outcome: &Outcome, model: &ModelInfo) -> Result<RgbImage> {
    let rows = outcome
        .steps
        .iter()
        .map(|s| step_images(s, model).map(Vec::from))
        .collect::<Result<Vec<_>>>()?;
    Ok(montage(&rows, 4))
}

/// The sanity check as one picture: the original map, each randomisation's map and the
/// runner-up class's map side by side, each captioned with its correlation to the original.
pub fn check_picture(check: &Check) -> RgbImage {
    let r = &check.report;
    let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let mut cells: Vec<(RgbImage, [String; 3])> = vec![(
        saliency_rgb(&check.original),
        [
            "ORIGINAL".into(),
            format!("CLASS {}", r.target),
            String::new(),
        ],
    )];
    for (row, map) in r.randomisation.iter().zip(&check.randomised) {
        cells.push((
            saliency_rgb(map),
            [
                "RANDOM".into(),
                row.reinitialised.name().into(),
                format!("RHO {} SSIM {:.2}", num(row.spearman), row.ssim),
            ],
        ));
    }
    cells.push((
        saliency_rgb(&check.other),
        [
            "RUNNER-UP".into(),
            format!("CLASS {}", r.other_class.class),
            format!("RHO {}", num(r.other_class.spearman)),
        ],
    ));
    let (scale, gap) = (2, 12);
    let widest = cells
        .iter()
        .flat_map(|(_, lines)| lines.iter().map(|l| font::text_width(l, scale)))
        .max()
        .unwrap_or(0);
    let cell_w = cells
        .iter()
        .map(|(i, _)| i.width())
        .max()
        .unwrap_or(1)
        .max(widest);
    let cell_h = cells.iter().map(|(i, _)| i.height()).max().unwrap_or(1);
    let title = format!(
        "{} MAPS OF {} ({})",
        r.method.name(),
        r.target_label,
        r.target
    );
    let line = font::line_height(scale);
    let top = gap + line + gap;
    let w = cells.len() as u32 * (cell_w + gap) + gap;
    let h = top + cell_h + gap + 3 * line + gap;
    let mut out = RgbImage::from_pixel(w, h, Rgb([32, 32, 32]));
    let white = [230, 230, 230];
    font::draw(&mut out, gap, gap, &title, scale, white);
    for (k, (img, lines)) in cells.iter().enumerate() {
        let x0 = gap + k as u32 * (cell_w + gap);
        image::imageops::overlay(&mut out, img, x0 as i64, top as i64);
        for (j, text) in lines.iter().enumerate() {
            let y = top + cell_h + gap + j as u32 * line;
            font::draw(&mut out, x0, y, text, scale, white);
        }
    }
    out
}
