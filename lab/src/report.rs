//! The drill's test report (`rempart-lab drill --report FILE`): the reference deployment's
//! hand-filled "PV de tests", written from measurements instead. For each step of the drill: what
//! was expected, what was measured (the step's own report line), pass or fail, and how long it
//! took; a step the drill did not reach (it stops at the first failure) is a failed line, not a
//! missing one. Markdown in FILE, the same as JSON in FILE with the extension `.json`.
//!
//! ```text
//!   drill(lab, steps) ──► [Line] ──► markdown() ──► FILE       (table: step | expected | measured | result | s)
//!                                └─► json()     ──► FILE.json  ({"steps": [{step, expected, measured, result, seconds}]})
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
        "alerts" => {
            "each fault (main's rempart-vrrp killed, the replication link cut, the witness killed) brings its \
             alert to the webhook, routed as deploy/alertmanager says, within its for: plus two scrape \
             intervals; each resolves after the recovery"
        }
        _ => "the step succeeds",
    }
}

/// One row: (step, expected, measured, passed, seconds); `None` seconds: not run.
type Row<'a> = (&'a str, &'static str, String, bool, Option<f64>);

fn rows<'a>(lines: &'a [Line], steps: &'a [String]) -> Vec<Row<'a>> {
    let mut out: Vec<Row<'a>> = lines
        .iter()
        .map(|l| (l.step.as_str(), expected(&l.step), l.detail.clone(), l.outcome == Outcome::Ok, Some(l.seconds)))
        .collect();
    for s in steps.iter().skip(lines.len()) {
        out.push((s.as_str(), expected(s), "not run: an earlier step failed".to_string(), false, None));
    }
    out
}

/// The report as Markdown. `steps`: the names of every step the drill was given, in order.
#[must_use]
pub fn markdown(lines: &[Line], steps: &[String], lab: &str) -> String {
    let rows = rows(lines, steps);
    let passed = rows.iter().filter(|r| r.3).count();
    let mut s = format!(
        "# rempart drill report\n\nLab `{lab}`: {passed} of {} steps passed.\n\n\
         | step | expected | measured | result | seconds |\n|---|---|---|---|---|\n",
        rows.len()
    );
    let cell = |t: &str| t.replace('|', "\\|").replace('\n', " ");
    for (step, exp, measured, ok, secs) in &rows {
        let _ = writeln!(
            s,
            "| {step} | {} | {} | {} | {} |",
            cell(exp),
            cell(measured),
            if *ok { "pass" } else { "**FAIL**" },
            secs.map_or_else(|| "–".to_string(), |x| format!("{x:.2}"))
        );
    }
    s.push_str(
        "\nThe `alerts` step times each fault's alert at the webhook and its resolution. The backup faults \
         (damaged pack, repository host's sshd stopped), the VRRP check and the split brain are timed by \
         `lab/tests/monitoring_lab.rs` (docs/monitoring.md).\n",
    );
    s
}

/// The report as JSON: `{"lab", "passed", "total", "steps": [{"step", "expected", "measured",
/// "result": "pass"|"fail", "seconds"}]}`.
#[must_use]
pub fn json(lines: &[Line], steps: &[String], lab: &str) -> serde_json::Value {
    let rows = rows(lines, steps);
    serde_json::json!({
        "lab": lab,
        "passed": rows.iter().filter(|r| r.3).count(),
        "total": rows.len(),
        "steps": rows.iter().map(|(step, exp, measured, ok, secs)| serde_json::json!({
            "step": step,
            "expected": exp,
            "measured": measured,
            "result": if *ok { "pass" } else { "fail" },
            "seconds": secs,
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
        assert!(md.contains("Lab `lab1`: 1 of 3 steps passed."), "{md}");
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
        let dir = std::env::temp_dir().join(format!("rempart-report-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (m, js) = write(&dir.join("report.md"), &lines, &steps, "lab1").unwrap();
        assert_eq!(std::fs::read_to_string(m).unwrap(), md);
        let back: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(js).unwrap()).unwrap();
        assert_eq!(back, j);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
