//! Names and keys fleet gives what it makes, and finds again by: container names, Consul
//! registration IDs, the deploy lock's and the ledger's KV keys and host files, the image
//! records on each host. Pure functions of the project, environment, app and instance.

use crate::desired::InstanceSpec;

/// fleet's own directory on every host: lock files and release ledgers (without Consul), the
/// records of the images each environment keeps.
pub const STATE_DIR: &str = "/var/lib/fleet";

// Here rather than in desired.rs: identity reads desired's types, never the other way.
impl InstanceSpec {
    /// The container name, `<project>.<env>.<app>.<instance>.<version>`: carries the version so
    /// old and new can run side by side. `.` cannot occur in project, environment or app names
    /// (manifest validation), and the instance is a number, so two slots never share a name
    /// (`shop` / `eu-prod` and `shop-eu` / `prod` differ). Names are not state: fleet finds its
    /// containers by their labels, so containers named otherwise (by older versions) are still
    /// found and are not replaced for their name.
    pub fn container_name(&self, project: &str, env: &str) -> String {
        container_name(project, env, &self.app, self.instance, &self.version)
    }
}

/// `<project>.<env>.<app>.<instance>.<version>`: see [`InstanceSpec::container_name`].
pub fn container_name(project: &str, env: &str, app: &str, instance: u32, version: &str) -> String {
    format!("{project}.{env}.{app}.{instance}.{version}")
}

/// The 12-character form of a container ID, as `docker ps` shows it.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The registration ID of one container of an instance.
pub fn registration_id(base: &str, container_id: &str) -> String {
    format!("{base}-{}", short_id(container_id))
}

/// The KV key of an environment's lock.
pub fn lock_key(project: &str, env: &str) -> String {
    format!("{project}/{env}/_fleet/lock")
}

/// The lock file of an environment on its first host (without Consul).
pub fn lock_file(project: &str, env: &str) -> String {
    format!("{STATE_DIR}/{project}.{env}.lock")
}

/// The KV prefix of an environment's ledger (with the trailing `/`).
pub fn ledger_prefix(project: &str, env: &str) -> String {
    format!("{project}/{env}/_fleet/releases/")
}

/// The ledger file of an environment on its first host.
pub fn ledger_file(project: &str, env: &str) -> String {
    format!("{STATE_DIR}/{project}.{env}.releases.jsonl")
}

/// The record file of an environment on each of its hosts.
pub fn images_file(project: &str, env: &str) -> String {
    format!("{STATE_DIR}/{project}.{env}.images")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_of_different_slots_never_collide() {
        // Each (project, env, app, instance, version) that splits a dashed string differently.
        let slots = [
            ("shop", "eu-prod", "redis", 1, "7"),
            ("shop-eu", "prod", "redis", 1, "7"),
            ("shop", "eu", "prod-redis", 1, "7"),
            ("shop", "eu-prod-redis", "x", 1, "7"),
            ("a", "b", "web", 1, "1-v2"),
            ("a", "b", "web-1", 1, "v2"),
            ("a", "b", "web", 11, "v2"),
        ];
        let mut seen = std::collections::BTreeMap::new();
        for (p, e, a, n, v) in slots {
            let name = container_name(p, e, a, n, v);
            if let Some(other) = seen.insert(name.clone(), (p, e, a, n, v)) {
                panic!("{other:?} and {:?} are both named {name}", (p, e, a, n, v));
            }
        }
        assert_eq!(
            container_name("shop", "eu-prod", "redis", 1, "7"),
            "shop.eu-prod.redis.1.7"
        );
    }
}
