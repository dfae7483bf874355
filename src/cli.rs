//! The command line: `clientapi --help` lists every command.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::startup::{Application, Database, shutdown_on_signals};

#[derive(Debug, Parser)]
#[command(name = "clientapi", version, about = "Scoped REST and GraphQL APIs over a field-service provider account.")]
pub struct Cli {
    /// TOML file with settings (environment variables override it).
    #[arg(long, global = true, env = "CLIENTAPI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service until Ctrl-C or SIGTERM.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage admin users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage admin API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an admin user (and its account, if new).
    Create(UserCreate),
}

#[derive(Debug, Args)]
pub struct UserCreate {
    #[arg(long)]
    pub email: String,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    /// The operator account to join or create.
    #[arg(long, default_value = "default")]
    pub account: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue an admin token (`ak_…`) for a user; prints only the token on stdout, once.
    Create {
        #[arg(long)]
        email: String,
        /// A label shown in token listings.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

/// Runs the parsed command. Exit codes: 0 ok, 1 failure, 2 bad configuration or usage.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match Config::from_env(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("clientapi: {e}");
            std::process::exit(2);
        }
    };
    match cli.command {
        Command::Serve => {
            let app = Application::build(config).await?;
            app.run_until_stopped(shutdown_on_signals()).await
        }
        Command::Migrate => {
            let db = Database::open(&config).await?;
            eprintln!("migrations applied");
            db.close().await
        }
        Command::User(UserCommand::Create(args)) => {
            let password = read_password(args.password_stdin)?;
            let db = Database::open(&config).await?;
            let result = crate::accounts::create_user(&db.pool, &args.email, password, &args.account).await;
            db.close().await?;
            let (account, user) = result?;
            eprintln!("created user {user} in account {account}");
            Ok(())
        }
        Command::Token(TokenCommand::Create { email, name }) => {
            let db = Database::open(&config).await?;
            let result = crate::accounts::create_admin_token(&db.pool, &email, &name).await;
            db.close().await?;
            println!("{}", result?);
            Ok(())
        }
    }
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(password);
    }
    let first = rpassword::prompt_password("Password: ")?;
    let again = rpassword::prompt_password("Again: ")?;
    if first != again {
        bail!("the passwords differ");
    }
    Ok(first)
}
