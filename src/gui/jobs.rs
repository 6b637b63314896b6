//! Background work that is not a run: file dialogs (which block) and exports. Each runs on its
//! own thread; a finished dialog becomes an [`Action`], a finished export a notice.

use std::path::PathBuf;
use std::sync::Arc;

use poll_promise::Promise;

use crate::engine::explainer::Explainer;
use crate::engine::export;
use crate::engine::outcome::Outcome;
use crate::engine::params::UnveilParams;
use crate::engine::render;
use crate::engine::summary::RunInfo;
use crate::error::Result;
use crate::gui::action::{Action, Export};
use crate::gui::dialogs::Dialogs;
use crate::gui::notices::Notices;

/// Everything an export needs, copied out of the workspace so the UI goes on.
pub struct ExportRequest {
    pub explainer: Arc<Explainer>,
    pub outcome: Outcome,
    pub params: UnveilParams,
    pub image_name: String,
}

/// An open file dialog: its answer, and the action it becomes.
struct Dialog {
    answer: Promise<Option<PathBuf>>,
    then: fn(PathBuf) -> Action,
}

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
        ask: impl FnOnce(&dyn Dialogs) -> Option<PathBuf> + Send + 'static,
        then: fn(PathBuf) -> Action,
    ) {
        let dialogs = self.dialogs.clone();
        let answer = Promise::spawn_thread(name, move || ask(dialogs.as_ref()));
        self.dialog = Some(Dialog { answer, then });
    }

    pub fn pick_image(&mut self) {
        self.ask("open-dialog", |d| d.pick_image(), Action::OpenImage);
    }

    /// A model description (.json), loaded when picked.
    pub fn pick_model(&mut self) {
        self.ask(
            "model-dialog",
            |d| d.pick_model(),
            |p| Action::SetModel(p.display().to_string()),
        );
    }

    pub fn pick_montage_file(&mut self, image_name: &str) {
        let stem = image_name.split('.').next().unwrap_or("unveil").to_string();
        let suggested = format!("{stem}-montage.png");
        self.ask(
            "save-dialog",
            move |d| d.save_png(&suggested),
            |p| Action::Export(Export::Montage, p),
        );
    }

    pub fn pick_export_folder(&mut self) {
        self.ask(
            "folder-dialog",
            |d| d.pick_folder(),
            |p| Action::Export(Export::Run, p),
        );
    }

    /// Writes an export off the UI thread; the outcome arrives as a notice.
    pub fn export(&mut self, kind: Export, path: PathBuf, r: ExportRequest) {
        self.export = Some(Promise::spawn_thread("export", move || {
            let info = r.explainer.info();
            match kind {
                Export::Montage => {
                    let path = path.with_extension("png");
                    let img = render::run_montage(&r.outcome, info)?;
                    export::save_png_atomically(&img, &path)?;
                    Ok(format!("Saved montage to {}", path.display()))
                }
                Export::Run => {
                    let device = crate::engine::device::describe(r.explainer.device());
                    let run = RunInfo {
                        image: &r.image_name,
                        device: &device,
                        params: &r.params,
                        model: info,
                        total_ms: 0.0,
                    };
                    export::write_run(&path, &r.outcome, &run, true, false)?;
                    Ok(format!("Exported the run to {}", path.display()))
                }
            }
        }));
    }

    pub fn is_busy(&self) -> bool {
        self.dialog.is_some() || self.export.is_some()
    }

    /// Answered dialogs as actions; finished exports as notices.
    pub fn poll(&mut self, notices: &mut Notices) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(Dialog { answer, then }) = self.dialog.take() {
            match answer.try_take() {
                Ok(Some(path)) => actions.push(then(path)),
                Ok(None) => {}
                Err(answer) => self.dialog = Some(Dialog { answer, then }),
            }
        }
        if let Some(p) = self.export.take() {
            match p.try_take() {
                Ok(Ok(msg)) => notices.info(msg),
                Ok(Err(e)) => notices.error(format!("Export failed: {e}")),
                Err(p) => self.export = Some(p),
            }
        }
        actions
    }
}
