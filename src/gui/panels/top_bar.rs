//! File, model, device, class and export controls, and the research-use notice.

use crate::engine::device::{DeviceChoice, DeviceOption};
use crate::engine::models::{self, ModelInfo};
use crate::gui::action::Action;
use crate::gui::settings::{Settings, View};
use crate::gui::workspace::Workspace;
use crate::install;

/// The bar's own state.
pub struct TopBarView {
    /// The class picker's search text.
    class_search: String,
    /// Devices worth offering, probed once at start (probing opens each GPU).
    devices: Vec<DeviceOption>,
}

impl TopBarView {
    pub fn new(devices: Vec<DeviceOption>) -> Self {
        TopBarView {
            class_search: String::new(),
            devices,
        }
    }

    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        ws: &Workspace,
        settings: &Settings,
        (presenter, controls): (bool, bool),
        actions: &mut Vec<Action>,
    ) {
        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                // First, so that it is always on screen, and never broken in two.
                ui.add(
                    egui::Label::new(
                        egui::RichText::new("Research use only, not for diagnosis")
                            .color(ui.visuals().warn_fg_color),
                    )
                    .extend(),
                )
                .on_hover_text("Saliency maps show what a model responds to, not what is clinically relevant.");
                ui.separator();
                if !presenter
                    && ui
                        .selectable_label(controls, "Controls")
                        .on_hover_text("Show or hide the side panel (it starts hidden in narrow windows)")
                        .clicked()
                {
                    actions.push(Action::ShowControls(!controls));
                }
                if ui
                    .selectable_label(presenter, "Presenter")
                    .on_hover_text("Presenter mode (F11): full screen, side panel hidden, one large iteration at a time stepping by itself (Space pauses, arrows step, Esc leaves)")
                    .clicked()
                {
                    actions.push(Action::TogglePresenter);
                }
                samples_menu(ui, actions);
                text_size_menu(ui, settings.font_scale, actions);
                if presenter {
                    self.class_picker(ui, ws, actions);
                    return;
                }
                if ui.button("Open image…").on_hover_text("Open a PNG, JPEG or TIFF image (or drop one on the window)").clicked() {
                    actions.push(Action::PickImage);
                }
                ui.add_enabled_ui(!settings.recent.is_empty(), |ui| {
                    ui.menu_button("Recent", |ui| {
                        for p in &settings.recent {
                            if ui.button(p.display().to_string()).clicked() {
                                actions.push(Action::OpenImage(p.clone()));
                                ui.close();
                            }
                        }
                    })
                    .response
                    .on_hover_text("Images opened recently");
                });
                ui.separator();
                model_picker(ui, ws, &settings.model, actions);
                if ui
                    .button("Open model…")
                    .on_hover_text("Load your own model: an ONNX graph (any image classifier exported from PyTorch, timm or Keras), a weights file (safetensors, or any PyTorch checkpoint: CheXNet, TorchXRayVision, torchvision ResNet/DenseNet; read as data, never executed) or a model description (.json: arch, weights, labels, normalisation; see the README)")
                    .clicked()
                {
                    actions.push(Action::PickModel);
                }
                self.device_picker(ui, ws, settings.device, actions);
                self.class_picker(ui, ws, actions);
                ui.separator();
                let done = ws.run.outcome().is_some();
                if ui.add_enabled(done, egui::Button::new("Save montage…")).on_hover_text("Save all iterations side by side as one PNG").clicked() {
                    actions.push(Action::PickMontageFile);
                }
                if ui
                    .add_enabled(done, egui::Button::new("Export run…"))
                    .on_hover_text("Write the CLI's files (summary.json, PNGs, raw .npy arrays) into an empty folder")
                    .clicked()
                {
                    actions.push(Action::PickExportFolder);
                }
                ui.separator();
                let mut view = settings.view;
                ui.selectable_value(&mut view, View::Iterations, "Iterations")
                    .on_hover_text("Saliency, mask and masked input for each iteration");
                ui.selectable_value(&mut view, View::AllRegions, "All regions")
                    .on_hover_text("Every iteration's region over the image, in its own colour");
                if view != settings.view {
                    actions.push(Action::SetView(view));
                }

            });
        });
    }

    fn device_picker(
        &self,
        ui: &mut egui::Ui,
        ws: &Workspace,
        current: DeviceChoice,
        actions: &mut Vec<Action>,
    ) {
        let mut chosen = current;
        let in_use = ws.model.explainer().map_or("loading".to_string(), |e| {
            crate::engine::device::describe(e.device())
        });
        egui::ComboBox::from_label(format!("Device ({in_use})"))
            .selected_text(current.label())
            .show_ui(ui, |ui| {
                for d in &self.devices {
                    // A GPU that cannot be used stays listed, greyed, saying why.
                    ui.add_enabled_ui(d.usable, |ui| {
                        ui.selectable_value(&mut chosen, d.choice, d.choice.label())
                            .on_hover_text(&d.detail)
                            .on_disabled_hover_text(&d.detail);
                    });
                }
            })
            .response
            .on_hover_text(
                "Where the model runs. Hover an entry to see what was found, or why a GPU cannot be used.",
            );
        if chosen != current {
            actions.push(Action::SetDevice(chosen));
        }
    }

    fn class_picker(&mut self, ui: &mut egui::Ui, ws: &Workspace, actions: &mut Vec<Action>) {
        let Some(explainer) = ws.model.explainer() else {
            return;
        };
        let info = explainer.info();
        let before = ws.run.target();
        let text = ws
            .target()
            .map_or("top-1".to_string(), |c| format!("{c}: {}", info.label(c)));
        let mut target = before;
        let combo = egui::ComboBox::from_label("Class")
            .selected_text(text)
            .width(200.0);
        // Room for every finding of a chest X-ray model without scrolling.
        let combo = if info.multi_label {
            combo.height(600.0)
        } else {
            combo
        };
        combo
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut target, None, "Top-1 of the image");
                if info.multi_label
                    && let Some(first) = ws.run.steps().first()
                {
                    findings(ui, info, &first.step.probs, &mut target);
                } else if let Some(first) = ws.run.steps().first() {
                    ui.label("Top-5 of the original image:");
                    for p in &first.step.top5 {
                        ui.selectable_value(
                            &mut target,
                            Some(p.class),
                            format!("{} ({:.1}%)", p.label, 100.0 * p.prob),
                        );
                    }
                }
                ui.separator();
                ui.add(
                    egui::TextEdit::singleline(&mut self.class_search).hint_text("Search labels…"),
                );
                let q = self.class_search.to_lowercase();
                if !q.is_empty() {
                    for (i, l) in info
                        .labels
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| !l.is_empty() && l.to_lowercase().contains(&q))
                        .take(30)
                    {
                        ui.selectable_value(&mut target, Some(i), format!("{i}: {l}"));
                    }
                }
            })
            .response
            .on_hover_text(
                "The class whose evidence is unveiled (default: the model's top-1 for the image)",
            );
        if target != before {
            actions.push(Action::SetTarget(target));
        }
    }
}

/// A multi-label model's findings (e.g. 14 chest X-ray pathologies), each with its own
/// probability on the original image as a bar, most probable first; outputs the weights do not
/// predict (blank labels) are left out.
fn findings(ui: &mut egui::Ui, info: &ModelInfo, probs: &[f32], target: &mut Option<usize>) {
    ui.label("Findings of the original image (each scored on its own):");
    let mut order: Vec<usize> = (0..probs.len()).filter(|&c| info.predicts(c)).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    egui::ScrollArea::vertical()
        .max_height(360.0)
        .show(ui, |ui| {
            egui::Grid::new("findings").num_columns(2).show(ui, |ui| {
                for c in order {
                    ui.selectable_value(target, Some(c), info.label(c));
                    ui.add(
                        egui::ProgressBar::new(probs[c].clamp(0.0, 1.0))
                            .desired_width(120.0)
                            .text(format!("{:.1}%", 100.0 * probs[c])),
                    );
                    ui.end_row();
                }
            });
        });
}

/// Every bundled image, and a clean start for a shared laptop.
fn samples_menu(ui: &mut egui::Ui, actions: &mut Vec<Action>) {
    ui.menu_button("Samples", |ui| {
        for (i, (name, _)) in crate::gui::workspace::SAMPLES.iter().enumerate() {
            if ui.button(*name).clicked() {
                actions.push(Action::OpenSample(i));
                ui.close();
            }
        }
        ui.separator();
        if ui
            .button("Start with default settings")
            .on_hover_text("Default parameters, the bundled model and the first sample: a clean start for a demo laptop (recent files are kept)")
            .clicked()
        {
            actions.push(Action::StartWithDefaults);
            ui.close();
        }
    })
    .response
    .on_hover_text("The bundled images (photos and chest X-rays), offline");
}

/// Text and widget size, persisted: 1.5 or 2 for projectors and high-density screens.
fn text_size_menu(ui: &mut egui::Ui, scale: f32, actions: &mut Vec<Action>) {
    ui.menu_button(format!("Text {:.0}%", 100.0 * scale), |ui| {
        for s in [1.0, 1.25, 1.5, 2.0] {
            if ui
                .selectable_label((scale - s).abs() < 1e-3, format!("{:.0}%", 100.0 * s))
                .clicked()
            {
                actions.push(Action::SetFontScale(s));
                ui.close();
            }
        }
    })
    .response
    .on_hover_text("Size of text and controls (remembered)");
}

fn model_picker(ui: &mut egui::Ui, ws: &Workspace, current: &str, actions: &mut Vec<Action>) {
    let mut chosen = current.to_string();
    let installer = ws.fetch.installer();
    // A weights file or description by its file name (the full path is in the tooltip).
    let shown = std::path::Path::new(current)
        .file_name()
        .filter(|_| current.contains(std::path::MAIN_SEPARATOR))
        .map_or(current.to_string(), |n| n.to_string_lossy().into_owned());
    egui::ComboBox::from_label("Model")
        .selected_text(shown)
        .show_ui(ui, |ui| {
            for e in models::entries() {
                let label =
                    match install::fetchable(e.name).filter(|_| installer.needs_fetch(e.name)) {
                        None => format!("{}: {}", e.name, e.description),
                        Some(f) => format!(
                            "{}: {} (not installed: choosing it fetches it, {})",
                            e.name, e.description, f.download
                        ),
                    };
                ui.selectable_value(&mut chosen, e.name.to_string(), label);
            }
        })
        .response
        .on_hover_text(
            ws.model
                .explainer()
                .map_or("Loading the model…".to_string(), |e| {
                    e.info().description.clone()
                }),
        );
    if chosen != current {
        actions.push(if installer.needs_fetch(&chosen) {
            Action::FetchModel(chosen)
        } else {
            Action::SetModel(chosen)
        });
    }
}
