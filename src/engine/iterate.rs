//! The iterative unveiling loop (Bordes et al., 2018).
//!
//! Iteration i feeds the model the image with the union of masks 0..i-1 filled in, records its
//! predictions, computes a saliency map for the target class on that input and smooths it into
//! mask i. After each iteration the next masked input is classified: once p(target) falls below
//! the stop threshold the model no longer sees the class and the loop ends (iteration 0 always
//! runs, so even a weak class gets one explanation). It also ends at `max_iter`, when a mask
//! adds nothing new (the next input would be the same), or when everything is masked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::engine::faithfulness;
use crate::engine::fill::Filler;
use crate::engine::gradient_cache::GradientCache;
use crate::engine::maps::{Mask, SaliencyMap};
use crate::engine::mask;
use crate::engine::models::Classifier;
use crate::engine::outcome::{Classification, Event, Outcome, Progress, Step, StopReason, Timings};
use crate::engine::params::{FillMode, MaskParams, UnveilParams};
use crate::engine::predict::{classify, top_k};
use crate::engine::saliency;
use crate::error::{Error, Result};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs the loop on one normalised image `x` (`[3, h, w]`, the model's input size).
///
/// Steps are reported through `on_event` as soon as they exist, so a caller keeps what was
/// computed even if a later iteration fails or is cancelled.
pub(crate) fn iterate(
    model: &dyn Classifier,
    x: &Tensor,
    params: &UnveilParams,
    cache: Option<&GradientCache>,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> Result<Outcome> {
    params.validate()?;
    // A run superseded before it began (a slider dragged quickly) costs nothing.
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let device = model.device().clone();
    let (_, h, w) = x.dims3()?;
    let filler = Filler::new(model.info(), x, params.fill)?;
    // Integrated gradients start from the image with everything hidden.
    let baseline = filler.baseline(&device)?;
    let mut cumulative = Mask::empty(w, h);
    let mut input = x.to_device(&device)?;

    let t = Instant::now();
    let mut probs = classify(model, &input)?;
    let mut classify_ms = ms(t);
    let target = match params.target {
        Some(t) => t,
        None => top_k(model, &probs, 1)
            .first()
            .map(|p| p.class)
            .ok_or_else(|| {
                Error::InvalidParam("the model predicts no class: every label is blank".into())
            })?,
    };
    if target >= probs.len() {
        return Err(Error::ClassOutOfRange {
            class: target,
            num_classes: probs.len(),
        });
    }
    if !model.info().predicts(target) {
        return Err(Error::InvalidParam(format!(
            "class {target} is not predicted by these weights (its label is blank)"
        )));
    }

    let max_iter = params.stop.max_iter;
    let mut steps: Vec<Step> = Vec::new();
    loop {
        let index = steps.len();
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let t = Instant::now();
        let key = cache
            .map(|_| GradientCache::key(&input, target, &params.saliency, &baseline))
            .transpose()?;
        let hit = cache.zip(key).and_then(|(c, k)| c.get(k));
        let cached = hit.is_some();
        let attribution = match hit {
            Some(a) => (*a).clone(),
            None => {
                let mut report = |chunk, chunks| {
                    on_event(Event::Progress(Progress {
                        iteration: index,
                        max_iter,
                        chunk,
                        chunks,
                    }))
                };
                let a = saliency::attribution(
                    model,
                    &input,
                    target,
                    &params.saliency,
                    &baseline,
                    &mut report,
                    cancel,
                )?;
                if let (Some(c), Some(k)) = (cache, key) {
                    c.put(k, Arc::new(a.clone()));
                }
                a
            }
        };
        let gradient_ms = ms(t);
        let t = Instant::now();
        let saliency = saliency::saliency_map(&attribution.values)?;
        let masks = Masks::new(&saliency, &params.mask, &cumulative, &filler)?;
        let grows = masks.mask.adds_to(&cumulative);
        cumulative = masks.cumulative.clone();
        let mask_ms = ms(t);
        let step = Step {
            index,
            input: input.to_device(&Device::Cpu)?,
            top5: top_k(model, &probs, 5),
            probs: probs.clone(),
            p_target: probs[target],
            attribution: attribution.values,
            completeness: attribution.completeness,
            saliency,
            mask: masks.mask,
            cumulative: masks.cumulative,
            masked: masks.masked.clone(),
            cached,
            faithfulness: None,
            timings: Timings {
                classify_ms,
                gradient_ms,
                mask_ms,
                curves_ms: 0.0,
            },
        };
        on_event(Event::Step(&step));
        steps.push(step);

        if !grows {
            let flat = steps
                .last()
                .is_some_and(|s| s.saliency.data.iter().all(|&v| v == 0.0));
            let stop = if flat {
                StopReason::ZeroGradient
            } else {
                StopReason::NoNewRegion
            };
            let end = Ending { stop, after: None };
            return finish(
                model, x, &filler, params, target, steps, end, on_event, cancel,
            );
        }
        input = masks.masked.to_device(&device)?;
        let t = Instant::now();
        probs = classify(model, &input)?;
        classify_ms = ms(t);
        let after = Some(Classification {
            top5: top_k(model, &probs, 5),
            p_target: probs[target],
        });
        let stop = if probs[target] < params.stop.threshold {
            Some(StopReason::BelowThreshold)
        } else if cumulative.is_full() {
            Some(StopReason::AllMasked)
        } else if steps.len() >= max_iter {
            Some(StopReason::MaxIterations)
        } else {
            None
        };
        if let Some(stop) = stop {
            let end = Ending { stop, after };
            return finish(
                model, x, &filler, params, target, steps, end, on_event, cancel,
            );
        }
    }
}

/// Why a run stopped and the model's view after its last mask (absent when nothing new was
/// masked).
struct Ending {
    stop: StopReason,
    after: Option<Classification>,
}

/// The outcome of a run that stopped: when it measures faithfulness, each iteration's curves
/// (reported one by one) and its unveiling against a single map.
///
/// The curves are traced after the loop, not after each step: every iteration is on screen as
/// soon as it is computed, and the curves, which cost about as much as the explanation, follow.
#[allow(clippy::too_many_arguments)]
fn finish(
    model: &dyn Classifier,
    x: &Tensor,
    filler: &Filler,
    params: &UnveilParams,
    target: usize,
    mut steps: Vec<Step>,
    end: Ending,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> Result<Outcome> {
    let mut unveiling = None;
    if params.faithfulness {
        let mut probe = faithfulness::Probe::new(model, filler.fill_values(), target, cancel);
        for step in &mut steps {
            let t = Instant::now();
            let blurred = Filler::new(model.info(), &step.input, FillMode::Blur)?;
            let order = faithfulness::order(&step.saliency);
            // The loop classified the step's input: its p is the curves' known end points.
            let curves = probe.curves(
                &step.input,
                &order,
                blurred.fill_values(),
                Some(step.p_target),
            )?;
            step.timings.curves_ms = ms(t);
            on_event(Event::Curves {
                index: step.index,
                curves: &curves,
            });
            step.faithfulness = Some(curves);
        }
        let last = steps.last().expect("iteration 0 always runs");
        if last.cumulative.count() > 0 {
            // The union hidden is the loop's last masked input: classified after the last step,
            // or, when that step added nothing, that step's own input.
            let p_hidden = end.after.as_ref().map_or(last.p_target, |a| a.p_target);
            unveiling = Some(probe.unveiling(
                x,
                &steps[0].saliency,
                &last.cumulative,
                &params.mask,
                Some(p_hidden),
            )?);
        }
    }
    Ok(Outcome {
        target,
        steps,
        stop: end.stop,
        after: end.after,
        unveiling,
    })
}

/// One iteration's masks: its own smoothed mask, the union with every earlier mask, and the
/// image with that union filled (the next iteration's input, on the CPU).
struct Masks {
    mask: Mask,
    cumulative: Mask,
    masked: Tensor,
}

impl Masks {
    fn new(s: &SaliencyMap, p: &MaskParams, earlier: &Mask, filler: &Filler) -> Result<Self> {
        let mask = mask::make_mask(s, p);
        let cumulative = earlier.union(&mask);
        let masked = filler.apply(&cumulative, &Device::Cpu)?;
        Ok(Masks {
            mask,
            cumulative,
            masked,
        })
    }
}

/// Iteration 0 of a finished run under new mask parameters, exactly as a rerun would compute
/// it (same saliency, new mask, new fill), with no gradient work: what the app shows at once
/// while the later iterations rerun.
pub(crate) fn remask_first(model: &dyn Classifier, first: &Step, p: &UnveilParams) -> Result<Step> {
    if first.index != 0 {
        return Err(Error::Internal(format!(
            "remask_first was given iteration {}",
            first.index
        )));
    }
    let (h, w) = (first.saliency.height, first.saliency.width);
    let filler = Filler::new(model.info(), &first.input, p.fill)?;
    let masks = Masks::new(&first.saliency, &p.mask, &Mask::empty(w, h), &filler)?;
    Ok(Step {
        mask: masks.mask,
        cumulative: masks.cumulative,
        masked: masks.masked,
        ..first.clone()
    })
}
