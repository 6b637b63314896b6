//! Background work that is not a run: file dialogs (which block) and exports. Each runs on its
//! own thread; a finished dialog becomes an [`Action`], a finished export an [`Event`] with
//! its message.

use std::path::PathBuf;
use std::sync::Arc;

use poll_promise::Promise;

use crate::engine::export;
use crate::engine::render;
use crate::engine::run::RunRecord;
use crate::engine::source_image::{SourceImage, Window};
use crate::error::Result;
use crate::gui::action::{Action, Export, PathPrompt};
use crate::gui::dialogs::Dialogs;
use crate::gui::settings::Settings;
use crate::gui::workspace::{Event, Workspace};

/// Everything an export needs, copied out of the workspace so the UI goes on.
pub struct ExportRequest {
    /// The finished run with its provenance, as the engine recorded it.
    pub record: RunRecord,
    /// The window on screen now (grayscale images): recorded beside the model's.
    pub display_window: Option<Window>,
    /// The saliency column's opacity over the image, as on screen.
    pub heatmap: f32,
    /// The image (for pictures at its own resolution) and the regions' opacity.
    pub source: Option<Arc<SourceImage>>,
    pub regions_opacity: f32,
}

impl ExportRequest {
    /// The finished run on screen, drawn the way `settings` draw it; `None` before a run has
    /// finished.
    pub fn new(ws: &Workspace, settings: &Settings) -> Option<Self> {
        let record = ws.run.record()?.clone();
        Some(ExportRequest {
            record,
            display_window: ws.image.window(),
            heatmap: settings.heatmap,
            source: ws.image.loaded().map(|i| i.source.clone()),
            regions_opacity: settings.overlay_opacity,
        })
    }
}

/// An open file dialog: its answer, and the action it becomes.
struct Dialog {
    answer: Promise<Option<PathBuf>>,
    then: fn(PathBuf) -> Action,
    title: &'static str,
    asked: std::time::Instant,
}

/// A dialog answered "nothing" faster than anyone can click Cancel did not open: rfd returns
/// within ~20 ms when the desktop has no file-chooser portal.
const NO_DIALOG: std::time::Duration = std::time::Duration::from_millis(250);

pub struct Jobs {
    dialogs: Arc<dyn Dialogs>,
    dialog: Option<Dialog>,
    export: Option<Promise<Result<String>>>,
}

impl Jobs {
    pub fn new(dialogs: Arc<dyn Dialogs>) -> Self {
        Jobs {
            dialogs,
            dialog: None,
            export: None,
        }
    }

    fn ask(
        &mut self,
        name: &str,
        title: &'static str,
        ask: impl FnOnce(&dyn Dialogs) -> Option<PathBuf> + Send + 'static,
        then: fn(PathBuf) -> Action,
    ) {
        let dialogs = self.dialogs.clone();
        let answer = Promise::spawn_thread(name, move || ask(dialogs.as_ref()));
        self.dialog = Some(Dialog {
            answer,
            then,
            title,
            asked: std::time::Instant::now(),
        });
    }

    pub fn pick_image(&mut self) {
        self.ask(
            "open-dialog",
            "Open image",
            |d| d.pick_image(),
            Action::OpenImage,
        );
    }

    /// A model description (.json), loaded when picked.
    pub fn pick_model(&mut self) {
        self.ask(
            "model-dialog",
            "Open model",
            |d| d.pick_model(),
            |p| Action::SetModel(p.display().to_string()),
        );
    }

    pub fn pick_montage_file(&mut self, image_name: &str) {
        self.pick_png(image_name, "montage", "Save montage as", |p| {
            Action::Export(Export::Montage, p)
        });
    }

    pub fn pick_regions_file(&mut self, image_name: &str) {
        self.pick_png(image_name, "regions", "Save regions picture as", |p| {
            Action::Export(Export::Regions, p)
        });
    }

    /// Asks where to save a PNG, suggesting `<image stem>-<what>.png`.
    fn pick_png(
        &mut self,
        image_name: &str,
        what: &str,
        title: &'static str,
        then: fn(PathBuf) -> Action,
    ) {
        let stem = image_name.split('.').next().unwrap_or("unveil");
        let suggested = format!("{stem}-{what}.png");
        self.ask("save-dialog", title, move |d| d.save_png(&suggested), then);
    }

    pub fn pick_export_folder(&mut self) {
        self.ask(
            "folder-dialog",
            "Export run to folder",
            |d| d.pick_folder(),
            |p| Action::Export(Export::Run, p),
        );
    }

    /// Writes an export off the UI thread; the outcome arrives as a notice.
    pub fn export(&mut self, kind: Export, path: PathBuf, r: ExportRequest) {
        self.export = Some(Promise::spawn_thread("export", move || {
            let info = &r.record.provenance.model;
            let outcome = &r.record.outcome;
            match kind {
                Export::Montage => {
                    let path = path.with_extension("png");
                    let img = render::run_montage(outcome, info, r.heatmap)?;
                    export::save_png_atomically(&img, &path)?;
                    Ok(format!("Saved montage to {}", path.display()))
                }
                Export::Regions => {
                    let path = path.with_extension("png");
                    let Some(source) = &r.source else {
                        return Err(crate::error::Error::InvalidParam(
                            "no image to draw the regions on".into(),
                        ));
                    };
                    // The image at its own resolution, as displayed, as the model framed it.
                    let shown = match r.display_window {
                        Some(w) => source.windowed(w),
                        None => (**source).clone(),
                    };
                    let rgb = ::image::DynamicImage::ImageRgb32F(shown.rgb).to_rgb8();
                    let steps: Vec<_> = outcome.steps.iter().collect();
                    let pic = render::regions_picture(&rgb, info.crop, &steps, r.regions_opacity);
                    export::save_png_atomically(&pic, &path)?;
                    Ok(format!(
                        "Saved the regions picture ({} x {}) to {}",
                        pic.width(),
                        pic.height(),
                        path.display()
                    ))
                }
                Export::Run => {
                    // The run as the engine recorded it, with the window on screen now.
                    let mut run = r.record;
                    if let (Some(w), Some(display)) =
                        (run.provenance.record.window.as_mut(), r.display_window)
                    {
                        w.display = display;
                    }
                    export::write_run(&path, &run, true, false)?;
                    Ok(format!("Exported the run to {}", path.display()))
                }
            }
        }));
    }

    pub fn is_busy(&self) -> bool {
        self.dialog.is_some() || self.export.is_some()
    }

    /// Answered dialogs as actions; finished exports as events with their messages.
    pub fn poll(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(d) = self.dialog.take() {
            match d.answer.try_take() {
                Ok(Some(path)) => actions.push((d.then)(path)),
                Ok(None) if d.asked.elapsed() < NO_DIALOG => {
                    actions.push(Action::Happened(Event::Info("No file dialog could be opened (this desktop has no file-chooser portal): type the path instead, drop the file on the window, or give it on the command line (`unveil FILE`).".into())));
                    actions.push(Action::PromptPath(PathPrompt {
                        title: d.title,
                        text: String::new(),
                        then: d.then,
                    }));
                }
                Ok(None) => {}
                Err(answer) => self.dialog = Some(Dialog { answer, ..d }),
            }
        }
        if let Some(p) = self.export.take() {
            match p.try_take() {
                Ok(Ok(msg)) => actions.push(Action::Happened(Event::Info(msg))),
                Ok(Err(e)) => actions.push(Action::Happened(Event::Error(format!(
                    "Export failed: {e}"
                )))),
                Err(p) => self.export = Some(p),
            }
        }
        actions
    }
}
