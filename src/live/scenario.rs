//! Live scenario files (`mode = "live"`): a drill on real processes.
//!
//! ```toml
//! mode = "live"
//! name = "live-worker-kill-in-flight"
//! tier = "customer-facing"
//! horizon = "20s"
//!
//! [jobs]
//! count = 10
//! workflow = "book_flight"
//!
//! [[processes]]
//! name = "worker"
//! command = "${AGENTDRILL_PYTHON:-python3}"
//! args = ["examples/python-agent/agent.py", "--serve"]
//! restart_delay = "300ms"
//!
//! [submit]
//! process = "worker"
//! path = "/jobs"
//!
//! [[faults]]
//! kind = "kill_at_call"
//! api = "payment"
//! job = 3
//! phase = "after_commit"
//! ```
//!
//! The tier, `expect`, durations and error reporting are the simulated
//! scenarios' ([`crate::drill::scenario`]); what differs is what a live drill
//! needs: the processes, how jobs are submitted, and faults on real things.
//! `${NAME}` and `${NAME:-default}` in `command`, `args` and `env` values are
//! taken from the harness's environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Fake;
use super::killpoint::KillPhase;
use super::net::{Selector, Stream, TcpToxic, TcpToxicKind};
use crate::drill::loader::line_col;
use crate::drill::scenario::{Dur, Expect, ScenarioError};
use crate::drill::tier::TierSpec;

/// Most jobs a live drill submits.
pub const MAX_JOBS: u32 = 1_000;
/// Most processes a live scenario names.
pub const MAX_PROCESSES: usize = 16;
/// Most replicas of one process.
pub const MAX_REPLICAS: u16 = 16;
/// Most faults of a live scenario.
pub const MAX_FAULTS: usize = 32;
/// Longest live horizon (real time): 10 minutes.
pub const MAX_HORIZON_MS: u64 = 600_000;

/// The only mode this file type has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Real processes against the HTTP fakes.
    Live,
}

/// A live drill.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveScenario {
    /// `"live"`.
    pub mode: Mode,
    /// Name (default: the file name without `.toml`).
    #[serde(default)]
    pub name: String,
    /// One line: what the drill shows.
    #[serde(default)]
    pub purpose: String,
    /// The tier the stack claims.
    pub tier: TierSpec,
    /// `"pass"`, or `"fail"` for an anti-pattern drill.
    #[serde(default)]
    pub expect: Expect,
    /// Seed of the fakes' script.
    #[serde(default = "one")]
    pub seed: u64,
    /// Real time the drill may take, from the first submission.
    pub horizon: Dur,
    /// How long the processes may take to listen before the drill gives up.
    #[serde(default = "default_startup")]
    pub startup: Dur,
    /// The fakes' settings.
    #[serde(default)]
    pub fakes: FakesSpec,
    /// The jobs submitted.
    pub jobs: JobsSpec,
    /// The stack's processes.
    pub processes: Vec<ProcessSpec>,
    /// How jobs are submitted.
    pub submit: SubmitSpec,
    /// PostgreSQL for the stack (`DATABASE_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSpec>,
    /// Who fails over on a region loss, and the timings.
    #[serde(default)]
    pub failover: LiveFailoverSpec,
    /// The faults.
    #[serde(default)]
    pub faults: Vec<LiveFault>,
}

fn one() -> u64 {
    1
}
fn default_startup() -> Dur {
    Dur::secs(15)
}
fn default_every() -> Dur {
    Dur(100)
}
fn default_restart() -> Dur {
    Dur(1_000)
}
fn default_replicas() -> u16 {
    1
}
fn default_region() -> String {
    "a".into()
}
fn default_path() -> String {
    "/jobs".into()
}
fn default_processing() -> Dur {
    Dur(50)
}
fn yes() -> bool {
    true
}
fn default_status() -> u16 {
    529
}
fn any_pair() -> [String; 2] {
    ["*".into(), "*".into()]
}
fn both_ways() -> Stream {
    Stream::Both
}
fn always() -> f64 {
    1.0
}

/// The fakes' settings.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FakesSpec {
    /// The payment API deduplicates on `Idempotency-Key` (Stripe does).
    #[serde(default = "yes")]
    pub payment_dedupe: bool,
    /// The email API deduplicates on `Idempotency-Key`.
    #[serde(default = "yes")]
    pub email_dedupe: bool,
    /// How long the payment and email APIs process a request.
    #[serde(default = "default_processing")]
    pub processing: Dur,
}

impl Default for FakesSpec {
    fn default() -> Self {
        FakesSpec { payment_dedupe: true, email_dedupe: true, processing: default_processing() }
    }
}

/// The jobs of a drill: `count` jobs numbered from `first`, one every `every`.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobsSpec {
    /// How many.
    pub count: u32,
    /// The workflow template (`book_flight`, `research_report`,
    /// `approve_refund`, …); left out: drawn per job from the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Number of the first job.
    #[serde(default = "one_u32")]
    pub first: u32,
    /// Gap between submissions.
    #[serde(default = "default_every")]
    pub every: Dur,
    /// What the fakes must see for a job to count as done.
    #[serde(default)]
    pub done: DoneWhen,
    /// How long the drill goes on watching once every job is done and after
    /// the last fault event (a kill, a thaw, an outage's end): a job can
    /// look done at the fakes before the stack's recovery re-sends one of
    /// its effects (a kill after the last effect committed), and a thawed
    /// zombie acts late. Give it the stack's lease plus its recovery scan.
    /// Default: [`DEFAULT_SETTLE_MS`], or half the horizon when that is
    /// shorter (so a short drill stays valid without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<Dur>,
    /// Send a submission again when it was not accepted this long after it
    /// was sent (refused, timed out, or no answer yet: an attempt still
    /// waiting for its answer counts as sent again). The simulated
    /// workload's `submit_retry`, the same rule
    /// ([`crate::components::resend`]).
    #[serde(default = "default_submit_retry")]
    pub submit_retry: Dur,
    /// Submit an accepted job again, with the same job number, when it is
    /// not done (at the fakes) this long after its acceptance or its last
    /// resubmission: its acknowledgement may have been lost with a region
    /// or in a replication lag window. The stack must accept a job it
    /// already has as a no-op (the reference orchestrator does). The
    /// simulated workload's `resubmit_after`; at least 1s.
    #[serde(default = "default_resubmit_after")]
    pub resubmit_after: Dur,
}

impl JobsSpec {
    /// The resend rule of these jobs' submitter.
    pub fn resends(&self) -> crate::components::resend::Resends {
        crate::components::resend::Resends::new(self.submit_retry.us(), self.resubmit_after.us())
    }
}

fn default_submit_retry() -> Dur {
    Dur(250)
}

fn default_resubmit_after() -> Dur {
    Dur(5_000)
}

/// The default `[jobs] settle`, in milliseconds.
pub const DEFAULT_SETTLE_MS: u64 = 1_000;

impl LiveScenario {
    /// `[jobs] settle` in milliseconds: as written, else
    /// [`DEFAULT_SETTLE_MS`] capped at half the horizon.
    pub fn settle_ms(&self) -> u64 {
        self.jobs.settle.map_or(DEFAULT_SETTLE_MS.min(self.horizon.ms() / 2), |d| d.ms())
    }
}

/// When a job is done, as seen at the fakes (ground truth, never the stack's
/// own records). Every side effect of the job's script must be in a ledger
/// either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DoneWhen {
    /// … and a model fake served the job's final answer (an agent loop
    /// that asks the model until it stops calling tools).
    #[default]
    FinalAnswer,
    /// … at the last side effect's commit (a stack whose workflow ends on a
    /// tool call with no closing model turn, as the reference stack's does).
    LastEffect,
}

fn one_u32() -> u32 {
    1
}

/// One process of the stack.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Name (letters, digits, `-`, `_`): `AGENTDRILL_PROCESS`, and
    /// `AGENTDRILL_PEER_<NAME>_URL` for the others.
    pub name: String,
    /// Program (on PATH, or a path relative to where agentdrill runs).
    pub command: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Region (`a` or `b`): `AGENTDRILL_REGION`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Replicas (each with its own listen address and its own fake ports).
    #[serde(default = "default_replicas")]
    pub replicas: u16,
    /// Wait before a killed (or exited) replica is started again.
    #[serde(default = "default_restart")]
    pub restart_delay: Dur,
    /// Not running before a failover: its replicas start at the failover's
    /// scale-up (a warm standby's extra capacity, a cold standby's
    /// everything). Only in region `b`.
    #[serde(default)]
    pub standby: bool,
    /// The region-`a` process this standby replaces on a failover: that
    /// process's `AGENTDRILL_PEER_<NAME>_URL` (and the submission address,
    /// if it takes the jobs) is a stable harness address switched to this
    /// process after the DNS TTL, and the replaced process stays down
    /// (fenced) when its region comes back. Implies `standby = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takes_over: Option<String>,
}

impl ProcessSpec {
    /// Whether it waits for the failover's scale-up.
    pub fn is_standby(&self) -> bool {
        self.standby || self.takes_over.is_some()
    }
}

/// How jobs are submitted: `process` + `path` (the harness POSTs
/// `{"job": N, "workflow": "NAME"}` to the process's listen address; 2xx =
/// accepted), or `command` (`{job}` and `{workflow}` substituted; exit 0 =
/// accepted).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitSpec {
    /// The process whose replica 0 takes jobs over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// The HTTP path.
    #[serde(default = "default_path")]
    pub path: String,
    /// A command run once per job instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// Where the stack's PostgreSQL comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DbBackend {
    /// `initdb`/`pg_ctl` on PATH, on a loopback port, in the run folder.
    Local,
    /// A container (testcontainers).
    Docker,
}

/// PostgreSQL for the stack.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    /// Backend.
    pub backend: DbBackend,
    /// A hot standby in region `b`, streaming from the primary (region `a`)
    /// through a harness link; the processes' `DATABASE_URL` is then a
    /// stable harness address that the failover switches to the promoted
    /// standby after the DNS TTL.
    #[serde(default)]
    pub standby: bool,
    /// `async` (default) or `sync` (`synchronous_standby_names`).
    #[serde(default)]
    pub replication: DbReplication,
    /// With `replication = "base_backup"`: how often region `b` takes a
    /// base backup of the primary (default 2 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_every: Option<Dur>,
    /// Latency added to the replication link from the start (a standby
    /// that lags by about this much), e.g. `"1500ms"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_latency: Option<Dur>,
    /// The tables compared for RPO after a failover, each `"table:key"`
    /// (default: the reference stack's event log, `agentdrill.event_log:lsn`).
    #[serde(default = "default_rpo_tables")]
    pub rpo_tables: Vec<String>,
}

fn default_rpo_tables() -> Vec<String> {
    vec!["agentdrill.event_log:lsn".into()]
}

/// How the standby follows the primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DbReplication {
    /// Streaming, commits acknowledged before the standby has them.
    #[default]
    Async,
    /// Each commit waits for the standby.
    Sync,
    /// A cold standby: nothing runs in region `b`; it holds the primary's
    /// latest base backup (`pg_basebackup` every `backup_every`), and a
    /// failover starts a new primary from it.
    BaseBackup,
}

/// Who runs the failover on a region loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailoverBy {
    /// The harness's controller (the simulator's
    /// [`crate::components::region::Controller`]): health checks, promotion,
    /// the stable addresses switched after the TTL, scale-up, fencing.
    #[default]
    Harness,
    /// The stack fails over by itself; the harness only injects the loss
    /// (it gives the processes `AGENTDRILL_DB_PRIMARY_URL` and
    /// `AGENTDRILL_DB_STANDBY_URL`).
    Stack,
}

/// `[failover]`: the controller and its timings (real time, so short).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LiveFailoverSpec {
    /// `harness` or `stack`.
    pub by: FailoverBy,
    /// Health-check interval.
    pub health_interval: Dur,
    /// A check fails without an answer within this.
    pub health_timeout: Dur,
    /// Consecutive failed checks that declare region `a` down.
    pub failure_threshold: u32,
    /// Least time the promotion takes (the controller also waits for
    /// `pg_promote()` to return).
    pub promotion: Dur,
    /// DNS TTL: the stable addresses switch this long after the promotion.
    pub dns_ttl: Dur,
    /// Wait before the standby processes start (provisioning).
    pub scale_up: Dur,
}

impl Default for LiveFailoverSpec {
    fn default() -> Self {
        LiveFailoverSpec {
            by: FailoverBy::Harness,
            health_interval: Dur(1_000),
            health_timeout: Dur(500),
            failure_threshold: 2,
            promotion: Dur(0),
            dns_ttl: Dur(2_000),
            scale_up: Dur(0),
        }
    }
}

impl LiveFailoverSpec {
    /// The sans-IO controller's configuration.
    pub fn config(&self) -> crate::components::region::FailoverConfig {
        crate::components::region::FailoverConfig {
            health_interval_ms: self.health_interval.ms(),
            health_timeout_ms: self.health_timeout.ms(),
            failure_threshold: self.failure_threshold,
            promotion_ms: self.promotion.ms(),
            dns_ttl_ms: self.dns_ttl.ms(),
            scale_up_ms: self.scale_up.ms(),
        }
    }

    /// Longest a loss of region `a` can go undetected: threshold checks and
    /// the last one's timeout.
    pub fn detection_ms(&self) -> u64 {
        self.health_interval.ms() * u64::from(self.failure_threshold) + self.health_timeout.ms()
    }
}

/// An API a kill point watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Stripe-shaped payments.
    Payment,
    /// Resend-shaped email.
    Email,
    /// Anthropic Messages.
    Anthropic,
    /// OpenAI Chat Completions.
    Openai,
    /// The self-hosted fallback.
    Local,
}

impl Api {
    /// The fake.
    pub fn fake(self) -> Fake {
        match self {
            Api::Payment => Fake::Payment,
            Api::Email => Fake::Email,
            Api::Anthropic => Fake::Anthropic,
            Api::Openai => Fake::Openai,
            Api::Local => Fake::Local,
        }
    }
}

/// A fault on real things.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LiveFault {
    /// SIGKILL the sender of the Nth matching call to `api`, at `phase`.
    KillAtCall {
        /// The API.
        api: Api,
        /// Only this job's calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<u32>,
        /// Only this step's calls (payment and email).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u16>,
        /// The Nth matching call (1-based).
        #[serde(default = "one_u32")]
        call: u32,
        /// `before_commit`, `after_commit` or `after_response`.
        phase: KillPhase,
    },
    /// SIGKILL a replica at a time.
    Kill {
        /// Process name.
        process: String,
        /// Replica.
        #[serde(default)]
        replica: u16,
        /// When, from the first submission.
        at: Dur,
    },
    /// SIGSTOP a replica at `at`, SIGCONT after `duration` (a zombie past its lease).
    Pause {
        /// Process name.
        process: String,
        /// Replica.
        #[serde(default)]
        replica: u16,
        /// When, from the first submission.
        at: Dur,
        /// How long it stays stopped.
        duration: Dur,
    },
    /// SIGSTOP the sender of the Nth matching call to `api` before anything
    /// leaves the fake, SIGCONT it after `duration` (a zombie that wakes
    /// past its lease holding the answer, with `after_response`).
    PauseAtCall {
        /// The API.
        api: Api,
        /// Only this job's calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<u32>,
        /// Only this step's calls (payment and email).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u16>,
        /// The Nth matching call (1-based).
        #[serde(default = "one_u32")]
        call: u32,
        /// `before_commit` (dropped), `after_commit` (effect, answer
        /// dropped) or `after_response` (effect, answer read on waking).
        phase: KillPhase,
        /// How long the sender stays stopped.
        duration: Dur,
    },
    /// Cuts the network between two sides at `at` for `duration`: every TCP
    /// link between them passes nothing (open connections stall, new ones
    /// go nowhere), then the bytes flow again. Sides are `region:a`,
    /// `region:b`, a process (`worker`), one replica (`worker/1`), a fake
    /// (`payment`, `vector-b`, …), `postgres` or `client` (the submitter).
    Partition {
        /// The two sides.
        between: [String; 2],
        /// When, from the first submission.
        at: Dur,
        /// How long.
        duration: Dur,
    },
    /// A TCP toxic (latency, loss, reset_peer, blackhole, bandwidth) on every
    /// link between two sides (default: every link) at `at` for `duration`.
    Network {
        /// What it does: `{ type = "latency", latency_ms = 300, jitter_ms = 50 }`.
        toxic: TcpToxicKind,
        /// The two sides (as for `partition`; `*` is every endpoint).
        #[serde(default = "any_pair")]
        between: [String; 2],
        /// `upstream` (requests), `downstream` (answers) or `both`.
        #[serde(default = "both_ways")]
        direction: Stream,
        /// Probability that it applies to a connection, in [0, 1].
        #[serde(default = "always")]
        toxicity: f64,
        /// When, from the first submission.
        at: Dur,
        /// How long.
        duration: Dur,
    },
    /// Region `a` is lost at `at`: its processes SIGKILLed (and kept down),
    /// its links blackholed, its PostgreSQL primary killed; with a
    /// `duration` it comes back then (its processes restart, except the
    /// ones a standby took over; the old primary stays fenced).
    RegionLoss {
        /// Only `a` (the primary region).
        #[serde(default = "default_region")]
        region: String,
        /// When, from the first submission.
        at: Dur,
        /// How long, for a temporary loss (it must outlast detection).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration: Option<Dur>,
    },
    /// The replication link (primary → standby) holds every chunk
    /// `latency` from `at`, for `duration` (or to the end): a lag spike.
    ReplicationLag {
        /// Latency added to the link, e.g. `"1500ms"`.
        latency: Dur,
        /// When, from the first submission.
        at: Dur,
        /// How long (to the end when left out).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration: Option<Dur>,
    },
    /// A model provider answers every request with `status` for `duration`.
    ProviderOutage {
        /// `anthropic`, `openai` or `local`.
        provider: Api,
        /// 429, 500, 503 or 529.
        #[serde(default = "default_status")]
        status: u16,
        /// When, from the first submission.
        at: Dur,
        /// How long.
        duration: Dur,
    },
}

impl LiveFault {
    /// Kind, as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            LiveFault::KillAtCall { .. } => "kill_at_call",
            LiveFault::Kill { .. } => "kill",
            LiveFault::Pause { .. } => "pause",
            LiveFault::PauseAtCall { .. } => "pause_at_call",
            LiveFault::ProviderOutage { .. } => "provider_outage",
            LiveFault::Partition { .. } => "partition",
            LiveFault::Network { .. } => "network",
            LiveFault::RegionLoss { .. } => "region_loss",
            LiveFault::ReplicationLag { .. } => "replication_lag",
        }
    }
}

/// A live scenario read from a file.
#[derive(Clone, Debug)]
pub struct LiveLoaded {
    /// The scenario, validated.
    pub scenario: LiveScenario,
    /// `"fnv1a64:<16 hex digits>"` of the file's bytes.
    pub hash: String,
}

/// Whether `text` is a live scenario (`mode = "live"` at the top level).
pub fn is_live(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        l.strip_prefix("mode").map(str::trim_start).and_then(|r| r.strip_prefix('=')).is_some_and(|r| {
            let v = r.split('#').next().unwrap_or("").trim();
            v == "\"live\"" || v == "'live'"
        })
    })
}

/// Whether the file at `path` is a live scenario.
pub fn is_live_file(path: &Path) -> bool {
    // Through the scenario guards: a device or a huge file is not read here
    // (the simulated loader then reports it).
    crate::drill::loader::read_scenario_text(path).is_ok_and(|t| is_live(&t))
}

/// Reads and validates a live scenario file (with the guards every scenario
/// file gets: a regular file, at most 1 MiB, UTF-8).
pub fn load(path: &Path) -> Result<LiveLoaded, ScenarioError> {
    let text = crate::drill::loader::read_scenario_text(path)?;
    parse(path, &text)
}

/// Parses and validates a live scenario from text.
pub fn parse(path: &Path, text: &str) -> Result<LiveLoaded, ScenarioError> {
    let mut sc: LiveScenario = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        ScenarioError::Parse { path: path.to_owned(), line, col, message: e.message().trim().to_owned() }
    })?;
    if sc.name.is_empty() {
        sc.name = path.file_stem().map_or_else(|| "live".into(), |s| s.to_string_lossy().into_owned());
    }
    let errs: Vec<ScenarioError> = problems(&sc)
        .into_iter()
        .map(|(field, message)| ScenarioError::Invalid { path: PathBuf::from(path), field, message })
        .collect();
    match errs.len() {
        0 => {}
        1 => return Err(errs.into_iter().next().expect("one")),
        _ => return Err(ScenarioError::Several(errs)),
    }
    let mut h = crate::drill::loader::Fnv1a::default();
    h.write(text.as_bytes());
    Ok(LiveLoaded { scenario: sc, hash: format!("fnv1a64:{:016x}", h.0) })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 40 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Every broken cross-field rule: (field, what is wrong and the fix).
pub fn problems(sc: &LiveScenario) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = sc.tier.problems();
    let mut p = |f: &str, m: String| out.push((f.to_owned(), m));
    if sc.horizon.ms() == 0 || sc.horizon.ms() > MAX_HORIZON_MS {
        p("horizon", format!("{} is out of range; a live horizon is real time, between 1s and 10m", sc.horizon));
    }
    if let Some(settle) = sc.jobs.settle
        && settle.ms() >= sc.horizon.ms()
    {
        p("jobs.settle", format!("{settle} is not below the horizon ({}); shorten it", sc.horizon));
    }
    if sc.jobs.submit_retry.ms() == 0 {
        p("jobs.submit_retry", "is 0; write at least \"1ms\" (default 250ms)".into());
    }
    if sc.jobs.resubmit_after.us() < crate::components::resend::MIN_RESUBMIT_US {
        p("jobs.resubmit_after", format!("{} is below 1s; write at least \"1s\" (default 5s)", sc.jobs.resubmit_after));
    }
    if sc.jobs.count == 0 || sc.jobs.count > MAX_JOBS {
        p("jobs.count", format!("{} is out of range; submit between 1 and {MAX_JOBS} jobs", sc.jobs.count));
    }
    if sc.jobs.first == 0 || sc.jobs.first.saturating_add(sc.jobs.count) > super::script::MAX_JOB {
        p("jobs.first", format!("job numbers must be between 1 and {}", super::script::MAX_JOB));
    }
    if let Some(w) = &sc.jobs.workflow
        && super::script::Script::new(sc.seed).template_named(w).is_none()
    {
        let names: Vec<&str> = super::script::Script::new(sc.seed).templates().iter().map(|t| t.name).collect();
        p("jobs.workflow", format!("no workflow template `{w}`; use one of {}", names.join(", ")));
    }
    if sc.processes.is_empty() || sc.processes.len() > MAX_PROCESSES {
        p("processes", format!("name between 1 and {MAX_PROCESSES} processes ([[processes]] with name and command)"));
    }
    let mut replicas = 0usize;
    for (i, pr) in sc.processes.iter().enumerate() {
        if !valid_name(&pr.name) {
            p(&format!("processes[{i}].name"), format!("`{}`: use letters, digits, `-` and `_` (at most 40)", pr.name));
        }
        if sc.processes[..i].iter().any(|q| q.name == pr.name) {
            p(&format!("processes[{i}].name"), format!("`{}` is named twice; process names are unique", pr.name));
        }
        if pr.command.trim().is_empty() {
            p(&format!("processes[{i}].command"), "is empty; name the program to run".into());
        }
        if !["a", "b"].contains(&pr.region.as_str()) {
            p(&format!("processes[{i}].region"), format!("`{}`: the regions are `a` and `b`", pr.region));
        }
        if pr.replicas == 0 || pr.replicas > MAX_REPLICAS {
            p(&format!("processes[{i}].replicas"), format!("{} is out of range; 1 to {MAX_REPLICAS}", pr.replicas));
        }
        replicas += usize::from(pr.replicas);
    }
    if replicas > usize::from(super::MAX_SENDER_SLOTS) {
        p("processes", format!("{replicas} replicas in all; at most {}", super::MAX_SENDER_SLOTS));
    }
    let known = |n: &str| sc.processes.iter().find(|q| q.name == n);
    for (i, pr) in sc.processes.iter().enumerate() {
        if pr.is_standby() && pr.region != "b" {
            p(&format!("processes[{i}].region"), "a standby process runs in region `b`: set region = \"b\"".into());
        }
        if let Some(t) = &pr.takes_over {
            match known(t) {
                Some(q) if q.region == "a" && !q.is_standby() => {}
                _ => p(
                    &format!("processes[{i}].takes_over"),
                    format!(
                        "`{t}` is not a running region-`a` process in [[processes]]; name the process this standby replaces"
                    ),
                ),
            }
        }
    }
    if let Some(db) = &sc.database {
        for (i, t) in db.rpo_tables.iter().enumerate() {
            if parse_rpo_table(t).is_none() {
                p(
                    &format!("database.rpo_tables[{i}]"),
                    format!("`{t}`: write \"table:key\" (e.g. \"agentdrill.event_log:lsn\")"),
                );
            }
        }
        if !db.standby && (db.replication != DbReplication::Async || db.replication_latency.is_some()) {
            p("database.standby", "replication settings need a standby: set standby = true".into());
        }
        if db.backup_every.is_some() && db.replication != DbReplication::BaseBackup {
            p("database.backup_every", "backups are for replication = \"base_backup\" (a cold standby)".into());
        }
        if db.backup_every.is_some_and(|d| d.ms() < 100) {
            p("database.backup_every", "a base backup takes a while: write at least \"100ms\"".into());
        }
    }
    if sc.failover.failure_threshold == 0 || sc.failover.health_interval.ms() < 50 {
        p("failover", "health checks need failure_threshold >= 1 and health_interval >= 50ms".into());
    }
    match (&sc.submit.process, &sc.submit.command) {
        (Some(_), Some(_)) | (None, None) => {
            p("submit", "give either `process` (and `path`) or `command`, not both".into());
        }
        (Some(n), None) if known(n).is_none() => {
            p("submit.process", format!("no process called `{n}` in [[processes]]"));
        }
        (None, Some(c)) if c.is_empty() => p("submit.command", "is empty; give the program and its arguments".into()),
        _ => {}
    }
    if !sc.submit.path.starts_with('/') {
        p("submit.path", format!("`{}` must start with `/`", sc.submit.path));
    }
    if sc.faults.len() > MAX_FAULTS {
        p("faults", format!("{} faults; at most {MAX_FAULTS}", sc.faults.len()));
    }
    for (i, f) in sc.faults.iter().enumerate() {
        let at = |p: &mut dyn FnMut(&str, String), d: Dur| {
            if d.ms() >= sc.horizon.ms() {
                p(
                    &format!("faults[{i}].at"),
                    format!("{d} is at or after the horizon ({}); move it earlier", sc.horizon),
                );
            }
        };
        match f {
            LiveFault::KillAtCall { call, .. } if *call == 0 => {
                p(&format!("faults[{i}].call"), "calls are counted from 1 (the first matching call)".into());
            }
            LiveFault::KillAtCall { .. } => {}
            LiveFault::PauseAtCall { call, duration, .. } => {
                if *call == 0 {
                    p(&format!("faults[{i}].call"), "calls are counted from 1 (the first matching call)".into());
                }
                if duration.ms() == 0 || duration.ms() >= sc.horizon.ms() {
                    let m = format!("{duration} must be above 0 and below the horizon ({})", sc.horizon);
                    p(&format!("faults[{i}].duration"), m);
                }
            }
            LiveFault::Kill { process, replica, at: d } | LiveFault::Pause { process, replica, at: d, .. } => {
                match known(process) {
                    None => {
                        p(&format!("faults[{i}].process"), format!("no process called `{process}` in [[processes]]"))
                    }
                    Some(q) if *replica >= q.replicas => p(
                        &format!("faults[{i}].replica"),
                        format!("`{process}` has {} replicas (0 to {})", q.replicas, q.replicas - 1),
                    ),
                    Some(_) => {}
                }
                at(&mut p, *d);
            }
            LiveFault::Partition { between, at: d, duration } => {
                side_problems(sc, i, between, false, &mut p);
                window_problems(i, *duration, &mut p);
                at(&mut p, *d);
            }
            LiveFault::Network { toxic, between, direction, toxicity, at: d, duration } => {
                side_problems(sc, i, between, true, &mut p);
                let t = TcpToxic {
                    name: format!("faults[{i}]"),
                    kind: toxic.clone(),
                    stream: *direction,
                    toxicity: *toxicity,
                };
                if let Err(e) = t.validate() {
                    p(&format!("faults[{i}].toxic"), e.to_string());
                }
                window_problems(i, *duration, &mut p);
                at(&mut p, *d);
            }
            LiveFault::RegionLoss { region, at: d, duration } => {
                region_loss_problems(sc, i, region, *duration, &mut p);
                at(&mut p, *d);
            }
            LiveFault::ReplicationLag { at: d, .. } => {
                if !sc.database.as_ref().is_some_and(|d| d.standby) {
                    p(
                        &format!("faults[{i}]"),
                        "a replication lag needs a standby: add [database] standby = true".into(),
                    );
                }
                at(&mut p, *d);
            }
            LiveFault::ProviderOutage { provider, status, at: d, .. } => {
                if !matches!(provider, Api::Anthropic | Api::Openai | Api::Local) {
                    p(&format!("faults[{i}].provider"), "a provider is `anthropic`, `openai` or `local`".into());
                }
                if ![429, 500, 503, 529].contains(status) {
                    p(&format!("faults[{i}].status"), format!("{status}: use 429, 500, 503 or 529"));
                }
                at(&mut p, *d);
            }
        }
    }
    out
}

/// Problems with a cut's or a network toxic's two sides: each names a
/// region, a process (or one replica), a fake, `postgres` (with a
/// `[database]`) or `client`; `*` only where `any` allows it.
fn side_problems(sc: &LiveScenario, i: usize, between: &[String; 2], any: bool, p: &mut dyn FnMut(&str, String)) {
    for (k, side) in between.iter().enumerate() {
        let field = format!("faults[{i}].between[{k}]");
        let known = match Selector::parse(side) {
            Selector::Any => any,
            Selector::Region(r) => ["a", "b"].contains(&r.as_str()),
            Selector::Replica(n, r) => sc.processes.iter().any(|q| q.name == n && r < q.replicas),
            Selector::Component(n) => {
                sc.processes.iter().any(|q| q.name == n)
                    || Fake::from_name(&n).is_some()
                    || n == "client"
                    // A standby pair is reached through the failover's own
                    // stable link, not a `live::net` one: use a
                    // `region_loss` or `replication_lag` there.
                    || (n == "postgres" && sc.database.as_ref().is_some_and(|d| !d.standby))
            }
        };
        if !known {
            let star = if any { "`*`, " } else { "" };
            p(
                &field,
                format!(
                    "`{side}` names nothing in this drill; use {star}`region:a`, `region:b`, a process (`NAME` or `NAME/REPLICA`), a fake (`payment`, `email`, `anthropic`, `openai`, `local`, `vector-a`, `vector-b`), `client`{}",
                    if sc.database.as_ref().is_some_and(|d| !d.standby) { " or `postgres`" } else { "" }
                ),
            );
        }
    }
    if between[0] == between[1] && between[0] != "*" {
        p(&format!("faults[{i}].between"), format!("both sides are `{}`; name two different sides", between[0]));
    }
}

fn window_problems(i: usize, duration: Dur, p: &mut dyn FnMut(&str, String)) {
    if duration.ms() == 0 {
        p(&format!("faults[{i}].duration"), "is 0; give how long the fault lasts (e.g. \"3s\")".into());
    }
}

/// The cross-field rules of a `region_loss` fault.
fn region_loss_problems(
    sc: &LiveScenario,
    i: usize,
    region: &str,
    duration: Option<Dur>,
    p: &mut dyn FnMut(&str, String),
) {
    if region != "a" {
        p(&format!("faults[{i}].region"), format!("`{region}`: only region `a` (the primary's) can be lost"));
    }
    if !sc.database.as_ref().is_some_and(|d| d.standby) && sc.failover.by == FailoverBy::Harness {
        p(
            &format!("faults[{i}]"),
            "a region loss fails over to a standby database: add [database] standby = true".into(),
        );
    }
    if let Some(d) = duration
        && sc.failover.by == FailoverBy::Harness
        && d.ms() <= sc.failover.detection_ms()
    {
        p(
            &format!("faults[{i}].duration"),
            format!(
                "{d} is within detection ({} ms = health_interval x failure_threshold + health_timeout): the killed primary would have to serve again, which a drill never does; make it longer",
                sc.failover.detection_ms()
            ),
        );
    }
}

/// `"table:key"` → (table, key).
pub fn parse_rpo_table(s: &str) -> Option<(&str, &str)> {
    let (t, k) = s.split_once(':')?;
    let ok = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    (ok(t) && ok(k) && !k.contains('.')).then_some((t, k))
}

/// A live drill in words, without running it: what starts, how jobs
/// arrive, what each fault does, and how the verdict is reached
/// (`agentdrill explain` of a live scenario).
pub fn explain(sc: &LiveScenario) -> String {
    use std::fmt::Write as _;
    let t = sc.tier.targets();
    let mut o = String::new();
    let _ = writeln!(o, "{} (live drill, seed {})", sc.name, sc.seed);
    if !sc.purpose.is_empty() {
        let _ = writeln!(o, "  {}", sc.purpose);
    }
    let _ = writeln!(
        o,
        "\nClaim: tier {} (RTO < {:.0} s, RPO < {:.0} s, zero {}); expected outcome: {}.",
        sc.tier.name(),
        t.rto_s,
        t.rpo_s,
        t.invariants.iter().map(|i| i.counts()).collect::<Vec<_>>().join(", zero "),
        if sc.expect == Expect::Fail { "caught (an anti-pattern drill)" } else { "pass" }
    );
    let _ = writeln!(
        o,
        "\nProcesses (each replica in its own process group, with its own port on every fake; every connection between components crosses a harness TCP proxy):"
    );
    for p in &sc.processes {
        let _ = writeln!(
            o,
            "  {} x{} in region {}: {} {} (restarted {} after a kill)",
            p.name,
            p.replicas,
            p.region,
            p.command,
            p.args.join(" "),
            p.restart_delay
        );
    }
    let workflow = sc.jobs.workflow.as_deref().unwrap_or("drawn per job from the seed");
    let how = match (&sc.submit.process, &sc.submit.command) {
        (Some(p), _) => format!("POST {{\"job\", \"workflow\"}} to {p}'s {}", sc.submit.path),
        (None, Some(c)) => format!("run `{}`", c.join(" ")),
        _ => String::new(),
    };
    let _ = writeln!(
        o,
        "\nJobs: {} ({workflow}), job-{} onwards, one every {}; submitted by: {how}.",
        sc.jobs.count, sc.jobs.first, sc.jobs.every
    );
    let _ = writeln!(o, "\nFaults:");
    if sc.faults.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for f in &sc.faults {
        let line = match f {
            LiveFault::KillAtCall { api, job, step, call, phase } => format!(
                "when call #{call} to the {api:?} API{}{} arrives, the fake holds it, SIGKILLs the sender's process group, then {}",
                job.map_or(String::new(), |j| format!(" for job-{j}")),
                step.map_or(String::new(), |s| format!(" step {s}")),
                match phase {
                    KillPhase::BeforeCommit => "drops it (no effect)",
                    KillPhase::AfterCommit => "commits the effect and drops the response (in flight)",
                    KillPhase::AfterResponse => "answers first: the kill lands after the response left",
                }
            ),
            LiveFault::Kill { process, replica, at } => format!("SIGKILL {process} replica {replica} at {at}"),
            LiveFault::PauseAtCall { api, job, step, call, phase, duration } => format!(
                "when call #{call} to the {api:?} API{}{} arrives, the fake holds it, SIGSTOPs the sender's process group for {duration}, then {}",
                job.map_or(String::new(), |j| format!(" for job-{j}")),
                step.map_or(String::new(), |s| format!(" step {s}")),
                match phase {
                    KillPhase::BeforeCommit => "drops it (no effect)",
                    KillPhase::AfterCommit => "commits the effect and drops the response",
                    KillPhase::AfterResponse =>
                        "commits the effect and answers: the frozen sender reads it when it wakes",
                }
            ),
            LiveFault::Pause { process, replica, at, duration } => {
                format!("SIGSTOP {process} replica {replica} at {at}, SIGCONT {duration} later")
            }
            LiveFault::ProviderOutage { provider, status, at, duration } => {
                format!("the {provider:?} fake answers HTTP {status} from {at} for {duration}")
            }
            LiveFault::Partition { between, at, duration } => format!(
                "cut the network between {} and {} from {at} for {duration}: every TCP link between them passes nothing (open connections stall, new ones go nowhere), then the held bytes flow again",
                between[0], between[1]
            ),
            LiveFault::Network { toxic, between, direction, toxicity, at, duration } => format!(
                "a {} toxic ({}) on the links between {} and {} ({direction:?}, toxicity {toxicity}) from {at} for {duration}",
                toxic.name(),
                serde_json::to_string(toxic).unwrap_or_default(),
                between[0],
                between[1]
            ),
            LiveFault::ReplicationLag { latency, at, duration } => format!(
                "the replication link holds every chunk {latency} from {at}{}",
                duration.map_or(" to the end".to_owned(), |d| format!(" for {d}"))
            ),
            LiveFault::RegionLoss { region, at, duration } => format!(
                "region {region} lost at {at}{}: its processes SIGKILLed, its links blackholed, its PostgreSQL primary killed; {}",
                duration.map_or(String::new(), |d| format!(" for {d}")),
                match sc.failover.by {
                    FailoverBy::Harness => format!(
                        "the harness's controller checks health every {} (timeout {}, {} failures), promotes the standby, switches the stable addresses after the {} TTL, starts the standby processes {} later",
                        sc.failover.health_interval,
                        sc.failover.health_timeout,
                        sc.failover.failure_threshold,
                        sc.failover.dns_ttl,
                        sc.failover.scale_up
                    ),
                    FailoverBy::Stack => "the stack fails over by itself".into(),
                }
            ),
        };
        let _ = writeln!(o, "  - {line}");
    }
    let _ = writeln!(
        o,
        "\nMeasured from the fakes' ledgers and the script: duplicates and lost effects per (job, step), RTO from each fault's onset until the tasks in flight have progressed and new work is done (the reference stack's event log; other stacks: the jobs in flight and the next job done end to end), stuck jobs at the horizon ({}).",
        sc.horizon
    );
    o
}

/// `${NAME}` and `${NAME:-default}` replaced from `lookup`.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let inner = &rest[at + 2..at + end];
        let (name, default) = inner.split_once(":-").map_or((inner, None), |(n, d)| (n, Some(d)));
        out.push_str(&lookup(name).filter(|v| !v.is_empty()).or(default.map(str::to_owned)).unwrap_or_default());
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

/// The env-var form of a process name: upper case, `-` → `_`.
pub fn env_name(process: &str) -> String {
    process.to_ascii_uppercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "mode = \"live\"\ntier = \"customer-facing\"\nhorizon = \"20s\"\n[jobs]\ncount = 3\n[[processes]]\nname = \"worker\"\ncommand = \"python3\"\n[submit]\nprocess = \"worker\"\n";

    #[test]
    fn reads_a_minimal_live_scenario_with_defaults() {
        assert!(is_live(OK));
        assert!(!is_live("tier = \"batch\"\n# mode = \"live\"\n"));
        let l = parse(Path::new("x.toml"), OK).unwrap();
        assert_eq!(l.scenario.name, "x");
        assert_eq!(l.scenario.processes[0].replicas, 1);
        assert_eq!(l.scenario.submit.path, "/jobs");
    }

    #[test]
    fn errors_name_the_file_the_place_and_the_fix() {
        let e = parse(Path::new("x.toml"), &OK.replace("count = 3", "count = 3\nbogus = 1")).unwrap_err().to_string();
        assert!(e.starts_with("x.toml:6:1: unknown field `bogus`"), "{e}");
        let text = format!("{OK}[[faults]]\nkind = \"kill\"\nprocess = \"wrker\"\nat = \"30s\"\n");
        let e = parse(Path::new("x.toml"), &text).unwrap_err().to_string();
        assert!(e.contains("x.toml: faults[0].process: no process called `wrker`"), "{e}");
        assert!(e.contains("faults[0].at: 30s is at or after the horizon"), "{e}");
    }

    #[test]
    fn reads_network_faults_and_locates_their_errors() {
        let good = format!(
            "{OK}[[faults]]\nkind = \"partition\"\nbetween = [\"region:a\", \"region:b\"]\nat = \"1s\"\nduration = \"3s\"\n\
             [[faults]]\nkind = \"network\"\nbetween = [\"worker/0\", \"payment\"]\nat = \"2s\"\nduration = \"1s\"\n\
             toxic = {{ type = \"latency\", latency_ms = 300, jitter_ms = 50 }}\n"
        );
        let l = parse(Path::new("x.toml"), &good).unwrap();
        assert!(matches!(
            &l.scenario.faults[1],
            LiveFault::Network {
                toxic: TcpToxicKind::Latency { latency_ms: 300, jitter_ms: 50 },
                direction: Stream::Both,
                ..
            }
        ));
        assert!(explain(&l.scenario).contains("cut the network between region:a and region:b from 1s for 3s"));
        let bad = good
            .replace("\"worker/0\"", "\"worker/3\"")
            .replace("\"region:b\"", "\"region:c\"")
            .replace("duration = \"3s\"", "duration = \"0s\"");
        let e = parse(Path::new("x.toml"), &bad).unwrap_err().to_string();
        assert!(e.contains("x.toml: faults[0].between[1]: `region:c` names nothing"), "{e}");
        assert!(e.contains("faults[0].duration: is 0"), "{e}");
        assert!(e.contains("faults[1].between[0]: `worker/3` names nothing"), "{e}");
        let e = parse(Path::new("x.toml"), &good.replace("latency_ms = 300", "latency = 300")).unwrap_err().to_string();
        assert!(e.contains("latency"), "{e}");
        let e = parse(Path::new("x.toml"), &good.replace("region:b", "postgres")).unwrap_err().to_string();
        assert!(e.contains("`postgres` names nothing"), "{e}");
    }

    #[test]
    fn expands_environment_references() {
        let look = |n: &str| (n == "A").then(|| "x".to_owned());
        assert_eq!(expand("${A}/${B:-python3} ${C}", &look), "x/python3 ");
        assert_eq!(env_name("db-writer"), "DB_WRITER");
    }
}
