//! One file per part of the window. Each reads the workspace, the settings and the view cache,
//! owns its own view state, and returns [`crate::gui::action::Action`]s instead of changing
//! anything else.

pub mod controls;
pub mod fit_warning;
pub mod iterations;
pub mod path_prompt;
pub mod plots;
pub mod presenter;
pub mod regions;
pub mod run_header;
pub mod status;
pub mod top_bar;
