//! All regions in one picture: every iteration's mask over the image in its own colour.

use egui::TextureHandle;

use crate::engine::models::Crop;
use crate::engine::render;
use crate::engine::source_image::Window;
use crate::gui::action::Action;
use crate::gui::textures;
use crate::gui::workspace::Workspace;

/// The view's own state: the composed picture, kept until the model, the image (or its display
/// window), the results or the opacity change (the slots' versions and the opacity).
#[derive(Default)]
pub struct RegionsView {
    picture: Option<((u64, u64, u64, u32), TextureHandle)>,
}

impl RegionsView {
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        ws: &Workspace,
        opacity: f32,
        actions: &mut Vec<Action>,
    ) {
        let mut new_opacity = opacity;
        ui.horizontal(|ui| {
            ui.add(egui::Slider::new(&mut new_opacity, 0.0..=1.0).text("Opacity"))
                .on_hover_text("Opacity of the coloured regions over the image");
            if ui
                .add_enabled(
                    ws.run.outcome().is_some(),
                    egui::Button::new("Save picture…"),
                )
                .on_hover_text("Save this picture as a PNG at the image's own resolution")
                .clicked()
            {
                actions.push(Action::PickRegionsFile);
            }
        });
        if new_opacity != opacity {
            actions.push(Action::SetOverlayOpacity(new_opacity));
        }
        ui.horizontal_top(|ui| {
            if let Some(tex) = self.picture(ui.ctx(), ws, opacity) {
                let size = tex.size_vec2();
                let avail = ui.available_size() - egui::vec2(240.0, 0.0);
                let scale = (avail.x / size.x).min(avail.y / size.y).clamp(0.1, 4.0);
                let r = ui
                    .add(egui::Image::new(&tex).fit_to_exact_size(size * scale).sense(egui::Sense::drag()))
                    .on_hover_text("Each colour is the region unveiled at one iteration. On grayscale images, drag to change the window: left/right = width, up/down = level.");
                if let Some(w) = dragged_window(ws, r.drag_delta()) {
                    actions.push(Action::SetWindow(w));
                }
            }
            ui.vertical(|ui| {
                ui.heading("Legend");
                for view in ws.run.steps() {
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
                if let Some(after) = ws.run.outcome().and_then(|o| o.after.as_ref()) {
                    ui.label(format!("all masked · p = {:.3}", after.p_target));
                }
                if let Some(u) = ws.run.outcome().and_then(|o| o.unveiling) {
                    ui.separator();
                    ui.label(egui::RichText::new("Unveiling against one map").strong())
                        .on_hover_text("p(target) with only a region visible (the rest filled), and with it hidden: the union of every iteration's region against a region of the same area from iteration 0's map alone, smoothed the same way. If unveiling finds evidence one map misses, hiding the union lowers p more.");
                    egui::Grid::new("unveiling").show(ui, |ui| {
                        ui.label("");
                        ui.label("only visible");
                        ui.label("hidden");
                        ui.end_row();
                        for (name, area, only, hidden) in [
                            ("union", u.unveiled_area, u.unveiled_only_p, u.unveiled_hidden_p),
                            ("one map", u.single_map_area, u.single_map_only_p, u.single_map_hidden_p),
                        ] {
                            ui.label(format!("{name} ({:.0}%)", 100.0 * area));
                            ui.label(format!("{only:.3}"));
                            ui.label(format!("{hidden:.3}"));
                            ui.end_row();
                        }
                    });
                }
            });
        });
    }

    /// The all-regions picture for the current results and opacity (made once per change).
    fn picture(
        &mut self,
        ctx: &egui::Context,
        ws: &Workspace,
        opacity: f32,
    ) -> Option<TextureHandle> {
        let img = ws.image.loaded()?;
        let key = (
            ws.model.version(),
            ws.image.version(),
            ws.run.version(),
            opacity.to_bits(),
        );
        if let Some((k, t)) = &self.picture
            && *k == key
        {
            return Some(t.clone());
        }
        // The model's view of the image (TorchXRayVision models see its centre square).
        let crop = ws.model.explainer().map_or(Crop::None, |e| e.info().crop);
        let steps: Vec<_> = ws.run.steps().iter().map(|s| &s.step).collect();
        let pic = render::regions_picture(&img.preview, crop, &steps, opacity);
        let t = textures::upload(ctx, "regions", &pic);
        self.picture = Some((key, t.clone()));
        Some(t)
    }
}

/// Radiology-viewer style window/level by dragging: x changes the width, y the centre.
fn dragged_window(ws: &Workspace, delta: egui::Vec2) -> Option<Window> {
    if delta == egui::Vec2::ZERO {
        return None;
    }
    let w = ws.image.window()?;
    let g = ws.image.loaded()?.source.gray.as_ref()?;
    let span = (g.range.1 - g.range.0).max(1e-3);
    Some(Window {
        center: w.center - delta.y * span * 0.002,
        width: (w.width * (delta.x * 0.005).exp()).max(span / 500.0),
    })
}
