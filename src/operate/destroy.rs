//! `fleet destroy`: remove every container, Consul registration and KV key fleet manages for
//! one environment of one project, and the images its record keeps on each host, after showing
//! exactly that list.
//!
//! What is removed is what `inventory` found (labels, Meta, the KV prefix `<project>/<env>/`),
//! never what the manifest says: a host or app removed from the manifest still gets cleaned as
//! long as the environment still lists the host. The CLI holds the environment's deploy lock
//! from the listing to the last removal, so no deploy runs in between; the lock's own key goes
//! with the lock's release, which deletes it.

use std::fmt::Write;

use super::{instance_label, managed_services, short_id};
use crate::apply::{forget_images, recorded_images};
use crate::consul::{KvDelete, QueryOptions};
use crate::observe::Connected;
use crate::observe::read::list_containers;

/// A managed container found on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundContainer {
    pub host: String,
    pub id: String,
    pub name: String,
    /// `api#1@h1`.
    pub instance: String,
    pub state: String,
}

/// A registration found on a host's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundService {
    pub host: String,
    pub id: String,
    pub name: String,
}

/// An image reference the environment's record keeps on a host (`apply::prune`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundImage {
    pub host: String,
    pub reference: String,
}

/// A named volume fleet created for this environment (labels `fleet.project`, `fleet.env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVolume {
    pub host: String,
    pub name: String,
}

/// Everything `destroy` would remove, and what could not be looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub project: String,
    pub environment: String,
    pub containers: Vec<FoundContainer>,
    pub services: Vec<FoundService>,
    /// Untagged after the containers are gone, unless a container or another environment's
    /// record still uses the image; the record goes with them.
    pub images: Vec<FoundImage>,
    /// The KV prefix (`<project>/<env>/`) and the keys under it.
    pub kv_prefix: String,
    pub kv_keys: Vec<String>,
    /// The host (or agent) whose KV is used for the delete.
    pub kv_via: Option<String>,
    /// Hosts or agents that could not be read: what they hold is not in the lists.
    pub problems: Vec<String>,
    /// This environment's ids on each host's edge (routes, TLS policy, certificate): only its
    /// own, so another project's routes on the same edge keep serving.
    pub edge: Vec<(String, String)>,
    /// The named volumes fleet created for the environment's containers (accessories' data):
    /// removed only when `remove_volumes` (`fleet destroy --volumes`), else listed as kept.
    pub volumes: Vec<FoundVolume>,
    pub remove_volumes: bool,
}

impl Inventory {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && (self.volumes.is_empty() || !self.remove_volumes)
            && self.services.is_empty()
            && self.kv_keys.is_empty()
            && self.images.is_empty()
            && self.edge.is_empty()
    }

    /// The list shown before asking.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fleet destroy {} (project {}) will remove:",
            self.environment, self.project
        );
        let _ = writeln!(s, "  containers ({}):", self.containers.len());
        for c in &self.containers {
            let _ = writeln!(
                s,
                "    - {} {} {} ({})",
                c.instance,
                short_id(&c.id),
                c.name,
                c.state
            );
        }
        let _ = writeln!(s, "  Consul services ({}):", self.services.len());
        for v in &self.services {
            let _ = writeln!(s, "    - {} on {} ({})", v.id, v.host, v.name);
        }
        let _ = writeln!(
            s,
            "  KV keys under {} ({}):",
            self.kv_prefix,
            self.kv_keys.len()
        );
        for k in &self.kv_keys {
            let _ = writeln!(s, "    - {k}");
        }
        if !self.images.is_empty() {
            let _ = writeln!(
                s,
                "  images the environment keeps ({}; each stays while another environment keeps it):",
                self.images.len()
            );
            for i in &self.images {
                let _ = writeln!(s, "    - {} on {}", i.reference, i.host);
            }
        }
        if !self.edge.is_empty() {
            let _ = writeln!(s, "  edge routes and settings ({}):", self.edge.len());
            for (h, id) in &self.edge {
                let _ = writeln!(s, "    - {id} on {h}");
            }
        }
        if !self.volumes.is_empty() && self.remove_volumes {
            let _ = writeln!(s, "  volumes, with their data ({}):", self.volumes.len());
            for v in &self.volumes {
                let _ = writeln!(s, "    - {} on {}", v.name, v.host);
            }
        }
        for p in &self.problems {
            let _ = writeln!(
                s,
                "  cannot read {p}: what it holds is not listed and stays"
            );
        }
        if !self.volumes.is_empty() && !self.remove_volumes {
            let names: Vec<String> = self
                .volumes
                .iter()
                .map(|v| format!("{} on {}", v.name, v.host))
                .collect();
            let _ = writeln!(
                s,
                "kept: volumes {} (their data stays; `--volumes` removes them too)",
                names.join(", ")
            );
        }
        s
    }
}

/// Look at every host of the environment: managed containers (any state), registrations by
/// Meta, and the KV keys under the prefix (through the first agent that answers).
pub async fn inventory(cx: &Connected) -> Inventory {
    let d = &cx.desired;
    let mut inv = Inventory {
        project: d.project.clone(),
        environment: d.environment.clone(),
        kv_prefix: format!("{}/{}/", d.project, d.environment),
        ..Default::default()
    };
    let per_host = futures_util::future::join_all(cx.hosts().map(|(t, s)| async move {
        let s = match s {
            Ok(s) => s,
            Err(e) => return (Err(e.to_string()), None, None),
        };
        let containers = list_containers(s, &d.project, &d.environment)
            .await
            .map_err(|f| format!("{} ({}): {}", f.host, f.address, f.message))
            .map(|c| (c, s));
        let volumes = owned_volumes(s, &d.project, &d.environment).await;
        let services = match cx.consul(s).await {
            None => None,
            Some(Err(e)) => Some(Err(e.to_string())),
            Some(Ok(c)) => Some(
                managed_services(&c, &d.project, &d.environment)
                    .await
                    .map(|v| (c, v))
                    .map_err(|e| format!("{}: {e}", t.name)),
            ),
        };
        (containers, services, volumes)
    }))
    .await;
    let mut kv_client = None;
    for ((t, _), (containers, services, volumes)) in cx.hosts().zip(per_host) {
        match volumes {
            Some(Ok(v)) => inv.volumes.extend(v.into_iter().map(|name| FoundVolume {
                host: t.name.clone(),
                name,
            })),
            Some(Err(e)) => inv.problems.push(format!("volumes on {}: {e}", t.name)),
            None => {}
        }
        match containers {
            Ok((cs, session)) => {
                inv.containers
                    .extend(cs.into_iter().map(|c| FoundContainer {
                        host: t.name.clone(),
                        instance: instance_label(
                            c.app.as_deref().unwrap_or("?"),
                            c.instance,
                            &t.name,
                        ),
                        id: c.id,
                        name: c.name,
                        state: c.state.as_str().into(),
                    }));
                match recorded_images(session, &d.project, &d.environment).await {
                    Ok(refs) => inv
                        .images
                        .extend(refs.into_iter().map(|reference| FoundImage {
                            host: t.name.clone(),
                            reference,
                        })),
                    Err(e) => inv.problems.push(format!("{}: {e}", t.name)),
                }
            }
            Err(e) => inv.problems.push(e),
        }
        match services {
            None => {}
            Some(Ok((client, v))) => {
                inv.services.extend(v.into_iter().map(|s| FoundService {
                    host: t.name.clone(),
                    id: s.id,
                    name: s.name,
                }));
                if kv_client.is_none() {
                    kv_client = Some((t.name.clone(), client));
                }
            }
            Some(Err(e)) => inv.problems.push(e),
        }
    }
    inv.services
        .sort_by(|a, b| (&a.host, &a.id).cmp(&(&b.host, &b.id)));
    let prefix = crate::edge::caddy::owner_prefix(&d.project, &d.environment);
    for (t, s) in cx.hosts() {
        let Ok(s) = s else { continue };
        if let Some(e) = crate::edge::observe(s).await
            && let Some(c) = &e.config
        {
            for id in crate::edge::caddy::owned_ids(c, &prefix) {
                inv.edge.push((t.name.clone(), id));
            }
        }
    }
    if let Some((via, client)) = kv_client {
        match client
            .kv_keys(&inv.kv_prefix, None, QueryOptions::default())
            .await
        {
            Ok(k) => {
                // The deploy lock (held by this destroy) goes when it is released.
                let lock = crate::release::lock::lock_key(&d.project, &d.environment);
                inv.kv_keys = k.value.into_iter().filter(|k| *k != lock).collect();
                inv.kv_keys.sort();
                inv.kv_via = Some(via);
            }
            Err(e) => inv.problems.push(format!("the KV through {via}: {e}")),
        }
    } else if d.consul.is_some() {
        inv.problems
            .push("the KV: no host's Consul agent answered".to_string());
    }
    inv
}

/// The named volumes on a host that carry this environment's labels (fleet created them).
async fn owned_volumes(
    s: &crate::host::HostSession,
    project: &str,
    env: &str,
) -> Option<Result<Vec<String>, String>> {
    let docker = s.docker().await.ok()?;
    let filters = std::collections::HashMap::from([(
        "label",
        vec![
            format!("{}={project}", crate::identity::labels::PROJECT),
            format!("{}={env}", crate::identity::labels::ENV),
        ],
    )]);
    let opts = bollard::query_parameters::ListVolumesOptionsBuilder::new()
        .filters(&filters)
        .build();
    Some(
        docker
            .list_volumes(Some(opts))
            .await
            .map(|r| {
                let mut v: Vec<String> = r
                    .volumes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v.name)
                    .collect();
                v.sort();
                v
            })
            .map_err(|e| crate::errors::chain(&e)),
    )
}

/// Remove what `inv` lists: registrations first (so nothing is routed to a container being
/// removed), then containers (forced: running ones are killed) and the images the environment
/// keeps (`apply::forget_images`), then the KV prefix. Returns one message per thing that could
/// not be removed, and how many image references were removed.
pub async fn remove(cx: &Connected, inv: &Inventory) -> (Vec<String>, usize) {
    let mut errors = Vec::new();
    let images = std::sync::atomic::AtomicUsize::new(0);
    let images = &images;
    let per_host = futures_util::future::join_all(cx.hosts().map(|(t, s)| async move {
        let mut errors = Vec::new();
        let Ok(s) = s else {
            return errors;
        };
        // Off the edges first: no request goes to a container about to be removed.
        let ids: Vec<&String> = inv
            .edge
            .iter()
            .filter(|(h, _)| *h == t.name)
            .map(|(_, id)| id)
            .collect();
        if !ids.is_empty() {
            match crate::edge::Admin::connect(s).await {
                Ok(a) => {
                    for id in ids {
                        if let Err(e) = a.delete_id(id).await {
                            errors.push(e);
                        }
                    }
                }
                Err(e) => errors.push(format!("edge {}: {e}", t.name)),
            }
        }
        if let Some(c) = cx.consul(s).await {
            match c {
                Ok(c) => {
                    for v in inv.services.iter().filter(|v| v.host == t.name) {
                        if let Err(e) = c.deregister_service(&v.id).await {
                            errors.push(format!("deregister {} on {}: {e}", v.id, t.name));
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        match s.docker().await {
            Ok(docker) => {
                for c in inv.containers.iter().filter(|c| c.host == t.name) {
                    if let Err(e) = crate::host::force_remove(&docker, &c.id).await {
                        errors.push(format!("remove {} ({}): {e}", c.instance, c.name));
                    }
                }
                // After the containers that mount them.
                if inv.remove_volumes {
                    for v in inv.volumes.iter().filter(|v| v.host == t.name) {
                        if let Err(e) = docker
                            .remove_volume(
                                &v.name,
                                None::<bollard::query_parameters::RemoveVolumeOptions>,
                            )
                            .await
                        {
                            errors.push(format!("remove volume {} on {}: {e}", v.name, t.name));
                        }
                    }
                }
                if inv.images.iter().any(|i| i.host == t.name) {
                    match forget_images(s, &docker, &inv.project, &inv.environment).await {
                        Ok(n) => {
                            images.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => errors.push(format!("images on {}: {e}", t.name)),
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        errors
    }))
    .await;
    errors.extend(per_host.into_iter().flatten());
    if !inv.kv_keys.is_empty()
        && let Some(via) = &inv.kv_via
        && let Some(Ok(s)) = cx.session(via)
        && let Some(c) = cx.consul(s).await
    {
        // Key by key, not the prefix: the deploy lock under it is held by this destroy.
        match c {
            Ok(c) => {
                for k in &inv.kv_keys {
                    if let Err(e) = c.kv_delete(k, &KvDelete::default()).await {
                        errors.push(format!("delete KV {k}: {e}"));
                    }
                }
            }
            Err(e) => errors.push(format!("delete KV {}: {e}", inv.kv_prefix)),
        }
    }
    (errors, images.load(std::sync::atomic::Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_everything_it_removes() {
        let inv = Inventory {
            project: "shop".into(),
            environment: "prod".into(),
            containers: vec![FoundContainer {
                host: "h1".into(),
                id: "0123456789abcdef".into(),
                name: "shop-prod-api-1-v1".into(),
                instance: "api#1@h1".into(),
                state: "running".into(),
            }],
            services: vec![FoundService {
                host: "h1".into(),
                id: "shop-prod-api-h1-1".into(),
                name: "api".into(),
            }],
            images: vec![FoundImage {
                host: "h1".into(),
                reference: "r:5000/shop/api:0a1b2c3d4e5f".into(),
            }],
            kv_prefix: "shop/prod/".into(),
            kv_keys: vec!["shop/prod/api/greeting".into()],
            kv_via: Some("h1".into()),
            problems: vec!["h2 (10.0.0.2): unreachable".into()],
            edge: Vec::new(),
            volumes: vec![FoundVolume {
                host: "h1".into(),
                name: "shop-prod-db-data".into(),
            }],
            remove_volumes: false,
        };
        assert!(!inv.is_empty());
        insta::assert_snapshot!(inv.render());
        let with_volumes = Inventory {
            remove_volumes: true,
            ..inv.clone()
        }
        .render();
        assert!(
            with_volumes.contains("volumes, with their data (1):\n    - shop-prod-db-data on h1")
                && !with_volumes.contains("kept: volumes"),
            "--volumes lists them among what goes: {with_volumes}"
        );
        assert!(Inventory::default().is_empty());
        let only_images = Inventory {
            images: inv.images.clone(),
            ..Default::default()
        };
        assert!(
            !only_images.is_empty(),
            "images alone are something to remove"
        );
    }
}
