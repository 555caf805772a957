//! borgmatic 1.7's configuration file, read as it is.
//!
//! The sections and keys the runner uses (see docs/borgmatic.md):
//!
//! ```yaml
//! location:    source_directories, repositories (strings, or {path, label}), exclude_patterns,
//!              one_file_system, remote_path
//! storage:     encryption_passphrase, encryption_passcommand, compression, archive_name_format,
//!              ssh_command
//! retention:   keep_within, keep_secondly, keep_minutely, keep_hourly, keep_daily, keep_weekly,
//!              keep_monthly, keep_yearly, prefix
//! consistency: checks ({name, frequency} or a bare name), check_last, prefix
//! hooks:       before_everything, before_backup, after_backup, before_prune, after_prune,
//!              before_compact, after_compact, before_check, after_check, on_error,
//!              after_everything
//! ```
//!
//! Any other key (borgmatic's or a typo) is a warning that names it; a value of the wrong type
//! or an invalid value is an error that names its key path (`location.repositories[1]`).

use anyhow::anyhow;
use dedupstore::compress::Compression;
use dedupstore::pattern::Pattern;
use dedupstore::remote::RepoLocation;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// borgmatic's default `archive_name_format`.
pub(crate) const DEFAULT_ARCHIVE_NAME_FORMAT: &str = "{hostname}-{now:%Y-%m-%dT%H:%M:%S.%f}";

/// One configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Config {
    pub(crate) location: Option<Location>,
    pub(crate) storage: Option<Storage>,
    pub(crate) retention: Option<Retention>,
    pub(crate) consistency: Option<Consistency>,
    pub(crate) hooks: Option<Hooks>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Location {
    pub(crate) source_directories: Vec<String>,
    pub(crate) repositories: Vec<RepoSpec>,
    pub(crate) exclude_patterns: Vec<String>,
    pub(crate) one_file_system: bool,
    pub(crate) remote_path: Option<String>,
}

/// A repository: `- /path` or (borgmatic ≥ 1.7.10) `- path: /path` with an optional `label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RepoSpec {
    pub(crate) path: String,
    pub(crate) label: Option<String>,
}

impl RepoSpec {
    /// The name used in logs and metrics.
    pub(crate) fn name(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.path)
    }
}

#[derive(Deserialize)]
struct RepoMap {
    path: String,
    #[serde(default)]
    label: Option<String>,
}

impl<'de> Deserialize<'de> for RepoSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RepoSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a repository path, or a map with `path` and `label`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RepoSpec, E> {
                Ok(RepoSpec { path: v.to_string(), label: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RepoSpec, A::Error> {
                let m = RepoMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RepoSpec { path: m.path, label: m.label })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Storage {
    pub(crate) encryption_passphrase: Option<String>,
    pub(crate) encryption_passcommand: Option<String>,
    pub(crate) compression: Option<String>,
    pub(crate) archive_name_format: Option<String>,
    pub(crate) ssh_command: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct Retention {
    pub(crate) keep_within: Option<String>,
    pub(crate) keep_secondly: Option<i64>,
    pub(crate) keep_minutely: Option<i64>,
    pub(crate) keep_hourly: Option<i64>,
    pub(crate) keep_daily: Option<i64>,
    pub(crate) keep_weekly: Option<i64>,
    pub(crate) keep_monthly: Option<i64>,
    pub(crate) keep_yearly: Option<i64>,
    pub(crate) prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Consistency {
    pub(crate) checks: Option<Vec<CheckSpec>>,
    pub(crate) check_last: Option<u64>,
    pub(crate) prefix: Option<String>,
}

/// borgmatic's check names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CheckName {
    Repository,
    Archives,
    Data,
    Extract,
    Disabled,
}

impl CheckName {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CheckName::Repository => "repository",
            CheckName::Archives => "archives",
            CheckName::Data => "data",
            CheckName::Extract => "extract",
            CheckName::Disabled => "disabled",
        }
    }
}

/// A check: `- name: repository` with an optional `frequency: 2 weeks` (or the older bare name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckSpec {
    pub(crate) name: CheckName,
    pub(crate) frequency: Option<String>,
}

#[derive(Deserialize)]
struct CheckMap {
    name: CheckName,
    #[serde(default)]
    frequency: Option<String>,
}

impl<'de> Deserialize<'de> for CheckSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CheckSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a check: a map with `name` and `frequency`, or a check name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CheckSpec, E> {
                let name = CheckName::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(CheckSpec { name, frequency: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CheckSpec, A::Error> {
                let m = CheckMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(CheckSpec { name: m.name, frequency: m.frequency })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct Hooks {
    pub(crate) before_everything: Vec<String>,
    pub(crate) before_backup: Vec<String>,
    pub(crate) after_backup: Vec<String>,
    pub(crate) before_prune: Vec<String>,
    pub(crate) after_prune: Vec<String>,
    pub(crate) before_compact: Vec<String>,
    pub(crate) after_compact: Vec<String>,
    pub(crate) before_check: Vec<String>,
    pub(crate) after_check: Vec<String>,
    pub(crate) on_error: Vec<String>,
    pub(crate) after_everything: Vec<String>,
}

/// A configuration file that parsed and validated, with the warnings about ignored keys.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) path: String,
    pub(crate) location: Location,
    pub(crate) storage: Storage,
    pub(crate) retention: Retention,
    pub(crate) consistency: Consistency,
    pub(crate) hooks: Hooks,
    /// Parsed repository locations, in file order.
    pub(crate) repositories: Vec<(RepoSpec, RepoLocation)>,
    pub(crate) compression: Compression,
    pub(crate) excludes: Vec<Pattern>,
    /// Checks with their frequency (`None` = always).
    pub(crate) checks: Vec<(CheckName, Option<Duration>)>,
    pub(crate) warnings: Vec<String>,
}

/// Parses a file's text. `Err` holds every problem, one line each, prefixed with the key path.
pub(crate) fn parse(path: &str, text: &str) -> Result<Loaded, Vec<String>> {
    let mut ignored = Vec::new();
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let cfg: Config = if text.trim().is_empty() {
        return Err(vec![format!("{path}: the file is empty")]);
    } else {
        let mut on_ignored = |p: serde_ignored::Path<'_>| ignored.push(key_path(&p));
        match serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut on_ignored)) {
            Ok(c) => c,
            Err(e) => {
                let at = e.path().to_string();
                let inner = e.into_inner();
                return Err(vec![if at.is_empty() || at == "." {
                    format!("{path}: {inner}")
                } else {
                    format!("{path}: {at}: {inner}")
                }]);
            }
        }
    };
    let warnings = ignored.into_iter().map(|k| format!("{path}: {k}: unsupported key, ignored")).collect();
    validate(path, cfg, warnings)
}

/// serde_ignored's path as borgmatic users write it: `location.foo`, `hooks.x[2]`.
fn key_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        P::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => key_path(parent),
    }
}

/// Reads and parses a file.
pub(crate) fn load(path: &Path) -> Result<Loaded, Vec<String>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{name}: {e}")])?;
    parse(&name, &text)
}

/// borgmatic's `frequency`: `always`, or `N unit` with unit second, minute, hour, day, week,
/// month (30 days) or year (365 days), singular or plural.
pub(crate) fn parse_frequency(s: &str) -> anyhow::Result<Option<Duration>> {
    let s = s.trim();
    if s == "always" {
        return Ok(None);
    }
    let bad = || anyhow!("could not parse frequency {s:?} (expected `always` or e.g. `2 weeks`)");
    let (n, unit) = s.split_once(' ').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let secs = match unit.strip_suffix('s').unwrap_or(unit) {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        "week" => 7 * 86_400,
        "month" => 30 * 86_400,
        "year" => 365 * 86_400,
        _ => return Err(bad()),
    };
    Ok(Some(Duration::from_secs(n.checked_mul(secs).ok_or_else(bad)?)))
}

/// Rejects `{now:FORMAT}` with a format chrono cannot print (printing it would panic).
fn check_time_formats(s: &str) -> anyhow::Result<()> {
    use chrono::format::{Item, StrftimeItems};
    for part in s.split('{').skip(1) {
        let ph = part.split('}').next().unwrap_or("");
        if let Some((_, fmt)) = ph.split_once(':') {
            if StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error)) {
                anyhow::bail!("invalid time format {fmt:?} in {{{ph}}}");
            }
        }
    }
    Ok(())
}

/// Checks values; reports every problem at once.
fn validate(path: &str, cfg: Config, warnings: Vec<String>) -> Result<Loaded, Vec<String>> {
    let mut errs = Vec::new();
    let mut err = |key: &str, msg: String| errs.push(format!("{path}: {key}: {msg}"));
    let location = cfg.location.unwrap_or_default();
    let storage = cfg.storage.unwrap_or_default();
    let retention = cfg.retention.unwrap_or_default();
    let consistency = cfg.consistency.unwrap_or_default();
    let hooks = cfg.hooks.unwrap_or_default();
    if location.source_directories.is_empty() {
        err("location.source_directories", "at least one source directory is required".into());
    }
    if location.repositories.is_empty() {
        err("location.repositories", "at least one repository is required".into());
    }
    let mut repositories = Vec::new();
    for (i, r) in location.repositories.iter().enumerate() {
        match RepoLocation::parse(&r.path) {
            Ok(l) => repositories.push((r.clone(), l)),
            Err(e) => err(&format!("location.repositories[{i}]"), e.to_string()),
        }
        if location.repositories[..i].iter().any(|o| o.name() == r.name()) {
            err(&format!("location.repositories[{i}]"), format!("{} is listed twice", r.name()));
        }
    }
    let mut excludes = Vec::new();
    for (i, p) in location.exclude_patterns.iter().enumerate() {
        match Pattern::parse(p) {
            Ok(p) => excludes.push(p),
            Err(e) => err(&format!("location.exclude_patterns[{i}]"), e.to_string()),
        }
    }
    let compression = match storage.compression.as_deref().map(Compression::parse).transpose() {
        Ok(c) => c.unwrap_or(Compression::Zstd(1)),
        Err(e) => {
            err("storage.compression", e.to_string());
            Compression::None
        }
    };
    if let Some(f) = &storage.archive_name_format {
        if let Err(e) = check_time_formats(f).and_then(|_| crate::placeholders(f, chrono::Local::now())) {
            err("storage.archive_name_format", format!("{e:#}"));
        }
    }
    if storage.ssh_command.as_deref().is_some_and(|c| c.split_whitespace().next().is_none()) {
        err("storage.ssh_command", "empty command".into());
    }
    if let Some(w) = &retention.keep_within {
        if let Err(e) = dedupstore::prune::parse_interval(w) {
            err("retention.keep_within", e.to_string());
        }
    }
    for (p, key) in [(&retention.prefix, "retention.prefix"), (&consistency.prefix, "consistency.prefix")] {
        if let Some(p) = p {
            if let Err(e) = check_time_formats(p).and_then(|_| crate::placeholders(p, chrono::Local::now())) {
                err(key, format!("{e:#}"));
            }
        }
    }
    // borgmatic's default: repository and archives, every time.
    let specs = consistency.checks.clone().unwrap_or_else(|| {
        vec![
            CheckSpec { name: CheckName::Repository, frequency: None },
            CheckSpec { name: CheckName::Archives, frequency: None },
        ]
    });
    let mut checks = Vec::new();
    for (i, c) in specs.iter().enumerate() {
        let freq = match c.frequency.as_deref().map(parse_frequency).transpose() {
            Ok(f) => f.flatten(),
            Err(e) => {
                err(&format!("consistency.checks[{i}].frequency"), format!("{e:#}"));
                None
            }
        };
        if checks.iter().any(|(n, _)| *n == c.name) {
            err(&format!("consistency.checks[{i}].name"), format!("{} is listed twice", c.name.as_str()));
        }
        checks.push((c.name, freq));
    }
    if checks.iter().any(|(n, _)| *n == CheckName::Disabled) {
        checks.clear();
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Loaded {
        path: path.to_string(),
        location,
        storage,
        retention,
        consistency,
        hooks,
        repositories,
        compression,
        excludes,
        checks,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
location:
    source_directories:
        - /home
        - /etc
    repositories:
        - /var/lib/backups/local.borg
        - path: ssh://borguser@192.168.50.20/srv/borg/mediaschool
          label: backup
    exclude_patterns:
        - '*.pyc'
    one_file_system: true
    atime: false
storage:
    encryption_passphrase: secret
    compression: auto,zstd
    archive_name_format: '{hostname}-{now}'
retention:
    keep_hourly: 24
    keep_daily: 7
consistency:
    checks:
        - name: repository
          frequency: 2 weeks
        - archives
    check_last: 3
hooks:
    before_backup:
        - echo start
    healthchecks: https://hc-ping.com/x
";

    #[test]
    fn reads_borgmatic_17_and_warns_about_unsupported_keys() {
        let l = parse("c.yaml", GOOD).unwrap();
        assert_eq!(l.location.source_directories, ["/home", "/etc"]);
        assert_eq!(l.repositories.len(), 2);
        assert_eq!(l.repositories[1].0.name(), "backup");
        assert!(matches!(l.repositories[1].1, RepoLocation::Ssh { .. }));
        assert_eq!(l.compression, Compression::Auto(3));
        assert_eq!(l.retention.keep_hourly, Some(24));
        assert_eq!(
            l.checks,
            vec![(CheckName::Repository, Some(Duration::from_secs(14 * 86_400))), (CheckName::Archives, None)]
        );
        assert_eq!(l.consistency.check_last, Some(3));
        assert_eq!(l.hooks.before_backup, ["echo start"]);
        assert_eq!(
            l.warnings,
            [
                "c.yaml: location.atime: unsupported key, ignored",
                "c.yaml: hooks.healthchecks: unsupported key, ignored"
            ]
        );
    }

    #[test]
    fn errors_name_the_key_path() {
        let e = parse("c.yaml", &GOOD.replace("- /etc", "- [1, 2]")).unwrap_err();
        assert!(e[0].starts_with("c.yaml: location.source_directories[1]: "), "{e:?}");
        let e = parse("c.yaml", &GOOD.replace("keep_daily: 7", "keep_daily: seven")).unwrap_err();
        assert!(e[0].starts_with("c.yaml: retention.keep_daily: "), "{e:?}");
        let e = parse("c.yaml", &GOOD.replace("- archives", "- archivez")).unwrap_err();
        assert!(e[0].starts_with("c.yaml: consistency.checks[1]: ") && e[0].contains("archivez"), "{e:?}");
        // value problems are all reported at once
        let bad = GOOD
            .replace("2 weeks", "2 fortnights")
            .replace("auto,zstd", "brotli")
            .replace("- /var/lib/backups/local.borg", "- ssh://")
            .replace("{now}", "{nope}");
        assert!(parse("c.yaml", &GOOD.replace("{now}", "{now:%Q}")).unwrap_err()[0].contains("invalid time format"));
        let e = parse("c.yaml", &bad).unwrap_err();
        let keys: Vec<&str> = e.iter().map(|l| l.split(": ").nth(1).unwrap()).collect();
        assert_eq!(
            keys,
            [
                "location.repositories[0]",
                "storage.compression",
                "storage.archive_name_format",
                "consistency.checks[0].frequency"
            ],
            "{e:?}"
        );
        let e = parse("c.yaml", "location:\n  source_directories: [/x]\n").unwrap_err();
        assert_eq!(e, ["c.yaml: location.repositories: at least one repository is required"]);
        let e = parse("c.yaml", "location: [\n").unwrap_err();
        assert!(e[0].starts_with("c.yaml: ") && e[0].contains("line"), "{e:?}");
    }

    #[test]
    fn frequencies() {
        assert_eq!(parse_frequency("always").unwrap(), None);
        assert_eq!(parse_frequency("1 hour").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_frequency("3 months").unwrap(), Some(Duration::from_secs(90 * 86_400)));
        assert!(parse_frequency("3").is_err());
        assert!(parse_frequency("x days").is_err());
    }
}
