//! What panels ask for. Panels read the workspace and the settings but change neither: they
//! return actions, and the app applies them ([`crate::gui::app::App`]), so every change of
//! state happens in one place, in one order, once per frame.

use std::path::PathBuf;

use crate::engine::device::DeviceChoice;
use crate::engine::params::UnveilParams;
use crate::engine::source_image::Window;
use crate::gui::settings::View;

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Ask for an image with the file dialog.
    PickImage,
    OpenImage(PathBuf),
    /// Ask for a model description with the file dialog.
    PickModel,
    /// A registered model name or a description path.
    SetModel(String),
    SetDevice(DeviceChoice),
    /// New run parameters; the app decides what they require ([`UnveilParams::change_from`]).
    SetParams(UnveilParams),
    /// The display window (no rerun).
    SetWindow(Window),
    /// The window the model sees (reruns).
    SetModelWindow(Window),
    SetView(View),
    SetOverlayOpacity(f32),
    /// Saliency over the image at this opacity (0: the map alone).
    SetHeatmap(f32),
    CancelRun,
    /// Run the sanity checks on iteration 0's map with the current settings.
    CheckMap,
    CancelCheck,
    /// Ask where to save the montage, then save it.
    PickMontageFile,
    /// Ask for a folder, then export the run's files into it.
    PickExportFolder,
    /// Ask where to save the all-regions picture, then save it.
    PickRegionsFile,
    Export(Export, PathBuf),
    /// Keep the finished run next to the following ones; `false` unpins.
    Pin(bool),
    /// Open bundled sample `i`.
    OpenSample(usize),
    /// Back to the default settings, model and sample (a booth laptop comes up clean).
    StartWithDefaults,
    /// Presenter mode on or off: full screen, no side panel, one large iteration at a time.
    TogglePresenter,
    /// Text and widget size (1 = normal).
    SetFontScale(f32),
    /// Show or hide the side panel (the controls).
    ShowControls(bool),
    /// The file dialog could not open (no desktop portal): ask for a path in the window.
    PromptPath(PathPrompt),
}

/// A path typed into the app instead of a file dialog, and what it becomes.
#[derive(Clone, Debug)]
pub struct PathPrompt {
    pub title: &'static str,
    pub text: String,
    pub then: fn(PathBuf) -> Action,
}

impl PartialEq for PathPrompt {
    /// Function addresses are not comparable; the title says what the path is for.
    fn eq(&self, other: &Self) -> bool {
        (self.title, &self.text) == (other.title, &other.text)
    }
}

/// What an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// All iterations side by side in one PNG.
    Montage,
    /// The CLI's files (summary.json, PNGs, raw arrays) into an empty folder.
    Run,
    /// The all-regions picture at the image's resolution.
    Regions,
}
