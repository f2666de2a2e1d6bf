//! The YAML nearly every manifest is written in, read without a general YAML
//! parser: block mappings and sequences indented by spaces, flow collections
//! on one line, comments, and scalars that no schema question touches
//! (`true`, `false`, `null`, `~`, small decimal integers, words, names,
//! addresses, quoted strings without escapes).
//!
//! [`parse`] answers `None` for anything else, and the document goes to the
//! general parser ([`super::parse_yaml`]), which gives the value or the error:
//! anchors and aliases, tags, merge keys, block scalars, escapes, scalars or
//! flows over several lines, floats, signed or leading-zero numbers, words a
//! YAML schema might read as booleans or nulls (`True`, `yes`, `NULL`), a
//! duplicate key, tabs, CR, directives, deep nesting. Whatever it does
//! accept, it reads as the general parser does: the tests and the `yaml`
//! fuzz target hold the two to the same values. The general parser reads
//! about 5 MB/s per core here; this reads the same manifests several times
//! faster (docs/benchmarks.md), which is most of a large cluster's start.

use serde_json::{Map, Value};

/// Deeper than this goes to the general parser (which allows
/// [`super::MAX_DEPTH`] and reports beyond).
const MAX_DEPTH: usize = 64;

/// One document's value: `Some(None)` when it holds no node, `None` when it
/// is not of the simple kind.
pub fn parse(text: &str) -> Option<Option<Value>> {
    // Tabs, CR, escapes, anchors, aliases and tags are rare in manifests,
    // and each changes how the rest must be read (`&`, `*` and `!` may also
    // be ordinary characters of a quoted string: that goes to the general
    // parser too, which is only slower); control characters are YAML's
    // errors, reported by the general parser.
    let unusual =
        |b: u8| !(b' '..=b'~').contains(&b) && b != b'\n' || matches!(b, b'\\' | b'&' | b'*' | b'!');
    if text.bytes().any(unusual) && !text.chars().all(printable) {
        return None;
    }
    let mut lines = Vec::new();
    for line in text.split('\n') {
        let content = line.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        if indent == 0
            && (content.starts_with("---") || content.starts_with("...") || content.starts_with('%'))
        {
            return None;
        }
        lines.push(Line {
            indent,
            text: content,
        });
    }
    let Some(first) = lines.first().copied() else {
        return Some(None);
    };
    let mut parser = Parser {
        lines,
        at: 0,
        depth: 0,
    };
    let value = parser.block(first)?;
    (parser.at == parser.lines.len()).then_some(Some(value))
}

/// A character YAML allows in a document and that reads as itself here:
/// what [`parse`]'s first check passes on, and any printable character beyond
/// ASCII but the byte order mark.
fn printable(c: char) -> bool {
    match c {
        '\n' | ' '..='~' => !matches!(c, '\\' | '&' | '*' | '!'),
        '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'.. => c != '\u{feff}',
        _ => false,
    }
}

/// A line with content: its indentation in spaces and the rest.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    /// From the first character that is not a space; never empty, never a
    /// comment.
    text: &'a str,
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    /// The next line to read.
    at: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    /// What `parse` reads one level deeper: `None` past [`MAX_DEPTH`].
    fn nested(&mut self, parse: impl FnOnce(&mut Self) -> Option<Value>) -> Option<Value> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn next_line(&self) -> Option<Line<'a>> {
        self.lines.get(self.at).copied()
    }

    /// The block node that starts at `line` (the next to read).
    fn block(&mut self, line: Line<'a>) -> Option<Value> {
        self.nested(|p| {
            if is_item(line.text) {
                p.sequence(line.indent)
            } else if line.text.starts_with(['{', '[']) {
                p.at += 1;
                inline(line.text)
            } else {
                p.mapping(line.indent, line.text)
            }
        })
    }

    /// A block mapping whose keys stand at column `indent`, the first of them
    /// at the start of `text`, on the next line to read (after a sequence's
    /// `- ` for a mapping in a sequence).
    fn mapping(&mut self, indent: usize, mut text: &'a str) -> Option<Value> {
        let mut map = Map::new();
        loop {
            let (key, rest) = block_key(text)?;
            self.at += 1;
            let value = if let Some(rest) = inline_rest(rest) {
                inline(rest)?
            } else {
                match self.next_line() {
                    Some(next) if next.indent > indent => self.block(next)?,
                    // A sequence may stand at its key's own column.
                    Some(next) if next.indent == indent && is_item(next.text) => {
                        self.nested(|p| p.sequence(indent))?
                    }
                    _ => Value::Null,
                }
            };
            if map.insert(key, value).is_some() {
                return None; // a duplicate: the general parser reports it
            }
            match self.next_line() {
                Some(next) if next.indent == indent && !is_item(next.text) => text = next.text,
                // More indented than its keys, after a value: not simple.
                Some(next) if next.indent > indent => return None,
                _ => return Some(Value::Object(map)),
            }
        }
    }

    /// A block sequence whose `-` stand at column `indent`.
    fn sequence(&mut self, indent: usize) -> Option<Value> {
        let mut items = Vec::new();
        while let Some(line) = self.next_line()
            && line.indent == indent
            && is_item(line.text)
        {
            let rest = line.text[1..].trim_start_matches(' ');
            let item = match inline_rest(rest) {
                None => {
                    self.at += 1;
                    match self.next_line() {
                        Some(next) if next.indent > indent => self.block(next)?,
                        _ => Value::Null,
                    }
                }
                Some(rest) if is_item(rest) => return None, // `- - x`
                Some(rest) if block_key(rest).is_some() => {
                    // A mapping in the sequence: its keys stand where this one does.
                    let column = indent + line.text.len() - rest.len();
                    self.nested(|p| p.mapping(column, rest))?
                }
                Some(rest) => {
                    self.at += 1;
                    inline(rest)?
                }
            };
            items.push(item);
            if let Some(next) = self.next_line()
                && next.indent > indent
            {
                return None;
            }
        }
        Some(Value::Array(items))
    }
}

/// `-` alone or `- ...`: a block sequence's entry.
fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// What follows a key's `: ` or an item's `- `, if a node starts on the same
/// line (`None`: only a comment or nothing).
fn inline_rest(rest: &str) -> Option<&str> {
    let rest = rest.trim_start_matches(' ');
    (!rest.is_empty() && !rest.starts_with('#')).then_some(rest)
}

/// A block mapping's key at the start of `text` and what follows its `:`.
fn block_key(text: &str) -> Option<(String, &str)> {
    let (key, rest) = if let Some(quote) = text.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let (key, len) = quoted(text, quote)?;
        (key, text[len..].trim_start_matches(' '))
    } else {
        let end = text.find(':')?;
        let key = &text[..end];
        if !is_word(key) {
            return None;
        }
        (key.to_owned(), &text[end..])
    };
    let rest = rest.strip_prefix(':')?;
    let span = text.len() - rest.len();
    (span <= MAX_KEY && (rest.is_empty() || rest.starts_with(' '))).then_some((key, rest))
}

/// A key from its first character to its `:`: YAML allows an implicit key
/// 1,024 characters; this many bytes are fewer.
const MAX_KEY: usize = 1000;

/// A key that reads as itself in every YAML schema: a letter, then letters,
/// digits and `._/-`, and not a word a schema gives another meaning.
fn is_word(key: &str) -> bool {
    key.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && !reserved(key)
}

/// Words some YAML schema reads as a boolean, a null or a float.
fn reserved(word: &str) -> bool {
    const WORDS: [&str; 12] = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "nan", "inf", "infinity",
    ];
    WORDS.iter().any(|w| word.eq_ignore_ascii_case(w))
}

/// A node that starts and ends on this line (after a key's `: ` or an item's
/// `- `): a flow collection, a quoted string or a plain scalar, then nothing
/// but a comment.
fn inline(text: &str) -> Option<Value> {
    let (value, len) = match text.as_bytes()[0] {
        b'{' | b'[' => {
            let mut flow = Flow {
                text,
                at: 0,
                depth: 0,
            };
            (flow.node()?, flow.at)
        }
        quote @ (b'"' | b'\'') => {
            let (s, len) = quoted(text, quote as char)?;
            (Value::String(s), len)
        }
        _ => {
            // A plain scalar runs to the end of the line or a ` #` comment.
            let end = text.find(" #").unwrap_or(text.len());
            return plain(text[..end].trim_end_matches(' '), true);
        }
    };
    let rest = &text[len..];
    let after = rest.trim_start_matches(' ');
    (after.is_empty() || after.starts_with('#') && after.len() < rest.len()).then_some(value)
}

/// A quoted string at the start of `text` (`'` doubles itself; a `"` string
/// never holds a `\` here: [`parse`] sends those on), and the length taken.
fn quoted(text: &str, quote: char) -> Option<(String, usize)> {
    let body = &text[1..];
    let mut out = String::new();
    let mut from = 0;
    loop {
        let end = from + body[from..].find(quote)?;
        out.push_str(&body[from..end]);
        if quote == '\'' && body[end + 1..].starts_with('\'') {
            out.push('\'');
            from = end + 2;
        } else {
            return Some((out, end + 2));
        }
    }
}

/// A plain scalar's value, when no YAML schema reads it otherwise: `true`,
/// `false`, `null`, `~`, a decimal integer without sign or leading zero, a
/// word (a letter, then letters, digits, `._/-:`, and single spaces in block
/// context), or an address (digits with at least two dots, a `/prefix`).
fn plain(s: &str, block: bool) -> Option<Value> {
    match s {
        "true" => return Some(Value::Bool(true)),
        "false" => return Some(Value::Bool(false)),
        "null" | "~" => return Some(Value::Null),
        _ => {}
    }
    let bytes = s.as_bytes();
    let first = *bytes.first()?;
    if first.is_ascii_digit() {
        if bytes.iter().all(u8::is_ascii_digit) {
            if first == b'0' && bytes.len() > 1 || bytes.len() > 18 {
                return None;
            }
            return s.parse::<u64>().ok().map(Value::from);
        }
        let (address, prefix) = s.split_once('/').unwrap_or((s, "0"));
        let parts = address.split('.');
        let is_address = address.split('.').count() >= 3
            && parts
                .clone()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && !prefix.is_empty()
            && prefix.bytes().all(|b| b.is_ascii_digit());
        return is_address.then(|| Value::String(s.to_owned()));
    }
    let word = first.is_ascii_alphabetic()
        && !reserved(s)
        && bytes.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-' | b':') || b == b' ' && block
        })
        && !s.contains(": ")
        && !s.contains("  ")
        && !s.ends_with(':');
    word.then(|| Value::String(s.to_owned()))
}

/// A flow collection on one line.
struct Flow<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

impl Flow<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    fn node(&mut self) -> Option<Value> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let value = match self.peek()? {
            b'{' => self.mapping(),
            b'[' => self.sequence(),
            quote @ (b'"' | b'\'') => {
                let (s, len) = quoted(&self.text[self.at..], quote as char)?;
                self.at += len;
                Some(Value::String(s))
            }
            _ => {
                let (s, ends_in_colon) = self.plain_token();
                if ends_in_colon {
                    return None; // `[a: b]`, `{a: b: c}`
                }
                plain(s, false)
            }
        };
        self.depth -= 1;
        value
    }

    /// A plain scalar up to `,`, `]`, `}` or `:` (whether it stopped at `:`).
    fn plain_token(&mut self) -> (&str, bool) {
        let start = self.at;
        while let Some(b) = self.peek()
            && !matches!(b, b',' | b']' | b'}' | b':' | b'[' | b'{')
        {
            self.at += 1;
        }
        let token = self.text[start..self.at].trim_end_matches(' ');
        (token, self.peek() == Some(b':'))
    }

    /// After an entry: `,` and another (`true`), or the closing `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.spaces();
        match self.peek()? {
            b',' => {
                self.at += 1;
                self.spaces();
                // A trailing comma is YAML, and rare: the general parser's.
                (self.peek()? != close).then_some(true)
            }
            b if b == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// Past an opening bracket: whether `close` follows at once (`{}`, `[]`),
    /// taken too.
    fn opens_empty(&mut self, close: u8) -> Option<bool> {
        self.at += 1;
        self.spaces();
        let empty = self.peek()? == close;
        self.at += usize::from(empty);
        Some(empty)
    }

    fn mapping(&mut self) -> Option<Value> {
        let mut map = Map::new();
        if self.opens_empty(b'}')? {
            return Some(Value::Object(map));
        }
        loop {
            let start = self.at;
            let key = match self.peek()? {
                quote @ (b'"' | b'\'') => {
                    let (key, len) = quoted(&self.text[self.at..], quote as char)?;
                    self.at += len;
                    self.spaces();
                    (self.peek()? == b':').then_some(key)?
                }
                _ => {
                    let (key, ends_in_colon) = self.plain_token();
                    (ends_in_colon && is_word(key)).then(|| key.to_owned())?
                }
            };
            self.at += 1; // the `:`
            // `a:b` is one scalar in YAML; `a: b` is a pair.
            if self.peek()? != b' ' || self.at - start > MAX_KEY {
                return None;
            }
            self.spaces();
            let value = self.node()?;
            if map.insert(key, value).is_some() {
                return None;
            }
            if !self.more(b'}')? {
                return Some(Value::Object(map));
            }
        }
    }

    fn sequence(&mut self) -> Option<Value> {
        let mut items = Vec::new();
        if self.opens_empty(b']')? {
            return Some(Value::Array(items));
        }
        loop {
            items.push(self.node()?);
            if !self.more(b']')? {
                return Some(Value::Array(items));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::check_simple_yaml;
    use super::*;
    use crate::testing::Rng;

    /// Read by the simple reader, as the general parser reads it.
    fn simple(text: &str) -> Value {
        assert_eq!(check_simple_yaml(text), Ok(true), "{text}");
        parse(text).expect("simple").unwrap_or(Value::Null)
    }

    /// Passed on to the general parser (which reads it, or reports it).
    fn passed_on(text: &str) {
        assert_eq!(check_simple_yaml(text), Ok(false), "{text}");
    }

    #[test]
    fn the_forms_manifests_are_written_in_are_read_simply() {
        // As the benchmarks and generators write them: flow on one line.
        assert_eq!(
            simple(
                "apiVersion: v1\nkind: Service\nmetadata: {name: svc-0, namespace: bench}\n\
                 spec: {type: ClusterIP, clusterIP: 10.96.0.0, clusterIPs: [10.96.0.0], ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]}\n"
            ),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "svc-0", "namespace": "bench"},
                   "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.0", "clusterIPs": ["10.96.0.0"],
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}})
        );
        // As kubectl writes them: blocks, sequences at their key's column,
        // quoted strings, comments, empty values.
        let kubectl = r#"
# from kubectl get -o yaml
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  creationTimestamp: "2026-12-06T10:00:00Z"
  labels:
    kubernetes.io/service-name: web   # the Service
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
  name: web-abcde
  namespace: shop
  ownerReferences:
  - apiVersion: v1
    blockOwnerDeletion: true
    kind: Service
    name: web
  resourceVersion: '1234'
addressType: IPv4
endpoints:
-   addresses:
    - 10.0.1.5
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-a
    targetRef: {kind: Pod, name: web-1, namespace: shop}
- addresses: ["10.0.1.6"]
  conditions: {}
  hints:
  zone: zone a
ports:
  - name: ''
    port: 8080
    protocol: TCP
  -
    name: 'it''s'
    port: 0
"#;
        let value = simple(kubectl);
        assert_eq!(value["metadata"]["resourceVersion"], json!("1234"));
        assert_eq!(value["endpoints"][0]["addresses"], json!(["10.0.1.5"]));
        assert_eq!(value["endpoints"][1]["hints"], Value::Null);
        assert_eq!(value["ports"][1], json!({"name": "it's", "port": 0}));
        assert_eq!(
            simple("- a\n- {b: [1, 2, []], c: ~}\n-\n- null\n"),
            json!(["a", {"b": [1, 2, []], "c": null}, null, null])
        );
        assert_eq!(
            simple("ip: fd00::1\ncidr: 10.0.0.0/8\nurl: http://x/y\n"),
            json!({"ip": "fd00::1", "cidr": "10.0.0.0/8", "url": "http://x/y"})
        );
        assert_eq!(simple("\n# only a comment\n\n"), Value::Null);
        assert_eq!(simple("  a: 1\n  b:\n    - x\n"), json!({"a": 1, "b": ["x"]}));
    }

    #[test]
    fn anything_a_schema_or_the_syntax_might_read_otherwise_is_passed_on() {
        for text in [
            // Anchors, aliases, tags, merge keys, block scalars, escapes.
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: {b: 1}\n<<: {c: 2}\n",
            "a: |\n  text\n",
            "a: >-\n  text\n",
            "a: \"x\\ny\"\n",
            // Scalars a schema reads as something else than it looks.
            "a: True\n",
            "a: yes\n",
            "a: NULL\n",
            "a: 1.5\n",
            "a: 1e3\n",
            "a: 0x1F\n",
            "a: 0o17\n",
            "a: 017\n",
            "a: -1\n",
            "a: +1\n",
            "a: .inf\n",
            "a: 1_000\n",
            "a: 2026-12-06\n",
            "a: 12:30\n",
            "a: 12345678901234567890\n",
            "on: 1\n",
            "80: http\n",
            // Syntax beyond the simple kind.
            "a: b c  d\n",
            "a: b\n  c\n",
            "a:\n  b\n",
            "a: [1,\n  2]\n",
            "a: 'x\n  y'\n",
            "a: [b, c,]\n",
            "a: {b: }\n",
            "a: [b: c]\n",
            "a: {b: c: d}\n",
            "a: {b:c}\n",
            "a: {b c: d}\n",
            "? a\n: b\n",
            "- - a\n",
            "a:\tb\n",
            "a: b\r\n",
            "%YAML 1.2\n---\na: b\n",
            "a: 1\na: 2\n",
            "a: {b: 1, b: 2}\n",
            "a: 'ctl\u{7}'\n",
            "plain scalar\n",
            "\"quoted\"\n",
            // A plain scalar over two lines: `b - c`.
            "a: b\n  - c\n",
        ] {
            passed_on(text);
        }
    }

    #[test]
    fn broken_documents_are_passed_on_for_the_general_parser_to_report() {
        for text in [
            "a: 1\n- b\n",
            "a:\n    b: 1\n  c: 2\n",
            "a: [unclosed\n",
            "a: {b: 1} c\n",
            "a: 'x' y\n",
            "- a\n  b: 1\n",
            "a: b: c\n",
            "a: - b\n",
            // Longer keys than YAML allows (1,024 characters).
            &format!("'{}': 1\n", "k".repeat(1100)),
            &format!("a: {{'{}': 1}}\n", "k".repeat(1100)),
        ] {
            passed_on(text);
            assert!(super::super::parse_yaml(text).is_err(), "{text}");
        }
    }

    /// Scalars of every kind; the first [`SIMPLE_SCALARS`] of the simple kind.
    #[rustfmt::skip]
    const SCALARS: &[&str] = &[
        "a", "web", "svc-0", "ClusterIP", "kubernetes.io/name", "10.96.0.1", "10.0.0.0/8",
        "fd00::1", "1.2.3", "0", "80", "65535", "true", "false", "null", "~", "'x'", "'it''s'",
        "\"q\"", "\"a: b\"", "''", "[a, 1]", "{k: v}", "{k: [1, {m: n}]}", "007", "1.5", "-3",
        "True", "Null", "yes", "no", "on", "y", "n", ".inf", "nan", "1e3", "0x10", "\"\"",
        "a b", "a  b", "a #c", "a#c", "a: b", "a:b", "http://x", "[]", "{}", "[a, b,]", "{k: }",
        "[k: v]", "&x a", "*x", "!t a", "|", ">", "-", "- a", "?", "@a", "%a", "`a`", "'open",
        "\"open", "é", "a\u{7}",
    ];
    #[rustfmt::skip]
    const KEYS: &[&str] = &[
        "a", "b", "name", "app.kubernetes.io/name", "x_y", "'q'", "\"k\"", "\"a: b\"", "on",
        "80", "-a", "a b", "<<", "true", "y",
    ];

    /// How many of [`SCALARS`] are of the simple kind.
    const SIMPLE_SCALARS: usize = 24;

    /// Documents built at random from pieces of every kind, valid or not,
    /// through both readers: wherever the simple reader takes one, the general
    /// parser must read the same value. (Fixed seed: the `yaml` fuzz target's
    /// smoke brings fresh ones to every run.)
    #[test]
    fn random_documents_read_the_same_by_both_readers() {
        let seed = 0x9e37_79b9_7f4a_7c15;
        let mut rng = Rng(seed);
        let (mut taken, total) = (0, 4000);
        for round in 0..total {
            let mut text = String::new();
            if round % 2 == 0 {
                // Well-formed nesting of every kind, scalars of every kind.
                let indent = rng.below(3);
                well_formed(&mut text, indent, 0, &mut rng);
            } else {
                random_lines(&mut text, &mut rng);
            }
            match check_simple_yaml(&text) {
                Ok(true) => taken += 1,
                Ok(false) => {}
                Err(e) => panic!("seed {seed}: the readers differ on\n{text}\n{e}"),
            }
        }
        println!("seed {seed}: {taken} of {total} read simply, the same as the general parser");
        // Not vacuous: the simple reader takes a good share of them.
        assert!(
            taken > total / 10,
            "seed {seed}: only {taken} of {total} read simply"
        );
    }

    /// Mostly one of the simple kind.
    fn scalar(rng: &mut Rng) -> &'static str {
        match rng.below(20) {
            0 => SCALARS[rng.below(SCALARS.len())],
            _ => SCALARS[rng.below(SIMPLE_SCALARS)],
        }
    }

    fn key(rng: &mut Rng) -> &'static str {
        KEYS[rng.below(KEYS.len() / 2)]
    }

    /// A block mapping or sequence at `indent`, nesting more of them below
    /// and at a key's column.
    fn well_formed(out: &mut String, indent: usize, depth: usize, rng: &mut Rng) {
        let pad = " ".repeat(indent);
        let sequence = rng.below(3) == 0;
        for i in 0..1 + rng.below(3) {
            let lead = if sequence {
                format!("{pad}- ")
            } else {
                format!("{pad}{}{i}: ", key(rng))
            };
            out.push_str(&lead);
            if depth < 4 && rng.below(3) == 0 {
                out.push('\n');
                if !sequence && rng.below(2) == 0 {
                    out.push_str(&format!("{pad}- {}\n", scalar(rng)));
                } else {
                    let deeper = indent + 1 + rng.below(3);
                    well_formed(out, deeper, depth + 1, rng);
                }
            } else {
                out.push_str(scalar(rng));
                out.push('\n');
            }
        }
    }

    /// Lines of every kind at random indentations.
    fn random_lines(text: &mut String, rng: &mut Rng) {
        let lines = 1 + rng.below(8);
        let mut indent = 0usize;
        for _ in 0..lines {
            // Mostly sensible indentation moves, sometimes not.
            indent = match rng.below(10) {
                0..=4 => indent,
                5 | 6 => indent + 2,
                7 => indent.saturating_sub(2),
                8 => 0,
                _ => rng.below(6),
            };
            *text += &" ".repeat(indent);
            let key = KEYS[rng.below(KEYS.len())];
            let scalar = SCALARS[rng.below(SCALARS.len())];
            *text += &match rng.below(12) {
                0..=4 => format!("{key}: {scalar}"),
                5 | 6 => format!("{key}:"),
                7 => format!("- {scalar}"),
                8 => format!("- {key}: {scalar}"),
                9 => "-".to_owned(),
                10 => format!("{key}: {scalar} # note"),
                _ => "# comment".to_owned(),
            };
            text.push('\n');
        }
    }
}
