//! `unveil check IMAGE --out DIR`: the sanity checks of one image's map (check.json, check.png).
//! It computes maps only, so it takes the model, saliency and input flags and no mask, loop or
//! run-output flag.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::Args;

use unveil::Result;
use unveil::engine::run::RunRequest;
use unveil::engine::sanity::CheckEvent;
use unveil::engine::{export, image};

use super::flags::ExplainFlags;

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// Image file (PNG, JPEG, TIFF, DICOM).
    pub(crate) image: PathBuf,
    #[command(flatten)]
    pub(crate) explain: ExplainFlags,
    /// Output folder.
    #[arg(long, help_heading = "Output")]
    pub(crate) out: PathBuf,
    /// Replace the output folder if it already holds files.
    #[arg(long, help_heading = "Output")]
    pub(crate) overwrite: bool,
    /// Print nothing but errors.
    #[arg(long, short, help_heading = "Output")]
    pub(crate) quiet: bool,
}

/// Runs `unveil check`.
pub(crate) fn check(args: &CheckArgs) -> Result<()> {
    let e = &args.explain;
    let params = e.params(None, false)?;
    let quiet = args.quiet;
    let explainer = e.model.explainer(quiet)?;
    let img = image::load(&args.image)?;
    let name = args.image.display().to_string();
    let req = RunRequest::file(&img, &args.image, &name, &params).with_window(e.input.window);
    let mut stage = usize::MAX;
    let record = explainer.check(
        &req,
        &mut |e| match e {
            CheckEvent::FellBack(why) => eprintln!("warning: {why}"),
            CheckEvent::Progress(p) => {
                if !quiet && p.stage != stage && p.stage < p.stages {
                    stage = p.stage;
                    eprintln!("map {} of {}", p.stage + 1, p.stages);
                }
            }
        },
        &AtomicBool::new(false),
    )?;
    export::write_check(&args.out, &record, args.overwrite)?;
    if !quiet {
        let r = &record.check.report;
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
        eprintln!("{}", r.verdict_text());
        eprintln!("wrote {}", args.out.display());
    }
    Ok(())
}
