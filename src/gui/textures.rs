//! Engine pictures to egui textures, and the view cache that keeps them.
//!
//! Pictures are drawn from the slots' results, never stored with them: [`Textures`] holds one
//! texture per (step, version, column) (the saliency column also per heatmap opacity) and one
//! for the sanity check's maps per check version, draws what is missing once per change, and
//! drops what nothing on screen shows any more. The app syncs it after applying the bars'
//! actions and before the results are drawn, so a slider's effect is on screen in its frame.

use std::collections::{HashMap, HashSet};

use egui::{ColorImage, TextureHandle, TextureOptions};
use image::RgbImage;

use crate::engine::models::ModelInfo;
use crate::engine::outcome::Step;
use crate::engine::render;
use crate::error::Result;
use crate::gui::workspace::{StepState, Workspace};

/// A step's picture: which step (its index and version) and which column; the saliency
/// column is drawn over the image at an opacity, so that is part of its key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    index: usize,
    version: u64,
    column: usize,
    heatmap: u32,
}

/// The textures of what is on screen.
#[derive(Default)]
pub struct Textures {
    steps: HashMap<Key, TextureHandle>,
    /// Steps that could not be drawn (index, version): told once, not retried every frame.
    failed: HashSet<(usize, u64)>,
    /// The saliency column's opacity at the last sync.
    heatmap: u32,
    check: Option<(u64, TextureHandle)>,
}

impl Textures {
    /// Draws the pictures of the run's and the pinned run's steps that are missing (saliency
    /// over the image at `heatmap`) and the check's, and drops the rest. Returns what could not
    /// be drawn, in words.
    pub fn sync(&mut self, ctx: &egui::Context, ws: &Workspace, heatmap: f32) -> Vec<String> {
        self.heatmap = heatmap.to_bits();
        let mut errors = Vec::new();
        let pinned = ws.run.pinned().map_or(&[][..], |p| &p.steps[..]);
        let mut wanted = HashSet::new();
        if let Some(explainer) = ws.model.explainer() {
            for s in ws.run.steps().iter().chain(pinned) {
                let keys: [Key; 4] = std::array::from_fn(|c| self.key(s, c));
                wanted.extend(keys);
                if keys.iter().all(|k| self.steps.contains_key(k))
                    || self.failed.contains(&(s.step.index, s.version))
                {
                    continue;
                }
                match pictures(&s.step, explainer.info(), heatmap) {
                    Ok(p) => {
                        for (c, k) in keys.into_iter().enumerate() {
                            self.steps.entry(k).or_insert_with(|| {
                                upload(ctx, &format!("step{}-{c}", k.index), &p[c])
                            });
                        }
                    }
                    Err(e) => {
                        self.failed.insert((s.step.index, s.version));
                        errors.push(e.to_string());
                    }
                }
            }
        }
        self.steps.retain(|k, _| wanted.contains(k));
        self.failed.retain(|&(index, version)| {
            wanted
                .iter()
                .any(|k| (k.index, k.version) == (index, version))
        });
        self.check = ws.check.result().map(|view| match self.check.take() {
            Some((v, t)) if v == ws.check.version() => (v, t),
            _ => (
                ws.check.version(),
                upload(ctx, "sanity-check", &render::check_picture(&view.check)),
            ),
        });
        errors
    }

    fn key(&self, s: &StepState, column: usize) -> Key {
        Key {
            index: s.step.index,
            version: s.version,
            column,
            heatmap: if column == 1 { self.heatmap } else { 0 },
        }
    }

    /// Column `column` of step `s` (input, saliency, mask, masked) as last synced.
    pub fn step(&self, s: &StepState, column: usize) -> Option<&TextureHandle> {
        self.steps.get(&self.key(s, column))
    }

    /// The sanity check's maps side by side, as check.png draws them.
    pub fn check(&self) -> Option<&TextureHandle> {
        self.check.as_ref().map(|(_, t)| t)
    }
}

/// One iteration's pictures ([`render::step_images`]), the saliency over the image when
/// `heatmap` > 0.
fn pictures(step: &Step, info: &ModelInfo, heatmap: f32) -> Result<[RgbImage; 4]> {
    let mut p = render::step_images(step, info)?;
    if heatmap > 0.0 {
        p[1] = render::saliency_overlay(&p[0], &step.saliency, heatmap);
    }
    Ok(p)
}

pub fn color_image(img: &RgbImage) -> ColorImage {
    ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw())
}

pub fn upload(ctx: &egui::Context, name: &str, img: &RgbImage) -> TextureHandle {
    ctx.load_texture(name, color_image(img), TextureOptions::LINEAR)
}
