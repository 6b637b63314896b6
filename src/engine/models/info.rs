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
    /// Crop the image before resizing (TorchXRayVision's centre square).
    pub crop: Crop,
    /// Per-label operating points (TorchXRayVision's `op_threshs`): a sigmoid output p becomes
    /// p / (2t) below its threshold t and 1 - (1 - p) / (2 (1 - t)) above, so 0.5 is the
    /// operating point; NaN (a label the weights do not predict) gives 0.5, as in TorchXRayVision.
    pub op_threshs: Option<Vec<f32>>,
    /// What kind of image the model was trained on (to warn when an image does not suit it).
    pub domain: Domain,
    /// What unveil assumed because the model file does not say (an ONNX graph's input size,
    /// normalisation, labels, resampling), for people: empty when nothing was assumed.
    pub assumed: Vec<String>,
    /// The layers Grad-CAM may read, the one it reads first (empty: the model's own).
    pub cam_layers: Vec<String>,
    /// What guided backpropagation means for this model when not every nonlinearity is a
    /// ReLU (a model with GELU or SiLU): guided changes only the ReLU-family ones.
    pub guided_note: Option<String>,
}

/// What kind of image a model was trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Domain {
    /// Colour photographs (ImageNet).
    Photo,
    /// Chest X-rays.
    ChestXray,
    /// Unknown: no warning either way.
    #[default]
    Other,
}

/// How the image is cropped before it is resized to the model's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Crop {
    /// The whole image (what the user sees is what the model sees).
    #[default]
    None,
    /// The centred square of the shorter side.
    CenterSquare,
}

/// Resampling used to bring an image to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Antialiased bilinear (like PIL's BILINEAR).
    #[default]
    Bilinear,
    /// Nearest neighbour (Keras `load_img`'s default; what the chest X-ray model was trained on).
    Nearest,
}

impl ModelInfo {
    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }

    /// False for an output the weights do not predict (a blank label, as TorchXRayVision
    /// marks them): never explained, hidden from pickers.
    pub fn predicts(&self, class: usize) -> bool {
        self.labels.get(class).is_none_or(|l| !l.is_empty())
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

/// ChestX-ray14's 14 findings in CheXNet's output order (Wang et al. 2017; Rajpurkar et al. 2017).
pub(super) static CHESTXRAY14_LABELS: &str = include_str!("../../../assets/chestxray14_labels.txt");

/// TorchXRayVision's 18 default pathologies (`xrv.datasets.default_pathologies`), its models'
/// output order.
pub(super) static XRV_LABELS: &str = include_str!("../../../assets/xrv_labels.txt");

/// ImageNet-1k class names (torchvision's, BSD-3-Clause), index order.
pub(super) static IMAGENET_LABELS: &str = include_str!("../../../assets/imagenet_classes.txt");
