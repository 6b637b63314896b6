use std::process::ExitCode;

use clap::Parser;
use unveil::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match &args.command {
        Some(Command::Run(run)) => cli::run(run),
        Some(Command::Models) => cli::list_models(),
        None => launch_app(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unveil: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "gui")]
fn launch_app() -> unveil::Result<()> {
    unveil::gui::run_native()
}

#[cfg(not(feature = "gui"))]
fn launch_app() -> unveil::Result<()> {
    use clap::CommandFactory;
    let _ = Cli::command().print_help();
    Ok(())
}
