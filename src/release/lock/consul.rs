//! The deploy lock in Consul: the KV key `<project>/<env>/_fleet/lock`, acquired by a session
//! with a TTL that a background task renews every TTL/2 (behavior `delete`, so the key goes
//! with the session).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Backend, DeployLock, Holder, LockError, died_here};
use crate::consul::{
    ConsulClient, ConsulError, KvDelete, QueryOptions, SessionBehavior, SessionRequest, go_duration,
};

/// Session TTL of a Consul lock. Consul accepts 10s to 24h.
pub const CONSUL_TTL: Duration = Duration::from_secs(15);
/// After a session ends, nobody may take its keys for this long (Consul's default is 15s).
pub const LOCK_DELAY: Duration = Duration::from_secs(1);

pub use crate::identity::names::lock_key;

/// A Consul lock held: the key, and the session holding it.
pub(super) struct Held {
    pub(super) client: ConsulClient,
    pub(super) key: String,
    pub(super) session: String,
}

impl Held {
    /// Rewrites the holder in the key; false when the session no longer holds it.
    pub(super) async fn set_holder(&self, holder_json: &str) -> Result<bool, LockError> {
        // Acquiring again with the same session only rewrites the value.
        Ok(self
            .client
            .kv_acquire(&self.key, holder_json.as_bytes(), &self.session)
            .await?)
    }

    /// Deletes the key (if still ours) and ends the session.
    pub(super) async fn release(self) -> Result<(), LockError> {
        let Held {
            client,
            key,
            session,
        } = self;
        // A released lock leaves no key behind: delete it while this session still holds
        // it (check-and-set, so a key someone else took meanwhile stays), then end the
        // session. Ending a session that still holds the key (behavior `delete`) would delete
        // it too, but start its lock-delay: the next deploy would wait for it.
        if let Ok(Some(pair)) = client.kv_get(&key).await
            && pair.session.as_deref() == Some(session.as_str())
        {
            let cas = KvDelete {
                cas: Some(pair.modify_index),
                ..Default::default()
            };
            let _ = client.kv_delete(&key, &cas).await;
        }
        client.session_destroy(&session).await?;
        Ok(())
    }
}

impl DeployLock {
    /// Takes the Consul lock of `project`/`env` for `holder` (its summary set to `summary`).
    /// Fails at once with [`LockError::Held`] when another session holds it.
    pub async fn acquire(
        consul: &ConsulClient,
        project: &str,
        env: &str,
        holder: Holder,
        summary: &str,
    ) -> Result<DeployLock, LockError> {
        Self::acquire_consul(consul, project, env, holder, summary, CONSUL_TTL).await
    }

    /// `acquire` with a chosen session TTL (at least 10s: Consul's minimum).
    pub async fn acquire_consul(
        consul: &ConsulClient,
        project: &str,
        env: &str,
        mut holder: Holder,
        summary: &str,
        ttl: Duration,
    ) -> Result<DeployLock, LockError> {
        holder.summary = summary.to_string();
        let key = lock_key(project, env);
        let value = serde_json::to_vec(&holder).expect("serialisable");
        let session = consul
            .session_create(&SessionRequest {
                name: Some(format!("fleet deploy lock {project}/{env}")),
                ttl: Some(go_duration(ttl)),
                behavior: Some(SessionBehavior::Delete),
                lock_delay: Some(go_duration(LOCK_DELAY)),
                ..SessionRequest::default()
            })
            .await?;
        let took_over = match take(consul, project, env, &key, &value, &session).await {
            Ok(t) => t,
            Err(e) => {
                let _ = consul.session_destroy(&session).await;
                return Err(e);
            }
        };
        let held = Held {
            client: consul.clone(),
            key: key.clone(),
            session: session.clone(),
        };
        Ok(DeployLock::taken(
            Backend::Consul(Box::new(held)),
            holder,
            took_over,
            |lost| hold_session(consul.clone(), key, session, ttl, lost),
        ))
    }
}

/// Takes `key` with `session`, whose error the caller answers by ending the session. A lock just
/// freed by an expired session cannot be taken during its lock-delay: retries for that long
/// when nobody holds it; refuses at once when somebody does, unless the holder died on this
/// machine (then its session is ended and the lock taken over: returns the dead holder).
async fn take(
    consul: &ConsulClient,
    project: &str,
    env: &str,
    key: &str,
    value: &[u8],
    session: &str,
) -> Result<Option<Holder>, LockError> {
    // Long enough for a lock-delay to run out.
    let lock_delay_ends =
        || tokio::time::Instant::now() + LOCK_DELAY * 2 + Duration::from_millis(500);
    let mut deadline = lock_delay_ends();
    let mut took_over = None;
    while !consul.kv_acquire(key, value, session).await? {
        let current = status(consul, project, env).await?;
        if let Some((dead, theirs)) = current.as_ref().filter(|(h, _)| died_here(h))
            && took_over.is_none()
        {
            // Only the dead holder's own session: a lock someone else took meanwhile stays.
            consul.session_destroy(theirs).await?;
            took_over = Some(dead.clone());
            deadline = lock_delay_ends();
            continue;
        }
        if let Some((holder, _)) = current {
            let since = holder.since();
            return Err(LockError::Held { holder, since });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LockError::Consul(ConsulError::Unexpected {
                request: format!("PUT /v1/kv/{key}?acquire"),
                status: 200,
                body: "the lock is free but Consul keeps refusing it (lock-delay?)".into(),
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(took_over)
}

/// Keeps the lock until it is lost, then sets `lost`: renews the session every TTL/2, and
/// watches the key with a blocking query, so a forced release or a deleted key is noticed
/// within milliseconds instead of at the next renewal.
async fn hold_session(
    client: ConsulClient,
    key: String,
    session: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    tokio::select! {
        () = renew_session(client.clone(), session.clone(), ttl) => {}
        () = watch_key(client, key, session) => {}
    }
    lost.store(true, Ordering::SeqCst);
}

/// Returns as soon as the lock key no longer names `session`.
async fn watch_key(client: ConsulClient, key: String, session: String) {
    let mut index = 0;
    loop {
        let q = QueryOptions::blocking(index, Duration::from_secs(60));
        match client.kv_get_with(&key, q).await {
            Ok(answer) => {
                let holder = answer.value.as_ref().and_then(|p| p.session.as_deref());
                if holder != Some(session.as_str()) {
                    return;
                }
                // Consul's rule for blocking queries: an index that went backwards resets.
                index = if answer.index < index {
                    0
                } else {
                    answer.index
                };
            }
            // The renewer decides about an agent that does not answer.
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Returns when the session cannot be renewed any more (gone, or unreachable for a TTL).
async fn renew_session(client: ConsulClient, session: String, ttl: Duration) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 2).await;
        match client.session_renew(&session).await {
            Ok(Some(_)) => last_ok = tokio::time::Instant::now(),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("cannot renew the deploy lock's session: {e}");
                if last_ok.elapsed() >= ttl {
                    break;
                }
            }
        }
    }
}

/// Who holds the Consul lock of `project`/`env`, and with which session; `None` when free.
pub async fn status(
    consul: &ConsulClient,
    project: &str,
    env: &str,
) -> Result<Option<(Holder, String)>, LockError> {
    let Some(pair) = consul.kv_get(&lock_key(project, env)).await? else {
        return Ok(None);
    };
    let Some(session) = pair.session.clone() else {
        return Ok(None);
    };
    let raw = pair.value_str();
    let holder = serde_json::from_str(&raw).unwrap_or_else(|_| Holder::unreadable(&raw));
    Ok(Some((holder, session)))
}

/// Frees the Consul lock whoever holds it (destroys the holder's session; a deploy still
/// running notices at once, through its watch of the key). Returns who held it.
pub async fn force_release(
    consul: &ConsulClient,
    project: &str,
    env: &str,
) -> Result<Option<Holder>, LockError> {
    let current = status(consul, project, env).await?;
    if let Some((_, session)) = &current {
        consul.session_destroy(session).await?;
    }
    // Gone with the session (behavior delete); a key left by a session of another behavior too.
    consul
        .kv_delete(&lock_key(project, env), &Default::default())
        .await?;
    Ok(current.map(|(h, _)| h))
}
