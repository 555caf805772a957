//! The monitoring configuration in `deploy/` as data: alert and recording rules, their promtool
//! tests, Alertmanager's route cases, the Grafana dashboard's queries, and the metric names each
//! query uses. The tests in `lab/tests/monitoring_config.rs` check the files with the real tools
//! (promtool, amtool) and with these readers; the lab's monitoring host starts Prometheus and
//! Alertmanager on the same files.
//!
//! ```text
//!   deploy/prometheus/prometheus.yml ─┐
//!   deploy/prometheus/rules/*.yml ────┼─ load_rules ──► alerts, recorded names ─┐
//!   deploy/prometheus/tests/*.yml ────┼─ load_rule_tests ► firing / not firing  ├─► tests
//!   deploy/alertmanager/routes.tests ─┼─ parse_route_tests ► expected receivers │
//!   deploy/grafana/dashboards/*.json ─┴─ dashboard_queries ► metric_names ──────┘
//!   crates/ bins/ sources ─────────────── exported_names (the families the daemons define)
//! ```
//!
//! YAML is read as untyped values: the files belong to Prometheus, whose own tools validate them
//! fully; these readers only take out what the cross-checks need and say which file is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_yaml_ng::Value;

/// `deploy/` of this source tree.
#[must_use]
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy")
}

/// Where each alert's `runbook_url` points: `docs/emergency.md` as installed, plus an anchor.
pub const RUNBOOK_BASE: &str = "file:///usr/share/doc/rempart/emergency.md#";

/// `docs/emergency.md` of this source tree.
#[must_use]
pub fn emergency_path() -> PathBuf {
    deploy_dir().join("..").join("docs").join("emergency.md")
}

/// The lab states of the standalone daemons (`rempart-vrrp`, `rempart-repl`) a console block of
/// `docs/emergency.md` is run in (its `phase=`), by `lab/tests/monitoring_lab.rs`: the pair
/// healthy (main Primary and VRRP master, the witness up); the faults in place with their alerts
/// firing (main's rempart-vrrp killed, the replication link cut, the witness killed); after the
/// recovery, every alert resolved; a split brain (backup promoted while the link was cut, then
/// the link healed), whose blocks run in order: diagnosis, repair, verification.
pub const DOC_PHASES_STANDALONE: [&str; 4] = ["healthy", "fault", "recovered", "split-brain"];

/// The lab states of `rempart-node` (one daemon per host, the witness, the monitoring host) a
/// console block is run in, by `lab/tests/monitoring_node.rs`: maintenance on, on main (its
/// blocks turn it off); backup just gave up a take-over (slapd broken on backup, a switchover
/// from main), within its FAULT hold; after that failure, main serving again and
/// `RempartNodeTransitionFailed` firing; the witness restarted with a wrong secret, its alerts
/// firing; the right secret back, every alert resolved.
pub const DOC_PHASES_NODE: [&str; 5] =
    ["node-maintenance", "node-gave-up", "node-failed", "node-witness", "node-recovered"];

/// Every phase a console block may name: [`DOC_PHASES_STANDALONE`] then [`DOC_PHASES_NODE`]
/// (a unit test checks it is exactly both, each phase in one of them only).
pub const DOC_PHASES: [&str; 9] = [
    "healthy",
    "fault",
    "recovered",
    "split-brain",
    "node-maintenance",
    "node-gave-up",
    "node-failed",
    "node-witness",
    "node-recovered",
];

/// The hosts a command's prompt may name (`main# ...`).
pub const DOC_HOSTS: [&str; 3] = ["main", "backup", "monitoring"];

/// A command of a console block of `docs/emergency.md`, with the output it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocCommand {
    /// The anchor of its section (`main-down`, ...).
    pub section: String,
    /// The lab state it runs in (one of [`DOC_PHASES`]).
    pub phase: String,
    /// The host of its prompt.
    pub host: String,
    /// The command line, as an operator types it.
    pub command: String,
    /// The lines shown after it (`…` lines left out): each must be found, in order, in the
    /// real output ([`output_matches`]). None: the command prints nothing and must succeed.
    pub output: Vec<String>,
    /// Its line in the file (1-based).
    pub line: usize,
    /// The block says `exact`: the real output has these lines and no other (non-empty) one.
    pub exact: bool,
}

/// `docs/emergency.md` as data.
#[derive(Debug, Clone, Default)]
pub struct EmergencyDoc {
    /// The anchors of its `## ` sections (GitHub's: lower case, spaces to `-`).
    pub anchors: Vec<String>,
    /// Every command of its console blocks.
    pub commands: Vec<DocCommand>,
}

/// GitHub's anchor of a heading: lower case, spaces and `-` to `-`, other punctuation dropped.
#[must_use]
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            c if c.is_alphanumeric() => Some(c.to_ascii_lowercase()),
            ' ' | '-' => Some('-'),
            '_' => Some('_'),
            _ => None,
        })
        .collect()
}

/// Reads `docs/emergency.md`: sections, and the commands of its console blocks. Commands live
/// only in blocks opened with `` ```console phase=<phase> ``, one per line after a `host# `
/// prompt, followed by the output they show; a shell block (`sh`, `bash`, `shell`) is an error,
/// so no command escapes the test that runs them.
pub fn parse_emergency(text: &str) -> anyhow::Result<EmergencyDoc> {
    let mut doc = EmergencyDoc::default();
    let mut section = String::new();
    // Inside a fence: Some(phase) for a console block, Some("") for another block.
    let mut fence: Option<String> = None;
    let mut exact = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some(info) = line.trim_start().strip_prefix("```") {
            if fence.is_some() {
                fence = None;
                continue;
            }
            let mut words = info.split_whitespace();
            let lang = words.next().unwrap_or("");
            if matches!(lang, "sh" | "bash" | "shell" | "shell-session" | "zsh") {
                bail!("docs/emergency.md:{n}: commands go in ```console phase=... blocks (a test runs them)");
            }
            if lang == "console" {
                let words: Vec<&str> = words.collect();
                exact = words.contains(&"exact");
                let phase = words
                    .iter()
                    .find_map(|w| w.strip_prefix("phase="))
                    .with_context(|| format!("docs/emergency.md:{n}: console block without phase="))?;
                if !DOC_PHASES.contains(&phase) {
                    bail!("docs/emergency.md:{n}: phase {phase:?} is not one of {DOC_PHASES:?}");
                }
                if section.is_empty() {
                    bail!("docs/emergency.md:{n}: console block outside a ## section");
                }
                fence = Some(phase.to_string());
            } else {
                fence = Some(String::new());
            }
            continue;
        }
        match &fence {
            None => {
                if let Some(h) = line.strip_prefix("## ") {
                    section = slug(h);
                    doc.anchors.push(section.clone());
                }
            }
            Some(phase) if !phase.is_empty() => {
                let prompt = line.split_once("# ").filter(|(h, _)| DOC_HOSTS.contains(h));
                if let Some((host, cmd)) = prompt {
                    doc.commands.push(DocCommand {
                        section: section.clone(),
                        phase: phase.clone(),
                        host: host.to_string(),
                        command: cmd.trim().to_string(),
                        output: Vec::new(),
                        line: n,
                        exact,
                    });
                } else if let Some(c) = doc.commands.last_mut().filter(|c| c.line < n && c.section == section) {
                    let l = line.trim_end();
                    if !l.trim().is_empty() && l.trim() != "…" {
                        c.output.push(l.to_string());
                    }
                } else {
                    bail!("docs/emergency.md:{n}: console block line before any `host# ` prompt: {line:?}");
                }
            }
            Some(_) => {}
        }
    }
    if fence.is_some() {
        bail!("docs/emergency.md: unclosed code block");
    }
    Ok(doc)
}

/// A line as compared: whitespace collapsed, and every run of digits mixed with `.`, `:` or `-`
/// (times, dates, durations, addresses) made `0`, so that a documented output matches the real
/// one of another day. Plain integers (counts, priorities, exit codes) stay as they are.
#[must_use]
pub fn normalize_output(line: &str) -> String {
    let mut out = String::new();
    let words: Vec<&str> = line.split_whitespace().collect();
    for (k, w) in words.iter().enumerate() {
        if k > 0 {
            out.push(' ');
        }
        let chars: Vec<char> = w.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let numeric = |c: char| c.is_ascii_digit() || matches!(c, '.' | ':' | '-');
            if numeric(chars[i]) {
                let mut j = i;
                while j < chars.len() && numeric(chars[j]) {
                    j += 1;
                }
                let run = &chars[i..j];
                if run.iter().any(char::is_ascii_digit) && run.iter().any(|c| !c.is_ascii_digit()) {
                    out.push('0');
                } else {
                    out.extend(&chars[i..j]);
                }
                i = j;
            } else {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether `actual` shows the documented lines of `c`: each (normalized) is part of a line of
/// `actual` (normalized), in the documented order; with `exact`, `actual` has no other non-empty
/// line. The error names the first line not found.
pub fn doc_output_matches(c: &DocCommand, actual: &str) -> Result<(), String> {
    output_matches(&c.output, actual)?;
    let n = actual.lines().filter(|l| !l.trim().is_empty()).count();
    if c.exact && n != c.output.len() {
        return Err(format!("{} lines documented (exact), {n} printed:\n{actual}", c.output.len()));
    }
    Ok(())
}

/// Whether `line` contains the parts of `want` between its `…` (text left out of a long line,
/// such as a temporary path), in order.
fn contains_in_order(line: &str, want: &str) -> bool {
    let mut rest = line;
    for part in want.split('…').map(str::trim).filter(|p| !p.is_empty()) {
        match rest.find(part) {
            Some(k) => rest = &rest[k + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `actual` shows the documented lines: each (normalized) is part of a line of
/// `actual` (normalized), in the documented order; a `…` inside a documented line stands for
/// text left out. The error names the first line not found.
pub fn output_matches(documented: &[String], actual: &str) -> Result<(), String> {
    let lines: Vec<String> = actual.lines().map(normalize_output).collect();
    let mut at = 0;
    for d in documented {
        let want = normalize_output(d);
        match lines[at..].iter().position(|l| contains_in_order(l, &want)) {
            Some(k) => at += k + 1,
            None => return Err(format!("documented line {d:?} not found (in order) in:\n{actual}")),
        }
    }
    Ok(())
}

/// An alerting rule.
#[derive(Debug, Clone)]
pub struct AlertRule {
    /// `alert:`.
    pub name: String,
    /// `expr:`.
    pub expr: String,
    /// `labels:`.
    pub labels: BTreeMap<String, String>,
    /// `annotations:`.
    pub annotations: BTreeMap<String, String>,
    /// The rule file it is in.
    pub file: PathBuf,
}

/// A recording rule.
#[derive(Debug, Clone)]
pub struct RecordingRule {
    /// `record:`.
    pub name: String,
    /// `expr:`.
    pub expr: String,
}

/// Every rule of a directory of rule files.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Alerting rules, in file order.
    pub alerts: Vec<AlertRule>,
    /// Recording rules, in file order.
    pub recorded: Vec<RecordingRule>,
}

fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yml" || x == "yaml") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn load_yaml(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k.as_str()?.to_string(), v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Reads every `*.yml` rule file of `dir`.
pub fn load_rules(dir: &Path) -> anyhow::Result<Rules> {
    let mut rules = Rules::default();
    for file in yaml_files(dir)? {
        let doc = load_yaml(&file)?;
        let groups = doc
            .get("groups")
            .and_then(Value::as_sequence)
            .with_context(|| format!("{}: no `groups` list", file.display()))?;
        for g in groups {
            for r in g.get("rules").and_then(Value::as_sequence).into_iter().flatten() {
                let expr = str_field(r, "expr")
                    .with_context(|| format!("{}: a rule without `expr`", file.display()))?
                    .to_string();
                if let Some(name) = str_field(r, "alert") {
                    rules.alerts.push(AlertRule {
                        name: name.to_string(),
                        expr,
                        labels: string_map(r.get("labels")),
                        annotations: string_map(r.get("annotations")),
                        file: file.clone(),
                    });
                } else if let Some(name) = str_field(r, "record") {
                    rules.recorded.push(RecordingRule { name: name.to_string(), expr });
                } else {
                    bail!("{}: a rule that is neither `alert` nor `record`", file.display());
                }
            }
        }
    }
    Ok(rules)
}

/// One `alert_rule_test` case of a promtool test file.
#[derive(Debug, Clone)]
pub struct AlertCase {
    /// The test file.
    pub file: PathBuf,
    /// The test's `name`.
    pub test: String,
    /// `alertname`.
    pub alertname: String,
    /// `eval_time`, as written.
    pub eval_time: String,
    /// Whether the case expects the alert to fire (a non-empty `exp_alerts`).
    pub firing: bool,
}

/// A promtool test file: the rule files it loads (resolved against its directory) and its
/// alert cases.
#[derive(Debug, Clone)]
pub struct RuleTestFile {
    /// The file.
    pub file: PathBuf,
    /// `rule_files`, resolved.
    pub rule_files: Vec<PathBuf>,
    /// Every `alert_rule_test` case.
    pub cases: Vec<AlertCase>,
}

/// Reads every `*.yml` promtool test file of `dir`.
pub fn load_rule_tests(dir: &Path) -> anyhow::Result<Vec<RuleTestFile>> {
    let mut out = Vec::new();
    for file in yaml_files(dir)? {
        let doc = load_yaml(&file)?;
        let rule_files = doc
            .get("rule_files")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|r| dir.join(r))
            .collect();
        let mut cases = Vec::new();
        for t in doc.get("tests").and_then(Value::as_sequence).into_iter().flatten() {
            let test = str_field(t, "name").unwrap_or("(unnamed)").to_string();
            for c in t.get("alert_rule_test").and_then(Value::as_sequence).into_iter().flatten() {
                let alertname = str_field(c, "alertname")
                    .with_context(|| format!("{}: test {test:?}: a case without alertname", file.display()))?;
                let eval_time = str_field(c, "eval_time").unwrap_or("").to_string();
                let firing = c.get("exp_alerts").and_then(Value::as_sequence).is_some_and(|s| !s.is_empty());
                cases.push(AlertCase {
                    file: file.clone(),
                    test: test.clone(),
                    alertname: alertname.to_string(),
                    eval_time,
                    firing,
                });
            }
        }
        out.push(RuleTestFile { file, rule_files, cases });
    }
    Ok(out)
}

/// Parses `deploy/alertmanager/routes.tests`: `AlertName: receiver,receiver` per line, `#`
/// comments. Returns (alert, receivers) in file order.
pub fn parse_route_tests(text: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((alert, receivers)) = line.split_once(':') else {
            bail!("line {}: expected `AlertName: receiver,...`, got {line:?}", n + 1);
        };
        let receivers: Vec<String> =
            receivers.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_string).collect();
        if receivers.is_empty() {
            bail!("line {}: {alert}: no receiver", n + 1);
        }
        out.push((alert.trim().to_string(), receivers));
    }
    Ok(out)
}

/// PromQL words that are not metric names: keywords, and the aggregation operators (which may be
/// followed by `by (...)` before their parenthesis).
const KEYWORDS: [&str; 25] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names (and recorded series names) a PromQL expression reads.
///
/// A small scanner, not a parser: string literals, label matchers `{...}`, ranges `[...]` and
/// numbers are skipped, a word followed by `(` is a function or aggregation, and the label list
/// after `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` is skipped. What remains are
/// the series names. Good enough for the expressions in `deploy/`; a name it misreads shows up
/// as an unknown metric in the tests, never as a silent pass.
#[must_use]
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let b: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    let skip_to = |i: usize, close: char| -> usize {
        let mut j = i + 1;
        let mut quote = None;
        while j < b.len() {
            match (quote, b[j]) {
                (Some(_), '\\') => j += 1,
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(b[j]),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        match c {
            '"' | '\'' | '`' => {
                // A string literal: find its end.
                let mut j = i + 1;
                while j < b.len() && b[j] != c {
                    if b[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
                i = j + 1;
            }
            '{' => i = skip_to(i, '}'),
            '[' => i = skip_to(i, ']'),
            '(' if skip_list => {
                skip_list = false;
                i = skip_to(i, ')');
            }
            c if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == ':') {
                    i += 1;
                }
                let word: String = b[start..i].iter().collect();
                let mut k = i;
                while k < b.len() && b[k].is_whitespace() {
                    k += 1;
                }
                let lower = word.to_ascii_lowercase();
                if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&lower.as_str()) {
                    skip_list = true;
                } else if KEYWORDS.contains(&lower.as_str()) || b.get(k) == Some(&'(') {
                    // A keyword, or a function/aggregation name.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The metric family names the daemons define: every string literal `"rempart_…"` in the Rust
/// sources under `roots` (the registries and renderers name their families literally).
///
/// A source scan rather than a scrape, so it holds while the families move between registries;
/// the lab's monitoring test checks the same queries against the real Prometheus.
pub fn exported_names(roots: &[PathBuf]) -> anyhow::Result<BTreeSet<String>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for r in roots {
        walk(r, &mut files).with_context(|| format!("reading {}", r.display()))?;
    }
    let mut names = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        for (pos, _) in text.match_indices("\"rempart_") {
            let name: String = text[pos + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // A prefix such as "rempart_backup" followed by formatting is not a family.
            if text[pos + 1 + name.len()..].starts_with('"') {
                names.insert(name);
            }
        }
    }
    Ok(names)
}

/// Whether `series` is a sample name of one of `families`: the family itself, or a counter's
/// `_total`, or a histogram's `_bucket`/`_sum`/`_count`.
#[must_use]
pub fn is_exported(series: &str, families: &BTreeSet<String>) -> bool {
    families.contains(series)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| series.strip_suffix(s))
            .any(|base| families.contains(base) || families.contains(&format!("{base}_total")))
}

/// The `expr` of every target of every panel (also in rows' nested panels) of a Grafana
/// dashboard, with the panel's title.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    fn panels(v: &serde_json::Value, out: &mut Vec<(String, Vec<String>)>) {
        for p in v.get("panels").and_then(serde_json::Value::as_array).into_iter().flatten() {
            if p.get("type").and_then(serde_json::Value::as_str) == Some("row") {
                panels(p, out);
                continue;
            }
            let title = p.get("title").and_then(serde_json::Value::as_str).unwrap_or("(untitled)").to_string();
            let exprs = p
                .get("targets")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| t.get("expr").and_then(serde_json::Value::as_str))
                .map(str::to_string)
                .collect();
            out.push((title, exprs));
        }
    }
    let mut out = Vec::new();
    panels(dashboard, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emergency_doc_blocks_parse_and_outputs_match() {
        let text = concat!(
            "intro\n\n## Main down\n\n```console phase=fault\nmain# rempart-vrrp status\n",
            "VI_1 vrid:50 state:MASTER\n…\n  last transition: 2.5s ago\nbackup# ping -c 1 x\n```\n\n",
            "```text\nnot a command\n```\n## Split brain\n",
        );
        let d = parse_emergency(text).unwrap();
        assert_eq!(d.anchors, ["main-down", "split-brain"]);
        assert_eq!(d.commands.len(), 2);
        let c = &d.commands[0];
        assert_eq!((c.section.as_str(), c.phase.as_str(), c.host.as_str()), ("main-down", "fault", "main"));
        assert_eq!(c.command, "rempart-vrrp status");
        assert_eq!(c.output, ["VI_1 vrid:50 state:MASTER", "  last transition: 2.5s ago"]);
        assert_eq!(c.line, 6);
        assert!(d.commands[1].output.is_empty());
        // Another day's numbers, another spacing: still the same output; another state is not.
        let real = "VI_1  vrid:50 state:MASTER\n  master:192.168.50.10\n  last transition: 31.2s ago (startup)\n";
        output_matches(&c.output, real).unwrap();
        assert!(output_matches(&c.output, &real.replace("MASTER", "BACKUP")).is_err());
        // Order matters.
        let swapped = vec![c.output[1].clone(), c.output[0].clone()];
        assert!(output_matches(&swapped, real).is_err());
        // Commands outside console blocks with a phase are refused.
        assert!(parse_emergency("## A\n```sh\nrm -rf /\n```\n").is_err());
        assert!(parse_emergency("## A\n```console\nmain# true\n```\n").is_err());
        assert!(parse_emergency("## A\n```console phase=later\nmain# true\n```\n").is_err());
        assert!(parse_emergency("## A\n```console phase=fault\noutput first\n```\n").is_err());
        assert_eq!(slug("Backup failed or too old"), "backup-failed-or-too-old");
        // `exact`: no line beyond the documented ones.
        let d = parse_emergency("## A\n```console phase=recovered exact\nmonitoring# amtool x\nAlertname State\n```\n")
            .unwrap();
        let c = &d.commands[0];
        assert!(c.exact && !d.commands.is_empty());
        doc_output_matches(c, "Alertname   State  \n").unwrap();
        assert!(doc_output_matches(c, "Alertname State\nInstanceDown active\n").is_err());
        assert!(!parse_emergency(text).unwrap().commands[0].exact);
        assert_eq!(normalize_output("a  2026-12-07 20:01:02 UTC -1 --run-dir 150"), "a 0 0 UTC 0 --run-dir 150");
        // A `…` inside a line leaves text out; the parts around it must still be there, in order.
        let long = "  gave up: start failed: `mkdir -p /tmp/x/mnt` failed (exit status: 1): bad type (held 2.9s more)";
        output_matches(&["gave up: start failed: … failed (exit status: 1): bad type (held 1.0s more)".into()], long)
            .unwrap();
        assert!(output_matches(&["gave up: … (exit status: 2): bad type".into()], long).is_err());
        assert!(output_matches(&["bad type … gave up:".into()], long).is_err());
        // Counts are compared as they are.
        assert!(output_matches(&["1 received".to_string()], "1 packets transmitted, 0 received").is_err());
    }

    #[test]
    fn every_block_of_emergency_md_is_run_by_exactly_one_test() {
        // The two tests' phase lists are disjoint and make DOC_PHASES.
        for p in DOC_PHASES {
            let n = DOC_PHASES_STANDALONE.iter().chain(&DOC_PHASES_NODE).filter(|q| **q == p).count();
            assert_eq!(n, 1, "{p:?} is in {n} of the two tests' phase lists");
        }
        assert_eq!(DOC_PHASES.len(), DOC_PHASES_STANDALONE.len() + DOC_PHASES_NODE.len());
        // Every block of the real document names one of them (the parser refuses any other).
        let doc = parse_emergency(&std::fs::read_to_string(emergency_path()).unwrap()).unwrap();
        for c in &doc.commands {
            let standalone = DOC_PHASES_STANDALONE.contains(&c.phase.as_str());
            let node = DOC_PHASES_NODE.contains(&c.phase.as_str());
            assert!(standalone != node, "docs/emergency.md:{}: phase {:?}", c.line, c.phase);
        }
        // rempart-node's sections have their commands (each of its phases is used).
        for p in DOC_PHASES_NODE {
            assert!(doc.commands.iter().any(|c| c.phase == p), "no command of docs/emergency.md in phase {p:?}");
        }
        assert!(parse_emergency("## A\n```console phase=node-later\nmain# true\n```\n").is_err());
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn metric_names_skips_functions_labels_ranges_numbers_and_keywords() {
        assert_eq!(
            metric_names(r#"sum by (vrid) (rempart_vrrp_state{host=~"main|b(a)"} == bool 2)"#),
            set(&["rempart_vrrp_state"])
        );
        assert_eq!(
            metric_names("histogram_quantile(0.99, sum by (host, resource, le) (rate(x_bucket[5m]))) * 1e5"),
            set(&["x_bucket"])
        );
        assert_eq!(
            metric_names("a > 0 and deriv(b[10m]) >= 0 unless on (host) c offset 5m or vrid:d:sum"),
            set(&["a", "b", "c", "vrid:d:sum"])
        );
        assert_eq!(metric_names("time() - ts > 4500"), set(&["ts"]));
        assert_eq!(metric_names(r#"absent(m) or label_replace(n, "x", "$1", "y", "(.*)")"#), set(&["m", "n"]));
        assert_eq!(metric_names("sum without(instance) (m) / ignoring(a, b) group_left(c) n"), set(&["m", "n"]));
    }

    #[test]
    fn exported_accepts_counter_and_histogram_sample_names() {
        let f = set(&["rempart_vrrp_become_master", "rempart_repl_split_brains_total", "h_seconds"]);
        assert!(is_exported("rempart_vrrp_become_master_total", &f));
        assert!(is_exported("rempart_repl_split_brains_total", &f));
        assert!(is_exported("h_seconds_bucket", &f));
        assert!(!is_exported("rempart_vrrp_become_backup_total", &f));
        assert!(!is_exported("h_seconds_total_bucket", &f));
    }

    #[test]
    fn route_tests_parse_and_reject_lines_without_receivers() {
        let r = parse_route_tests("# c\nA: x\n\nB: x, y # why\n").unwrap();
        assert_eq!(r, vec![("A".into(), vec!["x".into()]), ("B".into(), vec!["x".into(), "y".into()])]);
        assert!(parse_route_tests("A x").unwrap_err().to_string().contains("line 1"));
        assert!(parse_route_tests("A:").is_err());
    }
}
