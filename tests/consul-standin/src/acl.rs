//! ACLs the way Consul resolves them (`acl/policy_authorizer.go`, `agent/acl.go`): tokens with
//! rules on resources by exact name or by prefix (the longest prefix wins, an exact rule wins over
//! every prefix), a default policy for what no rule covers, the agent's default token for requests
//! without one, and 403 `ACL not found` for a token nobody knows.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Deny,
    Read,
    Write,
}

impl Access {
    fn parse(text: &str) -> Result<Access, String> {
        match text {
            "deny" => Ok(Access::Deny),
            "read" | "list" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            other => Err(format!("invalid ACL policy {other:?}")),
        }
    }
}

/// The resources the stand-in knows rules for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Service,
    Key,
    Node,
    Session,
    Agent,
}

impl Resource {
    const ALL: [(Resource, &'static str); 5] = [
        (Resource::Service, "service"),
        (Resource::Key, "key"),
        (Resource::Node, "node"),
        (Resource::Session, "session"),
        (Resource::Agent, "agent"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(r, _)| *r == self).unwrap().1
    }
}

/// One token's rules: `(resource, exact?, name or prefix) -> access`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub management: bool,
    rules: BTreeMap<(Resource, bool, String), Access>,
}

impl Policy {
    /// Parses Consul's JSON rule form, e.g.
    /// `{"key_prefix": {"app/": {"policy": "write"}}, "service": {"web": {"policy": "read"}}}`.
    pub fn from_rules(rules: &Value) -> Result<Policy, String> {
        let mut policy = Policy::default();
        let Value::Object(map) = rules else {
            return Err("ACL rules must be a JSON object".into());
        };
        for (block, entries) in map {
            let (resource, exact) = Resource::ALL
                .iter()
                .find_map(|(r, name)| {
                    if block == name {
                        Some((*r, true))
                    } else if block.strip_suffix("_prefix") == Some(name) {
                        Some((*r, false))
                    } else {
                        None
                    }
                })
                .ok_or_else(|| format!("unknown ACL rule block {block:?}"))?;
            let Value::Object(entries) = entries else {
                return Err(format!("ACL rule block {block:?} must be an object"));
            };
            for (name, rule) in entries {
                let text = match rule {
                    Value::String(s) => s.as_str(),
                    Value::Object(o) => o.get("policy").and_then(Value::as_str).unwrap_or(""),
                    _ => "",
                };
                policy
                    .rules
                    .insert((resource, exact, name.clone()), Access::parse(text)?);
            }
        }
        Ok(policy)
    }

    fn lookup(&self, resource: Resource, name: &str) -> Option<Access> {
        if self.management {
            return Some(Access::Write);
        }
        if let Some(a) = self.rules.get(&(resource, true, name.to_string())) {
            return Some(*a);
        }
        self.rules
            .iter()
            .filter(|((r, exact, prefix), _)| {
                *r == resource && !*exact && name.starts_with(prefix.as_str())
            })
            .max_by_key(|((_, _, prefix), _)| prefix.len())
            .map(|(_, a)| *a)
    }
}

/// The ACL system of one cluster (servers and agents load the same).
#[derive(Debug, Clone)]
pub struct Acl {
    /// `acl.default_policy`: what no rule covers.
    pub default_allow: bool,
    /// Secret ID -> policy. `anonymous` is the token of requests that carry none.
    pub tokens: BTreeMap<String, Policy>,
    /// `acl.tokens.default`: the agent's token for requests without one.
    pub default_token: Option<String>,
}

/// The JSON file `--acl-file` reads.
#[derive(Debug, Deserialize)]
struct AclFile {
    #[serde(default = "deny")]
    default_policy: String,
    #[serde(default)]
    default_token: Option<String>,
    #[serde(default)]
    tokens: BTreeMap<String, TokenFile>,
}

fn deny() -> String {
    "deny".into()
}

#[derive(Debug, Deserialize)]
struct TokenFile {
    #[serde(default)]
    management: bool,
    #[serde(default)]
    rules: Option<Value>,
}

/// A request's resolved token.
#[derive(Debug, Clone)]
pub struct Authz<'a> {
    acl: Option<&'a Acl>,
    policy: Option<&'a Policy>,
}

pub const ANONYMOUS: &str = "anonymous";

impl Acl {
    /// The one-token setup of the old stand-in flag `--acl-token`: that token may do everything,
    /// the default policy is deny, requests without a token are anonymous.
    pub fn single_token(token: &str) -> Acl {
        let mut tokens = BTreeMap::new();
        tokens.insert(
            token.to_string(),
            Policy {
                management: true,
                ..Default::default()
            },
        );
        Acl {
            default_allow: false,
            tokens,
            default_token: None,
        }
    }

    /// Parses an ACL file:
    /// `{"default_policy": "deny", "default_token": "…", "tokens": {"secret": {"management": true},
    /// "reader": {"rules": {"service_prefix": {"": {"policy": "read"}}}}}}`.
    pub fn from_json(text: &str) -> Result<Acl, String> {
        let file: AclFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let default_allow = match file.default_policy.as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(format!(
                    "default_policy must be allow or deny, not {other:?}"
                ));
            }
        };
        let mut tokens = BTreeMap::new();
        for (secret, t) in file.tokens {
            let mut policy = match &t.rules {
                Some(rules) => Policy::from_rules(rules)?,
                None => Policy::default(),
            };
            policy.management = t.management;
            tokens.insert(secret, policy);
        }
        Ok(Acl {
            default_allow,
            tokens,
            default_token: file.default_token,
        })
    }

    /// Resolves a request's token (`None`: it carried none). `Err` is the 403 body.
    pub fn resolve(&self, given: Option<&str>) -> Result<Authz<'_>, &'static str> {
        let secret = given
            .filter(|t| !t.is_empty())
            .or(self.default_token.as_deref());
        let policy = match secret {
            None | Some(ANONYMOUS) => self.tokens.get(ANONYMOUS),
            Some(secret) => Some(self.tokens.get(secret).ok_or("ACL not found")?),
        };
        Ok(Authz {
            acl: Some(self),
            policy,
        })
    }
}

impl Authz<'_> {
    /// ACLs disabled: everything is allowed.
    pub fn allow_all() -> Authz<'static> {
        Authz {
            acl: None,
            policy: None,
        }
    }

    pub fn access(&self, resource: Resource, name: &str) -> Access {
        let Some(acl) = self.acl else {
            return Access::Write;
        };
        self.policy
            .and_then(|p| p.lookup(resource, name))
            .unwrap_or(if acl.default_allow {
                Access::Write
            } else {
                Access::Deny
            })
    }

    pub fn can_read(&self, resource: Resource, name: &str) -> bool {
        self.access(resource, name) >= Access::Read
    }

    pub fn can_write(&self, resource: Resource, name: &str) -> bool {
        self.access(resource, name) >= Access::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl() -> Acl {
        Acl::from_json(
            r#"{"default_policy":"deny","tokens":{
                "root":{"management":true},
                "app":{"rules":{"key_prefix":{"app/":{"policy":"write"},"app/secret/":{"policy":"deny"}},
                                 "service":{"web":{"policy":"read"}},
                                 "service_prefix":{"":{"policy":"read"},"web":{"policy":"write"}}}}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_exact_beats_prefix() {
        let acl = acl();
        let a = acl.resolve(Some("app")).unwrap();
        assert!(a.can_write(Resource::Key, "app/x"));
        assert!(!a.can_read(Resource::Key, "app/secret/x"));
        assert!(!a.can_read(Resource::Key, "other"));
        // exact `web` read beats prefix `web` write
        assert!(!a.can_write(Resource::Service, "web"));
        assert!(a.can_write(Resource::Service, "web-2"));
        assert!(a.can_read(Resource::Service, "db"));
        assert!(
            acl.resolve(Some("root"))
                .unwrap()
                .can_write(Resource::Key, "x")
        );
    }

    #[test]
    fn unknown_token_is_not_found_and_no_token_is_anonymous() {
        let acl = acl();
        assert_eq!(acl.resolve(Some("nope")).unwrap_err(), "ACL not found");
        let anon = acl.resolve(None).unwrap();
        assert!(!anon.can_read(Resource::Key, "app/x"));
        let mut with_default = acl.clone();
        with_default.default_token = Some("app".into());
        assert!(
            with_default
                .resolve(None)
                .unwrap()
                .can_write(Resource::Key, "app/x")
        );
    }
}
