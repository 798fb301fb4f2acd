//! Markdown for a game-day write-up: a summary table, then one section per
//! drill with its measurements against the targets, its timeline and its
//! verdict.

use std::fmt::Write as _;

use super::{Entry, VERSION, cost_increase_pct, failure_reason, timeline_rows};
use crate::drill::DrillResult;
use crate::drill::scenario::Expect;

/// Timeline rows shown per drill before the middle is elided.
const TIMELINE_HEAD: usize = 120;
/// Rows kept at the end when the middle is elided.
const TIMELINE_TAIL: usize = 40;

/// Escapes a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "not recovered".into(), |x| format!("{x:.1} s"))
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**violated**" }
}

/// Renders the Markdown report.
pub fn markdown(entries: &[Entry]) -> String {
    let mut out = String::new();
    let passed = entries.iter().filter(|e| e.result.verdict == "pass").count();
    let _ = writeln!(out, "# agentdrill report\n");
    let _ = writeln!(
        out,
        "{passed} of {} drills passed. Anti-pattern drills (`expect = \"fail\"`) pass when the drill catches the violation. agentdrill {VERSION}.\n",
        entries.len()
    );
    let _ = writeln!(out, "| drill | tier | RTO (target) | RPO (target) | duplicates | lost | stuck | verdict |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---|");
    for e in entries {
        let d = &e.result;
        let _ = writeln!(
            out,
            "| [{}](#{}) | {} | {} (< {:.0} s) | {:.1} s (< {:.0} s) | {} | {} | {} | {} |",
            cell(&d.scenario),
            anchor(&d.scenario),
            cell(&d.tier),
            secs(d.rto_s),
            d.target_rto_s,
            d.rpo_s,
            d.target_rpo_s,
            d.duplicates,
            d.lost_effects,
            d.stuck_tasks,
            bold_verdict(e)
        );
    }
    for e in entries {
        out.push('\n');
        section(&mut out, e);
    }
    out
}

fn bold_verdict(e: &Entry) -> String {
    format!("**{}**", e.verdict())
}

/// GitHub's heading anchor for a drill name.
fn anchor(name: &str) -> String {
    name.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

fn section(out: &mut String, e: &Entry) {
    let d = &e.result;
    let _ = writeln!(out, "## {}\n", d.scenario);
    if !d.purpose.is_empty() {
        let _ = writeln!(out, "{}\n", d.purpose.trim());
    }
    let _ = writeln!(out, "- Verdict: {}", bold_verdict(e));
    let _ = writeln!(
        out,
        "- Tier: {} (RTO < {:.0} s, RPO < {:.0} s; zero: {})",
        d.tier,
        d.target_rto_s,
        d.target_rpo_s,
        if d.invariants.is_empty() {
            "none".to_owned()
        } else {
            d.invariants.iter().map(|i| i.counts()).collect::<Vec<_>>().join(", ")
        }
    );
    let _ = writeln!(
        out,
        "- Expect: {}",
        if d.expect == Expect::Fail { "fail (an anti-pattern the drill must catch)" } else { "pass" }
    );
    let _ = writeln!(out, "- Seed: {}", d.seed);
    if let Some(f) = &e.file {
        let _ = writeln!(out, "- File: `{}`", f.display());
    }
    if let Some(h) = &e.hash {
        let _ = writeln!(out, "- Scenario hash: `{h}`");
    }
    let _ = writeln!(
        out,
        "- Re-run: `agentdrill explain {} --seed {}`",
        e.file.as_ref().map_or_else(|| d.scenario.clone(), |f| f.display().to_string()),
        d.seed
    );
    out.push('\n');
    measurements(out, d);
    let _ = writeln!(out, "### Timeline\n");
    let rows = timeline_rows(d);
    if rows.is_empty() {
        let _ = writeln!(out, "Nothing happened worth a line: no fault struck.\n");
    } else {
        let _ = writeln!(out, "| t (s) | host | event |");
        let _ = writeln!(out, "|---:|---|---|");
        let n = rows.len();
        for (i, (t, host, what)) in rows.iter().enumerate() {
            if n > TIMELINE_HEAD + TIMELINE_TAIL && i == TIMELINE_HEAD {
                let _ = writeln!(
                    out,
                    "| … | | {} more events (see `agentdrill explain`) |",
                    n - TIMELINE_HEAD - TIMELINE_TAIL
                );
            }
            if n > TIMELINE_HEAD + TIMELINE_TAIL && i >= TIMELINE_HEAD && i < n - TIMELINE_TAIL {
                continue;
            }
            let what = if what.starts_with("FAULT") { format!("**{what}**") } else { cell(what) };
            let _ = writeln!(out, "| {t:.3} | {} | {what} |", cell(host));
        }
        out.push('\n');
    }
    step_events(out, d);
    let _ = writeln!(out, "### Verdict\n");
    let _ = writeln!(out, "{}\n", verdict_text(d));
}

/// Each affected job's step events in order (from ground truth).
fn step_events(out: &mut String, d: &DrillResult) {
    let log = &d.step_events;
    if log.jobs.is_empty() {
        return;
    }
    let _ = writeln!(out, "### Step events of the affected jobs\n");
    let _ = writeln!(out, "| job | t (s) | host | step event |");
    let _ = writeln!(out, "|---:|---:|---|---|");
    for j in &log.jobs {
        let job = format!("{} ({})", j.job, j.template);
        for e in &j.events {
            let _ = writeln!(out, "| {} | {:.3} | {} | {} |", cell(&job), e.at_s, cell(&e.host), cell(&e.describe()));
        }
        if j.more_events > 0 {
            let _ = writeln!(out, "| {} | … | | {} more events |", cell(&job), j.more_events);
        }
    }
    if log.more_jobs > 0 {
        let _ = writeln!(out, "| … | | | {} more affected jobs |", log.more_jobs);
    }
    out.push('\n');
}

fn measurements(out: &mut String, d: &DrillResult) {
    let _ = writeln!(out, "### Measurements\n");
    let _ = writeln!(out, "| measurement | value | target | |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    let rto_ok = d.rto_s.is_some_and(|r| r < d.target_rto_s);
    let _ = writeln!(out, "| RTO | {} | < {:.0} s | {} |", secs(d.rto_s), d.target_rto_s, met(rto_ok));
    let p = &d.rto_parts;
    for (what, v) in [
        ("detection", p.detection_s),
        ("promotion and routing", p.routing_s),
        ("scale-up", p.scale_up_s),
        ("hydration", p.hydration_s),
        ("resume", p.resume_s),
    ] {
        let _ = writeln!(out, "| &nbsp;&nbsp;{what} | {v:.1} s | | |");
    }
    let r = &d.rpo_surfaces;
    let _ = writeln!(out, "| RPO | {:.1} s | < {:.0} s | {} |", d.rpo_s, d.target_rpo_s, met(d.rpo_s < d.target_rpo_s));
    for (what, v) in [
        ("structured state", r.structured_state_s),
        ("vector memory", r.vector_memory_s),
        ("accepted jobs (queue)", r.queue_s),
    ] {
        let _ = writeln!(out, "| &nbsp;&nbsp;{what} | {v:.1} s | | |");
    }
    for inv in crate::drill::tier::Invariant::ALL {
        let n = d.counts.of(inv);
        let checked = d.invariants.contains(&inv);
        let _ = writeln!(
            out,
            "| {} | {n} | {} | {} |",
            inv.counts(),
            if checked { "0" } else { "not checked" },
            if checked { met(n == 0) } else { "" }
        );
    }
    let pct = cost_increase_pct(d).map_or_else(String::new, |p| format!(" ({p:+.0} %)"));
    let _ =
        writeln!(out, "| cost | ${:.4} against ${:.4} without the faults{pct} | | |", d.cost.usd, d.baseline_cost.usd);
    let _ = writeln!(out, "| model calls | {} against {} | | |", d.cost.model_calls, d.baseline_cost.model_calls);
    let _ =
        writeln!(out, "| jobs done | {} of {} | | |", d.counts.done_tasks, d.counts.done_tasks + d.counts.stuck_tasks);
    out.push('\n');
}

fn verdict_text(d: &DrillResult) -> String {
    match (d.verdict, d.expect) {
        ("pass", Expect::Pass) => "**PASS**: every target was met.".into(),
        ("pass", Expect::Fail) => {
            format!("**PASS (caught)**: the drill caught the anti-pattern: {}.", d.violations.join("; "))
        }
        (_, Expect::Fail) => format!("**FAIL (not caught)**: {}.", failure_reason(d)),
        _ => format!("**FAIL**: {}.", failure_reason(d)),
    }
}
