//! Serialization of everything the repository writes (manifest, archive, index, pack header,
//! item stream, config, key file, lock token). A failure is returned as
//! [`Error::Serialize`](crate::Error::Serialize), never turned into empty bytes that would then
//! be committed (issue 14).
//!
//! Tests can make the serialization of one kind of object fail ([`fail_next`]) to check that a
//! failure leaves the repository as it was.

use crate::error::{Error, Result, SerializeError};
use serde::Serialize;

/// Postcard encoding of `v`, for the object kind `what` ("manifest", "archive", ...).
pub(crate) fn postcard<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>> {
    injected(what)?;
    postcard::to_stdvec(v).map_err(|e| Error::Serialize { what, source: SerializeError::Postcard(e) })
}

/// Pretty JSON encoding of `v` (config, key file).
pub(crate) fn json_pretty<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>> {
    injected(what)?;
    serde_json::to_vec_pretty(v).map_err(|e| Error::Serialize { what, source: SerializeError::Json(e) })
}

/// Compact JSON encoding of `v` (lock token).
pub(crate) fn json_string<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<String> {
    injected(what)?;
    serde_json::to_string(v).map_err(|e| Error::Serialize { what, source: SerializeError::Json(e) })
}

#[cfg(test)]
thread_local! {
    static FAIL: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Makes the next serialization of kind `what` on this thread fail (test hook).
#[cfg(test)]
pub(crate) fn fail_next(what: &'static str) {
    FAIL.with(|f| f.set(Some(what)));
}

#[cfg(test)]
fn injected(what: &'static str) -> Result<()> {
    if FAIL.with(|f| f.get()) == Some(what) {
        FAIL.with(|f| f.set(None));
        // A real postcard error value, as a serializer would return it.
        return Err(Error::Serialize { what, source: SerializeError::Postcard(postcard::Error::SerializeBufferFull) });
    }
    Ok(())
}

#[cfg(not(test))]
#[inline(always)]
fn injected(_what: &'static str) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::create::{create, CreateOptions};
    use crate::crypto::{KdfParams, Mode};
    use crate::id::Id;
    use crate::repo::{IndexFile, InitOptions, PackBuilder, Repository};
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    /// Every file of the repository (lock files aside: a command's lock comes and goes).
    fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if rel == "lock" || rel.starts_with("locks") {
                    continue;
                }
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    fn repo_with_one_archive(dir: &Path) -> Repository {
        let mut o = InitOptions::new(Mode::Repokey, Some("pw".into()));
        o.kdf = KdfParams { m_cost: 1024, t_cost: 1, p_cost: 1 };
        let repo = Repository::init(Arc::new(LocalBackend::new(dir.join("repo"))), &o).unwrap();
        std::fs::write(dir.join("f"), vec![7u8; 100_000]).unwrap();
        create(&repo, &CreateOptions::new("a", vec![dir.join("f")]), &mut |_| {}).unwrap();
        std::fs::write(dir.join("f"), vec![9u8; 100_000]).unwrap();
        repo
    }

    fn assert_serialize_error<T: std::fmt::Debug>(r: Result<T>, want: &str) {
        match r {
            Err(Error::Serialize { what, .. }) if what == want => {}
            other => panic!("expected a serialization error for the {want}, got {other:?}"),
        }
    }

    /// Issue 14: a failed serialization of an item, an archive or the manifest during `create`
    /// is returned, and the repository's committed state (manifest, archives) is unchanged.
    /// Before the fix the failure became empty bytes that were written and committed.
    #[test]
    fn a_serialization_failure_in_create_is_returned_and_commits_nothing() {
        for what in ["item", "archive", "manifest"] {
            let d = tempfile::tempdir().unwrap();
            let repo = repo_with_one_archive(d.path());
            let root = d.path().join("repo");
            let before = snapshot(&root);
            fail_next(what);
            let mut o = CreateOptions::new("b", vec![d.path().join("f")]);
            o.threads = 1;
            assert_serialize_error(create(&repo, &o, &mut |_| {}), what);
            let after = snapshot(&root);
            assert_eq!(before.get("manifest"), after.get("manifest"), "{what}: manifest changed");
            let objects = |s: &BTreeMap<String, Vec<u8>>, dir: &str| -> Vec<(String, Vec<u8>)> {
                s.iter().filter(|(k, _)| k.starts_with(dir)).map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            if what != "manifest" {
                // failed before anything referring to the new data was written
                assert_eq!(objects(&before, "archives"), objects(&after, "archives"), "{what}");
            }
            let names: Vec<String> =
                crate::commands::list_archives(&repo).unwrap().into_iter().map(|a| a.name).collect();
            assert_eq!(names, ["a"], "{what}");
            let r = crate::commands::check(
                &repo,
                crate::commands::CheckOptions { verify_data: true, ..Default::default() },
            )
            .unwrap();
            assert!(r.ok(), "{what}: {:?}", r.errors);
            // and the next create works
            create(&repo, &o, &mut |_| {}).unwrap();
        }
    }

    /// Issue 14: the manifest, an archive object, an index file and a pack whose serialization
    /// fails are not written at all (before the fix: written with an empty body).
    #[test]
    fn a_failed_serialization_writes_no_object() {
        let d = tempfile::tempdir().unwrap();
        let repo = repo_with_one_archive(d.path());
        let root = d.path().join("repo");
        let before = snapshot(&root);
        fail_next("manifest");
        assert_serialize_error(repo.write_manifest(&repo.manifest().unwrap()), "manifest");
        let (_, meta) = crate::commands::archive_info(&repo, "a").unwrap();
        fail_next("archive");
        assert_serialize_error(repo.write_archive(&meta), "archive");
        fail_next("index");
        assert_serialize_error(repo.write_index_file(&IndexFile { packs: vec![], supersedes: vec![] }), "index");
        let mut pack = PackBuilder::with_capacity(16);
        pack.add(Id([1; 32]), b"sealed", 6);
        fail_next("pack header");
        assert_serialize_error(pack.finish(&repo), "pack header");
        let items = crate::extract::archive_items(&repo, &repo.load_index().unwrap(), "a").unwrap();
        let mut stream = vec![1, 2, 3];
        fail_next("item");
        assert_serialize_error(crate::archive::encode_item(&items[0], &mut stream), "item");
        assert_eq!(stream, [1, 2, 3], "a failed item leaves the stream as it was");
        // the master key in a key file: a serialization error, not an "integrity error"
        fail_next("master key");
        let kdf = KdfParams { m_cost: 1024, t_cost: 1, p_cost: 1 };
        let key = crate::crypto::MasterKey::generate();
        assert_serialize_error(crate::crypto::KeyFile::seal(&key, "pw", &Id([0; 32]), kdf), "master key");
        assert_eq!(snapshot(&root), before);
    }
}
