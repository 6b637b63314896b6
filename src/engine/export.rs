//! Writing a run to a folder: the files the CLI produces and the app exports.
//!
//! Layout: `summary.json`, `montage.png`, and per iteration `iter_NN/` with `input.png` (what
//! the model saw), `saliency.png`, `mask.png` (this iteration's mask) and `masked.png` (the
//! image with every mask so far filled: the next iteration's input); with `raw`, also float32
//! `.npy` arrays `input`, `attribution` (what the map is made of; also as `gradient` when it is
//! the SmoothGrad-averaged gradient), `saliency`, `mask`.
//!
//! Files go to a temporary sibling folder which is renamed into place at the end, so a failed
//! export never leaves a half-written folder under the requested name, and an existing run is
//! never overwritten unless asked.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::engine::params::{Method, Reduction, SaliencyParams};
use crate::engine::render;
use crate::engine::run::{CheckRecord, RunRecord};
use crate::engine::sanity::{CheckReport, Verdict};
use crate::engine::summary::Summary;
use crate::error::{Error, Result};

/// Writes the run into `out`. Refuses a folder that already holds files unless `overwrite`.
pub fn write_run(out: &Path, run: &RunRecord, raw: bool, overwrite: bool) -> Result<()> {
    refuse_occupied(out, overwrite)?;
    let tmp = sibling(out, "partial");
    let result = write_into(&tmp, run, raw).and_then(|()| replace_dir(&tmp, out));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// `check.json`: what was checked, the check's report, and its verdict as a word and in words.
#[derive(serde::Serialize)]
struct CheckFile<'a> {
    unveil_version: &'static str,
    image: &'a str,
    model: &'a str,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fell_back: Option<&'a str>,
    params: &'a crate::engine::params::UnveilParams,
    #[serde(flatten)]
    report: &'a CheckReport,
    verdict_kind: Verdict,
    verdict: String,
    total_ms: f64,
}

/// Writes a sanity check into `out`: `check.json` and `check.png`. Refuses a folder that
/// already holds files unless `overwrite`; written aside and renamed into place, like a run.
pub fn write_check(out: &Path, record: &CheckRecord, overwrite: bool) -> Result<()> {
    refuse_occupied(out, overwrite)?;
    let tmp = sibling(out, "partial");
    let (check, p) = (&record.check, &record.provenance);
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        save_png(&render::check_picture(check), &tmp.join("check.png"))?;
        let file = CheckFile {
            unveil_version: env!("CARGO_PKG_VERSION"),
            image: &p.image,
            model: &p.model.name,
            device: &p.device,
            fell_back: p.fell_back.as_deref(),
            params: &p.params,
            report: &check.report,
            verdict_kind: check.report.verdict(),
            verdict: check.report.verdict_text(),
            total_ms: p.total_ms,
        };
        let text = serde_json::to_string_pretty(&file).expect("a check always serialises");
        let path = tmp.join("check.json");
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        replace_dir(&tmp, out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// An error when `out` holds files and `overwrite` is not given.
fn refuse_occupied(out: &Path, overwrite: bool) -> Result<()> {
    if out.exists() && !overwrite {
        let occupied = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
        if occupied {
            return Err(Error::OutputExists(out.to_path_buf()));
        }
    }
    Ok(())
}

/// True when the attribution is the SmoothGrad-averaged input gradient itself.
fn is_gradient(p: &SaliencyParams) -> bool {
    matches!(p.method, Method::Guided | Method::Vanilla) && p.reduction == Reduction::Mean
}

/// A hidden sibling of `out` for this process: `.NAME.KIND-PID`.
fn sibling(out: &Path, kind: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    out.with_file_name(format!(".{name}.{kind}-{}", std::process::id()))
}

/// Puts the folder `new` in place of `dest`. An existing `dest` is renamed aside first and
/// removed only once `new` is in place; if that fails, it is renamed back, so at every moment
/// one complete run sits under its name or next to it, never none.
pub fn replace_dir(new: &Path, dest: &Path) -> Result<()> {
    if !dest.exists() {
        return std::fs::rename(new, dest).map_err(|e| Error::io(dest, e));
    }
    let aside = sibling(dest, "old");
    std::fs::rename(dest, &aside).map_err(|e| Error::io(dest, e))?;
    if let Err(e) = std::fs::rename(new, dest) {
        let _ = std::fs::rename(&aside, dest);
        return Err(Error::io(dest, e));
    }
    // The new run is in place; failing to delete the old copy loses nothing.
    let _ = std::fs::remove_dir_all(&aside);
    Ok(())
}

fn write_into(dir: &Path, run: &RunRecord, raw: bool) -> Result<()> {
    let (outcome, p) = (&run.outcome, &run.provenance);
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(|e| Error::io(p, e));
    mkdir(dir)?;
    for step in &outcome.steps {
        let sub = dir.join(format!("iter_{:02}", step.index));
        mkdir(&sub)?;
        let [input, saliency, mask, masked] = render::step_images(step, &p.model)?;
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
            write_npy(&sub.join("attribution.npy"), &step.attribution)?;
            if is_gradient(&p.params.saliency) {
                write_npy(&sub.join("gradient.npy"), &step.attribution)?;
            }
            let (h, w) = (step.saliency.height, step.saliency.width);
            write_npy_data(&sub.join("saliency.npy"), &[h, w], &step.saliency.data)?;
            let m: Vec<f32> = step.mask.data.iter().map(|&b| b as u8 as f32).collect();
            write_npy_data(&sub.join("mask.npy"), &[h, w], &m)?;
        }
    }
    save_png(
        &render::run_montage(outcome, &p.model, 0.0)?,
        &dir.join("montage.png"),
    )?;
    let path = dir.join("summary.json");
    std::fs::write(&path, Summary::new(run).to_json()).map_err(|e| Error::io(&path, e))
}

pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })
}

/// Writes `img` to a temporary file next to `path`, then renames it into place: never a
/// half-written file under the name.
pub fn save_png_atomically(img: &image::RgbImage, path: &Path) -> Result<()> {
    let tmp = path.with_extension(format!("partial-{}.png", std::process::id()));
    save_png(img, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
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
