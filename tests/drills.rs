//! Drill-level tests: the reference policy under every fault × phase, the
//! anti-pattern drills caught, determinism, and hand calculations.

use std::path::{Path, PathBuf};

use agentdrill::components::env::Phase;
use agentdrill::drill::scenario::{self, Scenario};
use agentdrill::drill::{self, DrillResult};

fn parse(text: &str) -> Scenario {
    scenario::parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_clean(r: &DrillResult, what: &str) {
    assert_eq!(r.duplicates, 0, "{what}: duplicates {:?}", r.violations);
    assert_eq!(r.lost_effects, 0, "{what}: lost {:?}", r.violations);
    assert_eq!(r.stuck_tasks, 0, "{what}: stuck {:?}", r.violations);
    assert_eq!(r.replanned_steps, 0, "{what}: replanned {:?}", r.violations);
    assert_eq!(r.stale_writes, 0, "{what}: stale writes {:?}", r.violations);
    assert!(r.rto_s.is_some(), "{what}: never recovered");
    assert_eq!(r.verdict, "pass", "{what}: {:?}", r.violations);
}

/// (job, step) pairs that hit every side-effect kind and a model and a
/// memory step: job 0 book_flight (2 model, 3 charge, 4 memory, 5 email),
/// job 2 approve_refund (2 refund, 3 email), job 1 research (3 model).
const TARGETS: [(u32, u16); 7] = [(0, 2), (0, 3), (0, 4), (0, 5), (2, 2), (2, 3), (1, 3)];

#[test]
fn reference_policy_survives_every_kill_phase_over_many_seeds() {
    for (job, step) in TARGETS {
        for phase in Phase::ALL {
            for seed in 1..=12u64 {
                let sc = parse(&format!(
                    "tier = \"internal-ops\"\nhorizon = \"2h\"\n[workload]\ntasks = 9\n\
                     [[faults]]\nkind = \"worker_kill\"\nat = {{ job = {job}, step = {step}, phase = \"{}\" }}\n",
                    phase.name()
                ));
                let r = drill::run(&sc, seed);
                let what = format!("kill job {job} step {step} {} seed {seed}", phase.name());
                assert!(r.faults[0].onset_s.is_some(), "{what}: the fault never triggered");
                assert_clean(&r, &what);
            }
        }
    }
}

#[test]
fn reference_policy_fences_a_zombie_at_every_phase() {
    for (job, step) in TARGETS {
        for phase in [Phase::BeforeCheckpoint, Phase::AfterCheckpoint, Phase::AfterResult, Phase::AfterPersist] {
            for seed in 1..=6u64 {
                let sc = parse(&format!(
                    "tier = \"internal-ops\"\nhorizon = \"2h\"\n[workload]\ntasks = 9\n\
                     [stack]\napis = {{ email_dedupe = false }}\n\
                     [[faults]]\nkind = \"worker_pause\"\nduration = \"2m\"\n\
                     at = {{ job = {job}, step = {step}, phase = \"{}\" }}\n",
                    phase.name()
                ));
                let r = drill::run(&sc, seed);
                assert_clean(&r, &format!("pause job {job} step {step} {} seed {seed}", phase.name()));
            }
        }
    }
}

fn catalogue(dir: &str) -> Vec<PathBuf> {
    agentdrill::drill::loader::scenario_files(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir))
        .expect("catalogue folder")
}

#[test]
fn every_anti_pattern_drill_is_caught() {
    let files = catalogue("scenarios/antipatterns");
    assert!(files.len() >= 10, "expected the anti-pattern catalogue, found {}", files.len());
    for f in files {
        let sc = scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sc.expect, scenario::Expect::Fail, "{}: anti-pattern drills expect a failure", f.display());
        let r = drill::run(&sc, sc.seed);
        assert!(!r.met_targets, "{}: the anti-pattern was not caught", f.display());
        assert_eq!(r.verdict, "pass", "{}", f.display());
    }
}

#[test]
fn the_reference_stack_passes_region_and_provider_drills_over_seeds() {
    for dir in [
        "scenarios/region",
        "scenarios/provider",
        "scenarios/worker",
        "scenarios/network",
        "scenarios/data",
        "scenarios/deploy",
        "scenarios/tools",
        "scenarios/queue",
    ] {
        for f in catalogue(dir) {
            let sc = scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
            for seed in [sc.seed, 2, 3] {
                let r = drill::run(&sc, seed);
                assert_clean(&r, &format!("{} seed {seed}", f.display()));
            }
        }
    }
}

#[test]
fn same_seed_same_bytes() {
    for f in catalogue("scenarios") {
        let sc = scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        for seed in 1..=4u64 {
            let a = drill::run(&sc, seed);
            let b = drill::run(&sc, seed);
            let (ja, jb) = (
                agentdrill::report::json(std::slice::from_ref(&a)),
                agentdrill::report::json(std::slice::from_ref(&b)),
            );
            assert_eq!(ja, jb, "{} seed {seed}: JSON differs", f.display());
            assert_eq!(agentdrill::report::timeline(&a), agentdrill::report::timeline(&b));
        }
    }
}

#[test]
fn different_seeds_take_different_paths() {
    let sc = scenario::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/worker/kill-by-time.toml")))
        .expect("loads");
    assert_ne!(drill::run(&sc, 1).event_digest, drill::run(&sc, 2).event_digest);
}

/// Hand calculation from the issue: health checks every 30 s × 3, a 60 s
/// DNS TTL, a 120 s scale-up and a 60 s hydration: about 330 s plus resume.
#[test]
fn warm_standby_rto_matches_the_hand_calculation() {
    let sc = parse(
        "tier = \"internal-ops\"\nhorizon = \"2h\"\n\
         [stack]\npattern = \"warm_standby\"\n\
         failover = { health_interval = \"30s\", health_timeout = \"4s\", failure_threshold = 3, dns_ttl = \"60s\", scale_up = \"120s\", promotion = \"0s\" }\n\
         vector = { restore_base = \"60s\", restore_per_point_us = 0 }\n\
         [workload]\ntasks = 40\ninterval = \"10s\"\n\
         [[faults]]\nkind = \"region_loss\"\nat = \"6m\"\n",
    );
    let r = drill::run(&sc, 5);
    assert_clean(&r, "warm standby");
    let p = r.rto_parts;
    // The first failed check comes 0–30 s after the loss; three failures
    // and the 4 s timeout: 64–94 s.
    assert!((60.0..=94.5).contains(&p.detection_s), "detection {p:?}");
    assert!((p.routing_s - 60.0).abs() < 0.5, "routing = TTL: {p:?}");
    assert!((p.scale_up_s - 120.0).abs() < 0.5, "scale-up: {p:?}");
    assert!((p.hydration_s - 60.0).abs() < 0.5, "hydration: {p:?}");
    let rto = r.rto_s.expect("recovered");
    let sum = p.detection_s + p.routing_s + p.scale_up_s + p.hydration_s;
    assert!((rto - sum - p.resume_s).abs() < 0.01, "parts add up: {rto} vs {p:?}");
    assert!(p.resume_s < 60.0, "resume takes a lease expiry at most: {p:?}");
    assert!((300.0..=420.0).contains(&rto), "about 330 s plus resume, got {rto}");
}

/// An asynchronous replica 10 s behind loses at most about 10 s of
/// acknowledged writes; a synchronous one loses none.
#[test]
fn async_replication_loses_about_its_lag_and_sync_loses_nothing() {
    let make = |replication: &str| {
        parse(&format!(
            "tier = \"customer-facing\"\nhorizon = \"1h\"\n\
             [stack]\npattern = \"active_active\"\nreplication = {replication}\n\
             vector = {{ streaming_replica = true }}\n\
             failover = {{ health_interval = \"10s\", dns_ttl = \"30s\" }}\n\
             [workload]\ntasks = 40\ninterval = \"2s\"\n\
             [[faults]]\nkind = \"region_loss\"\nat = \"61s\"\n"
        ))
    };
    for seed in 1..=5 {
        let r = drill::run(&make("{ mode = \"async\", lag_ms = 10000, interval_ms = 1000 }"), seed);
        let rpo = r.rpo_surfaces.structured_state_s;
        assert!((8.0..=11.5).contains(&rpo), "seed {seed}: async 10 s behind lost {rpo} s");
        let r = drill::run(&make("{ mode = \"sync\" }"), seed);
        assert_eq!(r.rpo_surfaces.structured_state_s, 0.0, "seed {seed}: sync lost data");
        assert_eq!(r.rpo_surfaces.queue_s, 0.0, "seed {seed}: sync lost accepted jobs");
        assert_clean(&r, "active-active sync");
    }
}

#[test]
fn a_24_hour_sandbox_drill_runs() {
    let sc = parse(
        "tier = \"sandbox\"\nhorizon = \"24h\"\n[workload]\ntasks = 300\narrival = \"poisson\"\ninterval = \"4m\"\n\
         [[faults]]\nkind = \"region_loss\"\nat = \"12h\"\n",
    );
    let r = drill::run(&sc, 1);
    assert_clean(&r, "24 h");
    assert!(r.simulated_s >= 86_399.0, "ran the whole day: {}", r.simulated_s);
}

#[test]
fn the_router_rides_out_every_provider_error_mode() {
    let modes = [
        "\"server_error\"",
        "\"unavailable\"",
        "\"overloaded\"",
        "\"timeout\"",
        "\"quota_exhausted\"",
        "{ rate_limited = { retry_after_ms = 20000 } }",
        "{ slow = { factor = 20 } }",
        "{ stream_error = { after_tokens = 100 } }",
    ];
    for mode in modes {
        for seed in 1..=3 {
            let sc = parse(&format!(
                "tier = \"internal-ops\"\nhorizon = \"2h\"\n[workload]\ntasks = 15\ninterval = \"5s\"\n\
                 [[faults]]\nkind = \"provider_outage\"\nat = \"20s\"\nprovider = \"anthropic\"\nmode = {mode}\nduration = \"30m\"\n"
            ));
            let r = drill::run(&sc, seed);
            assert_clean(&r, &format!("provider outage {mode} seed {seed}"));
            assert!(r.cost.model_calls > r.baseline_cost.model_calls, "{mode}: the outage cost no extra calls?");
        }
    }
}

/// A scenario written back as TOML (what `fuzz` does for reproducers) reads
/// back to the same drill.
#[test]
fn scenarios_round_trip_through_toml() {
    for f in catalogue("scenarios") {
        let sc = scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        let text = toml::to_string(&sc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let back = scenario::parse(&f, &text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", f.display()));
        let (a, b) = (drill::run(&sc, 1), drill::run(&back, 1));
        assert_eq!(a.event_digest, b.event_digest, "{}", f.display());
    }
}

/// Validation checks fault endpoints against `host_names` without building
/// the stack: it must name exactly the hosts the build creates.
#[test]
fn host_names_match_the_built_stack() {
    for f in catalogue("scenarios") {
        let sc = scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        let built: Vec<String> =
            agentdrill::sim::stack::Stack::build(&sc, 1).rt.hosts().iter().map(|h| h.name.clone()).collect();
        assert_eq!(agentdrill::sim::stack::host_names(&sc.stack), built, "{}", f.display());
    }
}

/// `[stack.network]` shapes the simulated links: the same killed job ends
/// seconds later over 250 ms links than over loopback-fast ones (each step
/// crosses to the external APIs and back), both clean, because the bounds
/// read the same spec (a hop of 250 ms, not the default 40 ms).
#[test]
fn the_stack_network_sets_the_simulated_links_and_the_bounds_follow_it() {
    let job0_ends_s = |network: &str| {
        let sc = parse(&format!(
            "tier = \"internal-ops\"\nhorizon = \"2h\"\n[stack]\nnetwork = {network}\n\
             replication = {{ mode = \"async\", lag_ms = 500, interval_ms = 500 }}\n\
             [workload]\ntasks = 6\ntemplates = [\"book_flight\"]\n\
             [[faults]]\nkind = \"worker_kill\"\nat = {{ job = 0, step = 3, phase = \"after_checkpoint\" }}\n\
             [[faults]]\nkind = \"region_loss\"\nat = \"20m\"\nregion = \"a\"\n"
        ));
        let r = drill::run(&sc, 5);
        assert_clean(&r, network);
        let job0 = r.step_events.jobs.iter().find(|j| j.job == 0).expect("the killed job is listed");
        job0.events.last().expect("job 0 has step events").at_s
    };
    let near = job0_ends_s(
        "{ intra_region_latency_us = 0, intra_region_jitter_us = 0, cross_region_latency_us = 100, cross_region_jitter_us = 0 }",
    );
    let far = job0_ends_s("{ cross_region_latency_us = 240000, cross_region_jitter_us = 10000 }");
    assert!(far > near + 1.0, "job 0 ended at {far:.3} s over 250 ms links, {near:.3} s over loopback-fast ones");
}

/// A single-region stack whose only region is lost for good: every send
/// after the loss goes to a dead orchestrator.
fn lost_for_good() -> Scenario {
    parse(
        "tier = \"sandbox\"\nhorizon = \"24h\"\n[stack]\npattern = \"single_region\"\n\
         [workload]\ntasks = 10\narrival = \"poisson\"\ninterval = \"30m\"\nsubmit_retry = \"300ms\"\n\
         [[faults]]\nkind = \"region_loss\"\nat = \"1h\"\n",
    )
}

#[test]
fn a_long_outage_retries_only_the_newest_probe() {
    // The client probes every 30 s while nothing new completes: 2,760
    // probes over 23 h. Retrying every one of them every 300 ms would be
    // about 380 million sends (quadratic in the outage); retrying the
    // newest and the jobs is about (10 + 1) × 23 h / 300 ms = 843,000.
    let sc = lost_for_good();
    let run = drill::simulate_within(&sc, sc.seed, true, &drill::Budget::default())
        .unwrap_or_else(|e| panic!("the drill should fit its budget: {e}"));
    let stats = run.stack.rt.stats();
    let outage_s = 23 * 3_600;
    let linear = (sc.workload.tasks as u64 + 1) * outage_s * 1_000 / 300;
    assert!(stats.dropped <= linear + linear / 10, "{} sends dropped, more than {linear}", stats.dropped);
    assert!(stats.dropped >= linear / 2, "the client kept resending: {} dropped", stats.dropped);
}

#[test]
fn the_budget_counts_what_the_simulator_drops() {
    // The client's resends to the dead orchestrator are dropped, not
    // handed out as events; they are work all the same, and a budget that
    // ignored them let a drill run for minutes under a small event count.
    let sc = lost_for_good();
    let stats = drill::simulate(&sc, sc.seed, true).stack.rt.stats();
    assert!(stats.dropped > stats.events / 2, "{stats:?}");
    let room = |max_events| drill::Budget { max_events, max_heap_bytes: u64::MAX };
    let over = drill::simulate_within(&sc, sc.seed, true, &room(stats.events + stats.dropped / 2));
    assert!(over.is_err(), "the dropped sends were not counted: {stats:?}");
    assert!(drill::simulate_within(&sc, sc.seed, true, &room(stats.work() + 1)).is_ok());
}
