//! What a run produces: one [`Step`] per iteration, the [`Outcome`] of the whole run, and the
//! [`Event`]s reported while it works.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::engine::faithfulness::{Curves, Unveiling};
use crate::engine::maps::{Mask, SaliencyMap};
use crate::engine::predict::Prediction;
use crate::engine::saliency::Completeness;

/// Wall-clock time spent in each part of an iteration, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub classify_ms: f64,
    pub gradient_ms: f64,
    pub mask_ms: f64,
    /// The iteration's deletion and insertion curves (0 when faithfulness is not measured).
    #[serde(default)]
    pub curves_ms: f64,
}

/// One iteration's results. Images are at the model's input size; tensors are on the CPU.
#[derive(Clone, Debug)]
pub struct Step {
    pub index: usize,
    /// The normalised tensor fed to the model, `[3, h, w]`: the image with masks 0..i-1 filled.
    pub input: Tensor,
    pub top5: Vec<Prediction>,
    /// Every class's probability for `input` (multi-label models: one sigmoid per label).
    pub probs: Vec<f32>,
    pub p_target: f32,
    /// What the map is made of, `[c, h, w]` (see [`crate::engine::saliency`]): for guided and
    /// vanilla with the mean reduction, the SmoothGrad-averaged input gradient.
    pub attribution: Tensor,
    /// Integrated gradients' completeness check (mean reduction only).
    pub completeness: Option<Completeness>,
    pub saliency: SaliencyMap,
    /// This iteration's smoothed mask.
    pub mask: Mask,
    /// Union of masks 0..=i.
    pub cumulative: Mask,
    /// The image with `cumulative` filled, `[3, h, w]`: the next iteration's input.
    pub masked: Tensor,
    /// Deletion and insertion curves (when the run measures faithfulness).
    pub faithfulness: Option<Curves>,
    /// True when the attribution came from the cache (no gradient was computed).
    pub cached: bool,
    pub timings: Timings,
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// p(target) of the masked image fell below the stop threshold.
    BelowThreshold,
    MaxIterations,
    /// The last mask added no pixel: the next input would not change.
    NoNewRegion,
    /// The whole image is masked.
    AllMasked,
    /// The attribution is exactly zero at every pixel: there is no salient region to mask.
    ZeroGradient,
}

impl StopReason {
    /// Why the loop ended, in words.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::BelowThreshold => "p(target) fell below the stop threshold",
            StopReason::MaxIterations => "reached the maximum number of iterations",
            StopReason::NoNewRegion => "the last mask added no new region",
            StopReason::AllMasked => "the whole image is masked",
            StopReason::ZeroGradient => {
                "the gradient is zero everywhere: the model's score for this class does not \
                 respond to any pixel of this input, so there is no region to show"
            }
        }
    }
}

/// The model's view of the image after the last mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub top5: Vec<Prediction>,
    pub p_target: f32,
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub target: usize,
    pub steps: Vec<Step>,
    pub stop: StopReason,
    /// Classification of the input with every mask applied (absent when nothing new was masked).
    pub after: Option<Classification>,
    /// The unveiled union against a region of the same area from iteration 0's map (when
    /// the run measures faithfulness and masked anything).
    pub unveiling: Option<Unveiling>,
}

/// Where a run is, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub iteration: usize,
    pub max_iter: usize,
    pub chunk: usize,
    pub chunks: usize,
}

/// What a run reports while it works.
pub enum Event<'a> {
    Progress(Progress),
    Step(&'a Step),
    /// Iteration `index`'s faithfulness curves, measured once the loop has stopped (every
    /// step is reported first).
    Curves {
        index: usize,
        curves: &'a Curves,
    },
    /// The GPU failed mid-run (the reason): the run starts again on the CPU, whose steps
    /// replace the ones reported so far, index by index.
    FellBack(&'a str),
}
