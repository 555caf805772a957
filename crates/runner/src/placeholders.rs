//! borg's placeholders in archive names and prefixes, the one expander of the project: the
//! `create REPO::NAME` command line of `rempart-backup`, the runner's `archive_name_format`, and
//! the runner's archive filter for prune and check all go through [`expand`] or [`glob`].
//!
//! | placeholder          | value                                                     |
//! |----------------------|-----------------------------------------------------------|
//! | `{hostname}`         | the host name up to its first dot                         |
//! | `{fqdn}`             | the full host name                                        |
//! | `{now}`, `{now:FMT}` | local time, `%Y-%m-%dT%H:%M:%S` or the strftime `FMT`     |
//! | `{utcnow[:FMT]}`     | the same in UTC                                           |
//! | `{user}`             | the user name of the process                              |
//! | `{pid}`              | the process id                                            |
//!
//! A `FMT` chrono cannot print is an error, not a panic (chrono panics while printing it).
//! (Hook commands have their own, different substitution: borgmatic's `{repository}` etc., shell
//! quoted, unknown names left as they are; see [`crate::hooks`].)

use chrono::{DateTime, Local, Utc};

/// A placeholder string that cannot be expanded (the caller's input is at fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceholderError {
    /// A `{` without its `}`.
    #[error("unclosed placeholder in {0:?}")]
    Unclosed(String),
    /// A name borg does not know.
    #[error("unknown placeholder {{{0}}}")]
    Unknown(String),
    /// A strftime format chrono cannot print.
    #[error("invalid time format {format:?} in {{{placeholder}}}")]
    TimeFormat {
        /// The format.
        format: String,
        /// The whole placeholder, without braces.
        placeholder: String,
    },
}

const DEFAULT_TIME: &str = "%Y-%m-%dT%H:%M:%S";

/// Expands every placeholder of `s` at time `now`.
pub fn expand(s: &str, now: DateTime<Local>) -> Result<String, PlaceholderError> {
    walk(s, now, false)
}

/// borgmatic's archive filter for prune and check built from an archive name format: the time
/// and pid placeholders become `*`, the others are expanded (`{hostname}-{now}` → `host-*`).
pub fn glob(format: &str, now: DateTime<Local>) -> Result<String, PlaceholderError> {
    walk(format, now, true)
}

fn walk(s: &str, now: DateTime<Local>, as_glob: bool) -> Result<String, PlaceholderError> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}').ok_or_else(|| PlaceholderError::Unclosed(s.to_string()))? + i;
        let ph = &rest[i + 1..j];
        let (key, fmt) = match ph.split_once(':') {
            Some((k, f)) => (k, Some(f)),
            None => (ph, None),
        };
        if let Some(f) = fmt {
            check_time_format(f, ph)?;
        }
        let v = match key {
            "now" | "utcnow" | "pid" if as_glob => "*".to_string(),
            "hostname" => dedupstore::repo::hostname().split('.').next().unwrap_or("").to_string(),
            "fqdn" => dedupstore::repo::hostname(),
            "now" => now.format(fmt.unwrap_or(DEFAULT_TIME)).to_string(),
            "utcnow" => now.with_timezone(&Utc).format(fmt.unwrap_or(DEFAULT_TIME)).to_string(),
            "user" => {
                nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name).unwrap_or_default()
            }
            "pid" => std::process::id().to_string(),
            _ => return Err(PlaceholderError::Unknown(ph.to_string())),
        };
        out.push_str(&v);
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Rejects a strftime format chrono cannot print (printing it would panic).
fn check_time_format(fmt: &str, ph: &str) -> Result<(), PlaceholderError> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error)) {
        return Err(PlaceholderError::TimeFormat { format: fmt.to_string(), placeholder: ph.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_globs() {
        let now = Local::now();
        let s = expand("{hostname}-{now:%Y}", now).unwrap();
        assert!(s.ends_with(&now.format("-%Y").to_string()), "{s}");
        assert_eq!(expand("{pid}", now).unwrap(), std::process::id().to_string());
        assert_eq!(expand("{bogus}", now), Err(PlaceholderError::Unknown("bogus".into())));
        assert!(matches!(expand("a-{now", now), Err(PlaceholderError::Unclosed(_))));
        // chrono would panic printing %Q
        assert!(matches!(expand("{now:%Q}", now), Err(PlaceholderError::TimeFormat { .. })));
        assert!(expand("{now:%Q}", now).unwrap_err().to_string().contains("invalid time format"));
        let host = dedupstore::repo::hostname();
        let short = host.split('.').next().unwrap();
        assert_eq!(glob("{hostname}-{now:%Y-%m-%dT%H:%M:%S.%f}", now).unwrap(), format!("{short}-*"));
        assert_eq!(glob("x-{now:%Y}-{pid}-{utcnow}", now).unwrap(), "x-*-*-*");
    }
}
