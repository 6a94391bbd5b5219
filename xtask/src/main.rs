//! `cargo xtask`: the project's own tasks (testbed, demo, ci, bench, man, arch).
mod arch;
mod bench;
mod bench_ansible;
mod bench_edge;
mod ci;
mod cpu;
mod deploy;
mod man;
mod procs;
mod sh;
mod testbed;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use testbed::layout::Layout;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "fleet's own tasks: testbed, demo, ci")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Local multi-host testbed: namespaces h1..hN with sshd + dockerd, a registry, Consul slots.
    Testbed {
        #[command(subcommand)]
        cmd: TestbedCmd,
    },
    /// Testbed up + images, `fleet deploy` manifests/koa to it (then again: no changes), curl it
    /// through the edge, show how to see logs, status and a config change.
    Demo(DirArg),
    /// Benchmarks, each printing ratios against a baseline of the same run: manifest (load +
    /// resolve 500 apps x 200 hosts), build (hashing, no-change push), plan and deploy (1..20 hosts),
    /// ansible (the same converge through an Ansible playbook and through fleet), edge (a
    /// one-version change on 3 hosts with and without the edge; `deploy` ends with it too).
    Bench {
        /// What to measure.
        #[arg(value_parser = ["manifest", "build", "plan", "deploy", "ansible", "edge"])]
        what: String,
        /// Host counts to measure (those above the testbed's size are skipped).
        #[arg(long, value_delimiter = ',', default_value = "1,5,10,20")]
        hosts: Vec<u32>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// The test command: testbed up + image, `cargo test --workspace`, testbed down (always),
    /// then check nothing is left; exits with the tests' code.
    Ci {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, default_value_t = 3)]
        hosts: u32,
    },
    /// Man pages, one per command and subcommand, into target/man; checks that every command got
    /// one and that groff renders each without a warning.
    Man,
    /// The import graph of src/ and xtask/src/: fails on a cycle between top-level modules or
    /// between the files of a folder (imports point one way).
    Arch,
}

#[derive(Subcommand)]
enum TestbedCmd {
    /// Start (or repair) the testbed; harmless when it already runs.
    Up {
        #[arg(long, default_value_t = 3)]
        hosts: u32,
        /// Add N bare hosts b1..bN (sshd + dockerd, no Consul agent) to the testbed that is up,
        /// and nothing else.
        #[arg(long, value_name = "N")]
        bare: Option<u32>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Show each host's sshd, engine and Consul agent, and whether ssh reaches it.
    Status(DirArg),
    /// Stop everything the testbed started (by pid file), remove namespaces, veths and mounts.
    Down {
        /// Remove only the bare hosts b1..bN (and their Consul store).
        #[arg(long)]
        bare: bool,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Build and push the test images (hello v1, v2; the node:20 base image, cached) and install
    /// manifests/koa's npm packages (cached).
    Image(DirArg),
}

#[derive(Args)]
struct DirArg {
    /// Testbed directory [default: <workspace>/target/testbed]
    #[arg(long, env = "FLEET_TESTBED")]
    dir: Option<PathBuf>,
}

impl DirArg {
    fn path(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| workspace().join("target/testbed"))
    }
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let ws = workspace();
    match cli.cmd {
        Cmd::Testbed { cmd } => match cmd {
            TestbedCmd::Up {
                bare: Some(n), dir, ..
            } => {
                let l = Layout::new(&dir.path(), &ws)?;
                testbed::ensure_root()?;
                let bin = testbed::consul_standin(&l).map_err(|e| anyhow::anyhow!(e))?;
                testbed::bare::up(&l, n, &bin)
            }
            TestbedCmd::Up { hosts, dir, .. } => {
                testbed::up(&Layout::new(&dir.path(), &ws)?, hosts)
            }
            TestbedCmd::Status(dir) => testbed::status(&Layout::existing(&dir.path(), &ws)),
            TestbedCmd::Down { bare: true, dir } => {
                testbed::bare::down(&Layout::existing(&dir.path(), &ws))
            }
            TestbedCmd::Down { dir, .. } => testbed::down(&Layout::existing(&dir.path(), &ws)),
            TestbedCmd::Image(dir) => testbed::image::image(&Layout::existing(&dir.path(), &ws)),
        },
        Cmd::Demo(dir) => deploy::demo(&Layout::new(&dir.path(), &ws)?),
        Cmd::Bench { what, hosts, dir } => {
            bench::run(&Layout::existing(&dir.path(), &ws), &what, &hosts)
        }
        Cmd::Ci { dir, hosts } => {
            let code = ci::ci(&Layout::new(&dir.path(), &ws)?, hosts)?;
            std::process::exit(code)
        }
        Cmd::Man => man::man(&ws),
        Cmd::Arch => arch::arch(&ws),
    }
}
