//! What the app is working on: the loaded model, the open image, the run's results and the
//! background work producing them. Panels read it; only the app changes it, by applying
//! actions, and results arrive here from worker threads.

use std::path::PathBuf;
use std::sync::Arc;

use egui::TextureHandle;
use poll_promise::Promise;

use crate::engine::device::DeviceChoice;
use crate::engine::explainer::Explainer;
use crate::engine::image;
use crate::engine::models::{ModelInfo, ModelSource};
use crate::engine::outcome::{Outcome, Progress, Step};
use crate::engine::params::{FillMode, SaliencyParams, UnveilParams};
use crate::engine::sanity::{Check, CheckProgress};
use crate::engine::source_image::{Grayscale, SourceImage, Window};
use crate::engine::{render, suitability};
use crate::error::{Error, Result};
use crate::gui::notices::Notices;
use crate::gui::textures;
use crate::gui::worker::{CheckMsg, Msg, Worker};

/// The bundled sample images, compiled in so the app works from any folder, offline: the
/// first is shown on first start. (CC0 photos from scikit-image, CC BY 4.0 X-rays from Kermany
/// et al.: assets/ATTRIBUTION.md.)
pub const SAMPLES: [(&str, &[u8]); 4] = [
    ("chelsea.png", include_bytes!("../../assets/chelsea.png")),
    ("coffee.png", include_bytes!("../../assets/coffee.png")),
    (
        "chest-xray-pneumonia.jpeg",
        include_bytes!("../../assets/chest-xray-pneumonia.jpeg"),
    ),
    (
        "chest-xray-normal.jpeg",
        include_bytes!("../../assets/chest-xray-normal.jpeg"),
    ),
];

/// One iteration on screen: the engine's step and its pictures.
#[derive(Clone)]
pub struct StepView {
    pub step: Step,
    /// Input, saliency, mask, masked: as in the CLI's montage.
    pub textures: [TextureHandle; 4],
    /// From an earlier run; replaced as the current run produces its own.
    pub stale: bool,
}

/// A finished run kept for comparison with the next ones (same image and model).
pub struct Pinned {
    pub steps: Vec<StepView>,
    pub outcome: Outcome,
    /// Its settings in a few words ("guided, kernel 11, 3 passes").
    pub label: String,
}

/// The opened image.
pub struct Loaded {
    pub name: String,
    pub path: Option<PathBuf>,
    pub source: Arc<SourceImage>,
    pub texture: TextureHandle,
    pub preview: ::image::RgbImage,
    /// Display-size intensities of a grayscale image, re-windowed as the window changes.
    pub preview_gray: Option<Grayscale>,
    /// A grayscale file, or colour pixels that are all gray (what X-ray models expect).
    pub looks_gray: bool,
}

/// A decoded image with its display copy, both made off the UI thread.
struct Decoded {
    name: String,
    path: Option<PathBuf>,
    source: SourceImage,
    preview: ::image::RgbImage,
    preview_gray: Option<Grayscale>,
    looks_gray: bool,
}

/// Decodes and makes the (at most 1024 px) display copy: both can take a while on big files.
fn decode(
    name: String,
    path: Option<PathBuf>,
    load: impl FnOnce() -> Result<SourceImage>,
) -> Result<Decoded> {
    let source = load()?;
    let rgb = ::image::DynamicImage::ImageRgb32F(source.rgb.clone()).to_rgb8();
    Ok(Decoded {
        name,
        path,
        preview: textures::fit(&rgb, 1024),
        preview_gray: source.gray.as_ref().map(|g| textures::fit_gray(g, 1024)),
        looks_gray: suitability::looks_gray(&source),
        source,
    })
}

/// A finished sanity check and what it was computed for.
pub struct CheckView {
    pub check: Box<Check>,
    /// The maps side by side, as check.png draws them.
    pub picture: TextureHandle,
    for_what: CheckedFor,
}

/// What a sanity check depends on: the model, the image and its window, and the saliency
/// settings, fill and class (not the mask or stop settings).
#[derive(Clone, PartialEq)]
struct CheckedFor {
    model: u64,
    image: u64,
    window: Option<Window>,
    saliency: SaliencyParams,
    fill: FillMode,
    target: Option<usize>,
}

impl CheckedFor {
    fn new(ws: &Workspace, params: &UnveilParams) -> Self {
        CheckedFor {
            model: ws.loads.0,
            image: ws.loads.1,
            window: ws.model_window,
            saliency: params.saliency.clone(),
            fill: params.fill,
            target: params.target,
        }
    }
}

/// What happened in the background that the app (not the workspace) must act on.
pub enum Happened {
    /// A new image is open (`path`: None for the built-in sample).
    ImageOpened(Option<PathBuf>),
}

#[derive(Default)]
pub struct Workspace {
    /// The model, with its gradient cache; `None` while (re)loading.
    pub explainer: Option<Arc<Explainer>>,
    /// Whether the user was told that the explainer's GPU failed and runs moved to the CPU.
    told_fell_back: bool,
    pub image: Option<Loaded>,
    /// The grayscale display window (None for colour images): what the screen shows. Changing
    /// it never reruns, as in a PACS viewer.
    pub window: Option<Window>,
    /// The window the model sees: the file's own until the user chooses otherwise.
    pub model_window: Option<Window>,
    /// How long the finished run took, for its summary.
    pub run_ms: f64,
    /// Saliency drawn over the image at this opacity (0: the map alone).
    pub heatmap: f32,
    /// A run pinned for side-by-side comparison; cleared with a new image or model.
    pub pinned: Option<Pinned>,
    run_started: Option<std::time::Instant>,
    pub steps: Vec<StepView>,
    pub outcome: Option<Outcome>,
    pub progress: Option<Progress>,
    /// Changes whenever what the results look like changes; keys the views' caches.
    pub generation: u64,
    /// The latest sanity check, and the progress of one in flight.
    pub check: Option<CheckView>,
    pub check_progress: Option<CheckProgress>,
    /// Models and images loaded so far: what a check was computed for.
    loads: (u64, u64),
    worker: Worker<Msg>,
    checker: Worker<CheckMsg>,
    /// What the check in flight is for.
    checking: Option<CheckedFor>,
    /// The model being loaded: its name (for messages) and the loading thread.
    model_job: Option<(String, Promise<Result<Explainer>>)>,
    image_job: Option<Promise<Result<Decoded>>>,
    /// A run should start once the model and an image are there.
    rerun: bool,
}

impl Workspace {
    /// (Re)loads a model on a device, off the UI thread; the current run stops.
    pub fn load_model(&mut self, source: ModelSource, device: DeviceChoice) {
        self.worker.cancel();
        self.cancel_check();
        self.explainer = None;
        // Another model's results (and class numbers) mean nothing for this one.
        self.steps.clear();
        self.pinned = None;
        self.outcome = None;
        self.progress = None;
        self.check = None;
        self.generation += 1;
        let name = source.name();
        self.model_job = Some((
            name,
            Promise::spawn_thread("load-model", move || Explainer::load(&source, device)),
        ));
    }

    /// Opens an image file, off the UI thread.
    pub fn open_path(&mut self, path: PathBuf) {
        self.image_job = Some(Promise::spawn_thread("decode-image", move || {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            decode(name, Some(path.clone()), || image::load(&path))
        }));
    }

    /// Opens the bundled sample photo, off the UI thread.
    pub fn open_sample(&mut self) {
        self.open_sample_at(0);
    }

    /// Opens bundled sample `i` ([`SAMPLES`]), off the UI thread.
    pub fn open_sample_at(&mut self, i: usize) {
        let (name, bytes) = SAMPLES[i.min(SAMPLES.len() - 1)];
        self.image_job = Some(Promise::spawn_thread("decode-sample", move || {
            decode(format!("{name} (sample)"), None, || image::decode(bytes))
        }));
    }

    /// Draws the saliency column over the image at `opacity` (0: the map alone): pictures are
    /// redrawn from the kept maps, nothing is recomputed.
    pub fn set_heatmap(&mut self, ctx: &egui::Context, opacity: f32) {
        if self.heatmap == opacity {
            return;
        }
        self.heatmap = opacity;
        let Some(explainer) = &self.explainer else {
            return;
        };
        for view in &mut self.steps {
            if let Ok(p) = pictures(&view.step, explainer.info(), opacity) {
                view.textures = upload_step(ctx, view.step.index, &p);
            }
        }
        self.generation += 1;
    }

    /// Keeps the finished run on screen next to the following ones (`None`: unpins).
    pub fn pin(&mut self, params: Option<&UnveilParams>) {
        self.pinned = params.and_then(|p| {
            Some(Pinned {
                steps: self.steps.clone(),
                outcome: self.outcome.clone()?,
                label: format!(
                    "{}, kernel {}, {} passes, fill {:?}",
                    p.saliency.method.name(),
                    p.mask.kernel,
                    p.mask.passes,
                    p.fill
                )
                .to_lowercase(),
            })
        });
        self.generation += 1;
    }

    /// Marks the results out of date: a run starts once the model and an image are there.
    pub fn request_run(&mut self) {
        self.rerun = true;
    }

    /// Redraws iteration 0 under new mask parameters at once, from its kept saliency map (no
    /// gradient work); the later iterations need a rerun.
    pub fn remask_first(&mut self, ctx: &egui::Context, params: &UnveilParams) -> Result<()> {
        let (Some(explainer), Some(first)) = (&self.explainer, self.steps.first_mut()) else {
            return Ok(());
        };
        let step = explainer.remask_first(&first.step, params)?;
        let pictures = pictures(&step, explainer.info(), self.heatmap)?;
        first.textures = upload_step(ctx, step.index, &pictures);
        first.step = step;
        self.generation += 1;
        Ok(())
    }

    /// Sets the window the model sees (a rerun): an explicit choice, never a side effect of
    /// looking at the image differently.
    pub fn set_model_window(&mut self, w: Window) {
        if self.image.as_ref().is_none_or(|i| i.source.gray.is_none()) {
            return;
        }
        let w = Window {
            center: w.center,
            width: w.width.max(1e-6),
        };
        if self.model_window != Some(w) {
            self.model_window = Some(w);
            self.generation += 1;
            self.request_run();
        }
    }

    /// Sets the grayscale display window: only the screen changes.
    pub fn set_window(&mut self, ctx: &egui::Context, w: Window) {
        let Some(img) = self.image.as_mut() else {
            return;
        };
        let Some(g) = &img.preview_gray else { return };
        let w = Window {
            center: w.center,
            width: w.width.max(1e-6),
        };
        if self.window == Some(w) {
            return;
        }
        self.window = Some(w);
        let rgb = ::image::DynamicImage::ImageRgb32F(g.render(w)).to_rgb8();
        img.texture = textures::upload(ctx, "original", &rgb);
        img.preview = rgb;
        self.generation += 1;
    }

    /// Stops the run; the iterations it finished stay.
    pub fn cancel_run(&mut self, notices: &mut Notices) {
        if self.worker.is_running() {
            self.worker.cancel();
            self.progress = None;
            self.steps.retain(|s| !s.stale);
            notices.info("Run cancelled; iterations computed so far are kept.");
        }
    }

    pub fn is_running(&self) -> bool {
        self.worker.is_running()
    }

    /// Starts the sanity check of iteration 0's map with `params` (a check in flight stops).
    pub fn start_check(
        &mut self,
        ctx: &egui::Context,
        params: &UnveilParams,
        notices: &mut Notices,
    ) {
        let (Some(explainer), Some(img)) = (self.explainer.clone(), self.image.as_ref()) else {
            notices.error("Nothing to check yet: wait for the model and the image.");
            return;
        };
        if let Err(e) = params.validate() {
            notices.error(e.to_string());
            return;
        }
        self.checking = Some(CheckedFor::new(self, params));
        self.check_progress = None;
        let window = self.model_window;
        self.checker
            .start_check(ctx, explainer, img.source.clone(), window, params.clone());
    }

    pub fn cancel_check(&mut self) {
        if self.checker.is_running() {
            self.checker.cancel();
        }
        self.checking = None;
        self.check_progress = None;
    }

    pub fn is_checking(&self) -> bool {
        self.checker.is_running()
    }

    /// True when the shown check was computed for this model, image, window and settings.
    pub fn check_is_current(&self, params: &UnveilParams) -> bool {
        self.check
            .as_ref()
            .is_some_and(|c| c.for_what == CheckedFor::new(self, params))
    }

    /// Busy with anything in the background (a run, a check, or loading a model or an image).
    pub fn is_busy(&self) -> bool {
        self.worker.is_running()
            || self.checker.is_running()
            || self.rerun
            || self.model_job.is_some()
            || self.image_job.is_some()
    }

    /// Loading a model or decoding an image: promises, which do not wake the app by themselves.
    pub fn is_loading(&self) -> bool {
        self.model_job.is_some() || self.image_job.is_some()
    }

    pub fn live_worker_threads(&self) -> usize {
        self.worker.live_threads() + self.checker.live_threads()
    }

    pub fn runs_started(&self) -> u64 {
        self.worker.started()
    }

    /// The class being explained: the finished run's, else the chosen one, else the top-1
    /// of the results on screen.
    pub fn target(&self, chosen: Option<usize>) -> Option<usize> {
        self.outcome
            .as_ref()
            .map(|o| o.target)
            .or(chosen)
            .or_else(|| self.steps.first().map(|s| s.step.top5[0].class))
    }

    /// Starts the requested run when the model and an image are there (the previous run is
    /// cancelled: the latest settings win).
    pub fn start_requested_run(
        &mut self,
        ctx: &egui::Context,
        params: &UnveilParams,
        notices: &mut Notices,
    ) {
        if !self.rerun {
            return;
        }
        let (Some(explainer), Some(img)) = (self.explainer.clone(), self.image.as_ref()) else {
            return;
        };
        self.rerun = false;
        if let Err(e) = params.validate() {
            notices.error(e.to_string());
            return;
        }
        for s in &mut self.steps {
            s.stale = true;
        }
        self.outcome = None;
        self.progress = None;
        self.worker.start_run(
            ctx,
            explainer,
            img.source.clone(),
            self.model_window,
            params.clone(),
        );
        self.run_started = Some(std::time::Instant::now());
    }

    /// Takes in what background work finished since the last frame.
    pub fn poll(&mut self, ctx: &egui::Context, notices: &mut Notices) -> Vec<Happened> {
        let mut happened = Vec::new();
        if let Some((name, p)) = self.model_job.take() {
            match p.try_take() {
                Ok(Ok(explainer)) => {
                    self.explainer = Some(Arc::new(explainer));
                    self.told_fell_back = false;
                    self.loads.0 += 1;
                    self.request_run();
                }
                Ok(Err(e)) => notices.error(format!("Cannot load model '{name}': {e}")),
                Err(p) => self.model_job = Some((name, p)),
            }
        }
        if let Some(p) = self.image_job.take() {
            match p.try_take() {
                Ok(Ok(decoded)) => {
                    happened.push(Happened::ImageOpened(decoded.path.clone()));
                    self.set_image(ctx, decoded);
                }
                Ok(Err(e)) => notices.error(e.to_string()),
                Err(p) => self.image_job = Some(p),
            }
        }
        for msg in self.worker.poll() {
            match msg {
                Msg::Progress(p) => self.progress = Some(p),
                Msg::Step(step) => self.add_step(ctx, *step, notices),
                Msg::Curves(index, curves) => {
                    if let Some(view) = self.steps.get_mut(index).filter(|v| !v.stale) {
                        view.step.faithfulness = Some(*curves);
                    }
                }
                Msg::Done(result) => {
                    self.progress = None;
                    match result {
                        Ok(outcome) => {
                            self.steps.truncate(outcome.steps.len());
                            self.outcome = Some(outcome);
                            self.run_ms = self
                                .run_started
                                .take()
                                .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
                        }
                        Err(e) => {
                            self.steps.retain(|s| !s.stale);
                            if !matches!(e, Error::Cancelled) {
                                notices.error(format!("Run failed: {e}"));
                            }
                        }
                    }
                    self.generation += 1;
                }
            }
        }
        for msg in self.checker.poll() {
            match msg {
                CheckMsg::Progress(p) => self.check_progress = Some(p),
                CheckMsg::Done(result) => {
                    self.check_progress = None;
                    let for_what = self.checking.take();
                    match (result, for_what) {
                        (Ok(check), Some(for_what)) => {
                            let picture = textures::upload(
                                ctx,
                                "sanity-check",
                                &render::check_picture(&check),
                            );
                            self.check = Some(CheckView {
                                check,
                                picture,
                                for_what,
                            });
                        }
                        (Err(Error::Cancelled), _) | (Ok(_), None) => {}
                        (Err(e), _) => notices.error(format!("Sanity check failed: {e}")),
                    }
                }
            }
        }
        // A run or check whose GPU failed goes on on the CPU: say so once.
        if !self.told_fell_back
            && let Some(why) = self.explainer.as_ref().and_then(|e| e.fell_back())
        {
            notices.info(format!("Moved to the CPU: {why}."));
            self.told_fell_back = true;
        }
        happened
    }

    fn set_image(&mut self, ctx: &egui::Context, d: Decoded) {
        let Decoded {
            name,
            path,
            source,
            preview,
            preview_gray,
            looks_gray,
        } = d;
        self.window = source.gray.as_ref().map(|g| g.default_window);
        self.model_window = self.window;
        let texture = textures::upload(ctx, "original", &preview);
        self.image = Some(Loaded {
            name,
            path,
            source: Arc::new(source),
            texture,
            preview,
            preview_gray,
            looks_gray,
        });
        self.steps.clear();
        self.outcome = None;
        self.pinned = None;
        self.generation += 1;
        self.loads.1 += 1;
        self.cancel_check();
        self.request_run();
    }

    fn add_step(&mut self, ctx: &egui::Context, step: Step, notices: &mut Notices) {
        let Some(explainer) = &self.explainer else {
            return;
        };
        let pictures = match pictures(&step, explainer.info(), self.heatmap) {
            Ok(p) => p,
            Err(e) => {
                notices.error(e.to_string());
                return;
            }
        };
        let view = StepView {
            textures: upload_step(ctx, step.index, &pictures),
            step,
            stale: false,
        };
        let i = view.step.index;
        if i < self.steps.len() {
            self.steps[i] = view;
        } else {
            self.steps.push(view);
        }
        self.generation += 1;
    }
}

/// One iteration's pictures ([`render::step_images`]), the saliency over the image when
/// `heatmap` > 0.
fn pictures(step: &Step, info: &ModelInfo, heatmap: f32) -> Result<[::image::RgbImage; 4]> {
    let mut p = render::step_images(step, info)?;
    if heatmap > 0.0 {
        p[1] = render::saliency_overlay(&p[0], &step.saliency, heatmap);
    }
    Ok(p)
}

fn upload_step(
    ctx: &egui::Context,
    index: usize,
    pictures: &[::image::RgbImage; 4],
) -> [TextureHandle; 4] {
    std::array::from_fn(|c| textures::upload(ctx, &format!("step{index}-{c}"), &pictures[c]))
}
