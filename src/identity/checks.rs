//! What fleet registers in Consul for each running container: the registration (one builder,
//! used by a deploy and by `fleet start` / `restart` alike), its check's definition and ID.

use std::collections::BTreeMap;

use crate::consul::{CheckDefinition, ServiceRegistration};
use crate::desired::{HealthCheck, HealthSpec};
use crate::identity::names::registration_id;

/// An app's Consul service, as the registration of each of its containers shares it.
#[derive(Debug, Clone, Copy)]
pub struct Service<'a> {
    /// The instance's service ID; each container's registration ID adds its short ID.
    pub base_id: &'a str,
    pub name: &'a str,
    pub tags: &'a [String],
    pub meta: &'a BTreeMap<String, String>,
    /// Where clients reach it (the host's address).
    pub address: &'a str,
}

/// The registration of container `container_id`, published on `port`, with its check when
/// the app has a health check.
pub fn registration(
    s: Service<'_>,
    container_id: &str,
    port: u16,
    health: Option<&HealthSpec>,
) -> ServiceRegistration {
    let id = registration_id(s.base_id, container_id);
    ServiceRegistration {
        name: s.name.to_string(),
        tags: s.tags.to_vec(),
        port: Some(port),
        meta: s.meta.clone(),
        check: health.map(|h| check_definition(h, &id, s.address, port)),
        address: Some(s.address.to_string()),
        id: Some(id),
        ..Default::default()
    }
}

/// The Consul check of registration `registration_id` for an instance published on
/// `address:port`. Its ID, `service:<registration id>:<digest of the definition>`, changes
/// whenever the definition does: Consul keeps an existing check's status when a service is
/// registered again, whatever the new definition (`addServiceInternal` in `agent/agent.go`),
/// so a new definition under the old ID would pass on the old one's status. A new ID starts
/// critical, and `replace-existing-checks` removes the old one.
pub fn check_definition(
    h: &HealthSpec,
    registration_id: &str,
    address: &str,
    port: u16,
) -> CheckDefinition {
    let mut c = CheckDefinition {
        interval: Some(crate::consul::go_duration(h.interval)),
        timeout: Some(crate::consul::go_duration(h.timeout)),
        deregister_critical_service_after: h.deregister_after.map(crate::consul::go_duration),
        ..Default::default()
    };
    match &h.check {
        HealthCheck::Http(path) => c.http = Some(format!("http://{address}:{port}{path}")),
        HealthCheck::Tcp => c.tcp = Some(format!("{address}:{port}")),
    }
    c.check_id = Some(check_id(registration_id, &c));
    c
}

/// `service:<registration id>:<12 hex digits of the definition's SHA-256>` (the ID itself
/// left out of the digest).
pub fn check_id(registration_id: &str, definition: &CheckDefinition) -> String {
    use sha2::{Digest, Sha256};
    let bare = CheckDefinition {
        check_id: None,
        ..definition.clone()
    };
    let json = serde_json::to_vec(&bare).expect("plain data serializes");
    let digest = hex::encode(Sha256::digest(json));
    format!("service:{registration_id}:{}", &digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn consul_check_uses_the_real_port_on_the_host_address() {
        let h = HealthSpec {
            check: HealthCheck::Http("/health".into()),
            interval: Duration::from_millis(1500),
            timeout: Duration::from_secs(1),
            deregister_after: Some(Duration::from_secs(60)),
        };
        let c = check_definition(&h, "web-1-abc", "10.200.1.2", 32771);
        assert_eq!(c.http.as_deref(), Some("http://10.200.1.2:32771/health"));
        assert_eq!(c.interval.as_deref(), Some("1500ms"));
        assert_eq!(c.timeout.as_deref(), Some("1s"));
        assert_eq!(c.deregister_critical_service_after.as_deref(), Some("60s"));
        let t = check_definition(
            &HealthSpec {
                check: HealthCheck::Tcp,
                ..h
            },
            "web-1-abc",
            "10.0.0.1",
            80,
        );
        assert_eq!(t.tcp.as_deref(), Some("10.0.0.1:80"));
        assert!(t.http.is_none());
    }

    /// Consul keeps a check's status across re-registrations with the same check ID, so every
    /// change of the definition must give a new ID; the same definition keeps its ID.
    #[test]
    fn the_check_id_changes_with_the_definition_and_only_then() {
        let h = HealthSpec {
            check: HealthCheck::Http("/health".into()),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            deregister_after: None,
        };
        let id = |h: &HealthSpec, port| {
            check_definition(h, "web-1-abc", "10.0.0.1", port)
                .check_id
                .unwrap()
        };
        let base = id(&h, 8080);
        assert!(base.starts_with("service:web-1-abc:"), "{base}");
        assert_eq!(base.len(), "service:web-1-abc:".len() + 12);
        assert_eq!(
            base, "service:web-1-abc:360a8998360a",
            "the digest of a definition may not change between versions: every check would be re-registered"
        );
        let mut ids = std::collections::BTreeSet::from([base]);
        let changed = [
            HealthSpec {
                check: HealthCheck::Http("/ready".into()),
                ..h.clone()
            },
            HealthSpec {
                check: HealthCheck::Tcp,
                ..h.clone()
            },
            HealthSpec {
                interval: Duration::from_secs(3),
                ..h.clone()
            },
            HealthSpec {
                deregister_after: Some(Duration::from_secs(60)),
                ..h.clone()
            },
        ];
        for c in &changed {
            assert!(ids.insert(id(c, 8080)), "{c:?} kept the ID");
        }
        assert!(ids.insert(id(&h, 8081)), "a new port kept the ID");
        assert_ne!(
            check_definition(&h, "web-1-def", "10.0.0.1", 8080).check_id,
            check_definition(&h, "web-1-abc", "10.0.0.1", 8080).check_id
        );
    }
}
