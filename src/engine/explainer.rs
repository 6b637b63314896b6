//! The engine's one entry point: a loaded model together with what belongs to it alone.
//!
//! Both front ends (the CLI and the app's worker) explain images through an [`Explainer`]: it
//! opens the device, loads the model with the fast ops, turns a decoded image into the model's
//! input under the chosen window, and runs the iterative loop. Whatever is tied to one model
//! lives inside it (today the gradient cache), so it can never outlive that model or mix two;
//! new saliency methods, checks and metrics plug in here, once, for both front ends.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

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
    /// Once a run on the GPU failed (out of memory, a kernel fault): the model's CPU copy,
    /// which this and every later run uses, and why.
    on_cpu: OnceLock<(Box<Explainer>, String)>,
}

impl Explainer {
    /// For interactive use: input gradients are cached, so that a change of mask parameters
    /// never recomputes an iteration whose input is unchanged.
    pub fn new(model: Arc<dyn Classifier>) -> Self {
        Explainer {
            model,
            cache: Some(GradientCache::default()),
            source: None,
            on_cpu: OnceLock::new(),
        }
    }

    /// For one-shot runs (a CLI run, a batch): nothing is kept between runs.
    pub fn uncached(model: Arc<dyn Classifier>) -> Self {
        Explainer {
            model,
            cache: None,
            source: None,
            on_cpu: OnceLock::new(),
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
        let scope = self.active().model.reinit_scope(cascade).ok_or_else(|| {
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
        // Made on the host: were the GPU to fail, the CPU rerun must not read from it.
        let x = self.input_on(img, window, &Device::Cpu)?;
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
        let on_gpu = !self.device().is_cpu();
        let progress = std::cell::RefCell::new(progress);
        self.here_or_on_cpu(on_gpu, &mut |_| {}, &mut |e| {
            let x = x.to_device(e.device())?;
            let baseline = Filler::new(e.info(), &x, params.fill)?.baseline(e.device())?;
            let seed = params.saliency.seed;
            sanity::check(
                e.model.as_ref(),
                &|cascade| e.randomised(cascade, seed),
                &x,
                &baseline,
                params.target,
                &params.saliency,
                &mut |p| (progress.borrow_mut())(p),
                cancel,
            )
        })
    }

    pub fn model(&self) -> &Arc<dyn Classifier> {
        &self.active().model
    }

    /// This explainer, or its CPU copy once a GPU run failed.
    fn active(&self) -> &Explainer {
        self.on_cpu.get().map_or(self, |(cpu, _)| cpu)
    }

    /// Why runs moved to the CPU, once a GPU run failed.
    pub fn fell_back(&self) -> Option<&str> {
        self.on_cpu.get().map(|(_, why)| why.as_str())
    }

    /// Runs `run` on the active explainer. If that is on a GPU (`on_gpu`) and the device fails
    /// mid-run, tells `notice`, builds the model's CPU copy (kept for later runs) and runs
    /// `run` again there: the user gets a result either way.
    fn here_or_on_cpu<T>(
        &self,
        on_gpu: bool,
        notice: &mut dyn FnMut(&str),
        run: &mut dyn FnMut(&Explainer) -> Result<T>,
    ) -> Result<T> {
        let active = self.active();
        let err = match run(active) {
            Err(e) if on_gpu && device::is_device_failure(&e) => e,
            result => return result,
        };
        let Some(source) = &self.source else {
            return Err(err);
        };
        let why = format!(
            "the {} failed ({err}); this run and the next ones use the CPU",
            device::describe(active.device())
        );
        notice(&why);
        let copy = Explainer {
            model: source.load(&Device::Cpu, Backend::Fast)?,
            cache: self.cache.as_ref().map(|_| GradientCache::default()),
            source: Some(source.clone()),
            on_cpu: OnceLock::new(),
        };
        let (cpu, _) = self.on_cpu.get_or_init(|| (Box::new(copy), why));
        run(cpu)
    }

    pub fn info(&self) -> &ModelInfo {
        self.active().model.info()
    }

    pub fn device(&self) -> &Device {
        self.active().model.device()
    }

    /// Input gradients held in the cache (0 when uncached).
    pub fn cached_gradients(&self) -> usize {
        self.active().cache.as_ref().map_or(0, GradientCache::len)
    }

    /// The model's input for `img` seen through `window` (grayscale images only): `[3, h, w]`
    /// on the model's device.
    pub fn input(&self, img: &SourceImage, window: Option<Window>) -> Result<Tensor> {
        self.input_on(img, window, self.device())
    }

    /// [`Explainer::input`] on `device`.
    fn input_on(
        &self,
        img: &SourceImage,
        window: Option<Window>,
        device: &Device,
    ) -> Result<Tensor> {
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
        image::to_model_input(img, self.info(), device)
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
        // Made on the host: were the GPU to fail, the CPU rerun must not read from it.
        let x = self.input_on(img, window, &Device::Cpu)?;
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
        let on_gpu = !self.device().is_cpu();
        let events = std::cell::RefCell::new(on_event);
        self.here_or_on_cpu(
            on_gpu,
            &mut |why| (events.borrow_mut())(Event::FellBack(why)),
            &mut |e| {
                iterate::iterate(
                    e.model.as_ref(),
                    &x.to_device(e.device())?,
                    params,
                    e.cache.as_ref(),
                    &mut |ev| (events.borrow_mut())(ev),
                    cancel,
                )
            },
        )
    }

    /// Iteration 0 of a finished run redrawn under new mask parameters, exactly as a rerun
    /// computes it, without gradient work (see [`UnveilParams::change_from`]).
    pub fn remask_first(&self, first: &Step, params: &UnveilParams) -> Result<Step> {
        iterate::remask_first(self.active().model.as_ref(), first, params)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::engine::models::DEFAULT_MODEL;
    use crate::engine::ops::activation::ReluMode;
    use crate::engine::params::{SaliencyParams, StopParams};

    /// The bundled model, failing its first `failures` gradient passes as a GPU out of memory
    /// does (the error candle's CUDA backend gives).
    #[derive(Debug)]
    struct OutOfMemory {
        inner: Arc<dyn Classifier>,
        failures: AtomicUsize,
    }

    impl Classifier for OutOfMemory {
        fn info(&self) -> &ModelInfo {
            self.inner.info()
        }
        fn device(&self) -> &Device {
            self.inner.device()
        }
        fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
            let left = self.failures.load(Ordering::Relaxed);
            if x.track_op() && left > 0 {
                self.failures.store(left - 1, Ordering::Relaxed);
                return Err(candle_core::Error::Msg(
                    "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
                )
                .into());
            }
            self.inner.forward(x, mode)
        }
    }

    #[test]
    fn a_gpu_failing_mid_run_falls_back_to_the_cpu_and_the_run_completes() {
        let source = ModelSource::Named(DEFAULT_MODEL.into());
        let failing = OutOfMemory {
            inner: source.load(&Device::Cpu, Backend::Fast).unwrap(),
            failures: AtomicUsize::new(1),
        };
        let e = Explainer {
            source: Some(source),
            ..Explainer::new(Arc::new(failing))
        };
        let x = Tensor::zeros((3, 224, 224), candle_core::DType::F32, &Device::Cpu).unwrap();
        let params = UnveilParams {
            saliency: SaliencyParams {
                samples: 2,
                ..Default::default()
            },
            stop: StopParams {
                threshold: 0.0,
                max_iter: 1,
            },
            faithfulness: false,
            ..Default::default()
        };
        let never = AtomicBool::new(false);
        let run = |e: &Explainer| {
            iterate::iterate(e.model.as_ref(), &x, &params, None, &mut |_| {}, &never)
        };
        // On the CPU a failure is an error like any other: nothing is retried.
        let err = e
            .here_or_on_cpu(false, &mut |_| {}, &mut |e| run(e))
            .unwrap_err();
        assert!(err.to_string().contains("OUT_OF_MEMORY"), "{err}");
        assert!(e.fell_back().is_none());
        // On a GPU (pretended): the notice names the error, the run completes on the CPU copy,
        // and later runs stay there.
        let failing = e.model.as_ref() as *const dyn Classifier as *const ();
        let mut notices = Vec::new();
        let mut failures_left = 1;
        let outcome = e
            .here_or_on_cpu(true, &mut |n| notices.push(n.to_string()), &mut |e| {
                if failures_left > 0 {
                    failures_left -= 1;
                    return Err(Error::Candle(candle_core::Error::Msg(
                        "CUDA_ERROR_OUT_OF_MEMORY".into(),
                    )));
                }
                run(e)
            })
            .unwrap();
        assert_eq!(outcome.steps.len(), 1, "the one iteration asked for");
        assert_eq!(notices.len(), 1);
        assert!(notices[0].contains("CUDA_ERROR_OUT_OF_MEMORY") && notices[0].contains("CPU"));
        assert_eq!(e.fell_back(), Some(notices[0].as_str()));
        let now = e.model().as_ref() as *const dyn Classifier as *const ();
        assert_ne!(now, failing, "the CPU copy, not the failing model");
        assert!(e.device().is_cpu());
    }
}
