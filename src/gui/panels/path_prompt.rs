//! The built-in stand-in for a file dialog where none can open (no desktop portal): a window
//! with a path field. The text being typed is this view's own state; the path typed becomes
//! the action the dialog would have.

use std::path::PathBuf;

use crate::gui::action::{Action, PathPrompt};

#[derive(Default)]
pub struct PathPromptView {
    prompt: Option<PathPrompt>,
}

impl PathPromptView {
    pub fn open(&mut self, prompt: PathPrompt) {
        self.prompt = Some(prompt);
    }

    pub fn ui(&mut self, ctx: &egui::Context, actions: &mut Vec<Action>) {
        let Some(prompt) = &mut self.prompt else {
            return;
        };
        let (mut open, mut done, mut cancel) = (true, false, false);
        egui::Window::new(prompt.title)
            .open(&mut open)
            .collapsible(false)
            .show(ctx, |ui| {
                ui.label("Full path of the file:");
                let r = ui.add(
                    egui::TextEdit::singleline(&mut prompt.text)
                        .desired_width(420.0)
                        .hint_text("/home/me/xray.dcm"),
                );
                r.request_focus();
                let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                ui.horizontal(|ui| {
                    done = ui.button("Open").clicked() || enter;
                    cancel = ui.button("Cancel").clicked();
                });
            });
        if done && !prompt.text.trim().is_empty() {
            actions.push((prompt.then)(PathBuf::from(prompt.text.trim())));
            self.prompt = None;
        } else if cancel || !open {
            self.prompt = None;
        }
    }
}
