//! Reports: the table people read, the JSON machines read, JUnit for CI
//! ([`junit`]), Markdown for a game-day write-up ([`markdown`]) and the
//! facilitator's narrative ([`explain`]), and the HTML report for the game
//! day's screen ([`html`], with [`plots`] and the [`runbook`]). Reports only format results; they
//! compute nothing a verdict depends on.

pub mod explain;
pub mod html;
pub mod junit;
pub mod markdown;
pub mod plots;
pub mod runbook;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tabled::{Table, Tabled, settings::Style};

use crate::components::ids::us_to_s;
use crate::drill::scenario::Expect;
use crate::drill::{DrillResult, describe};

/// agentdrill's version, as reports carry it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One drill's result with where it came from.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The result.
    pub result: DrillResult,
    /// The scenario file, as given on the command line.
    pub file: Option<PathBuf>,
    /// The scenario's content hash (see [`crate::drill::loader::Loaded::hash`]).
    pub hash: Option<String>,
    /// Wall time the drill took (JUnit `time`; nothing else uses it).
    pub wall: Option<Duration>,
}

impl From<DrillResult> for Entry {
    fn from(result: DrillResult) -> Self {
        Entry { result, file: None, hash: None, wall: None }
    }
}

impl Entry {
    /// The verdict in words: PASS, PASS (caught), FAIL, FAIL (not caught).
    pub fn verdict(&self) -> &'static str {
        verdict_words(&self.result)
    }

    /// The folder of the file (for grouping), or "drills".
    pub fn group(&self) -> String {
        self.file
            .as_ref()
            .and_then(|f| f.parent())
            .map(|p| p.display().to_string().trim_end_matches('/').to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "drills".into())
    }
}

fn verdict_words(d: &DrillResult) -> &'static str {
    match (d.verdict, d.expect) {
        ("pass", Expect::Fail) => "PASS (caught)",
        ("pass", _) => "PASS",
        (_, Expect::Fail) => "FAIL (not caught)",
        _ => "FAIL",
    }
}

/// Why a drill failed, in one line (empty when it passed).
pub fn failure_reason(d: &DrillResult) -> String {
    if d.verdict == "pass" {
        String::new()
    } else if d.violations.is_empty() {
        "expected the drill to catch a violation (expect = \"fail\"), but the stack met every target".into()
    } else {
        d.violations.join("; ")
    }
}

/// How often each kind of timeline event happened (`lease_expired`,
/// `reconciled`, `failover_detected`, …), plus `runtime_events`: every
/// event the simulator handled.
pub fn event_counts(d: &DrillResult) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in &d.trace {
        *m.entry(note_kind(&e.note)).or_default() += 1;
    }
    m.insert("runtime_events".into(), d.events);
    m
}

/// The snake_case name of a note's variant.
fn note_kind(n: &impl std::fmt::Debug) -> String {
    let debug = format!("{n:?}");
    let name: String = debug.chars().take_while(char::is_ascii_alphanumeric).collect();
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Cost increase over the fault-free run, percent (None without a baseline bill).
pub fn cost_increase_pct(d: &DrillResult) -> Option<f64> {
    (d.baseline_cost.usd > 0.0).then(|| (d.cost.usd - d.baseline_cost.usd) / d.baseline_cost.usd * 100.0)
}

/// One drill in the JSON report: the result's own fields and where it came from.
#[derive(Serialize)]
struct JsonDrill<'a> {
    #[serde(flatten)]
    result: &'a DrillResult,
    file: Option<String>,
    scenario_hash: Option<&'a str>,
    agentdrill_version: &'static str,
    cost_increase_pct: Option<f64>,
    event_counts: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Summary {
    drills: usize,
    passed: usize,
    failed: usize,
}

/// The JSON document `run --format json` prints.
#[derive(Serialize)]
struct JsonReport<'a> {
    version: &'static str,
    summary: Summary,
    drills: Vec<JsonDrill<'a>>,
}

/// Renders the JSON report of results with their sources.
pub fn json_entries(entries: &[Entry]) -> String {
    let drills: Vec<JsonDrill<'_>> = entries
        .iter()
        .map(|e| JsonDrill {
            result: &e.result,
            file: e.file.as_ref().map(|f| f.display().to_string()),
            scenario_hash: e.hash.as_deref(),
            agentdrill_version: VERSION,
            cost_increase_pct: cost_increase_pct(&e.result),
            event_counts: event_counts(&e.result),
        })
        .collect();
    let passed = entries.iter().filter(|e| e.result.verdict == "pass").count();
    let summary = Summary { drills: entries.len(), passed, failed: entries.len() - passed };
    serde_json::to_string_pretty(&JsonReport { version: VERSION, summary, drills }).expect("report serialises")
}

/// Renders the JSON report.
pub fn json(drills: &[DrillResult]) -> String {
    let entries: Vec<Entry> = drills.iter().cloned().map(Entry::from).collect();
    json_entries(&entries)
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
            verdict: verdict_words(d).into(),
        })
        .collect();
    let mut out = Table::new(rows).with(Style::rounded()).to_string();
    let passed = drills.iter().filter(|d| d.verdict == "pass").count();
    let _ = write!(out, "\n{passed}/{} drills passed", drills.len());
    for d in drills.iter().filter(|d| d.verdict != "pass") {
        let _ = write!(out, "\n  {}: {}", d.scenario, failure_reason(d));
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

/// The timeline with the faults' onsets in it: (seconds, host, what).
pub fn timeline_rows(d: &DrillResult) -> Vec<(f64, String, String)> {
    let mut rows: Vec<(f64, u8, String, String)> = Vec::new();
    for (i, f) in d.faults.iter().enumerate() {
        if let Some(at) = f.onset_s {
            rows.push((at, 0, String::new(), format!("FAULT {}: {} strikes", i + 1, f.kind)));
        }
    }
    for e in &d.trace {
        let host = d.host_names.get(e.host.0 as usize).cloned().unwrap_or_else(|| "?".into());
        rows.push((us_to_s(e.at_us), 1, host, describe(&e.note)));
    }
    // Stable: faults first among events at the same instant, else trace order.
    rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    rows.into_iter().map(|(t, _, h, w)| (t, h, w)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::env::Note;
    use crate::components::ids::JobId;

    #[test]
    fn note_kinds_are_snake_case() {
        assert_eq!(note_kind(&Note::FailoverDetected), "failover_detected");
        assert_eq!(note_kind(&Note::Resumed { job: JobId(1), step: 2 }), "resumed");
    }
}
