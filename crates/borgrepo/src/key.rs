//! borg 1.2's keys and object envelopes.
//!
//! ```text
//! key blob (config `key =` or a key file after its `BORG_KEY <repo id>` line), base64 of
//!   msgpack {version: 1, algorithm: "sha256", salt, iterations, hash, data}
//!   k    = PBKDF2-HMAC-SHA256(passphrase, salt, iterations, 32)
//!   data = AES-256-CTR(k, iv 0) → msgpack {enc_key, enc_hmac_key, id_key, chunk_seed, ...}
//!   check HMAC-SHA256(k, data) == hash      (else: wrong passphrase)
//!
//! object = type byte | ...
//!   0x02 none            | compressed                      id = SHA-256(plain)
//!   0x07 authenticated   | compressed                      id = HMAC-SHA256(id_key, plain)
//!   0x06 authenticated-blake2                              id = BLAKE2b-256(id_key ‖ plain)
//!   0x00 keyfile, 0x03 repokey:
//!        | HMAC-SHA256(enc_hmac_key, nonce ‖ ct) | nonce (8, BE) | ct = AES-256-CTR(enc_key,
//!        iv = 8 zero bytes ‖ nonce) of compressed          id = HMAC-SHA256(id_key, plain)
//!   0x04 keyfile-blake2, 0x05 repokey-blake2: the same with BLAKE2b-256(enc_hmac_key ‖ nonce ‖ ct)
//!        and id = BLAKE2b-256(id_key ‖ plain) (the blake2 keys are 128 bytes: 64 random, 64 zero)
//! ```

use crate::compress::decompress;
use crate::error::{Error, Result};
use crate::msgpack::{self, Value};
use blake2::Digest;
use std::path::{Path, PathBuf};

/// Type bytes.
const KEYFILE: u8 = 0x00;
const PASSPHRASE: u8 = 0x01;
const PLAINTEXT: u8 = 0x02;
const REPOKEY: u8 = 0x03;
const KEYFILE_BLAKE2: u8 = 0x04;
const REPOKEY_BLAKE2: u8 = 0x05;
const AUTH_BLAKE2: u8 = 0x06;
const AUTH: u8 = 0x07;

/// The encryption mode of a repository, by borg's `--encryption` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// `none`.
    None,
    /// `authenticated`.
    Authenticated,
    /// `authenticated-blake2`.
    AuthenticatedBlake2,
    /// `repokey`.
    Repokey,
    /// `repokey-blake2`.
    RepokeyBlake2,
    /// `keyfile`.
    Keyfile,
    /// `keyfile-blake2`.
    KeyfileBlake2,
}

impl Mode {
    fn of_type(t: u8) -> Result<Mode> {
        Ok(match t {
            KEYFILE => Mode::Keyfile,
            PLAINTEXT => Mode::None,
            REPOKEY => Mode::Repokey,
            KEYFILE_BLAKE2 => Mode::KeyfileBlake2,
            REPOKEY_BLAKE2 => Mode::RepokeyBlake2,
            AUTH_BLAKE2 => Mode::AuthenticatedBlake2,
            AUTH => Mode::Authenticated,
            PASSPHRASE => return Err(Error::Unsupported("borg's legacy passphrase mode (0x01)".into())),
            t => return Err(Error::Unsupported(format!("unknown borg key type 0x{t:02x}"))),
        })
    }
    fn type_byte(self) -> u8 {
        match self {
            Mode::None => PLAINTEXT,
            Mode::Authenticated => AUTH,
            Mode::AuthenticatedBlake2 => AUTH_BLAKE2,
            Mode::Repokey => REPOKEY,
            Mode::RepokeyBlake2 => REPOKEY_BLAKE2,
            Mode::Keyfile => KEYFILE,
            Mode::KeyfileBlake2 => KEYFILE_BLAKE2,
        }
    }
    /// borg's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Authenticated => "authenticated",
            Mode::AuthenticatedBlake2 => "authenticated-blake2",
            Mode::Repokey => "repokey",
            Mode::RepokeyBlake2 => "repokey-blake2",
            Mode::Keyfile => "keyfile",
            Mode::KeyfileBlake2 => "keyfile-blake2",
        }
    }
    fn blake2(self) -> bool {
        matches!(self, Mode::AuthenticatedBlake2 | Mode::RepokeyBlake2 | Mode::KeyfileBlake2)
    }
    fn encrypted(self) -> bool {
        matches!(self, Mode::Repokey | Mode::RepokeyBlake2 | Mode::Keyfile | Mode::KeyfileBlake2)
    }
    fn key_in_file(self) -> bool {
        matches!(self, Mode::Keyfile | Mode::KeyfileBlake2)
    }
}

/// Where the key and its passphrase come from.
#[derive(Clone, Debug, Default)]
pub struct KeySource {
    /// The passphrase (None: try the empty one, as borg does).
    pub passphrase: Option<String>,
    /// `BORG_KEY_FILE`: the key file of a keyfile repository.
    pub key_file: Option<PathBuf>,
    /// Directory of key files searched by repository id (`BORG_KEYS_DIR`, else
    /// `$BORG_CONFIG_DIR/keys`, else `$XDG_CONFIG_HOME/borg/keys`, else
    /// `$BORG_BASE_DIR/.config/borg/keys`, else `~/.config/borg/keys`).
    pub keys_dir: Option<PathBuf>,
}

/// The secrets of an opened key.
#[derive(Clone)]
pub struct Key {
    mode: Mode,
    enc_key: [u8; 32],
    enc_hmac_key: Vec<u8>,
    id_key: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// Decodes base64 (standard alphabet), skipping whitespace.
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key));
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

fn blake2b_256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake2::Blake2b::<blake2::digest::consts::U32>::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn aes_ctr(key: &[u8; 32], iv: &[u8; 16], data: &mut [u8]) {
    use ctr::cipher::{KeyIvInit, StreamCipher};
    let mut c = ctr::Ctr128BE::<aes::Aes256>::new(key.into(), iv.into());
    c.apply_keystream(data);
}

/// Constant-time comparison of two MACs.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn field<'a>(v: &'a Value, name: &str, what: &str) -> Result<&'a Value> {
    v.get(name).ok_or_else(|| Error::integrity(what, format!("no '{name}'")))
}

fn field_bytes<'a>(v: &'a Value, name: &str, what: &str) -> Result<&'a [u8]> {
    field(v, name, what)?.as_bytes().ok_or_else(|| Error::integrity(what, format!("'{name}' is not bytes")))
}

/// Opens a key blob (base64 text) with a passphrase: `Ok(None)` when the passphrase is wrong.
fn open_blob(text: &str, pass: &str, what: &str) -> Result<Option<Value>> {
    let raw = base64(text).ok_or_else(|| Error::integrity(what, "not base64"))?;
    let v = msgpack::decode(&raw).map_err(|e| Error::integrity(what, format!("msgpack: {e:?}")))?;
    let alg = field_bytes(&v, "algorithm", what)?;
    if alg != b"sha256" {
        return Err(Error::Unsupported(format!("key algorithm {:?}", String::from_utf8_lossy(alg))));
    }
    let salt = field_bytes(&v, "salt", what)?;
    let iterations = field(&v, "iterations", what)?
        .as_int()
        .and_then(|i| u32::try_from(i).ok())
        .and_then(std::num::NonZeroU32::new)
        .ok_or_else(|| Error::integrity(what, "bad iterations"))?;
    let hash = field_bytes(&v, "hash", what)?;
    let mut data = field_bytes(&v, "data", what)?.to_vec();
    let mut k = [0u8; 32];
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, pass.as_bytes(), &mut k);
    aes_ctr(&k, &[0; 16], &mut data);
    if !same(&hmac_sha256(&k, &[&data]), hash) {
        return Ok(None);
    }
    msgpack::decode(&data).map(Some).map_err(|e| Error::integrity(what, format!("key data msgpack: {e:?}")))
}

/// The default keys directory (borg's `get_keys_dir`).
pub fn default_keys_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BORG_KEYS_DIR") {
        return Some(d.into());
    }
    if let Some(d) = std::env::var_os("BORG_CONFIG_DIR") {
        return Some(Path::new(&d).join("keys"));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => Path::new(&std::env::var_os("BORG_BASE_DIR").or_else(|| std::env::var_os("HOME"))?).join(".config"),
    };
    Some(base.join("borg").join("keys"))
}

/// Finds the key file of repository `id_hex`: its first line is `BORG_KEY <id_hex>`.
fn find_key_file(src: &KeySource, id_hex: &str) -> Result<(PathBuf, String)> {
    let matches = |text: &str| text.lines().next().is_some_and(|l| l.trim() == format!("BORG_KEY {id_hex}"));
    if let Some(f) = &src.key_file {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        if !matches(&text) {
            return Err(Error::Unsupported(format!("{}: not the key of repository {id_hex}", f.display())));
        }
        return Ok((f.clone(), text));
    }
    let dir = src.keys_dir.clone().or_else(default_keys_dir).unwrap_or_default();
    let not_found = || Error::KeyNotFound { id: id_hex.to_string(), dir: dir.clone() };
    let mut names: Vec<_> =
        std::fs::read_dir(&dir).map_err(|_| not_found())?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    names.sort();
    for p in names {
        if let Ok(text) = std::fs::read_to_string(&p) {
            if matches(&text) {
                return Ok((p, text));
            }
        }
    }
    Err(not_found())
}

impl Key {
    /// Opens the key of a repository whose manifest object starts with `manifest_type`.
    /// `repokey` is the config's `key` value (empty when there is none).
    pub fn open(manifest_type: u8, repokey: &str, repo_id: &[u8; 32], src: &KeySource) -> Result<Key> {
        let mode = Mode::of_type(manifest_type)?;
        if mode == Mode::None {
            return Ok(Key { mode, enc_key: [0; 32], enc_hmac_key: vec![], id_key: vec![] });
        }
        let id_hex = hex::encode(repo_id);
        let (name, blob) = if mode.key_in_file() {
            let (path, text) = find_key_file(src, &id_hex)?;
            let body: String = text.lines().skip(1).collect::<Vec<_>>().join("");
            (path.display().to_string(), body)
        } else {
            if repokey.trim().is_empty() {
                return Err(Error::integrity("config", "no repokey in the repository config"));
            }
            (format!("in the repository config ({})", mode.name()), repokey.to_string())
        };
        let data = match &src.passphrase {
            Some(p) => open_blob(&blob, p, &name)?.ok_or_else(|| Error::WrongPassphrase(name.clone()))?,
            None => open_blob(&blob, "", &name)?.ok_or_else(|| Error::NoPassphrase(name.clone()))?,
        };
        let what = "key data";
        let enc_key: [u8; 32] = field_bytes(&data, "enc_key", what)?
            .try_into()
            .map_err(|_| Error::integrity(what, "enc_key is not 32 bytes"))?;
        let enc_hmac_key = field_bytes(&data, "enc_hmac_key", what)?.to_vec();
        let id_key = field_bytes(&data, "id_key", what)?.to_vec();
        if !mode.blake2() && (enc_hmac_key.len() != 32 || id_key.len() != 32) {
            return Err(Error::integrity(what, "HMAC keys are not 32 bytes"));
        }
        if let Some(rid) = data.get("repository_id").and_then(Value::as_bytes) {
            if rid != repo_id {
                return Err(Error::Unsupported(format!("{name}: the key of another repository")));
            }
        }
        Ok(Key { mode, enc_key, enc_hmac_key, id_key })
    }

    /// The repository's encryption mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// borg's chunk id of a plaintext.
    pub fn id_hash(&self, plain: &[u8]) -> [u8; 32] {
        match self.mode {
            Mode::None => ring::digest::digest(&ring::digest::SHA256, plain).as_ref().try_into().unwrap_or([0; 32]),
            m if m.blake2() => blake2b_256(&[&self.id_key, plain]),
            _ => hmac_sha256(&self.id_key, &[plain]),
        }
    }

    /// Authenticates, decrypts and decompresses one object; checks its id unless `id` is
    /// `None` (the manifest, whose id is all zeros). `hint`: the expected plaintext size.
    pub fn decrypt(&self, id: Option<&[u8; 32]>, data: &[u8], hint: Option<usize>) -> Result<Vec<u8>> {
        let what = || id.map_or_else(|| "manifest".to_string(), |i| format!("object {}", hex::encode(i)));
        let (&t, rest) = data.split_first().ok_or_else(|| Error::integrity(what(), "empty object"))?;
        if t != self.mode.type_byte() {
            return Err(Error::integrity(what(), format!("envelope type 0x{t:02x}, the key is {}", self.mode.name())));
        }
        let plain = if self.mode.encrypted() {
            if rest.len() < 40 {
                return Err(Error::integrity(what(), "shorter than the envelope"));
            }
            let (mac, body) = rest.split_at(32);
            let want = if self.mode.blake2() {
                blake2b_256(&[&self.enc_hmac_key, body])
            } else {
                hmac_sha256(&self.enc_hmac_key, &[body])
            };
            if !same(mac, &want) {
                return Err(Error::integrity(what(), "MAC does not verify"));
            }
            let mut iv = [0u8; 16];
            iv[8..].copy_from_slice(&body[..8]);
            let mut buf = body[8..].to_vec();
            aes_ctr(&self.enc_key, &iv, &mut buf);
            decompress(&buf, hint).map_err(|e| Error::integrity(what(), e.to_string()))?
        } else {
            decompress(rest, hint).map_err(|e| Error::integrity(what(), e.to_string()))?
        };
        if let Some(id) = id {
            if !same(&self.id_hash(&plain), id) {
                return Err(Error::integrity(what(), "id does not match the content"));
            }
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64("aGVs\nbG8=").unwrap(), b"hello");
        assert!(base64("a*b").is_none());
    }

    #[test]
    fn envelope_roundtrip_and_tamper() {
        let key = Key { mode: Mode::Repokey, enc_key: [7; 32], enc_hmac_key: vec![8; 32], id_key: vec![9; 32] };
        let plain = b"some chunk".to_vec();
        let mut comp = vec![0u8, 0];
        comp.extend_from_slice(&plain);
        let nonce = 5u64.to_be_bytes();
        let mut iv = [0u8; 16];
        iv[8..].copy_from_slice(&nonce);
        aes_ctr(&key.enc_key, &iv, &mut comp);
        let mut body = nonce.to_vec();
        body.extend_from_slice(&comp);
        let mut obj = vec![REPOKEY];
        obj.extend_from_slice(&hmac_sha256(&key.enc_hmac_key, &[&body]));
        obj.extend_from_slice(&body);
        let id = key.id_hash(&plain);
        assert_eq!(key.decrypt(Some(&id), &obj, None).unwrap(), plain);
        let mut bad = obj.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(key.decrypt(Some(&id), &bad, None), Err(Error::Integrity { .. })));
        assert!(key.decrypt(Some(&[0; 32]), &obj, None).is_err());
        assert!(key.decrypt(None, &[], None).is_err());
    }
}
