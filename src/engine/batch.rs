//! Batch runs over datasets: which images, which shard, what is already done, and the
//! results table.
//!
//! What must hold: the shard of an image depends only on its path as given (FNV-1a, so the same
//! on every machine and run), so N machines given the same inputs split the work with no
//! coordination; an image is done exactly when its `summary.json` exists (runs are written to a
//! temporary folder and renamed), so a stopped batch resumes where it stopped; `results.csv`
//! is rebuilt from every finished image in the folder, whichever shard wrote it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::engine::outcome::StopReason;
use crate::engine::summary::Summary;
use crate::error::{Error, Result};

const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "tif", "tiff", "dcm", "dicom"];

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The images named by `inputs`: image files, folders (searched recursively), and list files
/// (`.txt` / `.lst`, one path per line, relative to the list). Sorted, without duplicates.
pub fn collect(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("");
        if input.is_dir() {
            walk(input, &mut out)?;
        } else if matches!(ext, "txt" | "lst") {
            let text = std::fs::read_to_string(input).map_err(|e| Error::io(input, e))?;
            let base = input.parent().unwrap_or(Path::new("."));
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| base.join(l)),
            );
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            return Err(Error::io(
                input,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(Error::InvalidParam("no images found in the inputs".into()));
    }
    Ok(out)
}

/// The shard (0..n) an image belongs to.
pub fn shard_of(path: &Path, n: usize) -> usize {
    (fnv1a64(&path.to_string_lossy()) % n as u64) as usize
}

/// The image's output folder name: its file stem and a hash of its path (so `a/1.png` and
/// `b/1.png` never collide).
pub fn id(path: &Path) -> String {
    let stem: String = path
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    format!("{stem}-{:08x}", fnv1a64(&path.to_string_lossy()) as u32)
}

/// True when the image's run is complete in `out`.
pub fn done(out: &Path, path: &Path) -> bool {
    out.join(id(path)).join("summary.json").is_file()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Appends a failed image to `failed.csv`.
pub fn record_failure(out: &Path, path: &Path, error: &str) -> Result<()> {
    let file = out.join("failed.csv");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .map_err(|e| Error::io(&file, e))?;
    writeln!(
        f,
        "{},{}",
        csv_field(&path.to_string_lossy()),
        csv_field(error)
    )
    .map_err(|e| Error::io(&file, e))
}

/// A stop reason as summary.json spells it.
fn stop_name(r: StopReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Rebuilds `results.csv` from every finished run in `out`; returns the number of rows.
pub fn write_results(out: &Path) -> Result<usize> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("summary.json").is_file())
        .collect();
    dirs.sort();
    let mut csv = String::from(
        "image,id,target,label,p_initial,iterations,stop,p_after_masking,cumulative_coverage,total_ms,p_per_iteration\n",
    );
    for d in &dirs {
        let s = Summary::read(&d.join("summary.json"))?;
        let f = |v: f32| format!("{:.6}", v as f64);
        let row = [
            csv_field(&s.image),
            csv_field(&d.file_name().unwrap_or_default().to_string_lossy()),
            s.target.to_string(),
            csv_field(&s.target_label),
            s.iterations
                .first()
                .map(|i| f(i.p_target))
                .unwrap_or_default(),
            s.iterations.len().to_string(),
            stop_name(s.stop.reason),
            s.stop
                .after
                .as_ref()
                .map(|a| f(a.p_target))
                .unwrap_or_default(),
            s.iterations
                .last()
                .map(|i| f(i.cumulative_coverage))
                .unwrap_or_default(),
            format!("{:.0}", s.total_ms),
            // p(target) of iteration 0, 1, ... then with every mask applied, `;`-separated.
            csv_field(
                &s.iterations
                    .iter()
                    .map(|i| i.p_target)
                    .chain(s.stop.after.as_ref().map(|a| a.p_target))
                    .map(f)
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
        ];
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    let tmp = out.join(format!(".results.csv.{}", std::process::id()));
    std::fs::write(&tmp, csv).map_err(|e| Error::io(&tmp, e))?;
    let dest = out.join("results.csv");
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    tidy_failures(out, &dirs)?;
    Ok(dirs.len())
}

/// Rewrites `failed.csv` with one line per image (its latest failure), leaving out images that
/// have since finished: a resumed batch retries its failures and must not list them twice.
fn tidy_failures(out: &Path, finished: &[PathBuf]) -> Result<()> {
    let file = out.join("failed.csv");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(());
    };
    let done: std::collections::HashSet<String> = finished
        .iter()
        .filter_map(|d| Summary::read(&d.join("summary.json")).ok())
        .map(|s| csv_field(&s.image))
        .collect();
    let mut latest: Vec<(String, &str)> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        // The path is the first field (quoted when it holds a comma).
        let key = first_field(line);
        if done.contains(&key) {
            continue;
        }
        latest.retain(|(k, _)| *k != key);
        latest.push((key, line));
    }
    let body: String = latest.iter().map(|(_, l)| format!("{l}\n")).collect();
    let tmp = out.join(format!(".failed.csv.{}", std::process::id()));
    std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &file).map_err(|e| Error::io(&file, e))
}

/// The first CSV field of `line`, as written (quotes kept).
fn first_field(line: &str) -> String {
    if let Some(rest) = line.strip_prefix('"') {
        let mut end = 0;
        let b = rest.as_bytes();
        while end < b.len() {
            if b[end] == b'"' {
                if b.get(end + 1) == Some(&b'"') {
                    end += 2;
                    continue;
                }
                break;
            }
            end += 1;
        }
        format!("\"{}\"", &rest[..end.min(rest.len())])
    } else {
        line.split(',').next().unwrap_or_default().to_string()
    }
}
