//! `fleet setup ENV --install-docker`: on a host whose Docker engine does not answer, install
//! the distribution's engine (`docker.io`, Debian and Ubuntu only) and start it. The script is
//! built here from the host's `/etc/os-release` and user, as plain data (`script`);
//! `engine_or_install` asks, runs it and checks that the engine answers.

use bollard::Docker;

use crate::host::HostSession;

/// Why a host's engine cannot be installed by fleet (the message says what to do instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    #[error(
        "{host} runs {distro}: `--install-docker` knows only Debian and Ubuntu; install Docker \
         there as its documentation says, then run setup again"
    )]
    Unsupported { host: String, distro: String },
}

/// `ID` and `ID_LIKE` of an os-release file (`ID=debian`, `ID_LIKE="ubuntu debian"`), lowercased.
fn ids(os_release: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in os_release.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if matches!(key.trim(), "ID" | "ID_LIKE") {
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            out.extend(value.split_whitespace().map(str::to_ascii_lowercase));
        }
    }
    out
}

/// The distribution's name for messages (`PRETTY_NAME`, else `ID`, else "an unknown system").
fn pretty(os_release: &str) -> String {
    let field = |k: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(k)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    field("PRETTY_NAME")
        .or_else(|| field("ID"))
        .unwrap_or_else(|| "an unknown system".into())
}

/// The shell script that installs and starts the engine on `host`, given its os-release and
/// whether fleet's SSH user is root (else every step runs under `sudo -n`, which fails at once
/// rather than asking for a password nobody can type).
pub fn script(host: &str, os_release: &str, root: bool) -> Result<String, InstallError> {
    let ids = ids(os_release);
    if !ids.iter().any(|i| i == "debian" || i == "ubuntu") {
        return Err(InstallError::Unsupported {
            host: host.into(),
            distro: pretty(os_release),
        });
    }
    let steps = "set -e; export DEBIAN_FRONTEND=noninteractive; \
                 apt-get update -q; apt-get install -y -q --no-install-recommends docker.io; \
                 if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
                 systemctl enable --now docker; else service docker start; fi";
    Ok(if root {
        format!("sh -c '{steps}'")
    } else {
        format!("sudo -n sh -c '{steps}'")
    })
}

/// The host's engine. One that does not answer is installed first when `install` is given
/// and says yes to its question (`cli::setup` asks the operator); else, or when it says no,
/// the error says what to do on the host. `progress` hears that the install starts.
pub async fn engine_or_install(
    s: &HostSession,
    install: Option<&dyn Fn(&str) -> bool>,
    progress: &dyn Fn(&str),
) -> Result<Docker, String> {
    let host = &s.target().name;
    let down = match super::engine(s).await {
        Ok(d) => return Ok(d),
        Err(e) => e,
    };
    let Some(confirm) = install else {
        return Err(format!("{} ({down})", super::engine_fix(host)));
    };
    let os = s
        .run_ok("cat /etc/os-release")
        .await
        .map_err(|e| format!("cannot read /etc/os-release on {host}: {e}"))?;
    let root = s.run_ok("id -u").await.is_ok_and(|u| u.trim() == "0");
    let script = script(host, &os, root).map_err(|e| e.to_string())?;
    if !confirm(&format!(
        "The Docker engine on {host} does not answer ({down}). Install docker.io there?"
    )) {
        return Err(format!(
            "{} (not installed: no confirmation)",
            super::engine_fix(host)
        ));
    }
    progress(&format!(
        "{host}: installing docker.io (apt-get), then starting it"
    ));
    s.run_ok(&script)
        .await
        .map_err(|e| format!("installing docker.io on {host} failed: {e}"))?;
    super::engine(s).await.map_err(|e| {
        format!(
            "docker.io is installed on {host} but its engine does not answer ({e}); on {host} \
             run `systemctl status docker`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
    const UBUNTU: &str = "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nID=ubuntu\nID_LIKE=debian\n";
    const MINT: &str = "PRETTY_NAME=\"Linux Mint 21\"\nID=linuxmint\nID_LIKE=\"ubuntu debian\"\n";
    const FEDORA: &str = "PRETTY_NAME=\"Fedora Linux 40\"\nID=fedora\n";

    #[test]
    fn debian_and_ubuntu_get_the_distros_engine_started_by_systemd_or_service() {
        for os in [DEBIAN, UBUNTU, MINT] {
            let s = script("web1", os, true).unwrap();
            assert!(s.starts_with("sh -c '"), "{s}");
            assert!(s.contains("apt-get install -y -q --no-install-recommends docker.io"));
            assert!(s.contains("systemctl enable --now docker"), "{s}");
            assert!(s.contains("service docker start"), "{s}");
        }
    }

    #[test]
    fn a_user_who_is_not_root_runs_it_under_sudo_without_a_prompt() {
        let s = script("web1", DEBIAN, false).unwrap();
        assert!(s.starts_with("sudo -n sh -c '"), "{s}");
    }

    #[test]
    fn another_system_is_refused_with_its_name() {
        let e = script("web3", FEDORA, true).unwrap_err();
        assert_eq!(
            e,
            InstallError::Unsupported {
                host: "web3".into(),
                distro: "Fedora Linux 40".into()
            }
        );
        assert!(e.to_string().contains("web3 runs Fedora Linux 40"), "{e}");
        assert!(script("web3", "", true).is_err(), "no os-release: refused");
    }
}
