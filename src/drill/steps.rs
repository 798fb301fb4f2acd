//! The event log a reader can check: for each job a fault touched, its step
//! events in time order (leased, started, completed, failed, resumed from
//! checkpoint, reconciled by key, re-issued, finished), read from ground
//! truth: every store's log (the serving store, the other orchestrator's,
//! a primary lost with its region) and the workers' own notes.

use std::collections::BTreeSet;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::components::env::Note;
use crate::components::ids::{HostId, JobId, Micros, TaskId, us_to_s};
use crate::components::store::{LogSlice, Op};
use crate::drill::measure::{FaultObs, all_logs};
use crate::sim::stack::Stack;

/// Jobs listed at most per drill (the rest are counted in `more_jobs`).
pub const MAX_JOBS: usize = 12;
/// Events listed at most per job (the rest are counted in `more_events`).
pub const MAX_EVENTS_PER_JOB: usize = 64;

/// What happened to a job or one of its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepEventKind {
    /// A worker took the task's lease (a new fencing token).
    Leased,
    /// The step's checkpoint was written: the step started.
    Started,
    /// The step's result was persisted.
    Completed,
    /// The step's result was adopted from the API after a lookup by key.
    Adopted,
    /// The step failed for good.
    Failed,
    /// The lease expired; the recovery service requeued the task.
    LeaseExpired,
    /// A worker dropped the task: its lease had moved on.
    Dropped,
    /// A worker resumed the task from its last checkpoint at this step.
    ResumedFromCheckpoint,
    /// A step of unknown status was looked up by its idempotency key and
    /// found: its effect was adopted, not repeated.
    ReconciledByKey,
    /// Looked up by key and not found: sent again with the same key.
    NotFoundByKey,
    /// Sent again without asking the API first.
    Reissued,
    /// The decision was lost and re-derived by a new model call.
    Rederived,
    /// The job finished.
    Finished,
}

impl StepEventKind {
    /// Words for reports.
    pub fn words(self) -> &'static str {
        match self {
            StepEventKind::Leased => "leased",
            StepEventKind::Started => "started (checkpoint written)",
            StepEventKind::Completed => "completed (result persisted)",
            StepEventKind::Adopted => "completed (result adopted from the API)",
            StepEventKind::Failed => "failed",
            StepEventKind::LeaseExpired => "lease expired; the recovery service requeued the job",
            StepEventKind::Dropped => "dropped (lease moved on)",
            StepEventKind::ResumedFromCheckpoint => "resumed from checkpoint",
            StepEventKind::ReconciledByKey => "reconciled by key: found, adopted",
            StepEventKind::NotFoundByKey => "looked up by key: not found, re-issued with the same key",
            StepEventKind::Reissued => "re-issued WITHOUT asking the API",
            StepEventKind::Rederived => "decision lost, re-derived",
            StepEventKind::Finished => "job finished",
        }
    }
}

/// One step event.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StepEvent {
    /// When, seconds from the drill's start.
    pub at_s: f64,
    /// The host that acted (the lease holder for store records).
    pub host: String,
    /// What happened.
    pub event: StepEventKind,
    /// The step ordinal (0-based), when the event is about a step.
    pub step: Option<u16>,
    /// The step's name in its template.
    pub step_name: Option<&'static str>,
}

/// One affected job's events.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JobSteps {
    /// The job.
    pub job: u32,
    /// Its template.
    pub template: &'static str,
    /// Events in time order.
    pub events: Vec<StepEvent>,
    /// Events beyond `MAX_EVENTS_PER_JOB`, not listed.
    pub more_events: usize,
}

/// The step events of the jobs the faults touched.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StepLog {
    /// Jobs in flight at a fault's onset or named by a recovery note
    /// (resumed, reconciled, re-issued, re-derived, lease expired, dropped),
    /// lowest job first.
    pub jobs: Vec<JobSteps>,
    /// Affected jobs beyond `MAX_JOBS`, not listed.
    pub more_jobs: usize,
}

/// The step events of the affected workload jobs.
pub fn step_log(stack: &Stack, faults: &[FaultObs]) -> StepLog {
    let affected = affected_jobs(stack, faults);
    if affected.is_empty() {
        // No job to list (a drill without faults or recovery notes): the
        // logs need not be read at all.
        return StepLog::default();
    }
    let listed: FxHashSet<JobId> = affected.iter().take(MAX_JOBS).copied().collect();
    let mut raw: Vec<(Micros, JobId, HostId, StepEventKind, Option<u16>)> = Vec::new();
    from_logs(&all_logs(stack, faults), &listed, &mut raw);
    from_notes(stack, &listed, &mut raw);
    // Stable: store records before notes at the same instant.
    raw.sort_by_key(|e| e.0);
    let mut by_job: FxHashMap<JobId, JobSteps> = FxHashMap::default();
    for (at_us, job, host, event, step) in raw {
        let tpl = &stack.templates[stack.jobs[job.0 as usize].template as usize];
        let entry = by_job.entry(job).or_insert_with(|| JobSteps {
            job: job.0,
            template: tpl.name,
            events: Vec::new(),
            more_events: 0,
        });
        if entry.events.len() >= MAX_EVENTS_PER_JOB {
            entry.more_events += 1;
            continue;
        }
        let host = stack.rt.hosts().get(host.0 as usize).map_or_else(|| "?".to_owned(), |h| h.name.clone());
        let step_name = step.and_then(|s| tpl.steps.get(s as usize)).map(|s| s.name());
        entry.events.push(StepEvent { at_s: us_to_s(at_us), host, event, step, step_name });
    }
    let mut jobs: Vec<JobSteps> = by_job.into_values().collect();
    jobs.sort_by_key(|j| j.job);
    StepLog { jobs, more_jobs: affected.len().saturating_sub(MAX_JOBS) }
}

/// Workload jobs in flight at an onset or named by a recovery note.
fn affected_jobs(stack: &Stack, faults: &[FaultObs]) -> BTreeSet<JobId> {
    let mut jobs: BTreeSet<JobId> = faults.iter().flat_map(|f| f.in_flight.iter().copied()).collect();
    for e in &stack.truth.trace {
        if let Some((job, _, _)) = note_event(&e.note) {
            jobs.insert(job);
        }
    }
    jobs.retain(|j| j.0 < stack.workload_jobs);
    jobs
}

/// A job's event in a note, if the note is one.
fn note_event(note: &Note) -> Option<(JobId, StepEventKind, Option<u16>)> {
    Some(match *note {
        Note::LeaseExpired { job, .. } => (job, StepEventKind::LeaseExpired, None),
        Note::Abandoned { job } => (job, StepEventKind::Dropped, None),
        Note::Resumed { job, step } => (job, StepEventKind::ResumedFromCheckpoint, Some(step)),
        Note::Reconciled { job, step, found: true } => (job, StepEventKind::ReconciledByKey, Some(step)),
        Note::Reconciled { job, step, found: false } => (job, StepEventKind::NotFoundByKey, Some(step)),
        Note::Reissued { job, step } => (job, StepEventKind::Reissued, Some(step)),
        Note::Rederived { job, step } => (job, StepEventKind::Rederived, Some(step)),
        _ => return None,
    })
}

fn from_notes(
    stack: &Stack,
    listed: &FxHashSet<JobId>,
    raw: &mut Vec<(Micros, JobId, HostId, StepEventKind, Option<u16>)>,
) {
    for e in &stack.truth.trace {
        // Lease expiries come from the log's requeue records (in order
        // with the next lease, committed at the same instant).
        if let Some((job, kind, step)) = note_event(&e.note)
            && kind != StepEventKind::LeaseExpired
            && listed.contains(&job)
        {
            raw.push((e.at_us, job, e.host, kind, step));
        }
    }
}

/// Events from every log; a record replicated to several stores is one
/// event (same LSN, time and op).
fn from_logs(
    logs: &[LogSlice<'_>],
    listed: &FxHashSet<JobId>,
    raw: &mut Vec<(Micros, JobId, HostId, StepEventKind, Option<u16>)>,
) {
    let mut seen: FxHashSet<(u64, Micros, u64, u16, u8)> = FxHashSet::default();
    for log in logs {
        // Task ids are per store: map them (and their lease holders) per log.
        let mut tasks: FxHashMap<TaskId, (JobId, HostId)> = FxHashMap::default();
        for rec in log.iter() {
            if let Op::Create { task, job, .. } = rec.op {
                tasks.insert(task, (job, HostId(u32::MAX)));
                continue;
            }
            let task = rec.op.task();
            let Some(slot) = tasks.get_mut(&task) else { continue };
            let (kind, step) = match rec.op {
                Op::Lease { lease, .. } => {
                    slot.1 = lease.holder;
                    (StepEventKind::Leased, None)
                }
                Op::Intent { ordinal, .. } => (StepEventKind::Started, Some(ordinal)),
                Op::Result { ordinal, reconciled: false, .. } => (StepEventKind::Completed, Some(ordinal)),
                Op::Result { ordinal, reconciled: true, .. } => (StepEventKind::Adopted, Some(ordinal)),
                Op::Fail { ordinal, .. } => (StepEventKind::Failed, Some(ordinal)),
                Op::Complete { .. } => (StepEventKind::Finished, None),
                // Listed with the holder whose lease ran out.
                Op::Requeue { .. } => (StepEventKind::LeaseExpired, None),
                Op::Create { .. } | Op::Renew { .. } => continue,
            };
            let (job, holder) = *slot;
            if !listed.contains(&job)
                || !seen.insert((rec.lsn, rec.at_us, task.0, step.unwrap_or(u16::MAX), kind as u8))
            {
                continue;
            }
            raw.push((rec.at_us, job, holder, kind, step));
        }
    }
}

impl StepEvent {
    /// The event in words: "step 1 summarise: resumed from checkpoint".
    pub fn describe(&self) -> String {
        match (self.step, self.step_name) {
            (Some(s), Some(n)) => format!("step {s} {n}: {}", self.event.words()),
            (Some(s), None) => format!("step {s}: {}", self.event.words()),
            _ => self.event.words().to_owned(),
        }
    }
}
