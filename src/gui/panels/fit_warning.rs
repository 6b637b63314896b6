//! A warning above the results when the image does not suit the model, with the fitting model
//! one click away.

use crate::engine::models;
use crate::engine::suitability;
use crate::gui::action::Action;
use crate::gui::workspace::Workspace;

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
                if models::is_installed(suggested) {
                    if ui
                        .button(format!("Use {suggested}"))
                        .on_hover_text("Switch to the model trained on images like this one")
                        .clicked()
                    {
                        actions.push(Action::SetModel(suggested.to_string()));
                    }
                } else {
                    ui.label(format!(
                        "The fitting model, {suggested}, is not installed: `unveil models fetch {suggested}`."
                    ));
                }
            });
        });
}
