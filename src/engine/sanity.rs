//! Sanity checks for saliency maps (Adebayo et al., 2018): does a map show the model's reasons,
//! or image structure that any network would highlight?
//!
//! - *Model randomisation* (cascading): the same map is computed with the classifier head
//!   re-initialised, then also the last stage, then the last quarter of the network
//!   ([`crate::engine::models::reinit`]). A map that stays the same (high Spearman rank
//!   correlation and SSIM with the original) does not depend on what the model learned there.
//! - *Class sensitivity*: the map for the runner-up class. A map that is the same for both
//!   classes does not tell them apart.
//!
//! Spearman's correlation compares the unscaled maps (max over channels of |attribution|);
//! SSIM compares the maps as shown, in [0, 1].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::engine::maps::SaliencyMap;
use crate::engine::models::Classifier;
use crate::engine::models::reinit::Cascade;
use crate::engine::params::{Method, SaliencyParams};
use crate::engine::predict::{classify, top_k};
use crate::engine::saliency;
use crate::engine::similarity::{spearman, ssim};
use crate::error::{Error, Result};

/// One randomisation of the cascade and how alike its map is to the original.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Randomised {
    pub reinitialised: Cascade,
    /// Weight tensors re-initialised.
    pub tensors: usize,
    /// `None` where a map is constant (the correlation is undefined).
    pub spearman: Option<f64>,
    pub ssim: f64,
}

/// The map for the runner-up class, against the target's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OtherClass {
    pub class: usize,
    pub label: String,
    pub spearman: Option<f64>,
}

/// What a check found (`check.json` holds it with the verdict in words).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub method: Method,
    pub target: usize,
    pub target_label: String,
    pub randomisation: Vec<Randomised>,
    pub other_class: OtherClass,
    /// The original map has one value everywhere, so no correlation with it is defined.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub constant_map: bool,
}

impl CheckReport {
    /// Spearman's ρ between the map and the map with `level` of the model randomised (`None`
    /// when undefined: a constant map, or that level was not checked).
    pub fn rho(&self, level: Cascade) -> Option<f64> {
        self.randomisation
            .iter()
            .find(|r| r.reinitialised == level)
            .and_then(|r| r.spearman)
    }

    /// What the numbers say, by the head's randomisation (see [`Verdict`]).
    pub fn verdict(&self) -> Verdict {
        if self.constant_map {
            Verdict::Constant
        } else {
            Verdict::of_rho(self.rho(Cascade::Head))
        }
    }

    /// The numbers in plain words (see [`verdict_text`]).
    pub fn verdict_text(&self) -> String {
        verdict_text(self)
    }
}

/// How much a map depends on the model, judged by its rank correlation ρ with the map of the
/// model whose classifier head was randomised. The thresholds live here and nowhere else: a ρ
/// of 0.9 or more "barely changes"; below 0.5 the map "changes" (Adebayo et al. report
/// trained-vs-random correlations well under 0.5 for methods that pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The original map is the same everywhere: the check cannot compare it.
    Constant,
    /// With a random head the map becomes constant (ρ undefined): it depends on the model.
    Vanishes,
    /// ρ >= 0.9: the map shows image structure more than the model's decision (fails).
    BarelyChanges,
    /// 0.5 <= ρ < 0.9: part of it is image structure.
    ChangesPartly,
    /// ρ < 0.5: the map depends on what the model learned (passes).
    Changes,
}

impl Verdict {
    /// From this ρ up, a randomisation "barely changes" the map (and a runner-up class whose
    /// map correlates this much is "nearly the same").
    pub const SAME: f64 = 0.9;
    /// Below this ρ, the map "changes".
    pub const DIFFERENT: f64 = 0.5;

    /// The verdict for a head-randomisation ρ (`None`: undefined because the map vanished).
    pub fn of_rho(rho: Option<f64>) -> Verdict {
        match rho {
            None => Verdict::Vanishes,
            Some(r) if r >= Self::SAME => Verdict::BarelyChanges,
            Some(r) if r >= Self::DIFFERENT => Verdict::ChangesPartly,
            Some(_) => Verdict::Changes,
        }
    }

    /// True when the map passes: it depends on what the model learned.
    pub fn passes(self) -> bool {
        matches!(self, Verdict::Vanishes | Verdict::Changes)
    }
}

/// What a check reports while it works.
pub enum CheckEvent<'a> {
    Progress(CheckProgress),
    /// The GPU failed (the reason): the check starts again on the CPU.
    FellBack(&'a str),
}

/// A finished check: the report and the maps it compared (original, each randomisation,
/// the runner-up class), as shown.
#[derive(Clone, Debug)]
pub struct Check {
    pub report: CheckReport,
    pub original: SaliencyMap,
    pub randomised: Vec<SaliencyMap>,
    pub other: SaliencyMap,
}

/// Where a check is: map `stage` of `stages`, chunk `chunk` of `chunks` within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckProgress {
    pub stage: usize,
    pub stages: usize,
    pub chunk: usize,
    pub chunks: usize,
}

impl CheckProgress {
    /// Done so far, in [0, 1].
    pub fn fraction(&self) -> f32 {
        (self.stage as f32 + self.chunk as f32 / self.chunks.max(1) as f32)
            / self.stages.max(1) as f32
    }
}

/// Runs both checks on one normalised image `x` (`[3, h, w]`) with `params`' method and
/// settings; `target` `None` is the top-1 class. `randomised(cascade)` builds the model with
/// those layers re-initialised. `baseline` is integrated gradients' starting point.
#[allow(clippy::too_many_arguments)]
pub fn check(
    model: &dyn Classifier,
    randomised: &dyn Fn(Cascade) -> Result<Arc<dyn Classifier>>,
    x: &Tensor,
    baseline: &Tensor,
    target: Option<usize>,
    params: &SaliencyParams,
    progress: &mut dyn FnMut(CheckProgress),
    cancel: &AtomicBool,
) -> Result<Check> {
    let probs = classify(model, x)?;
    let target = target.unwrap_or_else(|| top_k(model, &probs, 1)[0].class);
    if target >= probs.len() {
        return Err(Error::ClassOutOfRange {
            class: target,
            num_classes: probs.len(),
        });
    }
    let runner_up = top_k(model, &probs, 2)
        .into_iter()
        .find(|p| p.class != target)
        .ok_or_else(|| Error::InvalidParam("the class check needs a second class".into()))?;
    let stages = Cascade::ALL.len() + 2;
    let mut map =
        |stage: usize, m: &dyn Classifier, class: usize| -> Result<(SaliencyMap, SaliencyMap)> {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let mut report = |chunk, chunks| {
                progress(CheckProgress {
                    stage,
                    stages,
                    chunk,
                    chunks,
                })
            };
            let x = x.to_device(m.device())?;
            let b = baseline.to_device(m.device())?;
            let a = saliency::attribution(m, &x, class, params, &b, &mut report, cancel)?;
            Ok((
                saliency::magnitude(&a.values)?,
                saliency::saliency_map(&a.values)?,
            ))
        };
    let (raw, original) = map(0, model, target)?;
    let mut rows = Vec::new();
    let mut maps = Vec::new();
    for (i, cascade) in Cascade::ALL.into_iter().enumerate() {
        let m = randomised(cascade)?;
        let (r, shown) = map(1 + i, m.as_ref(), target)?;
        rows.push(Randomised {
            reinitialised: cascade,
            tensors: model.reinit_scope(cascade).map_or(0, |s| s.len()),
            spearman: spearman(&raw.data, &r.data),
            ssim: ssim(&original.data, &shown.data, original.width, original.height),
        });
        maps.push(shown);
    }
    let (other_raw, other) = map(stages - 1, model, runner_up.class)?;
    let other_class = OtherClass {
        class: runner_up.class,
        label: runner_up.label,
        spearman: spearman(&raw.data, &other_raw.data),
    };
    progress(CheckProgress {
        stage: stages,
        stages,
        chunk: 0,
        chunks: 1,
    });
    let constant_map = raw.data.iter().all(|&v| v == raw.data[0]);
    Ok(Check {
        report: CheckReport {
            method: params.method,
            target,
            target_label: model.info().label(target),
            randomisation: rows,
            other_class,
            constant_map,
        },
        original,
        randomised: maps,
        other,
    })
}

fn rho_text(r: Option<f64>) -> String {
    r.map_or("undefined (the map vanished)".to_string(), |r| {
        format!("{r:.2}")
    })
}

/// The check's numbers in plain words: the head's [`Verdict`], the deepest randomisation's ρ,
/// and whether the map tells the target from the runner-up class.
pub fn verdict_text(report: &CheckReport) -> String {
    let head = report.rho(Cascade::Head);
    let mut text = match report.verdict() {
        Verdict::Constant => {
            return "The map is the same everywhere, so the check cannot compare it.".to_string();
        }
        Verdict::Vanishes => "This map vanishes when the classifier head is randomised (it \
                              becomes the same everywhere): it depends on what the model learned."
            .to_string(),
        Verdict::BarelyChanges => format!(
            "This map barely changes when the classifier head is randomised (ρ = {}): it shows \
             image structure more than the model's decision.",
            rho_text(head)
        ),
        Verdict::ChangesPartly => format!(
            "This map changes only partly when the classifier head is randomised (ρ = {}): \
             part of it is image structure, not the model's decision.",
            rho_text(head)
        ),
        Verdict::Changes => format!(
            "This map changes when the classifier head is randomised (ρ = {}): it depends on \
             what the model learned.",
            rho_text(head)
        ),
    };
    if let Some(d) = report
        .randomisation
        .last()
        .filter(|d| d.reinitialised != Cascade::Head)
    {
        text.push_str(&format!(
            " With {} randomised, ρ = {}.",
            d.reinitialised.describe(),
            rho_text(d.spearman)
        ));
    }
    let other = &report.other_class;
    text.push_str(&match other.spearman {
        Some(r) if r >= Verdict::SAME => format!(
            " It is nearly the same for the runner-up class, {} (ρ = {r:.2}): it does not tell \
             the classes apart.",
            other.label
        ),
        r => format!(
            " For the runner-up class, {}, it differs (ρ = {}).",
            other.label,
            rho_text(r)
        ),
    });
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(head: Option<f64>, deepest: Option<f64>, other: Option<f64>) -> CheckReport {
        let row = |c, spearman| Randomised {
            reinitialised: c,
            tensors: 1,
            spearman,
            ssim: 0.0,
        };
        CheckReport {
            method: Method::Vanilla,
            target: 0,
            target_label: "Egyptian cat".into(),
            randomisation: vec![
                row(Cascade::Head, head),
                row(Cascade::LastStage, head),
                row(Cascade::LastQuarter, deepest),
            ],
            other_class: OtherClass {
                class: 1,
                label: "tiger cat".into(),
                spearman: other,
            },
            constant_map: false,
        }
    }

    #[test]
    fn the_verdict_says_what_the_numbers_show() {
        let r = report(Some(0.99), Some(0.93), Some(0.999));
        assert_eq!(r.verdict(), Verdict::BarelyChanges);
        assert!(!r.verdict().passes());
        let v = r.verdict_text();
        assert!(
            v.contains("barely changes") && v.contains("ρ = 0.99"),
            "{v}"
        );
        assert!(
            v.contains("last quarter of the network randomised, ρ = 0.93"),
            "{v}"
        );
        assert!(v.contains("does not tell the classes apart"), "{v}");
        let r = report(Some(0.3), Some(0.1), Some(0.4));
        assert_eq!(r.verdict(), Verdict::Changes);
        assert!(r.verdict().passes());
        let v = r.verdict_text();
        assert!(
            v.contains("depends on what the model learned") && v.contains("differs"),
            "{v}"
        );
        let r = report(Some(0.7), Some(0.6), Some(0.4));
        assert_eq!(r.verdict(), Verdict::ChangesPartly);
        assert!(r.verdict_text().contains("changes only partly"));
        // A random head that leaves Grad-CAM nothing to show: the map vanished.
        let r = report(None, None, Some(0.4));
        assert_eq!(r.verdict(), Verdict::Vanishes);
        assert!(r.verdict_text().contains("vanishes"));
        let r = CheckReport {
            constant_map: true,
            ..report(None, None, None)
        };
        assert_eq!(r.verdict(), Verdict::Constant);
        assert!(r.verdict_text().contains("cannot compare"));
    }

    #[test]
    fn thresholds_are_inclusive_from_below() {
        assert_eq!(Verdict::of_rho(Some(0.9)), Verdict::BarelyChanges);
        assert_eq!(Verdict::of_rho(Some(0.8999)), Verdict::ChangesPartly);
        assert_eq!(Verdict::of_rho(Some(0.5)), Verdict::ChangesPartly);
        assert_eq!(Verdict::of_rho(Some(0.4999)), Verdict::Changes);
        let r = report(Some(0.2), Some(0.1), None);
        assert_eq!(r.rho(Cascade::Head), Some(0.2));
        assert_eq!(r.rho(Cascade::LastQuarter), Some(0.1));
    }
}
