//! Writing a run to a folder: the files the CLI produces and the app exports.
//!
//! Layout: `summary.json`, `montage.png`, and per iteration `iter_NN/` with `input.png` (what
//! the model saw), `saliency.png`, `mask.png` (this iteration's mask) and `masked.png` (the
//! image with every mask so far filled: the next iteration's input); with `raw`, also float32
//! `.npy` arrays `input`, `gradient`, `saliency`, `mask`.
//!
//! Files go to a temporary sibling folder which is renamed into place at the end, so a failed
//! export never leaves a half-written folder under the requested name, and an existing run is
//! never overwritten unless asked.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::{Value, json};

use crate::engine::models::ModelInfo;
use crate::engine::params::UnveilParams;
use crate::engine::render;
use crate::engine::unveil::{Outcome, Step};
use crate::error::{Error, Result};

/// Everything written next to the pictures.
pub struct RunInfo<'a> {
    pub image: &'a str,
    pub device: &'a str,
    pub params: &'a UnveilParams,
    pub model: &'a ModelInfo,
    pub total_ms: f64,
}

/// The machine-readable summary of a run.
pub fn summary(outcome: &Outcome, info: &RunInfo) -> Value {
    let iterations: Vec<Value> = outcome
        .steps
        .iter()
        .map(|s| {
            json!({
                "index": s.index,
                "top5": s.top5,
                "p_target": s.p_target,
                "mask_coverage": s.mask.coverage(),
                "cumulative_coverage": s.cumulative.coverage(),
                "gradient_cached": s.cached,
                "timings": s.timings,
            })
        })
        .collect();
    json!({
        "unveil_version": env!("CARGO_PKG_VERSION"),
        "image": info.image,
        "device": info.device,
        "model": {
            "name": info.model.name,
            "description": info.model.description,
            "input_size": [info.model.input_size.0, info.model.input_size.1],
        },
        "params": info.params,
        "target": outcome.target,
        "target_label": info.model.label(outcome.target),
        "iterations": iterations,
        "stop": { "reason": outcome.stop, "after": outcome.after },
        "total_ms": info.total_ms,
    })
}

/// One row of the montage: input, saliency, mask, masked image.
pub fn step_images(step: &Step, model: &ModelInfo) -> Result<[image::RgbImage; 4]> {
    Ok([
        render::input_rgb(&step.input, model)?,
        render::saliency_rgb(&step.saliency),
        render::mask_rgb(&step.mask),
        render::input_rgb(&step.masked, model)?,
    ])
}

pub fn montage(outcome: &Outcome, model: &ModelInfo) -> Result<image::RgbImage> {
    let rows = outcome
        .steps
        .iter()
        .map(|s| step_images(s, model).map(Vec::from))
        .collect::<Result<Vec<_>>>()?;
    Ok(render::montage(&rows, 4))
}

/// Writes the run into `out`. Refuses a folder that already holds files unless `overwrite`.
pub fn write_run(
    out: &Path,
    outcome: &Outcome,
    info: &RunInfo,
    raw: bool,
    overwrite: bool,
) -> Result<()> {
    if out.exists() {
        let occupied = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
        if occupied && !overwrite {
            return Err(Error::InvalidParam(format!(
                "output folder {} is not empty; choose another or allow overwriting",
                out.display()
            )));
        }
    }
    let tmp = temp_sibling(out);
    let result = write_into(&tmp, outcome, info, raw);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

fn temp_sibling(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    out.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

fn write_into(dir: &Path, outcome: &Outcome, info: &RunInfo, raw: bool) -> Result<()> {
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(|e| Error::io(p, e));
    mkdir(dir)?;
    for step in &outcome.steps {
        let sub = dir.join(format!("iter_{:02}", step.index));
        mkdir(&sub)?;
        let [input, saliency, mask, masked] = step_images(step, info.model)?;
        for (name, img) in [
            ("input", input),
            ("saliency", saliency),
            ("mask", mask),
            ("masked", masked),
        ] {
            save_png(&img, &sub.join(format!("{name}.png")))?;
        }
        if raw {
            write_npy(&sub.join("input.npy"), &step.input)?;
            write_npy(&sub.join("gradient.npy"), &step.gradient)?;
            let (h, w) = (step.saliency.height, step.saliency.width);
            write_npy_data(&sub.join("saliency.npy"), &[h, w], &step.saliency.data)?;
            let m: Vec<f32> = step.mask.data.iter().map(|&b| b as u8 as f32).collect();
            write_npy_data(&sub.join("mask.npy"), &[h, w], &m)?;
        }
    }
    save_png(&montage(outcome, info.model)?, &dir.join("montage.png"))?;
    let text =
        serde_json::to_string_pretty(&summary(outcome, info)).expect("summary is valid JSON");
    let path = dir.join("summary.json");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })
}

fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let data: Vec<f32> = t.flatten_all()?.to_vec1()?;
    write_npy_data(path, t.dims(), &data)
}

/// A little-endian float32 `.npy` file (format version 1.0).
pub fn write_npy_data(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&bytes).map_err(|e| Error::io(path, e))
}
