//! Turning engine results into RGB pictures: colour maps, masks, overlays, montages.
//! Shared by the CLI's files and the app's textures.

use candle_core::Tensor;
use image::{Rgb, RgbImage};

use crate::engine::font;
use crate::engine::maps::{Mask, SaliencyMap};
use crate::engine::models::{Crop, ModelInfo};
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

/// The saliency map over `base` (the model's input): each pixel takes the colour of its
/// saliency in proportion to it, times `opacity`, so low-saliency regions keep the image.
pub fn saliency_overlay(base: &RgbImage, s: &SaliencyMap, opacity: f32) -> RgbImage {
    let a = opacity.clamp(0.0, 1.0);
    RgbImage::from_fn(s.width as u32, s.height as u32, |x, y| {
        let v = s.data[y as usize * s.width + x as usize];
        let heat = inferno(v);
        let b = base
            .get_pixel(x.min(base.width() - 1), y.min(base.height() - 1))
            .0;
        let w = a * v.clamp(0.0, 1.0);
        Rgb(std::array::from_fn(|c| {
            (b[c] as f32 * (1.0 - w) + heat[c] as f32 * w).round() as u8
        }))
    })
}

/// The saliency colour scale, 0 (left) to 1 (right), as a `width` x `height` strip.
pub fn colour_bar(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width.max(1), height.max(1), |x, _| {
        Rgb(inferno(x as f32 / (width.max(2) - 1) as f32))
    })
}

/// What 1.0 on the colour scale means.
pub const SCALE_NOTE: &str = "1.0 = the map's 99th percentile (brighter pixels are clipped)";

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

/// The all-regions picture: `image` cropped as the model framed it, each iteration's region
/// over it in its colour (the app's view, and its export at the image's resolution).
pub fn regions_picture(image: &RgbImage, crop: Crop, steps: &[&Step], alpha: f32) -> RgbImage {
    let (x, y, w, h) = crate::engine::image::crop_rect(crop, image.width(), image.height());
    let mut pic = image::imageops::crop_imm(image, x, y, w, h).to_image();
    regions_overlay(&mut pic, steps, alpha);
    pic
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

/// Every iteration of a run, one row each ([`step_images`]), labelled so that the file stands
/// on its own: the class, the column titles, iteration and p(target) on each row, and the
/// saliency colour scale. `overlay` > 0 draws the maps over the image at that opacity.
pub fn run_montage(outcome: &Outcome, model: &ModelInfo, overlay: f32) -> Result<RgbImage> {
    let rows = outcome
        .steps
        .iter()
        .map(|s| {
            let mut r = step_images(s, model)?;
            if overlay > 0.0 {
                r[1] = saliency_overlay(&r[0], &s.saliency, overlay);
            }
            Ok(Vec::from(r))
        })
        .collect::<Result<Vec<_>>>()?;
    let grid = montage(&rows, 4);
    let (scale, gap) = (2u32, 8u32);
    let line = font::line_height(scale);
    let left = font::text_width("ITER 00", scale) + 2 * gap;
    let cell_w = rows.iter().flatten().map(|i| i.width()).max().unwrap_or(1);
    let cell_h = rows.iter().flatten().map(|i| i.height()).max().unwrap_or(1);
    let top = gap + 2 * line + gap;
    let bar_h = 12;
    let bottom = gap + bar_h + gap + line + gap;
    let w = (left + grid.width()).max(font::text_width(&title_of(outcome, model), scale) + 2 * gap);
    let mut out = RgbImage::from_pixel(w, top + grid.height() + bottom, Rgb([32, 32, 32]));
    let white = [230, 230, 230];
    font::draw(&mut out, gap, gap, &title_of(outcome, model), scale, white);
    for (c, name) in ["MODEL INPUT", "SALIENCY", "MASK", "MASKED"]
        .iter()
        .enumerate()
    {
        let x = left + 4 + c as u32 * (cell_w + 4);
        font::draw(&mut out, x, gap + line, name, scale, white);
    }
    image::imageops::overlay(&mut out, &grid, left as i64, top as i64);
    for (r, s) in outcome.steps.iter().enumerate() {
        let y = top + 4 + r as u32 * (cell_h + 4);
        font::draw(&mut out, gap, y, &format!("ITER {}", s.index), scale, white);
        font::draw(
            &mut out,
            gap,
            y + line,
            &format!("P {:.3}", s.p_target),
            scale,
            white,
        );
    }
    let y = top + grid.height() + gap;
    let bar = colour_bar(grid.width().min(w - left).max(2) / 2, bar_h);
    image::imageops::overlay(&mut out, &bar, left as i64, y as i64);
    font::draw(&mut out, left, y + bar_h + gap, "0", scale, white);
    let one = "1.0 = 99TH PERCENTILE";
    font::draw(
        &mut out,
        (left + bar.width()).saturating_sub(font::text_width(one, scale) / 2),
        y + bar_h + gap,
        one,
        scale,
        white,
    );
    Ok(out)
}

fn title_of(outcome: &Outcome, model: &ModelInfo) -> String {
    format!(
        "{} ({}): {}",
        model.label(outcome.target),
        outcome.target,
        model.name
    )
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
