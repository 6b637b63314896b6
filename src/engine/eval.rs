//! Evaluating saliency methods over datasets: per image and method, how faithful the maps are
//! and whether they pass the sanity checks, then means with bootstrap intervals per method.
//!
//! What must hold (as for batch runs, see [`crate::engine::batch`]): an image x method is done
//! exactly when its `eval.json` exists (written last, renamed into place), so a stopped
//! evaluation resumes; `results.csv` and `summary.csv` are rebuilt from every finished one in
//! the folder, whichever shard wrote it. Bootstrap resamples are seeded: the same results give
//! the same intervals.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::engine::dataset::{self, csv_field};
use crate::engine::explainer::Explainer;
use crate::engine::export;
use crate::engine::faithfulness;
use crate::engine::fill::Filler;
use crate::engine::models::Classifier;
use crate::engine::models::reinit::Cascade;
use crate::engine::outcome::Event;
use crate::engine::outcome::Outcome;
use crate::engine::params::{FillMode, Method, UnveilParams};
use crate::engine::rng::Normal;
use crate::engine::run::{CheckRecord, RunRecord, RunRequest};
use crate::engine::sanity::CheckEvent;
use crate::engine::sanity::CheckReport;
use crate::error::{Error, Result};

/// One image explained and checked with one method, and the row that compares it with others.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub run: RunRecord,
    pub check: CheckRecord,
    pub row: EvalRow,
}

impl Explainer {
    /// A run (faithfulness measured, whatever the request says), its sanity check, and the
    /// row comparing them: deletion and insertion in the order the run unveiled pixels, on the
    /// original input. The row's forward passes fall back to the CPU like the rest.
    pub fn evaluate(
        &self,
        req: &RunRequest,
        on_event: &mut dyn FnMut(Event),
        cancel: &AtomicBool,
    ) -> Result<Evaluation> {
        let params = UnveilParams {
            faithfulness: true,
            ..req.params.clone()
        };
        let req = RunRequest {
            params: &params,
            ..*req
        };
        let run = self.run(&req, on_event, cancel)?;
        let check = self.check(
            &req,
            &mut |e| {
                if let CheckEvent::FellBack(why) = e {
                    on_event(Event::FellBack(why))
                }
            },
            cancel,
        )?;
        let row = self.here_or_on_cpu(&mut |why| on_event(Event::FellBack(why)), &mut |e| {
            EvalRow::new(
                e.model().as_ref(),
                req.name,
                &run.outcome,
                &check.check.report,
                &params,
                (run.provenance.total_ms, check.provenance.total_ms),
                cancel,
            )
        })?;
        Ok(Evaluation { run, check, row })
    }
}

/// One image explained by one method: `eval.json`, and a row of `results.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub image: String,
    pub method: Method,
    pub target: usize,
    pub label: String,
    pub p_initial: f32,
    pub iterations: usize,
    /// Iteration 0's map: deletion and insertion AUCs.
    pub deletion_auc_0: f64,
    pub insertion_auc_0: f64,
    /// The pixels in the order the run unveiled them (see
    /// [`faithfulness::unveiling_order`]): deletion and insertion AUCs on the original input.
    pub deletion_auc_union: f64,
    pub insertion_auc_union: f64,
    /// Share of the image the run unveiled.
    pub unveiled_area: f32,
    /// p(target) with only the unveiled union visible / hidden, and the same for a region of
    /// the same area from iteration 0's map alone.
    pub unveiled_only_p: f32,
    pub unveiled_hidden_p: f32,
    pub single_map_only_p: f32,
    pub single_map_hidden_p: f32,
    /// Spearman's ρ between the map and the map with the head, head + last stage, last quarter
    /// re-initialised, and the map for the runner-up class.
    pub rho_head: Option<f64>,
    pub rho_last_stage: Option<f64>,
    pub rho_last_quarter: Option<f64>,
    pub rho_other_class: Option<f64>,
    pub run_ms: f64,
    pub check_ms: f64,
}

impl EvalRow {
    /// The row of a finished run with `params` (faithfulness measured) and its sanity check.
    /// Runs forward passes on `model` (the unveiling order's curves): the engine calls it
    /// through [`crate::engine::explainer::Explainer::evaluate`], which falls back to the CPU.
    pub(crate) fn new(
        model: &dyn Classifier,
        image: &str,
        outcome: &Outcome,
        check: &CheckReport,
        params: &UnveilParams,
        (run_ms, check_ms): (f64, f64),
        cancel: &AtomicBool,
    ) -> Result<Self> {
        let (method, fill) = (params.saliency.method, params.fill);
        let missing = || Error::Internal("the run did not measure faithfulness".into());
        let first = outcome.steps.first().ok_or_else(missing)?;
        let curves0 = first.faithfulness.as_ref().ok_or_else(missing)?;
        let unveiling = outcome.unveiling.ok_or_else(missing)?;
        // The unveiling order's curves, on the original input with the run's fill and blur.
        let x = &first.input;
        let fill = Filler::new(model.info(), x, fill)?;
        let blur = Filler::new(model.info(), x, FillMode::Blur)?;
        let maps: Vec<_> = outcome.steps.iter().map(|s| &s.saliency).collect();
        let unions: Vec<_> = outcome.steps.iter().map(|s| &s.cumulative).collect();
        let order = faithfulness::unveiling_order(&maps, &unions);
        let union = faithfulness::curves_in_order(
            model,
            x,
            &order,
            fill.fill_values(),
            blur.fill_values(),
            outcome.target,
            cancel,
        )?;
        Ok(EvalRow {
            image: image.to_string(),
            method,
            target: outcome.target,
            label: model.info().label(outcome.target),
            p_initial: first.p_target,
            iterations: outcome.steps.len(),
            deletion_auc_0: curves0.deletion_auc,
            insertion_auc_0: curves0.insertion_auc,
            deletion_auc_union: union.deletion_auc,
            insertion_auc_union: union.insertion_auc,
            unveiled_area: unveiling.unveiled_area,
            unveiled_only_p: unveiling.unveiled_only_p,
            unveiled_hidden_p: unveiling.unveiled_hidden_p,
            single_map_only_p: unveiling.single_map_only_p,
            single_map_hidden_p: unveiling.single_map_hidden_p,
            rho_head: check.rho(Cascade::Head),
            rho_last_stage: check.rho(Cascade::LastStage),
            rho_last_quarter: check.rho(Cascade::LastQuarter),
            rho_other_class: check.other_class.spearman,
            run_ms,
            check_ms,
        })
    }

    /// The numbers summarised per method, by name.
    fn metrics(&self) -> [(&'static str, Option<f64>); 13] {
        [
            ("deletion_auc_0", Some(self.deletion_auc_0)),
            ("insertion_auc_0", Some(self.insertion_auc_0)),
            ("deletion_auc_union", Some(self.deletion_auc_union)),
            ("insertion_auc_union", Some(self.insertion_auc_union)),
            ("unveiled_only_p", Some(self.unveiled_only_p as f64)),
            ("single_map_only_p", Some(self.single_map_only_p as f64)),
            ("unveiled_hidden_p", Some(self.unveiled_hidden_p as f64)),
            ("single_map_hidden_p", Some(self.single_map_hidden_p as f64)),
            ("rho_head", self.rho_head),
            ("rho_last_stage", self.rho_last_stage),
            ("rho_last_quarter", self.rho_last_quarter),
            ("rho_other_class", self.rho_other_class),
            ("seconds", Some((self.run_ms + self.check_ms) / 1e3)),
        ]
    }
}

/// Where an image x method's results go: `out/<image id>/<method>/`.
pub fn folder(out: &Path, image_id: &str, method: Method) -> PathBuf {
    out.join(image_id).join(method.name())
}

/// True when the image x method is finished in `dir` (see [`folder`]).
pub fn done(dir: &Path) -> bool {
    dir.join("eval.json").is_file()
}

/// Writes an evaluation into `dir`: the run (`run/`, with raw arrays when `raw`), its check
/// (`check/`), and `eval.json` last (written aside, renamed into place), so a folder with an
/// `eval.json` is complete. Leftovers of an interrupted attempt are replaced.
pub fn write(dir: &Path, e: &Evaluation, raw: bool) -> Result<()> {
    export::write_run(&dir.join("run"), &e.run, raw, true)?;
    export::write_check(&dir.join("check"), &e.check, true)?;
    let text = serde_json::to_string_pretty(&e.row).expect("a row always serialises");
    dataset::write_atomically(dir, "eval.json", &text)
}

/// Every finished row under `out`, by image folder then method.
pub fn read_rows(out: &Path) -> Result<Vec<EvalRow>> {
    let mut files = Vec::new();
    for image in std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .flatten()
    {
        if let Ok(methods) = std::fs::read_dir(image.path()) {
            files.extend(
                methods
                    .flatten()
                    .map(|m| m.path().join("eval.json"))
                    .filter(|p| p.is_file()),
            );
        }
    }
    files.sort();
    files
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            serde_json::from_slice(&bytes).map_err(|e| Error::Summary {
                path: p.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// A mean with its 95 % bootstrap percentile interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub n: usize,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// The mean of `values` and a 95 % percentile interval from `resamples` seeded bootstrap
/// resamples (with replacement, same size).
pub fn bootstrap(values: &[f64], resamples: usize, seed: u64) -> Option<Estimate> {
    if values.is_empty() {
        return None;
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = Normal::new(seed, 0xB007);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            (0..n)
                .map(|_| values[((rng.uniform() * n as f64) as usize).min(n - 1)])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((resamples - 1) as f64 * q).round() as usize];
    Some(Estimate {
        n,
        mean,
        low: at(0.025),
        high: at(0.975),
    })
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.6}"))
}

/// Rewrites `results.csv` (a row per image x method) and `summary.csv` (per method and
/// metric: n, mean, 95 % bootstrap interval) from every finished row under `out`; returns the
/// summary as a Markdown table.
pub fn write_tables(out: &Path) -> Result<String> {
    let rows = read_rows(out)?;
    let mut results = String::from(
        "image,method,target,label,p_initial,iterations,deletion_auc_0,insertion_auc_0,\
         deletion_auc_union,insertion_auc_union,unveiled_area,unveiled_only_p,unveiled_hidden_p,\
         single_map_only_p,single_map_hidden_p,rho_head,rho_last_stage,rho_last_quarter,\
         rho_other_class,run_ms,check_ms\n",
    );
    for r in &rows {
        let fields = [
            csv_field(&r.image),
            r.method.name().to_string(),
            r.target.to_string(),
            csv_field(&r.label),
            format!("{:.6}", r.p_initial),
            r.iterations.to_string(),
            format!("{:.6}", r.deletion_auc_0),
            format!("{:.6}", r.insertion_auc_0),
            format!("{:.6}", r.deletion_auc_union),
            format!("{:.6}", r.insertion_auc_union),
            format!("{:.6}", r.unveiled_area),
            format!("{:.6}", r.unveiled_only_p),
            format!("{:.6}", r.unveiled_hidden_p),
            format!("{:.6}", r.single_map_only_p),
            format!("{:.6}", r.single_map_hidden_p),
            opt(r.rho_head),
            opt(r.rho_last_stage),
            opt(r.rho_last_quarter),
            opt(r.rho_other_class),
            format!("{:.0}", r.run_ms),
            format!("{:.0}", r.check_ms),
        ];
        results.push_str(&fields.join(","));
        results.push('\n');
    }
    let mut summary = String::from("method,metric,n,mean,ci_low,ci_high\n");
    let mut methods: Vec<Method> = rows.iter().map(|r| r.method).collect();
    methods.sort_by_key(|m| Method::ALL.iter().position(|a| a == m));
    methods.dedup();
    let names: Vec<&str> = rows
        .first()
        .map(|r| r.metrics().iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    let mut table = format!(
        "| metric | {} |\n|---|",
        methods
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    table.push_str(&"---|".repeat(methods.len()));
    table.push('\n');
    for (k, name) in names.iter().enumerate() {
        table.push_str(&format!("| {name} |"));
        for m in &methods {
            let values: Vec<f64> = rows
                .iter()
                .filter(|r| r.method == *m)
                .filter_map(|r| r.metrics()[k].1)
                .collect();
            match bootstrap(&values, 2000, 0) {
                Some(e) => {
                    summary.push_str(&format!(
                        "{},{name},{},{:.6},{:.6},{:.6}\n",
                        m.name(),
                        e.n,
                        e.mean,
                        e.low,
                        e.high
                    ));
                    table.push_str(&format!(" {:.3} [{:.3}, {:.3}] |", e.mean, e.low, e.high));
                }
                None => table.push_str(" - |"),
            }
        }
        table.push('\n');
    }
    dataset::write_atomically(out, "results.csv", &results)?;
    dataset::write_atomically(out, "summary.csv", &summary)?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_interval_holds_the_mean_and_is_seeded() {
        let v: Vec<f64> = (0..40).map(|i| (i % 7) as f64).collect();
        let e = bootstrap(&v, 2000, 0).unwrap();
        assert!(e.low < e.mean && e.mean < e.high, "{e:?}");
        assert_eq!(Some(e), bootstrap(&v, 2000, 0));
        let one = bootstrap(&[0.5], 100, 0).unwrap();
        assert_eq!((one.low, one.mean, one.high), (0.5, 0.5, 0.5));
        assert!(bootstrap(&[], 100, 0).is_none());
    }
}
