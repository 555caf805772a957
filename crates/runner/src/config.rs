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

use crate::placeholders;
use dedupstore::compress::Compression;
use dedupstore::create::FilesCacheMode;
use dedupstore::pattern::{Matcher, Pattern};
use dedupstore::remote::RepoLocation;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// borgmatic's default `archive_name_format`.
pub const DEFAULT_ARCHIVE_NAME_FORMAT: &str = "{hostname}-{now:%Y-%m-%dT%H:%M:%S.%f}";

/// One configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub location: Option<Location>,
    pub storage: Option<Storage>,
    pub retention: Option<Retention>,
    pub consistency: Option<Consistency>,
    pub hooks: Option<Hooks>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Location {
    pub source_directories: Vec<String>,
    pub repositories: Vec<RepoSpec>,
    pub exclude_patterns: Vec<String>,
    /// Files of exclude patterns (`--exclude-from`).
    pub exclude_from: Vec<String>,
    /// borg pattern lines (`+ - ! R P`), after the `patterns_from` files.
    pub patterns: Vec<String>,
    /// Files of pattern lines (`--patterns-from`).
    pub patterns_from: Vec<String>,
    pub exclude_caches: bool,
    pub exclude_if_present: Vec<String>,
    pub keep_exclude_tags: bool,
    /// borg's `--files-cache` mode.
    pub files_cache: Option<String>,
    pub one_file_system: bool,
    pub remote_path: Option<String>,
}

/// A repository: `- /path` or (borgmatic ≥ 1.7.10) `- path: /path` with an optional `label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    pub path: String,
    pub label: Option<String>,
}

impl RepoSpec {
    /// The name used in logs and metrics.
    pub fn name(&self) -> &str {
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
pub struct Storage {
    pub encryption_passphrase: Option<String>,
    pub encryption_passcommand: Option<String>,
    pub compression: Option<String>,
    pub archive_name_format: Option<String>,
    pub ssh_command: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Retention {
    pub keep_within: Option<String>,
    pub keep_secondly: Option<i64>,
    pub keep_minutely: Option<i64>,
    pub keep_hourly: Option<i64>,
    pub keep_daily: Option<i64>,
    pub keep_weekly: Option<i64>,
    pub keep_monthly: Option<i64>,
    pub keep_yearly: Option<i64>,
    pub prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Consistency {
    pub checks: Option<Vec<CheckSpec>>,
    pub check_last: Option<u64>,
    pub prefix: Option<String>,
}

/// borgmatic's check names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckName {
    Repository,
    Archives,
    Data,
    Extract,
    Disabled,
}

impl CheckName {
    pub fn as_str(self) -> &'static str {
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
pub struct CheckSpec {
    pub name: CheckName,
    pub frequency: Option<String>,
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
pub struct Hooks {
    pub before_everything: Vec<String>,
    pub before_backup: Vec<String>,
    pub after_backup: Vec<String>,
    pub before_prune: Vec<String>,
    pub after_prune: Vec<String>,
    pub before_compact: Vec<String>,
    pub after_compact: Vec<String>,
    pub before_check: Vec<String>,
    pub after_check: Vec<String>,
    pub on_error: Vec<String>,
    pub after_everything: Vec<String>,
}

/// One problem in a configuration file: the file, the key path (`location.repositories[1]`)
/// when known, the line when the YAML parser knows it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file, as given.
    pub file: String,
    /// The key path, as borgmatic users write it.
    pub key: Option<String>,
    /// 1-based line (parse errors; the message says it too).
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: {k}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in a configuration file (the file is at fault), one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    fn one(file: &str, key: Option<String>, line: Option<usize>, message: String) -> Self {
        ConfigErrors(vec![ConfigProblem { file: file.to_string(), key, line, message }])
    }

    /// The problems as lines (`file: key: message`).
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// A configuration file that parsed and validated, with the warnings about ignored keys.
#[derive(Debug)]
pub struct Loaded {
    pub path: String,
    pub location: Location,
    pub storage: Storage,
    pub retention: Retention,
    pub consistency: Consistency,
    pub hooks: Hooks,
    /// Parsed repository locations, in file order.
    pub repositories: Vec<(RepoSpec, RepoLocation)>,
    pub compression: Compression,
    pub excludes: Vec<Pattern>,
    /// `patterns_from`, `patterns` and `exclude_from`, in borgmatic's order (before `excludes`),
    /// with their `R` roots.
    pub patterns: Matcher,
    pub files_cache: FilesCacheMode,
    /// Checks with their frequency (`None` = always).
    pub checks: Vec<(CheckName, Option<Duration>)>,
    pub warnings: Vec<String>,
}

/// Parses a file's text. `Err` holds every problem, each with the key path.
pub fn parse(path: &str, text: &str) -> Result<Loaded, ConfigErrors> {
    let mut ignored = Vec::new();
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let cfg: Config = if text.trim().is_empty() {
        return Err(ConfigErrors::one(path, None, None, "the file is empty".into()));
    } else {
        let mut on_ignored = |p: serde_ignored::Path<'_>| ignored.push(key_path(&p));
        match serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut on_ignored)) {
            Ok(c) => c,
            Err(e) => {
                let at = e.path().to_string();
                let inner = e.into_inner();
                let line = inner.location().map(|l| l.line());
                let key = Some(at).filter(|a| !a.is_empty() && a != ".");
                // the YAML error names the key itself: the line says it once
                let msg = inner.to_string();
                let msg = match &key {
                    Some(k) => msg.strip_prefix(&format!("{k}: ")).map(str::to_string).unwrap_or(msg),
                    None => msg,
                };
                return Err(ConfigErrors::one(path, key, line, msg));
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
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors::one(&name, None, None, e.to_string()))?;
    parse(&name, &text)
}

/// borgmatic's `frequency`: `always`, or `N unit` with unit second, minute, hour, day, week,
/// month (30 days) or year (365 days), singular or plural.
pub fn parse_frequency(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "always" {
        return Ok(None);
    }
    let bad = || format!("could not parse frequency {s:?} (expected `always` or e.g. `2 weeks`)");
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

/// Checks values; reports every problem at once.
fn validate(path: &str, cfg: Config, warnings: Vec<String>) -> Result<Loaded, ConfigErrors> {
    let mut errs = Vec::new();
    let mut err = |key: &str, msg: String| {
        errs.push(ConfigProblem { file: path.to_string(), key: Some(key.to_string()), line: None, message: msg })
    };
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
    // borgmatic passes --patterns-from (its files, then the inline lines) before --exclude-from
    // (its files, then exclude_patterns)
    let mut patterns = Matcher::new();
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"));
    for (i, f) in location.patterns_from.iter().enumerate() {
        if let Err(e) = read(f).and_then(|t| patterns.add_pattern_lines(&t).map_err(|e| e.to_string())) {
            err(&format!("location.patterns_from[{i}]"), e);
        }
    }
    for (i, l) in location.patterns.iter().enumerate() {
        if let Err(e) = patterns.add_pattern(l) {
            err(&format!("location.patterns[{i}]"), e.to_string());
        }
    }
    for (i, f) in location.exclude_from.iter().enumerate() {
        if let Err(e) = read(f).and_then(|t| patterns.add_exclude_lines(&t).map_err(|e| e.to_string())) {
            err(&format!("location.exclude_from[{i}]"), e);
        }
    }
    let files_cache = match location.files_cache.as_deref().map(FilesCacheMode::parse).transpose() {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => {
            err("location.files_cache", e.to_string());
            FilesCacheMode::default()
        }
    };
    let compression = match storage.compression.as_deref().map(Compression::parse).transpose() {
        Ok(c) => c.unwrap_or(Compression::Zstd(1)),
        Err(e) => {
            err("storage.compression", e.to_string());
            Compression::None
        }
    };
    if let Some(f) = &storage.archive_name_format {
        if let Err(e) = placeholders::expand(f, chrono::Local::now()) {
            err("storage.archive_name_format", e.to_string());
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
            if let Err(e) = placeholders::expand(p, chrono::Local::now()) {
                err(key, e.to_string());
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
                err(&format!("consistency.checks[{i}].frequency"), e);
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
        return Err(ConfigErrors(errs));
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
        patterns,
        files_cache,
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
        let e = parse("c.yaml", &GOOD.replace("- /etc", "- [1, 2]")).unwrap_err().lines();
        assert!(e[0].starts_with("c.yaml: location.source_directories[1]: "), "{e:?}");
        let e = parse("c.yaml", &GOOD.replace("keep_daily: 7", "keep_daily: seven")).unwrap_err().lines();
        assert!(e[0].starts_with("c.yaml: retention.keep_daily: "), "{e:?}");
        // issue 17: the key path once, though the YAML error says it too
        assert_eq!(e[0].matches("retention.keep_daily").count(), 1, "{e:?}");
        let e = parse("c.yaml", &GOOD.replace("- archives", "- archivez")).unwrap_err().lines();
        assert!(e[0].starts_with("c.yaml: consistency.checks[1]: ") && e[0].contains("archivez"), "{e:?}");
        // value problems are all reported at once
        let bad = GOOD
            .replace("2 weeks", "2 fortnights")
            .replace("auto,zstd", "brotli")
            .replace("- /var/lib/backups/local.borg", "- ssh://")
            .replace("{now}", "{nope}");
        assert!(
            parse("c.yaml", &GOOD.replace("{now}", "{now:%Q}")).unwrap_err().lines()[0].contains("invalid time format")
        );
        let e = parse("c.yaml", &bad).unwrap_err().lines();
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
        let e = parse("c.yaml", "location:\n  source_directories: [/x]\n").unwrap_err().lines();
        assert_eq!(e, ["c.yaml: location.repositories: at least one repository is required"]);
        let e = parse("c.yaml", "location: [\n").unwrap_err().lines();
        assert!(e[0].starts_with("c.yaml: ") && e[0].contains("line"), "{e:?}");
        let e = parse(
            "c.yaml",
            "location:\n  source_directories: [/x]\n  repositories: [/r]\nretention:\n  keep_daily: x\n",
        )
        .unwrap_err();
        assert_eq!((e.0[0].key.as_deref(), e.0[0].line), (Some("retention.keep_daily"), Some(5)), "{e:?}");
    }

    /// Issue 17: borgmatic's pattern keys, in its order, with the key path of a bad one.
    #[test]
    fn borgmatic_pattern_keys() {
        let d = tempfile::tempdir().unwrap();
        let pf = d.path().join("patterns");
        std::fs::write(&pf, "R /srv\n+ home/*/keep\n").unwrap();
        let ef = d.path().join("excludes");
        std::fs::write(&ef, "*.tmp\n").unwrap();
        let text = format!(
            "location:\n  source_directories: [/x]\n  repositories: [/r]\n  patterns_from: [{}]\n  patterns: ['- home']\n  \
             exclude_from: [{}]\n  exclude_caches: true\n  exclude_if_present: [.nobackup]\n  keep_exclude_tags: true\n  \
             files_cache: mtime,size\n",
            pf.display(),
            ef.display()
        );
        let c = parse("c.yaml", &text).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.patterns.roots(), ["/srv"]);
        assert!(c.patterns.matches(b"home/u/keep").included && !c.patterns.matches(b"home/u/x").included);
        assert!(!c.patterns.matches(b"a.tmp").included);
        assert!(c.location.exclude_caches && c.location.keep_exclude_tags);
        assert!(c.files_cache.mtime && !c.files_cache.ctime);
        let bad = text.replace("'- home'", "'X home'").replace("mtime,size", "often");
        let keys: Vec<Option<String>> = parse("c.yaml", &bad).unwrap_err().0.into_iter().map(|p| p.key).collect();
        assert_eq!(keys, [Some("location.patterns[0]".into()), Some("location.files_cache".into())]);
    }

    #[test]
    fn frequencies() {
        assert_eq!(parse_frequency("always").unwrap(), None);
        assert_eq!(parse_frequency("1 hour").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_frequency("3 months").unwrap(), Some(Duration::from_secs(90 * 86_400)));
        assert!(parse_frequency("3").is_err());
        assert!(parse_frequency("2 fortnights").unwrap_err().contains("could not parse frequency"));
        assert!(parse_frequency("x days").is_err());
    }
}
