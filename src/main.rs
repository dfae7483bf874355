use clap::Parser;

/// The service allocates per request and per record (GraphQL values above all); mimalloc's
/// thread-local free lists beat glibc's arenas there (glibc malloc/free were a quarter of a
/// GraphQL list request's CPU under perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
