//! `diff [--json-lines] [--numeric-ids] [--content-only] REPO::A B [PATHS]`: borg 1.2.4's text
//! and JSON-lines output over [`dedupstore::diff`] (sorted by path, borg's `--sort`).

use anyhow::anyhow;
use dedupstore::diff::{Change, DiffOptions, Owner};
use dedupstore::pattern::Pattern;
use std::io::Write;
use std::process::ExitCode;

/// Arguments of `diff`.
#[derive(clap::Args, Debug)]
pub(crate) struct DiffArgs {
    /// borg's JSON lines: {"changes": [...], "path": ...} per item.
    #[arg(long)]
    json_lines: bool,
    /// Compare owners by uid/gid.
    #[arg(long)]
    numeric_ids: bool,
    /// Only content differences (no owner, mode, times).
    #[arg(long)]
    content_only: bool,
    /// Output sorted by path (always: accepted for borg's scripts).
    #[arg(long)]
    sort: bool,
    /// REPO::ARCHIVE1.
    target: String,
    /// ARCHIVE2.
    archive2: String,
    /// Only these paths (path prefixes; `fm:`, `sh:`, `pp:` styles).
    paths: Vec<String>,
}

/// borg's `sizeof_fmt` (powers of 1000, `precision` decimals past bytes, `+` when `sign`).
pub(crate) fn sizeof_fmt(num: f64, precision: usize, sign: bool) -> String {
    let units = ["", "k", "M", "G", "T", "P", "E", "Z"];
    let mut num = num;
    let mut prec = 0;
    let mut unit = "Y";
    for u in units {
        let p = 10f64.powi(precision as i32);
        if ((num * p).round() / p).abs() < 1000.0 {
            unit = u;
            break;
        }
        num /= 1000.0;
        prec = precision;
    }
    let s = format!("{num:.prec$}");
    let s = if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') { s[1..].to_string() } else { s };
    let plus = if sign && num > 0.0 { "+" } else { "" };
    format!("{plus}{s} {unit}B")
}

fn ftime(ns: i64) -> String {
    crate::list_format::local_us(ns).format("%a, %Y-%m-%d %H:%M:%S").to_string()
}

fn isotime(ns: i64) -> String {
    crate::list_format::iso_us(ns)
}

/// borg 1.2.4 prints names even with `--numeric-ids` (which only changes the comparison).
fn owner_text(o: &Owner) -> String {
    format!("{}:{}", o.user.clone().unwrap_or_else(|| "None".into()), o.group.clone().unwrap_or_else(|| "None".into()))
}

/// One change as borg prints it in text.
fn text(c: &Change) -> String {
    match c {
        Change::Modified { added, removed } => {
            format!("{:>9} {:>9}", sizeof_fmt(*added as f64, 1, true), sizeof_fmt(-(*removed as f64), 1, true))
        }
        Change::Added(n) => format!("added {:>13}", sizeof_fmt(*n as f64, 2, false)),
        Change::Removed(n) => format!("removed {:>11}", sizeof_fmt(*n as f64, 2, false)),
        Change::AddedKind(k) => format!("added {k}"),
        Change::RemovedKind(k) => format!("removed {k}"),
        Change::ChangedLink => "changed link".into(),
        Change::Owner { old, new } => format!("[{} -> {}]", owner_text(old), owner_text(new)),
        Change::Mode { old, new } => {
            format!("[{} -> {}]", crate::mode_string(old.0, old.1), crate::mode_string(new.0, new.1))
        }
        Change::Ctime { old, new } => format!("[ctime: {} -> {}]", ftime(*old), ftime(*new)),
        Change::Mtime { old, new } => format!("[mtime: {} -> {}]", ftime(*old), ftime(*new)),
        _ => String::new(),
    }
}

/// A JSON string as Python's `json.dumps` writes it (ASCII only, `\uXXXX` escapes).
fn py_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON value as borg writes it: `json.dumps(sort_keys=True)` (", " and ": " separators).
fn py_json(v: &serde_json::Value) -> String {
    use serde_json::Value as V;
    match v {
        V::Null => "null".into(),
        V::Bool(b) => if *b { "true" } else { "false" }.into(),
        V::Number(n) => n.to_string(),
        V::String(s) => py_str(s),
        V::Array(a) => format!("[{}]", a.iter().map(py_json).collect::<Vec<_>>().join(", ")),
        V::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.iter().map(|k| format!("{}: {}", py_str(k), py_json(&m[k.as_str()]))).collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

fn owner_json(o: &Owner) -> (serde_json::Value, serde_json::Value) {
    (o.user.clone().into(), o.group.clone().into())
}

/// One change as borg's JSON object.
fn json(c: &Change) -> serde_json::Value {
    use serde_json::json;
    match c {
        Change::Modified { added, removed } => json!({"type": "modified", "added": added, "removed": removed}),
        Change::Added(n) => json!({"type": "added", "size": n}),
        Change::Removed(n) => json!({"type": "removed", "size": n}),
        Change::AddedKind(k) => json!({"type": format!("added {k}")}),
        Change::RemovedKind(k) => json!({"type": format!("removed {k}")}),
        Change::ChangedLink => json!({"type": "changed link"}),
        Change::Owner { old, new } => {
            let ((ou, og), (nu, ng)) = (owner_json(old), owner_json(new));
            json!({"type": "owner", "old_user": ou, "old_group": og, "new_user": nu, "new_group": ng})
        }
        Change::Mode { old, new } => json!({"type": "mode",
            "old_mode": crate::mode_string(old.0, old.1), "new_mode": crate::mode_string(new.0, new.1)}),
        Change::Ctime { old, new } => json!({"type": "ctime", "old_ctime": isotime(*old), "new_ctime": isotime(*new)}),
        Change::Mtime { old, new } => json!({"type": "mtime", "old_mtime": isotime(*old), "new_mtime": isotime(*new)}),
        _ => json!({}),
    }
}

/// Runs `diff`.
pub(crate) fn run(a: DiffArgs) -> anyhow::Result<ExitCode> {
    let (repo_path, first) = crate::split_target(Some(&a.target))?;
    let first = first.ok_or_else(|| anyhow!("{}: expected REPO::ARCHIVE", a.target))?;
    let paths = a
        .paths
        .iter()
        .map(|p| {
            // borg: PATH arguments are path prefixes unless they name a style
            let styled = p.len() > 3 && p.as_bytes()[2] == b':';
            Pattern::parse(&if styled { p.clone() } else { format!("pp:{p}") })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let repo = crate::open(&repo_path)?;
    let opts = DiffOptions { numeric_ids: a.numeric_ids, content_only: a.content_only, paths };
    let diffs = dedupstore::diff::diff(&repo, &first, &a.archive2, &opts)?;
    let mut out = std::io::BufWriter::new(crate::Stdout);
    for d in diffs {
        let path = String::from_utf8_lossy(&d.path);
        if a.json_lines {
            let changes: Vec<serde_json::Value> = d.changes.iter().map(json).collect();
            let v = serde_json::json!({"changes": changes, "path": path});
            writeln!(out, "{}", py_json(&v))?;
        } else {
            let line: Vec<String> = d.changes.iter().map(text).collect();
            writeln!(out, "{:<19} {path}", line.join(" "))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borg_sizes_and_json() {
        assert_eq!(sizeof_fmt(19.0, 1, true), "+19 B");
        assert_eq!(sizeof_fmt(-11.0, 1, true), "-11 B");
        assert_eq!(sizeof_fmt(-0.0, 1, true), "0 B");
        assert_eq!(sizeof_fmt(4500.0, 1, true), "+4.5 kB");
        assert_eq!(sizeof_fmt(1_234_567.0, 2, false), "1.23 MB");
        assert_eq!(sizeof_fmt(999_999.0, 2, false), "1.00 MB");
        let v = serde_json::json!({"path": "é\"x", "changes": [{"type": "added", "size": 4}]});
        assert_eq!(py_json(&v), r#"{"changes": [{"size": 4, "type": "added"}], "path": "\u00e9\"x"}"#);
    }
}
