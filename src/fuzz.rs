//! Property-based crash testing: generated drills, the invariants checked on
//! each, shrinking to the smallest failing drill, and the reproducer file.
//!
//! # Strategies
//!
//! The proptest strategies are public so that a stack's own test suite can
//! use them ([`scenario`] for whole drills, or the parts: [`workload`],
//! [`stack`], [`fault`], [`fault_schedule`]):
//!
//! ```
//! use agentdrill::fuzz::{self, PolicyChoice};
//! use agentdrill::drill::{self, invariants};
//! use proptest::prelude::*;
//! use proptest::test_runner::{Config, RngSeed, TestRunner};
//!
//! // In a test suite this is `proptest! { #[test] fn keeps_invariants(sc in
//! // fuzz::scenario(PolicyChoice::Reference)) { … } }`; here the runner is
//! // driven by hand so the example runs as a doc test.
//! let config = Config { cases: 4, rng_seed: RngSeed::Fixed(7), ..Config::default() };
//! TestRunner::new(config)
//!     .run(&fuzz::scenario(PolicyChoice::Reference), |sc| {
//!         let run = drill::simulate(&sc, sc.seed, true);
//!         let broken = invariants::check(&sc, &run);
//!         prop_assert!(broken.is_empty(), "{}", broken[0]);
//!         Ok(())
//!     })
//!     .expect("the reference stack keeps every invariant");
//! ```
//!
//! They shrink in the order a reader wants: the drill is the tuple
//! `(faults, workload, stack, seed)` and proptest shrinks a tuple's parts in
//! order, so **fewer faults** first (`vec(fault, 0..=N)` drops elements
//! before simplifying them), then **earlier and simpler faults** (times are
//! integers counting up from 0; every choice lists the simplest
//! alternative first: a kill before a pause before a provider outage before
//! a region loss, a time before an event, a permanent loss before a
//! temporary one), then **smaller workloads** (fewer tasks, fewer
//! templates), then a plainer stack. The simulation seed never shrinks.
//!
//! A fault is generated with raw numbers (job, step, worker) and resolved
//! against the workload and stack when the drill is assembled (`job %
//! tasks`, `step % steps`), so the parts stay independent and shrink
//! independently. Adding a `FaultSpec` variant means one arm in [`fault`]
//! (its strategy, simplest parameters first), and one each in `resolve`,
//! `invariants::Budget::own_us` (its RTO budget from the stack) and
//! `invariants::Budget::fault_end_us` — the compiler points at the last
//! three.
//!
//! # Policies
//!
//! [`PolicyChoice`] is the reference policy or one anti-pattern. Each sets
//! the stack up so that its anti-pattern can do harm (see
//! [`PolicyChoice::prepare`]); the reference policy runs on the same kinds of
//! stack. The tier a generated drill claims is the tightest one the
//! reference stack's derived budgets fit ([`claim_tier`]).
//!
//! # The runner
//!
//! Case `i` of a run is generated from its own RNG, seeded from
//! `(--seed, i)`: the same seed and case count find the same violations, and
//! `--shard I/N` runs the cases with `i % N == I - 1`, so N jobs cover
//! disjoint cases. On a violation the case is shrunk while it still breaks
//! the *same* invariant, and the smallest drill is written as a scenario
//! file (`expect = "fail"`, a leading comment naming the invariant) that
//! `agentdrill run` re-runs. A panic in the simulation is caught and is a
//! `no_panic` violation like any other.
//!
//! # Engine bugs
//!
//! Nothing generated is skipped: a violation under the reference policy is
//! an engine bug (or a bound that misreads the stack's configuration) and is
//! fixed, with its reproducer kept in `fixtures/regressions/` expecting a
//! pass (`reference-*.toml`).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde::Serialize;

use crate::components::env::Phase;
use crate::components::ids::{Micros, US_PER_S};
use crate::components::orchestrator::Replication;
use crate::components::policy::AntiPattern;
use crate::components::provider::ErrorMode;
use crate::components::region::Pattern;
use crate::drill::invariants::{self, Budget, Invariant, Violation};
use crate::drill::limits;
use crate::drill::scenario::{
    Arrival, Dur, Expect, FailoverSpec, FaultSpec, NetworkSpec, RegionName, Scenario, Skew, SnapshotLocation,
    StackSpec, ToolApi, VectorSpec, When, WorkerTarget, Workload,
};
use crate::drill::tier::Tier;

/// The most faults a generated drill has.
pub const MAX_FAULTS: usize = 4;
/// Faults start within this long after the drill starts.
pub const FAULT_WINDOW_MS: u64 = 15 * 60 * 1_000;
const TEMPLATES: [&str; 3] = ["book_flight", "research_report", "approve_refund"];
const PROVIDERS: [&str; 3] = ["anthropic", "openai", "local"];

/// The policy a fuzz run tests: the reference, or one anti-pattern (the
/// number is DOMAIN.md's): `reference` (every safeguard on),
/// `key-from-model-output`, `key-from-prompt-hash`, `key-from-wall-clock`
/// (1), `checkpoint-at-session-end` (2), `checkpoint-after-step` (3),
/// `resume-without-reconcile` (4), `short-lease` (5), `no-fencing` (6),
/// `worker-minted-task-id` (7), `replication-lag-beyond-rpo` (8),
/// `snapshots-same-region` (9), `single-provider` (10), `no-circuit-breaker`
/// (11), `artefacts-on-local-disk` (13); and the hidden, test-only
/// `planted-bug-persist-before-call`. (The variants carry no doc comments
/// on purpose: without per-value help, `fuzz --help` prints the compact
/// `[possible values: …]` list.)
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyChoice {
    Reference,
    KeyFromModelOutput,
    KeyFromPromptHash,
    KeyFromWallClock,
    CheckpointAtSessionEnd,
    CheckpointAfterStep,
    ResumeWithoutReconcile,
    ShortLease,
    NoFencing,
    WorkerMintedTaskId,
    ReplicationLagBeyondRpo,
    SnapshotsSameRegion,
    SingleProvider,
    NoCircuitBreaker,
    ArtefactsOnLocalDisk,
    QueueDedupeWindow,
    WallClockLeases,
    NoResponseValidation,
    NoAutoRollback,
    #[value(hide = true)]
    PlantedBugPersistBeforeCall,
}

impl PolicyChoice {
    /// Every anti-pattern the engine expresses (each has a `--policy` name).
    pub const ANTI_PATTERNS: [PolicyChoice; 18] = [
        PolicyChoice::KeyFromModelOutput,
        PolicyChoice::KeyFromPromptHash,
        PolicyChoice::KeyFromWallClock,
        PolicyChoice::CheckpointAtSessionEnd,
        PolicyChoice::CheckpointAfterStep,
        PolicyChoice::ResumeWithoutReconcile,
        PolicyChoice::ShortLease,
        PolicyChoice::NoFencing,
        PolicyChoice::WorkerMintedTaskId,
        PolicyChoice::ReplicationLagBeyondRpo,
        PolicyChoice::SnapshotsSameRegion,
        PolicyChoice::SingleProvider,
        PolicyChoice::NoCircuitBreaker,
        PolicyChoice::ArtefactsOnLocalDisk,
        PolicyChoice::QueueDedupeWindow,
        PolicyChoice::WallClockLeases,
        PolicyChoice::NoResponseValidation,
        PolicyChoice::NoAutoRollback,
    ];

    /// The name as written on the command line.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map_or_else(String::new, |v| v.get_name().to_owned())
    }

    /// The anti-pattern switched on, if any.
    pub fn anti_pattern(self) -> Option<AntiPattern> {
        Some(match self {
            PolicyChoice::Reference | PolicyChoice::PlantedBugPersistBeforeCall => return None,
            PolicyChoice::KeyFromModelOutput => AntiPattern::KeyFromModelOutput,
            PolicyChoice::KeyFromPromptHash => AntiPattern::KeyFromPromptHash,
            PolicyChoice::KeyFromWallClock => AntiPattern::KeyFromWallClock,
            PolicyChoice::CheckpointAtSessionEnd => AntiPattern::CheckpointAtSessionEnd,
            PolicyChoice::CheckpointAfterStep => AntiPattern::CheckpointAfterStep,
            PolicyChoice::ResumeWithoutReconcile => AntiPattern::ResumeWithoutReconcile,
            PolicyChoice::ShortLease => AntiPattern::ShortLease,
            PolicyChoice::NoFencing => AntiPattern::NoFencing,
            PolicyChoice::WorkerMintedTaskId => AntiPattern::WorkerMintedTaskId,
            PolicyChoice::ReplicationLagBeyondRpo => AntiPattern::ReplicationLagBeyondRpo,
            PolicyChoice::SnapshotsSameRegion => AntiPattern::SnapshotsSameRegion,
            PolicyChoice::SingleProvider => AntiPattern::SingleProvider,
            PolicyChoice::NoCircuitBreaker => AntiPattern::NoCircuitBreaker,
            PolicyChoice::ArtefactsOnLocalDisk => AntiPattern::ArtefactsOnLocalDisk,
            PolicyChoice::QueueDedupeWindow => AntiPattern::QueueDedupeWindowTooShort,
            PolicyChoice::WallClockLeases => AntiPattern::WallClockLeases,
            PolicyChoice::NoResponseValidation => AntiPattern::NoResponseValidation,
            PolicyChoice::NoAutoRollback => AntiPattern::NoAutoRollback,
        })
    }

    /// Sets a generated stack (and workload) up so that this policy's
    /// anti-pattern can do harm. The reference policy runs on the same
    /// prepared stacks (that is how it is tested on every anti-pattern's
    /// stacks); [`PolicyChoice::switch_on`] then turns the anti-pattern on.
    /// Per anti-pattern:
    ///
    /// - keys from model output, prompt hash or wall clock, and a worker-minted
    ///   task id: nothing to prepare — the payment API deduplicates, but on
    ///   a resume the key is new, so a kill in flight charges twice;
    /// - checkpoint after the step, resume without reconcile, no fencing: the
    ///   email API does not deduplicate (`email_dedupe = false`), so a
    ///   re-issued or zombie email is a second email;
    /// - short lease (5 s, no renewal): as above, and the email API takes 6–9
    ///   s (longer than the lease, shorter than the worker's 10 s request
    ///   timeout), so the lease runs out during calls;
    /// - checkpoint at session end and artefacts on local disk: nothing — the
    ///   resumer decides again, and the payment/email API refuses the new
    ///   parameters under the old key (the task fails) or acts on them;
    /// - replication lag beyond RPO: the reference version replicates
    ///   synchronously (so the tier it claims is tight); the switch then
    ///   makes replication asynchronous, lagging twice the tier's RPO;
    /// - snapshots in the same region: no streaming replica (the switch then
    ///   keeps the snapshots in region A);
    /// - single provider: nothing (a provider outage is the agent's outage);
    /// - no circuit breaker: a breaker that opens after 1–2 failures and a
    ///   backlog of 20–40 jobs at once on 1–2 workers, so that calls keep
    ///   coming during an outage;
    /// - queue dedupe window (12): a queue whose dedupe window (30 s) is
    ///   shorter than the client's resubmission delay (60–120 s), an email
    ///   API without deduplication, a backlog; its fault (see
    ///   [`PolicyChoice::faults`]) cuts the queue's answers to the client;
    /// - wall-clock leases: two workers, a 10 s lease, an email API without
    ///   deduplication, a backlog; its faults set worker 0's clock back and
    ///   freeze the worker running a job after a checkpoint, past its lease;
    /// - no response validation: every template and a steady stream of
    ///   jobs; its fault is a tool schema change;
    /// - no auto rollback: a steady stream of 20–40 jobs; its fault is a bad
    ///   deploy (error rate 0.3–0.9).
    pub fn prepare(self, stack: &mut StackSpec, workload: &mut Workload) {
        if matches!(
            self,
            PolicyChoice::CheckpointAfterStep
                | PolicyChoice::ResumeWithoutReconcile
                | PolicyChoice::NoFencing
                | PolicyChoice::ShortLease
        ) {
            stack.apis.email_dedupe = false;
        }
        let stream = |workload: &mut Workload, least: u32| {
            workload.tasks = least + workload.tasks % (least + 1);
            workload.arrival = Arrival::Uniform;
            workload.interval = Dur::secs(5);
        };
        match self {
            PolicyChoice::QueueDedupeWindow => {
                stack.queue =
                    Some(crate::components::queue::QueueConfig { dedupe_window_ms: 30_000, ..Default::default() });
                stack.apis.email_dedupe = false;
                workload.submit_retry = Dur::secs(60 + u64::from(workload.tasks % 61));
                stream(workload, 10);
            }
            PolicyChoice::WallClockLeases => {
                stack.workers = 2;
                stack.standby_workers = stack.standby_workers.min(2);
                stack.policy.lease_ms = 10_000;
                stack.apis.email_dedupe = false;
                workload.tasks = 8 + workload.tasks % 9;
                workload.arrival = Arrival::AtOnce;
            }
            PolicyChoice::NoResponseValidation => {
                workload.templates = TEMPLATES.iter().map(|t| (*t).to_owned()).collect();
                stream(workload, 10);
            }
            PolicyChoice::NoAutoRollback => stream(workload, 20),
            PolicyChoice::ShortLease => {
                // 6–9 s, from the generated latency.
                stack.apis.email_latency = Dur(6_000 + stack.apis.email_latency.ms() % 3_001);
            }
            // The claim (the tightest tier the reference version fits) must
            // be tight for a lag "beyond the tier's RPO" to mean anything:
            // the reference version replicates synchronously, so its RTO
            // budget has no wait for resubmitted jobs.
            PolicyChoice::ReplicationLagBeyondRpo => stack.replication = Replication::Sync { degrade_after_ms: None },
            PolicyChoice::SnapshotsSameRegion => stack.vector.streaming_replica = false,
            PolicyChoice::NoCircuitBreaker => {
                stack.breaker.failure_threshold = 1 + stack.breaker.failure_threshold % 2;
                stack.workers = 1 + stack.workers % 2;
                stack.standby_workers = stack.standby_workers.min(stack.workers);
                workload.tasks = 20 + workload.tasks % 21;
                workload.arrival = Arrival::AtOnce;
            }
            _ => {}
        }
    }

    /// Turns this policy's switch on in a prepared stack that claims `tier`:
    /// the anti-pattern's policy switch, or — for the two that are stack
    /// configuration — asynchronous replication lagging twice the tier's RPO
    /// (anti-pattern 8), snapshots kept in region A with no streaming replica
    /// (anti-pattern 9). The planted bug sets its test-only switch.
    pub fn switch_on(self, stack: &mut StackSpec, tier: Tier) {
        match self {
            PolicyChoice::ReplicationLagBeyondRpo => {
                stack.replication = Replication::Async { lag_ms: 2 * tier.rpo_s() as u64 * 1_000, interval_ms: 1_000 };
            }
            PolicyChoice::SnapshotsSameRegion => {
                stack.vector.snapshot_location = SnapshotLocation::SameRegion;
                stack.vector.streaming_replica = false;
            }
            PolicyChoice::PlantedBugPersistBeforeCall => stack.policy.planted_bug_persist_before_call = true,
            _ => {}
        }
        stack.anti_patterns.extend(self.anti_pattern());
    }
}

impl PolicyChoice {
    /// The faults this policy's anti-pattern needs to bite, put first in
    /// every generated schedule (the rest of the schedule is generated as
    /// for any policy; the shrinker may still drop them when the drill
    /// fails without): none for most; a disk loss after a step's result is
    /// persisted for artefacts on local disk; a one-way partition from the queue
    /// to the client for the queue dedupe window; a clock set back on
    /// worker 0 and a pause of it past its lease for wall-clock leases; a
    /// tool schema change for no response validation; a bad deploy for no
    /// auto rollback.
    pub fn faults(self) -> BoxedStrategy<Vec<FaultSpec>> {
        match self {
            PolicyChoice::QueueDedupeWindow => (dur_s(1, 30), dur_s(60, 240))
                .prop_map(|(at, duration)| {
                    vec![FaultSpec::Partition { at, duration, a: "queue-a".into(), b: "client".into(), one_way: true }]
                })
                .boxed(),
            PolicyChoice::WallClockLeases => (dur_s(0, 5), 60..=300i64, 0..16u32, 0..16u16, dur_s(15, 60))
                .prop_map(|(skew_at, back_s, job, step, pause)| {
                    vec![
                        FaultSpec::ClockSkew {
                            at: skew_at,
                            host: "worker-a-0".into(),
                            offset: Skew(-back_s * 1_000),
                            duration: None,
                        },
                        // Whoever runs the job: worker 0 half the time.
                        FaultSpec::WorkerPause {
                            at: When::Event { job, step, phase: Phase::AfterCheckpoint },
                            worker: None,
                            duration: pause,
                        },
                    ]
                })
                .boxed(),
            PolicyChoice::NoResponseValidation => (
                dur_s(0, 120),
                dur_s(60, 600),
                prop::sample::select(vec![ToolApi::Payment, ToolApi::Email, ToolApi::Search]),
            )
                .prop_map(|(at, duration, api)| vec![FaultSpec::ToolSchemaChange { at, duration, api }])
                .boxed(),
            PolicyChoice::ArtefactsOnLocalDisk => (0..16u32, 0..16u16)
                .prop_map(|(job, step)| {
                    vec![FaultSpec::DiskLoss {
                        at: When::Event { job, step, phase: Phase::AfterPersist },
                        worker: None,
                    }]
                })
                .boxed(),
            PolicyChoice::NoAutoRollback => (dur_s(0, 120), 3..=9u32)
                .prop_map(|(at, r)| vec![FaultSpec::BadDeploy { at, error_rate: f64::from(r) / 10.0 }])
                .boxed(),
            _ => Just(Vec::new()).boxed(),
        }
    }
}

// ---------------------------------------------------------------- strategies

fn dur_ms(lo: u64, hi: u64) -> impl Strategy<Value = Dur> + Clone {
    (lo..=hi).prop_map(Dur)
}

fn dur_s(lo: u64, hi: u64) -> impl Strategy<Value = Dur> + Clone {
    (lo..=hi).prop_map(Dur::secs)
}

/// A fault start time, in steps of 100 ms from 0.
fn start_time() -> impl Strategy<Value = Dur> + Clone {
    (0..=FAULT_WINDOW_MS / 100).prop_map(|x| Dur(x * 100))
}

/// When a worker fault starts: a time, or an event (raw job and step,
/// resolved against the workload later).
pub fn when() -> impl Strategy<Value = When> + Clone {
    prop_oneof![
        start_time().prop_map(When::At),
        (0..64u32, 0..16u16, prop::sample::select(Phase::ALL.to_vec())).prop_map(|(job, step, phase)| When::Event {
            job,
            step,
            phase
        }),
    ]
}

fn worker_target() -> impl Strategy<Value = Option<WorkerTarget>> + Clone {
    prop_oneof![(0..16u32).prop_map(WorkerTarget::Index), (0..64u32).prop_map(WorkerTarget::HoldingJob)].prop_map(Some)
}

/// A provider error mode, simplest first.
pub fn error_mode() -> impl Strategy<Value = ErrorMode> + Clone {
    prop_oneof![
        Just(ErrorMode::Unavailable),
        Just(ErrorMode::ServerError),
        Just(ErrorMode::Overloaded),
        Just(ErrorMode::QuotaExhausted),
        Just(ErrorMode::Timeout),
        (1..=60u64).prop_map(|s| ErrorMode::RateLimited { retry_after_ms: s * 1_000 }),
        (2..=30u32).prop_map(|factor| ErrorMode::Slow { factor }),
        (1..=250u32).prop_map(|after_tokens| ErrorMode::StreamError { after_tokens }),
    ]
}

/// A network endpoint for partitions and link degradations: a host every
/// generated (two-region) stack has, a worker by raw index (resolved
/// against the stack), or a region.
fn endpoint() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        (0..16u32).prop_map(|n| format!("worker-a-{n}")),
        prop::sample::select(vec![
            "orchestrator-a",
            "vector-a",
            "payment-api",
            "email-api",
            "client",
            "failover-controller",
            "queue-a",
            "region:a",
            "region:b",
            "region:external",
        ])
        .prop_map(str::to_owned),
    ]
}

/// A signed clock offset, ±1 s to ±10 min.
fn skew() -> impl Strategy<Value = Skew> + Clone {
    (1..=600i64, any::<bool>()).prop_map(|(s, back)| Skew(if back { -s * 1_000 } else { s * 1_000 }))
}

/// One fault from the whole catalogue, with its parameters, simplest kinds
/// first: a worker kill, a worker pause, a disk loss, a prompt-cache loss, a
/// provider outage, a tool schema change, a bad deploy, a replication-lag
/// spike, a vector corruption, a clock skew, a link degradation, a
/// partition, a queue loss, a region loss. The four kinds of the first
/// campaign weigh 3, the others 1. Raw numbers (job, step, worker index)
/// are resolved when the drill is assembled.
pub fn fault() -> impl Strategy<Value = FaultSpec> + Clone {
    let kill = (when(), worker_target(), dur_s(1, 120))
        .prop_map(|(at, worker, restart)| FaultSpec::WorkerKill { at, worker, restart_after: Some(restart) })
        .boxed();
    let pause = (when(), worker_target(), dur_s(1, 300))
        .prop_map(|(at, worker, duration)| FaultSpec::WorkerPause { at, worker, duration })
        .boxed();
    let disk = (when(), worker_target()).prop_map(|(at, worker)| FaultSpec::DiskLoss { at, worker }).boxed();
    let cache = (start_time(), dur_s(1, 30 * 60), prop::option::of(prop::sample::select(PROVIDERS.to_vec())))
        .prop_map(|(at, duration, provider)| FaultSpec::PromptCacheLoss {
            at,
            duration,
            provider: provider.map(str::to_owned),
        })
        .boxed();
    let outage = (start_time(), prop::sample::select(PROVIDERS.to_vec()), error_mode(), dur_s(1, 40 * 60))
        .prop_map(|(at, provider, mode, duration)| FaultSpec::ProviderOutage {
            at,
            provider: provider.to_owned(),
            mode,
            duration,
        })
        .boxed();
    let schema = (
        start_time(),
        dur_s(1, 30 * 60),
        prop::sample::select(vec![ToolApi::Payment, ToolApi::Email, ToolApi::Search]),
    )
        .prop_map(|(at, duration, api)| FaultSpec::ToolSchemaChange { at, duration, api })
        .boxed();
    let deploy = (start_time(), 1..=10u32)
        .prop_map(|(at, r)| FaultSpec::BadDeploy { at, error_rate: f64::from(r) / 10.0 })
        .boxed();
    let spike = (start_time(), dur_s(1, 600), dur_s(1, 120))
        .prop_map(|(at, duration, lag)| FaultSpec::ReplicationLagSpike { at, duration, lag })
        .boxed();
    let corruption = (start_time(), 1..=50u32)
        .prop_map(|(at, pct)| FaultSpec::VectorCorruption { at, fraction: f64::from(pct) / 100.0 })
        .boxed();
    let host = prop_oneof![
        (0..16u32).prop_map(|n| format!("worker-a-{n}")),
        prop::sample::select(vec!["orchestrator-a", "orchestrator-b"]).prop_map(str::to_owned),
    ];
    let clock = (start_time(), host, skew(), prop::option::of(dur_s(1, 30 * 60)))
        .prop_map(|(at, host, offset, duration)| FaultSpec::ClockSkew { at, host, offset, duration })
        .boxed();
    let link = (start_time(), dur_s(1, 600), endpoint(), endpoint(), any::<bool>(), dur_ms(0, 5_000), 0..=50u32)
        .prop_map(|(at, duration, a, b, one_way, latency, loss)| FaultSpec::LinkDegradation {
            at,
            duration,
            a,
            b,
            one_way,
            // A degradation needs latency or loss.
            latency: if loss == 0 && latency.ms() == 0 { Dur(100) } else { latency },
            loss: f64::from(loss) / 100.0,
        })
        .boxed();
    let partition = (start_time(), dur_s(1, 600), endpoint(), endpoint(), any::<bool>())
        .prop_map(|(at, duration, a, b, one_way)| FaultSpec::Partition { at, duration, a, b, one_way })
        .boxed();
    let queue = (start_time(), prop::option::of(dur_s(1, 30 * 60)))
        .prop_map(|(at, duration)| FaultSpec::QueueLoss { at, duration })
        .boxed();
    let region =
        (start_time(), prop_oneof![Just(RegionName::A), Just(RegionName::B)], prop::option::of(dur_s(1, 30 * 60)))
            .prop_map(|(at, region, duration)| {
                // Losing the standby region for good is not generated: under
                // synchronous replication it stalls the primary for good.
                let duration = if region == RegionName::B { duration.or(Some(Dur::secs(600))) } else { duration };
                FaultSpec::RegionLoss { at, region, duration }
            })
            .boxed();
    prop::strategy::Union::new_weighted(vec![
        (3, kill),
        (3, pause),
        (1, disk),
        (1, cache),
        (3, outage),
        (1, schema),
        (1, deploy),
        (1, spike),
        (1, corruption),
        (1, clock),
        (1, link),
        (1, partition),
        (1, queue),
        (3, region),
    ])
}

/// A fault schedule: up to `max` faults (shrinks to fewer first).
pub fn fault_schedule(max: usize) -> impl Strategy<Value = Vec<FaultSpec>> + Clone {
    prop::collection::vec(fault(), 0..=max)
}

/// A workload: 1–24 jobs over a non-empty subset of the templates, at once,
/// uniform or Poisson, 1–30 s apart.
pub fn workload() -> impl Strategy<Value = Workload> + Clone {
    (
        1..=24u32,
        prop::sample::subsequence(TEMPLATES.to_vec(), 1..=3),
        prop_oneof![Just(Arrival::AtOnce), Just(Arrival::Uniform), Just(Arrival::Poisson)],
        dur_s(1, 30),
    )
        .prop_map(|(tasks, templates, arrival, interval)| Workload {
            templates: templates.into_iter().map(str::to_owned).collect(),
            tasks,
            arrival,
            interval,
            ..Workload::default()
        })
}

/// The standing network: the default two cloud regions most of the time,
/// else links anywhere from loopback-fast to the slowest allowed
/// ([`limits::MAX_LINK_US`] per link, latency plus jitter).
pub fn network() -> impl Strategy<Value = NetworkSpec> + Clone {
    let max = limits::MAX_LINK_US;
    let link = (0..=max).prop_flat_map(move |latency| (Just(latency), 0..=(max - latency).min(50_000)));
    prop_oneof![
        3 => Just(NetworkSpec::default()),
        1 => (link.clone(), link).prop_map(|((intra, intra_jitter), (cross, cross_jitter))| NetworkSpec {
            intra_region_latency_us: intra.min(cross),
            intra_region_jitter_us: intra_jitter,
            cross_region_latency_us: cross,
            cross_region_jitter_us: cross_jitter,
        }),
    ]
}

/// A two-region stack under the reference policy: pattern, workers,
/// replication, failover timings, vector snapshots, API behaviour, lease and
/// recovery scan, breaker. (Set an anti-pattern up with
/// [`PolicyChoice::prepare`].)
pub fn stack() -> impl Strategy<Value = StackSpec> + Clone {
    let pattern = prop_oneof![Just(Pattern::WarmStandby), Just(Pattern::ActiveActive), Just(Pattern::ColdStandby)];
    let replication = prop_oneof![
        (0..=50u64, 5..=20u64)
            .prop_map(|(lag, interval)| Replication::Async { lag_ms: lag * 100, interval_ms: interval * 100 }),
        Just(Replication::Sync { degrade_after_ms: None }),
    ];
    let failover = (dur_s(5, 60), dur_s(1, 5), 1..=4u32, dur_s(0, 10), dur_s(0, 120), dur_s(0, 300)).prop_map(
        |(health_interval, health_timeout, failure_threshold, promotion, dns_ttl, scale_up)| FailoverSpec {
            health_interval,
            health_timeout,
            failure_threshold,
            promotion,
            dns_ttl,
            scale_up,
        },
    );
    let vector = (dur_s(30, 240), dur_s(1, 50), any::<bool>(), dur_s(0, 120)).prop_map(
        |(snapshot_interval, ship_delay, streaming_replica, restore_base)| VectorSpec {
            snapshot_interval,
            ship_delay,
            streaming_replica,
            restore_base,
            ..VectorSpec::default()
        },
    );
    let apis = (any::<bool>(), dur_ms(50, 8_000), dur_ms(100, 3_000));
    let knobs = (1..=5u32, 10..=60u64, dur_ms(1_100, 10_000), 1..=3u32);
    // A quarter of the stacks take up to 50 ms a store commit (the rest
    // commit for free, the default: slower commits make a case longer).
    let commit = prop_oneof![3 => Just(Dur(0)), 1 => dur_ms(1, 50)];
    (pattern, replication, failover, vector, apis, (knobs, commit), network()).prop_map(
        |(pattern, replication, failover, vector, (email_dedupe, email_latency, payment_latency), knobs, network)| {
            let ((workers, lease_s, recovery_scan, breaker_threshold), commit_latency) = knobs;
            let mut s = StackSpec {
                pattern,
                workers,
                replication,
                failover,
                vector,
                recovery_scan,
                commit_latency,
                network,
                ..StackSpec::default()
            };
            s.standby_workers = s.standby_workers.min(workers);
            s.apis.email_dedupe = !email_dedupe;
            s.apis.email_latency = email_latency;
            s.apis.payment_latency = payment_latency;
            s.policy.lease_ms = lease_s * 1_000;
            s.breaker.failure_threshold = breaker_threshold;
            s
        },
    )
}

/// Whole drills for `policy`: `(faults, workload, stack, seed)` assembled by
/// [`assemble`]. See the module docs for the
/// shrinking order.
pub fn scenario(policy: PolicyChoice) -> impl Strategy<Value = Scenario> + Clone {
    scenario_with(policy, true)
}

/// [`scenario`] with the choices spelled out: `switch_on = false` runs the
/// reference policy on the stacks `policy` sets up (see
/// [`PolicyChoice::prepare`]).
pub fn scenario_with(policy: PolicyChoice, switch_on: bool) -> impl Strategy<Value = Scenario> + Clone {
    let needed = policy.faults();
    let schedule = (needed, fault_schedule(MAX_FAULTS)).prop_map(|(mut needed, rest)| {
        let room = MAX_FAULTS.saturating_sub(needed.len());
        needed.extend(rest.into_iter().take(room));
        needed
    });
    (schedule, workload(), stack(), any::<u64>().no_shrink()).prop_map(move |(faults, workload, stack, seed)| {
        let reference = assemble_with(policy, faults, workload, stack, seed, false);
        if switch_on { switched_on(policy, &reference) } else { reference }
    })
}

/// Resolves raw fault numbers against the workload and stack.
fn resolve(f: &mut FaultSpec, workload: &Workload, stack: &StackSpec) {
    let templates = crate::components::workflow::builtin_shared();
    let tasks = workload.tasks.max(1);
    let fix_when = |at: &mut When, worker: &mut Option<WorkerTarget>| match at {
        When::Event { job, step, .. } => {
            *job %= tasks;
            let name = &workload.templates[*job as usize % workload.templates.len()];
            let len = templates.iter().find(|t| t.name == name).map_or(1, |t| t.steps.len()) as u16;
            *step %= len;
            *worker = None;
        }
        When::At(_) => {
            *worker = Some(match worker.unwrap_or(WorkerTarget::Index(0)) {
                WorkerTarget::Index(n) => WorkerTarget::Index(n % stack.workers.max(1)),
                WorkerTarget::HoldingJob(j) => WorkerTarget::HoldingJob(j % tasks),
            });
        }
    };
    match f {
        FaultSpec::WorkerKill { at, worker, .. } | FaultSpec::WorkerPause { at, worker, .. } => fix_when(at, worker),
        FaultSpec::ProviderOutage { provider, .. } => {
            if !stack.providers.iter().any(|p| &p.name == provider) {
                *provider = stack.providers[0].name.clone();
            }
        }
        FaultSpec::DiskLoss { at, worker } => fix_when(at, worker),
        FaultSpec::PromptCacheLoss { provider: Some(provider), .. } => {
            if !stack.providers.iter().any(|p| &p.name == provider) {
                *provider = stack.providers[0].name.clone();
            }
        }
        FaultSpec::Partition { a, b, .. } | FaultSpec::LinkDegradation { a, b, .. } => {
            let hosts = crate::sim::stack::host_names(stack);
            for e in [&mut *a, &mut *b] {
                *e = resolve_host(e, stack);
                if !e.starts_with("region:") && !hosts.contains(e) {
                    *e = "region:external".to_owned();
                }
            }
            if a == b {
                *b = if a.as_str() == "region:b" { "region:a" } else { "region:b" }.to_owned();
            }
        }
        FaultSpec::ClockSkew { host, .. } => *host = resolve_host(host, stack),
        FaultSpec::RegionLoss { .. }
        | FaultSpec::ReplicationLagSpike { .. }
        | FaultSpec::PromptCacheLoss { provider: None, .. }
        | FaultSpec::VectorCorruption { .. }
        | FaultSpec::ToolSchemaChange { .. }
        | FaultSpec::BadDeploy { .. }
        | FaultSpec::QueueLoss { .. } => {}
    }
}

/// A raw `worker-a-N` resolved against the stack's worker count.
fn resolve_host(name: &str, stack: &StackSpec) -> String {
    match name.strip_prefix("worker-a-").and_then(|n| n.parse::<u32>().ok()) {
        Some(n) => format!("worker-a-{}", n % stack.workers.max(1)),
        None => name.to_owned(),
    }
}

/// The tightest tier whose targets the reference stack's derived budgets
/// fit for this schedule: RPO bounds (when a region can be lost) below the
/// tier's RPO, and the worst RTO bound (every fault in one cluster, event
/// faults anywhere in the workload's run) below its RTO.
pub fn claim_tier(sc: &Scenario) -> Tier {
    let b = Budget::new(sc);
    // Region losses are time-triggered: their onsets are known here.
    let at: Vec<Option<Micros>> = sc.faults.iter().map(|f| f.at().map(|d| d.us())).collect();
    let rpo = (0..sc.faults.len())
        .filter(|&i| matches!(sc.faults[i], FaultSpec::RegionLoss { .. }))
        .map(|i| {
            let (s, v) = b.rpo_bounds_us(sc, &at, i);
            s.unwrap_or(Micros::MAX).max(v.unwrap_or(Micros::MAX))
        })
        .max()
        .unwrap_or(0);
    // A cut or lossy link may cause a false failover: the old primary's
    // writes past what the standby held are lost, through the split window.
    // The promotion comes any time from the fault's start until a detection
    // after its end, or when a standby region lost meanwhile comes back: the
    // bound is checked at both ends and where another fault's absence, just
    // over, reaches furthest back.
    let rpo = (0..sc.faults.len())
        .filter(|&i| matches!(sc.faults[i], FaultSpec::Partition { .. } | FaultSpec::LinkDegradation { .. }))
        .filter_map(|i| {
            let start = at[i]?;
            let window = b.structured_rpo_us?;
            let latest = sc.faults[i].end()?.us() + b.detection_us;
            let ends = sc.faults.iter().filter_map(|f| f.end()).map(|e| e.us() + window).filter(|&e| e >= start);
            let worst =
                [start, latest].into_iter().chain(ends).filter_map(|p| b.split_rpo_base_us(sc, &at, i, p)).max()?;
            Some(worst + b.split_window_us(sc, i))
        })
        .fold(rpo, Micros::max);
    // A vector corruption loses the points since the newest clean snapshot
    // when the integrity check finds it (longer during a failover).
    let rpo = (0..sc.faults.len())
        .filter(|&i| matches!(sc.faults[i], FaultSpec::VectorCorruption { .. }))
        .filter_map(|i| b.corruption_rpo_us(sc, &at, i).map(|(bound, _)| bound))
        .fold(rpo, Micros::max);
    // An event-triggered fault may strike any time the workload runs.
    let latest_event = invariants::last_arrival_us(sc) + b.queue_us + b.step_us * 16;
    let onsets: Vec<Micros> = sc.faults.iter().map(|f| f.at().map_or(latest_event, |d| d.us())).collect();
    let spread = onsets.iter().max().copied().unwrap_or(0) - onsets.iter().min().copied().unwrap_or(0);
    let own: Micros = (0..sc.faults.len()).map(|i| b.own_us(sc, i)).sum();
    let rto = if sc.faults.is_empty() { 0 } else { spread + own + b.work_us() };
    Tier::ALL.into_iter().find(|t| rpo < t.rpo_s() as u64 * US_PER_S && rto < t.rto_us()).unwrap_or(Tier::Sandbox)
}

/// Puts a generated drill together: resolves the faults, sets the policy's
/// stack up, claims a tier and picks a horizon long enough for every
/// invariant to be checked (the liveness deadline with room to spare).
pub fn assemble(
    policy: PolicyChoice,
    faults: Vec<FaultSpec>,
    workload: Workload,
    stack: StackSpec,
    seed: u64,
) -> Scenario {
    let reference = assemble_with(policy, faults, workload, stack, seed, false);
    switched_on(policy, &reference)
}

/// The drill with `policy`'s switch turned on (its stack already set up).
fn switched_on(policy: PolicyChoice, reference: &Scenario) -> Scenario {
    let mut sc = reference.clone();
    policy.switch_on(&mut sc.stack, sc.tier.base().unwrap_or(Tier::Sandbox));
    sc.horizon = horizon_for(&sc);
    sc.name = format!("fuzz-{}", policy.name());
    sc.purpose = format!("generated by agentdrill fuzz --policy {}", policy.name());
    sc
}

/// [`assemble`] with the switch on or off (off: the reference policy on the
/// stack `policy` sets up).
fn assemble_with(
    policy: PolicyChoice,
    mut faults: Vec<FaultSpec>,
    mut workload: Workload,
    mut stack: StackSpec,
    seed: u64,
    switch_on: bool,
) -> Scenario {
    // Prepare the stack without the switch first: the claim is the reference's.
    policy.prepare(&mut stack, &mut workload);
    // A queue loss needs a queue.
    if stack.queue.is_none() && faults.iter().any(|f| matches!(f, FaultSpec::QueueLoss { .. })) {
        stack.queue = Some(crate::components::queue::QueueConfig::default());
    }
    for f in &mut faults {
        resolve(f, &workload, &stack);
    }
    let mut sc = Scenario {
        name: String::new(),
        purpose: String::new(),
        tier: Tier::Sandbox.into(),
        seed,
        horizon: Dur::secs(3_600),
        expect: Expect::Pass,
        stack,
        workload,
        faults,
        max_cost_increase_pct: None,
    };
    sc.tier = claim_tier(&sc).into();
    if switch_on {
        return switched_on(policy, &sc);
    }
    sc.horizon = horizon_for(&sc);
    sc.name = format!("fuzz-reference-on-{}-stacks", policy.name());
    sc.purpose = format!("the reference policy on the stacks agentdrill fuzz --policy {} generates", policy.name());
    sc
}

/// A horizon that leaves room for the liveness check: the settle deadline
/// with event-triggered faults assumed late, plus a margin, in whole minutes.
fn horizon_for(sc: &Scenario) -> Dur {
    let b = Budget::new(sc);
    let latest_event = invariants::last_arrival_us(sc) + b.queue_us + b.step_us * 16;
    let onsets: Vec<Option<Micros>> = sc.faults.iter().map(|f| Some(f.at().map_or(latest_event, |d| d.us()))).collect();
    let deadline = b.settle_deadline_us(sc, &onsets) + 60 * US_PER_S;
    let minutes = deadline.div_ceil(60 * US_PER_S).max(10);
    Dur(minutes * 60 * 1_000)
}

// -------------------------------------------------------------------- runner

/// Runs one drill (with its faults) and checks every invariant. A panic in
/// the simulation, or a run past the default [`crate::drill::Budget`] (a
/// generated drill is small: only a runaway in the engine gets there), is
/// reported as a `no_panic` violation.
pub fn check_case(sc: &Scenario) -> Vec<Violation> {
    IN_CHECK.with(|c| c.set(true));
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match crate::drill::simulate_checked(sc, sc.seed, &crate::drill::Budget::default()) {
            Ok(run) => invariants::check(sc, &run),
            Err(e) => vec![Violation {
                invariant: Invariant::NoPanic,
                job: None,
                step: None,
                detail: format!("the simulation ran away: {e}"),
            }],
        }
    }));
    IN_CHECK.with(|c| c.set(false));
    match checked {
        Ok(v) => v,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic".to_owned());
            let place = LAST_PANIC.with(|p| p.borrow_mut().take()).map_or_else(String::new, |l| format!(" at {l}"));
            vec![Violation {
                invariant: Invariant::NoPanic,
                job: None,
                step: None,
                detail: format!("the simulation panicked{place}: {msg}"),
            }]
        }
    }
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    static IN_CHECK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs a panic hook that, for panics inside [`check_case`], prints
/// nothing and remembers where the panic happened (for the violation's
/// message); other panics go to the previous hook. `agentdrill fuzz` calls
/// it: shrinking a panic re-runs it many times.
pub fn quiet_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_CHECK.with(std::cell::Cell::get) {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            LAST_PANIC.with(|p| *p.borrow_mut() = at);
        } else {
            previous(info);
        }
    }));
}

/// Settings of a fuzz run.
#[derive(Clone, Debug)]
pub struct FuzzOptions {
    /// Case indices `0..cases` (before sharding).
    pub cases: u64,
    /// The run's seed.
    pub seed: u64,
    /// The policy under test.
    pub policy: PolicyChoice,
    /// Stop starting new cases after this long.
    pub time_budget: Option<Duration>,
    /// `(I, N)`: run the cases with `i % N == I - 1`.
    pub shard: (u64, u64),
    /// Where reproducers go (None: do not write one).
    pub out: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// Most shrink steps (each one a simulation).
    pub max_shrink_steps: u32,
    /// Threads running cases (1: the calling thread only).
    pub jobs: usize,
}

impl Default for FuzzOptions {
    fn default() -> Self {
        FuzzOptions {
            cases: 1_000,
            seed: 0,
            policy: PolicyChoice::Reference,
            time_budget: None,
            shard: (1, 1),
            out: None,
            progress: false,
            max_shrink_steps: 2_000,
            jobs: 1,
        }
    }
}

/// A violation found, with the drill before and after shrinking.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Case index.
    pub case: u64,
    /// The first violation of the shrunk drill.
    pub violation: Violation,
    /// The drill as generated.
    pub original: Scenario,
    /// The smallest drill that still breaks the same invariant.
    pub shrunk: Scenario,
    /// Shrink steps tried.
    pub shrink_steps: u32,
    /// The reproducer file, when written.
    pub path: Option<PathBuf>,
}

/// What a fuzz run did.
#[derive(Clone, Debug)]
pub struct FuzzReport {
    /// Cases run.
    pub cases_run: u64,
    /// Wall time of the whole run: the cases, then shrinking a find and
    /// writing its reproducer.
    pub elapsed: Duration,
    /// Wall time of running the cases alone (up to the find, or to the
    /// last case): what [`FuzzReport::cases_per_s`] divides by.
    pub search_elapsed: Duration,
    /// The violation found, if any (the run stops at the first).
    pub finding: Option<Finding>,
}

impl FuzzReport {
    /// Cases per second: the cases run ÷ the wall time they took
    /// ([`FuzzReport::search_elapsed`]; shrinking a find is not a case).
    pub fn cases_per_s(&self) -> f64 {
        self.cases_run as f64 / self.search_elapsed.as_secs_f64().max(1e-9)
    }
}

/// The 32-byte RNG seed of case `i` of a run with seed `seed` (SplitMix64).
fn case_seed(seed: u64, i: u64) -> [u8; 32] {
    let mut z = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x6a09_e667_f3bc_c908;
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(x ^ (x >> 31)).to_le_bytes());
    }
    out
}

/// [`scenario_with`] as a boxed strategy, built once per thread for each
/// `(policy, switch_on)` and shared by every case the thread generates.
/// Building it draws nothing from the runner's RNG, so a case's value tree
/// is the one a freshly built strategy gives; the cache only saves building
/// and dropping the strategy's combinators for each case.
fn cached_strategy(policy: PolicyChoice, switch_on: bool) -> BoxedStrategy<Scenario> {
    thread_local! {
        static BUILT: std::cell::RefCell<Vec<(PolicyChoice, bool, BoxedStrategy<Scenario>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    BUILT.with(|built| {
        let mut built = built.borrow_mut();
        if let Some((_, _, s)) = built.iter().find(|(p, on, _)| (*p, *on) == (policy, switch_on)) {
            return s.clone();
        }
        let s = scenario_with(policy, switch_on).boxed();
        built.push((policy, switch_on, s.clone()));
        s
    })
}

/// The runner that generates case `i` of a run with seed `seed`: the
/// default configuration without failure persistence (a case is found
/// again by its index, not from a file; and the default's boxed file
/// handle would be cloned for every case).
fn case_runner(seed: u64, i: u64) -> TestRunner {
    thread_local! {
        static CONFIG: Config = Config { failure_persistence: None, ..Config::default() };
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &case_seed(seed, i));
    TestRunner::new_with_rng(CONFIG.with(Config::clone), rng)
}

/// Generates case `i` of a run: the value tree (for shrinking).
pub fn case_tree(policy: PolicyChoice, seed: u64, i: u64) -> impl ValueTree<Value = Scenario> {
    cached_strategy(policy, true).new_tree(&mut case_runner(seed, i)).expect("generation does not reject")
}

/// Generates case `i` of a run.
pub fn case(policy: PolicyChoice, seed: u64, i: u64) -> Scenario {
    case_tree(policy, seed, i).current()
}

/// Case `i` of a run as the reference policy sees it: the same stack
/// `policy` sets up, with its switch off (see [`PolicyChoice::prepare`]).
pub fn reference_case(policy: PolicyChoice, seed: u64, i: u64) -> Scenario {
    cached_strategy(policy, false).new_tree(&mut case_runner(seed, i)).expect("generation does not reject").current()
}

/// Shrinks a failing case while `invariant` stays the first one it breaks. Returns the
/// smallest drill, its violation and the steps tried.
pub fn shrink(
    tree: &mut impl ValueTree<Value = Scenario>,
    first: Violation,
    max_steps: u32,
    deadline: Option<Instant>,
) -> (Scenario, Violation, u32) {
    let invariant = first.invariant;
    let mut best = (tree.current(), first);
    let mut steps = 0;
    if !tree.simplify() {
        return (best.0, best.1, steps);
    }
    loop {
        if steps >= max_steps || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        steps += 1;
        let sc = tree.current();
        // The invariant must stay the first one broken, so that the
        // reproducer re-runs to the very violation reported.
        let found = check_case(&sc).into_iter().next().filter(|v| v.invariant == invariant);
        match found {
            Some(v) => {
                best = (sc, v);
                if !tree.simplify() {
                    break;
                }
            }
            None => {
                if !tree.complicate() {
                    break;
                }
            }
        }
    }
    // Proptest shrinks the generated structure; a fault that only matters
    // through it (the claimed tier, the horizon) can survive. Try dropping
    // each remaining fault from the drill itself.
    let (mut sc, mut violation) = best;
    let mut i = sc.faults.len();
    while i > 0 && steps < max_steps {
        i -= 1;
        let mut smaller = sc.clone();
        smaller.faults.remove(i);
        steps += 1;
        if let Some(v) = check_case(&smaller).into_iter().next().filter(|v| v.invariant == invariant) {
            sc = smaller;
            violation = v;
        }
    }
    (sc, violation, steps)
}

/// Runs a fuzz campaign: cases in order until one breaks an invariant, the
/// cases run out, or the time budget is spent. A violation is shrunk and,
/// with `out` set, written as a reproducer.
///
/// With `jobs > 1` the cases run on that many threads (one drill per
/// thread, see [`crate::par`]); the find is still the lowest case index
/// that breaks an invariant, and it is shrunk on the calling thread, so the
/// report is the one `jobs = 1` gives (wall time aside).
pub fn fuzz(opts: &FuzzOptions) -> std::io::Result<FuzzReport> {
    let start = Instant::now();
    let deadline = opts.time_budget.map(|d| start + d);
    let (shard, shards) = opts.shard;
    assert!(shards >= 1 && (1..=shards).contains(&shard), "shard {shard}/{shards}");
    // Case indices `shard - 1 + p * shards` for positions `p` in `0..mine`.
    let mine: u64 = if opts.cases >= shard { (opts.cases - shard) / shards + 1 } else { 0 };
    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(mine);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} cases · {per_sec} · {msg}",
            )
            .expect("valid template"),
        );
        bar.set_message("0 violations");
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let run = crate::par::first_find(
        mine,
        opts.jobs,
        || deadline.is_none_or(|d| Instant::now() < d),
        |p| {
            let i = shard - 1 + p * shards;
            let broken = check_case(&case(opts.policy, opts.seed, i));
            bar.inc(1);
            broken.into_iter().next()
        },
    );
    let search_elapsed = start.elapsed();
    let mut finding = None;
    if let Some((p, first)) = run.find {
        let i = shard - 1 + p * shards;
        bar.set_message(format!("1 violation ({}), shrinking", first.invariant));
        let mut tree = case_tree(opts.policy, opts.seed, i);
        let original = tree.current();
        let (shrunk, violation, shrink_steps) = shrink(&mut tree, first, opts.max_shrink_steps, None);
        let mut f = Finding { case: i, violation, original, shrunk, shrink_steps, path: None };
        if let Some(dir) = &opts.out {
            f.path = Some(write_reproducer(dir, opts, &f)?);
        }
        finding = Some(f);
    }
    bar.finish_and_clear();
    Ok(FuzzReport { cases_run: run.ran, elapsed: start.elapsed(), search_elapsed, finding })
}

/// The reproducer's text: a comment naming the invariant, then the drill.
pub fn reproducer_text(opts: &FuzzOptions, f: &Finding, path: &Path) -> String {
    let mut sc = f.shrunk.clone();
    sc.expect = Expect::Fail;
    sc.purpose = format!("fuzz reproducer: {}", f.violation);
    let inv = f.violation.invariant;
    let body = toml::to_string(&sc).expect("a scenario serialises");
    format!(
        "# agentdrill fuzz reproducer: violates `{}`\n# ({})\n# {}\n# Found by: agentdrill fuzz --policy {} --seed {} --cases {} (case {}); shrunk from {} to {} fault(s) in {} steps.\n# Re-run: agentdrill run {}\n{body}",
        inv.name(),
        inv.describe(),
        f.violation,
        opts.policy.name(),
        opts.seed,
        f.case + 1,
        f.case,
        f.original.faults.len(),
        f.shrunk.faults.len(),
        f.shrink_steps,
        path.display(),
    )
}

/// Writes the reproducer into `dir` and returns its path.
pub fn write_reproducer(dir: &Path, opts: &FuzzOptions, f: &Finding) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = format!(
        "{}-{}-seed{}-case{}.toml",
        opts.policy.name(),
        f.violation.invariant.name().replace('_', "-"),
        opts.seed,
        f.case
    );
    let path = dir.join(name);
    std::fs::write(&path, reproducer_text(opts, f, &path))?;
    Ok(path)
}

/// Reads the invariant a reproducer file names (its first comment line).
pub fn reproducer_invariant(text: &str) -> Option<Invariant> {
    let line = text.lines().next()?;
    let name = line.split('`').nth(1)?;
    Invariant::from_name(name)
}

// ----------------------------------------------------------------------- CLI

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("invalid shard {s:?}; write it as I/N, e.g. 2/4"))?;
    let i: u64 = i.trim().parse().map_err(|_| format!("invalid shard index {i:?}; write it as I/N, e.g. 2/4"))?;
    let n: u64 = n.trim().parse().map_err(|_| format!("invalid shard count {n:?}; write it as I/N, e.g. 2/4"))?;
    if n == 0 || i == 0 || i > n {
        return Err(format!("shard {i}/{n}: need 1 ≤ I ≤ N"));
    }
    Ok((i, n))
}

fn parse_budget(s: &str) -> Result<Duration, String> {
    crate::drill::scenario::parse_duration(s).map(Duration::from_millis)
}

/// `agentdrill fuzz` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct FuzzArgs {
    /// Number of generated drills (case indices 0..N, before sharding).
    #[arg(long, default_value_t = 1_000)]
    pub cases: u64,
    /// Seed of the run: the same seed and case count find the same violations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The policy under test: the reference, or one anti-pattern.
    #[arg(long, value_enum, default_value = "reference")]
    pub policy: PolicyChoice,
    /// Stop starting new cases after this long (e.g. 10m).
    #[arg(long, value_parser = parse_budget)]
    pub time_budget: Option<Duration>,
    /// Run the cases with index i % N == I - 1 (I/N, 1-based), so N jobs
    /// cover disjoint cases.
    #[arg(long, value_parser = parse_shard, default_value = "1/1")]
    pub shard: (u64, u64),
    /// Where the reproducer is written.
    #[arg(long, default_value = "reports/fuzz")]
    pub out: PathBuf,
    /// Threads running cases (default: the number of cores). The find, the
    /// reproducer and the exit code are the same for every N.
    #[arg(long, value_parser = crate::par::parse_jobs, default_value_t = crate::par::default_jobs())]
    pub jobs: usize,
}

/// Runs `agentdrill fuzz`: exit 0 no violation, 1 a violation (its
/// reproducer written), 2 unusable input.
pub fn cli(args: FuzzArgs) -> ExitCode {
    quiet_panics();
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: {}: cannot create the output folder: {e}", args.out.display());
        return ExitCode::from(2);
    }
    let opts = FuzzOptions {
        cases: args.cases,
        seed: args.seed,
        policy: args.policy,
        time_budget: args.time_budget,
        shard: args.shard,
        out: Some(args.out.clone()),
        progress: std::io::stderr().is_terminal(),
        jobs: args.jobs,
        ..FuzzOptions::default()
    };
    let report = match fuzz(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: cannot write the reproducer: {e}", args.out.display());
            return ExitCode::from(2);
        }
    };
    let (shard, shards) = opts.shard;
    // The rate is the count over the time printed beside it; shrinking a
    // find is timed on its own.
    let shrinking = match &report.finding {
        Some(_) => format!("; shrinking took {:.2} s", (report.elapsed - report.search_elapsed).as_secs_f64()),
        None => String::new(),
    };
    println!(
        "fuzz --policy {} --seed {}: {} case(s) run (shard {shard}/{shards}) in {:.2} s, {:.1} cases/s{shrinking}",
        opts.policy.name(),
        opts.seed,
        report.cases_run,
        report.search_elapsed.as_secs_f64(),
        report.cases_per_s()
    );
    match &report.finding {
        None => {
            println!("no violation found");
            ExitCode::SUCCESS
        }
        Some(f) => {
            println!("VIOLATION in case {}: {}", f.case, f.violation);
            println!(
                "shrunk from {} to {} fault(s), {} to {} task(s), in {} steps",
                f.original.faults.len(),
                f.shrunk.faults.len(),
                f.original.workload.tasks,
                f.shrunk.workload.tasks,
                f.shrink_steps
            );
            if let Some(p) = &f.path {
                println!("reproducer: {}", p.display());
                println!("re-run:     agentdrill run {}", p.display());
            }
            ExitCode::from(1)
        }
    }
}
