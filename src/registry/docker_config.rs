//! What `docker login` left for a registry, read the way the docker CLI reads it: the
//! registry's credential helper (`credHelpers.<server>`), else the default store
//! (`credsStore`), else the file store (`auths.<server>`). A helper is the program
//! `docker-credential-<name>` on `PATH`: `get`, the server on stdin, JSON
//! `{"ServerURL","Username","Secret"}` on stdout, or exit 1 with
//! `credentials not found in native keychain` when it has none.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::{Credentials, RegistryError};

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The credentials the Docker config at `path` has for `server`, if any.
pub fn credentials(
    server: &str,
    path: Option<PathBuf>,
) -> Result<Option<Credentials>, RegistryError> {
    credentials_with(server, path, &|name| {
        PathBuf::from(format!("docker-credential-{name}"))
    })
}

/// [`credentials`], with the helper programs found by `program` (tests).
fn credentials_with(
    server: &str,
    path: Option<PathBuf>,
    program: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<Credentials>, RegistryError> {
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Ok(None);
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    let helper = v
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| h.iter().find(|(k, _)| same_server(k, server)))
        .and_then(|(_, name)| name.as_str())
        .or_else(|| v.get("credsStore").and_then(|s| s.as_str()))
        .filter(|name| !name.is_empty());
    if let Some(name) = helper {
        return helper_get(&program(name), server).map_err(|reason| {
            RegistryError::CredentialHelper {
                helper: name.to_string(),
                registry: server.to_string(),
                reason,
            }
        });
    }
    Ok(from_auths(&v, server))
}

/// `http://host:5000/` and `host:5000` name the same registry.
fn same_server(key: &str, server: &str) -> bool {
    let bare = |s: &str| {
        s.trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    };
    bare(key) == bare(server)
}

/// `auths.<server>`: `auth` (base64 `user:pass`), or `username` and `password`.
fn from_auths(v: &serde_json::Value, server: &str) -> Option<Credentials> {
    let auths = v.get("auths")?.as_object()?;
    let entry = auths
        .iter()
        .find_map(|(k, v)| same_server(k, server).then_some(v))?;
    if let Some(a) = entry.get("auth").and_then(|a| a.as_str()) {
        let decoded = String::from_utf8(B64.decode(a).ok()?).ok()?;
        let (u, p) = decoded.split_once(':')?;
        return Some(Credentials::new(u, p));
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some(Credentials::new(u, p))
}

/// `program get` with `server` on stdin. `Ok(None)` when the helper has nothing for it.
fn helper_get(program: &Path, server: &str) -> Result<Option<Credentials>, String> {
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| format!("cannot write to {}: {e}", program.display()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let said = format!(
            "{}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(format!("failed ({}): {said}", out.status));
    }
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|e| format!("answered something that is not its JSON: {e}"))?;
    let user = v["Username"].as_str().unwrap_or_default();
    let secret = v["Secret"].as_str().unwrap_or_default();
    if user == "<token>" {
        return Err("it holds an identity token, which fleet cannot use yet; log in with a user and password".into());
    }
    if user.is_empty() && secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::new(user, secret)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(dir: &Path, json: &str) -> Option<PathBuf> {
        let p = dir.join("config.json");
        std::fs::write(&p, json).unwrap();
        Some(p)
    }

    /// A credential helper that knows one server (`10.0.0.1:5000`: bob / pw).
    fn helper(dir: &Path) -> PathBuf {
        let p = dir.join("docker-credential-test");
        std::fs::write(
            &p,
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n\
             if [ \"$server\" = 10.0.0.1:5000 ]; then\n\
             echo '{\"ServerURL\":\"10.0.0.1:5000\",\"Username\":\"bob\",\"Secret\":\"pw\"}'\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        runnable(&p);
        p
    }

    /// Waits until the script just written at `p` can be run. Another test's thread that forks
    /// while this one has the file open for writing gives its child a copy of that descriptor,
    /// and until the child execs, running the file fails with ETXTBSY ("Text file busy").
    fn runnable(p: &Path) {
        for _ in 0..200 {
            match Command::new(p).stdin(Stdio::null()).output() {
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => return,
            }
        }
        panic!("{} stayed busy (ETXTBSY) for 2 s", p.display());
    }

    #[test]
    fn auths_entries() {
        let d = tempfile::tempdir().unwrap();
        let auth = B64.encode("bob:pw");
        let p = config(
            d.path(),
            &format!(r#"{{"auths":{{"http://10.0.0.1:5000/":{{"auth":"{auth}"}}}}}}"#),
        );
        let c = credentials("10.0.0.1:5000", p.clone()).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password()), ("bob", "pw"));
        assert!(credentials("other:5000", p).unwrap().is_none());
        assert!(credentials("10.0.0.1:5000", None).unwrap().is_none());
    }

    #[test]
    fn a_store_or_a_per_registry_helper_comes_before_auths() {
        let d = tempfile::tempdir().unwrap();
        let h = helper(d.path());
        let prog = |name: &str| {
            assert_eq!(name, "test");
            h.clone()
        };
        let stale = B64.encode("old:stale");
        for json in [
            format!(r#"{{"credsStore":"test","auths":{{"10.0.0.1:5000":{{"auth":"{stale}"}}}}}}"#),
            r#"{"credHelpers":{"https://10.0.0.1:5000":"test"}}"#.to_string(),
        ] {
            let p = config(d.path(), &json);
            let c = credentials_with("10.0.0.1:5000", p.clone(), &prog)
                .unwrap()
                .unwrap();
            assert_eq!((c.username.as_str(), c.password()), ("bob", "pw"), "{json}");
            // The helper has nothing for another server: no credentials, not an error.
            assert!(credentials_with("other:5000", p, &prog).unwrap().is_none());
        }
    }

    #[test]
    fn a_broken_helper_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = config(d.path(), r#"{"credsStore":"nope"}"#);
        let missing = |_: &str| d.path().join("docker-credential-nope");
        match credentials_with("10.0.0.1:5000", p, &missing) {
            Err(e @ RegistryError::CredentialHelper { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains("docker-credential-nope for 10.0.0.1:5000"),
                    "{m}"
                );
            }
            other => panic!("expected a helper error, got {other:?}"),
        }
    }
}
