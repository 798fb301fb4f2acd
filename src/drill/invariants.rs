//! Recovery invariants, checked on a finished simulation from ground truth.
//!
//! `fuzz` checks every generated drill against these; `drill::run` adds
//! their violations to a drill's verdict, so a reproducer written by `fuzz`
//! fails `agentdrill run` for the same reason. Each check reads the fake
//! APIs' ledgers, the serving store (and the log of a primary lost with its
//! region), `stack::Truth` and the measurements — never what a component
//! believes. A [`Violation`] names its [`Invariant`] and, where there is
//! one, the `(job, step)` where it broke.
//!
//! # The invariants, precisely
//!
//! - **`no_panic`**: the simulation reaches the horizon without panicking
//!   (`fuzz::check_case` catches the panic and reports it with its message).
//! - **`exactly_once`**: per `(job, step)` of a side-effect step, at most one
//!   ledger entry (no duplicate), and at least one when the serving store
//!   records the step as done (none lost).
//! - **`no_redo`** (recovery continues, never redoes): (a) no ledger entry for
//!   `(job, step)` is later than the first `Result` of that step committed in
//!   the serving store — a side effect after its result was persisted is a
//!   redo, or the result was written before the effect happened; (b) no plan
//!   step is decided twice: every side effect and memory write that acts on
//!   a model step's decision acts on the same decision (`Truth::replanned`).
//! - **`fencing`**: (a) no orchestrator accepted a write from a worker whose
//!   lease had moved on (`Orchestrator::stale_writes_accepted`); (b) every
//!   side effect comes from the worker holding the job's latest lease
//!   granted at or before the effect (leases from the serving log and the
//!   lost primary's log).
//! - **`log_truth`** (the event log tells the truth): (a) every ledger entry
//!   of `(job, step)` has a checkpoint (`Intent`) of that step carrying the
//!   key the API saw, in the serving log or the lost primary's log (a
//!   policy that writes no intent — checkpoint after the step, or at session
//!   end — needs a `Result` of the step instead); (b) every `Result` of a
//!   side-effect step in the serving log is backed by a ledger entry of that
//!   step no later than the result's commit.
//! - **`liveness`**: every workload job is done by the horizon, checked only
//!   when the horizon is at least the [`Budget::settle_deadline_us`] (the end
//!   of the last fault plus the time the stack needs to finish everything).
//! - **`rpo_bound`**: for each region loss, measured structured-state and
//!   queue RPO ≤ the replication lag + one interval + the cross-region link
//!   (0 under synchronous replication); vector-memory RPO ≤ the snapshot
//!   interval + ship delay (0 with a streaming replica), extended from the
//!   schedule ([`Budget::rpo_bounds_us`]). No bound (no check) without
//!   replication or with same-region snapshots. For each vector corruption
//!   restored by the horizon, its own vector RPO ≤ the integrity-check
//!   interval + snapshot cycle, plus the time since a failover under way at
//!   it began, or since an earlier corruption whose restore it shares plus
//!   that one's bound ([`Budget::corruption_rpo_us`]).
//! - **`rto_bound`**: each fault's measured RTO ≤ its own budget from the
//!   stack's configuration ([`Budget::rto_bound_us`]): detection, promotion
//!   and DNS TTL, scale-up, hydration, lease expiry and recovery scan, the
//!   provider retry budget, plus the work to run (one step, the queue
//!   ahead, the next probe), slowed by the provider outages under way.
//!   Overlapping faults share their budgets: the bound runs to the end of
//!   the cluster of overlapping recoveries, each with its own slowdown.
//! - **`tier`**: measured RTO and RPO meet the targets of the tier the
//!   scenario claims (what `drill::run` has always checked).
//! - **`retry_budget`**: with circuit breakers, a provider in outage gets at
//!   most the failures the breakers let through: per worker process,
//!   `threshold + (threshold − 1) × ⌈D / window⌉ + ⌈D / open⌉ + 1` failed SDK
//!   calls of `max_retries + 1` attempts each, for an outage of length `D`.

use std::fmt;

use serde::Serialize;

use crate::components::env::Note;
use crate::components::ids::{HostId, IdemKey, JobId, Micros, TaskId, US_PER_MS, US_PER_S, us_to_s};
use crate::components::orchestrator::Replication;
use crate::components::policy::{Checkpointing, Policy};
use crate::components::provider::ErrorMode;
use crate::components::region::Pattern;
use crate::components::router::{DEFAULT_BACKOFF_BASE_MS, MAX_BACKOFF_MS, MAX_RETRY_AFTER_MS};
use crate::components::store::{LogSlice, Op, StepState, TaskJobs, TaskStatus, distinct_runs};
use crate::components::workflow::{StepKind, Template};
use crate::drill::Run;
use crate::drill::measure::{FaultResult, Progress};
use crate::drill::scenario::{FaultSpec, RegionName, Scenario, SnapshotLocation, StackSpec};
use crate::sim::stack::{Node, REGION_A, Stack};

/// One invariant. The order is the order of precedence when a drill breaks
/// several: the first is the one a reproducer is named after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    /// The simulation runs to the horizon without a panic and within its
    /// budget (checked by `fuzz::check_case`, which catches both: either is
    /// an engine bug).
    NoPanic,
    /// 0 duplicates and 0 lost side effects per (job, step).
    ExactlyOnce,
    /// No side effect after its result was persisted; no step decided twice.
    NoRedo,
    /// No write or side effect from a worker whose lease moved on.
    Fencing,
    /// Every side effect has its tool-call event, and vice versa.
    LogTruth,
    /// Every job finishes once the faults are over (when the horizon allows).
    Liveness,
    /// RPO within what the replication and snapshot settings allow.
    RpoBound,
    /// RTO within the budget derived from the stack.
    RtoBound,
    /// RTO and RPO within the claimed tier's targets.
    Tier,
    /// Provider failures within what the circuit breakers let through.
    RetryBudget,
}

impl Invariant {
    /// Every invariant, in precedence order.
    pub const ALL: [Invariant; 10] = [
        Invariant::NoPanic,
        Invariant::ExactlyOnce,
        Invariant::NoRedo,
        Invariant::Fencing,
        Invariant::LogTruth,
        Invariant::Liveness,
        Invariant::RpoBound,
        Invariant::RtoBound,
        Invariant::Tier,
        Invariant::RetryBudget,
    ];

    /// The name used in reports and reproducers.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::NoPanic => "no_panic",
            Invariant::ExactlyOnce => "exactly_once",
            Invariant::NoRedo => "no_redo",
            Invariant::Fencing => "fencing",
            Invariant::LogTruth => "log_truth",
            Invariant::Liveness => "liveness",
            Invariant::RpoBound => "rpo_bound",
            Invariant::RtoBound => "rto_bound",
            Invariant::Tier => "tier",
            Invariant::RetryBudget => "retry_budget",
        }
    }

    /// One line: what it demands.
    pub fn describe(self) -> &'static str {
        match self {
            Invariant::NoPanic => {
                "the simulation runs to the horizon without a panic and within its budget (either is an engine bug)"
            }
            Invariant::ExactlyOnce => "exactly-once side effects: 0 duplicates and 0 lost per (job, step)",
            Invariant::NoRedo => {
                "recovery continues, never redoes: no side effect after its persisted result, no step decided twice"
            }
            Invariant::Fencing => "fencing: no write or side effect from a worker whose lease moved on",
            Invariant::LogTruth => {
                "the event log tells the truth: every side effect has its tool-call event, and vice versa"
            }
            Invariant::Liveness => "liveness: every task finishes by the horizon once the faults have ended",
            Invariant::RpoBound => "RPO bound: RPO within the replication lag plus one interval (0 when synchronous)",
            Invariant::RtoBound => {
                "RTO bound: RTO within the detection, routing, scale-up, hydration and lease budgets"
            }
            Invariant::Tier => "tier: RTO and RPO within the claimed tier's targets",
            Invariant::RetryBudget => "retry budget: provider failures within what the circuit breakers let through",
        }
    }

    /// Looks an invariant up by name.
    pub fn from_name(name: &str) -> Option<Invariant> {
        Invariant::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A broken invariant: which, where, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The invariant.
    pub invariant: Invariant,
    /// The job where it broke (None: not tied to one job).
    pub job: Option<u32>,
    /// The step where it broke.
    pub step: Option<u16>,
    /// What was measured against what was allowed.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.invariant)?;
        match (self.job, self.step) {
            (Some(j), Some(s)) => write!(f, " at job {j} step {s}")?,
            (Some(j), None) => write!(f, " at job {j}")?,
            _ => {}
        }
        write!(f, ": {}", self.detail)
    }
}

fn v(invariant: Invariant, job: Option<u32>, step: Option<u16>, detail: String) -> Violation {
    Violation { invariant, job, step, detail }
}

/// Runs the measurements and checks every invariant. Violations come in
/// precedence order (see [`Invariant`]), then by job and step.
pub fn check(sc: &Scenario, run: &Run) -> Vec<Violation> {
    let (faults, counts, progress) =
        crate::drill::measure::measure_with_progress(&run.stack, &run.faults, sc.horizon.us());
    let mut out = check_measured(sc, run, &faults, &progress);
    // The claimed tier's counted invariants that the checks above do not
    // cover (`agentdrill run` checks every count itself): steps decided
    // again after their result was persisted, two workers acting
    // on one step, results persisted from unvalidated tool responses.
    use crate::drill::tier::Invariant as Counted;
    let targets = sc.tier.targets();
    for inv in
        [Counted::NoReplannedSteps, Counted::NoStaleActions, Counted::NoCorruptedWrites, Counted::NoConcurrentRuns]
    {
        let n = counts.of(inv);
        if n > 0 && targets.invariants.contains(&inv) {
            out.push(v(Invariant::Tier, None, None, format!("{}: {n} {}, target 0", inv.name(), inv.counts())));
        }
    }
    out.sort_by_key(|x| (x.invariant, x.job, x.step));
    out
}

/// [`check`] with the measurements already made, and the progress they
/// were read from ([`crate::drill::measure::measure_with_progress`]): the
/// RTO checks read the same logs, so it is not built twice.
pub fn check_measured(sc: &Scenario, run: &Run, measured: &[FaultResult], progress: &Progress) -> Vec<Violation> {
    let (g, leases) = Ground::new(sc, run);
    let budget = Budget::new(sc);
    let mut out = Vec::new();
    // Fencing first: its lease list is dropped before the steps and the
    // log scan below are built (a million-task drill's peak is here).
    // Violations are sorted at the end, so the order of checks is free.
    fencing(&g, leases, &mut out);
    let steps = LedgerSteps::new(&g);
    exactly_once(&g, &steps, &mut out);
    let scan = scan_logs(&g, &steps);
    no_redo(&g, &steps, &scan, &mut out);
    log_truth(&g, scan, &mut out);
    liveness(&g, &budget, &mut out);
    rpo_bound(&g, &budget, measured, &mut out);
    // Each fault's RTO over every log, once for both checks that read it.
    let union_rto = union_rto_us(&g, progress);
    rto_bound(&g, &budget, measured, &union_rto, &mut out);
    tier(&g, measured, &union_rto, &mut out);
    retry_budget(&g, &mut out);
    out.sort_by_key(|x| (x.invariant, x.job, x.step));
    out
}

/// Ground truth gathered once for all checks.
struct Ground<'a> {
    sc: &'a Scenario,
    run: &'a Run,
    stack: &'a Stack,
    policy: Policy,
    /// Every ledger entry of the payment and email APIs.
    /// (References, not copies: two million entries at a million tasks.)
    ledger: Vec<&'a crate::components::ledger::LedgerEntry>,
    /// The serving store's log.
    serving_log: LogSlice<'a>,
    /// Logs of primaries lost with their region.
    lost_logs: Vec<LogSlice<'a>>,
    /// Logs of the orchestrators not serving at the end (for log truth).
    demoted_logs: Vec<LogSlice<'a>>,
    /// Task → job over every log (point lookups only, several per log
    /// record: a hash map, not a tree).
    job_of: TaskJobs,
    /// Fault onsets (None: never triggered).
    onsets: Vec<Option<Micros>>,
}

impl<'a> Ground<'a> {
    /// The ground truth, and every lease grant of the run (see
    /// [`jobs_and_grants`]; only [`fencing`] reads them, and drops them).
    fn new(sc: &'a Scenario, run: &'a Run) -> (Self, Grants) {
        let stack = &run.stack;
        let mut ledger: Vec<_> =
            [stack.hosts.payment, stack.hosts.email].iter().flat_map(|&h| stack.api(h).ledger().iter()).collect();
        ledger.sort_by_key(|e| (e.at_us, e.origin.job, e.origin.step));
        let serving_log = stack.orch(stack.serving_orch()).store().log();
        let lost_logs: Vec<LogSlice<'_>> =
            run.faults.iter().filter_map(|f| f.lost_log.as_ref()).map(|l| l.log.as_slice().into()).collect();
        // A primary demoted by a failover it did not die in (a partition
        // from the failover controller) keeps the records it had not
        // replicated: under asynchronous replication they are lost like a
        // lost region's, and are as much a part of what happened (for the
        // log's truth only: work it finished after its demotion is not
        // recovery).
        let serving = stack.serving_orch();
        // So does one whose storage a permanent loss of its region destroyed.
        let demoted_logs: Vec<LogSlice<'_>> = stack
            .hosts
            .orch
            .iter()
            .filter(|&&h| h != serving)
            .map(|&h| stack.orch(h).store().log())
            .chain(run.faults.iter().filter_map(|f| f.wiped_log.as_ref().map(|(_, l)| LogSlice::from(l))))
            .collect();
        let (job_of, leases) = jobs_and_grants(sc, &lost_logs, &demoted_logs, serving_log);
        let onsets = run.faults.iter().map(|f| f.onset_us).collect();
        let g = Ground {
            sc,
            run,
            stack,
            policy: sc.stack.effective_policy(),
            ledger,
            serving_log,
            lost_logs,
            demoted_logs,
            job_of,
            onsets,
        };
        (g, leases)
    }

    fn template(&self, job: JobId) -> Option<&Template> {
        let spec = self.stack.jobs.get(job.0 as usize)?;
        self.stack.templates.get(spec.template as usize)
    }

    fn is_side_effect(&self, job: JobId, step: u16) -> bool {
        self.template(job).and_then(|t| t.steps.get(step as usize)).is_some_and(|s| s.kind.is_side_effect())
    }

    /// Every log: the serving one first, then lost primaries'.
    fn all_logs(&self) -> impl Iterator<Item = LogSlice<'a>> + '_ {
        std::iter::once(self.serving_log).chain(self.lost_logs.iter().copied())
    }

    fn horizon_us(&self) -> Micros {
        self.sc.horizon.us()
    }
}

/// Every ledger entry's step as `(job, step, ledger index)`, sorted: each
/// step's entries together, in ledger order (one flat vector, not a map of
/// vectors: a million-task drill has millions of steps).
struct LedgerSteps(Vec<(JobId, u16, usize)>, JobIndex);

impl LedgerSteps {
    fn new(g: &Ground<'_>) -> Self {
        let mut per_step: Vec<(JobId, u16, usize)> =
            g.ledger.iter().enumerate().map(|(i, e)| (e.origin.job, e.origin.step, i)).collect();
        sort_by_job(&mut per_step, |x| x.0);
        let index = JobIndex::new(&per_step, |x| x.0);
        LedgerSteps(per_step, index)
    }

    /// The position of the step's first ledger entry in the list (by ledger
    /// order), or None when no API has a side effect of the step.
    fn first(&self, job: JobId, step: u16) -> Option<usize> {
        // The job's few entries by its index (a bisection of the whole list
        // misses the cache at every probe in a million-task drill), then the
        // first at or after the step, as `partition_point` would find it.
        let r = self.1.range(&self.0, job, |x| x.0);
        let i = r.start + self.0[r.clone()].partition_point(|&(_, s, _)| s < step);
        (i < r.end && self.0[i].1 == step).then_some(i)
    }
}

fn exactly_once(g: &Ground<'_>, steps: &LedgerSteps, out: &mut Vec<Violation>) {
    for entries in steps.0.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let (job, step, _) = entries[0];
        if entries.len() > 1 {
            let times: Vec<String> =
                entries.iter().map(|&(_, _, i)| format!("{:.3} s", us_to_s(g.ledger[i].at_us))).collect();
            let kind = g.template(job).map_or("side effect", |t| t.steps[step as usize].kind.name());
            out.push(v(
                Invariant::ExactlyOnce,
                Some(job.0),
                Some(step),
                format!("{} {kind} side effects (at {}); exactly 1 allowed", entries.len(), times.join(", ")),
            ));
        }
    }
    let has_effect = |job: JobId, step: u16| steps.first(job, step).is_some();
    let store = g.stack.orch(g.stack.serving_orch()).store();
    for t in store.tasks().iter().filter(|t| !t.probe) {
        for (i, state) in t.step_states().enumerate() {
            let step = i as u16;
            if state == StepState::Done && g.is_side_effect(t.job, step) && !has_effect(t.job, step) {
                out.push(v(
                    Invariant::ExactlyOnce,
                    Some(t.job.0),
                    Some(step),
                    "the store records the step as done but no API has the side effect (lost)".into(),
                ));
            }
        }
    }
}

/// Sorts `v` into the order `sort_unstable` gives, for elements whose
/// order starts with a job id: jobs are dense, so a counting sort by job
/// (linear) and then each job's few elements sorted, instead of a
/// comparison sort of the whole vector. Sparse ids fall back to the latter.
pub(crate) fn sort_by_job<T: Ord + Copy>(v: &mut Vec<T>, job: impl Fn(&T) -> JobId) {
    let Some(max) = v.iter().map(|x| job(x).0 as usize).max() else { return };
    if max > v.len().saturating_mul(4).max(1_024) {
        v.sort_unstable();
        return;
    }
    // start[j]..start[j + 1]: where job j's elements go.
    let mut start = vec![0u32; max + 2];
    for x in v.iter() {
        start[job(x).0 as usize + 1] += 1;
    }
    let mut sum = 0;
    for c in start.iter_mut() {
        sum += *c;
        *c = sum;
    }
    let mut next = start.clone();
    let mut out = vec![v[0]; v.len()];
    for &x in v.iter() {
        let slot = &mut next[job(&x).0 as usize];
        out[*slot as usize] = x;
        *slot += 1;
    }
    for w in start.windows(2) {
        out[w[0] as usize..w[1] as usize].sort_unstable();
    }
    *v = out;
}

/// Where each job's elements are in a vector sorted by job (by
/// [`sort_by_job`], deduplicated or not): `start[j]..start[j + 1]`, so a
/// lookup reads two adjacent counters and the job's few elements instead of
/// bisecting the whole vector (about 22 cache misses a lookup at a million
/// tasks). Sparse job ids (above [`sort_by_job`]'s dense bound) fall back to
/// bisection. It answers for the vector it was built on, unchanged.
pub(crate) struct JobIndex(Option<Vec<u32>>);

impl JobIndex {
    /// The index of `v`, which must be sorted by `job`.
    pub(crate) fn new<T>(v: &[T], job: impl Fn(&T) -> JobId) -> JobIndex {
        let Some(max) = v.iter().map(|x| job(x).0 as usize).max() else { return JobIndex(Some(Vec::new())) };
        if max > v.len().saturating_mul(4).max(1_024) || u32::try_from(v.len()).is_err() {
            return JobIndex(None);
        }
        let mut start = vec![0u32; max + 2];
        for x in v {
            start[job(x).0 as usize + 1] += 1;
        }
        let mut sum = 0;
        for c in start.iter_mut() {
            sum += *c;
            *c = sum;
        }
        debug_assert!(v.windows(2).all(|w| job(&w[0]) <= job(&w[1])), "JobIndex over a vector not sorted by job");
        JobIndex(Some(start))
    }

    /// Where `j`'s elements are in `v` (the vector the index was built on).
    #[inline]
    pub(crate) fn range<T>(&self, v: &[T], j: JobId, job: impl Fn(&T) -> JobId) -> std::ops::Range<usize> {
        match &self.0 {
            Some(start) => {
                let i = j.0 as usize;
                match (start.get(i), start.get(i + 1)) {
                    (Some(&a), Some(&b)) => a as usize..b as usize,
                    _ => v.len()..v.len(),
                }
            }
            None => v.partition_point(|x| job(x) < j)..v.partition_point(|x| job(x) <= j),
        }
    }
}

/// [`LogScan::first_result_us`] of a step whose result the serving log
/// does not record.
const NO_RESULT: Micros = Micros::MAX;

/// What the invariants need from the records of every log, read in one
/// pass ([`scan_logs`]).
struct LogScan {
    /// Every intent's step and key, any log, sorted and deduplicated
    /// (collected only when the policy writes intents).
    intents: Vec<((JobId, u16), IdemKey)>,
    /// Every step with a result, any log, sorted and deduplicated
    /// (collected only when the policy writes no intent).
    any_result: Vec<(JobId, u16)>,
    /// When the serving log first recorded each ledger step's result
    /// (indexed like [`LedgerSteps::first`]; [`NO_RESULT`]: it did not).
    first_result_us: Vec<Micros>,
    /// Log-truth violations: a side-effect step's result in the serving
    /// log before any API had its side effect (the first such record of
    /// each step, in log order).
    unbacked: Vec<Violation>,
}

/// One pass over every log's records for `no_redo` and `log_truth`. A
/// chunk the replica shares with its primary is read once (the vectors are
/// deduplicated anyway). The serving log is the first log of the pass and
/// is read whole (`distinct_runs` skips only a chunk that an *earlier* log
/// shares), so its records are the first `serving_log.len()` of the pass,
/// in log order.
fn scan_logs(g: &Ground<'_>, steps: &LedgerSteps) -> LogScan {
    let writes_intent = g.policy.checkpointing == Checkpointing::BeforeCall;
    // Sorted flat vectors, searched by bisection: a map of vectors costs an
    // allocation per step of a million-task drill.
    let mut intents: Vec<((JobId, u16), IdemKey)> = Vec::new();
    let mut any_result: Vec<(JobId, u16)> = Vec::new();
    let mut first_result_us = vec![NO_RESULT; steps.0.len()];
    let mut unbacked = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let serving_len = g.serving_log.len();
    let runs = distinct_runs(g.all_logs().chain(g.demoted_logs.iter().copied()));
    for (pos, r) in runs.into_iter().flatten().enumerate() {
        match r.op {
            Op::Intent { task, ordinal, key, .. } if writes_intent => {
                if let Some(&job) = g.job_of.get(&task) {
                    intents.push(((job, ordinal), key));
                }
            }
            Op::Result { task, ordinal, .. } => {
                let serving = pos < serving_len;
                if !serving && writes_intent {
                    continue;
                }
                let Some(&job) = g.job_of.get(&task) else { continue };
                if !writes_intent {
                    any_result.push((job, ordinal));
                }
                if !serving {
                    continue;
                }
                let first = steps.first(job, ordinal);
                if let Some(i) = first
                    && first_result_us[i] == NO_RESULT
                {
                    first_result_us[i] = r.at_us;
                }
                // Results of side-effect steps are backed by a ledger entry.
                let effect_at = first.map(|i| g.ledger[steps.0[i].2].at_us);
                if g.is_side_effect(job, ordinal)
                    && effect_at.is_none_or(|at| at > r.at_us)
                    && seen.insert((job, ordinal))
                {
                    unbacked.push(v(
                        Invariant::LogTruth,
                        Some(job.0),
                        Some(ordinal),
                        format!(
                            "the event log records the step's result at {:.3} s but no side effect had happened by then",
                            us_to_s(r.at_us)
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    sort_by_job(&mut intents, |x| x.0.0);
    intents.dedup();
    sort_by_job(&mut any_result, |x| x.0);
    any_result.dedup();
    LogScan { intents, any_result, first_result_us, unbacked }
}

fn no_redo(g: &Ground<'_>, steps: &LedgerSteps, scan: &LogScan, out: &mut Vec<Violation>) {
    let mut seen = std::collections::BTreeSet::new();
    for e in &g.ledger {
        let k = (e.origin.job, e.origin.step);
        // The first result in the serving log (every ledger step is listed).
        let at = steps.first(k.0, k.1).map_or(NO_RESULT, |i| scan.first_result_us[i]);
        if at != NO_RESULT && e.at_us > at && seen.insert(k) {
            out.push(v(
                Invariant::NoRedo,
                Some(k.0.0),
                Some(k.1),
                format!(
                    "side effect at {:.3} s after the step's result was persisted at {:.3} s",
                    us_to_s(e.at_us),
                    us_to_s(at)
                ),
            ));
        }
    }
    for &(job, step) in &g.stack.truth.replanned {
        out.push(v(
            Invariant::NoRedo,
            Some(job.0),
            Some(step),
            "the step was decided twice: side effects acted on two different decisions (replanned)".into(),
        ));
    }
}

/// Every lease grant of the run as `(job, at, holder, token)`, sorted (a
/// job's grants together, in commit order), read from every log: the
/// serving store's, lost primaries', and those of orchestrators not serving
/// at the end (a primary failed away from while it was alive).
///
/// Why a demoted primary's grants count. When a partition cuts the failover
/// controller from region A, the standby is promoted while A, which cannot
/// hear the controller, may still grant leases to the workers that reach
/// it, until it self-fences: a primary that has not heard a health check
/// for longer than the controller's detection (threshold × interval +
/// timeout) grants, renews and accepts nothing until a check arrives again
/// (`OrchConfig::controller_silence_us`). Its grants before that are not a
/// split brain as long as the promoted standby grants nothing meanwhile,
/// and it does not: it requeues every lease it inherited at promotion and
/// grants only once the controller opens it to traffic, after the DNS TTL.
/// A genuine split brain (the old primary's holder acting after the
/// promoted standby granted the job; seed 5005 case 10199, before
/// self-fencing) still shows: that grant is the newest, and a side effect
/// from the older holder after it is stale. Under fully synchronous
/// replication a demoted primary's log adds no grant: every grant it
/// released the replica had first, and one the promoted replica never
/// confirmed was never sent (a lease A recorded while cut from the
/// controller but never delivered must not make its old holder stale).
/// Task ids are mapped to jobs within each log (each store mints its own):
/// a grant's task by the log's creations before it, else by
/// [`Ground::job_of`].
///
/// Both come from one pass over each log (a million-task drill's logs hold
/// millions of records; reading them twice, for the map and then for the
/// grants, cost a second trip through memory): the map takes every log's
/// creations in [`Ground::job_of`]'s order (lost primaries', demoted ones',
/// then the serving log: the last mapping wins), and a grant whose task its
/// own log had not created by then waits for the whole map.
fn jobs_and_grants(
    sc: &Scenario,
    lost_logs: &[LogSlice<'_>],
    demoted_logs: &[LogSlice<'_>],
    serving_log: LogSlice<'_>,
) -> (TaskJobs, Grants) {
    let fully_sync = matches!(sc.stack.replication, Replication::Sync { degrade_after_ms: None });
    let mut job_of = TaskJobs::new();
    let mut leases: Grants = Vec::new();
    let mut pending: Vec<(TaskId, Micros, HostId, u64)> = Vec::new();
    let logs = lost_logs.iter().map(|&l| (l, true)).chain(demoted_logs.iter().map(|&l| (l, !fully_sync)));
    for (log, grants_count) in logs.chain([(serving_log, true)]) {
        let mut own = TaskJobs::new();
        for r in log {
            match r.op {
                Op::Create { task, job, .. } => {
                    job_of.insert(task, job);
                    if grants_count {
                        own.insert(task, job);
                    }
                }
                Op::Lease { task, lease } if grants_count => match own.get(&task) {
                    Some(&job) => leases.push((job, r.at_us, lease.holder, lease.token)),
                    None => pending.push((task, r.at_us, lease.holder, lease.token)),
                },
                _ => {}
            }
        }
    }
    for (task, at_us, holder, token) in pending {
        if let Some(&job) = job_of.get(&task) {
            leases.push((job, at_us, holder, token));
        }
    }
    sort_by_job(&mut leases, |x| x.0);
    leases.dedup();
    (job_of, leases)
}

/// Every lease grant as `(job, at, holder, token)`, sorted (a job's grants
/// together, in commit order).
type Grants = Vec<(JobId, Micros, HostId, u64)>;

fn fencing(g: &Ground<'_>, leases: Grants, out: &mut Vec<Violation>) {
    let stale: u64 = g.stack.hosts.orch.iter().map(|&h| g.stack.orch(h).stale_writes_accepted()).sum();
    if stale > 0 {
        out.push(v(
            Invariant::Fencing,
            None,
            None,
            format!("{stale} write(s) accepted from a worker whose lease had moved on"),
        ));
    }
    let by_job = JobIndex::new(&leases, |x| x.0);
    let mut seen = std::collections::BTreeSet::new();
    for e in &g.ledger {
        let job = e.origin.job;
        let l = &leases[by_job.range(&leases, job, |x| x.0)];
        let holder = l.iter().rev().find(|(_, at, _, _)| *at <= e.at_us).map(|(_, _, h, _)| *h);
        if let Some(h) = holder
            && h != e.origin.host
            && seen.insert((e.origin.job, e.origin.step))
        {
            let names = g.stack.rt.hosts();
            out.push(v(
                Invariant::Fencing,
                Some(e.origin.job.0),
                Some(e.origin.step),
                format!(
                    "side effect at {:.3} s from {} while {} held the lease",
                    us_to_s(e.at_us),
                    names[e.origin.host.0 as usize].name,
                    names[h.0 as usize].name
                ),
            ));
        }
    }
}

fn log_truth(g: &Ground<'_>, scan: LogScan, out: &mut Vec<Violation>) {
    let writes_intent = g.policy.checkpointing == Checkpointing::BeforeCall;
    let LogScan { intents, any_result, unbacked, .. } = scan;
    let intents_by_job = JobIndex::new(&intents, |x| x.0.0);
    let results_by_job = JobIndex::new(&any_result, |x| x.0);
    let mut seen = std::collections::BTreeSet::new();
    for e in &g.ledger {
        let k = (e.origin.job, e.origin.step);
        let recorded = if writes_intent {
            e.key.is_some_and(|key| {
                intents[intents_by_job.range(&intents, k.0, |x| x.0.0)].binary_search(&(k, key)).is_ok()
            })
        } else {
            any_result[results_by_job.range(&any_result, k.0, |x| x.0)].binary_search(&k).is_ok()
        };
        if !recorded && seen.insert(k) {
            let what = if writes_intent {
                format!(
                    "side effect at {:.3} s with key {} has no checkpoint (intent) with that key in the event log",
                    us_to_s(e.at_us),
                    e.key.map_or_else(|| "none".to_string(), |k| k.to_string())
                )
            } else {
                format!("side effect at {:.3} s has no result in the event log", us_to_s(e.at_us))
            };
            out.push(v(Invariant::LogTruth, Some(k.0.0), Some(k.1), what));
        }
    }
    // Results of side-effect steps are backed by a ledger entry (found by
    // the scan, after the checks above for the same steps).
    out.extend(unbacked);
}

fn liveness(g: &Ground<'_>, budget: &Budget, out: &mut Vec<Violation>) {
    let deadline = budget.settle_deadline_us(g.sc, &g.onsets);
    if g.horizon_us() < deadline {
        return;
    }
    let store = g.stack.orch(g.stack.serving_orch()).store();
    for j in 0..g.stack.workload_jobs {
        let job = JobId(j);
        let task = store.task_for_job(job).and_then(|t| store.task(t));
        let done = task.is_some_and(|t| t.status == TaskStatus::Done) || g.stack.truth.completed[j as usize];
        if done {
            continue;
        }
        let (step, state) = match task {
            Some(t) => (
                Some(t.cursor),
                match t.status {
                    TaskStatus::Failed => "failed",
                    TaskStatus::Leased => "still leased",
                    _ => "queued",
                },
            ),
            None => (None, "unknown to the serving store"),
        };
        out.push(v(
            Invariant::Liveness,
            Some(j),
            step,
            format!(
                "not done at the horizon ({:.0} s; everything should be done by {:.0} s): {state}",
                us_to_s(g.horizon_us()),
                us_to_s(deadline)
            ),
        ));
    }
}

/// A false failover's structured-state and queue RPO bound
/// ([`FaultObs::failed_away`](crate::drill::measure::FaultObs::failed_away)):
/// what replication allows at the promotion ([`Budget::split_rpo_base_us`]),
/// plus the split window, from the promotion until
/// the old primary stood down (its `Demoted` note, its region lost) or the
/// horizon. A write lost from before the replication window, or one the
/// old primary acknowledged after it stood down, breaks it. None when the
/// fault caused no false failover.
fn split_rpo_bound_us(g: &Ground<'_>, budget: &Budget, i: usize) -> Option<Micros> {
    let away = g.run.faults[i].failed_away?;
    let (_, promoted_us) = g.stack.truth.promoted_at?;
    let structured = budget.split_rpo_base_us(g.sc, &g.onsets, i, promoted_us);
    let demoted =
        g.stack.truth.trace.iter().find(|e| e.host == away && e.at_us >= promoted_us && e.note == Note::Demoted);
    let region = g.stack.rt.host(away).region;
    let region_lost = g.sc.faults.iter().zip(&g.onsets).filter_map(|(f, &t)| match f {
        FaultSpec::RegionLoss { region: r, .. } if (*r == RegionName::A) == (region == REGION_A) => {
            t.filter(|&t| t >= promoted_us)
        }
        _ => None,
    });
    let stood_down_us =
        demoted.map(|e| e.at_us).into_iter().chain(region_lost).min().unwrap_or(g.horizon_us()).max(promoted_us);
    Some(structured? + (stood_down_us - promoted_us))
}

/// The first acknowledged record a lost primary (or a false failover's old
/// primary) had that the serving store lacks: (job, step) for naming.
fn lost_record_at(g: &Ground<'_>, i: usize) -> (Option<u32>, Option<u16>) {
    let f = &g.run.faults[i];
    let split = || {
        let (log, kept_lsn) = crate::drill::measure::split_log(g.stack, &g.run.faults, f)?;
        crate::drill::measure::split_lost(log, kept_lsn).next()
    };
    let lost = |lost: &crate::drill::measure::LostLog| {
        let kept = lost.kept_upto(g.stack);
        let t0 = g.onsets[i].unwrap_or(0);
        lost.log.iter().find(|r| r.lsn > kept && r.lsn <= lost.acked_upto && r.at_us <= t0).copied()
    };
    let Some(r) = f.lost_log.as_ref().and_then(lost).or_else(split) else {
        return (None, None);
    };
    let job = g.job_of.get(&r.op.task()).map(|j| j.0);
    let step = match r.op {
        Op::Intent { ordinal, .. } | Op::Result { ordinal, .. } | Op::Fail { ordinal, .. } => Some(ordinal),
        _ => None,
    };
    (job, step)
}

/// The oldest acknowledged vector point the serving store lacks.
fn lost_point_at(g: &Ground<'_>, t0: Micros) -> (Option<u32>, Option<u16>) {
    let vec = &g.stack.vector(g.stack.serving_vector()).store;
    let mut best: Option<(Micros, crate::components::vector::PointId)> = None;
    for (p, at) in &g.stack.truth.vec_acks {
        if *at <= t0 && vec.query(*p).is_none() && best.is_none_or(|(b, bp)| (*at, *p) < (b, bp)) {
            best = Some((*at, *p));
        }
    }
    best.map_or((None, None), |(_, p)| (Some(p.job.0), Some(p.step)))
}

/// When the other region than `region` comes back (or the failover
/// controller can reach it again), if a temporary loss of it, or a cut or
/// lossy link between the controller (in the external region) and its
/// orchestrator or vector store (other than fault `i`), is under way at
/// some point of the failover window `[t_us, t_us + window_us)`. An outage
/// that begins before that one is over holds it down longer: the chain of
/// such outages counts to its end (seed 880102 case 127600: B lost over
/// [184.1 s, 784.1 s) and again from 637 s for 973 s, A lost for good at
/// 351.1 s: B came back at 1,610 s, not 784.1 s).
fn other_region_back_us(
    sc: &Scenario,
    i: usize,
    region: RegionName,
    t_us: Micros,
    window_us: Micros,
) -> Option<Micros> {
    let other = if region == RegionName::A { "b" } else { "a" };
    let standby_end = |end: &str| {
        end.strip_prefix("region:") == Some(other)
            || end.strip_suffix(other).is_some_and(|h| h == "orchestrator-" || h == "vector-")
    };
    let controller_end = |end: &str| end == "failover-controller" || end == "region:external";
    let cuts = |a: &str, b: &str| (standby_end(a) && controller_end(b)) || (controller_end(a) && standby_end(b));
    let outages: Vec<(Micros, Micros)> = sc
        .faults
        .iter()
        .enumerate()
        .filter_map(|(j, f)| match f {
            FaultSpec::RegionLoss { at, region: r, duration: Some(d) } if j != i && *r != region => {
                Some((at.us(), at.us() + d.us()))
            }
            FaultSpec::Partition { at, duration, a, b, .. } | FaultSpec::LinkDegradation { at, duration, a, b, .. }
                if j != i && cuts(a, b) =>
            {
                Some((at.us(), at.us() + duration.us()))
            }
            _ => None,
        })
        .collect();
    let mut back: Option<Micros> = None;
    loop {
        let reach = back.map_or(t_us + window_us, |b| b.max(t_us + window_us));
        let next = outages.iter().filter(|&&(s, e)| s < reach && t_us < e).map(|&(_, e)| e).max();
        if next == back {
            return back;
        }
        back = next;
    }
}

/// Whether an earlier queue or region loss than fault `i` (at `t_us`) is
/// permanent or not over yet by then: one of the queue's two nodes is gone.
/// At one instant the simulation runs fault events in the order they were
/// scheduled: each fault's onset then its end, fault by fault. So a loss
/// ending at `t_us` exactly is over by then only when it comes before fault
/// `i` in the schedule; otherwise its node is still down when fault `i`
/// strikes (was seed 30 case 6043).
fn queue_node_down_at(sc: &Scenario, i: usize, t_us: Micros) -> bool {
    queue_losses_down_at(sc, i, t_us).next().is_some()
}

/// The onset and duration of each queue or region loss before fault `i`
/// (at `t_us`) whose node is still down then (see [`queue_node_down_at`]).
fn queue_losses_down_at(sc: &Scenario, i: usize, t_us: Micros) -> impl Iterator<Item = (Micros, Option<Micros>)> {
    sc.faults.iter().enumerate().filter_map(move |(j, f)| match f {
        FaultSpec::QueueLoss { at, duration } | FaultSpec::RegionLoss { at, duration, .. }
            if j != i && (at.us(), j) < (t_us, i) && duration.is_none_or(|d| (at.us() + d.us(), j) > (t_us, i)) =>
        {
            Some((at.us(), duration.map(|d| d.us())))
        }
        _ => None,
    })
}

/// When the queue node an earlier queue or region loss than fault `i`
/// (at `t_us`) took down is back, if one is down then: a temporary loss at
/// its end; a permanent one when the platform has replaced the node
/// ([`crate::drill::QUEUE_REPLACE_US`] after the loss). The latest of them.
fn queue_node_back_us(sc: &Scenario, i: usize, t_us: Micros) -> Option<Micros> {
    queue_losses_down_at(sc, i, t_us)
        .map(|(at_us, duration_us)| at_us + duration_us.unwrap_or(crate::drill::QUEUE_REPLACE_US))
        .filter(|&back_us| back_us > t_us)
        .max()
}

/// How long before `t0` the other region (the replica's) had been
/// unreachable, when a loss of it overlaps the window that replication
/// would otherwise have covered: writes made while the replica was down
/// cannot have reached it. A partition or a lossy link between the two
/// regions' copies of `service` (`orchestrator` or `vector`: the host, or
/// its whole region, on each side) counts as the replica being away too,
/// and so, for structured state, does a replication-lag spike (until its
/// lag after it ends).
/// Overlapping outages (or ones less than a window apart) chain: the
/// replica was unreachable from the earliest start of the chain, so
/// `t0 - start` is the extension.
/// Example: region B lost over [0 s, 600 s) and [140 s, 740 s), A lost
/// for good at 741 s with a 1.1 s window: B was away from 0 s and had 1 s
/// to catch up, so up to 741 s of A's writes may be missing from it. Or:
/// orchestrator-a cut from region B over [0 s, 327 s), A lost at 327.7 s:
/// up to 327.7 s. Or: a 2 s lag spike over [0 s, 163 s), B lost from
/// 71.8 s, A lost at 163 s: writes from 69.8 s never left A, and the
/// chain (spike, then loss) bounds the loss by 163 s + a window.
/// The lost region's own earlier temporary outage links a chain too (a
/// region that is down ships nothing): A lost over [0.1 s, 71.1 s), B lost
/// from 5.5 s for 10 min, A lost for good at 76.6 s with a 0.54 s window:
/// a write A made at 0.04 s had no tick to ship before A went down, and
/// when A came back B was away, so it never left A (76.56 s old at the
/// loss); the chain starts at 0.1 s, and 0.54 s + 76.5 s allows it.
fn replica_down_us(sc: &Scenario, onsets: &[Option<Micros>], i: usize, window_us: Micros, service: &str) -> Micros {
    let (Some(t0), FaultSpec::RegionLoss { region, .. }) = (onsets[i], &sc.faults[i]) else { return 0 };
    replica_down_since_us(sc, onsets, t0, region, window_us, service)
}

/// [`replica_down_us`] seen from `t0` (not necessarily a fault's onset)
/// for a loss of `region`: how long before `t0` the chain of the replica's
/// absences began (0: none reaches within a window of `t0`).
fn replica_down_since_us(
    sc: &Scenario,
    onsets: &[Option<Micros>],
    t0: Micros,
    region: &RegionName,
    window_us: Micros,
    service: &str,
) -> Micros {
    let (host_a, host_b) = (format!("{service}-a"), format!("{service}-b"));
    let covers = |end: &str, host: &str, region: &str| end == host || end.strip_prefix("region:") == Some(region);
    let between = |a: &str, b: &str| {
        (covers(a, &host_a, "a") && covers(b, &host_b, "b")) || (covers(a, &host_b, "b") && covers(b, &host_a, "a"))
    };
    // The other region's losses and the cuts between the regions begun by
    // `t0`, as [start, end) (a permanent loss never ends).
    let spans: Vec<(Micros, Micros)> = sc
        .faults
        .iter()
        .zip(onsets)
        .filter_map(|(f, &s)| match (f, s) {
            (FaultSpec::RegionLoss { region: r, duration, .. }, Some(s)) if r != region && s <= t0 => {
                Some((s, duration.map_or(Micros::MAX, |d| s.saturating_add(d.us()))))
            }
            // The lost region's own earlier outage: it shipped nothing
            // while down. Only a link of the chain (it ended more than a
            // window before `t0`, else `already_down_by` names it).
            (FaultSpec::RegionLoss { region: r, duration: Some(d), .. }, Some(s))
                if r == region && s < t0 && s.saturating_add(d.us()).saturating_add(window_us) <= t0 =>
            {
                Some((s, s.saturating_add(d.us())))
            }
            (
                FaultSpec::Partition { at, duration, a, b, .. } | FaultSpec::LinkDegradation { at, duration, a, b, .. },
                _,
            ) if between(a, b) && at.us() <= t0 => Some((at.us(), at.us().saturating_add(duration.us()))),
            // A replication-lag spike holds writes back by its lag: those
            // made during it reach the replica up to `lag` after it ends.
            (FaultSpec::ReplicationLagSpike { at, duration, lag }, _) if service == "orchestrator" && at.us() <= t0 => {
                Some((at.us(), at.us().saturating_add(duration.us()).saturating_add(lag.us())))
            }
            _ => None,
        })
        .collect();
    // Walk back from `t0`: a loss that lasted until within a window of the
    // chain's start joins it and moves the start back.
    let mut start: Option<Micros> = None;
    loop {
        let reach = start.unwrap_or(t0);
        let earlier = spans
            .iter()
            .filter(|&&(s, e)| e.saturating_add(window_us) >= reach && start.is_none_or(|from| s < from))
            .map(|&(s, _)| s)
            .min();
        match earlier {
            Some(s) => start = Some(s),
            None => break,
        }
    }
    start.map_or(0, |s| t0 - s)
}

/// For a loss of a region that an earlier, still ongoing loss already took
/// down (or that came back from one less than a replication window
/// `window_us` before, too soon to replicate anything): the latest such
/// loss, in (onset, index) order. It is the one that counts: every earlier
/// one also took the region down at its onset, so its exposure already
/// carries theirs ([`exposure_us`]).
fn already_down_by(sc: &Scenario, onsets: &[Option<Micros>], i: usize, window_us: Micros) -> Option<usize> {
    let (Some(t0), FaultSpec::RegionLoss { region, .. }) = (onsets[i], &sc.faults[i]) else { return None };
    let mut latest: Option<(Micros, usize)> = None;
    for (j, f) in sc.faults.iter().enumerate() {
        if let (FaultSpec::RegionLoss { region: r, duration, .. }, Some(s)) = (f, onsets[j])
            && j != i
            && r == region
            && (s, j) < (t0, i)
            && duration.is_none_or(|d| s + d.us() + window_us > t0)
        {
            latest = latest.max(Some((s, j)));
        }
    }
    latest.map(|(_, j)| j)
}

/// How far back before region loss `i` the lost region's writes may not
/// have reached the replica, beyond one replication window: the replica's
/// chained absence ([`replica_down_us`]) or, when an earlier loss had
/// already taken the region down ([`already_down_by`]), the time since
/// that loss plus its own exposure. RPO is measured from each fault's own
/// onset, so a second loss of a lost region re-measures the first loss's
/// data, aged by the time between them; the down region wrote nothing
/// since, so what its replica lacked then (the replica's absence chained
/// at the first loss, which may have ended since) is what it lacks now.
/// The lost data was written before the earlier loss or after the region
/// came back, so the larger of the two bounds both.
/// Example (seed 808 case 15461): region B lost over [338.7 s, 530.7 s),
/// A lost at 531.1 s (B back 0.4 s before, no 1.1 s tick between) and
/// again, for good, at 535.9 s: A's writes since 338.7 s never left A. At
/// the first loss B's absence chains (192.4 s); at the second it ended
/// more than a window before, so only the first loss carries it: 4.8 s +
/// 192.4 s.
fn exposure_us(sc: &Scenario, onsets: &[Option<Micros>], i: usize, window_us: Micros, service: &str) -> Micros {
    let (mut best, mut since_us, mut at) = (0, 0, i);
    loop {
        best = best.max(since_us + replica_down_us(sc, onsets, at, window_us, service));
        let Some(j) = already_down_by(sc, onsets, at, window_us) else { return best };
        // Both onsets are known: `already_down_by` only names a struck loss.
        since_us += onsets[at].unwrap_or(0) - onsets[j].unwrap_or(0);
        at = j;
    }
}

fn rpo_bound(g: &Ground<'_>, budget: &Budget, measured: &[FaultResult], out: &mut Vec<Violation>) {
    for (i, f) in measured.iter().enumerate() {
        if let FaultSpec::VectorCorruption { .. } = g.sc.faults[i] {
            corruption_rpo_bound(g, budget, f, i, out);
            continue;
        }
        let (structured, vector) = if g.run.faults[i].lost_log.is_some() {
            budget.rpo_bounds_us(g.sc, &g.onsets, i)
        } else if let Some(bound) = split_rpo_bound_us(g, budget, i) {
            (Some(bound), None)
        } else {
            continue;
        };
        // A replicated queue that lost messages lost both its nodes (the
        // harness records a loss only when no copy lived on): replication
        // bounds nothing there, and no bound is derived for it (seed 990202
        // case 39026: region B lost for 10 min and region A for good at
        // once; the platform's empty replacement of queue A serves before
        // queue B returns). An unreplicated queue's loss stays bounded.
        let both_queue_nodes_lost =
            g.sc.stack.queue.is_some_and(|q| q.replicated) && !g.run.faults[i].lost_messages.is_empty();
        if let Some(bound) = structured {
            let b = us_to_s(bound);
            for (surface, rpo) in [("structured state", f.rpo.structured_state_s), ("queue", f.rpo.queue_s)] {
                if surface == "queue" && both_queue_nodes_lost {
                    continue;
                }
                if rpo > b + 1e-9 {
                    let (job, step) = lost_record_at(g, i);
                    out.push(v(
                        Invariant::RpoBound,
                        job,
                        step,
                        format!("fault {i} ({}): {surface} RPO {rpo:.3} s > {b:.3} s allowed by replication", f.kind),
                    ));
                }
            }
        }
        if let Some(bound) = vector {
            let b = us_to_s(bound);
            if f.rpo.vector_memory_s > b + 1e-9 {
                let (job, step) = lost_point_at(g, g.onsets[i].unwrap_or(0));
                out.push(v(
                    Invariant::RpoBound,
                    job,
                    step,
                    format!(
                        "fault {i} ({}): vector memory RPO {:.3} s > {b:.3} s allowed by snapshots",
                        f.kind, f.rpo.vector_memory_s
                    ),
                ));
            }
        }
    }
}

/// A corruption's own vector RPO against what its stack allows
/// ([`Budget::corruption_rpo_us`]), once the integrity check can have found
/// it and the restore finished by the horizon (before that it is still
/// unrepaired, and nothing bounds it yet).
fn corruption_rpo_bound(g: &Ground<'_>, budget: &Budget, f: &FaultResult, i: usize, out: &mut Vec<Violation>) {
    let Some((bound_us, restored_by_us)) = budget.corruption_rpo_us(g.sc, &g.onsets, i) else { return };
    if restored_by_us > g.sc.horizon.us() {
        return;
    }
    let b = us_to_s(bound_us);
    if f.rpo.vector_memory_s > b + 1e-9 {
        let (job, step) = lost_point_at(g, g.onsets[i].unwrap_or(0));
        out.push(v(
            Invariant::RpoBound,
            job,
            step,
            format!(
                "fault {i} ({}): vector memory RPO {:.3} s > {b:.3} s allowed by the integrity check and snapshots",
                f.kind, f.rpo.vector_memory_s
            ),
        ));
    }
}

/// For naming an RTO violation: the in-flight job that progressed last (or
/// never), with its cursor step.
fn slowest_in_flight(g: &Ground<'_>, i: usize) -> (Option<u32>, Option<u16>) {
    let Some(t0) = g.onsets[i] else { return (None, None) };
    let store = g.stack.orch(g.stack.serving_orch()).store();
    let mut worst: Option<(Micros, JobId)> = None;
    for &job in &g.run.faults[i].in_flight {
        let next = g
            .serving_log
            .iter()
            .filter(|r| r.at_us > t0 && matches!(r.op, Op::Result { .. } | Op::Complete { .. }))
            .find(|r| g.job_of.get(&r.op.task()) == Some(&job))
            .map_or(Micros::MAX, |r| r.at_us);
        if worst.is_none_or(|(w, _)| next > w) {
            worst = Some((next, job));
        }
    }
    match worst {
        Some((_, job)) => {
            let step = store.task_for_job(job).and_then(|t| store.task(t)).map(|t| t.cursor);
            (Some(job.0), step)
        }
        None => (None, None),
    }
}

/// Each fault's RTO over every log (the serving store's, those of
/// primaries lost with their region, and what a primary failed away from
/// committed before the standby's promotion: `progress`, the one the
/// measurement read): recovery that happened and was then lost with a
/// region (RPO accounts for that loss) still counts as recovery. By the
/// one RTO rule ([`crate::drill::measure::Progress::rto_us`]), in
/// microseconds (the measured `rto_s` is rounded to seconds).
fn union_rto_us(g: &Ground<'_>, progress: &Progress) -> Vec<Option<Micros>> {
    if g.onsets.iter().all(Option::is_none) {
        return vec![None; g.onsets.len()]; // no fault began: nothing to recover from
    }
    (0..g.onsets.len())
        .map(|i| {
            let t0 = g.onsets[i]?;
            progress.rto_us(t0, &g.run.faults[i].in_flight, crate::drill::measure::new_work_offered(g.stack, t0))
        })
        .collect()
}

fn rto_bound(
    g: &Ground<'_>,
    budget: &Budget,
    measured: &[FaultResult],
    union_rto: &[Option<Micros>],
    out: &mut Vec<Violation>,
) {
    for (i, f) in measured.iter().enumerate() {
        let Some(t0) = g.onsets[i] else { continue };
        let Some(bound) = budget.rto_bound_us(g.sc, &g.onsets, i) else { continue };
        if union_rto[i].is_some_and(|r| r <= bound) {
            continue; // recovered in time; the records were lost later
        }
        let b = us_to_s(bound);
        match f.rto_s {
            Some(rto) if rto > b + 1e-9 => {
                let (job, step) = slowest_in_flight(g, i);
                out.push(v(
                    Invariant::RtoBound,
                    job,
                    step,
                    format!("fault {i} ({}) at {:.1} s: RTO {rto:.1} s > budget {b:.1} s", f.kind, us_to_s(t0)),
                ));
            }
            None if g.horizon_us() >= t0 + bound => {
                let (job, step) = slowest_in_flight(g, i);
                out.push(v(
                    Invariant::RtoBound,
                    job,
                    step,
                    format!(
                        "fault {i} ({}) at {:.1} s: not recovered by the horizon; budget {b:.1} s",
                        f.kind,
                        us_to_s(t0)
                    ),
                ));
            }
            _ => {}
        }
    }
}

fn tier(g: &Ground<'_>, measured: &[FaultResult], union_rto: &[Option<Micros>], out: &mut Vec<Violation>) {
    let tier = g.sc.tier.targets();
    let tier_name = g.sc.tier.name().to_owned();
    let rto_us = (tier.rto_s * 1e6) as u64;
    for (i, f) in measured.iter().enumerate() {
        let Some(t0) = g.onsets[i] else { continue };
        let recovered_in_time = union_rto[i].is_some_and(|r| r < rto_us);
        match f.rto_s {
            _ if recovered_in_time => {}
            Some(rto) if rto >= tier.rto_s => out.push(v(
                Invariant::Tier,
                slowest_in_flight(g, i).0,
                None,
                format!("fault {i} ({}): RTO {rto:.1} s ≥ {} target {:.0} s", f.kind, tier_name, tier.rto_s),
            )),
            None if g.horizon_us() >= t0 + rto_us => out.push(v(
                Invariant::Tier,
                slowest_in_flight(g, i).0,
                None,
                format!("fault {i} ({}): not recovered; {} target {:.0} s", f.kind, tier_name, tier.rto_s),
            )),
            _ => {}
        }
        let surfaces = [
            ("structured state", f.rpo.structured_state_s),
            ("queue", f.rpo.queue_s),
            ("vector memory", f.rpo.vector_memory_s),
        ];
        for (surface, rpo) in surfaces {
            if rpo >= tier.rpo_s {
                let (job, step) = if surface == "vector memory" { lost_point_at(g, t0) } else { lost_record_at(g, i) };
                out.push(v(
                    Invariant::Tier,
                    job,
                    step,
                    format!(
                        "fault {i} ({}): {surface} RPO {rpo:.1} s ≥ {} target {:.0} s",
                        f.kind, tier_name, tier.rpo_s
                    ),
                ));
            }
        }
    }
}

fn retry_budget(g: &Ground<'_>, out: &mut Vec<Violation>) {
    let sc = g.sc;
    let names: Vec<String> = sc.stack.providers.iter().map(|p| p.name.clone()).collect();
    let processes = worker_processes(g);
    let br = sc.stack.breaker;
    for (pi, p) in sc.stack.providers.iter().enumerate() {
        let outage_us: Micros = sc
            .faults
            .iter()
            .filter_map(|f| match f {
                FaultSpec::ProviderOutage { provider, duration, .. } if *provider == p.name => Some(duration.us()),
                _ => None,
            })
            .sum();
        if outage_us == 0 {
            continue;
        }
        let d_ms = outage_us / US_PER_MS;
        let t = u64::from(br.failure_threshold);
        let calls = t + (t - 1) * d_ms.div_ceil(br.window_ms.max(1)) + d_ms.div_ceil(br.open_ms.max(1)) + 1;
        let allowed = processes * calls * (u64::from(p.max_retries) + 1);
        let errors: u64 = g
            .stack
            .provider_hosts_named(&p.name, &names)
            .into_iter()
            .map(|h| match &g.stack.nodes[h.0 as usize] {
                Node::Provider(m) => m.stats().errors,
                _ => 0,
            })
            .sum();
        if errors > allowed {
            out.push(v(
                Invariant::RetryBudget,
                None,
                None,
                format!(
                    "provider {} ({pi}) failed {errors} requests during {:.0} s of outage; the breakers allow {allowed} ({processes} worker processes × {calls} SDK calls × {} attempts)",
                    p.name,
                    us_to_s(outage_us),
                    p.max_retries + 1
                ),
            ));
        }
    }
}

/// Worker processes that ever ran: every worker started with the stack,
/// plus one per (re)start (scale-up included).
fn worker_processes(g: &Ground<'_>) -> u64 {
    let hosts = &g.stack.hosts;
    let workers: Vec<HostId> = hosts.workers_a.iter().chain(&hosts.workers_b).copied().collect();
    let initial = (workers.len() - hosts.scale_up_b.len()) as u64;
    let restarts = g
        .stack
        .truth
        .trace
        .iter()
        .filter(|e| matches!(e.note, crate::components::env::Note::Restarted { host } if workers.contains(&host)))
        .count() as u64;
    initial + restarts
}

/// Time budgets derived from a scenario's stack (not constants). All in
/// microseconds. See the module docs for how the invariants use them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// Health checks: interval × failure threshold + timeout.
    pub detection_us: Micros,
    /// Promotion + DNS TTL.
    pub routing_us: Micros,
    /// Scale-up (0 for active-active).
    pub scale_up_us: Micros,
    /// Vector hydration (0 with a streaming replica).
    pub hydration_us: Micros,
    /// Lease expiry + one recovery scan + one request timeout.
    pub lease_us: Micros,
    /// One step of work (the slowest call, plus a second of round trips).
    pub step_us: Micros,
    /// Waiting for a free worker: ⌈tasks / workers⌉ whole tasks.
    pub queue_us: Micros,
    /// ⌈tasks / workers⌉: rounds of whole tasks a worker may run.
    pub rounds: u64,
    /// The most model steps a task has.
    pub model_steps: u64,
    /// Until the client's next probe after recovery is submitted.
    pub probe_us: Micros,
    /// Structured-state and queue RPO bound (None: unbounded, no replica).
    pub structured_rpo_us: Option<Micros>,
    /// Vector-memory RPO bound (None: snapshots never leave the region).
    pub vector_rpo_us: Option<Micros>,
}

/// Under semi-synchronous replication (`degrade_after_ms`), how far back a
/// cut between the orchestrators under way at loss `i` lets acknowledged
/// writes go unreplicated: the primary stops waiting for the replica after
/// `degrade_after_ms` and acknowledges alone from the cut's start (plus a
/// re-ship to catch up after it heals). Fully synchronous replication never
/// acknowledges alone: 0.
fn semi_sync_cut_us(sc: &Scenario, onsets: &[Option<Micros>], i: usize) -> Micros {
    let (Replication::Sync { degrade_after_ms: Some(_) }, Some(t0)) = (sc.stack.replication, onsets[i]) else {
        return 0;
    };
    let covers = |end: &str, host: &str, region: &str| end == host || end.strip_prefix("region:") == Some(region);
    let between = |a: &str, b: &str| {
        (covers(a, "orchestrator-a", "a") && covers(b, "orchestrator-b", "b"))
            || (covers(a, "orchestrator-b", "b") && covers(b, "orchestrator-a", "a"))
    };
    let catch_up = crate::components::orchestrator::SYNC_RESHIP_US + 2 * hop_us(&sc.stack);
    sc.faults
        .iter()
        .filter_map(|f| match f {
            FaultSpec::Partition { at, duration, a, b, .. } | FaultSpec::LinkDegradation { at, duration, a, b, .. }
                if between(a, b) && at.us() <= t0 && t0 < at.us() + duration.us() + catch_up =>
            {
                Some(t0 - at.us() + hop_us(&sc.stack))
            }
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// The own RPO bound and restore deadline of a vector corruption at `t0`
/// ([`Budget::corruption_rpo_us`] without the earlier corruptions whose
/// restore it shares), given the failovers (onset, RTO bound) by onset.
fn own_corruption_rpo_us(sc: &Scenario, failovers: &[(Micros, Micros)], t0: Micros) -> (Micros, Micros) {
    let vs = &sc.stack.vector;
    let check_us = vs.integrity_check_interval.us();
    let base_us = check_us + vs.snapshot_interval.us() + vs.ship_delay.us() + hop_us(&sc.stack);
    let mut bound_us = base_us;
    let mut restored_by_us = t0 + check_us + RESTORE_SLACK_US;
    for &(s, recovery_us) in failovers {
        if s <= t0 && t0 <= s.saturating_add(recovery_us) {
            bound_us = bound_us.max(t0 - s + base_us);
        }
        if s <= restored_by_us {
            restored_by_us = restored_by_us.max(s.saturating_add(recovery_us) + check_us + RESTORE_SLACK_US);
        }
    }
    (bound_us, restored_by_us)
}

/// The latest vector corruption before corruption `i`, in (onset, index)
/// order, whose restore is not due yet at `i`'s onset.
fn restore_pending_at(
    sc: &Scenario,
    onsets: &[Option<Micros>],
    failovers: &[(Micros, Micros)],
    i: usize,
) -> Option<usize> {
    let t0 = onsets[i]?;
    (0..sc.faults.len())
        .filter(|&j| matches!(sc.faults[j], FaultSpec::VectorCorruption { .. }))
        .filter_map(|j| Some((onsets[j]?, j)))
        .filter(|&(c, j)| (c, j) < (t0, i) && t0 <= own_corruption_rpo_us(sc, failovers, c).1)
        .max()
        .map(|(_, j)| j)
}

/// Time after an integrity check for the point-in-time restore to finish
/// (restores of generated sizes take seconds to a few minutes).
const RESTORE_SLACK_US: Micros = 5 * 60 * US_PER_S;

/// Whether a cut or link fault between endpoints `a` and `b` (host names
/// or `region:…`) lies between the two vector stores.
fn cuts_vector_stores(a: &str, b: &str) -> bool {
    let covers = |end: &str, host: &str, region: &str| end == host || end.strip_prefix("region:") == Some(region);
    (covers(a, "vector-a", "a") && covers(b, "vector-b", "b"))
        || (covers(a, "vector-b", "b") && covers(b, "vector-a", "a"))
}

/// Worst one-way cross-region trip of the scenario's network (latency +
/// jitter: 40 ms by default).
fn hop_us(s: &StackSpec) -> Micros {
    s.network.cross_region_worst_us()
}

/// One-way trips a step may take besides its slowest call: the lease and
/// heartbeat, a checkpoint before and after the call (each a commit that
/// may wait for a synchronous standby: two more), the call itself and the
/// report. Their sum is allowed, or a second when that is more.
const HOPS_PER_STEP: u64 = 12;
/// The client submits a new probe at most this often while probing.
const PROBE_CADENCE_US: Micros = 30 * US_PER_S;

impl Budget {
    /// The budgets of a scenario's stack and workload.
    pub fn new(sc: &Scenario) -> Budget {
        let s = &sc.stack;
        let policy = s.effective_policy();
        let f = s.failover;
        let req_timeout = s.request_timeout.us();
        let detection_us = f.health_interval.us() * u64::from(f.failure_threshold) + f.health_timeout.us();
        let routing_us = f.promotion.us() + f.dns_ttl.us();
        let scale_up_us = if s.pattern == Pattern::ActiveActive { 0 } else { f.scale_up.us() };
        let templates = crate::components::workflow::builtin_shared();
        let used: Vec<&Template> =
            sc.workload.templates.iter().filter_map(|n| templates.iter().find(|t| t.name == n)).collect();
        let mem_writes = used
            .iter()
            .map(|t| t.steps.iter().filter(|s| s.kind == StepKind::MemWrite).count() as u64)
            .max()
            .unwrap_or(0);
        let points = u64::from(sc.workload.tasks) * mem_writes;
        let hydration_us = if s.vector.streaming_replica {
            0
        } else {
            s.vector.restore_base.us() + s.vector.restore_per_point_us * points
        };
        let lease_us = policy.lease_ms * US_PER_MS + s.recovery_scan.us() + req_timeout;
        // The slowest call a step makes: a model call answered by the
        // slowest provider (as far as the worker waits for it), or a tool.
        let model_us = s
            .providers
            .iter()
            .map(|p| {
                let nominal = p.base_latency_ms * US_PER_MS + p.latency_per_output_token_us * 250;
                nominal * 12 / 10 + p.cold_extra_latency_ms * US_PER_MS
            })
            .max()
            .unwrap_or(0)
            .min(req_timeout);
        let a = s.apis;
        let tool_us = a.email_latency.us().max(a.payment_latency.us()).max(a.search_latency.us());
        let step_us = model_us.max(tool_us) + US_PER_S.max(HOPS_PER_STEP.saturating_mul(hop_us(s)));
        let steps = used.iter().map(|t| t.steps.len() as u64).max().unwrap_or(0);
        let task_us = steps * step_us;
        let rounds = u64::from(sc.workload.tasks).div_ceil(u64::from(s.workers.max(1)));
        let queue_us = rounds * task_us;
        let model_steps = used
            .iter()
            .map(|t| t.steps.iter().filter(|s| matches!(s.kind, StepKind::Model { .. })).count() as u64)
            .max()
            .unwrap_or(0);
        // Without probes the new work is a workload job: one more task.
        let probe_us = if sc.workload.probes {
            PROBE_CADENCE_US + sc.workload.probe_interval.us() + sc.workload.submit_retry.us()
        } else {
            task_us + sc.workload.submit_retry.us()
        };
        let two = s.pattern != Pattern::SingleRegion;
        let structured_rpo_us = match s.replication {
            Replication::Sync { .. } if two => Some(0),
            Replication::Async { lag_ms, interval_ms } if two => Some((lag_ms + interval_ms) * US_PER_MS + hop_us(s)),
            _ => None,
        };
        let vector_rpo_us = if !two || s.vector.snapshot_location == SnapshotLocation::SameRegion {
            None
        } else if s.vector.streaming_replica {
            Some(hop_us(s))
        } else {
            Some(s.vector.snapshot_interval.us() + s.vector.ship_delay.us() + hop_us(s))
        };
        Budget {
            detection_us,
            routing_us,
            scale_up_us,
            hydration_us,
            lease_us,
            step_us,
            queue_us,
            rounds,
            model_steps,
            probe_us,
            structured_rpo_us,
            vector_rpo_us,
        }
    }

    /// The RPO bounds of region loss `i` (structured state and queue; vector
    /// memory), given the onsets: the configured bounds, extended when the
    /// replica's region was down before it (writes made meanwhile cannot
    /// have reached it), when the same region had already been lost (RPO is
    /// measured from each loss's own onset, and the earlier loss's exposure
    /// carries over: the down region wrote nothing since), and, for vector memory, when
    /// the region came back from a temporary loss too recently for its
    /// restarted snapshot schedule to have shipped a snapshot (the newest
    /// one the other region holds then predates that loss).
    pub fn rpo_bounds_us(
        &self,
        sc: &Scenario,
        onsets: &[Option<Micros>],
        i: usize,
    ) -> (Option<Micros>, Option<Micros>) {
        let extend = |b: Micros, service: &str| b + exposure_us(sc, onsets, i, b, service);
        // A replication-lag spike under way at the loss adds its lag.
        let spike = onsets[i].map_or(0, |t0| {
            sc.faults
                .iter()
                .filter_map(|f| match f {
                    FaultSpec::ReplicationLagSpike { at, duration, lag }
                        if at.us() <= t0 && t0 < at.us() + duration.us() =>
                    {
                        Some(lag.us())
                    }
                    _ => None,
                })
                .max()
                .unwrap_or(0)
        });
        let structured =
            self.structured_rpo_us.map(|b| extend(b + spike + semi_sync_cut_us(sc, onsets, i), "orchestrator"));
        let mut vector = self.vector_rpo_us.map(|b| extend(b, "vector"));
        if let (Some(v), Some(t0), FaultSpec::RegionLoss { region, .. }) = (vector.as_mut(), onsets[i], &sc.faults[i]) {
            let cycle = sc.stack.vector.snapshot_interval.us() + sc.stack.vector.ship_delay.us() + hop_us(&sc.stack);
            for (j, f) in sc.faults.iter().enumerate() {
                if let (FaultSpec::RegionLoss { region: r, duration: Some(d), .. }, Some(s)) = (f, onsets[j])
                    && j != i
                    && r == region
                    && s + d.us() <= t0
                    && t0 < s + d.us() + cycle
                {
                    *v = (*v).max(t0 - s + cycle);
                }
            }
        }
        // A vector corruption anywhere in the drill loses the points written
        // since the newest clean snapshot when it is found (within an
        // integrity-check interval) and restored; a region loss's vector RPO
        // counts them too (the corrupted points are not the good ones), and
        // a corruption before the loss ages them by the time between.
        // The snapshots taken since a corruption carry it, so the newest
        // clean one the other region holds predates the corruption; when
        // that region was away (lost, or cut off) until less than a window
        // before the corruption, every snapshot shipped meanwhile was lost
        // and the newest clean one predates its absence: the absence's
        // chain seen from the corruption, plus a window. Seed 990202 case
        // 15907: B lost over [155.1 s, 579.1 s), snapshots every 86 s,
        // corrupted at 600.4 s, A lost at 858.5 s before the integrity
        // check: a point from 88.4 s, 770.1 s old, was lost (703.4 s +
        // 87.0 s allowed).
        if let (Some(v), Some(base), Some(t0), FaultSpec::RegionLoss { region, .. }) =
            (vector.as_mut(), self.vector_rpo_us, onsets[i], &sc.faults[i])
        {
            let vs = &sc.stack.vector;
            let found =
                vs.integrity_check_interval.us() + vs.snapshot_interval.us() + vs.ship_delay.us() + hop_us(&sc.stack);
            for (j, f) in sc.faults.iter().enumerate() {
                if let (FaultSpec::VectorCorruption { .. }, Some(c)) = (f, onsets[j]) {
                    *v = (*v).max(t0.saturating_sub(c) + found);
                    let away_us =
                        if c <= t0 { replica_down_since_us(sc, onsets, c, region, base, "vector") } else { 0 };
                    if away_us > 0 {
                        *v = (*v).max(t0 - c + away_us + base);
                    }
                }
            }
        }
        // A streaming replica is sent each write once, never again: writes
        // made while it was unreachable (its region lost, or a cut or lossy
        // link between the regions) are missing from it for good, so a later
        // loss of the primary loses them however long ago the outage ended.
        if let (Some(v), Some(t0), FaultSpec::RegionLoss { region, .. }) = (vector.as_mut(), onsets[i], &sc.faults[i])
            && sc.stack.vector.streaming_replica
        {
            for (j, f) in sc.faults.iter().enumerate() {
                let gap = match f {
                    FaultSpec::RegionLoss { region: r, .. } => r != region,
                    FaultSpec::Partition { .. } | FaultSpec::LinkDegradation { .. } => true,
                    _ => false,
                };
                if let Some(s) = onsets[j]
                    && gap
                    && j != i
                    && s <= t0
                {
                    // Plus a hop: a write streamed just before the outage
                    // was still on its way (B lost at 88.0 s, A at 89.1 s:
                    // a point streamed at 87.964 s never arrived, 1.136 s
                    // old at the loss; 1.1 s + 0.04 s allows it).
                    *v = (*v).max(t0 - s + hop_us(&sc.stack));
                }
            }
        }
        // Snapshots are shipped once, never again: a cut or a lossy link
        // between the two vector stores, under way at the loss or healed
        // less than a snapshot cycle before it, kept every snapshot taken
        // since it began from the other region, whose newest one then
        // predates the cut by up to a cycle: `(t0 − cut start) + cycle`.
        // (A cut of 3 min 30 s from 11 s, a loss at 86 s, snapshots every
        // 30 s shipped in 1 s: 75 s + 31 s.)
        if let (Some(v), Some(t0), FaultSpec::RegionLoss { .. }) = (vector.as_mut(), onsets[i], &sc.faults[i])
            && !sc.stack.vector.streaming_replica
        {
            let cycle = sc.stack.vector.snapshot_interval.us() + sc.stack.vector.ship_delay.us() + hop_us(&sc.stack);
            for f in &sc.faults {
                if let FaultSpec::Partition { at, duration, a, b, .. }
                | FaultSpec::LinkDegradation { at, duration, a, b, .. } = f
                    && cuts_vector_stores(a, b)
                    && at.us() <= t0
                    && t0 < at.us() + duration.us() + cycle
                {
                    *v = (*v).max(t0 - at.us() + cycle);
                }
            }
        }
        (structured, vector)
    }

    /// Vector corruption `i`'s RPO bound and the time by which its
    /// point-in-time restore is due (None: it never struck).
    ///
    /// The serving store checks its integrity every
    /// `integrity_check_interval` and restores the newest clean snapshot:
    /// one taken at most a snapshot interval before the onset, which the
    /// other region holds a ship delay and a cross-region hop later. The
    /// points lost are those written since, so the RPO is at most
    /// `check + interval + ship + hop` (with the check as slack).
    ///
    /// A failover changes that arithmetic, and the schedule says when:
    /// - The corruption strikes the promoted store during a failover
    ///   (between the loss, cut or lossy link at `s` and the end of its
    ///   recovery, [`Budget::rto_bound_us`]): the promoted store takes no
    ///   snapshot before it serves, so the newest clean one is the last the
    ///   old primary shipped before `s`. The points written between it and
    ///   `s` (streamed to the promoted store) are lost, aged `t0 − s` more:
    ///   the bound is `(t0 − s) + check + interval + ship + hop`. With
    ///   snapshots every 30 s, shipped in 1 s, checked every 5 min, a
    ///   corruption 345 s into a cold standby's failover may lose 676 s.
    /// - The promoted store checks its integrity one interval after it
    ///   serves: a failover starting before the check is due postpones the
    ///   restore to the end of that failover's recovery plus an interval.
    ///
    /// A corruption striking before an earlier one's restore is due shares
    /// that restore, which goes back to a snapshot from before the earlier
    /// corruption: it loses the earlier corruption's points too, aged by
    /// the time between (RPO is measured from each fault's own onset). The
    /// latest such corruption counts (it carries any earlier one's). Seed
    /// 811 case 60957: corrupted at 306.1 s and 670.8 s, checked every
    /// 5 min, snapshots every 103 s; the restore found at 600 s and done at
    /// 671 s went back to the snapshot of 206 s: 364.7 s + 404.04 s allowed,
    /// 464.7 s lost.
    pub fn corruption_rpo_us(&self, sc: &Scenario, onsets: &[Option<Micros>], i: usize) -> Option<(Micros, Micros)> {
        let failovers = self.failover_spans_us(sc, onsets);
        let (mut bound_us, restored_by_us) = own_corruption_rpo_us(sc, &failovers, onsets[i]?);
        let (mut since_us, mut at) = (0, i);
        while let Some(j) = restore_pending_at(sc, onsets, &failovers, at) {
            // Both onsets are known: `restore_pending_at` names a struck one.
            let (t_at, t_j) = (onsets[at].unwrap_or(0), onsets[j].unwrap_or(0));
            since_us += t_at - t_j;
            bound_us = bound_us.max(since_us + own_corruption_rpo_us(sc, &failovers, t_j).0);
            at = j;
        }
        Some((bound_us, restored_by_us))
    }

    /// The faults that may fail over (region losses, cuts, lossy links), as
    /// (onset, RTO bound), by onset.
    fn failover_spans_us(&self, sc: &Scenario, onsets: &[Option<Micros>]) -> Vec<(Micros, Micros)> {
        let mut failovers: Vec<(Micros, Micros)> = (0..sc.faults.len())
            .filter(|&j| {
                matches!(
                    sc.faults[j],
                    FaultSpec::RegionLoss { .. } | FaultSpec::Partition { .. } | FaultSpec::LinkDegradation { .. }
                )
            })
            .filter_map(|j| Some((onsets[j]?, self.rto_bound_us(sc, onsets, j)?)))
            .collect();
        failovers.sort_unstable();
        failovers
    }

    /// Failover of the serving region, from the loss until the standby serves
    /// and leases held in the lost region have expired.
    pub fn failover_us(&self) -> Micros {
        self.detection_us + self.routing_us + self.scale_up_us + self.hydration_us + self.lease_us
    }

    /// The work after recovery: one step, the queue ahead, the next probe.
    pub fn work_us(&self) -> Micros {
        self.step_us + self.queue_us + self.probe_us
    }

    /// The worst time for a model call to get past one provider in `mode`:
    /// its SDK attempts (each cut at the worker's request timeout) and the
    /// waits between them.
    pub fn provider_us(sc: &Scenario, provider: &str, mode: ErrorMode) -> Micros {
        let s = &sc.stack;
        let Some(p) = s.providers.iter().find(|p| p.name == provider) else { return 0 };
        // Model calls are cut at the provider's SDK timeout, not the
        // worker's request timeout (that one is for tool calls).
        let req_timeout = p.timeout_ms * US_PER_MS;
        let attempt = match mode {
            ErrorMode::Timeout | ErrorMode::Slow { .. } => req_timeout,
            ErrorMode::StreamError { after_tokens } => {
                let nominal = p.base_latency_ms * US_PER_MS + p.latency_per_output_token_us * u64::from(after_tokens);
                (nominal * 12 / 10 + p.cold_extra_latency_ms * US_PER_MS).min(req_timeout)
            }
            _ => p.base_latency_ms * US_PER_MS,
        };
        let attempts = if mode == ErrorMode::QuotaExhausted { 1 } else { u64::from(p.max_retries) + 1 };
        let waits: Micros = (0..attempts.saturating_sub(1))
            .map(|a| match mode {
                ErrorMode::RateLimited { retry_after_ms } if retry_after_ms <= MAX_RETRY_AFTER_MS => retry_after_ms,
                _ => (DEFAULT_BACKOFF_BASE_MS << a.min(16)).min(MAX_BACKOFF_MS),
            })
            .sum::<u64>()
            * US_PER_MS;
        attempts * attempt + waits
    }

    /// When fault `i` ends, given the onsets the run observed (None: it
    /// never triggered). A permanent region loss "ends" at its onset: from
    /// then on the stack must fail over.
    pub fn fault_end_us(sc: &Scenario, onsets: &[Option<Micros>], i: usize) -> Option<Micros> {
        let t0 = onsets.get(i).copied().flatten()?;
        Some(match &sc.faults[i] {
            FaultSpec::WorkerKill { restart_after, .. } => t0 + restart_after.map_or(0, |d| d.us()),
            FaultSpec::WorkerPause { duration, .. } => t0 + duration.us(),
            FaultSpec::RegionLoss { duration, .. } => t0 + duration.map_or(0, |d| d.us()),
            FaultSpec::ProviderOutage { duration, at, .. }
            | FaultSpec::Partition { duration, at, .. }
            | FaultSpec::LinkDegradation { duration, at, .. }
            | FaultSpec::ReplicationLagSpike { duration, at, .. }
            | FaultSpec::PromptCacheLoss { duration, at, .. }
            | FaultSpec::ToolSchemaChange { duration, at, .. } => at.us() + duration.us(),
            FaultSpec::ClockSkew { duration, .. } | FaultSpec::QueueLoss { duration, .. } => {
                t0 + duration.map_or(0, |d| d.us())
            }
            FaultSpec::DiskLoss { .. } | FaultSpec::VectorCorruption { .. } | FaultSpec::BadDeploy { .. } => t0,
        })
    }

    /// A false failover's structured-state and queue RPO bound, before its
    /// split window, when fault `i` (a cut or a lossy link) has the standby
    /// promoted at `promoted_us`: what replication allows then (a lag
    /// spike, a semi-synchronous cut), extended by the replica's absence
    /// chained back from the promotion (writes region A made while region B
    /// was lost or cut off never reached it), as for a loss of region A at
    /// that instant. None without a replica.
    pub fn split_rpo_base_us(
        &self,
        sc: &Scenario,
        onsets: &[Option<Micros>],
        i: usize,
        promoted_us: Micros,
    ) -> Option<Micros> {
        let base = self.structured_rpo_us?;
        let mut at = onsets.to_vec();
        at[i] = Some(promoted_us);
        let away = replica_down_since_us(sc, &at, promoted_us, &RegionName::A, base, "orchestrator");
        Some(self.rpo_bounds_us(sc, &at, i).0? + away)
    }

    /// How long the primary may go on acknowledging writes after a false
    /// failover that fault `i` (a cut or a lossy link) causes, before it
    /// stands down (0 for other kinds): until the controller's `Demote`
    /// reaches it over the link, or it self-fences, at the latest a
    /// detection after the last health check it heard, which left the
    /// controller up to a link's latency and a hop before the promotion.
    pub fn split_window_us(&self, sc: &Scenario, i: usize) -> Micros {
        let latency_us = match &sc.faults[i] {
            FaultSpec::Partition { .. } => 0,
            FaultSpec::LinkDegradation { latency, .. } => latency.us(),
            _ => return 0,
        };
        self.detection_us + latency_us + hop_us(&sc.stack)
    }

    /// Fault `i`'s own recovery budget, before the work term.
    pub fn own_us(&self, sc: &Scenario, i: usize) -> Micros {
        let s = &sc.stack;
        match &sc.faults[i] {
            // A cut or degraded link holds work up for as long as it lasts;
            // a worker cut off from the store loses its lease.
            // A cut can also look like a region loss to the failover
            // controller: the failover then bounds it too.
            FaultSpec::Partition { duration, .. } => {
                (duration.us() + self.lease_us).max(self.failover_us()) + self.step_us
            }
            // A lossy link fails a health check by chance, at any time while
            // it lasts: the failover may begin as late as its end. (A 17 %
            // loss over 317 s failed a check 221 s in; a cold standby with
            // a 285 s scale-up served 602 s after the onset.)
            FaultSpec::LinkDegradation { duration, .. } => {
                duration.us() + self.lease_us.max(self.failover_us()) + self.step_us
            }
            // Nothing stops: the stack only has to notice (a lease at most).
            FaultSpec::DiskLoss { .. } | FaultSpec::ClockSkew { .. } => self.lease_us,
            FaultSpec::ReplicationLagSpike { .. } => self.step_us,
            // Cold requests are slower for the whole period.
            FaultSpec::PromptCacheLoss { duration, .. } => duration.us(),
            // Found at the next integrity check, then a restore.
            FaultSpec::VectorCorruption { .. } => {
                s.vector.integrity_check_interval.us() + s.vector.restore_base.us() + self.lease_us + self.step_us
            }
            // The breaker stays open a while after the API is fixed. While
            // the change lasts, the jobs that call the API retry and hold
            // their workers; with every worker held, the client's probes
            // (one every 30 s) queue ahead of later work, a step each, and
            // drain only after it (seed 880104 case 112664: one worker held
            // 27.5 min, 56 probes, the probe after a worker kill finished
            // behind them).
            FaultSpec::ToolSchemaChange { duration, .. } => {
                let workers = u64::from(s.workers.max(1));
                let held_probes = if u64::from(sc.workload.tasks) >= workers && sc.workload.probes {
                    duration.us() / PROBE_CADENCE_US + 1
                } else {
                    0
                };
                duration.us()
                    + s.breaker.open_ms * US_PER_MS
                    + self.lease_us
                    + self.step_us
                    + held_probes * self.step_us / workers
            }
            // Health window (re-armed once while there is no traffic) and
            // the rollback.
            FaultSpec::BadDeploy { .. } => {
                2 * crate::components::orchestrator::DEPLOY_WINDOW_US
                    + crate::components::orchestrator::ROLLBACK_US
                    + self.lease_us
            }
            FaultSpec::QueueLoss { duration, at } => {
                // A replicated queue fails over to its replica, unless an
                // earlier queue or region loss (for good, or not over yet)
                // already took a node: then there is nothing to fail over to.
                let replicated = s.queue.is_some_and(|q| q.replicated) && !queue_node_down_at(sc, i, at.us());
                let back = if replicated {
                    crate::drill::QUEUE_FAILOVER_US
                } else {
                    duration.map_or(crate::drill::QUEUE_REPLACE_US, |d| d.us())
                };
                let ack_wait = s.queue.map_or(0, |q| q.ack_wait_ms * US_PER_MS);
                back + ack_wait + 2 * sc.workload.resubmit_after.us() + sc.workload.submit_retry.us()
            }
            FaultSpec::WorkerKill { restart_after, .. } => self.lease_us + restart_after.map_or(0, |d| d.us()),
            // The paused worker may be the only one: nothing moves until it
            // wakes, finds its lease gone and the task is requeued.
            FaultSpec::WorkerPause { duration, .. } => duration.us() + self.lease_us,
            FaultSpec::RegionLoss { region, duration, .. } => {
                // Either region may be the serving one by then (after an
                // earlier failover, B is): budget a failover, or the outage
                // itself when the region comes back before it.
                let d = duration.map(|d| d.us());
                // A job whose creation was not replicated comes back when
                // the client resubmits it (checked every RESUBMIT_AFTER,
                // for jobs older than that), once a region serves again.
                let resubmit_us = if matches!(sc.stack.replication, Replication::Async { .. }) {
                    2 * sc.workload.resubmit_after.us() + sc.workload.submit_retry.us()
                } else {
                    0
                };
                let mut b = self.failover_us() + resubmit_us;
                // The queue's other node down (lost, or its loss not over):
                // this loss may take the last copy, and the queue serves
                // again when a node comes back or the platform replaces one.
                if let (Some(q), FaultSpec::RegionLoss { at, .. }) = (s.queue, &sc.faults[i])
                    && let Some(back_us) = queue_node_back_us(sc, i, at.us())
                {
                    let ack_wait = q.ack_wait_ms * US_PER_MS;
                    let resubmit = 2 * sc.workload.resubmit_after.us() + sc.workload.submit_retry.us();
                    b = b.max(back_us - at.us() + ack_wait + resubmit);
                }
                if let Some(d) = d {
                    b = b.max(d + self.lease_us);
                }
                // With the other region down during the failover, it waits
                // for that region to come back, then for the controller's
                // next resend of the promotion.
                if let FaultSpec::RegionLoss { at, .. } = &sc.faults[i]
                    && let Some(back_us) = other_region_back_us(sc, i, *region, at.us(), self.failover_us())
                {
                    b = b.max(
                        back_us - at.us() + crate::components::region::RESEND_US + self.failover_us() + resubmit_us,
                    );
                }
                if matches!(sc.stack.replication, Replication::Sync { .. }) && sc.stack.pattern != Pattern::SingleRegion
                {
                    // Writes wait for the replica while it is down; a
                    // standby lost for good stalls them for good.
                    match (region, d) {
                        (RegionName::B, None) => return Micros::MAX / 4,
                        (_, d) => b += d.unwrap_or(0),
                    }
                }
                b
            }
            FaultSpec::ProviderOutage { provider, mode, at, duration } => {
                let p = Budget::provider_us(sc, provider, *mode);
                // Every model step of the work ahead may pay the failing
                // provider's retries before it falls back (breakers open
                // only when failures come fast enough).
                let mut b = p * (1 + self.model_steps * self.rounds);
                // While every usable provider is out, nothing answers.
                if let Some(all_down_until) = all_providers_down_until(sc, at.us(), at.us() + duration.us()) {
                    b += all_down_until - at.us();
                }
                // The client probes every 30 s during recovery; when a probe
                // takes longer than the workers can absorb, probes queue up
                // ahead of the work.
                let workers = u64::from(sc.stack.workers.max(1));
                if p + self.step_us > PROBE_CADENCE_US * workers {
                    let probes = duration.us() / PROBE_CADENCE_US + 1;
                    b += probes * (p + self.step_us) / workers;
                }
                b
            }
        }
    }

    /// Fault `i`'s RTO bound: its own budget plus the work term and the
    /// slowdown of provider outages under way (`Budget::span_us`),
    /// extended over every fault whose recovery overlaps it (the bound runs
    /// to the end of the cluster of overlapping recoveries). None when it
    /// never triggered.
    ///
    /// Each member of the cluster counts with its own slowdown too: a fault
    /// that holds the in-flight work up (a tool's schema change, say) ends
    /// its recovery only once that work has run, and a provider outage
    /// under way by then slows each of its model steps. A schema change of
    /// the search API from 0 s to 946 s, its breaker open 60 s after,
    /// leases 21.1 s, a step 11 s and 246 s of work ends at 1,284 s
    /// unslowed; anthropic answering 429 with a 34 s retry-after from
    /// 645.5 s costs each of the 7 model steps a worker may still run
    /// (2 per task, 3 rounds, plus the probe's) 3 × 0.8 s + 2 × 34 s =
    /// 70.4 s, 492.8 s in all: the cluster runs to 1,776.8 s, so the
    /// outage's own bound (738.8 s, to 1,384.3 s) is extended to 1,131.3 s
    /// (its probe, queued behind the held-up jobs, finished at 1,476.8 s).
    pub fn rto_bound_us(&self, sc: &Scenario, onsets: &[Option<Micros>], i: usize) -> Option<Micros> {
        let t0 = onsets.get(i).copied().flatten()?;
        let mut spans: Vec<(Micros, Micros)> = (0..sc.faults.len())
            .filter_map(|j| {
                let s = onsets[j]?;
                Some((s, s + self.span_us(sc, onsets, j, s)))
            })
            .collect();
        spans.sort_unstable();
        let mut end = t0 + self.span_us(sc, onsets, i, t0);
        let mut start = t0;
        // Grow the cluster until it no longer changes.
        loop {
            let mut changed = false;
            for &(s, e) in &spans {
                if s <= end && e >= start && (e > end || s < start) {
                    end = end.max(e);
                    start = start.min(s);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        Some(end - t0)
    }

    /// Fault `j`'s recovery span from its onset `s`, alone: its own budget
    /// and the work term, plus, for every other provider outage under way
    /// during it, that provider's retry budget on each model step of the
    /// work ahead (an outage slows every model step of the recovery for as
    /// long as it lasts).
    ///
    /// A cut (or a lossy link) holds work up for its whole duration, and
    /// the client, probing every 30 s meanwhile, queues a probe each time:
    /// those probes wait ahead of the in-flight work, one model step each,
    /// so ⌈probes / workers⌉ more rounds pay the outage's retries. A cut
    /// of 522 s (18 probes, 4 workers: 5 rounds) under anthropic answering
    /// 429 with a 41 s retry-after (3 × 0.8 s + 2 × 41 s = 84.4 s a call)
    /// adds 422 s: the job in flight at the outage resumed 336 s after the
    /// cut healed, behind four rounds of probes.
    ///
    /// A bad deploy's recovery starts only once a region serves (see
    /// [`Budget::serving_again_us`]).
    fn span_us(&self, sc: &Scenario, onsets: &[Option<Micros>], j: usize, s: Micros) -> Micros {
        let wait = match &sc.faults[j] {
            FaultSpec::BadDeploy { .. } => self.serving_again_us(sc, onsets, s) - s,
            _ => 0,
        };
        let own = wait.saturating_add(self.own_us(sc, j)) + self.work_us();
        let end = s + own;
        let held_probes = match &sc.faults[j] {
            FaultSpec::Partition { duration, .. } | FaultSpec::LinkDegradation { duration, .. } => {
                duration.us() / PROBE_CADENCE_US + 1
            }
            _ => 0,
        };
        let probe_rounds = held_probes.div_ceil(u64::from(sc.stack.workers.max(1)));
        let slowdown: Micros = sc
            .faults
            .iter()
            .enumerate()
            .filter_map(|(k, f)| match f {
                FaultSpec::ProviderOutage { provider, mode, at, duration }
                    if k != j && at.us() < end && at.us() + duration.us() > s =>
                {
                    Some(Budget::provider_us(sc, provider, *mode) * (1 + self.model_steps * self.rounds + probe_rounds))
                }
                _ => None,
            })
            .sum();
        own + slowdown
    }

    /// When a region serves again after `s`: the end of the own budget of
    /// every region loss under way at `s` (its failover), else `s`. A bad
    /// deploy's health watch judges a window from the version's first
    /// output, and none can come while no region serves, so its own budget
    /// runs from then: a deploy 10.4 s into a failover whose own budget is
    /// 136.1 s (the standby's 109 s scale-up) waits 125.7 s, then takes its
    /// two windows, the rollback and a lease (171.1 s).
    fn serving_again_us(&self, sc: &Scenario, onsets: &[Option<Micros>], s: Micros) -> Micros {
        (0..sc.faults.len())
            .filter(|&k| matches!(sc.faults[k], FaultSpec::RegionLoss { .. }))
            .filter_map(|k| onsets.get(k).copied().flatten().map(|sk| (sk, k)))
            .filter(|&(sk, _)| sk <= s)
            .map(|(sk, k)| sk.saturating_add(self.own_us(sc, k)))
            .fold(s, Micros::max)
    }

    /// By when every job must be done: the last fault's end (or the last
    /// arrival) plus failover, lease expiry, the client's resubmission of
    /// jobs lost with a region, and running the whole workload.
    pub fn settle_deadline_us(&self, sc: &Scenario, onsets: &[Option<Micros>]) -> Micros {
        let last_arrival = last_arrival_us(sc);
        let last_end = (0..sc.faults.len()).filter_map(|i| Budget::fault_end_us(sc, onsets, i)).max().unwrap_or(0);
        let region_loss = sc
            .faults
            .iter()
            .enumerate()
            .any(|(i, f)| matches!(f, FaultSpec::RegionLoss { .. }) && onsets.get(i).copied().flatten().is_some());
        let mut settle = self.lease_us + self.work_us();
        if region_loss {
            settle += self.failover_us() + 2 * sc.workload.resubmit_after.us() + sc.workload.submit_retry.us();
        }
        let outages: Micros = sc
            .faults
            .iter()
            .map(|f| match f {
                FaultSpec::ProviderOutage { provider, mode, .. } => Budget::provider_us(sc, provider, *mode),
                _ => 0,
            })
            .sum();
        last_end.max(last_arrival) + settle + outages
    }
}

/// The last arrival of the workload, an upper estimate for Poisson arrivals
/// (three times the mean span).
pub fn last_arrival_us(sc: &Scenario) -> Micros {
    use crate::drill::scenario::Arrival;
    let n = u64::from(sc.workload.tasks.saturating_sub(1));
    match sc.workload.arrival {
        Arrival::AtOnce => 0,
        Arrival::Uniform => n * sc.workload.interval.us(),
        Arrival::Poisson => 3 * n * sc.workload.interval.us() + 10 * sc.workload.interval.us(),
    }
}

/// If, within `[from, until)`, there is a time when every provider the
/// router may use is in an outage, the end of the last such period.
fn all_providers_down_until(sc: &Scenario, from: Micros, until: Micros) -> Option<Micros> {
    let policy = sc.stack.effective_policy();
    let usable: Vec<&str> = if policy.provider_router {
        sc.stack.providers.iter().map(|p| p.name.as_str()).collect()
    } else {
        sc.stack.providers.iter().take(1).map(|p| p.name.as_str()).collect()
    };
    let windows: Vec<(&str, Micros, Micros)> = sc
        .faults
        .iter()
        .filter_map(|f| match f {
            FaultSpec::ProviderOutage { provider, at, duration, .. } => {
                Some((provider.as_str(), at.us(), at.us() + duration.us()))
            }
            _ => None,
        })
        .collect();
    let down_at = |t: Micros| usable.iter().all(|p| windows.iter().any(|(n, a, b)| n == p && *a <= t && t < *b));
    // Candidate instants: window starts within [from, until).
    let mut last = None;
    for &(_, a, _) in &windows {
        let t = a.max(from);
        if t < until && down_at(t) {
            // Down from t until the earliest end among the usable providers' covering windows.
            let end = usable
                .iter()
                .map(|p| windows.iter().filter(|(n, a, b)| n == p && *a <= t && t < *b).map(|w| w.2).max().unwrap_or(t))
                .min()
                .unwrap_or(t);
            last = Some(last.map_or(end, |l: Micros| l.max(end)));
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warm standby replicating every 1.1 s (0 lag) and snapshotting
    /// every 30 s, with region losses `(at_s, region, duration_s)` (None:
    /// for good), and their onsets.
    fn losses(faults: &[(f64, &str, Option<f64>)]) -> (Scenario, Vec<Option<Micros>>) {
        let mut text = String::from(
            "tier = \"batch\"\nhorizon = \"30m\"\n[stack]\npattern = \"warm_standby\"\n\
             replication = { mode = \"async\", lag_ms = 0, interval_ms = 1100 }\n\
             vector = { snapshot_interval = \"30s\", ship_delay = \"1s\", snapshot_location = \"other_region\" }\n",
        );
        for (at_s, region, duration_s) in faults {
            text += &format!("[[faults]]\nkind = \"region_loss\"\nat = \"{}ms\"\nregion = \"{region}\"\n", at_s * 1e3);
            if let Some(d) = duration_s {
                text += &format!("duration = \"{}ms\"\n", d * 1e3);
            }
        }
        let sc = crate::drill::scenario::parse(std::path::Path::new("t.toml"), &text).expect("a valid scenario");
        let onsets = faults.iter().map(|f| Some((f.0 * 1e6).round() as Micros)).collect();
        (sc, onsets)
    }

    /// The structured-state bound of loss `i`, in ms.
    fn structured_ms(faults: &[(f64, &str, Option<f64>)], i: usize) -> Micros {
        let (sc, onsets) = losses(faults);
        Budget::new(&sc).rpo_bounds_us(&sc, &onsets, i).0.expect("replicated") / US_PER_MS
    }

    /// The RPO bound of vector corruption `i` among corruptions at `at_s`,
    /// in ms (snapshots every 103 s shipped in 1 s, checks every 5 min).
    fn corruption_ms(at_s: &[f64], i: usize) -> Micros {
        let mut text = String::from(
            "tier = \"batch\"\nhorizon = \"1h\"\n[stack]\npattern = \"warm_standby\"\n\
             vector = { snapshot_interval = \"103s\", ship_delay = \"1s\", snapshot_location = \"other_region\", \
             integrity_check_interval = \"5m\" }\n",
        );
        for at in at_s {
            text += &format!("[[faults]]\nkind = \"vector_corruption\"\nat = \"{}ms\"\nfraction = 0.01\n", at * 1e3);
        }
        let sc = crate::drill::scenario::parse(std::path::Path::new("t.toml"), &text).expect("a valid scenario");
        let onsets: Vec<Option<Micros>> = at_s.iter().map(|a| Some((a * 1e6).round() as Micros)).collect();
        Budget::new(&sc).corruption_rpo_us(&sc, &onsets, i).expect("struck").0 / US_PER_MS
    }

    #[test]
    fn a_corruption_before_an_earlier_ones_restore_shares_its_loss() {
        // Alone: a check interval and a snapshot cycle, 404.04 s.
        assert_eq!(corruption_ms(&[306.1], 0), 404_040);
        // Seed 811 case 60957: the restore of the corruption at 306.1 s
        // (found at 600 s, done at 671 s) went back to the snapshot of
        // 206 s and took the one at 670.8 s with it: 364.7 s more.
        assert_eq!(corruption_ms(&[670.8, 306.1], 0), 364_700 + 404_040);
        assert_eq!(corruption_ms(&[670.8, 306.1], 1), 404_040);
        // A chain: each shares the restore of the one before.
        assert_eq!(corruption_ms(&[306.1, 500.0, 700.0], 2), 393_900 + 404_040);
        // Past the earlier restore's deadline (a check and 5 min of
        // restore), its own again.
        assert_eq!(corruption_ms(&[306.1, 906.2], 1), 404_040);
    }

    #[test]
    fn a_second_loss_of_a_down_region_keeps_what_the_first_loss_exposed() {
        // One window: 1.1 s + 40 ms.
        assert_eq!(structured_ms(&[(100.0, "a", None)], 0), 1_140);
        // Seed 808 case 15461: B away over [338.7 s, 530.7 s), back 0.4 s
        // before A's loss (no tick between), A lost again for good 4.8 s
        // later. A's writes since 338.7 s never left it: the first loss
        // allows 192.4 s + a window, the second 4.8 s more.
        let seed808 = [(531.1, "a", Some(149.0)), (338.7, "b", Some(192.0)), (535.9, "a", None)];
        assert_eq!(structured_ms(&seed808, 0), 1_140 + 192_400);
        assert_eq!(structured_ms(&seed808, 2), 1_140 + 192_400 + 4_800);
        // Seed 802 case 75267: B away over [0 s, 600 s), A lost at 594.1 s
        // (B still away) and for good at 770.9 s, after B came back: A's
        // writes since 0 s never left it; vector memory likewise (a 31.04 s
        // snapshot cycle).
        let seed802 = [(594.1, "a", Some(219.0)), (770.9, "a", None), (0.0, "b", Some(600.0))];
        assert_eq!(structured_ms(&seed802, 1), 1_140 + 770_900);
        let (sc, onsets) = losses(&seed802);
        assert_eq!(Budget::new(&sc).rpo_bounds_us(&sc, &onsets, 1).1, Some((31_040 + 770_900) * US_PER_MS));
        // Three overlapping losses of A: down from 590 s through 660 s, B
        // away until 600 s, so A's writes since 0 s are exposed.
        let three = [(0.0, "b", Some(600.0)), (590.0, "a", Some(30.0)), (610.0, "a", Some(60.0)), (660.0, "a", None)];
        assert_eq!(structured_ms(&three, 3), 1_140 + 660_000);
        // The larger exposure, not the sum: B away over [0 s, 119.5 s)
        // chains at A's second loss (120 s) as at its first (50 s), but A,
        // down since 50 s, wrote nothing after: 120 s, not 120 s + 70 s.
        let both = [(0.0, "b", Some(119.5)), (50.0, "a", Some(100.0)), (120.0, "a", None)];
        assert_eq!(structured_ms(&both, 2), 1_140 + 120_000);
    }

    /// A fixed pseudo-random sequence (an LCG) from `seed`.
    fn lcg(seed: u64) -> impl FnMut() -> u32 {
        let mut x = seed;
        move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u32
        }
    }

    #[test]
    fn sort_by_job_orders_as_a_comparison_sort() {
        // Dense and sparse job ids, repeats, and the empty vector.
        let mut next = lcg(7);
        for (n, spread) in [(0, 1), (1, 1), (500, 100), (5_000, 3_000), (300, u32::MAX)] {
            let v: Vec<(JobId, u16, u32)> =
                (0..n).map(|_| (JobId(next() % spread), (next() % 6) as u16, next() % 4)).collect();
            let mut expected = v.clone();
            expected.sort_unstable();
            let mut got = v;
            sort_by_job(&mut got, |e| e.0);
            assert_eq!(got, expected, "{n} elements, job ids below {spread}");
        }
    }

    #[test]
    fn job_index_finds_what_bisection_finds() {
        let mut next = lcg(11);
        // Dense ids, sparse ids (bisection behind the index) and the empty vector.
        for (n, spread) in [(0, 1), (1, 1), (2_000, 700), (300, u32::MAX)] {
            let mut v: Vec<(JobId, u16)> = (0..n).map(|_| (JobId(next() % spread), (next() % 6) as u16)).collect();
            sort_by_job(&mut v, |e| e.0);
            v.dedup();
            let index = JobIndex::new(&v, |e| e.0);
            let probes = v.iter().map(|e| e.0).chain((0..50).map(|_| JobId(next() % spread.saturating_add(10))));
            for job in probes.chain([JobId(u32::MAX)]) {
                let expected = v.partition_point(|e| e.0 < job)..v.partition_point(|e| e.0 <= job);
                assert_eq!(index.range(&v, job, |e| e.0), expected, "{n} elements, job {job:?}");
            }
        }
    }
}
