//! The application: state, message handling and the frame layout. Drawing lives in `panels`.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use egui::TextureHandle;
use poll_promise::Promise;

use crate::engine::device::{self, DeviceChoice};
use crate::engine::export::{self, RunInfo};
use crate::engine::image::{self, Grayscale, SourceImage, Window};
use crate::engine::mask;
use crate::engine::models::{self, Classifier};
use crate::engine::ops::Backend;
use crate::engine::params::{MaskParams, UnveilParams};
use crate::engine::render;
use crate::engine::unveil::{Filler, GradientCache, Outcome, Progress, Step};
use crate::error::{Error, Result};
use crate::gui::dialogs::{Dialogs, NativeDialogs};
use crate::gui::notices::Notices;
use crate::gui::settings::{Settings, View};
use crate::gui::textures;
use crate::gui::worker::{Msg, Worker};

/// The sample shown on first start, compiled in so the app works from any folder.
const SAMPLE_NAME: &str = "chelsea.png (sample)";
static SAMPLE_PNG: &[u8] = include_bytes!("../../assets/chelsea.png");

/// How the app starts; tests replace the dialogs and skip persisted settings.
pub struct AppOptions {
    pub dialogs: Arc<dyn Dialogs>,
    /// Load the sample image and start a run at once (a newcomer sees results immediately).
    pub open_sample: bool,
    /// Settings to start from instead of the persisted ones.
    pub settings: Option<Settings>,
    /// An image to open instead of the sample (e.g. from the command line).
    pub image: Option<PathBuf>,
    /// The view to start in, overriding the persisted one.
    pub view: Option<View>,
    /// The model to start with, overriding the persisted one.
    pub model: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            dialogs: Arc::new(NativeDialogs),
            open_sample: true,
            settings: None,
            image: None,
            view: None,
            model: None,
        }
    }
}

/// One iteration on screen: the engine's step and its pictures.
pub struct StepView {
    pub step: Step,
    /// Input, saliency, mask, masked: as in the CLI's montage.
    pub textures: [TextureHandle; 4],
    /// From an earlier run; replaced as the current run produces its own.
    pub stale: bool,
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
}

/// A decoded image with its display copy, both made off the UI thread.
struct Decoded {
    name: String,
    path: Option<PathBuf>,
    source: SourceImage,
    preview: ::image::RgbImage,
    preview_gray: Option<Grayscale>,
}

type LoadResult = Result<Decoded>;

/// Decodes and makes the (at most 1024 px) display copy: both can take a while on big files.
fn decode(
    name: String,
    path: Option<PathBuf>,
    load: impl FnOnce() -> Result<SourceImage>,
) -> LoadResult {
    let source = load()?;
    let rgb = ::image::DynamicImage::ImageRgb32F(source.rgb.clone()).to_rgb8();
    Ok(Decoded {
        name,
        path,
        preview: textures::fit(&rgb, 1024),
        preview_gray: source.gray.as_ref().map(|g| textures::fit_gray(g, 1024)),
        source,
    })
}

pub struct App {
    pub settings: Settings,
    dialogs: Arc<dyn Dialogs>,
    pub notices: Notices,
    worker: Worker,
    cache: Arc<GradientCache>,

    pub model: Option<Arc<dyn Classifier>>,
    pub device: Device,
    model_promise: Option<Promise<Result<Arc<dyn Classifier>>>>,
    image_promise: Option<Promise<LoadResult>>,
    open_dialog: Option<Promise<Option<PathBuf>>>,
    model_dialog: Option<Promise<Option<PathBuf>>>,
    export_dialog: Option<(ExportKind, Promise<Option<PathBuf>>)>,
    export_job: Option<Promise<Result<String>>>,

    pub image: Option<Loaded>,
    /// The grayscale window in use (None for colour images).
    pub window: Option<Window>,
    pub steps: Vec<StepView>,
    pub outcome: Option<Outcome>,
    pub progress: Option<Progress>,
    /// A run should start at the end of this frame (settings changed).
    rerun: bool,
    pub selected: usize,
    pub enlarged: Option<(usize, usize)>,
    pub class_search: String,
    regions: Option<(u64, TextureHandle)>,
    generation: u64,
}

#[derive(Clone, Copy, Debug)]
enum ExportKind {
    Montage,
    Run,
}

impl App {
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        let settings = options
            .settings
            .or_else(|| {
                cc.storage
                    .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            })
            .unwrap_or_default();
        let mut app = App {
            settings,
            dialogs: options.dialogs,
            notices: Notices::default(),
            worker: Worker::default(),
            cache: Arc::new(GradientCache::default()),
            model: None,
            device: Device::Cpu,
            model_promise: None,
            image_promise: None,
            open_dialog: None,
            model_dialog: None,
            export_dialog: None,
            export_job: None,
            image: None,
            window: None,
            steps: Vec::new(),
            outcome: None,
            progress: None,
            rerun: false,
            selected: 0,
            enlarged: None,
            class_search: String::new(),
            regions: None,
            generation: 0,
        };
        app.settings.params.target = None;
        if let Some(v) = options.view {
            app.settings.view = v;
        }
        if let Some(m) = options.model {
            app.settings.model = m;
        }
        app.load_model();
        if let Some(path) = options.image {
            app.open_path(path);
        } else if options.open_sample {
            app.image_promise = Some(Promise::spawn_thread("decode-sample", || {
                decode(SAMPLE_NAME.to_string(), None, || image::decode(SAMPLE_PNG))
            }));
        }
        app
    }

    /// (Re)loads the chosen model on the chosen device, off the UI thread.
    pub fn load_model(&mut self) {
        let (name, choice) = (self.settings.model.clone(), self.settings.device);
        self.worker.cancel();
        self.model = None;
        self.model_promise = Some(Promise::spawn_thread("load-model", move || {
            let device = device::open(choice)?;
            models::load(&name, &device, Backend::Fast)
        }));
    }

    /// Opens an image file, off the UI thread.
    pub fn open_path(&mut self, path: PathBuf) {
        self.image_promise = Some(Promise::spawn_thread("decode-image", move || {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            decode(name, Some(path.clone()), || image::load(&path))
        }));
    }

    pub fn show_open_dialog(&mut self) {
        let dialogs = self.dialogs.clone();
        self.open_dialog = Some(Promise::spawn_thread("open-dialog", move || {
            dialogs.pick_image()
        }));
    }

    /// Picks a model description (.json) and loads it, off the UI thread.
    pub fn show_model_dialog(&mut self) {
        let dialogs = self.dialogs.clone();
        self.model_dialog = Some(Promise::spawn_thread("model-dialog", move || {
            dialogs.pick_model()
        }));
    }

    pub fn show_export_dialog(&mut self, montage: bool) {
        let dialogs = self.dialogs.clone();
        let stem = self
            .image
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_default();
        let stem = stem.split('.').next().unwrap_or("unveil").to_string();
        let (kind, p) = if montage {
            (
                ExportKind::Montage,
                Promise::spawn_thread("save-dialog", move || {
                    dialogs.save_png(&format!("{stem}-montage.png"))
                }),
            )
        } else {
            (
                ExportKind::Run,
                Promise::spawn_thread("folder-dialog", move || dialogs.pick_folder()),
            )
        };
        self.export_dialog = Some((kind, p));
    }

    /// Marks the results out of date; a run starts at the end of the frame.
    pub fn request_run(&mut self) {
        self.rerun = true;
    }

    /// Called when only mask parameters changed: iteration 0's mask is recomputed at once from
    /// its saliency map (no gradient), and the later iterations in the background.
    pub fn mask_params_changed(&mut self, ctx: &egui::Context) {
        if let (Some(model), Some(first)) = (self.model.clone(), self.steps.first_mut()) {
            let p: &MaskParams = &self.settings.params.mask;
            let m = mask::make_mask(&first.step.saliency, p);
            if let Ok(filler) =
                Filler::new(model.as_ref(), &first.step.input, self.settings.params.fill)
                && let Ok(masked) = filler.apply(&m, &Device::Cpu)
            {
                first.step.mask = m.clone();
                first.step.cumulative = m;
                first.step.masked = masked;
                if let Ok(imgs) = export::step_images(&first.step, model.info()) {
                    first.textures = upload_step(ctx, first.step.index, &imgs);
                }
            }
        }
        self.request_run();
    }

    /// Sets the grayscale window: the display updates now, the model sees it in the next run.
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
        self.request_run();
    }

    pub fn cancel_run(&mut self) {
        if self.worker.is_running() {
            self.worker.cancel();
            self.progress = None;
            self.steps.retain(|s| !s.stale);
            self.notices
                .info("Run cancelled; iterations computed so far are kept.");
        }
    }

    pub fn is_running(&self) -> bool {
        self.worker.is_running()
    }

    /// Busy with anything in the background (a run, loading, a dialog, an export).
    pub fn is_busy(&self) -> bool {
        self.worker.is_running()
            || self.rerun
            || self.model_promise.is_some()
            || self.image_promise.is_some()
            || self.open_dialog.is_some()
            || self.model_dialog.is_some()
            || self.export_dialog.is_some()
            || self.export_job.is_some()
    }

    pub fn live_worker_threads(&self) -> usize {
        self.worker.live_threads()
    }

    pub fn runs_started(&self) -> u64 {
        self.worker.runs_started()
    }

    /// The class being explained.
    pub fn target(&self) -> Option<usize> {
        self.outcome
            .as_ref()
            .map(|o| o.target)
            .or(self.settings.params.target)
            .or_else(|| self.steps.first().map(|s| s.step.top5[0].class))
    }

    fn start_run(&mut self, ctx: &egui::Context) {
        self.rerun = false;
        let (Some(model), Some(img)) = (self.model.clone(), self.image.as_ref()) else {
            return;
        };
        if let Err(e) = self.settings.params.validate() {
            self.notices.error(e.to_string());
            return;
        }
        for s in &mut self.steps {
            s.stale = true;
        }
        self.outcome = None;
        self.progress = None;
        self.worker.start(
            ctx,
            model,
            img.source.clone(),
            self.window,
            self.settings.params.clone(),
            self.cache.clone(),
        );
    }

    fn poll(&mut self, ctx: &egui::Context) {
        if let Some(p) = self.model_promise.take() {
            match p.try_take() {
                Ok(Ok(model)) => {
                    self.device = model.device().clone();
                    self.model = Some(model);
                    self.cache = Arc::new(GradientCache::default());
                    self.request_run();
                }
                Ok(Err(e)) => self
                    .notices
                    .error(format!("Cannot load model '{}': {e}", self.settings.model)),
                Err(p) => self.model_promise = Some(p),
            }
        }
        if let Some(p) = self.image_promise.take() {
            match p.try_take() {
                Ok(Ok(decoded)) => self.set_image(ctx, decoded),
                Ok(Err(e)) => self.notices.error(e.to_string()),
                Err(p) => self.image_promise = Some(p),
            }
        }
        if let Some(p) = self.model_dialog.take() {
            match p.try_take() {
                Ok(Some(path)) => {
                    self.settings.model = path.display().to_string();
                    self.load_model();
                }
                Ok(None) => {}
                Err(p) => self.model_dialog = Some(p),
            }
        }
        if let Some(p) = self.open_dialog.take() {
            match p.try_take() {
                Ok(Some(path)) => self.open_path(path),
                Ok(None) => {}
                Err(p) => self.open_dialog = Some(p),
            }
        }
        if let Some((kind, p)) = self.export_dialog.take() {
            match p.try_take() {
                Ok(Some(path)) => self.export(kind, path),
                Ok(None) => {}
                Err(p) => self.export_dialog = Some((kind, p)),
            }
        }
        if let Some(p) = self.export_job.take() {
            match p.try_take() {
                Ok(Ok(msg)) => self.notices.info(msg),
                Ok(Err(e)) => self.notices.error(format!("Export failed: {e}")),
                Err(p) => self.export_job = Some(p),
            }
        }
        for msg in self.worker.poll() {
            match msg {
                Msg::Progress(p) => self.progress = Some(p),
                Msg::Step(step) => self.add_step(ctx, *step),
                Msg::Done(result) => {
                    self.progress = None;
                    match result {
                        Ok(outcome) => {
                            self.steps.truncate(outcome.steps.len());
                            self.outcome = Some(outcome);
                        }
                        Err(e) => {
                            self.steps.retain(|s| !s.stale);
                            if !matches!(e, Error::Cancelled) {
                                self.notices.error(format!("Run failed: {e}"));
                            }
                        }
                    }
                    self.generation += 1;
                    self.selected = self.selected.min(self.steps.len().saturating_sub(1));
                }
            }
        }
    }

    fn set_image(&mut self, ctx: &egui::Context, d: Decoded) {
        let Decoded {
            name,
            path,
            source: img,
            preview,
            preview_gray,
        } = d;
        self.window = img.gray.as_ref().map(|g| g.default_window);
        let texture = textures::upload(ctx, "original", &preview);
        if let Some(p) = &path {
            self.settings.remember(p.clone());
        }
        self.image = Some(Loaded {
            name,
            path,
            source: Arc::new(img),
            texture,
            preview,
            preview_gray,
        });
        self.steps.clear();
        self.outcome = None;
        self.selected = 0;
        self.enlarged = None;
        self.settings.params.target = None;
        self.regions = None;
        self.request_run();
    }

    fn add_step(&mut self, ctx: &egui::Context, step: Step) {
        let Some(model) = &self.model else { return };
        let imgs = match export::step_images(&step, model.info()) {
            Ok(i) => i,
            Err(e) => {
                self.notices.error(e.to_string());
                return;
            }
        };
        let view = StepView {
            textures: upload_step(ctx, step.index, &imgs),
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

    fn export(&mut self, kind: ExportKind, path: PathBuf) {
        let (Some(model), Some(outcome)) = (self.model.clone(), self.outcome.clone()) else {
            self.notices
                .error("Nothing to export yet: wait for the run to finish.");
            return;
        };
        let params = self.settings.params.clone();
        let image_name = self
            .image
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_default();
        let dev = device::describe(&self.device);
        self.export_job = Some(Promise::spawn_thread("export", move || match kind {
            ExportKind::Montage => {
                let path = path.with_extension("png");
                let img = export::montage(&outcome, model.info())?;
                save_png_atomically(&img, &path)?;
                Ok(format!("Saved montage to {}", path.display()))
            }
            ExportKind::Run => {
                let info = RunInfo {
                    image: &image_name,
                    device: &dev,
                    params: &params,
                    model: model.info(),
                    total_ms: 0.0,
                };
                export::write_run(&path, &outcome, &info, true, false)?;
                Ok(format!("Exported the run to {}", path.display()))
            }
        }));
    }

    /// The all-regions picture for the current steps and opacity (cached per change).
    pub fn regions_texture(&mut self, ctx: &egui::Context) -> Option<TextureHandle> {
        let img = self.image.as_ref()?;
        let key =
            self.generation.wrapping_mul(1000) + (self.settings.overlay_opacity * 999.0) as u64;
        if let Some((k, t)) = &self.regions
            && *k == key
        {
            return Some(t.clone());
        }
        let mut pic = img.preview.clone();
        let masks: Vec<_> = self.steps.iter().map(|s| &s.step).collect();
        render::regions_overlay(&mut pic, &masks, self.settings.overlay_opacity);
        let t = textures::upload(ctx, "regions", &pic);
        self.regions = Some((key, t.clone()));
        Some(t)
    }

    fn handle_input(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        if let Some(f) = dropped.into_iter().next() {
            // Files dropped from disk carry a path; read them like opened ones.
            self.open_path(f.path().to_path_buf());
        }
        if ctx.memory(|m| m.focused().is_some()) {
            return;
        }
        let (left, right, esc) = ctx.input(|i| {
            (
                i.key_pressed(egui::Key::ArrowLeft),
                i.key_pressed(egui::Key::ArrowRight),
                i.key_pressed(egui::Key::Escape),
            )
        });
        if left {
            self.selected = self.selected.saturating_sub(1);
        }
        if right && self.selected + 1 < self.steps.len() {
            self.selected += 1;
        }
        if esc {
            self.enlarged = None;
        }
    }
}

fn upload_step(
    ctx: &egui::Context,
    index: usize,
    imgs: &[::image::RgbImage; 4],
) -> [TextureHandle; 4] {
    std::array::from_fn(|c| textures::upload(ctx, &format!("step{index}-{c}"), &imgs[c]))
}

/// Writes to a temporary file next to `path`, then renames: never a half-written file.
fn save_png_atomically(img: &::image::RgbImage, path: &std::path::Path) -> Result<()> {
    let tmp = path.with_extension(format!("partial-{}.png", std::process::id()));
    export::save_png(img, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.poll(&ctx);
        self.handle_input(&ctx);

        crate::gui::panels::top_bar::ui(self, ui);
        crate::gui::panels::status::ui(self, ui);
        egui::Panel::left("controls")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .show(ui, |ui| crate::gui::panels::controls::ui(self, ui));
            });
        egui::CentralPanel::default().show(ui, |ui| match self.settings.view {
            View::Iterations => crate::gui::panels::iterations::ui(self, ui),
            View::AllRegions => crate::gui::panels::regions::ui(self, ui),
        });
        crate::gui::panels::iterations::enlarged_window(self, &ctx);

        if self.rerun && self.model.is_some() && self.image.is_some() {
            self.start_run(&ctx);
        }
        if self.is_busy() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}

/// The unchanged-parameters check used by the controls panel.
pub fn only_mask_changed(before: &UnveilParams, after: &UnveilParams) -> bool {
    before.mask != after.mask
        && before.saliency == after.saliency
        && before.stop == after.stop
        && before.fill == after.fill
        && before.target == after.target
}

/// The device choices offered, with a label.
pub fn device_options() -> Vec<(DeviceChoice, &'static str)> {
    let mut v = vec![(DeviceChoice::Auto, "Auto (GPU if present)")];
    for d in device::available() {
        v.push(match d {
            DeviceChoice::Cuda => (d, "CUDA GPU"),
            DeviceChoice::Metal => (d, "Metal GPU"),
            _ => (d, "CPU"),
        });
    }
    v
}
