//! Batch runs' results: when an image is done, and the results table.
//!
//! What must hold (the dataset rules are [`crate::engine::dataset`]'s): an image is done
//! exactly when its `summary.json` exists (runs are written to a temporary folder and
//! renamed), so a stopped batch resumes where it stopped; `results.csv` is rebuilt from every
//! finished image in the folder, whichever shard wrote it.

use std::path::{Path, PathBuf};

use crate::engine::dataset::{self, csv_field};
use crate::engine::outcome::StopReason;
use crate::engine::summary::Summary;
use crate::error::{Error, Result};

/// The folder of an image's run in `out`.
pub fn folder(out: &Path, image: &Path) -> PathBuf {
    out.join(dataset::id(image))
}

/// True when the image's run is complete in `out`.
pub fn done(out: &Path, image: &Path) -> bool {
    folder(out, image).join("summary.json").is_file()
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
    dataset::write_atomically(out, "results.csv", &csv)?;
    let finished = dirs
        .iter()
        .filter_map(|d| Summary::read(&d.join("summary.json")).ok())
        .map(|s| csv_field(&s.image))
        .collect();
    dataset::tidy_failures(out, &finished)?;
    Ok(dirs.len())
}
