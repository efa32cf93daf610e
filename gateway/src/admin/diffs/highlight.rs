//! Highlighting on the record page: both bodies are pretty-printed by
//! [`pretty_lines`], which knows the JSON path of every line it writes
//! (rendered exactly like the diff's paths, by [`render_path`]). A line is
//! wrapped in `<mark>` when its path is a differing path or lies inside one
//! (an object that differs as a whole is marked entirely); for an unordered
//! array difference (`$.tags[*]`) the elements equal to that side's value are
//! marked. A body that is not JSON (a text body, or JSON cut at
//! `max_stored_body`) is shown line by line: `body:line N` diffs mark line N,
//! and a JSON path marks the lines holding its last key (`"price":`) as a
//! best effort.

use serde_json::Value;

use crate::shadow::pattern::{render_path, PathSeg};

/// One line of a pretty-printed JSON body and the path of the value it belongs to.
#[derive(Debug, PartialEq)]
pub struct Line<'v> {
    pub text: String,
    pub path: String,
    /// The value that starts on this line (none on closing brackets).
    pub value: Option<&'v Value>,
}

/// Pretty-prints `v` (two-space indent, keys in serde_json's order), one
/// [`Line`] per output line, each knowing its JSON path.
pub fn pretty_lines(v: &Value) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    emit(v, &mut path, 0, String::new(), false, &mut out);
    out
}

fn emit<'v>(
    v: &'v Value,
    path: &mut Vec<PathSeg<'v>>,
    depth: usize,
    key: String,
    comma: bool,
    out: &mut Vec<Line<'v>>,
) {
    let indent = "  ".repeat(depth);
    let end = if comma { "," } else { "" };
    let here = render_path(path);
    let (open, close, children): (&str, &str, Vec<(PathSeg<'v>, String, &'v Value)>) = match v {
        Value::Object(map) if !map.is_empty() => (
            "{",
            "}",
            map.iter()
                .map(|(k, child)| {
                    let quoted = serde_json::to_string(k).unwrap_or_else(|_| format!("{k:?}"));
                    (PathSeg::Key(k.as_str()), format!("{quoted}: "), child)
                })
                .collect(),
        ),
        Value::Array(items) if !items.is_empty() => {
            ("[", "]", items.iter().enumerate().map(|(i, child)| (PathSeg::Index(i), String::new(), child)).collect())
        }
        scalar => {
            out.push(Line { text: format!("{indent}{key}{scalar}{end}"), path: here, value: Some(v) });
            return;
        }
    };
    out.push(Line { text: format!("{indent}{key}{open}"), path: here.clone(), value: Some(v) });
    let n = children.len();
    for (i, (seg, child_key, child)) in children.into_iter().enumerate() {
        path.push(seg);
        emit(child, path, depth + 1, child_key, i + 1 < n, out);
        path.pop();
    }
    out.push(Line { text: format!("{indent}{close}{end}"), path: here, value: None });
}

/// `line` is `target` or inside it (`$.a` holds `$.a.b` and `$.a[0]`, not `$.ab`).
fn within(line: &str, target: &str) -> bool {
    line.strip_prefix(target).is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// The last key of a JSON path (`$.items[2].price` -> `price`), for the text fallback.
fn last_key(path: &str) -> Option<String> {
    // Drop trailing index steps (`[2]`, `[*]`): the key is the one before them.
    let mut rest = path;
    while let Some(inner) = rest.strip_suffix(']').and_then(|r| r.rsplit_once('[')) {
        let step = inner.1;
        if step == "*" || (!step.is_empty() && step.bytes().all(|b| b.is_ascii_digit())) {
            rest = inner.0;
        } else {
            break;
        }
    }
    if let Some(quoted) = rest.strip_suffix("\"]") {
        let start = quoted.rfind("[\"")?;
        return Some(quoted[start + 2..].replace("\\\"", "\"").replace("\\\\", "\\"));
    }
    let key = &rest[rest.rfind('.')? + 1..];
    (!key.is_empty()).then(|| key.to_string())
}

/// The lines to show for one side's body, each with the differing path that
/// marks it (if any), and the body's kind (`JSON` or `text`). `diffs` pairs
/// each differing path with this side's value. See the module doc.
pub fn highlighted_lines(body: &str, diffs: &[(&str, &Value)]) -> (Vec<(String, Option<String>)>, &'static str) {
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        let lines = pretty_lines(&value);
        let mut marks: Vec<Option<String>> = vec![None; lines.len()];
        for (path, side_value) in diffs.iter().filter(|(p, _)| p.starts_with('$')) {
            let targets: Vec<String> = match path.strip_suffix("[*]") {
                // An unordered array: the elements equal to this side's unmatched value.
                Some(array) => lines
                    .iter()
                    .filter(|l| l.value == Some(*side_value) && is_element_of(&l.path, array))
                    .map(|l| l.path.clone())
                    .collect(),
                None => vec![path.to_string()],
            };
            for (line, mark) in lines.iter().zip(marks.iter_mut()) {
                if mark.is_none() && targets.iter().any(|t| within(&line.path, t)) {
                    *mark = Some(path.to_string());
                }
            }
        }
        return (lines.into_iter().map(|l| l.text).zip(marks).collect(), "JSON");
    }
    let mut lines: Vec<(String, Option<String>)> = body.lines().map(|l| (l.to_string(), None)).collect();
    for (path, _) in diffs {
        if let Some(n) = path.strip_prefix("body:line ").and_then(|n| n.trim().parse::<usize>().ok()) {
            if let Some((_, mark)) = lines.get_mut(n.wrapping_sub(1)) {
                mark.get_or_insert_with(|| path.to_string());
            }
        } else if let Some(key) = path.starts_with('$').then(|| last_key(path)).flatten() {
            let needle = format!("{}:", serde_json::to_string(&key).unwrap_or_default());
            for (_, mark) in lines.iter_mut().filter(|(t, _)| t.contains(&needle)) {
                mark.get_or_insert_with(|| path.to_string());
            }
        }
    }
    (lines, "text")
}

/// `path` is `array[<index>]`.
fn is_element_of(path: &str, array: &str) -> bool {
    path.strip_prefix(array)
        .and_then(|rest| rest.strip_prefix('['))
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pretty_lines_know_their_paths() {
        let v = json!({"items": [{"id": 3, "price": 12}], "meta": {}, "odd key": true});
        let lines = pretty_lines(&v);
        let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(serde_json::to_string_pretty(&v).expect("json"), text.join("\n"), "same text as serde_json");
        let price = lines.iter().find(|l| l.text.contains("price")).expect("price line");
        assert_eq!(price.path, "$.items[0].price");
        let odd = lines.iter().find(|l| l.text.contains("odd key")).expect("odd line");
        assert_eq!(odd.path, "$[\"odd key\"]");
    }

    fn marked(lines: &[(String, Option<String>)]) -> Vec<&str> {
        lines.iter().filter(|(_, m)| m.is_some()).map(|(t, _)| t.trim()).collect()
    }

    #[test]
    fn differing_lines_are_marked_precisely() {
        let body = r#"{"items":[{"id":1,"price":5},{"id":2,"price":7},{"id":3,"price":12}],"ts":9,"price":1}"#;
        let (lines, kind) = highlighted_lines(body, &[("$.items[2].price", &json!(12)), ("$.ts", &json!(9))]);
        assert_eq!(kind, "JSON");
        assert_eq!(marked(&lines), ["\"price\": 12", "\"ts\": 9"], "not the other prices");
        // An object differing as a whole is marked with everything inside it.
        let (lines, _) = highlighted_lines(r#"{"a":{"b":1},"ab":2}"#, &[("$.a", &json!({"b": 1}))]);
        assert_eq!(marked(&lines), ["\"a\": {", "\"b\": 1", "},"]);
        // An unordered array: the unmatched element, by value.
        let (lines, _) = highlighted_lines(r#"{"tags":["x","y","z"]}"#, &[("$.tags[*]", &json!("y"))]);
        assert_eq!(marked(&lines), ["\"y\","]);
    }

    #[test]
    fn text_bodies_mark_lines_and_cut_json_falls_back_to_the_key() {
        let (lines, kind) = highlighted_lines("a\nb\nc", &[("body:line 2", &json!("b"))]);
        assert_eq!((kind, marked(&lines)), ("text", vec!["b"]));
        let cut = "{\n  \"price\": 12,\n  \"name\": \"x\"…[100 more bytes]";
        let (lines, kind) = highlighted_lines(cut, &[("$.items[2].price", &json!(12))]);
        assert_eq!((kind, marked(&lines)), ("text", vec!["\"price\": 12,"]));
        assert_eq!(last_key("$.meta[\"we\\\"ird\"]").as_deref(), Some("we\"ird"));
        assert_eq!(last_key("$.tags[*]").as_deref(), Some("tags"));
        assert_eq!(last_key("$[3]"), None);
    }
}
