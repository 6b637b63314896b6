//! The plots above the rows: p(target) over the iterations with the stop threshold, and the
//! selected iteration's deletion and insertion curves.

use egui_plot::{HLine, Line, Plot, PlotPoints, Points};

use crate::gui::workspace::Workspace;

/// p(target) per iteration (the last point: every mask applied) against the stop threshold.
pub fn plot(ws: &Workspace, stop_threshold: f32, height: f32, ui: &mut egui::Ui) {
    let mut pts: Vec<[f64; 2]> = ws
        .run
        .steps()
        .iter()
        .map(|s| [s.step.index as f64, s.step.p_target as f64])
        .collect();
    if let Some(after) = ws.run.outcome().and_then(|o| o.after.as_ref()) {
        pts.push([ws.run.steps().len() as f64, after.p_target as f64]);
    }
    let stop = stop_threshold as f64;
    let last = pts.len().max(2) as f64 - 1.0;
    let blue = egui::Color32::from_rgb(90, 170, 230);
    Plot::new("p_target")
        .height(height)
        .include_y(0.0)
        .include_y(1.0)
        // Whole iterations only, and room for them even with one point.
        .include_x(-0.25)
        .include_x(last + 0.25)
        .x_axis_formatter(|mark, _| {
            let v = mark.value;
            if (v - v.round()).abs() < 1e-6 && v >= 0.0 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .legend(egui_plot::Legend::default().position(egui_plot::Corner::RightBottom))
        .x_axis_label("iteration (last point: every mask applied)")
        .y_axis_label("p(target)")
        .show(ui, |p| {
            p.line(Line::new("p(target)", PlotPoints::from(pts.clone())).color(blue));
            p.points(
                Points::new("p(target)", PlotPoints::from(pts))
                    .radius(3.0)
                    .color(blue),
            );
            p.hline(
                HLine::new(format!("stop threshold ({stop:.2})"), stop)
                    .color(egui::Color32::from_rgb(220, 80, 60))
                    .style(egui_plot::LineStyle::dashed_loose()),
            );
        });
}

/// The selected iteration's deletion and insertion curves: p(target) as its most salient
/// pixels are hidden (deletion) or put back into a blur (insertion).
pub fn curves_plot(ws: &Workspace, selected: usize, height: f32, ui: &mut egui::Ui) {
    let Some(curves) = ws
        .run
        .steps()
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
        .height(height)
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
