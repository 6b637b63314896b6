//! All regions in one picture: every iteration's mask over the image in its own colour.

use crate::engine::image::Window;
use crate::engine::render;
use crate::gui::app::App;

pub fn ui(app: &mut App, ui: &mut egui::Ui) {
    let ctx = ui.ctx().clone();
    ui.horizontal(|ui| {
        ui.add(egui::Slider::new(&mut app.settings.overlay_opacity, 0.0..=1.0).text("Opacity"))
            .on_hover_text("Opacity of the coloured regions over the image");
    });
    ui.horizontal_top(|ui| {
        if let Some(tex) = app.regions_texture(&ctx) {
            let size = tex.size_vec2();
            let avail = ui.available_size() - egui::vec2(240.0, 0.0);
            let scale = (avail.x / size.x).min(avail.y / size.y).clamp(0.1, 4.0);
            let r = ui
                .add(egui::Image::new(&tex).fit_to_exact_size(size * scale).sense(egui::Sense::drag()))
                .on_hover_text("Each colour is the region unveiled at one iteration. On grayscale images, drag to change the window: left/right = width, up/down = level.");
            drag_window(app, &ctx, r.drag_delta());
        }
        ui.vertical(|ui| {
            ui.heading("Legend");
            for view in &app.steps {
                let s = &view.step;
                ui.horizontal(|ui| {
                    let [r, g, b] = render::iteration_color(s.index);
                    let (rect, _) =
                        ui.allocate_exact_size(egui::vec2(14.0, 14.0), egui::Sense::hover());
                    ui.painter()
                        .rect_filled(rect, 2.0, egui::Color32::from_rgb(r, g, b));
                    ui.label(format!("iteration {} · p = {:.3}", s.index, s.p_target));
                });
            }
            if let Some(after) = app.outcome.as_ref().and_then(|o| o.after.as_ref()) {
                ui.label(format!("all masked · p = {:.3}", after.p_target));
            }
        });
    });
}

/// Radiology-viewer style window/level by dragging: x changes the width, y the centre.
fn drag_window(app: &mut App, ctx: &egui::Context, delta: egui::Vec2) {
    if delta == egui::Vec2::ZERO {
        return;
    }
    let (Some(w), Some(g)) = (
        app.window,
        app.image.as_ref().and_then(|i| i.source.gray.as_ref()),
    ) else {
        return;
    };
    let span = (g.range.1 - g.range.0).max(1e-3);
    let new = Window {
        center: w.center - delta.y * span * 0.002,
        width: (w.width * (delta.x * 0.005).exp()).max(span / 500.0),
    };
    app.set_window(ctx, new);
}
