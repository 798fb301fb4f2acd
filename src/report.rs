//! Reports: the table people read and the JSON machines read.

use std::fmt::Write as _;

use serde::Serialize;
use tabled::{Table, Tabled, settings::Style};

use crate::drill::{DrillResult, describe};
use crate::ids::us_to_s;

/// The JSON document `run --format json` prints.
#[derive(Serialize)]
pub struct JsonReport<'a> {
    /// agentdrill version.
    pub version: &'static str,
    /// Every drill.
    pub drills: &'a [DrillResult],
}

/// Renders the JSON report.
pub fn json(drills: &[DrillResult]) -> String {
    serde_json::to_string_pretty(&JsonReport { version: env!("CARGO_PKG_VERSION"), drills }).expect("report serialises")
}

#[derive(Tabled)]
struct Row {
    scenario: String,
    tier: String,
    #[tabled(rename = "RTO s (target)")]
    rto: String,
    #[tabled(rename = "RPO s (target)")]
    rpo: String,
    duplicates: u64,
    lost: u64,
    stuck: u64,
    verdict: String,
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "never".into(), |x| format!("{x:.1}"))
}

/// Renders the table.
pub fn table(drills: &[DrillResult]) -> String {
    let rows: Vec<Row> = drills
        .iter()
        .map(|d| Row {
            scenario: d.scenario.clone(),
            tier: d.tier.clone(),
            rto: format!("{} (<{:.0})", fmt_opt(d.rto_s), d.target_rto_s),
            rpo: format!("{:.1} (<{:.0})", d.rpo_s, d.target_rpo_s),
            duplicates: d.duplicates,
            lost: d.lost_effects,
            stuck: d.stuck_tasks,
            verdict: match (d.verdict, d.expect) {
                ("pass", crate::scenario::Expect::Fail) => "PASS (caught)".into(),
                ("pass", _) => "PASS".into(),
                (_, crate::scenario::Expect::Fail) => "FAIL (not caught)".into(),
                _ => "FAIL".into(),
            },
        })
        .collect();
    let mut out = Table::new(rows).with(Style::rounded()).to_string();
    let passed = drills.iter().filter(|d| d.verdict == "pass").count();
    let _ = write!(out, "\n{passed}/{} drills passed", drills.len());
    for d in drills.iter().filter(|d| d.verdict != "pass") {
        let _ = write!(
            out,
            "\n  {}: {}",
            d.scenario,
            if d.violations.is_empty() {
                "expected a violation, found none".to_string()
            } else {
                d.violations.join("; ")
            }
        );
    }
    out.push('\n');
    out
}

/// The drill's timeline in words.
pub fn timeline(d: &DrillResult) -> String {
    let mut out = String::new();
    for e in &d.trace {
        let host = d.host_names.get(e.host.0 as usize).map_or("?", String::as_str);
        let _ = writeln!(out, "{:>10.3}s  {:<22} {}", us_to_s(e.at_us), host, describe(&e.note));
    }
    out
}
