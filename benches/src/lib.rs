//! Shared helpers for rempart's benches: order statistics and the side-by-side table that every
//! comparison with an anchor (keepalived, qemu-nbd, borg, restic) prints.
//!
//! The machines these run on are shared and noisy, so a bench reports medians and ratios, never a
//! single absolute time.

use std::fmt::Write as _;
use std::time::Duration;

/// The `p`-th percentile (0.0..=100.0) of `samples`, by nearest rank. `None` when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut v: Vec<f64> = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The median of `samples` (the 50th percentile by nearest rank).
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// Durations as seconds, for the functions above.
pub fn secs(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(Duration::as_secs_f64).collect()
}

/// One row of a comparison: a metric measured for rempart and for its anchor.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured, e.g. "failover, advert 1 s: VIP on backup (s)".
    pub metric: String,
    /// rempart's samples.
    pub ours: Vec<f64>,
    /// The anchor's samples, measured in the same run on the same data.
    pub anchor: Vec<f64>,
}

/// Renders rows as a Markdown table: median and p95 for both, and the ratio of the medians
/// (ours / anchor; below 1.0 means rempart is faster when the metric is a time).
pub fn markdown_table(anchor_name: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "| metric | rempart median | rempart p95 | {anchor_name} median | {anchor_name} p95 | ratio |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let (om, op) = (median(&r.ours), percentile(&r.ours, 95.0));
        let (am, ap) = (median(&r.anchor), percentile(&r.anchor, 95.0));
        let ratio = match (om, am) {
            (Some(o), Some(a)) if a != 0.0 => format!("{:.2}", o / a),
            _ => "n/a".to_string(),
        };
        let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        let _ = writeln!(out, "| {} | {} | {} | {} | {} | {} |", r.metric, f(om), f(op), f(am), f(ap), ratio);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(median(&s), Some(3.0));
        assert_eq!(percentile(&s, 95.0), Some(5.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&s, 101.0), None);
    }

    #[test]
    fn table_has_ratio_of_medians() {
        let t = markdown_table(
            "keepalived",
            &[Row { metric: "x".into(), ours: vec![1.0, 1.0, 1.0], anchor: vec![2.0, 2.0, 2.0] }],
        );
        assert!(t.contains("| x | 1.0000 | 1.0000 | 2.0000 | 2.0000 | 0.50 |"), "{t}");
    }
}
