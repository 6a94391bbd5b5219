//! After a host's rollout: keep the last few versions' images of each app for rollback, remove
//! older ones, and never anything that is not this environment's to remove.
//!
//! Every environment records on each of its hosts what it has deployed there and keeps:
//! `/var/lib/fleet/<project>.<env>.images`, one line of JSON naming the project and
//! environment and, per built app, the image references (`<repository>:<version>`, fleet's own
//! repository) with their image IDs, newest first. A prune:
//! 1. reads every environment's record on the host (any project);
//! 2. puts this deploy's versions first in its own record and keeps the newest `keep_images`
//!    per app; the older entries are the candidates;
//! 3. removes (untags) a candidate's reference only when no container on the host (running or
//!    not, any project) uses its image and no other environment's record lists it: a staging
//!    deploy on a host shared with production never removes what production keeps for rollback;
//! 4. writes its record back (candidates still used by a container stay, to be tried again).
//!
//! Only references from the environment's own record are ever removed, so tags outside
//! fleet's repository, and images fleet never recorded (other tools', or from before fleet kept
//! records), are left alone.

use std::collections::HashSet;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveImageOptions};
use serde::{Deserialize, Serialize};

use super::context::{Ctx, Host};
use super::error::PruneError;
use super::event::ApplyEvent;
use crate::host::HostSession;
use crate::host::sh_quote;
use crate::identity::names::{STATE_DIR, images_file};

/// One environment's record on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    project: String,
    env: String,
    /// Newest first.
    images: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    app: String,
    /// `<repository>:<version>`.
    reference: String,
    /// The image ID the reference had when it was recorded.
    id: String,
}

/// This deploy's entries first (an entry already there moves up), then the earlier ones;
/// per app the first `keep` are kept, the rest are returned as candidates for removal.
fn split(earlier: &[Entry], now: &[Entry], keep: usize) -> (Vec<Entry>, Vec<Entry>) {
    let mut kept: Vec<Entry> = Vec::new();
    let mut candidates = Vec::new();
    for e in now.iter().chain(earlier) {
        if kept
            .iter()
            .chain(&candidates)
            .any(|k| k.reference == e.reference)
        {
            continue;
        }
        if kept.iter().filter(|k| k.app == e.app).count() < keep {
            kept.push(e.clone());
        } else {
            candidates.push(e.clone());
        }
    }
    (kept, candidates)
}

/// Whether `reference` is a tag of fleet's repository for `project`'s `app`
/// (`[<registry>/]<project>/<app>:<version>`).
fn is_fleet_tag(reference: &str, project: &str, app: &str) -> bool {
    let Some((repo, tag)) = reference.rsplit_once(':') else {
        return false;
    };
    let tail = format!("{project}/{app}");
    !tag.contains('/') && (repo == tail || repo.ends_with(&format!("/{tail}")))
}

/// Remove this environment's images of this host beyond the newest `keep_images` per app
/// (see the module docs). Returns how many references were removed.
pub(super) async fn prune_images(ctx: &Ctx<'_>, h: &Host<'_>) -> usize {
    let mut now: Vec<Entry> = Vec::new();
    for (app, image) in &h.plan.images_in_use {
        let Ok(img) = h.docker.inspect_image(image).await else {
            continue;
        };
        now.push(Entry {
            app: app.clone(),
            reference: image.clone(),
            id: img.id.unwrap_or_default(),
        });
    }
    let keep = ctx.opts.keep_images.max(1);
    let env = (ctx.plan.project.as_str(), ctx.plan.environment.as_str());
    match prune(h.session, &h.docker, env, now, keep).await {
        Ok(n) => n,
        Err(e) => {
            ctx.emit(ApplyEvent::PruneProblem {
                host: h.plan.name.clone(),
                problem: e.to_string(),
            });
            0
        }
    }
}

/// The references an environment's record lists on a host (what `fleet destroy` will untag).
pub async fn recorded_images(
    session: &HostSession,
    project: &str,
    env: &str,
) -> Result<Vec<String>, PruneError> {
    let records = read_records(session).await?;
    Ok(records
        .into_iter()
        .filter(|r| r.project == project && r.env == env)
        .flat_map(|r| r.images)
        .map(|e| e.reference)
        .collect())
}

/// `fleet destroy`, after the environment's containers are gone: untag every image its record
/// lists on this host, with the same care as a prune (not an image a container uses, not one
/// another environment's record lists), then delete the record. Returns how many went.
pub async fn forget_images(
    session: &HostSession,
    docker: &Docker,
    project: &str,
    env: &str,
) -> Result<usize, PruneError> {
    prune(session, docker, (project, env), Vec::new(), 0).await
}

/// Every environment's record on the host.
async fn read_records(session: &HostSession) -> Result<Vec<Record>, PruneError> {
    let out = session
        .run_ok(&format!(
            "for f in {STATE_DIR}/*.images; do [ -f \"$f\" ] && {{ cat \"$f\"; echo; }}; done; true"
        ))
        .await
        .map_err(PruneError::ReadRecords)?;
    Ok(out
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .collect())
}

/// The prune of environment `(project, env)` on one host: `now` (this deploy's images) first,
/// the newest `keep` per app kept, the others removed where that is safe; the record written
/// back, or deleted when it keeps nothing. Returns how many references were removed.
async fn prune(
    session: &HostSession,
    docker: &Docker,
    (project, env): (&str, &str),
    now: Vec<Entry>,
    keep: usize,
) -> Result<usize, PruneError> {
    let records = read_records(session).await?;
    let mine = |r: &&Record| r.project == project && r.env == env;
    let earlier: Vec<Entry> = records
        .iter()
        .filter(mine)
        .flat_map(|r| r.images.clone())
        .collect();
    if now.is_empty() && earlier.is_empty() {
        return Ok(0);
    }
    let others: Vec<&Entry> = records
        .iter()
        .filter(|r| !mine(r))
        .flat_map(|r| &r.images)
        .collect();
    let (mut kept, candidates) = split(&earlier, &now, keep);

    let used: HashSet<String> = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.image_id)
        .collect();
    let mut removed = 0;
    let opts = RemoveImageOptions {
        force: false,
        noprune: false,
        ..Default::default()
    };
    for c in candidates {
        let kept_elsewhere = others
            .iter()
            .any(|o| o.reference == c.reference || (!c.id.is_empty() && o.id == c.id));
        if kept_elsewhere || !is_fleet_tag(&c.reference, project, &c.app) {
            // Not ours to remove (any more): whoever keeps it removes it.
            continue;
        }
        let current_id = match docker.inspect_image(&c.reference).await {
            Ok(i) => i.id.unwrap_or_default(),
            Err(_) => continue, // gone already
        };
        if used.contains(&current_id) || used.contains(&c.id) {
            kept.push(c); // try again next time
            continue;
        }
        match docker
            .remove_image(&c.reference, Some(opts.clone()), None)
            .await
        {
            Ok(_) => removed += 1,
            Err(_) => kept.push(c),
        }
    }

    if kept == earlier {
        return Ok(removed);
    }
    let file = sh_quote(&images_file(project, env));
    let script = if kept.is_empty() {
        format!("rm -f {file}")
    } else {
        let record = Record {
            project: project.to_string(),
            env: env.to_string(),
            images: kept,
        };
        let line = serde_json::to_string(&record).expect("plain data serializes");
        format!(
            "set -e\nmkdir -p {STATE_DIR}\nf={file}\nprintf '%s\\n' {} > \"$f.$$\"\nmv \"$f.$$\" \"$f\"",
            sh_quote(&line)
        )
    };
    session
        .run_ok(&script)
        .await
        .map_err(PruneError::WriteRecord)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(app: &str, v: &str) -> Entry {
        Entry {
            app: app.into(),
            reference: format!("r:5000/shop/{app}:{v}"),
            id: format!("sha256:{app}{v}"),
        }
    }

    fn refs(v: &[Entry]) -> Vec<&str> {
        v.iter().map(|e| e.reference.as_str()).collect()
    }

    #[test]
    fn the_newest_versions_per_app_are_kept_and_a_redeployed_one_moves_up() {
        let earlier = [
            e("web", "v3"),
            e("api", "a1"),
            e("web", "v2"),
            e("web", "v1"),
        ];
        let (kept, gone) = split(&earlier, &[e("web", "v4"), e("api", "a1")], 2);
        assert_eq!(
            refs(&kept),
            [
                "r:5000/shop/web:v4",
                "r:5000/shop/api:a1",
                "r:5000/shop/web:v3"
            ]
        );
        assert_eq!(refs(&gone), ["r:5000/shop/web:v2", "r:5000/shop/web:v1"]);
        // A rollback to v2: v2 comes first again, v3 is still kept.
        let (kept, gone) = split(&kept, &[e("web", "v2")], 3);
        assert_eq!(
            refs(&kept),
            [
                "r:5000/shop/web:v2",
                "r:5000/shop/web:v4",
                "r:5000/shop/api:a1",
                "r:5000/shop/web:v3"
            ]
        );
        assert!(gone.is_empty());
    }

    #[test]
    fn only_tags_of_the_projects_own_repository_are_fleets() {
        assert!(is_fleet_tag("r:5000/shop/web:v1", "shop", "web"));
        assert!(is_fleet_tag("shop/web:v1", "shop", "web"));
        assert!(!is_fleet_tag("r:5000/shop-eu/web:v1", "eu", "web"));
        assert!(!is_fleet_tag("r:5000/myshop/web:v1", "shop", "web"));
        assert!(!is_fleet_tag("nginx:1.27", "shop", "web"));
        assert!(!is_fleet_tag("r:5000/shop/web", "shop", "web"));
        assert_ne!(
            images_file("shop", "eu-prod"),
            images_file("shop-eu", "prod")
        );
    }
}
