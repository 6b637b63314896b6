//! The application: who owns what, and the frame.
//!
//! State is split as in egui's demo app: [`Settings`] (persisted), the [`Workspace`]'s slots
//! (model, image, run, check: runtime state with the background work producing it), the view
//! cache ([`Textures`]) and each panel's own view state. Panels read and return [`Action`]s;
//! the slots' polls return [`Event`]s, carried as actions. [`App::apply`] is the one place
//! where state changes. What finished in the background is applied before anything is drawn,
//! and the bars' and the side panel's actions before the results are drawn, so a slider's
//! effect is on screen in the frame it moved.

use std::path::PathBuf;

use crate::engine::device;
use crate::engine::params::{Change, UnveilParams};
use crate::gui::action::{Action, Export};
use crate::gui::jobs::{ExportRequest, Jobs};
use crate::gui::notices::Notices;
use crate::gui::options::AppOptions;
use crate::gui::panels::iterations::IterationsView;
use crate::gui::panels::path_prompt::PathPromptView;
use crate::gui::panels::presenter::Presenter;
use crate::gui::panels::regions::RegionsView;
use crate::gui::panels::top_bar::TopBarView;
use crate::gui::panels::{controls, fit_warning, presenter, status};
use crate::gui::settings::{Settings, View};
use crate::gui::textures::Textures;
use crate::gui::workspace::fetch::load_failed;
use crate::gui::workspace::{Event, Workspace};

pub struct App {
    pub settings: Settings,
    pub workspace: Workspace,
    pub notices: Notices,
    pub iterations: IterationsView,
    /// Presenter mode: full screen, side panel hidden, iterations one at a time.
    pub presenter: Presenter,
    textures: Textures,
    regions: RegionsView,
    top_bar: TopBarView,
    path_prompt: PathPromptView,
    jobs: Jobs,
    /// A sanity check asked for at start, waiting for the model and the image.
    check_at_start: bool,
    /// Grad-CAM's layer chosen for the current (ONNX) model; `None`: its automatic choice.
    cam_layer: Option<String>,
    /// The side panel shown or hidden by the user; `None`: shown when the window is wide
    /// enough (at 2x text on 1024 x 768 it would leave the results a sliver).
    side_panel: Option<bool>,
}

/// Below this width (in points, after text scaling) the side panel starts hidden.
const NARROW: f32 = 760.0;

impl App {
    pub fn new(cc: &eframe::CreationContext<'_>, mut options: AppOptions) -> Self {
        let settings = options.settings_over(cc.storage);
        let mut app = App {
            settings,
            workspace: Workspace::new(options.installer.clone()),
            notices: Notices::default(),
            iterations: IterationsView::default(),
            presenter: Presenter::new(options.presenter),
            textures: Textures::default(),
            regions: RegionsView::default(),
            top_bar: TopBarView::new(device::probe().options()),
            path_prompt: PathPromptView::default(),
            jobs: Jobs::new(options.dialogs),
            check_at_start: options.sanity_check,
            cam_layer: None,
            side_panel: None,
        };
        if app.presenter.on {
            cc.egui_ctx
                .send_viewport_cmd(egui::ViewportCommand::Fullscreen(true));
        }
        app.load_model();
        match options.image {
            Some(path) => app.workspace.image.open_path(path),
            None if options.open_sample => app.workspace.image.open_sample(0),
            None => {}
        }
        app
    }

    /// Busy with anything in the background (a run, loading, a dialog, an export).
    pub fn is_busy(&self) -> bool {
        self.workspace.is_busy() || self.jobs.is_busy()
    }

    /// The class being explained.
    pub fn target(&self) -> Option<usize> {
        self.workspace.target()
    }

    /// The parameters a run uses: the settings, with the class chosen for this image.
    pub fn run_params(&self) -> UnveilParams {
        UnveilParams {
            target: self.workspace.run.target(),
            ..self.settings.params.clone()
        }
    }

    /// (Re)loads the model of the settings on their device; the results and the check go.
    fn load_model(&mut self) {
        let (name, layer) = (&self.settings.model, self.cam_layer.as_deref());
        if let Err(e) = self
            .workspace
            .model
            .load_named(name, layer, self.settings.device)
        {
            return self.notices.error(e.to_string());
        }
        self.workspace.run.clear();
        self.workspace.check.clear();
    }

    /// Applies a frame's actions in order.
    fn apply_all(&mut self, actions: &mut Vec<Action>, ctx: &egui::Context) {
        for action in actions.drain(..) {
            self.apply(action, ctx);
        }
    }

    /// What the frame's actions asked for that waits until the frame is drawn: a requested
    /// run starts (the latest settings win, however many changes came in the frame), so the
    /// frame that shows a change does not share the cores with the run it starts; and a
    /// sanity check asked for at start, once there are results.
    fn end_frame(&mut self, ctx: &egui::Context) {
        let params = self.run_params();
        if let Err(e) = self.workspace.start_requested_run(ctx, &params) {
            self.notices.error(e.to_string());
        }
        if self.check_at_start && self.workspace.run.outcome().is_some() {
            self.check_at_start = false;
            self.apply(Action::CheckMap, ctx);
        }
    }

    /// The one place where state changes.
    fn apply(&mut self, action: Action, ctx: &egui::Context) {
        let ws = &mut self.workspace;
        match action {
            Action::PickImage => self.jobs.pick_image(),
            Action::OpenImage(path) => ws.image.open_path(path),
            Action::PickModel => self.jobs.pick_model(),
            Action::SetModel(_) | Action::SetCamLayer(_) => {
                match action {
                    Action::SetModel(name) => (self.settings.model, self.cam_layer) = (name, None),
                    Action::SetCamLayer(layer) => self.cam_layer = Some(layer),
                    _ => {}
                }
                // Class numbers belong to a model.
                ws.run.reset();
                self.iterations.reset();
                self.load_model();
            }
            // What the model file did not say, written down to be edited, then loaded.
            Action::SpellOutModel => match ws.model.spell_out(&self.settings.model) {
                Ok((json, note)) => {
                    self.notices.info(note);
                    self.apply(Action::SetModel(json), ctx);
                }
                Err(e) => self.notices.error(e.to_string()),
            },
            Action::FetchModel(name) => ws.fetch.start(ctx, &name),
            Action::CancelFetch => {
                if ws.fetch.cancel() {
                    self.notices.info("Fetch cancelled; nothing was installed.");
                }
            }
            Action::SetDevice(d) => {
                self.settings.device = d;
                self.load_model();
            }
            Action::SetParams(params) => {
                let params = UnveilParams {
                    target: None,
                    ..params
                };
                let change = params.change_from(&self.settings.params);
                self.settings.params = params;
                if change == Change::MaskOnly
                    && let Err(e) = self.workspace.remask_first(&self.run_params())
                {
                    self.notices.error(e.to_string());
                }
                if change != Change::None {
                    self.workspace.run.request();
                }
            }
            Action::SetTarget(t) => {
                if ws.run.set_target(t) {
                    ws.run.request();
                }
            }
            Action::SetWindow(w) => ws.image.set_window(w),
            Action::SetModelWindow(w) => {
                if ws.image.set_model_window(w) {
                    ws.run.request();
                }
            }
            Action::SetView(v) => self.settings.view = v,
            Action::SetOverlayOpacity(o) => self.settings.overlay_opacity = o,
            Action::SetHeatmap(o) => self.settings.heatmap = o,
            Action::CancelRun => {
                if ws.run.cancel() {
                    self.notices
                        .info("Run cancelled; iterations computed so far are kept.");
                }
            }
            Action::CheckMap => {
                let params = self.run_params();
                if let Err(e) = self.workspace.start_check(ctx, &params) {
                    self.notices.error(e);
                }
            }
            Action::CancelCheck => ws.check.cancel(),
            Action::PickMontageFile => self.jobs.pick_montage_file(ws.image.name()),
            Action::PickExportFolder => self.jobs.pick_export_folder(),
            Action::PickRegionsFile => self.jobs.pick_regions_file(ws.image.name()),
            Action::Export(kind, path) => self.export(kind, path),
            Action::PromptPath(p) => self.path_prompt.open(p),
            Action::OpenSample(i) => ws.image.open_sample(i),
            Action::Pin(true) => ws.run.pin(&self.settings.params),
            Action::Pin(false) => ws.run.unpin(),
            Action::StartWithDefaults => {
                let recent = std::mem::take(&mut self.settings.recent);
                self.settings = Settings {
                    recent,
                    ..Settings::default()
                };
                ws.run.reset();
                self.iterations.reset();
                self.load_model();
                self.workspace.image.open_sample(0);
                self.notices
                    .info("Default settings, the default model and the sample image.");
            }
            Action::TogglePresenter => {
                self.presenter.toggle();
                ctx.send_viewport_cmd(egui::ViewportCommand::Fullscreen(self.presenter.on));
            }
            Action::TogglePlaying => self.presenter.toggle_playing(),
            Action::NextIteration => {
                let rows = ws.run.steps().len().max(1);
                self.iterations.selected = (self.iterations.selected + 1) % rows;
                self.presenter.advanced();
            }
            Action::SetFontScale(f) => self.settings.font_scale = f.clamp(0.75, 3.0),
            Action::ShowControls(on) => self.side_panel = Some(on),
            Action::DismissNotice(id) => self.notices.dismiss(id),
            Action::Happened(event) => match event {
                Event::ModelLoaded(_, Ok(explainer)) => {
                    ws.model.set(explainer);
                    ws.run.request();
                }
                Event::ModelLoaded(name, Err(e)) => self.notices.error(load_failed(&name, &e)),
                Event::FellBack(why) => {
                    ws.model.told_fell_back();
                    self.notices.info(format!("Moved to the CPU: {why}."));
                }
                Event::ImageOpened(Ok(image)) => {
                    if let Some(p) = &image.path {
                        self.settings.remember(p.clone());
                    }
                    ws.image.set(*image);
                    // Regions and class numbers belong to an image.
                    ws.run.reset();
                    ws.check.cancel();
                    ws.run.request();
                    self.iterations.reset();
                }
                Event::ImageOpened(Err(e)) => self.notices.error(e.to_string()),
                Event::Run(job, msg) => {
                    if let Some(e) = ws.run.absorb(job, msg) {
                        self.notices.error(e);
                    }
                }
                Event::Check(job, msg) => {
                    if let Some(e) = ws.check.absorb(job, msg) {
                        self.notices.error(e);
                    }
                }
                Event::Fetch(job, msg) => match ws.fetch.absorb(job, msg) {
                    Some(Ok(name)) => {
                        self.notices
                            .info(format!("Fetched {name}; it is the model now."));
                        self.apply(Action::SetModel(name), ctx);
                    }
                    Some(Err(e)) => self.notices.error(e),
                    None => {}
                },
                Event::Info(text) => self.notices.info(text),
                Event::Error(text) => self.notices.error(text),
            },
        }
    }

    /// Writes the finished run off the UI thread (the export job holds the engine's calls).
    fn export(&mut self, kind: Export, path: PathBuf) {
        match ExportRequest::new(&self.workspace, &self.settings) {
            Some(request) => self.jobs.export(kind, path, request),
            None => self
                .notices
                .error("Nothing to export yet: wait for the run to finish."),
        }
    }
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        // What finished in the background, applied before anything is drawn.
        let mut actions: Vec<Action> = self
            .workspace
            .poll()
            .into_iter()
            .map(Action::Happened)
            .collect();
        actions.extend(self.jobs.poll());
        self.apply_all(&mut actions, &ctx);

        // Dropped files open like picked ones (a model file as the model, see dialogs::open).
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        actions.extend(dropped.first().map(|f| crate::gui::dialogs::open(f.path())));
        if (ctx.zoom_factor() - self.settings.font_scale).abs() > 1e-3 {
            ctx.set_zoom_factor(self.settings.font_scale);
        }
        let rows = self.workspace.run.steps().len();
        let enlarged = self.iterations.enlarged.is_some();
        self.presenter.keys(&ctx, rows, enlarged, &mut actions);
        self.iterations.handle_keys(&ctx, rows);

        let wide = ctx.content_rect().width() >= NARROW;
        let show_panel = !self.presenter.on && self.side_panel.unwrap_or(wide);
        let ws = &self.workspace;
        self.top_bar.ui(
            ui,
            ws,
            &self.settings,
            (self.presenter.on, show_panel),
            &mut actions,
        );
        status::ui(ui, ws, &self.notices, &mut actions);
        if show_panel {
            egui::Panel::left("controls")
                .resizable(true)
                .default_size(300.0)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| {
                        controls::ui(ui, ws, &self.settings.params, &mut actions)
                    });
                });
        }
        self.apply_all(&mut actions, &ctx);

        // The pictures of what is on screen, drawn once per change, before the results.
        for e in self
            .textures
            .sync(&ctx, &self.workspace, self.settings.heatmap)
        {
            actions.push(Action::Happened(Event::Error(e)));
        }
        let shown = (&self.workspace, &self.textures);
        egui::CentralPanel::default().show(ui, |ui| {
            fit_warning::ui(ui, shown.0, &mut actions);
            if self.presenter.on {
                presenter::ui(ui, shown, self.iterations.selected, self.presenter.playing);
                return;
            }
            match self.settings.view {
                View::Iterations => self.iterations.ui(
                    ui,
                    shown,
                    &self.settings.params,
                    self.settings.heatmap,
                    &mut actions,
                ),
                View::AllRegions => {
                    self.regions
                        .ui(ui, shown.0, self.settings.overlay_opacity, &mut actions)
                }
            }
        });
        self.iterations.enlarged_window(&ctx, shown.0, shown.1);
        self.path_prompt.ui(&ctx, &mut actions);
        self.apply_all(&mut actions, &ctx);
        self.end_frame(&ctx);

        // Runs and checks wake the app with every message (progress included); only promises
        // (dialogs, exports, loading) need polling. Nothing else asks for frames.
        if self.jobs.is_busy() || self.workspace.is_loading() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}
