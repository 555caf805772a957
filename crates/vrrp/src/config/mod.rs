//! Configuration: keepalived.conf read as it is ([`keepalived`]), or native TOML ([`from_toml`]).
//!
//! Both produce the same [`Config`]. [`Config::validate`] reports every problem at once, each
//! with its location (`file:line` for keepalived.conf, the instance name for TOML).
//!
//! ```toml
//! [global]
//! router-id = "main"
//! vrrp-version = 3
//!
//! [[instance]]
//! name = "VI_1"
//! interface = "eth0"
//! vrid = 51
//! priority = 150
//! advert-int = 1.0
//! virtual-ipaddress = ["192.168.50.50/24"]
//! ```

pub mod keepalived;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a setting came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Loc {
    /// File.
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub col: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.col > 0 {
                write!(f, ":{}", self.col)?;
            }
        }
        Ok(())
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read. (The cause is the source: `{:#}` prints it once.)
    #[error("cannot read {}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Malformed syntax or value.
    #[error("{loc}: {msg}")]
    Syntax {
        /// Where.
        loc: Loc,
        /// What.
        msg: String,
    },
    /// TOML error (its message carries line and column).
    #[error("{file}: {msg}")]
    Toml {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        msg: String,
    },
    /// The file parsed but is not valid; every problem is listed.
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where (file:line, or instance name).
    pub at: String,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.msg)
    }
}

/// A remark on a keyword, naming file and line. Whether it stops the configuration from loading
/// depends on its [`WarningKind`] and the [`Keywords`] policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where.
    pub loc: Loc,
    /// What (starts with the keyword).
    pub msg: String,
    /// How serious.
    pub kind: WarningKind,
}

/// How serious an ignored keyword is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarningKind {
    /// A keepalived keyword we ignore that does not change failover (e-mail, SNMP, process
    /// tuning): always a warning.
    Ignored,
    /// A keepalived feature we do not implement that changes failover or what a failover does
    /// (`use_vmac`, `track_file`, `virtual_routes`, ...): an error unless [`Keywords::Lenient`].
    Unsupported,
    /// Not a keepalived keyword in this place (a misspelling such as `priorty`, or a block such
    /// as `vrrp_instanse`): an error unless [`Keywords::Lenient`].
    Unknown,
}

/// What to do with unknown and unsupported keywords ([`WarningKind::Unknown`],
/// [`WarningKind::Unsupported`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keywords {
    /// They are errors (the default): the daemon would otherwise fail over differently from the
    /// keepalived that the file was written for (issue 14).
    #[default]
    Strict,
    /// They are warnings (`--lenient`, for a migration).
    Lenient,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.msg)
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
    pub(super) mod opt {
        use super::*;
        pub(in super::super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&d.as_secs_f64()),
                None => s.serialize_none(),
            }
        }
        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let v = Option::<f64>::deserialize(d)?;
            v.map(|v| Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)).transpose()
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// `global_defs`.
    #[serde(default)]
    pub global: Global,
    /// `vrrp_script` blocks.
    #[serde(default, rename = "script")]
    pub scripts: Vec<Script>,
    /// `vrrp_instance` blocks.
    #[serde(default, rename = "instance")]
    pub instances: Vec<Instance>,
    /// `vrrp_sync_group` blocks.
    #[serde(default, rename = "sync-group")]
    pub sync_groups: Vec<SyncGroup>,
}

/// `global_defs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Global {
    /// `router_id`.
    #[serde(default)]
    pub router_id: Option<String>,
    /// `vrrp_version` (keepalived's default is 2).
    #[serde(default = "default_version")]
    pub vrrp_version: u8,
    /// `script_user USER [GROUP]`: who runs scripts (default `keepalived_script` if that user
    /// exists, else the daemon's user).
    #[serde(default)]
    pub script_user: Option<String>,
    /// The GROUP of `script_user` (default: the user's primary group).
    #[serde(default)]
    pub script_group: Option<String>,
    /// `enable_script_security`.
    #[serde(default)]
    pub enable_script_security: bool,
    /// VRRPv3/IPv4 checksum form to send (`pseudo-header`, keepalived's; or `message-only`).
    #[serde(default)]
    pub checksum: ChecksumForm,
}

fn default_version() -> u8 {
    2
}

impl Default for Global {
    fn default() -> Self {
        Global {
            router_id: None,
            vrrp_version: 2,
            script_user: None,
            script_group: None,
            enable_script_security: false,
            checksum: ChecksumForm::PseudoHeader,
        }
    }
}

/// Checksum form for sending VRRPv3 over IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChecksumForm {
    /// With the IPv4 pseudo-header (keepalived, Wireshark).
    #[default]
    PseudoHeader,
    /// Message only.
    MessageOnly,
}

/// `vrrp_script NAME { ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Script {
    /// Name referenced by `track_script`.
    pub name: String,
    /// Command line (run with `sh -c`).
    pub script: String,
    /// Run every (default 1 s).
    #[serde(default = "one_sec", with = "secs")]
    pub interval: Duration,
    /// Kill and count as failure after (default: interval).
    #[serde(default, with = "secs::opt")]
    pub timeout: Option<Duration>,
    /// Weight: negative lowers priority on failure, positive raises it on success, 0 = fault.
    #[serde(default)]
    pub weight: i32,
    /// Successes needed to become OK (default 1).
    #[serde(default = "one")]
    pub rise: u32,
    /// Failures needed to become KO (default 1).
    #[serde(default = "one")]
    pub fall: u32,
    /// `user USER [GROUP]`: run as this user instead of `script_user`.
    #[serde(default)]
    pub user: Option<String>,
    /// The GROUP of `user`.
    #[serde(default)]
    pub group: Option<String>,
    /// Where it was defined.
    #[serde(skip)]
    pub loc: Option<Loc>,
}

fn one_sec() -> Duration {
    Duration::from_secs(1)
}
fn one() -> u32 {
    1
}

/// A tracked script or interface reference with an optional weight override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Track {
    /// Script or interface name.
    pub name: String,
    /// Weight override.
    #[serde(default)]
    pub weight: Option<i32>,
}

/// A virtual address: `addr[/prefix] [dev IFNAME] [label LABEL] [brd ADDR] [scope SCOPE]`, as in
/// keepalived's `virtual_ipaddress` block (/32 or /128 when no prefix is given; the instance's
/// interface when no `dev`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Vip {
    /// Address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// `dev`: the interface to add it to, when not the instance's.
    pub dev: Option<String>,
    /// `label` (IPv4 only; `ip addr` shows it, ifconfig-style `eth0:1`).
    pub label: Option<String>,
    /// `brd`: broadcast address (IPv4 only; none when not given, like keepalived).
    pub brd: Option<std::net::Ipv4Addr>,
    /// `scope`: 0 global (default), 200 site, 253 link, 254 host, 255 nowhere.
    pub scope: u8,
}

/// `virtual_ipaddress` options we accept but do not act on (keepalived features out of scope).
const VIP_IGNORED_FLAGS: &[&str] =
    &["home", "-nodad", "mngtmpaddr", "noprefixroute", "autojoin", "no_track", "use_vmac"];
const VIP_IGNORED_WITH_VALUE: &[&str] = &["peer", "preferred_lft"];

fn scope_from(s: &str) -> Option<u8> {
    match s {
        "global" | "universe" => Some(0),
        "site" => Some(200),
        "link" => Some(253),
        "host" => Some(254),
        "nowhere" => Some(255),
        n => n.parse().ok(),
    }
}

fn scope_name(s: u8) -> String {
    match s {
        0 => "global".into(),
        200 => "site".into(),
        253 => "link".into(),
        254 => "host".into(),
        255 => "nowhere".into(),
        n => n.to_string(),
    }
}

impl Vip {
    /// A VIP with no options.
    #[must_use]
    pub fn new(addr: IpAddr, prefix: u8) -> Vip {
        Vip { addr, prefix, dev: None, label: None, brd: None, scope: 0 }
    }

    /// Parses `addr[/prefix]` followed by options. Options we do not act on are returned (for a
    /// warning); a malformed address or option value is an error.
    pub fn parse_with_options(words: &[&str]) -> Result<(Vip, Vec<String>), String> {
        let Some(first) = words.first() else {
            return Err("empty virtual address".into());
        };
        let (a, p) = match first.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (*first, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("invalid address {a:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("invalid prefix length {p:?}"))?
            }
            None => max,
        };
        let mut vip = Vip::new(addr, prefix);
        let mut ignored = Vec::new();
        let mut it = words[1..].iter();
        while let Some(w) = it.next() {
            let mut value = |what: &str| match it.next() {
                None => Err(format!("'{what}' needs a value")),
                Some(v) if v.is_empty() || v.contains(char::is_whitespace) => Err(format!("invalid {what} {v:?}")),
                Some(v) => Ok(*v),
            };
            match *w {
                "dev" => vip.dev = Some(value("dev")?.to_string()),
                "label" => {
                    let l = value("label")?;
                    if addr.is_ipv6() {
                        return Err("label is for IPv4 addresses only".into());
                    }
                    if l.len() > 15 {
                        return Err(format!("label {l:?} longer than 15 characters"));
                    }
                    vip.label = Some(l.to_string());
                }
                "brd" | "broadcast" => {
                    let b = value("brd")?;
                    if addr.is_ipv6() {
                        return Err("brd is for IPv4 addresses only".into());
                    }
                    vip.brd = Some(b.parse().map_err(|_| format!("invalid broadcast address {b:?}"))?);
                }
                "scope" => {
                    let sc = value("scope")?;
                    vip.scope = scope_from(sc).ok_or_else(|| format!("invalid scope {sc:?}"))?;
                }
                f if VIP_IGNORED_FLAGS.contains(&f) => ignored.push(f.to_string()),
                f if VIP_IGNORED_WITH_VALUE.contains(&f) => {
                    let v = value(f)?;
                    ignored.push(format!("{f} {v}"));
                }
                other => return Err(format!("unknown virtual_ipaddress option {other:?}")),
            }
        }
        Ok((vip, ignored))
    }
}

impl std::str::FromStr for Vip {
    type Err = String;
    /// Parses the [`fmt::Display`] form; options we would not act on are refused.
    fn from_str(s: &str) -> Result<Vip, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let (vip, ignored) = Vip::parse_with_options(&words)?;
        match ignored.first() {
            Some(f) => Err(format!("virtual address option {f:?} is not supported")),
            None => Ok(vip),
        }
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)?;
        if let Some(b) = self.brd {
            write!(f, " brd {b}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if self.scope != 0 {
            write!(f, " scope {}", scope_name(self.scope))?;
        }
        if let Some(l) = &self.label {
            write!(f, " label {l}")?;
        }
        Ok(())
    }
}

impl Serialize for Vip {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Vip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Vip, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `vrrp_instance NAME { ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Instance {
    /// Instance name.
    pub name: String,
    /// `state MASTER|BACKUP` (a hint: only priority 255 starts as master).
    #[serde(default)]
    pub state: Option<String>,
    /// `interface`.
    pub interface: String,
    /// `virtual_router_id`.
    pub vrid: u8,
    /// `priority` (default 100).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// `advert_int` in seconds (default 1).
    #[serde(default = "one_sec", with = "secs")]
    pub advert_int: Duration,
    /// Per-instance `version` (default: global `vrrp_version`).
    #[serde(default)]
    pub version: Option<u8>,
    /// `nopreempt` sets this false.
    #[serde(default = "yes")]
    pub preempt: bool,
    /// `preempt_delay` in seconds.
    #[serde(default, with = "secs")]
    pub preempt_delay: Duration,
    /// `accept` / `no_accept` (keepalived's default without `vrrp_strict`: accept). With
    /// `no_accept`, a master that is not the owner (priority < 255) drops packets addressed to
    /// or sent from the VIPs (nftables table `rempart_vrrp`).
    #[serde(default = "yes")]
    pub accept: bool,
    /// `authentication { auth_pass }` (VRRPv2 PASS).
    #[serde(default)]
    pub auth_pass: Option<String>,
    /// `virtual_ipaddress`.
    #[serde(default)]
    pub virtual_ipaddress: Vec<Vip>,
    /// `unicast_src_ip`.
    #[serde(default)]
    pub unicast_src_ip: Option<IpAddr>,
    /// `unicast_peer`.
    #[serde(default)]
    pub unicast_peer: Vec<IpAddr>,
    /// `track_interface`.
    #[serde(default)]
    pub track_interface: Vec<Track>,
    /// `track_script`.
    #[serde(default)]
    pub track_script: Vec<Track>,
    /// `notify_master`.
    #[serde(default)]
    pub notify_master: Option<String>,
    /// `notify_backup`.
    #[serde(default)]
    pub notify_backup: Option<String>,
    /// `notify_fault`.
    #[serde(default)]
    pub notify_fault: Option<String>,
    /// `notify_stop`.
    #[serde(default)]
    pub notify_stop: Option<String>,
    /// `notify` (called with `INSTANCE NAME STATE PRIORITY`).
    #[serde(default)]
    pub notify: Option<String>,
    /// `garp_master_delay` (default 5 s).
    #[serde(default = "five_secs", with = "secs")]
    pub garp_master_delay: Duration,
    /// `garp_master_repeat` (default 5).
    #[serde(default = "five")]
    pub garp_master_repeat: u32,
    /// `garp_master_refresh` (default off).
    #[serde(default, with = "secs::opt")]
    pub garp_master_refresh: Option<Duration>,
    /// Where it was defined.
    #[serde(skip)]
    pub loc: Option<Loc>,
}

fn default_priority() -> u8 {
    100
}
fn yes() -> bool {
    true
}
fn five_secs() -> Duration {
    Duration::from_secs(5)
}
fn five() -> u32 {
    5
}

impl Instance {
    /// A new instance with keepalived's defaults.
    #[must_use]
    pub fn new(name: &str, interface: &str, vrid: u8) -> Instance {
        Instance {
            name: name.to_string(),
            state: None,
            interface: interface.to_string(),
            vrid,
            priority: 100,
            advert_int: one_sec(),
            version: None,
            preempt: true,
            preempt_delay: Duration::ZERO,
            accept: true,
            auth_pass: None,
            virtual_ipaddress: Vec::new(),
            unicast_src_ip: None,
            unicast_peer: Vec::new(),
            track_interface: Vec::new(),
            track_script: Vec::new(),
            notify_master: None,
            notify_backup: None,
            notify_fault: None,
            notify_stop: None,
            notify: None,
            garp_master_delay: five_secs(),
            garp_master_repeat: 5,
            garp_master_refresh: None,
            loc: None,
        }
    }

    /// The VRRP version in force for this instance.
    #[must_use]
    pub fn effective_version(&self, global: &Global) -> u8 {
        self.version.unwrap_or(global.vrrp_version)
    }

    fn at(&self) -> String {
        match &self.loc {
            Some(l) => format!("{l} (vrrp_instance {})", self.name),
            None => format!("instance {}", self.name),
        }
    }
}

/// `vrrp_sync_group NAME { group { A B } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SyncGroup {
    /// Name.
    pub name: String,
    /// Instance names.
    pub group: Vec<String>,
    /// Where it was defined.
    #[serde(skip)]
    pub loc: Option<Loc>,
}

/// A loaded configuration plus the warnings met on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration (validated).
    pub config: Config,
    /// Unsupported keywords etc.
    pub warnings: Vec<Warning>,
}

/// Parses native TOML.
pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Toml { file: file.to_path_buf(), msg: e.to_string() })
}

/// Loads `path` with [`Keywords::Strict`]; see [`load_with`].
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_with(path, Keywords::Strict)
}

/// Loads `path`: `.toml` as native TOML, anything else as keepalived.conf; then validates.
/// Unknown and unsupported keywords are problems under [`Keywords::Strict`], reported together
/// with the validation problems; under [`Keywords::Lenient`] they are returned as warnings.
pub fn load_with(path: &Path, keywords: Keywords) -> Result<Loaded, ConfigError> {
    let (config, found) = if path.extension().is_some_and(|e| e == "toml") {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { file: path.to_path_buf(), source })?;
        (from_toml(&text, path)?, Vec::new())
    } else {
        keepalived::parse_file(path)?
    };
    let (problems, warnings) = apply_keywords(found, keywords);
    let mut problems = problems;
    problems.extend(config.validate());
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Loaded { config, warnings })
}

/// Splits keyword remarks into problems and warnings under `policy`.
#[must_use]
pub fn apply_keywords(found: Vec<Warning>, policy: Keywords) -> (Vec<Problem>, Vec<Warning>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for mut w in found {
        match (w.kind, policy) {
            (WarningKind::Ignored, _) => warnings.push(w),
            (_, Keywords::Strict) => {
                problems.push(Problem { at: w.loc.to_string(), msg: format!("{} (--lenient ignores it)", w.msg) });
            }
            (_, Keywords::Lenient) => {
                w.msg.push_str(" (ignored: --lenient)");
                warnings.push(w);
            }
        }
    }
    (problems, warnings)
}

impl Config {
    /// Checks everything and returns every problem found (empty when valid).
    #[must_use]
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut push = |at: String, msg: String| p.push(Problem { at, msg });
        if !matches!(self.global.vrrp_version, 2 | 3) {
            push("global_defs".into(), format!("vrrp_version {} (must be 2 or 3)", self.global.vrrp_version));
        }
        if self.instances.is_empty() {
            push("configuration".into(), "no vrrp_instance: nothing to run".into());
        }
        let mut seen = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for i in &self.instances {
            let at = i.at();
            if !names.insert(i.name.as_str()) {
                push(at.clone(), "duplicate instance name".into());
            }
            if i.vrid == 0 {
                push(at.clone(), "virtual_router_id must be 1..255".into());
            }
            if i.priority == 0 {
                push(at.clone(), "priority must be 1..255".into());
            }
            if i.interface.is_empty() {
                push(at.clone(), "no interface".into());
            }
            if i.virtual_ipaddress.is_empty() {
                push(at.clone(), "no virtual_ipaddress".into());
            }
            let v6 = i.virtual_ipaddress.first().is_some_and(|v| v.addr.is_ipv6());
            if i.virtual_ipaddress.iter().any(|v| v.addr.is_ipv6() != v6) {
                push(at.clone(), "virtual_ipaddress mixes IPv4 and IPv6 (use two instances)".into());
            }
            if !seen.insert((i.interface.clone(), i.vrid, v6)) {
                push(at.clone(), format!("virtual_router_id {} used twice on {}", i.vrid, i.interface));
            }
            let ver = i.effective_version(&self.global);
            match ver {
                2 => {
                    if v6 {
                        push(at.clone(), "VRRPv2 does not support IPv6".into());
                    }
                    if i.advert_int.subsec_nanos() != 0 || i.advert_int < Duration::from_secs(1) {
                        push(at.clone(), format!("advert_int {:?} must be whole seconds with VRRPv2", i.advert_int));
                    }
                    if i.advert_int > Duration::from_secs(255) {
                        push(at.clone(), "advert_int above 255 s".into());
                    }
                }
                3 => {
                    if i.auth_pass.is_some() {
                        push(at.clone(), "authentication requires VRRPv2".into());
                    }
                    if i.advert_int < Duration::from_millis(10) || i.advert_int > Duration::from_millis(40_950) {
                        push(at.clone(), "advert_int must be 0.01..40.95 s".into());
                    }
                    if i.advert_int.as_micros() % 10_000 != 0 {
                        push(at.clone(), "advert_int must be a multiple of 10 ms (centiseconds)".into());
                    }
                }
                v => push(at.clone(), format!("version {v} (must be 2 or 3)")),
            }
            if let Some(src) = i.unicast_src_ip {
                if src.is_ipv6() != v6 {
                    push(at.clone(), "unicast_src_ip family differs from VIPs".into());
                }
            }
            if i.unicast_peer.iter().any(|a| a.is_ipv6() != v6) {
                push(at.clone(), "unicast_peer family differs from VIPs".into());
            }
            for t in &i.track_script {
                if !self.scripts.iter().any(|s| s.name == t.name) {
                    push(at.clone(), format!("track_script {} is not a vrrp_script", t.name));
                }
            }
            for t in i.track_script.iter().chain(&i.track_interface) {
                if t.weight.is_some_and(|w| !(-254..=254).contains(&w)) {
                    push(at.clone(), format!("weight of {} outside -254..254", t.name));
                }
            }
        }
        for s in &self.scripts {
            let at = match &s.loc {
                Some(l) => format!("{l} (vrrp_script {})", s.name),
                None => format!("script {}", s.name),
            };
            if s.script.trim().is_empty() {
                push(at.clone(), "empty script".into());
            }
            if s.interval.is_zero() {
                push(at.clone(), "interval must be positive".into());
            }
            if !(-254..=254).contains(&s.weight) {
                push(at.clone(), "weight outside -254..254".into());
            }
            if s.rise == 0 || s.fall == 0 {
                push(at, "rise and fall must be at least 1".into());
            }
        }
        for g in &self.sync_groups {
            let at = match &g.loc {
                Some(l) => format!("{l} (vrrp_sync_group {})", g.name),
                None => format!("sync group {}", g.name),
            };
            for m in &g.group {
                if !self.instances.iter().any(|i| &i.name == m) {
                    push(at.clone(), format!("member {m} is not a vrrp_instance"));
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests;
