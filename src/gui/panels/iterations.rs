//! One row per iteration: saliency, smoothed mask and masked input side by side, with
//! p(target) and the top-3 labels, and a plot of p(target) over the iterations.

use egui_plot::{HLine, Line, Plot, PlotPoints, Points};

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

    pub fn ui(&mut self, ui: &mut egui::Ui, ws: &Workspace, stop_threshold: f32) {
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
        plot(ws, stop_threshold, ui);
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
