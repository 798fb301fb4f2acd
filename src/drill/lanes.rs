//! Job lanes for the timeline plot: for each job a fault touched, when it
//! started, when its worker was killed, when its lease expired, when it was
//! resumed or reconciled, and when it finished. Read after the run from the
//! serving store's log (what the stack durably recorded) and the harness's
//! timeline notes; it measures nothing a verdict depends on.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::components::env::Note;
use crate::components::ids::{HostId, JobId, TaskId, us_to_s};
use crate::components::store::{LogSlice, Op, TaskJobs};
use crate::drill::measure::FaultObs;
use crate::sim::stack::TraceEvent;

/// At most this many lanes are drawn (the rest are counted).
pub const MAX_LANES: usize = 12;

/// What happened to a job at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LaneEvent {
    /// The orchestrator created its task.
    Started,
    /// The worker holding it crashed.
    Killed,
    /// The recovery service found its lease expired.
    LeaseExpired,
    /// A worker resumed it from its checkpoint.
    Resumed,
    /// A step of unknown status was reconciled by asking the API.
    Reconciled,
    /// A step of unknown status was re-issued without asking the API.
    Reissued,
    /// It finished.
    Done,
    /// It failed permanently.
    Failed,
}

impl LaneEvent {
    /// The word drawn beside the mark.
    pub fn word(self) -> &'static str {
        match self {
            LaneEvent::Started => "started",
            LaneEvent::Killed => "killed",
            LaneEvent::LeaseExpired => "lease expired",
            LaneEvent::Resumed => "resumed",
            LaneEvent::Reconciled => "reconciled",
            LaneEvent::Reissued => "re-issued",
            LaneEvent::Done => "done",
            LaneEvent::Failed => "failed",
        }
    }
}

/// One job's lane.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobLane {
    /// The client's job number.
    pub job: u32,
    /// Its events in time order: (simulated seconds, what).
    pub events: Vec<(f64, LaneEvent)>,
}

/// The lanes of the jobs a fault touched (in flight at an onset, or named
/// by a recovery note), at most [`MAX_LANES`], and how many more there were.
pub fn lanes(log: LogSlice<'_>, trace: &[TraceEvent], faults: &[FaultObs]) -> (Vec<JobLane>, usize) {
    if faults.iter().all(|f| f.in_flight.is_empty()) && !trace.iter().any(|e| touch(&e.note).is_some()) {
        return (Vec::new(), 0); // no job was touched: skip the log scans
    }
    let mut affected: BTreeMap<u32, Vec<(f64, LaneEvent)>> = BTreeMap::new();
    for f in faults {
        for j in &f.in_flight {
            affected.entry(j.0).or_default();
        }
    }
    let mut job_of = TaskJobs::new();
    let mut probes: Vec<TaskId> = Vec::new();
    for r in log {
        if let Op::Create { task, job, probe, .. } = r.op {
            job_of.insert(task, job);
            if probe {
                probes.push(task);
            }
        }
    }
    // Only a crash note asks who held what.
    let crashed = trace.iter().any(|e| matches!(e.note, Note::Crashed { .. }));
    let holders = if crashed { holders(log) } else { Vec::new() };
    for e in trace {
        let t = us_to_s(e.at_us);
        let (job, what) = match touch(&e.note) {
            Some(Touch::Job(job, what)) => (job, what),
            Some(Touch::Crash(host)) => {
                for task in held_at(&holders, host, e.at_us) {
                    if let Some(j) = job_of.get(&task).filter(|_| !probes.contains(&task)) {
                        affected.entry(j.0).or_default().push((t, LaneEvent::Killed));
                    }
                }
                continue;
            }
            None => continue,
        };
        affected.entry(job.0).or_default().push((t, what));
    }
    for r in log {
        let what = match r.op {
            Op::Create { probe: false, .. } => LaneEvent::Started,
            Op::Complete { .. } => LaneEvent::Done,
            Op::Fail { .. } => LaneEvent::Failed,
            _ => continue,
        };
        if let Some(j) = job_of.get(&r.op.task())
            && let Some(events) = affected.get_mut(&j.0)
        {
            events.push((us_to_s(r.at_us), what));
        }
    }
    let total = affected.len();
    let out: Vec<JobLane> = affected
        .into_iter()
        .take(MAX_LANES)
        .map(|(job, mut events)| {
            events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            events.dedup();
            JobLane { job, events }
        })
        .collect();
    let more = total - out.len();
    (out, more)
}

/// What a timeline note says about the jobs' lanes.
enum Touch {
    /// An event in one job's lane.
    Job(JobId, LaneEvent),
    /// A host crashed: the jobs it held were killed.
    Crash(HostId),
}

/// The lane event a note makes, if any (the one list of them: [`lanes`]
/// skips its log scans when no note makes one and no fault caught a job in
/// flight).
fn touch(note: &Note) -> Option<Touch> {
    Some(match *note {
        Note::LeaseExpired { job, .. } => Touch::Job(job, LaneEvent::LeaseExpired),
        Note::Resumed { job, .. } => Touch::Job(job, LaneEvent::Resumed),
        Note::Reconciled { job, .. } => Touch::Job(job, LaneEvent::Reconciled),
        Note::Reissued { job, .. } => Touch::Job(job, LaneEvent::Reissued),
        Note::Crashed { host } => Touch::Crash(host),
        _ => return None,
    })
}

/// Every lease in the log: (task, holder, from, until the next lease of the
/// task or its end).
/// A task has at most one open lease (each new lease closes the one before),
/// found through `open` (task → its index in the list) in O(1): scanning the
/// list back for it made a million-task run quadratic.
fn holders(log: LogSlice<'_>) -> Vec<(TaskId, HostId, u64, u64)> {
    let mut out: Vec<(TaskId, HostId, u64, u64)> = Vec::new();
    let mut open: FxHashMap<TaskId, usize> = FxHashMap::default();
    for r in log {
        match r.op {
            Op::Lease { task, lease } => {
                close(&mut out, &mut open, task, r.at_us);
                out.push((task, lease.holder, r.at_us, u64::MAX));
                open.insert(task, out.len() - 1);
            }
            Op::Complete { task } | Op::Fail { task, .. } | Op::Requeue { task } => {
                close(&mut out, &mut open, task, r.at_us);
            }
            _ => {}
        }
    }
    out
}

/// Ends the task's open lease, if any, at `at_us`.
fn close(leases: &mut [(TaskId, HostId, u64, u64)], open: &mut FxHashMap<TaskId, usize>, task: TaskId, at_us: u64) {
    if let Some(i) = open.remove(&task) {
        assert!(leases[i].0 == task && leases[i].3 == u64::MAX, "an open lease of the task");
        leases[i].3 = at_us;
    }
}

/// The tasks `host` held a lease on at `at_us`.
fn held_at(leases: &[(TaskId, HostId, u64, u64)], host: HostId, at_us: u64) -> Vec<TaskId> {
    leases.iter().filter(|l| l.1 == host && l.2 <= at_us && at_us < l.3).map(|l| l.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::ids::JobId;
    use crate::components::store::{Lease, LogRec};

    fn rec(lsn: u64, at_s: u64, op: Op) -> LogRec {
        LogRec { lsn, at_us: at_s * 1_000_000, op }
    }

    #[test]
    fn a_killed_job_has_its_lane_in_order() {
        let task = TaskId(9);
        let create = Op::Create { task, job: JobId(3), template: 0, steps: 2, probe: false, replay: false };
        let lease = |holder, token| Op::Lease { task, lease: Lease { holder: HostId(holder), token, expires_us: 0 } };
        let log =
            [rec(1, 1, create), rec(2, 2, lease(5, 1)), rec(3, 40, lease(6, 2)), rec(4, 50, Op::Complete { task })];
        let trace = [
            TraceEvent { at_us: 10_000_000, host: HostId(5), note: Note::Crashed { host: HostId(5) } },
            TraceEvent { at_us: 35_000_000, host: HostId(1), note: Note::LeaseExpired { task, job: JobId(3) } },
            TraceEvent { at_us: 41_000_000, host: HostId(6), note: Note::Resumed { job: JobId(3), step: 1 } },
        ];
        let (lanes, more) = lanes(log[..].into(), &trace, &[]);
        assert_eq!(more, 0);
        assert_eq!(lanes.len(), 1);
        let words: Vec<&str> = lanes[0].events.iter().map(|e| e.1.word()).collect();
        assert_eq!(words, ["started", "killed", "lease expired", "resumed", "done"]);
    }

    #[test]
    fn untouched_jobs_have_no_lane() {
        let task = TaskId(1);
        let create = Op::Create { task, job: JobId(0), template: 0, steps: 1, probe: false, replay: false };
        let log = [rec(1, 1, create), rec(2, 3, Op::Complete { task })];
        let (lanes, more) = lanes(log[..].into(), &[], &[]);
        assert!(lanes.is_empty());
        assert_eq!(more, 0);
    }
}
