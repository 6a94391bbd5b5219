//! `cargo xtask testbed image`: builds the hello test app (manifests/hello/app, committed source)
//! on the local engine as 10.200.1.1:5000/fleet-test/hello:v1 and :v2 and pushes both with the
//! testbed's registry credentials. The build context is the committed directory plus `busybox`
//! (a copy of /bin/busybox placed there at build time, gitignored); v2 is built from a copy of
//! that context under DIR/image/v2 whose VERSION file says v2, so its layers differ.
//!
//! It also pushes the Node.js base image 10.200.1.1:5000/fleet-test/node:20 (`node_image`) and
//! installs the npm packages of manifests/koa (`prepare_koa`), both cached under DIR.
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
    login(l, &user, &pass)?;
    hello_images(l)?;
    node_image(l, &user, &pass)?;
    caddy_image(l, &user, &pass)?;
    redis_image(l, &user, &pass)?;
    prepare_koa(l)?;
    Ok(())
}

fn login(l: &Layout, user: &str, pass: &str) -> Result<()> {
    std::fs::create_dir_all(docker_config(l))?;
    sh::run(&format!(
        "printf %s {} | DOCKER_CONFIG={} docker -H unix:///run/docker.sock login -u {} --password-stdin {REGISTRY} >/dev/null",
        q(pass),
        q(docker_config(l)),
        q(user)
    ))
    .context("docker login to the testbed registry failed")
}

fn hello_images(l: &Layout) -> Result<()> {
    let app = prepare_app(l)?;
    let v2 = l.path("image/v2");
    copy_dir(&app, &v2)?;
    std::fs::write(v2.join("VERSION"), "v2\n")?;
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

/// The Node.js base image, `FROM scratch`: no base image can be pulled on the test machines.
pub const NODE_REPO: &str = "fleet-test/node";
pub const NODE_TAG: &str = "20";

const NODE_DOCKERFILE: &str = "\
# node + the libraries ldd names + busybox (its applets as symlinks in /bin, and /usr/bin/env
# for `#!/usr/bin/env node` scripts such as pm2-runtime), from this machine.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
CMD [\"node\"]
";

/// The libraries a program needs, from its `ldd` output: (path in the image, source), for
/// lines such as `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and the loader's
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`.
pub fn libraries(ldd: &str) -> Vec<(String, PathBuf)> {
    ldd.lines()
        .filter_map(|line| match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        })
        .filter(|p| p.starts_with('/'))
        .map(|p| (p.to_string(), PathBuf::from(p)))
        .collect()
}

/// Copies `files` (path in the image, source) under `root`, following symlinks (ld-linux,
/// libstdc++.so.6 ...): the image gets the real files.
pub fn copy_rootfs(root: &Path, files: &[(String, PathBuf)]) -> Result<()> {
    for (dest, src) in files {
        let to = root.join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("an absolute path has a parent"))?;
        std::fs::copy(src, &to).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(())
}

/// The files of the base image: (path in the image, source on this machine). Node, every
/// library `ldd` names (with the dynamic loader), busybox and getconf.
fn node_files() -> Result<Vec<(String, PathBuf)>> {
    let node = "/usr/bin/node";
    let ldd = sh::output(&format!("ldd {node}"))
        .context("`ldd /usr/bin/node`: is Node.js installed (apt-get install nodejs)?")?;
    let mut files = vec![
        (node.to_string(), PathBuf::from(node)),
        ("/bin/busybox".to_string(), PathBuf::from("/bin/busybox")),
        // pm2 reads process CPU times with `getconf CLK_TCK` (libc only, like node).
        (
            "/usr/bin/getconf".to_string(),
            PathBuf::from("/usr/bin/getconf"),
        ),
    ];
    files.extend(libraries(&ldd));
    Ok(files)
}

/// What the base image is made of, as one line per file (path, size, mtime): a change of the
/// machine's node or libraries changes it, and the image is built again.
fn node_key(files: &[(String, PathBuf)]) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut key = String::from(NODE_DOCKERFILE);
    for (dest, src) in files {
        let m = std::fs::metadata(src).with_context(|| format!("{}", src.display()))?;
        key.push_str(&format!("{dest} {} {}\n", m.len(), m.mtime()));
    }
    Ok(key)
}

/// True when the registry has `repo:tag` (a manifest HEAD with the testbed's credentials).
fn registry_has(user: &str, pass: &str, repo: &str, tag: &str) -> bool {
    sh::ok(&format!(
        "curl -sfI -o /dev/null -u {} -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' http://{REGISTRY}/v2/{repo}/manifests/{tag}",
        q(format!("{user}:{pass}"))
    ))
}

/// Build and push 10.200.1.1:5000/fleet-test/node:20 from this machine's /usr/bin/node, unless
/// the registry has the one made from the same files (DIR/image/node.key says which).
pub fn node_image(l: &Layout, user: &str, pass: &str) -> Result<()> {
    let image = format!("{REGISTRY}/{NODE_REPO}:{NODE_TAG}");
    let files = node_files()?;
    let key = node_key(&files)?;
    let key_file = l.path("image/node.key");
    let local = docker(l, &format!("image inspect {image}")).is_ok();
    if std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str())
        && local
        && registry_has(user, pass, NODE_REPO, NODE_TAG)
    {
        println!("{image}: up to date (cached)");
        return Ok(());
    }
    let ctx = l.path("image/node");
    if ctx.exists() {
        std::fs::remove_dir_all(&ctx)?;
    }
    let root = ctx.join("rootfs");
    copy_rootfs(&root, &files)?;
    let applets = sh::output("/bin/busybox --list")?;
    for a in applets.lines().filter(|a| *a != "busybox") {
        let link = root.join("bin").join(a);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    std::os::unix::fs::symlink("../../bin/busybox", root.join("usr/bin/env"))?;
    // glibc without nsswitch.conf asks DNS before /etc/hosts (host.docker.internal is there).
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    for d in ["tmp", "usr/local/bin"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    std::fs::write(ctx.join("Dockerfile"), NODE_DOCKERFILE)?;
    docker(
        l,
        &format!("build -q -t {image} {}", q(ctx.display().to_string())),
    )
    .with_context(|| format!("building {image}"))?;
    docker(l, &format!("push -q {image}")).with_context(|| format!("pushing {image}"))?;
    std::fs::remove_dir_all(&ctx)?;
    std::fs::write(&key_file, key)?;
    println!("pushed {image}");
    Ok(())
}

/// The edge proxy's test image, `FROM scratch` with Debian's Caddy 2 (/usr/bin/caddy) and the
/// libraries `ldd` names: the equivalent of the official `caddy:2` image, which cannot be
/// pulled here.
pub const CADDY_REPO: &str = "fleet-test/caddy";
pub const CADDY_TAG: &str = "2";

const CADDY_DOCKERFILE: &str = "\
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/bin:/bin XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config
CMD [\"caddy\", \"run\", \"--resume\"]
";

/// Redis for the accessories' tests, `FROM scratch` with Debian's redis-server and the
/// libraries `ldd` names: the equivalent of the official `redis:7` image.
pub const REDIS_REPO: &str = "fleet-test/redis";
pub const REDIS_TAG: &str = "7";

const REDIS_DOCKERFILE: &str = "\
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/bin:/bin
WORKDIR /data
EXPOSE 6379
CMD [\"redis-server\", \"--protected-mode\", \"no\", \"--dir\", \"/data\"]
";

/// A test image made of one Debian binary, its libraries and empty directories.
struct BinaryImage {
    repo: &'static str,
    tag: &'static str,
    binary: &'static str,
    package: &'static str,
    dockerfile: &'static str,
    dirs: &'static [&'static str],
}

const CADDY: BinaryImage = BinaryImage {
    repo: CADDY_REPO,
    tag: CADDY_TAG,
    binary: "/usr/bin/caddy",
    package: "caddy",
    dockerfile: CADDY_DOCKERFILE,
    dirs: &["tmp", "data", "config", "etc"],
};

const REDIS: BinaryImage = BinaryImage {
    repo: REDIS_REPO,
    tag: REDIS_TAG,
    binary: "/usr/bin/redis-server",
    package: "redis-server",
    dockerfile: REDIS_DOCKERFILE,
    dirs: &["tmp", "data", "etc"],
};

/// Build and push 10.200.1.1:5000/fleet-test/caddy:2 unless the registry has the one made
/// from the same files (DIR/image/caddy.key).
pub fn caddy_image(l: &Layout, user: &str, pass: &str) -> Result<()> {
    binary_image(l, user, pass, &CADDY)
}

/// Build and push 10.200.1.1:5000/fleet-test/redis:7 (DIR/image/redis.key).
pub fn redis_image(l: &Layout, user: &str, pass: &str) -> Result<()> {
    binary_image(l, user, pass, &REDIS)
}

fn binary_image(l: &Layout, user: &str, pass: &str, b: &BinaryImage) -> Result<()> {
    let image = format!("{REGISTRY}/{}:{}", b.repo, b.tag);
    let short = b.repo.rsplit('/').next().unwrap_or(b.repo);
    let ldd = sh::output(&format!("ldd {}", b.binary)).with_context(|| {
        format!(
            "`ldd {}`: is it installed (apt-get install {})?",
            b.binary, b.package
        )
    })?;
    let mut files = vec![(b.binary.to_string(), PathBuf::from(b.binary))];
    files.extend(libraries(&ldd));
    let mut key = String::from(b.dockerfile);
    {
        use std::os::unix::fs::MetadataExt;
        for (dest, src) in &files {
            let m = std::fs::metadata(src).with_context(|| format!("{}", src.display()))?;
            key.push_str(&format!("{dest} {} {}\n", m.len(), m.mtime()));
        }
    }
    let key_file = l.path(&format!("image/{short}.key"));
    if std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str())
        && registry_has(user, pass, b.repo, b.tag)
    {
        println!("{image}: up to date (cached)");
        return Ok(());
    }
    let ctx = l.path(&format!("image/{short}"));
    if ctx.exists() {
        std::fs::remove_dir_all(&ctx)?;
    }
    let root = ctx.join("rootfs");
    copy_rootfs(&root, &files)?;
    for d in b.dirs {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    std::fs::write(ctx.join("Dockerfile"), b.dockerfile)?;
    docker(
        l,
        &format!("build -q -t {image} {}", q(ctx.display().to_string())),
    )
    .with_context(|| format!("building {image}"))?;
    docker(l, &format!("push -q {image}")).with_context(|| format!("pushing {image}"))?;
    std::fs::remove_dir_all(&ctx)?;
    std::fs::write(&key_file, key)?;
    println!("pushed {image}");
    Ok(())
}

/// The Node.js apps of manifests/koa, whose node_modules `fleet build` sends with the context.
pub const KOA_APPS: &[&str] = &["app", "client"];

/// `npm ci` for each app of manifests/koa, on this machine (the npm registry is reachable
/// from here, not from builds on the testbed's engine). Installed once per package-lock.json
/// into DIR/npm/<sha256 of the lock>, then copied into the app's directory when it differs.
pub fn prepare_koa(l: &Layout) -> Result<()> {
    for app in KOA_APPS {
        let dir = l.workspace.join("manifests/koa").join(app);
        let lock = dir.join("package-lock.json");
        let sum = sh::output(&format!("sha256sum {}", q(lock.display().to_string())))?;
        let sum = &sum[..16];
        let cache = l.path(&format!("npm/{sum}"));
        let installed = |d: &Path| std::fs::read(d.join("node_modules/.package-lock.json")).ok();
        if installed(&cache).is_none() {
            let _ = std::fs::remove_dir_all(&cache);
            std::fs::create_dir_all(&cache)?;
            for f in ["package.json", "package-lock.json"] {
                std::fs::copy(dir.join(f), cache.join(f))?;
            }
            println!("npm ci in {} (manifests/koa/{app})", cache.display());
            sh::run(&format!(
                "cd {} && npm ci --no-audit --no-fund --loglevel=error",
                q(cache.display().to_string())
            ))
            .with_context(|| format!("npm ci for manifests/koa/{app}"))?;
        }
        if installed(&dir) != installed(&cache) {
            let _ = std::fs::remove_dir_all(dir.join("node_modules"));
            sh::run(&format!(
                "cp -a {} {}",
                q(cache.join("node_modules").display().to_string()),
                q(dir.display().to_string())
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_are_the_absolute_paths_ldd_names() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3a)\n\
                   \tlibgone.so => not found\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f3b)\n";
        let got: Vec<String> = libraries(ldd).into_iter().map(|(d, _)| d).collect();
        assert_eq!(
            got,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
