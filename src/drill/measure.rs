//! Measurements from ground truth: the fake APIs' ledgers, the stores'
//! actual contents, and what the client was told — never what the
//! orchestrator believes happened.
//!
//! Definitions (DOMAIN.md):
//! - **RTO** = from fault onset until the stack accepts and completes new
//!   work in the serving region (a health probe accepted after the onset is
//!   done in the serving store) *and* every task in flight at the onset has
//!   made progress again (a result or completion committed after the onset
//!   in the serving store). Parts come from the timeline.
//! - **RPO** per surface = at onset, the age of the oldest acknowledged
//!   write that did not survive recovery; 0 when nothing acknowledged was lost.
//! - **Duplicates** = ledger entries beyond one per (job, step).
//! - **Lost** = side-effect steps the serving store records as done with no
//!   ledger entry.
//! - **Stuck** = workload jobs not done in the serving store at the horizon
//!   (a job whose completion reached the client before its record was lost
//!   counts as finished; the lost record shows in the RPO).
//! - **Replanned** = plan steps whose decision differed between side
//!   effects that acted on it.
//! - **Rollback** (a bad deploy) = from the bad version's first model
//!   output (the provider's first answer to a request made under it; the
//!   deploy itself when there was none) until the last good version is live
//!   again: a rollback is judged on outputs, so time in which nothing could
//!   run under the version (no region serving, the only worker held up) is
//!   not the rollback's. Target < 5 min (DOMAIN.md).

use std::collections::BTreeMap;

use serde::Serialize;

use rustc_hash::FxHashSet;

use crate::components::env::Note;
use crate::components::ids::{JobId, Micros, us_to_s};
use crate::components::store::{LogRec, LogSlice, Op, StepState, Store, TaskMap, TaskStatus};
use crate::components::vector::PointId;
use crate::sim::stack::Stack;

/// What the drill recorded about one fault while it ran.
#[derive(Clone, Debug, Default)]
pub struct FaultObs {
    /// Kind, as written.
    pub kind: &'static str,
    /// When it took effect (None if it never triggered).
    pub onset_us: Option<Micros>,
    /// Jobs whose tasks were leased in the serving store at onset.
    pub in_flight: Vec<JobId>,
    /// For a permanent region loss of the primary: the lost primary's log
    /// and how much of it was acknowledged.
    pub lost_log: Option<LostLog>,
    /// For a permanent region loss: the log of an orchestrator there that
    /// was not serving (a demoted old primary, a standby), destroyed with
    /// its storage. Evidence of what it recorded (the event log's truth),
    /// never recovery progress. With the orchestrator that held it.
    pub wiped_log: Option<(crate::components::ids::HostId, Vec<LogRec>)>,
    /// For a cut or a lossy link that made the failover controller fail
    /// over from a primary still alive (a false failover): that primary.
    /// What it acknowledged that the promoted standby never received, up
    /// to its stand-down, is this fault's loss (see [`split_log`]).
    pub failed_away: Option<crate::components::ids::HostId>,
    /// Messages an unreplicated queue held when its node was lost: the job
    /// and when its publish was acknowledged.
    pub lost_messages: Vec<(JobId, Micros)>,
    /// Acknowledged vector points already missing (or corrupted) in the
    /// serving vector store at onset: lost earlier, not by this fault.
    pub vector_missing_at_onset: FxHashSet<PointId>,
    /// For a vector corruption: the points it corrupted (clean before it,
    /// corrupted after it, in the store it struck).
    pub vector_corrupted: FxHashSet<PointId>,
    /// The vector loss this fault caused, judged at the restore that
    /// resolves it (see [`judge_vector`]), else at the horizon: the
    /// acknowledgement time of the oldest point lost. `None` until judged.
    pub vector_lost: Option<Option<Micros>>,
    /// The points lost by this fault, once judged (a fault judged later
    /// does not count them again).
    pub vector_lost_points: FxHashSet<PointId>,
}

/// The log of a primary lost with its region.
#[derive(Clone, Debug)]
pub struct LostLog {
    /// Every record it had committed.
    pub log: Vec<LogRec>,
    /// Records up to this LSN were acknowledged to their writers.
    pub acked_upto: u64,
    /// The orchestrator that held it.
    pub host: crate::components::ids::HostId,
}

impl LostLog {
    /// The last of its records the serving store holds at the end: every
    /// one when the same orchestrator serves again (it came back with its
    /// store, as a temporarily lost region does), those up to the promotion
    /// when the standby took over.
    pub fn kept_upto(&self, stack: &Stack) -> u64 {
        if stack.serving_orch() == self.host { u64::MAX } else { stack.truth.promoted_at.map_or(0, |(lsn, _)| lsn) }
    }
}

/// RTO with its parts, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct RtoParts {
    /// Onset → the stack noticed (lease expiry, health checks, breaker).
    pub detection_s: f64,
    /// Promotion and the DNS TTL.
    pub routing_s: f64,
    /// Scale-up of the standby.
    pub scale_up_s: f64,
    /// Vector-store hydration.
    pub hydration_s: f64,
    /// The rest: until in-flight work progresses and new work completes.
    pub resume_s: f64,
}

/// RPO per surface, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct RpoSurfaces {
    /// Tasks, steps, checkpoints, event log.
    pub structured_state_s: f64,
    /// Vector memory.
    pub vector_memory_s: f64,
    /// Accepted jobs (the in-flight task queue).
    pub queue_s: f64,
}

impl RpoSurfaces {
    /// The largest over surfaces.
    pub fn max_s(&self) -> f64 {
        self.structured_state_s.max(self.vector_memory_s).max(self.queue_s)
    }
}

/// One fault's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct FaultResult {
    /// Kind.
    pub kind: &'static str,
    /// Onset, seconds from the drill's start (None: never triggered).
    pub onset_s: Option<f64>,
    /// RTO, seconds (None: not recovered by the horizon).
    pub rto_s: Option<f64>,
    /// RTO parts.
    pub rto_parts: RtoParts,
    /// RPO per surface.
    pub rpo: RpoSurfaces,
    /// Tasks in flight at onset.
    pub in_flight_tasks: usize,
    /// For a bad deploy: from the bad version's first model output (the
    /// deploy's onset when it produced none) until the last good version
    /// is live again (None: never rolled back). See `rollback_us`.
    pub rollback_s: Option<f64>,
}

/// Counts from the ledgers and stores.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Duplicate side effects.
    pub duplicates: u64,
    /// Lost side effects.
    pub lost_effects: u64,
    /// Stuck jobs.
    pub stuck_tasks: u64,
    /// Replanned steps.
    pub replanned_steps: u64,
    /// Writes accepted from stale lease holders.
    pub stale_writes: u64,
    /// Workload jobs done.
    pub done_tasks: u64,
    /// Side effects in the ledgers.
    pub side_effects: u64,
    /// Side-effect requests sent by a worker after a newer lease on its task
    /// was granted to another: two workers ran the step.
    pub stale_actions: u64,
    /// Step results persisted from tool responses that failed the schema.
    pub corrupted_writes: u64,
    /// A worker worked a step while another's call for it was still being
    /// processed (a lease shorter than the call).
    pub concurrent_runs: u64,
    /// Vector points acknowledged and then missing or corrupted at the end.
    pub vector_points_lost: u64,
}

impl Counts {
    /// The count an invariant requires to be zero.
    pub fn of(&self, inv: crate::drill::tier::Invariant) -> u64 {
        use crate::drill::tier::Invariant;
        match inv {
            Invariant::NoDuplicates => self.duplicates,
            Invariant::NoLostEffects => self.lost_effects,
            Invariant::NoStuckTasks => self.stuck_tasks,
            Invariant::NoReplannedSteps => self.replanned_steps,
            Invariant::NoStaleWrites => self.stale_writes,
            Invariant::NoStaleActions => self.stale_actions,
            Invariant::NoCorruptedWrites => self.corrupted_writes,
            Invariant::NoConcurrentRuns => self.concurrent_runs,
        }
    }
}

/// What the orchestrators other than the serving one committed up to the
/// standby's promotion (none without one): each one's log as it stands, and
/// the log of one whose storage a permanent region loss destroyed as it
/// was then (an old primary that had stood down: seed 1774212409 case
/// 66585, whose only record of an in-flight job's progress was there).
pub fn before_promotion<'a>(stack: &'a Stack, faults: &'a [FaultObs]) -> Vec<LogSlice<'a>> {
    let Some((_, at)) = stack.truth.promoted_at else { return Vec::new() };
    let serving = stack.serving_orch();
    let upto = |log: LogSlice<'a>| log.prefix(log.partition_point(|r| r.at_us <= at));
    stack
        .hosts
        .orch
        .iter()
        .filter(|&&h| h != serving)
        .map(|&h| upto(stack.orch(h).store().log()))
        .chain(faults.iter().filter_map(|f| f.wiped_log.as_ref().map(|(_, l)| upto(LogSlice::from(l)))))
        .collect()
}

/// Measures a finished drill.
pub fn measure(stack: &Stack, faults: &[FaultObs], horizon_us: Micros) -> (Vec<FaultResult>, Counts) {
    let (results, counts, _) = measure_with_progress(stack, faults, horizon_us);
    (results, counts)
}

/// [`measure`], and the [`Progress`] its RTOs were read from (empty for a
/// drill without faults), for the invariants' RTO checks, which read the
/// same logs ([`crate::drill::invariants::check_measured`]).
pub fn measure_with_progress(
    stack: &Stack,
    faults: &[FaultObs],
    horizon_us: Micros,
) -> (Vec<FaultResult>, Counts, Progress) {
    let serving = stack.serving_orch();
    let store = stack.orch(serving).store();
    let mut counts = counts(stack, store);
    counts.stale_actions = stale_actions(stack, store, faults);
    counts.concurrent_runs = stack.truth.concurrent_runs;
    // Progress: the serving store and every primary lost with its region
    // (what it committed before it was lost happened). A demoted primary
    // that still stands is not serving: its later work is no recovery.
    // So is what the orchestrator failed away from committed before the
    // standby's promotion: it was the primary then.
    let serving_log = store.log();
    let logs: Vec<LogSlice<'_>> = std::iter::once(serving_log)
        .chain(faults.iter().filter_map(|f| f.lost_log.as_ref().map(|l| LogSlice::from(&l.log))))
        .chain(before_promotion(stack, faults))
        .collect();
    // Progress only feeds the faults' results: a drill without faults
    // skips it (a map over every job, the largest measurement temporary).
    let progress = if faults.is_empty() { Progress::default() } else { Progress::of(&logs) };
    let results = faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let next_onset = faults.iter().skip(i + 1).filter_map(|g| g.onset_us).min().unwrap_or(horizon_us);
            fault_result(stack, store, &progress, (f, faults), next_onset.max(f.onset_us.unwrap_or(0)))
        })
        .collect();
    (results, counts, progress)
}

/// Every structured-state log the drill's ground truth holds: the serving
/// store's, the other orchestrator's (a demoted or returned primary, a
/// standby) and every primary's lost with its region (for the step events
/// and lease history).
pub fn all_logs<'a>(stack: &'a Stack, faults: &'a [FaultObs]) -> Vec<LogSlice<'a>> {
    let serving = stack.serving_orch();
    let mut logs = vec![stack.orch(serving).store().log()];
    logs.extend(stack.hosts.orch.iter().filter(|&&h| h != serving).map(|&h| stack.orch(h).store().log()));
    logs.extend(faults.iter().filter_map(|f| f.lost_log.as_ref().map(|l| LogSlice::from(&l.log))));
    logs
}

/// Progress over every log: per job, the commit times of its results and
/// completions; and the completion times of tasks by creation time. The
/// inputs of [`rto_us`] for both runtimes: the simulated drill builds it
/// from its stores' logs, the live drill from the reference stack's
/// PostgreSQL event log (the same [`LogRec`] format).
#[derive(Default)]
pub struct Progress {
    /// The commit times of every job's results and completions (any log),
    /// sorted by job (then time): one flat vector, not a vector per job.
    by_job: Vec<(JobId, Micros)>,
    /// Tasks that completed: (created at, completed at), from any log.
    done: Vec<(Micros, Micros)>,
}

impl Progress {
    /// Progress in `logs` (task ids are mapped to jobs within each log).
    pub fn of(logs: &[LogSlice<'_>]) -> Progress {
        let mut by_job: Vec<(JobId, Micros)> = Vec::new();
        let mut done = Vec::new();
        for log in logs {
            // Task ids are per store: map them within each log.
            let mut tasks: TaskMap<(JobId, Micros)> = TaskMap::new();
            for rec in log.iter() {
                match rec.op {
                    Op::Create { task, job, .. } => {
                        tasks.insert(task, (job, rec.at_us));
                    }
                    Op::Result { task, .. } | Op::Complete { task } => {
                        let Some(&(job, created)) = tasks.get(&task) else { continue };
                        by_job.push((job, rec.at_us));
                        if matches!(rec.op, Op::Complete { .. }) {
                            done.push((created, rec.at_us));
                        }
                    }
                    _ => {}
                }
            }
        }
        by_job.sort_unstable();
        Progress { by_job, done }
    }

    /// The first progress of `job` after `t0`, in any log.
    pub fn after(&self, job: JobId, t0: Micros) -> Option<Micros> {
        // The job's entries are sorted by time: the first one after `t0`.
        let from = self.by_job.partition_point(|&(j, at)| j < job || (j == job && at <= t0));
        self.by_job.get(from).filter(|&&(j, _)| j == job).map(|&(_, at)| at)
    }

    /// The first completion of a task created at or after `t0`.
    pub fn new_work_done(&self, t0: Micros) -> Option<Micros> {
        self.done.iter().filter(|&&(created, _)| created >= t0).map(|&(_, at)| at).min()
    }

    /// The RTO of a fault at `t0` whose in-flight jobs are `in_flight`
    /// ([`rto_us`] over this progress).
    /// `offered`: whether new work was offered at or after `t0` (none
    /// offered: none to wait for).
    pub fn rto_us(&self, t0: Micros, in_flight: &[JobId], offered: bool) -> Option<Micros> {
        let new_work = self.new_work_done(t0).or((!offered).then_some(t0));
        rto_us(t0, in_flight.iter().map(|&job| self.after(job, t0)), new_work)
    }
}

/// RTO (DOMAIN.md), for the simulated and the live drill alike: from the
/// onset `t0` until every task in flight at the onset has made progress
/// again (`in_flight_progress`: each one's first progress after `t0`,
/// `None` if it never progressed) and new work created at or after `t0`
/// completed (`new_work_done`). `None` when either never happened.
pub fn rto_us(
    t0: Micros,
    in_flight_progress: impl IntoIterator<Item = Option<Micros>>,
    new_work_done: Option<Micros>,
) -> Option<Micros> {
    let resumed_at = in_flight_progress.into_iter().try_fold(t0, |acc, at| at.map(|at| acc.max(at)))?;
    Some(resumed_at.max(new_work_done?) - t0)
}

/// The workload jobs whose tasks `store` holds leased: the tasks in flight
/// when a fault starts (probes are the harness's, not the workload's).
pub fn leased_jobs(store: &Store) -> Vec<JobId> {
    store.tasks().iter().filter(|t| t.status == TaskStatus::Leased && !t.probe).map(|t| t.job).collect()
}

/// [`leased_jobs`] of the store `log` describes at `t_us`: its records
/// committed at or before `t_us` replayed (the live drill's in-flight set,
/// from the reference stack's event log).
pub fn leased_jobs_at(log: &[LogRec], t_us: Micros) -> Vec<JobId> {
    let mut store = Store::new();
    for rec in log.iter().take_while(|r| r.at_us <= t_us) {
        store.apply_replicated(rec);
    }
    leased_jobs(&store)
}

fn counts(stack: &Stack, store: &Store) -> Counts {
    let mut c = Counts::default();
    // Every ledger entry's step, sorted (a flat vector: a tree node per
    // step costs more than the sort): entries beyond a step's first are
    // duplicates.
    let mut per_step: Vec<(u32, u16)> = [stack.hosts.payment, stack.hosts.email]
        .iter()
        .flat_map(|&api| stack.api(api).ledger().iter().map(|e| (e.origin.job.0, e.origin.step)))
        .collect();
    // Jobs are dense: a counting sort by job gives `sort_unstable`'s order
    // in linear time, and the job index below replaces a bisection of
    // millions of steps per lookup.
    crate::drill::invariants::sort_by_job(&mut per_step, |x| JobId(x.0));
    c.side_effects = per_step.len() as u64;
    per_step.dedup();
    c.duplicates = c.side_effects - per_step.len() as u64;
    let by_job = crate::drill::invariants::JobIndex::new(&per_step, |x| JobId(x.0));
    for t in store.tasks() {
        if t.probe {
            continue;
        }
        let tpl = &stack.templates[t.template as usize];
        for (i, state) in t.step_states().enumerate() {
            if state == StepState::Done
                && tpl.steps[i].kind.is_side_effect()
                && per_step[by_job.range(&per_step, t.job, |x| JobId(x.0))].binary_search(&(t.job.0, i as u16)).is_err()
            {
                c.lost_effects += 1;
            }
        }
    }
    for j in 0..stack.workload_jobs {
        let done =
            store.task_for_job(JobId(j)).and_then(|t| store.task(t)).is_some_and(|t| t.status == TaskStatus::Done);
        // A job whose completion the client was told of did finish; if the
        // store lost the record afterwards, RPO accounts for it.
        if done || stack.truth.completed[j as usize] {
            c.done_tasks += 1;
        } else {
            c.stuck_tasks += 1;
        }
    }
    c.replanned_steps = replanned(stack);
    c.corrupted_writes = corrupted_writes(store.log().iter());
    let vec = &stack.vector(stack.serving_vector()).store;
    c.vector_points_lost =
        stack.truth.vec_acks.keys().filter(|p| vec.query(**p).is_none_or(|hit| hit.corrupted)).count() as u64;
    c.stale_writes = stack.hosts.orch.iter().map(|&h| stack.orch(h).stale_writes_accepted()).sum();
    c
}

/// Step results persisted from tool responses that failed the schema, in
/// a store's log (the simulated serving store's, or the live reference
/// stack's PostgreSQL event log).
pub fn corrupted_writes(log: impl IntoIterator<Item = impl std::borrow::Borrow<LogRec>>) -> u64 {
    log.into_iter()
        .filter(|r| matches!(std::borrow::Borrow::<LogRec>::borrow(r).op, Op::Result { corrupt: true, .. }))
        .count() as u64
}

/// Plan steps decided differently after a resume, from what survived: the
/// decisions side effects happened on (ledgers), plus the decision behind
/// each vector point still holding the value last written to it. Internal
/// writes that a later write replaced do not count: only what the world and
/// the memory still show.
fn replanned(stack: &Stack) -> u64 {
    let mut steps: std::collections::BTreeSet<(JobId, u16)> = stack.truth.replanned.iter().copied().collect();
    let vec = &stack.vector(stack.serving_vector()).store;
    for (point, &((g, d), value)) in &stack.truth.vec_basis {
        let survived = vec.query(*point).is_some_and(|hit| hit.value == value);
        if survived
            && let Some(acted) = stack.truth.acted(point.job, g)
            && acted != d
        {
            steps.insert((point.job, g));
        }
    }
    steps.len() as u64
}

/// Side-effect requests made under a lease that had already moved on, by
/// the lease history in every log that held it (the serving store and any
/// primary lost with its region).
fn stale_actions(stack: &Stack, store: &Store, faults: &[FaultObs]) -> u64 {
    let suspects = &stack.truth.suspect_requests;
    if suspects.is_empty() {
        return 0;
    }
    let tasks: std::collections::BTreeSet<_> = suspects.iter().map(|(o, _)| o.task).collect();
    let mut grants: BTreeMap<crate::components::ids::TaskId, Vec<(u64, Micros)>> = BTreeMap::new();
    let logs = std::iter::once(store.log())
        .chain(faults.iter().filter_map(|f| f.lost_log.as_ref().map(|l| LogSlice::from(&l.log))));
    for log in logs {
        for rec in log {
            if let Op::Lease { task, lease } = rec.op
                && tasks.contains(&task)
            {
                grants.entry(task).or_default().push((lease.token, rec.at_us));
            }
        }
    }
    suspects
        .iter()
        .filter(|(o, at)| {
            grants.get(&o.task).is_some_and(|g| g.iter().any(|&(token, granted)| token > o.token && granted <= *at))
        })
        .count() as u64
}

/// Whether new work was offered at or after `t0`: the harness's probe, or
/// without probes (`[workload] probes = false`, as a live drill) a
/// workload job arriving then. Offered none, an RTO has none to wait for.
pub fn new_work_offered(stack: &Stack, t0: Micros) -> bool {
    stack.probes || stack.jobs.iter().any(|j| j.at_us >= t0)
}

fn fault_result(
    stack: &Stack,
    store: &Store,
    progress: &Progress,
    (f, faults): (&FaultObs, &[FaultObs]),
    window_end_us: Micros,
) -> FaultResult {
    let Some(t0) = f.onset_us else {
        return FaultResult {
            kind: f.kind,
            onset_s: None,
            rto_s: Some(0.0),
            rto_parts: RtoParts::default(),
            rpo: RpoSurfaces::default(),
            in_flight_tasks: 0,
            rollback_s: None,
        };
    };
    // In-flight work progresses again, and new work (the first probe or
    // job accepted after onset) completed, in any store: a completion on a
    // store lost later still happened.
    let rto_us = progress.rto_us(t0, &f.in_flight, new_work_offered(stack, t0));
    let parts = rto_parts(stack, t0, window_end_us, rto_us);
    let rpo = rpo(stack, store, f, faults, t0);
    FaultResult {
        kind: f.kind,
        onset_s: Some(us_to_s(t0)),
        rto_s: rto_us.map(us_to_s),
        rto_parts: parts,
        rpo,
        in_flight_tasks: f.in_flight.len(),
        rollback_s: (f.kind == "bad_deploy").then(|| rollback_us(stack, t0)).flatten().map(us_to_s),
    }
}

/// How long the bad deploy at `t0` took to roll back: from the deployed
/// version's first model output until the last good version was live
/// again ([`good_version_live`]). A rollback is judged on outputs: until a
/// model answers a request made under the version (ground truth: the
/// provider's first answer, `Truth::first_output_us`), no health check
/// can tell it is bad, so time with no output under it (no region
/// serving, the only worker held up elsewhere) is not rollback time. With
/// no output under it before the good version is back (a failover to a
/// standby that never ran it), the time runs from the deploy.
fn rollback_us(stack: &Stack, t0: Micros) -> Option<Micros> {
    let live = good_version_live(stack, t0)?;
    let deployed = stack.truth.trace.iter().filter(|e| e.at_us >= t0).find_map(|e| match e.note {
        Note::Deployed { version } => Some(version),
        _ => None,
    });
    let first_output = deployed
        .and_then(|v| stack.truth.first_output_us.get(&v).copied())
        .filter(|&at| at >= t0 && at <= live)
        .unwrap_or(t0);
    Some(live - first_output)
}

/// When the last good prompt version was live again after a bad deploy at
/// `t0`: the automated rollback, or a failover to a standby that never ran
/// the bad version and serves at the end (every lease it grants carries the
/// good version).
fn good_version_live(stack: &Stack, t0: Micros) -> Option<Micros> {
    let trace = &stack.truth.trace;
    let rolled_back =
        trace.iter().filter(|e| e.at_us >= t0 && matches!(e.note, Note::RolledBack { .. })).map(|e| e.at_us);
    let standby = stack.hosts.orch[1];
    let standby_clean = stack.serving_orch() == standby
        && stack.orch(standby).prompt().defect_permille == 0
        && !trace.iter().any(|e| e.host == standby && matches!(e.note, Note::Deployed { .. }));
    let failover = stack.truth.promoted_at.map(|(_, at)| at).filter(|&at| at >= t0 && standby_clean);
    rolled_back.chain(failover).min()
}

fn rto_parts(stack: &Stack, t0: Micros, end: Micros, rto_us: Option<Micros>) -> RtoParts {
    let first = |pred: &dyn Fn(&Note) -> bool| {
        stack.truth.trace.iter().filter(|e| e.at_us >= t0 && e.at_us <= end && pred(&e.note)).map(|e| e.at_us).min()
    };
    let detected =
        first(&|n| matches!(n, Note::FailoverDetected | Note::LeaseExpired { .. } | Note::BreakerOpened { .. }));
    let routed = first(&|n| matches!(n, Note::RoutingEffective));
    let scaled = first(&|n| matches!(n, Note::ScaledUp));
    let serving = first(&|n| matches!(n, Note::Serving));
    let mut p = RtoParts::default();
    let mut mark = t0;
    let mut take = |at: Option<Micros>| -> f64 {
        match at {
            Some(at) if at >= mark => {
                let d = at - mark;
                mark = at;
                us_to_s(d)
            }
            _ => 0.0,
        }
    };
    p.detection_s = take(detected);
    p.routing_s = take(routed);
    p.scale_up_s = take(scaled);
    p.hydration_s = take(serving);
    if let Some(rto) = rto_us {
        p.resume_s = us_to_s((t0 + rto).saturating_sub(mark));
    }
    p
}

fn rpo(stack: &Stack, store: &Store, f: &FaultObs, faults: &[FaultObs], t0: Micros) -> RpoSurfaces {
    let mut r = RpoSurfaces::default();
    let age = |at: Micros| us_to_s(t0.saturating_sub(at));
    // A write acknowledged before a promotion that came before this fault
    // (a false failover away from a primary still alive) was lost at that
    // promotion, when the standby took over without it: it is aged then,
    // not at this fault's onset (seed 903 case 31092).
    let promoted_before_us = stack.truth.promoted_at.map(|(_, at)| at).filter(|&at| at < t0);
    let age_at_loss = |at: Micros| {
        let lost_us = promoted_before_us.filter(|&p| at <= p).unwrap_or(t0);
        us_to_s(lost_us.saturating_sub(at))
    };
    if let Some(lost) = &f.lost_log
        && !failed_away_before(faults, lost.host, promoted_before_us)
    {
        // Structured state: acknowledged records of the lost primary that
        // the serving store does not hold (the same record at the same
        // LSN). A primary that came back with its store and serves again
        // lost nothing; a promoted standby lacks what it never received.
        let serving = store.log();
        let survived = |rec: &LogRec| rec.lsn >= 1 && serving.get((rec.lsn - 1) as usize) == Some(*rec);
        let acked = |r: &LogRec| r.lsn <= lost.acked_upto && r.at_us <= t0;
        let log = LogSlice::from(&lost.log);
        let lost_ages = log.iter().filter(|r| acked(r) && !survived(r)).map(|r| age_at_loss(r.at_us));
        if let Some(oldest_s) = lost_ages.reduce(f64::max) {
            r.structured_state_s = oldest_s;
        }
        // Queue: jobs the client was told were accepted that the lost
        // primary held (acknowledged, by the onset) and the serving store
        // does not know afterwards.
        if let Some(oldest_s) = lost_jobs(stack, store, log, acked, t0, age_at_loss) {
            r.queue_s = oldest_s;
        }
    }
    if let Some((structured_s, queue_s)) = split_loss(stack, store, f, faults) {
        r.structured_state_s = r.structured_state_s.max(structured_s);
        r.queue_s = r.queue_s.max(queue_s);
    }
    if let Some(oldest) = f.lost_messages.iter().map(|&(_, at)| at).filter(|&at| at <= t0).min() {
        r.queue_s = r.queue_s.max(age(oldest));
    }
    // Vector memory: judged at the restore that resolves the fault (see
    // `judge_vector`), or at the horizon when none came.
    if loses_vector_memory(f.kind) {
        let lost = match f.vector_lost {
            Some(judged) => judged,
            // A cut or a lossy link loses vector memory only through the
            // failover it causes, judged at that failover's hydration.
            None if matches!(f.kind, "partition" | "link_degradation") => None,
            None => oldest_ack(stack, &vector_lost_points(stack, f, &vector_missing(stack), faults)),
        };
        if let Some(at) = lost {
            r.vector_memory_s = age(at);
        }
    }
    r
}

/// The age (by `age`) of the oldest job the client was told was accepted
/// by `cut_us` that `log` created in a record `acked` holds for
/// acknowledged, and that the serving store does not know. A job an
/// earlier loss had already taken (never in this log) is that loss's.
/// One pass over the log (not one per job: a million accepted jobs against
/// a log of millions ran for hours).
fn lost_jobs(
    stack: &Stack,
    store: &Store,
    log: LogSlice<'_>,
    acked: impl Fn(&LogRec) -> bool,
    cut_us: Micros,
    age: impl Fn(Micros) -> f64,
) -> Option<f64> {
    let mut held_jobs = vec![false; stack.truth.accepted_us.len()];
    for r in log.iter().filter(|r| acked(r)) {
        if let Op::Create { job, .. } = r.op
            && let Some(held) = held_jobs.get_mut(job.0 as usize)
        {
            *held = true;
        }
    }
    stack
        .truth
        .accepted_us
        .iter()
        .enumerate()
        .filter(|&(j, at)| held_jobs[j] && at.is_some_and(|a| a <= cut_us))
        .filter(|(j, _)| store.task_for_job(JobId(*j as u32)).is_none())
        .filter_map(|(_, at)| at.map(&age))
        .reduce(f64::max)
}

/// Whether `host`, whose log a loss took, had already been failed away
/// from by a false failover before it (a promotion before `promoted_before_us`
/// is set): what it held that the promoted standby lacks was lost then, and
/// is that failover's fault's loss ([`split_loss`]), not counted again.
fn failed_away_before(
    faults: &[FaultObs],
    host: crate::components::ids::HostId,
    promoted_before_us: Option<Micros>,
) -> bool {
    promoted_before_us.is_some() && faults.iter().any(|g| g.failed_away == Some(host))
}

/// A false failover's loss ([`FaultObs::failed_away`]): the records the
/// primary failed away from acknowledged past the LSN the standby held at
/// its promotion (the promoted standby never received them), as
/// (structured state, queue) RPO in seconds.
///
/// When such a write was lost: the old primary kept acknowledging writes
/// after the promotion until it stood down (the controller's `Demote`
/// arrived, or it self-fenced): a split window. Every lost write is aged at
/// the end of its lineage, the later of the promotion and the last write
/// lost, as a region loss ages its writes at the onset, the moment its
/// primary stopped acknowledging. So the RPO is the span of acknowledged
/// writes lost: the replication lag at the promotion plus the split window
/// (seed 880103 case 123899).
fn split_loss(stack: &Stack, store: &Store, f: &FaultObs, faults: &[FaultObs]) -> Option<(f64, f64)> {
    let (log, kept_lsn) = split_log(stack, faults, f)?;
    let (_, promoted_us) = stack.truth.promoted_at?;
    let (oldest_us, newest_us) =
        split_lost(log, kept_lsn).fold((Micros::MAX, 0), |(lo, hi), r| (lo.min(r.at_us), hi.max(r.at_us)));
    if oldest_us == Micros::MAX {
        return Some((0.0, 0.0));
    }
    let end_us = newest_us.max(promoted_us);
    let age = |at: Micros| us_to_s(end_us.saturating_sub(at));
    let acked = |r: &LogRec| lost_in_split(r, kept_lsn);
    let queue_s = lost_jobs(stack, store, log, acked, Micros::MAX, age).unwrap_or(0.0);
    Some((age(oldest_us), queue_s))
}

/// For a false failover's fault ([`FaultObs::failed_away`]) while another
/// orchestrator serves at the end: the log of the primary failed away
/// from, and the LSN the standby held at its promotion.
pub fn split_log<'a>(stack: &'a Stack, faults: &'a [FaultObs], f: &FaultObs) -> Option<(LogSlice<'a>, u64)> {
    let away = f.failed_away?;
    let (kept_lsn, _) = stack.truth.promoted_at?;
    (stack.serving_orch() != away).then(|| (log_of(stack, faults, away), kept_lsn))
}

/// The acknowledged records of a false failover's old primary `log` past
/// the LSN the standby held at its promotion ([`split_log`]): the promoted
/// standby never received them. The recovery service's requeues answer
/// nobody and are no acknowledged write.
pub fn split_lost(log: LogSlice<'_>, kept_lsn: u64) -> impl Iterator<Item = LogRec> + '_ {
    let start = usize::try_from(kept_lsn).unwrap_or(usize::MAX);
    log.range(start, log.len()).filter(move |r| lost_in_split(r, kept_lsn))
}

/// Whether record `r` of a false failover's old primary is one the
/// promoted standby (holding `kept_lsn`) lacks and someone was told of.
fn lost_in_split(r: &LogRec, kept_lsn: u64) -> bool {
    r.lsn > kept_lsn && r.op.is_acknowledged()
}

/// The log orchestrator `host` holds at the end, or, when a permanent loss
/// of its region took its storage, the log it held then.
fn log_of<'a>(stack: &'a Stack, faults: &'a [FaultObs], host: crate::components::ids::HostId) -> LogSlice<'a> {
    let own = stack.orch(host).store().log();
    if !own.is_empty() {
        return own;
    }
    let taken = faults.iter().find_map(|f| match (&f.lost_log, &f.wiped_log) {
        (Some(l), _) if l.host == host => Some(LogSlice::from(&l.log)),
        (_, Some((h, l))) if *h == host => Some(LogSlice::from(l)),
        _ => None,
    });
    taken.unwrap_or(own)
}

/// Acknowledged vector points the serving vector store lacks or holds
/// corrupted right now.
pub fn vector_missing(stack: &Stack) -> FxHashSet<PointId> {
    let vec = &stack.vector(stack.serving_vector()).store;
    stack.truth.vec_acks.keys().filter(|p| vec.query(**p).is_none_or(|hit| hit.corrupted)).copied().collect()
}

/// The points lost by `f`: acknowledged by its onset, present then, and in
/// `missing` now. Two kinds of point are another fault's: one the serving
/// store holds corrupted that a corruption struck (that corruption's
/// damage, judged at its own restore: a corruption of the promoted store
/// before it serves is no loss of the failover), and one already counted
/// by a fault judged at an earlier restore (a corruption's restore to an
/// old snapshot is not a loss of a region that came back meanwhile).
fn vector_lost_points(stack: &Stack, f: &FaultObs, missing: &FxHashSet<PointId>, all: &[FaultObs]) -> Vec<PointId> {
    let Some(t0) = f.onset_us else { return Vec::new() };
    let vec = &stack.vector(stack.serving_vector()).store;
    let others = || all.iter().filter(|g| !std::ptr::eq(*g, f));
    let corrupted_by_another = |p: &PointId| {
        vec.query(*p).is_some_and(|hit| hit.corrupted) && others().any(|g| g.vector_corrupted.contains(p))
    };
    let counted = |p: &PointId| others().any(|g| g.vector_lost_points.contains(p));
    let mut lost: Vec<PointId> = missing
        .iter()
        .filter(|p| !f.vector_missing_at_onset.contains(*p) && !corrupted_by_another(p) && !counted(p))
        .filter(|p| stack.truth.vec_acks.get(*p).is_some_and(|&at| at <= t0))
        .copied()
        .collect();
    lost.sort_unstable();
    lost
}

/// The acknowledgement time of the oldest of `points`.
fn oldest_ack(stack: &Stack, points: &[PointId]) -> Option<Micros> {
    points.iter().filter_map(|p| stack.truth.vec_acks.get(p).copied()).min()
}

/// At a fault's onset: remembers what vector memory had already lost (an
/// earlier fault's loss is not this fault's).
pub fn vector_onset(stack: &Stack, faults: &mut [FaultObs], i: usize) {
    if loses_vector_memory(faults[i].kind) {
        faults[i].vector_missing_at_onset = vector_missing(stack);
    }
}

/// Right after a vector corruption struck: records the points it
/// corrupted (from the store's contents, against those at its onset).
pub fn vector_corrupted(stack: &Stack, faults: &mut [FaultObs], i: usize) {
    let before = &faults[i].vector_missing_at_onset;
    let vec = &stack.vector(stack.serving_vector()).store;
    let struck: FxHashSet<PointId> = vec
        .points_iter()
        .filter(|(p, s)| s.corrupted && !before.contains(p) && stack.truth.vec_acks.contains_key(p))
        .map(|(p, _)| p)
        .collect();
    faults[i].vector_corrupted = struck;
}

/// The fault kinds whose vector-memory loss is measured: a region loss, a
/// corruption, and a cut or lossy link (a false failover onto a standby
/// that lacks what the old primary's store took since its last shipped
/// snapshot loses those points).
fn loses_vector_memory(kind: &str) -> bool {
    kind == "vector_corruption" || failover_kind(kind)
}

/// The fault kinds that can make the controller fail over (its health
/// checks of the primary fail): the standby's hydration resolves them.
fn failover_kind(kind: &str) -> bool {
    matches!(kind, "region_loss" | "partition" | "link_degradation")
}

/// Which restore just finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restore {
    /// The standby's vector store was hydrated and the standby region
    /// serves: resolves the faults that failed over.
    Hydration,
    /// A point-in-time restore after an integrity check found corruption.
    PointInTime,
}

/// At a restore: judges the struck faults it resolves, not judged yet. A
/// hydration resolves the faults that can fail over; any restore after
/// which the serving store serves and holds no corrupted point resolves
/// the pending corruptions (a corruption is judged at its own
/// point-in-time restore, not at a failover that hydrated the corrupted
/// copy). A store traffic was routed to that has not finished hydrating
/// holds no corruption only because it holds nothing yet: a corruption
/// whose restore finishes then waits for that hydration. Points lost here
/// and re-written later by replays were still lost.
pub fn judge_vector(stack: &Stack, faults: &mut [FaultObs], restore: Restore) {
    let serving = stack.vector(stack.serving_vector());
    let clean = serving.serving && serving.store.corrupted_count() == 0;
    let resolves = |f: &FaultObs| {
        f.onset_us.is_some()
            && f.vector_lost.is_none()
            && loses_vector_memory(f.kind)
            && if f.kind == "vector_corruption" { clean } else { restore == Restore::Hydration }
    };
    let judged: Vec<usize> = (0..faults.len()).filter(|&i| resolves(&faults[i])).collect();
    if judged.is_empty() {
        return;
    }
    let missing = vector_missing(stack);
    let lost: Vec<Vec<PointId>> =
        judged.iter().map(|&i| vector_lost_points(stack, &faults[i], &missing, faults)).collect();
    for (i, points) in judged.into_iter().zip(lost) {
        faults[i].vector_lost = Some(oldest_ack(stack, &points));
        faults[i].vector_lost_points = points.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::components::ids::TaskId;

    use super::*;
    use crate::sim::stack::Node;

    fn vector_mut(stack: &mut Stack, h: crate::components::ids::HostId) -> &mut crate::sim::stack::VectorNode {
        match &mut stack.nodes[h.0 as usize] {
            Node::Vector(v) => v,
            _ => panic!("not a vector host"),
        }
    }

    #[test]
    fn rto_waits_for_every_in_flight_task_and_for_new_work() {
        assert_eq!(rto_us(100, [Some(150), Some(130)], Some(140)), Some(50));
        assert_eq!(rto_us(100, [Some(150)], Some(190)), Some(90));
        assert_eq!(rto_us(100, [], Some(120)), Some(20), "nothing in flight: new work alone");
        assert_eq!(rto_us(100, [Some(150), None], Some(120)), None, "an in-flight task never progressed");
        assert_eq!(rto_us(100, [Some(150)], None), None, "no new work completed");
    }

    /// A one-step task's creation record.
    fn create(task: u64, job: u32) -> Op {
        Op::Create { task: TaskId(task), job: JobId(job), template: 0, steps: 1, probe: false, replay: false }
    }

    /// The live drill's path: the in-flight set from a log replayed up to
    /// the onset, progress from the same log. A job only queued at the
    /// onset (created, never leased) does not hold the RTO back.
    #[test]
    fn a_log_gives_the_tasks_leased_at_the_onset_and_their_progress() {
        use crate::components::ids::HostId;
        use crate::components::store::Lease;
        let lease = |task: u64| Op::Lease {
            task: TaskId(task),
            lease: Lease { holder: HostId(100), token: 1, expires_us: 1_000 },
        };
        let ops = [
            (10, create(0, 0)),
            (20, lease(0)),
            (30, create(1, 1)),
            (45, create(2, 2)),
            (50, lease(2)),
            (60, Op::Result { task: TaskId(0), ordinal: 0, decision: 0, reconciled: false, corrupt: false }),
            (80, Op::Complete { task: TaskId(2) }),
            (90, Op::Complete { task: TaskId(0) }),
            (95, lease(1)),
            (200, Op::Complete { task: TaskId(1) }),
        ];
        let log: Vec<LogRec> =
            ops.into_iter().enumerate().map(|(i, (at_us, op))| LogRec { lsn: i as u64 + 1, at_us, op }).collect();
        let in_flight = leased_jobs_at(&log, 40);
        assert_eq!(in_flight, vec![JobId(0)], "job 1 was queued, job 2 not yet created");
        let progress = Progress::of(&[LogSlice::from(&log)]);
        assert_eq!(progress.after(JobId(0), 40), Some(60));
        assert_eq!(progress.new_work_done(40), Some(80));
        assert_eq!(
            progress.rto_us(40, &in_flight, true),
            Some(40),
            "the queued job's completion at 200 is not waited for"
        );
        // Nothing created after 100: new work offered then never completed;
        // none offered (no probes, no later job), none to wait for.
        assert_eq!(progress.rto_us(100, &[], true), None);
        assert_eq!(progress.rto_us(100, &[], false), Some(0));
    }

    /// `Progress::after` answers as the minimum over each job's progress
    /// times after `t0`, across logs (task ids mapped per log).
    #[test]
    fn progress_after_is_the_first_progress_after_the_onset_in_any_log() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
        let mut logs: Vec<Vec<LogRec>> = Vec::new();
        let mut model: Vec<(JobId, Micros)> = Vec::new();
        for l in 0..2u64 {
            let mut ops: Vec<(Micros, Op)> = (0..8).map(|t| (0, create(t + l, (t % 5) as u32))).collect();
            for _ in 0..60 {
                let (task, at_us) = (rng.random_range(0..8u64) + l, rng.random_range(1..500u64));
                ops.push((at_us, Op::Complete { task: TaskId(task) }));
                model.push((JobId(((task - l) % 5) as u32), at_us));
            }
            logs.push(
                ops.into_iter().enumerate().map(|(i, (at_us, op))| LogRec { lsn: i as u64 + 1, at_us, op }).collect(),
            );
        }
        let slices: Vec<LogSlice<'_>> = logs.iter().map(LogSlice::from).collect();
        let progress = Progress::of(&slices);
        for job in (0..6).map(JobId) {
            for t0 in [0, 1, 100, 250, 499, 500] {
                let want = model.iter().filter(|&&(j, at)| j == job && at > t0).map(|&(_, at)| at).min();
                assert_eq!(progress.after(job, t0), want, "{job:?} after {t0}");
            }
        }
    }

    /// Seed 16 case 49941: the corrupted store's point-in-time restore
    /// finished just after traffic was routed to the standby's store, which
    /// was still hydrating (empty). A corruption waits for a serving store:
    /// judged then, it would count every point as lost.
    #[test]
    fn a_corruption_is_not_judged_against_a_store_still_hydrating() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/regressions/reference-corruption-restored-as-traffic-moves-to-a-hydrating-store.toml");
        let sc = crate::drill::scenario::load(&path).expect("scenario");
        let mut stack = Stack::build(&sc, 1);
        let [a, b] = stack.hosts.vec;
        let p = PointId { job: JobId(0), step: 4 };
        stack.truth.vec_acks.insert(p, 10);
        vector_mut(&mut stack, a).store.upsert(10, p, 1);
        vector_mut(&mut stack, b).serving = false;
        stack.dns.vector.switch(900, b);
        let mut faults = [FaultObs { kind: "vector_corruption", onset_us: Some(800), ..FaultObs::default() }];
        judge_vector(&stack, &mut faults, Restore::PointInTime);
        assert_eq!(faults[0].vector_lost, None, "not judged while the serving store hydrates");
        let hydrated = vector_mut(&mut stack, b);
        hydrated.store.upsert(950, p, 1);
        hydrated.serving = true;
        judge_vector(&stack, &mut faults, Restore::Hydration);
        assert_eq!(faults[0].vector_lost, Some(None), "judged at the hydration: nothing lost");
    }
}
