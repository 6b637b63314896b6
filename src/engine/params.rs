//! Every knob of a run, with the paper's defaults, serialisable (the app persists them, the CLI
//! writes them into summary.json) and validated in one place.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the saliency map is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Plain input gradient (Simonyan et al., 2014). The default: of the four it passes both
    /// sanity checks on the bundled models with the lowest correlations and is as faithful as
    /// any (EVALUATION.md).
    #[default]
    Vanilla,
    /// Guided backpropagation (Springenberg et al., 2015), as in the paper. Its maps barely
    /// change when the classifier is randomised (EVALUATION.md): they show image structure.
    Guided,
    /// Integrated gradients (Sundararajan et al., 2017) from the run's fill image: the
    /// attribution is (input - baseline) x the mean gradient along the straight path.
    IntegratedGradients,
    /// Grad-CAM (Selvaraju et al., 2017) on the last convolutional feature map: its channels
    /// weighted by their mean gradient, summed, rectified and upsampled to the input.
    GradCam,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::Guided,
        Method::Vanilla,
        Method::IntegratedGradients,
        Method::GradCam,
    ];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Method::Vanilla => "vanilla",
            Method::Guided => "guided",
            Method::IntegratedGradients => "integrated-gradients",
            Method::GradCam => "grad-cam",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::InvalidParam(format!(
                    "unknown method '{s}' (guided, vanilla, integrated-gradients, grad-cam)"
                ))
            })
    }
}

/// How SmoothGrad combines the noisy copies' attributions, per input value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// Their mean (Smilkov et al., 2017); the map is max over channels of |mean|.
    #[default]
    Mean,
    /// The mean of their squares ("SmoothGrad-squared", Hooker et al., 2019).
    Squared,
}

/// Saliency and SmoothGrad settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SaliencyParams {
    pub method: Method,
    /// SmoothGrad: number of noisy copies averaged (1 with `noise == 0` is the plain gradient).
    pub samples: usize,
    /// SmoothGrad noise standard deviation, as a fraction of the input's max - min range.
    pub noise: f32,
    /// Seed of the noise: the same settings and seed give the same map.
    pub seed: u64,
    /// Inputs per forward/backward pass; bounds memory, and cancel is checked between. `None`:
    /// chosen for the device ([`crate::engine::device::batch_size`]: 4 on the CPU, by free
    /// memory on a GPU). Results never depend on it.
    pub chunk: Option<usize>,
    /// How the noisy copies' attributions are combined (a copy's gradient, or for integrated
    /// gradients its whole path attribution).
    pub reduction: Reduction,
    /// Integrated gradients: points on the path (midpoint Riemann sum); each noisy copy costs
    /// this many passes.
    pub ig_steps: usize,
}

impl SaliencyParams {
    /// Inputs per pass for inputs of size `hw` on `device`.
    pub fn batch(&self, device: &candle_core::Device, hw: (usize, usize)) -> usize {
        self.chunk
            .unwrap_or_else(|| crate::engine::device::batch_size(device, hw))
            .max(1)
    }
}

impl Default for SaliencyParams {
    fn default() -> Self {
        SaliencyParams {
            method: Method::default(),
            samples: 16,
            noise: 0.15,
            seed: 0,
            chunk: None,
            reduction: Reduction::Mean,
            ig_steps: 32,
        }
    }
}

/// Mask smoothing: binarise the saliency map, then `passes` times "mean over a k x k window,
/// then threshold".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskParams {
    /// Side of the square window of ones (odd). Paper: 11.
    pub kernel: usize,
    /// Number of mean-then-threshold passes. Paper: 3.
    pub passes: usize,
    /// Binarisation: the fraction of pixels with the highest saliency that start in the mask.
    pub keep: f32,
    /// A pixel is in the mask after a pass when at least this fraction of its window is.
    /// Below 0.5 masks grow with each pass (and with k); isolated pixels still vanish.
    pub threshold: f32,
}

impl Default for MaskParams {
    fn default() -> Self {
        MaskParams {
            kernel: 11,
            passes: 3,
            keep: 0.05,
            threshold: 0.25,
        }
    }
}

/// When the loop ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StopParams {
    /// Stop once p(target) of the masked image falls below this.
    pub threshold: f32,
    /// At most this many iterations (saliency maps).
    pub max_iter: usize,
}

impl Default for StopParams {
    fn default() -> Self {
        StopParams {
            threshold: 0.1,
            max_iter: 5,
        }
    }
}

/// What masked pixels are replaced with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FillMode {
    /// The training set's mean colour: carries the least information.
    #[default]
    Mean,
    Black,
    /// A heavy blur of the image: hides detail, keeps the colour.
    Blur,
}

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnveilParams {
    pub saliency: SaliencyParams,
    pub mask: MaskParams,
    pub stop: StopParams,
    pub fill: FillMode,
    /// Class to explain; `None` is the top-1 class of the original image.
    pub target: Option<usize>,
    /// Measure faithfulness (deletion / insertion curves per iteration, unveiling against a
    /// single map per run): forward passes only, about 70 per iteration.
    pub faithfulness: bool,
}

impl Default for UnveilParams {
    fn default() -> Self {
        UnveilParams {
            saliency: SaliencyParams::default(),
            mask: MaskParams::default(),
            stop: StopParams::default(),
            fill: FillMode::default(),
            target: None,
            faithfulness: true,
        }
    }
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidParam(msg()))
    }
}

/// Largest accepted smoothing window: mask smoothing counts a window's set pixels in u16
/// (255 x 255 = 65,025 fits).
pub const MAX_KERNEL: usize = 255;

/// What a change of parameters requires of a finished run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed.
    None,
    /// Only mask smoothing changed: iteration 0's gradient and saliency stay valid, so its
    /// mask can be redrawn at once; later iterations see other inputs and rerun.
    MaskOnly,
    /// Anything else: the whole loop reruns.
    Rerun,
}

impl UnveilParams {
    /// The paper's settings (Bordes et al., 2018): guided backpropagation, the rest as the
    /// defaults (11 x 11 kernel, 3 passes).
    pub fn paper() -> Self {
        UnveilParams {
            saliency: SaliencyParams {
                method: Method::Guided,
                ..SaliencyParams::default()
            },
            ..UnveilParams::default()
        }
    }

    /// What changing from `before` to `self` requires. Only a change confined to the mask
    /// settings keeps iteration 0 valid: `self` with `before`'s mask must equal `before`, so a
    /// field added later counts as a rerun until someone decides otherwise.
    pub fn change_from(&self, before: &UnveilParams) -> Change {
        if self == before {
            Change::None
        } else if (UnveilParams {
            mask: before.mask.clone(),
            ..self.clone()
        }) == *before
        {
            Change::MaskOnly
        } else {
            Change::Rerun
        }
    }

    pub fn validate(&self) -> Result<()> {
        let (s, m, st) = (&self.saliency, &self.mask, &self.stop);
        check((1..=4096).contains(&s.samples), || {
            format!("samples must be 1..=4096, got {}", s.samples)
        })?;
        check((0.0..=1.0).contains(&s.noise), || {
            format!("noise must be in [0, 1], got {}", s.noise)
        })?;
        check(s.chunk != Some(0), || "chunk must be at least 1".into())?;
        check((1..=1024).contains(&s.ig_steps), || {
            format!("ig-steps must be 1..=1024, got {}", s.ig_steps)
        })?;
        check(m.kernel % 2 == 1 && m.kernel <= MAX_KERNEL, || {
            format!(
                "kernel must be odd and at most {MAX_KERNEL}, got {}",
                m.kernel
            )
        })?;
        check(m.passes <= 100, || {
            format!("passes must be at most 100, got {}", m.passes)
        })?;
        check(m.keep > 0.0 && m.keep <= 1.0, || {
            format!("keep must be in (0, 1], got {}", m.keep)
        })?;
        check(m.threshold > 0.0 && m.threshold <= 1.0, || {
            format!("mask threshold must be in (0, 1], got {}", m.threshold)
        })?;
        check((0.0..=1.0).contains(&st.threshold), || {
            format!("stop threshold must be in [0, 1], got {}", st.threshold)
        })?;
        check((1..=100).contains(&st.max_iter), || {
            format!("max-iter must be 1..=100, got {}", st.max_iter)
        })?;
        Ok(())
    }
}
