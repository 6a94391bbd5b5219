//! What editors and shells get from fleet (docs/editors.md): the manifest's JSON Schema, committed
//! and checked against every example, and shell completion asked as a shell asks it.

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

/// A key fleet does not know is refused by both: `fleet validate` and the schema, in every
/// table the schema describes.
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
