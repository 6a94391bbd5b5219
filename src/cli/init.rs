//! `fleet init [--template node|static] [--name NAME] [DIR]`.
use std::path::PathBuf;
use std::process::ExitCode;

use miette::{IntoDiagnostic, WrapErr};

use super::Global;
use crate::manifest::init;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which starter to write.
    #[arg(long, short, default_value = "node", value_parser = ["node", "static"])]
    pub template: String,
    /// Project (and app) name. Default: the directory's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Where to write. Default: the current directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

pub async fn run(args: Args, _g: &Global) -> miette::Result<ExitCode> {
    let t = init::template(&args.template).expect("clap checked the name");
    let dir = std::path::absolute(&args.dir).into_diagnostic()?;
    let name = init::project_name(&args.name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }));
    let files = init::render(t, &name);
    // All or nothing: refuse before writing anything if a file is already there.
    if let Some((p, _)) = files.iter().find(|(p, _)| dir.join(p).exists()) {
        return Err(miette::miette!(
            help = "move it away, or run `fleet init` in an empty directory",
            "{} already exists; fleet init does not overwrite files",
            dir.join(p).display()
        ));
    }
    for (p, content) in &files {
        let path = dir.join(p);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).into_diagnostic()?;
        }
        std::fs::write(&path, content)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!("next: fleet validate && fleet show production");
    Ok(ExitCode::SUCCESS)
}
