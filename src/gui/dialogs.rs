//! Native file dialogs, behind a trait so tests never open a real one.

use std::path::PathBuf;

/// The dialogs the app uses. Calls block; the app runs them off the UI thread.
pub trait Dialogs: Send + Sync {
    fn pick_image(&self) -> Option<PathBuf>;
    fn pick_folder(&self) -> Option<PathBuf>;
    /// An ONNX graph, a model description (.json: architecture, weights, labels; see the
    /// README) or a weights file (safetensors or any torch.save file; the architecture is
    /// recognised from it).
    fn pick_model(&self) -> Option<PathBuf>;
    fn save_png(&self, suggested: &str) -> Option<PathBuf>;
}

/// The file names the model picker offers, and that a drop opens as a model.
const MODEL_EXTENSIONS: &[&str] = &[
    "onnx",
    "json",
    "safetensors",
    "pth",
    "pt",
    "tar",
    "ckpt",
    "bin",
];

/// True for a file that opens as a model rather than an image (by its extension).
pub fn is_model_file(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| MODEL_EXTENSIONS.iter().any(|m| m.eq_ignore_ascii_case(e)))
}

/// What opening `path` means: a model file opens as the model, anything else as the image.
pub fn open(path: &std::path::Path) -> crate::gui::action::Action {
    use crate::gui::action::Action;
    if is_model_file(path) {
        Action::SetModel(path.display().to_string())
    } else {
        Action::OpenImage(path.to_path_buf())
    }
}

/// The platform's dialogs (rfd: xdg-portal on Linux, native on macOS and Windows).
pub struct NativeDialogs;

impl Dialogs for NativeDialogs {
    fn pick_image(&self) -> Option<PathBuf> {
        rfd::FileDialog::new()
            .set_title("Open image")
            .add_filter(
                "Images and DICOM",
                &["png", "jpg", "jpeg", "tif", "tiff", "dcm", "dicom"],
            )
            .add_filter("All files", &["*"])
            .pick_file()
    }

    fn pick_folder(&self) -> Option<PathBuf> {
        rfd::FileDialog::new()
            .set_title("Export run to folder")
            .pick_folder()
    }

    fn pick_model(&self) -> Option<PathBuf> {
        rfd::FileDialog::new()
            .set_title("Open model (ONNX, weights or description)")
            .add_filter("Models", MODEL_EXTENSIONS)
            .add_filter("All files", &["*"])
            .pick_file()
    }

    fn save_png(&self, suggested: &str) -> Option<PathBuf> {
        rfd::FileDialog::new()
            .set_title("Save montage")
            .set_file_name(suggested)
            .add_filter("PNG image", &["png"])
            .save_file()
    }
}
