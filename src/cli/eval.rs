//! `unveil eval INPUTS... --out DIR`: saliency methods compared over images. Per image and
//! method a run, its sanity check and `eval.json` (`Explainer::evaluate`); then `results.csv`
//! and `summary.csv` with bootstrap intervals. Faithfulness is what it measures, so there is
//! no --no-faithfulness; the methods come from --methods, so there is no --method.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::Args;

use unveil::Result;
use unveil::engine::dataset::{self, Dataset, Shard, csv_field};
use unveil::engine::eval;
use unveil::engine::image;
use unveil::engine::outcome::Event;
use unveil::engine::params::{Method, UnveilParams};
use unveil::engine::run::RunRequest;

use super::Say;
use super::flags::{self, InputFlags, MaskFlags, MethodArg, ModelFlags, SaliencyFlags};

#[derive(Args, Debug)]
pub(crate) struct EvalArgs {
    /// Images, folders of images, or list files (.txt, one path per line).
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) model: ModelFlags,
    /// Methods to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "guided,vanilla,integrated-gradients,grad-cam",
        help_heading = "Saliency"
    )]
    pub(crate) methods: Vec<MethodArg>,
    /// Noisy copies for integrated gradients (1: plain IG; each copy costs --ig-steps passes,
    /// so SmoothGrad's --samples would multiply its cost).
    #[arg(long = "ig-samples", default_value_t = 1, help_heading = "Saliency")]
    pub(crate) ig_samples: usize,
    #[command(flatten)]
    pub(crate) saliency: SaliencyFlags,
    #[command(flatten)]
    pub(crate) input: InputFlags,
    #[command(flatten)]
    pub(crate) mask: MaskFlags,
    /// Output folder: <image>/<method>/{run,check,eval.json}, results.csv, summary.csv.
    #[arg(long, help_heading = "Output")]
    pub(crate) out: PathBuf,
    /// Process only shard I of N (0-based), as in batch.
    #[arg(long, help_heading = "Output")]
    pub(crate) shard: Option<Shard>,
    /// Also write float32 .npy arrays per iteration into each run folder.
    #[arg(long, help_heading = "Output")]
    pub(crate) export_raw: bool,
    /// Print nothing but errors and the final table.
    #[arg(long, short, help_heading = "Output")]
    pub(crate) quiet: bool,
}

/// Runs `unveil eval`.
pub(crate) fn eval(args: &EvalArgs) -> Result<()> {
    let methods: Vec<Method> = args.methods.iter().map(|&m| m.into()).collect();
    // One parameter set per method, validated before any work.
    let params: Vec<UnveilParams> = methods
        .iter()
        .map(|&method| {
            let mut p = flags::params(method, &args.saliency, &args.input, Some(&args.mask), true)?;
            if method == Method::IntegratedGradients {
                p.saliency.samples = args.ig_samples;
                p.validate()?;
            }
            Ok(p)
        })
        .collect::<Result<_>>()?;
    let folder = |out: &std::path::Path, image: &std::path::Path, m: Method| {
        eval::folder(out, &dataset::id(image), m)
    };
    let data = Dataset::open(&args.inputs, args.shard, &args.out, |out, p| {
        methods.iter().any(|&m| !eval::done(&folder(out, p, m)))
    })?;
    let say = Say { quiet: args.quiet };
    say.line(format_args!(
        "{} images x {} methods, {} images in this shard, {} with work to do",
        data.all,
        methods.len(),
        data.mine,
        data.todo.len()
    ));
    let explainer = args.model.explainer(args.quiet)?;
    let never = AtomicBool::new(false);
    let mut failures = data.failures();
    let mut finished = std::collections::HashSet::new();
    let n = data.todo.len();
    for (k, path) in data.todo.iter().enumerate() {
        let name = path.display().to_string();
        let img = match image::load(path) {
            Ok(img) => img,
            Err(e) => {
                eprintln!("[{}/{n}] {name}: {e}", k + 1);
                failures.record(path, &e.to_string())?;
                continue;
            }
        };
        let mut all_done = true;
        for p in &params {
            let m = p.saliency.method;
            let dir = folder(&args.out, path, m);
            if eval::done(&dir) {
                continue;
            }
            let req = RunRequest::file(&img, path, &name, p).with_window(args.input.window);
            let mut on_event = |e: Event| {
                if let Event::FellBack(why) = e {
                    eprintln!("warning: {why}");
                }
            };
            let result = explainer
                .evaluate(&req, &mut on_event, &never)
                .and_then(|e| eval::write(&dir, &e, args.export_raw).map(|()| e.row));
            match result {
                Ok(r) => say.line(format_args!(
                    "[{}/{n}] {name} {}: deletion AUC {:.3}, insertion AUC {:.3}, head rho {}, {:.1} s",
                    k + 1,
                    m.name(),
                    r.deletion_auc_0,
                    r.insertion_auc_0,
                    r.rho_head.map_or("undefined".into(), |v| format!("{v:.3}")),
                    (r.run_ms + r.check_ms) / 1e3
                )),
                Err(e) => {
                    all_done = false;
                    eprintln!("[{}/{n}] {name} {}: {e}", k + 1, m.name());
                    failures.record(path, &format!("{}: {e}", m.name()))?;
                }
            }
        }
        if all_done {
            finished.insert(csv_field(&path.to_string_lossy()));
        }
    }
    let table = eval::write_tables(&args.out)?;
    dataset::tidy_failures(&args.out, &finished)?;
    println!("{table}");
    failures.into_result()
}
