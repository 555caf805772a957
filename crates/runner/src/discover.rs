//! borgmatic's configuration files when `-c` is not given: `/etc/borgmatic/config.yaml`, every
//! `*.yaml` / `*.yml` file of `/etc/borgmatic.d/` (sorted by name), then
//! `$XDG_CONFIG_HOME/borgmatic/config.yaml` (`~/.config/...` without XDG_CONFIG_HOME), in that
//! order, as borgmatic 1.7's `collect.get_default_config_paths`.
//!
//! A default path that does not exist is skipped silently; a path given with `-c` that does not
//! exist is kept, so that loading it reports the error. `REMPART_SYSCONF_DIR` replaces `/etc`
//! (tests, and packagers that install elsewhere).

use std::path::{Path, PathBuf};

/// The default paths: `ETC/borgmatic/config.yaml`, `ETC/borgmatic.d`, then the user's.
pub fn default_config_paths() -> Vec<PathBuf> {
    let etc = std::env::var_os("REMPART_SYSCONF_DIR").filter(|v| !v.is_empty()).unwrap_or_else(|| "/etc".into());
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    config_paths_under(Path::new(&etc), user.as_deref())
}

/// [`default_config_paths`] for a given `/etc` and user configuration directory.
pub fn config_paths_under(etc: &Path, user_config: Option<&Path>) -> Vec<PathBuf> {
    let mut v = vec![etc.join("borgmatic/config.yaml"), etc.join("borgmatic.d")];
    v.extend(user_config.map(|u| u.join("borgmatic/config.yaml")));
    v
}

/// The files to load for `paths`: a directory gives its `*.yaml` and `*.yml` files sorted by
/// name, a missing path is dropped only if it is one of `defaults`.
pub fn collect_config_files(paths: &[PathBuf], defaults: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        let exists = p.exists();
        if !exists && defaults.contains(p) {
            continue;
        }
        if !exists || !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let Ok(rd) = std::fs::read_dir(p) else { continue };
        let mut names: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml") && !f.is_dir())
            .collect();
        names.sort();
        out.extend(names);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borgmatic_order_and_missing_defaults() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        let home = d.path().join("home/.config");
        let defaults = config_paths_under(&etc, Some(&home));
        assert!(collect_config_files(&defaults, &defaults).is_empty(), "no file: nothing, no error");
        std::fs::create_dir_all(etc.join("borgmatic.d/sub.yaml")).unwrap();
        std::fs::create_dir_all(home.join("borgmatic")).unwrap();
        for f in ["borgmatic/config.yaml", "borgmatic.d/b.yml", "borgmatic.d/a.yaml", "borgmatic.d/notes.txt"] {
            std::fs::create_dir_all(etc.join(f).parent().unwrap()).unwrap();
            std::fs::write(etc.join(f), "x").unwrap();
        }
        std::fs::write(home.join("borgmatic/config.yaml"), "x").unwrap();
        assert_eq!(
            collect_config_files(&defaults, &defaults),
            [
                etc.join("borgmatic/config.yaml"),
                etc.join("borgmatic.d/a.yaml"),
                etc.join("borgmatic.d/b.yml"),
                home.join("borgmatic/config.yaml")
            ]
        );
        // a path given with -c that is missing is kept (loading it says so)
        let missing = d.path().join("nope.yaml");
        assert_eq!(collect_config_files(std::slice::from_ref(&missing), &defaults), [missing]);
    }
}
