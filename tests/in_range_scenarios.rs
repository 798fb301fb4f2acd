//! Any scenario inside the limits of `drill::limits` runs to a verdict: no
//! panic, no abort, no hang, no runaway memory.
//!
//! The scenarios are drawn from the limits themselves, not from the fuzz
//! strategies: every count and duration log-uniformly over its whole allowed
//! range (so both the small everyday values and the extremes come up), the
//! pattern, replication mode, queue, commit latency, providers and a few
//! faults of each kind with in-range parameters. Each one must pass `validate` (it is in
//! range by construction) and is then run by the `agentdrill` binary in a
//! child process under a CPU-time and address-space cap (`setrlimit` via
//! `prlimit`), with a wall-clock watchdog. A panic, an abort, an
//! out-of-memory kill or the cap being hit fails the test and leaves the
//! scenario file behind to reproduce it.
//!
//! A drill whose sources of work multiply past the drill's budget
//! (`drill::Budget`: events and heap) may instead stop with exit 2 and the
//! budget's error; the count of those is printed.
//!
//! `PROPTEST_CASES` sets the number of cases (default 16). What the
//! generator once found is kept in `fixtures/in-range/` and run under the
//! same caps every time.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentdrill::components::orchestrator::Replication;
use agentdrill::components::provider::{ErrorMode, ProviderConfig};
use agentdrill::components::queue::QueueConfig;
use agentdrill::components::region::Pattern;
use agentdrill::drill::limits;
use agentdrill::drill::scenario::{
    self, Arrival, Dur, FaultSpec, NetworkSpec, RegionName, Scenario, Skew, StackSpec, When, WorkerTarget, Workload,
};
use agentdrill::drill::tier::{Tier, TierSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// CPU seconds one drill may use. The largest in-range drill (a million
/// tasks) takes about 8 s in a release build; debug builds are slower.
const CPU_CAP_S: u64 = if cfg!(debug_assertions) { 600 } else { 120 };
/// Wall-clock seconds allowed per CPU second before the watchdog calls a
/// drill hung.
const WALL_PER_CPU: u64 = 10;
/// Address space one drill may map: 8 GiB (a million tasks peak near 3 GB).
const MEMORY_CAP_BYTES: u64 = 8 << 30;

/// A value log-uniform in `lo..=hi` (both ends reachable).
fn log_uniform(lo: u64, hi: u64) -> impl Strategy<Value = u64> + Clone {
    assert!(lo <= hi);
    let (l, h) = ((lo.max(1) as f64).ln(), (hi.max(1) as f64).ln());
    prop_oneof![
        1 => Just(lo),
        1 => Just(hi),
        8 => (0.0..=1.0f64).prop_map(move |u| ((l + u * (h - l)).exp().round() as u64).clamp(lo, hi)),
    ]
}

/// A duration log-uniform in `lo..=hi` milliseconds.
fn dur(lo: u64, hi: u64) -> impl Strategy<Value = Dur> + Clone {
    log_uniform(lo, hi).prop_map(Dur)
}

/// The shortest in-range period of a timer over `horizon_ms`.
fn shortest_period_ms(horizon_ms: u64) -> u64 {
    horizon_ms.div_ceil(limits::MAX_TIMER_FIRINGS).max(1)
}

fn provider(base: ProviderConfig, horizon_ms: u64) -> impl Strategy<Value = ProviderConfig> {
    let span = limits::MAX_SPAN_MS;
    (
        log_uniform(0, span),
        log_uniform(0, limits::MAX_PER_UNIT_US),
        log_uniform(0, span),
        log_uniform(0, span),
        log_uniform(1, span),
        0..=limits::MAX_RETRIES,
    )
        .prop_map(move |(base_latency_ms, per_token_us, cold_ms, ttl_ms, timeout_ms, max_retries)| {
            let _ = horizon_ms;
            ProviderConfig {
                base_latency_ms,
                latency_per_output_token_us: per_token_us,
                cold_extra_latency_ms: cold_ms,
                cache_ttl_ms: ttl_ms,
                timeout_ms,
                max_retries,
                ..base.clone()
            }
        })
}

fn stack(horizon_ms: u64) -> impl Strategy<Value = StackSpec> {
    let span = limits::MAX_SPAN_MS;
    let period = shortest_period_ms(horizon_ms);
    let pattern = prop::sample::select(vec![
        Pattern::SingleRegion,
        Pattern::ActiveActive,
        Pattern::WarmStandby,
        Pattern::ColdStandby,
    ]);
    let replication = prop_oneof![
        Just(Replication::None),
        prop::option::of(log_uniform(0, span)).prop_map(|degrade_after_ms| Replication::Sync { degrade_after_ms }),
        (log_uniform(0, span), log_uniform(period, span))
            .prop_map(|(lag_ms, interval_ms)| Replication::Async { lag_ms, interval_ms }),
    ];
    let queue = prop::option::of(
        (log_uniform(0, span), log_uniform(period.max(limits::MIN_ACK_WAIT_MS), span), any::<bool>()).prop_map(
            |(dedupe_window_ms, ack_wait_ms, replicated)| QueueConfig {
                dedupe_window_ms,
                ack_wait_ms,
                max_deliver: None,
                replicated,
            },
        ),
    );
    let providers = (
        provider(ProviderConfig::anthropic(), horizon_ms),
        provider(ProviderConfig::openai(), horizon_ms),
        provider(ProviderConfig::local(), horizon_ms),
    );
    let timings = (
        (dur(period, span), dur(0, span), 1..=limits::MAX_FAILURE_THRESHOLD, dur(0, span), dur(0, span), dur(0, span)),
        (dur(limits::MIN_SNAPSHOT_INTERVAL_MS, span), dur(0, span), dur(0, span), 0..=limits::MAX_PER_UNIT_US),
        (
            dur(0, span),
            dur(0, span),
            dur(0, span),
            dur(period, span),
            dur(period, span),
            // Free commits (the default) half the time, else up to the limit.
            prop_oneof![Just(Dur(0)), dur(0, limits::MAX_COMMIT_LATENCY_MS)],
        ),
    );
    // Idle workers poll for work once a lease (1 to 30 s) over the whole
    // horizon, in both regions: at most MAX_WORKER_POLLS polls. The count
    // drawn here is cut to what the drawn lease allows.
    let most_workers = move |lease_ms: u64| {
        let poll_ms = agentdrill::components::worker::lease_poll_us(lease_ms) / 1_000;
        let polls_per_worker = horizon_ms.div_ceil(poll_ms).saturating_mul(2).max(1);
        (limits::MAX_WORKER_POLLS / polls_per_worker).clamp(1, u64::from(limits::MAX_WORKERS))
    };
    let counts = (
        log_uniform(1, most_workers(agentdrill::components::worker::LEASE_POLL_US / 1_000)),
        log_uniform(period.saturating_mul(3).max(1), span),
        1..=limits::MAX_FAILURE_THRESHOLD,
        log_uniform(0, span),
        log_uniform(0, span),
    );
    // Each link's latency and jitter up to half the limit: their sum in range.
    let half = limits::MAX_LINK_US / 2;
    let network = (log_uniform(0, half), log_uniform(0, half), log_uniform(0, half), log_uniform(0, half)).prop_map(
        |(intra, intra_jitter, cross, cross_jitter)| NetworkSpec {
            intra_region_latency_us: intra,
            intra_region_jitter_us: intra_jitter,
            cross_region_latency_us: cross,
            cross_region_jitter_us: cross_jitter,
        },
    );
    (pattern, replication, queue, providers, timings, counts, network).prop_map(
        move |(pattern, replication, queue, (a, o, l), (failover, vector, apis), counts, network)| {
            let (workers, lease_ms, breaker_threshold, window_ms, open_ms) = counts;
            let mut s =
                StackSpec { pattern, replication, queue, providers: vec![a, o, l], network, ..StackSpec::default() };
            s.workers = workers.min(most_workers(lease_ms)) as u32;
            s.standby_workers = s.standby_workers.min(s.workers);
            s.policy.lease_ms = lease_ms;
            s.breaker.failure_threshold = breaker_threshold;
            s.breaker.window_ms = window_ms;
            s.breaker.open_ms = open_ms;
            let (health_interval, health_timeout, failure_threshold, promotion, dns_ttl, scale_up) = failover;
            s.failover.health_interval = health_interval;
            s.failover.health_timeout = health_timeout;
            s.failover.failure_threshold = failure_threshold;
            s.failover.promotion = promotion;
            s.failover.dns_ttl = dns_ttl;
            s.failover.scale_up = scale_up;
            let (snapshot_interval, ship_delay, restore_base, per_point_us) = vector;
            s.vector.snapshot_interval = snapshot_interval;
            s.vector.ship_delay = ship_delay;
            s.vector.restore_base = restore_base;
            s.vector.restore_per_point_us = per_point_us;
            let (payment, email, search, recovery_scan, request_timeout, commit_latency) = apis;
            s.apis.payment_latency = payment;
            s.apis.email_latency = email;
            s.apis.search_latency = search;
            s.recovery_scan = recovery_scan;
            s.request_timeout = request_timeout;
            s.commit_latency = commit_latency;
            s
        },
    )
}

fn workload(horizon_ms: u64) -> impl Strategy<Value = Workload> {
    let span = limits::MAX_SPAN_MS;
    let period = shortest_period_ms(horizon_ms);
    log_uniform(1, u64::from(limits::MAX_TASKS)).prop_flat_map(move |tasks| {
        // The client resends each waiting job every period: at most
        // MAX_CLIENT_RESENDS sends over the horizon.
        let resend = tasks.saturating_mul(horizon_ms).div_ceil(limits::MAX_CLIENT_RESENDS).max(period);
        (
            prop::sample::subsequence(vec!["book_flight", "research_report", "approve_refund"], 1..=3),
            prop::sample::select(vec![Arrival::AtOnce, Arrival::Uniform, Arrival::Poisson]),
            (dur(1, span), dur(period, span), dur(resend, span), dur(resend, span)),
            any::<bool>(),
        )
            .prop_map(
                move |(templates, arrival, (interval, probe_interval, resubmit_after, submit_retry), probes)| {
                    Workload {
                        templates: templates.into_iter().map(str::to_owned).collect(),
                        tasks: tasks as u32,
                        arrival,
                        interval,
                        probe_interval,
                        probes,
                        resubmit_after,
                        submit_retry,
                    }
                },
            )
    })
}

/// A fault of any time-triggered kind, with in-range parameters, placed in
/// `0..horizon`. Worker and provider references are fixed up by
/// [`consistent`].
fn fault(horizon_ms: u64) -> impl Strategy<Value = FaultSpec> {
    let span = limits::MAX_SPAN_MS;
    let at = (0..horizon_ms).prop_map(Dur);
    let mode = prop_oneof![
        log_uniform(0, span).prop_map(|retry_after_ms| ErrorMode::RateLimited { retry_after_ms }),
        Just(ErrorMode::QuotaExhausted),
        Just(ErrorMode::ServerError),
        Just(ErrorMode::Unavailable),
        Just(ErrorMode::Overloaded),
        Just(ErrorMode::Timeout),
        log_uniform(1, u64::from(limits::MAX_SLOW_FACTOR)).prop_map(|f| ErrorMode::Slow { factor: f as u32 }),
        log_uniform(0, u64::from(limits::MAX_STREAM_TOKENS))
            .prop_map(|t| ErrorMode::StreamError { after_tokens: t as u32 }),
    ];
    prop_oneof![
        (at.clone(), any::<u32>(), prop::option::of(dur(0, span))).prop_map(|(at, w, restart_after)| {
            FaultSpec::WorkerKill { at: When::At(at), worker: Some(WorkerTarget::Index(w)), restart_after }
        }),
        (at.clone(), any::<u32>(), dur(1, span)).prop_map(|(at, w, duration)| FaultSpec::WorkerPause {
            at: When::At(at),
            worker: Some(WorkerTarget::Index(w)),
            duration,
        }),
        (at.clone(), prop::option::of(dur(1, span))).prop_map(|(at, duration)| FaultSpec::RegionLoss {
            at,
            region: RegionName::A,
            duration,
        }),
        (at.clone(), mode, dur(1, span), 0..3usize).prop_map(|(at, mode, duration, p)| {
            let provider = ["anthropic", "openai", "local"][p].to_owned();
            FaultSpec::ProviderOutage { at, provider, mode, duration }
        }),
        (at.clone(), dur(1, span), any::<bool>()).prop_map(|(at, duration, one_way)| FaultSpec::Partition {
            at,
            duration,
            a: "region:a".into(),
            b: "region:b".into(),
            one_way,
        }),
        (at.clone(), dur(1, span), dur(1, span), 0.0..=1.0f64).prop_map(|(at, duration, latency, loss)| {
            FaultSpec::LinkDegradation {
                at,
                duration,
                a: "region:a".into(),
                b: "region:external".into(),
                one_way: false,
                latency,
                loss,
            }
        }),
        (at.clone(), dur(1, span), dur(0, span)).prop_map(|(at, duration, lag)| FaultSpec::ReplicationLagSpike {
            at,
            duration,
            lag
        }),
        (at.clone(), log_uniform(0, span), any::<bool>(), prop::option::of(dur(1, span))).prop_map(
            |(at, ms, back, duration)| {
                let ms = ms as i64;
                FaultSpec::ClockSkew {
                    at,
                    host: "worker-a-0".into(),
                    offset: Skew(if back { -ms } else { ms }),
                    duration,
                }
            }
        ),
        (at.clone(), 0.001..=1.0f64).prop_map(|(at, fraction)| FaultSpec::VectorCorruption { at, fraction }),
        (at, 0.001..=1.0f64).prop_map(|(at, error_rate)| FaultSpec::BadDeploy { at, error_rate }),
    ]
}

/// References made to exist: a worker index below `workers`, no region B
/// loss on one region (the generator only loses A).
fn consistent(mut sc: Scenario) -> Scenario {
    let workers = sc.stack.workers;
    for f in &mut sc.faults {
        if let FaultSpec::WorkerKill { worker: Some(WorkerTarget::Index(w)), .. }
        | FaultSpec::WorkerPause { worker: Some(WorkerTarget::Index(w)), .. } = f
        {
            *w %= workers;
        }
    }
    sc
}

fn scenario() -> impl Strategy<Value = Scenario> {
    dur(1_000, limits::MAX_HORIZON_MS).prop_flat_map(|horizon| {
        let h = horizon.ms();
        (stack(h), workload(h), prop::collection::vec(fault(h), 0..=4), any::<u64>()).prop_map(
            move |(stack, workload, faults, seed)| {
                consistent(Scenario {
                    name: "in-range".into(),
                    purpose: String::new(),
                    tier: TierSpec::Named(Tier::Sandbox),
                    seed,
                    horizon,
                    expect: scenario::Expect::Pass,
                    stack,
                    workload,
                    faults,
                    max_cost_increase_pct: None,
                })
            },
        )
    })
}

/// How a drill under the caps ended, when it ended well.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// A verdict (exit 0 or 1).
    Verdict,
    /// Stopped by the drill's own budget (`drill::Budget`), with exit 2 and
    /// the budget's error: sources of work that multiply each other are in
    /// range on every static bound, and the budget refuses them cleanly.
    OverBudget,
}

/// The words of `drill::OverBudget`'s message that say the budget ran out.
const OVER_BUDGET: &str = "the budget of one drill";

/// Runs `agentdrill run FILE` under the caps; `Err` says what went wrong.
fn run_capped(file: &Path, cpu_cap_s: u64, memory_cap_bytes: u64) -> Result<Ended, String> {
    let bin = env!("CARGO_BIN_EXE_agentdrill");
    let mut child = Command::new("prlimit")
        .arg(format!("--cpu={cpu_cap_s}"))
        .arg(format!("--as={memory_cap_bytes}"))
        .arg("--")
        .arg(bin)
        .args(["run", "--format", "json"])
        .arg(file)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start prlimit: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // The CPU cap stops a busy loop; the watchdog stops a process that
    // waits without using the CPU (generous: the machine may be shared).
    let deadline = Instant::now() + Duration::from_secs(cpu_cap_s * WALL_PER_CPU);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("hung: still running after {} s of wall time", cpu_cap_s * WALL_PER_CPU));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = reader.join().unwrap_or_default();
    if err.contains("panicked") {
        return Err(format!("panicked: {err}"));
    }
    match status.code() {
        Some(0 | 1) => Ok(Ended::Verdict),
        Some(2) if err.contains(OVER_BUDGET) && err.lines().all(|l| l.contains(OVER_BUDGET)) => Ok(Ended::OverBudget),
        Some(code) => {
            Err(format!("exit {code} (a valid drill gives a verdict, 0 or 1, or stops on its budget): {err}"))
        }
        None => {
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt as _;
                Err(format!(
                    "killed by signal {:?} (SIGXCPU/SIGKILL: over {cpu_cap_s} s of CPU; SIGABRT: abort or out of memory): {err}",
                    status.signal()
                ))
            }
            #[cfg(not(unix))]
            Err(format!("killed: {err}"))
        }
    }
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentdrill-in-range-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

#[test]
fn every_in_range_scenario_runs_to_a_verdict_under_a_time_and_memory_cap() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let config = Config { cases, max_shrink_iters: 16, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let dir = scratch();
    let n = std::sync::atomic::AtomicU32::new(0);
    let over_budget = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&scenario(), |sc| {
        let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let file = dir.join(format!("case-{n}.toml"));
        let text = toml::to_string(&sc).map_err(|e| TestCaseError::fail(format!("serialise: {e}")))?;
        std::fs::write(&file, &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // In range by construction: validate must accept it.
        if let Err(e) = agentdrill::drill::loader::load(&file) {
            return Err(TestCaseError::fail(format!("an in-range scenario was refused: {e}\n{text}")));
        }
        match run_capped(&file, CPU_CAP_S, MEMORY_CAP_BYTES) {
            Ok(ended) => {
                if ended == Ended::OverBudget {
                    over_budget.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = std::fs::remove_file(&file);
                Ok(())
            }
            Err(why) => Err(TestCaseError::fail(format!("{}: {why}", file.display()))),
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "{} in-range drills: {} stopped by their budget, the others gave a verdict",
        n.into_inner(),
        over_budget.into_inner()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_caps_catch_a_drill_that_needs_more() {
    // The check above must be able to fail: the largest in-range workload
    // (a million tasks, several seconds and gigabytes) is reported, not
    // passed, under a 1 s CPU cap and under a 64 MiB memory cap.
    let dir = scratch();
    let file = dir.join("large.toml");
    let text = format!(
        "tier = \"batch\"\nhorizon = \"12h\"\n[stack]\nworkers = 256\n[workload]\ntasks = {}\narrival = \"uniform\"\ninterval = \"40ms\"\nsubmit_retry = \"12h\"\nresubmit_after = \"12h\"\n",
        limits::MAX_TASKS
    );
    std::fs::write(&file, text).expect("written");
    let slow = run_capped(&file, 1, MEMORY_CAP_BYTES).expect_err("over the CPU cap");
    // Stopped by the CPU cap, or by the watchdog first on a busy machine.
    assert!(slow.contains("killed by signal") || slow.contains("hung"), "{slow}");
    let big = run_capped(&file, CPU_CAP_S, 64 << 20).expect_err("over the memory cap");
    assert!(big.contains("killed by signal") || big.contains("exit"), "{big}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn the_kept_in_range_finds_run_to_a_verdict_under_the_caps() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/in-range");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no kept finds in {}", dir.display());
    for file in &files {
        if let Err(e) = agentdrill::drill::loader::load(file) {
            panic!("a kept in-range scenario was refused: {}: {e}", file.display());
        }
        match run_capped(file, CPU_CAP_S, MEMORY_CAP_BYTES) {
            Ok(ended) => eprintln!("{}: {ended:?}", file.display()),
            Err(why) => panic!("{}: {why}", file.display()),
        }
    }
}

#[test]
fn a_drill_past_its_budget_stops_with_a_located_error_well_under_the_caps() {
    // Sixteen thousand queue messages redelivered every 30 s for a day while
    // the client resubmits them: in range on every static bound, and hours
    // of CPU and tens of gigabytes without the budget.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/in-range/queue-redelivery-storm.toml");
    let ended = run_capped(&file, CPU_CAP_S, MEMORY_CAP_BYTES).unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(ended, Ended::OverBudget);
    // A small event budget stops it at once, naming the file, the flag and
    // what to change.
    let out = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(["run", "--max-events", "100000"])
        .arg(&file)
        .output()
        .expect("agentdrill runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for words in ["queue-redelivery-storm.toml", "100,000 simulated events", "--max-events", "ack_wait_ms"] {
        assert!(err.contains(words), "no {words:?} in: {err}");
    }
}
