//! The durable structured state: tasks, steps, checkpoints and the event log.
//!
//! The store is a deterministic state machine over [`Op`]s. Every write is
//! an op appended to the log with a log sequence number (LSN) and applied to
//! the task table; a replica that applies the same prefix of the log holds
//! the same state. The log *is* the event log: it records what happened and
//! why (created, leased, checkpoint, result, requeued after lease expiry,
//! reconciled, completed) and is replicated with the rest.
//!
//! Task ids carry the store's timeline in their high bits, so a promoted
//! replica never reissues an id that the lost primary had minted.

use serde::{Deserialize, Serialize};

use crate::components::ids::{HostId, IdemKey, JobId, Micros, TaskId};

/// Decision value meaning "not known durably".
pub const NO_DECISION: u32 = u32::MAX;
const TIMELINE_SHIFT: u32 = 40;
const INDEX_MASK: u64 = (1 << TIMELINE_SHIFT) - 1;

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for a worker.
    Queued,
    /// Held by a worker under a lease.
    Leased,
    /// Finished.
    Done,
    /// Given up (a permanent error such as a 400 idempotency error).
    Failed,
}

/// Durable state of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Nothing recorded.
    Empty,
    /// Checkpointed before the call: the outcome is unknown until a result.
    Intent,
    /// The result is persisted.
    Done,
}

/// One step's durable record: the checkpoint (key, arguments) and result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRec {
    /// State.
    pub state: StepState,
    /// Idempotency key recorded in the checkpoint.
    pub key: IdemKey,
    /// Arguments recorded in the checkpoint.
    pub args: u64,
    /// The model's decision (model steps), or [`NO_DECISION`].
    pub decision: u32,
}

impl StepRec {
    const EMPTY: StepRec =
        StepRec { state: StepState::Empty, key: IdemKey { hi: 0, lo: 0 }, args: 0, decision: NO_DECISION };
}

/// A worker's lease on a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Holder.
    pub holder: HostId,
    /// Fencing token: strictly increases with every new lease of the task.
    pub token: u64,
    /// Expiry (orchestrator's clock).
    pub expires_us: Micros,
}

/// One task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskRec {
    /// Id.
    pub id: TaskId,
    /// The client's job.
    pub job: JobId,
    /// Template index.
    pub template: u16,
    /// Harness probe (not workload).
    pub probe: bool,
    /// Created from a resubmission of a job the client had seen accepted
    /// (its earlier record was lost).
    pub replay: bool,
    /// Status.
    pub status: TaskStatus,
    /// Current or last lease.
    pub lease: Lease,
    /// Next step to run: every step below it has a persisted result.
    pub cursor: u16,
    /// Durable step records.
    pub steps: Box<[StepRec]>,
    /// Created at.
    pub created_us: Micros,
}

/// A write. Applied identically on the primary and its replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A task is created for a job.
    Create {
        /// Task.
        task: TaskId,
        /// Job.
        job: JobId,
        /// Template.
        template: u16,
        /// Number of steps.
        steps: u16,
        /// Harness probe.
        probe: bool,
        /// A resubmission of a job whose record was lost.
        replay: bool,
    },
    /// A worker takes a lease.
    Lease {
        /// Task.
        task: TaskId,
        /// The lease.
        lease: Lease,
    },
    /// The holder renews.
    Renew {
        /// Task.
        task: TaskId,
        /// New expiry.
        expires_us: Micros,
    },
    /// Checkpoint before a tool call.
    Intent {
        /// Task.
        task: TaskId,
        /// Step.
        ordinal: u16,
        /// Key.
        key: IdemKey,
        /// Arguments.
        args: u64,
    },
    /// Result after the call; moves the cursor past the step.
    Result {
        /// Task.
        task: TaskId,
        /// Step.
        ordinal: u16,
        /// Decision (model steps) or [`NO_DECISION`].
        decision: u32,
        /// Whether the step's outcome was adopted by reconciliation.
        reconciled: bool,
        /// The result was built from a malformed tool response.
        corrupt: bool,
    },
    /// The task finished.
    Complete {
        /// Task.
        task: TaskId,
    },
    /// The task failed permanently.
    Fail {
        /// Task.
        task: TaskId,
        /// Step that failed.
        ordinal: u16,
    },
    /// The recovery service requeued a task whose lease expired.
    Requeue {
        /// Task.
        task: TaskId,
    },
}

impl Op {
    /// The task the op is about.
    pub fn task(&self) -> TaskId {
        match *self {
            Op::Create { task, .. }
            | Op::Lease { task, .. }
            | Op::Renew { task, .. }
            | Op::Intent { task, .. }
            | Op::Result { task, .. }
            | Op::Complete { task }
            | Op::Fail { task, .. }
            | Op::Requeue { task } => task,
        }
    }
}

/// An op with its position and commit time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRec {
    /// Log sequence number (1-based).
    pub lsn: u64,
    /// When the write was committed.
    pub at_us: Micros,
    /// The write.
    pub op: Op,
}

/// The store.
#[derive(Clone, Debug, Default)]
pub struct Store {
    timeline: u64,
    promoted_at_us: Option<Micros>,
    tasks: Vec<TaskRec>,
    by_job: Vec<Option<TaskId>>,
    log: Vec<LogRec>,
}

impl Store {
    /// An empty store on timeline 0.
    pub fn new() -> Self {
        Store::default()
    }

    /// Starts a new timeline (on promotion): ids minted from now on cannot
    /// collide with ids a lost primary minted past what was replicated.
    pub fn new_timeline(&mut self, now_us: Micros) {
        self.timeline += 1;
        self.promoted_at_us = Some(now_us);
    }

    /// Whether a task's durable record may be missing progress: it was
    /// resubmitted after being lost, or it predates a promotion of this
    /// store (asynchronous replication may have lost its latest writes).
    pub fn may_be_stale(&self, t: &TaskRec) -> bool {
        t.replay || self.promoted_at_us.is_some_and(|p| t.created_us <= p)
    }

    /// The lowest fencing token a lease granted on this timeline may carry:
    /// above every token an earlier timeline (a lost or cut-off primary)
    /// could have granted, so tokens never go backwards at a promotion.
    pub fn token_floor(&self) -> u64 {
        self.timeline << TIMELINE_SHIFT
    }

    /// The id the next created task gets.
    pub fn next_task_id(&self) -> TaskId {
        TaskId(self.timeline << TIMELINE_SHIFT | self.tasks.len() as u64)
    }

    /// The last LSN, 0 when empty.
    pub fn last_lsn(&self) -> u64 {
        self.log.len() as u64
    }

    /// The whole event log.
    pub fn log(&self) -> &[LogRec] {
        &self.log
    }

    /// All tasks.
    pub fn tasks(&self) -> &[TaskRec] {
        &self.tasks
    }

    /// A task by id (None when unknown to this store).
    #[inline]
    pub fn task(&self, id: TaskId) -> Option<&TaskRec> {
        let t = self.tasks.get((id.0 & INDEX_MASK) as usize)?;
        (t.id == id).then_some(t)
    }

    /// The task created for a job, if any.
    pub fn task_for_job(&self, job: JobId) -> Option<TaskId> {
        self.by_job.get(job.0 as usize).copied().flatten()
    }

    /// Appends and applies a write committed at `at_us`; returns its LSN.
    pub fn commit(&mut self, at_us: Micros, op: Op) -> u64 {
        let lsn = self.last_lsn() + 1;
        let rec = LogRec { lsn, at_us, op };
        self.apply(&rec);
        lsn
    }

    /// Applies a replicated record. Records at or below the last LSN are
    /// ignored (re-shipped batches); a gap is a bug.
    pub fn apply_replicated(&mut self, rec: &LogRec) {
        if rec.lsn <= self.last_lsn() {
            return;
        }
        assert_eq!(rec.lsn, self.last_lsn() + 1, "replication gap");
        self.apply(rec);
    }

    fn apply(&mut self, rec: &LogRec) {
        debug_assert_eq!(rec.lsn, self.last_lsn() + 1);
        match rec.op {
            Op::Create { task, job, template, steps, probe, replay } => {
                let index = (task.0 & INDEX_MASK) as usize;
                assert_eq!(index, self.tasks.len(), "task ids are dense per store");
                self.tasks.push(TaskRec {
                    id: task,
                    job,
                    template,
                    probe,
                    replay,
                    status: TaskStatus::Queued,
                    lease: Lease { holder: HostId(u32::MAX), token: 0, expires_us: 0 },
                    cursor: 0,
                    steps: vec![StepRec::EMPTY; steps as usize].into_boxed_slice(),
                    created_us: rec.at_us,
                });
                let j = job.0 as usize;
                if self.by_job.len() <= j {
                    self.by_job.resize(j + 1, None);
                }
                self.by_job[j] = Some(task);
            }
            Op::Lease { task, lease } => {
                let t = self.task_mut(task);
                debug_assert!(lease.token > t.lease.token, "fencing tokens only grow");
                t.lease = lease;
                if t.status == TaskStatus::Queued {
                    t.status = TaskStatus::Leased;
                }
            }
            Op::Renew { task, expires_us } => self.task_mut(task).lease.expires_us = expires_us,
            Op::Intent { task, ordinal, key, args } => {
                let s = &mut self.task_mut(task).steps[ordinal as usize];
                if s.state != StepState::Done {
                    s.state = StepState::Intent;
                }
                s.key = key;
                s.args = args;
            }
            Op::Result { task, ordinal, decision, .. } => {
                let t = self.task_mut(task);
                let s = &mut t.steps[ordinal as usize];
                s.state = StepState::Done;
                s.decision = decision;
                t.cursor = t.cursor.max(ordinal + 1);
            }
            Op::Complete { task } => {
                let t = self.task_mut(task);
                t.status = TaskStatus::Done;
                t.cursor = t.steps.len() as u16;
            }
            Op::Fail { task, .. } => self.task_mut(task).status = TaskStatus::Failed,
            Op::Requeue { task } => {
                let t = self.task_mut(task);
                if t.status == TaskStatus::Leased {
                    t.status = TaskStatus::Queued;
                }
            }
        }
        if self.log.len() == self.log.capacity() {
            // Grow by an eighth rather than doubling: the log is the largest
            // structure of a long run (two stores hold one each), and
            // doubling leaves up to half of it allocated and unused.
            self.log.reserve_exact((self.log.len() / 8).max(1_024));
        }
        self.log.push(*rec);
    }

    fn task_mut(&mut self, id: TaskId) -> &mut TaskRec {
        let t = &mut self.tasks[(id.0 & INDEX_MASK) as usize];
        assert_eq!(t.id, id, "write to a task unknown to this store");
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_applying_the_log_holds_the_same_state() {
        let mut p = Store::new();
        let t = p.next_task_id();
        p.commit(1, Op::Create { task: t, job: JobId(4), template: 0, steps: 3, probe: false, replay: false });
        p.commit(2, Op::Lease { task: t, lease: Lease { holder: HostId(9), token: 1, expires_us: 30 } });
        p.commit(3, Op::Intent { task: t, ordinal: 0, key: IdemKey::for_slot(t, 0), args: 5 });
        p.commit(4, Op::Result { task: t, ordinal: 0, decision: 2, reconciled: false, corrupt: false });
        let mut r = Store::new();
        for rec in p.log() {
            r.apply_replicated(rec);
            r.apply_replicated(rec); // re-shipped: ignored
        }
        assert_eq!(r.tasks(), p.tasks());
        assert_eq!(r.task(t).unwrap().cursor, 1);
        assert_eq!(r.task_for_job(JobId(4)), Some(t));
    }

    #[test]
    fn a_new_timeline_never_reuses_ids() {
        let mut p = Store::new();
        let a = p.next_task_id();
        p.commit(1, Op::Create { task: a, job: JobId(0), template: 0, steps: 1, probe: false, replay: false });
        let mut replica = Store::new(); // nothing replicated
        replica.new_timeline(0);
        let b = replica.next_task_id();
        assert_ne!(a, b);
        assert!(replica.task(a).is_none());
    }
}
