//! The desktop app (eframe/egui): a thin front end over the engine.
//!
//! Data flows one way: panels read the [`workspace::Workspace`]'s slots (model, image, run,
//! check), the persisted [`settings::Settings`] and the view cache ([`textures::Textures`]),
//! and return [`action::Action`]s; the slots' polls return what finished in the background as
//! [`workspace::Event`]s; [`app::App::apply`] applies both, the one place where state changes.
//! The UI thread never waits on the model: decoding, model loading, runs and exports happen in
//! worker threads whose results arrive over a channel (runs, checks) or as promises (dialogs,
//! images), and the latest run wins: starting one cancels the one before.

pub mod action;
pub mod app;
pub mod dialogs;
pub mod jobs;
pub mod notices;
pub mod options;
pub mod panels;
pub mod settings;
pub mod textures;
pub mod worker;
pub mod workspace;

pub use app::App;
pub use options::AppOptions;

/// Opens the main window with the bundled model and `options`' image (default: the sample).
pub fn run_native(options: AppOptions) -> crate::Result<()> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("unveil")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([900.0, 560.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "unveil",
        native,
        Box::new(|cc| Ok(Box::new(App::new(cc, options)))),
    )
    .map_err(|e| crate::Error::Window(e.to_string()))
}
