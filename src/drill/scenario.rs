//! Scenario files: a drill as TOML. Parsing, defaults and validation.
//!
//! Unknown fields are errors. Durations are written the way people write
//! them (`"90s"`, `"5m"`, `"1h 30m"`). Every cross-field rule is checked
//! before a drill runs, and every error names the file, the field and the
//! fix.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::components::env::Phase;
use crate::components::ids::{Micros, US_PER_MS};
use crate::components::orchestrator::Replication;
use crate::components::policy::{AntiPattern, Policy};
use crate::components::provider::{ErrorMode, ProviderConfig};
use crate::components::region::Pattern;
use crate::drill::limits;
use crate::drill::tier::TierSpec;

/// A duration written as text (`"90s"`, `"5m"`, `"1h 30m"`, `"250ms"`),
/// held in milliseconds. It serialises back to the same kind of text, so a
/// scenario written by the tool (a fuzz reproducer) reads like a hand-written one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub u64);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Dur {
    /// Milliseconds.
    pub fn ms(self) -> u64 {
        self.0
    }
    /// Microseconds (saturating: validated durations are far below the
    /// limit, see [`crate::drill::limits::MAX_SPAN_MS`]).
    pub fn us(self) -> Micros {
        self.0.saturating_mul(US_PER_MS)
    }
    /// Whether it is zero (`"0s"`).
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
    /// From seconds.
    pub const fn secs(s: u64) -> Self {
        Dur(s.saturating_mul(1_000))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(std::time::Duration::from_millis(self.0)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration in quotes, such as \"90s\", \"5m\" or \"1h 30m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration as people write it: \"90s\", \"5m\", \"1h 30m\", \"250ms\", \"24h\".",
            "pattern": DURATION_PATTERN,
            "examples": ["90s", "5m", "1h 30m", "250ms"]
        })
    }
}

/// The shape of a duration, for the JSON Schema (numbers with units:
/// ms, s, m, h, d and their long forms; a number may have a fraction,
/// `"3.5s"`, as [`parse_duration`] takes it).
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+(\.[0-9]+)?\s*[a-zA-Zµ]+\s*)+$";

/// Parses `"90s"`, `"5m"`, `"1h 30m"`, `"250ms"` into milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        let why = match e {
            humantime::DurationError::UnknownUnit { unit, .. } => format!(" (unknown unit {unit:?})"),
            humantime::DurationError::NumberOverflow => " (too long)".into(),
            _ => String::new(),
        };
        format!("invalid duration {s:?}{why}; write it like \"90s\", \"5m\", \"1h 30m\" or \"250ms\"")
    })?;
    match u64::try_from(d.as_millis()) {
        Ok(ms) if ms <= MAX_DURATION_MS => Ok(ms),
        _ => Err(format!("duration {s:?} is too long; the longest is 100 years")),
    }
}

/// The longest duration a scenario may write (100 years), so that sums of
/// times in microseconds never overflow.
pub const MAX_DURATION_MS: u64 = 100 * 365 * 86_400_000;

/// Whether the drill is expected to pass or to be caught failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// The stack must meet its tier.
    #[default]
    Pass,
    /// An anti-pattern drill: the drill must catch a violation.
    Fail,
}

/// A drill.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name (defaults to the file stem).
    #[serde(default)]
    pub name: String,
    /// One line: what it rehearses.
    #[serde(default)]
    pub purpose: String,
    /// Recovery tier the stack claims: a named tier or a custom one.
    pub tier: TierSpec,
    /// Seed of the one RNG.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// How long the drill runs (simulated).
    pub horizon: Dur,
    /// Expected outcome.
    #[serde(default)]
    pub expect: Expect,
    /// The stack.
    #[serde(default)]
    pub stack: StackSpec,
    /// The workload.
    #[serde(default)]
    pub workload: Workload,
    /// The faults, in any order.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Fail the drill when the cost (money) rises more than this many
    /// percent over the same drill without faults.
    #[serde(default)]
    pub max_cost_increase_pct: Option<f64>,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn default_seed() -> u64 {
    1
}

/// The stack description.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StackSpec {
    /// Failover pattern.
    pub pattern: Pattern,
    /// Workers per serving region.
    pub workers: u32,
    /// Workers kept running in a warm standby before failover.
    pub standby_workers: u32,
    /// Safeguard switches.
    pub policy: Policy,
    /// Anti-patterns to switch on (shorthand for policy fields).
    pub anti_patterns: Vec<AntiPattern>,
    /// Structured-state replication.
    pub replication: Replication,
    /// Failover timings.
    pub failover: FailoverSpec,
    /// Vector memory.
    pub vector: VectorSpec,
    /// LLM providers in priority order (the last should be the local fallback).
    pub providers: Vec<ProviderConfig>,
    /// Breaker settings.
    pub breaker: crate::components::router::BreakerConfig,
    /// Tool APIs.
    pub apis: ApisSpec,
    /// The in-flight task queue between the client and the orchestrator
    /// (absent: the client submits to the orchestrator directly).
    pub queue: Option<crate::components::queue::QueueConfig>,
    /// Recovery-service scan interval.
    pub recovery_scan: Dur,
    /// Worker request timeout.
    pub request_timeout: Dur,
    /// How long the orchestrator's store takes to commit what one handler
    /// wrote (a database transaction and its flush to disk). Commits run one
    /// at a time, and a reply waits for its commit, as the live reference
    /// orchestrator does with PostgreSQL (a live drill reports its measured
    /// `store_commit`). `"0s"` (the default): commits cost nothing.
    #[serde(skip_serializing_if = "Dur::is_zero")]
    pub commit_latency: Dur,
    /// The simulated network's standing links (the live runtime's links
    /// are real sockets; this shapes the simulator only).
    pub network: NetworkSpec,
}

impl Default for StackSpec {
    fn default() -> Self {
        StackSpec {
            pattern: Pattern::WarmStandby,
            workers: 4,
            standby_workers: 1,
            policy: Policy::default(),
            anti_patterns: Vec::new(),
            replication: Replication::Async { lag_ms: 1_000, interval_ms: 1_000 },
            failover: FailoverSpec::default(),
            vector: VectorSpec::default(),
            providers: vec![ProviderConfig::anthropic(), ProviderConfig::openai(), ProviderConfig::local()],
            breaker: crate::components::router::BreakerConfig::default(),
            apis: ApisSpec::default(),
            queue: None,
            recovery_scan: Dur::secs(5),
            request_timeout: Dur::secs(10),
            commit_latency: Dur(0),
            network: NetworkSpec::default(),
        }
    }
}

impl StackSpec {
    /// The policy with the listed anti-patterns applied.
    pub fn effective_policy(&self) -> Policy {
        let mut p = self.policy;
        for a in &self.anti_patterns {
            a.apply(&mut p);
        }
        p
    }
}

/// Failover timings as written.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSpec {
    /// Health-check interval.
    pub health_interval: Dur,
    /// Health-check timeout.
    pub health_timeout: Dur,
    /// Consecutive failures that declare the region down.
    pub failure_threshold: u32,
    /// Promotion of the standby store.
    pub promotion: Dur,
    /// DNS TTL.
    pub dns_ttl: Dur,
    /// Scale-up (warm) or provisioning (cold).
    pub scale_up: Dur,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        FailoverSpec {
            health_interval: Dur::secs(30),
            health_timeout: Dur::secs(4),
            failure_threshold: 3,
            promotion: Dur::secs(2),
            dns_ttl: Dur::secs(60),
            scale_up: Dur::secs(120),
        }
    }
}

/// Where vector snapshots go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotLocation {
    /// Shipped to the other region (reference).
    OtherRegion,
    /// Kept in the same region (anti-pattern 9: a file, not a backup).
    SameRegion,
}

/// Vector memory settings.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VectorSpec {
    /// Snapshot cadence.
    pub snapshot_interval: Dur,
    /// Where snapshots go.
    pub snapshot_location: SnapshotLocation,
    /// Upload plus cross-region copy time.
    pub ship_delay: Dur,
    /// A streaming replica in the other region (no hydration needed).
    pub streaming_replica: bool,
    /// Restore: fixed part.
    pub restore_base: Dur,
    /// Restore: per point, in microseconds.
    pub restore_per_point_us: u64,
    /// How often the store's integrity check runs (finds silent corruption);
    /// `"0s"` turns it off.
    pub integrity_check_interval: Dur,
}

impl Default for VectorSpec {
    fn default() -> Self {
        VectorSpec {
            snapshot_interval: Dur::secs(300),
            snapshot_location: SnapshotLocation::OtherRegion,
            ship_delay: Dur::secs(30),
            streaming_replica: false,
            restore_base: Dur::secs(60),
            restore_per_point_us: 0,
            integrity_check_interval: Dur::secs(300),
        }
    }
}

/// The simulator's standing network: one-way latency and jitter within a
/// region and between regions. The external APIs (payment, email, search,
/// the model providers) sit outside both regions, so every call a worker
/// makes to them crosses a cross-region link. A live drill's twin sets both
/// near zero (its fakes answer on loopback); the defaults model two cloud
/// regions (0.5 ms ± 0.2 ms inside one, 35 ms ± 5 ms between them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// One-way latency between two hosts of one region, in microseconds.
    pub intra_region_latency_us: u64,
    /// Uniform extra latency in `[0, this]` within a region, in microseconds.
    pub intra_region_jitter_us: u64,
    /// One-way latency between regions and to the external APIs, in
    /// microseconds.
    pub cross_region_latency_us: u64,
    /// Uniform extra latency in `[0, this]` between regions, in microseconds.
    pub cross_region_jitter_us: u64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            intra_region_latency_us: 500,
            intra_region_jitter_us: 200,
            cross_region_latency_us: 35_000,
            cross_region_jitter_us: 5_000,
        }
    }
}

impl NetworkSpec {
    /// The slowest one-way trip between regions (latency + jitter), in
    /// microseconds: what the RPO and RTO bounds allow for a hop.
    pub fn cross_region_worst_us(&self) -> Micros {
        self.cross_region_latency_us.saturating_add(self.cross_region_jitter_us)
    }

    /// The slowest one-way trip within a region, in microseconds.
    pub fn intra_region_worst_us(&self) -> Micros {
        self.intra_region_latency_us.saturating_add(self.intra_region_jitter_us)
    }
}

/// Tool API settings.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApisSpec {
    /// The payment API deduplicates on the idempotency key.
    pub payment_dedupe: bool,
    /// The email API deduplicates on the idempotency key.
    pub email_dedupe: bool,
    /// Payment processing time.
    pub payment_latency: Dur,
    /// Email processing time.
    pub email_latency: Dur,
    /// Search latency.
    pub search_latency: Dur,
}

impl Default for ApisSpec {
    fn default() -> Self {
        ApisSpec {
            payment_dedupe: true,
            email_dedupe: true,
            payment_latency: Dur(300),
            email_latency: Dur(200),
            search_latency: Dur(500),
        }
    }
}

/// How jobs arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// All at time zero.
    AtOnce,
    /// Evenly spaced by `interval`.
    Uniform,
    /// Exponential gaps with mean `interval`.
    Poisson,
}

/// The workload.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Templates, used round-robin.
    pub templates: Vec<String>,
    /// Number of jobs.
    pub tasks: u32,
    /// Arrival process.
    pub arrival: Arrival,
    /// Mean gap between arrivals (uniform, poisson).
    pub interval: Dur,
    /// Health-probe interval after each fault.
    pub probe_interval: Dur,
    /// Whether the harness probes after each fault (a one-step job: the
    /// new work an RTO waits for). `false`: the RTO's new work is the
    /// first workload job created after the onset (none offered after it:
    /// none to wait for), as a live drill measures it; a live drill's
    /// simulated twin sets it.
    #[serde(skip_serializing_if = "is_true")]
    pub probes: bool,
    /// The client (or the upstream queue) submits again a job it was told
    /// was accepted but has not seen finish after this long.
    pub resubmit_after: Dur,
    /// The client sends a submission again when no acknowledgement came
    /// within this (a publisher's retry delay).
    pub submit_retry: Dur,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            templates: vec!["book_flight".into(), "research_report".into(), "approve_refund".into()],
            tasks: 12,
            arrival: Arrival::Uniform,
            interval: Dur::secs(5),
            probe_interval: Dur::secs(2),
            probes: true,
            resubmit_after: Dur::secs(300),
            submit_retry: Dur::secs(5),
        }
    }
}

/// A region by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegionName {
    /// The primary region.
    A,
    /// The standby region.
    B,
}

/// When a fault starts: at a time (`"90s"`), or when a job reaches a
/// step's phase (`{ job = 3, step = 2, phase = "in_flight" }`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum When {
    /// When `job` reaches `step` at `phase`.
    Event {
        /// Job number (0-based, in arrival order).
        job: u32,
        /// Step ordinal.
        step: u16,
        /// Phase.
        phase: Phase,
    },
    /// At a time.
    At(Dur),
}

/// When a job reaches a step's phase.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct EventAt {
    /// Job number (0-based, in arrival order).
    job: u32,
    /// Step ordinal (0-based) in the job's template.
    step: u16,
    /// Phase of the step.
    phase: Phase,
}

impl schemars::JsonSchema for When {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "When".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "When a fault starts: at a time (\"90s\"), or when a job reaches a step's phase ({ job = 3, step = 2, phase = \"in_flight\" }).",
            "oneOf": [g.subschema_for::<Dur>(), g.subschema_for::<EventAt>()]
        })
    }
}

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = When;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a time such as \"90s\" or an event such as { job = 3, step = 2, phase = \"in_flight\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<When, E> {
                parse_duration(v).map(|ms| When::At(Dur(ms))).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<When, A::Error> {
                let e = EventAt::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(When::Event { job: e.job, step: e.step, phase: e.phase })
            }
        }
        d.deserialize_any(V)
    }
}

/// Which worker a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkerTarget {
    /// Worker number `n` of region A.
    Index(u32),
    /// Whichever worker holds this job's lease at that moment.
    HoldingJob(u32),
}

/// One fault.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// Kill a worker (its memory and local disk are gone); it restarts fresh.
    WorkerKill {
        /// When.
        at: When,
        /// Which worker (for time triggers; event triggers hit the worker
        /// running the job).
        #[serde(default)]
        worker: Option<WorkerTarget>,
        /// Restart after (never when absent).
        #[serde(default = "default_restart")]
        restart_after: Option<Dur>,
    },
    /// Freeze a worker (GC pause, frozen VM): it wakes up later as a zombie.
    WorkerPause {
        /// When.
        at: When,
        /// Which worker.
        #[serde(default)]
        worker: Option<WorkerTarget>,
        /// How long.
        duration: Dur,
    },
    /// Lose a region: every host crashes; durable storage is gone for a
    /// permanent loss, kept for a temporary one.
    RegionLoss {
        /// When.
        at: Dur,
        /// Which region.
        #[serde(default = "default_region")]
        region: RegionName,
        /// How long (permanent when absent).
        #[serde(default)]
        duration: Option<Dur>,
    },
    /// A provider fails in one error mode for a period.
    ProviderOutage {
        /// When.
        at: Dur,
        /// Provider name as in `stack.providers`.
        provider: String,
        /// Error mode.
        mode: ErrorMode,
        /// How long.
        duration: Dur,
    },
    /// Cut the network between two endpoints for a period. An endpoint is a
    /// host name (`"worker-a-0"`, `"orchestrator-a"`, `"payment-api"`) or a
    /// region (`"region:a"`, `"region:b"`, `"region:external"`).
    Partition {
        /// When.
        at: Dur,
        /// How long.
        duration: Dur,
        /// One side.
        a: String,
        /// The other side.
        b: String,
        /// Only `a → b` is cut.
        #[serde(default)]
        one_way: bool,
    },
    /// Extra latency and/or loss on a link for a period.
    LinkDegradation {
        /// When.
        at: Dur,
        /// How long.
        duration: Dur,
        /// One side.
        a: String,
        /// The other side.
        b: String,
        /// Only `a → b` is degraded.
        #[serde(default)]
        one_way: bool,
        /// Added one-way latency.
        #[serde(default)]
        latency: Dur,
        /// Probability a message is lost (0..1).
        #[serde(default)]
        loss: f64,
    },
    /// A worker's local disk (scratchpad) is lost; the process keeps running.
    DiskLoss {
        /// When.
        at: When,
        /// Which worker (time triggers only).
        #[serde(default)]
        worker: Option<WorkerTarget>,
    },
    /// Asynchronous replication falls further behind for a period.
    ReplicationLagSpike {
        /// When.
        at: Dur,
        /// How long.
        duration: Dur,
        /// Extra replication delay during the spike.
        lag: Dur,
    },
    /// Every request to a provider (or all) is cold for a period.
    PromptCacheLoss {
        /// When.
        at: Dur,
        /// How long.
        duration: Dur,
        /// Provider name (all providers when absent).
        #[serde(default)]
        provider: Option<String>,
    },
    /// A host's wall clock jumps by `offset` (e.g. `"-90s"`, `"+2m"`).
    ClockSkew {
        /// When.
        at: Dur,
        /// Host name (a worker or an orchestrator).
        host: String,
        /// Signed offset.
        offset: Skew,
        /// How long (for good when absent).
        #[serde(default)]
        duration: Option<Dur>,
    },
    /// A fraction of the serving vector store's points is silently corrupted;
    /// the store's integrity check finds it later.
    VectorCorruption {
        /// When.
        at: Dur,
        /// Fraction of points corrupted (0..1).
        fraction: f64,
    },
    /// A tool API's responses stop matching the schema for a period.
    ToolSchemaChange {
        /// When.
        at: Dur,
        /// How long.
        duration: Dur,
        /// Which API.
        api: ToolApi,
    },
    /// The in-flight task queue's active node is lost (with its storage when
    /// the queue is not replicated).
    QueueLoss {
        /// When.
        at: Dur,
        /// How long until the node is back (never when absent).
        #[serde(default)]
        duration: Option<Dur>,
    },
    /// A new prompt/config version that makes model output fail validation
    /// with probability `error_rate`.
    BadDeploy {
        /// When.
        at: Dur,
        /// Fraction of model outputs that fail validation under the bad version.
        error_rate: f64,
    },
}

/// A tool API by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolApi {
    /// The payment API.
    Payment,
    /// The email API.
    Email,
    /// The search API.
    Search,
}

/// A signed duration (`"-90s"`, `"+2m"`, `"30s"`), in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Skew(pub i64);

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "+" };
        write!(f, "{sign}{}", Dur(self.0.unsigned_abs()))
    }
}

impl schemars::JsonSchema for Skew {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SignedDuration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A signed duration: \"-90s\", \"+2m\", \"30s\".",
            "pattern": r"^\s*[+-]?\s*([0-9]+\s*[a-zA-Zµ]+\s*)+$",
            "examples": ["-2m", "+5m"]
        })
    }
}

impl Serialize for Skew {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Skew {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        let (neg, rest) = match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let ms = parse_duration(rest).map_err(serde::de::Error::custom)?;
        let ms = i64::try_from(ms).map_err(|_| serde::de::Error::custom("offset too large"))?;
        Ok(Skew(if neg { -ms } else { ms }))
    }
}

fn default_restart() -> Option<Dur> {
    Some(Dur::secs(30))
}
fn default_region() -> RegionName {
    RegionName::A
}

impl FaultSpec {
    /// The fault's kind, as written.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::WorkerKill { .. } => "worker_kill",
            FaultSpec::WorkerPause { .. } => "worker_pause",
            FaultSpec::RegionLoss { .. } => "region_loss",
            FaultSpec::ProviderOutage { .. } => "provider_outage",
            FaultSpec::Partition { .. } => "partition",
            FaultSpec::LinkDegradation { .. } => "link_degradation",
            FaultSpec::DiskLoss { .. } => "disk_loss",
            FaultSpec::ReplicationLagSpike { .. } => "replication_lag_spike",
            FaultSpec::PromptCacheLoss { .. } => "prompt_cache_loss",
            FaultSpec::ClockSkew { .. } => "clock_skew",
            FaultSpec::VectorCorruption { .. } => "vector_corruption",
            FaultSpec::ToolSchemaChange { .. } => "tool_schema_change",
            FaultSpec::BadDeploy { .. } => "bad_deploy",
            FaultSpec::QueueLoss { .. } => "queue_loss",
        }
    }

    /// The trigger of a worker fault (time or event).
    pub fn when(&self) -> Option<When> {
        match self {
            FaultSpec::WorkerKill { at, .. } | FaultSpec::WorkerPause { at, .. } | FaultSpec::DiskLoss { at, .. } => {
                Some(*at)
            }
            _ => None,
        }
    }

    /// When a time-bounded fault ends (None: instantaneous, event-triggered
    /// or permanent).
    pub fn end(&self) -> Option<Dur> {
        let at = self.at()?;
        let d = match self {
            FaultSpec::WorkerPause { duration, .. }
            | FaultSpec::ProviderOutage { duration, .. }
            | FaultSpec::Partition { duration, .. }
            | FaultSpec::LinkDegradation { duration, .. }
            | FaultSpec::ReplicationLagSpike { duration, .. }
            | FaultSpec::PromptCacheLoss { duration, .. }
            | FaultSpec::ToolSchemaChange { duration, .. } => *duration,
            FaultSpec::RegionLoss { duration, .. }
            | FaultSpec::ClockSkew { duration, .. }
            | FaultSpec::QueueLoss { duration, .. } => (*duration)?,
            _ => return None,
        };
        Some(Dur(at.0 + d.0))
    }

    /// Start time when it is time-triggered.
    pub fn at(&self) -> Option<Dur> {
        match self {
            FaultSpec::WorkerKill { at: When::At(d), .. }
            | FaultSpec::WorkerPause { at: When::At(d), .. }
            | FaultSpec::DiskLoss { at: When::At(d), .. } => Some(*d),
            FaultSpec::RegionLoss { at, .. }
            | FaultSpec::ProviderOutage { at, .. }
            | FaultSpec::Partition { at, .. }
            | FaultSpec::LinkDegradation { at, .. }
            | FaultSpec::ReplicationLagSpike { at, .. }
            | FaultSpec::PromptCacheLoss { at, .. }
            | FaultSpec::ClockSkew { at, .. }
            | FaultSpec::VectorCorruption { at, .. }
            | FaultSpec::ToolSchemaChange { at, .. }
            | FaultSpec::BadDeploy { at, .. }
            | FaultSpec::QueueLoss { at, .. } => Some(*at),
            FaultSpec::WorkerKill { .. } | FaultSpec::WorkerPause { .. } | FaultSpec::DiskLoss { .. } => None,
        }
    }
}

/// A scenario that failed to load: where and what.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML or schema error, with line and column.
    #[error("{path}:{line}:{col}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A cross-field rule is broken (for a field not written in the file).
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The end of a list cut at [`crate::drill::limits::MAX_LISTED_ERRORS`]:
    /// how many more errors there are.
    #[error("{path}: and {count} more errors; fix the ones above and run again")]
    More {
        /// File.
        path: PathBuf,
        /// Errors not listed.
        count: usize,
    },
    /// Several of the above, in file order, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ScenarioError>),
}

impl ScenarioError {
    /// Every error, one by one.
    pub fn all(&self) -> Vec<&ScenarioError> {
        match self {
            ScenarioError::Several(v) => v.iter().collect(),
            e => vec![e],
        }
    }
}

/// Parses a scenario from text; `path` is used in errors, for the default
/// name and to resolve includes. Every error of the text is reported (see
/// [`crate::drill::loader`]).
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    crate::drill::loader::parse(path, text).map(|l| l.scenario)
}

/// Loads and validates a scenario file, following its includes.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    crate::drill::loader::load(path).map(|l| l.scenario)
}

/// A broken cross-field rule: the field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `faults[2].at.job`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The other fields the rule read (e.g. `stack.workers` for a worker
    /// index), so that a loader can drop the rule when one of them was
    /// itself malformed.
    pub depends_on: Vec<String>,
}

/// Checks the cross-field rules; the first broken one is the error (see
/// [`problems`] for all of them).
pub fn validate(path: &Path, sc: &Scenario) -> Result<(), ScenarioError> {
    let mut errs: Vec<ScenarioError> = problems(sc)
        .into_iter()
        .map(|p| ScenarioError::Invalid { path: path.to_owned(), field: p.field, message: p.message })
        .collect();
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => Err(ScenarioError::Several(errs)),
    }
}

/// Every broken cross-field rule of a scenario, in the order of the file's
/// sections. Never panics, whatever the values.
pub fn problems(sc: &Scenario) -> Vec<Problem> {
    let mut out = Problems::default();
    top_level_problems(sc, &mut out);
    stack_problems(&sc.stack, &mut out);
    stack_limit_problems(&sc.stack, &mut out);
    timer_problems(sc, &mut out);
    workload_problems(&sc.workload, &mut out);
    let ctx = FaultContext::new(sc);
    for (i, f) in sc.faults.iter().enumerate() {
        fault_problems(&ctx, i, f, &mut out);
        fault_limit_problems(i, f, &mut out);
    }
    out.0
}

/// The problems found so far, in order.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    /// Records a broken rule on `field`, which read the fields `deps` too.
    fn bad(&mut self, field: impl Into<String>, message: impl Into<String>, deps: &[&str]) {
        let depends_on = deps.iter().map(|d| (*d).to_owned()).collect();
        self.0.push(Problem { field: field.into(), message: message.into(), depends_on });
    }

    /// `field` must be a duration longer than 0.
    fn positive(&mut self, field: impl Into<String>, d: Dur, deps: &[&str]) {
        if d.ms() == 0 {
            self.bad(field, "must be longer than 0", deps);
        }
    }

    /// A count of at most `max` (`bound` names the limit).
    fn count_at_most(&mut self, field: impl Into<String>, n: u64, max: u64, bound: &str) {
        if n > max {
            self.bad(field, format!("{n} is above the limit of {max} ({bound}); write at most {max}"), &[]);
        }
    }

    /// A duration written as text of at most [`limits::MAX_SPAN_MS`].
    fn span_at_most(&mut self, field: impl Into<String>, d: Dur) {
        if d.ms() > limits::MAX_SPAN_MS {
            let max = Dur(limits::MAX_SPAN_MS);
            self.bad(
                field,
                format!("{d} is longer than the limit of {max} (MAX_SPAN_MS); write at most \"{max}\""),
                &[],
            );
        }
    }

    /// A duration written as a number of milliseconds, of at most
    /// [`limits::MAX_SPAN_MS`].
    fn ms_at_most(&mut self, field: impl Into<String>, ms: u64) {
        if ms > limits::MAX_SPAN_MS {
            let max = limits::MAX_SPAN_MS;
            self.bad(
                field,
                format!(
                    "{ms} ms is longer than the limit of {max} ms ({}, MAX_SPAN_MS); write at most {max}",
                    Dur(max)
                ),
                &[],
            );
        }
    }

    /// A per-unit time in microseconds of at most [`limits::MAX_PER_UNIT_US`].
    fn per_unit_at_most(&mut self, field: impl Into<String>, us: u64) {
        let max = limits::MAX_PER_UNIT_US;
        if us > max {
            self.bad(
                field,
                format!("{us} µs is above the limit of {max} µs (MAX_PER_UNIT_US); write at most {max}"),
                &[],
            );
        }
    }

    /// A periodic timer every `every_ms` fires at most
    /// [`limits::MAX_TIMER_FIRINGS`] times over `horizon` (a timer of 0 is
    /// left to the rule that it be positive).
    fn fires_at_most(&mut self, field: impl Into<String>, every_ms: u64, horizon: Dur) {
        let max = limits::MAX_TIMER_FIRINGS;
        if every_ms == 0 || horizon.ms() / every_ms <= max {
            return;
        }
        let shortest = Dur(horizon.ms().div_ceil(max));
        self.bad(
            field,
            format!(
                "every {} fires {} times over the {horizon} horizon, above the limit of {max} (MAX_TIMER_FIRINGS); write at least \"{shortest}\" or shorten the horizon",
                Dur(every_ms),
                horizon.ms() / every_ms
            ),
            &["horizon"],
        );
    }
}

/// The tier, the horizon and the cost budget.
fn top_level_problems(sc: &Scenario, out: &mut Problems) {
    for (field, message) in sc.tier.problems() {
        out.bad(field, message, &[]);
    }
    if sc.horizon.ms() == 0 {
        out.bad("horizon", "must be longer than 0; write e.g. horizon = \"2h\"", &[]);
    }
    if sc.horizon.ms() > limits::MAX_HORIZON_MS {
        let max = Dur(limits::MAX_HORIZON_MS);
        let m = format!("{} is longer than the limit of {max} (MAX_HORIZON_MS); write at most \"{max}\"", sc.horizon);
        out.bad("horizon", m, &[]);
    }
    if let TierSpec::Custom(c) = &sc.tier {
        for (what, d) in [("tier.rto", c.rto), ("tier.rpo", c.rpo)] {
            if let Some(d) = d {
                out.span_at_most(what, d);
            }
        }
    }
    out.count_at_most("faults", sc.faults.len() as u64, limits::MAX_FAULTS as u64, "MAX_FAULTS");
    if let Some(pct) = sc.max_cost_increase_pct
        && !(pct >= 0.0 && pct.is_finite())
    {
        out.bad("max_cost_increase_pct", format!("must be a percentage of 0 or more, got {pct}"), &[]);
    }
}

/// `[stack]`: workers, providers, policy, failover, replication, vector.
fn stack_problems(stack: &StackSpec, out: &mut Problems) {
    if stack.workers == 0 {
        out.bad("stack.workers", "must be at least 1", &[]);
    }
    if stack.standby_workers > stack.workers {
        out.bad(
            "stack.standby_workers",
            format!("{} cannot exceed stack.workers ({})", stack.standby_workers, stack.workers),
            &["stack.workers"],
        );
    }
    provider_list_problems(&stack.providers, out);
    if stack.effective_policy().lease_ms == 0 {
        out.bad("stack.policy.lease_ms", "must be longer than 0", &["stack.anti_patterns", "stack.policy"]);
    }
    if stack.failover.failure_threshold == 0 {
        out.bad("stack.failover.failure_threshold", "must be at least 1", &[]);
    }
    out.positive("stack.failover.health_interval", stack.failover.health_interval, &[]);
    if let Replication::Async { interval_ms: 0, .. } = stack.replication {
        out.bad("stack.replication.interval_ms", "must be longer than 0", &[]);
    }
    out.positive("stack.vector.snapshot_interval", stack.vector.snapshot_interval, &[]);
}

/// `stack.providers`: at least one, names unique.
fn provider_list_problems(providers: &[ProviderConfig], out: &mut Problems) {
    if providers.is_empty() {
        out.bad("stack.providers", "needs at least one provider", &[]);
    }
    for (i, p) in providers.iter().enumerate() {
        if providers[..i].iter().any(|q| q.name == p.name) {
            out.bad(
                format!("stack.providers[{i}].name"),
                format!("provider {:?} is listed twice; names must be unique", p.name),
                &[],
            );
        }
    }
}

/// `[stack]` against [`limits`]: every count and duration bounded, and the
/// values a component divides by or sizes a buffer with above 0.
fn stack_limit_problems(stack: &StackSpec, out: &mut Problems) {
    out.count_at_most("stack.workers", u64::from(stack.workers), u64::from(limits::MAX_WORKERS), "MAX_WORKERS");
    let n = stack.anti_patterns.len() as u64;
    out.count_at_most("stack.anti_patterns", n, limits::MAX_ANTI_PATTERNS as u64, "MAX_ANTI_PATTERNS");
    let threshold = u64::from(stack.failover.failure_threshold);
    let max = u64::from(limits::MAX_FAILURE_THRESHOLD);
    out.count_at_most("stack.failover.failure_threshold", threshold, max, "MAX_FAILURE_THRESHOLD");
    if stack.breaker.failure_threshold == 0 {
        out.bad("stack.breaker.failure_threshold", "must be at least 1 (failures that open the breaker)", &[]);
    }
    out.count_at_most(
        "stack.breaker.failure_threshold",
        u64::from(stack.breaker.failure_threshold),
        max,
        "MAX_FAILURE_THRESHOLD",
    );
    let f = &stack.failover;
    let v = &stack.vector;
    let a = &stack.apis;
    for (name, d) in [
        ("failover.health_interval", f.health_interval),
        ("failover.health_timeout", f.health_timeout),
        ("failover.promotion", f.promotion),
        ("failover.dns_ttl", f.dns_ttl),
        ("failover.scale_up", f.scale_up),
        ("vector.snapshot_interval", v.snapshot_interval),
        ("vector.ship_delay", v.ship_delay),
        ("vector.restore_base", v.restore_base),
        ("vector.integrity_check_interval", v.integrity_check_interval),
        ("apis.payment_latency", a.payment_latency),
        ("apis.email_latency", a.email_latency),
        ("apis.search_latency", a.search_latency),
        ("recovery_scan", stack.recovery_scan),
        ("request_timeout", stack.request_timeout),
        ("commit_latency", stack.commit_latency),
    ] {
        out.span_at_most(format!("stack.{name}"), d);
    }
    let snap = v.snapshot_interval.ms();
    if snap > 0 && snap < limits::MIN_SNAPSHOT_INTERVAL_MS {
        let min = Dur(limits::MIN_SNAPSHOT_INTERVAL_MS);
        out.bad(
            "stack.vector.snapshot_interval",
            format!("{} is shorter than the limit of {min} (MIN_SNAPSHOT_INTERVAL_MS: every snapshot of the last hour is kept); write at least \"{min}\"", v.snapshot_interval),
            &[],
        );
    }
    if stack.commit_latency.ms() > limits::MAX_COMMIT_LATENCY_MS {
        let max = Dur(limits::MAX_COMMIT_LATENCY_MS);
        out.bad(
            "stack.commit_latency",
            format!("{} is longer than the limit of {max} (MAX_COMMIT_LATENCY_MS: a database that slow is down, not slow); write at most \"{max}\", or a region_loss fault for an outage", stack.commit_latency),
            &[],
        );
    }
    out.positive("stack.recovery_scan", stack.recovery_scan, &[]);
    // A worker sends a request again when no answer came within this: at 0
    // it would resend at the same instant for ever.
    out.positive("stack.request_timeout", stack.request_timeout, &[]);
    out.per_unit_at_most("stack.vector.restore_per_point_us", v.restore_per_point_us);
    network_problems(&stack.network, out);
    out.ms_at_most("stack.policy.lease_ms", stack.effective_policy().lease_ms);
    match stack.replication {
        Replication::Async { lag_ms, interval_ms } => {
            out.ms_at_most("stack.replication.lag_ms", lag_ms);
            out.ms_at_most("stack.replication.interval_ms", interval_ms);
        }
        Replication::Sync { degrade_after_ms: Some(ms) } => out.ms_at_most("stack.replication.degrade_after_ms", ms),
        Replication::Sync { degrade_after_ms: None } | Replication::None => {}
    }
    out.ms_at_most("stack.breaker.window_ms", stack.breaker.window_ms);
    out.ms_at_most("stack.breaker.open_ms", stack.breaker.open_ms);
    if let Some(q) = &stack.queue {
        out.ms_at_most("stack.queue.dedupe_window_ms", q.dedupe_window_ms);
        out.ms_at_most("stack.queue.ack_wait_ms", q.ack_wait_ms);
        if q.ack_wait_ms < limits::MIN_ACK_WAIT_MS {
            let m =
                "must be at least 1 ms (MIN_ACK_WAIT_MS): at 0 a message is redelivered at the same instant for ever";
            out.bad("stack.queue.ack_wait_ms", m, &[]);
        }
        if q.max_deliver == Some(0) {
            out.bad("stack.queue.max_deliver", "must be at least 1 (remove it for unlimited deliveries)", &[]);
        }
    }
    for (i, p) in stack.providers.iter().enumerate() {
        provider_limit_problems(i, p, out);
    }
}

/// The network's links against [`limits::MAX_LINK_US`]: a slower standing
/// link is a partition, which `faults` model.
fn network_problems(n: &NetworkSpec, out: &mut Problems) {
    let max = limits::MAX_LINK_US;
    for (side, worst) in [("intra_region", n.intra_region_worst_us()), ("cross_region", n.cross_region_worst_us())] {
        if worst > max {
            out.bad(
                format!("stack.network.{side}_latency_us"),
                format!("{side}_latency_us + {side}_jitter_us is {worst} µs, above the limit of {max} µs (MAX_LINK_US: a slower link is a fault; use a link_degradation fault); write at most {max} in all"),
                &[],
            );
        }
    }
}

/// One provider's settings against [`limits`]: bounded times and retries,
/// a timeout above 0, prices and the cache discount in range.
fn provider_limit_problems(i: usize, p: &ProviderConfig, out: &mut Problems) {
    let field = |name: &str| format!("stack.providers[{i}].{name}");
    if i == limits::MAX_PROVIDERS {
        out.count_at_most("stack.providers", (i + 1) as u64, limits::MAX_PROVIDERS as u64, "MAX_PROVIDERS");
    }
    out.ms_at_most(field("base_latency_ms"), p.base_latency_ms);
    out.ms_at_most(field("cold_extra_latency_ms"), p.cold_extra_latency_ms);
    out.ms_at_most(field("cache_ttl_ms"), p.cache_ttl_ms);
    out.ms_at_most(field("timeout_ms"), p.timeout_ms);
    if p.timeout_ms == 0 {
        out.bad(field("timeout_ms"), "must be at least 1 (the SDK gives up after this long)", &[]);
    }
    out.per_unit_at_most(field("latency_per_output_token_us"), p.latency_per_output_token_us);
    out.count_at_most(field("max_retries"), u64::from(p.max_retries), u64::from(limits::MAX_RETRIES), "MAX_RETRIES");
    for (name, price) in [
        ("price_input_per_mtok_usd", p.price_input_per_mtok_usd),
        ("price_output_per_mtok_usd", p.price_output_per_mtok_usd),
    ] {
        if !(price.is_finite() && price >= 0.0) {
            out.bad(field(name), format!("{price} is not a price; write a number of US dollars of 0 or more"), &[]);
        }
    }
    let d = p.cache_read_discount;
    if !(0.0..=1.0).contains(&d) {
        out.bad(field("cache_read_discount"), format!("{d} is not a fraction; write a value from 0 to 1"), &[]);
    }
}

/// Every periodic timer fires at most [`limits::MAX_TIMER_FIRINGS`] times
/// over the horizon (the stack's floors on the client's timers applied).
fn timer_problems(sc: &Scenario, out: &mut Problems) {
    let (s, w, h) = (&sc.stack, &sc.workload, sc.horizon);
    out.fires_at_most("stack.recovery_scan", s.recovery_scan.ms(), h);
    out.fires_at_most("stack.failover.health_interval", s.failover.health_interval.ms(), h);
    out.fires_at_most("stack.request_timeout", s.request_timeout.ms(), h);
    out.fires_at_most("stack.vector.integrity_check_interval", s.vector.integrity_check_interval.ms(), h);
    if let Replication::Async { interval_ms, .. } = s.replication {
        out.fires_at_most("stack.replication.interval_ms", interval_ms, h);
    }
    // A busy worker heartbeats every third of its lease.
    let lease_ms = s.effective_policy().lease_ms;
    if lease_ms > 0 && h.ms().saturating_mul(3) / lease_ms > limits::MAX_TIMER_FIRINGS {
        let shortest = h.ms().saturating_mul(3).div_ceil(limits::MAX_TIMER_FIRINGS);
        out.bad(
            "stack.policy.lease_ms",
            format!(
                "a lease of {lease_ms} ms heartbeats {} times over the {h} horizon, above the limit of {} (MAX_TIMER_FIRINGS); write at least {shortest} or shorten the horizon",
                h.ms().saturating_mul(3) / lease_ms,
                limits::MAX_TIMER_FIRINGS
            ),
            &["horizon", "stack.anti_patterns", "stack.policy"],
        );
    }
    if let Some(q) = &s.queue {
        out.fires_at_most("stack.queue.ack_wait_ms", q.ack_wait_ms, h);
    }
    out.fires_at_most("workload.probe_interval", w.probe_interval.ms().max(1), h);
    out.fires_at_most("workload.submit_retry", w.submit_retry.ms().max(1), h);
    // The client's floors: 1 ms between retries, 1 s between resubmissions.
    resend_problems("workload.submit_retry", w.submit_retry.ms().max(1), sc, out);
    resend_problems("workload.resubmit_after", w.resubmit_after.ms().max(1_000), sc, out);
    worker_poll_problems(sc, out);
}

/// Every idle worker asks for work again every
/// [`crate::components::worker::lease_poll_us`] (one lease, 1 to 30 s): at
/// most [`limits::MAX_WORKER_POLLS`] requests over the horizon, counting
/// both regions at full size.
fn worker_poll_problems(sc: &Scenario, out: &mut Problems) {
    let workers = u64::from(sc.stack.workers);
    let lease_ms = sc.stack.effective_policy().lease_ms;
    let poll_ms = crate::components::worker::lease_poll_us(lease_ms) / crate::components::ids::US_PER_MS;
    let polls = workers.saturating_mul(2).saturating_mul(sc.horizon.ms().div_ceil(poll_ms));
    let max = limits::MAX_WORKER_POLLS;
    // Past its own limit, `workers` has its own error.
    if workers == 0 || workers > u64::from(limits::MAX_WORKERS) || polls <= max {
        return;
    }
    let most_workers = max / sc.horizon.ms().div_ceil(poll_ms).saturating_mul(2).max(1);
    let longest = Dur(max / workers.saturating_mul(2) * poll_ms);
    out.bad(
        "stack.workers",
        format!(
            "{workers} workers over the {} horizon poll for work up to {polls} times (2 regions × workers × horizon / {}, the lease within 1 s to 30 s), above the limit of {max} (MAX_WORKER_POLLS); write at most {most_workers} workers, or a horizon of at most \"{longest}\"",
            sc.horizon,
            Dur(poll_ms)
        ),
        &["horizon", "stack.policy.lease_ms"],
    );
}

/// The client sends each waiting job again every `every_ms`: at most
/// [`limits::MAX_CLIENT_RESENDS`] sends over the horizon.
fn resend_problems(field: &str, every_ms: u64, sc: &Scenario, out: &mut Problems) {
    let tasks = u64::from(sc.workload.tasks);
    let sends = tasks.saturating_mul(sc.horizon.ms() / every_ms);
    let max = limits::MAX_CLIENT_RESENDS;
    // Past its own limit, `tasks` has its own error; this one would only
    // repeat it.
    if tasks == 0 || tasks > u64::from(limits::MAX_TASKS) || sends <= max {
        return;
    }
    let shortest = Dur(tasks.saturating_mul(sc.horizon.ms()).div_ceil(max));
    out.bad(
        field,
        format!(
            "every {} for {tasks} jobs over the {} horizon is up to {sends} sends, above the limit of {max} (MAX_CLIENT_RESENDS); write at least \"{shortest}\", or fewer tasks, or a shorter horizon",
            Dur(every_ms),
            sc.horizon
        ),
        &["horizon", "workload.tasks"],
    );
}

/// A fault's durations and parameters against [`limits`].
fn fault_limit_problems(i: usize, f: &FaultSpec, out: &mut Problems) {
    let field = |name: &str| format!("faults[{i}].{name}");
    for (name, d) in fault_durations(f) {
        out.span_at_most(field(name), d);
    }
    if let FaultSpec::ProviderOutage { mode, .. } = f {
        outage_mode_problems(&field, *mode, out);
    }
}

/// Every duration a fault writes, by field name (its start is checked
/// against the horizon).
fn fault_durations(f: &FaultSpec) -> Vec<(&'static str, Dur)> {
    match f {
        FaultSpec::WorkerKill { restart_after, .. } => restart_after.iter().map(|d| ("restart_after", *d)).collect(),
        FaultSpec::WorkerPause { duration, .. }
        | FaultSpec::ProviderOutage { duration, .. }
        | FaultSpec::Partition { duration, .. }
        | FaultSpec::PromptCacheLoss { duration, .. }
        | FaultSpec::ToolSchemaChange { duration, .. } => vec![("duration", *duration)],
        FaultSpec::LinkDegradation { duration, latency, .. } => vec![("duration", *duration), ("latency", *latency)],
        FaultSpec::ReplicationLagSpike { duration, lag, .. } => vec![("duration", *duration), ("lag", *lag)],
        FaultSpec::ClockSkew { offset, duration, .. } => {
            let mut v = vec![("offset", Dur(offset.0.unsigned_abs()))];
            v.extend(duration.map(|d| ("duration", d)));
            v
        }
        FaultSpec::RegionLoss { duration, .. } | FaultSpec::QueueLoss { duration, .. } => {
            duration.iter().map(|d| ("duration", *d)).collect()
        }
        FaultSpec::DiskLoss { .. } | FaultSpec::VectorCorruption { .. } | FaultSpec::BadDeploy { .. } => Vec::new(),
    }
}

/// A provider outage's mode parameters: a slow factor of at least 1 and
/// bounded, a bounded `retry_after_ms` and stream length.
fn outage_mode_problems(field: &dyn Fn(&str) -> String, mode: ErrorMode, out: &mut Problems) {
    match mode {
        ErrorMode::Slow { factor } => {
            if factor == 0 {
                out.bad(field("mode.slow.factor"), "must be at least 1 (the latency multiplier)", &[]);
            }
            let max = u64::from(limits::MAX_SLOW_FACTOR);
            out.count_at_most(field("mode.slow.factor"), u64::from(factor), max, "MAX_SLOW_FACTOR");
        }
        ErrorMode::RateLimited { retry_after_ms } => {
            out.ms_at_most(field("mode.rate_limited.retry_after_ms"), retry_after_ms)
        }
        ErrorMode::StreamError { after_tokens } => {
            let max = u64::from(limits::MAX_STREAM_TOKENS);
            out.count_at_most(
                field("mode.stream_error.after_tokens"),
                u64::from(after_tokens),
                max,
                "MAX_STREAM_TOKENS",
            );
        }
        _ => {}
    }
}

/// The names of the templates a workload may use.
fn template_names() -> Vec<&'static str> {
    crate::components::workflow::builtin_shared().iter().map(|t| t.name).filter(|n| *n != "probe").collect()
}

/// `[workload]`: templates, tasks, arrivals.
fn workload_problems(w: &Workload, out: &mut Problems) {
    let names = template_names();
    if w.templates.is_empty() {
        out.bad("workload.templates", format!("needs at least one template: {}", names.join(", ")), &[]);
    }
    for (i, t) in w.templates.iter().enumerate() {
        if !names.contains(&t.as_str()) {
            out.bad(
                format!("workload.templates[{i}]"),
                format!("unknown template {t:?}; expected one of {}", names.join(", ")),
                &[],
            );
        }
    }
    if w.tasks == 0 {
        out.bad("workload.tasks", "must be at least 1", &[]);
    }
    if w.arrival != Arrival::AtOnce && w.interval.ms() == 0 {
        out.bad("workload.interval", "must be longer than 0 for uniform or poisson arrivals", &["workload.arrival"]);
    }
    out.count_at_most("workload.tasks", u64::from(w.tasks), u64::from(limits::MAX_TASKS), "MAX_TASKS");
    out.count_at_most("workload.templates", w.templates.len() as u64, limits::MAX_TEMPLATES as u64, "MAX_TEMPLATES");
    for (name, d) in [
        ("interval", w.interval),
        ("probe_interval", w.probe_interval),
        ("resubmit_after", w.resubmit_after),
        ("submit_retry", w.submit_retry),
    ] {
        out.span_at_most(format!("workload.{name}"), d);
    }
}

/// What the fault rules read from the rest of the scenario.
struct FaultContext<'s> {
    sc: &'s Scenario,
    templates: Vec<crate::components::workflow::Template>,
    hosts: Vec<String>,
}

impl<'s> FaultContext<'s> {
    fn new(sc: &'s Scenario) -> Self {
        // Host names are built for at most the workers the limit allows: a
        // file asking for more is refused by its own rule, and naming four
        // billion workers would exhaust memory before it is.
        let mut stack = sc.stack.clone();
        stack.workers = stack.workers.min(limits::MAX_WORKERS);
        FaultContext {
            sc,
            templates: crate::components::workflow::builtin(),
            hosts: crate::sim::stack::host_names(&stack),
        }
    }

    /// The hosts for a message: workers shown as a range past the third.
    fn hosts_listed(&self) -> String {
        let workers = self.sc.stack.workers.min(limits::MAX_WORKERS);
        let mut shown: Vec<String> = Vec::new();
        for h in &self.hosts {
            let index = h.rsplit('-').next().and_then(|n| n.parse::<u32>().ok());
            match index {
                Some(n) if h.starts_with("worker-") && workers > 3 && n >= 2 => {
                    if n == workers - 1 {
                        shown.push(format!("… {h}"));
                    }
                }
                _ => shown.push(h.clone()),
            }
        }
        shown.join(", ")
    }
}

/// The rules of fault `i`: when it starts, then its kind's own.
fn fault_problems(ctx: &FaultContext<'_>, i: usize, f: &FaultSpec, out: &mut Problems) {
    let field = |name: &str| format!("faults[{i}].{name}");
    let sc = ctx.sc;
    if let Some(at) = f.at()
        && at >= sc.horizon
    {
        out.bad(
            field("at"),
            format!(
                "the fault starts at {at}, when the drill is over (horizon {}); start it earlier or lengthen the horizon",
                sc.horizon
            ),
            &["horizon"],
        );
    }
    match f {
        FaultSpec::WorkerKill { at, worker, .. }
        | FaultSpec::WorkerPause { at, worker, .. }
        | FaultSpec::DiskLoss { at, worker } => {
            match at {
                When::Event { job, step, .. } => event_trigger_problems(ctx, &field, *job, *step, worker, out),
                When::At(_) => worker_target_problems(sc, &field, worker, out),
            }
            if let FaultSpec::WorkerPause { duration, .. } = f {
                out.positive(field("duration"), *duration, &[]);
            }
        }
        FaultSpec::RegionLoss { region, .. } => {
            if *region == RegionName::B && sc.stack.pattern == Pattern::SingleRegion {
                let m = "the stack has one region (pattern = \"single_region\"); lose region \"a\" or choose a two-region pattern";
                out.bad(field("region"), m, &["stack.pattern"]);
            }
        }
        FaultSpec::Partition { a, b, duration, .. } | FaultSpec::LinkDegradation { a, b, duration, .. } => {
            endpoint_problems(ctx, &field, [(a, "a"), (b, "b")], out);
            out.positive(field("duration"), *duration, &[]);
            if let FaultSpec::LinkDegradation { loss, latency, .. } = f {
                degradation_problems(&field, *loss, *latency, out);
            }
        }
        FaultSpec::ClockSkew { host, .. } => clock_skew_problems(ctx, &field, host, out),
        FaultSpec::VectorCorruption { fraction, .. } | FaultSpec::BadDeploy { error_rate: fraction, .. } => {
            if !(*fraction > 0.0 && *fraction <= 1.0) {
                let name = if f.kind() == "bad_deploy" { "error_rate" } else { "fraction" };
                out.bad(field(name), format!("{fraction} must be above 0 and at most 1"), &[]);
            }
        }
        FaultSpec::QueueLoss { .. } => {
            if sc.stack.queue.is_none() {
                let m = "the stack has no queue; add a [stack.queue] table or remove this fault";
                out.bad(field("kind"), m, &["stack.queue"]);
            }
        }
        FaultSpec::ReplicationLagSpike { duration, .. } | FaultSpec::ToolSchemaChange { duration, .. } => {
            out.positive(field("duration"), *duration, &[]);
        }
        FaultSpec::PromptCacheLoss { provider, duration, .. } => {
            if let Some(provider) = provider {
                provider_name_problems(sc, &field, provider, out);
            }
            out.positive(field("duration"), *duration, &[]);
        }
        FaultSpec::ProviderOutage { provider, duration, .. } => {
            provider_name_problems(sc, &field, provider, out);
            out.positive(field("duration"), *duration, &[]);
        }
    }
}

/// A worker fault triggered when `job` reaches `step`: the job and the step
/// exist, and no worker is named.
fn event_trigger_problems(
    ctx: &FaultContext<'_>,
    field: &dyn Fn(&str) -> String,
    job: u32,
    step: u16,
    worker: &Option<WorkerTarget>,
    out: &mut Problems,
) {
    let w = &ctx.sc.workload;
    if job >= w.tasks {
        out.bad(
            field("at.job"),
            format!("job {job} does not exist: the workload has {} jobs, numbered from 0", w.tasks),
            &["workload.tasks"],
        );
    } else if !w.templates.is_empty() {
        let tpl_name = &w.templates[job as usize % w.templates.len()];
        if let Some(tpl) = ctx.templates.iter().find(|t| t.name == tpl_name) {
            let len = tpl.steps.len();
            if usize::from(step) >= len {
                out.bad(
                    field("at.step"),
                    format!(
                        "job {job} runs {tpl_name}, which has {len} steps numbered from 0; pick a step below {len}"
                    ),
                    &["workload.templates", "workload.tasks"],
                );
            }
        }
    }
    if worker.is_some() {
        let m = "an event-triggered fault hits the worker running the job; remove `worker`";
        out.bad(field("worker"), m, &[]);
    }
}

/// A time-triggered worker fault names a worker that exists.
fn worker_target_problems(
    sc: &Scenario,
    field: &dyn Fn(&str) -> String,
    worker: &Option<WorkerTarget>,
    out: &mut Problems,
) {
    let deps = &["stack.workers", "workload.tasks"];
    match worker {
        Some(WorkerTarget::Index(n)) if *n >= sc.stack.workers => {
            let m = format!("worker {n} does not exist: region a has {} workers, numbered from 0", sc.stack.workers);
            out.bad(field("worker"), m, deps);
        }
        Some(WorkerTarget::HoldingJob(j)) if *j >= sc.workload.tasks => {
            let m = format!("job {j} does not exist: the workload has {} jobs, numbered from 0", sc.workload.tasks);
            out.bad(field("worker"), m, deps);
        }
        None => {
            let m = "a time-triggered worker fault needs `worker = { index = N }` or `worker = { holding_job = J }`";
            out.bad(field("worker"), m, deps);
        }
        _ => {}
    }
}

/// Both ends of a partition or degradation are hosts or regions.
fn endpoint_problems(
    ctx: &FaultContext<'_>,
    field: &dyn Fn(&str) -> String,
    ends: [(&String, &str); 2],
    out: &mut Problems,
) {
    for (name, which) in ends {
        let region = matches!(name.as_str(), "region:a" | "region:b" | "region:external");
        if !region && !ctx.hosts.iter().any(|h| h == name) {
            out.bad(
                field(which),
                format!(
                    "unknown endpoint {name:?}; write a host ({}) or a region (region:a, region:b, region:external)",
                    ctx.hosts_listed()
                ),
                &["stack"],
            );
        }
    }
}

/// A link degradation's loss is a probability, and it degrades something.
fn degradation_problems(field: &dyn Fn(&str) -> String, loss: f64, latency: Dur, out: &mut Problems) {
    if !(0.0..=1.0).contains(&loss) {
        out.bad(field("loss"), format!("{loss} is not a probability; write a value from 0 to 1"), &[]);
    }
    if loss == 0.0 && latency.ms() == 0 {
        out.bad(field("latency"), "a link degradation needs `latency` or `loss`", &[]);
    }
}

/// A clock skew hits a worker or an orchestrator of the stack.
fn clock_skew_problems(ctx: &FaultContext<'_>, field: &dyn Fn(&str) -> String, host: &str, out: &mut Problems) {
    let ok = ctx.hosts.iter().any(|h| h == host && (h.starts_with("worker-") || h.starts_with("orchestrator-")));
    if !ok {
        out.bad(
            field("host"),
            format!("{host:?} is not a worker or orchestrator of this stack (e.g. \"worker-a-0\", \"orchestrator-a\")"),
            &["stack"],
        );
    }
}

/// A fault's provider is one of the stack's.
fn provider_name_problems(sc: &Scenario, field: &dyn Fn(&str) -> String, provider: &str, out: &mut Problems) {
    if !sc.stack.providers.iter().any(|p| p.name == provider) {
        let known: Vec<&str> = sc.stack.providers.iter().map(|p| p.name.as_str()).collect();
        out.bad(
            field("provider"),
            format!("unknown provider {provider:?}; the stack has {}", known.join(", ")),
            &["stack.providers"],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_as_text() {
        for ms in [0, 250, 90_000, 5_400_000, 86_400_000] {
            let text = Dur(ms).to_string();
            assert_eq!(parse_duration(&text).unwrap(), ms, "{text}");
        }
    }

    #[test]
    fn durations_are_written_as_people_write_them() {
        assert_eq!(parse_duration("90s").unwrap(), 90_000);
        assert_eq!(parse_duration("5m").unwrap(), 300_000);
        assert_eq!(parse_duration("1h 30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration("250ms").unwrap(), 250);
        assert!(parse_duration("soon").unwrap_err().contains("\"90s\""));
    }

    #[test]
    fn unknown_fields_and_bad_phases_point_at_the_place() {
        let text = "tier = \"internal-ops\"\nhorizon = \"1h\"\n[[faults]]\nkind = \"worker_kill\"\nat = { job = 1, step = 2, phase = \"mid_call\" }\n";
        let err = parse(Path::new("x.toml"), text).unwrap_err().to_string();
        assert!(err.starts_with("x.toml:5:35: faults[0].at.phase:"), "{err}");
        assert!(err.contains("mid_call") && err.contains("in_flight"), "{err}");
        let err =
            parse(Path::new("y.toml"), "tier = \"batch\"\nhorizon = \"1h\"\nbogus = 1\n").unwrap_err().to_string();
        assert!(err.starts_with("y.toml:3:1"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn values_a_component_divides_by_or_loops_on_are_refused_with_their_field() {
        let head = "tier = \"batch\"\nhorizon = \"1h\"\n";
        for (body, want) in [
            ("[stack]\nbreaker = { failure_threshold = 0 }\n", "stack.breaker.failure_threshold: must be at least 1"),
            (
                "[[stack.providers]]\nname = \"a\"\ntimeout_ms = 0\n",
                "stack.providers[0].timeout_ms: must be at least 1",
            ),
            (
                "[[faults]]\nkind = \"provider_outage\"\nat = \"1m\"\nprovider = \"anthropic\"\nmode = { slow = { factor = 0 } }\nduration = \"1m\"\n",
                "faults[0].mode.slow.factor: must be at least 1",
            ),
            ("[stack]\nqueue = { ack_wait_ms = 0 }\n", "stack.queue.ack_wait_ms: must be at least 1 ms"),
            ("[stack]\nrecovery_scan = \"0s\"\n", "stack.recovery_scan: must be longer than 0"),
            ("[stack]\nrequest_timeout = \"0s\"\n", "stack.request_timeout: must be longer than 0"),
            ("[stack]\ncommit_latency = \"2m\"\n", "stack.commit_latency: 2m is longer than the limit of 1m"),
            (
                "[[stack.providers]]\nname = \"a\"\ncache_read_discount = 1.5\n",
                "cache_read_discount: 1.5 is not a fraction",
            ),
            (
                "[[stack.providers]]\nname = \"a\"\nprice_output_per_mtok_usd = -1.0\n",
                "price_output_per_mtok_usd: -1 is not a price",
            ),
        ] {
            let err = parse(Path::new("z.toml"), &format!("{head}{body}")).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: want {want:?} in {err}");
        }
    }

    #[test]
    fn every_limit_is_checked_and_names_its_bound() {
        let mut sc = parse(Path::new("ok.toml"), "tier = \"batch\"\nhorizon = \"1h\"\n").unwrap();
        assert!(problems(&sc).is_empty());
        sc.stack.workers = u32::MAX;
        sc.workload.tasks = u32::MAX;
        sc.stack.policy.lease_ms = u64::MAX;
        sc.stack.vector.snapshot_interval = Dur(1);
        sc.stack.replication = Replication::Async { lag_ms: u64::MAX, interval_ms: 1_000 };
        sc.stack.apis.payment_latency = Dur(31 * 86_400_000);
        let found: Vec<String> = problems(&sc).into_iter().map(|p| format!("{}: {}", p.field, p.message)).collect();
        for want in [
            "stack.workers: 4294967295 is above the limit of 1024 (MAX_WORKERS)",
            "workload.tasks: 4294967295 is above the limit of 1000000 (MAX_TASKS)",
            "stack.policy.lease_ms: 18446744073709551615 ms is longer than the limit of 2592000000 ms",
            "stack.vector.snapshot_interval: 1ms is shorter than the limit of 10s (MIN_SNAPSHOT_INTERVAL_MS",
            "stack.replication.lag_ms: 18446744073709551615 ms is longer than the limit",
            "stack.apis.payment_latency: 1month 13h 26m 24s is longer than the limit of 30days (MAX_SPAN_MS)",
        ] {
            assert!(found.iter().any(|f| f.starts_with(want)), "{want:?} not in {found:#?}");
        }
    }

    #[test]
    fn cross_field_rules_are_checked() {
        let text = "tier = \"batch\"\nhorizon = \"10m\"\n[[faults]]\nkind = \"region_loss\"\nat = \"20m\"\n";
        let err = parse(Path::new("z.toml"), text).unwrap_err().to_string();
        assert!(err.starts_with("z.toml:5:6: faults[0].at: the fault starts at 20m"), "{err}");
    }
}
