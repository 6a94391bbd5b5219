//! Problems found in a manifest, collected all at once and rendered as miette diagnostics.

use std::time::Duration;

use miette::SourceSpan;

use super::keys::Keys;
use super::node::{Key, Node, Span, Table, Value};

/// Where docs/ explains each diagnostic code, as cargo and rustc point at their docs: the code,
/// the file and its section heading (without backticks). Every `code(...)` fleet reports has
/// a row, and `see` puts it in the diagnostic's help.
pub const DOCS: &[(&str, &str, &str)] = &[
    (
        "fleet::manifest::not_found",
        "docs/manifest.md",
        "The fleet manifest",
    ),
    (
        "fleet::manifest::read",
        "docs/manifest.md",
        "The fleet manifest",
    ),
    (
        "fleet::manifest::invalid",
        "docs/manifest.md",
        "The fleet manifest",
    ),
    (
        "fleet::manifest::environment",
        "docs/manifest.md",
        "[environments.NAME]",
    ),
    (
        "fleet::manifest::resolve",
        "docs/manifest.md",
        "Resolution: what fleet show prints",
    ),
    (
        "fleet::import::pm2",
        "docs/manifest.md",
        "Importing from pm2",
    ),
];

/// The manifest reference, where each table of keys has its section (`keys::Keys::section`).
pub const MANIFEST_DOC: &str = "docs/manifest.md";

/// The pointer to the docs of a diagnostic code: `see docs/manifest.md, "Ports"`.
pub fn see(code: &str) -> String {
    let (_, file, section) = DOCS
        .iter()
        .find(|(c, _, _)| *c == code)
        .unwrap_or_else(|| panic!("diag::DOCS has no row for {code}"));
    see_section(file, section)
}

fn see_section(file: &str, section: &str) -> String {
    format!("see {file}, \"{section}\"")
}

/// Whether the Markdown `doc` has a heading `section` (compared without backticks).
#[cfg(test)]
pub(crate) fn has_heading(doc: &str, section: &str) -> bool {
    doc.lines()
        .filter(|l| l.starts_with('#'))
        .any(|l| l.trim_start_matches('#').trim().replace('`', "") == section)
}

/// One problem at one place of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub span: SourceSpan,
    pub label: String,
    pub help: Option<String>,
    /// Set by `fit` when the span's line is too long to show as a snippet: its line and
    /// column (1-based), said in the message instead.
    pub place: Option<(usize, usize)>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.place {
            None => f.write_str(&self.message),
            Some((line, column)) => write!(
                f,
                "{} (line {line}, column {column}: {})",
                self.message, self.label
            ),
        }
    }
}

impl std::error::Error for Problem {}

impl miette::Diagnostic for Problem {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        if self.place.is_some() {
            return None;
        }
        Some(Box::new(std::iter::once(
            miette::LabeledSpan::new_with_span(Some(self.label.clone()), self.span),
        )))
    }
}

/// Lines longer than this (in bytes) are not shown as snippets. miette lays a snippet out with
/// format widths, which panic past 65535 columns (a tab takes 4): a minified JSON file or a
/// long string would crash the report instead of showing it. Nobody reads such a snippet anyway.
pub const MAX_SNIPPET_LINE: usize = 1000;

/// Every problem whose span starts or ends on a line longer than `MAX_SNIPPET_LINE` gets its
/// place in words (line and column) instead of a snippet. Call it with the text the spans
/// point into before handing the problems to miette.
pub fn fit(src: &str, problems: &mut [Problem]) {
    for p in problems {
        let start = p.span.offset().min(src.len());
        let end = (p.span.offset() + p.span.len()).min(src.len());
        if line_of(src, start).len() > MAX_SNIPPET_LINE
            || line_of(src, end).len() > MAX_SNIPPET_LINE
        {
            p.place = Some(line_column(src, start));
        }
    }
}

/// The line (without its newline) that holds byte `at`.
fn line_of(src: &str, at: usize) -> &str {
    let bytes = src.as_bytes();
    let start = bytes[..at]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let end = bytes[at..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(src.len(), |i| at + i);
    &src[start..end]
}

/// 1-based line and column (in characters) of byte `at`.
pub fn line_column(src: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(src.len());
    while !src.is_char_boundary(at) {
        at -= 1;
    }
    let before = &src[..at];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Collects problems while decoding. Every `Option`-returning helper has already recorded
/// why it returns `None`, so callers just skip what is missing and carry on.
#[derive(Debug, Default)]
pub struct Cx {
    pub problems: Vec<Problem>,
}

/// The closest candidate to a misspelt name, if close enough to be a likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

impl Cx {
    pub fn err(
        &mut self,
        span: &Span,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let p = Problem {
            message: message.into(),
            span: (span.start, span.end - span.start).into(),
            label: label.into(),
            help,
            place: None,
        };
        if !self.problems.contains(&p) {
            self.problems.push(p);
        }
    }

    /// Whether `k` can name a process environment variable; if not, a problem at it.
    pub fn env_var_name(&mut self, k: &Key) -> bool {
        if !(k.name.is_empty() || k.name.contains('=') || k.name.contains('\0')) {
            return true;
        }
        self.err(
            &k.span,
            format!("`{}` is not a valid environment variable name", k.name),
            "invalid name",
            Some("names cannot be empty or contain `=`".into()),
        );
        false
    }

    fn wrong_type(&mut self, node: &Node, expected: &str) {
        self.err(
            &node.span,
            format!("expected {expected}, found {}", node.value.type_name()),
            format!("this should be {expected}"),
            None,
        );
    }

    /// A table whose keys must all be in `allowed`; unknown keys are reported with a suggestion.
    pub fn table<'a>(&mut self, node: &'a Node, what: &str, allowed: &Keys) -> Option<&'a Table> {
        let Value::Table(t) = &node.value else {
            self.wrong_type(node, &format!("a table ({what})"));
            return None;
        };
        for (k, _) in &t.entries {
            if !allowed.has(&k.name) {
                self.unknown_key(k, what, allowed);
            }
        }
        Some(t)
    }

    pub fn unknown_key(&mut self, k: &Key, what: &str, allowed: &Keys) {
        let hint = match did_you_mean(&k.name, allowed.names()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!(
                "{what} takes: {}",
                allowed.names().collect::<Vec<_>>().join(", ")
            ),
        };
        let help = format!("{hint}\n{}", see_section(MANIFEST_DOC, allowed.section));
        self.err(
            &k.span,
            format!("unknown key `{}` in {what}", k.name),
            "unknown key",
            Some(help),
        );
    }

    /// A table of arbitrary keys (maps such as `env` or `config`).
    pub fn map<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a Table> {
        match &node.value {
            Value::Table(t) => Some(t),
            _ => {
                self.wrong_type(node, &format!("a table ({what})"));
                None
            }
        }
    }

    pub fn str(&mut self, node: &Node) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.wrong_type(node, "a string");
                None
            }
        }
    }

    /// A non-empty string.
    pub fn text(&mut self, node: &Node) -> Option<String> {
        let s = self.str(node)?;
        if s.trim().is_empty() {
            self.err(&node.span, "this must not be empty", "empty", None);
            return None;
        }
        Some(s)
    }

    pub fn bool(&mut self, node: &Node) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.wrong_type(node, "a boolean");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn int(&mut self, node: &Node, min: i64, max: i64) -> Option<i64> {
        match node.value {
            Value::Int(n) if (min..=max).contains(&n) => Some(n),
            Value::Int(n) => {
                self.err(
                    &node.span,
                    format!("{n} is out of range"),
                    format!("must be between {min} and {max}"),
                    None,
                );
                None
            }
            _ => {
                self.wrong_type(node, "an integer");
                None
            }
        }
    }

    pub fn u16(&mut self, node: &Node, min: u16) -> Option<u16> {
        self.int(node, min as i64, u16::MAX as i64)
            .map(|n| n as u16)
    }

    pub fn u32(&mut self, node: &Node, min: u32) -> Option<u32> {
        self.int(node, min as i64, u32::MAX as i64)
            .map(|n| n as u32)
    }

    /// A positive number (integer or float).
    pub fn positive(&mut self, node: &Node) -> Option<f64> {
        let f = match node.value {
            Value::Int(n) => n as f64,
            Value::Float(f) => f,
            _ => {
                self.wrong_type(node, "a number");
                return None;
            }
        };
        if !(f.is_finite() && f > 0.0) {
            self.err(
                &node.span,
                format!("{f} is not a positive number"),
                "must be > 0",
                None,
            );
            return None;
        }
        Some(f)
    }

    /// A humantime duration: `500ms`, `5s`, `1m 30s`.
    pub fn duration(&mut self, node: &Node) -> Option<Duration> {
        let s = self.str(node)?;
        match humantime::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    &node.span,
                    format!("`{s}` is not a duration: {e}"),
                    "not a duration",
                    Some("write a number and a unit, e.g. `500ms`, `5s`, `2m`, `1h 30m`".into()),
                );
                None
            }
        }
    }

    /// A size in bytes: `256MiB`, `1GB`, `512 KiB`, or a plain integer of bytes.
    pub fn size(&mut self, node: &Node) -> Option<u64> {
        match &node.value {
            Value::Int(n) if *n > 0 => Some(*n as u64),
            Value::Str(s) => match s.trim().parse::<bytesize::ByteSize>() {
                Ok(b) if b.as_u64() > 0 => Some(b.as_u64()),
                _ => {
                    self.err(
                        &node.span,
                        format!("`{s}` is not a size"),
                        "not a size",
                        Some("write a number and a unit, e.g. `256MiB`, `1GiB`, `512MB`".into()),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(node, "a size such as \"256MiB\"");
                None
            }
        }
    }

    /// An array of strings; a single string is accepted as a one-element array only when `one` is set.
    pub fn str_list(&mut self, node: &Node) -> Option<Vec<(String, Span)>> {
        let Value::Array(items) = &node.value else {
            self.wrong_type(node, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            if let Some(s) = self.text(item) {
                out.push((s, item.span.clone()));
            }
        }
        Some(out)
    }

    /// A table of string values (numbers and booleans are accepted and written as text, as
    /// they would be in an environment variable).
    pub fn string_map(&mut self, node: &Node, what: &str) -> Vec<(String, String, Span)> {
        let Some(t) = self.map(node, what) else {
            return Vec::new();
        };
        t.entries
            .iter()
            .filter_map(|(k, v)| Some((k.name.clone(), self.scalar_text(v)?, k.span.clone())))
            .collect()
    }

    /// A string, or a number / boolean written as text.
    pub fn scalar_text(&mut self, node: &Node) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(n) => Some(n.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.wrong_type(node, "a string");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code in the source has a row in `DOCS`, each row's section is a heading of its
    /// file, and each diagnostic's help ends with its pointer.
    #[test]
    fn every_code_points_at_a_section_that_exists() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut codes = Vec::new();
        for entry in walkdir::WalkDir::new(root.join("src")) {
            let path = entry.unwrap().into_path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (at, _) in text.match_indices("code(fleet::") {
                    let code: String = text[at + "code(".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    // (Not this test's own search string.)
                    if !code.ends_with(':') {
                        codes.push(code);
                    }
                }
            }
        }
        assert!(codes.len() >= 6, "{codes:?}");
        for code in &codes {
            assert!(
                DOCS.iter().any(|(c, _, _)| c == code),
                "no DOCS row for {code}"
            );
        }
        for (code, file, section) in DOCS {
            assert!(
                codes.iter().any(|c| c == code),
                "{code} is reported nowhere"
            );
            let doc = std::fs::read_to_string(root.join(file)).unwrap();
            assert!(
                has_heading(&doc, section),
                "{file} has no heading \"{section}\" (for {code})"
            );
        }

        use crate::manifest::{ManifestError, ResolveError, pm2};
        let src = miette::NamedSource::new("m", std::sync::Arc::<str>::from(""));
        let errors: Vec<Box<dyn miette::Diagnostic>> = vec![
            Box::new(ManifestError::NotFound(".".into())),
            Box::new(ManifestError::Read {
                path: "m".into(),
                source: std::io::ErrorKind::NotFound.into(),
            }),
            Box::new(ManifestError::Invalid {
                path: "m".into(),
                src: src.clone(),
                problems: vec![],
            }),
            Box::new(ManifestError::UnknownEnvironment {
                name: "x".into(),
                path: "m".into(),
                known: vec![],
            }),
            Box::new(ManifestError::Resolve {
                env: "x".into(),
                source: ResolveError::NoVersion("a".into()),
            }),
            Box::new(pm2::Pm2Error {
                path: "m".into(),
                src,
                problems: vec![],
            }),
        ];
        assert_eq!(errors.len(), DOCS.len());
        for e in errors {
            let code = e.code().expect("every error has a code").to_string();
            let help = e.help().expect("every error has a help").to_string();
            assert!(help.ends_with(&see(&code)), "{code}: {help}");
        }
    }

    #[test]
    fn long_lines_get_their_place_in_words_not_a_snippet() {
        let long = "x".repeat(70_000);
        let src = format!("a = 1\nb = \"{long}\" ; c\nd = 2\n");
        let mut cx = Cx::default();
        let at = src.find(" ; c").unwrap() + 3;
        cx.err(&(at..at + 1), "bad", "here", None);
        cx.err(&(0..1), "short", "fine", None);
        fit(&src, &mut cx.problems);
        assert_eq!(cx.problems[0].place, Some((2, 70_010)));
        assert_eq!(
            cx.problems[0].to_string(),
            "bad (line 2, column 70010: here)"
        );
        assert!(miette::Diagnostic::labels(&cx.problems[0]).is_none());
        assert_eq!(cx.problems[1].place, None);
        assert!(miette::Diagnostic::labels(&cx.problems[1]).is_some());
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(
            did_you_mean("instance", ["instances", "image"]),
            Some("instances")
        );
        assert_eq!(did_you_mean("zzz", ["instances", "image"]), None);
    }
}
