//! The `unveil` binary: the desktop app by default, `unveil run | check | batch | eval |
//! models` on the command line. `main` only maps errors to one line and an exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::Cli;

fn main() -> ExitCode {
    unveil::engine::memory::tune_allocator();
    let args = Cli::parse();
    // A bad UNVEIL_KERNELS is refused here, as one line, before any kernel could meet it.
    let result = unveil::engine::ops::kernel_path::from_env().and_then(|_| match &args.command {
        Some(command) => cli::dispatch(command),
        None => launch_app(&args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unveil: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "gui")]
fn launch_app(args: &Cli) -> unveil::Result<()> {
    use cli::ViewArg;
    use unveil::gui::settings::View;
    unveil::gui::run_native(unveil::gui::AppOptions {
        image: args.image.clone(),
        model: args.gui_model.clone(),
        sanity_check: args.sanity_check,
        settings: args
            .default_settings
            .then(unveil::gui::settings::Settings::default),
        presenter: args.presenter,
        font_scale: args.font_scale,
        view: args.view.map(|v| match v {
            ViewArg::Iterations => View::Iterations,
            ViewArg::Regions => View::AllRegions,
        }),
        ..Default::default()
    })
}

#[cfg(not(feature = "gui"))]
fn launch_app(_: &Cli) -> unveil::Result<()> {
    use clap::CommandFactory;
    let _ = Cli::command().print_help();
    Ok(())
}
