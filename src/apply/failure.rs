//! Recording a failed instance: the failure (or the host's fault, and what it leaves), the
//! event, and the stop of every rollout.

use std::sync::atomic::Ordering;

use super::context::{Ctx, Failure, Host};
use super::event::ApplyEvent;
use super::fault::{HostFault, diagnose};
use crate::desired::InstanceSpec;

/// Records that instance `spec` failed on `h` (see [`fail`]).
pub(super) async fn fail_spec(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    spec: &InstanceSpec,
    reason: String,
    logs: Vec<String>,
) {
    fail(
        ctx,
        h,
        &spec.app,
        spec.instance,
        &spec.version,
        reason,
        logs,
    )
    .await;
}

/// Records that instance `app#instance` (to `version`) failed on `h`, and stops the rollout.
/// When the host itself is at fault (SSH lost, engine or agent down), the failure says so and
/// what the instance was doing, instead of the step's own error.
pub(super) async fn fail(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    app: &str,
    instance: u32,
    version: &str,
    reason: String,
    logs: Vec<String>,
) {
    ctx.stop.store(true, Ordering::SeqCst);
    let host = &h.plan.name;
    let tag = format!("{app}#{instance}");
    let mut f = Failure {
        host: host.clone(),
        app: app.to_string(),
        instance: Some(instance),
        version: Some(version.to_string()),
        reason,
        logs,
        ..Default::default()
    };
    if let Some(fault) = diagnose(h).await {
        let phase = ctx.phase_of(h, &tag);
        tracing::debug!(
            "{host}: {tag} failed ({}); the host is at fault: {fault:?}",
            f.reason
        );
        f.reason = fault.reason(&phase.doing(&tag), &h.plan.address);
        f.fault = Some(fault.kind());
        f.left = Some(phase.left(host, &tag));
        if matches!(fault, HostFault::Lost(_)) {
            ctx.lost.lock().unwrap().insert(h.index);
        }
        ctx.emit(ApplyEvent::Failed {
            host: host.clone(),
            tag: None,
            reason: f.reason.clone(),
        });
    } else {
        ctx.emit(ApplyEvent::Failed {
            host: host.clone(),
            tag: Some(tag),
            reason: f.reason.clone(),
        });
    }
    ctx.failures.lock().unwrap().push(f);
}
