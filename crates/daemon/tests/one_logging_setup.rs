//! Issue 14: logs carried ANSI colour codes into files and the journal because each binary set
//! up `tracing` itself and one forgot `with_ansi`. Logging is set up in one place
//! (`rempart_daemon::init_logging`); this test fails when a binary or library sets up a
//! `tracing_subscriber::fmt()` of its own.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

#[test]
fn only_rempart_daemon_sets_up_log_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for top in ["bins", "crates", "lab", "benches"] {
        rust_files(&root.join(top), &mut files);
    }
    assert!(files.len() > 20, "found only {} source files under {}", files.len(), root.display());
    let needle = ["tracing_subscriber", "::fmt()"].concat();
    let offenders: Vec<String> = files
        .iter()
        .filter(|p| !p.ends_with("crates/daemon/src/lib.rs"))
        .filter(|p| {
            let s = std::fs::read_to_string(p).unwrap_or_default();
            // Test code may capture logs its own way; production code may not.
            let prod = s.split("#[cfg(test)]").next().unwrap_or("");
            prod.contains(&needle) && !p.components().any(|c| c.as_os_str() == "tests")
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "set up logging with rempart_daemon::init_logging (colour only on a terminal), not in: {offenders:?}"
    );
}
