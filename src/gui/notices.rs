//! User-facing messages: errors and confirmations shown in the window, never panics.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

#[derive(Clone, Debug)]
pub struct Notice {
    pub level: Level,
    pub text: String,
}

#[derive(Default)]
pub struct Notices {
    items: Vec<Notice>,
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
        self.items.push(Notice { level, text });
        if self.items.len() > 5 {
            self.items.remove(0);
        }
    }

    pub fn items(&self) -> &[Notice] {
        &self.items
    }

    /// Draws the notices, each with a dismiss button.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let mut dismiss = None;
        for (i, n) in self.items.iter().enumerate() {
            // The button first, so a long message wraps beside it instead of pushing it off.
            ui.horizontal_top(|ui| {
                if ui
                    .small_button("Dismiss")
                    .on_hover_text("Dismiss this message")
                    .clicked()
                {
                    dismiss = Some(i);
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
        if let Some(i) = dismiss {
            self.items.remove(i);
        }
    }
}
