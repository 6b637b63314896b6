//! The application: who owns what, and the frame.
//!
//! State is split three ways, as in egui's demo app and rerun: [`Settings`] (persisted), the
//! [`Workspace`] (model, image, results, the run in flight), and each panel's own view state.
//! Panels read the workspace and the settings and return [`Action`]s; [`App::apply`] is the one
//! place where state changes. Actions from the bars and the side panel are applied before the
//! results are drawn, so a slider's effect is on screen in the frame it moved.

use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::device;
use crate::engine::models::ModelSource;
use crate::engine::params::Change;
use crate::gui::action::{Action, Export, PathPrompt};
use crate::gui::dialogs::{Dialogs, NativeDialogs};
use crate::gui::jobs::{ExportRequest, Jobs};
use crate::gui::notices::Notices;
use crate::gui::panels::iterations::IterationsView;
use crate::gui::panels::regions::RegionsView;
use crate::gui::panels::top_bar::TopBarView;
use crate::gui::panels::{controls, fit_warning, presenter, status};
use crate::gui::settings::{Settings, View};
use crate::gui::workspace::{Happened, Workspace};

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
    /// Run the sanity check once the model and the image are loaded.
    pub sanity_check: bool,
    /// Start in presenter mode.
    pub presenter: bool,
    /// Text and widget size to start with (remembered like a choice in the app).
    pub font_scale: Option<f32>,
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
            sanity_check: false,
            presenter: false,
            font_scale: None,
        }
    }
}

pub struct App {
    pub settings: Settings,
    pub workspace: Workspace,
    pub notices: Notices,
    pub iterations: IterationsView,
    regions: RegionsView,
    top_bar: TopBarView,
    jobs: Jobs,
    /// A sanity check asked for at start, waiting for the model and the image.
    check_at_start: bool,
    /// A path being typed because no file dialog could open.
    path_prompt: Option<PathPrompt>,
    /// Presenter mode: full screen, side panel hidden, iterations one at a time.
    pub presenter: bool,
    /// The side panel shown or hidden by the user; `None`: shown when the window is wide
    /// enough (at 2x text on 1024 x 768 it would leave the results a sliver).
    side_panel: Option<bool>,
    /// Presenter mode steps through the iterations by itself until paused (Space).
    playing: bool,
    last_advance: std::time::Instant,
}

/// Below this width (in points, after text scaling) the side panel starts hidden.
const NARROW: f32 = 760.0;

/// Presenter mode's pace through the iterations.
const ADVANCE: std::time::Duration = std::time::Duration::from_secs(4);

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
            workspace: Workspace::default(),
            notices: Notices::default(),
            iterations: IterationsView::default(),
            regions: RegionsView::default(),
            top_bar: TopBarView::new(device::probe().options()),
            jobs: Jobs::new(options.dialogs),
            check_at_start: options.sanity_check,
            path_prompt: None,
            presenter: options.presenter,
            side_panel: None,
            playing: true,
            last_advance: std::time::Instant::now(),
        };
        app.settings.params.target = None;
        app.workspace.heatmap = app.settings.heatmap;
        if let Some(v) = options.view {
            app.settings.view = v;
        }
        if let Some(m) = options.model {
            app.settings.model = m;
        }
        if let Some(f) = options.font_scale {
            app.settings.font_scale = f.clamp(0.75, 3.0);
        }
        if app.presenter {
            cc.egui_ctx
                .send_viewport_cmd(egui::ViewportCommand::Fullscreen(true));
        }
        app.load_model();
        if let Some(path) = options.image {
            app.workspace.open_path(path);
        } else if options.open_sample {
            app.workspace.open_sample();
        }
        app
    }

    fn load_model(&mut self) {
        let source = ModelSource::Named(self.settings.model.clone());
        self.workspace.load_model(source, self.settings.device);
    }

    /// Busy with anything in the background (a run, loading, a dialog, an export).
    pub fn is_busy(&self) -> bool {
        self.workspace.is_busy() || self.jobs.is_busy()
    }

    /// The class being explained.
    pub fn target(&self) -> Option<usize> {
        self.workspace.target(self.settings.params.target)
    }

    /// The one place where state changes.
    fn apply(&mut self, action: Action, ctx: &egui::Context) {
        match action {
            Action::PickImage => self.jobs.pick_image(),
            Action::OpenImage(path) => self.workspace.open_path(path),
            Action::PickModel => self.jobs.pick_model(),
            Action::SetModel(name) => {
                self.settings.model = name;
                // Class numbers belong to a model.
                self.settings.params.target = None;
                self.iterations.reset();
                self.load_model();
            }
            Action::SetDevice(d) => {
                self.settings.device = d;
                self.load_model();
            }
            Action::SetParams(params) => {
                let change = params.change_from(&self.settings.params);
                self.settings.params = params;
                if change == Change::MaskOnly
                    && let Err(e) = self.workspace.remask_first(ctx, &self.settings.params)
                {
                    self.notices.error(e.to_string());
                }
                if change != Change::None {
                    self.workspace.request_run();
                }
            }
            Action::SetWindow(w) => self.workspace.set_window(ctx, w),
            Action::SetModelWindow(w) => self.workspace.set_model_window(w),
            Action::SetView(v) => self.settings.view = v,
            Action::SetOverlayOpacity(o) => self.settings.overlay_opacity = o,
            Action::SetHeatmap(o) => {
                self.settings.heatmap = o;
                self.workspace.set_heatmap(ctx, o);
            }
            Action::CancelRun => self.workspace.cancel_run(&mut self.notices),
            Action::CheckMap => {
                self.workspace
                    .start_check(ctx, &self.settings.params, &mut self.notices)
            }
            Action::CancelCheck => self.workspace.cancel_check(),
            Action::PickMontageFile => {
                let name = self.workspace.image.as_ref().map(|i| i.name.as_str());
                self.jobs.pick_montage_file(name.unwrap_or_default());
            }
            Action::PickExportFolder => self.jobs.pick_export_folder(),
            Action::PickRegionsFile => {
                let name = self.workspace.image.as_ref().map(|i| i.name.as_str());
                self.jobs.pick_regions_file(name.unwrap_or_default());
            }
            Action::Export(kind, path) => self.export(kind, path),
            Action::PromptPath(p) => self.path_prompt = Some(p),
            Action::OpenSample(i) => self.workspace.open_sample_at(i),
            Action::Pin(on) => {
                let params = self.settings.params.clone();
                self.workspace.pin(on.then_some(&params));
            }
            Action::StartWithDefaults => {
                let recent = std::mem::take(&mut self.settings.recent);
                self.settings = Settings {
                    recent,
                    ..Settings::default()
                };
                self.workspace.heatmap = 0.0;
                self.iterations.reset();
                self.load_model();
                self.workspace.open_sample();
                self.notices
                    .info("Default settings, the default model and the sample image.");
            }
            Action::TogglePresenter => {
                self.presenter = !self.presenter;
                self.playing = true;
                self.last_advance = std::time::Instant::now();
                ctx.send_viewport_cmd(egui::ViewportCommand::Fullscreen(self.presenter));
            }
            Action::SetFontScale(f) => self.settings.font_scale = f.clamp(0.75, 3.0),
            Action::ShowControls(on) => self.side_panel = Some(on),
        }
    }

    /// F11 toggles presenter mode; in it, Space pauses or resumes the automatic stepping
    /// and Escape leaves. While playing, the next iteration comes every [`ADVANCE`].
    fn presenter_keys(&mut self, ctx: &egui::Context, actions: &mut Vec<Action>) {
        let (f11, space, esc) = ctx.input(|i| {
            (
                i.key_pressed(egui::Key::F11),
                i.key_pressed(egui::Key::Space),
                i.key_pressed(egui::Key::Escape),
            )
        });
        if f11 || (esc && self.presenter && self.iterations.enlarged.is_none()) {
            actions.push(Action::TogglePresenter);
        }
        if !self.presenter {
            return;
        }
        if space && ctx.memory(|m| m.focused().is_none()) {
            self.playing = !self.playing;
            self.last_advance = std::time::Instant::now();
        }
        let rows = self.workspace.steps.len();
        if self.playing && rows > 1 {
            let since = self.last_advance.elapsed();
            if since >= ADVANCE {
                self.iterations.selected = (self.iterations.selected + 1) % rows;
                self.last_advance = std::time::Instant::now();
                ctx.request_repaint_after(ADVANCE);
            } else {
                ctx.request_repaint_after(ADVANCE - since);
            }
        }
    }

    /// The built-in stand-in for a file dialog: a path field.
    fn path_prompt_window(&mut self, ctx: &egui::Context, actions: &mut Vec<Action>) {
        let Some(prompt) = &mut self.path_prompt else {
            return;
        };
        let (mut open, mut done, mut cancel) = (true, false, false);
        egui::Window::new(prompt.title)
            .open(&mut open)
            .collapsible(false)
            .show(ctx, |ui| {
                ui.label("Full path of the file:");
                let r = ui.add(
                    egui::TextEdit::singleline(&mut prompt.text)
                        .desired_width(420.0)
                        .hint_text("/home/me/xray.dcm"),
                );
                r.request_focus();
                let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                ui.horizontal(|ui| {
                    done = ui.button("Open").clicked() || enter;
                    cancel = ui.button("Cancel").clicked();
                });
            });
        if done && !prompt.text.trim().is_empty() {
            actions.push((prompt.then)(PathBuf::from(prompt.text.trim())));
            self.path_prompt = None;
        } else if cancel || !open {
            self.path_prompt = None;
        }
    }

    fn export(&mut self, kind: Export, path: PathBuf) {
        let ws = &self.workspace;
        let (Some(explainer), Some(outcome)) = (ws.explainer.clone(), ws.outcome.clone()) else {
            self.notices
                .error("Nothing to export yet: wait for the run to finish.");
            return;
        };
        let image = ws.image.as_ref();
        let request = ExportRequest {
            explainer,
            outcome,
            params: self.settings.params.clone(),
            image_name: image
                .map(|i| {
                    i.path
                        .as_ref()
                        .map_or(i.name.clone(), |p| p.display().to_string())
                })
                .unwrap_or_default(),
            image_path: image.and_then(|i| i.path.clone()),
            windows: (ws.model_window, ws.window),
            total_ms: ws.run_ms,
            heatmap: self.settings.heatmap,
            source: image.map(|i| i.source.clone()),
            regions_opacity: self.settings.overlay_opacity,
        };
        self.jobs.export(kind, path, request);
    }

    /// What finished in the background since the last frame, turned into actions (answered
    /// dialogs) or applied to the settings and views (a new image).
    fn poll(&mut self, ctx: &egui::Context) -> Vec<Action> {
        let actions = self.jobs.poll(&mut self.notices);
        for happened in self.workspace.poll(ctx, &mut self.notices) {
            match happened {
                Happened::ImageOpened(path) => {
                    if let Some(p) = path {
                        self.settings.remember(p);
                    }
                    self.settings.params.target = None;
                    self.iterations.reset();
                }
            }
        }
        actions
    }
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        let mut actions = self.poll(&ctx);
        // Files dropped from disk carry a path; they open like picked ones.
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        if let Some(f) = dropped.first() {
            actions.push(Action::OpenImage(f.path().to_path_buf()));
        }
        if (ctx.zoom_factor() - self.settings.font_scale).abs() > 1e-3 {
            ctx.set_zoom_factor(self.settings.font_scale);
        }
        self.presenter_keys(&ctx, &mut actions);
        self.iterations
            .handle_keys(&ctx, self.workspace.steps.len());

        let wide = ctx.content_rect().width() >= NARROW;
        let show_panel = !self.presenter && self.side_panel.unwrap_or(wide);
        self.top_bar.ui(
            ui,
            &self.workspace,
            &self.settings,
            (self.presenter, show_panel),
            &mut actions,
        );
        status::ui(ui, &self.workspace, &mut self.notices, &mut actions);
        if show_panel {
            egui::Panel::left("controls")
                .resizable(true)
                .default_size(300.0)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| {
                        controls::ui(ui, &self.workspace, &self.settings.params, &mut actions)
                    });
                });
        }
        for action in actions.drain(..) {
            self.apply(action, &ctx);
        }

        let ws = &self.workspace;
        egui::CentralPanel::default().show(ui, |ui| {
            fit_warning::ui(ui, ws, &mut actions);
            if self.presenter {
                presenter::ui(ui, ws, self.iterations.selected, self.playing);
                return;
            }
            match self.settings.view {
                View::Iterations => self.iterations.ui(
                    ui,
                    ws,
                    &self.settings.params,
                    self.settings.heatmap,
                    &mut actions,
                ),
                View::AllRegions => {
                    self.regions
                        .ui(ui, ws, self.settings.overlay_opacity, &mut actions)
                }
            }
        });
        self.iterations.enlarged_window(&ctx, ws);
        self.path_prompt_window(&ctx, &mut actions);
        for action in actions.drain(..) {
            self.apply(action, &ctx);
        }

        self.workspace
            .start_requested_run(&ctx, &self.settings.params, &mut self.notices);
        if self.check_at_start && self.workspace.outcome.is_some() {
            self.check_at_start = false;
            self.apply(Action::CheckMap, &ctx);
        }
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
