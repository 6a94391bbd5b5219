//! The names fleet puts on what it manages, and finds its own work again by.
//!
//! Docker labels use dots; Consul service Meta keys allow only letters, digits, `-` and `_`,
//! so the same names are written with `-` there.

pub const PROJECT: &str = "fleet.project";
pub const ENV: &str = "fleet.env";
pub const APP: &str = "fleet.app";
pub const INSTANCE: &str = "fleet.instance";
pub const VERSION: &str = "fleet.version";
pub const SPEC: &str = "fleet.spec";
/// What a container is when it is not an app instance: `agent` (the Consul agent `fleet setup`
/// runs), `accessory`, `edge`. Observe reads only containers without it as app instances.
pub const KIND: &str = "fleet.kind";

/// Every label fleet sets on a managed container, in a stable order.
pub const ALL: [&str; 6] = [PROJECT, ENV, APP, INSTANCE, VERSION, SPEC];

/// The Consul Meta key for a Docker label name: `fleet.project` -> `fleet-project`.
pub fn meta_key(label: &str) -> String {
    label.replace('.', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_keys_use_dashes() {
        assert_eq!(meta_key(PROJECT), "fleet-project");
        assert_eq!(meta_key(SPEC), "fleet-spec");
    }
}
