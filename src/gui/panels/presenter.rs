//! Presenter mode's layout: one iteration at a time, large, with the class and p(target) in
//! large type (the app steps through the iterations and handles the keys).

use std::time::{Duration, Instant};

use crate::gui::action::Action;
use crate::gui::panels::iterations::{COLUMNS, picture};
use crate::gui::textures::Textures;
use crate::gui::workspace::Workspace;

/// Presenter mode's pace through the iterations.
const ADVANCE: Duration = Duration::from_secs(4);

/// Presenter mode: whether it is on, and its stepping through the iterations.
pub struct Presenter {
    pub on: bool,
    /// Steps through the iterations by itself until paused (Space).
    pub playing: bool,
    last_advance: Instant,
}

impl Presenter {
    pub fn new(on: bool) -> Self {
        Presenter {
            on,
            playing: true,
            last_advance: Instant::now(),
        }
    }

    /// F11 toggles presenter mode; in it, Space pauses or resumes the stepping and Escape
    /// leaves (unless it closes an enlarged picture). While playing, the next iteration comes
    /// every [`ADVANCE`]: the frame for it is asked for here.
    pub fn keys(
        &self,
        ctx: &egui::Context,
        rows: usize,
        enlarged: bool,
        actions: &mut Vec<Action>,
    ) {
        let (f11, space, esc) = ctx.input(|i| {
            (
                i.key_pressed(egui::Key::F11),
                i.key_pressed(egui::Key::Space),
                i.key_pressed(egui::Key::Escape),
            )
        });
        if f11 || (esc && self.on && !enlarged) {
            actions.push(Action::TogglePresenter);
        }
        if !self.on {
            return;
        }
        if space && ctx.memory(|m| m.focused().is_none()) {
            actions.push(Action::TogglePlaying);
        }
        if self.playing && rows > 1 {
            let since = self.last_advance.elapsed();
            if since >= ADVANCE {
                actions.push(Action::NextIteration);
                ctx.request_repaint_after(ADVANCE);
            } else {
                ctx.request_repaint_after(ADVANCE - since);
            }
        }
    }

    /// On or off; it starts playing either way.
    pub fn toggle(&mut self) {
        self.on = !self.on;
        self.playing = true;
        self.last_advance = Instant::now();
    }

    pub fn toggle_playing(&mut self) {
        self.playing = !self.playing;
        self.last_advance = Instant::now();
    }

    /// The next iteration is on screen: the next step comes [`ADVANCE`] from now.
    pub fn advanced(&mut self) {
        self.last_advance = Instant::now();
    }
}

/// Presenter mode: the selected iteration alone, large, with the class and p(target) in
/// large type; the iterations step by themselves until paused.
pub fn ui(
    ui: &mut egui::Ui,
    (ws, textures): (&Workspace, &Textures),
    selected: usize,
    playing: bool,
) {
    let steps = ws.run.steps();
    let Some(view) = steps.get(selected.min(steps.len().saturating_sub(1))) else {
        ui.centered_and_justified(|ui| {
            ui.label(egui::RichText::new("Working…").size(28.0));
        });
        return;
    };
    let s = &view.step;
    let label = ws
        .model
        .explainer()
        .zip(ws.target())
        .map_or(String::new(), |(e, t)| e.info().label(t));
    ui.vertical_centered(|ui| {
        ui.label(
            egui::RichText::new(format!("{label} · p = {:.3}", s.p_target))
                .size(34.0)
                .strong(),
        );
        ui.label(
            egui::RichText::new(format!(
                "iteration {} of {} · {:.0} % of the image hidden so far · {}",
                s.index,
                steps.len(),
                100.0 * s.cumulative.coverage(),
                if playing {
                    "Space pauses"
                } else {
                    "paused: Space plays"
                }
            ))
            .size(18.0),
        );
    });
    ui.add_space(8.0);
    let avail = ui.available_size();
    let cell = ((avail.x - 60.0) / 4.0).min(avail.y - 40.0).max(64.0);
    ui.horizontal(|ui| {
        ui.add_space(((avail.x - 4.0 * (cell + 12.0)) / 2.0).max(0.0));
        for (c, name) in COLUMNS.iter().enumerate() {
            ui.vertical(|ui| {
                ui.label(egui::RichText::new(*name).size(16.0));
                picture(ui, textures.step(view, c), cell, None);
            });
        }
    });
}
