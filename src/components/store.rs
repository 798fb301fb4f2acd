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
/// `Store::by_job`'s "no task": not a task id (its index is past any task).
const NO_TASK: u64 = u64::MAX;

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
    /// Durable step records. Empty once the task completed with every
    /// step `Done` (released: see [`TaskRec::step_states`]); a finished
    /// task is never resumed, so nothing reads its checkpoints again.
    pub steps: Box<[StepRec]>,
    /// Created at.
    pub created_us: Micros,
    /// The number of steps whose records were released at completion (all
    /// of them were `Done`), 0 while `steps` holds them.
    released_steps: u16,
}

impl TaskRec {
    /// Whether step `ordinal`'s result is persisted (held, or released at
    /// completion).
    pub fn step_done(&self, ordinal: u16) -> bool {
        match self.steps.get(usize::from(ordinal)) {
            Some(s) => s.state == StepState::Done,
            None => ordinal < self.released_steps,
        }
    }

    /// The state of each step, in order, whether its record is held or
    /// was released at completion (then every step is `Done`).
    pub fn step_states(&self) -> impl Iterator<Item = StepState> + '_ {
        let released = std::iter::repeat_n(StepState::Done, usize::from(self.released_steps));
        self.steps.iter().map(|s| s.state).chain(released)
    }
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

    /// Whether committing it answered someone outside the store: a client
    /// (a creation), a worker (a grant, a renewal, a write). Every op but
    /// the recovery service's requeue, which only the store sees.
    pub fn is_acknowledged(&self) -> bool {
        !matches!(self, Op::Requeue { .. })
    }
}

/// A map from the task ids stores mint (an index dense on each timeline)
/// to `V`: a vector per timeline, where a hash map of a million tasks
/// misses the cache on nearly every insert and lookup. An id far past the
/// dense range (not minted by a store: a task id a worker made up under an
/// anti-pattern) is kept in a small hash map. Where a value is kept never
/// changes what is found.
#[derive(Clone, Debug)]
pub struct TaskMap<V> {
    timelines: Vec<(u64, Vec<Option<V>>)>,
    sparse: rustc_hash::FxHashMap<TaskId, V>,
}

/// Task → job.
pub type TaskJobs = TaskMap<JobId>;

impl<V> Default for TaskMap<V> {
    fn default() -> Self {
        TaskMap { timelines: Vec::new(), sparse: rustc_hash::FxHashMap::default() }
    }
}

impl<V> TaskMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        TaskMap::default()
    }

    /// Maps `task` to `value` (replacing an earlier value).
    pub fn insert(&mut self, task: TaskId, value: V) {
        let (timeline, i) = (task.0 >> TIMELINE_SHIFT, (task.0 & INDEX_MASK) as usize);
        let p = match self.timelines.iter().position(|(t, _)| *t == timeline) {
            Some(p) => p,
            None => {
                self.timelines.push((timeline, Vec::new()));
                self.timelines.len() - 1
            }
        };
        let v = &mut self.timelines[p].1;
        if i >= v.len() {
            if i > 2 * v.len() + 4_096 {
                self.sparse.insert(task, value);
                return;
            }
            v.resize_with(i + 1, || None);
        }
        v[i] = Some(value);
    }

    /// The value of `task`, if mapped.
    #[inline]
    pub fn get(&self, task: &TaskId) -> Option<&V> {
        let timeline = task.0 >> TIMELINE_SHIFT;
        let dense = self
            .timelines
            .iter()
            .find(|(t, _)| *t == timeline)
            .and_then(|(_, v)| v.get((task.0 & INDEX_MASK) as usize)?.as_ref());
        dense.or_else(|| if self.sparse.is_empty() { None } else { self.sparse.get(task) })
    }

    /// The value of `task` to change, if mapped.
    #[inline]
    pub fn get_mut(&mut self, task: &TaskId) -> Option<&mut V> {
        let timeline = task.0 >> TIMELINE_SHIFT;
        let i = (task.0 & INDEX_MASK) as usize;
        let dense = self
            .timelines
            .iter()
            .position(|(t, _)| *t == timeline)
            .filter(|&p| self.timelines[p].1.get(i).is_some_and(Option::is_some));
        match dense {
            Some(p) => self.timelines[p].1[i].as_mut(),
            None if self.sparse.is_empty() => None,
            None => self.sparse.get_mut(task),
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
    /// The task of each job, [`NO_TASK`] for none (8 bytes a job, where an
    /// `Option<TaskId>` takes 16).
    by_job: Vec<u64>,
    log: Log,
}

/// Records per chunk of a [`Log`] (a power of two).
const CHUNK_RECS: usize = 1 << 10;
const CHUNK_SHIFT: u32 = CHUNK_RECS.trailing_zeros();

/// A log record in 32 bytes instead of [`LogRec`]'s 56, as kept in a
/// sealed chunk: the LSN is implied by the position, the commit time is
/// relative to the chunk's first record, and each op's fields are packed
/// into two words. A record that does not fit (a commit time 71 minutes or
/// more past the chunk's first, a lease that expires that far out or
/// earlier than its commit, a key whose low word is not the step ordinal,
/// an LSN that is not its position) is kept whole in the chunk's `whole`
/// list and `a` is its index there ([`Packed::WHOLE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed {
    task: u64,
    a: u64,
    b: u64,
    dt_us: u32,
    ordinal: u16,
    tag: u8,
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<Packed>() == 32);

impl Packed {
    const CREATE: u8 = 0;
    const LEASE: u8 = 1;
    const RENEW: u8 = 2;
    const INTENT: u8 = 3;
    const RESULT: u8 = 4;
    const COMPLETE: u8 = 5;
    const FAIL: u8 = 6;
    const REQUEUE: u8 = 7;
    const WHOLE: u8 = u8::MAX;

    /// `rec` packed against the chunk's base time, at LSN `lsn`; None when
    /// it does not fit.
    fn encode(rec: &LogRec, base_us: Micros, lsn: u64) -> Option<Packed> {
        if rec.lsn != lsn {
            return None;
        }
        let dt_us = u32::try_from(rec.at_us.checked_sub(base_us)?).ok()?;
        let p = Packed { task: rec.op.task().0, a: 0, b: 0, dt_us, ordinal: 0, tag: 0, flags: 0 };
        Some(match rec.op {
            Op::Create { job, template, steps, probe, replay, .. } => Packed {
                tag: Self::CREATE,
                a: u64::from(job.0) | u64::from(template) << 32 | u64::from(steps) << 48,
                flags: u8::from(probe) | u8::from(replay) << 1,
                ..p
            },
            Op::Lease { lease, .. } => {
                let ahead_us = u32::try_from(lease.expires_us.checked_sub(rec.at_us)?).ok()?;
                Packed {
                    tag: Self::LEASE,
                    a: lease.token,
                    b: u64::from(lease.holder.0) | u64::from(ahead_us) << 32,
                    ..p
                }
            }
            Op::Renew { expires_us, .. } => Packed { tag: Self::RENEW, a: expires_us, ..p },
            Op::Intent { ordinal, key, args, .. } => {
                if key.lo != u64::from(ordinal) {
                    return None;
                }
                Packed { tag: Self::INTENT, a: key.hi, b: args, ordinal, ..p }
            }
            Op::Result { ordinal, decision, reconciled, corrupt, .. } => Packed {
                tag: Self::RESULT,
                a: u64::from(decision),
                ordinal,
                flags: u8::from(reconciled) | u8::from(corrupt) << 1,
                ..p
            },
            Op::Complete { .. } => Packed { tag: Self::COMPLETE, ..p },
            Op::Fail { ordinal, .. } => Packed { tag: Self::FAIL, ordinal, ..p },
            Op::Requeue { .. } => Packed { tag: Self::REQUEUE, ..p },
        })
    }

    /// The record back, given the chunk's base time and whole records.
    #[inline]
    fn decode(&self, base_us: Micros, lsn: u64, whole: &[LogRec]) -> LogRec {
        let task = TaskId(self.task);
        let op = match self.tag {
            Self::CREATE => Op::Create {
                task,
                job: JobId(self.a as u32),
                template: (self.a >> 32) as u16,
                steps: (self.a >> 48) as u16,
                probe: self.flags & 1 != 0,
                replay: self.flags & 2 != 0,
            },
            Self::LEASE => Op::Lease {
                task,
                lease: Lease {
                    holder: HostId(self.b as u32),
                    token: self.a,
                    expires_us: base_us + u64::from(self.dt_us) + (self.b >> 32),
                },
            },
            Self::RENEW => Op::Renew { task, expires_us: self.a },
            Self::INTENT => Op::Intent {
                task,
                ordinal: self.ordinal,
                key: IdemKey { hi: self.a, lo: u64::from(self.ordinal) },
                args: self.b,
            },
            Self::RESULT => Op::Result {
                task,
                ordinal: self.ordinal,
                decision: self.a as u32,
                reconciled: self.flags & 1 != 0,
                corrupt: self.flags & 2 != 0,
            },
            Self::COMPLETE => Op::Complete { task },
            Self::FAIL => Op::Fail { task, ordinal: self.ordinal },
            Self::REQUEUE => Op::Requeue { task },
            _ => return whole[self.a as usize],
        };
        LogRec { lsn, at_us: base_us + u64::from(self.dt_us), op }
    }
}

/// A full chunk of a log, packed: immutable once sealed.
#[derive(Debug, PartialEq, Eq)]
struct Sealed {
    base_us: Micros,
    /// LSN of the first record.
    first_lsn: u64,
    recs: Box<[Packed]>,
    whole: Box<[LogRec]>,
}

impl Sealed {
    fn pack(first_lsn: u64, recs: &[LogRec]) -> Sealed {
        let base_us = recs.first().map_or(0, |r| r.at_us);
        let mut whole = Vec::new();
        let packed = recs
            .iter()
            .zip(first_lsn..)
            .map(|(r, lsn)| {
                Packed::encode(r, base_us, lsn).unwrap_or_else(|| {
                    whole.push(*r);
                    Packed {
                        task: 0,
                        a: (whole.len() - 1) as u64,
                        b: 0,
                        dt_us: 0,
                        ordinal: 0,
                        tag: Packed::WHOLE,
                        flags: 0,
                    }
                })
            })
            .collect();
        Sealed { base_us, first_lsn, recs: packed, whole: whole.into_boxed_slice() }
    }

    #[inline]
    fn get(&self, i: usize) -> Option<LogRec> {
        let p = self.recs.get(i)?;
        Some(p.decode(self.base_us, self.first_lsn + i as u64, &self.whole))
    }
}

/// A sealed (full, immutable) chunk of a log, shared by every store whose
/// log holds the same records at the same position.
type Chunk = Rc<Sealed>;

thread_local! {
    /// Sealed chunks by chunk index, weakly held: a replica's log is a
    /// prefix of its primary's, so when a store seals a chunk equal to one
    /// another store of this thread sealed at the same index, it keeps that
    /// one and frees its own copy. Content equality only, so sharing is
    /// invisible to the simulation (a drill never crosses threads).
    static SEALED: RefCell<Vec<Vec<Weak<Sealed>>>> = const { RefCell::new(Vec::new()) };
}

/// Seals chunk `index`: an equal chunk sealed earlier on this thread and
/// still alive is shared instead of keeping `chunk`.
fn seal(index: usize, chunk: &[LogRec]) -> Chunk {
    let chunk = Sealed::pack((index * CHUNK_RECS) as u64 + 1, chunk);
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

/// A store's event log: full chunks of [`CHUNK_RECS`] records, packed,
/// sealed and shared between stores that hold the same records (a replica
/// and its primary), and the open tail chunk, owned and whole.
#[derive(Clone, Debug, Default)]
struct Log {
    sealed: Vec<Chunk>,
    tail: Vec<LogRec>,
    /// The last record, whole (it may sit in a packed chunk).
    last: Option<LogRec>,
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
        self.last = Some(rec);
        if self.tail.len() == CHUNK_RECS {
            let c = seal(self.sealed.len(), &self.tail);
            self.sealed.push(c);
            // The buffer is reused for the next chunk.
            self.tail.clear();
        }
    }

    fn view(&self) -> LogSlice<'_> {
        LogSlice { sealed: &self.sealed, tail: &self.tail, len: self.len() }
    }
}

/// A read-only view of a log or of a prefix of it: what [`Store::log`]
/// returns, and what a plain slice of records converts into (`.into()`).
/// Records are handed out by value (a sealed chunk keeps them packed).
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
    pub fn get(self, i: usize) -> Option<LogRec> {
        if i >= self.len {
            return None;
        }
        match self.sealed.get(i >> CHUNK_SHIFT) {
            Some(c) => c.get(i & (CHUNK_RECS - 1)),
            None => self.tail.get(i - self.sealed.len() * CHUNK_RECS).copied(),
        }
    }

    /// The records `from..to` as one slice of whole records, when they all
    /// lie in the open tail chunk (a sealed chunk keeps its records packed:
    /// `None` then, read them with [`LogSlice::range`]).
    #[inline]
    pub fn whole(self, from: usize, to: usize) -> Option<&'a [LogRec]> {
        let t0 = self.sealed.len() * CHUNK_RECS;
        (t0 <= from && from <= to && to <= self.len).then(|| &self.tail[from - t0..to - t0])
    }

    /// The last record.
    pub fn last(self) -> Option<LogRec> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    /// The first `n` records (all of them when `n` is larger).
    pub fn prefix(self, n: usize) -> LogSlice<'a> {
        LogSlice { len: n.min(self.len), ..self }
    }

    /// The records, in order.
    pub fn iter(self) -> LogIter<'a> {
        self.range(0, self.len)
    }

    /// The records `from..to` (clamped to the view), in order.
    pub fn range(self, from: usize, to: usize) -> LogIter<'a> {
        let to = to.min(self.len);
        LogIter { view: self, next: from.min(to), end: to, cur: Run::Whole([].iter()) }
    }

    /// The index of the first record in `from..` for which `pred` is false,
    /// where `pred` holds for a prefix of those records (a binary search,
    /// as [`slice::partition_point`]).
    pub fn partition_point_from(self, from: usize, mut pred: impl FnMut(&LogRec) -> bool) -> usize {
        let (mut lo, mut hi) = (from.min(self.len), self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self.get(mid).expect("in range")) {
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
        v.extend(self.iter());
        v
    }
}

/// The records of several logs as runs, skipping a full chunk an earlier
/// log of the list shares (a replica's log and its primary's): its records
/// were already yielded. For consumers that ignore repeats (they collect,
/// sort and dedup, or fill a set).
pub fn distinct_runs<'a>(logs: impl IntoIterator<Item = LogSlice<'a>>) -> Vec<LogIter<'a>> {
    let mut seen: rustc_hash::FxHashSet<*const Sealed> = rustc_hash::FxHashSet::default();
    let mut runs = Vec::new();
    for log in logs {
        let mut from = 0;
        let full = log.sealed.len().min(log.len / CHUNK_RECS);
        for (k, c) in log.sealed[..full].iter().enumerate() {
            if !seen.insert(Rc::as_ptr(c)) {
                if from < k * CHUNK_RECS {
                    runs.push(log.range(from, k * CHUNK_RECS));
                }
                from = (k + 1) * CHUNK_RECS;
            }
        }
        if from < log.len {
            runs.push(log.range(from, log.len));
        }
    }
    runs
}

impl<'a> IntoIterator for LogSlice<'a> {
    type Item = LogRec;
    type IntoIter = LogIter<'a>;
    fn into_iter(self) -> LogIter<'a> {
        self.iter()
    }
}

/// Records of a [`LogSlice`], in order, by value: a sealed chunk is
/// decoded record after record, with no lookup per record.
#[derive(Clone, Debug)]
pub struct LogIter<'a> {
    view: LogSlice<'a>,
    /// Position of the first record after `cur`.
    next: usize,
    end: usize,
    cur: Run<'a>,
}

/// The part of one chunk a [`LogIter`] is reading.
#[derive(Clone, Debug)]
enum Run<'a> {
    Packed { recs: std::slice::Iter<'a, Packed>, chunk: &'a Sealed, lsn: u64 },
    Whole(std::slice::Iter<'a, LogRec>),
}

impl Run<'_> {
    fn len(&self) -> usize {
        match self {
            Run::Packed { recs, .. } => recs.len(),
            Run::Whole(it) => it.len(),
        }
    }
}

impl LogIter<'_> {
    /// Moves `cur` to the chunk holding position `next`; None at the end.
    fn refill(&mut self) -> Option<()> {
        if self.next >= self.end {
            return None;
        }
        let k = self.next >> CHUNK_SHIFT;
        let off = self.next & (CHUNK_RECS - 1);
        match self.view.sealed.get(k) {
            Some(c) => {
                let stop = (self.end - k * CHUNK_RECS).min(CHUNK_RECS);
                self.cur = Run::Packed { recs: c.recs[off..stop].iter(), chunk: c, lsn: c.first_lsn + off as u64 };
                self.next = k * CHUNK_RECS + stop;
            }
            None => {
                let t0 = self.view.sealed.len() * CHUNK_RECS;
                self.cur = Run::Whole(self.view.tail[self.next - t0..self.end - t0].iter());
                self.next = self.end;
            }
        }
        Some(())
    }
}

impl Iterator for LogIter<'_> {
    type Item = LogRec;
    #[inline]
    fn next(&mut self) -> Option<LogRec> {
        loop {
            match &mut self.cur {
                Run::Packed { recs, chunk, lsn } => {
                    if let Some(p) = recs.next() {
                        *lsn += 1;
                        return Some(p.decode(chunk.base_us, *lsn - 1, &chunk.whole));
                    }
                }
                Run::Whole(it) => {
                    if let Some(r) = it.next() {
                        return Some(*r);
                    }
                }
            }
            self.refill()?;
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next + self.cur.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for LogIter<'_> {}

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

    /// When this store was last promoted (`None`: never).
    pub fn promoted_at_us(&self) -> Option<Micros> {
        self.promoted_at_us
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
        self.log.last.as_ref()
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
        self.by_job.get(job.0 as usize).copied().filter(|&t| t != NO_TASK).map(TaskId)
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
                    released_steps: 0,
                });
                let j = job.0 as usize;
                if self.by_job.len() <= j {
                    self.by_job.resize(j + 1, NO_TASK);
                }
                assert_ne!(task.0, NO_TASK, "task id reserved for no task");
                self.by_job[j] = task.0;
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
                let t = self.task_mut(task);
                if t.released_steps > 0 {
                    // A write after completion (a stale holder, no fencing):
                    // logged; the finished task's checkpoints are gone.
                    self.log.push(*rec);
                    return;
                }
                let s = &mut t.steps[ordinal as usize];
                if s.state != StepState::Done {
                    s.state = StepState::Intent;
                }
                s.key = key;
                s.args = args;
            }
            Op::Result { task, ordinal, decision, .. } => {
                let t = self.task_mut(task);
                if t.released_steps == 0 {
                    let s = &mut t.steps[ordinal as usize];
                    s.state = StepState::Done;
                    s.decision = decision;
                }
                t.cursor = t.cursor.max(ordinal + 1);
            }
            Op::Complete { task } => {
                let t = self.task_mut(task);
                t.status = TaskStatus::Done;
                if t.released_steps == 0 {
                    t.cursor = t.steps.len() as u16;
                    // A finished task is never resumed: with every step
                    // done, its state is the count (176 bytes a task).
                    if !t.steps.is_empty() && t.steps.iter().all(|s| s.state == StepState::Done) {
                        t.released_steps = t.cursor;
                        t.steps = Box::default();
                    }
                }
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
            r.apply_replicated(&rec);
            r.apply_replicated(&rec); // re-shipped: ignored
        }
        assert_eq!(r.tasks(), p.tasks());
        assert_eq!(r.task(t).unwrap().cursor, 1);
        assert_eq!(r.task_for_job(JobId(4)), Some(t));
    }

    #[test]
    fn a_task_completed_with_every_step_done_keeps_only_the_count() {
        let mut p = Store::new();
        let (a, b) = (p.next_task_id(), TaskId(1));
        p.commit(1, Op::Create { task: a, job: JobId(0), template: 0, steps: 2, probe: false, replay: false });
        p.commit(2, Op::Create { task: b, job: JobId(1), template: 0, steps: 2, probe: false, replay: false });
        for t in [a, b] {
            p.commit(3, Op::Result { task: t, ordinal: 0, decision: 1, reconciled: false, corrupt: false });
        }
        p.commit(4, Op::Result { task: a, ordinal: 1, decision: 1, reconciled: false, corrupt: false });
        p.commit(5, Op::Complete { task: a });
        p.commit(5, Op::Complete { task: b }); // step 1 never ran: kept whole
        let (ta, tb) = (p.task(a).unwrap(), p.task(b).unwrap());
        assert!(ta.steps.is_empty());
        assert_eq!(ta.step_states().collect::<Vec<_>>(), [StepState::Done; 2]);
        assert_eq!(ta.cursor, 2);
        assert_eq!(tb.steps.len(), 2);
        assert_eq!(tb.step_states().collect::<Vec<_>>(), [StepState::Done, StepState::Empty]);
        // A stale holder's writes after completion are logged, not applied.
        p.commit(6, Op::Intent { task: a, ordinal: 1, key: IdemKey::for_slot(a, 1), args: 9 });
        p.commit(7, Op::Result { task: a, ordinal: 1, decision: 2, reconciled: false, corrupt: false });
        p.commit(8, Op::Complete { task: a });
        assert_eq!(p.task(a).unwrap().step_states().collect::<Vec<_>>(), [StepState::Done; 2]);
        assert_eq!(p.last_lsn(), 10);
        let mut r = Store::new();
        for rec in p.log() {
            r.apply_replicated(&rec);
        }
        assert_eq!(r.tasks(), p.tasks());
    }

    #[test]
    fn task_jobs_reads_what_a_hash_map_reads() {
        let mut m = TaskJobs::new();
        let mut model = std::collections::HashMap::new();
        let ids = [0, 1, 5, 4_000, 3 << TIMELINE_SHIFT | 2, 1 << TIMELINE_SHIFT, 7, u64::MAX >> 1, 5];
        for (n, &id) in ids.iter().enumerate() {
            m.insert(TaskId(id), JobId(n as u32));
            model.insert(TaskId(id), JobId(n as u32));
        }
        for id in ids.iter().copied().chain([2, 3 << TIMELINE_SHIFT, 4 << TIMELINE_SHIFT, 9_999_999]) {
            assert_eq!(m.get(&TaskId(id)), model.get(&TaskId(id)), "task {id}");
        }
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
        assert_eq!(view.iter().collect::<Vec<_>>(), recs);
        assert_eq!(view.to_vec(), recs);
        for cut in [0, 1, CHUNK_RECS - 1, CHUNK_RECS, CHUNK_RECS + 1, n - 1, n] {
            let p = view.prefix(cut);
            assert_eq!(p.len(), cut);
            assert_eq!(p.iter().collect::<Vec<_>>(), recs[..cut]);
            assert_eq!(p.last(), recs[..cut].last().copied());
            assert_eq!(
                p.partition_point(|r| r.at_us <= 10 * cut as u64 / 2),
                recs[..cut].partition_point(|r| r.at_us <= 10 * cut as u64 / 2)
            );
        }
        assert_eq!(view.get(n), None);
        assert_eq!(
            view.range(CHUNK_RECS - 2, CHUNK_RECS + 3).collect::<Vec<_>>(),
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
    fn every_op_reads_back_from_a_packed_chunk_and_what_does_not_fit_is_kept_whole() {
        let t = TaskId(3 << TIMELINE_SHIFT | 12_345);
        let lease = |expires_us| Lease { holder: HostId(u32::MAX - 1), token: u64::MAX - 7, expires_us };
        let base = 1_000_000;
        let ops = [
            (0, Op::Create { task: t, job: JobId(u32::MAX), template: 9, steps: u16::MAX, probe: true, replay: false }),
            (1, Op::Create { task: t, job: JobId(0), template: u16::MAX, steps: 1, probe: false, replay: true }),
            (2, Op::Lease { task: t, lease: lease(base + 2 + u64::from(u32::MAX)) }),
            (3, Op::Lease { task: t, lease: lease(base + 3 + u64::from(u32::MAX) + 1) }), // too far: whole
            (4, Op::Lease { task: t, lease: lease(base + 3) }), // expires before its commit: whole
            (5, Op::Renew { task: t, expires_us: u64::MAX }),
            (6, Op::Intent { task: t, ordinal: 4, key: IdemKey::for_slot(TaskId(u64::MAX), 4), args: u64::MAX }),
            (7, Op::Intent { task: t, ordinal: 4, key: IdemKey { hi: 1, lo: 5 }, args: 0 }), // whole
            (8, Op::Result { task: t, ordinal: 4, decision: NO_DECISION, reconciled: true, corrupt: false }),
            (9, Op::Result { task: t, ordinal: u16::MAX, decision: 0, reconciled: false, corrupt: true }),
            (10, Op::Complete { task: TaskId(u64::MAX) }),
            (11, Op::Fail { task: t, ordinal: 2 }),
            (12, Op::Requeue { task: t }),
            (u64::from(u32::MAX), Op::Requeue { task: t }),
            (u64::from(u32::MAX) + 1, Op::Complete { task: t }), // 71 minutes past the chunk's first: whole
        ];
        let recs: Vec<LogRec> =
            ops.iter().zip(1..).map(|(&(dt, op), lsn)| LogRec { lsn, at_us: base + dt, op }).collect();
        let chunk = Sealed::pack(1, &recs);
        assert_eq!(chunk.whole.len(), 4);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(chunk.get(i), Some(*r), "record {i}");
        }
        // A record whose LSN is not its position is kept whole too.
        let shifted = Sealed::pack(2, &recs[..1]);
        assert_eq!((shifted.whole.len(), shifted.get(0)), (1, Some(recs[0])));
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
