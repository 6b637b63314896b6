//! Flag definitions, in groups; each command flattens only the groups it uses, so a flag a
//! command would ignore is a parse error naming that command (ripgrep's `defs` + `hiargs`
//! split: raw clap values here, validated engine parameters from [`params`]).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use unveil::Result;
use unveil::engine::device::{self, DeviceChoice};
use unveil::engine::explainer::Explainer;
use unveil::engine::models::{self, DEFAULT_MODEL, ModelDescription, ModelSource};
use unveil::engine::params::{
    FillMode, MaskParams, Method, Reduction, SaliencyParams, StopParams, UnveilParams,
};
use unveil::engine::source_image::Window;

/// Which model, on which device.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Model")]
pub(crate) struct ModelFlags {
    /// Registered model name, a model description file (.json), or a weights file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub(crate) model: String,
    /// Your own checkpoint: safetensors, or any torch.save file (.pth, .pt, .pth.tar, .ckpt,
    /// .bin; zip or legacy format; a state dict, a training checkpoint or a whole model), read
    /// as data, never executed. The format is recognised from the file's bytes.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Architecture of --weights (default: recognised from the weights).
    #[arg(long, requires = "weights", long_help = arch_help())]
    pub(crate) arch: Option<String>,
    /// Label file for --weights, one label per line (default: the model's own list, ImageNet
    /// for 1000 outputs, ChestX-ray14 for a 14-output DenseNet, TorchXRayVision's 18).
    #[arg(long, requires = "weights")]
    pub(crate) labels: Option<PathBuf>,
    /// --weights is multi-label: sigmoid outputs, the stop threshold applies to one label
    /// (implied for TorchXRayVision, CheXNet-style and single-output models).
    #[arg(long, requires = "weights")]
    pub(crate) multi_label: bool,
    /// Grad-CAM's layer in an ONNX model: a value name from the graph (default: the last 4-D
    /// activation before the pooling that feeds the head; for a vision transformer, its last
    /// block's attention input). A wrong name is refused with the candidates listed.
    #[arg(long)]
    pub(crate) cam_layer: Option<String>,
    /// Compute device.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) device: DeviceArg,
}

/// The saliency method (run, check, batch; eval compares several with --methods).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Saliency")]
pub(crate) struct MethodFlag {
    /// Saliency method: the plain (vanilla) gradient (default: it passes the sanity checks,
    /// see EVALUATION.md), guided backpropagation (the paper's), integrated gradients from the
    /// fill image, or Grad-CAM on the last feature map.
    #[arg(long, value_enum, default_value = "vanilla")]
    pub(crate) method: MethodArg,
}

/// How the saliency map is computed.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Saliency")]
pub(crate) struct SaliencyFlags {
    /// SmoothGrad samples (1 with --noise 0: the plain, deterministic gradient). Integrated
    /// gradients costs samples x --ig-steps passes; Grad-CAM uses no noise.
    #[arg(long, default_value_t = SaliencyParams::default().samples)]
    pub(crate) samples: usize,
    /// How SmoothGrad combines the noisy copies: their mean, or the mean of their squares.
    #[arg(long, value_enum, default_value = "mean")]
    pub(crate) smoothgrad: ReductionArg,
    /// Integrated gradients: points on the path from the fill image (midpoint rule).
    #[arg(long = "ig-steps", default_value_t = SaliencyParams::default().ig_steps)]
    pub(crate) ig_steps: usize,
    /// SmoothGrad noise sigma, as a fraction of the input's max - min range.
    #[arg(long, default_value_t = SaliencyParams::default().noise)]
    pub(crate) noise: f32,
    /// Noise seed.
    #[arg(long, default_value_t = SaliencyParams::default().seed)]
    pub(crate) seed: u64,
}

/// What is explained and what hidden pixels become: the class, the window the model sees,
/// the fill (also integrated gradients' baseline).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Input")]
pub(crate) struct InputFlags {
    /// Class id to explain (default: the top-1 class of the image).
    #[arg(long = "class")]
    pub(crate) class: Option<usize>,
    /// Grayscale / DICOM window as CENTER,WIDTH in the file's units (default: the file's own).
    #[arg(long, value_parser = parse_window, allow_hyphen_values = true)]
    pub(crate) window: Option<Window>,
    /// What masked pixels are replaced with (and integrated gradients' starting image).
    #[arg(long, value_enum, default_value = "mean")]
    pub(crate) fill: FillArg,
}

/// Mask smoothing and when the loop stops.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Mask and loop")]
pub(crate) struct MaskFlags {
    /// Smoothing window side in pixels (odd).
    #[arg(long, default_value_t = MaskParams::default().kernel)]
    pub(crate) kernel: usize,
    /// Smoothing passes (mean then threshold).
    #[arg(long, default_value_t = MaskParams::default().passes)]
    pub(crate) passes: usize,
    /// Fraction of the most salient pixels that seed the mask.
    #[arg(long, default_value_t = MaskParams::default().keep)]
    pub(crate) keep: f32,
    /// A pixel stays in the mask after a pass when at least this fraction of its window is
    /// in it (below 0.5 masks grow with each pass).
    #[arg(long = "pass-threshold", default_value_t = MaskParams::default().threshold)]
    pub(crate) pass_threshold: f32,
    /// Stop once p(target) of the masked image is below this.
    #[arg(long, default_value_t = StopParams::default().threshold)]
    pub(crate) stop: f32,
    /// Maximum number of iterations.
    #[arg(long = "max-iter", default_value_t = StopParams::default().max_iter)]
    pub(crate) max_iter: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum MethodArg {
    Guided,
    Vanilla,
    IntegratedGradients,
    GradCam,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Guided => Method::Guided,
            MethodArg::Vanilla => Method::Vanilla,
            MethodArg::IntegratedGradients => Method::IntegratedGradients,
            MethodArg::GradCam => Method::GradCam,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ReductionArg {
    Mean,
    Squared,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FillArg {
    Mean,
    Black,
    Blur,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
    Metal,
}

/// `--arch`'s help, from the one list of architectures.
fn arch_help() -> String {
    format!(
        "Architecture of --weights: {}. Default: recognised from the weights.",
        models::arch_help()
    )
}

fn parse_window(s: &str) -> std::result::Result<Window, String> {
    let (c, w) = s
        .split_once(',')
        .ok_or("expected CENTER,WIDTH, e.g. 40,400")?;
    let center: f32 = c
        .trim()
        .parse()
        .map_err(|_| format!("bad window centre '{c}'"))?;
    let width: f32 = w
        .trim()
        .parse()
        .map_err(|_| format!("bad window width '{w}'"))?;
    if !(width > 0.0 && center.is_finite() && width.is_finite()) {
        return Err("the window width must be positive".into());
    }
    Ok(Window { center, width })
}

/// What every command that explains with one method takes: the model, the method, how the map
/// is computed and what is explained (`eval`, which compares methods, takes the parts but
/// `--method`).
#[derive(Args, Debug, Clone)]
pub(crate) struct ExplainFlags {
    #[command(flatten)]
    pub(crate) model: ModelFlags,
    #[command(flatten)]
    pub(crate) method: MethodFlag,
    #[command(flatten)]
    pub(crate) saliency: SaliencyFlags,
    #[command(flatten)]
    pub(crate) input: InputFlags,
}

impl ExplainFlags {
    /// The second stage: validated engine parameters, with `mask`'s smoothing and loop (the
    /// engine's defaults without) and faithfulness measured or not.
    pub(crate) fn params(
        &self,
        mask: Option<&MaskFlags>,
        faithfulness: bool,
    ) -> Result<UnveilParams> {
        params(
            self.method.method.into(),
            &self.saliency,
            &self.input,
            mask,
            faithfulness,
        )
    }
}

/// Validated engine parameters from the groups a command parsed; a group it does not have keeps
/// the engine's defaults.
pub(crate) fn params(
    method: Method,
    s: &SaliencyFlags,
    i: &InputFlags,
    mask: Option<&MaskFlags>,
    faithfulness: bool,
) -> Result<UnveilParams> {
    let mut p = UnveilParams {
        saliency: SaliencyParams {
            method,
            samples: s.samples,
            noise: s.noise,
            seed: s.seed,
            reduction: match s.smoothgrad {
                ReductionArg::Mean => Reduction::Mean,
                ReductionArg::Squared => Reduction::Squared,
            },
            ig_steps: s.ig_steps,
            ..SaliencyParams::default()
        },
        fill: match i.fill {
            FillArg::Mean => FillMode::Mean,
            FillArg::Black => FillMode::Black,
            FillArg::Blur => FillMode::Blur,
        },
        target: i.class,
        faithfulness,
        ..UnveilParams::default()
    };
    if let Some(m) = mask {
        p.mask = MaskParams {
            kernel: m.kernel,
            passes: m.passes,
            keep: m.keep,
            threshold: m.pass_threshold,
        };
        p.stop = StopParams {
            threshold: m.stop,
            max_iter: m.max_iter,
        };
    }
    p.validate()?;
    Ok(p)
}

impl ModelFlags {
    /// The model named by `--model`, or the ad hoc one of `--weights --arch`.
    fn source(&self) -> Result<ModelSource> {
        let source = match &self.weights {
            Some(w) => ModelSource::Described(ModelDescription::ad_hoc(
                w.clone(),
                self.arch.as_deref().map(str::parse).transpose()?,
                self.labels.clone(),
                self.multi_label,
            )),
            None => ModelSource::Named(self.model.clone()),
        };
        let Some(layer) = &self.cam_layer else {
            return Ok(source);
        };
        match source {
            ModelSource::Described(mut d) => {
                d.cam_layer = Some(layer.clone());
                Ok(ModelSource::Described(d))
            }
            ModelSource::Named(name) => ModelSource::with_cam_layer(&name, layer),
        }
    }

    /// Opens the device and loads the model; says why a GPU is not used when `auto` finds
    /// none (unless `quiet`).
    pub(crate) fn explainer(&self, quiet: bool) -> Result<Explainer> {
        let choice = match self.device {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
            DeviceArg::Metal => DeviceChoice::Metal,
        };
        let explainer = Explainer::load(&self.source()?, choice)?;
        if choice == DeviceChoice::Auto
            && !quiet
            && let Some(why) = device::probe().why_no_gpu()
        {
            eprintln!("note: running on the CPU: {why}");
        }
        Ok(explainer)
    }
}
