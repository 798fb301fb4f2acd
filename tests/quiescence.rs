//! The fuzzer stops a generated drill once the stack is quiescent
//! (`Stack::quiescent`, `drill::simulate_checked`). That is sound only if
//! nothing any invariant or measurement reads can change between that point
//! and the horizon. These tests run generated drills of every policy both
//! ways and compare what the fuzzer judges by: the invariants' verdicts and
//! every fault's measurements and the ledgers' counts.
//!
//! The seeds: two fixed ones, plus `FUZZ_SEED` when set (`.ci/run` sets it
//! from the commit, so every commit compares drills nobody chose).

use agentdrill::drill::{self, Budget, invariants, measure};
use agentdrill::fuzz::{self, PolicyChoice};
use clap::ValueEnum;

/// Cases per policy and seed; `QUIESCENCE_CASES` sets another number (a
/// longer sweep by hand).
const CASES: u64 = 120;

fn cases() -> u64 {
    std::env::var("QUIESCENCE_CASES").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(CASES)
}

fn seeds() -> Vec<u64> {
    let mut seeds = vec![11, 880_102];
    if let Some(s) = std::env::var("FUZZ_SEED").ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        seeds.push(s);
    }
    seeds
}

/// What the fuzzer and a report read of a finished run.
fn judged(sc: &agentdrill::drill::scenario::Scenario, run: &drill::Run) -> String {
    let violations = invariants::check(sc, run);
    let (results, counts) = measure::measure(&run.stack, &run.faults, sc.horizon.us());
    format!("{violations:#?}\n{results:#?}\n{counts:#?}")
}

#[test]
fn stopping_at_quiescence_changes_no_verdict_and_no_measurement() {
    let (mut pairs, mut stopped, mut saved, mut total) = (0u64, 0u64, 0u64, 0u64);
    for seed in seeds() {
        eprintln!("quiescence: seed {seed} (re-run with FUZZ_SEED={seed})");
        for &policy in PolicyChoice::value_variants() {
            for i in 0..cases() {
                let sc = fuzz::case(policy, seed, i);
                let full = drill::simulate_within(&sc, sc.seed, true, &Budget::default()).expect("within budget");
                let quick = drill::simulate_checked(&sc, sc.seed, &Budget::default()).expect("within budget");
                let (a, b) = (judged(&sc, &full), judged(&sc, &quick));
                assert!(
                    a == b,
                    "seed {seed}, policy {policy:?}, case {i}: stopping at {:.3} s (horizon {:.0} s) changed what \
                     is judged\n--- to the horizon\n{a}\n--- stopped\n{b}",
                    quick.stack.rt.now_us() as f64 / 1e6,
                    sc.horizon.us() as f64 / 1e6,
                );
                let (e_full, e_quick) = (full.stack.rt.stats().events, quick.stack.rt.stats().events);
                assert!(e_quick <= e_full);
                pairs += 1;
                stopped += u64::from(e_quick < e_full);
                saved += e_full - e_quick;
                total += e_full;
            }
        }
    }
    eprintln!(
        "quiescence: {pairs} drills, {stopped} stopped early, {:.1} % of the events skipped",
        100.0 * saved as f64 / total.max(1) as f64
    );
    // The comparison means something only if the stop happens.
    assert!(stopped * 4 > pairs, "only {stopped} of {pairs} drills stopped early: the quiescence test never holds?");
}

/// A drill whose last fault's end matters (a cut between the regions heals:
/// replication and health checks cross again) runs past that end: a
/// harness event still queued is not idle chatter.
#[test]
fn a_drill_waits_for_the_end_of_a_fault_whose_end_matters() {
    let sc = drill_with_late_fault(
        r#"
kind = "partition"
at = "20m"
duration = "5m"
a = "region:a"
b = "region:b""#,
    );
    let quick = drill::simulate_checked(&sc, sc.seed, &Budget::default()).expect("within budget");
    // The jobs finish in minutes, but the cut lasts from 20 to 25 min.
    assert!(quick.stack.rt.now_us() >= 25 * 60 * 1_000_000, "stopped at {} us", quick.stack.rt.now_us());
}

/// A provider outage only a worker's call can meet: once it has begun and
/// the stack is idle, its end changes nothing, so the run stops before it,
/// with the same verdicts and measurements as a run to the horizon.
#[test]
fn a_drill_stops_inside_an_outage_no_call_meets() {
    let sc = drill_with_late_fault(
        r#"
kind = "provider_outage"
at = "20m"
provider = "anthropic"
mode = "unavailable"
duration = "5m""#,
    );
    let quick = drill::simulate_checked(&sc, sc.seed, &Budget::default()).expect("within budget");
    let stop_us = quick.stack.rt.now_us();
    assert!((20 * 60 * 1_000_000..25 * 60 * 1_000_000).contains(&stop_us), "stopped at {stop_us} us");
    let full = drill::simulate_within(&sc, sc.seed, true, &Budget::default()).expect("within budget");
    assert_eq!(judged(&sc, &full), judged(&sc, &quick));
}

/// Three jobs done in minutes, and `fault` (a `[[faults]]` table's body)
/// late in a 30-minute horizon.
fn drill_with_late_fault(fault: &str) -> agentdrill::drill::scenario::Scenario {
    let text = format!(
        r#"
purpose = "jobs done in minutes, a fault from 20 to 25 min"
tier = "sandbox"
horizon = "30m"
seed = 1
[workload]
tasks = 3
interval = "5s"
[[faults]]{fault}
"#
    );
    let path = std::path::Path::new("late-fault.toml");
    agentdrill::drill::loader::parse(path, &text).expect("a valid scenario").scenario
}
