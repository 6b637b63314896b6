//! The engine's one entry point: a loaded model together with what belongs to it alone.
//!
//! Both front ends (the CLI and the app's worker) explain images through an [`Explainer`]: it
//! opens the device, loads the model with the fast ops, turns a decoded image into the model's
//! input under the chosen window, and runs the iterative loop. Whatever is tied to one model
//! lives inside it (today the gradient cache), so it can never outlive that model or mix two;
//! new saliency methods, checks and metrics plug in here, once, for both front ends.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};

use crate::engine::device::{self, DeviceChoice};
use crate::engine::fill::Filler;
use crate::engine::gradient_cache::GradientCache;
use crate::engine::image;
use crate::engine::iterate;
use crate::engine::models::reinit::{self, Cascade};
use crate::engine::models::{Classifier, ModelInfo, ModelSource};
use crate::engine::ops::Backend;
use crate::engine::outcome::{Event, Outcome, Step};
use crate::engine::params::UnveilParams;
use crate::engine::sanity::{self, Check, CheckProgress};
use crate::engine::source_image::{SourceImage, Window};
use crate::error::{Error, Result};

/// A model ready to explain images, with its own gradient cache.
#[derive(Debug)]
pub struct Explainer {
    model: Arc<dyn Classifier>,
    /// `None` for one-shot use (the CLI), where no two runs share an input.
    cache: Option<GradientCache>,
    /// Where the model came from: the sanity check rebuilds it with layers re-initialised.
    source: Option<ModelSource>,
}

impl Explainer {
    /// For interactive use: input gradients are cached, so that a change of mask parameters
    /// never recomputes an iteration whose input is unchanged.
    pub fn new(model: Arc<dyn Classifier>) -> Self {
        Explainer {
            model,
            cache: Some(GradientCache::default()),
            source: None,
        }
    }

    /// For one-shot runs (a CLI run, a batch): nothing is kept between runs.
    pub fn uncached(model: Arc<dyn Classifier>) -> Self {
        Explainer {
            model,
            cache: None,
            source: None,
        }
    }

    /// The same model without a cache.
    pub fn without_cache(self) -> Self {
        Explainer {
            cache: None,
            ..self
        }
    }

    /// Opens the chosen device and loads the model there with the fast ops; cached. The model
    /// can be rebuilt from `source` (the sanity check's randomised copies).
    pub fn load(source: &ModelSource, choice: DeviceChoice) -> Result<Self> {
        let device = device::open(choice)?;
        Ok(Explainer {
            source: Some(source.clone()),
            ..Explainer::new(source.load(&device, Backend::Fast)?)
        })
    }

    /// The model with the layers of `cascade` re-initialised (seeded by `seed`), on the same
    /// device.
    pub fn randomised(&self, cascade: Cascade, seed: u64) -> Result<Arc<dyn Classifier>> {
        let source = self.source.as_ref().ok_or_else(|| {
            Error::InvalidParam(
                "the sanity check rebuilds the model, so it needs one loaded by name or \
                 description"
                    .into(),
            )
        })?;
        let scope = self.model.reinit_scope(cascade).ok_or_else(|| {
            Error::InvalidParam(format!(
                "model '{}' does not know its layers' order, so it cannot be randomised",
                self.info().name
            ))
        })?;
        source.load_edited(self.device(), Backend::Fast, &|w| {
            reinit::reinitialise(w, &scope, seed)
        })
    }

    /// The sanity checks (model randomisation, class sensitivity) for `img` seen through
    /// `window`, with `params`' method and settings (see [`crate::engine::sanity`]).
    pub fn check(
        &self,
        img: &SourceImage,
        window: Option<Window>,
        params: &UnveilParams,
        progress: &mut dyn FnMut(CheckProgress),
        cancel: &AtomicBool,
    ) -> Result<Check> {
        params.validate()?;
        let x = self.input(img, window)?;
        self.check_input(&x, params, progress, cancel)
    }

    /// [`Explainer::check`] on an input already made for this model.
    pub fn check_input(
        &self,
        x: &Tensor,
        params: &UnveilParams,
        progress: &mut dyn FnMut(CheckProgress),
        cancel: &AtomicBool,
    ) -> Result<Check> {
        let baseline = Filler::new(self.info(), x, params.fill)?.baseline(self.device())?;
        let seed = params.saliency.seed;
        sanity::check(
            self.model.as_ref(),
            &|cascade| self.randomised(cascade, seed),
            x,
            &baseline,
            params.target,
            &params.saliency,
            progress,
            cancel,
        )
    }

    pub fn model(&self) -> &Arc<dyn Classifier> {
        &self.model
    }

    pub fn info(&self) -> &ModelInfo {
        self.model.info()
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// Input gradients held in the cache (0 when uncached).
    pub fn cached_gradients(&self) -> usize {
        self.cache.as_ref().map_or(0, GradientCache::len)
    }

    /// The model's input for `img` seen through `window` (grayscale images only): `[3, h, w]`
    /// on the model's device.
    pub fn input(&self, img: &SourceImage, window: Option<Window>) -> Result<Tensor> {
        let windowed;
        let img = match window {
            None => img,
            Some(_) if img.gray.is_none() => {
                return Err(Error::InvalidParam(
                    "a window applies to grayscale images only".into(),
                ));
            }
            Some(w) => {
                windowed = img.windowed(w);
                &windowed
            }
        };
        image::to_model_input(img, self.info(), self.device())
    }

    /// Explains `img` (seen through `window`): the whole iterative loop. Steps are reported
    /// through `on_event` as they finish, so they survive a later failure or a cancel.
    pub fn explain(
        &self,
        img: &SourceImage,
        window: Option<Window>,
        params: &UnveilParams,
        on_event: &mut dyn FnMut(Event),
        cancel: &AtomicBool,
    ) -> Result<Outcome> {
        let x = self.input(img, window)?;
        self.explain_input(&x, params, on_event, cancel)
    }

    /// Explains an input already made for this model (`[3, h, w]`, normalised).
    pub fn explain_input(
        &self,
        x: &Tensor,
        params: &UnveilParams,
        on_event: &mut dyn FnMut(Event),
        cancel: &AtomicBool,
    ) -> Result<Outcome> {
        iterate::iterate(
            self.model.as_ref(),
            x,
            params,
            self.cache.as_ref(),
            on_event,
            cancel,
        )
    }

    /// Iteration 0 of a finished run redrawn under new mask parameters, exactly as a rerun
    /// computes it, without gradient work (see [`UnveilParams::change_from`]).
    pub fn remask_first(&self, first: &Step, params: &UnveilParams) -> Result<Step> {
        iterate::remask_first(self.model.as_ref(), first, params)
    }
}
