//! `node.toml`: one file per host, everything `rempart-node run` needs; and `witness.toml`, the
//! witness's file on the monitoring host.
//!
//! ```text
//!  node.toml ──toml + serde (unknown keys refused)──▶ raw sections with spans
//!      │                                                   │ validate(): every problem at once,
//!      │  keepalived-conf ──▶ vrrp::config::load           │   each as  FILE:LINE: KEY: what
//!      │  resource config ──▶ blockrepl::config            ▼
//!      └─────────────────────────────────────────────▶ NodeConfig (typed, paths resolved)
//! ```
//!
//! The VRRP instances are read by the vrrp crate (a keepalived.conf as it is, or its native
//! TOML inline under `[vrrp]`), the replicated resources by the blockrepl crate (a resource
//! file, or the same sections inline); this module adds the mount, the services, the backup,
//! the witness and the step timeouts, and checks that they fit together (a mount names a
//! configured resource, this host is one of each resource's nodes, the step-down budget fits
//! in the lease). `docs/examples/node.toml` documents every key.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blockrepl::config::ResourceConfig;
use serde::Deserialize;
use toml::Spanned;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the whole file is concerned).
    pub line: usize,
    /// The key, dotted (`witness.ttl`, `service[1].unit`).
    pub key: String,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.msg)
        } else {
            write!(f, ": {}: {}", self.key, self.msg)
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid; every problem found, each with file, line and key.
    #[error("{}", show(.0))]
    Invalid(Vec<Problem>),
}

fn show(p: &[Problem]) -> String {
    match p {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} problems:", many.len());
            for p in many {
                s.push_str("\n  ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

impl ConfigError {
    /// The problems (empty for a read error).
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The typed configuration.

/// Where the VRRP instances came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VrrpSource {
    /// A keepalived.conf (or the vrrp crate's TOML) file.
    File(PathBuf),
    /// Inline under `[vrrp]`.
    Inline,
}

/// How the replicated volume is attached to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountMethod {
    /// The kernel's NBD client (`/dev/nbdN`).
    KernelNbd,
    /// `nbdfuse` and a loop device, where the nbd module is missing.
    Nbdfuse,
}

/// The file system on a replicated volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The resource it is on.
    pub resource: String,
    /// The block device (`/dev/nbd0`).
    pub device: PathBuf,
    /// File system type (`ext4`).
    pub fs_type: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Mount options (`noatime`), as for `mount -o`.
    pub options: Vec<String>,
    /// How the volume is attached.
    pub method: MountMethod,
}

/// How a service is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A systemd unit, started and stopped with systemctl; healthy when active.
    Unit(String),
    /// Commands (run by `sh -c`); healthy when `check` exits 0 (or, without it, when `start` did).
    Commands {
        /// Start.
        start: String,
        /// Stop.
        stop: String,
        /// Health check.
        check: Option<String>,
    },
}

/// One service, in start order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Name (the unit's, or `name`).
    pub name: String,
    /// How it is run.
    pub kind: ServiceKind,
    /// Time allowed for each of start, stop and check.
    pub timeout: Duration,
}

/// The backup that follows the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The borgmatic-style configuration file.
    pub borgmatic: PathBuf,
    /// Time between runs (hourly by default).
    pub every: Duration,
}

/// What a primary does with writes while it has neither its peer nor the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNoQuorum {
    /// Writes wait (until the peer or the lease is back, or the node demotes).
    SuspendIo,
    /// Writes fail with EIO.
    IoError,
}

/// The node's side of the witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// `HOST:PORT`.
    pub address: String,
    /// File holding the shared secret.
    pub secret_file: PathBuf,
    /// Lease time to live asked of the witness.
    pub ttl: Duration,
    /// See [`OnNoQuorum`].
    pub on_no_quorum: OnNoQuorum,
}

/// Time allowed for each step of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTimeouts {
    /// Promote the resource.
    pub promote: Duration,
    /// Attach and mount the volume.
    pub mount: Duration,
    /// Health check after the services started.
    pub health: Duration,
    /// Add the VIP and announce it.
    pub vip: Duration,
    /// Unmount and detach.
    pub unmount: Duration,
    /// Demote the resource.
    pub demote: Duration,
    /// The whole step-down (VIP off ⇒ services ⇒ unmount ⇒ demote) when the lease is about to
    /// end: `S` in the timing argument of [`crate::witness`].
    pub step_down: Duration,
    /// How long a node that gave the service up holds its VRRP instance in FAULT (so that the
    /// peer takes over) before it competes again, with its priority lowered.
    pub fault_hold: Duration,
    /// Waiting for quorum (the peer, or the witness's lease and the fence) before promoting.
    pub quorum: Duration,
}

impl Default for StepTimeouts {
    fn default() -> Self {
        let s = Duration::from_secs;
        StepTimeouts {
            promote: s(10),
            mount: s(30),
            health: s(30),
            vip: s(5),
            unmount: s(30),
            demote: s(10),
            step_down: Duration::from_secs(1),
            fault_hold: s(10),
            quorum: s(10),
        }
    }
}

/// A loaded, validated `node.toml`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The file.
    pub path: PathBuf,
    /// This host's name (as in the resource files).
    pub node: String,
    /// Where `/metrics` is served.
    pub metrics_listen: Option<SocketAddr>,
    /// The VRRP configuration (validated by the vrrp crate).
    pub vrrp: vrrp::config::Config,
    /// Where it came from.
    pub vrrp_source: VrrpSource,
    /// The replicated resources (validated by the blockrepl crate).
    pub resources: Vec<ResourceConfig>,
    /// File systems on them.
    pub mounts: Vec<Mount>,
    /// Services, in start order (stopped in reverse).
    pub services: Vec<Service>,
    /// The backup, if any.
    pub backup: Option<Backup>,
    /// The witness.
    pub witness: Witness,
    /// Step timeouts.
    pub timeouts: StepTimeouts,
}

/// A loaded, validated `witness.toml` (the witness on the monitoring host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessFile {
    /// The file.
    pub path: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// File holding the shared secret.
    pub secret_file: PathBuf,
    /// Longest lease granted.
    pub max_ttl: Duration,
    /// Nothing is granted for this long after start (default: `max_ttl`).
    pub startup_grace: Duration,
    /// Where `/metrics` is served.
    pub metrics_listen: Option<SocketAddr>,
}

// ---------------------------------------------------------------------------------------------
// Raw sections, as in the file.

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNode {
    node: S<String>,
    #[serde(default)]
    metrics_listen: Option<S<String>>,
    /// Not spanned: toml cannot span a table made only by its sub-tables' headers
    /// (`[[vrrp.instance]]` without `[vrrp]`, valid TOML), and fails to read it as one.
    vrrp: RawVrrp,
    #[serde(default, rename = "resource")]
    resources: Vec<S<RawResource>>,
    #[serde(default, rename = "mount")]
    mounts: Vec<S<RawMount>>,
    #[serde(default, rename = "service")]
    services: Vec<S<RawService>>,
    #[serde(default)]
    backup: Option<S<RawBackup>>,
    witness: S<RawWitness>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVrrp {
    #[serde(default)]
    keepalived_conf: Option<S<PathBuf>>,
    #[serde(default)]
    global: Option<vrrp::config::Global>,
    #[serde(default, rename = "script")]
    scripts: Vec<vrrp::config::Script>,
    #[serde(default, rename = "instance")]
    instances: Vec<S<vrrp::config::Instance>>,
    #[serde(default, rename = "sync-group")]
    sync_groups: Vec<vrrp::config::SyncGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawResource {
    #[serde(default)]
    config: Option<S<PathBuf>>,
    #[serde(default)]
    resource: Option<blockrepl::config::Resource>,
    #[serde(default)]
    node: Vec<blockrepl::config::Node>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMount {
    resource: S<String>,
    device: S<PathBuf>,
    fs_type: S<String>,
    mount_point: S<PathBuf>,
    #[serde(default)]
    options: Option<S<String>>,
    #[serde(default)]
    method: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    #[serde(default)]
    name: Option<S<String>>,
    #[serde(default)]
    unit: Option<S<String>>,
    #[serde(default)]
    start: Option<S<String>>,
    #[serde(default)]
    stop: Option<S<String>>,
    #[serde(default)]
    check: Option<S<String>>,
    #[serde(default)]
    timeout: Option<S<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBackup {
    borgmatic: S<PathBuf>,
    #[serde(default)]
    schedule: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWitness {
    address: S<String>,
    secret_file: S<PathBuf>,
    #[serde(default)]
    ttl: Option<S<f64>>,
    #[serde(default)]
    on_no_quorum: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTimeouts {
    #[serde(default)]
    promote: Option<S<f64>>,
    #[serde(default)]
    mount: Option<S<f64>>,
    #[serde(default)]
    health: Option<S<f64>>,
    #[serde(default)]
    vip: Option<S<f64>>,
    #[serde(default)]
    unmount: Option<S<f64>>,
    #[serde(default)]
    demote: Option<S<f64>>,
    #[serde(default)]
    step_down: Option<S<f64>>,
    #[serde(default)]
    fault_hold: Option<S<f64>>,
    #[serde(default)]
    quorum: Option<S<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWitnessFile {
    witness: S<RawWitnessServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWitnessServer {
    listen: S<String>,
    secret_file: S<PathBuf>,
    #[serde(default)]
    max_ttl: Option<S<f64>>,
    #[serde(default)]
    startup_grace: Option<S<f64>>,
    #[serde(default)]
    metrics_listen: Option<S<String>>,
}

// ---------------------------------------------------------------------------------------------
// Locations.

/// The text of a file, for turning byte spans into lines and keys.
struct Src<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl<'a> Src<'a> {
    fn line(&self, span: &Range<usize>) -> usize {
        let at = span.start.min(self.text.len());
        self.text[..at].bytes().filter(|b| *b == b'\n').count() + 1
    }

    fn push(&mut self, span: &Range<usize>, key: impl Into<String>, msg: impl Into<String>) {
        let line = self.line(span);
        self.problems.push(Problem { file: self.path.to_owned(), line, key: key.into(), msg: msg.into() });
    }

    fn push_at_line(&mut self, line: usize, key: impl Into<String>, msg: impl Into<String>) {
        self.problems.push(Problem { file: self.path.to_owned(), line, key: key.into(), msg: msg.into() });
    }

    /// Where the first header of table `name` or of one of its sub-tables starts (`[name]`,
    /// `[[name.x]]`, ...), or the file's start.
    fn header_span(&self, name: &str) -> Range<usize> {
        let mut at = 0;
        for l in self.text.split_inclusive('\n') {
            let head = l.trim_start().trim_start_matches('[').trim_start();
            if l.trim_start().starts_with('[')
                && head.strip_prefix(name).is_some_and(|r| r.starts_with(['.', ']', ' ']))
            {
                return at..at + l.len();
            }
            at += l.len();
        }
        0..0
    }

    /// The nearest table header at or above `line` (1-based): its line and dotted name.
    fn header_at(&self, line: usize) -> Option<(usize, String)> {
        let lines: Vec<&str> = self.text.lines().take(line).collect();
        lines.iter().enumerate().rev().find_map(|(i, l)| {
            let t = l.trim();
            t.starts_with('[')
                .then(|| (i + 1, t.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_owned()))
        })
    }

    /// The dotted key on `line` (its table's name plus the key before `=`).
    fn key_at(&self, line: usize) -> String {
        let here = self.text.lines().nth(line.saturating_sub(1)).unwrap_or("").trim();
        let table = self.header_at(line).map(|(_, t)| t).unwrap_or_default();
        if here.starts_with('[') {
            return table;
        }
        let key = here.split('=').next().unwrap_or("").trim().trim_matches('"');
        match (table.is_empty(), key.is_empty()) {
            (true, _) => key.to_owned(),
            (false, true) => table,
            (false, false) => format!("{table}.{key}"),
        }
    }

    /// A TOML or serde error as a problem with line and key.
    fn toml_error(&mut self, e: &toml::de::Error) {
        let msg = e.message().trim().to_owned();
        let Some(span) = e.span() else {
            self.push_at_line(0, "", msg);
            return;
        };
        let line = self.line(&span);
        let quoted = |prefix: &str| msg.strip_prefix(prefix).and_then(|m| m.split('`').next()).map(str::to_owned);
        if let Some(field) = quoted("missing field `") {
            // Points at the table that lacks it.
            match self.header_at(line) {
                Some((at, table)) => self.push_at_line(at, format!("{table}.{field}"), msg),
                None => {
                    self.push_at_line(0, field.clone(), format!("missing (a required key, or the [{field}] section)"))
                }
            }
            return;
        }
        if let Some(field) = quoted("unknown field `") {
            let key = match self.header_at(line) {
                Some((_, t)) => format!("{t}.{field}"),
                None => field,
            };
            self.push_at_line(line, key, msg);
            return;
        }
        let key = self.key_at(line);
        self.push_at_line(line, key, msg);
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn secs(&mut self, v: &Option<S<f64>>, key: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match Duration::try_from_secs_f64(*v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.push(&v.span(), key, format!("{} is not a positive number of seconds", v.get_ref()));
                default
            }
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
}

/// Problems found by another crate's loader, one line each.
fn one_line(e: &dyn fmt::Display) -> String {
    e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

// ---------------------------------------------------------------------------------------------
// Loading.

impl NodeConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        NodeConfig::parse(path, &text)
    }

    /// Parses and validates `text`, read from `path` (for messages and relative paths; the
    /// files it names are read).
    pub fn parse(path: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        let mut src = Src { path, text, problems: Vec::new() };
        let raw: RawNode = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                src.toml_error(&e);
                return Err(ConfigError::Invalid(src.problems));
            }
        };
        let cfg = build(&mut src, raw);
        if src.problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(src.problems))
        }
    }
}

fn build(src: &mut Src<'_>, raw: RawNode) -> NodeConfig {
    let node = raw.node.get_ref().clone();
    if !valid_name(&node) {
        src.push(&raw.node.span(), "node", format!("{node:?}: use 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    let metrics_listen = raw.metrics_listen.as_ref().and_then(|m| match m.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            src.push(&m.span(), "metrics-listen", format!("{:?} is not IP:PORT", m.get_ref()));
            None
        }
    });

    // VRRP: a keepalived.conf, or inline.
    let vrrp_span = src.header_span("vrrp");
    let v = raw.vrrp;
    let inline = !v.instances.is_empty() || v.global.is_some() || !v.scripts.is_empty() || !v.sync_groups.is_empty();
    let (vrrp, vrrp_source) = match (v.keepalived_conf, inline) {
        (Some(p), true) => {
            src.push(
                &p.span(),
                "vrrp.keepalived-conf",
                "give either keepalived-conf or inline [[vrrp.instance]] sections, not both",
            );
            (vrrp::config::Config::default(), VrrpSource::Inline)
        }
        (Some(p), false) => {
            let file = src.resolve(p.get_ref());
            match vrrp::config::load(&file) {
                Ok(l) => (l.config, VrrpSource::File(file)),
                Err(e) => {
                    let msg = match &e {
                        vrrp::config::ConfigError::Io { source, .. } => {
                            format!("cannot read {}: {source}", file.display())
                        }
                        other => format!("{}: {}", file.display(), one_line(other)),
                    };
                    src.push(&p.span(), "vrrp.keepalived-conf", msg);
                    (vrrp::config::Config::default(), VrrpSource::File(file))
                }
            }
        }
        (None, _) => {
            let spans: Vec<(String, Range<usize>)> =
                v.instances.iter().map(|i| (i.get_ref().name.clone(), i.span())).collect();
            let c = vrrp::config::Config {
                global: v.global.unwrap_or_default(),
                scripts: v.scripts,
                instances: v.instances.into_iter().map(Spanned::into_inner).collect(),
                sync_groups: v.sync_groups,
            };
            if c.instances.is_empty() {
                src.push(&vrrp_span, "vrrp", "no VRRP instance: set keepalived-conf or add [[vrrp.instance]] sections");
            } else {
                for p in c.validate() {
                    let span =
                        spans.iter().find(|(n, _)| *n == p.at).map(|(_, s)| s.clone()).unwrap_or(vrrp_span.clone());
                    src.push(&span, format!("vrrp.instance {}", p.at), p.msg);
                }
            }
            (c, VrrpSource::Inline)
        }
    };

    // Replicated resources.
    let mut resources = Vec::new();
    if raw.resources.is_empty() {
        src.push_at_line(0, "resource", "missing: at least one [[resource]] section (config = \"r0.toml\", or inline)");
    }
    for (i, r) in raw.resources.into_iter().enumerate() {
        let span = r.span();
        let key = format!("resource[{i}]");
        let r = r.into_inner();
        let loaded = match (r.config, r.resource) {
            (Some(p), None) if r.node.is_empty() => {
                let file = src.resolve(p.get_ref());
                match ResourceConfig::load(&file) {
                    Ok(c) => Some((c, p.span())),
                    Err(e) => {
                        src.push(&p.span(), format!("{key}.config"), one_line(&e));
                        None
                    }
                }
            }
            (None, Some(resource)) => {
                let c = ResourceConfig { resource, node: r.node, base: src.resolve(Path::new("")) };
                let problems = c.validate();
                for p in &problems {
                    src.push(&span, format!("{key}.{}", p.split(':').next().unwrap_or("")), p.clone());
                }
                problems.is_empty().then_some((c, span.clone()))
            }
            _ => {
                src.push(
                    &span,
                    key.clone(),
                    "give either config = \"FILE\" or inline [resource.resource] and [[resource.node]] sections",
                );
                None
            }
        };
        if let Some((c, at)) = loaded {
            if c.nodes(&node).is_none() {
                let names: Vec<&str> = c.node.iter().map(|n| n.name.as_str()).collect();
                src.push(
                    &at,
                    key.clone(),
                    format!(
                        "this host ({node}) is not one of resource {}'s nodes ({})",
                        c.resource.name,
                        names.join(", ")
                    ),
                );
            }
            if resources.iter().any(|o: &ResourceConfig| o.resource.name == c.resource.name) {
                src.push(&at, key.clone(), format!("resource {} is configured twice", c.resource.name));
            }
            resources.push(c);
        }
    }

    // Mounts.
    let mut mounts = Vec::new();
    for (i, m) in raw.mounts.into_iter().enumerate() {
        let key = format!("mount[{i}]");
        let m = m.into_inner();
        if !resources.iter().any(|r| r.resource.name == *m.resource.get_ref()) {
            src.push(
                &m.resource.span(),
                format!("{key}.resource"),
                format!("{:?} is not a configured resource", m.resource.get_ref()),
            );
        }
        for (v, k) in [(&m.device, "device"), (&m.mount_point, "mount-point")] {
            if !v.get_ref().is_absolute() {
                src.push(&v.span(), format!("{key}.{k}"), format!("{} is not an absolute path", v.get_ref().display()));
            }
        }
        if m.fs_type.get_ref().is_empty() {
            src.push(&m.fs_type.span(), format!("{key}.fs-type"), "empty");
        }
        let method = match m.method.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("kernel-nbd") => MountMethod::KernelNbd,
            Some("nbdfuse") => MountMethod::Nbdfuse,
            Some(other) => {
                let span = m.method.as_ref().map(Spanned::span).unwrap_or_default();
                src.push(&span, format!("{key}.method"), format!("{other:?}: use \"kernel-nbd\" or \"nbdfuse\""));
                MountMethod::KernelNbd
            }
        };
        if mounts.iter().any(|o: &Mount| o.mount_point == *m.mount_point.get_ref()) {
            src.push(&m.mount_point.span(), format!("{key}.mount-point"), "mounted twice");
        }
        mounts.push(Mount {
            resource: m.resource.into_inner(),
            device: m.device.into_inner(),
            fs_type: m.fs_type.into_inner(),
            mount_point: m.mount_point.into_inner(),
            options: m
                .options
                .map(|o| {
                    o.into_inner().split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
                })
                .unwrap_or_default(),
            method,
        });
    }

    // Services, in order.
    let mut services: Vec<Service> = Vec::new();
    for (i, s) in raw.services.into_iter().enumerate() {
        let span = s.span();
        let key = format!("service[{i}]");
        let s = s.into_inner();
        let timeout = src.secs(&s.timeout, &format!("{key}.timeout"), Duration::from_secs(30));
        let kind = match (&s.unit, &s.start, &s.stop) {
            (Some(u), None, None) => {
                if u.get_ref().is_empty() || u.get_ref().contains(char::is_whitespace) {
                    src.push(&u.span(), format!("{key}.unit"), format!("{:?} is not a unit name", u.get_ref()));
                }
                if let Some(c) = &s.check {
                    src.push(
                        &c.span(),
                        format!("{key}.check"),
                        "a unit's health is its state: check is only for start/stop commands",
                    );
                }
                ServiceKind::Unit(u.get_ref().clone())
            }
            (None, Some(start), Some(stop)) => ServiceKind::Commands {
                start: start.get_ref().clone(),
                stop: stop.get_ref().clone(),
                check: s.check.as_ref().map(|c| c.get_ref().clone()),
            },
            (Some(u), _, _) => {
                src.push(&u.span(), format!("{key}.unit"), "give either unit or start and stop commands, not both");
                continue;
            }
            (None, _, _) => {
                src.push(&span, key.clone(), "give unit = \"NAME.service\", or both start and stop commands");
                continue;
            }
        };
        let name = match (&s.name, &kind) {
            (Some(n), _) => n.get_ref().clone(),
            (None, ServiceKind::Unit(u)) => u.clone(),
            (None, ServiceKind::Commands { .. }) => {
                src.push(&span, format!("{key}.name"), "missing: a service run by commands needs a name");
                continue;
            }
        };
        if services.iter().any(|o| o.name == name) {
            src.push(&span, key.clone(), format!("service {name:?} is listed twice"));
        }
        services.push(Service { name, kind, timeout });
    }

    // Backup.
    let backup = raw.backup.map(|b| {
        let b = b.into_inner();
        let every = match b.schedule.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("hourly") => Duration::from_secs(3600),
            Some("daily") => Duration::from_secs(86_400),
            Some(other) => match parse_every(other) {
                Some(d) => d,
                None => {
                    let span = b.schedule.as_ref().map(Spanned::span).unwrap_or_default();
                    src.push(
                        &span,
                        "backup.schedule",
                        format!("{other:?}: use \"hourly\", \"daily\" or an interval such as \"30m\", \"6h\" or \"90s\""),
                    );
                    Duration::from_secs(3600)
                }
            },
        };
        Backup { borgmatic: src.resolve(b.borgmatic.get_ref()), every }
    });

    // Witness.
    let w = raw.witness.into_inner();
    if !host_port(w.address.get_ref()) {
        src.push(&w.address.span(), "witness.address", format!("{:?} is not HOST:PORT", w.address.get_ref()));
    }
    let ttl = src.secs(&w.ttl, "witness.ttl", Duration::from_secs(3));
    if let Some(t) = &w.ttl {
        if ttl < Duration::from_millis(300) {
            src.push(&t.span(), "witness.ttl", "must be at least 0.3 s (renewals go every ttl/3)");
        }
    }
    let on_no_quorum = match w.on_no_quorum.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("suspend-io") => OnNoQuorum::SuspendIo,
        Some("io-error") => OnNoQuorum::IoError,
        Some(other) => {
            let span = w.on_no_quorum.as_ref().map(Spanned::span).unwrap_or_default();
            src.push(&span, "witness.on-no-quorum", format!("{other:?}: use \"suspend-io\" or \"io-error\""));
            OnNoQuorum::SuspendIo
        }
    };
    let witness = Witness {
        address: w.address.into_inner(),
        secret_file: src.resolve(w.secret_file.get_ref()),
        ttl,
        on_no_quorum,
    };

    // Step timeouts, and the step-down budget against the lease.
    let d = StepTimeouts::default();
    let timeouts = match &raw.timeouts {
        None => d,
        Some(t) => StepTimeouts {
            promote: src.secs(&t.promote, "timeouts.promote", d.promote),
            mount: src.secs(&t.mount, "timeouts.mount", d.mount),
            health: src.secs(&t.health, "timeouts.health", d.health),
            vip: src.secs(&t.vip, "timeouts.vip", d.vip),
            unmount: src.secs(&t.unmount, "timeouts.unmount", d.unmount),
            demote: src.secs(&t.demote, "timeouts.demote", d.demote),
            step_down: src.secs(&t.step_down, "timeouts.step-down", d.step_down),
            fault_hold: src.secs(&t.fault_hold, "timeouts.fault-hold", d.fault_hold),
            quorum: src.secs(&t.quorum, "timeouts.quorum", d.quorum),
        },
    };
    let budget = step_down_budget(ttl);
    if timeouts.step_down > budget {
        let line_span = raw.timeouts.as_ref().and_then(|t| t.step_down.as_ref()).map(Spanned::span);
        let msg = format!(
            "{:?} does not fit in the lease: with witness.ttl = {ttl:?} the step-down must take at most {budget:?} \
             (ttl − margin − renew interval − request timeout); lower it or raise witness.ttl",
            timeouts.step_down
        );
        match line_span {
            Some(s) => src.push(&s, "timeouts.step-down", msg),
            None => src.push(&w.ttl.as_ref().map(Spanned::span).unwrap_or_default(), "witness.ttl", msg),
        }
    }

    NodeConfig {
        path: src.path.to_owned(),
        node,
        metrics_listen,
        vrrp,
        vrrp_source,
        resources,
        mounts,
        services,
        backup,
        witness,
        timeouts,
    }
}

/// The longest step-down that fits in a lease of `ttl` with the client's defaults:
/// `T − m − R − N` (see the timing argument in [`crate::witness`]).
#[must_use]
pub fn step_down_budget(ttl: Duration) -> Duration {
    let c = crate::witness::client::ClientConfig::new("", ttl);
    let n = (ttl / 6).max(Duration::from_millis(100));
    ttl.saturating_sub(c.margin).saturating_sub(c.renew_interval).saturating_sub(n)
}

fn parse_every(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        // Seconds are for tests and labs; a real schedule is minutes or more.
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

impl WitnessFile {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<WitnessFile, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        WitnessFile::parse(path, &text)
    }

    /// Parses and validates `text` (from `path`).
    pub fn parse(path: &Path, text: &str) -> Result<WitnessFile, ConfigError> {
        let mut src = Src { path, text, problems: Vec::new() };
        let raw: RawWitnessFile = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                src.toml_error(&e);
                return Err(ConfigError::Invalid(src.problems));
            }
        };
        let w = raw.witness.into_inner();
        let listen = w.listen.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
            src.push(&w.listen.span(), "witness.listen", format!("{:?} is not IP:PORT", w.listen.get_ref()));
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let metrics_listen = w.metrics_listen.as_ref().and_then(|m| match m.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                src.push(&m.span(), "witness.metrics-listen", format!("{:?} is not IP:PORT", m.get_ref()));
                None
            }
        });
        let max_ttl = src.secs(&w.max_ttl, "witness.max-ttl", Duration::from_secs(10));
        let startup_grace = match &w.startup_grace {
            // Zero is allowed here: a deliberate choice to trust that no lease is outstanding.
            Some(g) => Duration::try_from_secs_f64(*g.get_ref()).unwrap_or_else(|_| {
                src.push(&g.span(), "witness.startup-grace", format!("{} is not a number of seconds", g.get_ref()));
                max_ttl
            }),
            None => max_ttl,
        };
        if startup_grace < max_ttl {
            let span = w.startup_grace.as_ref().map(Spanned::span).unwrap_or_default();
            src.push(
                &span,
                "witness.startup-grace",
                format!("{startup_grace:?} is shorter than max-ttl ({max_ttl:?}): after a restart a lease granted before it could still be live"),
            );
        }
        let out = WitnessFile {
            path: path.to_owned(),
            listen,
            secret_file: src.resolve(w.secret_file.get_ref()),
            max_ttl,
            startup_grace,
            metrics_listen,
        };
        if src.problems.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError::Invalid(src.problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_intervals() {
        assert_eq!(parse_every("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_every("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_every("6h"), Some(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_every("2d"), Some(Duration::from_secs(2 * 86_400)));
        for bad in ["0s", "s", "20", "20x", "-5m", "99999999999999999999h"] {
            assert_eq!(parse_every(bad), None, "{bad}");
        }
    }
}
