//! One file per part of the window, each a `ui(app, ui)` function.

pub mod controls;
pub mod iterations;
pub mod regions;
pub mod status;
pub mod top_bar;
