//! Wall time of a no-op `fleet plan` against 1, 5, 10, 20 testbed hosts (or the counts given),
//! and the ratio largest / 1 host. `cargo xtask bench plan` wraps this:
//!
//!     FLEET_TESTBED=/work/tb cargo run --example bench_plan -- 1 5 10 20
//!
//! Counts above the testbed's host count are capped. Each count is planned 3 times; the best
//! time is reported (the first run also warms ssh's caches).

use std::path::PathBuf;
use std::time::Duration;

use fleet::desired::{DesiredHost, DesiredState, HostTarget};
use fleet::host::ConnectOptions;
use fleet::plan::live::plan_live;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir =
        PathBuf::from(std::env::var("FLEET_TESTBED").unwrap_or_else(|_| "target/testbed".into()));
    let available: usize = std::fs::read_to_string(dir.join("hosts"))?.trim().parse()?;
    let mut counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if counts.is_empty() {
        counts = vec![1, 5, 10, 20];
    }
    let mut results = Vec::new();
    for want in counts {
        let n = want.min(available);
        let desired = DesiredState {
            project: "bench".into(),
            environment: "noop".into(),
            hosts: (1..=n)
                .map(|i| DesiredHost {
                    target: HostTarget {
                        name: format!("h{i}"),
                        address: format!("10.200.{i}.2"),
                        user: Some("root".into()),
                        port: Some(22),
                        identity_file: Some(dir.join("id_ed25519").display().to_string()),
                        docker_socket: "/run/docker.sock".into(),
                        roles: vec![],
                    },
                    instances: vec![],
                })
                .collect(),
            apps: vec![],
            consul: None,
            registry: None,
            hooks: Default::default(),
        };
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let opts = ConnectOptions {
                ssh_config: Some(dir.join("ssh_config")),
                ..ConnectOptions::default()
            };
            let (plan, _, t) = plan_live(&desired, &opts, 32).await?;
            if !plan.faults.is_empty() || plan.has_changes() {
                return Err(format!("not a clean no-op plan: {:?}", plan.faults).into());
            }
            eprintln!(
                "  {n:>2} hosts: connect {:>6.0?} observe {:>6.0?} close {:>6.0?} total {:>6.0?}",
                t.connect, t.observe, t.close, t.total
            );
            best = best.min(t.total);
        }
        println!("plan, {n:>2} hosts: {:.3} s", best.as_secs_f64());
        results.push((n, best));
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        println!(
            "ratio {} hosts / {} host: {:.2}",
            last.0,
            first.0,
            last.1.as_secs_f64() / first.1.as_secs_f64()
        );
    }
    Ok(())
}
