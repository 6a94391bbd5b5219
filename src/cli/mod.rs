//! The command line: clap definitions, one module per command.
//!
//! Each command module has an `Args` struct and `run(args, &Global) -> miette::Result<ExitCode>`;
//! it stays a few lines that call into the core. Errors become `miette` diagnostics here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod build;
pub mod complete;
pub mod deploy;
pub mod destroy;
pub mod exec;
pub mod import;
pub mod info;
pub mod init;
pub mod lock;
pub mod logs;
pub mod plan;
pub mod reach;
pub mod releases;
pub mod restart;
pub mod rollback;
pub mod schema;
pub mod setup;
pub mod show;
pub mod status;
pub mod validate;

/// Declarative deploys of containers to hosts over SSH, with Consul service registration.
#[derive(Debug, Parser)]
#[command(name = "fleet", version = env!("FLEET_VERSION"), about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// The manifest. Default: fleet.toml, then fleet.json, in the current directory.
    #[arg(short = 'f', long = "file", global = true, env = "FLEET_FILE")]
    pub file: Option<PathBuf>,
    /// When to use colour: auto (a TTY without NO_COLOR), always, never.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub color: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the manifest (and one environment of it) and report every problem at once.
    Validate(validate::Args),
    /// Print the resolved desired state of an environment (secrets masked).
    Show(show::Args),
    /// Build the apps' images, tagged by content; push them with --push.
    Build(build::Args),
    /// Show what a deploy would change on the hosts of an environment.
    Plan(plan::Args),
    /// Run the Consul agent of every host (`[consul.agent]`) as a container: plan, then apply.
    Setup(setup::Args),
    /// Build, push and converge every host of an environment, health-gated.
    Deploy(deploy::Args),
    /// Return an environment to its previous good release (or --to VERSION), health-gated.
    Rollback(rollback::Args),
    /// A table of every instance: state, health, restarts, uptime, CPU, memory.
    Status(status::Args),
    /// The details of an instance: image, command, env (secrets masked), ports, Consul.
    Info(info::Args),
    /// The logs of every instance, marked by stream, merged by time; -f follows.
    Logs(logs::Args),
    /// Restart instances (deregistered from Consul first, registered again after).
    Restart(restart::Args),
    /// Stop instances (deregistered from Consul first).
    Stop(restart::Args),
    /// Start stopped instances (registered in Consul after).
    Start(restart::Args),
    /// Run a command in an instance's container.
    Exec(exec::Args),
    /// Remove every container, Consul service and KV key of an environment.
    Destroy(destroy::Args),
    /// Turn another tool's configuration into a fleet manifest.
    #[command(subcommand)]
    Import(import::Source),
    /// Write a starter manifest and Dockerfile.
    Init(init::Args),
    /// The deploy lock of an environment: who holds it; release it.
    #[command(subcommand)]
    Lock(lock::Command),
    /// The release ledger of an environment: every deploy, newest first.
    Releases(releases::Args),
    /// Print the JSON Schema of the manifest, for editors (docs/editors.md).
    Schema(schema::Args),
}

pub fn main() -> ExitCode {
    complete::answer_if_asked();
    let cli = Cli::parse_from(logs::follow_shorthand(std::env::args_os()));
    crate::ui::init_color(&cli.global.color);
    init_log();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::FAILURE
        }
    }
}

/// The version each of `targets` would have now (its build context hashed), after checking
/// that every build context is there: a missing one is reported at its line in the manifest.
pub(crate) fn versions(
    loaded: &crate::manifest::Loaded,
    targets: &[crate::desired::BuildTarget],
) -> miette::Result<crate::desired::Versions> {
    loaded.check_build_contexts()?;
    miette::IntoDiagnostic::into_diagnostic(crate::build::versions(targets))
}

/// Warnings (a lock renewal that failed, a setting ignored) on stderr; `FLEET_LOG=info|debug`
/// shows more: the phases of a command with their times.
fn init_log() {
    let level = std::env::var("FLEET_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> miette::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Validate(a) => validate::run(a, g).await,
        Command::Show(a) => show::run(a, g).await,
        Command::Build(a) => build::run(a, g).await,
        Command::Plan(a) => plan::run(a, g).await,
        Command::Setup(a) => setup::run(a, g).await,
        Command::Deploy(a) => deploy::run(a, g).await,
        Command::Rollback(a) => rollback::run(a, g).await,
        Command::Status(a) => status::run(a, g).await,
        Command::Info(a) => info::run(a, g).await,
        Command::Logs(a) => logs::run(a, g).await,
        Command::Restart(a) => restart::run(a, g, crate::operate::lifecycle::Action::Restart).await,
        Command::Stop(a) => restart::run(a, g, crate::operate::lifecycle::Action::Stop).await,
        Command::Start(a) => restart::run(a, g, crate::operate::lifecycle::Action::Start).await,
        Command::Exec(a) => exec::run(a, g).await,
        Command::Destroy(a) => destroy::run(a, g).await,
        Command::Import(a) => import::run(a, g).await,
        Command::Init(a) => init::run(a, g).await,
        Command::Lock(a) => lock::run(a, g).await,
        Command::Releases(a) => releases::run(a, g).await,
        Command::Schema(a) => schema::run(a, g).await,
    }
}
