//! What panels ask for, and what finished in the background. Panels read the workspace and the
//! settings but change neither: they return actions; the slots' polls return events, carried
//! here as [`Action::Happened`]; and the app applies both ([`crate::gui::app::App`]), so every
//! change of state happens in one place, in one order, once per frame.

use std::path::PathBuf;

use crate::engine::device::DeviceChoice;
use crate::engine::params::UnveilParams;
use crate::engine::source_image::Window;
use crate::gui::settings::View;
use crate::gui::workspace::Event;

#[must_use]
pub enum Action {
    /// Ask for an image with the file dialog.
    PickImage,
    OpenImage(PathBuf),
    /// Ask for a model description with the file dialog.
    PickModel,
    /// A registered model name or a description path.
    SetModel(String),
    /// Grad-CAM reads this layer of the (ONNX) model: reloads it.
    SetCamLayer(String),
    /// Write what the model was loaded with (what was assumed) as a description next to its
    /// file, then load that description (to be edited).
    SpellOutModel,
    /// Install a model that must be fetched (then switch to it).
    FetchModel(String),
    CancelFetch,
    SetDevice(DeviceChoice),
    /// New run parameters; the app decides what they require ([`UnveilParams::change_from`]).
    /// Their class is ignored: the class is chosen per image with [`Action::SetTarget`].
    SetParams(UnveilParams),
    /// The class to explain for this image and model (`None`: the model's top-1).
    SetTarget(Option<usize>),
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
    /// Presenter mode: pause or resume stepping through the iterations.
    TogglePlaying,
    /// Presenter mode: the next iteration (after the last, the first).
    NextIteration,
    /// Text and widget size (1 = normal).
    SetFontScale(f32),
    /// Show or hide the side panel (the controls).
    ShowControls(bool),
    /// The file dialog could not open (no desktop portal): ask for a path in the window.
    PromptPath(PathPrompt),
    /// Remove the notice with this id.
    DismissNotice(u64),
    /// Something finished in the background.
    Happened(Event),
}

/// A path typed into the app instead of a file dialog, and what it becomes.
pub struct PathPrompt {
    pub title: &'static str,
    pub text: String,
    pub then: fn(PathBuf) -> Action,
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
