//! What editors, shells and installers get from fleet (docs/editors.md): the manifest's JSON
//! Schema, committed and checked against every example; shell completion asked as a shell asks
//! it; the version with its commit.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleet::manifest::{self, Format};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleet"));
    c.env_remove("FLEET_FILE").env("NO_COLOR", "1");
    c
}

const SCHEMA: &str = "docs/fleet.schema.json";

fn schema() -> Value {
    let text = std::fs::read_to_string(root().join(SCHEMA)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema is a valid draft 2020-12 schema")
}

/// The problems the schema finds in a manifest (TOML or JSON), as text; empty when it is valid.
fn schema_problems(v: &jsonschema::Validator, src: &str, format: Format) -> Vec<String> {
    let doc: Value = match format {
        Format::Toml => toml::from_str(src).unwrap(),
        Format::Json => serde_json::from_str(src).unwrap(),
    };
    v.iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn committed_schema_is_what_fleet_schema_prints() {
    let out = fleet().arg("schema").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let committed = std::fs::read_to_string(root().join(SCHEMA)).unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "{SCHEMA} is not what `fleet schema` prints: regenerate it with\n    cargo run -q -- schema > {SCHEMA}"
    );
}

/// Every example manifest, template and valid fixture names the schema at its top (the path,
/// relative to the file, is docs/fleet.schema.json), and the schema accepts it.
#[test]
fn every_example_names_the_schema_and_validates_against_it() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["manifests", "templates"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let f = e.unwrap().path().join("fleet.toml");
            if f.is_file() {
                files.push(f);
            }
        }
    }
    let fixtures = root().join("tests/fixtures/manifests");
    files.push(fixtures.join("shop.toml"));
    files.push(fixtures.join("shop.json"));
    assert!(files.len() >= 7, "{files:?}");

    let v = validator();
    let schema_file = root().join(SCHEMA).canonicalize().unwrap();
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        let format = Format::of(f);
        let named = match format {
            Format::Toml => src
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("#:schema "))
                .map(str::to_string),
            Format::Json => serde_json::from_str::<Value>(&src).unwrap()["$schema"]
                .as_str()
                .map(str::to_string),
        };
        let named =
            named.unwrap_or_else(|| panic!("{} does not start with its schema", f.display()));
        let target = f.parent().unwrap().join(named.trim());
        assert_eq!(
            target.canonicalize().ok().as_deref(),
            Some(schema_file.as_path()),
            "{}: the schema path {named} is not {SCHEMA}",
            f.display()
        );
        let src = src.replace("{{name}}", "demo");
        let problems = schema_problems(&v, &src, format);
        assert!(problems.is_empty(), "{}: {problems:#?}", f.display());
        // And fleet itself takes it (the templates are checked in manifest::init).
        if !f.starts_with(root().join("templates")) {
            manifest::load(Some(f)).unwrap();
        }
    }
}

/// What `fleet init` writes: a manifest naming the schema written beside it.
#[test]
fn fleet_init_writes_the_schema_its_manifest_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = fleet()
        .args(["init", "--template", "static", "--name", "site"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let toml = std::fs::read_to_string(dir.path().join("fleet.toml")).unwrap();
    assert!(toml.starts_with("#:schema fleet.schema.json\n"), "{toml}");
    let written = std::fs::read_to_string(dir.path().join("fleet.schema.json")).unwrap();
    assert_eq!(
        written,
        std::fs::read_to_string(root().join(SCHEMA)).unwrap()
    );
    assert!(schema_problems(&validator(), &toml, Format::Toml).is_empty());
}

/// A key fleet does not know is refused by both, `fleet validate` and the schema, in every kind
/// of table; so is a value of the wrong kind.
#[test]
fn a_misspelt_key_is_refused_by_fleet_and_by_the_schema() {
    let base = std::fs::read_to_string(root().join("tests/fixtures/manifests/shop.toml")).unwrap();
    let v = validator();
    assert!(schema_problems(&v, &base, Format::Toml).is_empty());
    let cases = [
        ("instances = ", "instnaces = "),
        ("[project]\n", "[project]\nnmae = \"x\"\n"),
        ("[consul]\n", "[consul]\nadress = \"x\"\n"),
        ("http = \"/health\"", "htp = \"/health\""),
        (
            "[environments.production]\n",
            "[environments.production]\nhost = []\n",
        ),
        (
            "[environments.staging.apps.api]\n",
            "[environments.staging.apps.api]\nport_ = 1\n",
        ),
        (
            "[environments.staging.apps.api]\n",
            "[environments.staging.apps.api]\nbuild = \".\"\n",
        ),
        // Values of the wrong kind.
        ("instances = 2", "instances = \"2\""),
        ("stop_timeout = \"10s\"", "stop_timeout = 10"),
        (
            "password = { env = \"FLEET_REGISTRY_PASSWORD\" }",
            "password = \"hunter2\"",
        ),
        ("published = 80", "published = true"),
        ("restart = \"always\"", "restart = \"sometimes\""),
        ("restart = \"on-failure:5\"", "restart = \"on-failure:x\""),
        ("http = \"/health\"", "http = \"health\""),
        (
            "[consul]\n",
            "[consul]\ntoken = { env = \"A\", file = \"b\" }\n",
        ),
    ];
    for (from, to) in cases {
        assert!(base.contains(from), "{from}");
        let bad = base.replacen(from, to, 1);
        let fleet_says = manifest::load_str(&bad, Format::Toml, "fleet.toml", root());
        assert!(fleet_says.is_err(), "fleet takes {to}");
        let problems = schema_problems(&v, &bad, Format::Toml);
        assert!(!problems.is_empty(), "the schema takes {to}");
    }
}

/// What fleet answers when a shell asks for completions of `words` (the command line, the last
/// word being completed), in `dir`, with the environment that shell's script sets.
fn complete(shell: &str, dir: &Path, words: &[&str]) -> Vec<String> {
    let index = (words.len() - 1).to_string();
    let mut c = fleet();
    c.current_dir(dir)
        .env("COMPLETE", shell)
        .arg("--")
        .args(words);
    let sep = match shell {
        // As the script of `COMPLETE=bash fleet` runs it on <Tab>.
        "bash" => {
            c.env("_CLAP_COMPLETE_INDEX", &index)
                .env("_CLAP_COMPLETE_COMP_TYPE", "9")
                .env("_CLAP_COMPLETE_SPACE", "false")
                .env("_CLAP_IFS", "\u{b}");
            '\u{b}'
        }
        "zsh" => {
            c.env("_CLAP_COMPLETE_INDEX", &index).env("_CLAP_IFS", "\n");
            '\n'
        }
        _ => '\n',
    };
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split(sep)
        .filter(|s| !s.is_empty())
        // fish gets `value<TAB>help`.
        .map(|s| s.split('\t').next().unwrap().to_string())
        .collect()
}

#[test]
fn shells_complete_environments_apps_and_hosts_from_the_manifest() {
    let shop = root().join("manifests/shop");
    for shell in ["bash", "zsh", "fish"] {
        assert_eq!(
            complete(shell, &shop, &["fleet", "deploy", "pro"]),
            ["production"],
            "{shell}"
        );
        assert_eq!(
            complete(shell, &shop, &["fleet", "logs", "production", "w"]),
            ["web", "worker"],
            "{shell}"
        );
        assert_eq!(
            complete(
                shell,
                &shop,
                &["fleet", "restart", "staging", "api", "--host", "h"]
            ),
            ["h1", "h2", "h3"],
            "{shell}"
        );
    }
    // The manifest named with -f, from anywhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let hello = root().join("manifests/hello/fleet.toml");
    assert_eq!(
        complete(
            "bash",
            elsewhere.path(),
            &[
                "fleet",
                "-f",
                hello.to_str().unwrap(),
                "status",
                "production",
                "he"
            ]
        ),
        ["hello"]
    );
    // No manifest: commands still complete, names do not.
    assert_eq!(
        complete("fish", elsewhere.path(), &["fleet", "depl"]),
        ["deploy"]
    );
    assert!(complete("fish", elsewhere.path(), &["fleet", "plan", "p"]).is_empty());
}

/// `COMPLETE=<shell> fleet` prints the script README tells each shell to source, calling this
/// fleet back; bash runs it here as on <Tab>.
#[test]
fn each_shell_gets_a_script_that_calls_fleet_back() {
    let fleet_bin = env!("CARGO_BIN_EXE_fleet");
    for (shell, sets) in [
        ("bash", "COMPLETE=\"bash\""),
        ("zsh", "COMPLETE=\"zsh\""),
        ("fish", "COMPLETE=fish"),
    ] {
        let out = fleet().env("COMPLETE", shell).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains(sets) && script.contains(fleet_bin),
            "{shell}: {script}"
        );
    }
    let tab = r#"source <(COMPLETE=bash "$FLEET_BIN")
COMP_WORDS=(fleet deploy pro); COMP_CWORD=2; COMP_TYPE=9
_clap_complete_fleet fleet pro deploy
printf '%s\n' "${COMPREPLY[@]}""#;
    let out = Command::new("bash")
        .args(["-c", tab])
        .env("FLEET_BIN", fleet_bin)
        .env_remove("FLEET_FILE")
        .current_dir(root().join("manifests/shop"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "production\n");
}

/// `fleet --version` names the commit it was built from (build.rs), when built from a checkout.
#[test]
fn version_names_the_commit() {
    let out = fleet().arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(concat!("fleet ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let head = Command::new("git")
        .args(["log", "-1", "--format=%h %cs"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success());
    if let Some(head) = head {
        let head = String::from_utf8(head.stdout).unwrap();
        assert!(text.contains(&format!("({})", head.trim())), "{text}");
    }
}

/// Every form of value fleet takes, the schema takes too (the examples use only some).
#[test]
fn every_form_fleet_takes_the_schema_takes() {
    let src = r#"
[project]
name = "p"
pre_deploy = "make check"
post_deploy = ["a", "b"]
[registry]
server = "r:5000"
username = { env = "USER" }
password = { file = "secrets/pw" }
insecure = true
[builder]
host = "h1"
[consul]
address = "http://127.0.0.1:8500"
token = { env = "CONSUL_TOKEN" }
datacenter = "dc1"
container_address = "http://172.17.0.1:8500"
[hosts.h1]
address = "10.0.0.1"
user = "deploy"
port = 2222
identity_file = "~/.ssh/id"
docker_socket = "/var/run/docker.sock"
roles = ["web"]
[apps.a]
build = "app"
command = "node app.js"
args = ["--x"]
port = 80
published = false
restart = "on-failure:3"
limits = { memory = 268435456, cpus = 1 }
service = true
health = { tcp = true, deregister_after = "1m 30s", deadline = "2m" }
env = { N = 1, B = true, F = 0.5, S = "s", SECRET = { file = "/run/s" } }
dns = "consul"
[apps.b]
build = { context = "b", dockerfile = "Dockerfile.b", args = { V = "1" }, target = "run" }
hosts = ["h1"]
instances = 0
port = 81
published = 8081
restart = "no"
limits = { memory = "512MiB", cpus = 0.25 }
service = { name = "bee", tags = ["t"], meta = { k = "v" } }
config = { "db/pool" = 5 }
volumes = ["data:/data", "/etc/x:/x:ro"]
labels = { team = "a" }
network = "n"
user = "1000:1000"
workdir = "/w"
batch = 2
stop_timeout = "500ms"
[apps.c]
image = "nginx@sha256:0123456789abcdef"
port = 82
published = "auto"
[environments.production]
hosts = ["h1"]
env = { LEVEL = "info" }
canary = 1
pre_deploy = []
consul = { datacenter = "dc2" }
apps.a.instances = 2
apps.a.health.interval = "1s"
apps.c.image = "reg/c:1"
"#;
    manifest::load_str(src, Format::Toml, "fleet.toml", root())
        .unwrap_or_else(|e| panic!("{}", manifest::render_plain(&e)));
    let problems = schema_problems(&validator(), src, Format::Toml);
    assert!(problems.is_empty(), "{problems:#?}");
}
