//! `fleet lock status ENV`, `fleet lock release ENV [--yes]`: the deploy lock (see
//! `release::lock` and docs/lock.md).
use std::process::ExitCode;
use std::time::Duration;

use miette::{IntoDiagnostic, miette};

use super::Global;
use crate::desired::DesiredState;
use crate::host::ConnectOptions;
use crate::release::lock::{Holder, Store, ago};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Who holds the deploy lock of an environment, since when, with which plan.
    Status(EnvArgs),
    /// Free the deploy lock whoever holds it (a deploy still running notices at once, and stops).
    Release(ReleaseArgs),
}

#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    /// The environment.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Give up on the host after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// Opens the lock/ledger store of an environment (its Consul, else its first host).
pub(crate) async fn open(
    g: &Global,
    env: &str,
    connect_timeout: Duration,
) -> miette::Result<Store> {
    let loaded = crate::manifest::load(g.file.as_deref())?;
    let desired = loaded.resolve(env, &loaded.placeholder_versions())?;
    let opts = ConnectOptions {
        connect_timeout,
        ..ConnectOptions::default()
    };
    Store::open(&desired, &opts).await.into_diagnostic()
}

/// The lines describing a holder.
pub fn describe(h: &Holder) -> String {
    let mut s = format!(
        "held by {h}\n  since {} ({} ago)",
        h.started,
        ago(h.since())
    );
    if !h.summary.is_empty() {
        s.push_str(&format!("\n  plan  {}", h.summary));
    }
    s
}

pub async fn run(cmd: Command, g: &Global) -> miette::Result<ExitCode> {
    match cmd {
        Command::Status(a) => {
            let store = open(g, &a.env, a.connect_timeout).await?;
            let held = store.lock_status().await;
            let place = store.lock_place();
            store.close().await;
            match held.into_diagnostic()? {
                None => println!("The deploy lock of {} is free ({place}).", a.env),
                Some(h) => println!(
                    "The deploy lock of {} is {}\n  at    {place}",
                    a.env,
                    describe(&h)
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Release(a) => {
            let env = &a.env.env;
            let store = open(g, env, a.env.connect_timeout).await?;
            let result = release(&store, env, a.yes).await;
            store.close().await;
            result
        }
    }
}

async fn release(store: &Store, env: &str, yes: bool) -> miette::Result<ExitCode> {
    let Some(h) = store.lock_status().await.into_diagnostic()? else {
        println!("The deploy lock of {env} is free; nothing to release.");
        return Ok(ExitCode::SUCCESS);
    };
    let question = format!(
        "The deploy lock of {env} is {}\nRelease it? A deploy still running loses its lock.",
        describe(&h)
    );
    match crate::ui::confirm(yes, &question, crate::ui::Expect::Yes).into_diagnostic()? {
        crate::ui::Confirmation::Given => {}
        crate::ui::Confirmation::NoTerminal => {
            return Err(miette!(
                help = format!("run `fleet lock release {env} --yes` to release it without asking"),
                "the deploy lock of {env} is {}; not releasing it without --yes (no terminal to ask on)",
                describe(&h)
            ));
        }
        crate::ui::Confirmation::Refused => {
            println!("Left the lock alone.");
            return Ok(ExitCode::FAILURE);
        }
    }
    match store.force_release().await.into_diagnostic()? {
        Some(h) => println!("Released the deploy lock of {env} (was {}).", describe(&h)),
        None => println!("The deploy lock of {env} was already free."),
    }
    Ok(ExitCode::SUCCESS)
}

/// [`crate::pipeline::Locked`] at the CLI edge (restart, stop, start, destroy, rollback):
/// taking it says when it was taken over; its errors are diagnostics; releasing it warns.
pub(crate) struct Locked(pub(crate) crate::pipeline::Locked);

impl Locked {
    /// Take the lock of `desired`'s environment for `what` (the holder's summary); a lock held
    /// by someone else is an error naming them and since when.
    pub(crate) async fn take(desired: &DesiredState, what: &str) -> miette::Result<Locked> {
        let locked = crate::pipeline::Locked::take(desired, what)
            .await
            .map_err(super::deploy::diagnostic)?;
        if let Some(dead) = locked.lock.took_over() {
            super::deploy::took_over(&desired.environment, dead);
        }
        Ok(Locked(locked))
    }

    pub(crate) async fn release(self) {
        if let Err(e) = self.0.release().await {
            super::deploy::not_released(&e);
        }
    }
}

/// Runs `f` with the deploy lock of `desired`'s environment held for `what`, and releases it on
/// every path `f` takes (as Kamal's `with_lock`); `f` cannot leave it held.
pub(crate) async fn with_lock<T>(
    desired: &DesiredState,
    what: &str,
    f: impl AsyncFnOnce() -> miette::Result<T>,
) -> miette::Result<T> {
    let lock = Locked::take(desired, what).await?;
    let out = f().await;
    lock.release().await;
    out
}
