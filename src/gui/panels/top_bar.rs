//! File, model, device, class and export controls, and the research-use notice.

use crate::engine::models;
use crate::gui::app::{App, device_options};
use crate::gui::settings::View;

pub fn ui(app: &mut App, ui: &mut egui::Ui) {
    egui::Panel::top("top_bar").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            if ui.button("Open image…").on_hover_text("Open a PNG, JPEG or TIFF image (or drop one on the window)").clicked() {
                app.show_open_dialog();
            }
            let recent = app.settings.recent.clone();
            ui.add_enabled_ui(!recent.is_empty(), |ui| {
                ui.menu_button("Recent", |ui| {
                    for p in recent {
                        if ui.button(p.display().to_string()).clicked() {
                            app.open_path(p);
                            ui.close();
                        }
                    }
                })
                .response
                .on_hover_text("Images opened recently");
            });
            ui.separator();
            model_picker(app, ui);
            if ui
                .button("Open model…")
                .on_hover_text("Load your own checkpoint through a model description (.json: arch, weights, labels, normalisation; see the README)")
                .clicked()
            {
                app.show_model_dialog();
            }
            device_picker(app, ui);
            class_picker(app, ui);
            ui.separator();
            let done = app.outcome.is_some();
            if ui.add_enabled(done, egui::Button::new("Save montage…")).on_hover_text("Save all iterations side by side as one PNG").clicked() {
                app.show_export_dialog(true);
            }
            if ui
                .add_enabled(done, egui::Button::new("Export run…"))
                .on_hover_text("Write the CLI's files (summary.json, PNGs, raw .npy arrays) into an empty folder")
                .clicked()
            {
                app.show_export_dialog(false);
            }
            ui.separator();
            ui.selectable_value(&mut app.settings.view, View::Iterations, "Iterations")
                .on_hover_text("Saliency, mask and masked input for each iteration");
            ui.selectable_value(&mut app.settings.view, View::AllRegions, "All regions")
                .on_hover_text("Every iteration's region over the image, in its own colour");
            ui.separator();
            ui.colored_label(ui.visuals().warn_fg_color, "Research use only, not for diagnosis")
                .on_hover_text("Saliency maps show what a model responds to, not what is clinically relevant.");
        });
    });
}

fn model_picker(app: &mut App, ui: &mut egui::Ui) {
    let before = app.settings.model.clone();
    egui::ComboBox::from_label("Model")
        .selected_text(before.as_str())
        .show_ui(ui, |ui| {
            for e in models::entries() {
                let label = if models::is_installed(e.name) {
                    format!("{}: {}", e.name, e.description)
                } else {
                    format!(
                        "{}: {} (not installed; run `unveil models fetch {}`)",
                        e.name, e.description, e.name
                    )
                };
                ui.selectable_value(&mut app.settings.model, e.name.to_string(), label);
            }
        })
        .response
        .on_hover_text(
            app.model
                .as_ref()
                .map_or("Loading the model…".to_string(), |m| {
                    m.info().description.clone()
                }),
        );
    if app.settings.model != before {
        app.load_model();
    }
}

fn device_picker(app: &mut App, ui: &mut egui::Ui) {
    let before = app.settings.device;
    let options = device_options();
    let label = options
        .iter()
        .find(|(d, _)| *d == before)
        .map_or("CPU", |(_, l)| *l);
    egui::ComboBox::from_label(format!(
        "Device ({})",
        crate::engine::device::describe(&app.device)
    ))
    .selected_text(label)
    .show_ui(ui, |ui| {
        for (d, l) in options {
            ui.selectable_value(&mut app.settings.device, d, l);
        }
    })
    .response
    .on_hover_text(
        "Where the model runs. GPUs are listed when this build supports them and one is present.",
    );
    if app.settings.device != before {
        app.load_model();
    }
}

fn class_picker(app: &mut App, ui: &mut egui::Ui) {
    let Some(model) = app.model.clone() else {
        return;
    };
    let info = model.info();
    let current = app.target();
    let text = current.map_or("top-1".to_string(), |c| format!("{c}: {}", info.label(c)));
    let before = app.settings.params.target;
    egui::ComboBox::from_label("Class")
        .selected_text(text)
        .width(200.0)
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut app.settings.params.target, None, "Top-1 of the image");
            if let Some(first) = app.steps.first() {
                ui.label("Top-5 of the original image:");
                for p in first.step.top5.clone() {
                    ui.selectable_value(
                        &mut app.settings.params.target,
                        Some(p.class),
                        format!("{} ({:.1}%)", p.label, 100.0 * p.prob),
                    );
                }
            }
            ui.separator();
            ui.add(egui::TextEdit::singleline(&mut app.class_search).hint_text("Search labels…"));
            let q = app.class_search.to_lowercase();
            if !q.is_empty() {
                for (i, l) in info
                    .labels
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.to_lowercase().contains(&q))
                    .take(30)
                {
                    ui.selectable_value(
                        &mut app.settings.params.target,
                        Some(i),
                        format!("{i}: {l}"),
                    );
                }
            }
        })
        .response
        .on_hover_text(
            "The class whose evidence is unveiled (default: the model's top-1 for the image)",
        );
    if app.settings.params.target != before {
        app.request_run();
    }
}
