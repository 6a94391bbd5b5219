//! The Consul registration of one running instance, for `fleet start` / `restart` (and the test
//! support that stands in for `apply` until it lands).
//!
//! Built from the desired `InstanceSpec` plus what the container really is: its published port
//! (Docker may have picked it) and its own version and spec labels (a container may run an older
//! version than the manifest now says). The registration is built by the same function as a
//! deploy's (`identity::checks::registration`), so a restarted instance is registered exactly
//! as a deploy registers it: `<service id>-<container short id>`.

use std::collections::BTreeMap;

use crate::consul::ServiceRegistration;
use crate::desired::InstanceSpec;
use crate::identity::checks::{Service, registration};
use crate::identity::labels;

/// The registration for `spec` running in container `container_id` whose labels are
/// `container_labels` and whose service port is published on `host_port`. `None` when the app
/// has no service.
pub fn for_instance(
    spec: &InstanceSpec,
    container_id: &str,
    host_port: u16,
    host_address: &str,
    container_labels: &BTreeMap<String, String>,
) -> Option<ServiceRegistration> {
    let s = spec.service.as_ref()?;
    let mut meta = s.meta.clone();
    // What this container is, not what the manifest says now.
    for l in [labels::VERSION, labels::SPEC] {
        if let Some(v) = container_labels.get(l) {
            meta.insert(labels::meta_key(l), v.clone());
        }
    }
    let address = if s.address.is_empty() {
        host_address.to_string()
    } else {
        s.address.clone()
    };
    let service = Service {
        base_id: &s.id,
        name: &s.name,
        tags: &s.tags,
        meta: &meta,
        address: &address,
    };
    Some(registration(
        service,
        container_id,
        host_port,
        spec.container.health.as_ref(),
    ))
}

/// The host port Docker published for `container_port/tcp`, from an inspect's port map.
pub fn published_port(
    ports: Option<&bollard::models::PortMap>,
    container_port: u16,
    protocol: &str,
) -> Option<u16> {
    ports?
        .get(&format!("{container_port}/{protocol}"))?
        .as_ref()?
        .iter()
        .find_map(|b| b.host_port.as_deref()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{HealthCheck, HealthSpec, ServiceSpec};
    use std::time::Duration;

    fn spec() -> InstanceSpec {
        let mut i = crate::plan::fixtures::instance("h1", "web", 1, "v2");
        i.service = Some(ServiceSpec {
            id: "p-e-web-h1-1".into(),
            name: "web".into(),
            tags: vec!["http".into()],
            meta: BTreeMap::from([
                ("fleet-app".into(), "web".into()),
                ("fleet-version".into(), "v2".into()),
            ]),
            address: "10.0.0.1".into(),
            port: 8080,
        });
        i.container.health = Some(HealthSpec {
            check: HealthCheck::Http("/health".into()),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            deregister_after: Some(Duration::from_secs(60)),
        });
        i
    }

    #[test]
    fn registers_the_real_port_and_the_containers_own_version() {
        let labels = BTreeMap::from([("fleet.version".to_string(), "v1".to_string())]);
        let r = for_instance(&spec(), "0123456789abcdef", 32768, "10.9.9.9", &labels).unwrap();
        assert_eq!(
            r.id.as_deref(),
            Some("p-e-web-h1-1-0123456789ab"),
            "apply's ID scheme"
        );
        assert_eq!(r.port, Some(32768));
        assert_eq!(r.meta["fleet-version"], "v1");
        let c = r.check.unwrap();
        assert_eq!(c.http.as_deref(), Some("http://10.0.0.1:32768/health"));
        assert_eq!(c.interval.as_deref(), Some("2s"));
        assert_eq!(c.deregister_critical_service_after.as_deref(), Some("60s"));
    }

    #[test]
    fn no_service_no_registration() {
        let mut s = spec();
        s.service = None;
        assert!(for_instance(&s, "c", 1, "h", &BTreeMap::new()).is_none());
    }

    #[test]
    fn reads_the_published_port() {
        use bollard::models::PortBinding;
        let map: bollard::models::PortMap = [(
            "8080/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some("0.0.0.0".into()),
                host_port: Some("49153".into()),
            }]),
        )]
        .into();
        assert_eq!(published_port(Some(&map), 8080, "tcp"), Some(49153));
        assert_eq!(published_port(Some(&map), 9090, "tcp"), None);
        assert_eq!(published_port(None, 8080, "tcp"), None);
    }
}
