//! The release ledger: one record per deploy (versions per app, who, when, outcome), what
//! `fleet releases` lists and `fleet rollback` returns to.
//!
//! With Consul, record N is the KV key `<project>/<env>/_fleet/releases/<N, 10 digits>` (so
//! key order is release order). `append` creates the next key with `cas=0` (create only): two
//! writers that pick the same N cannot clobber each other, the loser retries with N+1.
//! `update` rewrites a record with `cas=<its ModifyIndex>`. Only the newest [`KEEP`] are kept.
//!
//! Without Consul, the ledger is a JSON-lines file on the environment's first host,
//! `/var/lib/fleet/<project>.<env>.releases.jsonl` (`.` occurs in neither name, so two
//! environments never share a file), appended under the same `flock` guard as the lock file.
//! An update appends the record again; the last line of an id wins.
//!
//! Every record names its project and environment, and readers use only the records that name
//! theirs: rollback can never return to another project's versions. (Records written before
//! they carried the names are still read from Consul, whose key path names both.)

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::lock::{Holder, LockError, Store, run};
use crate::consul::{ConsulClient, ConsulError, KvDelete, KvPut, QueryOptions};
use crate::host::HostSession;
use crate::host::sh_quote;
use crate::identity::names::STATE_DIR;
pub use crate::identity::names::{ledger_file, ledger_prefix as prefix};

/// How many releases the ledger keeps.
pub const KEEP: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseOutcome {
    InProgress,
    Succeeded,
    Failed,
    RolledBack,
}

impl std::fmt::Display for ReleaseOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReleaseOutcome::InProgress => "in progress",
            ReleaseOutcome::Succeeded => "succeeded",
            ReleaseOutcome::Failed => "failed",
            ReleaseOutcome::RolledBack => "rolled back",
        })
    }
}

/// One deploy. `id` is assigned by [`append`] (1, 2, ...); keep `id` the first field: the
/// host ledger script finds it at the start of each line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub id: u64,
    /// The project and environment this release is of (set by `append`; empty in records
    /// written before records carried them).
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub env: String,
    /// Every app's version (image tag) after this deploy.
    pub versions: BTreeMap<String, String>,
    pub user: String,
    /// The machine the deploy ran on.
    pub host: String,
    /// The CI job that ran the deploy (its URL), when it ran in CI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_job: Option<String>,
    /// RFC 3339.
    pub started: String,
    pub finished: Option<String>,
    pub outcome: ReleaseOutcome,
    /// The plan summary.
    pub summary: String,
    /// Every app's `config` as this release wrote it, so a rollback writes it back with the
    /// images (empty in records written before releases carried config).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, ReleaseConfig>,
}

/// One app's config in a release: the values as the manifest gave them (keys relative to the
/// app's prefix, `<project>/<env>/<app>/`) and their hash. Config values are plain strings in
/// the manifest (secrets go in `env` as `{ env }` / `{ file }` references, which a release
/// never stores), so the record holds everything needed to write them back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseConfig {
    /// The first 12 hex digits of the SHA-256 of the values' canonical JSON.
    pub hash: String,
    pub values: BTreeMap<String, String>,
}

impl ReleaseConfig {
    pub fn new(values: BTreeMap<String, String>) -> ReleaseConfig {
        use sha2::{Digest, Sha256};
        let canonical = serde_json::to_vec(&values).expect("serialisable");
        let hash = hex::encode(Sha256::digest(&canonical))[..12].to_string();
        ReleaseConfig { hash, values }
    }

    /// Every app's config of `desired`, keyed by app.
    pub fn of(desired: &crate::desired::DesiredState) -> BTreeMap<String, ReleaseConfig> {
        desired
            .apps
            .iter()
            .map(|a| {
                let prefix =
                    crate::manifest::config_prefix(&desired.project, &desired.environment, &a.name);
                let values = a
                    .config
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
                    .collect();
                (a.name.clone(), ReleaseConfig::new(values))
            })
            .collect()
    }
}

impl Release {
    /// A release starting now, in progress, by `holder` (id assigned by `append`).
    pub fn begin(holder: &Holder, versions: BTreeMap<String, String>, summary: &str) -> Release {
        Release {
            id: 0,
            project: String::new(),
            env: String::new(),
            versions,
            user: holder.user.clone(),
            host: holder.machine.clone(),
            ci_job: holder.ci_job.clone(),
            started: now(),
            finished: None,
            outcome: ReleaseOutcome::InProgress,
            summary: summary.to_string(),
            config: BTreeMap::new(),
        }
    }

    /// This release with the config it writes.
    pub fn with_config(mut self, config: BTreeMap<String, ReleaseConfig>) -> Release {
        self.config = config;
        self
    }
}

impl Release {
    /// Whether this record says it is a release of `project` / `env`.
    pub fn is_of(&self, project: &str, env: &str) -> bool {
        self.project == project && self.env == env
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error(transparent)]
    Host(#[from] LockError),
    #[error("there is no release {0} in the ledger")]
    NoSuchRelease(u64),
    #[error("the ledger is too busy: {0} writers raced for it")]
    Contended(u32),
}

fn key(project: &str, env: &str, id: u64) -> String {
    format!("{}{id:010}", prefix(project, env))
}

fn id_of(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.parse().ok()
}

const RETRIES: u32 = 20;

/// Records `release` as the next one; returns it with its id.
pub async fn append(
    consul: &ConsulClient,
    project: &str,
    env: &str,
    mut release: Release,
) -> Result<Release, LedgerError> {
    release.project = project.to_string();
    release.env = env.to_string();
    for _ in 0..RETRIES {
        let keys = consul
            .kv_keys(&prefix(project, env), None, QueryOptions::default())
            .await?
            .value;
        let mut ids: Vec<u64> = keys.iter().filter_map(|k| id_of(k)).collect();
        ids.sort_unstable();
        release.id = ids.last().copied().unwrap_or(0) + 1;
        let body = serde_json::to_vec(&release).expect("serialisable");
        let created = consul
            .kv_put(
                &key(project, env, release.id),
                &body,
                &KvPut {
                    cas: Some(0),
                    ..KvPut::default()
                },
            )
            .await?;
        if created {
            // Trim to the newest KEEP (this one included).
            let old = ids.len().saturating_add(1).saturating_sub(KEEP);
            for id in &ids[..old.min(ids.len())] {
                consul
                    .kv_delete(&key(project, env, *id), &KvDelete::default())
                    .await?;
            }
            return Ok(release);
        }
    }
    Err(LedgerError::Contended(RETRIES))
}

/// Sets a release's outcome and finish time (now).
pub async fn update(
    consul: &ConsulClient,
    project: &str,
    env: &str,
    id: u64,
    outcome: ReleaseOutcome,
) -> Result<Release, LedgerError> {
    let k = key(project, env, id);
    for _ in 0..RETRIES {
        let pair = consul
            .kv_get(&k)
            .await?
            .ok_or(LedgerError::NoSuchRelease(id))?;
        let mut release: Release =
            serde_json::from_str(&pair.value_str()).map_err(|e| ConsulError::Decode {
                request: format!("GET /v1/kv/{k}"),
                message: e.to_string(),
            })?;
        release.outcome = outcome;
        release.finished = Some(now());
        let body = serde_json::to_vec(&release).expect("serialisable");
        let put = KvPut {
            cas: Some(pair.modify_index),
            ..KvPut::default()
        };
        if consul.kv_put(&k, &body, &put).await? {
            return Ok(release);
        }
    }
    Err(LedgerError::Contended(RETRIES))
}

/// Every release, newest first. Records that cannot be read are skipped.
pub async fn list(
    consul: &ConsulClient,
    project: &str,
    env: &str,
) -> Result<Vec<Release>, LedgerError> {
    let pairs = consul
        .kv_list(&prefix(project, env), QueryOptions::default())
        .await?
        .value;
    let mut releases: Vec<Release> = pairs
        .iter()
        .filter_map(|p| serde_json::from_str::<Release>(&p.value_str()).ok())
        // The key path names project and environment: an older record without them is ours.
        .filter(|r| r.is_of(project, env) || (r.project.is_empty() && r.env.is_empty()))
        .collect();
    releases.sort_by_key(|r| std::cmp::Reverse(r.id));
    Ok(releases)
}

/// The newest succeeded release; with `excluding`, the newest whose versions differ from
/// those (what `fleet rollback` returns to from the current versions).
pub async fn last_good(
    consul: &ConsulClient,
    project: &str,
    env: &str,
    excluding: Option<&BTreeMap<String, String>>,
) -> Result<Option<Release>, LedgerError> {
    let all = list(consul, project, env).await?;
    Ok(newest_good(&all, excluding).cloned())
}

/// `last_good` over a list (newest first).
pub fn newest_good<'a>(
    releases: &'a [Release],
    excluding: Option<&BTreeMap<String, String>>,
) -> Option<&'a Release> {
    releases.iter().find(|r| {
        r.outcome == ReleaseOutcome::Succeeded && excluding.is_none_or(|v| &r.versions != v)
    })
}

// ---- without Consul: a JSON-lines file on the first host -------------------------------------

fn host_script(project: &str, env: &str, body: &str) -> String {
    format!(
        "set -e\nf={}\nmkdir -p {STATE_DIR}\nexec 9>>{STATE_DIR}/.guard\nflock -x -w 20 9\ntouch \"$f\"\n{body}",
        sh_quote(&ledger_file(project, env))
    )
}

/// `append` on the host ledger file.
pub async fn append_on_host(
    host: &HostSession,
    project: &str,
    env: &str,
    mut release: Release,
) -> Result<Release, LedgerError> {
    release.id = 0;
    release.project = project.to_string();
    release.env = env.to_string();
    let line = serde_json::to_string(&release).expect("serialisable");
    // Next id under the guard; lines of old ids are trimmed to the newest KEEP releases' worth.
    let body = format!(
        "last=$(sed -n 's/^{{\"id\":\\([0-9]*\\),.*/\\1/p' \"$f\" | sort -n | tail -n 1)\nnext=$(( ${{last:-0}} + 1 ))\nprintf '%s\\n' {} | sed \"s/^{{\\\"id\\\":0,/{{\\\"id\\\":$next,/\" >> \"$f\"\nkeep=$((next - {KEEP}))\nawk -v keep=$keep 'match($0, /^\\{{\"id\":[0-9]+,/) {{ id = substr($0, 7, RLENGTH - 7) + 0; if (id > keep) print }}' \"$f\" > \"$f.tmp\" && mv \"$f.tmp\" \"$f\"\necho $next",
        sh_quote(&line)
    );
    let out = run(host, &host_script(project, env, &body)).await?;
    release.id = out.trim().parse().map_err(|_| {
        LedgerError::Host(LockError::Script {
            host: host.target().name.clone(),
            code: "unexpected output".into(),
            stderr: out.clone(),
        })
    })?;
    Ok(release)
}

/// `update` on the host ledger file: appends the changed record (the last line of an id wins).
pub async fn update_on_host(
    host: &HostSession,
    project: &str,
    env: &str,
    id: u64,
    outcome: ReleaseOutcome,
) -> Result<Release, LedgerError> {
    let mut release = list_on_host(host, project, env)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or(LedgerError::NoSuchRelease(id))?;
    release.outcome = outcome;
    release.finished = Some(now());
    let line = serde_json::to_string(&release).expect("serialisable");
    run(
        host,
        &host_script(
            project,
            env,
            &format!("printf '%s\\n' {} >> \"$f\"", sh_quote(&line)),
        ),
    )
    .await?;
    Ok(release)
}

/// `list` from the host ledger file, newest first.
pub async fn list_on_host(
    host: &HostSession,
    project: &str,
    env: &str,
) -> Result<Vec<Release>, LedgerError> {
    let path = ledger_file(project, env);
    let out = run(host, &format!("cat {} 2>/dev/null; true", sh_quote(&path))).await?;
    Ok(parse_lines(&out, project, env))
}

/// JSON lines to the releases of `project` / `env`, newest first; the last line of each id
/// wins. Lines of any other project or environment (or none) are skipped.
fn parse_lines(text: &str, project: &str, env: &str) -> Vec<Release> {
    let mut by_id: BTreeMap<u64, Release> = BTreeMap::new();
    for line in text.lines() {
        if let Ok(r) = serde_json::from_str::<Release>(line)
            && r.is_of(project, env)
        {
            by_id.insert(r.id, r);
        }
    }
    by_id.into_values().rev().take(KEEP).collect()
}

// ---- through a Store (Consul when configured, else the first host) -------------------------

impl Store {
    pub async fn append_release(&self, release: Release) -> Result<Release, LedgerError> {
        match &self.consul {
            Some(c) => append(c, &self.project, &self.env, release).await,
            None => append_on_host(&self.host, &self.project, &self.env, release).await,
        }
    }

    pub async fn update_release(
        &self,
        id: u64,
        outcome: ReleaseOutcome,
    ) -> Result<Release, LedgerError> {
        match &self.consul {
            Some(c) => update(c, &self.project, &self.env, id, outcome).await,
            None => update_on_host(&self.host, &self.project, &self.env, id, outcome).await,
        }
    }

    pub async fn releases(&self) -> Result<Vec<Release>, LedgerError> {
        match &self.consul {
            Some(c) => list(c, &self.project, &self.env).await,
            None => list_on_host(&self.host, &self.project, &self.env).await,
        }
    }

    /// Mark `failed` every release still `in-progress`. Call it holding the deploy lock: the
    /// deploys that wrote those records are gone (killed mid-rollout), since the lock is ours.
    pub async fn close_interrupted(&self) -> Result<Vec<u64>, LedgerError> {
        let mut closed = Vec::new();
        for r in self.releases().await? {
            if r.outcome == ReleaseOutcome::InProgress {
                self.update_release(r.id, ReleaseOutcome::Failed).await?;
                closed.push(r.id);
            }
        }
        Ok(closed)
    }

    pub async fn last_good(
        &self,
        excluding: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<Release>, LedgerError> {
        Ok(newest_good(&self.releases().await?, excluding).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: u64, outcome: ReleaseOutcome, v: &str) -> Release {
        Release {
            id,
            project: "shop".into(),
            env: "prod".into(),
            versions: BTreeMap::from([("web".to_string(), v.to_string())]),
            user: "u".into(),
            host: "m".into(),
            ci_job: None,
            started: "2025-01-01T00:00:00Z".into(),
            finished: None,
            outcome,
            summary: String::new(),
            config: Default::default(),
        }
    }

    #[test]
    fn last_good_is_the_newest_success_other_than_the_current_versions() {
        use ReleaseOutcome::*;
        let list = vec![
            r(4, Failed, "v4"),
            r(3, Succeeded, "v3"),
            r(2, RolledBack, "v2"),
            r(1, Succeeded, "v1"),
        ];
        assert_eq!(newest_good(&list, None).unwrap().id, 3);
        let current = BTreeMap::from([("web".to_string(), "v3".to_string())]);
        assert_eq!(newest_good(&list, Some(&current)).unwrap().id, 1);
        assert!(newest_good(&list[..1], None).is_none());
    }

    #[test]
    fn the_last_line_of_an_id_wins_and_newest_come_first() {
        let mut lines = String::new();
        for rel in [
            r(1, ReleaseOutcome::InProgress, "v1"),
            r(2, ReleaseOutcome::InProgress, "v2"),
            r(1, ReleaseOutcome::Succeeded, "v1"),
        ] {
            lines.push_str(&serde_json::to_string(&rel).unwrap());
            lines.push('\n');
        }
        lines.push_str("garbage\n");
        let list = parse_lines(&lines, "shop", "prod");
        assert_eq!(list.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(list[1].outcome, ReleaseOutcome::Succeeded);
        // The host script relies on this shape.
        assert!(
            serde_json::to_string(&r(7, ReleaseOutcome::Failed, "x"))
                .unwrap()
                .starts_with("{\"id\":7,")
        );
        // A record of another project or environment (or of none) is never read as ours.
        assert!(parse_lines(&lines, "shop", "staging").is_empty());
        assert!(parse_lines(&lines, "shop-eu", "prod").is_empty());
        assert_eq!(
            key("shop", "prod", 12),
            "shop/prod/_fleet/releases/0000000012"
        );
        assert_eq!(id_of("shop/prod/_fleet/releases/0000000012"), Some(12));
    }

    #[test]
    fn environments_whose_dashed_names_spell_the_same_have_their_own_files() {
        assert_ne!(
            ledger_file("shop", "eu-prod"),
            ledger_file("shop-eu", "prod")
        );
        assert_eq!(
            ledger_file("shop", "eu-prod"),
            "/var/lib/fleet/shop.eu-prod.releases.jsonl"
        );
        use crate::release::lock::lock_file;
        assert_ne!(lock_file("shop", "eu-prod"), lock_file("shop-eu", "prod"));
        // A line of `shop-eu` / `prod` in `shop` / `eu-prod`'s file (say, copied there by hand,
        // or written by a fleet that shared the file) is not one of its releases.
        let mut other = r(1, ReleaseOutcome::Succeeded, "theirs");
        other.project = "shop-eu".into();
        other.env = "prod".into();
        let mut legacy = r(2, ReleaseOutcome::Succeeded, "unknown");
        legacy.project.clear();
        legacy.env.clear();
        let text = format!(
            "{}\n{}\n",
            serde_json::to_string(&other).unwrap(),
            serde_json::to_string(&legacy).unwrap()
        );
        assert!(parse_lines(&text, "shop", "eu-prod").is_empty());
        assert_eq!(parse_lines(&text, "shop-eu", "prod").len(), 1);
    }
}
