//! JUnit XML for CI (quick-junit): one test suite per folder of scenarios,
//! one test case per drill. A failed drill's message lists each violated
//! target with the measured value and the target.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::{Entry, failure_reason, timeline};
use crate::drill::scenario::Expect;

/// Renders the JUnit XML report.
pub fn junit(entries: &[Entry]) -> String {
    let mut report = Report::new("agentdrill");
    let mut groups: Vec<String> = entries.iter().map(Entry::group).collect();
    groups.dedup();
    let mut seen = Vec::new();
    for g in groups {
        if seen.contains(&g) {
            continue;
        }
        seen.push(g.clone());
        let mut suite = TestSuite::new(g.clone());
        for e in entries.iter().filter(|e| e.group() == g) {
            suite.add_test_case(case(e, &g));
        }
        report.add_test_suite(suite);
    }
    report.to_string().expect("JUnit serialises")
}

fn case(e: &Entry, group: &str) -> TestCase {
    let d = &e.result;
    let status = if d.verdict == "pass" {
        TestCaseStatus::success()
    } else {
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
        s.set_message(failure_reason(d));
        s.set_type(if d.expect == Expect::Fail { "anti-pattern not caught" } else { "recovery target violated" });
        s.set_description(details(e));
        s
    };
    let mut c = TestCase::new(d.scenario.clone(), status);
    c.set_classname(group.replace('/', "."));
    if let Some(w) = e.wall {
        c.set_time(w);
    }
    c.add_property(("tier", d.tier.as_str()));
    c.add_property(("seed", d.seed.to_string().as_str()));
    c.add_property(("expect", if d.expect == Expect::Fail { "fail" } else { "pass" }));
    if let Some(f) = &e.file {
        c.add_property(("file", f.display().to_string().as_str()));
    }
    if let Some(h) = &e.hash {
        c.add_property(("scenario_hash", h.as_str()));
    }
    let mut out = details(e);
    if d.verdict == "pass" && d.expect == Expect::Fail {
        out = format!("caught: {}\n{out}", d.violations.join("; "));
    }
    c.set_system_out(out);
    c
}

/// The measured values against the targets, then the timeline.
fn details(e: &Entry) -> String {
    let d = &e.result;
    let rto = d.rto_s.map_or_else(|| "not recovered by the horizon".into(), |r| format!("{r:.1} s"));
    let p = &d.rto_parts;
    let r = &d.rpo_surfaces;
    format!(
        "{} (tier {}, seed {})\n\
         RTO {rto} (target < {:.0} s): detection {:.1} s, routing {:.1} s, scale-up {:.1} s, hydration {:.1} s, resume {:.1} s\n\
         RPO {:.1} s (target < {:.0} s): structured state {:.1} s, vector memory {:.1} s, queue {:.1} s\n\
         duplicates {}, lost {}, stuck {}, replanned {}, stale writes {} (target 0 for: {})\n\
         cost ${:.4} against ${:.4} without the faults\n\
         timeline:\n{}",
        d.scenario,
        d.tier,
        d.seed,
        d.target_rto_s,
        p.detection_s,
        p.routing_s,
        p.scale_up_s,
        p.hydration_s,
        p.resume_s,
        d.rpo_s,
        d.target_rpo_s,
        r.structured_state_s,
        r.vector_memory_s,
        r.queue_s,
        d.duplicates,
        d.lost_effects,
        d.stuck_tasks,
        d.replanned_steps,
        d.stale_writes,
        d.invariants.iter().map(|i| i.name()).collect::<Vec<_>>().join(", "),
        d.cost.usd,
        d.baseline_cost.usd,
        capped(&timeline(d), 160, 40),
    )
}

/// The first `head` and last `tail` lines of a long text.
fn capped(text: &str, head: usize, tail: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= head + tail {
        return text.to_owned();
    }
    let mut out = lines[..head].join("\n");
    out.push_str(&format!("\n  … {} more events (see agentdrill explain) …\n", lines.len() - head - tail));
    out.push_str(&lines[lines.len() - tail..].join("\n"));
    out.push('\n');
    out
}
