//! What sits between the plots and the rows: the sanity check's verdict, the run in plain words
//! with its help, how the saliency column is drawn, and the pinned run.

use crate::engine::models::reinit::Cascade;
use crate::engine::params::UnveilParams;
use crate::engine::readout::readout;
use crate::engine::render;
use crate::engine::sanity::Verdict;
use crate::gui::action::Action;
use crate::gui::textures::Textures;
use crate::gui::workspace::Workspace;

/// Pin the finished run to compare the next settings or method with it, row by row.
pub fn pin_controls(ui: &mut egui::Ui, ws: &Workspace, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| match ws.run.pinned() {
        None => {
            if ui
                .add_enabled(ws.run.outcome().is_some(), egui::Button::new("Pin this run"))
                .on_hover_text("Keep this run's maps and masks on screen; change the settings or method and compare them row by row")
                .clicked()
            {
                actions.push(Action::Pin(true));
            }
        }
        Some(p) => {
            ui.label(
                egui::RichText::new(format!(
                    "Pinned: {} · p(target) {:.3} to {:.3}",
                    p.label,
                    p.outcome.steps.first().map_or(f32::NAN, |s| s.p_target),
                    p.outcome
                        .after
                        .as_ref()
                        .map_or(f32::NAN, |a| a.p_target)
                ))
                .strong(),
            );
            if ui.button("Unpin").clicked() {
                actions.push(Action::Pin(false));
            }
        }
    });
}

/// How the saliency column is drawn (alone, or over the image) and what its colours mean.
pub fn heatmap_controls(ui: &mut egui::Ui, heatmap: f32, actions: &mut Vec<Action>) {
    ui.horizontal_wrapped(|ui| {
        let mut v = heatmap;
        ui.add(egui::Slider::new(&mut v, 0.0..=1.0).text("Saliency over image"))
            .on_hover_text("0: the saliency map alone. Above 0: the map drawn over the model's input, each pixel tinted in proportion to its saliency (times this opacity).");
        if v != heatmap {
            actions.push(Action::SetHeatmap(v));
        }
        ui.add_space(12.0);
        ui.label(egui::RichText::new("0").small());
        let (rect, _) = ui.allocate_exact_size(egui::vec2(160.0, 12.0), egui::Sense::hover());
        let steps = 32;
        for k in 0..steps {
            let t = k as f32 / (steps - 1) as f32;
            let [r, g, b] = render::inferno(t);
            let x0 = rect.left() + rect.width() * k as f32 / steps as f32;
            let x1 = rect.left() + rect.width() * (k + 1) as f32 / steps as f32;
            ui.painter().rect_filled(
                egui::Rect::from_x_y_ranges(x0..=x1, rect.y_range()),
                0.0,
                egui::Color32::from_rgb(r, g, b),
            );
        }
        ui.label(egui::RichText::new("1.0").small())
            .on_hover_text(render::SCALE_NOTE);
        ui.label(egui::RichText::new("(99th percentile)").small().weak())
            .on_hover_text(render::SCALE_NOTE);
    });
}

/// The finished run in plain words, what a reader should not miss, and what the view shows.
pub fn readout_box(ui: &mut egui::Ui, ws: &Workspace, params: &UnveilParams) {
    ui.horizontal_wrapped(|ui| {
        ui.menu_button("?", |ui| {
            ui.set_max_width(460.0);
            ui.label(egui::RichText::new("Reading this view").strong());
            ui.label("p(target): the model's probability for the class being explained, for the image as the model saw it in that row (earlier regions hidden). It measures what the model responds to, not whether the finding is present.");
            ui.label("Model input: what the model saw in that row: the image with every earlier region hidden.");
            ui.label("Saliency: how much each pixel moves the class score (bright = more). 1.0 is the map's 99th percentile.");
            ui.label("Mask: the smoothed region this row hides, from the brightest saliency.");
            ui.label("Masked: the input with this row's region hidden too: the next row's input.");
            ui.label("Top plot: p(target) per row; the dashed line is the stop threshold. Right plot: deletion and insertion curves of the selected row.");
            ui.label("Click a picture to enlarge it; arrow keys step through the rows.");
        })
        .response
        .on_hover_text("What p(target) and each column mean");
        if let (Some(o), Some(e)) = (ws.run.outcome(), ws.model.explainer()) {
            let r = readout(o, e.info(), params.stop.threshold);
            ui.label(egui::RichText::new(r.text).strong());
            for f in &r.flags {
                ui.label(
                    egui::RichText::new(format!("Note: {}", f.describe()))
                        .color(ui.visuals().warn_fg_color),
                );
            }
        }
    });
}

/// Spearman's ρ between iteration 0's map and the map with a random classifier head, when a
/// current sanity check has it.
pub fn head_rho(ws: &Workspace, params: &UnveilParams) -> Option<f64> {
    let view = ws.check.result().filter(|_| ws.check_is_current(params))?;
    view.check.report.rho(Cascade::Head)
}

/// Warning colour for a map that does not depend on the model, plain for one that partly
/// does (or cannot be judged), green for one that does (the thresholds are the engine's).
pub fn verdict_colour(ui: &egui::Ui, verdict: Verdict) -> egui::Color32 {
    match verdict {
        Verdict::BarelyChanges => ui.visuals().warn_fg_color,
        Verdict::ChangesPartly | Verdict::Constant => ui.visuals().text_color(),
        Verdict::Changes | Verdict::Vanishes => egui::Color32::from_rgb(90, 190, 110),
    }
}

/// The sanity check's verdict in plain words, with its numbers and maps on request.
pub fn check_box(ui: &mut egui::Ui, ws: &Workspace, textures: &Textures, params: &UnveilParams) {
    let Some(view) = ws.check.result() else {
        return;
    };
    let report = &view.check.report;
    let current = ws.check_is_current(params);
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            ui.label(egui::RichText::new(format!("Sanity check ({}):", report.method.name())).strong());
            let colour = if current {
                verdict_colour(ui, report.verdict())
            } else {
                ui.visuals().text_color()
            };
            ui.label(egui::RichText::new(report.verdict_text()).color(colour));
        });
        if !current {
            ui.label(
                egui::RichText::new("The image, model or saliency settings changed since: run the check again.")
                    .weak(),
            );
        }
        egui::CollapsingHeader::new("Check details").default_open(false).show(ui, |ui| {
            let num = |v: Option<f64>| v.map_or("undefined".to_string(), |v| format!("{v:.3}"));
            egui::Grid::new("check-grid").striped(true).show(ui, |ui| {
                ui.label("re-initialised");
                ui.label("Spearman ρ");
                ui.label("SSIM");
                ui.end_row();
                for row in &report.randomisation {
                    ui.label(row.reinitialised.describe());
                    ui.label(num(row.spearman));
                    ui.label(format!("{:.3}", row.ssim));
                    ui.end_row();
                }
                ui.label(format!("runner-up class: {}", report.other_class.label));
                ui.label(num(report.other_class.spearman));
                ui.label("");
                ui.end_row();
            });
            let Some(tex) = textures.check() else { return };
            let size = tex.size_vec2();
            let scale = (ui.available_width() / size.x).min(1.0);
            ui.add(egui::Image::new(tex).fit_to_exact_size(size * scale))
                .on_hover_text("The map of iteration 0, then with the head, the last stage and the last quarter of the model randomised, then for the runner-up class");
        });
    });
}
