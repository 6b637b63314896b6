//! What persists across restarts (eframe storage), kept apart from runtime state. Each setting
//! has this one home: the heatmap opacity is read from here when pictures are drawn, and the
//! class being explained is not a setting at all (it belongs to an image and a model: the run
//! slot's), so it is never written.

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
    /// The run parameters; their class (`target`) is neither kept nor read.
    #[serde(with = "without_class")]
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

/// The parameters as stored: without a class (an older file's class is dropped on reading).
mod without_class {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::engine::params::UnveilParams;

    pub(super) fn serialize<S: Serializer>(p: &UnveilParams, s: S) -> Result<S::Ok, S::Error> {
        UnveilParams {
            target: None,
            ..p.clone()
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UnveilParams, D::Error> {
        Ok(UnveilParams {
            target: None,
            ..UnveilParams::deserialize(d)?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_is_never_stored_nor_read_back() {
        let mut s = Settings::default();
        s.params.target = Some(281);
        s.params.mask.kernel = 31;
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["params"]["target"], serde_json::Value::Null);
        assert_eq!(json["params"]["mask"]["kernel"], 31);
        let mut old = json.clone();
        old["params"]["target"] = 5.into();
        let read: Settings = serde_json::from_value(old).unwrap();
        assert_eq!(read.params.target, None);
        assert_eq!(read.params.mask.kernel, 31);
    }
}
