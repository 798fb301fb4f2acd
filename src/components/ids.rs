//! Small, copyable identifiers shared by every component.
//!
//! They are plain integers so that the simulation's hot path never allocates
//! or formats strings; the HTTP transport renders them as text at the edge.

use serde::{Deserialize, Serialize};

/// A host in the simulation (or, behind HTTP, a process). Index into the
/// simulation's host table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostId(pub u32);

/// A region: a failure domain that can be lost as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegionId(pub u8);

/// A unit of work as the *client* sees it: one submission by the workload.
///
/// Ground truth is keyed by job, never by the stack's task id, so that an
/// anti-pattern that mints a fresh task id on failover (anti-pattern 7)
/// still has its side effects attributed to the same logical work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u32);

/// The stack's own task identifier, minted by the orchestrator at creation
/// (or, under anti-pattern 7, by the worker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

/// An idempotency key as carried to a downstream API.
///
/// The reference stack derives it from `(task_id, step_ordinal)`; the
/// anti-patterns derive it from model output, a prompt hash or the clock.
/// On the wire it is rendered as `"{hi:016x}-{lo:016x}"` (33 chars, well
/// under Stripe's 255-character limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdemKey {
    /// High word: the task id for orchestrator-minted keys.
    pub hi: u64,
    /// Low word: the step ordinal for orchestrator-minted keys.
    pub lo: u64,
}

impl IdemKey {
    /// The reference key for a tool slot: `(task_id, step_ordinal)`.
    pub fn for_slot(task: TaskId, ordinal: u16) -> Self {
        IdemKey { hi: task.0, lo: u64::from(ordinal) }
    }
}

impl std::fmt::Display for IdemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{:016x}", self.hi, self.lo)
    }
}

/// Ground-truth attribution of a request: which logical job and step issued
/// it, and from which host. The fakes record it in their ledgers; the stack
/// never reads it, so it cannot be used to cheat deduplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The logical job.
    pub job: JobId,
    /// The step ordinal within the job's plan.
    pub step: u16,
    /// The host that sent the request.
    pub host: HostId,
    /// The stack's task the request was made for.
    pub task: TaskId,
    /// The fencing token of the lease the sender held (or thought it held).
    pub token: u64,
}

/// Simulated (or real) time in microseconds since the drill's start.
pub type Micros = u64;

/// Microseconds per millisecond.
pub const US_PER_MS: u64 = 1_000;
/// Microseconds per second.
pub const US_PER_S: u64 = 1_000_000;

/// Whole-ish seconds from microseconds, for reports.
pub fn us_to_s(us: Micros) -> f64 {
    us as f64 / US_PER_S as f64
}
