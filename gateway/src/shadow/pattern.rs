//! JSONPath-like field patterns for `ignore_fields` and `array_sets`, and the
//! rendering of concrete paths in diff reports.
//!
//! Grammar (parsed once when the config is loaded, matched per JSON node):
//!
//! | form | meaning |
//! | --- | --- |
//! | `$` | the root; every pattern starts with it |
//! | `.name` / `["name"]` / `['name']` | the object key `name` |
//! | `[3]` | array index 3 |
//! | `.*` / `[*]` | any key or index at this one level |
//! | `..name`, `..["name"]`, `..[3]`, `..*` | the selector at any depth below (zero or more levels skipped) |
//!
//! A pattern matches a path only as a whole (`$.meta` does not match
//! `$.meta.id`); the diff walks top-down and skips a matching node with its
//! subtree, so ignoring an object ignores everything inside it.
//!
//! Concrete paths render in the same syntax (`$.items[2].price`,
//! `$.meta["weird key"]`), so any path from a report can be pasted into
//! `ignore_fields` as is.

use std::fmt;
use std::fmt::Write as _;

/// One step of a concrete path inside a JSON body, borrowed from the parsed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSeg<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Key(String),
    Index(usize),
    Any,
}

impl Selector {
    fn hits(&self, seg: &PathSeg<'_>) -> bool {
        match (self, seg) {
            (Selector::Any, _) => true,
            (Selector::Key(k), PathSeg::Key(s)) => k == s,
            (Selector::Index(i), PathSeg::Index(j)) => i == j,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// `..`: any number of levels may come before the one the selector matches.
    deep: bool,
    sel: Selector,
}

/// A parsed `ignore_fields` / `array_sets` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPattern {
    source: String,
    steps: Vec<Step>,
    /// No `..` step: only paths of exactly `steps.len()` segments can match.
    fixed_depth: bool,
}

impl FieldPattern {
    /// Parses a pattern when the config is loaded; the error says what is wrong
    /// and where, for the config error message.
    pub fn parse(src: &str) -> Result<FieldPattern, String> {
        let err = |at: usize, what: &str| Err(format!("field pattern {src:?}: {what} at byte {at}"));
        let bytes = src.as_bytes();
        if bytes.first() != Some(&b'$') {
            return err(0, "must start with `$`");
        }
        let mut steps = Vec::new();
        let mut i = 1;
        while i < bytes.len() {
            let deep = src[i..].starts_with("..");
            let sel_at = if deep {
                i + 2
            } else if bytes[i] == b'.' || bytes[i] == b'[' {
                i + usize::from(bytes[i] == b'.')
            } else {
                return err(i, "expected `.`, `..` or `[`");
            };
            let (sel, next) = if bytes.get(sel_at) == Some(&b'[') {
                match parse_bracket(src, sel_at + 1) {
                    Ok(v) => v,
                    Err(what) => return err(sel_at, &what),
                }
            } else {
                let end = src[sel_at..].find(['.', '[', ']']).map_or(src.len(), |n| sel_at + n);
                let name = &src[sel_at..end];
                if name.is_empty() {
                    return err(sel_at, "expected a name, `*` or `[`");
                }
                let sel = if name == "*" { Selector::Any } else { Selector::Key(name.to_string()) };
                (sel, end)
            };
            steps.push(Step { deep, sel });
            i = next;
        }
        let fixed_depth = !steps.iter().any(|s| s.deep);
        Ok(FieldPattern { source: src.to_string(), steps, fixed_depth })
    }

    /// Whether the whole `path` (root first) is selected by this pattern; called
    /// for each node the diff visits, so it does not allocate.
    pub fn matches(&self, path: &[PathSeg<'_>]) -> bool {
        if self.fixed_depth && path.len() != self.steps.len() {
            return false;
        }
        match_steps(&self.steps, path)
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for FieldPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Parses what follows a `[` (at `at`): `"name"`, `'name'`, digits or `*`, then `]`.
fn parse_bracket(src: &str, at: usize) -> Result<(Selector, usize), String> {
    let rest = &src[at..];
    let quote = rest.chars().next();
    if let Some(q @ ('"' | '\'')) = quote {
        let mut name = String::new();
        let mut chars = rest.char_indices().skip(1);
        while let Some((n, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => name.push(e),
                    None => return Err("unterminated escape".into()),
                },
                c if c == q => {
                    return if rest[n + 1..].starts_with(']') {
                        Ok((Selector::Key(name), at + n + 2))
                    } else {
                        Err("expected `]` after the quoted name".into())
                    };
                }
                c => name.push(c),
            }
        }
        return Err("unterminated quoted name".into());
    }
    let end = rest.find(']').ok_or("expected `]`")?;
    let inner = &rest[..end];
    let sel = if inner == "*" {
        Selector::Any
    } else if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
        Selector::Index(inner.parse().map_err(|_| "index too large".to_string())?)
    } else {
        return Err(format!("expected a quoted name, an index or `*` in brackets, got {inner:?}"));
    };
    Ok((sel, at + end + 1))
}

fn match_steps(steps: &[Step], path: &[PathSeg<'_>]) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return path.is_empty();
    };
    if !step.deep {
        return path.first().is_some_and(|seg| step.sel.hits(seg)) && match_steps(rest, &path[1..]);
    }
    // Patterns are a handful of steps long, so trying every depth is cheap.
    (0..path.len()).any(|i| step.sel.hits(&path[i]) && match_steps(rest, &path[i + 1..]))
}

/// Renders a concrete path: `$.items[2].price`, `$.meta["weird key"]`.
pub fn render_path(path: &[PathSeg<'_>]) -> String {
    let mut out = String::with_capacity(1 + path.len() * 8);
    out.push('$');
    for seg in path {
        match seg {
            PathSeg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            PathSeg::Key(k) if is_plain_name(k) => {
                out.push('.');
                out.push_str(k);
            }
            PathSeg::Key(k) => {
                out.push_str("[\"");
                for c in k.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push_str("\"]");
            }
        }
    }
    out
}

/// Names that read unambiguously after a `.`; anything else is bracket-quoted.
fn is_plain_name(k: &str) -> bool {
    let mut bytes = k.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
