//! A lowered graph as a classifier: running it (whole, or with Grad-CAM's layer made a
//! variable), its shapes, Grad-CAM's layer, and its layers in forward order for the sanity
//! check.

use std::collections::HashSet;

use candle_core::{Device, Tensor};

use super::ops::{Ctx, Kind};
use super::program::Program;
use crate::engine::models::classifier::{CamGrid, CamPass, Classifier};
use crate::engine::models::info::ModelInfo;
use crate::engine::models::reinit::{self, Cascade};
use crate::engine::ops::Backend;
use crate::engine::ops::activation::ReluMode;
use crate::error::{Error, Result};

/// Grad-CAM's layer: a slot and how its value is read as a `[n, c, h, w]` grid.
#[derive(Clone, Debug)]
pub(crate) struct CamLayer {
    pub(crate) slot: usize,
    pub(crate) grid: CamGrid,
}

/// The candidates for Grad-CAM's layer, best (the automatic choice) first: for a CNN, 4-D
/// activations with a spatial grid, last first; for a transformer, token activations
/// `[n, t, d]` whose `t` holds the patch grid (found from the last 4-D activation: the patch
/// embedding), the inputs of attention (LayerNorm outputs) last first, as pytorch-grad-cam's
/// recipes choose them (`blocks[-1].norm1`).
pub(crate) fn cam_candidates(p: &Program, shapes: &[Option<Vec<usize>>]) -> Vec<CamLayer> {
    let produced: Vec<(usize, &Kind)> = p
        .steps
        .iter()
        .flat_map(|s| s.outputs.iter().map(move |&o| (o, &s.kind)))
        .collect();
    let spatial: Vec<usize> = produced
        .iter()
        .filter(|(o, _)| matches!(shapes[*o].as_deref(), Some([_, _, h, w]) if *h > 1 && *w > 1))
        .map(|(o, _)| *o)
        .collect();
    let channels = |slots: &mut dyn Iterator<Item = usize>| -> Vec<CamLayer> {
        slots
            .map(|slot| CamLayer {
                slot,
                grid: CamGrid::Channels,
            })
            .collect()
    };
    // The patch grid: the last output of a convolution or pool (a transformer's patch
    // embedding); attention's own 4-D tensors are not grids.
    let Some(&(last4, _)) = produced.iter().rev().find(|(o, k)| {
        spatial.contains(o) && matches!(k, Kind::Conv(_) | Kind::MaxPool(_) | Kind::AvgPool(..))
    }) else {
        return channels(&mut spatial.iter().rev().copied());
    };
    let position = |slot: usize| produced.iter().position(|(o, _)| *o == slot).unwrap_or(0);
    let (gh, gw) = match shapes[last4].as_deref() {
        Some([_, _, h, w]) => (*h, *w),
        _ => (0, 0),
    };
    let tokens: Vec<CamLayer> = produced[position(last4)..]
        .iter()
        .filter(|(_, k)| matches!(k, Kind::LayerNorm { .. }))
        .filter_map(|&(o, _)| match shapes[o].as_deref() {
            Some([_, t, _]) if *t >= gh * gw && *t <= gh * gw + 8 && gh * gw > 1 => {
                Some(CamLayer {
                    slot: o,
                    grid: CamGrid::Tokens {
                        skip: t - gh * gw,
                        h: gh,
                        w: gw,
                    },
                })
            }
            _ => None,
        })
        .collect();
    // Attention's inputs: token LayerNorms followed by a softmax before the next LayerNorm
    // (the MLP's and the final norm's outputs reach the head through the class token only,
    // so their patch tokens get no gradient).
    let attention: Vec<CamLayer> = tokens
        .into_iter()
        .filter(|c| {
            produced[position(c.slot) + 1..]
                .iter()
                .map(|(_, k)| k)
                .take_while(|k| !matches!(k, Kind::LayerNorm { .. }))
                .any(|k| matches!(k, Kind::Softmax { .. }))
        })
        .collect();
    if !attention.is_empty() {
        let mut t: Vec<CamLayer> = attention.into_iter().rev().collect();
        t.push(CamLayer {
            slot: last4,
            grid: CamGrid::Channels,
        });
        return t;
    }
    channels(&mut spatial.iter().rev().copied())
}

/// An ONNX graph as a classifier.
#[derive(Debug)]
pub struct OnnxModel {
    pub(crate) program: Program,
    pub(crate) info: ModelInfo,
    pub(crate) device: Device,
    pub(crate) backend: Backend,
    /// The graph takes one image at a time (its batch dimension is fixed to 1).
    pub(crate) batch_one: bool,
    pub(crate) cam: Option<CamLayer>,
    /// The index of the last stage's first layer (see `load::last_stage`).
    pub(crate) stage: Option<usize>,
}

impl OnnxModel {
    fn ctx(&self, mode: ReluMode) -> Ctx {
        Ctx {
            mode,
            backend: self.backend,
            device: self.device.clone(),
        }
    }

    fn run(
        &self,
        x: &Tensor,
        mode: ReluMode,
        tap: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let ctx = self.ctx(mode);
        let n = x.dim(0)?;
        if !self.batch_one || n == 1 {
            return self.program.run(x, &ctx, tap);
        }
        let mut outs = Vec::with_capacity(n);
        for i in 0..n {
            outs.push(self.program.run(&x.narrow(0, i, 1)?, &ctx, None)?.0);
        }
        Ok((Tensor::cat(&outs, 0)?, None))
    }
}

impl Classifier for OnnxModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
        let logits = self.run(x, mode, None)?.0;
        match logits.dims() {
            [_, c] if *c == self.info.num_classes() => Ok(logits),
            d => Err(Error::InvalidParam(format!(
                "the graph's output has shape {d:?}, expected [n, {}]",
                self.info.num_classes()
            ))),
        }
    }

    fn cam_pass(&self, x: &Tensor) -> Result<CamPass> {
        let cam = self.cam.as_ref().ok_or_else(|| {
            Error::InvalidParam(format!(
                "model '{}' has no activation Grad-CAM can use (no spatial or token grid)",
                self.info.name
            ))
        })?;
        let (logits, a) = self.run(x, ReluMode::Plain, Some(cam.slot))?;
        let activation =
            a.ok_or_else(|| Error::Internal("Grad-CAM's layer was not computed".into()))?;
        Ok(CamPass {
            activation,
            logits,
            grid: cam.grid,
        })
    }

    fn feature_layer(&self) -> Option<&str> {
        self.cam
            .as_ref()
            .and(self.info.cam_layers.first().map(String::as_str))
    }

    fn reinit_scope(&self, cascade: Cascade) -> Option<HashSet<String>> {
        Some(reinit::scope_at(
            &self.program.layers(),
            self.stage,
            cascade,
        ))
    }
}
