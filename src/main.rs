use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = clientapi::cli::Cli::parse();
    // The demo talks to a person on the terminal: only warnings interrupt it.
    let filter = match cli.command {
        clientapi::cli::Command::Demo { .. } => "warn",
        _ => "info,sqlx=warn,tower_http=warn",
    };
    clientapi::telemetry::init_logging(filter);
    match clientapi::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clientapi: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
