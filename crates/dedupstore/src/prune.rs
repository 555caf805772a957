//! Borg 1.2's prune rules, exactly (tested against borg 1.2.4 itself).
//!
//! ```text
//! candidates (glob) ──► checkpoints aside ──► keep-within ──► secondly(last) ► minutely ► hourly
//!                                                          ► daily ► weekly ► monthly ► yearly
//! ```
//! Each rule walks the archives newest first and takes the newest archive of each period (local
//! time) that no earlier rule kept, until it has `n`; if it runs out of archives first, the oldest
//! archive is kept too (`[oldest]`). Checkpoints never count: the newest one survives only if it is
//! newer than every normal archive.

use crate::error::{Error, Result};
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use std::collections::HashMap;

/// Retention rules (`None` = rule not given; negative = unlimited).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneRules {
    /// `--keep-within` (e.g. `2d`).
    pub within: Option<String>,
    /// `--keep-secondly` / `--keep-last`.
    pub secondly: Option<i64>,
    /// `--keep-minutely`.
    pub minutely: Option<i64>,
    /// `--keep-hourly`.
    pub hourly: Option<i64>,
    /// `--keep-daily`.
    pub daily: Option<i64>,
    /// `--keep-weekly`.
    pub weekly: Option<i64>,
    /// `--keep-monthly`.
    pub monthly: Option<i64>,
    /// `--keep-yearly`.
    pub yearly: Option<i64>,
}

impl PruneRules {
    /// Whether any rule is set (borg refuses to prune without one).
    pub fn any(&self) -> bool {
        self.within.is_some()
            || [self.secondly, self.minutely, self.hourly, self.daily, self.weekly, self.monthly, self.yearly]
                .iter()
                .any(Option::is_some)
    }
}

/// Parses borg's interval: an integer and one of `H d w m y` (m = 31 days, y = 365 days).
pub fn parse_interval(s: &str) -> Result<Duration> {
    let bad = || Error::InvalidArgument(format!("interval {s:?}: expected e.g. 2d, 12H, 1y"));
    let (num, unit) = s.split_at(s.len().checked_sub(1).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(Error::InvalidArgument(format!("interval {s:?}: must be a number greater than 0")));
    }
    let hours = match unit {
        "H" => 1,
        "d" => 24,
        "w" => 24 * 7,
        "m" => 24 * 31,
        "y" => 24 * 365,
        _ => return Err(bad()),
    };
    Ok(Duration::hours(n * hours))
}

/// An archive as prune sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneArchive {
    /// Name.
    pub name: String,
    /// Time (UTC).
    pub time: DateTime<Utc>,
}

/// Why an archive is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepReason {
    /// Rule name (`within`, `secondly`, …, `daily[oldest]`, `checkpoint`).
    pub rule: String,
    /// Position within the rule (1-based).
    pub n: usize,
}

/// The decision for every candidate archive, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// (archive, `Some(reason)` if kept, `None` if to be deleted), newest first.
    pub decisions: Vec<(PruneArchive, Option<KeepReason>)>,
}

impl PrunePlan {
    /// Names of archives to delete.
    pub fn to_delete(&self) -> Vec<&str> {
        self.decisions.iter().filter(|(_, k)| k.is_none()).map(|(a, _)| a.name.as_str()).collect()
    }
    /// Names of archives kept.
    pub fn kept(&self) -> Vec<&str> {
        self.decisions.iter().filter(|(_, k)| k.is_some()).map(|(a, _)| a.name.as_str()).collect()
    }
}

/// Borg's checkpoint names: `*.checkpoint` and `*.checkpoint.N`.
pub fn is_checkpoint(name: &str) -> bool {
    if name.ends_with(".checkpoint") {
        return true;
    }
    if let Some(pos) = name.rfind(".checkpoint.") {
        let tail = &name[pos + ".checkpoint.".len()..];
        return !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit());
    }
    false
}

const PATTERNS: [(&str, &str); 7] = [
    ("secondly", "%Y-%m-%d %H:%M:%S"),
    ("minutely", "%Y-%m-%d %H:%M"),
    ("hourly", "%Y-%m-%d %H"),
    ("daily", "%Y-%m-%d"),
    ("weekly", "%G-%V"),
    ("monthly", "%Y-%m"),
    ("yearly", "%Y"),
];

/// Computes the plan. `archives` are the candidates (already filtered by `--glob-archives`);
/// `to_local` converts to local wall-clock time (borg uses the machine's local time zone).
pub fn prune_plan(
    archives: &[PruneArchive],
    rules: &PruneRules,
    now: DateTime<Utc>,
    to_local: &dyn Fn(DateTime<Utc>) -> NaiveDateTime,
) -> Result<PrunePlan> {
    if !rules.any() {
        return Err(Error::InvalidArgument(
            "at least one of the --keep-within, --keep-last, --keep-secondly, --keep-minutely, \
             --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly or --keep-yearly settings \
             must be specified"
                .into(),
        ));
    }
    // Newest first; a stable sort keeps the given order among equal times, like Python's.
    let mut all: Vec<(usize, &PruneArchive)> = archives.iter().enumerate().collect();
    all.sort_by_key(|a| std::cmp::Reverse(a.1.time));
    let checkpoints: Vec<usize> = all.iter().filter(|(_, a)| is_checkpoint(&a.name)).map(|(i, _)| *i).collect();
    let mut kept: HashMap<usize, KeepReason> = HashMap::new();
    if let (Some(first), Some(cp)) = (all.first(), checkpoints.first()) {
        if first.0 == *cp {
            kept.insert(*cp, KeepReason { rule: "checkpoint".into(), n: 1 });
        }
    }
    let normal: Vec<(usize, &PruneArchive)> = all.iter().filter(|(_, a)| !is_checkpoint(&a.name)).copied().collect();
    if let Some(w) = &rules.within {
        let target = now - parse_interval(w)?;
        for (n, (i, _)) in normal.iter().filter(|(_, a)| a.time > target).enumerate() {
            kept.insert(*i, KeepReason { rule: "within".into(), n: n + 1 });
        }
    }
    let counts = [rules.secondly, rules.minutely, rules.hourly, rules.daily, rules.weekly, rules.monthly, rules.yearly];
    for ((rule, fmt), n) in PATTERNS.iter().zip(counts) {
        let Some(n) = n else { continue };
        if n == 0 {
            continue;
        }
        let mut count: i64 = 0;
        let mut last: Option<String> = None;
        let mut cur: Option<usize> = None;
        for (i, a) in &normal {
            cur = Some(*i);
            let period = to_local(a.time).format(fmt).to_string();
            if last.as_deref() != Some(period.as_str()) {
                last = Some(period);
                if !kept.contains_key(i) {
                    count += 1;
                    kept.insert(*i, KeepReason { rule: rule.to_string(), n: count as usize });
                    if count == n {
                        break;
                    }
                }
            }
        }
        if let Some(i) = cur {
            if count < n && !kept.contains_key(&i) {
                count += 1;
                kept.insert(i, KeepReason { rule: format!("{rule}[oldest]"), n: count as usize });
            }
        }
    }
    Ok(PrunePlan { decisions: all.iter().map(|(i, a)| ((*a).clone(), kept.get(i).cloned())).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn arch(name: &str, y: i32, mo: u32, d: u32, h: u32) -> PruneArchive {
        PruneArchive { name: name.into(), time: Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap() }
    }

    fn utc(t: DateTime<Utc>) -> NaiveDateTime {
        t.naive_utc()
    }

    #[test]
    fn daily_keeps_newest_of_each_day_and_oldest_rule() {
        let a = vec![
            arch("a1", 2024, 1, 1, 10),
            arch("a2", 2024, 1, 1, 20),
            arch("a3", 2024, 1, 2, 10),
            arch("a4", 2024, 1, 3, 10),
        ];
        let now = Utc.with_ymd_and_hms(2024, 2, 1, 0, 0, 0).unwrap();
        let r = PruneRules { daily: Some(2), ..Default::default() };
        let p = prune_plan(&a, &r, now, &utc).unwrap();
        assert_eq!(p.kept(), vec!["a4", "a3"]);
        let r = PruneRules { daily: Some(10), ..Default::default() };
        let p = prune_plan(&a, &r, now, &utc).unwrap();
        // a2 is the newest of 2024-01-01; a1 is then kept as the [oldest]
        assert_eq!(p.kept(), vec!["a4", "a3", "a2", "a1"]);
        assert_eq!(p.decisions[3].1.as_ref().unwrap().rule, "daily[oldest]");
        // rules do not double count: last 1 takes a4, daily 1 then takes a3
        let r = PruneRules { secondly: Some(1), daily: Some(1), ..Default::default() };
        assert_eq!(prune_plan(&a, &r, now, &utc).unwrap().kept(), vec!["a4", "a3"]);
    }

    #[test]
    fn checkpoints_and_within() {
        let a =
            vec![arch("x.checkpoint", 2024, 1, 5, 0), arch("b", 2024, 1, 4, 0), arch("c.checkpoint.1", 2024, 1, 1, 0)];
        let now = Utc.with_ymd_and_hms(2024, 1, 5, 12, 0, 0).unwrap();
        let r = PruneRules { within: Some("2d".into()), ..Default::default() };
        let p = prune_plan(&a, &r, now, &utc).unwrap();
        assert_eq!(p.kept(), vec!["x.checkpoint", "b"]);
        assert_eq!(p.to_delete(), vec!["c.checkpoint.1"]);
        assert!(prune_plan(&a, &PruneRules::default(), now, &utc).is_err());
        assert!(parse_interval("0d").is_err());
        assert!(parse_interval("3x").is_err());
        assert_eq!(parse_interval("1m").unwrap(), Duration::days(31));
        assert!(is_checkpoint("a.checkpoint.12") && !is_checkpoint("a.checkpoint.x"));
    }
}
