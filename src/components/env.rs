//! The transport seam: what a component may do to the world outside it.
//!
//! Components (orchestrator, worker, fake APIs, controller) are written
//! against [`Env`] and never see the simulator. The simulation implements
//! it with virtual time and simulated links (`crate::sim::stack`); a real-process
//! transport implements it with a clock, sockets and timers. Everything a
//! component knows about time, addresses and randomness comes through here.

use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::components::ids::{HostId, JobId, Micros, TaskId};
use crate::components::wire::Msg;

/// A name a component resolves to a host (DNS in a real deployment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The serving orchestrator (global DNS name).
    Orchestrator,
    /// The serving vector store (global DNS name).
    Vector,
    /// The active node of the in-flight task queue.
    Queue,
}

/// The phase of a step at which a worker can be killed (DOMAIN.md, Faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// About to write the checkpoint.
    BeforeCheckpoint,
    /// The checkpoint is durable; the call is not sent yet.
    AfterCheckpoint,
    /// The API processed the request; the response is lost.
    InFlight,
    /// The response arrived; the result is not persisted yet.
    AfterResult,
    /// The result is persisted.
    AfterPersist,
}

impl Phase {
    /// Every phase, in step order.
    pub const ALL: [Phase; 5] =
        [Phase::BeforeCheckpoint, Phase::AfterCheckpoint, Phase::InFlight, Phase::AfterResult, Phase::AfterPersist];

    /// Name as written in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Phase::BeforeCheckpoint => "before_checkpoint",
            Phase::AfterCheckpoint => "after_checkpoint",
            Phase::InFlight => "in_flight",
            Phase::AfterResult => "after_result",
            Phase::AfterPersist => "after_persist",
        }
    }
}

/// Timers every component may set, and harness control events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Worker: check the outstanding request's deadline.
    Watchdog,
    /// Worker: renew the lease.
    Heartbeat,
    /// Worker: wait is over (backoff, retry-after, 409, unavailable).
    Resume {
        /// Which wait (stale ones are ignored).
        seq: u32,
    },
    /// Orchestrator: recovery scan for expired leases.
    RecoveryScan,
    /// Orchestrator: ship replication batch.
    ReplicationTick,
    /// Vector store: take a snapshot.
    SnapshotTick,
    /// Vector store: a snapshot finished uploading; ship it.
    ShipSnapshot {
        /// Snapshot index in the store's list.
        id: u32,
    },
    /// Vector store: hydration finished.
    HydrationDone,
    /// Controller: health check.
    HealthTick,
    /// Controller: health check timed out.
    HealthTimeout {
        /// Check number.
        seq: u32,
    },
    /// Controller: next failover stage.
    FailoverStage {
        /// Which failover (a cancelled one's timers are ignored).
        attempt: u32,
    },
    /// Controller: send the current failover step again (not acknowledged).
    FailoverResend {
        /// Which failover (a cancelled one's timers are ignored).
        attempt: u32,
    },
    /// Client: a job arrives.
    Arrival {
        /// Job.
        job: JobId,
    },
    /// Client: retry unacknowledged submissions.
    ClientRetry,
    /// Client: next probe.
    ProbeTick,
    /// Client: resubmit accepted jobs that have not finished.
    ClientResubmit,
    /// Queue: a delivery's AckWait ran out.
    Redeliver {
        /// Queue sequence.
        seq: u64,
        /// Which delivery of the message armed it (the message's delivery
        /// count then): a delivery made since (a consumer's pull) armed
        /// its own, and this one is stale.
        delivery: u32,
    },
    /// Vector store: run the integrity check.
    IntegrityCheck,
    /// Vector store: point-in-time restore finished.
    RestoreDone,
    /// Orchestrator: release writes the synchronous replica has not confirmed.
    SyncDegrade,
    /// Orchestrator: a deploy's health window closed.
    DeployCheck,
    /// Orchestrator: a rollback finished.
    RollbackDone,
    /// Harness: apply fault number `i` (start).
    FaultStart(u16),
    /// Harness: fault number `i` ends.
    FaultEnd(u16),
    /// Harness: the queue's replica takes over.
    QueueFailover(HostId),
    /// Harness: restart a host.
    Restart(HostId),
}

/// Something worth telling the drill's timeline (not on the hot path:
/// recovery actions, failover stages, faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Note {
    /// The recovery service found a lease expired and requeued the task.
    LeaseExpired {
        /// Task.
        task: TaskId,
        /// Job.
        job: JobId,
    },
    /// A worker resumed a task at a step.
    Resumed {
        /// Job.
        job: JobId,
        /// Step.
        step: u16,
    },
    /// A step of unknown status was reconciled by asking the API.
    Reconciled {
        /// Job.
        job: JobId,
        /// Step.
        step: u16,
        /// The API had the effect.
        found: bool,
    },
    /// A step of unknown status was re-issued without asking.
    Reissued {
        /// Job.
        job: JobId,
        /// Step.
        step: u16,
    },
    /// A decision had to be re-derived (it was not durable).
    Rederived {
        /// Job.
        job: JobId,
        /// Step.
        step: u16,
    },
    /// A worker dropped a task whose lease it no longer holds.
    Abandoned {
        /// Job.
        job: JobId,
    },
    /// A write from a stale lease holder was rejected by fencing.
    Fenced {
        /// Task.
        task: TaskId,
    },
    /// A tool response failed schema validation; nothing was persisted.
    SchemaViolation {
        /// Job.
        job: JobId,
        /// Step.
        step: u16,
    },
    /// A task failed permanently.
    TaskFailed {
        /// Job.
        job: JobId,
        /// Step.
        step: u16,
    },
    /// A provider's circuit breaker opened.
    BreakerOpened {
        /// Provider index.
        provider: u8,
    },
    /// The controller declared the primary region unhealthy.
    FailoverDetected,
    /// The primary answered health checks again before the standby took
    /// the promotion: the failover was called off (the primary serves on).
    FailoverCancelled,
    /// The standby was promoted.
    Promoted,
    /// A primary stopped serving on the controller's word (another region
    /// was promoted).
    Demoted,
    /// The DNS record changed; clients see it after the TTL.
    DnsSwitched,
    /// The DNS change is visible everywhere.
    RoutingEffective,
    /// Standby capacity is up.
    ScaledUp,
    /// Vector memory is restored in the new region.
    Hydrated {
        /// Points restored.
        points: u64,
    },
    /// The new region serves.
    Serving,
    /// The vector store's integrity check found corrupted points.
    CorruptionDetected {
        /// Corrupted points found.
        points: u64,
    },
    /// Point-in-time restore finished and its count was verified.
    Restored {
        /// Points restored.
        points: u64,
        /// When the restored snapshot was taken (0: none was clean; empty).
        snapshot_taken_at_us: Micros,
    },
    /// Synchronous replication fell back to asynchronous (the replica did
    /// not confirm in time).
    SyncDegraded,
    /// A new prompt/config version went out.
    Deployed {
        /// Version.
        version: u32,
    },
    /// Health checks after the deploy failed; rolling back.
    RollbackStarted {
        /// Version being rolled back.
        version: u32,
    },
    /// The last good version is live again.
    RolledBack {
        /// Version now live.
        version: u32,
    },
    /// The queue delivered a job again (its acknowledgement did not come).
    Redelivered {
        /// Job.
        job: JobId,
    },
    /// A host crashed (fault).
    Crashed {
        /// Host.
        host: HostId,
    },
    /// A host restarted.
    Restarted {
        /// Host.
        host: HostId,
    },
}

/// What a component can do. Implemented by the simulation and by real
/// transports.
pub trait Env {
    /// Current time on the host's monotonic clock (never jumps).
    fn now_us(&self) -> Micros;
    /// Current time on the host's wall clock, which clock skew can move.
    fn wall_now_us(&self) -> Micros {
        self.now_us()
    }
    /// The host this component runs on.
    fn me(&self) -> HostId;
    /// Sends a message.
    fn send(&mut self, to: HostId, msg: Msg);
    /// Sends a message after a processing delay (the sender's work time).
    fn send_after(&mut self, delay_us: Micros, to: HostId, msg: Msg);
    /// Sends the message `make` builds, as [`Env::send`] would send it, but
    /// builds it only if it will travel: the simulation routes first and
    /// does not build a message its link drops (a replication backlog
    /// re-sent into a cut every tick costs a copy of the backlog each
    /// time). This default builds it and sends it.
    fn send_built(&mut self, to: HostId, make: impl FnOnce() -> Msg)
    where
        Self: Sized,
    {
        self.send(to, make());
    }
    /// Sends `copies` copies of a probe to `to` at once (a health check
    /// sent from several locations) where the receiver needs only one:
    /// `make(n)` builds the message for `n` copies. The simulation routes
    /// each copy and delivers the first to arrive, built with `n` = the
    /// copies that made it; this default sends `copies` messages built
    /// with `n = 1`.
    fn send_copies(&mut self, to: HostId, copies: u32, make: impl FnOnce(u32) -> Msg)
    where
        Self: Sized,
    {
        let msg = make(1);
        for _ in 1..copies {
            self.send(to, msg.clone());
        }
        self.send(to, msg);
    }
    /// Sets a timer on this host.
    fn set_timer(&mut self, after_us: Micros, timer: Timer);
    /// The seeded RNG.
    fn rng(&mut self) -> &mut ChaCha8Rng;
    /// Resolves a service name as this host sees it now.
    fn resolve(&self, svc: Service) -> HostId;
    /// Records a timeline note.
    fn note(&mut self, note: Note);
    /// A worker reached a phase of a step. Returns `true` when a fault kills
    /// the named host here: the caller must stop at once.
    fn reach(&mut self, host: HostId, job: JobId, step: u16, phase: Phase) -> bool;
}
