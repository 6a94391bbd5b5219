//! Load + resolve time of a large manifest: 500 apps across 200 hosts.
//!
//! Run in release mode: `cargo run --release --example bench_manifest` (optionally
//! `-- APPS HOSTS ROLES`). Prints the time of each phase; not a test, the target is < 100 ms.
//!
//! Each host has one of ROLES roles (default 50: 4 hosts per role), each app runs 2 instances
//! on every host of one role: 500 apps on 200 hosts is 4000 containers, 20 per host. `-- 500
//! 200 4` is a stress case: every app on a quarter of the hosts, 50 000 containers.

use std::fmt::Write;
use std::time::Instant;

use fleet::desired::Versions;
use fleet::manifest::{self, Format};

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let apps = args.next().unwrap_or(500);
    let hosts = args.next().unwrap_or(200);
    let roles = args.next().unwrap_or(50).max(1);

    let mut src = String::from(
        "[project]\nname = \"bench\"\n\n[registry]\nserver = \"registry.example.com:5000\"\npassword = { env = \"REGISTRY_PASSWORD\" }\n\n[consul]\naddress = \"http://127.0.0.1:8500\"\n\n",
    );
    for h in 0..hosts {
        let role = format!("r{}", h % roles);
        let _ = writeln!(
            src,
            "[hosts.h{h}]\naddress = \"10.0.{}.{}\"\nuser = \"deploy\"\nroles = [\"{role}\"]\n",
            h / 250,
            h % 250 + 1
        );
    }
    for a in 0..apps {
        let role = format!("r{}", a % roles);
        // Ports far enough apart that 2 instances per app never collide on a host.
        let _ = writeln!(
            src,
            "[apps.app{a}]\nbuild = {{ context = \"apps/app{a}\" }}\nroles = [\"{role}\"]\ninstances = 2\nport = {}\nenv = {{ NODE_ENV = \"production\", SECRET = {{ env = \"S{a}\" }} }}\nhealth = {{ http = \"/health\", interval = \"5s\" }}\nlimits = {{ memory = \"128MiB\", cpus = 0.25 }}\nservice = {{ name = \"app{a}\", tags = [\"v1\"] }}\nconfig = {{ \"pool\" = \"10\" }}\n",
            10000 + a * 2
        );
    }
    src.push_str("[environments.production]\nenv = { LOG_LEVEL = \"info\" }\n[environments.production.apps.app1]\ninstances = 3\n");
    let versions: Versions = (0..apps)
        .map(|a| (format!("app{a}"), "0123456789ab".to_string()))
        .collect();

    let t0 = Instant::now();
    let loaded = manifest::load_str(
        &src,
        Format::Toml,
        "bench.toml",
        std::path::Path::new("/bench"),
    )
    .unwrap_or_else(|e| panic!("{}", manifest::render_plain(&e)));
    let t1 = Instant::now();
    let state = loaded.resolve("production", &versions).expect("resolves");
    let t2 = Instant::now();
    let instances: usize = state.hosts.iter().map(|h| h.instances.len()).sum();
    // Again, with the allocator warm: the first run also pays for the kernel handing out
    // fresh pages (expensive on VMs), which a long-running process would not.
    drop(state);
    let t3 = Instant::now();
    let again = loaded.resolve("production", &versions).expect("resolves");
    let t4 = Instant::now();
    drop(again);
    println!(
        "manifest: {apps} apps x {hosts} hosts ({roles} roles), {} KiB TOML -> {instances} instances\n  load+validate {:>8.2} ms\n  resolve       {:>8.2} ms\n  total         {:>8.2} ms\n  (resolve again, warm allocator: {:.2} ms)",
        src.len() / 1024,
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3,
        (t2 - t0).as_secs_f64() * 1e3,
        (t4 - t3).as_secs_f64() * 1e3,
    );
}
