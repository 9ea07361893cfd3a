//! Turns a byte offset in a TOML document into the key path written there, so that
//! a type error or unknown key reported by serde (which only knows a byte span) can
//! name `upstream[1].limits.max_inflight` like every other config error.
//!
//! This is a small scanner, not a TOML parser: it runs only on documents that
//! `toml` has already parsed, and it only tracks what a path needs: table headers
//! (counting the elements of arrays of tables), dotted keys, inline tables and array
//! indexes. On input it does not understand it still ends and never panics; the
//! worst outcome is no path, and the caller then falls back to line and column.

use std::collections::HashMap;

/// The key path of the innermost key, value or table header whose text contains
/// byte `offset` of `text`, rendered as `a.b[2].c`; `None` if no key covers it.
pub(super) fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        text,
        pos: 0,
        target: offset,
        table: Vec::new(),
        arrays: HashMap::new(),
        best: None,
    };
    scanner.document();
    scanner.best.map(|(_, path)| render(&path))
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// One key of a (possibly dotted) key, with its byte span.
struct KeyPart {
    name: String,
    start: usize,
    end: usize,
}

struct Scanner<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
    target: usize,
    /// Path of the table the current `[header]` opened.
    table: Vec<Segment>,
    /// Rendered path of each array of tables → elements seen so far.
    arrays: HashMap<String, usize>,
    /// Smallest span found so far that contains the target, and its path.
    best: Option<(usize, Vec<Segment>)>,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn at(&self, s: &str) -> bool {
        self.bytes
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(s.as_bytes()))
    }

    /// Remember `path` if its span `[start, end)` contains the target and is the
    /// smallest such span yet: the innermost item wins.
    fn consider(&mut self, start: usize, end: usize, path: &[Segment]) {
        let end = end.max(start + 1);
        if start <= self.target && self.target < end {
            let len = end - start;
            if self.best.as_ref().is_none_or(|(best, _)| len < *best) {
                self.best = Some((len, path.to_vec()));
            }
        }
    }

    fn document(&mut self) {
        loop {
            self.skip_blank(true);
            let Some(byte) = self.peek() else { break };
            let before = self.pos;
            if byte == b'[' {
                self.header();
            } else {
                let table = self.table.clone();
                self.key_value(&table);
            }
            if self.pos == before {
                self.pos += 1;
            }
        }
    }

    /// Skips spaces and tabs, comments, and newlines too when `newlines` is set.
    fn skip_blank(&mut self, newlines: bool) {
        while let Some(byte) = self.peek() {
            match byte {
                b' ' | b'\t' => self.pos += 1,
                b'\r' | b'\n' if newlines => self.pos += 1,
                b'#' if newlines => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    /// `[a.b]` or `[[a.b]]`: resolves the header to a path with array indexes and
    /// makes it the current table.
    fn header(&mut self) {
        let start = self.pos;
        let array = self.at("[[");
        self.pos += if array { 2 } else { 1 };
        let keys = self.keys();
        self.skip_blank(false);
        for _ in 0..(if array { 2 } else { 1 }) {
            if self.peek() == Some(b']') {
                self.pos += 1;
            }
        }
        let mut path = Vec::new();
        let count = keys.len();
        for (i, key) in keys.into_iter().enumerate() {
            path.push(Segment::Key(key.name));
            let rendered = render(&path);
            if array && i + 1 == count {
                let seen = self.arrays.entry(rendered).or_insert(0);
                *seen += 1;
                path.push(Segment::Index(*seen - 1));
            } else if let Some(seen) = self.arrays.get(&rendered) {
                path.push(Segment::Index(seen.saturating_sub(1)));
            }
        }
        self.consider(start, self.pos, &path);
        self.table = path;
    }

    /// A dotted key: `a`, `a.b`, `"quoted key".c`.
    fn keys(&mut self) -> Vec<KeyPart> {
        let mut keys = Vec::new();
        loop {
            self.skip_blank(false);
            let start = self.pos;
            match self.peek() {
                Some(b'"' | b'\'') => {
                    self.string();
                }
                _ => {
                    while self
                        .peek()
                        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        self.pos += 1;
                    }
                }
            }
            if self.pos == start {
                break;
            }
            let name = self
                .text
                .get(start..self.pos)
                .unwrap_or_default()
                .to_owned();
            keys.push(KeyPart {
                name,
                start,
                end: self.pos,
            });
            self.skip_blank(false);
            if self.peek() == Some(b'.') {
                self.pos += 1;
            } else {
                break;
            }
        }
        keys
    }

    /// `key = value`, relative to `base`.
    fn key_value(&mut self, base: &[Segment]) {
        let keys = self.keys();
        if keys.is_empty() {
            return;
        }
        let mut path = base.to_vec();
        for key in keys {
            path.push(Segment::Key(key.name));
            self.consider(key.start, key.end, &path);
        }
        self.skip_blank(false);
        if self.peek() == Some(b'=') {
            self.pos += 1;
        }
        self.skip_blank(false);
        self.value(&path);
    }

    fn value(&mut self, path: &[Segment]) {
        let start = self.pos;
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                loop {
                    self.skip_blank(true);
                    match self.peek() {
                        None => break,
                        Some(b'}') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b',') => self.pos += 1,
                        Some(_) => {
                            let before = self.pos;
                            self.key_value(path);
                            if self.pos == before {
                                self.pos += 1;
                            }
                        }
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut index = 0;
                loop {
                    self.skip_blank(true);
                    match self.peek() {
                        None => break,
                        Some(b']') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b',') => {
                            self.pos += 1;
                            index += 1;
                        }
                        Some(_) => {
                            let mut element = path.to_vec();
                            element.push(Segment::Index(index));
                            let before = self.pos;
                            self.value(&element);
                            if self.pos == before {
                                self.pos += 1;
                            }
                        }
                    }
                }
            }
            Some(b'"' | b'\'') => self.string(),
            _ => {
                let mut end = self.pos;
                while let Some(byte) = self.peek() {
                    if matches!(byte, b',' | b']' | b'}' | b'\n' | b'#') {
                        break;
                    }
                    self.pos += 1;
                    if !matches!(byte, b' ' | b'\t' | b'\r') {
                        end = self.pos;
                    }
                }
                self.consider(start, end, path);
                return;
            }
        }
        self.consider(start, self.pos, path);
    }

    /// Any of TOML's four string forms, quotes included.
    fn string(&mut self) {
        let (quote, escapes) = match self.peek() {
            Some(b'"') => (b'"', true),
            Some(b'\'') => (b'\'', false),
            _ => return,
        };
        let triple = if quote == b'"' { "\"\"\"" } else { "'''" };
        if self.at(triple) {
            self.pos += 3;
            while let Some(byte) = self.peek() {
                if escapes && byte == b'\\' {
                    self.pos += 2;
                } else if self.at(triple) {
                    self.pos += 3;
                    // Up to two more quotes may end the content right before the delimiter.
                    for _ in 0..2 {
                        if self.peek() == Some(quote) {
                            self.pos += 1;
                        }
                    }
                    return;
                } else {
                    self.pos += 1;
                }
            }
        } else {
            self.pos += 1;
            while let Some(byte) = self.peek() {
                self.pos += 1;
                if escapes && byte == b'\\' {
                    self.pos += 1;
                } else if byte == quote || byte == b'\n' {
                    return;
                }
            }
        }
        self.pos = self.pos.min(self.bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Path at the first occurrence of `needle` in `text`.
    fn path_at(text: &str, needle: &str) -> Option<String> {
        let offset = text.find(needle).expect("needle in text");
        key_path_at(text, offset)
    }

    const DOC: &str = r#"
# comment with [brackets] and "quotes"
[server]
listen = ["0.0.0.0:8080", # inline comment
  "0.0.0.0:8081"]
threads = 2

[server.timeouts]
connect_ms = 5

[[upstream]]
name = "a"
note = """multi
line ] } "quoted" """
[upstream.levels]
caution = { utilization = 0.8, queue = 10 }
danger.p95_ms = 250

[[upstream.backend]]
address = "10.0.0.1:1"
[[upstream.backend]]
address = "10.0.0.2:1"

[[upstream]]
name = "b"
backend = [{ address = "x" }, { address = "y", zone = 'z' }]
[upstream.limits]
max_inflight = 3
[[upstream.backend]]
address = "10.0.0.3:1"

[[priority]]
match = { header = "x-priority:low" }
"#;

    #[test]
    fn paths_of_keys_values_and_headers() {
        assert_eq!(path_at(DOC, "threads").as_deref(), Some("server.threads"));
        assert_eq!(
            path_at(DOC, "\"0.0.0.0:8081\"").as_deref(),
            Some("server.listen[1]")
        );
        assert_eq!(
            path_at(DOC, "5\n").as_deref(),
            Some("server.timeouts.connect_ms")
        );
        assert_eq!(path_at(DOC, "\"a\"").as_deref(), Some("upstream[0].name"));
        assert_eq!(path_at(DOC, "line ]").as_deref(), Some("upstream[0].note"));
        assert_eq!(
            path_at(DOC, "queue").as_deref(),
            Some("upstream[0].levels.caution.queue")
        );
        assert_eq!(
            path_at(DOC, "0.8").as_deref(),
            Some("upstream[0].levels.caution.utilization")
        );
        assert_eq!(
            path_at(DOC, "p95_ms").as_deref(),
            Some("upstream[0].levels.danger.p95_ms")
        );
        assert_eq!(
            path_at(DOC, "\"10.0.0.2:1\"").as_deref(),
            Some("upstream[0].backend[1].address")
        );
        assert_eq!(
            path_at(DOC, "'z'").as_deref(),
            Some("upstream[1].backend[1].zone")
        );
        assert_eq!(
            path_at(DOC, "max_inflight").as_deref(),
            Some("upstream[1].limits.max_inflight")
        );
        assert_eq!(
            path_at(DOC, "\"10.0.0.3:1\"").as_deref(),
            Some("upstream[1].backend[0].address")
        );
        assert_eq!(
            path_at(DOC, "[upstream.limits]").as_deref(),
            Some("upstream[1].limits")
        );
        assert_eq!(
            path_at(DOC, "header").as_deref(),
            Some("priority[0].match.header")
        );
        assert_eq!(path_at(DOC, "# comment"), None);
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in [
            "[",
            "[[",
            "a = \"",
            "a = '''",
            "x = [1, {",
            "\"é\" = 1",
            "a.b.",
            "= =",
            "é",
        ] {
            for offset in 0..=text.len() + 1 {
                let _ = key_path_at(text, offset);
                let _ = line_column(text, offset);
            }
        }
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column("a\nbé c", 6), (2, 4));
        assert_eq!(line_column("abc", 99), (1, 4));
    }
}
