//! The command line: `unveil run | check | batch | eval | models`, and the desktop app's flags
//! when no command is given.
//!
//! Arguments are parsed in two stages, as ripgrep does: clap's raw values in option groups
//! ([`flags`]; each command flattens only the groups it uses, so an unused flag is a parse
//! error naming the command), then validated engine parameters. Each command lives in its own
//! module and goes through the engine's request -> record API
//! (`unveil::engine::run`); errors come back as values, and `main` turns them into one line
//! and an exit code.

mod batch;
mod check;
mod eval;
mod flags;
mod models;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use unveil::Result;

#[derive(Parser, Debug)]
#[command(
    name = "unveil",
    version,
    about = "Iteratively unveil the image regions a CNN classifier relies on.",
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    /// Without a command, the desktop app starts.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Desktop app: image to open (default: the bundled sample photo).
    pub(crate) image: Option<PathBuf>,
    /// Desktop app: the view to start in.
    #[arg(long, value_enum)]
    pub(crate) view: Option<ViewArg>,
    /// Desktop app: the model to start with (e.g. pneumonia-xception, or a weights file).
    #[arg(long = "model")]
    pub(crate) gui_model: Option<String>,
    /// Desktop app: run the sanity check on the first map.
    #[arg(long = "sanity-check")]
    pub(crate) sanity_check: bool,
    /// Desktop app: start from the default settings, whatever the last session left (a demo
    /// laptop comes up clean).
    #[arg(long = "default-settings")]
    pub(crate) default_settings: bool,
    /// Desktop app: start in presenter mode (full screen; F11 leaves).
    #[arg(long)]
    pub(crate) presenter: bool,
    /// Desktop app: size of text and controls, 0.75 to 3 (e.g. 1.5 on a projector); remembered.
    #[arg(long)]
    pub(crate) font_scale: Option<f32>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ViewArg {
    Iterations,
    Regions,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing would only add noise
pub(crate) enum Command {
    /// Run the iterative unveiling on one image and write pictures and a summary.
    Run(run::RunArgs),
    /// Sanity-check the saliency map of one image: does it change when the model's last layers
    /// are randomised, or for another class? Writes check.json and check.png.
    Check(check::CheckArgs),
    /// Run every image of files, folders or list files; resumable and shardable.
    Batch(batch::BatchArgs),
    /// Compare saliency methods over images: faithfulness and sanity checks per image and
    /// method, means with 95 % bootstrap intervals; resumable and shardable like batch.
    Eval(eval::EvalArgs),
    /// List the models this build knows, or fetch one (`unveil models fetch NAME`).
    Models {
        #[command(subcommand)]
        action: Option<models::ModelsAction>,
    },
}

/// Runs a command.
pub(crate) fn dispatch(command: &Command) -> Result<()> {
    match command {
        Command::Run(a) => run::run(a),
        Command::Check(a) => check::check(a),
        Command::Batch(a) => batch::batch(a),
        Command::Eval(a) => eval::eval(a),
        Command::Models { action } => models::models(action.as_ref()),
    }
}

/// Progress lines on stderr, unless `--quiet` (errors are printed either way).
#[derive(Clone, Copy)]
struct Say {
    quiet: bool,
}

impl Say {
    fn line(self, text: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

/// "1 image", "2 images".
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}
