//! What apply reports while it runs: one [`ApplyEvent`] per progress line (plain data, to the
//! `ApplyOptions::events` callback). [`ApplyEvent::host`] is who it is about (a host, or `kv`,
//! `edge`, `canary`), its `Display` the line's text, [`ApplyEvent::is_failure`] whether it
//! reports a failed instance. Rendering (lines, bars) is the caller's.

use std::fmt;
use std::time::Duration;

use crate::plan::Action;

/// One progress line of apply. `tag` is an instance as lines name it (`app#n`).
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyEvent {
    /// `kv`: config written (`first` apps before their containers, `last` apps after).
    KvWritten { put: usize, deleted: usize },
    /// `kv`: a write failed and this could not be written back (the error's text).
    KvNotRestored { error: String },
    /// `kv`: keys written back to their old value after a failed deploy.
    KvRestored { keys: usize },
    /// `canary`: these hosts converge first.
    CanaryFirst { hosts: Vec<String> },
    /// `canary`: the canary wave passed; `more` hosts follow.
    CanaryPassed { hosts: Vec<String>, more: usize },
    /// `canary`: the canary wave failed (or the lock was lost); these hosts were not started.
    CanaryNotStarted {
        lock_lost: bool,
        not_started: Vec<String>,
    },
    /// `edge`: a problem pushing the routes to the edges after the rollout.
    EdgeProblem { problem: String },
    /// An edge host's change while the edge is set up (`changes` of `crate::edge::setup`).
    EdgeChange { host: String, change: String },
    /// This environment's routes taken off an edge (no public app left).
    EdgeRoutesRemoved { host: String, routes: usize },
    /// The edges route no more to an app's retired instances (`dials`), after `took`.
    EdgesDrained {
        host: String,
        app: String,
        dials: Vec<String>,
        took: Duration,
    },
    /// The edges gave no evidence of the drain within `within`.
    NoDrainEvidence {
        host: String,
        app: String,
        dials: Vec<String>,
        within: Duration,
        error: String,
    },
    /// The host stops before its next instance: the deploy was cancelled (`reason`).
    Cancelled { host: String, reason: String },
    /// The host stops before its next instance: another instance failed.
    Halted { host: String },
    /// An instance no longer desired was removed.
    Removed { host: String, tag: String },
    /// Pulling an image.
    Pull { host: String, image: String },
    /// A new instance is being created.
    Create {
        host: String,
        tag: String,
        version: String,
    },
    /// An instance is being replaced (`from`: the old version, when known).
    Replace {
        host: String,
        tag: String,
        from: Option<String>,
        to: String,
    },
    /// A stopped instance is being started.
    Start { host: String, tag: String },
    /// The old container of an instance could not be read, so no rollback can put it back.
    UndoNotRecorded { host: String, error: String },
    /// The new container passed; the old one is deregistered and drained for `drain`.
    Draining {
        host: String,
        tag: String,
        drain: Duration,
    },
    /// Other containers of the same instance were removed.
    DuplicatesRemoved {
        host: String,
        tag: String,
        count: usize,
    },
    /// An instance converged: `action` done in `took`, health check passed after
    /// `healthy_after` (when one was waited for).
    Converged {
        host: String,
        tag: String,
        action: Action,
        took: Duration,
        healthy_after: Option<Duration>,
    },
    /// An instance failed; no `tag` when the host is at fault (the reason names the instance).
    Failed {
        host: String,
        tag: Option<String>,
        reason: String,
    },
    /// An instance is being rolled back to `version`.
    RollBack {
        host: String,
        tag: String,
        version: String,
    },
    /// Old images could not be pruned.
    PruneProblem { host: String, problem: String },
}

impl ApplyEvent {
    /// Who the line is about: a host name, or `kv`, `edge`, `canary`.
    pub fn host(&self) -> &str {
        use ApplyEvent::*;
        match self {
            KvWritten { .. } | KvNotRestored { .. } | KvRestored { .. } => "kv",
            CanaryFirst { .. } | CanaryPassed { .. } | CanaryNotStarted { .. } => "canary",
            EdgeProblem { .. } => "edge",
            EdgeChange { host, .. }
            | EdgeRoutesRemoved { host, .. }
            | EdgesDrained { host, .. }
            | NoDrainEvidence { host, .. }
            | Cancelled { host, .. }
            | Halted { host }
            | Removed { host, .. }
            | Pull { host, .. }
            | Create { host, .. }
            | Replace { host, .. }
            | Start { host, .. }
            | UndoNotRecorded { host, .. }
            | Draining { host, .. }
            | DuplicatesRemoved { host, .. }
            | Converged { host, .. }
            | Failed { host, .. }
            | RollBack { host, .. }
            | PruneProblem { host, .. } => host,
        }
    }

    /// Whether it reports a failed instance (the lines kept in view above progress bars).
    pub fn is_failure(&self) -> bool {
        matches!(self, ApplyEvent::Failed { .. })
    }
}

impl fmt::Display for ApplyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ApplyEvent::*;
        match self {
            KvWritten { put, deleted } => write!(f, "{put} put, {deleted} deleted"),
            KvNotRestored { error } => f.write_str(error),
            KvRestored { keys } => write!(f, "{keys} written back"),
            CanaryFirst { hosts } => write!(f, "{} first", hosts.join(", ")),
            CanaryPassed { hosts, more } => {
                write!(f, "passed on {}; {more} more host(s)", hosts.join(", "))
            }
            CanaryNotStarted {
                lock_lost,
                not_started,
            } => {
                let why = if *lock_lost {
                    "stopped (the deploy lock was lost)"
                } else {
                    "failed"
                };
                write!(f, "{why}: {} not started", not_started.join(", "))
            }
            EdgeProblem { problem } => f.write_str(problem),
            EdgeChange { change, .. } => write!(f, "edge: {change}"),
            EdgeRoutesRemoved { routes, .. } => write!(f, "edge: {routes} route(s) removed"),
            EdgesDrained {
                app, dials, took, ..
            } => write!(
                f,
                "{app}: edges drained {} in {}ms",
                dials.join(", "),
                took.as_millis()
            ),
            NoDrainEvidence {
                app,
                dials,
                within,
                error,
                ..
            } => write!(
                f,
                "{app}: no drain evidence from the edges within {}s for {}: {error}",
                within.as_secs(),
                dials.join(", ")
            ),
            Cancelled { reason, .. } => write!(f, "stopping: {reason}"),
            Halted { .. } => f.write_str("stopping: another instance failed"),
            Removed { tag, .. } => write!(f, "{tag} removed"),
            Pull { image, .. } => write!(f, "pull {image}"),
            Create { tag, version, .. } => write!(f, "{tag} create {version}"),
            Replace { tag, from, to, .. } => write!(
                f,
                "{tag} replace {} -> {to}",
                from.as_deref().unwrap_or("?")
            ),
            Start { tag, .. } => write!(f, "{tag} start"),
            UndoNotRecorded { error, .. } => {
                write!(f, "cannot record the old container for rollback: {error}")
            }
            Draining { tag, drain, .. } => write!(
                f,
                "{tag} healthy; draining the old container ({})",
                humantime::format_duration(*drain)
            ),
            DuplicatesRemoved { tag, count, .. } => {
                write!(f, "{tag} removed {count} duplicate(s)")
            }
            Converged {
                tag,
                action,
                took,
                healthy_after,
                ..
            } => {
                let done = match action {
                    Action::Create => "created",
                    Action::Replace => "replaced",
                    Action::Start => "started",
                    _ => "converged",
                };
                write!(f, "{tag} {done} ({:.1}s", took.as_secs_f64())?;
                if let Some(d) = healthy_after {
                    write!(f, ", healthy after {:.1}s", d.as_secs_f64())?;
                }
                f.write_str(")")
            }
            Failed {
                tag: Some(tag),
                reason,
                ..
            } => write!(f, "{tag} FAILED: {reason}"),
            Failed {
                tag: None, reason, ..
            } => write!(f, "FAILED: {reason}"),
            RollBack { tag, version, .. } => write!(f, "{tag} roll back to {version}"),
            PruneProblem { problem, .. } => f.write_str(problem),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApplyEvent::*;
    use super::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    /// Every variant once: (event, who, the line as apply printed it before it was typed).
    fn table() -> Vec<(ApplyEvent, &'static str, &'static str)> {
        let h2 = || s("h2");
        let tag = || s("app#1");
        vec![
            (KvWritten { put: 3, deleted: 1 }, "kv", "3 put, 1 deleted"),
            (
                KvNotRestored {
                    error: s("app: keys not written back: a/b"),
                },
                "kv",
                "app: keys not written back: a/b",
            ),
            (KvRestored { keys: 2 }, "kv", "2 written back"),
            (
                CanaryFirst {
                    hosts: vec![s("h1"), s("h2")],
                },
                "canary",
                "h1, h2 first",
            ),
            (
                CanaryPassed {
                    hosts: vec![s("h1")],
                    more: 2,
                },
                "canary",
                "passed on h1; 2 more host(s)",
            ),
            (
                CanaryNotStarted {
                    lock_lost: false,
                    not_started: vec![s("h2"), s("h3")],
                },
                "canary",
                "failed: h2, h3 not started",
            ),
            (
                CanaryNotStarted {
                    lock_lost: true,
                    not_started: vec![s("h2")],
                },
                "canary",
                "stopped (the deploy lock was lost): h2 not started",
            ),
            (
                EdgeProblem {
                    problem: s("e1: connection refused"),
                },
                "edge",
                "e1: connection refused",
            ),
            (
                EdgeChange {
                    host: s("e1"),
                    change: s("routes pushed"),
                },
                "e1",
                "edge: routes pushed",
            ),
            (
                EdgeRoutesRemoved {
                    host: s("e1"),
                    routes: 2,
                },
                "e1",
                "edge: 2 route(s) removed",
            ),
            (
                EdgesDrained {
                    host: h2(),
                    app: s("app"),
                    dials: vec![s("10.200.2.2:8080"), s("10.200.2.2:8081")],
                    took: Duration::from_millis(34),
                },
                "h2",
                "app: edges drained 10.200.2.2:8080, 10.200.2.2:8081 in 34ms",
            ),
            (
                NoDrainEvidence {
                    host: h2(),
                    app: s("app"),
                    dials: vec![s("10.200.2.2:8080")],
                    within: Duration::from_secs(15),
                    error: s("e1 still routes to it"),
                },
                "h2",
                "app: no drain evidence from the edges within 15s for 10.200.2.2:8080: e1 still \
                 routes to it",
            ),
            (
                Cancelled {
                    host: h2(),
                    reason: s("the deploy lock was lost"),
                },
                "h2",
                "stopping: the deploy lock was lost",
            ),
            (
                Halted { host: h2() },
                "h2",
                "stopping: another instance failed",
            ),
            (
                Removed {
                    host: h2(),
                    tag: s("old#0"),
                },
                "h2",
                "old#0 removed",
            ),
            (
                Pull {
                    host: h2(),
                    image: s("registry:5000/app:v2"),
                },
                "h2",
                "pull registry:5000/app:v2",
            ),
            (
                Create {
                    host: h2(),
                    tag: tag(),
                    version: s("v2"),
                },
                "h2",
                "app#1 create v2",
            ),
            (
                Replace {
                    host: h2(),
                    tag: tag(),
                    from: Some(s("v1")),
                    to: s("v2"),
                },
                "h2",
                "app#1 replace v1 -> v2",
            ),
            (
                Replace {
                    host: h2(),
                    tag: tag(),
                    from: None,
                    to: s("v2"),
                },
                "h2",
                "app#1 replace ? -> v2",
            ),
            (
                Start {
                    host: h2(),
                    tag: tag(),
                },
                "h2",
                "app#1 start",
            ),
            (
                UndoNotRecorded {
                    host: h2(),
                    error: s("no such container"),
                },
                "h2",
                "cannot record the old container for rollback: no such container",
            ),
            (
                Draining {
                    host: h2(),
                    tag: tag(),
                    drain: Duration::from_secs(2),
                },
                "h2",
                "app#1 healthy; draining the old container (2s)",
            ),
            (
                Draining {
                    host: h2(),
                    tag: tag(),
                    drain: Duration::from_millis(1500),
                },
                "h2",
                "app#1 healthy; draining the old container (1s 500ms)",
            ),
            (
                DuplicatesRemoved {
                    host: h2(),
                    tag: tag(),
                    count: 2,
                },
                "h2",
                "app#1 removed 2 duplicate(s)",
            ),
            (
                Converged {
                    host: h2(),
                    tag: tag(),
                    action: Action::Create,
                    took: Duration::from_millis(1240),
                    healthy_after: Some(Duration::from_millis(860)),
                },
                "h2",
                "app#1 created (1.2s, healthy after 0.9s)",
            ),
            (
                Converged {
                    host: h2(),
                    tag: tag(),
                    action: Action::Replace,
                    took: Duration::from_millis(3040),
                    healthy_after: None,
                },
                "h2",
                "app#1 replaced (3.0s)",
            ),
            (
                Converged {
                    host: h2(),
                    tag: tag(),
                    action: Action::Start,
                    took: Duration::from_millis(500),
                    healthy_after: None,
                },
                "h2",
                "app#1 started (0.5s)",
            ),
            (
                Converged {
                    host: h2(),
                    tag: tag(),
                    action: Action::Unchanged,
                    took: Duration::from_millis(100),
                    healthy_after: None,
                },
                "h2",
                "app#1 converged (0.1s)",
            ),
            (
                Failed {
                    host: h2(),
                    tag: Some(tag()),
                    reason: s("health check failed"),
                },
                "h2",
                "app#1 FAILED: health check failed",
            ),
            (
                Failed {
                    host: h2(),
                    tag: None,
                    reason: s("connection lost while starting app#1 (10.200.2.2)"),
                },
                "h2",
                "FAILED: connection lost while starting app#1 (10.200.2.2)",
            ),
            (
                RollBack {
                    host: h2(),
                    tag: tag(),
                    version: s("v1"),
                },
                "h2",
                "app#1 roll back to v1",
            ),
            (
                PruneProblem {
                    host: h2(),
                    problem: s("reading the image records: gone"),
                },
                "h2",
                "reading the image records: gone",
            ),
        ]
    }

    #[test]
    fn each_event_renders_as_the_line_apply_printed() {
        for (e, who, line) in table() {
            assert_eq!(e.to_string(), line, "{e:?}");
            assert_eq!(e.host(), who, "{e:?}");
        }
    }

    #[test]
    fn only_failed_instances_are_failures() {
        for (e, _, line) in table() {
            let failed = matches!(e, Failed { .. });
            assert_eq!(e.is_failure(), failed, "{e:?}");
            // What the renderer tested before the events were typed.
            assert_eq!(e.is_failure(), line.contains("FAILED"), "{e:?}");
        }
    }
}
