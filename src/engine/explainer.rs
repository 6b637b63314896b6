//! The engine's one entry point: a loaded model together with what belongs to it alone.
//!
//! Both front ends (the CLI and the app's workers) explain images through an [`Explainer`]: it
//! opens the device, loads the model with the fast ops, turns a decoded image into the model's
//! input under the chosen window, and runs the iterative loop, the sanity check and the
//! evaluation ([`crate::engine::run`]: a request in, a record out). Whatever is tied to one
//! model lives inside it (its gradient cache, its CPU copy once its GPU failed), so it can
//! never outlive that model or mix two; new saliency methods, checks and metrics plug in here,
//! once, for both front ends.

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
use crate::engine::sanity::{self, Check, CheckEvent};
use crate::engine::source_image::{SourceImage, Window};
use crate::error::{Error, Result};

/// A model ready to explain images, with its own gradient cache.
///
/// Input gradients are cached (a small LRU keyed by the exact input and settings), so that a
/// change of mask parameters never recomputes an iteration whose input is unchanged; a
/// one-shot run simply never hits it.
#[derive(Debug)]
pub struct Explainer {
    model: Arc<dyn Classifier>,
    /// The model runs on a GPU: a device failure there is retried on the CPU.
    on_gpu: bool,
    cache: GradientCache,
    /// Where the model came from: the sanity check rebuilds it with layers re-initialised,
    /// and a failed GPU run rebuilds it on the CPU.
    source: Option<ModelSource>,
    /// Once a run on the GPU failed (out of memory, a kernel fault): the model's CPU copy,
    /// which this and every later run uses, and why.
    on_cpu: OnceLock<(Box<Explainer>, String)>,
}

impl Explainer {
    /// An explainer for a model built by the caller (tests, benchmarks). It cannot rebuild the
    /// model, so no sanity check and no CPU fallback: use [`Explainer::load`] for those.
    pub fn new(model: Arc<dyn Classifier>) -> Self {
        Explainer {
            on_gpu: !model.device().is_cpu(),
            model,
            cache: GradientCache::default(),
            source: None,
            on_cpu: OnceLock::new(),
        }
    }

    /// Opens the chosen device and loads the model there with the fast ops. The model can be
    /// rebuilt from `source` (the sanity check's randomised copies, the CPU fallback).
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

    /// The sanity checks (model randomisation, class sensitivity) of an input already made
    /// for this model, with `params`' method and settings (see [`crate::engine::sanity`]).
    /// Front ends call [`Explainer::check`] with a request instead.
    pub fn check_input(
        &self,
        x: &Tensor,
        params: &UnveilParams,
        on_event: &mut dyn FnMut(CheckEvent),
        cancel: &AtomicBool,
    ) -> Result<Check> {
        params.validate()?;
        let events = std::cell::RefCell::new(on_event);
        self.here_or_on_cpu(
            &mut |why| (events.borrow_mut())(CheckEvent::FellBack(why)),
            &mut |e| {
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
                    &mut |p| (events.borrow_mut())(CheckEvent::Progress(p)),
                    cancel,
                )
            },
        )
    }

    /// The model in use: the loaded one, or its CPU copy once a GPU run failed.
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

    /// Runs `run` on the active explainer. If that is on a GPU and the device fails mid-run
    /// (see [`device::is_device_failure`]), tells `notice`, builds the model's CPU copy (kept
    /// for later runs) and runs `run` again there: the user gets a result either way.
    pub(crate) fn here_or_on_cpu<T>(
        &self,
        notice: &mut dyn FnMut(&str),
        run: &mut dyn FnMut(&Explainer) -> Result<T>,
    ) -> Result<T> {
        let active = self.active();
        let err = match run(active) {
            Err(e) if active.on_gpu && device::is_device_failure(&e) => e,
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
            source: Some(source.clone()),
            ..Explainer::new(source.load(&Device::Cpu, Backend::Fast)?)
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

    /// The model's input for `img` seen through `window` (grayscale images only): `[3, h, w]`
    /// on the model's device.
    pub fn input(&self, img: &SourceImage, window: Option<Window>) -> Result<Tensor> {
        self.input_on(img, window, self.device())
    }

    /// [`Explainer::input`] on `device`.
    pub(crate) fn input_on(
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

    /// Explains an input already made for this model (`[3, h, w]`, normalised): the whole
    /// iterative loop. Steps are reported through `on_event` as they finish, so they survive a
    /// later failure or a cancel. Front ends call [`Explainer::run`] with a request instead.
    pub fn explain_input(
        &self,
        x: &Tensor,
        params: &UnveilParams,
        on_event: &mut dyn FnMut(Event),
        cancel: &AtomicBool,
    ) -> Result<Outcome> {
        let events = std::cell::RefCell::new(on_event);
        self.here_or_on_cpu(
            &mut |why| (events.borrow_mut())(Event::FellBack(why)),
            &mut |e| {
                iterate::iterate(
                    e.model.as_ref(),
                    &x.to_device(e.device())?,
                    params,
                    Some(&e.cache),
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
    use crate::engine::outcome::Event;
    use crate::engine::params::{SaliencyParams, StopParams};
    use crate::engine::run::RunRequest;

    /// The bundled model, failing its `fail_at`-th forward pass (counting from 1) as a GPU out
    /// of memory does (the error candle's CUDA backend gives); it counts its passes.
    #[derive(Debug)]
    struct FailsAt {
        inner: Arc<dyn Classifier>,
        calls: AtomicUsize,
        fail_at: usize,
    }

    impl Classifier for FailsAt {
        fn info(&self) -> &ModelInfo {
            self.inner.info()
        }
        fn device(&self) -> &Device {
            self.inner.device()
        }
        fn forward(&self, x: &Tensor, mode: ReluMode) -> Result<Tensor> {
            if self.calls.fetch_add(1, Ordering::Relaxed) + 1 == self.fail_at {
                return Err(candle_core::Error::Msg(
                    "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
                )
                .into());
            }
            self.inner.forward(x, mode)
        }
        fn reinit_scope(&self, c: Cascade) -> Option<std::collections::HashSet<String>> {
            self.inner.reinit_scope(c)
        }
    }

    /// An explainer whose model pretends to be on a GPU and fails its `fail_at`-th pass, and
    /// that model (to count its passes).
    fn pretend_gpu(fail_at: usize) -> (Explainer, Arc<FailsAt>) {
        let source = ModelSource::Named(DEFAULT_MODEL.into());
        let model = Arc::new(FailsAt {
            inner: source.load(&Device::Cpu, Backend::Fast).unwrap(),
            calls: AtomicUsize::new(0),
            fail_at,
        });
        let e = Explainer {
            source: Some(source),
            on_gpu: true,
            ..Explainer::new(model.clone())
        };
        (e, model)
    }

    fn quick() -> UnveilParams {
        UnveilParams {
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
        }
    }

    #[test]
    fn a_gpu_failing_mid_run_falls_back_to_the_cpu_and_the_run_completes() {
        let x = Tensor::zeros((3, 224, 224), candle_core::DType::F32, &Device::Cpu).unwrap();
        let never = AtomicBool::new(false);
        // On the CPU a failure is an error like any other: nothing is retried.
        let on_cpu = Explainer {
            on_gpu: false,
            ..pretend_gpu(1).0
        };
        let err = on_cpu
            .explain_input(&x, &quick(), &mut |_| {}, &never)
            .unwrap_err();
        assert!(err.to_string().contains("OUT_OF_MEMORY"), "{err}");
        assert!(on_cpu.fell_back().is_none());
        // On a GPU (pretended): the notice names the error, the run completes on the CPU copy,
        // and later runs stay there.
        let (e, _) = pretend_gpu(1);
        let failing = e.model.as_ref() as *const dyn Classifier as *const ();
        let mut notices = Vec::new();
        let outcome = e
            .explain_input(
                &x,
                &quick(),
                &mut |ev| {
                    if let Event::FellBack(why) = ev {
                        notices.push(why.to_string())
                    }
                },
                &never,
            )
            .unwrap();
        assert_eq!(outcome.steps.len(), 1, "the one iteration asked for");
        assert_eq!(notices.len(), 1);
        assert!(notices[0].contains("CUDA_ERROR_OUT_OF_MEMORY") && notices[0].contains("CPU"));
        assert_eq!(e.fell_back(), Some(notices[0].as_str()));
        let now = e.model().as_ref() as *const dyn Classifier as *const ();
        assert_ne!(now, failing, "the CPU copy, not the failing model");
        assert!(e.device().is_cpu());
    }

    #[test]
    fn a_bug_of_ours_on_a_gpu_is_reported_not_retried_on_the_cpu() {
        let (e, _) = pretend_gpu(usize::MAX);
        let mut notices = Vec::new();
        let err = e
            .here_or_on_cpu(&mut |n| notices.push(n.to_string()), &mut |_| {
                Err::<(), _>(Error::Candle(candle_core::Error::ShapeMismatchBinaryOp {
                    lhs: (1, 2).into(),
                    rhs: (2, 1).into(),
                    op: "add",
                }))
            })
            .unwrap_err();
        assert!(err.to_string().contains("shape mismatch"), "{err}");
        assert!(notices.is_empty() && e.fell_back().is_none(), "{notices:?}");
    }

    #[test]
    fn checks_and_evaluations_say_when_they_move_to_the_cpu() {
        let x = Tensor::zeros((3, 224, 224), candle_core::DType::F32, &Device::Cpu).unwrap();
        let never = AtomicBool::new(false);
        let (e, _) = pretend_gpu(2);
        let mut fell_back = Vec::new();
        let check = e.check_input(
            &x,
            &quick(),
            &mut |ev| {
                if let CheckEvent::FellBack(why) = ev {
                    fell_back.push(why.to_string())
                }
            },
            &never,
        );
        assert!(check.is_ok(), "{check:?}");
        assert_eq!(fell_back.len(), 1, "the check says it moved");
        assert!(e.fell_back().is_some());

        // An evaluation whose GPU fails in its last step (the unveiling order's curves, forward
        // passes after the run and the check) finishes that step on the CPU, says so, and gives
        // the numbers a healthy device gives.
        let img = crate::engine::image::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/chelsea.png"),
        )
        .unwrap();
        let params = quick();
        let req = RunRequest {
            image: &img,
            path: None,
            name: "chelsea",
            window: None,
            display_window: None,
            params: &params,
        };
        let (healthy, counter) = pretend_gpu(usize::MAX);
        let want = healthy.evaluate(&req, &mut |_| {}, &never).unwrap();
        let (e, _) = pretend_gpu(counter.calls.load(Ordering::Relaxed));
        let mut fell_back = Vec::new();
        let got = e
            .evaluate(
                &req,
                &mut |ev| {
                    if let Event::FellBack(why) = ev {
                        fell_back.push(why.to_string())
                    }
                },
                &never,
            )
            .unwrap();
        assert_eq!(fell_back.len(), 1, "{fell_back:?}");
        assert!(e.device().is_cpu());
        assert_eq!(got.row.deletion_auc_union, want.row.deletion_auc_union);
        assert_eq!(got.row.insertion_auc_union, want.row.insertion_auc_union);
        assert!(want.run.provenance.fell_back.is_none());
    }
}
