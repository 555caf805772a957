//! Resource configuration (TOML, DRBD-like): one `[resource]` and two `[[node]]` sections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::meta::AfterSb0Pri;
use crate::proto::{OnNoQuorum, Protocol};

/// Configuration errors, each naming the file and field.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/missing field.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What serde/toml said (with line and column).
        message: String,
    },
    /// Semantic problems, all of them.
    #[error("{path}: invalid configuration:\n  {}", problems.join("\n  "))]
    Invalid {
        /// File.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
}

/// Why a node's metadata location is refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MetaPathError {
    /// No `meta` path is set and the default, next to the disk, would be on devtmpfs: gone at
    /// the next reboot, with the generation identifiers and the bitmap.
    #[error(
        "node {node}: disk {} is a block device and no `meta` path is set: the default metadata \
         file {} would be on devtmpfs (/dev) and lost at the next reboot. Set `meta = \"{}\"` (a \
         file on persistent storage, e.g. /var/lib/rempart/) in this [[node]] section; internal \
         metadata (at the end of the device) is not supported yet",
        disk.display(),
        default.display(),
        suggestion.display()
    )]
    OnDevtmpfs {
        /// Node name.
        node: String,
        /// The disk.
        disk: PathBuf,
        /// The refused default.
        default: PathBuf,
        /// A place that survives a reboot.
        suggestion: PathBuf,
    },
}

/// The `[resource]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Resource {
    /// Resource name (also the NBD export name).
    pub name: String,
    /// "A", "B" or "C".
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// File holding the shared secret (relative to the config file).
    pub secret_file: PathBuf,
    /// Split-brain policy.
    #[serde(default = "default_sb")]
    pub after_sb_0pri: String,
    /// Resync rate limit in MiB/s.
    #[serde(default = "default_rate")]
    pub resync_rate_mib: u64,
    /// Peer timeout in milliseconds.
    #[serde(default = "default_timeout")]
    pub peer_timeout_ms: u64,
    /// Activity-log extents (4 MiB each).
    #[serde(default = "default_al")]
    pub al_extents: usize,
    /// Checksum-based resync: compare blake3 hashes, send only ranges that differ.
    #[serde(default)]
    pub checksum_resync: bool,
    /// The quorum gate: `off` (the default: `rempart-repl` alone behaves as it always did) or
    /// `majority` (the peer, or the witness's lease that `rempart-node` feeds in).
    #[serde(default = "default_quorum")]
    pub quorum: String,
    /// What a Primary without quorum does with writes: `suspend-io` (the default: hold them
    /// until quorum is back) or `io-error` (fail them).
    #[serde(default = "default_on_no_quorum")]
    pub on_no_quorum: String,
}

fn default_quorum() -> String {
    "off".into()
}
fn default_on_no_quorum() -> String {
    "suspend-io".into()
}

fn default_protocol() -> String {
    "C".into()
}
fn default_sb() -> String {
    "disconnect".into()
}
fn default_rate() -> u64 {
    250
}
fn default_timeout() -> u64 {
    4000
}
fn default_al() -> usize {
    1237
}

/// A `[[node]]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Replication endpoint (listen address; the peer dials it).
    pub address: String,
    /// Backing file or block device.
    pub disk: PathBuf,
    /// Metadata file (default: `<disk>.md`, refused when the disk is a block device: see
    /// [`ResourceConfig::checked_meta_path`]).
    #[serde(default)]
    pub meta: Option<PathBuf>,
    /// NBD endpoint: `HOST:PORT` or `unix:/path`.
    pub nbd: String,
}

/// A whole resource file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ResourceConfig {
    /// The resource.
    pub resource: Resource,
    /// Its two nodes.
    pub node: Vec<Node>,
    /// Directory of the file (paths are relative to it).
    #[serde(skip)]
    pub base: PathBuf,
}

/// Where a node serves NBD.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NbdEndpoint {
    /// TCP.
    Tcp(SocketAddr),
    /// Unix socket path.
    Unix(PathBuf),
}

impl ResourceConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` (from `path`, for messages and relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut c: ResourceConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        c.base = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let problems = c.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path: path.to_owned(), problems });
        }
        Ok(c)
    }

    /// Every problem, with its location.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let r = &self.resource;
        if r.name.is_empty() || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
            p.push(format!("resource.name {:?}: use letters, digits, - and _", r.name));
        }
        if let Err(e) = r.protocol.parse::<Protocol>() {
            p.push(format!("resource.protocol: {e}"));
        }
        if let Err(e) = r.after_sb_0pri.parse::<AfterSb0Pri>() {
            p.push(format!("resource.after-sb-0pri: {e}"));
        }
        if !["off", "majority"].contains(&r.quorum.as_str()) {
            p.push(format!("resource.quorum {:?}: use off or majority", r.quorum));
        }
        if let Err(e) = r.on_no_quorum.parse::<OnNoQuorum>() {
            p.push(format!("resource.on-no-quorum: {e}"));
        }
        // DRBD's `timeout` is 0.1 s at the least; below that a loaded host misses keepalives.
        if !(100..=600_000).contains(&r.peer_timeout_ms) {
            p.push(format!("resource.peer-timeout-ms {}: must be 100 to 600000", r.peer_timeout_ms));
        }
        if r.resync_rate_mib == 0 {
            p.push("resource.resync-rate-mib: must be > 0".into());
        }
        // DRBD's range; the metadata file has room for 65536.
        if !(7..=65534).contains(&r.al_extents) {
            p.push(format!("resource.al-extents {}: must be 7 to 65534 (DRBD's range)", r.al_extents));
        }
        if self.node.len() != 2 {
            p.push(format!("node: exactly two [[node]] sections needed, found {}", self.node.len()));
        }
        for (i, n) in self.node.iter().enumerate() {
            if n.address.parse::<SocketAddr>().is_err() {
                p.push(format!("node[{i}] ({}).address {:?}: not HOST:PORT", n.name, n.address));
            }
            if let Err(e) = parse_nbd(&n.nbd) {
                p.push(format!("node[{i}] ({}).nbd: {e}", n.name));
            }
        }
        if self.node.len() == 2 && self.node[0].name == self.node[1].name {
            p.push(format!("node: both nodes are named {:?}", self.node[0].name));
        }
        p
    }

    /// This node and the peer.
    pub fn nodes(&self, me: &str) -> Option<(&Node, &Node)> {
        let i = self.node.iter().position(|n| n.name == me)?;
        Some((&self.node[i], &self.node[1 - i]))
    }

    /// A path from the file, resolved against its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    /// The metadata file of `node`.
    pub fn meta_path(&self, node: &Node) -> PathBuf {
        match &node.meta {
            Some(m) => self.resolve(m),
            None => {
                let mut d = self.resolve(&node.disk).into_os_string();
                d.push(".md");
                PathBuf::from(d)
            }
        }
    }

    /// The metadata file of `node`, refusing the default `<disk>.md` when the disk is a block
    /// device (or anything under `/dev`): that file would be on devtmpfs and vanish at reboot
    /// (`/dev/sdb` → `/dev/sdb.md`). An explicit `meta` path is taken as given.
    pub fn checked_meta_path(&self, node: &Node) -> Result<PathBuf, MetaPathError> {
        use std::os::unix::fs::FileTypeExt;
        let path = self.meta_path(node);
        if node.meta.is_some() {
            return Ok(path);
        }
        let disk = self.resolve(&node.disk);
        let block = std::fs::metadata(&disk).is_ok_and(|m| m.file_type().is_block_device());
        if block || path.starts_with("/dev") {
            return Err(MetaPathError::OnDevtmpfs {
                node: node.name.clone(),
                disk,
                default: path,
                suggestion: PathBuf::from(format!("/var/lib/rempart/{}-{}.md", self.resource.name, node.name)),
            });
        }
        Ok(path)
    }

    /// Protocol (validated).
    pub fn protocol(&self) -> Protocol {
        self.resource.protocol.parse().unwrap_or_default()
    }

    /// The quorum gate (validated): `None` when off.
    pub fn quorum(&self) -> Option<OnNoQuorum> {
        (self.resource.quorum == "majority").then(|| self.resource.on_no_quorum.parse().unwrap_or_default())
    }

    /// Split-brain policy (validated).
    pub fn after_sb_0pri(&self) -> AfterSb0Pri {
        self.resource.after_sb_0pri.parse().unwrap_or_default()
    }
}

/// Parses an NBD endpoint.
pub fn parse_nbd(s: &str) -> Result<NbdEndpoint, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("empty unix socket path".into());
        }
        return Ok(NbdEndpoint::Unix(PathBuf::from(p)));
    }
    s.parse().map(NbdEndpoint::Tcp).map_err(|_| format!("{s:?} is neither HOST:PORT nor unix:/path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/repl-r0.toml");
        let c = ResourceConfig::load(&path).unwrap();
        assert_eq!(c.resource.name, "r0");
        assert_eq!(c.protocol(), Protocol::C);
        let (me, peer) = c.nodes("main").unwrap();
        assert_eq!(peer.name, "backup");
        assert_eq!(c.meta_path(me).extension().unwrap(), "md");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
[resource]
name = "r 0"
protocol = "D"
secret-file = "s"
after-sb-0pri = "toss-a-coin"
al-extents = 3

[[node]]
name = "a"
address = "nowhere"
disk = "a.img"
nbd = "bogus"
"#;
        let e = ResourceConfig::parse(Path::new("/etc/r0.toml"), text).unwrap_err().to_string();
        for needle in ["resource.name", "protocol", "after-sb-0pri", "al-extents 3", "exactly two", "address", "nbd"] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
        assert!(e.starts_with("/etc/r0.toml"));
    }

    /// Issue 14: `/dev/sdb` → `/dev/sdb.md` is on devtmpfs, lost at reboot: refused as a
    /// default with what to do instead; an explicit path is taken.
    #[test]
    fn default_metadata_next_to_a_block_device_is_refused_issue_14() {
        let text = |meta: &str| {
            format!(
                "[resource]\nname = \"r0\"\nsecret-file = \"s\"\n\n\
                 [[node]]\nname = \"main\"\naddress = \"127.0.0.1:7789\"\ndisk = \"/dev/sdb\"\nnbd = \"127.0.0.1:10809\"\n{meta}\n\
                 [[node]]\nname = \"backup\"\naddress = \"127.0.0.1:7790\"\ndisk = \"b.img\"\nnbd = \"127.0.0.1:10810\"\n"
            )
        };
        let c = ResourceConfig::parse(Path::new("/etc/rempart/r0.toml"), &text("")).unwrap();
        let (me, peer) = c.nodes("main").unwrap();
        let e = c.checked_meta_path(me).unwrap_err().to_string();
        for needle in ["/dev/sdb.md", "devtmpfs", "reboot", "meta = \"/var/lib/rempart/r0-main.md\"", "internal"] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
        assert_eq!(c.checked_meta_path(peer).unwrap(), Path::new("/etc/rempart/b.img.md"));
        let c = ResourceConfig::parse(Path::new("/etc/rempart/r0.toml"), &text("meta = \"/var/lib/r0.md\"")).unwrap();
        assert_eq!(c.checked_meta_path(c.nodes("main").unwrap().0).unwrap(), Path::new("/var/lib/r0.md"));
        // A block device outside /dev (a symlink or a custom node) is recognised too, where one
        // exists: the root disk of this machine, through a path that does not start with /dev.
        let blockdev = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| Path::new("/dev").join(e.file_name()))
            .find(|p| {
                use std::os::unix::fs::FileTypeExt;
                std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
            });
        if let Some(dev) = blockdev {
            let dir = tempfile::tempdir().unwrap();
            let link = dir.path().join("disk");
            std::os::unix::fs::symlink(&dev, &link).unwrap();
            let t = text("").replace("/dev/sdb", &link.display().to_string());
            let c = ResourceConfig::parse(&dir.path().join("r0.toml"), &t).unwrap();
            assert!(
                c.checked_meta_path(c.nodes("main").unwrap().0).is_err(),
                "{} via {}",
                dev.display(),
                link.display()
            );
        }
    }

    #[test]
    fn quorum_is_off_by_default_and_validated() {
        let base = "[resource]\nname = \"r0\"\nsecret-file = \"s\"\n{}\n\
                    [[node]]\nname = \"a\"\naddress = \"127.0.0.1:7789\"\ndisk = \"a.img\"\nnbd = \"127.0.0.1:10809\"\n\
                    [[node]]\nname = \"b\"\naddress = \"127.0.0.1:7790\"\ndisk = \"b.img\"\nnbd = \"127.0.0.1:10810\"\n";
        let c = ResourceConfig::parse(Path::new("r0.toml"), &base.replace("{}", "")).unwrap();
        assert_eq!(c.quorum(), None);
        let c = ResourceConfig::parse(Path::new("r0.toml"), &base.replace("{}", "quorum = \"majority\"")).unwrap();
        assert_eq!(c.quorum(), Some(OnNoQuorum::SuspendIo));
        let t = base.replace("{}", "quorum = \"majority\"\non-no-quorum = \"io-error\"");
        assert_eq!(ResourceConfig::parse(Path::new("r0.toml"), &t).unwrap().quorum(), Some(OnNoQuorum::IoError));
        let t = base.replace("{}", "quorum = \"all\"\non-no-quorum = \"panic\"");
        let e = ResourceConfig::parse(Path::new("r0.toml"), &t).unwrap_err().to_string();
        assert!(e.contains("resource.quorum") && e.contains("resource.on-no-quorum"), "{e}");
    }

    #[test]
    fn peer_timeout_has_drbds_floor() {
        let base = "[resource]\nname = \"r0\"\nsecret-file = \"s\"\npeer-timeout-ms = {}\n\
                    [[node]]\nname = \"a\"\naddress = \"127.0.0.1:7789\"\ndisk = \"a.img\"\nnbd = \"127.0.0.1:10809\"\n\
                    [[node]]\nname = \"b\"\naddress = \"127.0.0.1:7790\"\ndisk = \"b.img\"\nnbd = \"127.0.0.1:10810\"\n";
        let c = ResourceConfig::parse(Path::new("r0.toml"), &base.replace("{}", "300")).unwrap();
        assert_eq!(c.resource.peer_timeout_ms, 300);
        let e = ResourceConfig::parse(Path::new("r0.toml"), &base.replace("{}", "0")).unwrap_err().to_string();
        assert!(e.contains("resource.peer-timeout-ms 0"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused_with_location() {
        let text = "[resource]\nname = \"r0\"\nsecret-file = \"s\"\nprotocl = \"C\"\n";
        let e = ResourceConfig::parse(Path::new("r0.toml"), text).unwrap_err().to_string();
        assert!(e.contains("protocl") && e.contains("line"), "{e}");
    }
}
