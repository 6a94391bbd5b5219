//! How apply carries a plan out, decided here with the plan (Terraform's rule: the actions of
//! an apply are described entirely by the plan's changes). `diff` gives each instance change
//! its [`Rollout`] as it makes the change (the full spec with every label, its duplicates, the
//! registrations of its slot, the order of the replace) and the plan its [`ApplyContext`]
//! (registry, agent, edge, per-app settings); apply takes the plan and the host sessions,
//! nothing else.
//!
//! None of it is shown or saved: a saved plan is applied only when the manifest and the hosts
//! are what it was computed from (`saved.rs`), so `diff` computes the same rollout again.

use std::time::Duration;

use crate::desired::{
    ConfigOrder, ConsulTarget, DesiredEdge, DesiredHost, DesiredState, InstanceSpec, RegistryTarget,
};
use crate::identity::fields::{FIELDS_LABEL, label_value};
use crate::identity::labels;
use crate::observe::ObservedHost;

use super::{Action, ContainerRef, HostPlan, InstanceChange, ServiceAction, ServiceChange};

/// The order of the steps on one desired instance slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// No container yet: start one, register it, wait for its gate.
    Create,
    /// The new container beside the old, gated, then the old deregistered, drained, stopped
    /// (an auto host port: both can run at once).
    StartThenRetire,
    /// The old container deregistered, drained and stopped first, then the new one (a fixed
    /// host port, or an accessory whose volume two containers must not share); the old is
    /// started again if the new one fails.
    RetireThenStart,
    /// The right container, stopped: start it, converge its registration.
    Start,
    /// The right container, running, with a registration to converge or duplicates to retire
    /// (a deploy killed half-way).
    Adopt,
    /// Nothing to do.
    Keep,
}

impl Strategy {
    /// The decision: what the change is, and what the slot looks like.
    pub fn decide(action: Action, stop_first: bool, converged: bool, duplicates: bool) -> Self {
        match action {
            Action::Create => Strategy::Create,
            Action::Replace if stop_first => Strategy::RetireThenStart,
            Action::Replace => Strategy::StartThenRetire,
            Action::Start => Strategy::Start,
            // A desired slot is never `Remove`: that is a leftover's (`Rollout::Retire`).
            Action::Unchanged | Action::Remove if !converged || duplicates => Strategy::Adopt,
            Action::Unchanged | Action::Remove => Strategy::Keep,
        }
    }
}

/// What apply needs for one desired instance slot.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRollout {
    pub strategy: Strategy,
    /// The full spec: every label set (`fleet.fields` too), the service's address resolved.
    pub spec: InstanceSpec,
    /// Other containers of the slot (a deploy killed half-way), retired once it serves.
    pub duplicates: Vec<ContainerRef>,
    /// The IDs of the slot's registrations on the host's agent now.
    pub registrations: Vec<String>,
    pub health_deadline: Duration,
    pub min_healthy: Duration,
    /// The app's `pm2` key.
    pub pm2: Option<bool>,
}

/// How one instance change is carried out.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Rollout {
    /// Not computed (a plan read back from JSON): never applied.
    #[default]
    Unknown,
    /// A desired slot.
    Slot(Box<SlotRollout>),
    /// No longer desired: deregistered, drained, stopped and removed after the host's slots.
    Retire,
    /// A second container of a desired slot: retired with that slot.
    Duplicate,
}

/// One app, as apply needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppRollout {
    pub name: String,
    pub version: String,
    /// Instances of the app replaced at once on a host.
    pub batch: u32,
    pub config_order: ConfigOrder,
    /// Built by fleet (its old images are pruned).
    pub built: bool,
}

/// What apply needs beyond the changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyContext {
    pub registry: Option<RegistryTarget>,
    pub consul: Option<ConsulTarget>,
    pub edge: Option<DesiredEdge>,
    /// Manifest order.
    pub apps: Vec<AppRollout>,
}

impl ApplyContext {
    pub fn of(d: &DesiredState) -> Self {
        ApplyContext {
            registry: d.registry.clone(),
            consul: d.consul.clone(),
            edge: d.edge.clone(),
            apps: d
                .apps
                .iter()
                .map(|a| AppRollout {
                    name: a.name.clone(),
                    version: a.version.clone(),
                    batch: a.batch.max(1),
                    config_order: a.config_order,
                    built: a.build.is_some(),
                })
                .collect(),
        }
    }

    pub fn app(&self, name: &str) -> Option<&AppRollout> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// What a host's slot rollouts are decided from: the manifest, the host as desired and as
/// observed, and its registration changes (diffed first).
pub(super) struct HostRollout<'a> {
    pub d: &'a DesiredState,
    pub dh: &'a DesiredHost,
    pub oh: &'a ObservedHost,
    pub services: &'a [ServiceChange],
}

impl HostRollout<'_> {
    /// How one desired slot of the host is carried out: `action` is the diff's, `duplicates` the
    /// slot's other containers (retired with it).
    pub(super) fn slot(
        &self,
        spec: &InstanceSpec,
        action: Action,
        duplicates: Vec<ContainerRef>,
    ) -> Rollout {
        let app = self.d.apps.iter().find(|a| a.name == spec.app);
        let converged = self
            .services
            .iter()
            .filter(|s| s.app == spec.app && s.instance == Some(spec.instance))
            .all(|s| s.action == ServiceAction::Unchanged);
        let stop_first = spec.container.ports.first().is_some_and(|p| p.host != 0)
            || app.is_some_and(|a| a.accessory);
        Rollout::Slot(Box::new(SlotRollout {
            strategy: Strategy::decide(action, stop_first, converged, !duplicates.is_empty()),
            spec: full_spec(spec, &self.dh.target.address),
            duplicates,
            registrations: slot_registrations(self.oh, &spec.app, spec.instance),
            health_deadline: app
                .map(|a| a.health_deadline)
                .unwrap_or(Duration::from_secs(60)),
            min_healthy: app
                .map(|a| a.min_healthy)
                .unwrap_or(crate::desired::DEFAULT_MIN_HEALTHY),
            pm2: app.and_then(|a| a.pm2),
        }))
    }
}

/// The images a host's built apps run, once each: what pruning old images keeps.
pub(super) fn images_in_use(d: &DesiredState, dh: &DesiredHost) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for i in &dh.instances {
        let built = d.apps.iter().any(|a| a.name == i.app && a.build.is_some());
        if built && !out.iter().any(|(_, img)| *img == i.container.image) {
            out.push((i.app.clone(), i.container.image.clone()));
        }
    }
    out
}

/// The spec as the container is created: the `fleet.fields` label (the digests `plan` reads
/// back for its reasons) and the registration's address (the host's, when not set).
fn full_spec(spec: &InstanceSpec, host_address: &str) -> InstanceSpec {
    let mut spec = spec.clone();
    spec.container
        .labels
        .insert(FIELDS_LABEL.to_string(), label_value(&spec.container));
    if let Some(s) = &mut spec.service
        && s.address.is_empty()
    {
        s.address = host_address.to_string();
    }
    spec
}

/// The IDs of the services fleet has registered on a host for one instance slot.
fn slot_registrations(oh: &ObservedHost, app: &str, instance: u32) -> Vec<String> {
    let ma = labels::meta_key(labels::APP);
    let mi = labels::meta_key(labels::INSTANCE);
    let n = instance.to_string();
    oh.services
        .iter()
        .flatten()
        .filter(|s| {
            s.meta.get(&ma).map(String::as_str) == Some(app)
                && s.meta.get(&mi).map(String::as_str) == Some(n.as_str())
        })
        .map(|s| s.id.clone())
        .collect()
}

/// A host's desired slots in rollout order: app by app in manifest order, `batch` of an app's
/// instances at once.
pub fn batches<'a>(hp: &'a HostPlan, ctx: &ApplyContext) -> Vec<Vec<&'a InstanceChange>> {
    let mut out = Vec::new();
    for a in &ctx.apps {
        let mine: Vec<&InstanceChange> = hp
            .instances
            .iter()
            .filter(|c| c.app == a.name && matches!(c.rollout, Rollout::Slot(_)))
            .collect();
        out.extend(mine.chunks(a.batch.max(1) as usize).map(<[_]>::to_vec));
    }
    out
}

/// What a host retires after its slots: containers no longer desired, and fleet's
/// registrations that are not (the plan's deregistrations).
pub fn retirements(hp: &HostPlan) -> (Vec<&InstanceChange>, Vec<String>) {
    let gone = hp
        .instances
        .iter()
        .filter(|c| c.rollout == Rollout::Retire && c.current.is_some())
        .collect();
    let regs = hp
        .services
        .iter()
        .filter(|s| s.action == ServiceAction::Deregister)
        .map(|s| s.id.clone())
        .collect();
    (gone, regs)
}

/// Splits hosts (by index) into the canary wave, the first `canary` hosts in manifest order
/// whose plan changes an instance, and the rest. A host with nothing to change proves nothing,
/// so it is no canary.
pub fn canary_waves(plans: &[&HostPlan], canary: usize) -> (Vec<usize>, Vec<usize>) {
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        let changes = p.instances.iter().any(|c| c.action != Action::Unchanged);
        if first.len() < canary && changes {
            first.push(i);
        } else {
            rest.push(i);
        }
    }
    (first, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{deployed, desired};

    #[test]
    fn strategy_table() {
        use Action::*;
        use Strategy as S;
        // (action, stop first, registration converged, duplicates) -> strategy
        let table = [
            (Create, false, true, false, S::Create),
            (Create, true, false, false, S::Create),
            (Replace, false, true, false, S::StartThenRetire),
            (Replace, false, false, true, S::StartThenRetire),
            (Replace, true, true, false, S::RetireThenStart),
            (Start, false, true, false, S::Start),
            (Start, true, false, true, S::Start),
            (Unchanged, false, true, false, S::Keep),
            (Unchanged, true, true, false, S::Keep),
            (Unchanged, false, false, false, S::Adopt),
            (Unchanged, false, true, true, S::Adopt),
        ];
        for (action, stop_first, converged, dups, want) in table {
            assert_eq!(
                Strategy::decide(action, stop_first, converged, dups),
                want,
                "{action:?} stop_first={stop_first} converged={converged} duplicates={dups}"
            );
        }
    }

    fn slot(c: &InstanceChange) -> &SlotRollout {
        match &c.rollout {
            Rollout::Slot(s) => s,
            other => panic!("{}#{:?}: not a slot: {other:?}", c.app, c.instance),
        }
    }

    #[test]
    fn a_deployed_host_keeps_everything_with_its_registrations_named() {
        let d = desired();
        let o = deployed(&d);
        let plan = crate::plan::diff(&d, &o);
        let h1 = &plan.hosts[0];
        assert!(!h1.instances.is_empty());
        for c in &h1.instances {
            let s = slot(c);
            assert_eq!(s.strategy, Strategy::Keep, "{}", c.app);
            assert!(s.spec.container.labels.contains_key(FIELDS_LABEL));
            assert!(s.duplicates.is_empty());
            if let Some(svc) = &s.spec.service {
                assert!(!svc.address.is_empty(), "the host's address is filled in");
                assert_eq!(s.registrations.len(), 1, "{}: {:?}", c.app, s.registrations);
            }
        }
    }

    #[test]
    fn replaces_go_by_port_kind_and_a_lost_registration_is_adopted() {
        let mut d = desired();
        let mut o = deployed(&d);
        for h in &mut d.hosts {
            if h.target.name != "h2" {
                continue;
            }
            for i in &mut h.instances {
                if i.app == "web" {
                    // An auto port: the new one can run beside the old.
                    i.container.ports[0].host = 0;
                }
                i.version = "v2".into();
                i.spec_hash = "changed".into();
            }
        }
        // h1's agent lost every registration.
        o.hosts[0].services = Some(Vec::new());
        let plan = crate::plan::diff(&d, &o);
        let strategies = |h: usize| -> Vec<(String, Strategy)> {
            plan.hosts[h]
                .instances
                .iter()
                .map(|c| (c.app.clone(), slot(c).strategy))
                .collect()
        };
        let s = |a: &str, st| (a.to_string(), st);
        assert_eq!(
            strategies(0),
            vec![
                s("web", Strategy::Adopt),
                s("web", Strategy::Adopt),
                s("worker", Strategy::Keep),
            ]
        );
        assert_eq!(
            strategies(1),
            vec![
                s("web", Strategy::StartThenRetire),
                s("web", Strategy::StartThenRetire),
                s("worker", Strategy::RetireThenStart),
            ]
        );
        assert!(slot(&plan.hosts[0].instances[0]).registrations.is_empty());
        assert_eq!(slot(&plan.hosts[1].instances[0]).registrations.len(), 1);
    }

    #[test]
    fn a_second_container_of_a_slot_goes_with_the_slot_and_an_extra_one_is_retired() {
        let d = desired();
        let mut o = deployed(&d);
        let first = o.hosts[0].containers[0].clone();
        let mut dup = first.clone();
        dup.id = format!("{}dup", first.id);
        dup.name = format!("{}-dup", first.name);
        dup.created -= 10;
        let mut extra = first.clone();
        extra.id = "extra0000000000".into();
        extra.instance = Some(99);
        o.hosts[0].containers.push(dup.clone());
        o.hosts[0].containers.push(extra);
        let plan = crate::plan::diff(&d, &o);
        let h1 = &plan.hosts[0];
        let kept = h1
            .instances
            .iter()
            .find(|c| {
                c.desired.is_some()
                    && c.instance == first.instance
                    && Some(&c.app) == first.app.as_ref()
            })
            .unwrap();
        assert_eq!(slot(kept).strategy, Strategy::Adopt);
        assert_eq!(slot(kept).duplicates.len(), 1);
        let (gone, _) = retirements(h1);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].instance, Some(99));
        assert!(
            h1.instances.iter().any(
                |c| c.rollout == Rollout::Duplicate && c.current.as_ref().unwrap().id == dup.id
            )
        );
    }

    #[test]
    fn batches_follow_the_manifest_and_the_batch_size() {
        let d = desired();
        let mut o = deployed(&d);
        o.hosts[0].containers.clear();
        let mut plan = crate::plan::diff(&d, &o);
        let order: Vec<&str> = d.apps.iter().map(|a| a.name.as_str()).collect();
        for a in &mut plan.context.apps {
            a.batch = 2;
        }
        let b = batches(&plan.hosts[0], &plan.context);
        let flat: Vec<&str> = b.iter().flatten().map(|c| c.app.as_str()).collect();
        let mut seen: Vec<&str> = flat.clone();
        seen.dedup();
        let expected: Vec<&str> = order.iter().copied().filter(|a| seen.contains(a)).collect();
        assert_eq!(seen, expected, "app by app in manifest order");
        assert!(b.iter().all(|chunk| chunk.len() <= 2));
        assert!(
            b.iter()
                .all(|chunk| chunk.iter().all(|c| c.app == chunk[0].app))
        );
        assert!(
            b.iter()
                .flatten()
                .all(|c| slot(c).strategy == Strategy::Create)
        );
    }

    #[test]
    fn canary_wave_is_the_first_hosts_with_changes() {
        let d = desired();
        let mut o = deployed(&d);
        // h1 unchanged, h2 loses a container (so changes), h3 does not exist here.
        o.hosts[1].containers.clear();
        let plan = crate::plan::diff(&d, &o);
        let plans: Vec<&HostPlan> = plan.hosts.iter().collect();
        assert_eq!(canary_waves(&plans, 1), (vec![1], vec![0]));
        assert_eq!(canary_waves(&plans, 0), (vec![], vec![0, 1]));
        assert_eq!(canary_waves(&plans, 5), (vec![1], vec![0]));
    }
}
