//! User-facing messages: errors and confirmations shown in the window, never panics. The list
//! is the app's; the status bar draws it and asks for a dismissal with an action.

use crate::gui::action::Action;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

#[derive(Clone, Debug)]
pub struct Notice {
    /// Names this notice for its dismissal, whatever came or went before it.
    pub id: u64,
    pub level: Level,
    pub text: String,
}

#[derive(Default)]
pub struct Notices {
    items: Vec<Notice>,
    next: u64,
}

impl Notices {
    pub fn error(&mut self, text: impl Into<String>) {
        self.push(Level::Error, text.into());
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.push(Level::Info, text.into());
    }

    fn push(&mut self, level: Level, text: String) {
        self.items.retain(|n| n.text != text);
        self.next += 1;
        self.items.push(Notice {
            id: self.next,
            level,
            text,
        });
        if self.items.len() > 5 {
            self.items.remove(0);
        }
    }

    pub fn dismiss(&mut self, id: u64) {
        self.items.retain(|n| n.id != id);
    }

    pub fn items(&self) -> &[Notice] {
        &self.items
    }

    /// Draws the notices, each with a dismiss button.
    pub fn ui(&self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        for n in &self.items {
            // The button first, so a long message wraps beside it instead of pushing it off.
            ui.horizontal_top(|ui| {
                if ui
                    .small_button("Dismiss")
                    .on_hover_text("Dismiss this message")
                    .clicked()
                {
                    actions.push(Action::DismissNotice(n.id));
                }
                let (icon, color) = match n.level {
                    Level::Error => ("Error:", ui.visuals().error_fg_color),
                    Level::Info => ("Note:", ui.visuals().text_color()),
                };
                ui.add(
                    egui::Label::new(
                        egui::RichText::new(format!("{icon} {}", n.text)).color(color),
                    )
                    .wrap(),
                );
            });
        }
    }
}
