//! A run in plain words: what hiding the unveiled regions did to the model's answer, and the
//! events a reader should not miss (the prediction flipping, p rising after a region is hidden,
//! a map that leans on the image borders).

use serde::{Deserialize, Serialize};

use crate::engine::maps::SaliencyMap;
use crate::engine::models::ModelInfo;
use crate::engine::outcome::Outcome;

/// A rise of p(target) smaller than this after hiding a region is noise.
const RISE: f32 = 0.05;
/// Width of the border band, as a fraction of each side (the band is 36 % of the image).
const BORDER: f32 = 0.1;

/// Something in a run a reader should not miss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Flag {
    /// The model's top class changed once regions were hidden.
    PredictionFlip {
        /// The first iteration whose input the model reads differently (one past the last:
        /// the image with every region hidden).
        iteration: usize,
        from: String,
        to: String,
        /// True when that is the image with every region hidden.
        #[serde(default)]
        after_all: bool,
    },
    /// p(target) went up after a region was hidden: that region argued against the class.
    ProbabilityRose {
        iteration: usize,
        from: f32,
        to: f32,
    },
    /// Iteration 0's map puts much of its weight on the image borders (text markers,
    /// collimation edges: a known shortcut in X-ray models).
    BorderMap { share: f32 },
}

impl Flag {
    pub fn describe(&self) -> String {
        match self {
            Flag::PredictionFlip {
                iteration,
                from,
                to,
                after_all,
            } => {
                let when = if *after_all {
                    "with every region hidden".to_string()
                } else {
                    format!("from iteration {iteration}")
                };
                format!(
                    "The prediction flips: {when} the model's top class is {to}, no longer {from}."
                )
            }
            Flag::ProbabilityRose {
                iteration,
                from,
                to,
            } => format!(
                "p(target) rose from {from:.3} to {to:.3} when the region of iteration {} was \
                 hidden: that region spoke against the class.",
                iteration - 1
            ),
            Flag::BorderMap { share } => format!(
                "{:.0} % of iteration 0's map lies on the image border (the outer tenth of each \
                 side, 36 % of the area): text markers and edges are a known shortcut.",
                100.0 * share
            ),
        }
    }
}

/// The run summed up for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Readout {
    pub text: String,
    pub flags: Vec<Flag>,
}

/// Reads a finished run. `threshold` is the run's stop threshold.
pub fn readout(outcome: &Outcome, info: &ModelInfo, threshold: f32) -> Readout {
    let label = info.label(outcome.target);
    let mut flags = Vec::new();
    let Some(first) = outcome.steps.first() else {
        return Readout {
            text: "No iteration ran.".into(),
            flags,
        };
    };
    // p(target) and the top class of each input the model saw: iteration 0.., then "after".
    let mut seen: Vec<(f32, String)> = outcome
        .steps
        .iter()
        .map(|s| (s.p_target, top(&s.top5)))
        .collect();
    if let Some(a) = &outcome.after {
        seen.push((a.p_target, top(&a.top5)));
    }
    if let Some(i) = seen.iter().position(|(_, t)| *t != seen[0].1) {
        flags.push(Flag::PredictionFlip {
            iteration: i,
            from: seen[0].1.clone(),
            to: seen[i].1.clone(),
            after_all: i == outcome.steps.len(),
        });
    }
    for i in 1..seen.len() {
        if seen[i].0 > seen[i - 1].0 + RISE {
            flags.push(Flag::ProbabilityRose {
                iteration: i,
                from: seen[i - 1].0,
                to: seen[i].0,
            });
            break;
        }
    }
    let share = border_share(&first.saliency);
    if share > 0.5 {
        flags.push(Flag::BorderMap { share });
    }
    let p0 = first.p_target;
    let hidden = outcome
        .steps
        .last()
        .map_or(0.0, |s| s.cumulative.coverage());
    let text = match &outcome.after {
        None => {
            format!("p({label}) = {p0:.3}; no region could be hidden (the map gave no new region).")
        }
        Some(a) => {
            let p1 = a.p_target;
            let pct = 100.0 * hidden;
            let what = if p1 < threshold {
                "the model depends on the regions shown: they carry its evidence for this class"
                    .to_string()
            } else if p1 >= p0 - 0.1 * p0.max(0.1) {
                let mut s = "the model does not depend on the regions shown: its evidence lies \
                             elsewhere or is spread over the image"
                    .to_string();
                if share > 0.5 {
                    s.push_str(", and its map leans on the image borders");
                }
                s
            } else {
                "the regions shown carry part of the model's evidence, not all of it".to_string()
            };
            let change = if p1 > p0 + RISE {
                format!("rose from {p0:.3} to {p1:.3}")
            } else if p1 >= p0 - 0.1 * p0.max(0.1) {
                format!("stayed at {p1:.3} (from {p0:.3})")
            } else {
                format!("fell from {p0:.3} to {p1:.3}")
            };
            format!("p({label}) {change} after {pct:.0} % of the image was hidden: {what}.")
        }
    };
    Readout { text, flags }
}

fn top(top5: &[crate::engine::predict::Prediction]) -> String {
    top5.first().map(|p| p.label.clone()).unwrap_or_default()
}

/// The share of the map's total weight in the border band.
pub fn border_share(map: &SaliencyMap) -> f32 {
    let (w, h) = (map.width, map.height);
    let (bx, by) = (
        ((w as f32 * BORDER).round() as usize).max(1),
        ((h as f32 * BORDER).round() as usize).max(1),
    );
    let (mut all, mut border) = (0f64, 0f64);
    for y in 0..h {
        for x in 0..w {
            let v = map.data[y * w + x] as f64;
            all += v;
            if x < bx || x >= w.saturating_sub(bx) || y < by || y >= h.saturating_sub(by) {
                border += v;
            }
        }
    }
    if all > 0.0 {
        (border / all) as f32
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::maps::Mask;
    use crate::engine::outcome::{Classification, Step, StopReason, Timings};
    use crate::engine::predict::Prediction;
    use candle_core::{Device, Tensor};

    fn pred(label: &str, prob: f32) -> Vec<Prediction> {
        vec![Prediction {
            class: 0,
            label: label.into(),
            prob,
        }]
    }

    fn step(index: usize, p: f32, top: &str, covered: usize) -> Step {
        let t = Tensor::zeros((3, 10, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut cumulative = Mask::empty(10, 10);
        cumulative.data[..covered]
            .iter_mut()
            .for_each(|b| *b = true);
        Step {
            index,
            input: t.clone(),
            top5: pred(top, p),
            probs: vec![p],
            p_target: p,
            attribution: t.clone(),
            completeness: None,
            saliency: SaliencyMap {
                width: 10,
                height: 10,
                data: vec![1.0; 100],
            },
            mask: cumulative.clone(),
            cumulative,
            masked: t,
            faithfulness: None,
            cached: false,
            timings: Timings::default(),
        }
    }

    fn info() -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            description: String::new(),
            input_size: (10, 10),
            mean: [0.5; 3],
            std: [0.5; 3],
            dataset_mean: [0.5; 3],
            labels: vec!["PNEUMONIA".into(), "NORMAL".into()],
            resize: crate::engine::models::Resize::Bilinear,
            multi_label: false,
            bgr: false,
            crop: crate::engine::models::Crop::None,
            op_threshs: None,
            domain: crate::engine::models::Domain::Other,
            assumed: Vec::new(),
            cam_layers: Vec::new(),
            guided_note: None,
        }
    }

    #[test]
    fn a_probability_that_stays_high_says_the_model_does_not_depend_on_the_regions() {
        let o = Outcome {
            target: 0,
            steps: vec![
                step(0, 0.998, "PNEUMONIA", 20),
                step(1, 0.997, "PNEUMONIA", 40),
            ],
            stop: StopReason::MaxIterations,
            after: Some(Classification {
                top5: pred("PNEUMONIA", 0.998),
                p_target: 0.998,
            }),
            unveiling: None,
        };
        let r = readout(&o, &info(), 0.1);
        assert_eq!(
            r.text,
            "p(PNEUMONIA) stayed at 0.998 (from 0.998) after 40 % of the image was hidden: the \
             model does not depend on the regions shown: its evidence lies elsewhere or is \
             spread over the image."
        );
        // A uniform map puts 36 % of its weight on the border band: not flagged (> 50 % is).
        assert!(r.flags.is_empty(), "{:?}", r.flags);
    }

    #[test]
    fn flips_and_rises_are_flagged_at_the_first_iteration_they_happen() {
        let o = Outcome {
            target: 0,
            steps: vec![
                step(0, 0.9, "PNEUMONIA", 10),
                step(1, 0.5, "PNEUMONIA", 20),
                step(2, 0.7, "NORMAL", 30),
            ],
            stop: StopReason::MaxIterations,
            after: Some(Classification {
                top5: pred("NORMAL", 0.05),
                p_target: 0.05,
            }),
            unveiling: None,
        };
        let r = readout(&o, &info(), 0.1);
        assert!(r.text.starts_with("p(PNEUMONIA) fell from 0.900 to 0.050 after 30 % of the image was hidden: the model depends"), "{}", r.text);
        assert_eq!(
            r.flags,
            vec![
                Flag::PredictionFlip {
                    iteration: 2,
                    from: "PNEUMONIA".into(),
                    to: "NORMAL".into(),
                    after_all: false,
                },
                Flag::ProbabilityRose {
                    iteration: 2,
                    from: 0.5,
                    to: 0.7
                },
            ]
        );
    }

    #[test]
    fn a_map_on_the_border_band_is_measured_as_such() {
        let (w, h) = (20, 10);
        // Weight only in the first two columns (inside the 2-pixel border band).
        let data = (0..w * h)
            .map(|i| if i % w < 2 { 1.0 } else { 0.0 })
            .collect();
        let m = SaliencyMap {
            width: w,
            height: h,
            data,
        };
        assert_eq!(border_share(&m), 1.0);
        let centre = SaliencyMap {
            width: w,
            height: h,
            data: (0..w * h)
                .map(|i| if (i % w, i / w) == (10, 5) { 1.0 } else { 0.0 })
                .collect(),
        };
        assert_eq!(border_share(&centre), 0.0);
    }
}
