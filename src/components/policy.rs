//! The stack's safeguards, each a switch. The defaults are the reference
//! policy; every anti-pattern in DOMAIN.md is a combination of switches
//! (see [`AntiPattern::apply`]).

use serde::{Deserialize, Serialize};

/// Who makes the idempotency key of a tool call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The orchestrator, from `(task_id, step_ordinal)` (reference).
    #[default]
    Orchestrator,
    /// Sampled from the model's output (anti-pattern 1).
    ModelOutput,
    /// Hashed from the current prompt, which includes the worker's running
    /// transcript (anti-pattern 1).
    PromptHash,
    /// Derived from the wall clock at the call (anti-pattern 1).
    WallClock,
}

/// When the worker writes durable state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Checkpointing {
    /// A checkpoint before every tool call and the result after (reference).
    #[default]
    BeforeCall,
    /// Only the result, after the step; no intent record (anti-pattern 3).
    AfterStep,
    /// Only at session end, chat-style (anti-pattern 2).
    SessionEnd,
}

/// The switches. Every field defaults to the reference behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Who makes idempotency keys.
    pub key_source: KeySource,
    /// Who mints the task id: the orchestrator at creation (`true`,
    /// reference) or the worker when it picks the job up (anti-pattern 7).
    pub orchestrator_mints_task_id: bool,
    /// Checkpoint cadence.
    pub checkpointing: Checkpointing,
    /// On resume, a step of unknown status is reconciled by asking the API
    /// by key before anything is re-issued (reference; off = anti-pattern 4).
    pub reconcile: bool,
    /// Lease duration in milliseconds.
    pub lease_ms: u64,
    /// The worker renews its lease while it works (off + a lease shorter
    /// than a slow call = anti-pattern 5).
    pub heartbeat: bool,
    /// Fencing tokens checked on every write and the worker's own lease
    /// check before a side effect (off = anti-pattern 6).
    pub fencing: bool,
    /// Artefacts needed to resume are persisted durably, not only on the
    /// worker's scratchpad (off = anti-pattern 13).
    pub durable_artefacts: bool,
    /// Provider router with fallbacks (off = anti-pattern 10: one provider).
    pub provider_router: bool,
    /// Circuit breakers in the router (off = anti-pattern 11).
    pub circuit_breakers: bool,
    /// Leases are timed on the wall clock instead of a monotonic clock
    /// (anti-pattern: a clock jump moves lease expiry).
    pub wall_clock_leases: bool,
    /// Tool responses are validated against the schema before anything is
    /// persisted (off: a breaking API change writes corrupted state).
    pub validate_tool_responses: bool,
    /// After a deploy, health checks watch the error rate and roll a bad
    /// version back automatically.
    pub auto_rollback: bool,
    /// The orchestrator creates at most one task per job (idempotent
    /// create); off, it trusts the queue to deliver each job once.
    pub idempotent_create: bool,
    /// Test-only planted bug: persist the step's result *before* the tool
    /// call (used to show that the checks catch a one-line regression).
    pub planted_bug_persist_before_call: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            key_source: KeySource::Orchestrator,
            orchestrator_mints_task_id: true,
            checkpointing: Checkpointing::BeforeCall,
            reconcile: true,
            lease_ms: 30_000,
            heartbeat: true,
            fencing: true,
            durable_artefacts: true,
            provider_router: true,
            circuit_breakers: true,
            wall_clock_leases: false,
            validate_tool_responses: true,
            auto_rollback: true,
            idempotent_create: true,
            planted_bug_persist_before_call: false,
        }
    }
}

/// The anti-patterns of DOMAIN.md that are policy switches of the stack.
/// (8, 9 and 12 are properties of the stack's replication, snapshot and
/// queue configuration; they are listed here so tools can name them.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AntiPattern {
    /// 1. Key sampled from model output.
    KeyFromModelOutput,
    /// 1. Key hashed from the prompt.
    KeyFromPromptHash,
    /// 1. Key from the wall clock.
    KeyFromWallClock,
    /// 2. Checkpoint only at session end.
    CheckpointAtSessionEnd,
    /// 3. Checkpoint after the step, no reconciliation.
    CheckpointAfterStep,
    /// 4. Resume re-issues without asking the API.
    ResumeWithoutReconcile,
    /// 5. Lease shorter than a slow tool call, no renewal.
    ShortLease,
    /// 6. No fencing.
    NoFencing,
    /// 7. Task id minted by the worker.
    WorkerMintedTaskId,
    /// 8. Asynchronous replication lagging beyond the tier's RPO.
    ReplicationLagBeyondRpo,
    /// 9. Vector snapshots kept in the same region.
    SnapshotsSameRegion,
    /// 10. One provider, no router.
    SingleProvider,
    /// 11. No circuit breaker.
    NoCircuitBreaker,
    /// 12. Queue dedupe window shorter than the redelivery delay, with a
    ///     consumer that trusts the queue (no idempotent create).
    QueueDedupeWindowTooShort,
    /// 13. Resume artefacts only on local disk.
    ArtefactsOnLocalDisk,
    /// Leases timed on the wall clock (clock skew moves them).
    WallClockLeases,
    /// Tool responses persisted without schema validation.
    NoResponseValidation,
    /// No automated rollback of a bad deploy.
    NoAutoRollback,
}

impl AntiPattern {
    /// Turns the switches this anti-pattern is made of (those that are
    /// policy switches; 8 and 9 are set in the stack description).
    pub fn apply(self, p: &mut Policy) {
        match self {
            AntiPattern::KeyFromModelOutput => p.key_source = KeySource::ModelOutput,
            AntiPattern::KeyFromPromptHash => p.key_source = KeySource::PromptHash,
            AntiPattern::KeyFromWallClock => p.key_source = KeySource::WallClock,
            AntiPattern::CheckpointAtSessionEnd => p.checkpointing = Checkpointing::SessionEnd,
            AntiPattern::CheckpointAfterStep => {
                p.checkpointing = Checkpointing::AfterStep;
                p.reconcile = false;
            }
            AntiPattern::ResumeWithoutReconcile => p.reconcile = false,
            AntiPattern::ShortLease => {
                p.lease_ms = 5_000;
                p.heartbeat = false;
            }
            AntiPattern::NoFencing => p.fencing = false,
            AntiPattern::WorkerMintedTaskId => p.orchestrator_mints_task_id = false,
            AntiPattern::SingleProvider => p.provider_router = false,
            AntiPattern::NoCircuitBreaker => p.circuit_breakers = false,
            AntiPattern::ArtefactsOnLocalDisk => p.durable_artefacts = false,
            AntiPattern::QueueDedupeWindowTooShort => p.idempotent_create = false,
            AntiPattern::WallClockLeases => p.wall_clock_leases = true,
            AntiPattern::NoResponseValidation => p.validate_tool_responses = false,
            AntiPattern::NoAutoRollback => p.auto_rollback = false,
            AntiPattern::ReplicationLagBeyondRpo | AntiPattern::SnapshotsSameRegion => {}
        }
    }
}
