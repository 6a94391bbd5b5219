//! The man pages, one per command and subcommand (`fleet.1`, `fleet-deploy.1`,
//! `fleet-lock-status.1`, ...), from the clap definitions: `cargo xtask man` runs this with the
//! directory to write them to (target/man), then checks and renders them. Prints the name of
//! each page the command tree calls for, one a line, for that check.
use std::path::PathBuf;

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: man DIR (cargo xtask man)"),
    );
    std::fs::create_dir_all(&dir)?;
    let cmd = fleet::cli::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &dir)?;
    for page in pages(&cmd, "") {
        println!("{page}");
    }
    Ok(())
}

/// `fleet`, `fleet-validate`, ..., `fleet-lock-status`: every visible command, walked here
/// independently of clap_mangen.
fn pages(cmd: &clap::Command, parent: &str) -> Vec<String> {
    let name = if parent.is_empty() {
        cmd.get_name().to_string()
    } else {
        format!("{parent}-{}", cmd.get_name())
    };
    let mut out = vec![format!("{name}.1")];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out.extend(pages(sub, &name));
    }
    out
}
