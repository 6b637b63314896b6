//! `unveil run IMAGE --out DIR`: one image explained, its files written.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use clap::Args;

use unveil::Result;
use unveil::engine::explainer::Explainer;
use unveil::engine::outcome::Event;
use unveil::engine::params::UnveilParams;
use unveil::engine::run::{RunRecord, RunRequest};
use unveil::engine::source_image::Window;
use unveil::engine::{export, image, readout, suitability};

use super::flags::{ExplainFlags, MaskFlags};
use super::plural;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Image file (PNG, JPEG, TIFF, DICOM).
    pub(crate) image: PathBuf,
    #[command(flatten)]
    pub(crate) explain: ExplainFlags,
    #[command(flatten)]
    pub(crate) mask: MaskFlags,
    #[command(flatten)]
    pub(crate) output: RunOutput,
}

/// What a run writes and says.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub(crate) struct RunOutput {
    /// Output folder.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Replace the output folder if it already holds files.
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Also write float32 .npy arrays (input, gradient, saliency, mask) per iteration.
    #[arg(long)]
    pub(crate) export_raw: bool,
    /// Skip the faithfulness measures (deletion / insertion curves, unveiling against one
    /// map): about 70 forward passes per iteration.
    #[arg(long)]
    pub(crate) no_faithfulness: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

/// Runs `unveil run`.
pub(crate) fn run(args: &RunArgs) -> Result<()> {
    let o = &args.output;
    let e = &args.explain;
    let params = e.params(Some(&args.mask), !o.no_faithfulness)?;
    let explainer = e.model.explainer(o.quiet)?;
    let job = FileRun {
        explainer: &explainer,
        window: e.input.window,
        params: &params,
        raw: o.export_raw,
        verbose: !o.quiet,
    };
    let record = job.run(&args.image, &o.out, o.overwrite)?;
    if !o.quiet {
        let outcome = &record.outcome;
        let info = &record.provenance.model;
        let after = outcome
            .after
            .as_ref()
            .map(|a| format!(" (p after masking: {:.3})", a.p_target));
        let r = readout::readout(outcome, info, params.stop.threshold);
        eprintln!("{}", r.text);
        for f in &r.flags {
            eprintln!("note: {}", f.describe());
        }
        eprintln!(
            "target {} ({}): {}, stopped because {}{}; {:.1} s; wrote {}",
            outcome.target,
            info.label(outcome.target),
            plural(outcome.steps.len(), "iteration"),
            outcome.stop.describe(),
            after.unwrap_or_default(),
            record.provenance.total_ms / 1e3,
            o.out.display()
        );
    }
    Ok(())
}

/// One file explained and written, as `run` and `batch` do it.
pub(super) struct FileRun<'a> {
    pub(super) explainer: &'a Explainer,
    pub(super) window: Option<Window>,
    pub(super) params: &'a UnveilParams,
    pub(super) raw: bool,
    /// Print the suitability warning and each iteration as it finishes.
    pub(super) verbose: bool,
}

impl FileRun<'_> {
    /// Loads `path`, explains it and writes its files into `out`. A GPU failure is always
    /// reported: the run goes on on the CPU, and the user should know.
    pub(super) fn run(&self, path: &Path, out: &Path, overwrite: bool) -> Result<RunRecord> {
        let img = image::load(path)?;
        let info = self.explainer.info();
        if self.verbose
            && let Some(m) = suitability::mismatch(info, &img)
        {
            eprintln!(
                "warning: {} (try --model {})",
                m.describe(&info.name),
                m.suggested_model()
            );
        }
        let verbose = self.verbose;
        let mut on_event = |e: Event| match e {
            Event::FellBack(why) => eprintln!("warning: {why}"),
            Event::Step(s) if verbose => {
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
            Event::Curves { index, curves } if verbose => eprintln!(
                "iteration {index}: deletion AUC {:.3}, insertion AUC {:.3}",
                curves.deletion_auc, curves.insertion_auc
            ),
            _ => {}
        };
        let name = path.display().to_string();
        let req = RunRequest::file(&img, path, &name, self.params).with_window(self.window);
        let record = self
            .explainer
            .run(&req, &mut on_event, &AtomicBool::new(false))?;
        export::write_run(out, &record, self.raw, overwrite)?;
        Ok(record)
    }
}
