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
    SetWindow(Window),
    SetView(View),
    SetOverlayOpacity(f32),
    CancelRun,
    /// Run the sanity checks on iteration 0's map with the current settings.
    CheckMap,
    CancelCheck,
    /// Ask where to save the montage, then save it.
    PickMontageFile,
    /// Ask for a folder, then export the run's files into it.
    PickExportFolder,
    Export(Export, PathBuf),
}

/// What an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// All iterations side by side in one PNG.
    Montage,
    /// The CLI's files (summary.json, PNGs, raw arrays) into an empty folder.
    Run,
}
