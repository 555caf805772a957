//! Exclude patterns, borg style: `fm:` (default, fnmatch where `*` also matches `/`), `sh:`
//! (shell style: `*` stops at `/`, `**` crosses it) and `pp:` (path prefix). A pattern matches a
//! path if it matches the path itself or one of its parent directories.

use crate::error::{Error, Result};

/// One exclude pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    style: Style,
    pat: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Fnmatch,
    Shell,
    Prefix,
}

impl Pattern {
    /// Parses `[fm:|sh:|pp:]PATTERN`; a leading `/` is ignored (archive paths have none).
    pub fn parse(s: &str) -> Result<Pattern> {
        let (style, rest) = if let Some(r) = s.strip_prefix("fm:") {
            (Style::Fnmatch, r)
        } else if let Some(r) = s.strip_prefix("sh:") {
            (Style::Shell, r)
        } else if let Some(r) = s.strip_prefix("pp:") {
            (Style::Prefix, r)
        } else if s.len() > 3 && s.as_bytes()[2] == b':' && s[..2].bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(Error::InvalidArgument(format!("unsupported pattern style in {s:?}")));
        } else {
            (Style::Fnmatch, s)
        };
        let pat = rest.trim_start_matches('/').trim_end_matches('/');
        if pat.is_empty() {
            return Err(Error::InvalidArgument(format!("empty pattern {s:?}")));
        }
        Ok(Pattern { style, pat: pat.as_bytes().to_vec() })
    }

    /// Whether the whole of `s` matches (no parent-directory rule), e.g. archive names.
    pub fn matches_exact(&self, s: &[u8]) -> bool {
        match self.style {
            Style::Prefix => s.starts_with(&self.pat),
            _ => glob(&self.pat, s, self.style == Style::Shell),
        }
    }

    /// Whether an archive path (no leading `/`) is excluded by this pattern.
    pub fn matches(&self, path: &[u8]) -> bool {
        let path = path.strip_prefix(b"/").unwrap_or(path);
        match self.style {
            Style::Prefix => {
                path == self.pat.as_slice() || (path.starts_with(&self.pat) && path.get(self.pat.len()) == Some(&b'/'))
            }
            Style::Fnmatch | Style::Shell => {
                let shell = self.style == Style::Shell;
                if glob(&self.pat, path, shell) {
                    return true;
                }
                // a match of any parent directory
                path.iter().enumerate().filter(|(_, &b)| b == b'/').any(|(i, _)| glob(&self.pat, &path[..i], shell))
            }
        }
    }
}

/// Glob match. `*` matches any run (not `/` when `shell`), `**` any run, `?` one byte
/// (not `/` when `shell`), `[...]` a class (`!`/`^` negates).
fn glob(p: &[u8], s: &[u8], shell: bool) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => {
            let double = p.get(1) == Some(&b'*');
            let rest = if double { &p[2..] } else { &p[1..] };
            let rest = if double && rest.first() == Some(&b'/') && shell {
                // `**/x` also matches `x`
                if glob(&rest[1..], s, shell) {
                    return true;
                }
                rest
            } else {
                rest
            };
            for i in 0..=s.len() {
                if glob(rest, &s[i..], shell) {
                    return true;
                }
                if i < s.len() && shell && !double && s[i] == b'/' {
                    return false;
                }
            }
            false
        }
        Some(b'?') => match s.first() {
            Some(&c) if !(shell && c == b'/') => glob(&p[1..], &s[1..], shell),
            _ => false,
        },
        Some(b'[') => {
            let Some(&c) = s.first() else { return false };
            let mut i = 1;
            let neg = matches!(p.get(1), Some(b'!') | Some(b'^'));
            if neg {
                i += 1;
            }
            let start = i;
            let mut matched = false;
            while i < p.len() && (p[i] != b']' || i == start) {
                if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                    if p[i] <= c && c <= p[i + 2] {
                        matched = true;
                    }
                    i += 3;
                } else {
                    if p[i] == c {
                        matched = true;
                    }
                    i += 1;
                }
            }
            if i >= p.len() {
                // no closing bracket: literal '['
                return c == b'[' && glob(&p[1..], &s[1..], shell);
            }
            matched != neg && glob(&p[i + 1..], &s[1..], shell)
        }
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..], shell),
    }
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
        assert!(Pattern::parse("re:^x").is_err());
    }
}
