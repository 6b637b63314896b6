//! The parameter sliders. They edit a copy of the parameters and ask for it as a whole; the
//! app decides what the change requires (mask-only changes redraw iteration 0 at once).

use crate::engine::params::{FillMode, MAX_KERNEL, Method, Reduction, UnveilParams};
use crate::engine::source_image::Window;
use crate::gui::action::Action;
use crate::gui::workspace::Workspace;

pub fn ui(ui: &mut egui::Ui, ws: &Workspace, params: &UnveilParams, actions: &mut Vec<Action>) {
    window_level(ui, ws, actions);
    let mut edited = params.clone();
    let p = &mut edited;

    ui.heading("Saliency");
    egui::ComboBox::from_label("Method")
        .selected_text(method_label(p.saliency.method))
        .show_ui(ui, |ui| {
            for m in Method::ALL {
                ui.selectable_value(&mut p.saliency.method, m, method_label(m))
                    .on_hover_text(method_help(m));
            }
        })
        .response
        .on_hover_text(method_help(p.saliency.method));
    model_method_notes(ui, ws, p.saliency.method, actions);
    ui.horizontal(|ui| {
        let checking = ws.check.is_running();
        if ui
            .add_enabled(!checking, egui::Button::new("Sanity check"))
            .on_hover_text("Does this map show the model's reasons? Recomputes iteration 0's map with the model's last layers randomised (head, last stage, last quarter) and for the runner-up class, and compares (Adebayo et al., 2018). Takes about five maps' time.")
            .clicked()
        {
            actions.push(Action::CheckMap);
        }
        if checking {
            ui.spinner();
        }
    });
    if p.saliency.method == Method::IntegratedGradients {
        ui.add(egui::Slider::new(&mut p.saliency.ig_steps, 4..=256).logarithmic(true).text("Path steps"))
            .on_hover_text("Points on the path from the fill image to the image (midpoint rule). More is more exact: the run's summary reports how far the attributions are from summing to the score difference.");
    }
    ui.separator();
    ui.heading("Mask smoothing");
    ui.horizontal(|ui| {
        // Odd sizes only; the buttons step by 2 where the slider is too coarse to hit one value.
        if ui.small_button("-").on_hover_text("2 smaller").clicked() {
            p.mask.kernel = p.mask.kernel.saturating_sub(2).max(1);
        }
        if ui.small_button("+").on_hover_text("2 larger").clicked() {
            p.mask.kernel = (p.mask.kernel + 2).min(MAX_KERNEL.min(101));
        }
        ui.spacing_mut().slider_width = 150.0;
        ui.add(egui::Slider::new(&mut p.mask.kernel, 1..=MAX_KERNEL.min(101)).step_by(2.0).text("Kernel size"))
            .on_hover_text("Side of the square window (pixels at the model's input size) averaged in each pass, odd. Larger gives larger, smoother masks; smaller gives tight masks for small regions. Paper: 11. Type a value into the number, or use - / +.");
    });
    ui.add(egui::Slider::new(&mut p.mask.passes, 0..=10).text("Smoothing passes"))
        .on_hover_text("How many times to average then threshold. More passes grow and round the mask. Paper: 3. 0 shows the raw binarised saliency.");
    ui.add(
        egui::Slider::new(&mut p.mask.keep, 0.005..=0.5)
            .logarithmic(true)
            .text("Seed fraction"),
    )
    .on_hover_text("Fraction of the most salient pixels that start the mask, before smoothing.");
    ui.add(egui::Slider::new(&mut p.mask.threshold, 0.05..=0.95).text("Pass threshold"))
        .on_hover_text("A pixel stays in the mask when at least this fraction of its window is in it. Below 0.5 masks grow with each pass.");
    if p.mask.kernel.is_multiple_of(2) {
        p.mask.kernel += 1;
    }

    ui.separator();
    ui.heading("Stopping");
    ui.add(egui::Slider::new(&mut p.stop.threshold, 0.0..=1.0).text("Stop threshold"))
        .on_hover_text("Stop once the probability of the class, with every mask so far applied, falls below this.");

    ui.separator();
    egui::CollapsingHeader::new("Advanced").default_open(false).show(ui, |ui| {
        ui.add(egui::Slider::new(&mut p.saliency.samples, 1..=64).text("SmoothGrad samples"))
            .on_hover_text("Noisy copies averaged per saliency map. More is smoother and slower; 1 with noise 0 is the plain map. Integrated gradients costs samples x path steps passes; Grad-CAM uses no noise.");
        ui.horizontal(|ui| {
            ui.label("Combine").on_hover_text("How SmoothGrad combines the noisy copies");
            ui.selectable_value(&mut p.saliency.reduction, Reduction::Mean, "Mean")
                .on_hover_text("The mean of the copies' gradients (SmoothGrad)");
            ui.selectable_value(&mut p.saliency.reduction, Reduction::Squared, "Squared")
                .on_hover_text("The mean of their squares (SmoothGrad-squared): only magnitudes, so opposite signs do not cancel");
        });
        ui.add(egui::Slider::new(&mut p.saliency.noise, 0.0..=0.5).text("Noise (sigma / range)"))
            .on_hover_text("SmoothGrad noise standard deviation as a fraction of the input's value range.");
        ui.horizontal(|ui| {
            ui.label("Seed");
            ui.add(egui::DragValue::new(&mut p.saliency.seed)).on_hover_text("Seed of the SmoothGrad noise: the same seed gives the same map.");
        });
        ui.add(egui::Slider::new(&mut p.stop.max_iter, 1..=20).text("Max iterations"))
            .on_hover_text("The loop never runs more iterations than this.");
        ui.horizontal(|ui| {
            ui.label("Fill").on_hover_text("What masked pixels are replaced with");
            ui.selectable_value(&mut p.fill, FillMode::Mean, "Mean").on_hover_text("The training set's mean colour");
            ui.selectable_value(&mut p.fill, FillMode::Black, "Black").on_hover_text("Black pixels");
            ui.selectable_value(&mut p.fill, FillMode::Blur, "Blur").on_hover_text("A heavy blur of the image");
        });
        // The class is not a setting: it stays as chosen for this image (the run slot's).
        ui.horizontal(|ui| {
            if ui.button("Recommended settings").on_hover_text("Vanilla SmoothGrad (passes the sanity checks), kernel 11, 3 passes").clicked() {
                *p = UnveilParams::default();
            }
            if ui.button("The paper's settings").on_hover_text("Guided backprop with SmoothGrad, kernel 11, 3 passes (Bordes et al., 2018)").clicked() {
                *p = UnveilParams::paper();
            }
        });
    });

    if edited != *params {
        actions.push(Action::SetParams(edited));
    }

    if let Some(explainer) = ws.model.explainer() {
        ui.separator();
        let info = explainer.info();
        ui.label(egui::RichText::new(&info.description).small().weak());
        if !info.assumed.is_empty() {
            ui.horizontal_wrapped(|ui| {
                ui.label(egui::RichText::new(format!("Assumed: {}", info.assumed.join(", "))).small())
                    .on_hover_text("The model file does not say how its input was prepared: unveil assumed this. If the model was trained otherwise its maps and probabilities are off.");
                if ui
                    .small_button("Change…")
                    .on_hover_text("Write these settings into a model description (.json) next to the model file and load it: edit input_size, mean, std, resize, labels there and open it again")
                    .clicked()
                {
                    actions.push(Action::SpellOutModel);
                }
            });
        }
    }
}

/// What a method means for this model: guided on non-ReLU nonlinearities, and Grad-CAM's
/// layer (choosable for an ONNX graph).
fn model_method_notes(
    ui: &mut egui::Ui,
    ws: &Workspace,
    method: Method,
    actions: &mut Vec<Action>,
) {
    let Some(explainer) = ws.model.explainer() else {
        return;
    };
    let info = explainer.info();
    match method {
        Method::Guided => {
            if let Some(note) = &info.guided_note {
                ui.label(
                    egui::RichText::new(format!("Note: {note}."))
                        .small()
                        .color(ui.visuals().warn_fg_color),
                );
            }
        }
        Method::GradCam if info.cam_layers.len() > 1 => {
            let current = info.cam_layers[0].clone();
            egui::ComboBox::from_label("Layer")
                .selected_text(short_layer(&current))
                .show_ui(ui, |ui| {
                    for (i, layer) in info.cam_layers.iter().enumerate() {
                        let label = if i == 0 { format!("{} (in use)", short_layer(layer)) } else { short_layer(layer) };
                        if ui.selectable_label(i == 0, label).on_hover_text(layer).clicked() && i != 0 {
                            actions.push(Action::SetCamLayer(layer.clone()));
                        }
                    }
                })
                .response
                .on_hover_text(format!("Grad-CAM reads {current}. Found automatically: the last feature map before the pooling that feeds the head, or a vision transformer's last attention input."));
        }
        _ => {}
    }
}

/// A graph value's name, shortened for a picker to the module path it came from (exporters
/// name values `/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0`).
fn short_layer(name: &str) -> String {
    let mut parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() > 1 && parts.last().is_some_and(|p| p.contains("_output_")) {
        parts.pop();
    }
    match parts.len() {
        0..=2 => parts.join("/"),
        n => parts[n - 2..].join("/"),
    }
}

/// Window / level for grayscale images (X-rays). The display window changes only the screen,
/// as in a PACS viewer; what the model sees is a separate, explicit choice.
fn window_level(ui: &mut egui::Ui, ws: &Workspace, actions: &mut Vec<Action>) {
    let (Some(w), Some(model_w)) = (ws.image.window(), ws.image.model_window()) else {
        return;
    };
    let Some(g) = ws.image.loaded().and_then(|i| i.source.gray.as_ref()) else {
        return;
    };
    let (lo, hi) = g.range;
    let span = (hi - lo).max(1e-3);
    let default = g.default_window;
    let (mut c, mut width) = (w.center, w.width);
    ui.heading("Window / level");
    ui.add(egui::Slider::new(&mut c, (lo - span * 0.5)..=(hi + span * 0.5)).text("Level (centre)"))
        .on_hover_text("Intensity shown as mid-gray. Drag up/down on the image in the All regions view to change it. Changes the display only.");
    ui.add(egui::Slider::new(&mut width, (span / 500.0)..=(span * 2.0)).logarithmic(true).text("Window (width)"))
        .on_hover_text("Range of intensities from black to white. Drag left/right on the image in the All regions view. Changes the display only.");
    ui.horizontal(|ui| {
        if ui
            .button("Reset display")
            .on_hover_text("Back to the file's own window")
            .clicked()
        {
            (c, width) = (default.center, default.width);
        }
        ui.label(
            egui::RichText::new(format!(
                "file: C {:.1} / W {:.1}",
                default.center, default.width
            ))
            .small(),
        );
    });
    let new = Window { center: c, width };
    if new != w {
        actions.push(Action::SetWindow(new));
    }
    // What the model sees: shown, and changed only on purpose.
    let which = if model_w == default {
        "the file's window"
    } else {
        "a chosen window"
    };
    ui.label(
        egui::RichText::new(format!(
            "Model input: C {:.1} / W {:.1} ({which})",
            model_w.center, model_w.width
        ))
        .small(),
    )
    .on_hover_text("The window applied to the image before it goes to the model. A narrow window saturates the image and changes the model's answer, so it is never changed by looking.");
    ui.horizontal(|ui| {
        if ui
            .add_enabled(
                new != model_w,
                egui::Button::new("Model: use display window"),
            )
            .on_hover_text("Let the model see the image as displayed (reruns)")
            .clicked()
        {
            actions.push(Action::SetModelWindow(new));
        }
        if ui
            .add_enabled(
                model_w != default,
                egui::Button::new("Model: file's window"),
            )
            .on_hover_text("Back to the file's own window for the model (reruns)")
            .clicked()
        {
            actions.push(Action::SetModelWindow(default));
        }
    });
    ui.separator();
}

fn method_label(m: Method) -> &'static str {
    match m {
        Method::Guided => "Guided backprop (paper)",
        Method::Vanilla => "Vanilla gradient (recommended)",
        Method::IntegratedGradients => "Integrated gradients",
        Method::GradCam => "Grad-CAM",
    }
}

fn method_help(m: Method) -> &'static str {
    match m {
        Method::Guided => {
            "Guided backpropagation (the paper's method): every ReLU passes only positive gradients for positive inputs. Sharp maps, but they can show image edges more than the model's decision: run the sanity check."
        }
        Method::Vanilla => {
            "The plain gradient of the class score with respect to each pixel, averaged over noisy copies (SmoothGrad)."
        }
        Method::IntegratedGradients => {
            "Integrated gradients: the gradient averaged along the path from the fill image to the image, times their difference. The attributions add up to the score difference."
        }
        Method::GradCam => {
            "Grad-CAM: where the last convolutional feature map supports the class, upsampled. Coarse (1/32 of the input) but tied to the model's decision."
        }
    }
}
