//! The drill's test report (`rempart-lab drill --report FILE`): the reference deployment's
//! hand-filled "PV de tests", written from measurements instead. For each step of the drill: what
//! was expected, what was measured (the step's own report line), pass or fail, and how long it
//! took; a step the drill did not reach (it stops at the first failure) is a failed line, not a
//! missing one. Markdown in FILE, the same as JSON in FILE with the extension `.json`.
//!
//! A step may measure several things the reference's table has as separate lines (the VIP
//! failover, the client-visible RTO, the failback; the backups' RPO, the restore test, the
//! restore in place; the directory through the VIP): it returns them as [`Check`]s through
//! [`finish`], which appends one line per check to the step's detail (and fails the step when
//! one fails, so the drill stops and exits 1 as for any failure). The report gives each check its
//! own row under its step, with its own expected value, measurement and result.
//!
//! ```text
//!   drill(lab, steps) ──► [Line] ──► markdown() ──► FILE       (table: step | expected | measured | result | s)
//!                                └─► json()     ──► FILE.json  ({"steps": [{step, expected, measured, result, seconds,
//!                                                                           checks: [{check, expected, measured, result}]}]})
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{Line, Outcome};

/// What the reference deployment's table expects of each drill step (by step name).
#[must_use]
pub fn expected(step: &str) -> &'static str {
    match step {
        "reachability" => {
            "every host reaches every other on the management network, main and backup on the replication \
             network (the reference's \"each host reachable\"; ssh is the backup step's transport)"
        }
        "vrrp-failover" => {
            "the VIP on main only; main's daemon killed: the VIP on backup and a client connects through it \
             (the reference claimed < 6 s)"
        }
        "replication" => {
            "acknowledged writes on main all read back on backup after main's replica is killed and backup \
             promoted: 0 lost (RPO of the volume)"
        }
        "backup-restore" => {
            "backup init, create, list and restore over ssh with the reference retention; check and restore \
             test pass; the restored tree equals the original"
        }
        "node-failover" => {
            "rempart-node on main and backup, slapd on the replicated volume, the client writing through the \
             VIP: kill -9 of main's daemon, backup takes over with 0 acknowledged entries lost; main's daemon \
             back as Secondary; backup isolated: no second primary, one node serving after the heal"
        }
        "alerts" => {
            "each fault (main's rempart-vrrp killed, the replication link cut, the witness killed) brings its \
             alert to the webhook, routed as deploy/alertmanager says, within its for: plus two scrape \
             intervals; each resolves after the recovery"
        }
        _ => "the step succeeds",
    }
}

/// One thing a step measured, with what was expected of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name (a row of the report under its step).
    pub name: String,
    /// What was expected, with its threshold.
    pub expected: String,
    /// What was measured.
    pub measured: String,
    /// Whether the measurement meets the expectation.
    pub pass: bool,
}

impl Check {
    /// A check; `pass` says whether `measured` meets `expected`.
    pub fn new(name: &str, expected: impl Into<String>, measured: impl Into<String>, pass: bool) -> Check {
        Check { name: name.to_string(), expected: expected.into(), measured: measured.into(), pass }
    }
}

/// How a check's line starts in a step's detail.
const CHECK_MARK: &str = "\n  ↳ ";

fn clean(t: &str) -> String {
    t.replace(['\t', '\n'], " ")
}

/// A step's result: `summary` and one line per check (`  ↳ name<TAB>measured<TAB>pass|FAIL<TAB>expected`),
/// `Ok` if every check passed, else the same text as the error (the drill's line then fails and
/// the report still shows each check).
pub fn finish(summary: &str, checks: &[Check]) -> anyhow::Result<String> {
    let mut d = clean(summary);
    for c in checks {
        let _ = write!(
            d,
            "{CHECK_MARK}{}\t{}\t{}\t{}",
            clean(&c.name),
            clean(&c.measured),
            if c.pass { "pass" } else { "FAIL" },
            clean(&c.expected)
        );
    }
    if checks.iter().all(|c| c.pass) {
        Ok(d)
    } else {
        Err(anyhow::anyhow!(d))
    }
}

/// A line's detail split into its summary and its checks (see [`finish`]).
#[must_use]
pub fn split(detail: &str) -> (&str, Vec<Check>) {
    let mut parts = detail.split(CHECK_MARK);
    let summary = parts.next().unwrap_or("");
    let checks = parts
        .map(|p| {
            let mut f = p.splitn(4, '\t');
            let (name, measured, result, expected) =
                (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
            Check::new(name, expected, measured, result == "pass")
        })
        .collect();
    (summary, checks)
}

/// One row: (step, expected, measured, passed, seconds, checks); `None` seconds: not run.
type Row<'a> = (&'a str, &'static str, String, bool, Option<f64>, Vec<Check>);

fn rows<'a>(lines: &'a [Line], steps: &'a [String]) -> Vec<Row<'a>> {
    let mut out: Vec<Row<'a>> = lines
        .iter()
        .map(|l| {
            let (summary, checks) = split(&l.detail);
            (l.step.as_str(), expected(&l.step), summary.to_string(), l.outcome == Outcome::Ok, Some(l.seconds), checks)
        })
        .collect();
    for s in steps.iter().skip(lines.len()) {
        out.push((s.as_str(), expected(s), "not run: an earlier step failed".to_string(), false, None, Vec::new()));
    }
    out
}

/// The report as Markdown. `steps`: the names of every step the drill was given, in order.
#[must_use]
pub fn markdown(lines: &[Line], steps: &[String], lab: &str) -> String {
    let rows = rows(lines, steps);
    let passed = rows.iter().filter(|r| r.3).count();
    let checks = rows.iter().map(|r| r.5.len()).sum::<usize>();
    let checks_passed = rows.iter().flat_map(|r| &r.5).filter(|c| c.pass).count();
    let mut s = format!(
        "# rempart drill report\n\nLab `{lab}`: {passed} of {} steps passed; {checks_passed} of {checks} checks \
         within them passed.\n\n| step | expected | measured | result | seconds |\n|---|---|---|---|---|\n",
        rows.len()
    );
    let cell = |t: &str| t.replace('|', "\\|").replace('\n', " ");
    let result = |ok: bool| if ok { "pass" } else { "**FAIL**" };
    for (step, exp, measured, ok, secs, checks) in &rows {
        let _ = writeln!(
            s,
            "| {step} | {} | {} | {} | {} |",
            cell(exp),
            cell(measured),
            result(*ok),
            secs.map_or_else(|| "–".to_string(), |x| format!("{x:.2}"))
        );
        for c in checks {
            let _ = writeln!(
                s,
                "| ↳ {} | {} | {} | {} | |",
                cell(&c.name),
                cell(&c.expected),
                cell(&c.measured),
                result(c.pass)
            );
        }
    }
    s.push_str(
        "\nThe `alerts` step times each fault's alert at the webhook and its resolution. The backup faults \
         (damaged pack, repository host's sshd stopped), the VRRP check and the split brain are timed by \
         `lab/tests/monitoring_lab.rs` (docs/monitoring.md).\n",
    );
    s
}

/// The report as JSON: `{"lab", "passed", "total", "steps": [{"step", "expected", "measured",
/// "result": "pass"|"fail", "seconds", "checks": [{"check", "expected", "measured", "result"}]}]}`.
#[must_use]
pub fn json(lines: &[Line], steps: &[String], lab: &str) -> serde_json::Value {
    let rows = rows(lines, steps);
    serde_json::json!({
        "lab": lab,
        "passed": rows.iter().filter(|r| r.3).count(),
        "total": rows.len(),
        "steps": rows.iter().map(|(step, exp, measured, ok, secs, checks)| serde_json::json!({
            "step": step,
            "expected": exp,
            "measured": measured,
            "result": if *ok { "pass" } else { "fail" },
            "seconds": secs,
            "checks": checks.iter().map(|c| serde_json::json!({
                "check": c.name,
                "expected": c.expected,
                "measured": c.measured,
                "result": if c.pass { "pass" } else { "fail" },
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Writes the Markdown report to `path` and the JSON one beside it (`.json`); returns both paths.
pub fn write(path: &Path, lines: &[Line], steps: &[String], lab: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let json_path = path.with_extension("json");
    std::fs::write(path, markdown(lines, steps, lab)).with_context(|| format!("writing {}", path.display()))?;
    let text = serde_json::to_string_pretty(&json(lines, steps, lab)).context("encoding the JSON report")?;
    std::fs::write(&json_path, text + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    Ok((path.to_path_buf(), json_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: &str, ok: bool, detail: &str) -> Line {
        Line {
            step: step.into(),
            outcome: if ok { Outcome::Ok } else { Outcome::Failed },
            detail: detail.into(),
            seconds: 1.5,
        }
    }

    #[test]
    fn a_failed_step_and_the_steps_after_it_are_failed_lines() {
        let steps: Vec<String> = ["reachability", "vrrp-failover", "replication"].map(String::from).into();
        let lines = [line("reachability", true, "14 host pairs"), line("vrrp-failover", false, "VIP | not moved")];
        let md = markdown(&lines, &steps, "lab1");
        assert!(md.contains("Lab `lab1`: 1 of 3 steps passed; 0 of 0 checks within them passed."), "{md}");
        assert!(md.contains("| reachability | every host reaches"), "{md}");
        assert!(md.contains("| 14 host pairs | pass | 1.50 |"), "{md}");
        assert!(md.contains("| VIP \\| not moved | **FAIL** | 1.50 |"), "{md}");
        assert!(md.contains("| replication | acknowledged writes"), "{md}");
        assert!(md.contains("| not run: an earlier step failed | **FAIL** | – |"), "{md}");
        let j = json(&lines, &steps, "lab1");
        assert_eq!(j["passed"], 1);
        assert_eq!(j["total"], 3);
        assert_eq!(j["steps"][1]["result"], "fail");
        assert_eq!(j["steps"][1]["measured"], "VIP | not moved");
        assert_eq!(j["steps"][2]["seconds"], serde_json::Value::Null);
        assert_eq!(j["steps"][0]["checks"], serde_json::json!([]));
        let dir = std::env::temp_dir().join(format!("rempart-report-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (m, js) = write(&dir.join("report.md"), &lines, &steps, "lab1").unwrap();
        assert_eq!(std::fs::read_to_string(m).unwrap(), md);
        let back: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(js).unwrap()).unwrap();
        assert_eq!(back, j);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checks_are_rows_of_their_own_and_one_failed_check_fails_the_step() {
        let good = [
            Check::new("failover", "VIP on backup < 6 s", "3.61 s", true),
            Check::new("failback", "VIP back on main < 6 s", "1.20 s", true),
        ];
        let d = finish("VIP main → backup", &good).unwrap();
        assert_eq!(split(&d), ("VIP main → backup", good.to_vec()));
        let bad = [good[0].clone(), Check::new("client RTO", "< 6 s", "9.0\ts\n", false)];
        let e = finish("VIP | moved", &bad).unwrap_err().to_string();
        let (summary, checks) = split(&e);
        assert_eq!(summary, "VIP | moved");
        assert_eq!(checks[1], Check::new("client RTO", "< 6 s", "9.0 s ", false), "tabs and newlines are cleaned");

        let steps: Vec<String> = ["vrrp-failover", "replication"].map(String::from).into();
        let lines = [Line { step: "vrrp-failover".into(), outcome: Outcome::Failed, detail: e, seconds: 2.0 }];
        let md = markdown(&lines, &steps, "lab2");
        assert!(md.contains("0 of 2 steps passed; 1 of 2 checks within them passed."), "{md}");
        assert!(md.contains("| vrrp-failover | the VIP on main only"), "{md}");
        assert!(
            md.contains(
                "| VIP \\| moved | **FAIL** | 2.00 |\n| ↳ failover | VIP on backup < 6 s | 3.61 s | pass | |\n"
            ),
            "{md}"
        );
        assert!(md.contains("| ↳ client RTO | < 6 s | 9.0 s  | **FAIL** | |"), "{md}");
        let j = json(&lines, &steps, "lab2");
        assert_eq!(j["steps"][0]["measured"], "VIP | moved");
        assert_eq!(
            j["steps"][0]["checks"][1],
            serde_json::json!({"check": "client RTO", "expected": "< 6 s", "measured": "9.0 s ", "result": "fail"})
        );
        assert_eq!(j["steps"][0]["checks"][0]["result"], "pass");
    }
}
