//! Include/exclude patterns, as borg 1.2 matches them (`borg help patterns`).
//!
//! ```text
//!  --exclude P, --exclude-from F ──▶ ! fm:P          (exclude, do not recurse)
//!  --pattern L, --patterns-from F ─▶ + P | - P | ! P  (default style sh:, `P style` changes it)
//!                                    R PATH ─────────▶ roots (extra paths to back up)
//!                                          │
//!                      Matcher::matches(path) ─▶ first matching line wins ─▶ Match {included, recurse}
//!                                          (pf: lines first, by exact path; no match: included)
//! ```
//!
//! Styles: `fm:` (fnmatch: `*` and `?` also match `/`), `sh:` (`*`, `?` stop at `/`, `**/` is
//! any number of directories), `re:` (a regular expression searched in the path), `pp:` (a path
//! prefix, whole components), `pf:` (the full path). Paths and patterns are compared without a
//! leading `/`. `fm:`, `sh:` and `pp:` match a path and everything below it; a trailing `/`
//! matches only what is below.
//!
//! Why regular expressions: borg compiles `fm:` and `sh:` to Python regexes; translating them
//! the same way keeps the corner cases (`**/`, classes, a trailing `/`) identical instead of
//! approximated by a hand-written glob. A `-` line excludes a directory but still walks into it
//! (a later `+` may include something below it); `!` and `--exclude` do not walk into it.

use crate::error::{Error, Result};
use regex::bytes::Regex;
use std::collections::HashMap;

/// A pattern style (`borg help patterns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Style {
    /// `fm:` fnmatch, the default of `--exclude`.
    Fnmatch,
    /// `sh:` shell style, the default of `--pattern`.
    Shell,
    /// `re:` regular expression.
    Regex,
    /// `pp:` path prefix.
    PathPrefix,
    /// `pf:` full path.
    PathFull,
}

impl Style {
    /// The style of a two-letter prefix (`fm`, `sh`, `re`, `pp`, `pf`).
    pub fn from_prefix(p: &str) -> Option<Style> {
        Some(match p {
            "fm" => Style::Fnmatch,
            "sh" => Style::Shell,
            "re" => Style::Regex,
            "pp" => Style::PathPrefix,
            "pf" => Style::PathFull,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
enum Compiled {
    /// Matched against `path + "/"` (fm, sh) or searched in the path (re).
    Regex(Regex),
    /// `pp:`: the normalised prefix with a trailing `/`, matched against `path + "/"`.
    Prefix(Vec<u8>),
    /// `pf:`: the normalised path.
    Full(Vec<u8>),
}

/// One pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    style: Style,
    source: String,
    compiled: Compiled,
    /// fm/sh only: the pattern as a whole-string match, without the subtree rule (archive
    /// names).
    exact: Option<Regex>,
}

impl PartialEq for Pattern {
    fn eq(&self, o: &Self) -> bool {
        self.style == o.style && self.source == o.source
    }
}
impl Eq for Pattern {}

/// What a line of a patterns file does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// `+`: include.
    Include,
    /// `-`: exclude, but walk into an excluded directory.
    Exclude,
    /// `!` and `--exclude`: exclude and do not walk into it.
    ExcludeNoRecurse,
}

/// The verdict on one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// Whether the item itself is archived.
    pub included: bool,
    /// Whether a directory is walked into (always true for an included one).
    pub recurse: bool,
}

/// Python's `os.path.normpath` for a relative or absolute path string.
fn normpath(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let abs = p.starts_with('/');
    // POSIX keeps exactly two leading slashes; borg strips leading slashes afterwards anyway
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            ".." if abs => {}
            c => parts.push(c),
        }
    }
    let body = parts.join("/");
    match (abs, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

/// Escapes one character for a regex (outside a class).
fn lit(c: char, out: &mut String) {
    out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
}

/// A bracket expression `stuff` (without the brackets, `!` already turned into `^`) as a class.
fn class(stuff: &str, out: &mut String) {
    out.push('[');
    let (neg, body) = match stuff.strip_prefix('^') {
        Some(b) => (true, b),
        None => (false, stuff),
    };
    if neg {
        out.push('^');
    }
    let chars: Vec<char> = body.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '-' && i > 0 && i + 1 < chars.len() {
            out.push('-');
        } else if c.is_ascii_punctuation() {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    if neg {
        // a negated class also matches a byte that is not UTF-8 (borg reads such names with
        // surrogate escapes: one character each)
        out.push_str("]|(?-u:[\\x80-\\xff])");
    } else {
        out.push(']');
    }
}

/// The `[...]` at `pat[i..]` (just after the `[`), as Python's fnmatch finds its end; `None`
/// if there is no closing bracket (then `[` is literal).
fn bracket(pat: &[char], i: usize) -> Option<(String, usize)> {
    let mut j = i;
    if pat.get(j) == Some(&'!') {
        j += 1;
    }
    if pat.get(j) == Some(&']') {
        j += 1;
    }
    while j < pat.len() && pat[j] != ']' {
        j += 1;
    }
    if j >= pat.len() {
        return None;
    }
    let stuff: String = pat[i..j].iter().collect();
    let stuff = match stuff.strip_prefix('!') {
        Some(r) => format!("^{r}"),
        None if stuff.starts_with('^') => format!("\\{stuff}"),
        None => stuff,
    };
    Some((stuff, j + 1))
}

/// One character other than `/` (a valid UTF-8 one, or a byte that is not UTF-8).
const NOT_SEP: &str = "(?:[^/]|(?-u:[\\x80-\\xff]))";
/// Any run of bytes without `/`.
const NOT_SEP_RUN: &str = "(?-u:[^/])*";

/// borg's `shellpattern.translate`: `**/` is any number of directories, `*` and `?` stay in a
/// component.
fn translate_shell(pat: &str) -> String {
    let p: Vec<char> = pat.chars().collect();
    let mut out = String::from("(?s)^");
    let mut i = 0;
    while i < p.len() {
        let c = p[i];
        i += 1;
        match c {
            '*' => {
                if i + 1 < p.len() && p[i] == '*' && p[i + 1] == '/' {
                    out.push_str("(?:(?-u:[^/])*/)*");
                    i += 2;
                } else {
                    out.push_str(NOT_SEP_RUN);
                }
            }
            '?' => out.push_str(NOT_SEP),
            '[' => i = bracket_class(&p, i, &mut out),
            c => lit(c, &mut out),
        }
    }
    out.push_str("\\z");
    out
}

/// A `[...]` set starting at `p[i]` (just after the `[`) as a regex group, or a literal `[`
/// when it does not close; where the translation goes on.
fn bracket_class(p: &[char], i: usize, out: &mut String) -> usize {
    match bracket(p, i) {
        Some((stuff, next)) => {
            out.push_str("(?:");
            class(&stuff, out);
            out.push(')');
            next
        }
        None => {
            out.push_str("\\[");
            i
        }
    }
}

/// Python's `fnmatch.translate`: `*` and `?` match any character, `/` included.
fn translate_fnmatch(pat: &str) -> String {
    let p: Vec<char> = pat.chars().collect();
    let mut out = String::from("(?s)^");
    let mut i = 0;
    while i < p.len() {
        let c = p[i];
        i += 1;
        match c {
            '*' => {
                while p.get(i) == Some(&'*') {
                    i += 1;
                }
                out.push_str("(?s-u:.)*");
            }
            '?' => out.push_str("(?:.|(?-u:[\\x80-\\xff]))"),
            '[' => i = bracket_class(&p, i, &mut out),
            c => lit(c, &mut out),
        }
    }
    out.push_str("\\z");
    out
}

fn compile(re: &str, source: &str) -> Result<Regex> {
    Regex::new(re).map_err(|e| Error::InvalidArgument(format!("pattern {source:?}: {e}")))
}

impl Pattern {
    /// Parses `[fm:|sh:|re:|pp:|pf:]PATTERN` with `fm:` as the default style (`--exclude`).
    pub fn parse(s: &str) -> Result<Pattern> {
        Pattern::parse_with(s, Style::Fnmatch)
    }

    /// Parses a pattern whose style prefix, when absent, is `default`.
    pub fn parse_with(s: &str, default: Style) -> Result<Pattern> {
        let b = s.as_bytes();
        let (style, pat) = if b.len() > 2 && b[2] == b':' && b[..2].iter().all(|c| c.is_ascii_alphanumeric()) {
            let st = Style::from_prefix(&s[..2])
                .ok_or_else(|| Error::InvalidArgument(format!("unknown pattern style {:?} in {s:?}", &s[..2])))?;
            (st, &s[3..])
        } else {
            (default, s)
        };
        if pat.is_empty() {
            return Err(Error::InvalidArgument(format!("empty pattern {s:?}")));
        }
        let (compiled, exact) = match style {
            Style::PathFull => (Compiled::Full(normpath(pat).trim_start_matches('/').as_bytes().to_vec()), None),
            Style::PathPrefix => {
                let p = format!("{}/", normpath(pat).trim_end_matches('/'));
                (Compiled::Prefix(p.trim_start_matches('/').as_bytes().to_vec()), None)
            }
            Style::Regex => (Compiled::Regex(compile(pat, s)?), None),
            Style::Fnmatch | Style::Shell => {
                let shell = style == Style::Shell;
                let full = match (pat.ends_with('/'), shell) {
                    (true, false) => format!("{}/*/", normpath(pat).trim_end_matches('/')),
                    (false, false) => format!("{}/*", normpath(pat)),
                    (true, true) => format!("{}/**/*/", normpath(pat).trim_end_matches('/')),
                    (false, true) => format!("{}/**/*", normpath(pat)),
                };
                let full = full.trim_start_matches('/');
                let tr = if shell { translate_shell } else { translate_fnmatch };
                let exact = compile(&tr(pat), s)?;
                (Compiled::Regex(compile(&tr(full), s)?), Some(exact))
            }
        };
        Ok(Pattern { style, source: s.to_string(), compiled, exact })
    }

    /// The style.
    pub fn style(&self) -> Style {
        self.style
    }

    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `s` matches (no subtree rule), e.g. archive names.
    pub fn matches_exact(&self, s: &[u8]) -> bool {
        match (&self.exact, &self.compiled) {
            (Some(r), _) => r.is_match(s),
            (None, Compiled::Regex(r)) => r.is_match(s),
            (None, Compiled::Prefix(p)) => s.starts_with(p.strip_suffix(b"/").unwrap_or(p)),
            (None, Compiled::Full(p)) => s == p.as_slice(),
        }
    }

    /// Whether an archive path (a leading `/` is ignored) matches, borg's way: `fm:`, `sh:`
    /// and `pp:` also match everything below a matching directory.
    pub fn matches(&self, path: &[u8]) -> bool {
        let path = strip_slashes(path);
        match &self.compiled {
            Compiled::Full(p) => path == p.as_slice(),
            Compiled::Regex(r) if self.style == Style::Regex => r.is_match(path),
            Compiled::Regex(r) => r.is_match(&with_slash(path)),
            Compiled::Prefix(p) => with_slash(path).starts_with(p),
        }
    }
}

fn strip_slashes(p: &[u8]) -> &[u8] {
    let n = p.iter().take_while(|&&b| b == b'/').count();
    &p[n..]
}

fn with_slash(p: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(p.len() + 1);
    v.extend_from_slice(p);
    v.push(b'/');
    v
}

/// An ordered list of include/exclude patterns and the roots `R` lines named (borg's
/// `PatternMatcher` with `create`'s fallback: a path no pattern matches is included).
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    /// `pf:` patterns, looked up first by exact path (borg's shortcut: a `pf:` line wins over
    /// any earlier line; of two `pf:` lines for one path the later wins).
    full: HashMap<Vec<u8>, Action>,
    items: Vec<(Pattern, Action)>,
    roots: Vec<String>,
}

/// The lines of a patterns or exclude file that count: trimmed, neither empty nor `#` comments.
fn clean_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

impl Matcher {
    /// An empty matcher (everything included).
    pub fn new() -> Self {
        Matcher::default()
    }

    /// Whether no pattern was added.
    pub fn is_empty(&self) -> bool {
        self.full.is_empty() && self.items.is_empty()
    }

    /// Adds a pattern with its action, after the others.
    pub fn add(&mut self, p: Pattern, action: Action) {
        match &p.compiled {
            Compiled::Full(path) => {
                self.full.insert(path.clone(), action);
            }
            _ => self.items.push((p, action)),
        }
    }

    /// `--exclude PATTERN`: `fm:` by default, excluded without walking into it.
    pub fn add_exclude(&mut self, s: &str) -> Result<()> {
        self.add(Pattern::parse_with(s, Style::Fnmatch)?, Action::ExcludeNoRecurse);
        Ok(())
    }

    /// `--exclude-from FILE`'s contents: one `--exclude` per line (`#` comments, blank lines
    /// and surrounding blanks ignored).
    pub fn add_exclude_lines(&mut self, text: &str) -> Result<()> {
        clean_lines(text).try_for_each(|l| self.add_exclude(l))
    }

    /// `--pattern LINE`: one `+`/`-`/`!`/`R` line with `sh:` as the default style (a `P`
    /// line here changes nothing, as in borg).
    pub fn add_pattern(&mut self, line: &str) -> Result<()> {
        let mut style = Style::Shell;
        self.pattern_line(line, &mut style)
    }

    /// `--patterns-from FILE`'s contents: `+`/`-`/`!` patterns, `R` roots, `P` default style for
    /// the lines after it (initially `sh:`).
    pub fn add_pattern_lines(&mut self, text: &str) -> Result<()> {
        let mut style = Style::Shell;
        clean_lines(text).try_for_each(|l| self.pattern_line(l, &mut style))
    }

    fn pattern_line(&mut self, line: &str, style: &mut Style) -> Result<()> {
        let bad = |why: &str| Error::InvalidArgument(format!("pattern line {line:?}: {why}"));
        let mut cs = line.chars();
        let cmd = cs.next().ok_or_else(|| bad("empty"))?;
        let rest = cs.as_str().trim_start();
        if !matches!(cmd, '+' | '-' | '!' | 'R' | 'r' | 'P' | 'p') {
            return Err(bad("must start with one of +, -, !, R, P"));
        }
        if rest.is_empty() {
            return Err(bad("no value after the command"));
        }
        match cmd {
            'R' | 'r' => self.roots.push(rest.to_string()),
            'P' | 'p' => *style = Style::from_prefix(rest).ok_or_else(|| bad("unknown pattern style"))?,
            c => {
                let action = match c {
                    '+' => Action::Include,
                    '-' => Action::Exclude,
                    _ => Action::ExcludeNoRecurse,
                };
                self.add(Pattern::parse_with(rest, *style)?, action);
            }
        }
        Ok(())
    }

    /// The roots `R` lines named, in order (paths to back up after the command line's).
    pub fn roots(&self) -> &[String] {
        &self.roots
    }

    /// The verdict on an archive path: the first pattern that matches decides (a `pf:` one
    /// first); none: included and walked into.
    pub fn matches(&self, path: &[u8]) -> Match {
        let verdict = |a: Action| Match { included: a == Action::Include, recurse: a != Action::ExcludeNoRecurse };
        if let Some(&a) = self.full.get(strip_slashes(path)) {
            return verdict(a);
        }
        self.items
            .iter()
            .find(|(p, _)| p.matches(path))
            .map_or(Match { included: true, recurse: true }, |(_, a)| verdict(*a))
    }
}

/// The name of a cache directory's tag file (<https://bford.info/cachedir/>).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
/// The bytes a `CACHEDIR.TAG` starts with.
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// The tag names in `dir` that exclude it (`--exclude-caches`: a `CACHEDIR.TAG` starting with
/// the signature; `--exclude-if-present NAME`: anything named NAME), in borg's order.
pub fn dir_tags(dir: &std::path::Path, exclude_caches: bool, if_present: &[String]) -> Vec<String> {
    use std::io::Read;
    let mut tags = Vec::new();
    if exclude_caches {
        let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
        let tagged = std::fs::File::open(dir.join(CACHEDIR_TAG))
            .and_then(|f| {
                let mut n = 0;
                let mut f = f.take(head.len() as u64);
                while n < head.len() {
                    match f.read(&mut head[n..])? {
                        0 => break,
                        k => n += k,
                    }
                }
                Ok(n)
            })
            .is_ok_and(|n| n == head.len() && head == CACHEDIR_SIGNATURE);
        if tagged {
            tags.push(CACHEDIR_TAG.to_string());
        }
    }
    for t in if_present {
        if dir.join(t).exists() {
            tags.push(t.clone());
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borg_style_patterns() {
        let p = Pattern::parse("home/*/junk").unwrap();
        assert!(p.matches(b"home/u/junk"));
        assert!(p.matches(b"home/u/junk/x/y"));
        assert!(p.matches(b"home/u/v/junk"), "fm: * crosses /");
        assert!(!p.matches(b"home/u/junkyard"));
        let p = Pattern::parse("sh:home/*/junk").unwrap();
        assert!(!p.matches(b"home/u/v/junk"));
        assert!(p.matches(b"home/u/junk/z"));
        let p = Pattern::parse("*.tmp").unwrap();
        assert!(p.matches(b"a/b/c.tmp") && !p.matches(b"a/b/c.tmpx"));
        let p = Pattern::parse("pp:/etc/ssl").unwrap();
        assert!(p.matches(b"etc/ssl") && p.matches(b"etc/ssl/x") && !p.matches(b"etc/ssl2"));
        let p = Pattern::parse("sh:**/cache").unwrap();
        assert!(p.matches(b"cache") && p.matches(b"a/b/cache/c"));
        let p = Pattern::parse("f[a-c]o").unwrap();
        assert!(p.matches(b"fbo") && !p.matches(b"fdo"));
        assert!(Pattern::parse("xx:^x").is_err());
    }

    #[test]
    fn regex_full_path_and_trailing_slash() {
        let p = Pattern::parse("re:^home/[^/]+/\\.cache$").unwrap();
        assert!(p.matches(b"home/u/.cache") && !p.matches(b"home/u/.cache/x") && !p.matches(b"xhome/u/.cache"));
        let p = Pattern::parse("re:\\.o$").unwrap();
        assert!(p.matches(b"/src/a.o"), "searched, and the leading / is not part of the path");
        let p = Pattern::parse("pf:/etc/passwd").unwrap();
        assert!(p.matches(b"etc/passwd") && !p.matches(b"etc/passwd/x") && !p.matches(b"etc"));
        // a trailing slash: what is below, not the directory itself
        for s in ["fm:tmp/", "sh:tmp/"] {
            let p = Pattern::parse(s).unwrap();
            assert!(!p.matches(b"tmp") && p.matches(b"tmp/a") && p.matches(b"tmp/a/b"), "{s}");
        }
        // sh: `**/` crosses directories, `*` and `?` do not; fm: `?` matches `/`
        let p = Pattern::parse("sh:a/**/z?").unwrap();
        assert!(p.matches(b"a/z1") && p.matches(b"a/b/c/z2") && !p.matches(b"a/z"));
        assert!(Pattern::parse("fm:a?b").unwrap().matches(b"a/b"));
        assert!(!Pattern::parse("sh:a?b").unwrap().matches(b"a/b"));
        // classes, negated, and a lone [
        assert!(Pattern::parse("sh:x[!0-9]").unwrap().matches(b"xa"));
        assert!(!Pattern::parse("sh:x[!0-9]").unwrap().matches(b"x5"));
        assert!(Pattern::parse("sh:x[").unwrap().matches(b"x["));
        assert!(Pattern::parse("sh:[[]x").unwrap().matches(b"[x"));
        // names that are not UTF-8
        assert!(Pattern::parse("sh:d/*").unwrap().matches(b"d/\xff\xfe"));
        assert!(Pattern::parse("sh:d/?").unwrap().matches(b"d/\xff"));
        // normpath
        assert!(Pattern::parse("pp:a/./b/../c").unwrap().matches(b"a/c/d"));
    }

    #[test]
    fn first_match_wins_and_recursion() {
        let mut m = Matcher::new();
        m.add_pattern_lines("# comment\n\n  R /srv  \nP fm\n+ home/*/keep\n- home\n! tmp\nP re\n- \\.bak$\n").unwrap();
        assert_eq!(m.roots(), ["/srv"]);
        assert_eq!(m.matches(b"home/u/keep/x"), Match { included: true, recurse: true });
        assert_eq!(m.matches(b"home/u"), Match { included: false, recurse: true });
        assert_eq!(m.matches(b"tmp/x"), Match { included: false, recurse: false });
        assert_eq!(m.matches(b"a.bak"), Match { included: false, recurse: true });
        assert_eq!(m.matches(b"etc"), Match { included: true, recurse: true });
        // a pf: pattern is looked up before the ordered list
        m.add(Pattern::parse("pf:home/u").unwrap(), Action::Include);
        assert!(m.matches(b"home/u").included);
        let mut e = Matcher::new();
        e.add_exclude_lines("*.o\n  # x\nsh:build/\n").unwrap();
        assert_eq!(e.matches(b"a/b.o"), Match { included: false, recurse: false });
        assert!(e.matches(b"build").included && !e.matches(b"build/x").included);
        for bad in ["x foo", "+", "P zz", "+ zz:x", "- re:("] {
            assert!(Matcher::new().add_pattern(bad).is_err(), "{bad}");
        }
    }
}
