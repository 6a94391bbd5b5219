//! `cargo xtask testbed image`: builds the hello test app (manifests/hello/app, committed source)
//! on the local engine as 10.200.1.1:5000/fleet-test/hello:v1 and :v2 and pushes both with the
//! testbed's registry credentials. The build context is the committed directory plus `busybox`
//! (a copy of /bin/busybox placed there at build time, gitignored); v2 is built from a copy of
//! that context under DIR/image/v2 whose VERSION file says v2, so its layers differ.
use super::layout::{Layout, REGISTRY};
use crate::sh::{self, q};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub const REPO: &str = "fleet-test/hello";

/// The hello app directory, with `busybox` copied in (what both `image` and `fleet build` need).
pub fn prepare_app(l: &Layout) -> Result<PathBuf> {
    let app = l.workspace.join("manifests/hello/app");
    let bb = app.join("busybox");
    let fresh = std::fs::metadata(&bb).map(|m| m.len()).ok()
        == std::fs::metadata("/bin/busybox").map(|m| m.len()).ok();
    if !fresh {
        std::fs::copy("/bin/busybox", &bb)
            .context("cannot copy /bin/busybox into the hello app")?;
    }
    Ok(app)
}

fn docker_config(l: &Layout) -> String {
    l.path("docker-config").display().to_string()
}

/// `docker` on the local engine with the testbed's own client config (never ~/.docker).
fn docker(l: &Layout, args: &str) -> Result<String> {
    sh::output(&format!(
        "DOCKER_CONFIG={} DOCKER_BUILDKIT=0 docker -H unix:///run/docker.sock {args}",
        q(docker_config(l))
    ))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

pub fn image(l: &Layout) -> Result<()> {
    let env = std::fs::read_to_string(l.path("registry.env"))
        .with_context(|| format!("no testbed in {} (run `cargo xtask testbed up`)", l.d()))?;
    let get = |k: &str| {
        env.lines()
            .find_map(|x| x.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    let (user, pass) = (get("FLEET_REGISTRY_USER"), get("FLEET_REGISTRY_PASSWORD"));
    let app = prepare_app(l)?;
    let v2 = l.path("image/v2");
    copy_dir(&app, &v2)?;
    std::fs::write(v2.join("VERSION"), "v2\n")?;

    std::fs::create_dir_all(docker_config(l))?;
    sh::run(&format!(
        "printf %s {} | DOCKER_CONFIG={} docker -H unix:///run/docker.sock login -u {} --password-stdin {REGISTRY} >/dev/null",
        q(&pass),
        q(docker_config(l)),
        q(&user)
    ))
    .context("docker login to the testbed registry failed")?;
    for (tag, ctx) in [("v1", app.as_path()), ("v2", v2.as_path())] {
        let image = format!("{REGISTRY}/{REPO}:{tag}");
        docker(
            l,
            &format!("build -q -t {image} {}", q(ctx.display().to_string())),
        )
        .with_context(|| format!("building {image}"))?;
        docker(l, &format!("push -q {image}")).with_context(|| format!("pushing {image}"))?;
        println!("pushed {image}");
    }
    let (a, b) = (
        docker(
            l,
            &format!("image inspect -f '{{{{.Id}}}}' {REGISTRY}/{REPO}:v1"),
        )?,
        docker(
            l,
            &format!("image inspect -f '{{{{.Id}}}}' {REGISTRY}/{REPO}:v2"),
        )?,
    );
    if a == b {
        bail!("v1 and v2 of {REPO} are the same image");
    }
    Ok(())
}
