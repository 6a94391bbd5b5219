//! `fleet setup ENV [--yes] [--json] [--timeout 2m]`: the Consul agent of every host
//! (`[consul.agent]`), planned first, then applied (docs/setup.md).
use std::process::ExitCode;
use std::time::Duration;

use miette::miette;

use super::Global;
use super::reach::{Reach, Versions, connect};
use crate::setup::{self, Action, Reached};
use crate::ui;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment to set up.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Do not ask for confirmation (required without a TTY, e.g. in CI).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the plan and the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Only show the plan (exit 0 when there is nothing to do, 2 when there are changes, 1 on an
    /// error, as `fleet plan --detailed-exitcode`).
    #[arg(long)]
    pub plan: bool,
    /// How long to wait for a leader and every agent alive, after each step.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub reach: Reach,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let cx = connect(&args.env, &args.reach, g, Versions::NotNeeded).await?;
    let result = run_connected(&cx, &args).await;
    cx.close().await;
    result
}

async fn run_connected(cx: &crate::operate::Connected, args: &Args) -> miette::Result<ExitCode> {
    let d = &cx.desired;
    if d.agents.is_empty() {
        return Err(miette!(
            help = "add `[consul.agent]` with `servers = [\"host1\", \"host2\", \"host3\"]` (docs/setup.md)",
            "environment `{}` has no [consul.agent]: nothing for `fleet setup` to run",
            d.environment
        ));
    }
    let consul_address = d
        .consul
        .as_ref()
        .map(|c| c.address.clone())
        .unwrap_or_else(|| "http://127.0.0.1:8500".into());
    // Each host: its engine (pinged), and its agent's URL through SSH.
    let mut reached = Vec::new();
    let mut agents = Vec::new();
    for (target, session) in cx.hosts() {
        let Some(spec) = d.agents.iter().find(|a| a.host == target.name) else {
            continue;
        };
        let docker = match session {
            Err(e) => Err(format!("cannot reach {}: {}", target.name, e.cause())),
            Ok(s) => match setup::engine(s).await {
                Ok(docker) => {
                    if let Ok(url) = s.consul_url(&consul_address).await {
                        agents.push((target.name.clone(), url));
                    }
                    Ok(docker)
                }
                Err(e) => Err(format!("{} ({e})", setup::engine_fix(&target.name))),
            },
        };
        reached.push(Reached { spec, docker });
    }
    let plan = setup::plan(d, &reached).await;
    if args.json && (args.plan || plan.changes() == 0) {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "plan": plan })).unwrap()
        );
    } else if !args.json {
        print!("{}", plan.human());
    }
    for h in plan.hosts.iter().filter(|h| h.action == Action::Error) {
        eprintln!(
            "error: {}: {}",
            h.host,
            h.reason.as_deref().unwrap_or_default()
        );
    }
    if args.plan {
        let code = if plan.errors() > 0 {
            1
        } else if plan.changes() > 0 {
            2
        } else {
            0
        };
        return Ok(ExitCode::from(code));
    }
    if plan.changes() == 0 {
        return Ok(ExitCode::from(if plan.errors() > 0 { 1 } else { 0 }));
    }
    let question = format!("Apply this setup to {}?", d.environment);
    match ui::confirm(args.yes, &question, ui::Expect::Yes).map_err(|e| miette!("{e}"))? {
        ui::Confirmation::Given => {}
        ui::Confirmation::Refused => {
            eprintln!("Nothing was changed.");
            return Ok(ExitCode::from(1));
        }
        ui::Confirmation::NoTerminal => {
            return Err(miette!(
                help = "pass --yes to apply without asking (as in CI)",
                "not applying without confirmation: stdin is not a terminal"
            ));
        }
    }
    let json = args.json;
    let progress = move |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let outcome = setup::apply(d, &plan, &reached, &agents, args.timeout, &progress).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "plan": plan,
                "outcome": {
                    "ok": outcome.ok(),
                    "leader": outcome.leader,
                    "unhealthy": outcome.unhealthy,
                    "hosts": outcome.hosts.iter().map(|(h, r)| match r {
                        Ok(done) => serde_json::json!({ "host": h, "done": done }),
                        Err(e) => serde_json::json!({ "host": h, "error": e }),
                    }).collect::<Vec<_>>(),
                },
            }))
            .unwrap()
        );
    }
    for (h, r) in &outcome.hosts {
        if let Err(e) = r
            && !plan
                .hosts
                .iter()
                .any(|s| &s.host == h && s.action == Action::Error)
        {
            eprintln!("error: {h}: {e}");
        }
    }
    if let Some(why) = &outcome.unhealthy {
        eprintln!("error: the Consul cluster is not healthy: {why}");
    } else if !json {
        println!(
            "The cluster has a leader ({}) and every agent is alive.",
            outcome.leader.as_deref().unwrap_or("?")
        );
    }
    Ok(ExitCode::from(if outcome.ok() { 0 } else { 1 }))
}
