//! The binary: settings, logging, run.

use clap::Parser;
use ratewarden::app;
use ratewarden::settings::Settings;
use std::net::TcpListener;
use std::process::ExitCode;

fn main() -> ExitCode {
    let settings = match Settings::try_parse() {
        Ok(s) => s,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("ratewarden: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(&settings.log_level),
    )
    .init();

    let run = actix_web::rt::System::new().block_on(async {
        let listener = TcpListener::bind(settings.bind)
            .map_err(|e| format!("binding {}: {e}", settings.bind))?;
        let running = app::start(&settings, listener)?;
        running
            .serve_until(app::shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("ratewarden: {e}");
            ExitCode::FAILURE
        }
    }
}
