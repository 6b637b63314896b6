//! The model slot: the loaded model (an [`Explainer`], with its gradient cache) and the load in
//! flight. `version` changes when a load starts and when it ends, so that anything computed
//! for one model (a sanity check, a picture) is never taken for another's.

use std::sync::Arc;

use poll_promise::Promise;

use crate::engine::device::DeviceChoice;
use crate::engine::explainer::Explainer;
use crate::engine::models::{ModelDescription, ModelSource};
use crate::error::Result;
use crate::gui::workspace::event::Event;

#[derive(Default)]
pub struct ModelSlot {
    /// `None` while (re)loading.
    explainer: Option<Arc<Explainer>>,
    /// The model being loaded: its name (for messages) and the loading thread.
    job: Option<(String, Promise<Result<Explainer>>)>,
    /// Whether the user was told that this explainer's GPU failed and its work moved to the CPU.
    told_fell_back: bool,
    version: u64,
}

impl ModelSlot {
    /// (Re)loads a model on a device, off the UI thread; until it is there, there is none.
    pub fn load(&mut self, source: ModelSource, device: DeviceChoice) {
        self.explainer = None;
        self.version += 1;
        let name = source.name();
        self.job = Some((
            name,
            Promise::spawn_thread("load-model", move || Explainer::load(&source, device)),
        ));
    }

    /// Loads `name` (a registry name, description or model file), Grad-CAM reading `layer` of
    /// its graph when one is chosen.
    pub fn load_named(
        &mut self,
        name: &str,
        layer: Option<&str>,
        device: DeviceChoice,
    ) -> Result<()> {
        let source = match layer {
            Some(layer) => ModelSource::with_cam_layer(name, layer)?,
            None => ModelSource::Named(name.to_string()),
        };
        self.load(source, device);
        Ok(())
    }

    /// The loaded model file `file`'s settings (what unveil assumed, for an ONNX graph) as a
    /// description next to it, to be edited; one already there is kept, never overwritten.
    /// Its path, and what to tell the user.
    pub fn spell_out(&self, file: &str) -> Result<(String, String)> {
        let explainer = self
            .explainer
            .as_ref()
            .ok_or_else(|| crate::error::Error::InvalidParam("no model is loaded".into()))?;
        let weights = std::path::PathBuf::from(file);
        let json = weights.with_extension("json");
        if !json.exists() {
            ModelDescription::spelled_out(&weights, explainer.info()).write_new(&json)?;
        }
        let json = json.display().to_string();
        let note = format!(
            "Loading {json}: edit it (input_size, mean, std, resize, labels, cam_layer) and open it again to change what the model is fed."
        );
        Ok((json, note))
    }

    /// The loaded model once loading ends; that its GPU failed, once per model.
    pub fn poll(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some((name, job)) = self.job.take() {
            match job.try_take() {
                Ok(result) => events.push(Event::ModelLoaded(name, result.map(Box::new))),
                Err(job) => self.job = Some((name, job)),
            }
        }
        // A run or check whose GPU failed goes on on the CPU (runs and checks alike).
        if !self.told_fell_back
            && let Some(why) = self.explainer.as_ref().and_then(|e| e.fell_back())
        {
            events.push(Event::FellBack(why.to_string()));
        }
        events
    }

    pub fn set(&mut self, explainer: Box<Explainer>) {
        self.explainer = Some(Arc::from(explainer));
        self.told_fell_back = false;
        self.version += 1;
    }

    /// The user now knows that the GPU failed: say it once.
    pub fn told_fell_back(&mut self) {
        self.told_fell_back = true;
    }

    pub fn explainer(&self) -> Option<&Arc<Explainer>> {
        self.explainer.as_ref()
    }

    /// Loading a model: a promise, which does not wake the app by itself.
    pub fn is_loading(&self) -> bool {
        self.job.is_some()
    }

    pub fn version(&self) -> u64 {
        self.version
    }
}
