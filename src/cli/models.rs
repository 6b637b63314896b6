//! `unveil models [list | fetch NAME]`: what this build knows, and fetching weights that may
//! not be redistributed.

use std::sync::atomic::AtomicBool;

use clap::Subcommand;

use unveil::Result;
use unveil::engine::models;

#[derive(Subcommand, Debug)]
pub(crate) enum ModelsAction {
    /// List models and whether their weights are installed.
    List,
    /// Download and convert a model's weights into the user's model folder.
    Fetch {
        /// Model name, e.g. pneumonia-xception.
        name: String,
    },
}

/// Runs `unveil models [list | fetch NAME]`.
pub(crate) fn models(action: Option<&ModelsAction>) -> Result<()> {
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
            println!(
                "\nArchitectures of your own weights (--weights FILE, recognised from the file \
                 or named with --arch):"
            );
            for a in models::Arch::all() {
                println!("{}\t{}", a.name(), a.about());
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
