//! The `hub` command line: `serve`, `demo`, `migrate` and `admin`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use medhub_actors::Role;

use crate::config::{ConfigArgs, Settings};
use crate::server::{self, Database};
use crate::{seed, telemetry};

#[derive(Parser)]
#[command(name = "hub", version, about = "medhub: the real-time operations hub for groups of hospitals")]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (API, WebSocket, console) until SIGINT or SIGTERM.
    Serve,
    /// Run the hub with a demo tenant ("demo"): a user for every role and three facilities.
    Demo,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage tenants and users.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a tenant (a hospital group).
    CreateTenant {
        /// Short immutable name used in logins and topics: 2-40 of a-z, 0-9, '-'.
        #[arg(long)]
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Create a user in a tenant. The password comes from MEDHUB_NEW_USER_PASSWORD or, with
    /// --password-stdin, from standard input (never from the command line, where others could read it).
    CreateUser {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        /// The name shown in the console.
        #[arg(long)]
        name: String,
        /// admin, dispatcher, doctor, nurse, pharmacist or patient.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Read the password from standard input (first line).
        #[arg(long)]
        password_stdin: bool,
    },
}

fn parse_role(value: &str) -> Result<Role, String> {
    Role::parse(value).ok_or_else(|| {
        format!("unknown role {value:?}; use one of {}", Role::ALL.map(Role::as_str).join(", "))
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::resolve(&cli.config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("hub: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&settings.log, settings.log_format);
    let result = actix_web::rt::System::new().block_on(run(cli.command, settings));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "hub failed");
            eprintln!("hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => server::serve(settings, false).await,
        Command::Demo => server::serve(settings, true).await,
        Command::Migrate => {
            let database = Database::open(&settings).await?;
            database.migrate().await?;
            println!("migrations applied");
            database.close().await;
            Ok(())
        }
        Command::Admin(admin) => {
            let database = Database::open(&settings).await?;
            database.migrate().await?;
            let result = run_admin(&database, admin).await;
            database.close().await;
            result
        }
    }
}

async fn run_admin(database: &Database, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::CreateTenant { slug, name } => {
            let id = seed::create_tenant(&database.pool, &slug, &name).await?;
            println!("created tenant {slug} ({id})");
        }
        AdminCommand::CreateUser { tenant, email, name, role, password_stdin } => {
            let password = if password_stdin {
                let mut input = String::new();
                std::io::stdin().read_to_string(&mut input).context("cannot read the password from standard input")?;
                input.lines().next().unwrap_or_default().to_owned()
            } else {
                match std::env::var("MEDHUB_NEW_USER_PASSWORD") {
                    Ok(password) => password,
                    Err(_) => bail!("give the password in MEDHUB_NEW_USER_PASSWORD or on standard input with --password-stdin"),
                }
            };
            let id = seed::create_user(&database.pool, &tenant, &email, &name, role, &password).await?;
            println!("created {role} {email} in {tenant} ({id})");
        }
    }
    Ok(())
}
