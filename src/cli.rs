//! The command line: `unveil run IMAGE ... --out DIR`, `unveil batch INPUTS... --out DIR`
//! and `unveil models`.
//!
//! Arguments are parsed in two stages: clap's raw values, then validated engine parameters.
//! Errors come back as values; `main` turns them into one line and an exit code.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};

use unveil::Error;
use unveil::Result;
use unveil::engine::batch;
use unveil::engine::device::{self, DeviceChoice};
use unveil::engine::eval::{self, EvalRow};
use unveil::engine::explainer::Explainer;
use unveil::engine::export;
use unveil::engine::image;
use unveil::engine::models::{self, DEFAULT_MODEL, ModelDescription, ModelSource};
use unveil::engine::outcome::{Event, Outcome};
use unveil::engine::params::{
    FillMode, MaskParams, Method, Reduction, SaliencyParams, StopParams, UnveilParams,
};
use unveil::engine::source_image::Window;
use unveil::engine::summary::{ImageRecord, RunInfo};

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
    /// Desktop app: run the sanity check on the first map.
    #[arg(long = "sanity-check")]
    pub sanity_check: bool,
    /// Desktop app: start from the default settings, whatever the last session left (a demo
    /// laptop comes up clean).
    #[arg(long = "default-settings")]
    pub default_settings: bool,
    /// Desktop app: start in presenter mode (full screen; F11 leaves).
    #[arg(long)]
    pub presenter: bool,
    /// Desktop app: size of text and controls, 0.75 to 3 (e.g. 1.5 on a projector); remembered.
    #[arg(long)]
    pub font_scale: Option<f32>,
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
    /// Run every image of files, folders or list files; resumable and shardable.
    Batch(BatchArgs),
    /// Sanity-check the saliency map of one image: does it change when the model's last layers
    /// are randomised, or for another class? Writes check.json and check.png.
    Check(RunArgs),
    /// Compare saliency methods over images: faithfulness and sanity checks per image and
    /// method, means with 95 % bootstrap intervals; resumable and shardable like batch.
    Eval(EvalArgs),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Guided,
    Vanilla,
    IntegratedGradients,
    GradCam,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReductionArg {
    Mean,
    Squared,
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
    /// Image file (PNG, JPEG, TIFF, DICOM).
    pub image: PathBuf,
    #[command(flatten)]
    pub opts: Options,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the output folder if it already holds files.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Images, folders of images, or list files (.txt, one path per line).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub opts: Options,
    /// Output folder: one sub-folder per image plus results.csv.
    #[arg(long)]
    pub out: PathBuf,
    /// Process only shard I of N (0-based), e.g. 3/8: the split depends only on the image
    /// paths, so N machines can share one dataset with no coordination.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Images, folders of images, or list files (.txt, one path per line).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub opts: Options,
    /// Output folder: <image>/<method>/{run,check,eval.json}, results.csv, summary.csv.
    #[arg(long)]
    pub out: PathBuf,
    /// Process only shard I of N (0-based), as in batch.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Methods to compare (--method is ignored).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "guided,vanilla,integrated-gradients,grad-cam"
    )]
    pub methods: Vec<MethodArg>,
    /// Noisy copies for integrated gradients (1: plain IG; each copy costs --ig-steps passes,
    /// so SmoothGrad's --samples would multiply its cost).
    #[arg(long = "ig-samples", default_value_t = 1)]
    pub ig_samples: usize,
}

/// Options shared by `run` and `batch`.
#[derive(Args, Debug, Clone)]
pub struct Options {
    /// Registered model name, a model description file (.json), or a weights file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Your own checkpoint: safetensors, or any torch.save file (.pth, .pt, .pth.tar, .ckpt,
    /// .bin; zip or legacy format; a state dict, a training checkpoint or a whole model), read
    /// as data, never executed. The format is recognised from the file's bytes.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Architecture of --weights: resnet18, resnet34, resnet50, resnet101, densenet121 (any
    /// torchvision DenseNet, CheXNet included), xrv-densenet121 (TorchXRayVision). Default:
    /// recognised from the weights.
    #[arg(long, requires = "weights")]
    pub arch: Option<String>,
    /// Label file for --weights, one label per line (default: the model's own list, ImageNet
    /// for 1000 outputs, ChestX-ray14 for a 14-output DenseNet, TorchXRayVision's 18).
    #[arg(long, requires = "weights")]
    pub labels: Option<PathBuf>,
    /// --weights is multi-label: sigmoid outputs, the stop threshold applies to one label
    /// (implied for TorchXRayVision, CheXNet-style and single-output models).
    #[arg(long, requires = "weights")]
    pub multi_label: bool,
    /// Class id to explain (default: the top-1 class of the image).
    #[arg(long = "class")]
    pub class: Option<usize>,
    /// Saliency method: the plain (vanilla) gradient (default: it passes the sanity checks,
    /// see EVALUATION.md), guided backpropagation (the paper's), integrated gradients from the
    /// fill image, or Grad-CAM on the last feature map.
    #[arg(long, value_enum, default_value = "vanilla")]
    pub method: MethodArg,
    /// SmoothGrad samples (1 with --noise 0: the plain, deterministic gradient). Integrated
    /// gradients costs samples x --ig-steps passes; Grad-CAM uses no noise.
    #[arg(long, default_value_t = SaliencyParams::default().samples)]
    pub samples: usize,
    /// How SmoothGrad combines the noisy copies: their mean, or the mean of their squares.
    #[arg(long, value_enum, default_value = "mean")]
    pub smoothgrad: ReductionArg,
    /// Integrated gradients: points on the path from the fill image (midpoint rule).
    #[arg(long = "ig-steps", default_value_t = SaliencyParams::default().ig_steps)]
    pub ig_steps: usize,
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
    /// Skip the faithfulness measures (deletion / insertion curves, unveiling against one
    /// map): about 70 forward passes per iteration.
    #[arg(long)]
    pub no_faithfulness: bool,
    /// Grayscale / DICOM window as CENTER,WIDTH in the file's units (default: the file's own).
    #[arg(long, value_parser = parse_window, allow_hyphen_values = true)]
    pub window: Option<Window>,
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

fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| "bad shard index")?,
        n.trim().parse().map_err(|_| "bad shard count")?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 <= I < N"));
    }
    Ok((i, n))
}

impl Options {
    /// Second stage: raw arguments to validated engine parameters.
    pub fn params(&self) -> Result<UnveilParams> {
        let p = UnveilParams {
            saliency: SaliencyParams {
                method: method(self.method),
                samples: self.samples,
                noise: self.noise,
                seed: self.seed,
                reduction: match self.smoothgrad {
                    ReductionArg::Mean => Reduction::Mean,
                    ReductionArg::Squared => Reduction::Squared,
                },
                ig_steps: self.ig_steps,
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
            faithfulness: !self.no_faithfulness,
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

impl Options {
    /// The model named by `--model`, or the ad hoc one of `--weights --arch`.
    fn model_source(&self) -> Result<ModelSource> {
        Ok(match &self.weights {
            Some(w) => ModelSource::Described(ModelDescription::ad_hoc(
                w.clone(),
                self.arch.as_deref().map(str::parse).transpose()?,
                self.labels.clone(),
                self.multi_label,
            )),
            None => ModelSource::Named(self.model.clone()),
        })
    }

    /// Opens the device and loads the model. Runs from the command line share no inputs, so
    /// nothing is cached between them.
    fn explainer(&self) -> Result<Explainer> {
        let choice = self.device_choice();
        let explainer = Explainer::load(&self.model_source()?, choice)?.without_cache();
        if choice == DeviceChoice::Auto
            && !self.quiet
            && let Some(why) = device::probe().why_no_gpu()
        {
            eprintln!("note: running on the CPU: {why}");
        }
        Ok(explainer)
    }
}

/// Runs `unveil check`.
pub fn check(args: &CheckArgs) -> Result<()> {
    let params = args.opts.params()?;
    let explainer = args.opts.explainer()?;
    let img = image::load(&args.image)?;
    let quiet = args.opts.quiet;
    let start = Instant::now();
    let mut stage = usize::MAX;
    let check = explainer.check(
        &img,
        args.opts.window,
        &params,
        &mut |p| {
            if !quiet && p.stage != stage && p.stage < p.stages {
                stage = p.stage;
                eprintln!("map {} of {}", p.stage + 1, p.stages);
            }
        },
        &AtomicBool::new(false),
    )?;
    let image_name = args.image.display().to_string();
    let dev = device::describe(explainer.device());
    let window = img.window_or_default(args.opts.window);
    let info = RunInfo {
        image: &image_name,
        record: ImageRecord::of(Some(&args.image), window, window),
        device: &dev,
        params: &params,
        model: explainer.info(),
        total_ms: start.elapsed().as_secs_f64() * 1e3,
    };
    export::write_check(&args.out, &check, &info, args.overwrite)?;
    if !quiet {
        let r = &check.report;
        let num = |v: Option<f64>| v.map_or("undefined".to_string(), |v| format!("{v:.3}"));
        eprintln!(
            "{} map of {} ({}):",
            r.method.name(),
            r.target_label,
            r.target
        );
        for row in &r.randomisation {
            eprintln!(
                "  {:<16} re-initialised ({} tensors): Spearman {}, SSIM {:.3}",
                row.reinitialised.name(),
                row.tensors,
                num(row.spearman),
                row.ssim
            );
        }
        eprintln!(
            "  runner-up class {} ({}): Spearman {}",
            r.other_class.class,
            r.other_class.label,
            num(r.other_class.spearman)
        );
        eprintln!("{}", r.verdict);
        eprintln!("wrote {}", args.out.display());
    }
    Ok(())
}

/// Runs `unveil eval`.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let mut base = args.opts.params()?;
    base.faithfulness = true;
    let methods: Vec<Method> = args.methods.iter().map(|m| method(*m)).collect();
    let images = batch::collect(&args.inputs)?;
    let mine: Vec<&PathBuf> = images
        .iter()
        .filter(|p| args.shard.is_none_or(|(i, n)| batch::shard_of(p, n) == i))
        .collect();
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let pending = |p: &Path| {
        methods
            .iter()
            .any(|&m| !eval::done(&eval::folder(&args.out, &batch::id(p), m)))
    };
    let todo: Vec<&PathBuf> = mine.iter().copied().filter(|p| pending(p)).collect();
    eprintln!(
        "{} images x {} methods, {} images in this shard, {} with work to do",
        images.len(),
        methods.len(),
        mine.len(),
        todo.len()
    );
    let explainer = args.opts.explainer()?;
    let dev = device::describe(explainer.device());
    let never = AtomicBool::new(false);
    let mut failed = 0;
    for (k, path) in todo.iter().enumerate() {
        let id = batch::id(path);
        let name = path.display().to_string();
        let img = match image::load(path) {
            Ok(img) => img,
            Err(e) => {
                failed += 1;
                eprintln!("[{}/{}] {name}: {e}", k + 1, todo.len());
                batch::record_failure(&args.out, path, &e.to_string())?;
                continue;
            }
        };
        for &m in &methods {
            let dir = eval::folder(&args.out, &id, m);
            if eval::done(&dir) {
                continue;
            }
            let mut p = base.clone();
            p.saliency.method = m;
            if m == Method::IntegratedGradients {
                p.saliency.samples = args.ig_samples;
            }
            let one = || -> Result<EvalRow> {
                let start = Instant::now();
                let outcome = explainer.explain(&img, args.opts.window, &p, &mut |_| {}, &never)?;
                let run_ms = start.elapsed().as_secs_f64() * 1e3;
                let window = img.window_or_default(args.opts.window);
                let info = RunInfo {
                    image: &name,
                    record: ImageRecord::of(Some(path), window, window),
                    device: &dev,
                    params: &p,
                    model: explainer.info(),
                    total_ms: run_ms,
                };
                export::write_run(&dir.join("run"), &outcome, &info, false, true)?;
                let start = Instant::now();
                let check = explainer.check(&img, args.opts.window, &p, &mut |_| {}, &never)?;
                let check_ms = start.elapsed().as_secs_f64() * 1e3;
                export::write_check(&dir.join("check"), &check, &info, true)?;
                let row = EvalRow::new(
                    explainer.model().as_ref(),
                    &name,
                    m,
                    p.fill,
                    &outcome,
                    &check.report,
                    (run_ms, check_ms),
                    &never,
                )?;
                eval::write_row(&dir, &row)?;
                Ok(row)
            };
            match one() {
                Ok(r) => eprintln!(
                    "[{}/{}] {name} {}: deletion AUC {:.3}, insertion AUC {:.3}, head rho {}, {:.1} s",
                    k + 1,
                    todo.len(),
                    m.name(),
                    r.deletion_auc_0,
                    r.insertion_auc_0,
                    r.rho_head.map_or("undefined".into(), |v| format!("{v:.3}")),
                    (r.run_ms + r.check_ms) / 1e3
                ),
                Err(e) => {
                    failed += 1;
                    eprintln!("[{}/{}] {name} {}: {e}", k + 1, todo.len(), m.name());
                    batch::record_failure(&args.out, path, &format!("{}: {e}", m.name()))?;
                }
            }
        }
    }
    let table = eval::write_tables(&args.out)?;
    println!("{table}");
    if failed > 0 {
        return Err(Error::BatchFailed {
            failed,
            list: args.out.join("failed.csv"),
        });
    }
    Ok(())
}

fn method(m: MethodArg) -> Method {
    match m {
        MethodArg::Guided => Method::Guided,
        MethodArg::Vanilla => Method::Vanilla,
        MethodArg::IntegratedGradients => Method::IntegratedGradients,
        MethodArg::GradCam => Method::GradCam,
    }
}

/// `unveil check` takes what `unveil run` takes.
pub type CheckArgs = RunArgs;

impl Options {}

/// Explains one image and writes its files into `out`.
fn explain(
    explainer: &Explainer,
    path: &Path,
    opts: &Options,
    params: &UnveilParams,
    out: &Path,
    overwrite: bool,
) -> Result<(Outcome, f64)> {
    let start = Instant::now();
    let img = image::load(path)?;
    let quiet = opts.quiet;
    if !quiet && let Some(m) = unveil::engine::suitability::mismatch(explainer.info(), &img) {
        eprintln!(
            "warning: {} (try --model {})",
            m.describe(&explainer.info().name),
            m.suggested_model()
        );
    }
    let mut on_event = |e: Event| {
        if let Event::FellBack(why) = e {
            eprintln!("warning: {why}");
        }
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
        if let Event::Curves { index, curves } = e
            && !quiet
        {
            eprintln!(
                "iteration {index}: deletion AUC {:.3}, insertion AUC {:.3}",
                curves.deletion_auc, curves.insertion_auc
            );
        }
    };
    let outcome = explainer.explain(
        &img,
        opts.window,
        params,
        &mut on_event,
        &AtomicBool::new(false),
    )?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let image_name = path.display().to_string();
    let dev = device::describe(explainer.device());
    let window = img.window_or_default(opts.window);
    let run_info = RunInfo {
        image: &image_name,
        record: ImageRecord::of(Some(path), window, window),
        device: &dev,
        params,
        model: explainer.info(),
        total_ms,
    };
    export::write_run(out, &outcome, &run_info, opts.export_raw, overwrite)?;
    Ok((outcome, total_ms))
}

/// Runs `unveil run`.
pub fn run(args: &RunArgs) -> Result<()> {
    let params = args.opts.params()?;
    let explainer = args.opts.explainer()?;
    let (outcome, total_ms) = explain(
        &explainer,
        &args.image,
        &args.opts,
        &params,
        &args.out,
        args.overwrite,
    )?;
    if !args.opts.quiet {
        let after = outcome
            .after
            .as_ref()
            .map(|a| format!(" (p after masking: {:.3})", a.p_target));
        let r = unveil::engine::readout::readout(&outcome, explainer.info(), params.stop.threshold);
        eprintln!("{}", r.text);
        for f in &r.flags {
            eprintln!("note: {}", f.describe());
        }
        eprintln!(
            "target {} ({}): {}, stopped because {}{}; {:.1} s; wrote {}",
            outcome.target,
            explainer.info().label(outcome.target),
            plural(outcome.steps.len(), "iteration"),
            outcome.stop.describe(),
            after.unwrap_or_default(),
            total_ms / 1e3,
            args.out.display()
        );
    }
    Ok(())
}

/// Runs `unveil batch`: every image of `inputs` (this shard's share), skipping finished ones,
/// then rewrites `results.csv` from every finished image in the folder (all shards').
pub fn batch(args: &BatchArgs) -> Result<()> {
    let params = args.opts.params()?;
    let images = batch::collect(&args.inputs)?;
    let mine: Vec<&PathBuf> = images
        .iter()
        .filter(|p| args.shard.is_none_or(|(i, n)| batch::shard_of(p, n) == i))
        .collect();
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let todo: Vec<&PathBuf> = mine
        .iter()
        .copied()
        .filter(|p| !batch::done(&args.out, p))
        .collect();
    eprintln!(
        "{} images, {} in this shard, {} already done, {} to do",
        images.len(),
        mine.len(),
        mine.len() - todo.len(),
        todo.len()
    );
    let explainer = args.opts.explainer()?;
    let quiet_opts = Options {
        quiet: true,
        ..args.opts.clone()
    };
    let start = Instant::now();
    let (mut failed, mut ran_ms) = (0, 0.0);
    for (k, path) in todo.iter().enumerate() {
        let out = args.out.join(batch::id(path));
        match explain(&explainer, path, &quiet_opts, &params, &out, false) {
            Ok((o, ms)) => {
                ran_ms += ms;
                eprintln!(
                    "[{}/{}] {}: {}, {:.1} s",
                    k + 1,
                    todo.len(),
                    path.display(),
                    plural(o.steps.len(), "iteration"),
                    ms / 1e3
                )
            }
            Err(e) => {
                failed += 1;
                eprintln!("[{}/{}] {}: {e}", k + 1, todo.len(), path.display());
                batch::record_failure(&args.out, path, &e.to_string())?;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rows = batch::write_results(&args.out)?;
    if !todo.is_empty() {
        // The rate counts images that ran: failures (an unreadable file) end in milliseconds.
        let ran = todo.len() - failed;
        let rate = if ran > 0 {
            format!(" ({:.1} images/min)", 60e3 * ran as f64 / ran_ms.max(1e-9))
        } else {
            String::new()
        };
        eprintln!(
            "done: {} in {secs:.1} s{rate}, {failed} failed; results.csv has {}",
            plural(ran, "image"),
            plural(rows, "row"),
        );
    }
    if failed > 0 {
        return Err(Error::BatchFailed {
            failed,
            list: args.out.join("failed.csv"),
        });
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
            unveil::install::fetch(
                name,
                &mut |line| eprintln!("{line}"),
                &AtomicBool::new(false),
            )?;
            Ok(())
        }
    }
}

/// "1 image", "2 images".
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}
