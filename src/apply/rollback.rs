//! Rollback after a failure: each instance this deploy replaced put back from the inspect of
//! its old container, newest first, health-gated, hosts in parallel.

use std::collections::HashMap;

use std::time::Instant;

use super::context::{Ctx, Host, Step, Undo};
use super::event::ApplyEvent;
use super::instance::replace;
use crate::observe::short_id;
use crate::plan::Action;

/// Put back every instance in `undo` (newest first per host), health-gated, hosts in parallel.
pub(super) async fn roll_back(
    ctx: &Ctx<'_>,
    hosts: &[Host<'_>],
    undo: Vec<Undo>,
) -> (Vec<Step>, Vec<String>) {
    let mut by_host: HashMap<usize, Vec<Undo>> = HashMap::new();
    for u in undo {
        by_host.entry(u.host).or_default().push(u);
    }
    let results = futures_util::future::join_all(hosts.iter().map(|h| {
        let list = by_host.remove(&h.index).unwrap_or_default();
        async move {
            let mut done = Vec::new();
            let mut errors = Vec::new();
            let lost = ctx.lost.lock().unwrap().contains(&h.index);
            for u in list.into_iter().rev() {
                let host = &h.plan.name;
                let tag = u.launch.tag();
                if lost {
                    errors.push(format!(
                        "{tag} on {host}: not rolled back, the connection to {host} is lost \
                         (it runs {}, healthy; the next deploy converges it)",
                        u.new_version
                    ));
                    continue;
                }
                ctx.emit(ApplyEvent::RollBack {
                    host: host.clone(),
                    tag: tag.clone(),
                    version: u.launch.version.clone(),
                });
                let t = Instant::now();
                let regs: Vec<String> = u.new.registration.iter().cloned().collect();
                match replace(ctx, h, &u.launch, &u.new.id, &regs, &u.launch.version).await {
                    Ok(s) => done.push(Step {
                        host: host.clone(),
                        app: u.launch.app.clone(),
                        instance: Some(u.launch.instance),
                        action: Action::Replace,
                        from_version: Some(u.new_version.clone()),
                        to_version: Some(u.launch.version.clone()),
                        container: Some(short_id(&s.id).to_string()),
                        port: s.port,
                        seconds: t.elapsed().as_secs_f64(),
                        health_seconds: s.healthy_after.map(|d| d.as_secs_f64()),
                    }),
                    Err(e) => errors.push(format!("{tag} on {host}: {e}")),
                }
            }
            (done, errors)
        }
    }))
    .await;
    // The rollback's own undo records are not needed.
    ctx.undo.lock().unwrap().clear();
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for (d, e) in results {
        done.extend(d);
        errors.extend(e);
    }
    (done, errors)
}
