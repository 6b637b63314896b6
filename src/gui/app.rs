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
use crate::gui::action::{Action, Export};
use crate::gui::dialogs::{Dialogs, NativeDialogs};
use crate::gui::jobs::{ExportRequest, Jobs};
use crate::gui::notices::Notices;
use crate::gui::panels::iterations::IterationsView;
use crate::gui::panels::regions::RegionsView;
use crate::gui::panels::top_bar::TopBarView;
use crate::gui::panels::{controls, status};
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
            workspace: Workspace::default(),
            notices: Notices::default(),
            iterations: IterationsView::default(),
            regions: RegionsView::default(),
            top_bar: TopBarView::new(device::options()),
            jobs: Jobs::new(options.dialogs),
            check_at_start: options.sanity_check,
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
            Action::SetView(v) => self.settings.view = v,
            Action::SetOverlayOpacity(o) => self.settings.overlay_opacity = o,
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
            Action::Export(kind, path) => self.export(kind, path),
        }
    }

    fn export(&mut self, kind: Export, path: PathBuf) {
        let ws = &self.workspace;
        let (Some(explainer), Some(outcome)) = (ws.explainer.clone(), ws.outcome.clone()) else {
            self.notices
                .error("Nothing to export yet: wait for the run to finish.");
            return;
        };
        let request = ExportRequest {
            explainer,
            outcome,
            params: self.settings.params.clone(),
            image_name: ws
                .image
                .as_ref()
                .map(|i| i.name.clone())
                .unwrap_or_default(),
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
        self.iterations
            .handle_keys(&ctx, self.workspace.steps.len());

        self.top_bar
            .ui(ui, &self.workspace, &self.settings, &mut actions);
        status::ui(ui, &self.workspace, &mut self.notices, &mut actions);
        egui::Panel::left("controls")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    controls::ui(ui, &self.workspace, &self.settings.params, &mut actions)
                });
            });
        for action in actions.drain(..) {
            self.apply(action, &ctx);
        }

        let ws = &self.workspace;
        egui::CentralPanel::default().show(ui, |ui| match self.settings.view {
            View::Iterations => self.iterations.ui(ui, ws, &self.settings.params),
            View::AllRegions => {
                self.regions
                    .ui(ui, ws, self.settings.overlay_opacity, &mut actions)
            }
        });
        self.iterations.enlarged_window(&ctx, ws);
        for action in actions.drain(..) {
            self.apply(action, &ctx);
        }

        self.workspace
            .start_requested_run(&ctx, &self.settings.params, &mut self.notices);
        if self.check_at_start && self.workspace.outcome.is_some() {
            self.check_at_start = false;
            self.apply(Action::CheckMap, &ctx);
        }
        if self.is_busy() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}
