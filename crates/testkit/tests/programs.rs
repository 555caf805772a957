//! Every external program the workspace's code, tests, benches and lab start is in scripts/deps'
//! package → program map, so that `scripts/deps install` brings it and `scripts/deps check` finds
//! it. Issue 14: three `rempart-vrrp` namespace tests ran `ping`, which no listed package brought,
//! and `./scripts/test` failed on a fresh Debian 12 machine.
//!
//! The scan is deliberately simple: it reads every `.rs` file under crates/, bins/, lab/ and
//! benches/ and takes the string literal in the forms the code uses to start a program:
//!
//! - `Command::new("prog")` (std or tokio)
//! - `lab.cmd(host, "prog")`, `lab.run(host, &["prog", ..])` (testkit's `Lab`)
//! - `sh(&["prog", ..])`, `sh("prog args")`, `sh(&format!("prog args"))` (test helpers)
//! - `"exec", ns, "prog"` (`ip netns exec`) and `"--", "prog"` (`rempart-lab exec host -- prog`)
//! - in tests/, benches/ and lab/ files: any literal absolute path under /bin, /sbin, /usr/bin or
//!   /usr/sbin (scripts in the configs tests write; the parsers' unit tests in src/ hold paths
//!   that are never run)
//!
//! A program given by a variable (`Command::new(bin)`) is not seen: keep literal names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The programs of scripts/deps' MAP (names and absolute paths), each with its package.
fn mapped_programs(deps: &str) -> Vec<(String, String)> {
    let Some(start) = deps.find("\nMAP='") else { return Vec::new() };
    let body = &deps[start + 6..];
    let body = &body[..body.find('\'').unwrap_or(body.len())];
    let mut out = Vec::new();
    for line in body.lines() {
        let line = line.split('#').next().unwrap_or("");
        let Some((pkg, progs)) = line.split_once(':') else { continue };
        for p in progs.split_whitespace() {
            out.push((p.to_string(), pkg.trim().to_string()));
        }
    }
    out
}

/// The string literal starting at `s` (after optional whitespace), if there is one.
fn literal(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let rest = s.strip_prefix('"')?;
    rest.find('"').map(|end| &rest[..end])
}

/// Skips one argument expression (up to the next `,` at bracket depth 0) and the comma.
fn after_arg(s: &str) -> Option<&str> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            ',' if depth == 0 => return Some(&s[i + 1..]),
            ';' => return None,
            _ => {}
        }
    }
    None
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Occurrences of `pat` in `text` as a whole identifier or path on its left, with the text after.
fn after_each<'a>(text: &'a str, pat: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.match_indices(pat).filter_map(move |(i, _)| {
        let first = pat.chars().next()?;
        if is_ident_char(first) && text[..i].chars().next_back().is_some_and(is_ident_char) {
            return None;
        }
        Some(&text[i + pat.len()..])
    })
}

/// Program names and absolute paths that `text` (Rust source) starts, by the forms listed above;
/// `paths`: also every literal absolute path of a program.
fn programs_in(text: &str, paths: bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut add = |p: &str| {
        let p = p.split_whitespace().next().unwrap_or("");
        let plausible = !p.is_empty()
            && !p.starts_with('-')
            && !p.contains('{')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "._+-/".contains(c));
        if plausible {
            found.insert(p.to_string());
        }
    };
    for rest in after_each(text, "Command::new(") {
        if let Some(p) = literal(rest) {
            add(p);
        }
    }
    for rest in after_each(text, ".cmd(") {
        if let Some(p) = after_arg(rest).and_then(literal) {
            add(p);
        }
    }
    for rest in after_each(text, ".run(") {
        if let Some(p) = after_arg(rest).and_then(|r| r.trim_start().strip_prefix("&[")).and_then(literal) {
            add(p);
        }
    }
    for rest in after_each(text, "sh(") {
        let rest = rest.trim_start();
        let arg = rest.strip_prefix("&[").or_else(|| rest.strip_prefix("&format!(")).unwrap_or(rest);
        if let Some(p) = literal(arg) {
            add(p);
        }
    }
    for rest in after_each(text, "\"exec\",") {
        if let Some(p) = after_arg(rest).and_then(literal) {
            add(p);
        }
    }
    for rest in after_each(text, "\"--\",") {
        if let Some(p) = literal(rest) {
            add(p);
        }
    }
    for dir in ["/usr/sbin/", "/usr/bin/", "/sbin/", "/bin/"].into_iter().filter(|_| paths) {
        for (i, _) in text.match_indices(dir) {
            // Only a path that starts a word: `"/bin/sh"`, `\"/usr/bin/test -e`, `script "/bin/x`.
            let before = text[..i].chars().next_back();
            if !matches!(before, Some('"' | ' ' | '\'')) {
                continue;
            }
            let name: String = text[i + dir.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "._+-".contains(*c))
                .collect();
            if !name.is_empty() {
                add(&format!("{dir}{name}"));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether `prog` is covered by the map: the same name or path, or a path and a name that agree.
fn is_mapped(prog: &str, map: &[(String, String)]) -> bool {
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    map.iter().any(|(m, _)| m == prog || (prog.starts_with('/') && !m.starts_with('/') && *m == base(prog)))
}

// Regression test for issue 14 ("Fresh machine"): fails naming `ping` when scripts/deps has no
// iputils-ping line.
#[test]
fn every_program_the_code_runs_is_mapped_to_a_debian_package() {
    let root = workspace_root();
    let deps = std::fs::read_to_string(root.join("scripts/deps")).expect("read scripts/deps");
    let map = mapped_programs(&deps);
    assert!(map.len() > 20, "scripts/deps' MAP not found or nearly empty: {map:?}");

    let mut files = Vec::new();
    for dir in ["crates", "bins", "lab", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} .rs files under {}", files.len(), root.display());

    let mut seen = BTreeSet::new();
    let mut unmapped = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f);
        if rel.ends_with("crates/testkit/tests/programs.rs") {
            continue; // the fixtures of the scanner's own tests below
        }
        let text = std::fs::read_to_string(f).expect("read source");
        let paths = rel.components().any(|c| matches!(c.as_os_str().to_str(), Some("tests" | "benches" | "lab")));
        for prog in programs_in(&text, paths) {
            if prog.starts_with("rempart-") {
                continue;
            }
            seen.insert(prog.clone());
            if !is_mapped(&prog, &map) {
                unmapped.push(format!("{prog} (in {})", rel.display()));
            }
        }
    }
    assert!(
        unmapped.is_empty(),
        "programs started by the code but not in scripts/deps' package map (add `package: program`):\n  {}",
        unmapped.join("\n  ")
    );
    // The scan must keep seeing the programs we know the tests run; if it stops, it is broken.
    for known in ["ip", "ping", "keepalived", "qemu-io", "borg", "promtool", "sysctl", "/usr/sbin/sshd"] {
        assert!(seen.contains(known), "the scan no longer finds {known}: saw {seen:?}");
    }
}

#[test]
fn the_scan_finds_each_form_the_code_uses() {
    let src = r#"
        let a = Command::new("ip").args(["link"]);
        let b = tokio::process::Command::new(
            "qemu-io",
        );
        let c = lab.cmd(host, "keepalived");
        let d = lab.run("c", &["ping", "-c", "1", VIP]);
        let e = lab.run(&name(x, y), &["tshark", "-r"]);
        sh(&["losetup", "-f"]);
        sh(&format!("promtool check metrics < {}", p));
        sh("mkfs.ext4 -q x");
        let mut args = vec!["netns", "exec", ns, "sysctl", "-q"];
        Command::new(bin).args(["exec", "backup", "--", "nbdinfo", "-4"]);
        let s = format!("vrrp_script chk {{\n  script \"/usr/bin/test -e {}\"\n}}\n", p);
        let t = Command::new("/usr/sbin/sshd");
        let not_a_program = push(".md"); let nor = lab.run("c", &[cmd]); let x = Command::new(bin);
        let flags = cmd(&["--json"]);
    "#;
    let got: Vec<String> = programs_in(src, true).into_iter().collect();
    let want = [
        "/usr/bin/test",
        "/usr/sbin/sshd",
        "ip",
        "keepalived",
        "losetup",
        "mkfs.ext4",
        "nbdinfo",
        "ping",
        "promtool",
        "qemu-io",
        "sysctl",
        "tshark",
    ];
    assert_eq!(got, want);
    let without_paths: Vec<String> = programs_in(src, false).into_iter().collect();
    assert_eq!(without_paths, want.iter().filter(|p| **p != "/usr/bin/test").copied().collect::<Vec<_>>());
}

#[test]
fn the_map_is_read_with_packages_and_paths() {
    let deps = "#!/bin/sh\nMAP='\n# comment\nfoo:   a b # trailing\nbar:\nbaz: /usr/sbin/c\n'\nmore\n";
    let map = mapped_programs(deps);
    let got: Vec<(&str, &str)> = map.iter().map(|(p, k)| (p.as_str(), k.as_str())).collect();
    assert_eq!(got, [("a", "foo"), ("b", "foo"), ("/usr/sbin/c", "baz")]);
    assert!(is_mapped("/usr/bin/a", &map), "a path whose name is mapped");
    assert!(!is_mapped("c", &map), "a name whose only mapping is a path may be elsewhere on PATH");
    assert!(!is_mapped("ping", &map));
}

// The MAP is one single-quoted shell string: a quote in a comment inside it ends the string, and
// scripts/deps then fails with a syntax error (an apostrophe did, and scripts/fresh-root stopped).
#[test]
fn scripts_deps_runs_and_prints_the_whole_map() {
    let root = workspace_root();
    let deps = std::fs::read_to_string(root.join("scripts/deps")).expect("read scripts/deps");
    let mut expected = mapped_programs(&deps);
    let out = std::process::Command::new("bash").arg(root.join("scripts/deps")).arg("map").output().expect("bash");
    assert!(out.status.success(), "scripts/deps map failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut printed: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .flat_map(|(pkg, progs)| progs.split_whitespace().map(move |p| (p.to_string(), pkg.trim().to_string())))
        .collect();
    expected.sort();
    printed.sort();
    assert_eq!(printed, expected, "scripts/deps map prints another map than its MAP holds");
}
