//! keepalived.conf reader.
//!
//! The file is line-oriented: `keyword args...`, optionally opening a `{ ... }` block (the brace may
//! also stand on the next line). `#` and `!` start comments; `"..."` quotes a word with spaces.
//! `include PATTERN` (with `*` and `?` in the file name, relative to the including file) splices
//! other files in. Parsing builds a tree of [`Node`]s, then [`interpret`] maps it to
//! [`super::Config`]. A keyword we do not act on is a [`Warning`] with file and line, of one of
//! three kinds ([`WarningKind`]): a keepalived keyword that does not change failover (e-mail,
//! SNMP, process tuning: ignored), a keepalived feature we do not implement that does
//! (`use_vmac`, `track_file`, `virtual_routes`, ...: unsupported), or no keepalived keyword at all
//! in that place (`priorty`, `vrrp_instanse`: unknown). [`super::load_with`] makes the last two
//! errors unless `--lenient` (issue 14: they were warnings, and a misspelt `vrrp_instanse` gave a
//! valid configuration with no instance). A malformed file (unbalanced braces, unterminated
//! quote, bad number or address) is a [`ConfigError::Syntax`] with file, line and column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Config, ConfigError, Instance, Loc, Script, SyncGroup, Track, Vip, Warning, WarningKind};

/// A word with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Text (quotes removed).
    pub text: String,
    /// Position.
    pub loc: Loc,
    /// Was quoted (a quoted `{` is a word, not a brace).
    pub quoted: bool,
}

/// A statement: keyword, arguments and an optional block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Keyword.
    pub key: Token,
    /// Arguments on the same line.
    pub args: Vec<Token>,
    /// Block contents, when followed by `{ ... }`.
    pub children: Option<Vec<Node>>,
}

const MAX_INCLUDE_DEPTH: usize = 16;

fn syntax(loc: Loc, msg: impl Into<String>) -> ConfigError {
    ConfigError::Syntax { loc, msg: msg.into() }
}

fn tokenize_line(file: &Path, lineno: usize, line: &str) -> Result<Vec<Token>, ConfigError> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        let col = i + 1;
        let loc = Loc { file: file.to_path_buf(), line: lineno, col };
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' || c == '!' {
            break;
        } else if c == '{' || c == '}' {
            out.push(Token { text: c.to_string(), loc, quoted: false });
            i += 1;
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(syntax(loc, "unterminated quoted string")),
                    Some((_, '"')) => {
                        i += 1;
                        break;
                    }
                    Some((_, ch)) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(Token { text: s, loc, quoted: true });
        } else {
            let mut s = String::new();
            while let Some((_, ch)) = chars.get(i) {
                if ch.is_whitespace() || matches!(ch, '{' | '}' | '#' | '!' | '"') {
                    break;
                }
                s.push(*ch);
                i += 1;
            }
            out.push(Token { text: s, loc, quoted: false });
        }
    }
    Ok(out)
}

fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&pat[1..], s) || (!s.is_empty() && glob_match(pat, &s[1..])),
        (Some(b'?'), Some(_)) => glob_match(&pat[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob_match(&pat[1..], &s[1..]),
        _ => false,
    }
}

fn resolve_include(from: &Path, pattern: &Token) -> Result<Vec<PathBuf>, ConfigError> {
    let base = from.parent().unwrap_or(Path::new("."));
    let p = Path::new(&pattern.text);
    let p = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(vec![p]);
    }
    let dir = p.parent().unwrap_or(Path::new("."));
    let rd = std::fs::read_dir(dir).map_err(|source| ConfigError::Io { file: dir.to_path_buf(), source })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| glob_match(name.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

/// Parses a file (and its includes) into a tree.
pub fn parse_tree(path: &Path) -> Result<Vec<Node>, ConfigError> {
    parse_tree_depth(path, 0)
}

fn parse_tree_depth(path: &Path, depth: usize) -> Result<Vec<Node>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { file: path.to_path_buf(), source })?;
    parse_str_depth(&text, path, depth)
}

/// Parses text as if it were the file `path` (includes are resolved relative to it).
pub fn parse_str(text: &str, path: &Path) -> Result<Vec<Node>, ConfigError> {
    parse_str_depth(text, path, 0)
}

fn parse_str_depth(text: &str, path: &Path, depth: usize) -> Result<Vec<Node>, ConfigError> {
    // Stack of open blocks: (node under construction, its children so far).
    let mut stack: Vec<(Node, Vec<Node>)> = Vec::new();
    let mut top: Vec<Node> = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let toks = tokenize_line(path, idx + 1, line)?;
        let mut line_node_open = false;
        for tok in toks {
            let current = match stack.last_mut() {
                Some((_, c)) => c,
                None => &mut top,
            };
            match tok.text.as_str() {
                "{" if !tok.quoted => {
                    let Some(node) = current.pop() else {
                        return Err(syntax(tok.loc, "'{' without a keyword before it"));
                    };
                    if node.children.is_some() {
                        return Err(syntax(tok.loc, "second '{' for the same keyword"));
                    }
                    stack.push((node, Vec::new()));
                    line_node_open = false;
                }
                "}" if !tok.quoted => {
                    let Some((mut node, children)) = stack.pop() else {
                        return Err(syntax(tok.loc, "unexpected '}' (no block is open)"));
                    };
                    node.children = Some(children);
                    match stack.last_mut() {
                        Some((_, c)) => c.push(node),
                        None => top.push(node),
                    }
                    line_node_open = false;
                }
                _ => {
                    if line_node_open {
                        if let Some(n) = current.last_mut() {
                            n.args.push(tok);
                        }
                    } else {
                        // An `include` is resolved at the end of its line.
                        current.push(Node { key: tok, args: Vec::new(), children: None });
                        line_node_open = true;
                    }
                }
            }
        }
        // Resolve an include on this line.
        let current = match stack.last_mut() {
            Some((_, c)) => c,
            None => &mut top,
        };
        if line_node_open && current.last().is_some_and(|n| n.key.text == "include" && n.children.is_none()) {
            if let Some(inc) = current.pop() {
                let Some(pat) = inc.args.first() else {
                    return Err(syntax(inc.key.loc, "include needs a file name"));
                };
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(syntax(pat.loc.clone(), "includes nested too deeply"));
                }
                for f in resolve_include(path, pat)? {
                    let nodes = parse_tree_depth(&f, depth + 1)?;
                    current.extend(nodes);
                }
            }
        }
    }
    if let Some((node, _)) = stack.pop() {
        return Err(syntax(node.key.loc, format!("block '{}' is never closed", node.key.text)));
    }
    Ok(top)
}

/// Parses a keepalived.conf file into a [`Config`] (not yet validated) and warnings.
pub fn parse_file(path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
    let tree = parse_tree(path)?;
    interpret(&tree)
}

/// Parses keepalived.conf text (as file `path`) into a [`Config`] and warnings.
pub fn parse(text: &str, path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
    let tree = parse_str(text, path)?;
    interpret(&tree)
}

struct Ctx {
    warnings: Vec<Warning>,
}

/// Where a keyword stands, for the tables below and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Top,
    Global,
    Script,
    Instance,
    SyncGroup,
    Auth,
}

impl Block {
    fn name(self) -> &'static str {
        match self {
            Block::Top => "the top level",
            Block::Global => "global_defs",
            Block::Script => "vrrp_script",
            Block::Instance => "vrrp_instance",
            Block::SyncGroup => "vrrp_sync_group",
            Block::Auth => "authentication",
        }
    }

    /// Keywords we act on here (for "did you mean").
    fn supported(self) -> &'static [&'static str] {
        match self {
            Block::Top => &["global_defs", "vrrp_script", "vrrp_instance", "vrrp_sync_group", "include"],
            Block::Global => &["router_id", "vrrp_version", "script_user", "enable_script_security"],
            Block::Script => &["script", "interval", "timeout", "weight", "rise", "fall", "user"],
            Block::Instance => &[
                "state",
                "interface",
                "virtual_router_id",
                "priority",
                "advert_int",
                "version",
                "nopreempt",
                "preempt",
                "preempt_delay",
                "accept",
                "no_accept",
                "authentication",
                "virtual_ipaddress",
                "unicast_src_ip",
                "mcast_src_ip",
                "unicast_peer",
                "track_interface",
                "track_script",
                "notify_master",
                "notify_backup",
                "notify_fault",
                "notify_stop",
                "notify",
                "garp_master_delay",
                "garp_master_repeat",
                "garp_master_refresh",
            ],
            Block::SyncGroup => &["group"],
            Block::Auth => &["auth_type", "auth_pass"],
        }
    }

    /// keepalived 2.2.7 keywords (keepalived.conf(5)) we ignore because they do not change which
    /// router is master nor what becoming master does: notifications by e-mail, SNMP, D-Bus,
    /// process and socket tuning, GARP pacing.
    fn harmless(self) -> &'static [&'static str] {
        match self {
            Block::Top => &["linkbeat_interfaces", "garp_group"],
            Block::Global => &[
                "notification_email",
                "notification_email_from",
                "smtp_server",
                "smtp_helo_name",
                "smtp_connect_timeout",
                "smtp_alert",
                "smtp_alert_vrrp",
                "smtp_alert_checker",
                "no_email_faults",
                "no_checker_emails",
                "enable_snmp_vrrp",
                "enable_snmp_checker",
                "enable_snmp_rfc",
                "enable_snmp_rfcv2",
                "enable_snmp_rfcv3",
                "enable_traps",
                "snmp_socket",
                "enable_dbus",
                "dbus_service_name",
                "process_names",
                "process_name",
                "vrrp_process_name",
                "checker_process_name",
                "bfd_process_name",
                "vrrp_priority",
                "checker_priority",
                "bfd_priority",
                "vrrp_no_swap",
                "checker_no_swap",
                "bfd_no_swap",
                "vrrp_rt_priority",
                "checker_rt_priority",
                "bfd_rt_priority",
                "vrrp_rlimit_rttime",
                "checker_rlimit_rttime",
                "bfd_rlimit_rttime",
                "vrrp_cpu_affinity",
                "checker_cpu_affinity",
                "bfd_cpu_affinity",
                "umask",
                "max_auto_priority",
                "min_auto_priority_delay",
                "vrrp_netlink_cmd_rcv_bufs",
                "vrrp_netlink_cmd_rcv_bufs_force",
                "vrrp_netlink_monitor_rcv_bufs",
                "vrrp_netlink_monitor_rcv_bufs_force",
                "process_monitor_rcv_bufs",
                "process_monitor_rcv_bufs_force",
                "vrrp_rx_bufs_policy",
                "vrrp_rx_bufs_multiplier",
                "checker_log_all_failures",
                "log_unknown_vrids",
                "linkbeat_use_polling",
                "data_use_instance",
                "config_save_dir",
                "tmp_config_directory",
                "reload_check_config",
                "reload_time_file",
                "reload_repeat",
                "reload_file",
                "include_check",
                "random_seed",
                "child_wait_time",
                "instance",
                "use_pid_dir",
                "vrrp_garp_interval",
                "vrrp_gna_interval",
                "vrrp_min_garp",
                "vrrp_garp_master_refresh_repeat",
                "vrrp_garp_lower_prio_delay",
                "vrrp_garp_lower_prio_repeat",
                "disable_local_igmp",
                "lvs_flush",
                "lvs_flush_on_stop",
                "lvs_timeouts",
                "lvs_netlink_cmd_rcv_bufs",
                "lvs_netlink_cmd_rcv_bufs_force",
                "lvs_netlink_monitor_rcv_bufs",
                "lvs_netlink_monitor_rcv_bufs_force",
                "nftables_counters",
            ],
            Block::Script => &[],
            Block::Instance => &[
                "smtp_alert",
                "debug",
                "kernel_rx_buf_size",
                "linkbeat_use_polling",
                "garp_master_refresh_repeat",
                "garp_lower_prio_delay",
                "garp_lower_prio_repeat",
                "promote_secondaries",
            ],
            Block::SyncGroup => &["smtp_alert"],
            Block::Auth => &[],
        }
    }

    /// keepalived 2.2.7 keywords for features we do not implement that change failover or what
    /// it does (addresses, routes, tracking, timing, which packets count, scripts that would not
    /// run). Unknown keywords are refused just the same; this list only gives a clearer message.
    fn failover(self) -> &'static [&'static str] {
        match self {
            Block::Top => &[
                "track_file",
                "vrrp_track_file",
                "vrrp_track_process",
                "track_group",
                "bfd_instance",
                "static_ipaddress",
                "static_routes",
                "static_rules",
                "virtual_server",
                "virtual_server_group",
            ],
            Block::Global => &[
                "vrrp_mcast_group4",
                "vrrp_mcast_group6",
                "vrrp_strict",
                "vrrp_skip_check_adv_addr",
                "vrrp_check_unicast_src",
                "vrrp_higher_prio_send_advert",
                "vrrp_lower_prio_no_advert",
                "vrrp_startup_delay",
                "vrrp_down_timer_adverts",
                "vrrp_garp_master_delay",
                "vrrp_garp_master_repeat",
                "vrrp_garp_master_refresh",
                "vrrp_garp_extra_if",
                "vrrp_iptables",
                "vrrp_ipsets",
                "nftables",
                "nftables_priority",
                "nftables_ifindex",
                "default_interface",
                "dynamic_interfaces",
                "net_namespace",
                "net_namespace_ipvs",
                "namespace_with_ipsets",
                "notify_fifo",
                "notify_fifo_script",
                "vrrp_notify_fifo",
                "vrrp_notify_fifo_script",
                "vrrp_notify_priority_changes",
                "fifo_write_vrrp_states_on_reload",
                "startup_script",
                "startup_script_timeout",
                "shutdown_script",
                "shutdown_script_timeout",
                "vmac_prefix",
                "vmac_addr_prefix",
                "lvs_sync_daemon",
            ],
            Block::Script => &["init_fail"],
            Block::Instance => &[
                "use_vmac",
                "vmac_xmit_base",
                "use_vmac_addr",
                "use_ipvlan",
                "track_process",
                "track_file",
                "track_bfd",
                "virtual_routes",
                "virtual_rules",
                "virtual_ipaddress_excluded",
                "skip_check_adv_addr",
                "strict_mode",
                "lower_prio_no_advert",
                "higher_prio_send_advert",
                "unicast_ttl",
                "unicast_fault_no_peer",
                "check_unicast_src",
                "old_unicast_checksum",
                "track_src_ip",
                "native_ipv6",
                "dont_track_primary",
                "down_timer_adverts",
                "mcast_dst_ip",
                "vrf",
                "garp_extra_if",
                "notify_deleted",
                "notify_master_rx_lower_pri",
                "notify_priority_changes",
                "lvs_sync_daemon_interface",
            ],
            Block::SyncGroup => &[
                "notify_master",
                "notify_backup",
                "notify_fault",
                "notify_stop",
                "notify",
                "notify_deleted",
                "notify_priority_changes",
                "track_interface",
                "track_script",
                "track_process",
                "track_file",
                "track_bfd",
                "global_tracking",
                "sync_group_tracking_weight",
            ],
            Block::Auth => &[],
        }
    }
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Ctx {
    /// A keyword we do not act on in `within`: classified and recorded.
    fn unsupported(&mut self, n: &Node, within: Block) {
        let k = n.key.text.as_str();
        let place = within.name();
        let (kind, msg) = if within.harmless().contains(&k) {
            (WarningKind::Ignored, format!("{k}: not supported in {place}, ignored (it does not change failover)"))
        } else if within.failover().contains(&k) {
            (
                WarningKind::Unsupported,
                format!("{k}: keepalived feature not supported by rempart-vrrp in {place}; it changes failover or what failover does"),
            )
        } else if k.starts_with(['@', '$', '~']) {
            (
                WarningKind::Unknown,
                format!("{k}: keepalived conditional, parameter or sequence syntax is not supported"),
            )
        } else {
            let known = within.supported().iter().chain(within.harmless()).chain(within.failover());
            let near = known.map(|w| (distance(k, w), *w)).filter(|(d, _)| *d <= 2).min();
            let hint = near.map(|(_, w)| format!(" (did you mean {w}?)")).unwrap_or_default();
            (WarningKind::Unknown, format!("{k}: unknown keyword in {place}{hint}"))
        };
        self.warnings.push(Warning { loc: Loc { col: 0, ..n.key.loc.clone() }, msg, kind });
    }
}

fn arg(n: &Node, i: usize) -> Result<&Token, ConfigError> {
    n.args.get(i).ok_or_else(|| syntax(n.key.loc.clone(), format!("'{}' needs a value", n.key.text)))
}

fn num<T: std::str::FromStr>(t: &Token, what: &str) -> Result<T, ConfigError> {
    t.text.parse().map_err(|_| syntax(t.loc.clone(), format!("invalid {what} {:?}", t.text)))
}

fn secs(t: &Token, what: &str) -> Result<Duration, ConfigError> {
    let v: f64 = num(t, what)?;
    Duration::try_from_secs_f64(v).map_err(|_| syntax(t.loc.clone(), format!("invalid {what} {:?}", t.text)))
}

fn children(n: &Node) -> &[Node] {
    n.children.as_deref().unwrap_or(&[])
}

fn joined(n: &Node) -> Result<String, ConfigError> {
    arg(n, 0)?;
    Ok(n.args.iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" "))
}

fn name_of(n: &Node) -> Result<String, ConfigError> {
    Ok(arg(n, 0)?.text.clone())
}

fn block_loc(n: &Node) -> Option<Loc> {
    Some(Loc { col: 0, ..n.key.loc.clone() })
}

/// Maps a parsed tree to a [`Config`].
pub fn interpret(tree: &[Node]) -> Result<(Config, Vec<Warning>), ConfigError> {
    let mut cx = Ctx { warnings: Vec::new() };
    let mut cfg = Config::default();
    for n in tree {
        match n.key.text.as_str() {
            "global_defs" => {
                for c in children(n) {
                    match c.key.text.as_str() {
                        "router_id" => cfg.global.router_id = Some(name_of(c)?),
                        "vrrp_version" => cfg.global.vrrp_version = num(arg(c, 0)?, "vrrp_version")?,
                        "script_user" => {
                            cfg.global.script_user = Some(name_of(c)?);
                            cfg.global.script_group = c.args.get(1).map(|t| t.text.clone());
                        }
                        "enable_script_security" => cfg.global.enable_script_security = true,
                        _ => cx.unsupported(c, Block::Global),
                    }
                }
            }
            "vrrp_script" => cfg.scripts.push(script(&mut cx, n)?),
            "vrrp_instance" => cfg.instances.push(instance(&mut cx, n)?),
            "vrrp_sync_group" => {
                let mut g = SyncGroup { name: name_of(n)?, group: Vec::new(), loc: block_loc(n) };
                for c in children(n) {
                    match c.key.text.as_str() {
                        "group" => {
                            for m in children(c) {
                                g.group.push(m.key.text.clone());
                                g.group.extend(m.args.iter().map(|t| t.text.clone()));
                            }
                        }
                        _ => cx.unsupported(c, Block::SyncGroup),
                    }
                }
                cfg.sync_groups.push(g);
            }
            _ => cx.unsupported(n, Block::Top),
        }
    }
    Ok((cfg, cx.warnings))
}

fn script(cx: &mut Ctx, n: &Node) -> Result<Script, ConfigError> {
    let mut s = Script {
        name: name_of(n)?,
        script: String::new(),
        interval: Duration::from_secs(1),
        timeout: None,
        weight: 0,
        rise: 1,
        fall: 1,
        user: None,
        group: None,
        loc: block_loc(n),
    };
    for c in children(n) {
        match c.key.text.as_str() {
            "script" => s.script = joined(c)?,
            "interval" => s.interval = secs(arg(c, 0)?, "interval")?,
            "timeout" => s.timeout = Some(secs(arg(c, 0)?, "timeout")?),
            "weight" => {
                s.weight = num(arg(c, 0)?, "weight")?;
                if let Some(r) = c.args.get(1).filter(|a| a.text == "reverse") {
                    cx.warnings.push(Warning {
                        loc: Loc { col: 0, ..r.loc.clone() },
                        msg: "weight ... reverse: not supported by rempart-vrrp in vrrp_script; it changes failover"
                            .into(),
                        kind: WarningKind::Unsupported,
                    });
                }
            }
            "rise" => s.rise = num(arg(c, 0)?, "rise")?,
            "fall" => s.fall = num(arg(c, 0)?, "fall")?,
            "user" => {
                s.user = Some(name_of(c)?);
                s.group = c.args.get(1).map(|t| t.text.clone());
            }
            _ => cx.unsupported(c, Block::Script),
        }
    }
    Ok(s)
}

fn track_list(n: &Node) -> Result<Vec<Track>, ConfigError> {
    let mut v = Vec::new();
    for c in children(n) {
        let mut t = Track { name: c.key.text.clone(), weight: None };
        if let Some(w) = c.args.iter().position(|a| a.text == "weight") {
            let tok = c.args.get(w + 1).ok_or_else(|| syntax(c.args[w].loc.clone(), "'weight' needs a value"))?;
            t.weight = Some(num(tok, "weight")?);
        }
        v.push(t);
    }
    Ok(v)
}

fn instance(cx: &mut Ctx, n: &Node) -> Result<Instance, ConfigError> {
    let mut i = Instance::new(&name_of(n)?, "", 0);
    i.loc = block_loc(n);
    for c in children(n) {
        match c.key.text.as_str() {
            "state" => i.state = Some(name_of(c)?),
            "interface" => i.interface = name_of(c)?,
            "virtual_router_id" => i.vrid = num(arg(c, 0)?, "virtual_router_id")?,
            "priority" => i.priority = num(arg(c, 0)?, "priority")?,
            "advert_int" => i.advert_int = secs(arg(c, 0)?, "advert_int")?,
            "version" => i.version = Some(num(arg(c, 0)?, "version")?),
            "nopreempt" => i.preempt = false,
            "preempt" => i.preempt = true,
            "preempt_delay" => i.preempt_delay = secs(arg(c, 0)?, "preempt_delay")?,
            "accept" => i.accept = true,
            "no_accept" => i.accept = false,
            "authentication" => {
                let mut kind = None;
                for a in children(c) {
                    match a.key.text.as_str() {
                        "auth_type" => kind = Some(arg(a, 0)?.clone()),
                        "auth_pass" => i.auth_pass = Some(name_of(a)?),
                        _ => cx.unsupported(a, Block::Auth),
                    }
                }
                if let Some(k) = kind {
                    if k.text != "PASS" {
                        return Err(syntax(k.loc, format!("auth_type {} is not supported (only PASS)", k.text)));
                    }
                }
            }
            "virtual_ipaddress" => {
                for v in children(c) {
                    let words: Vec<&str> =
                        std::iter::once(v.key.text.as_str()).chain(v.args.iter().map(|t| t.text.as_str())).collect();
                    let (vip, ignored) = Vip::parse_with_options(&words).map_err(|e| syntax(v.key.loc.clone(), e))?;
                    i.virtual_ipaddress.push(vip);
                    for f in ignored {
                        cx.warnings.push(Warning {
                            loc: Loc { col: 0, ..v.key.loc.clone() },
                            msg: format!(
                                "virtual_ipaddress option '{f}' after {} is not supported (ignored)",
                                v.key.text
                            ),
                            kind: WarningKind::Ignored,
                        });
                    }
                }
            }
            "unicast_src_ip" | "mcast_src_ip" => {
                let t = arg(c, 0)?;
                i.unicast_src_ip =
                    Some(t.text.parse().map_err(|_| syntax(t.loc.clone(), format!("invalid address {:?}", t.text)))?);
            }
            "unicast_peer" => {
                for p in children(c) {
                    i.unicast_peer.push(
                        p.key
                            .text
                            .parse()
                            .map_err(|_| syntax(p.key.loc.clone(), format!("invalid address {:?}", p.key.text)))?,
                    );
                }
            }
            "track_interface" => i.track_interface = track_list(c)?,
            "track_script" => i.track_script = track_list(c)?,
            "notify_master" => i.notify_master = Some(joined(c)?),
            "notify_backup" => i.notify_backup = Some(joined(c)?),
            "notify_fault" => i.notify_fault = Some(joined(c)?),
            "notify_stop" => i.notify_stop = Some(joined(c)?),
            "notify" => i.notify = Some(joined(c)?),
            "garp_master_delay" => i.garp_master_delay = secs(arg(c, 0)?, "garp_master_delay")?,
            "garp_master_repeat" => i.garp_master_repeat = num(arg(c, 0)?, "garp_master_repeat")?,
            "garp_master_refresh" => {
                let d = secs(arg(c, 0)?, "garp_master_refresh")?;
                i.garp_master_refresh = (!d.is_zero()).then_some(d);
            }
            _ => cx.unsupported(c, Block::Instance),
        }
    }
    Ok(i)
}
