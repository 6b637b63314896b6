//! One row per iteration: saliency, smoothed mask and masked input side by side, with
//! p(target) and the top-3 labels, and a plot of p(target) over the iterations.

use egui_plot::{HLine, Line, Plot, PlotPoints, Points};

use crate::engine::models::reinit::Cascade;
use crate::engine::params::UnveilParams;
use crate::gui::workspace::Workspace;

const COLUMNS: [&str; 4] = ["Model input", "Saliency", "Mask", "Masked"];

/// The view's own state: which row is selected and which picture is enlarged.
#[derive(Default)]
pub struct IterationsView {
    pub selected: usize,
    /// (iteration, column) shown in the enlarged window.
    pub enlarged: Option<(usize, usize)>,
}

impl IterationsView {
    /// Back to the first row, nothing enlarged (a new image is open).
    pub fn reset(&mut self) {
        *self = IterationsView::default();
    }

    /// Left/right arrows step through iterations; Escape closes the enlarged picture. Keys
    /// typed into a text field are not for us.
    pub fn handle_keys(&mut self, ctx: &egui::Context, rows: usize) {
        self.selected = self.selected.min(rows.saturating_sub(1));
        if ctx.memory(|m| m.focused().is_some()) {
            return;
        }
        let (left, right, esc) = ctx.input(|i| {
            (
                i.key_pressed(egui::Key::ArrowLeft),
                i.key_pressed(egui::Key::ArrowRight),
                i.key_pressed(egui::Key::Escape),
            )
        });
        if left {
            self.selected = self.selected.saturating_sub(1);
        }
        if right && self.selected + 1 < rows {
            self.selected += 1;
        }
        if esc {
            self.enlarged = None;
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, ws: &Workspace, params: &UnveilParams) {
        let stop_threshold = params.stop.threshold;
        if ws.steps.is_empty() {
            ui.centered_and_justified(|ui| {
                if ws.is_running() {
                    ui.spinner();
                } else {
                    ui.label("No results yet.");
                }
            });
            return;
        }
        ui.columns(2, |cols| {
            plot(ws, stop_threshold, &mut cols[0]);
            curves_plot(ws, self.selected, &mut cols[1]);
        });
        check_box(ui, ws, params);
        // A multi-label model scores each finding on its own: say which one is explained.
        if let (Some(e), Some(first)) = (&ws.explainer, ws.steps.first())
            && e.info().multi_label
            && let Some(t) = ws.target(params.target)
        {
            let n = (0..first.step.probs.len())
                .filter(|&c| e.info().predicts(c))
                .count();
            ui.label(
                egui::RichText::new(format!(
                    "Explaining {} (p = {:.3} on the original image; one of {n} findings, each \
                     scored on its own; pick another under Class)",
                    e.info().label(t),
                    first.step.probs.get(t).copied().unwrap_or(f32::NAN)
                ))
                .strong(),
            );
        }
        ui.separator();
        let width = ui.available_width();
        let cell = ((width - 40.0) / 4.0).clamp(64.0, 320.0);
        let mut clicked = None;
        egui::ScrollArea::vertical().show(ui, |ui| {
            for (i, view) in ws.steps.iter().enumerate() {
                let s = &view.step;
                let selected = i == self.selected;
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
                    if let Some(f) = &s.faithfulness {
                        head.push_str(&format!(
                            " · deletion AUC {:.2}, insertion AUC {:.2}",
                            f.deletion_auc, f.insertion_auc
                        ));
                    }
                    if view.stale {
                        head.push_str(" · updating…");
                    }
                    ui.label(egui::RichText::new(head).strong());
                    ui.horizontal(|ui| {
                        for (c, tex) in view.textures.iter().enumerate() {
                            ui.vertical(|ui| {
                                let mut label = egui::RichText::new(COLUMNS[c]).small();
                                if c == 1
                                    && i == 0
                                    && let Some(rho) = head_rho(ws, params)
                                {
                                    label = egui::RichText::new(format!(
                                        "{} · random-head ρ {rho:.2}",
                                        COLUMNS[c]
                                    ))
                                    .small()
                                    .color(verdict_colour(ui, rho));
                                }
                                ui.label(label);
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
                if selected && self.enlarged.is_none() {
                    row.response.scroll_to_me(None);
                }
                if row.response.interact(egui::Sense::click()).clicked() {
                    self.selected = i;
                }
            }
        });
        if let Some((i, c)) = clicked {
            self.selected = i;
            self.enlarged = Some((i, c));
        }
    }

    /// The enlarged image, in its own window; Escape or the close button dismisses it.
    pub fn enlarged_window(&mut self, ctx: &egui::Context, ws: &Workspace) {
        let Some((i, c)) = self.enlarged else { return };
        let Some(view) = ws.steps.get(i) else {
            self.enlarged = None;
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
            self.enlarged = None;
        }
    }
}

fn plot(ws: &Workspace, stop_threshold: f32, ui: &mut egui::Ui) {
    let mut pts: Vec<[f64; 2]> = ws
        .steps
        .iter()
        .map(|s| [s.step.index as f64, s.step.p_target as f64])
        .collect();
    if let Some(after) = ws.outcome.as_ref().and_then(|o| o.after.as_ref()) {
        pts.push([ws.steps.len() as f64, after.p_target as f64]);
    }
    let stop = stop_threshold as f64;
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

/// The selected iteration's deletion and insertion curves: p(target) as its most salient
/// pixels are hidden (deletion) or put back into a blur (insertion).
fn curves_plot(ws: &Workspace, selected: usize, ui: &mut egui::Ui) {
    let Some(curves) = ws
        .steps
        .get(selected)
        .and_then(|v| v.step.faithfulness.as_ref())
    else {
        ui.centered_and_justified(|ui| {
            ui.label(egui::RichText::new("Deletion / insertion curves appear here.").weak())
        });
        return;
    };
    let points = |v: &[f32]| -> PlotPoints {
        v.iter()
            .enumerate()
            .map(|(k, &p)| [k as f64 / (v.len() - 1).max(1) as f64, p as f64])
            .collect()
    };
    Plot::new("faithfulness")
        .height(130.0)
        .include_y(0.0)
        .include_y(1.0)
        .include_x(0.0)
        .include_x(1.0)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .legend(egui_plot::Legend::default())
        .x_axis_label(format!("fraction of pixels, most salient first (iteration {selected})"))
        .show(ui, |p| {
            p.line(
                Line::new(
                    format!("deletion (AUC {:.2}; lower: faithful)", curves.deletion_auc),
                    points(&curves.deletion_curve),
                )
                .color(egui::Color32::from_rgb(230, 120, 60)),
            );
            p.line(
                Line::new(
                    format!("insertion (AUC {:.2}; higher: faithful)", curves.insertion_auc),
                    points(&curves.insertion_curve),
                )
                .color(egui::Color32::from_rgb(90, 170, 230)),
            );
        })
        .response
        .on_hover_text("Deletion: p(target) as the most salient pixels are replaced by the fill. Insertion: p(target) as they are put back into a blurred image. A map that finds the model's evidence makes deletion fall fast and insertion rise fast (Petsiuk et al., 2018).");
}

/// Spearman's ρ between iteration 0's map and the map with a random classifier head, when a
/// current sanity check has it.
fn head_rho(ws: &Workspace, params: &UnveilParams) -> Option<f64> {
    let view = ws.check.as_ref().filter(|_| ws.check_is_current(params))?;
    view.check
        .report
        .randomisation
        .iter()
        .find(|r| r.reinitialised == Cascade::Head)
        .and_then(|r| r.spearman)
}

/// Warning colour for a map that does not depend on the model (ρ >= 0.9), plain for one
/// that partly does, green for one that changes (ρ < 0.5).
fn verdict_colour(ui: &egui::Ui, rho: f64) -> egui::Color32 {
    if rho >= 0.9 {
        ui.visuals().warn_fg_color
    } else if rho >= 0.5 {
        ui.visuals().text_color()
    } else {
        egui::Color32::from_rgb(90, 190, 110)
    }
}

/// The sanity check's verdict in plain words, with its numbers and maps on request.
fn check_box(ui: &mut egui::Ui, ws: &Workspace, params: &UnveilParams) {
    let Some(view) = &ws.check else { return };
    let report = &view.check.report;
    let current = ws.check_is_current(params);
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            ui.label(egui::RichText::new(format!("Sanity check ({}):", report.method.name())).strong());
            let colour = head_rho(ws, params).map_or(ui.visuals().text_color(), |r| verdict_colour(ui, r));
            ui.label(egui::RichText::new(&report.verdict).color(colour));
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
            let tex = &view.picture;
            let size = tex.size_vec2();
            let scale = (ui.available_width() / size.x).min(1.0);
            ui.add(egui::Image::new(tex).fit_to_exact_size(size * scale))
                .on_hover_text("The map of iteration 0, then with the head, the last stage and the last quarter of the model randomised, then for the runner-up class");
        });
    });
}
