//! The desktop app (eframe/egui) over the engine.

/// Opens the main window.
pub fn run_native() -> crate::Result<()> {
    Err(crate::Error::InvalidParam(
        "the desktop app is not built yet; use `unveil run`".into(),
    ))
}
