//! What the engine needs to know about a model besides its layers: input size, normalisation,
//! labels, resampling, output kind.

/// What the engine needs to know to feed a model and to read its output.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Registry name, as on the command line.
    pub name: String,
    /// One line for people: what it was trained on, where the weights come from.
    pub description: String,
    /// Input height and width in pixels.
    pub input_size: (usize, usize),
    /// Normalisation of an RGB image in [0, 1]: `(x - mean) / std` per channel.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The training set's mean colour in [0, 1]: the neutral fill for masked regions.
    pub dataset_mean: [f32; 3],
    /// Class names, index order.
    pub labels: Vec<String>,
    /// How images are resized to the input: as the model was trained.
    pub resize: Resize,
    /// Independent sigmoid outputs (multi-label, e.g. ChestX-ray14) instead of a softmax.
    pub multi_label: bool,
    /// The model expects BGR channel order (Caffe-style checkpoints).
    pub bgr: bool,
}

/// Resampling used to bring an image to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// Antialiased bilinear (like PIL's BILINEAR).
    Bilinear,
    /// Nearest neighbour (Keras `load_img`'s default; what the chest X-ray model was trained on).
    Nearest,
}

impl ModelInfo {
    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }

    /// The label of `class`, or its number when the model has no name for it.
    pub fn label(&self, class: usize) -> String {
        self.labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }

    /// A colour in [0, 1] expressed in the model's normalised input space.
    pub fn normalise(&self, rgb: [f32; 3]) -> [f32; 3] {
        std::array::from_fn(|c| (rgb[c] - self.mean[c]) / self.std[c])
    }
}

/// ImageNet-1k class names (torchvision's, BSD-3-Clause), index order.
pub(super) static IMAGENET_LABELS: &str = include_str!("../../../assets/imagenet_classes.txt");
