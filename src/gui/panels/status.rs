//! Bottom bar: progress with Cancel (runs, sanity checks, model fetches), why the run stopped,
//! and notices.

use crate::gui::action::Action;
use crate::gui::notices::Notices;
use crate::gui::workspace::Workspace;

pub fn ui(ui: &mut egui::Ui, ws: &Workspace, notices: &Notices, actions: &mut Vec<Action>) {
    egui::Panel::bottom("status").show(ui, |ui| {
        ui.horizontal(|ui| {
            // The image first: the message after it is cut to the window, never over it.
            if let Some(img) = ws.image.loaded() {
                ui.label(format!(
                    "{} · {} x {}{}",
                    img.name,
                    img.source.width(),
                    img.source.height(),
                    if img.source.grayscale {
                        " · grayscale"
                    } else {
                        ""
                    }
                ));
                ui.separator();
            }
            if let Some(p) = ws.check.progress().filter(|_| ws.check.is_running()) {
                ui.add(
                    egui::ProgressBar::new(p.fraction())
                        .text(format!(
                            "sanity check · map {} of {}",
                            (p.stage + 1).min(p.stages),
                            p.stages
                        ))
                        .desired_width(260.0)
                        .animate(true),
                );
                if ui
                    .button("Cancel check")
                    .on_hover_text("Stop the sanity check")
                    .clicked()
                {
                    actions.push(Action::CancelCheck);
                }
                ui.separator();
            }
            if let Some(name) = ws.fetch.fetching() {
                ui.spinner();
                let line = ws.fetch.log().last().map_or("starting…", String::as_str);
                ui.label(format!("Fetching {name}: {line}"))
                    .on_hover_text(ws.fetch.log().join("\n"));
                if ui
                    .button("Cancel fetch")
                    .on_hover_text("Stop fetching: nothing is installed, nothing half-made is left")
                    .clicked()
                {
                    actions.push(Action::CancelFetch);
                }
                ui.separator();
            }
            if ws.run.is_running() {
                let (fraction, text) = match ws.run.progress() {
                    Some(p) => {
                        let done = p.iteration as f32 + p.chunk as f32 / p.chunks.max(1) as f32;
                        (
                            done / p.max_iter.max(1) as f32,
                            format!(
                                "iteration {} (iterations 0 to {} at most) · SmoothGrad chunk {} of {}",
                                p.iteration,
                                p.max_iter.saturating_sub(1),
                                p.chunk,
                                p.chunks
                            ),
                        )
                    }
                    None => (0.0, "starting…".to_string()),
                };
                ui.add(
                    egui::ProgressBar::new(fraction)
                        .text(text)
                        .desired_width(420.0)
                        .animate(true),
                );
                if ui
                    .button("Cancel")
                    .on_hover_text("Stop the run; iterations computed so far stay visible")
                    .clicked()
                {
                    actions.push(Action::CancelRun);
                }
            } else if let Some(o) = ws.run.outcome() {
                let why = o.stop.describe();
                let after = o.after.as_ref().map_or(String::new(), |a| {
                    format!("; p(target) with every mask applied: {:.3}", a.p_target)
                });
                let n = o.steps.len();
                let text = format!(
                    "Done: {n} iteration{}, stopped because {why}{after}.",
                    if n == 1 { "" } else { "s" }
                );
                ui.add(egui::Label::new(text.clone()).truncate())
                    .on_hover_text(text);
            } else if ws.model.is_loading() {
                ui.spinner();
                ui.label("Loading the model…");
            } else if ws.model.explainer().is_none() {
                // A load that failed said why in a notice; a spinner here would spin (and
                // repaint) for ever.
                ui.label("No model: choose one under Model, or Open model….");
            } else if ws.image.loaded().is_none() {
                ui.label("Open an image (button above, or drop a file on the window).");
            }

        });
        notices.ui(ui, actions);
    });
}
