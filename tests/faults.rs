//! One test per fault of the full catalogue (issue 5): the reference policy
//! passes, the measurement is what a hand calculation says, and the
//! anti-pattern the fault exposes is caught.

use std::path::Path;

use agentdrill::drill::scenario::{self, Scenario};
use agentdrill::drill::{self, DrillResult};

fn load(rel: &str) -> Scenario {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(rel);
    scenario::load(&p).unwrap_or_else(|e| panic!("{e}"))
}

fn parse(text: &str) -> Scenario {
    scenario::parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn clean(r: &DrillResult, what: &str) {
    assert!(r.met_targets, "{what}: {:?}", r.violations);
    assert_eq!(r.counts.stale_actions, 0, "{what}");
    assert_eq!(r.counts.corrupted_writes, 0, "{what}");
}

fn caught(r: &DrillResult, what: &str, needle: &str) {
    assert!(!r.met_targets, "{what}: not caught");
    assert!(r.violations.iter().any(|v| v.contains(needle)), "{what}: expected {needle:?} in {:?}", r.violations);
}

#[test]
fn partitions_between_worker_store_api_and_regions_are_ridden_out() {
    for rel in [
        "network/partition-worker-orchestrator.toml",
        "network/partition-worker-api.toml",
        "network/partition-regions.toml",
        "network/degraded-link.toml",
    ] {
        let sc = load(rel);
        for seed in 1..=5 {
            clean(&drill::run(&sc, seed), &format!("{rel} seed {seed}"));
        }
    }
}

#[test]
fn a_worker_cut_off_from_the_store_loses_its_task_and_is_fenced() {
    let r = drill::run(&load("network/partition-worker-orchestrator.toml"), 13);
    let notes: Vec<String> = r.trace.iter().map(|e| drill::describe(&e.note)).collect();
    assert!(notes.iter().any(|n| n.contains("expired")), "the cut-off worker's lease expired: {notes:?}");
    assert_eq!(r.stale_writes, 0);
}

#[test]
fn a_partition_without_failover_loses_nothing() {
    let r = drill::run(&load("network/partition-regions.toml"), 15);
    assert_eq!(r.rpo_s, 0.0);
    assert!(
        !r.trace.iter().any(|e| matches!(e.note, agentdrill::components::env::Note::FailoverDetected)),
        "no failover"
    );
}

#[test]
fn disk_loss_is_harmless_with_durable_artefacts_and_caught_without() {
    clean(&drill::run(&load("worker/disk-loss.toml"), 42), "disk loss");
    caught(&drill::run(&load("antipatterns/artefacts-disk-loss.toml"), 42), "artefacts on disk", "replanned");
}

/// Async replication 1 s behind spiking to 90 s: a region lost in the spike
/// loses about 90 s of acknowledged state (lag + one interval).
#[test]
fn a_region_lost_during_a_lag_spike_loses_about_the_spike() {
    let sc = load("region/lag-spike-then-loss.toml");
    for seed in 1..=4 {
        let r = drill::run(&sc, seed);
        clean(&r, &format!("lag spike seed {seed}"));
        let lost = r.faults[1].rpo.structured_state_s;
        assert!((85.0..=92.5).contains(&lost), "seed {seed}: lost {lost} s, expected about 91 s");
    }
}

#[test]
fn prompt_cache_loss_costs_more_and_is_measured() {
    let r = drill::run(&load("provider/prompt-cache-loss.toml"), 18);
    clean(&r, "cache loss");
    assert!(r.cost.usd > r.baseline_cost.usd * 1.05, "cold requests cost more: {:?} vs {:?}", r.cost, r.baseline_cost);
}

#[test]
fn a_bad_deploy_is_rolled_back_within_five_minutes_and_caught_without_rollback() {
    for seed in 1..=4 {
        let r = drill::run(&load("deploy/bad-prompt-deploy.toml"), seed);
        clean(&r, "bad deploy");
        let s = r.faults[0].rollback_s.expect("rolled back");
        // Health window (60 s, re-armed while there is no traffic) + 30 s rollback.
        assert!((90.0..300.0).contains(&s), "seed {seed}: rollback took {s} s");
    }
    caught(&drill::run(&load("antipatterns/no-auto-rollback.toml"), 19), "no rollback", "never rolled back");
}

#[test]
fn a_breaking_tool_change_writes_no_corrupted_state() {
    for seed in 1..=4 {
        let r = drill::run(&load("tools/payment-schema-change.toml"), seed);
        clean(&r, "schema change");
        assert!(r.trace.iter().any(|e| matches!(e.note, agentdrill::components::env::Note::SchemaViolation { .. })));
    }
    caught(&drill::run(&load("antipatterns/no-response-validation.toml"), 20), "no validation", "corrupted writes");
}

#[test]
fn clock_skew_never_lets_two_workers_run_a_step() {
    for rel in ["worker/clock-skew-worker.toml", "worker/clock-skew-orchestrator.toml"] {
        for seed in 1..=4 {
            clean(&drill::run(&load(rel), seed), &format!("{rel} seed {seed}"));
        }
    }
    caught(&drill::run(&load("antipatterns/wall-clock-leases.toml"), 42), "wall-clock leases", "two workers");
}

/// Corruption at T found by a check every 5 min: the store restores the
/// newest clean snapshot (5-minute cadence), so the memory lost is at most
/// one snapshot interval old; the restored count is verified.
#[test]
fn vector_corruption_restores_the_newest_clean_snapshot() {
    let sc = load("data/vector-corruption.toml");
    for seed in 1..=3 {
        let r = drill::run(&sc, seed);
        clean(&r, "corruption");
        let rpo = r.rpo_surfaces.vector_memory_s;
        assert!(rpo > 0.0 && rpo <= 300.0, "seed {seed}: vector RPO {rpo}");
        let restored = r.trace.iter().find_map(|e| match e.note {
            agentdrill::components::env::Note::Restored { snapshot_taken_at_us, .. } => Some(snapshot_taken_at_us),
            _ => None,
        });
        let taken = restored.expect("restored") as f64 / 1e6;
        let onset = r.faults[0].onset_s.unwrap();
        let age = onset - taken;
        assert!(rpo <= age + 1e-6 && rpo >= age - 60.0, "seed {seed}: RPO {rpo} vs restored snapshot age {age}");
        assert!(r.counts.vector_points_lost > 0, "what was lost is reported");
    }
}

/// Without an integrity check, corruption stays: the memory is lost.
#[test]
fn corruption_with_no_integrity_check_is_caught() {
    let sc = parse(
        "tier = \"internal-ops\"\nhorizon = \"3h\"\n[stack]\nvector = { integrity_check_interval = \"0s\" }\n\
         [workload]\ntasks = 300\ninterval = \"10s\"\n\
         [[faults]]\nkind = \"vector_corruption\"\nat = \"40m\"\nfraction = 0.05\n",
    );
    let r = drill::run(&sc, 1);
    caught(&r, "no integrity check", "RPO");
}

#[test]
fn a_replicated_queue_loses_nothing_and_an_unreplicated_one_reports_its_loss() {
    for seed in 1..=4 {
        let r = drill::run(&load("queue/replicated-queue-loss.toml"), seed);
        clean(&r, "replicated queue");
        assert_eq!(r.rpo_surfaces.queue_s, 0.0);
        let r = drill::run(&load("queue/unreplicated-queue-loss.toml"), seed);
        clean(&r, "unreplicated queue");
        // Jobs piled up from 30 s (the partition) to 120 s (the loss).
        let q = r.rpo_surfaces.queue_s;
        assert!((80.0..=90.5).contains(&q), "seed {seed}: queue RPO {q}");
    }
}

#[test]
fn a_dedupe_window_shorter_than_redelivery_duplicates_and_is_caught() {
    for seed in 1..=4 {
        clean(&drill::run(&load("queue/dedupe-window-covers-redelivery.toml"), seed), "dedupe covers");
    }
    caught(&drill::run(&load("antipatterns/queue-dedupe-window.toml"), 33), "queue dedupe", "duplicate side effects");
}
