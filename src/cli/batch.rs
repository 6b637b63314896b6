//! `unveil batch INPUTS... --out DIR`: every image of files, folders and list files, each into
//! its own run folder, then `results.csv`; resumable and shardable (see
//! `unveil::engine::dataset`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use unveil::Result;
use unveil::engine::batch;
use unveil::engine::dataset::{Dataset, Shard};

use super::flags::{ExplainFlags, MaskFlags};
use super::run::FileRun;
use super::{Say, plural};

#[derive(Args, Debug)]
pub(crate) struct BatchArgs {
    /// Images, folders of images, or list files (.txt, one path per line).
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) explain: ExplainFlags,
    #[command(flatten)]
    pub(crate) mask: MaskFlags,
    #[command(flatten)]
    pub(crate) output: BatchOutput,
}

/// Where a dataset's results go, and which share of it this process takes.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub(crate) struct BatchOutput {
    /// Output folder: one sub-folder per image plus results.csv.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Process only shard I of N (0-based), e.g. 3/8: the split depends only on the image
    /// paths, so N machines can share one dataset with no coordination.
    #[arg(long)]
    pub(crate) shard: Option<Shard>,
    /// Also write float32 .npy arrays (input, gradient, saliency, mask) per iteration.
    #[arg(long)]
    pub(crate) export_raw: bool,
    /// Skip the faithfulness measures (deletion / insertion curves, unveiling against one
    /// map): about 70 forward passes per iteration.
    #[arg(long)]
    pub(crate) no_faithfulness: bool,
    /// Print nothing but errors (no per-image lines, no totals).
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

/// Runs `unveil batch`: every image of `inputs` (this shard's share), skipping finished ones,
/// then rewrites `results.csv` from every finished image in the folder (all shards').
pub(crate) fn batch(args: &BatchArgs) -> Result<()> {
    let (o, e) = (&args.output, &args.explain);
    let params = e.params(Some(&args.mask), !o.no_faithfulness)?;
    let data = Dataset::open(&args.inputs, o.shard, &o.out, |out, p| !batch::done(out, p))?;
    let say = Say { quiet: o.quiet };
    say.line(format_args!(
        "{} images, {} in this shard, {} already done, {} to do",
        data.all,
        data.mine,
        data.mine - data.todo.len(),
        data.todo.len()
    ));
    let explainer = e.model.explainer(o.quiet)?;
    let job = FileRun {
        explainer: &explainer,
        window: e.input.window,
        params: &params,
        raw: o.export_raw,
        verbose: false,
    };
    let mut failures = data.failures();
    let start = Instant::now();
    let mut ran_ms = 0.0;
    let n = data.todo.len();
    for (k, path) in data.todo.iter().enumerate() {
        match job.run(path, &batch::folder(&o.out, path), false) {
            Ok(r) => {
                ran_ms += r.provenance.total_ms;
                say.line(format_args!(
                    "[{}/{n}] {}: {}, {:.1} s",
                    k + 1,
                    path.display(),
                    plural(r.outcome.steps.len(), "iteration"),
                    r.provenance.total_ms / 1e3
                ));
            }
            Err(e) => {
                // Errors are what --quiet still prints.
                eprintln!("[{}/{n}] {}: {e}", k + 1, path.display());
                failures.record(path, &e.to_string())?;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rows = batch::write_results(&o.out)?;
    if n > 0 {
        // The rate counts images that ran: failures (an unreadable file) end in milliseconds.
        let ran = n - failures.count();
        let rate = if ran > 0 {
            format!(" ({:.1} images/min)", 60e3 * ran as f64 / ran_ms.max(1e-9))
        } else {
            String::new()
        };
        say.line(format_args!(
            "done: {} in {secs:.1} s{rate}, {} failed; results.csv has {}",
            plural(ran, "image"),
            failures.count(),
            plural(rows, "row"),
        ));
    }
    failures.into_result()
}
