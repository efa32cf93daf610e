//! Config errors that point at the file, the line and the key.
//!
//! Every stage of loading (TOML syntax, shape, meaning) appends to one
//! [`Diagnostics`] list so that a single `gateway check` shows every mistake,
//! not just the first.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is not tied to a line (e.g. unreadable file).
    pub line: usize,
    /// Key path such as `routes[0].canary_percent`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.file.display().to_string());
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{file}: {}", self.message),
            (0, false) => write!(f, "{file}: {}: {}", self.key, self.message),
            (line, true) => write!(f, "{file}:{line}: {}", self.message),
            (line, false) => write!(f, "{file}:{line}: {}: {}", self.key, self.message),
        }
    }
}

/// A non-fatal remark printed by `gateway check` and logged at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning(pub ConfigError);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}", self.0)
    }
}

/// Collects errors and warnings for one source file, turning byte spans into lines.
pub struct Diagnostics<'a> {
    file: PathBuf,
    source: &'a str,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
    /// Every file the load read besides the config itself.
    pub files: super::files::FileRecord,
    /// Limits with `scope = "cluster"` (key, span): an error unless `[cluster]` is set.
    pub cluster_limits: Vec<(String, std::ops::Range<usize>)>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: &Path, source: &'a str) -> Self {
        Self {
            file: file.to_path_buf(),
            source,
            errors: Vec::new(),
            warnings: Vec::new(),
            files: Default::default(),
            cluster_limits: Vec::new(),
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn line_of(&self, span: &Range<usize>) -> usize {
        line_of(self.source, span.start)
    }

    pub fn error(&mut self, span: Option<Range<usize>>, key: impl Into<String>, msg: impl Into<String>) {
        let line = span.map(|s| self.line_of(&s)).unwrap_or(0);
        self.errors.push(ConfigError { file: self.file.clone(), line, key: key.into(), message: msg.into() });
    }

    pub fn warn(&mut self, span: Option<Range<usize>>, key: impl Into<String>, msg: impl Into<String>) {
        let line = span.map(|s| self.line_of(&s)).unwrap_or(0);
        self.warnings.push(ConfigWarning(ConfigError {
            file: self.file.clone(),
            line,
            key: key.into(),
            message: msg.into(),
        }));
    }

    /// Record a serde/TOML error raised while reading the section at `section_key`.
    ///
    /// toml's messages name the offending field (`unknown field `foo``); the
    /// span points at it, so the key path is the section plus the word under
    /// the span when that word is a bare key.
    pub fn toml_error(&mut self, section_key: &str, err: &toml::de::Error) {
        let span = err.span();
        let mut key = section_key.to_string();
        if let Some(word) = span.as_ref().and_then(|s| self.bare_key_at(s)) {
            if !key.ends_with(&word) {
                key = if key.is_empty() { word } else { format!("{key}.{word}") };
            }
        }
        let message = err.message().trim().replace('\n', " ");
        self.error(span, key, message);
    }

    fn bare_key_at(&self, span: &Range<usize>) -> Option<String> {
        // A span over a value of the wrong type (`threads = "two"`, `threads =
        // true`): the key is the word before the `=` that precedes it on its
        // line. Checked first, so a bare value like `true` is not taken for a key.
        if let Some(key) = self.key_before(span) {
            return Some(key);
        }
        let text = self.source.get(span.clone())?;
        // A span over a key, or over `key = value` lines, starts with the key itself.
        if is_bare_key(text) {
            return Some(text.to_string());
        }
        let first = text.split(['=', ' ', '\n']).next()?.trim();
        (is_bare_key(first) && text.contains('=')).then(|| first.to_string())
    }

    fn key_before(&self, span: &Range<usize>) -> Option<String> {
        let line_start = self.source.get(..span.start)?.rfind('\n').map_or(0, |i| i + 1);
        let before = self.source.get(line_start..span.start)?.trim_end().strip_suffix('=')?;
        let key = before.rsplit([' ', '{', ',', '\t']).find(|w| !w.is_empty())?.trim();
        is_bare_key(key).then(|| key.to_string())
    }
}

/// 1-based line number of a byte offset.
pub fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

fn is_bare_key(word: &str) -> bool {
    !word.is_empty() && word.len() < 64 && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_and_key() {
        let e = ConfigError {
            file: PathBuf::from("/etc/gw/gateway.toml"),
            line: 31,
            key: "routes[0].canary_percent".into(),
            message: "120 is outside 0..=100".into(),
        };
        assert_eq!(e.to_string(), "gateway.toml:31: routes[0].canary_percent: 120 is outside 0..=100");
    }

    #[test]
    fn line_numbers_are_one_based() {
        let src = "a\nb\nc";
        assert_eq!(line_of(src, 0), 1);
        assert_eq!(line_of(src, 2), 2);
        assert_eq!(line_of(src, 4), 3);
    }
}
