use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = clientapi::cli::Cli::parse();
    clientapi::telemetry::init_logging("info,sqlx=warn,tower_http=warn");
    match clientapi::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clientapi: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
