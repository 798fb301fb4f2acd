//! The protocol between components: every request and response that
//! crosses the transport seam.
//!
//! In the simulation these values are moved between hosts by the runtime;
//! behind HTTP they are the bodies of requests on loopback. Nothing here
//! knows which. Large payloads are boxed so the common messages stay small
//! on the simulator's hot path.

use serde::{Deserialize, Serialize};

use crate::components::ids::{HostId, IdemKey, JobId, Micros, Origin, TaskId};
use crate::components::ledger::{CallOutcome, Lookup};
use crate::components::provider::{ModelOutcome, ModelRequest};
use crate::components::store::{LogRec, StepRec};
use crate::components::vector::{PointId, Snapshot};

/// Which fake API a tool request is for (the discriminant indexes per-API
/// tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Api {
    /// Payments (charge, refund).
    Payment,
    /// Email.
    Email,
    /// Read-only search.
    Search,
}

/// A lease grant: everything a worker needs to continue a task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Grant {
    /// Task.
    pub task: TaskId,
    /// Job.
    pub job: JobId,
    /// The task's stable identity for idempotency keys, minted by the
    /// orchestrator from the client's submission id (so a job resubmitted
    /// after its region was lost keeps its keys).
    pub uid: u64,
    /// Template index.
    pub template: u16,
    /// The prompt/config version to run with.
    pub prompt: crate::components::orchestrator::Prompt,
    /// Fencing token.
    pub token: u64,
    /// Lease expiry on the orchestrator's clock, as a duration from now.
    pub lease_ms: u64,
    /// How long the lease request waited at the orchestrator before this
    /// grant (its own clock): the lease started at least this long after
    /// the worker sent the request, and no later than the worker's receipt.
    pub parked_us: Micros,
    /// The `sent_us` of the request this grant answers, echoed: the lease
    /// runs from no later than `asked_us + parked_us` on the worker's lease
    /// clock. Echoed rather than looked up by request number, whose count
    /// starts over in a restarted worker process (a grant answering the
    /// request of the process before it would otherwise be timed from the
    /// new process's request).
    pub asked_us: Micros,
    /// Next step.
    pub cursor: u16,
    /// Durable step records (checkpoints, decisions); empty for a task
    /// never leased before, which has nothing recorded yet.
    pub steps: Box<[StepRec]>,
    /// The task was leased before (this is a resume).
    pub resumed: bool,
    /// The task's record may be missing progress (resubmitted, or older than
    /// a failover): reconcile every side effect by key before issuing it.
    pub replay: bool,
}

/// Every message. Behind HTTP a message is its serde JSON (a snapshot
/// shipment stays in process: it is never serialised).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Msg {
    // --- client ⇄ orchestrator
    /// Submit a job (idempotent on the job id).
    Submit {
        /// Job.
        job: JobId,
        /// Template.
        template: u16,
        /// Number of steps in the template.
        steps: u16,
        /// Harness probe.
        probe: bool,
        /// A resubmission of a job accepted long ago and never reported done.
        replay: bool,
    },
    /// The job is accepted (durably, with the task id).
    SubmitAck {
        /// Job.
        job: JobId,
    },

    /// Publish a job to the queue (message id = job id).
    Publish {
        /// Job.
        job: JobId,
        /// Template.
        template: u16,
        /// Steps.
        steps: u16,
        /// Harness probe.
        probe: bool,
        /// A resubmission.
        replay: bool,
    },
    /// The queue delivers a job to the consumer (the orchestrator).
    Deliver {
        /// Queue sequence.
        seq: u64,
        /// Job.
        job: JobId,
        /// Template.
        template: u16,
        /// Steps.
        steps: u16,
        /// Harness probe.
        probe: bool,
        /// A resubmission.
        replay: bool,
    },
    /// The consumer acknowledges a delivery (the task is durable).
    QueueAck {
        /// Queue sequence.
        seq: u64,
    },
    /// A consumer that refused deliveries while it could not take them
    /// (not serving yet, or self-fenced) asks for them once it serves, as a
    /// JetStream pull consumer fetches on attach: the queue delivers those
    /// it still holds now, not an AckWait later.
    QueuePull {
        /// Queue sequences of the refused deliveries.
        seqs: Box<[u64]>,
    },
    /// The active queue node mirrors a publish to its replica.
    Mirror {
        /// Queue sequence.
        seq: u64,
        /// Job.
        job: JobId,
        /// Template.
        template: u16,
        /// Steps.
        steps: u16,
        /// Harness probe.
        probe: bool,
        /// A resubmission.
        replay: bool,
        /// Who to answer once mirrored.
        publisher: HostId,
    },
    /// The replica holds the mirrored publish.
    MirrorAck {
        /// Job.
        job: JobId,
        /// Who to answer.
        publisher: HostId,
    },
    /// Telemetry: a model output failed the agent's validation under this
    /// prompt version (the health checks after a deploy count these).
    OutputRejected {
        /// Prompt/config version the worker ran with.
        version: u32,
    },
    /// A probe job finished (the orchestrator tells the client).
    Completed {
        /// Job.
        job: JobId,
    },

    // --- worker ⇄ orchestrator
    /// Long-poll for work.
    LeaseReq {
        /// Request number (echoed).
        req: u32,
        /// When the worker sent it, on its own lease clock (echoed in the
        /// grant as `asked_us`).
        sent_us: Micros,
    },
    /// Work.
    LeaseGrant {
        /// Request number.
        req: u32,
        /// The grant.
        grant: Box<Grant>,
    },
    /// A durable write from the lease holder.
    Write {
        /// Request number.
        req: u32,
        /// Fencing token.
        token: u64,
        /// The write.
        write: WorkerWrite,
    },
    /// The write's answer.
    WriteAck {
        /// Request number.
        req: u32,
        /// `false`: fenced off (the lease moved on).
        ok: bool,
    },
    /// Lease renewal.
    Heartbeat {
        /// Task.
        task: TaskId,
        /// Token.
        token: u64,
        /// When the worker sent it, on its own lease clock (echoed in the
        /// answer: the renewed lease runs from no later than this).
        sent_us: Micros,
    },
    /// Renewal answer.
    HeartbeatAck {
        /// Task.
        task: TaskId,
        /// `false`: the lease moved on.
        ok: bool,
        /// New lease duration from now.
        lease_ms: u64,
        /// The live prompt/config version (a rollback reaches running tasks).
        prompt: crate::components::orchestrator::Prompt,
        /// The renewal's `sent_us`, echoed.
        sent_us: Micros,
    },

    // --- worker ⇄ tool APIs
    /// A tool call.
    ToolReq {
        /// Request number.
        req: u32,
        /// Which API.
        api: Api,
        /// Idempotency key.
        key: IdemKey,
        /// Parameters hash.
        params: u64,
        /// Ground-truth attribution (harness metadata; the API's logic ignores it).
        origin: Origin,
        /// The decision the arguments were derived from (harness metadata).
        basis: (u16, u32),
    },
    /// The tool's answer.
    ToolResp {
        /// Request number.
        req: u32,
        /// Outcome.
        outcome: CallOutcome,
        /// The body does not match the documented schema (a breaking change).
        malformed: bool,
    },
    /// Reconciliation: look a key up.
    LookupReq {
        /// Request number.
        req: u32,
        /// Which API.
        api: Api,
        /// Key.
        key: IdemKey,
        /// The job and step the effect belongs to (harness metadata for the
        /// simulated API; a live adapter names the effect's resource by it).
        origin: Origin,
    },
    /// Lookup answer.
    LookupResp {
        /// Request number.
        req: u32,
        /// Result.
        found: Lookup,
        /// The body does not match the documented schema.
        malformed: bool,
    },

    // --- worker ⇄ providers
    /// A model call.
    ModelReq {
        /// Request number.
        req: u32,
        /// The request.
        request: ModelRequest,
        /// Ground-truth attribution (harness metadata).
        origin: Origin,
    },
    /// The provider's answer (or the SDK's timeout).
    ModelResp {
        /// Request number.
        req: u32,
        /// Outcome.
        outcome: ModelOutcome,
    },

    // --- worker ⇄ vector store
    /// Upsert a point.
    VecUpsert {
        /// Request number.
        req: u32,
        /// Point.
        point: PointId,
        /// Value.
        value: u64,
        /// Ground-truth attribution (harness metadata).
        origin: Origin,
        /// The decision the value was derived from (harness metadata).
        basis: (u16, u32),
    },
    /// Query a point.
    VecQuery {
        /// Request number.
        req: u32,
        /// Point.
        point: PointId,
        /// Ground-truth attribution (harness metadata).
        origin: Origin,
    },
    /// Answer to either.
    VecResp {
        /// Request number.
        req: u32,
        /// The store is not serving (standby, hydrating).
        unavailable: bool,
    },

    // --- replication and snapshots
    /// Structured-state replication: a batch of log records.
    Replicate {
        /// Records in LSN order.
        recs: Recs,
    },
    /// The replica applied up to this LSN.
    ReplicateAck {
        /// Highest applied LSN.
        lsn: u64,
    },
    /// Vector streaming replication: one upsert.
    VecReplicate {
        /// Point.
        point: PointId,
        /// Value.
        value: u64,
        /// When the primary acknowledged it.
        at_us: Micros,
        /// How many point-in-time restores the primary had made when it
        /// took the write (see [`Msg::VecRestored`]).
        restores: u32,
    },
    /// Vector streaming replication: the primary replaced its contents
    /// with a point-in-time restore of `snapshot` (`None`: it held no clean
    /// snapshot and was emptied), its `restores`-th; the replica follows.
    #[serde(skip)]
    VecRestored {
        /// The snapshot restored.
        snapshot: Option<Box<Snapshot>>,
        /// The primary's restore count, this one included.
        restores: u32,
    },
    /// A vector snapshot arrives at another region's storage.
    #[serde(skip)]
    ShipSnapshot(Box<Snapshot>),

    // --- failover control
    /// Health check.
    Ping {
        /// Check number.
        seq: u32,
    },
    /// Health answer.
    Pong {
        /// Check number.
        seq: u32,
    },
    /// Become the primary (promotion).
    Promote,
    /// The standby is the primary now.
    PromoteAck,
    /// Did you take the promotion? (The controller asks the standby after
    /// calling a failover off; a primary answers `PromoteAck`, a standby
    /// nothing.)
    PromotedQuery,
    /// Stop serving: another region was promoted (fencing a primary the
    /// controller believed lost).
    Demote,
    /// The standby serves traffic now.
    Opened,
    /// Restore vector memory from the newest snapshot held, then report.
    Hydrate,
    /// Hydration finished.
    Hydrated,
    /// Start serving traffic.
    Open,
}

/// A durable write a worker asks the orchestrator for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerWrite {
    /// Checkpoint before a call.
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
    /// Persist a step's result.
    Result {
        /// Task.
        task: TaskId,
        /// Step.
        ordinal: u16,
        /// Decision or `NO_DECISION`.
        decision: u32,
        /// Adopted by reconciliation.
        reconciled: bool,
        /// This was the last step: complete the task too.
        last: bool,
        /// The result came from a response that did not match the schema
        /// (written only when validation is off).
        corrupt: bool,
        /// A decision adopted from an API's record of the effect: persist it
        /// as step `.0`'s decision too.
        adopt: Option<(u16, u32)>,
        /// The prompt/config version a model call made the decision under
        /// (a deploy's health checks count only outputs of the version they
        /// watch); `None` when no model call under any version made it (a
        /// decision adopted from an API's record of its effect, or none).
        version: Option<u32>,
    },
    /// Session-end checkpoint (anti-pattern 2): every result at once.
    Session {
        /// Task.
        task: TaskId,
        /// Steps run.
        steps: u16,
    },
    /// Give up on the task.
    Fail {
        /// Task.
        task: TaskId,
        /// Step.
        ordinal: u16,
    },
}

impl WorkerWrite {
    /// The task written to.
    pub fn task(&self) -> TaskId {
        match *self {
            WorkerWrite::Intent { task, .. }
            | WorkerWrite::Result { task, .. }
            | WorkerWrite::Session { task, .. }
            | WorkerWrite::Fail { task, .. } => task,
        }
    }
}

/// The records a [`Msg::Replicate`] carries, in LSN order: one record
/// inline (a synchronous commit ships each write as it commits: no
/// allocation per write), or a shared batch (a replication tick's backlog,
/// shared by every re-send of the same range). On the wire, a list either
/// way.
#[derive(Clone, Debug)]
pub enum Recs {
    /// A single record.
    One(LogRec),
    /// A batch, shared rather than copied.
    Batch(std::sync::Arc<[LogRec]>),
}

impl std::ops::Deref for Recs {
    type Target = [LogRec];

    fn deref(&self) -> &[LogRec] {
        match self {
            Recs::One(rec) => std::slice::from_ref(rec),
            Recs::Batch(recs) => recs,
        }
    }
}

impl Serialize for Recs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Recs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let recs = Vec::<LogRec>::deserialize(d)?;
        Ok(match <[LogRec; 1]>::try_from(recs) {
            Ok([rec]) => Recs::One(rec),
            Err(recs) => Recs::Batch(recs.into()),
        })
    }
}
