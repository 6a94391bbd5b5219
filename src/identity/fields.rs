//! Per-field digests of a container spec, kept in the `fleet.fields` label, so a plan can say
//! *why* a container must be replaced with nothing more than the container list.
//!
//! The spec hash (`fleet.spec`) decides whether a replace is needed; these digests only
//! explain it. Comparing the engine's inspect data instead would count what Docker fills in
//! (the image's env and labels, default restart policy...) as drift; comparing what fleet asked
//! for against what fleet asked for last time never does.
//!
//! Secrets enter as their reference only (never a value, nor a digest of a value: a short
//! digest of a low-entropy secret could be guessed). A replace whose spec hash moved while every
//! field digest is equal is therefore explained as "a secret's value changed".
//!
//! The apply step must set this label: `labels.insert(FIELDS_LABEL, label_value(&spec))`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::desired::{ContainerSpec, EnvValue};

/// The label holding `label_value(spec)` on every managed container.
pub const FIELDS_LABEL: &str = "fleet.fields";

/// Short digests of each part of a container spec that, when changed, needs a new container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDigests {
    /// Field name (`image`, `command`, `ports`, ...) -> 8 hex digits.
    #[serde(rename = "f")]
    pub fields: BTreeMap<String, String>,
    /// Env variable name -> 8 hex digits (of the plain value, or of the secret's reference),
    /// with a `s:` prefix for secrets.
    #[serde(rename = "e")]
    pub env: BTreeMap<String, String>,
}

fn short<T: Serialize + ?Sized>(v: &T) -> String {
    let json = serde_json::to_vec(v).expect("spec fields serialize");
    hex::encode(&Sha256::digest(&json)[..4])
}

impl FieldDigests {
    pub fn of(spec: &ContainerSpec) -> Self {
        let mut f = BTreeMap::new();
        f.insert("image".into(), short(&spec.image));
        f.insert("command".into(), short(&spec.command));
        f.insert("ports".into(), short(&spec.ports));
        let mut volumes = spec.volumes.clone();
        volumes.sort();
        f.insert("volumes".into(), short(&volumes));
        f.insert("network".into(), short(&spec.network));
        f.insert("user".into(), short(&spec.user));
        f.insert("workdir".into(), short(&spec.workdir));
        f.insert("restart".into(), short(&spec.restart));
        f.insert("memory".into(), short(&spec.memory));
        f.insert("cpus".into(), short(&spec.cpus.map(|c| c.to_string())));
        f.insert("stop_timeout".into(), short(&spec.stop_timeout.as_millis()));
        f.insert("health".into(), short(&spec.health));
        // Only when set: containers made before these fields existed have no digest for them.
        if !spec.extra_hosts.is_empty() {
            f.insert("extra_hosts".into(), short(&spec.extra_hosts));
        }
        if !spec.dns.is_empty() {
            f.insert("dns".into(), short(&spec.dns));
        }
        // fleet's own labels change with every version/spec: they are not a reason.
        let user_labels: BTreeMap<&String, &String> = spec
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("fleet."))
            .collect();
        f.insert("labels".into(), short(&user_labels));
        let env = spec
            .env
            .iter()
            .map(|(k, v)| {
                let d = match v {
                    EnvValue::Plain(p) => short(&("plain", p)),
                    EnvValue::Secret(r) => format!("s:{}", short(&("secret", r))),
                };
                (k.clone(), d)
            })
            .collect();
        FieldDigests { fields: f, env }
    }

    /// The label value: compact JSON.
    pub fn to_label(&self) -> String {
        serde_json::to_string(self).expect("digests serialize")
    }

    /// `None` for a missing or unreadable label (an older fleet, or a hand-made container).
    pub fn from_label(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }
}

/// The value of `FIELDS_LABEL` for a spec.
pub fn label_value(spec: &ContainerSpec) -> String {
    FieldDigests::of(spec).to_label()
}

/// Names of what differs between two digest sets: `(changed fields, env changes)`.
/// Env changes read `+NAME`, `-NAME`, `~NAME`; secrets get ` (secret)` so a reader knows
/// no value will ever be shown.
pub fn differences(old: &FieldDigests, new: &FieldDigests) -> (Vec<String>, Vec<String>) {
    let mut fields: Vec<String> = new
        .fields
        .iter()
        .filter(|(k, v)| old.fields.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    fields.extend(
        old.fields
            .keys()
            .filter(|k| !new.fields.contains_key(*k))
            .cloned(),
    );
    let tag = |d: &str| if d.starts_with("s:") { " (secret)" } else { "" };
    let mut env = Vec::new();
    for (k, v) in &new.env {
        match old.env.get(k) {
            None => env.push(format!("+{k}{}", tag(v))),
            Some(o) if o != v => env.push(format!("~{k}{}", tag(v))),
            _ => {}
        }
    }
    for (k, v) in &old.env {
        if !new.env.contains_key(k) {
            env.push(format!("-{k}{}", tag(v)));
        }
    }
    (fields, env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{RestartPolicy, SecretRef};
    use std::time::Duration;

    pub(crate) fn spec() -> ContainerSpec {
        ContainerSpec {
            image: "reg/p/web:v1".into(),
            command: None,
            env: [("A".to_string(), EnvValue::Plain("1".into()))]
                .into_iter()
                .collect(),
            ports: vec![],
            labels: BTreeMap::new(),
            volumes: vec![],
            network: None,
            user: None,
            workdir: None,
            restart: RestartPolicy::UnlessStopped,
            memory: None,
            cpus: None,
            stop_timeout: Duration::from_secs(10),
            health: None,
            extra_hosts: vec![],
            dns: vec![],
        }
    }

    #[test]
    fn label_round_trips() {
        let d = FieldDigests::of(&spec());
        assert_eq!(FieldDigests::from_label(&d.to_label()), Some(d));
        assert_eq!(FieldDigests::from_label("nonsense"), None);
    }

    #[test]
    fn names_each_changed_field_and_env_var() {
        let a = spec();
        let mut b = spec();
        b.image = "reg/p/web:v2".into();
        b.memory = Some(1 << 20);
        b.env.insert("A".into(), EnvValue::Plain("2".into()));
        b.env
            .insert("TOKEN".into(), EnvValue::Secret(SecretRef::Env("T".into())));
        let (f, e) = differences(&FieldDigests::of(&a), &FieldDigests::of(&b));
        assert_eq!(f, vec!["image", "memory"]);
        assert_eq!(e, vec!["~A", "+TOKEN (secret)"]);
    }

    #[test]
    fn fleet_labels_and_volume_order_are_not_differences() {
        let mut a = spec();
        a.volumes = vec!["/a:/a".into(), "/b:/b".into()];
        let mut b = a.clone();
        b.volumes.reverse();
        b.labels.insert("fleet.version".into(), "v9".into());
        assert_eq!(
            differences(&FieldDigests::of(&a), &FieldDigests::of(&b)),
            (vec![], vec![])
        );
    }

    #[test]
    fn secret_values_never_enter_the_label() {
        let mut a = spec();
        a.env.insert(
            "PW".into(),
            EnvValue::Secret(SecretRef::File("/run/pw".to_string().into())),
        );
        let label = label_value(&a);
        assert!(!label.contains("/run/pw"));
        assert!(label.contains("\"PW\":\"s:"));
    }
}
