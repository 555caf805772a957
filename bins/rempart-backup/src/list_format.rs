//! `list --format`: borg 1.2.4's placeholders (`borg help placeholders`, `borg list --help`).
//!
//! A format is Python's `str.format_map` over a dict of keys, as borg uses it: `{KEY}` or
//! `{KEY:SPEC}`, `{{` and `}}` for literal braces. Strings and numbers take Python's spec
//! subset `[[fill]align][width][.precision]` (strings align left by default, numbers right);
//! times take a `strftime` format as their spec (borg's `OutputTimestamp`), without one they
//! print as `Tue, 2026-12-08 02:35:54` in local time. Fixed keys: `NL`, `NEWLINE`, `LF`, `CR`,
//! `TAB`, `SPACE`, `NUL`. An unknown key is an error (borg: `KeyError`, exit 2).

use anyhow::{anyhow, bail};
use chrono::{DateTime, Local};
use dedupstore::archive::{ArchiveMeta, Item, ItemKind, ManifestEntry};
use dedupstore::commands::time_of;
use dedupstore::repo::Index;
use std::fmt::Write as _;

/// A placeholder's value.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Time(DateTime<Local>),
}

/// borg's fixed keys.
fn fixed(key: &str) -> Option<&'static str> {
    Some(match key {
        "NL" | "NEWLINE" | "LF" => "\n",
        "CR" => "\r",
        "TAB" => "\t",
        "SPACE" => " ",
        "NUL" => "\0",
        _ => return None,
    })
}

/// Renders `fmt` with the values `lookup` gives (None: unknown key → error).
pub(crate) fn render(fmt: &str, lookup: &dyn Fn(&str) -> Option<Value>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = fmt;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
            continue;
        }
        if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
            continue;
        }
        if tail.starts_with('}') {
            bail!("--format {fmt:?}: single '}}' encountered");
        }
        let end = tail.find('}').ok_or_else(|| anyhow!("--format {fmt:?}: unmatched '{{'"))?;
        let field = &tail[1..end];
        let (key, spec) = field.split_once(':').unwrap_or((field, ""));
        let value = match fixed(key) {
            Some(s) => Value::Str(s.to_string()),
            None => lookup(key).ok_or_else(|| anyhow!("--format: unknown key {key:?}"))?,
        };
        format_value(&mut out, &value, spec)?;
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Python's `format(value, spec)` for the subset borg's formats use.
fn format_value(out: &mut String, v: &Value, spec: &str) -> anyhow::Result<()> {
    let (s, default_right) = match v {
        Value::Time(t) => {
            let f = if spec.is_empty() { "%a, %Y-%m-%d %H:%M:%S" } else { spec };
            let mut s = String::new();
            write!(s, "{}", t.format(f)).map_err(|_| anyhow!("--format: bad time format {f:?}"))?;
            out.push_str(&s);
            return Ok(());
        }
        Value::Str(s) => (s.clone(), false),
        Value::Int(i) => (i.to_string(), true),
    };
    let mut chars = spec.chars().peekable();
    let mut fill = ' ';
    let mut align = None;
    let first: Vec<char> = spec.chars().take(2).collect();
    if first.len() == 2 && matches!(first[1], '<' | '>' | '^') {
        fill = first[0];
        align = Some(first[1]);
        chars.next();
        chars.next();
    } else if first.first().is_some_and(|c| matches!(c, '<' | '>' | '^')) {
        align = first.first().copied();
        chars.next();
    }
    let rest: String = chars.collect();
    let (width, precision) = match rest.split_once('.') {
        Some((w, p)) => (w, Some(p)),
        None => (rest.as_str(), None),
    };
    let width: usize =
        if width.is_empty() { 0 } else { width.parse().map_err(|_| anyhow!("--format: bad format spec {spec:?}"))? };
    let mut s = s;
    if let Some(p) = precision {
        if default_right {
            bail!("--format: precision not allowed in integer format specifier {spec:?}");
        }
        let p: usize = p.parse().map_err(|_| anyhow!("--format: bad format spec {spec:?}"))?;
        s = s.chars().take(p).collect();
    }
    let len = s.chars().count();
    let pad = width.saturating_sub(len);
    let align = align.unwrap_or(if default_right { '>' } else { '<' });
    let (left, right) = match align {
        '>' => (pad, 0),
        '^' => (pad / 2, pad - pad / 2),
        _ => (0, pad),
    };
    out.extend(std::iter::repeat_n(fill, left));
    out.push_str(&s);
    out.extend(std::iter::repeat_n(fill, right));
    Ok(())
}

/// A stored time (ns) as borg shows it: rounded to the microsecond (Python's datetime), local.
/// borg computes `datetime.fromtimestamp(ns / 1e9)`: a float, its fraction rounded half-even
/// to microseconds (CPython's `_PyTime_DoubleToDenominator`); done the same way so the last
/// digit agrees.
pub(crate) fn local_us(ns: i64) -> DateTime<Local> {
    let t = ns as f64 / 1e9;
    let (mut secs, frac) = (t.trunc(), t.fract());
    let mut us = (frac * 1e6).round_ties_even();
    if us >= 1e6 {
        us -= 1e6;
        secs += 1.0;
    } else if us < 0.0 {
        us += 1e6;
        secs -= 1.0;
    }
    let ns = (secs as i64).saturating_mul(1_000_000_000).saturating_add(us as i64 * 1000);
    time_of(ns).with_timezone(&Local)
}

fn local(ns: i64) -> Value {
    Value::Time(local_us(ns))
}

/// borg's `isomtime` form.
pub(crate) fn iso_us(ns: i64) -> String {
    local_us(ns).format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

fn iso(ns: i64) -> Value {
    Value::Str(iso_us(ns))
}

/// The keys of one archive in `list REPO --format`.
pub(crate) fn archive_value(e: &ManifestEntry, meta: Option<&ArchiveMeta>, key: &str) -> Option<Value> {
    Some(match key {
        "archive" | "name" | "barchive" => Value::Str(e.name.clone()),
        "id" => Value::Str(e.id.to_hex()),
        "start" | "time" => local(e.time),
        // the archive object is read only when the format asks for one of these
        "end" => local(meta?.time_end),
        "comment" | "bcomment" => Value::Str(String::new()),
        "command_line" => Value::Str(meta?.cmdline.join(" ")),
        "hostname" => Value::Str(meta?.hostname.clone()),
        "username" => Value::Str(meta?.username.clone()),
        _ => return None,
    })
}

/// Whether a `list REPO` format needs the archive objects (not only the manifest).
pub(crate) fn needs_archive_meta(fmt: &str) -> bool {
    ["{end", "{command_line", "{hostname", "{username"].iter().any(|k| fmt.contains(k))
}

/// borg's one-letter type.
pub(crate) fn type_char(kind: ItemKind) -> char {
    match kind {
        ItemKind::File => '-',
        ItemKind::Dir => 'd',
        ItemKind::Symlink => 'l',
        ItemKind::Fifo => 'p',
        ItemKind::CharDev => 'c',
        ItemKind::BlockDev => 'b',
        _ => 's',
    }
}

/// The context of `list REPO::ARCHIVE --format`.
pub(crate) struct ItemCtx<'a> {
    pub(crate) archive: &'a ManifestEntry,
    pub(crate) meta: &'a ArchiveMeta,
    pub(crate) index: &'a Index,
}

/// The keys of one item in `list REPO::ARCHIVE --format`.
pub(crate) fn item_value(ctx: &ItemCtx<'_>, i: &Item, key: &str) -> Option<Value> {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let source = i.target.as_deref().or(i.hardlink.as_deref()).map(lossy).unwrap_or_default();
    Some(match key {
        "type" => Value::Str(type_char(i.kind).to_string()),
        // borg: a hard link to an earlier item shows as `h`
        "mode" => Value::Str(match &i.hardlink {
            Some(_) => format!("h{}", &crate::mode_string(i.kind, i.mode)[1..]),
            None => crate::mode_string(i.kind, i.mode),
        }),
        "uid" => Value::Int(i64::from(i.uid)),
        "gid" => Value::Int(i64::from(i.gid)),
        "user" => Value::Str(i.user.clone().unwrap_or_else(|| i.uid.to_string())),
        "group" => Value::Str(i.group.clone().unwrap_or_else(|| i.gid.to_string())),
        "path" | "bpath" => Value::Str(lossy(&i.path)),
        "source" | "linktarget" => Value::Str(source),
        "extra" => Value::Str(match (&i.target, &i.hardlink) {
            (Some(t), _) => format!(" -> {}", lossy(t)),
            (_, Some(h)) => format!(" link to {}", lossy(h)),
            _ => String::new(),
        }),
        "flags" => Value::Int(0),
        // borg: a symlink's size is its target's length
        "size" => Value::Int(match &i.target {
            Some(t) if i.kind == ItemKind::Symlink => t.len() as i64,
            _ => i64::try_from(i.size).unwrap_or(i64::MAX),
        }),
        "csize" => Value::Int(
            i.chunks
                .iter()
                .filter_map(|c| match c {
                    dedupstore::archive::Extent::Data { id, .. } => ctx.index.chunks.get(id).map(|l| i64::from(l.len)),
                    dedupstore::archive::Extent::Hole(_) => None,
                })
                .sum(),
        ),
        "num_chunks" => {
            Value::Int(i.chunks.iter().filter(|c| matches!(c, dedupstore::archive::Extent::Data { .. })).count() as i64)
        }
        "mtime" => local(i.mtime),
        "ctime" => local(i.ctime),
        "atime" => local(i.atime),
        "isomtime" => iso(i.mtime),
        "isoctime" => iso(i.ctime),
        "isoatime" => iso(i.atime),
        "archiveid" => Value::Str(ctx.archive.id.to_hex()),
        "archivename" => Value::Str(ctx.archive.name.clone()),
        "health" => Value::Str(if ctx.meta.is_healthy(&i.path) { "healthy" } else { "broken" }.into()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &str) -> Option<Value> {
        match k {
            "s" => Some(Value::Str("abc".into())),
            "n" => Some(Value::Int(42)),
            _ => None,
        }
    }

    #[test]
    fn python_format_subset() {
        let r = |f: &str| render(f, &keys).unwrap();
        assert_eq!(r("{s}|{n}{NL}"), "abc|42\n");
        assert_eq!(r("{s:6}|{n:6}|"), "abc   |    42|");
        assert_eq!(r("{s:>6}|{n:<6}|{s:^7}|{s:*^8}|"), "   abc|42    |  abc  |**abc***|");
        assert_eq!(r("{s:.2}{{x}}{TAB}{SPACE}{NUL}{CR}"), "ab{x}\t \0\r");
        assert!(render("{bogus}", &keys).is_err());
        assert!(render("{s", &keys).is_err());
        assert!(render("}", &keys).is_err());
        let t = Value::Time(chrono::TimeZone::with_ymd_and_hms(&Local, 2026, 1, 2, 3, 4, 5).unwrap());
        let tk = move |k: &str| (k == "t").then(|| t.clone());
        assert_eq!(render("{t}|{t:%Y}", &tk).unwrap(), "Fri, 2026-01-02 03:04:05|2026");
    }
}
