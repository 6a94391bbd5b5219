//! `fleet setup ENV [--yes] [--json] [--plan] [--timeout 2m]`: the Consul agent of every host
//! (`[consul.agent]`), planned first, then applied; then the environment's accessories, as
//! `fleet deploy ENV --app NAME...` converges them (docs/setup.md).
use std::process::ExitCode;
use std::time::{Duration, Instant};

use miette::{IntoDiagnostic, miette};

use super::Global;
use super::deploy::Converge;
use super::reach::{Reach, Versions, connect};
use crate::host::DEFAULT_PARALLEL;
use crate::observe::Connected;
use crate::pipeline::Options;
use crate::plan::render;
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
    /// Print the plan and the outcome as JSON on stdout (with accessories, their deploy report
    /// follows as a second document).
    #[arg(long)]
    pub json: bool,
    /// Only show the plan (exit 0 when there is nothing to do, 2 when there are changes, 1 on an
    /// error, as `fleet plan --detailed-exitcode`).
    #[arg(long)]
    pub plan: bool,
    /// On a host whose Docker engine does not answer, install the distribution's engine
    /// (`docker.io`; Debian and Ubuntu) and start it, after confirmation (`--yes`).
    #[arg(long)]
    pub install_docker: bool,
    /// How long to wait for a leader and every agent alive, after each step.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub reach: Reach,
}

/// What the agents' part left to do after it.
enum Agents {
    /// Applied, or nothing to do: the accessories may follow.
    Ready,
    /// Only planned: `changes` is whether the agents have any.
    Planned { changes: bool },
    /// Stop with this exit code (an error, a refusal).
    Stop(u8),
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let t0 = Instant::now();
    let cx = connect(&args.env, &args.reach, g, Versions::NotNeeded).await?;
    let accessories: Vec<String> = cx
        .desired
        .apps
        .iter()
        .filter(|a| a.accessory)
        .map(|a| a.name.clone())
        .collect();
    let agents = if cx.desired.agents.is_empty() && !accessories.is_empty() {
        Ok(Agents::Ready)
    } else {
        run_connected(&cx, &args).await
    };
    let (cx, agents) = or_close(cx, agents).await?;
    // The accessories' step goes on with the same sessions.
    match agents {
        Agents::Planned { changes: false } if !accessories.is_empty() => {
            return plan_accessories(&args, g, &accessories, cx).await;
        }
        Agents::Ready if !accessories.is_empty() => {
            return start_accessories(&args, g, accessories, t0, cx).await;
        }
        _ => cx.close().await,
    }
    match agents {
        Agents::Stop(code) => Ok(ExitCode::from(code)),
        Agents::Planned { changes: true } if !accessories.is_empty() => {
            println!(
                "\nAccessories ({}): planned once the agents run; `fleet setup {}` starts them after the agents.",
                accessories.join(", "),
                args.env
            );
            Ok(ExitCode::from(2))
        }
        Agents::Planned { changes } => Ok(ExitCode::from(if changes { 2 } else { 0 })),
        Agents::Ready => Ok(ExitCode::SUCCESS),
    }
}

/// The manifest and the versions of its current sources (the accessories are images; the
/// apps' versions are needed only to resolve the environment).
fn manifest_and_versions(
    g: &Global,
) -> miette::Result<(crate::manifest::Loaded, crate::desired::Versions)> {
    let loaded = crate::manifest::load(g.file.as_deref())?;
    let (targets, _) = loaded.build_targets();
    let versions = super::versions(&loaded, &targets)?;
    Ok((loaded, versions))
}

/// The sessions with what a step gave, or its error once they are closed.
async fn or_close<T>(cx: Connected, step: miette::Result<T>) -> miette::Result<(Connected, T)> {
    match step {
        Ok(d) => Ok((cx, d)),
        Err(e) => {
            cx.close().await;
            Err(e)
        }
    }
}

/// `--plan` once the agents run: the accessories' part of `fleet plan ENV`, read through the
/// agents' step's sessions.
async fn plan_accessories(
    args: &Args,
    g: &Global,
    accessories: &[String],
    cx: Connected,
) -> miette::Result<ExitCode> {
    let resolved = manifest_and_versions(g)
        .and_then(|(loaded, versions)| Ok(loaded.resolve(&args.env, &versions)?));
    let (cx, desired) = or_close(cx, resolved).await?;
    let hosts = cx.retarget(&desired).await.into_diagnostic()?;
    let observed = hosts.observe().await;
    hosts.close().await;
    let mut plan = crate::plan::diff(&desired, &observed);
    crate::pipeline::restrict(&mut plan, &desired, accessories);
    if args.json {
        let doc = render::json(&plan);
        println!("{}", serde_json::to_string_pretty(&doc).into_diagnostic()?);
    } else {
        print!(
            "\nAccessories: {}\n{}",
            accessories.join(", "),
            render::human(&plan, false)
        );
    }
    Ok(ExitCode::from(plan.detailed_exit_code()))
}

/// The accessories converged as `fleet deploy ENV --app A --app B` does (no build: they are
/// images), with the same confirmation, report and exit code, on the agents' step's sessions.
async fn start_accessories(
    args: &Args,
    g: &Global,
    accessories: Vec<String>,
    t0: Instant,
    cx: Connected,
) -> miette::Result<ExitCode> {
    if !args.json {
        println!("\nAccessories: {}", accessories.join(", "));
    }
    let c = Converge {
        env: args.env.clone(),
        yes: args.yes,
        json: args.json,
        options: Options {
            apps: accessories,
            saved_plan: None,
            rollback: true,
            parallel: DEFAULT_PARALLEL,
            drain: Duration::from_secs(2),
            canary: None,
            verb: "setup",
        },
    };
    let resolved = manifest_and_versions(g)
        .and_then(|(loaded, versions)| super::deploy::resolve(&loaded, &versions, &c));
    let (cx, desired) = or_close(cx, resolved).await?;
    let hosts = cx.retarget(&desired).await.into_diagnostic()?;
    super::deploy::converge_on(&desired, &c, t0, hosts).await
}

async fn run_connected(cx: &Connected, args: &Args) -> miette::Result<Agents> {
    let d = &cx.desired;
    if d.agents.is_empty() {
        return Err(miette!(
            help = "add `[consul.agent]` with `servers = [\"host1\", \"host2\", \"host3\"]`, or `[accessories.NAME]` (docs/setup.md)",
            "environment `{}` has no [consul.agent] and no accessories: nothing for `fleet setup` to run",
            d.environment
        ));
    }
    let consul_address = d
        .consul
        .as_ref()
        .map(|c| c.address.clone())
        .unwrap_or_else(|| "http://127.0.0.1:8500".into());
    // With `--install-docker` (not with `--plan`), an engine that does not answer is installed
    // once the operator confirms.
    let confirm = |question: &str| {
        matches!(
            ui::confirm(args.yes, question, ui::Expect::Yes),
            Ok(ui::Confirmation::Given)
        )
    };
    let install: Option<&dyn Fn(&str) -> bool> =
        (args.install_docker && !args.plan).then_some(&confirm);
    // Each host: its engine (pinged), and its agent's URL through SSH.
    let mut reached = Vec::new();
    let mut agents = Vec::new();
    for (target, session) in cx.hosts() {
        let Some(spec) = d.agents.iter().find(|a| a.host == target.name) else {
            continue;
        };
        let docker = match session {
            Err(e) => Err(format!("cannot reach {}: {}", target.name, e.cause())),
            Ok(s) => {
                let docker =
                    setup::install::engine_or_install(s, install, &|l| eprintln!("{l}")).await;
                if docker.is_ok()
                    && let Ok(url) = s.consul_url(&consul_address).await
                {
                    agents.push((target.name.clone(), url));
                }
                docker
            }
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
        return Ok(match code {
            1 => Agents::Stop(1),
            _ => Agents::Planned { changes: code == 2 },
        });
    }
    if plan.changes() == 0 {
        return Ok(if plan.errors() > 0 {
            Agents::Stop(1)
        } else {
            Agents::Ready
        });
    }
    let question = format!("Apply this setup to {}?", d.environment);
    match ui::confirm(args.yes, &question, ui::Expect::Yes).map_err(|e| miette!("{e}"))? {
        ui::Confirmation::Given => {}
        ui::Confirmation::Refused => {
            eprintln!("Nothing was changed.");
            return Ok(Agents::Stop(1));
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
    Ok(if outcome.ok() {
        Agents::Ready
    } else {
        Agents::Stop(1)
    })
}
