//! What persists across restarts (eframe storage), kept apart from runtime state.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::device::DeviceChoice;
use crate::engine::models::DEFAULT_MODEL;
use crate::engine::params::UnveilParams;

/// Which main view is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    #[default]
    Iterations,
    AllRegions,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub params: UnveilParams,
    pub model: String,
    pub device: DeviceChoice,
    pub recent: Vec<PathBuf>,
    pub view: View,
    pub overlay_opacity: f32,
    /// The saliency column over the image at this opacity (0: the map alone).
    pub heatmap: f32,
    /// Text and widget size (presenter laptops and projectors: 1.5 or 2).
    pub font_scale: f32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            params: UnveilParams::default(),
            model: DEFAULT_MODEL.to_string(),
            device: DeviceChoice::Auto,
            recent: Vec::new(),
            view: View::Iterations,
            overlay_opacity: 0.6,
            heatmap: 0.0,
            font_scale: 1.0,
        }
    }
}

impl Settings {
    pub const MAX_RECENT: usize = 8;

    pub fn remember(&mut self, path: PathBuf) {
        self.recent.retain(|p| p != &path);
        self.recent.insert(0, path);
        self.recent.truncate(Self::MAX_RECENT);
    }
}
