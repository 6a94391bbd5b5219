//! Benchmark of `fleet build`'s fast paths (wired as `cargo xtask bench build`):
//! 1. hashing a 200 MB context (the content tag);
//! 2. a no-change `build --push` of 10 apps against the testbed registry (everything
//!    present: 10 content tags + 10 manifest HEADs, nothing built). Target: under 1 s.
//!
//! Run: `cargo run --release --example bench_build [-- --mb 200 --apps 10]`.
//! Needs `$FLEET_TESTBED/READY` (default target/testbed) for part 2; part 1 runs anywhere.
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fleet::build::{self, Options};
use fleet::desired::{BuildSpec, BuildTarget, RegistryTarget, SecretRef};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spec(ctx: &Path) -> BuildSpec {
    BuildSpec {
        context: ctx.to_path_buf(),
        dockerfile: "Dockerfile".into(),
        args: BTreeMap::new(),
        target: None,
    }
}

fn main() {
    let mb = arg("--mb", 200);
    let apps = arg("--apps", 10);
    let tmp = tempfile::tempdir().unwrap();

    // 1. Hash a context of `mb` MB in 1 MB files (pseudo-random bytes, not compressible).
    let big = tmp.path().join("big");
    fs::create_dir_all(big.join("data")).unwrap();
    fs::write(big.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..mb {
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        fs::File::create(big.join(format!("data/{i:04}.bin")))
            .unwrap()
            .write_all(&chunk)
            .unwrap();
    }
    let t = Instant::now();
    let tag = build::content_tag(&spec(&big)).unwrap();
    let hash = t.elapsed();
    println!(
        "hash {mb} MB context: {:.3} s ({:.0} MB/s), tag {tag}",
        hash.as_secs_f64(),
        mb as f64 / hash.as_secs_f64()
    );
    fs::remove_dir_all(&big).unwrap();

    // 2. No-change build --push of `apps` apps.
    let tb =
        PathBuf::from(std::env::var("FLEET_TESTBED").unwrap_or_else(|_| "target/testbed".into()));
    if !tb.join("READY").exists() {
        println!("no-change build: skipped (no testbed at {})", tb.display());
        return;
    }
    let env = fs::read_to_string(tb.join("registry.env")).unwrap();
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .trim()
            .to_string()
    };
    let pw = tmp.path().join("pw");
    fs::write(&pw, get("FLEET_REGISTRY_PASSWORD")).unwrap();
    let registry = RegistryTarget {
        server: get("FLEET_REGISTRY"),
        username: Some(get("FLEET_REGISTRY_USER")),
        password: Some(SecretRef::File(pw.display().to_string().into())),
        insecure: true, // the testbed registry speaks plain HTTP
    };
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let targets: Vec<BuildTarget> = (0..apps)
        .map(|i| {
            let ctx = tmp.path().join(format!("app{i}"));
            fs::create_dir_all(ctx.join("www")).unwrap();
            fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
            fs::write(
                ctx.join("Dockerfile"),
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n",
            )
            .unwrap();
            // New content every run, so the first build really builds and pushes: the baseline
            // the no-change run is compared with.
            fs::write(
                ctx.join("www/index.html"),
                format!("bench app {i} run {run}\n"),
            )
            .unwrap();
            BuildTarget {
                app: format!("app{i}"),
                repository: format!("{}/fleet-bench/app{i}", registry.server),
                build: spec(&ctx),
            }
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = Options {
        push: true,
        jobs: 2,
        ..Options::default()
    };
    let t = Instant::now();
    let first = rt
        .block_on(build::run(&targets, Some(&registry), &opts))
        .unwrap();
    let first_t = t.elapsed();
    let built = first.iter().filter(|o| o.built).count();
    let t = Instant::now();
    let second = rt
        .block_on(build::run(&targets, Some(&registry), &opts))
        .unwrap();
    let nochange = t.elapsed();
    assert!(second.iter().all(|o| o.present && !o.built && !o.pushed));
    println!(
        "first build --push of {apps} apps: {:.3} s ({built} built)",
        first_t.as_secs_f64()
    );
    println!(
        "no-change / first: {:.3}",
        nochange.as_secs_f64() / first_t.as_secs_f64()
    );
    println!(
        "no-change build --push of {apps} apps: {:.3} s (target < 1 s: {})",
        nochange.as_secs_f64(),
        if nochange.as_secs_f64() < 1.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
