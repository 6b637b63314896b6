//! Presenter mode's layout: one iteration at a time, large, with the class and p(target) in
//! large type (the app steps through the iterations and handles the keys).

use crate::gui::panels::iterations::COLUMNS;
use crate::gui::workspace::Workspace;

/// Presenter mode: the selected iteration alone, large, with the class and p(target) in
/// large type; the iterations step by themselves until paused.
pub fn ui(ui: &mut egui::Ui, ws: &Workspace, selected: usize, playing: bool) {
    let Some(view) = ws.steps.get(selected.min(ws.steps.len().saturating_sub(1))) else {
        ui.centered_and_justified(|ui| {
            ui.label(egui::RichText::new("Working…").size(28.0));
        });
        return;
    };
    let s = &view.step;
    let label = ws
        .explainer
        .as_ref()
        .zip(ws.target(None))
        .map_or(String::new(), |(e, t)| e.info().label(t));
    ui.vertical_centered(|ui| {
        ui.label(
            egui::RichText::new(format!("{label} · p = {:.3}", s.p_target))
                .size(34.0)
                .strong(),
        );
        ui.label(
            egui::RichText::new(format!(
                "iteration {} of {} · {:.0} % of the image hidden so far · {}",
                s.index,
                ws.steps.len(),
                100.0 * s.cumulative.coverage(),
                if playing {
                    "Space pauses"
                } else {
                    "paused: Space plays"
                }
            ))
            .size(18.0),
        );
    });
    ui.add_space(8.0);
    let avail = ui.available_size();
    let cell = ((avail.x - 60.0) / 4.0).min(avail.y - 40.0).max(64.0);
    ui.horizontal(|ui| {
        ui.add_space(((avail.x - 4.0 * (cell + 12.0)) / 2.0).max(0.0));
        for (c, tex) in view.textures.iter().enumerate() {
            ui.vertical(|ui| {
                ui.label(egui::RichText::new(COLUMNS[c]).size(16.0));
                ui.add(egui::Image::new(tex).fit_to_exact_size(egui::vec2(cell, cell)));
            });
        }
    });
}
