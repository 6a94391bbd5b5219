//! The deploy pipeline as one type: [`Deployment`] takes the deploy lock (while the SSH
//! connections open), observes, plans, asks for confirmation (a callback of the caller), runs
//! the `pre_deploy` hooks, records the release, applies, records its outcome, runs the
//! `post_deploy` hooks and releases the lock on every path. `fleet deploy` and `fleet rollback`
//! run it; [`Locked`] (the lock step alone) is shared with restart / stop / start / destroy.
//!
//! Progress is reported as [`Event`]s (plain data, to a callback); the result is typed
//! ([`Finished`], [`PipelineError`]). Rendering (lines, bars, JSON) is the caller's.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::apply::ApplyEvent;
use crate::apply::deploy::{ApplyError, ApplyOptions, Report};
use crate::desired::DesiredState;
use crate::host::ConnectOptions;
use crate::manifest::secret::SecretError;
use crate::observe::Connected;
use crate::plan::saved::{SavedPlan, SavedPlanError};
use crate::plan::{Action, KvAction, Plan, ServiceAction, diff};
use crate::release::hooks::{self, HookError, HookKind};
use crate::release::ledger::{Release, ReleaseConfig, ReleaseOutcome};
use crate::release::lock::{DeployLock, Holder, LockError, Store};

/// How a deployment runs (deploy and rollback).
#[derive(Clone, Debug)]
pub struct Options {
    /// Converge only these apps (`--app`); empty: all.
    pub apps: Vec<String>,
    /// Apply this saved plan; refused if the hosts or the manifest changed since.
    pub saved_plan: Option<PathBuf>,
    /// Roll back what was replaced when an instance fails.
    pub rollback: bool,
    pub parallel: usize,
    pub drain: Duration,
    /// Canary hosts; `None`: the environment's.
    pub canary: Option<usize>,
    /// What the lock and the ledger record as the summary prefix (`deploy`, `rollback`).
    pub verb: &'static str,
}

/// What a deployment reports while it runs, in this order.
#[derive(Debug)]
pub enum Event<'a> {
    /// The lock was taken over from a process that no longer runs on this machine.
    TookOver { env: &'a str, from: &'a Holder },
    /// Some hosts could not be read (the plan carries the faults); the deployment stops.
    Unreadable(&'a Plan),
    /// The plan to apply (restricted to the selected apps), before confirmation.
    Planned(&'a Plan),
    /// The plan's summary could not be written into the lock (the deployment goes on).
    LockSummary(String),
    /// A note on the release ledger.
    Ledger(String),
    /// The rollout starts: per-host progress follows.
    ApplyStarted,
    /// Progress of the rollout (on a host, or `kv`, `edge`, `canary`: `ApplyEvent::host`).
    Apply(&'a ApplyEvent),
    /// The rollout ended (before the report).
    ApplyFinished,
    /// The rollout's report, before the `post_deploy` hooks run.
    Applied(&'a Report),
    /// The lock could not be released (it expires by itself).
    LockNotReleased(String),
}

/// Where events go.
pub type Sink = Arc<dyn Fn(Event<'_>) + Send + Sync>;

/// The caller's answer to "apply this plan?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Apply,
    Decline,
    /// There is nowhere to ask (no terminal, no `--yes`).
    NoTerminal,
}

/// How a deployment ended (without an error).
#[derive(Debug)]
pub enum Outcome {
    /// The plan changed nothing.
    Unchanged,
    /// The caller declined the plan; nothing was changed.
    Declined,
    /// The plan was applied (`report.ok()` says whether every instance passed).
    Applied {
        report: Report,
        release: Option<u64>,
        outcome: ReleaseOutcome,
    },
}

/// What a deployment returns.
#[derive(Debug)]
pub struct Finished {
    pub plan: Plan,
    /// The version of every app of the desired state.
    pub versions: BTreeMap<String, String>,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot reach the deploy lock of {env}: {source}")]
    LockUnreachable { env: String, source: LockError },
    /// Someone else holds the lock.
    #[error("{source}")]
    Held { env: String, source: LockError },
    #[error("cannot take the deploy lock of {env}: {source}")]
    Lock { env: String, source: LockError },
    #[error("{0}")]
    Observe(String),
    #[error("cannot deploy: {} host(s) could not be read:\n  {}", .0.len(), .0.join("\n  "))]
    Unreadable(Vec<String>),
    #[error(transparent)]
    SavedPlan(#[from] SavedPlanError),
    #[error("no terminal to confirm the deploy on")]
    NoTerminal,
    /// Asking for confirmation failed (reading the answer).
    #[error(transparent)]
    Confirm(std::io::Error),
    #[error("the deploy lock of {0} was lost before the rollout started; nothing was changed")]
    LockLost(String),
    #[error("{0}")]
    PreDeploy(HookError),
    #[error("{0}")]
    Apply(ApplyError),
    /// The release is applied and recorded as succeeded; only the hook failed.
    #[error("{0}")]
    PostDeploy(HookError),
}

/// An environment's deploy lock with its store, held while a command changes what runs
/// (deploy, rollback, restart, stop, start, destroy), so two of them never race. Release it
/// with [`Locked::release`] on every path.
pub struct Locked {
    pub store: Store,
    pub lock: DeployLock,
}

impl Locked {
    /// Take the lock of `desired`'s environment for `what` (the holder's summary); a lock held
    /// by someone else is [`PipelineError::Held`], naming them and since when.
    pub async fn take(desired: &DesiredState, what: &str) -> Result<Locked, PipelineError> {
        let env = &desired.environment;
        let store = Store::open(desired, &ConnectOptions::default())
            .await
            .map_err(|source| PipelineError::LockUnreachable {
                env: env.clone(),
                source,
            })?;
        match store.acquire(Holder::current(), what).await {
            Ok(lock) => Ok(Locked { store, lock }),
            Err(e) => {
                store.close().await;
                Err(match e {
                    source @ LockError::Held { .. } => PipelineError::Held {
                        env: env.clone(),
                        source,
                    },
                    source => PipelineError::Lock {
                        env: env.clone(),
                        source,
                    },
                })
            }
        }
    }

    /// Release the lock and close the store; an error means the lock expires by itself.
    pub async fn release(self) -> Result<(), LockError> {
        let r = self.lock.release().await;
        self.store.close().await;
        r
    }
}

/// The open sessions of a deployment's hosts.
type Hosts<'d> = Connected<&'d DesiredState>;

/// One run of the pipeline on a resolved desired state.
pub struct Deployment<'a> {
    pub desired: &'a DesiredState,
    pub options: &'a Options,
    pub events: Sink,
    /// When the command started (for the timing traces).
    pub started: Instant,
}

impl<'a> Deployment<'a> {
    fn emit(&self, e: Event<'_>) {
        (self.events)(e)
    }

    /// Connect to every host (the Consul token read first).
    async fn open(&self) -> Result<Hosts<'a>, SecretError> {
        Connected::open(
            self.desired,
            ConnectOptions::default(),
            self.options.parallel,
        )
        .await
    }

    /// The whole pipeline: the lock before anything else touches a host (a second deploy is
    /// refused at once); connecting touches nothing, so the connections open meanwhile.
    pub async fn run(
        &self,
        confirm: impl FnOnce(&Plan) -> std::io::Result<Answer>,
    ) -> Result<Finished, PipelineError> {
        let what = format!("{}: planning", self.options.verb);
        let (locked, hosts) = tokio::join!(Locked::take(self.desired, &what), self.open());
        tracing::info!(
            "connected and locked after {:.3}s",
            self.started.elapsed().as_secs_f64()
        );
        self.when_locked(locked, hosts, confirm).await
    }

    /// The pipeline on sessions already open (`setup` has them from its agents' step): the
    /// lock first, then as `run`.
    pub async fn run_on(
        &self,
        hosts: Hosts<'a>,
        confirm: impl FnOnce(&Plan) -> std::io::Result<Answer>,
    ) -> Result<Finished, PipelineError> {
        let what = format!("{}: planning", self.options.verb);
        let locked = Locked::take(self.desired, &what).await;
        self.when_locked(locked, Ok(hosts), confirm).await
    }

    /// Go on once the lock was asked for: with it, the pipeline; without it, the sessions
    /// closed and the lock's error.
    async fn when_locked(
        &self,
        locked: Result<Locked, PipelineError>,
        hosts: Result<Hosts<'a>, SecretError>,
        confirm: impl FnOnce(&Plan) -> std::io::Result<Answer>,
    ) -> Result<Finished, PipelineError> {
        match locked {
            Ok(locked) => {
                self.took_over(&locked);
                self.run_with(locked, hosts, confirm).await
            }
            Err(e) => {
                if let Ok(hosts) = hosts {
                    hosts.close().await;
                }
                Err(e)
            }
        }
    }

    /// The pipeline with the lock already held (a rollback reads the ledger under it first).
    pub async fn run_locked(
        &self,
        locked: Locked,
        confirm: impl FnOnce(&Plan) -> std::io::Result<Answer>,
    ) -> Result<Finished, PipelineError> {
        let hosts = self.open().await;
        self.run_with(locked, hosts, confirm).await
    }

    fn took_over(&self, locked: &Locked) {
        if let Some(from) = locked.lock.took_over() {
            self.emit(Event::TookOver {
                env: &self.desired.environment,
                from,
            });
        }
    }

    /// With the sessions open (or the token unreadable); closes them and releases the lock on
    /// every path.
    async fn run_with(
        &self,
        locked: Locked,
        hosts: Result<Hosts<'a>, SecretError>,
        confirm: impl FnOnce(&Plan) -> std::io::Result<Answer>,
    ) -> Result<Finished, PipelineError> {
        let Locked { store, mut lock } = locked;
        let result = match &hosts {
            Ok(hosts) => self.converge(hosts, &store, &mut lock, confirm).await,
            Err(e) => Err(PipelineError::Observe(e.to_string())),
        };
        if let Ok(hosts) = hosts {
            hosts.close().await;
        }
        if let Err(e) = (Locked { store, lock }).release().await {
            self.emit(Event::LockNotReleased(e.to_string()));
        }
        result
    }

    async fn converge(
        &self,
        hosts: &Hosts<'_>,
        store: &Store,
        lock: &mut DeployLock,
        confirm: impl FnOnce(&Plan) -> std::io::Result<Answer>,
    ) -> Result<Finished, PipelineError> {
        let desired = self.desired;
        let o = self.options;
        let observed = hosts.observe().await;
        tracing::info!(
            "observed after {:.3}s",
            self.started.elapsed().as_secs_f64()
        );
        let mut plan = diff(desired, &observed);
        if !plan.faults.is_empty() {
            self.emit(Event::Unreadable(&plan));
            return Err(PipelineError::Unreadable(
                plan.faults
                    .iter()
                    .map(|f| format!("{} ({}): {}", f.host, f.address, f.message))
                    .collect(),
            ));
        }
        if let Some(path) = &o.saved_plan {
            SavedPlan::load(path)?.check(desired, &observed)?;
        }
        restrict(&mut plan, desired, &o.apps);
        self.emit(Event::Planned(&plan));
        let versions: BTreeMap<String, String> = desired
            .apps
            .iter()
            .map(|a| (a.name.clone(), a.version.clone()))
            .collect();
        let finished = |plan, outcome| Finished {
            plan,
            versions: versions.clone(),
            outcome,
        };
        if !plan.has_changes() {
            self.record_unchanged(store, lock, &versions).await;
            return Ok(finished(plan, Outcome::Unchanged));
        }
        match confirm(&plan).map_err(PipelineError::Confirm)? {
            Answer::Apply => {}
            Answer::Decline => return Ok(finished(plan, Outcome::Declined)),
            Answer::NoTerminal => return Err(PipelineError::NoTerminal),
        }
        let s = plan.summary();
        let summary = format!(
            "{}: {} create, {} replace, {} remove, {} start",
            o.verb, s.create, s.replace, s.remove, s.start
        );
        if let Err(e) = lock.set_summary(&summary).await {
            self.emit(Event::LockSummary(format!(
                "could not write the plan into the lock: {e}"
            )));
        }
        let lost = lock.lost_flag();
        if lost.load(Ordering::SeqCst) {
            return Err(PipelineError::LockLost(desired.environment.clone()));
        }
        let changed = changed_apps(&plan, desired);
        let hook_env = hooks::env_for(&desired.project, &desired.environment, &versions, &changed);
        hooks::run_all(HookKind::PreDeploy, &desired.hooks.pre_deploy, &hook_env)
            .await
            .map_err(PipelineError::PreDeploy)?;
        match store.close_interrupted().await {
            Ok(ids) if !ids.is_empty() => self.emit(Event::Ledger(format!(
                "releases {ids:?} were interrupted (fleet was killed): marked failed"
            ))),
            Ok(_) => {}
            Err(e) => self.emit(Event::Ledger(format!("could not read the ledger: {e}"))),
        }
        let release = match store
            .append_release(
                Release::begin(lock.holder(), versions.clone(), &summary)
                    .with_config(ReleaseConfig::of(desired)),
            )
            .await
        {
            Ok(r) => {
                self.emit(Event::Ledger(format!("release {} ({})", r.id, r.outcome)));
                Some(r.id)
            }
            Err(e) => {
                self.emit(Event::Ledger(format!("could not record the release: {e}")));
                None
            }
        };
        self.emit(Event::ApplyStarted);
        let sink = self.events.clone();
        let opts = ApplyOptions {
            parallel: o.parallel,
            rollback: o.rollback,
            drain: o.drain,
            canary: o.canary.unwrap_or(desired.canary),
            consul_token: hosts.consul_token.clone(),
            events: Some(Arc::new(move |e: &ApplyEvent| sink(Event::Apply(e)))),
            cancel: Some(Arc::new(move || {
                lost.load(Ordering::SeqCst).then(|| {
                    "the deploy lock was lost (released with `fleet lock release`, or not renewed \
                     in time); another deploy may hold it now"
                        .to_string()
                })
            })),
            ..Default::default()
        };
        tracing::info!(
            "apply starts after {:.3}s",
            self.started.elapsed().as_secs_f64()
        );
        let report = crate::apply::apply(&plan, &hosts.open_sessions(), &opts).await;
        tracing::info!(
            "apply done after {:.3}s",
            self.started.elapsed().as_secs_f64()
        );
        self.emit(Event::ApplyFinished);
        let outcome = match &report {
            Ok(r) => outcome_of(r),
            Err(_) => ReleaseOutcome::Failed,
        };
        if let Some(id) = release
            && let Err(e) = store.update_release(id, outcome).await
        {
            self.emit(Event::Ledger(format!(
                "could not record release {id} as {outcome}: {e}"
            )));
        }
        let report = report.map_err(PipelineError::Apply)?;
        self.emit(Event::Applied(&report));
        if report.ok() {
            let mut post_env = hook_env;
            post_env.push(("FLEET_OUTCOME".into(), outcome.to_string()));
            if let Some(id) = release {
                post_env.push(("FLEET_RELEASE".into(), id.to_string()));
            }
            hooks::run_all(HookKind::PostDeploy, &desired.hooks.post_deploy, &post_env)
                .await
                .map_err(PipelineError::PostDeploy)?;
        }
        Ok(finished(
            plan,
            Outcome::Applied {
                report,
                release,
                outcome,
            },
        ))
    }

    /// A deploy that changes nothing still says which versions run, when the ledger does not
    /// say so already (the first deploy of an existing environment, or after a failed deploy):
    /// that is what `fleet rollback` returns to later.
    async fn record_unchanged(
        &self,
        store: &Store,
        lock: &DeployLock,
        versions: &BTreeMap<String, String>,
    ) {
        let list = match store.releases().await {
            Ok(l) => l,
            Err(e) => {
                self.emit(Event::Ledger(format!(
                    "cannot read the release ledger: {e}"
                )));
                return;
            }
        };
        let config = ReleaseConfig::of(self.desired);
        if list.first().is_some_and(|r| {
            r.outcome == ReleaseOutcome::Succeeded && &r.versions == versions && r.config == config
        }) {
            return;
        }
        let mut r = Release::begin(
            lock.holder(),
            versions.clone(),
            &format!("{}: no changes", self.options.verb),
        )
        .with_config(config);
        r.outcome = ReleaseOutcome::Succeeded;
        r.finished = Some(r.started.clone());
        if let Err(e) = store.append_release(r).await {
            self.emit(Event::Ledger(format!("could not record the release: {e}")));
        }
    }
}

/// Keep only the changes of `apps` in the plan (`--app`): their instances, registrations and
/// KV config. The edge's changes stay whole: apply converges the environment's edge config as
/// one (`edge::setup`, every route of the environment), so dropping another app's route change
/// here would hide what apply does.
pub fn restrict(plan: &mut Plan, d: &DesiredState, apps: &[String]) {
    if apps.is_empty() {
        return;
    }
    for h in &mut plan.hosts {
        h.instances.retain(|i| apps.contains(&i.app));
        h.services.retain(|s| apps.contains(&s.app));
    }
    let keys: Vec<String> = d
        .apps
        .iter()
        .filter(|a| apps.contains(&a.name))
        .map(|a| format!("{}/{}/{}/", d.project, d.environment, a.name))
        .collect();
    plan.kv
        .retain(|k| keys.iter().any(|p| k.key.starts_with(p)));
}

/// The apps a plan changes (instances, registrations or KV config): `FLEET_APPS` of the hooks.
fn changed_apps(plan: &Plan, d: &DesiredState) -> Vec<String> {
    let mut apps = std::collections::BTreeSet::new();
    for h in &plan.hosts {
        for i in &h.instances {
            if i.action != Action::Unchanged {
                apps.insert(i.app.clone());
            }
        }
        for s in &h.services {
            if s.action != ServiceAction::Unchanged {
                apps.insert(s.app.clone());
            }
        }
    }
    for k in &plan.kv {
        if k.action != KvAction::Unchanged {
            if let Some(app) = k.app(&d.project, &d.environment) {
                apps.insert(app.to_string());
            }
        }
    }
    apps.into_iter().collect()
}

/// What the ledger records for a finished apply.
pub fn outcome_of(report: &Report) -> ReleaseOutcome {
    if report.ok() {
        ReleaseOutcome::Succeeded
    } else if !report.rolled_back.is_empty() && report.rollback_errors.is_empty() {
        ReleaseOutcome::RolledBack
    } else {
        ReleaseOutcome::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_hosts_are_listed_one_a_line() {
        let e =
            PipelineError::Unreadable(vec!["h1 (10.0.0.1): refused".into(), "h2 (x): y".into()]);
        assert_eq!(
            e.to_string(),
            "cannot deploy: 2 host(s) could not be read:\n  h1 (10.0.0.1): refused\n  h2 (x): y"
        );
    }

    #[test]
    fn a_report_without_failures_is_a_succeeded_release() {
        assert_eq!(outcome_of(&Report::default()), ReleaseOutcome::Succeeded);
    }

    #[test]
    fn a_failure_is_rolled_back_only_when_everything_was_put_back() {
        let failed = Report {
            failures: vec![crate::apply::Failure::default()],
            ..Default::default()
        };
        assert_eq!(
            outcome_of(&failed),
            ReleaseOutcome::Failed,
            "nothing put back"
        );
        let step = crate::apply::Step {
            host: "h1".into(),
            app: "web".into(),
            instance: Some(1),
            action: Action::Replace,
            from_version: Some("v2".into()),
            to_version: Some("v1".into()),
            container: None,
            port: None,
            seconds: 1.0,
            health_seconds: None,
        };
        let back = Report {
            rolled_back: vec![step],
            ..failed.clone()
        };
        assert_eq!(outcome_of(&back), ReleaseOutcome::RolledBack);
        // A host lost in the middle cannot be put back: the release is failed, not rolled back.
        let partly = Report {
            rollback_errors: vec!["web#1 on h2: not rolled back".into()],
            ..back
        };
        assert_eq!(outcome_of(&partly), ReleaseOutcome::Failed);
    }

    /// `--app web` keeps web's instances, registrations and KV keys, nothing of `worker`; the
    /// apps a plan changes are what the hooks get as `FLEET_APPS`.
    #[test]
    fn an_app_selection_keeps_only_that_apps_changes() {
        let mut d = crate::plan::fixtures::desired();
        d.apps[1]
            .config
            .insert("shop/prod/worker/queue".into(), "jobs".into());
        let plan = diff(&d, &crate::plan::fixtures::empty(&d));
        assert_eq!(plan.kv.len(), 3, "{:?}", plan.kv);
        assert_eq!(changed_apps(&plan, &d), ["web", "worker"]);
        let mut only = plan.clone();
        restrict(&mut only, &d, &["web".to_string()]);
        for h in &only.hosts {
            assert!(h.instances.iter().all(|i| i.app == "web"), "{h:?}");
            assert!(h.services.iter().all(|s| s.app == "web"), "{h:?}");
            assert_eq!(h.instances.len(), 2);
        }
        assert_eq!(only.kv.len(), 2, "web's two keys: {:?}", only.kv);
        assert!(only.kv.iter().all(|k| k.key.starts_with("shop/prod/web/")));
        assert_eq!(changed_apps(&only, &d), ["web"]);
        // No selection: the plan as it was.
        let mut all = plan.clone();
        restrict(&mut all, &d, &[]);
        assert_eq!(changed_apps(&all, &d), changed_apps(&plan, &d));
        // Nothing to change: no app.
        let none = diff(&d, &crate::plan::fixtures::deployed(&d));
        assert!(changed_apps(&none, &d).is_empty());
    }
}
