//! Which credentials go with a pull: the manifest's registry credentials only with images from
//! that registry; an image from any other registry (`nginx:1.27` from Docker Hub, another
//! registry host) gets what the user's Docker config has for *its* registry (a credential
//! helper or `auths`, as `docker pull` would), or none.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use bollard::auth::DockerCredentials;

use crate::desired::RegistryTarget;
use crate::registry::{Credentials, HUB, RegistryError, credentials, docker_config, registry_of};

/// Docker Hub's key in a Docker config.
const HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";

/// The credentials of every pull of one apply.
pub(super) struct PullAuth {
    /// The manifest's registry and its credentials (the manifest's, else the Docker config's).
    own: Option<(String, Option<Credentials>)>,
    /// Where other registries' credentials come from: a Docker config file.
    config: Option<PathBuf>,
    /// Other registries' credentials, looked up once each.
    others: Mutex<HashMap<String, Option<Credentials>>>,
}

impl PullAuth {
    /// Reads the manifest registry's credentials now (a bad secret fails the apply early).
    pub(super) fn new(registry: Option<&RegistryTarget>) -> Result<Self, RegistryError> {
        Self::with_config(registry, docker_config::path())
    }

    fn with_config(
        registry: Option<&RegistryTarget>,
        config: Option<PathBuf>,
    ) -> Result<Self, RegistryError> {
        let own = match registry {
            Some(r) => Some((r.server.clone(), credentials(r)?)),
            None => None,
        };
        Ok(PullAuth {
            own,
            config,
            others: Mutex::new(HashMap::new()),
        })
    }

    /// What to send with a pull of `image`.
    pub(super) fn for_image(
        &self,
        image: &str,
    ) -> Result<Option<DockerCredentials>, RegistryError> {
        let registry = registry_of(image);
        if let Some((server, creds)) = &self.own
            && server.trim_end_matches('/') == registry
        {
            return Ok(creds.as_ref().map(|c| c.to_docker(server)));
        }
        let key = if registry == HUB {
            HUB_CONFIG_KEY
        } else {
            registry
        };
        if let Some(known) = self.others.lock().unwrap().get(key) {
            return Ok(known.as_ref().map(|c| c.to_docker(key)));
        }
        let found = docker_config::credentials(key, self.config.clone())?;
        let out = found.as_ref().map(|c| c.to_docker(key));
        self.others.lock().unwrap().insert(key.to_string(), found);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::SecretRef;
    use base64::Engine as _;

    #[test]
    fn manifest_credentials_go_only_to_the_manifest_registry() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &config,
            format!(
                r#"{{"auths":{{"other:5000":{{"auth":"{}"}},"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
                b64("carol:other-pw"),
                b64("hubuser:hub-pw")
            ),
        )
        .unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "manifest-pw").unwrap();
        let target = RegistryTarget {
            server: "r:5000".into(),
            username: Some("alice".into()),
            password: Some(SecretRef::File(secret.display().to_string().into())),
            insecure: true,
        };
        let auth = PullAuth::with_config(Some(&target), Some(config.clone())).unwrap();
        let who = |image: &str| {
            auth.for_image(image)
                .unwrap()
                .map(|c| (c.username.unwrap(), c.password.unwrap()))
        };
        let pair = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
        assert_eq!(who("r:5000/p/api:v1"), pair("alice", "manifest-pw"));
        // Other registries: the Docker config's credentials for them, or none.
        assert_eq!(who("nginx:1.27"), pair("hubuser", "hub-pw"));
        assert_eq!(who("other:5000/x:1"), pair("carol", "other-pw"));
        assert_eq!(who("r:50001/p/api:v1"), None);
        assert_eq!(who("r/p/api:v1"), pair("hubuser", "hub-pw"));
        assert_eq!(who("quay.io/x/y:1"), None);
        // Without a Docker config, other registries get nothing.
        let bare = PullAuth::with_config(Some(&target), None).unwrap();
        assert!(bare.for_image("nginx:1.27").unwrap().is_none());
        assert!(bare.for_image("r:5000/p/api:v1").unwrap().is_some());
    }
}
