//! Prometheus text exposition (node_exporter's textfile collector format) of the last run, one
//! series per repository, written atomically (temporary file in the same directory, fsync,
//! rename) so the collector never reads half a file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The figures of one repository.
#[derive(Debug, Clone, Default)]
pub struct RepoMetrics {
    pub repository: String,
    /// Unix time of the last run without error (0 = never).
    pub last_success: f64,
    pub duration: f64,
    /// borg's code for this repository: 0 ok, 1 warning, 2 error.
    pub exit_code: u8,
    pub original_bytes: Option<u64>,
    pub deduplicated_bytes: Option<u64>,
    pub archives: Option<u64>,
    pub check_success: Option<bool>,
    pub restore_test_success: Option<bool>,
    /// Unix time the last restore test ended (`None`: none recorded).
    pub restore_test_timestamp: Option<f64>,
    /// How long the last restore test took (restore and verification), seconds.
    pub restore_test_duration: Option<f64>,
    /// Regular files the last restore test verified.
    pub restore_test_files: Option<u64>,
    /// Whether this run could open the repository (`false`: ssh refused, host down, path
    /// missing, lock not obtained; `None`: it did not try, e.g. a hook skipped the run).
    pub reachable: Option<bool>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders the text exposition format.
pub fn render(repos: &[RepoMetrics]) -> String {
    type Get = fn(&RepoMetrics) -> Option<f64>;
    let families: [(&str, &str, Get); 12] = [
        (
            "rempart_backup_last_success_timestamp_seconds",
            "Unix time of the last run that completed without error (0: never).",
            |r| Some(r.last_success),
        ),
        ("rempart_backup_last_duration_seconds", "Duration of the last run, in seconds.", |r| Some(r.duration)),
        (
            "rempart_backup_last_exit_code",
            "Exit code of the last run for this repository (0 ok, 1 warning, 2 error).",
            |r| Some(f64::from(r.exit_code)),
        ),
        ("rempart_backup_last_original_bytes", "Original size of the last archive created, in bytes.", |r| {
            r.original_bytes.map(|b| b as f64)
        }),
        (
            "rempart_backup_last_deduplicated_bytes",
            "Bytes the last archive added to the repository after deduplication and compression.",
            |r| r.deduplicated_bytes.map(|b| b as f64),
        ),
        ("rempart_backup_archives", "Archives in the repository.", |r| r.archives.map(|b| b as f64)),
        ("rempart_backup_last_check_success", "Whether the last consistency check passed (1) or failed (0).", |r| {
            r.check_success.map(|b| f64::from(u8::from(b)))
        }),
        ("rempart_backup_last_restore_test_success", "Whether the last restore test passed (1) or failed (0).", |r| {
            r.restore_test_success.map(|b| f64::from(u8::from(b)))
        }),
        (
            "rempart_backup_last_restore_test_timestamp_seconds",
            "Unix time the last restore test ended (passed or failed).",
            |r| r.restore_test_timestamp,
        ),
        (
            "rempart_backup_last_restore_test_duration_seconds",
            "Duration of the last restore test (restore and verification), in seconds.",
            |r| r.restore_test_duration,
        ),
        ("rempart_backup_last_restore_test_files", "Regular files the last restore test verified.", |r| {
            r.restore_test_files.map(|b| b as f64)
        }),
        (
            "rempart_backup_repository_reachable",
            "Whether the last run could open the repository (0: ssh refused, host down, path missing, lock not obtained).",
            |r| r.reachable.map(|b| f64::from(u8::from(b))),
        ),
    ];
    let mut out = String::new();
    for (name, help, get) in families {
        let values: Vec<(&str, f64)> =
            repos.iter().filter_map(|r| get(r).map(|v| (r.repository.as_str(), v))).collect();
        if values.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (repo, v) in values {
            let _ = writeln!(out, "{name}{{repository=\"{}\"}} {v}", escape(repo));
        }
    }
    out
}

/// Writes `text` to `path` atomically.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), MetricsError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let err = |source| MetricsError { path: path.to_path_buf(), source };
    let file = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")))?;
    // node_exporter only reads `*.prom`: the temporary name must not end so.
    let tmp = dir.join(format!(".{}.{}.tmp", file.to_string_lossy(), std::process::id()));
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(err)
}

/// The textfile could not be written (the local disk or its permissions are at fault).
#[derive(Debug, thiserror::Error)]
#[error("writing metrics to {}: {source}", path.display())]
pub struct MetricsError {
    /// The textfile.
    pub path: std::path::PathBuf,
    /// The error.
    pub source: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gauges_with_escaped_labels_and_omits_unknown_values() {
        let r = vec![
            RepoMetrics {
                repository: "/srv/a".into(),
                last_success: 1.5e9,
                duration: 2.25,
                exit_code: 0,
                original_bytes: Some(1000),
                deduplicated_bytes: Some(10),
                archives: Some(3),
                check_success: Some(true),
                restore_test_success: None,
                restore_test_timestamp: None,
                restore_test_duration: None,
                restore_test_files: None,
                reachable: Some(true),
            },
            RepoMetrics {
                repository: "tested".into(),
                restore_test_success: Some(true),
                restore_test_timestamp: Some(1.7e9),
                restore_test_duration: Some(4.5),
                restore_test_files: Some(66),
                reachable: Some(false),
                ..Default::default()
            },
            RepoMetrics { repository: "we\"ird\\".into(), exit_code: 2, ..Default::default() },
        ];
        let t = render(&r);
        assert!(t.contains("rempart_backup_last_exit_code{repository=\"we\\\"ird\\\\\"} 2\n"), "{t}");
        assert!(t.contains("rempart_backup_last_success_timestamp_seconds{repository=\"/srv/a\"} 1500000000\n"), "{t}");
        assert!(t.contains("rempart_backup_last_check_success{repository=\"/srv/a\"} 1\n"), "{t}");
        assert!(!t.lines().any(|l| l.contains("restore_test") && l.contains("/srv/a")), "{t}");
        assert!(
            t.contains("rempart_backup_last_restore_test_timestamp_seconds{repository=\"tested\"} 1700000000\n"),
            "{t}"
        );
        assert!(t.contains("rempart_backup_last_restore_test_duration_seconds{repository=\"tested\"} 4.5\n"), "{t}");
        assert!(t.contains("rempart_backup_last_restore_test_files{repository=\"tested\"} 66\n"), "{t}");
        assert!(t.contains("rempart_backup_repository_reachable{repository=\"/srv/a\"} 1\n"), "{t}");
        assert!(t.contains("rempart_backup_repository_reachable{repository=\"tested\"} 0\n"), "{t}");
        assert!(!t.contains("reachable{repository=\"we"), "unknown reachability is omitted: {t}");
        assert_eq!(t.matches("# TYPE rempart_backup_repository_reachable gauge").count(), 1, "{t}");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rempart_backup.prom");
        write_atomic(&p, &t).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), t);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left");
    }
}
