//! The event log a reader can check (issue 9, section 3): each affected
//! job's step events, in order, from ground truth.

use std::path::Path;

use agentdrill::drill::steps::{JobSteps, StepEventKind as K};
use agentdrill::drill::{self, scenario};
use agentdrill::report::{Entry, explain};

const DRILL: &str = "scenarios/worker/kill-mid-summary.toml";

fn job0(r: &drill::DrillResult) -> &JobSteps {
    r.step_events.jobs.iter().find(|j| j.job == 0).unwrap_or_else(|| panic!("job 0 listed: {:?}", r.step_events))
}

/// The three-step template killed at step 2 (summarise) resumes from its
/// checkpoint: load data ran once, before the kill; after the resume only
/// summarise and write report run.
#[test]
fn a_kill_at_step_two_resumes_without_running_step_one_again() {
    let sc = scenario::load(Path::new(DRILL)).unwrap_or_else(|e| panic!("{e}"));
    let r = drill::run(&sc, sc.seed);
    assert_eq!(r.verdict, "pass", "{:?}", r.violations);
    let j = job0(&r);
    assert_eq!(j.template, "summarise_report");
    let seq: Vec<(K, Option<u16>)> = j.events.iter().map(|e| (e.event, e.step)).collect();
    let expected = [
        (K::Leased, None),
        (K::Started, Some(0)),
        (K::Completed, Some(0)),
        (K::Started, Some(1)),
        (K::LeaseExpired, None),
        (K::Leased, None),
        (K::ResumedFromCheckpoint, Some(1)),
        (K::Completed, Some(1)),
        (K::Started, Some(2)),
        (K::Completed, Some(2)),
        (K::Finished, None),
    ];
    assert_eq!(seq, expected, "job 0's step events: {:#?}", j.events);
    let times: Vec<f64> = j.events.iter().map(|e| e.at_s).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order: {times:?}");
    let leases: Vec<&str> = j.events.iter().filter(|e| e.event == K::Leased).map(|e| e.host.as_str()).collect();
    assert_ne!(leases[0], leases[1], "another worker resumed the job");
    assert_eq!(j.events[1].step_name, Some("load_data"));
    assert_eq!(j.events[6].step_name, Some("summarise"));
}

/// `explain` prints the same events in the same order, in words.
#[test]
fn explain_shows_the_resume_after_step_one() {
    let sc = scenario::load(Path::new(DRILL)).unwrap_or_else(|e| panic!("{e}"));
    let text = explain::narrative(&Entry::from(drill::run(&sc, sc.seed)), &sc);
    let section = text
        .split("WHAT EACH AFFECTED JOB DID")
        .nth(1)
        .and_then(|s| s.split("HOW THE NUMBERS").next())
        .unwrap_or_else(|| panic!("no step-event section:\n{text}"));
    let lines = [
        "job 0 (summarise_report)",
        "step 0 load_data: started",
        "step 0 load_data: completed",
        "step 1 summarise: started",
        "lease expired",
        "step 1 summarise: resumed from checkpoint",
        "step 1 summarise: completed",
        "step 2 write_report: started",
        "step 2 write_report: completed",
        "job finished",
    ];
    let mut from = 0;
    for l in lines {
        let at = section[from..].find(l).unwrap_or_else(|| panic!("{l:?} after byte {from}:\n{section}"));
        from += at + l.len();
    }
    assert_eq!(section.matches("step 0 load_data: started").count(), 1, "{section}");
}

/// The JSON report carries the step events.
#[test]
fn the_json_report_carries_step_events() {
    let sc = scenario::load(Path::new(DRILL)).unwrap_or_else(|e| panic!("{e}"));
    let json = agentdrill::report::json(&[drill::run(&sc, sc.seed)]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let events = &v["drills"][0]["step_events"]["jobs"][0]["events"];
    assert_eq!(events[6]["event"], "resumed_from_checkpoint", "{events:#}");
    assert_eq!(events[6]["step"], 1);
}
