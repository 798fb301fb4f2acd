//! The orchestrator: mints task ids, grants leases with fencing tokens,
//! takes the workers' durable writes, runs the recovery service, and
//! replicates its store to the other region.
//!
//! Durable state is the [`Store`] (and the role); everything else is
//! volatile and rebuilt from the store by [`Orchestrator::start`], which is
//! what a restart or a promotion runs.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::components::env::{Env, Note, Timer};
use crate::components::ids::{HostId, JobId, Micros, TaskId, US_PER_MS};
use crate::components::lazy_timer::LazyTimer;
use crate::components::store::{Lease, NO_DECISION, Op, Store, TaskStatus};
use crate::components::wire::{Grant, Msg, Recs, WorkerWrite};

/// Records per replication message (a message stays small; a tick sends as
/// many as its backlog needs).
pub const REPLICATE_BATCH_RECORDS: usize = 65_536;

/// How structured state reaches the other region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Replication {
    /// No replica.
    None,
    /// A write is acknowledged only once the replica has it. With
    /// `degrade_after_ms`, a write the replica has not confirmed within that
    /// long is acknowledged anyway (semi-synchronous fallback, as MySQL's
    /// semi-sync timeout): writes keep flowing through a partition, at the
    /// price of an RPO above zero while degraded.
    Sync {
        /// Fall back to asynchronous after this long without the replica.
        #[serde(default)]
        degrade_after_ms: Option<u64>,
    },
    /// Writes are shipped in batches every `interval_ms`, each record once
    /// it is `lag_ms` old.
    Async {
        /// Replication delay.
        lag_ms: u64,
        /// Batch interval.
        interval_ms: u64,
    },
}

/// Orchestrator settings.
#[derive(Clone, Copy, Debug)]
pub struct OrchConfig {
    /// Lease duration.
    pub lease_ms: u64,
    /// Recovery scan interval.
    pub recovery_scan_ms: u64,
    /// Check fencing tokens on writes.
    pub fencing: bool,
    /// Replication mode.
    pub replication: Replication,
    /// Where the replica lives.
    pub replica: Option<HostId>,
    /// The client to notify of finished jobs.
    pub client: HostId,
    /// Time leases on the wall clock (anti-pattern) instead of monotonic.
    pub wall_clock_leases: bool,
    /// Watch the error rate after a deploy and roll a bad version back.
    pub auto_rollback: bool,
    /// Create at most one task per job (off: trust the queue's dedupe).
    pub idempotent_create: bool,
    /// The failover controller's promotion path (failure threshold ×
    /// health interval + health timeout) when a controller health-checks
    /// this orchestrator, `None` when nothing does. A primary that has not
    /// heard a health check for longer than this self-fences: the
    /// controller may have declared it down and promoted the standby, so
    /// it grants and renews no lease and takes no worker write until it
    /// hears the controller again (a leader lease).
    pub controller_silence_us: Option<Micros>,
    /// How long the store takes to commit one handler's writes (a database
    /// transaction): commits run one at a time and a reply waits for its
    /// own. 0: free (the simulator's default; the live process waits for
    /// PostgreSQL instead).
    pub commit_us: Micros,
}

/// A prompt/config version as workers receive it with their lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Prompt {
    /// Version number.
    pub version: u32,
    /// Its defects, per mille of model outputs that fail validation
    /// (ground truth of the fault; the stack only sees the failures).
    pub defect_permille: u16,
}

/// Synchronous replication re-ships writes its replica has not confirmed
/// after this long (a replica that was down or partitioned catches up).
pub const SYNC_RESHIP_US: Micros = crate::components::ids::US_PER_S;

/// How long the health checks after a deploy watch model outputs before
/// deciding: the window runs from the first output under the version.
pub const DEPLOY_WINDOW_US: Micros = 60 * crate::components::ids::US_PER_S;
/// Error rate (per mille of model outputs) above which a deploy is bad.
pub const DEPLOY_MAX_ERROR_PERMILLE: u64 = 200;
/// Fewest model outputs on which the health checks pass a version: with
/// fewer, one invalid output cannot lift the measured rate above
/// [`DEPLOY_MAX_ERROR_PERMILLE`], so a window that saw fewer is extended by
/// another window (a version is still failed on any sample above the rate).
/// Seed 821 case 88989: under a provider's 29 s retry-after a window held
/// one valid output and passed a version 70 % of whose outputs failed.
pub const DEPLOY_MIN_OUTPUTS: u64 = 1_000 / DEPLOY_MAX_ERROR_PERMILLE;
/// How long a rollback takes once decided.
pub const ROLLBACK_US: Micros = 30 * crate::components::ids::US_PER_S;

#[derive(Clone, Copy, Debug, Default)]
struct DeployWatch {
    outputs: u64,
    invalid: u64,
    /// When the first output under the watched version was counted.
    first_output_us: Option<Micros>,
    /// The health checks found the version bad; the rollback is under way.
    rolling_back: bool,
}

impl DeployWatch {
    /// Counts one model output under the watched version.
    fn count(&mut self, now_us: Micros, invalid: bool) {
        self.first_output_us.get_or_insert(now_us);
        self.outputs += 1;
        self.invalid += u64::from(invalid);
    }

    /// How long the check at `now_us` must still wait: the window runs
    /// from the first output, so a version is judged on a whole window of
    /// traffic, not on the few outputs that happen to precede a check
    /// (traffic held up since the deploy, say by a cut, and then a single
    /// lucky output, judged a 90 %-defective version healthy).
    fn wait_us(&self, now_us: Micros) -> Option<Micros> {
        match self.first_output_us {
            None => Some(DEPLOY_WINDOW_US), // no traffic yet
            Some(first) => (first + DEPLOY_WINDOW_US).checked_sub(now_us).filter(|&w| w > 0),
        }
    }
}

/// The orchestrator component.
pub struct Orchestrator {
    cfg: OrchConfig,
    // durable
    store: Store,
    primary: bool,
    // volatile
    serving: bool,
    ready: VecDeque<TaskId>,
    /// Workers waiting for work, in arrival order.
    parked: VecDeque<HostId>,
    /// The request number of each parked worker's lease request, when it
    /// arrived (lease clock) and the worker's `sent_us` (echoed in the
    /// grant), by host (`None`: not parked), so a repeated request is found
    /// in O(1).
    parked_req: Vec<Option<(u32, Micros, Micros)>>,
    expiries: BinaryHeap<Reverse<(Micros, TaskId)>>,
    /// Until when a promoted store grants none of the tasks it inherited
    /// (see [`Orchestrator::inherited_held`]); 0 when it holds none back.
    hold_inherited_until_us: Micros,
    /// Inherited tasks taken off `ready` while held back, in queue order.
    held: Vec<TaskId>,
    /// Replies waiting for the synchronous replica: the record's LSN, when
    /// it was committed, the addressee, the reply, and when its commit ends
    /// (see `commit_us`).
    pending_sync: VecDeque<(u64, Micros, HostId, Msg, Micros)>,
    /// When the store finishes the commits queued so far (`commit_us`).
    store_free_at_us: Micros,
    /// Whether the running handler already opened its transaction: its
    /// further commits join it (`commit_us`).
    in_txn: bool,
    /// Whether a `SyncDegrade` timer is pending. Timers are not
    /// deduplicated by the runtime: arming one per empty-to-busy transition
    /// while an earlier one still waits would grow a chain of timers that
    /// each re-arm (without bound over a long horizon).
    sync_degrade_armed: bool,
    replica_acked: u64,
    /// The recovery scan, armed while a lease is outstanding or a task held.
    scan: LazyTimer,
    /// The replication tick, armed while records are not acknowledged.
    tick: LazyTimer,
    /// The last `Replicate` batch shipped (first and end index, records),
    /// sent again as long as the replica has not acknowledged more and the
    /// cut-off has not moved.
    shipped: Option<(usize, usize, std::sync::Arc<[crate::components::store::LogRec]>)>,
    stale_accepted: u64,
    reorder: std::collections::BTreeMap<u64, crate::components::store::LogRec>,
    extra_lag_us: Micros,
    prompt: Prompt,
    last_good: Prompt,
    watch: Option<DeployWatch>,
    /// When the failover controller was last heard (a health check, or the
    /// start-up that asked it who is primary).
    heard_controller_us: Micros,
    /// Queue deliveries refused while not serving or self-fenced: the queue
    /// node and the sequences, pulled once this serves (volatile).
    refused: Option<(HostId, BTreeSet<u64>)>,
}

impl Orchestrator {
    /// A new orchestrator, primary or standby.
    pub fn new(cfg: OrchConfig, primary: bool) -> Self {
        Orchestrator {
            cfg,
            store: Store::new(),
            primary,
            serving: false,
            ready: VecDeque::new(),
            parked: VecDeque::new(),
            parked_req: Vec::new(),
            expiries: BinaryHeap::new(),
            hold_inherited_until_us: 0,
            held: Vec::new(),
            pending_sync: VecDeque::new(),
            store_free_at_us: 0,
            in_txn: false,
            sync_degrade_armed: false,
            replica_acked: 0,
            scan: LazyTimer::default(),
            tick: LazyTimer::default(),
            shipped: None,
            stale_accepted: 0,
            reorder: std::collections::BTreeMap::new(),
            extra_lag_us: 0,
            prompt: Prompt::default(),
            last_good: Prompt::default(),
            watch: None,
            heard_controller_us: 0,
            refused: None,
        }
    }

    /// A primary restarted on its durable store (a live process loads it
    /// from its database); [`Orchestrator::start`] rebuilds the rest.
    pub fn with_store(cfg: OrchConfig, store: Store) -> Self {
        Orchestrator { store, ..Orchestrator::new(cfg, true) }
    }

    /// A standby on the store replication gave it (a live process on a
    /// database PostgreSQL has just promoted), to be promoted by `Promote`.
    pub fn standby_with_store(cfg: OrchConfig, store: Store) -> Self {
        Orchestrator { store, ..Orchestrator::new(cfg, false) }
    }

    /// The durable store (ground truth of what is recorded).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether this orchestrator has nothing left to hand out or answer: it
    /// neither serves nor is primary, or it holds no task that is queued or
    /// leased, no task held back, no reply waiting for the replica, no
    /// refused queue delivery and no deploy under watch. A lease request,
    /// a recovery scan or a health check then changes nothing a worker or
    /// the measurement sees.
    pub fn is_idle(&self) -> bool {
        if !(self.primary || self.serving) {
            return true;
        }
        self.ready.is_empty()
            && self.held.is_empty()
            && self.pending_sync.is_empty()
            && self.refused.is_none()
            && self.watch.is_none()
            && self.store.tasks().iter().all(|t| matches!(t.status, TaskStatus::Done | TaskStatus::Failed))
    }

    /// Whether this orchestrator is the primary.
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Whether it serves traffic now.
    pub fn is_serving(&self) -> bool {
        self.serving
    }

    /// Writes accepted from a holder whose lease had moved on (possible only
    /// with fencing off): ground truth for the fencing invariant.
    pub fn stale_writes_accepted(&self) -> u64 {
        self.stale_accepted
    }

    /// Highest LSN the replica has confirmed.
    pub fn replica_acked(&self) -> u64 {
        self.replica_acked
    }

    /// The clock leases are timed on.
    fn lease_clock(&self, env: &impl Env) -> Micros {
        if self.cfg.wall_clock_leases { env.wall_now_us() } else { env.now_us() }
    }

    /// A replication-lag spike: records ship this much later than usual.
    pub fn set_extra_lag_us(&mut self, us: Micros) {
        self.extra_lag_us = us;
    }

    /// The live prompt/config version.
    pub fn prompt(&self) -> Prompt {
        self.prompt
    }

    /// Deploys a new prompt/config version (the bad-deploy fault: its
    /// defects are the fault's ground truth). With automated rollback, health
    /// checks watch the model-output error rate for a window.
    pub fn deploy(&mut self, env: &mut impl Env, defect_permille: u16) {
        if self.watch.is_none() {
            self.last_good = self.prompt;
        }
        self.prompt = Prompt { version: self.prompt.version + 1, defect_permille };
        env.note(Note::Deployed { version: self.prompt.version });
        if self.cfg.auto_rollback {
            self.watch = Some(DeployWatch::default());
            env.set_timer(DEPLOY_WINDOW_US, Timer::DeployCheck);
        }
    }

    /// Drops volatile state (a crash). The store survives (it is committed).
    pub fn crash(&mut self) {
        self.serving = false;
        self.ready.clear();
        self.parked.clear();
        self.parked_req.clear();
        self.expiries.clear();
        self.held.clear();
        self.pending_sync.clear();
        self.store_free_at_us = 0; // the commits under way die with it
        self.sync_degrade_armed = false; // the crash drops its timers
        self.scan.disarm(); // (a demotion's are stale once re-armed)
        self.tick.disarm();
        self.shipped = None;
        self.reorder.clear();
        self.refused = None;
    }

    /// A returning old primary that was failed away from: it must not serve.
    pub fn demote(&mut self) {
        self.primary = false;
        self.serving = false;
    }

    /// Takes the store out (the region's storage is lost; the harness keeps
    /// the old log as evidence of what was acknowledged).
    pub fn take_store(&mut self) -> Store {
        self.crash();
        self.replica_acked = 0;
        std::mem::take(&mut self.store)
    }

    /// Storage lost with its region.
    pub fn wipe(&mut self) {
        self.crash();
        self.store = Store::new();
        self.replica_acked = 0;
    }

    /// Start-up: rebuild the queues from the store; a primary serves at once.
    pub fn start(&mut self, env: &mut impl Env) {
        self.in_txn = false; // a new handler: a new transaction
        // Start-up asks the controller who is primary (the harness's
        // `start_host`): that answer counts as hearing it.
        self.heard_controller_us = env.now_us();
        self.ready.clear();
        self.held.clear();
        self.expiries.clear();
        // A restarted promoted store holds its inherited tasks back for a
        // lease from its promotion (when it started serving is not durable).
        self.hold_inherited_until_us = match self.store.promoted_at_us() {
            Some(p) if !self.strictly_synchronous() => p + self.cfg.lease_ms * US_PER_MS,
            _ => 0,
        };
        for t in self.store.tasks() {
            match t.status {
                TaskStatus::Queued => self.ready.push_back(t.id),
                TaskStatus::Leased => self.expiries.push(Reverse((t.lease.expires_us, t.id))),
                TaskStatus::Done | TaskStatus::Failed => {}
            }
        }
        self.serving = self.primary;
        if self.primary {
            self.arm(env);
            self.resume_deploy_watch(env);
        }
    }

    /// After a restart, a deploy still being watched or rolled back goes on
    /// (its timers died with the process; the version and the decision are
    /// deployment state, kept with the store): a rollback under way is
    /// carried out, and an undecided watch starts a new window (the counts
    /// before the crash were the process's telemetry, lost with it).
    fn resume_deploy_watch(&mut self, env: &mut impl Env) {
        let Some(w) = self.watch.as_mut() else { return };
        if w.rolling_back {
            env.set_timer(ROLLBACK_US, Timer::RollbackDone);
        } else {
            *w = DeployWatch::default();
            env.set_timer(DEPLOY_WINDOW_US, Timer::DeployCheck);
        }
    }

    /// Starts the recovery scan's and the replication tick's schedules
    /// (serving starts); each is armed only while it has work.
    fn arm(&mut self, env: &mut impl Env) {
        let now_us = env.now_us();
        self.scan.restart(now_us);
        self.tick.restart(now_us);
        self.arm_scan(env);
        self.arm_tick(env);
    }

    /// Arms the recovery scan for the first firing that can find work: an
    /// outstanding lease expired (the earliest expiry; every period when
    /// leases run on the wall clock, which a skew moves) or the held-back
    /// inherited tasks released. A scan in between would find nothing.
    fn arm_scan(&mut self, env: &mut impl Env) {
        if !self.serving {
            return;
        }
        let now_us = env.now_us();
        let expiry_us = match self.expiries.peek() {
            None => None,
            Some(_) if self.cfg.wall_clock_leases => Some(now_us),
            Some(&Reverse((expires_us, _))) => Some(expires_us),
        };
        let held_us = (!self.held.is_empty()).then_some(self.hold_inherited_until_us);
        let Some(not_before_us) = expiry_us.into_iter().chain(held_us).min() else { return };
        if let Some(after_us) = self.scan.arm(self.cfg.recovery_scan_ms * US_PER_MS, now_us, not_before_us) {
            env.set_timer(after_us, Timer::RecoveryScan);
        }
    }

    /// Arms the replication tick for the first firing that ships: the
    /// oldest record the replica has not acknowledged is old enough (the
    /// base lag; a lag spike only delays, and that firing re-arms).
    /// Synchronous replication ships each write as it commits; its tick
    /// re-ships what a replica that was away has not confirmed after
    /// [`SYNC_RESHIP_US`].
    fn arm_tick(&mut self, env: &mut impl Env) {
        let (period_us, lag_us) = match (self.cfg.replication, self.cfg.replica) {
            (Replication::Async { lag_ms, interval_ms }, Some(_)) => (interval_ms * US_PER_MS, lag_ms * US_PER_MS),
            (Replication::Sync { .. }, Some(_)) => (SYNC_RESHIP_US, SYNC_RESHIP_US),
            _ => return,
        };
        if !self.primary {
            return;
        }
        let Some(oldest) = self.store.log().get(self.replica_acked as usize) else { return };
        if let Some(after_us) = self.tick.arm(period_us, env.now_us(), oldest.at_us.saturating_add(lag_us)) {
            env.set_timer(after_us, Timer::ReplicationTick);
        }
    }

    /// Whether this primary has self-fenced: it has not heard the failover
    /// controller's health checks for longer than the controller takes to
    /// declare it down, so the standby may be primary already (the
    /// controller's `Demote` may never reach a primary cut from it). It
    /// grants and renews no lease and takes no worker write until a health
    /// check arrives again (the controller checks only the primary it still
    /// watches, so a check means it is still primary).
    pub fn self_fenced(&self, env: &impl Env) -> bool {
        self.primary
            && self.cfg.controller_silence_us.is_some_and(|s| env.now_us() > self.heard_controller_us.saturating_add(s))
    }

    /// Promotion of a standby: a new timeline, then serve after `Open`.
    fn promote(&mut self, env: &mut impl Env) {
        if self.primary {
            return;
        }
        self.primary = true;
        self.store.new_timeline(env.now_us());
        self.cfg.replica = None;
        self.start(env);
        self.fence_inherited_leases(env);
        // Promoted, but traffic is opened by the controller once the region
        // is scaled up and hydrated.
        self.serving = false;
        env.note(Note::Promoted);
    }

    /// Unless replication was synchronous (every acknowledged write is
    /// here), a lease inherited from the old primary is taken back at
    /// promotion: its holder may have made progress this store never got
    /// (a decision), and its later writes would land on a record missing
    /// it. The task is requeued and its next holder reconciles (the record
    /// may be stale).
    fn fence_inherited_leases(&mut self, env: &mut impl Env) {
        if self.strictly_synchronous() {
            return;
        }
        let leased: Vec<TaskId> =
            self.store.tasks().iter().filter(|t| t.status == TaskStatus::Leased).map(|t| t.id).collect();
        for task in leased {
            self.commit(env, Op::Requeue { task });
            self.ready.push_back(task);
        }
    }

    /// Whether every write this store acknowledges is on its replica first
    /// (synchronous replication that never degrades): a promoted replica
    /// then holds every lease its old primary granted or renewed.
    fn strictly_synchronous(&self) -> bool {
        matches!(self.cfg.replication, Replication::Sync { degrade_after_ms: None })
    }

    /// Whether task `t` is held back: a promoted store (unless replication
    /// was strictly synchronous) grants no task it inherited — one that
    /// predates the promotion, or a replay of a job the old primary may
    /// still be running — until a whole lease has passed since it started
    /// serving. The old primary may have granted or renewed such a task's
    /// lease after the last record this store received, up to when it was
    /// demoted or self-fenced (about when this store was told to serve),
    /// and its holder, cut off from no API, may be calling one under that
    /// lease: a new holder's lookup or call by the same key would run the
    /// step a second time at once. Fencing rejects the old holder's writes
    /// from the promotion on; this keeps its calls from overlapping.
    fn inherited_held(&self, env: &impl Env, t: &crate::components::store::TaskRec) -> bool {
        env.now_us() < self.hold_inherited_until_us && self.store.may_be_stale(t)
    }

    /// Puts the held-back inherited tasks at the front of the queue once
    /// their hold is over, oldest submission first (by job id, the
    /// client's submission order): the order they reached this store in
    /// is a race between the client's retries after a failover (live, the
    /// jobs in flight at the fault ran first or last by chance, 3 s apart
    /// in RTO), and the oldest work is what has waited longest.
    fn release_held(&mut self, env: &impl Env) {
        if self.held.is_empty() || env.now_us() < self.hold_inherited_until_us {
            return;
        }
        let store = &self.store;
        self.held.sort_by_key(|&task| store.task(task).map(|t| t.job));
        for task in self.held.drain(..).rev() {
            self.ready.push_front(task);
        }
    }

    fn commit(&mut self, env: &mut impl Env, op: Op) -> u64 {
        let lsn = self.store.commit(env.now_us(), op);
        if self.cfg.commit_us > 0 && !self.in_txn {
            // This handler's transaction queues behind the ones before it.
            self.in_txn = true;
            self.store_free_at_us = self.store_free_at_us.max(env.now_us()) + self.cfg.commit_us;
        }
        if matches!(self.cfg.replication, Replication::Sync { .. })
            && let Some(r) = self.cfg.replica
        {
            let rec = *self.store.last_rec().expect("just committed");
            // Built only if the link delivers it to a replica that is up.
            env.send_built(r, || Msg::Replicate { recs: Recs::One(rec) });
        }
        if !self.tick.is_armed() {
            self.arm_tick(env); // a record to ship
        }
        lsn
    }

    /// Replies once `lsn` is durable per the replication mode.
    fn reply_at(&mut self, env: &mut impl Env, lsn: u64, to: HostId, msg: Msg) {
        if let Replication::Sync { degrade_after_ms } = self.cfg.replication
            && self.cfg.replica.is_some()
            && lsn > self.replica_acked
        {
            if let Some(ms) = degrade_after_ms
                && !self.sync_degrade_armed
            {
                // The oldest pending write is this one (the queue is empty
                // or an armed timer already covers an older one).
                self.sync_degrade_armed = true;
                env.set_timer(ms * US_PER_MS, Timer::SyncDegrade);
            }
            self.pending_sync.push_back((lsn, env.now_us(), to, msg, self.store_free_at_us));
        } else {
            Self::send_committed(env, self.store_free_at_us, to, msg);
        }
    }

    /// Sends a reply whose commit ends at `committed_at_us` (now, or later
    /// while the store is still committing it: `commit_us`).
    fn send_committed(env: &mut impl Env, committed_at_us: Micros, to: HostId, msg: Msg) {
        match committed_at_us.saturating_sub(env.now_us()) {
            0 => env.send(to, msg),
            wait_us => env.send_after(wait_us, to, msg),
        }
    }

    /// Handles a message.
    pub fn on_msg(&mut self, env: &mut impl Env, from: HostId, msg: Msg) {
        self.in_txn = false; // a new handler: a new transaction
        match msg {
            Msg::Submit { job, template, steps, probe, replay } => {
                if let Some(lsn) = self.create(env, job, template, steps, probe, replay) {
                    self.reply_at(env, lsn, from, Msg::SubmitAck { job });
                    self.dispatch(env);
                }
            }
            Msg::Deliver { seq, job, template, steps, probe, replay } => {
                if let Some(lsn) = self.create(env, job, template, steps, probe, replay) {
                    self.reply_at(env, lsn, from, Msg::QueueAck { seq });
                    self.dispatch(env);
                } else {
                    self.refuse(from, seq);
                }
            }
            Msg::LeaseReq { req, sent_us } => {
                let i = from.0 as usize;
                if i >= self.parked_req.len() {
                    self.parked_req.resize(i + 1, None);
                }
                // A worker already waiting keeps its place with the new number.
                let arrived_us = self.lease_clock(env);
                if self.parked_req[i].replace((req, arrived_us, sent_us)).is_none() {
                    self.parked.push_back(from);
                }
                if self.serving {
                    self.dispatch(env);
                }
            }
            Msg::Write { req, token, write } => self.on_write(env, from, req, token, write),
            Msg::Heartbeat { task, token, sent_us } => {
                let Some(t) = self.store.task(task) else {
                    return;
                };
                if self.self_fenced(env) {
                    return; // as unreachable: the holder's own deadline runs
                }
                let ok = self.serving && t.status == TaskStatus::Leased && t.lease.token == token;
                if ok {
                    let expires_us = self.lease_clock(env) + self.cfg.lease_ms * US_PER_MS;
                    let lsn = self.commit(env, Op::Renew { task, expires_us });
                    self.expiries.push(Reverse((expires_us, task)));
                    self.arm_scan(env);
                    let prompt = self.prompt;
                    self.reply_at(
                        env,
                        lsn,
                        from,
                        Msg::HeartbeatAck { task, ok, lease_ms: self.cfg.lease_ms, prompt, sent_us },
                    );
                } else {
                    env.send(from, Msg::HeartbeatAck { task, ok, lease_ms: 0, prompt: self.prompt, sent_us });
                }
            }
            Msg::Replicate { recs } => {
                if self.primary {
                    return;
                }
                // Records can overtake each other on the link: hold back any
                // that arrive ahead of a gap and apply in LSN order.
                for rec in recs.iter() {
                    if rec.lsn > self.store.last_lsn() + 1 {
                        self.reorder.insert(rec.lsn, *rec);
                    } else {
                        self.store.apply_replicated(rec);
                    }
                }
                while let Some(rec) = self.reorder.remove(&(self.store.last_lsn() + 1)) {
                    self.store.apply_replicated(&rec);
                }
                // Drop what is now applied from the front (not a `retain`,
                // which scans every held record on every message: quadratic
                // while a gap holds back a long run).
                let applied = self.store.last_lsn();
                while let Some(e) = self.reorder.first_entry() {
                    if *e.key() > applied {
                        break;
                    }
                    e.remove();
                }
                env.send(from, Msg::ReplicateAck { lsn: self.store.last_lsn() });
            }
            Msg::ReplicateAck { lsn } => {
                self.replica_acked = self.replica_acked.max(lsn);
                while let Some((l, _, _, _, _)) = self.pending_sync.front() {
                    if *l > self.replica_acked {
                        break;
                    }
                    let (_, _, to, m, committed_at_us) = self.pending_sync.pop_front().expect("front");
                    Self::send_committed(env, committed_at_us, to, m);
                }
            }
            Msg::Ping { seq } => {
                // One delivery may stand for several copies of the check:
                // each is answered (see `region::ping_seq`).
                let (seq, copies) = crate::components::region::split_ping_seq(seq);
                let was_fenced = self.self_fenced(env);
                self.heard_controller_us = env.now_us();
                if self.serving {
                    env.send_copies(from, copies, |_| Msg::Pong { seq });
                    if was_fenced {
                        self.dispatch(env); // workers parked while fenced
                        self.pull_refused(env);
                    }
                }
            }
            Msg::OutputRejected { version } => {
                // Telemetry for the health checks after a deploy: a model
                // output under `version` failed validation.
                if let Some(w) = self.watch.as_mut()
                    && version == self.prompt.version
                {
                    w.count(env.now_us(), true);
                }
            }
            Msg::Promote => {
                self.promote(env);
                env.send(from, Msg::PromoteAck);
            }
            Msg::PromotedQuery if self.primary => env.send(from, Msg::PromoteAck),
            Msg::Demote if self.primary => {
                self.demote();
                self.crash(); // drop volatile queues; the store stays
                env.note(Note::Demoted);
            }
            Msg::Open => {
                if self.primary && !self.serving {
                    self.serving = true;
                    if self.store.promoted_at_us().is_some() && !self.strictly_synchronous() {
                        let until_us = env.now_us() + self.cfg.lease_ms * US_PER_MS;
                        self.hold_inherited_until_us = self.hold_inherited_until_us.max(until_us);
                    }
                    self.arm(env);
                    env.note(Note::Serving);
                    self.dispatch(env);
                    self.pull_refused(env);
                }
                if self.serving {
                    env.send(from, Msg::Opened);
                }
            }
            _ => {}
        }
    }

    /// Remembers a queue delivery refused while not serving or self-fenced
    /// (the deliveries of one queue node: the active one).
    fn refuse(&mut self, queue: HostId, seq: u64) {
        match &mut self.refused {
            Some((q, seqs)) if *q == queue => {
                seqs.insert(seq);
            }
            _ => self.refused = Some((queue, BTreeSet::from([seq]))),
        }
    }

    /// Now serving: asks the queue for the deliveries it refused, as a
    /// consumer that attaches fetches what is pending (otherwise each would
    /// wait out its AckWait after this serves).
    fn pull_refused(&mut self, env: &mut impl Env) {
        if let Some((queue, seqs)) = self.refused.take() {
            env.send(queue, Msg::QueuePull { seqs: seqs.into_iter().collect() });
        }
    }

    /// Creates the task for a job (once per job under idempotent create) and
    /// queues it; the caller acknowledges, then dispatches. Returns the LSN
    /// to acknowledge at, or `None` when not serving.
    fn create(
        &mut self,
        env: &mut impl Env,
        job: JobId,
        template: u16,
        steps: u16,
        probe: bool,
        replay: bool,
    ) -> Option<u64> {
        // Not serving, or self-fenced (the standby may be primary already,
        // and a job accepted here would be lost with this log when the
        // region is failed away from): the sender retries, and finds the
        // serving region once DNS names it.
        if !self.serving || self.self_fenced(env) {
            return None;
        }
        if self.cfg.idempotent_create && self.store.task_for_job(job).is_some() {
            return Some(self.store.last_lsn());
        }
        let task = self.store.next_task_id();
        let lsn = self.commit(env, Op::Create { task, job, template, steps, probe, replay });
        self.ready.push_back(task);
        Some(lsn)
    }

    fn on_write(&mut self, env: &mut impl Env, from: HostId, req: u32, token: u64, write: WorkerWrite) {
        if !self.serving || self.self_fenced(env) {
            return; // the worker retries; a fenced primary may resume
        }
        let task = write.task();
        let Some(t) = self.store.task(task) else {
            env.send(from, Msg::WriteAck { req, ok: false });
            return;
        };
        let current = t.status == TaskStatus::Leased && t.lease.token == token && t.lease.holder == from;
        if !current {
            if self.cfg.fencing {
                env.note(Note::Fenced { task });
                env.send(from, Msg::WriteAck { req, ok: false });
                return;
            }
            self.stale_accepted += 1;
        }
        let lsn = match write {
            WorkerWrite::Intent { task, ordinal, key, args } => {
                self.commit(env, Op::Intent { task, ordinal, key, args })
            }
            WorkerWrite::Result { task, ordinal, decision, reconciled, last, corrupt, adopt, version } => {
                if let Some((g, d)) = adopt {
                    self.commit(env, Op::Result { task, ordinal: g, decision: d, reconciled: true, corrupt: false });
                }
                // A retransmitted result (its acknowledgement was lost) is
                // the same output: counted once, or a lossy link that drops
                // the rejections' telemetry and makes the worker resend its
                // one valid result passes a bad version.
                if let Some(w) = self.watch.as_mut()
                    && decision != NO_DECISION
                    && version == Some(self.prompt.version)
                    && !self.store.task(task).is_some_and(|t| t.step_done(ordinal))
                {
                    w.count(env.now_us(), false);
                }
                let already = self.store.task(task).is_some_and(|t| t.status == TaskStatus::Done);
                let mut lsn = self.commit(env, Op::Result { task, ordinal, decision, reconciled, corrupt });
                if last && !already {
                    lsn = self.commit(env, Op::Complete { task });
                    self.notify_done(env, task);
                }
                lsn
            }
            WorkerWrite::Session { task, steps } => {
                let mut lsn = 0;
                for ordinal in 0..steps {
                    lsn = self.commit(
                        env,
                        Op::Result { task, ordinal, decision: NO_DECISION, reconciled: false, corrupt: false },
                    );
                }
                if self.store.task(task).is_some_and(|t| t.status != TaskStatus::Done) {
                    lsn = self.commit(env, Op::Complete { task });
                    self.notify_done(env, task);
                }
                lsn
            }
            WorkerWrite::Fail { task, ordinal } => self.commit(env, Op::Fail { task, ordinal }),
        };
        self.reply_at(env, lsn, from, Msg::WriteAck { req, ok: true });
    }

    fn notify_done(&mut self, env: &mut impl Env, task: TaskId) {
        if let Some(t) = self.store.task(task) {
            env.send(self.cfg.client, Msg::Completed { job: t.job });
        }
    }

    /// Hands queued tasks to parked workers.
    fn dispatch(&mut self, env: &mut impl Env) {
        if self.self_fenced(env) {
            return; // the parked workers wait for a health check
        }
        while !self.parked.is_empty() {
            let Some(task) = self.ready.pop_front() else {
                return;
            };
            let Some(t) = self.store.task(task) else {
                continue;
            };
            if t.status != TaskStatus::Queued {
                continue;
            }
            if self.inherited_held(env, t) {
                self.held.push(task);
                self.arm_scan(env); // releases it
                continue;
            }
            let worker = self.parked.pop_front().expect("non-empty");
            let (req, arrived_us, asked_us) =
                self.parked_req[worker.0 as usize].take().expect("a parked worker has a request");
            let resumed = t.lease.token > 0;
            // A promoted store may not hold every lease its old primary
            // granted (asynchronous, or semi-synchronous after a cut): its
            // tokens start above any the old timeline handed out.
            let token = (t.lease.token + 1).max(self.store.token_floor() + 1);
            let now_us = self.lease_clock(env);
            let expires_us = now_us + self.cfg.lease_ms * US_PER_MS;
            let lease = Lease { holder: worker, token, expires_us };
            let lsn = self.commit(env, Op::Lease { task, lease });
            self.expiries.push(Reverse((expires_us, task)));
            self.arm_scan(env); // finds it expired
            let t = self.store.task(task).expect("exists");
            let grant = Grant {
                task,
                job: t.job,
                uid: task_uid(t.job),
                prompt: self.prompt,
                template: t.template,
                token,
                lease_ms: self.cfg.lease_ms,
                parked_us: now_us.saturating_sub(arrived_us),
                asked_us,
                cursor: t.cursor,
                // A task never leased before has nothing recorded yet.
                steps: if resumed { t.steps.clone() } else { Box::default() },
                resumed,
                replay: self.store.may_be_stale(t),
            };
            self.reply_at(env, lsn, worker, Msg::LeaseGrant { req, grant: Box::new(grant) });
        }
    }

    /// Handles a timer.
    pub fn on_timer(&mut self, env: &mut impl Env, timer: Timer) {
        self.in_txn = false; // a new handler: a new transaction
        match timer {
            Timer::RecoveryScan if self.scan.fired(env.now_us()) => {
                if self.serving {
                    self.recovery_scan(env);
                }
                self.arm_scan(env);
            }
            Timer::SyncDegrade => {
                // Semi-synchronous fallback: release writes the replica has
                // not confirmed within the limit.
                self.sync_degrade_armed = false;
                let Replication::Sync { degrade_after_ms: Some(ms) } = self.cfg.replication else { return };
                let limit = ms * US_PER_MS;
                let now = env.now_us();
                let mut released = false;
                while let Some(&(_, at, _, _, _)) = self.pending_sync.front() {
                    if at + limit > now {
                        break;
                    }
                    let (_, _, to, m, committed_at_us) = self.pending_sync.pop_front().expect("front");
                    Self::send_committed(env, committed_at_us, to, m);
                    released = true;
                }
                if released {
                    env.note(Note::SyncDegraded);
                }
                if let Some(&(_, at, _, _, _)) = self.pending_sync.front() {
                    self.sync_degrade_armed = true;
                    env.set_timer(at + limit - now, Timer::SyncDegrade);
                }
            }
            Timer::DeployCheck => {
                let Some(w) = self.watch.as_mut() else { return };
                if w.rolling_back {
                    return; // decided before a restart; the rollback is pending
                }
                if let Some(wait_us) = w.wait_us(env.now_us()) {
                    env.set_timer(wait_us, Timer::DeployCheck);
                } else if w.invalid * 1_000 > w.outputs * DEPLOY_MAX_ERROR_PERMILLE {
                    w.rolling_back = true;
                    env.note(Note::RollbackStarted { version: self.prompt.version });
                    env.set_timer(ROLLBACK_US, Timer::RollbackDone);
                } else if w.outputs < DEPLOY_MIN_OUTPUTS {
                    env.set_timer(DEPLOY_WINDOW_US, Timer::DeployCheck); // too few to pass
                } else {
                    self.watch = None; // healthy
                }
            }
            Timer::RollbackDone => {
                self.watch = None;
                self.prompt = Prompt { version: self.prompt.version + 1, ..self.last_good };
                env.note(Note::RolledBack { version: self.prompt.version });
            }
            Timer::ReplicationTick if self.tick.fired(env.now_us()) => {
                match (self.cfg.replication, self.cfg.replica) {
                    _ if !self.primary => {}
                    (Replication::Async { lag_ms, .. }, Some(replica)) => {
                        self.ship(env, replica, lag_ms * US_PER_MS + self.extra_lag_us);
                    }
                    // Only what has waited a full tick: the rest is in flight.
                    (Replication::Sync { .. }, Some(replica)) => self.ship(env, replica, SYNC_RESHIP_US),
                    _ => {}
                }
                self.arm_tick(env);
            }
            _ => {}
        }
    }

    fn ship(&mut self, env: &mut impl Env, replica: HostId, lag_us: Micros) {
        let cutoff = env.now_us().saturating_sub(lag_us);
        let log = self.store.log();
        let from = self.replica_acked as usize;
        let upto = log.partition_point_from(from, |r| r.at_us <= cutoff);
        // The whole backlog goes out every tick, in messages of a bounded
        // size (the replica reorders by LSN): a cap per tick would leave a
        // replica shipped to rarely behind for good.
        let mut start = from;
        while start < upto {
            let end = (start + REPLICATE_BATCH_RECORDS).min(upto);
            let shipped = &mut self.shipped;
            // Built only if the link delivers it: a backlog re-sent into a
            // cut every tick would otherwise be copied every tick.
            env.send_built(replica, || {
                let recs = match shipped {
                    // The same batch as last time (nothing acknowledged
                    // since, nothing newer old enough): shared, not copied.
                    Some((f, e, recs)) if (*f, *e) == (start, end) => recs.clone(),
                    _ => {
                        // From the open tail chunk's whole records as a
                        // slice (no lookup per record), else from a range of
                        // known length: either way straight into the shared
                        // allocation, copied once.
                        let recs: std::sync::Arc<[_]> = match log.whole(start, end) {
                            Some(tail) => tail.iter().copied().collect(),
                            None => (start..end).map(|i| log.get(i).expect("below the log's end")).collect(),
                        };
                        if start == from {
                            *shipped = Some((start, end, recs.clone()));
                        }
                        recs
                    }
                };
                Msg::Replicate { recs: Recs::Batch(recs) }
            });
            start = end;
        }
    }

    /// The recovery service: requeue every task whose lease expired, at the
    /// head of the queue.
    fn recovery_scan(&mut self, env: &mut impl Env) {
        self.release_held(env);
        let now = self.lease_clock(env);
        let mut requeued = 0;
        while let Some(&Reverse((expires, task))) = self.expiries.peek() {
            if expires > now {
                break;
            }
            self.expiries.pop();
            let Some(t) = self.store.task(task) else {
                continue;
            };
            if t.status != TaskStatus::Leased || t.lease.expires_us != expires {
                continue; // finished, requeued, or renewed since
            }
            let job = t.job;
            self.commit(env, Op::Requeue { task });
            self.ready.push_back(task);
            requeued += 1;
            env.note(Note::LeaseExpired { task, job });
        }
        // The expired tasks go first, in expiry order: they are the oldest
        // work in the queue, already late by a lease. At the tail they
        // waited for every job submitted since (live, a partition's task
        // came back 3.5 s after its requeue, behind the backlog).
        self.ready.rotate_right(requeued);
        self.dispatch(env);
    }
}

/// The task uid the orchestrator mints for a submission: a deterministic
/// function of the client's submission id (SplitMix64), so that the same
/// job always gets the same idempotency keys, whichever region creates it.
pub fn task_uid(job: crate::components::ids::JobId) -> u64 {
    let mut z = u64::from(job.0).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
