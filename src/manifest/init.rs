//! `fleet init`: the starter files of each template (from `templates/`, built into the binary).

/// A template's files: path relative to the project directory, and content with `{{name}}`.
pub struct Template {
    pub name: &'static str,
    pub files: &'static [(&'static str, &'static str)],
}

pub const TEMPLATES: &[Template] = &[
    Template {
        name: "node",
        files: &[
            (
                "fleet.toml",
                include_str!("../../templates/node/fleet.toml"),
            ),
            (
                "Dockerfile",
                include_str!("../../templates/node/Dockerfile"),
            ),
            (
                "ecosystem.config.js",
                include_str!("../../templates/node/ecosystem.config.js"),
            ),
            ("index.js", include_str!("../../templates/node/index.js")),
            (
                "package.json",
                include_str!("../../templates/node/package.json"),
            ),
        ],
    },
    Template {
        name: "static",
        files: &[
            (
                "fleet.toml",
                include_str!("../../templates/static/fleet.toml"),
            ),
            (
                "Dockerfile",
                include_str!("../../templates/static/Dockerfile"),
            ),
            (
                "public/index.html",
                include_str!("../../templates/static/public/index.html"),
            ),
        ],
    },
];

pub fn template(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// A project name from a directory name: lowercase letters, digits and `-`.
pub fn project_name(dir_name: &str) -> String {
    let s: String = dir_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-');
    if s.is_empty() || !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        "app".into()
    } else {
        s.chars().take(40).collect()
    }
}

/// The schema directive of the templates' manifests, which point at the repository's copy.
const TEMPLATE_SCHEMA: &str = "#:schema ../../docs/fleet.schema.json";

/// Where a written project's manifest finds its schema: beside it, written by `fleet init` from
/// this binary, so an editor checks the keys of the fleet that wrote it, offline.
pub const SCHEMA_FILE: &str = "fleet.schema.json";

/// The files of `template` for project `name`, ready to write: the template's, and the JSON
/// Schema its `fleet.toml` names.
pub fn render(template: &Template, name: &str) -> Vec<(&'static str, String)> {
    let mut files: Vec<(&'static str, String)> = template
        .files
        .iter()
        .map(|(p, c)| {
            let c = c
                .replace("{{name}}", name)
                .replace(TEMPLATE_SCHEMA, &format!("#:schema {SCHEMA_FILE}"));
            (*p, c)
        })
        .collect();
    files.push((SCHEMA_FILE, super::keys::schema_text() + "\n"));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_validates() {
        for t in TEMPLATES {
            let files = render(t, "demo");
            let toml = &files
                .iter()
                .find(|(p, _)| *p == "fleet.toml")
                .expect("has a manifest")
                .1;
            let loaded = crate::manifest::load_str(
                toml,
                crate::manifest::Format::Toml,
                "fleet.toml",
                std::path::Path::new("/p"),
            )
            .unwrap_or_else(|e| {
                panic!("template {}: {}", t.name, crate::manifest::render_plain(&e))
            });
            let state = loaded
                .resolve("production", &loaded.placeholder_versions())
                .expect("resolves");
            assert_eq!(state.hosts[0].instances.len(), 1);
            assert!(files.iter().all(|(_, c)| !c.contains("{{")), "{}", t.name);
            assert!(
                toml.starts_with(&format!("#:schema {SCHEMA_FILE}\n")),
                "{toml}"
            );
            assert!(files.iter().any(|(p, _)| *p == SCHEMA_FILE));
        }
        assert!(
            template("node")
                .unwrap()
                .files
                .iter()
                .any(|(_, c)| c.contains("pm2-runtime"))
        );
        assert_eq!(project_name("My Shop!"), "my-shop");
    }
}
