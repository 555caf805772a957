//! keepalived.conf reader.
//!
//! The file is line-oriented: `keyword args...`, optionally opening a `{ ... }` block (the brace may
//! also stand on the next line). `#` and `!` start comments; `"..."` quotes a word with spaces.
//! `include PATTERN` (with `*` and `?` in the file name, relative to the including file) splices
//! other files in. Parsing builds a tree of [`Node`]s, then [`interpret`] maps it to
//! [`super::Config`]. A keyword we do not support is a [`Warning`] with file and line; a malformed
//! file (unbalanced braces, unterminated quote, bad number or address) is a
//! [`ConfigError::Syntax`] with file, line and column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Config, ConfigError, Instance, Loc, Script, SyncGroup, Track, Vip, Warning};

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

impl Ctx {
    fn unsupported(&mut self, n: &Node, within: &str) {
        self.warnings.push(Warning {
            loc: Loc { col: 0, ..n.key.loc.clone() },
            msg: format!("unsupported keyword '{}' in {within} (ignored)", n.key.text),
        });
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
                        _ => cx.unsupported(c, "global_defs"),
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
                        _ => cx.unsupported(c, "vrrp_sync_group"),
                    }
                }
                cfg.sync_groups.push(g);
            }
            _ => cx.unsupported(n, "the top level"),
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
            "weight" => s.weight = num(arg(c, 0)?, "weight")?,
            "rise" => s.rise = num(arg(c, 0)?, "rise")?,
            "fall" => s.fall = num(arg(c, 0)?, "fall")?,
            "user" => {
                s.user = Some(name_of(c)?);
                s.group = c.args.get(1).map(|t| t.text.clone());
            }
            _ => cx.unsupported(c, "vrrp_script"),
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
                        _ => cx.unsupported(a, "authentication"),
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
                        });
                    }
                }
            }
            "unicast_src_ip" => {
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
            _ => cx.unsupported(c, "vrrp_instance"),
        }
    }
    Ok(i)
}
