//! A format-neutral tree of the manifest with byte spans, built from TOML or JSON.
//!
//! serde stops at the first error and loses positions in JSON; decoding our own spanned tree
//! instead lets validation report every problem at once, each at its exact place, with the
//! same code for both formats.

use std::ops::Range;

pub type Span = Range<usize>;

/// A value and where it is in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// TOML only; never valid in a manifest, kept to say so precisely.
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
}

/// A table's key and where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

/// Entries in source order (TOML's parser sorts them; we restore the written order).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub entries: Vec<(Key, Node)>,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }
}

impl Value {
    /// The name used in "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

/// A syntax error: where and what.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub span: Span,
    pub message: String,
}

/// Parses TOML, recovering so that several syntax errors are reported at once.
pub fn parse_toml(src: &str) -> Result<Node, Vec<SyntaxError>> {
    use toml::de::{DeTable, DeValue};
    let (doc, errors) = DeTable::parse_recoverable(src);
    if !errors.is_empty() {
        return Err(errors
            .into_iter()
            .map(|e| {
                let span = e.span().unwrap_or(0..0);
                SyntaxError {
                    span: clamp(span, src.len()),
                    message: e.message().trim().to_string(),
                }
            })
            .collect());
    }

    fn table(t: &DeTable<'_>, len: usize) -> Table {
        let mut entries: Vec<(Key, Node)> = t
            .iter()
            .map(|(k, v)| {
                (
                    Key {
                        name: k.get_ref().to_string(),
                        span: clamp(k.span(), len),
                    },
                    value(v.get_ref(), clamp(v.span(), len), len),
                )
            })
            .collect();
        entries.sort_by_key(|(k, _)| k.span.start);
        Table { entries }
    }
    fn value(v: &DeValue<'_>, span: Span, len: usize) -> Node {
        let value = match v {
            DeValue::String(s) => Value::Str(s.to_string()),
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                match i64::from_str_radix(&digits, i.radix()) {
                    Ok(n) => Value::Int(n),
                    Err(_) => Value::Float(f64::INFINITY),
                }
            }
            DeValue::Float(f) => Value::Float(parse_toml_float(f.as_str())),
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => Value::Datetime(d.to_string()),
            DeValue::Array(a) => Value::Array(
                a.iter()
                    .map(|e| value(e.get_ref(), clamp(e.span(), len), len))
                    .collect(),
            ),
            DeValue::Table(t) => Value::Table(table(t, len)),
        };
        Node { span, value }
    }
    Ok(Node {
        span: 0..src.len(),
        value: Value::Table(table(doc.get_ref(), src.len())),
    })
}

fn parse_toml_float(s: &str) -> f64 {
    let s = s.replace('_', "");
    match s.trim_start_matches(['+', '-']) {
        "inf" => {
            if s.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }
        }
        "nan" => f64::NAN,
        _ => s.parse().unwrap_or(f64::NAN),
    }
}

fn clamp(span: Span, len: usize) -> Span {
    let start = span.start.min(len);
    start..span.end.clamp(start, len)
}

/// Parses JSON (RFC 8259) into the spanned tree. Duplicate keys are errors, as in a TOML table.
pub fn parse_json(src: &str) -> Result<Node, Vec<SyntaxError>> {
    parse_json_with(src, false)
}

/// `parse_json` for JSON that is not a manifest (a pm2 ecosystem file, often written by
/// `JSON.stringify`): a `null` is left out, as if the key or item were not there.
pub fn parse_json_dropping_nulls(src: &str) -> Result<Node, Vec<SyntaxError>> {
    parse_json_with(src, true)
}

fn parse_json_with(src: &str, drop_nulls: bool) -> Result<Node, Vec<SyntaxError>> {
    let mut p = JsonParser {
        src: src.as_bytes(),
        text: src,
        pos: 0,
        depth: 0,
        soft: Vec::new(),
        drop_nulls,
    };
    p.ws();
    let node = match p.value_or_null().map_err(|e| vec![e])? {
        Some(n) => n,
        None => {
            return Err(vec![SyntaxError {
                span: 0..src.len(),
                message: "the document is null".into(),
            }]);
        }
    };
    p.ws();
    if p.pos < p.src.len() {
        return Err(vec![p.err_here("trailing characters after the JSON value")]);
    }
    if p.soft.is_empty() {
        Ok(node)
    } else {
        Err(p.soft)
    }
}

/// Deeper nesting than this is refused, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 128;

struct JsonParser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    depth: usize,
    /// Errors that do not stop parsing (duplicate keys).
    soft: Vec<SyntaxError>,
    /// `null` is a value to leave out, not an error.
    drop_nulls: bool,
}

impl JsonParser<'_> {
    fn err_here(&self, msg: &str) -> SyntaxError {
        let end = if self.pos < self.src.len() {
            // One whole character, so the label never splits UTF-8.
            let c = self.text[self.pos..]
                .chars()
                .next()
                .map_or(1, char::len_utf8);
            self.pos + c
        } else {
            self.pos
        };
        SyntaxError {
            span: self.pos..end,
            message: msg.to_string(),
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    /// A value, or `None` for a `null` that is to be left out (`drop_nulls`).
    fn value_or_null(&mut self) -> Result<Option<Node>, SyntaxError> {
        if self.drop_nulls && self.src.get(self.pos) == Some(&b'n') {
            self.word("null", Value::Bool(false))?;
            return Ok(None);
        }
        self.value().map(Some)
    }

    fn value(&mut self) -> Result<Node, SyntaxError> {
        let start = self.pos;
        let value = match self.src.get(self.pos) {
            None => return Err(self.err_here("unexpected end of input: expected a value")),
            Some(b'{') => self.object()?,
            Some(b'[') => self.array()?,
            Some(b'"') => Value::Str(self.string()?),
            Some(b't') => self.word("true", Value::Bool(true))?,
            Some(b'f') => self.word("false", Value::Bool(false))?,
            Some(b'n') => {
                return Err(SyntaxError {
                    span: start..(start + 4).min(self.src.len()),
                    message: "null is not allowed in a manifest: leave the key out instead".into(),
                });
            }
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(self.err_here("expected a value")),
        };
        Ok(Node {
            span: start..self.pos,
            value,
        })
    }

    fn word(&mut self, w: &str, v: Value) -> Result<Value, SyntaxError> {
        if self.src[self.pos..].starts_with(w.as_bytes()) {
            self.pos += w.len();
            Ok(v)
        } else {
            Err(self.err_here("expected a value"))
        }
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_here("nested too deeply"));
        }
        Ok(())
    }

    fn object(&mut self) -> Result<Value, SyntaxError> {
        self.enter()?;
        self.pos += 1;
        let mut table = Table::default();
        self.ws();
        if self.src.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Table(table));
        }
        loop {
            self.ws();
            if self.src.get(self.pos) != Some(&b'"') {
                return Err(self.err_here("expected a key in double quotes"));
            }
            let kstart = self.pos;
            let name = self.string()?;
            let key = Key {
                name,
                span: kstart..self.pos,
            };
            self.ws();
            if self.src.get(self.pos) != Some(&b':') {
                return Err(self.err_here("expected `:` after the key"));
            }
            self.pos += 1;
            self.ws();
            let v = self.value_or_null()?;
            if table.get(&key.name).is_some() {
                self.soft.push(SyntaxError {
                    span: key.span.clone(),
                    message: format!("duplicate key `{}`", key.name),
                });
            } else if let Some(v) = v {
                table.entries.push((key, v));
            }
            self.ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Table(table));
                }
                _ => return Err(self.err_here("expected `,` or `}`")),
            }
        }
    }

    fn array(&mut self) -> Result<Value, SyntaxError> {
        self.enter()?;
        self.pos += 1;
        let mut items = Vec::new();
        self.ws();
        if self.src.get(self.pos) == Some(&b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.ws();
            items.extend(self.value_or_null()?);
            self.ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err_here("expected `,` or `]`")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let h = self
            .text
            .get(self.pos..self.pos + 4)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err_here("expected 4 hex digits after \\u"))?;
        self.pos += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err(self.err_here("unterminated string"));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(&e) = self.src.get(self.pos) else {
                        return Err(self.err_here("unterminated string"));
                    };
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let mut c = self.hex4()?;
                            if (0xD800..0xDC00).contains(&c)
                                && self.src[self.pos..].starts_with(b"\\u")
                            {
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
                                }
                            }
                            out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.err_here("invalid escape in string"));
                        }
                    }
                }
                0..=0x1f => return Err(self.err_here("control character in string")),
                _ => {
                    // Copy one whole UTF-8 character (the input is a &str).
                    let c = self.text[self.pos..].chars().next().unwrap_or('\u{FFFD}');
                    out.push(c);
                    self.pos += c.len_utf8().max(1);
                }
            }
        }
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        if self.src.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let digits = |p: &mut Self| {
            let s = p.pos;
            while let Some(b'0'..=b'9') = p.src.get(p.pos) {
                p.pos += 1;
            }
            p.pos - s
        };
        if digits(self) == 0 {
            return Err(self.err_here("expected a digit"));
        }
        let mut float = false;
        if self.src.get(self.pos) == Some(&b'.') {
            float = true;
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.err_here("expected a digit after `.`"));
            }
        }
        if let Some(b'e' | b'E') = self.src.get(self.pos) {
            float = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.src.get(self.pos) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.err_here("expected a digit in the exponent"));
            }
        }
        let text = &self.text[start..self.pos];
        if !float && let Ok(n) = text.parse::<i64>() {
            return Ok(Value::Int(n));
        }
        Ok(Value::Float(text.parse().unwrap_or(f64::NAN)))
    }
}

/// Overlays `over` on `base`: tables merge key by key (recursively), anything else in `over`
/// replaces what `base` has. A secret reference (`{ env = ".." }` / `{ file = ".." }`) is a
/// value, not a table to merge into, and so is every entry of an `env` table.
pub fn overlay(base: &Node, over: &Node) -> Node {
    overlay_at(base, over, false)
}

fn overlay_at(base: &Node, over: &Node, env_map: bool) -> Node {
    match (&base.value, &over.value) {
        (Value::Table(b), Value::Table(o))
            if env_map || (!is_secret_shape(b) && !is_secret_shape(o)) =>
        {
            let mut entries = b.entries.clone();
            for (k, v) in &o.entries {
                match entries.iter_mut().find(|(bk, _)| bk.name == k.name) {
                    // Entries of an `env` map are values: replaced whole.
                    Some((_, bv)) if env_map => *bv = v.clone(),
                    Some((_, bv)) => *bv = overlay_at(bv, v, k.name == "env"),
                    None => entries.push((k.clone(), v.clone())),
                }
            }
            Node {
                span: over.span.clone(),
                value: Value::Table(Table { entries }),
            }
        }
        _ => over.clone(),
    }
}

/// `{ env = "X" }` or `{ file = "X" }`: one key, a secret reference.
pub fn is_secret_shape(t: &Table) -> bool {
    t.entries.len() == 1
        && matches!(t.entries[0].0.name.as_str(), "env" | "file")
        && matches!(t.entries[0].1.value, Value::Str(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(n: &Node) -> String {
        match &n.value {
            Value::Table(t) => {
                let inner: Vec<String> = t
                    .entries
                    .iter()
                    .map(|(k, v)| format!("{}={}", k.name, strip(v)))
                    .collect();
                format!("{{{}}}", inner.join(","))
            }
            Value::Array(a) => format!("[{}]", a.iter().map(strip).collect::<Vec<_>>().join(",")),
            Value::Str(s) => format!("{s:?}"),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Datetime(d) => d.clone(),
        }
    }

    #[test]
    fn toml_and_json_give_the_same_tree_in_source_order() {
        let t = parse_toml("z = 1\na = \"x\"\n[t]\nb = [true, 1.5]\n").unwrap();
        let j = parse_json(r#"{"z": 1, "a": "x", "t": {"b": [true, 1.5]}}"#).unwrap();
        assert_eq!(strip(&t), strip(&j));
        assert_eq!(strip(&t), r#"{z=1,a="x",t={b=[true,1.5]}}"#);
    }

    #[test]
    fn json_spans_point_at_keys_and_values() {
        let src = r#"{"a": {"bb": 12}}"#;
        let n = parse_json(src).unwrap();
        let Value::Table(t) = &n.value else { panic!() };
        let Value::Table(inner) = &t.entries[0].1.value else {
            panic!()
        };
        assert_eq!(&src[inner.entries[0].0.span.clone()], "\"bb\"");
        assert_eq!(&src[inner.entries[0].1.span.clone()], "12");
    }

    #[test]
    fn json_errors() {
        for (src, msg) in [
            ("{", "expected a key in double quotes"),
            (r#"{"a" 1}"#, "expected `:` after the key"),
            (r#"{"a": nul}"#, "null is not allowed"),
            (r#"{"a": 1, "a": 2}"#, "duplicate key `a`"),
            (r#"{"a": "\q"}"#, "invalid escape"),
            ("{} x", "trailing characters"),
            (&"[".repeat(500), "nested too deeply"),
        ] {
            let e = parse_json(src).unwrap_err();
            assert!(e[0].message.contains(msg), "{src}: {:?}", e);
        }
        assert_eq!(
            parse_json(r#""\u00e9\ud83d\ude00""#).unwrap().value,
            Value::Str("é😀".into())
        );
    }

    #[test]
    fn nulls_are_dropped_only_when_asked() {
        let src = r#"{"a": null, "b": [1, null, 2], "c": {"d": null}}"#;
        assert!(parse_json(src).is_err());
        let n = parse_json_dropping_nulls(src).unwrap();
        assert_eq!(strip(&n), "{b=[1,2],c={}}");
        assert!(parse_json_dropping_nulls("null").is_err());
        assert!(parse_json_dropping_nulls("nul").is_err());
    }

    #[test]
    fn overlay_merges_tables_and_replaces_secrets_and_env_entries() {
        let base = parse_toml(
            "instances = 1\nenv = { A = \"1\", S = { env = \"X\" } }\nlimits = { memory = \"1GiB\", cpus = 1 }\n",
        )
        .unwrap();
        let over = parse_toml(
            "instances = 3\nenv = { S = { file = \"/s\" }, B = \"2\" }\nlimits = { cpus = 2 }\n",
        )
        .unwrap();
        assert_eq!(
            strip(&overlay(&base, &over)),
            r#"{instances=3,env={A="1",S={file="/s"},B="2"},limits={memory="1GiB",cpus=2}}"#
        );
        // Only `env` given: the rest of the app stays; an env var named `file` is just a var.
        let over = parse_toml("env = { file = \"x\" }\n").unwrap();
        assert_eq!(
            strip(&overlay(&base, &over)),
            r#"{instances=1,env={A="1",S={env="X"},file="x"},limits={memory="1GiB",cpus=1}}"#
        );
    }
}
