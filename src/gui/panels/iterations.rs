//! One row per iteration: saliency, smoothed mask and masked input side by side, with
//! p(target) and the top-3 labels, and a plot of p(target) over the iterations.

use crate::engine::params::UnveilParams;
use crate::engine::sanity::Verdict;
use crate::gui::action::Action;
use crate::gui::panels::plots::{curves_plot, plot};
use crate::gui::panels::run_header::{
    check_box, head_rho, heatmap_controls, pin_controls, readout_box, verdict_colour,
};
use crate::gui::textures::Textures;
use crate::gui::workspace::Workspace;

pub const COLUMNS: [&str; 4] = ["Model input", "Saliency", "Mask", "Masked"];

/// The view's own state: which row is selected and which picture is enlarged.
#[derive(Default)]
pub struct IterationsView {
    pub selected: usize,
    /// (iteration, column) shown in the enlarged window.
    pub enlarged: Option<(usize, usize)>,
    /// The row last scrolled into view: scroll once per change, not every frame (scrolling
    /// every frame kept the app repainting while nothing moved).
    scrolled_to: Option<usize>,
    /// The enlarged picture's pan and zoom (egui::Scene's visible rectangle; an empty one
    /// fits the picture).
    scene: Option<egui::Rect>,
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
        // The enlarged picture follows the arrows: the same column of the next iteration.
        if let Some((i, _)) = &mut self.enlarged {
            *i = self.selected;
        }
        if esc {
            self.enlarged = None;
        }
    }

    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        (ws, textures): (&Workspace, &Textures),
        params: &UnveilParams,
        heatmap: f32,
        actions: &mut Vec<Action>,
    ) {
        let stop_threshold = params.stop.threshold;
        if ws.run.steps().is_empty() {
            ui.centered_and_justified(|ui| {
                if ws.run.is_running() {
                    ui.spinner();
                } else {
                    ui.label("No results yet.");
                }
            });
            return;
        }
        // The panel's own width, taken before anything is added: the rows' pictures are sized
        // from it, so that four (or six) always fit.
        let width = ui.available_width();
        // Side by side where there is room. In small windows (large text, small screens) the
        // plots fold away, so that the rows stay in view and no legend covers a curve.
        let height = (ui.available_height() * 0.2).clamp(80.0, 130.0);
        if width >= 700.0 && ui.available_height() >= 500.0 {
            ui.columns(2, |cols| {
                plot(ws, stop_threshold, height, &mut cols[0]);
                curves_plot(ws, self.selected, height, &mut cols[1]);
            });
        } else {
            egui::CollapsingHeader::new("Plots: p(target) and deletion / insertion curves")
                .default_open(false)
                .show(ui, |ui| {
                    plot(ws, stop_threshold, height, ui);
                    curves_plot(ws, self.selected, height, ui);
                });
        }
        check_box(ui, ws, textures, params);
        readout_box(ui, ws, params);
        // A multi-label model scores each finding on its own: say which one is explained.
        if let (Some(e), Some(first)) = (ws.model.explainer(), ws.run.steps().first())
            && e.info().multi_label
            && let Some(t) = ws.target()
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
        heatmap_controls(ui, heatmap, actions);
        pin_controls(ui, ws, actions);
        ui.separator();
        // A pinned run adds its saliency and mask to each row.
        let pinned = ws.run.pinned();
        let columns = if pinned.is_some() { 6.0 } else { 4.0 };
        let cell = ((width - 40.0 - 8.0 * columns) / columns).clamp(64.0, 320.0);
        let (mut clicked, mut clicked_row) = (None, None);
        egui::ScrollArea::vertical().show(ui, |ui| {
            for (i, view) in ws.run.steps().iter().enumerate() {
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
                    // The header selects the row; the pictures open enlarged. (A click area over
                    // the whole row, added after the pictures, used to take their clicks.)
                    if ui
                        .add(
                            egui::Label::new(egui::RichText::new(head).strong())
                                .sense(egui::Sense::click()),
                        )
                        .on_hover_text("Select this iteration (arrow keys step through them)")
                        .clicked()
                    {
                        clicked_row = Some(i);
                    }
                    ui.horizontal(|ui| {
                        for (c, tex) in (0..4).map(|c| (c, textures.step(view, c))) {
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
                                    .color(verdict_colour(ui, Verdict::of_rho(Some(rho))));
                                }
                                ui.label(label);
                                let alt = format!("{} of iteration {}", COLUMNS[c], s.index);
                                let r = picture(ui, tex, cell, Some(alt)).on_hover_text(format!(
                                    "{} of iteration {} (click to enlarge)",
                                    COLUMNS[c], s.index
                                ));
                                if r.clicked() {
                                    clicked = Some((i, c));
                                }
                            });
                        }
                        if let Some(pin) = pinned {
                            ui.separator();
                            match pin.steps.get(i) {
                                Some(pv) => {
                                    for c in [1, 2] {
                                        ui.vertical(|ui| {
                                            ui.label(
                                                egui::RichText::new(format!(
                                                    "Pinned {} · p {:.3}",
                                                    COLUMNS[c].to_lowercase(),
                                                    pv.step.p_target
                                                ))
                                                .small(),
                                            );
                                            picture(ui, textures.step(pv, c), cell, None)
                                                .on_hover_text(format!(
                                                    "The pinned run ({}), iteration {i}",
                                                    pin.label
                                                ));
                                        });
                                    }
                                }
                                None => {
                                    ui.label(
                                        egui::RichText::new("(the pinned run stopped earlier)")
                                            .small()
                                            .weak(),
                                    );
                                }
                            }
                        }
                    });
                });
                if selected && self.enlarged.is_none() && self.scrolled_to != Some(i) {
                    row.response.scroll_to_me(None);
                    self.scrolled_to = Some(i);
                }
            }
        });
        if let Some(i) = clicked_row {
            self.selected = i;
        }
        if let Some((i, c)) = clicked {
            self.selected = i;
            self.enlarged = Some((i, c));
            self.scene = None;
        }
    }

    /// The enlarged image, in its own window: scroll or pinch to zoom, drag to pan, arrow keys
    /// for the other iterations; Escape or the close button dismisses it.
    pub fn enlarged_window(&mut self, ctx: &egui::Context, ws: &Workspace, textures: &Textures) {
        let Some((i, c)) = self.enlarged else { return };
        let Some(view) = ws.run.steps().get(i) else {
            self.enlarged = None;
            return;
        };
        let mut open = true;
        let tex = textures.step(view, c).cloned();
        let scene = self.scene.get_or_insert(egui::Rect::ZERO);
        egui::Window::new(format!("{} · iteration {i}", COLUMNS[c]))
            .open(&mut open)
            .resizable(true)
            .default_size([600.0, 640.0])
            .show(ctx, |ui| {
                ui.label(
                    egui::RichText::new(format!(
                        "p(target) = {:.3} · scroll to zoom, drag to pan, double-click to fit · arrow keys: other iterations · Esc closes",
                        view.step.p_target
                    ))
                    .small(),
                );
                let side = ui.available_width().min(ui.available_height()).max(128.0);
                egui::Scene::new()
                    .zoom_range(0.1..=16.0)
                    .show(ui, scene, |ui| {
                        picture(ui, tex.as_ref(), side, None);
                    });
            });
        if !open {
            self.enlarged = None;
        }
    }
}

/// A picture at `size` x `size` (clickable, named `alt`, when `alt` is given), or a note where
/// it could not be drawn.
pub fn picture(
    ui: &mut egui::Ui,
    tex: Option<&egui::TextureHandle>,
    size: f32,
    alt: Option<String>,
) -> egui::Response {
    let Some(tex) = tex else {
        return ui.add_sized([size, size], egui::Label::new("(cannot be drawn)"));
    };
    let image = egui::Image::new(tex).fit_to_exact_size(egui::vec2(size, size));
    match alt {
        Some(alt) => ui.add(image.alt_text(alt).sense(egui::Sense::click())),
        None => ui.add(image),
    }
}
