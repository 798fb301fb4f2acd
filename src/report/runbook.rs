//! The facilitator's runbook at the end of a game-day report: for each
//! failed drill, what broke and which safeguard of the reference stack
//! (DOMAIN.md) was missing; then the incident checklists a team rehearses
//! (the P1 playbook and the rollback checklist, after seed 002), each item
//! ticked where a drill of this report exercised it, with the evidence.

use super::{Entry, failure_reason};
use crate::components::env::Note;
use crate::components::ids::us_to_s;
use crate::drill::scenario::Expect;
use crate::drill::{DrillResult, ROLLBACK_TARGET_S};
use crate::gameday::{ACK_TARGET_S, BlindOutcome, UPDATE_TARGET_S};

/// A failed drill in the runbook.
#[derive(Clone, Debug, PartialEq)]
pub struct Failed {
    /// The drill.
    pub drill: String,
    /// What broke (the violations, or why an anti-pattern went uncaught).
    pub broke: String,
    /// The reference safeguards that were missing or fell short.
    pub missing: Vec<&'static str>,
}

/// One checklist item.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The step, in words.
    pub step: &'static str,
    /// Whether a drill (or the responders) exercised it.
    pub ticked: bool,
    /// The evidence, or why it was not exercised.
    pub evidence: String,
}

/// The runbook.
#[derive(Clone, Debug, PartialEq)]
pub struct Runbook {
    /// The failed drills.
    pub failed: Vec<Failed>,
    /// The P1 incident playbook.
    pub p1: Vec<Item>,
    /// The rollback checklist.
    pub rollback: Vec<Item>,
}

const KEYS: &str = "idempotency key per tool slot, minted by the orchestrator from (task id, step); reconcile by key before re-issuing";
const CHECKPOINT: &str = "durable checkpoint before every tool call, result persisted after it";
const RECOVERY: &str = "recovery service: scan expired leases, resume from the latest checkpoint";
const FENCING: &str = "leases with fencing tokens: a stalled worker cannot write after its lease moved";
const LEASE: &str = "leases longer than the slowest tool call, renewed while it runs";
const PLAN: &str = "a structured plan record (done / next / decided) so a resumer never re-derives";
const REPLICATION: &str = "replication of structured state to the other region within the tier's RPO";
const SNAPSHOTS: &str = "vector snapshots shipped cross-region at a cadence within the tier's RPO";
const QUEUE: &str = "a replicated queue whose dedupe window covers the redelivery delay";
const DETECTION: &str = "health checks (interval × threshold) that detect the failure quickly";
const ROUTING: &str = "a routing switch (DNS TTL) short enough for the tier";
const SCALE: &str = "standby capacity that scales up within the tier's RTO";
const HYDRATION: &str = "vector memory hydrated in the standby before it serves";
const ROUTER: &str = "a provider router with per-provider circuit breakers and an always-up fallback";
const ROLLBACK: &str = "automated rollback of a bad deploy in under 5 minutes";
const ARTEFACTS: &str = "artefacts needed to resume written to durable state, not the worker's disk";

/// The safeguards a failed drill's measurements point at.
fn missing(d: &DrillResult) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    let mut add = |s: &'static str| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    let c = &d.counts;
    if c.duplicates > 0 || c.concurrent_runs > 0 {
        add(KEYS);
    }
    if c.lost_effects > 0 {
        add(CHECKPOINT);
    }
    if c.stuck_tasks > 0 {
        add(RECOVERY);
    }
    if c.stale_writes > 0 {
        add(FENCING);
    }
    if c.stale_actions > 0 {
        add(LEASE);
    }
    if c.replanned_steps > 0 {
        add(PLAN);
    }
    if c.vector_points_lost > 0 {
        add(ARTEFACTS);
    }
    let rpo = &d.rpo_surfaces;
    if rpo.structured_state_s >= d.target_rpo_s {
        add(REPLICATION);
    }
    if rpo.vector_memory_s >= d.target_rpo_s {
        add(SNAPSHOTS);
    }
    if rpo.queue_s >= d.target_rpo_s {
        add(QUEUE);
    }
    if d.rto_s.is_none_or(|r| r >= d.target_rto_s) {
        // The largest part of the RTO names the step that fell short.
        let p = &d.rto_parts;
        let parts = [
            (p.detection_s, DETECTION),
            (p.routing_s, ROUTING),
            (p.scale_up_s, SCALE),
            (p.hydration_s, HYDRATION),
            (p.resume_s, RECOVERY),
        ];
        if let Some((_, which)) = parts.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0)).filter(|(s, _)| *s > 0.0) {
            add(which);
        }
        if d.faults.iter().any(|f| f.kind == "provider_outage") {
            add(ROUTER);
        }
    }
    if d.faults.iter().any(|f| f.kind == "bad_deploy" && f.rollback_s.is_none_or(|s| s >= ROLLBACK_TARGET_S)) {
        add(ROLLBACK);
    }
    if d.cost.usd > 0.0 && d.violations.iter().any(|v| v.starts_with("cost")) {
        add(ROUTER);
    }
    out
}

/// The first time a note matching `pred` appears in any drill: (drill, seconds).
fn first_note(entries: &[Entry], pred: impl Fn(&Note) -> bool) -> Option<(String, f64)> {
    entries.iter().find_map(|e| {
        let t = e.result.trace.iter().find(|t| pred(&t.note))?;
        Some((e.result.scenario.clone(), us_to_s(t.at_us)))
    })
}

fn item(step: &'static str, found: Option<(String, f64)>, what: &str, otherwise: &str) -> Item {
    match found {
        Some((drill, at)) => Item { step, ticked: true, evidence: format!("{drill}: {what} at {at:.1} s") },
        None => Item { step, ticked: false, evidence: otherwise.to_owned() },
    }
}

fn timed(step: &'static str, took: Option<f64>, target_s: f64, what: &str) -> Item {
    match took {
        Some(s) => Item {
            step,
            ticked: s <= target_s,
            evidence: format!(
                "responders {what} after {s:.0} s (target {target_s:.0} s){}",
                if s <= target_s { "" } else { ": late" }
            ),
        },
        None => Item {
            step,
            ticked: false,
            evidence: "not exercised: only a blind exercise (gameday --blind) times the responders".into(),
        },
    }
}

/// The runbook for a report's drills (and the blind exercise, if any).
pub fn runbook(entries: &[Entry], blind: Option<&BlindOutcome>) -> Runbook {
    let failed = entries
        .iter()
        .filter(|e| e.result.verdict != "pass")
        .map(|e| {
            let d = &e.result;
            let mut missing = missing(d);
            if d.expect == Expect::Fail && d.violations.is_empty() {
                missing = vec!["(none missing in the stack: the drill's check did not catch its anti-pattern; fix the drill or its invariant)"];
            }
            Failed { drill: d.scenario.clone(), broke: failure_reason(d), missing }
        })
        .collect();
    let detection = first_note(entries, |n| {
        matches!(
            n,
            Note::FailoverDetected
                | Note::BreakerOpened { .. }
                | Note::CorruptionDetected { .. }
                | Note::RollbackStarted { .. }
        )
    });
    let p1 = vec![
        timed("Acknowledge the alert within 2 minutes", blind.and_then(|b| b.ack_s), ACK_TARGET_S, "acknowledged"),
        item(
            "Look at the dashboards for the error pattern",
            detection,
            "an automated check saw the failure",
            "no drill raised a detectable error pattern",
        ),
        item(
            "Check what was deployed in the last 4 hours",
            first_note(entries, |n| matches!(n, Note::Deployed { .. })),
            "a deploy was on record",
            "no drill deployed anything",
        ),
        item(
            "If a deploy caused it, roll back at once",
            first_note(entries, |n| matches!(n, Note::RolledBack { .. })),
            "rolled back",
            "no drill rolled a deploy back",
        ),
        item(
            "If an outside API fails, switch to the fallback model or provider",
            first_note(entries, |n| matches!(n, Note::BreakerOpened { .. })),
            "a circuit breaker opened and the router moved on",
            "no drill opened a provider's circuit breaker",
        ),
        item(
            "If the database fails, fail over to the replica",
            first_note(entries, |n| matches!(n, Note::Promoted)),
            "the standby store was promoted",
            "no drill promoted a standby",
        ),
        timed(
            "Send stakeholders a status update within 15 minutes",
            blind.and_then(|b| b.update_s),
            UPDATE_TARGET_S,
            "sent the first update",
        ),
        match blind.and_then(|b| b.recover_s) {
            Some(s) => Item {
                step: "Write the post-mortem",
                ticked: true,
                evidence: format!("the responders resolved after {s:.0} s; this report is its material"),
            },
            None => Item {
                step: "Write the post-mortem",
                ticked: false,
                evidence: "not exercised by a drill: write it from this report".into(),
            },
        },
    ];
    let rollback_s = entries.iter().find_map(|e| {
        e.result
            .faults
            .iter()
            .find(|f| f.kind == "bad_deploy")
            .and_then(|f| Some((e.result.scenario.clone(), f.rollback_s?)))
    });
    let rolled = first_note(entries, |n| matches!(n, Note::RolledBack { .. }));
    let rollback = vec![
        item(
            "The last three versions are tagged and can be deployed",
            rolled.clone(),
            "the previous version went live again",
            "no drill restored a previous version",
        ),
        item(
            "Health checks run by themselves after every deploy",
            first_note(entries, |n| matches!(n, Note::RollbackStarted { .. })),
            "post-deploy health checks failed and triggered the rollback",
            "no drill deployed a bad version",
        ),
        item(
            "The rollback was rehearsed in the last 30 days",
            rolled,
            "rehearsed in this game day, rolled back",
            "no rollback drill in this report: run the monthly one",
        ),
        match rollback_s {
            Some((drill, s)) => Item {
                step: "Rollback finishes in under 5 minutes",
                ticked: s < ROLLBACK_TARGET_S,
                evidence: format!("{drill}: rollback took {s:.1} s (target {ROLLBACK_TARGET_S:.0} s)"),
            },
            None => Item {
                step: "Rollback finishes in under 5 minutes",
                ticked: false,
                evidence: "no drill measured a rollback".into(),
            },
        },
        Item {
            step: "People are told when a rollback happened",
            ticked: false,
            evidence: "not exercised: the simulated stack sends no notifications; check the alert route by hand".into(),
        },
    ];
    Runbook { failed, p1, rollback }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drill(file: &str, expect: Expect) -> Entry {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let mut sc = crate::drill::loader::load(&path).expect("a catalogue scenario").scenario;
        sc.expect = expect;
        Entry::from(crate::drill::run(&sc, sc.seed))
    }

    #[test]
    fn a_failed_drill_names_what_broke_and_the_missing_safeguard() {
        // The anti-pattern drill run as if the stack were meant to be right.
        let e = drill("scenarios/antipatterns/key-from-model-output.toml", Expect::Pass);
        let rb = runbook(std::slice::from_ref(&e), None);
        assert_eq!(rb.failed.len(), 1);
        assert!(rb.failed[0].broke.contains("duplicate side effects"), "{}", rb.failed[0].broke);
        assert!(rb.failed[0].missing.contains(&KEYS), "{:?}", rb.failed[0].missing);
        assert!(!rb.p1[0].ticked, "no blind exercise: nobody acknowledged");
    }

    #[test]
    fn checklists_are_ticked_from_what_the_drills_did() {
        let e = drill("scenarios/deploy/bad-prompt-deploy.toml", Expect::Pass);
        let rb = runbook(std::slice::from_ref(&e), None);
        assert!(rb.failed.is_empty());
        let ticked = |items: &[Item], step: &str| items.iter().find(|i| i.step == step).expect("the step").ticked;
        assert!(ticked(&rb.p1, "If a deploy caused it, roll back at once"));
        assert!(!ticked(&rb.p1, "If the database fails, fail over to the replica"), "nothing was promoted");
        assert!(ticked(&rb.rollback, "Rollback finishes in under 5 minutes"));
        assert!(!ticked(&rb.rollback, "People are told when a rollback happened"));
        let blind = BlindOutcome {
            ack_s: Some(150.0),
            diagnose_s: None,
            update_s: Some(60.0),
            recover_s: None,
            timeline: Vec::new(),
            drill: String::new(),
            faults: Vec::new(),
        };
        let rb = runbook(std::slice::from_ref(&e), Some(&blind));
        assert!(!ticked(&rb.p1, "Acknowledge the alert within 2 minutes"), "150 s is late");
        assert!(ticked(&rb.p1, "Send stakeholders a status update within 15 minutes"));
    }
}
