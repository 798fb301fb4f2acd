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

use std::cell::RefCell;
use std::rc::{Rc, Weak};

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
    log: Log,
}

/// Records per chunk of a [`Log`] (a power of two).
const CHUNK_RECS: usize = 1 << 10;
const CHUNK_SHIFT: u32 = CHUNK_RECS.trailing_zeros();

/// A sealed (full, immutable) chunk of a log, shared by every store whose
/// log holds the same records at the same position.
type Chunk = Rc<Vec<LogRec>>;

thread_local! {
    /// Sealed chunks by chunk index, weakly held: a replica's log is a
    /// prefix of its primary's, so when a store seals a chunk equal to one
    /// another store of this thread sealed at the same index, it keeps that
    /// one and frees its own copy. Content equality only, so sharing is
    /// invisible to the simulation (a drill never crosses threads).
    static SEALED: RefCell<Vec<Vec<Weak<Vec<LogRec>>>>> = const { RefCell::new(Vec::new()) };
}

/// Seals chunk `index`: an equal chunk sealed earlier on this thread and
/// still alive is shared instead of keeping `chunk`.
fn seal(index: usize, chunk: Vec<LogRec>) -> Chunk {
    SEALED.with_borrow_mut(|sealed| {
        if sealed.len() <= index {
            sealed.resize_with(index + 1, Vec::new);
        }
        let slot = &mut sealed[index];
        slot.retain(|w| w.strong_count() > 0);
        if let Some(same) = slot.iter().filter_map(Weak::upgrade).find(|c| **c == chunk) {
            return same;
        }
        let c = Rc::new(chunk);
        slot.push(Rc::downgrade(&c));
        c
    })
}

/// A store's event log: full chunks of [`CHUNK_RECS`] records, sealed and
/// shared between stores that hold the same records (a replica and its
/// primary), and the open tail chunk, owned.
#[derive(Clone, Debug, Default)]
struct Log {
    sealed: Vec<Chunk>,
    tail: Vec<LogRec>,
}

impl Log {
    fn len(&self) -> usize {
        self.sealed.len() * CHUNK_RECS + self.tail.len()
    }

    fn push(&mut self, rec: LogRec) {
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(CHUNK_RECS);
        }
        self.tail.push(rec);
        if self.tail.len() == CHUNK_RECS {
            let full = std::mem::take(&mut self.tail);
            self.sealed.push(seal(self.sealed.len(), full));
        }
    }

    fn view(&self) -> LogSlice<'_> {
        LogSlice { sealed: &self.sealed, tail: &self.tail, len: self.len() }
    }
}

/// A read-only view of a log or of a prefix of it: what [`Store::log`]
/// returns, and what a plain slice of records converts into (`.into()`).
#[derive(Clone, Copy, Debug)]
pub struct LogSlice<'a> {
    sealed: &'a [Chunk],
    tail: &'a [LogRec],
    len: usize,
}

impl<'a> From<&'a [LogRec]> for LogSlice<'a> {
    fn from(recs: &'a [LogRec]) -> Self {
        LogSlice { sealed: &[], tail: recs, len: recs.len() }
    }
}

impl<'a> From<&'a Vec<LogRec>> for LogSlice<'a> {
    fn from(recs: &'a Vec<LogRec>) -> Self {
        recs.as_slice().into()
    }
}

impl<'a> LogSlice<'a> {
    /// Number of records.
    pub fn len(self) -> usize {
        self.len
    }

    /// No record.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The record at position `i` (LSN `i + 1` for a whole store log).
    #[inline]
    pub fn get(self, i: usize) -> Option<&'a LogRec> {
        if i >= self.len {
            return None;
        }
        match self.sealed.get(i >> CHUNK_SHIFT) {
            Some(c) => c.get(i & (CHUNK_RECS - 1)),
            None => self.tail.get(i - self.sealed.len() * CHUNK_RECS),
        }
    }

    /// The last record.
    pub fn last(self) -> Option<&'a LogRec> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    /// The first `n` records (all of them when `n` is larger).
    pub fn prefix(self, n: usize) -> LogSlice<'a> {
        LogSlice { len: n.min(self.len), ..self }
    }

    /// Run `k` of the view's contiguous runs: its sealed chunks, then the
    /// part of the tail it covers; None past the end.
    fn run(self, k: usize) -> Option<&'a [LogRec]> {
        let sealed = self.sealed.len().min(self.len.div_ceil(CHUNK_RECS));
        match k.cmp(&sealed) {
            std::cmp::Ordering::Less => Some(&self.sealed[k][..(self.len - k * CHUNK_RECS).min(CHUNK_RECS)]),
            std::cmp::Ordering::Equal => Some(&self.tail[..self.len.saturating_sub(sealed * CHUNK_RECS)]),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// The records, in order.
    pub fn iter(self) -> LogIter<'a> {
        LogIter { view: self, next_run: 0, cur: [].iter() }
    }

    /// The records `from..to` (clamped to the view), in order.
    pub fn range(self, from: usize, to: usize) -> impl Iterator<Item = &'a LogRec> + 'a {
        let to = to.min(self.len);
        (from.min(to)..to).map(move |i| self.get(i).expect("in range"))
    }

    /// The index of the first record in `from..` for which `pred` is false,
    /// where `pred` holds for a prefix of those records (a binary search,
    /// as [`slice::partition_point`]).
    pub fn partition_point_from(self, from: usize, mut pred: impl FnMut(&LogRec) -> bool) -> usize {
        let (mut lo, mut hi) = (from.min(self.len), self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self[mid]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// [`LogSlice::partition_point_from`] over the whole view.
    pub fn partition_point(self, pred: impl FnMut(&LogRec) -> bool) -> usize {
        self.partition_point_from(0, pred)
    }

    /// The records, copied out.
    pub fn to_vec(self) -> Vec<LogRec> {
        let mut v = Vec::with_capacity(self.len);
        let mut k = 0;
        while let Some(run) = self.run(k) {
            v.extend_from_slice(run);
            k += 1;
        }
        v
    }
}

/// The records of several logs as contiguous runs, skipping a full chunk
/// an earlier log of the list shares (a replica's log and its primary's):
/// its records were already yielded. For consumers that ignore repeats
/// (they collect, sort and dedup, or fill a set).
pub fn distinct_runs<'a>(logs: impl IntoIterator<Item = LogSlice<'a>>) -> Vec<&'a [LogRec]> {
    let mut seen: rustc_hash::FxHashSet<*const Vec<LogRec>> = rustc_hash::FxHashSet::default();
    let mut runs = Vec::new();
    for log in logs {
        let mut k = 0;
        while let Some(run) = log.run(k) {
            let shared = log.sealed.get(k).filter(|_| run.len() == CHUNK_RECS);
            if shared.is_none_or(|c| seen.insert(Rc::as_ptr(c))) {
                runs.push(run);
            }
            k += 1;
        }
    }
    runs
}

impl std::ops::Index<usize> for LogSlice<'_> {
    type Output = LogRec;
    fn index(&self, i: usize) -> &LogRec {
        self.get(i).expect("log index out of range")
    }
}

impl<'a> IntoIterator for LogSlice<'a> {
    type Item = &'a LogRec;
    type IntoIter = LogIter<'a>;
    fn into_iter(self) -> LogIter<'a> {
        self.iter()
    }
}

/// The records of a [`LogSlice`], in order.
#[derive(Clone, Debug)]
pub struct LogIter<'a> {
    view: LogSlice<'a>,
    next_run: usize,
    cur: std::slice::Iter<'a, LogRec>,
}

impl<'a> Iterator for LogIter<'a> {
    type Item = &'a LogRec;
    #[inline]
    fn next(&mut self) -> Option<&'a LogRec> {
        loop {
            if let Some(r) = self.cur.next() {
                return Some(r);
            }
            self.cur = self.view.run(self.next_run)?.iter();
            self.next_run += 1;
        }
    }
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
    pub fn log(&self) -> LogSlice<'_> {
        self.log.view()
    }

    /// The last committed record.
    pub fn last_rec(&self) -> Option<&LogRec> {
        self.log.tail.last().or_else(|| self.log.sealed.last().and_then(|c| c.last()))
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

    fn rec(lsn: u64) -> LogRec {
        let task = TaskId(lsn % 7);
        LogRec { lsn, at_us: lsn * 10, op: Op::Renew { task, expires_us: lsn } }
    }

    #[test]
    fn a_replica_shares_its_primary_s_full_chunks_and_reads_the_same() {
        let n = CHUNK_RECS * 3 + 17;
        let recs: Vec<LogRec> = (1..=n as u64).map(rec).collect();
        let mut primary = Log::default();
        let mut replica = Log::default();
        for r in &recs {
            primary.push(*r);
        }
        for r in &recs[..CHUNK_RECS * 2 + 5] {
            replica.push(*r);
        }
        assert_eq!(primary.len(), n);
        assert!(Rc::ptr_eq(&primary.sealed[0], &replica.sealed[0]));
        assert!(Rc::ptr_eq(&primary.sealed[1], &replica.sealed[1]));
        // The views read exactly the records, whole or as a prefix.
        let view = primary.view();
        assert_eq!(view.iter().copied().collect::<Vec<_>>(), recs);
        assert_eq!(view.to_vec(), recs);
        for cut in [0, 1, CHUNK_RECS - 1, CHUNK_RECS, CHUNK_RECS + 1, n - 1, n] {
            let p = view.prefix(cut);
            assert_eq!(p.len(), cut);
            assert_eq!(p.iter().copied().collect::<Vec<_>>(), recs[..cut]);
            assert_eq!(p.last(), recs[..cut].last());
            assert_eq!(
                p.partition_point(|r| r.at_us <= 10 * cut as u64 / 2),
                recs[..cut].partition_point(|r| r.at_us <= 10 * cut as u64 / 2)
            );
        }
        assert_eq!(view.get(n), None);
        assert_eq!(
            view.range(CHUNK_RECS - 2, CHUNK_RECS + 3).copied().collect::<Vec<_>>(),
            recs[CHUNK_RECS - 2..CHUNK_RECS + 3]
        );
        assert_eq!(view.partition_point_from(CHUNK_RECS + 4, |r| r.lsn < 3), CHUNK_RECS + 4);
        // A diverged replica keeps its own chunk.
        let mut diverged = Log::default();
        for r in &recs[..CHUNK_RECS - 1] {
            diverged.push(*r);
        }
        diverged.push(rec(1));
        assert!(!Rc::ptr_eq(&primary.sealed[0], &diverged.sealed[0]));
        // Shared chunks are read once across logs; the rest every time.
        let runs = distinct_runs([view, replica.view(), diverged.view()]);
        let total: usize = runs.iter().map(|r| r.len()).sum();
        assert_eq!(total, n + 5 + CHUNK_RECS);
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
