//! The command line: `unveil run IMAGE ... --out DIR` and `unveil models`.
//!
//! Arguments are parsed in two stages: clap's raw values, then validated engine parameters.
//! Errors come back as values; `main` turns them into one line and an exit code.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::device::{self, DeviceChoice};
use crate::engine::export::{self, RunInfo};
use crate::engine::image::{self, Window};
use crate::engine::models::{self, DEFAULT_MODEL, ModelDescription};
use crate::engine::ops::Backend;
use crate::engine::params::{
    FillMode, MaskParams, Method, SaliencyParams, StopParams, UnveilParams,
};
use crate::engine::unveil::{self, Event, StopReason};
use crate::error::Result;

#[derive(Parser, Debug)]
#[command(
    name = "unveil",
    version,
    about = "Iteratively unveil the image regions a CNN classifier relies on.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Without a command, the desktop app starts.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Desktop app: image to open (default: the bundled sample photo).
    pub image: Option<PathBuf>,
    /// Desktop app: the view to start in.
    #[arg(long, value_enum)]
    pub view: Option<ViewArg>,
    /// Desktop app: the model to start with (e.g. pneumonia-xception).
    #[arg(long = "model")]
    pub gui_model: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ViewArg {
    Iterations,
    Regions,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing would only add noise
pub enum Command {
    /// Run the iterative unveiling on one image and write pictures and a summary.
    Run(RunArgs),
    /// List the models this build knows, or fetch one (`unveil models fetch NAME`).
    Models {
        #[command(subcommand)]
        action: Option<ModelsAction>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelsAction {
    /// List models and whether their weights are installed.
    List,
    /// Download and convert a model's weights into the user's model folder.
    Fetch {
        /// Model name, e.g. pneumonia-xception.
        name: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MethodArg {
    Guided,
    Vanilla,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FillArg {
    Mean,
    Black,
    Blur,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
    Metal,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Image file (PNG, JPEG, TIFF).
    pub image: PathBuf,
    /// Registered model name, or a model description file (.json).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Your own checkpoint (.safetensors, or a PyTorch .pth/.pt zip file); needs --arch.
    #[arg(long, requires = "arch")]
    pub weights: Option<PathBuf>,
    /// Architecture of --weights: resnet18, resnet34, resnet50, resnet101, densenet121.
    #[arg(long, requires = "weights")]
    pub arch: Option<String>,
    /// Label file for --weights, one label per line (default: ImageNet for 1000 outputs).
    #[arg(long, requires = "weights")]
    pub labels: Option<PathBuf>,
    /// --weights is multi-label: sigmoid outputs, the stop threshold applies to one label.
    #[arg(long, requires = "weights")]
    pub multi_label: bool,
    /// Class id to explain (default: the top-1 class of the image).
    #[arg(long = "class")]
    pub class: Option<usize>,
    /// Gradient: guided backpropagation or the plain (vanilla) gradient.
    #[arg(long, value_enum, default_value = "guided")]
    pub method: MethodArg,
    /// SmoothGrad samples (1 with --noise 0: the plain, deterministic gradient).
    #[arg(long, default_value_t = SaliencyParams::default().samples)]
    pub samples: usize,
    /// SmoothGrad noise sigma, as a fraction of the input's max - min range.
    #[arg(long, default_value_t = SaliencyParams::default().noise)]
    pub noise: f32,
    /// Noise seed.
    #[arg(long, default_value_t = SaliencyParams::default().seed)]
    pub seed: u64,
    /// Smoothing window side in pixels (odd).
    #[arg(long, default_value_t = MaskParams::default().kernel)]
    pub kernel: usize,
    /// Smoothing passes (mean then threshold).
    #[arg(long, default_value_t = MaskParams::default().passes)]
    pub passes: usize,
    /// Fraction of the most salient pixels that seed the mask.
    #[arg(long, default_value_t = MaskParams::default().keep)]
    pub keep: f32,
    /// Stop once p(target) of the masked image is below this.
    #[arg(long, default_value_t = StopParams::default().threshold)]
    pub stop: f32,
    /// Maximum number of iterations.
    #[arg(long = "max-iter", default_value_t = StopParams::default().max_iter)]
    pub max_iter: usize,
    /// What masked pixels are replaced with.
    #[arg(long, value_enum, default_value = "mean")]
    pub fill: FillArg,
    /// Also write float32 .npy arrays (input, gradient, saliency, mask) per iteration.
    #[arg(long)]
    pub export_raw: bool,
    /// Grayscale / DICOM window as CENTER,WIDTH in the file's units (default: the file's own).
    #[arg(long, value_parser = parse_window, allow_hyphen_values = true)]
    pub window: Option<Window>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the output folder if it already holds files.
    #[arg(long)]
    pub overwrite: bool,
    /// Compute device.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
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

impl RunArgs {
    /// Second stage: raw arguments to validated engine parameters.
    pub fn params(&self) -> Result<UnveilParams> {
        let p = UnveilParams {
            saliency: SaliencyParams {
                method: match self.method {
                    MethodArg::Guided => Method::Guided,
                    MethodArg::Vanilla => Method::Vanilla,
                },
                samples: self.samples,
                noise: self.noise,
                seed: self.seed,
                ..SaliencyParams::default()
            },
            mask: MaskParams {
                kernel: self.kernel,
                passes: self.passes,
                keep: self.keep,
                ..MaskParams::default()
            },
            stop: StopParams {
                threshold: self.stop,
                max_iter: self.max_iter,
            },
            fill: match self.fill {
                FillArg::Mean => FillMode::Mean,
                FillArg::Black => FillMode::Black,
                FillArg::Blur => FillMode::Blur,
            },
            target: self.class,
        };
        p.validate()?;
        Ok(p)
    }

    fn device_choice(&self) -> DeviceChoice {
        match self.device {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
            DeviceArg::Metal => DeviceChoice::Metal,
        }
    }
}

/// Runs `unveil run`.
pub fn run(args: &RunArgs) -> Result<()> {
    let params = args.params()?;
    let device = device::open(args.device_choice())?;
    let start = Instant::now();
    let model = match (&args.weights, &args.arch) {
        (Some(w), Some(arch)) => {
            let d = ModelDescription::ad_hoc(
                w.clone(),
                arch.parse()?,
                args.labels.clone(),
                args.multi_label,
            );
            models::load_custom(&d, &device, Backend::Fast)?
        }
        _ => models::load(&args.model, &device, Backend::Fast)?,
    };
    let mut img = image::load(&args.image)?;
    if let Some(w) = args.window {
        if img.gray.is_none() {
            return Err(crate::Error::InvalidParam(
                "--window applies to grayscale images only".into(),
            ));
        }
        img = img.windowed(w);
    }
    let x = image::to_model_input(&img, model.info(), &device)?;
    let info = model.info().clone();
    let cancel = AtomicBool::new(false);
    let quiet = args.quiet;
    let mut on_event = |e: Event| {
        if let Event::Step(s) = e
            && !quiet
        {
            let top = &s.top5[0];
            eprintln!(
                "iteration {}: p(target) = {:.3}, top-1 {} ({:.3}), mask {:.1}% (total {:.1}%), {:.0} ms",
                s.index,
                s.p_target,
                top.label,
                top.prob,
                100.0 * s.mask.coverage(),
                100.0 * s.cumulative.coverage(),
                s.timings.classify_ms + s.timings.gradient_ms + s.timings.mask_ms,
            );
        }
    };
    let outcome = unveil::run(model.as_ref(), &x, &params, None, &mut on_event, &cancel)?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let image_name = args.image.display().to_string();
    let dev = device::describe(&device);
    let run_info = RunInfo {
        image: &image_name,
        device: &dev,
        params: &params,
        model: &info,
        total_ms,
    };
    export::write_run(
        &args.out,
        &outcome,
        &run_info,
        args.export_raw,
        args.overwrite,
    )?;
    if !quiet {
        let why = match outcome.stop {
            StopReason::BelowThreshold => "p(target) fell below the stop threshold",
            StopReason::MaxIterations => "reached the maximum number of iterations",
            StopReason::NoNewRegion => "the last mask added no new region",
            StopReason::AllMasked => "the whole image is masked",
        };
        let after = outcome
            .after
            .as_ref()
            .map(|a| format!(" (p after masking: {:.3})", a.p_target));
        eprintln!(
            "target {} ({}): {} iterations, stopped because {why}{}; {:.1} s; wrote {}",
            outcome.target,
            info.label(outcome.target),
            outcome.steps.len(),
            after.unwrap_or_default(),
            total_ms / 1e3,
            args.out.display()
        );
    }
    Ok(())
}

/// Runs `unveil models [list | fetch NAME]`.
pub fn models_command(action: Option<&ModelsAction>) -> Result<()> {
    match action {
        None | Some(ModelsAction::List) => {
            for e in models::entries() {
                let state = if e.bundled {
                    "bundled".to_string()
                } else if models::is_installed(e.name) {
                    format!("installed in {}", models::weights_path(e.name).display())
                } else {
                    format!("not installed: run `unveil models fetch {}`", e.name)
                };
                println!("{}\t{}\t{state}", e.name, e.description);
            }
            Ok(())
        }
        Some(ModelsAction::Fetch { name }) => {
            models::fetch::fetch(name, &mut |line| eprintln!("{line}"))?;
            Ok(())
        }
    }
}
