//! One row per iteration: saliency, smoothed mask and masked input side by side, with
//! p(target) and the top-3 labels, and a plot of p(target) over the iterations.

use egui_plot::{HLine, Line, Plot, PlotPoints, Points};

use crate::gui::app::App;

const COLUMNS: [&str; 4] = ["Model input", "Saliency", "Mask", "Masked"];

pub fn ui(app: &mut App, ui: &mut egui::Ui) {
    if app.steps.is_empty() {
        ui.centered_and_justified(|ui| {
            if app.is_running() {
                ui.spinner();
            } else {
                ui.label("No results yet.");
            }
        });
        return;
    }
    plot(app, ui);
    ui.separator();
    let width = ui.available_width();
    let cell = ((width - 40.0) / 4.0).clamp(64.0, 320.0);
    let mut clicked = None;
    egui::ScrollArea::vertical().show(ui, |ui| {
        for (i, view) in app.steps.iter().enumerate() {
            let s = &view.step;
            let selected = i == app.selected;
            let frame = egui::Frame::group(ui.style()).stroke(if selected {
                ui.visuals().selection.stroke
            } else {
                ui.visuals().widgets.noninteractive.bg_stroke
            });
            let row = frame.show(ui, |ui| {
                let top3: Vec<String> = s
                    .top5
                    .iter()
                    .take(3)
                    .map(|p| format!("{} {:.1}%", p.label, 100.0 * p.prob))
                    .collect();
                let mut head = format!(
                    "Iteration {} · p(target) = {:.3} · top-3: {} · mask {:.1}% (total {:.1}%)",
                    s.index,
                    s.p_target,
                    top3.join(", "),
                    100.0 * s.mask.coverage(),
                    100.0 * s.cumulative.coverage()
                );
                if view.stale {
                    head.push_str(" · updating…");
                }
                ui.label(egui::RichText::new(head).strong());
                ui.horizontal(|ui| {
                    for (c, tex) in view.textures.iter().enumerate() {
                        ui.vertical(|ui| {
                            ui.label(egui::RichText::new(COLUMNS[c]).small());
                            let r = ui
                                .add(
                                    egui::Image::new(tex)
                                        .fit_to_exact_size(egui::vec2(cell, cell))
                                        .sense(egui::Sense::click()),
                                )
                                .on_hover_text(format!(
                                    "{} of iteration {} (click to enlarge)",
                                    COLUMNS[c], s.index
                                ));
                            if r.clicked() {
                                clicked = Some((i, c));
                            }
                        });
                    }
                });
            });
            if selected && app.enlarged.is_none() {
                row.response.scroll_to_me(None);
            }
            if row.response.interact(egui::Sense::click()).clicked() {
                app.selected = i;
            }
        }
    });
    if let Some((i, c)) = clicked {
        app.selected = i;
        app.enlarged = Some((i, c));
    }
}

fn plot(app: &App, ui: &mut egui::Ui) {
    let mut pts: Vec<[f64; 2]> = app
        .steps
        .iter()
        .map(|s| [s.step.index as f64, s.step.p_target as f64])
        .collect();
    if let Some(after) = app.outcome.as_ref().and_then(|o| o.after.as_ref()) {
        pts.push([app.steps.len() as f64, after.p_target as f64]);
    }
    let stop = app.settings.params.stop.threshold as f64;
    Plot::new("p_target")
        .height(130.0)
        .include_y(0.0)
        .include_y(1.0)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .x_axis_label("iteration (last point: every mask applied)")
        .y_axis_label("p(target)")
        .show(ui, |p| {
            p.line(Line::new("p(target)", PlotPoints::from(pts.clone())));
            p.points(Points::new("iterations", PlotPoints::from(pts)).radius(3.0));
            p.hline(HLine::new("stop threshold", stop).color(egui::Color32::from_rgb(220, 80, 60)));
        });
}

/// The enlarged image, in its own window; Escape or the close button dismisses it.
pub fn enlarged_window(app: &mut App, ctx: &egui::Context) {
    let Some((i, c)) = app.enlarged else { return };
    let Some(view) = app.steps.get(i) else {
        app.enlarged = None;
        return;
    };
    let mut open = true;
    let tex = view.textures[c].clone();
    egui::Window::new(format!("{} · iteration {}", COLUMNS[c], i))
        .open(&mut open)
        .resizable(true)
        .default_size([560.0, 600.0])
        .show(ctx, |ui| {
            let side = ui.available_width().min(ui.available_height()).max(128.0);
            ui.add(egui::Image::new(&tex).fit_to_exact_size(egui::vec2(side, side)));
        });
    if !open {
        app.enlarged = None;
    }
}
