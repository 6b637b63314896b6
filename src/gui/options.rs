//! How the app starts: what the command line and tests choose instead of the persisted state.

use std::path::PathBuf;
use std::sync::Arc;

use crate::gui::dialogs::{Dialogs, NativeDialogs};
use crate::gui::settings::{Settings, View};
use crate::install::Installer;

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
    /// Where models are fetched to, with which Python (default: the engine's model folder
    /// and `$UNVEIL_PYTHON`; tests give an empty folder instead of setting variables).
    pub installer: Installer,
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
            installer: Installer::default(),
        }
    }
}

impl AppOptions {
    /// The settings to start with: the given ones, else those `storage` kept, with this start's
    /// own choices on top.
    pub fn settings_over(&mut self, storage: Option<&dyn eframe::Storage>) -> Settings {
        let mut settings = self
            .settings
            .take()
            .or_else(|| storage.and_then(|s| eframe::get_value(s, eframe::APP_KEY)))
            .unwrap_or_default();
        if let Some(v) = self.view {
            settings.view = v;
        }
        if let Some(m) = self.model.take() {
            settings.model = m;
        }
        if let Some(f) = self.font_scale {
            settings.font_scale = f.clamp(0.75, 3.0);
        }
        settings
    }
}
