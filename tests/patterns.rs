//! The three failover patterns (issue 5): their RTO and RPO against a hand
//! calculation, their standby cost, and the tier matrix.

use std::path::Path;

use agentdrill::components::region::Pattern;
use agentdrill::drill;
use agentdrill::drill::matrix::{self, apply_pattern};
use agentdrill::drill::scenario::{self, Scenario};

fn reference() -> Scenario {
    scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/stacks/reference.toml")).expect("loads")
}

fn region_loss(pattern: Pattern, at_s: u64) -> Scenario {
    let mut sc = reference();
    apply_pattern(&mut sc, pattern);
    sc.horizon = scenario::Dur::secs(4 * 3_600);
    sc.workload.tasks = 120;
    sc.workload.interval = scenario::Dur::secs(30);
    sc.faults = vec![scenario::FaultSpec::RegionLoss {
        at: scenario::Dur::secs(at_s),
        region: scenario::RegionName::A,
        duration: None,
    }];
    sc
}

/// detection (interval × threshold, less the phase of the first failed
/// check, plus its timeout) + promotion + TTL + scale-up + hydration; then
/// the resume: a recovery scan and a step (60 s), or, for jobs the standby
/// never received, the client's resubmission (`resume_max_s`). Tolerance:
/// one health interval for detection, 2 s for the fixed stages.
fn check_rto(pattern: Pattern, interval_s: f64, ttl_s: f64, scale_up_s: f64, hydration_s: f64, resume_max_s: f64) {
    for seed in 1..=3 {
        let r = drill::run(&region_loss(pattern, 1_210), seed);
        assert!(r.met_targets || pattern == Pattern::ColdStandby, "{pattern:?}: {:?}", r.violations);
        let p = r.rto_parts;
        let detection_max = interval_s * 3.0 + 4.0;
        assert!(
            p.detection_s <= detection_max + 0.5 && p.detection_s >= detection_max - interval_s - 0.5,
            "{pattern:?} seed {seed}: detection {p:?}"
        );
        assert!((p.routing_s - (2.0 + ttl_s)).abs() < 2.0, "{pattern:?}: routing = promotion + TTL: {p:?}");
        assert!((p.scale_up_s - scale_up_s).abs() < 2.0, "{pattern:?}: scale-up {p:?}");
        assert!((p.hydration_s - hydration_s).abs() < 2.0, "{pattern:?}: hydration {p:?}");
        let hand = detection_max + 2.0 + ttl_s + scale_up_s + hydration_s;
        let rto = r.rto_s.expect("recovered");
        assert!(
            rto <= hand + resume_max_s && rto >= hand - interval_s - 2.0,
            "{pattern:?} seed {seed}: RTO {rto} vs {hand} + resume ≤ {resume_max_s}"
        );
    }
}

#[test]
fn active_active_rto_is_detection_plus_routing() {
    // 10 s × 3 checks, 2 s promotion, 30 s TTL, nothing to scale or hydrate.
    check_rto(Pattern::ActiveActive, 10.0, 30.0, 0.0, 0.0, 60.0);
}

#[test]
fn warm_standby_rto_adds_scale_up_and_hydration() {
    // 30 s × 3, 2 s + 60 s TTL, 120 s scale-up, 60 s restore.
    check_rto(Pattern::WarmStandby, 30.0, 60.0, 120.0, 60.0, 60.0);
}

#[test]
fn cold_standby_rto_adds_provisioning_and_restore() {
    // 30 s × 3, 2 s + 60 s TTL, 15 min provisioning, 5 min restore; the
    // first backup had not been taken, so in-flight jobs come back only when
    // the client resubmits them (every 5 min for jobs 5 min unfinished).
    check_rto(Pattern::ColdStandby, 30.0, 60.0, 900.0, 300.0, 600.0);
}

/// RPO: the snapshot (or backup) age plus the replication/shipping delay.
#[test]
fn each_pattern_loses_what_its_replication_and_snapshots_allow() {
    for seed in 1..=3 {
        // Active-active: synchronous state, streaming vector replica.
        let r = drill::run(&region_loss(Pattern::ActiveActive, 1_210), seed);
        assert_eq!(r.rpo_surfaces.structured_state_s, 0.0);
        assert_eq!(r.rpo_surfaces.vector_memory_s, 0.0);
        // Warm: state 1 s behind (+ one 1 s interval); vector snapshots every
        // 240 s shipped in 20 s: at most 260 s. Here the loss at 1210 s
        // comes 10 s after the 1200 s snapshot, which has not shipped yet.
        let r = drill::run(&region_loss(Pattern::WarmStandby, 1_210), seed);
        assert!(r.rpo_surfaces.structured_state_s <= 2.1, "{:?}", r.rpo_surfaces);
        let v = r.rpo_surfaces.vector_memory_s;
        // The newest snapshot in region b is the 960 s one: 250 s old at the
        // loss, less the gap before the first memory write after it.
        assert!((190.0..=250.0).contains(&v), "seed {seed}: warm vector RPO {v}, expected 250 s less a write gap");
        // Cold: backups every 1800 s, the last at 0 s before 1210 s.
        let r = drill::run(&region_loss(Pattern::ColdStandby, 1_210), seed);
        let s = r.rpo_surfaces.structured_state_s;
        assert!((1_150.0..=1_210.0).contains(&s), "seed {seed}: cold state RPO {s}");
    }
}

#[test]
fn the_matrix_shows_each_pattern_meeting_its_tier_and_not_the_next() {
    let ms = matrix::patterns(&reference(), 2, || {}).expect("within the budget");
    let meets = |i: usize| matrix::strictest(&ms[i].tiers_met);
    assert_eq!(meets(0), "customer-facing", "{}", matrix::render(&ms[0]));
    assert_eq!(meets(1), "internal-ops", "{}", matrix::render(&ms[1]));
    assert_eq!(meets(2), "batch", "{}", matrix::render(&ms[2]));
    assert!(ms[0].standby_usd_per_month > ms[1].standby_usd_per_month);
    assert!(ms[1].standby_usd_per_month > ms[2].standby_usd_per_month);
    assert_eq!(ms[2].standby_usd_per_month, 0.0);
}

#[test]
fn the_catalogue_stacks_meet_their_tiers_and_no_stricter() {
    for (file, tier) in
        [("active-active", "customer-facing"), ("warm-standby", "internal-ops"), ("cold-standby", "batch")]
    {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/stacks/{file}.toml"));
        let sc = scenario::load(&p).expect("loads");
        let m = matrix::matrix(&sc, 2, || {}).expect("within the budget");
        assert_eq!(matrix::strictest(&m.tiers_met), tier, "{}", matrix::render(&m));
    }
}
