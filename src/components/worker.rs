//! The worker: leases tasks and runs the agent loop over a plan.
//!
//! Per step, under the reference policy: checkpoint (intent: key, args) →
//! call (model through the router, tool, vector memory) → persist the
//! result. On a resumed task whose current step has an intent but no
//! result, the side effect's status is unknown: the worker reconciles by
//! asking the API by key, adopts the effect if it exists, and otherwise
//! re-issues with the *same* key and arguments.
//!
//! The worker has at most one request outstanding (plus lease renewals),
//! guarded by one lazily re-armed watchdog timer, so an idle or busy worker
//! costs O(1) timer events per request timeout, not per request.
//!
//! All of its state is volatile: a crash drops it, including the scratchpad
//! (local disk). The fault hooks ([`Env::reach`]) sit at the exact phase
//! boundaries DOMAIN.md names.

use std::collections::BTreeMap;
use std::rc::Rc;

use rand::Rng;

use crate::components::env::{Env, Note, Phase, Service, Timer};
use crate::components::ids::{HostId, IdemKey, JobId, Micros, Origin, TaskId, US_PER_MS, US_PER_S};
use crate::components::ledger::{CallOutcome, Lookup};
use crate::components::policy::{Checkpointing, KeySource, Policy};
use crate::components::provider::ModelRequest;
use crate::components::router::{AttemptResult, Breaker, Router, RouterCall, Step as RouteStep};
use crate::components::store::{NO_DECISION, StepState};
use crate::components::vector::PointId;
use crate::components::wire::{Api, Grant, Msg, WorkerWrite};
use crate::components::workflow::{MAX_STEPS, StepKind, Template, args_for};

/// The longest an idle worker's lease request waits before it is sent
/// again (a long poll): an idle worker asks at least once per this period.
pub const LEASE_POLL_US: Micros = 30 * US_PER_S;

/// The shortest wait of an idle worker's lease request.
pub const MIN_LEASE_POLL_US: Micros = US_PER_S;

/// How long an idle worker's lease request waits before it is sent again,
/// to wherever the orchestrator is by then: one lease, within
/// [`MIN_LEASE_POLL_US`]..=[`LEASE_POLL_US`]. The orchestrator parks the
/// request until it has work, and never answers one that reached it just
/// before it died (a crash, a region lost): nothing tells the worker, so
/// its own wait bounds how long an idle worker serves a dead orchestrator.
/// The orchestrator judges a worker on the lease; the worker judges the
/// orchestrator on the same period. (A fixed 30 s left the idle region-b
/// workers of an active-active stack with 2 s leases parked at the lost
/// region for 30 s after the failover.)
pub fn lease_poll_us(lease_ms: u64) -> Micros {
    lease_ms.saturating_mul(US_PER_MS).clamp(MIN_LEASE_POLL_US, LEASE_POLL_US)
}

/// Everything workers of one stack share (read-only).
pub struct WorkerShared {
    /// The policy switches.
    pub policy: Policy,
    /// Workflow templates (the built-in set, [`crate::components::workflow::builtin_shared`]).
    pub templates: &'static [Template],
    /// Where to find the orchestrator: `None` = the global name (DNS),
    /// `Some(h)` = the region's own orchestrator.
    pub home: Option<HostId>,
    /// Tool API hosts.
    pub payment: HostId,
    /// Email API host.
    pub email: HostId,
    /// Search API host.
    pub search: HostId,
    /// Provider hosts in priority order (the last is this region's local model).
    pub providers: Vec<HostId>,
    /// Router settings.
    pub router: crate::components::router::RouterSettings,
    /// Request timeout towards the orchestrator and tools.
    pub request_timeout_us: Micros,
    /// Each provider's SDK timeout, by provider index.
    pub model_timeout_us: Vec<Micros>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Lease,
    Checkpoint,
    Lookup,
    Call,
    Persist,
}

struct Outstanding {
    req: u32,
    deadline_us: Micros,
    to: HostId,
    msg: Msg,
    wait: Wait,
}

struct TaskCtx {
    task: TaskId,
    /// The id keys are made from (differs from `task` under anti-pattern 7).
    key_task: u64,
    job: JobId,
    template: u16,
    token: u64,
    lease_until_us: Micros,
    cursor: u16,
    decisions: [u32; MAX_STEPS],
    /// Step at `cursor` has an intent but no result: status unknown.
    unknown: Option<(IdemKey, u64)>,
    /// Key and arguments of the current attempt.
    key: IdemKey,
    args: u64,
    /// A model step being re-run only to recover a lost decision.
    rederiving: Option<u16>,
    call: Option<RouterCall>,
    /// Steps run by this worker on this task (the prompt's transcript).
    transcript: u32,
    /// What a `Resume` timer continues.
    on_resume: Again,
    /// Planted bug: the result was persisted before the call.
    precommitted: bool,
    /// A `Fail` write is in flight.
    failing: bool,
    /// Steps whose decision is known to be durable (bit per ordinal).
    durable: u16,
    /// The current step's response did not match the schema and validation
    /// is off: its result is garbage.
    corrupt: bool,
    /// The result being persisted carries a decision.
    persisted_decision: bool,
    /// The prompt/config version this task runs with.
    prompt: crate::components::orchestrator::Prompt,
    /// The version the model request behind the decision in hand was made
    /// under; `None` when no model call made it (adopted from an API's
    /// record of the effect it governs: not an output of the live version).
    decided_under: Option<u32>,
    /// The record may be missing progress: reconcile before deciding or
    /// acting again (bit per step already reconciled).
    replay: bool,
    replay_checked: u16,
    /// What the outstanding lookup is for.
    lookup_for: LookupFor,
    /// A decision adopted from an API's record, to persist with the result.
    adopt: Option<(u16, u32)>,
}

/// Why a lookup by key was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LookupFor {
    /// The current side-effect step's status is unknown.
    Step,
    /// A task that may be missing progress: did the current side effect
    /// already happen? (No intent is known: if not, checkpoint, then call.)
    ReplayStep,
    /// Before re-deciding model step `g`: did the side effect of step `s`
    /// it governs already happen, and with which decision?
    Decision { g: u16, s: u16 },
}

/// What to do when a wait ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Again {
    Route,
    Call,
    Lookup,
    Advance,
}

/// The worker component.
pub struct Worker {
    shared: Rc<WorkerShared>,
    me: HostId,
    req_seq: u32,
    out: Option<Outstanding>,
    /// When the earliest pending watchdog timer fires (`None`: none pending).
    watchdog_at_us: Option<Micros>,
    /// When the earliest pending renewal timer fires (`None`: none pending).
    heartbeat_at_us: Option<Micros>,
    wait_seq: u32,
    ctx: Option<TaskCtx>,
    scratch: BTreeMap<(JobId, u16), u32>,
    router: Router,
    model_decision: Option<u32>,
    model_invalid: bool,
    /// Timeout of the next request, when not the default.
    next_timeout_us: Option<Micros>,
    /// One breaker per tool API (payment, email, search): a tool whose
    /// responses keep failing validation is left alone for a while.
    tool_breakers: [Breaker; 3],
}

impl Worker {
    /// A fresh worker process (empty memory, empty disk).
    pub fn new(shared: Rc<WorkerShared>, me: HostId) -> Self {
        let router = Router::from_settings(&shared.router, shared.policy);
        let shared_breaker = shared.router.breaker;
        Worker {
            shared,
            me,
            req_seq: 0,
            out: None,
            watchdog_at_us: None,
            heartbeat_at_us: None,
            wait_seq: 0,
            ctx: None,
            scratch: BTreeMap::new(),
            router,
            model_decision: None,
            model_invalid: false,
            next_timeout_us: None,
            tool_breakers: std::array::from_fn(|_| Breaker::new(shared_breaker)),
        }
    }

    /// The shared settings (to start a fresh process on the same host).
    pub fn shared(&self) -> Rc<WorkerShared> {
        self.shared.clone()
    }

    /// The router (breaker state, for reports).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Loses the scratchpad (disk loss without a crash). Decisions that
    /// lived only there are gone from the agent's working state too: the
    /// agent reads its artefacts back from disk.
    /// A decision on its way to durable state (the result write that
    /// carries it is outstanding) is not lost: the request already left.
    pub fn lose_disk(&mut self) {
        self.scratch.clear();
        let persisting = self.out.as_ref().is_some_and(|o| o.wait == Wait::Persist);
        if let Some(c) = self.ctx.as_mut() {
            let tpl = &self.shared.templates[c.template as usize];
            let in_flight = (persisting && c.persisted_decision).then_some(c.cursor as usize);
            for (i, spec) in tpl.steps.iter().enumerate() {
                if spec.artefact && c.durable & (1 << i) == 0 && in_flight != Some(i) {
                    c.decisions[i] = NO_DECISION;
                }
            }
        }
    }

    /// The clock leases are timed on: monotonic (reference) or wall.
    fn lease_clock(&self, env: &impl Env) -> Micros {
        if self.shared.policy.wall_clock_leases { env.wall_now_us() } else { env.now_us() }
    }

    /// Whether the worker holds no task and waits, if at all, only for a
    /// lease (an idle long poll): its timers can then only poll again, and a
    /// heartbeat timer finds no task to renew.
    pub fn is_idle(&self) -> bool {
        self.ctx.is_none() && self.out.as_ref().is_none_or(|o| o.wait == Wait::Lease)
    }

    /// Start-up: ask for work.
    pub fn start(&mut self, env: &mut impl Env) {
        self.request_lease(env);
    }

    fn orchestrator(&self, env: &impl Env) -> HostId {
        self.shared.home.unwrap_or_else(|| env.resolve(Service::Orchestrator))
    }

    fn request(&mut self, env: &mut impl Env, to: HostId, wait: Wait, make: impl FnOnce(u32) -> Msg) {
        self.req_seq = self.req_seq.wrapping_add(1);
        let req = self.req_seq;
        let msg = make(req);
        env.send(to, msg.clone());
        let timeout = match self.next_timeout_us.take() {
            Some(t) => t,
            None if wait == Wait::Lease => lease_poll_us(self.shared.policy.lease_ms),
            None => self.shared.request_timeout_us,
        };
        let deadline_us = env.now_us() + timeout;
        self.out = Some(Outstanding { req, deadline_us, to, msg, wait });
        self.arm_watchdog(env, deadline_us);
    }

    /// Makes sure a watchdog fires by `deadline_us`: a pending one set for a
    /// longer deadline (a 600 s model timeout) does not cover a shorter one.
    fn arm_watchdog(&mut self, env: &mut impl Env, deadline_us: Micros) {
        if self.watchdog_at_us.is_none_or(|at| at > deadline_us) {
            let now = env.now_us();
            self.watchdog_at_us = Some(deadline_us.max(now));
            env.set_timer(deadline_us.saturating_sub(now), Timer::Watchdog);
        }
    }

    fn request_lease(&mut self, env: &mut impl Env) {
        self.ctx = None;
        let to = self.orchestrator(env);
        let sent_us = self.lease_clock(env);
        self.request(env, to, Wait::Lease, |req| Msg::LeaseReq { req, sent_us });
    }

    fn write(&mut self, env: &mut impl Env, wait: Wait, write: WorkerWrite) {
        let token = self.ctx.as_ref().expect("writing without a task").token;
        let to = self.orchestrator(env);
        self.request(env, to, wait, |req| Msg::Write { req, token, write });
    }

    /// The outstanding request this reply answers: same number and a reply
    /// of the kind it waits for (a reply to an earlier process on this host,
    /// whose numbers started over, is ignored).
    fn take_reply(&mut self, req: u32, kind: impl Fn(Wait) -> bool) -> Option<Wait> {
        match &self.out {
            Some(o) if o.req == req && kind(o.wait) => Some(self.out.take().expect("some").wait),
            _ => None,
        }
    }

    fn wait_then_resume(&mut self, env: &mut impl Env, after_us: Micros) {
        self.wait_seq = self.wait_seq.wrapping_add(1);
        env.set_timer(after_us, Timer::Resume { seq: self.wait_seq });
    }

    /// Handles a timer.
    pub fn on_timer(&mut self, env: &mut impl Env, timer: Timer) {
        match timer {
            Timer::Watchdog => {
                let now = env.now_us();
                if self.watchdog_at_us.is_some_and(|at| at <= now) {
                    self.watchdog_at_us = None;
                }
                let Some(o) = &self.out else { return };
                if now < o.deadline_us {
                    let deadline_us = o.deadline_us;
                    self.arm_watchdog(env, deadline_us);
                    return;
                }
                let o = self.out.take().expect("some");
                if o.wait == Wait::Call && self.ctx.as_ref().is_some_and(|c| c.call.is_some()) {
                    // A provider that never answered: a timeout for the router.
                    self.on_model_result(env, AttemptResult::Err { retryable: true, retry_after_ms: None, status: 0 });
                    return;
                }
                if o.wait == Wait::Call
                    && self.shared.policy.reconcile
                    && let Some(c) = self.ctx.as_ref()
                    && self.template().steps[c.cursor as usize].kind.is_side_effect()
                {
                    // The call's outcome is unknown (the API may have acted):
                    // ask by key before sending anything again.
                    self.ctx().lookup_for = LookupFor::Step;
                    self.lookup(env);
                    return;
                }
                // A resent call or lookup asks the API about the task: the
                // worker's own lease check first, as for the first send (a
                // timeout that fires as the worker wakes from a pause past
                // its lease would otherwise reach the next holder's call).
                if matches!(o.msg, Msg::ToolReq { .. } | Msg::LookupReq { .. }) && self.dropped_past_lease(env) {
                    return;
                }
                // Resend the same request (same key, same write: idempotent
                // where the receiver deduplicates), to wherever the service
                // is now.
                let to = match (&o.msg, o.wait) {
                    (_, Wait::Lease | Wait::Checkpoint | Wait::Persist) => self.orchestrator(env),
                    (Msg::VecUpsert { .. } | Msg::VecQuery { .. }, _) => env.resolve(Service::Vector),
                    _ => o.to,
                };
                let msg = match o.msg {
                    // A lease request resent is sent now: the lease of its
                    // grant runs from no later than this send.
                    Msg::LeaseReq { req, .. } => Msg::LeaseReq { req, sent_us: self.lease_clock(env) },
                    msg => msg,
                };
                self.request(env, to, o.wait, |req| renumber(msg, req));
            }
            Timer::Heartbeat => {
                // A later timer superseded by a sooner one (see
                // `arm_heartbeat`) finds a renewal due after it: nothing to do.
                if self.heartbeat_at_us.is_none_or(|at| at > env.now_us()) {
                    return;
                }
                self.heartbeat_at_us = None;
                if let Some(c) = &self.ctx {
                    let to = self.orchestrator(env);
                    let sent_us = self.lease_clock(env);
                    env.send(to, Msg::Heartbeat { task: c.task, token: c.token, sent_us });
                    self.arm_heartbeat(env);
                }
            }
            Timer::Resume { seq } if seq == self.wait_seq => self.retry_current(env),
            _ => {}
        }
    }

    /// Arms the next renewal: every third of the lease, and sooner while
    /// less of the lease is left than that schedule assumes (a grant that
    /// reached the worker late, after waiting for a synchronous replica or
    /// a pause): after two thirds of what is left, so the renewal's round
    /// trip has the last third. A lease already over on the worker's clock
    /// keeps the plain schedule (the orchestrator says whether it holds).
    /// A timer already pending for later (armed for a task dropped since)
    /// does not hold back a sooner one: the later one then does nothing.
    fn arm_heartbeat(&mut self, env: &mut impl Env) {
        let Some(c) = &self.ctx else { return };
        if !self.shared.policy.heartbeat {
            return;
        }
        let every_us = self.shared.policy.lease_ms * US_PER_MS / 3;
        let left_us = c.lease_until_us.saturating_sub(self.lease_clock(env));
        // At least 1 µs: what is left shrinks at every renewal sent, so the
        // sooner schedule ends (at most about 40 renewals per lease).
        let after_us = if left_us == 0 { every_us } else { every_us.min(left_us * 2 / 3).max(1) };
        let at_us = env.now_us() + after_us;
        if self.heartbeat_at_us.is_some_and(|pending| pending <= at_us) {
            return;
        }
        self.heartbeat_at_us = Some(at_us);
        env.set_timer(after_us, Timer::Heartbeat);
    }

    /// Handles a message. (Replies are matched by request number first:
    /// `take_reply` consumes the outstanding request, so it stays out of the
    /// match guards.)
    #[allow(clippy::collapsible_match)]
    pub fn on_msg(&mut self, env: &mut impl Env, _from: HostId, msg: Msg) {
        match msg {
            Msg::LeaseGrant { grant, .. } => {
                // Any grant is taken while idle, even one answering an
                // earlier long-poll: the orchestrator counts this worker as
                // the holder either way. A busy worker lets it expire.
                if self.ctx.is_none() {
                    if self.out.as_ref().is_some_and(|o| o.wait == Wait::Lease) {
                        self.out = None;
                    }
                    self.begin(env, *grant);
                }
            }
            Msg::WriteAck { req, ok } => {
                match self.take_reply(req, |w| matches!(w, Wait::Checkpoint | Wait::Persist)) {
                    Some(Wait::Checkpoint) => self.on_checkpointed(env, ok),
                    Some(Wait::Persist) => self.on_persisted(env, ok),
                    _ => {}
                }
            }
            Msg::HeartbeatAck { task, ok, lease_ms, prompt, sent_us } => {
                // The renewal runs from when the orchestrator took it, no
                // earlier than the send: not from the receipt (a paused
                // worker receives it late).
                let now = self.lease_clock(env).min(sent_us);
                let Some(c) = self.ctx.as_mut() else { return };
                if c.task != task {
                    return;
                }
                if ok {
                    c.prompt = prompt;
                    c.lease_until_us = c.lease_until_us.max(now + lease_ms * US_PER_MS * 9 / 10);
                } else {
                    self.abandon(env);
                }
            }
            Msg::LookupResp { req, found, malformed } => {
                if self.take_reply(req, |w| w == Wait::Lookup).is_some() {
                    let api = self.lookup_api();
                    if malformed {
                        self.on_malformed_lookup(env, api);
                    } else {
                        self.tool_breakers[api as usize].on_success(env.now_us());
                        self.on_lookup(env, found);
                    }
                }
            }
            Msg::ToolResp { req, outcome, malformed } => {
                if self.take_reply(req, |w| w == Wait::Call).is_some() {
                    if malformed && self.shared.policy.validate_tool_responses {
                        // The outcome is unknown: reconcile a side effect by
                        // key later; re-run a read-only call.
                        let c = self.ctx.as_ref().expect("task");
                        let side_effect = self.template().steps[c.cursor as usize].kind.is_side_effect();
                        let api = self.current_api();
                        self.on_malformed(env, api, if side_effect { Again::Lookup } else { Again::Call });
                    } else {
                        if malformed {
                            self.ctx().corrupt = true;
                        } else {
                            self.tool_ok(env);
                        }
                        self.on_tool(env, outcome);
                    }
                }
            }
            Msg::ModelResp { req, outcome } => {
                if self.take_reply(req, |w| w == Wait::Call).is_some() {
                    let last = match outcome.result {
                        Ok(reply) => {
                            self.model_decision = Some(reply.decision);
                            self.model_invalid = reply.invalid_output;
                            AttemptResult::Ok
                        }
                        Err(e) => AttemptResult::Err {
                            retryable: e.retryable,
                            retry_after_ms: e.retry_after_ms,
                            status: e.status,
                        },
                    };
                    self.on_model_result(env, last);
                }
            }
            Msg::VecResp { req, unavailable } => {
                if self.take_reply(req, |w| w == Wait::Call).is_some() {
                    if unavailable {
                        self.ctx().on_resume = Again::Call;
                        self.wait_then_resume(env, US_PER_S);
                    } else {
                        self.on_call_done(env, NO_DECISION);
                    }
                }
            }
            _ => {}
        }
    }
}

fn renumber(msg: Msg, req: u32) -> Msg {
    match msg {
        Msg::LeaseReq { sent_us, .. } => Msg::LeaseReq { req, sent_us },
        Msg::Write { token, write, .. } => Msg::Write { req, token, write },
        Msg::ToolReq { api, key, params, origin, basis, .. } => Msg::ToolReq { req, api, key, params, origin, basis },
        Msg::LookupReq { api, key, origin, .. } => Msg::LookupReq { req, api, key, origin },
        Msg::ModelReq { request, origin, .. } => Msg::ModelReq { req, request, origin },
        Msg::VecUpsert { point, value, origin, basis, .. } => Msg::VecUpsert { req, point, value, origin, basis },
        Msg::VecQuery { point, origin, .. } => Msg::VecQuery { req, point, origin },
        other => other,
    }
}

impl Worker {
    fn ctx(&mut self) -> &mut TaskCtx {
        self.ctx.as_mut().expect("no task in hand")
    }

    fn template(&self) -> &Template {
        &self.shared.templates[self.ctx.as_ref().expect("task").template as usize]
    }

    fn origin(&self, step: u16) -> Origin {
        let c = self.ctx.as_ref().expect("task");
        Origin { job: c.job, step, host: self.me, task: c.task, token: c.token }
    }

    /// Starts a granted task (its lease runs from no later than the request
    /// it answers was sent plus the wait the grant reports).
    fn begin(&mut self, env: &mut impl Env, g: Grant) {
        let policy = self.shared.policy;
        let session_end = policy.checkpointing == Checkpointing::SessionEnd;
        let mut decisions = [NO_DECISION; MAX_STEPS];
        if !session_end {
            for (d, s) in decisions.iter_mut().zip(g.steps.iter()) {
                *d = s.decision;
            }
        }
        let cursor = if session_end { 0 } else { g.cursor };
        let unknown = g
            .steps
            .get(cursor as usize)
            .filter(|s| !session_end && s.state == StepState::Intent)
            .map(|s| (s.key, s.args));
        let key_task = if policy.orchestrator_mints_task_id { g.uid } else { env.rng().next_u64() };
        // The lease started no later than the request plus its wait at the
        // orchestrator, and no later than now: timing it from the receipt
        // would outlive the orchestrator's expiry for a worker paused while
        // the grant waited for it, or for a restarted process handed the
        // grant of the process before it.
        let lease_until_us = self.lease_clock(env).min(g.asked_us + g.parked_us) + g.lease_ms * US_PER_MS * 9 / 10;
        // A resume timer of the previous task must not fire in this one.
        self.wait_seq = self.wait_seq.wrapping_add(1);
        let durable =
            decisions.iter().enumerate().filter(|(_, d)| **d != NO_DECISION).fold(0u16, |m, (i, _)| m | 1 << i);
        if g.resumed {
            env.note(Note::Resumed { job: g.job, step: cursor });
        }
        self.ctx = Some(TaskCtx {
            task: g.task,
            key_task,
            job: g.job,
            template: g.template,
            token: g.token,
            lease_until_us,
            cursor,
            decisions,
            unknown,
            key: IdemKey { hi: 0, lo: 0 },
            args: 0,
            rederiving: None,
            call: None,
            transcript: 0,
            on_resume: Again::Call,
            precommitted: false,
            failing: false,
            durable,
            corrupt: false,
            persisted_decision: false,
            prompt: g.prompt,
            decided_under: None,
            replay: g.replay,
            replay_checked: 0,
            lookup_for: LookupFor::Step,
            adopt: None,
        });
        self.arm_heartbeat(env);
        self.advance(env);
    }

    /// Runs the step at the cursor from its start.
    fn advance(&mut self, env: &mut impl Env) {
        let policy = self.shared.policy;
        let (job, ordinal, len) = {
            let c = self.ctx.as_ref().expect("task");
            (c.job, c.cursor, self.template().steps.len())
        };
        if ordinal as usize >= len {
            if policy.checkpointing == Checkpointing::SessionEnd {
                let task = self.ctx().task;
                self.write(env, Wait::Persist, WorkerWrite::Session { task, steps: len as u16 });
            } else {
                self.request_lease(env);
            }
            return;
        }
        let spec = self.template().steps[ordinal as usize];
        if self.replay_reconcile(env, ordinal) {
            return;
        }
        if let Some((key, args)) = self.ctx().unknown.take() {
            // Resuming a step whose outcome is unknown.
            let c = self.ctx();
            c.key = key;
            c.args = args;
            if policy.key_source != KeySource::Orchestrator || !policy.orchestrator_mints_task_id {
                // The agent makes its keys: the resumed task makes a new one.
                self.ctx().key = self.make_key(env, ordinal);
            }
            if spec.kind.is_side_effect() {
                if policy.reconcile {
                    self.lookup(env);
                    return;
                }
                env.note(Note::Reissued { job, step: ordinal });
            }
            self.issue_call(env);
            return;
        }
        if let Some(g) = spec.governed_by
            && self.ctx().decisions[g as usize] == NO_DECISION
        {
            if let Some(&d) = self.scratch.get(&(job, g)) {
                self.ctx().decisions[g as usize] = d;
            } else {
                env.note(Note::Rederived { job, step: g });
                self.ctx().rederiving = Some(g);
                self.start_model(env);
                return;
            }
        }
        if env.reach(self.me, job, ordinal, Phase::BeforeCheckpoint) {
            return;
        }
        let key = self.make_key(env, ordinal);
        let decision = spec.governed_by.map_or(0, |g| self.ctx().decisions[g as usize]);
        let args = args_for(job.0, ordinal, decision);
        let c = self.ctx();
        c.key = key;
        c.args = args;
        let task = c.task;
        if policy.planted_bug_persist_before_call {
            self.ctx().precommitted = true;
            let last = ordinal as usize + 1 == len;
            let write = WorkerWrite::Result {
                task,
                ordinal,
                decision: NO_DECISION,
                reconciled: false,
                last,
                corrupt: false,
                adopt: None,
                version: None,
            };
            self.write(env, Wait::Persist, write);
            return;
        }
        if policy.checkpointing == Checkpointing::BeforeCall {
            self.write(env, Wait::Checkpoint, WorkerWrite::Intent { task, ordinal, key, args });
            return;
        }
        if env.reach(self.me, job, ordinal, Phase::AfterCheckpoint) {
            return;
        }
        self.issue_call(env);
    }

    /// On a task whose record may be missing progress, asks the APIs what
    /// already happened before deciding or acting: before a model step, the
    /// first side effect it governs (adopting the decision it was made with);
    /// before a side effect, the effect itself. Returns `true` when a lookup
    /// went out (or the task was dropped, its lease gone).
    fn replay_reconcile(&mut self, env: &mut impl Env, ordinal: u16) -> bool {
        let policy = self.shared.policy;
        let c = self.ctx.as_ref().expect("task");
        let stable_keys = policy.key_source == KeySource::Orchestrator && policy.orchestrator_mints_task_id;
        if !c.replay || !policy.reconcile || !stable_keys || c.replay_checked & (1 << ordinal) != 0 {
            return false;
        }
        let tpl = self.template();
        let spec = tpl.steps[ordinal as usize];
        let (purpose, s) = match spec.kind {
            StepKind::Model { .. } => {
                let governed = tpl.steps.iter().position(|x| x.governed_by == Some(ordinal) && x.kind.is_side_effect());
                match governed {
                    Some(s) => (LookupFor::Decision { g: ordinal, s: s as u16 }, s as u16),
                    None => return false,
                }
            }
            k if k.is_side_effect() => (LookupFor::ReplayStep, ordinal),
            _ => return false,
        };
        let key = IdemKey::for_slot(TaskId(c.key_task), s);
        let (api, to) = self.api_for(tpl.steps[s as usize].kind);
        if purpose == LookupFor::ReplayStep {
            let decision = spec.governed_by.map_or(0, |g| c.decisions[g as usize]);
            let args = args_for(c.job.0, ordinal, decision);
            let c = self.ctx();
            c.key = key;
            c.args = args;
        }
        if self.dropped_past_lease(env) {
            return true;
        }
        let origin = self.origin(s);
        let c = self.ctx();
        c.replay_checked |= 1 << ordinal;
        c.lookup_for = purpose;
        c.unknown = None; // this reconciliation covers the checkpointed intent too
        self.request(env, to, Wait::Lookup, |req| Msg::LookupReq { req, api, key, origin });
        true
    }

    /// The decision of model step `g` that produced `params` for step `s`.
    fn decision_behind(&self, g: u16, s: u16, params: u64) -> Option<u32> {
        let c = self.ctx.as_ref().expect("task");
        let StepKind::Model { options, .. } = self.template().steps[g as usize].kind else { return None };
        (0..options).find(|&d| args_for(c.job.0, s, d) == params)
    }

    fn make_key(&mut self, env: &mut impl Env, ordinal: u16) -> IdemKey {
        let now = env.wall_now_us();
        let c = self.ctx.as_ref().expect("task");
        let lo = u64::from(ordinal);
        match self.shared.policy.key_source {
            KeySource::Orchestrator => IdemKey::for_slot(TaskId(c.key_task), ordinal),
            KeySource::ModelOutput => IdemKey { hi: env.rng().next_u64(), lo },
            KeySource::PromptHash => {
                let prefix = self.template().prefix_hash;
                let hi = args_for(prefix as u32, ordinal, c.transcript) ^ (u64::from(c.job.0) << 32);
                IdemKey { hi, lo }
            }
            KeySource::WallClock => IdemKey { hi: now / US_PER_MS, lo },
        }
    }

    fn on_checkpointed(&mut self, env: &mut impl Env, ok: bool) {
        if !ok {
            self.abandon(env);
            return;
        }
        let (job, ordinal) = (self.ctx().job, self.ctx().cursor);
        if env.reach(self.me, job, ordinal, Phase::AfterCheckpoint) {
            return;
        }
        self.issue_call(env);
    }

    fn api_for(&self, kind: StepKind) -> (Api, HostId) {
        match kind {
            StepKind::Charge | StepKind::Refund => (Api::Payment, self.shared.payment),
            StepKind::Email => (Api::Email, self.shared.email),
            _ => (Api::Search, self.shared.search),
        }
    }

    fn lookup(&mut self, env: &mut impl Env) {
        let c = self.ctx.as_ref().expect("task");
        let spec = self.template().steps[c.cursor as usize];
        let key = c.key;
        let origin = self.origin(c.cursor);
        let (api, to) = self.api_for(spec.kind);
        if self.dropped_past_lease(env) || self.tool_degraded(env, api, Again::Lookup) {
            return;
        }
        self.request(env, to, Wait::Lookup, |req| Msg::LookupReq { req, api, key, origin });
    }

    /// The API the outstanding lookup asked: a replay check before a model
    /// step asks about the side effect the step governs, not the step.
    fn lookup_api(&self) -> Api {
        let c = self.ctx.as_ref().expect("task");
        match c.lookup_for {
            LookupFor::Decision { s, .. } => self.api_for(self.template().steps[s as usize].kind).0,
            LookupFor::Step | LookupFor::ReplayStep => self.current_api(),
        }
    }

    /// A lookup's answer failed validation: a plain lookup is asked again;
    /// a replay check is run again from the start of the step (it rebuilds
    /// its own key and target).
    fn on_malformed_lookup(&mut self, env: &mut impl Env, api: Api) {
        let c = self.ctx();
        let again = match c.lookup_for {
            LookupFor::Step => Again::Lookup,
            LookupFor::ReplayStep => {
                c.replay_checked &= !(1 << c.cursor);
                Again::Advance
            }
            LookupFor::Decision { g, .. } => {
                c.replay_checked &= !(1 << g);
                Again::Advance
            }
        };
        c.lookup_for = LookupFor::Step;
        self.on_malformed(env, api, again);
    }

    fn current_api(&self) -> Api {
        let c = self.ctx.as_ref().expect("task");
        self.api_for(self.template().steps[c.cursor as usize].kind).0
    }

    /// Degraded path: while a tool's breaker is open, the step waits instead
    /// of calling it. Returns `true` when the step was parked.
    fn tool_degraded(&mut self, env: &mut impl Env, api: Api, again: Again) -> bool {
        let now = env.now_us();
        if self.tool_breakers[api as usize].allows(now) {
            return false;
        }
        self.ctx().on_resume = again;
        self.wait_then_resume(env, 10 * US_PER_S);
        true
    }

    fn tool_ok(&mut self, env: &impl Env) {
        let api = self.current_api();
        self.tool_breakers[api as usize].on_success(env.now_us());
    }

    /// A tool response failed schema validation: nothing is persisted, the
    /// breaker counts it, and the step tries again later.
    fn on_malformed(&mut self, env: &mut impl Env, api: Api, again: Again) {
        let (job, step) = (self.ctx().job, self.ctx().cursor);
        env.note(Note::SchemaViolation { job, step });
        self.tool_breakers[api as usize].on_failure(env.now_us());
        self.ctx().on_resume = again;
        self.wait_then_resume(env, 5 * US_PER_S);
    }

    /// The worker's own lease check before it asks an API about, or acts
    /// on, the task (a side effect or a lookup by key): with fencing, a
    /// lease it may have lost (it ran out on the worker's clock, say during
    /// a pause) drops the task instead. Returns `true` when it dropped it.
    fn dropped_past_lease(&mut self, env: &mut impl Env) -> bool {
        let now = self.lease_clock(env);
        let lost = self.ctx.as_ref().is_some_and(|c| now >= c.lease_until_us);
        if self.shared.policy.fencing && lost {
            self.abandon(env);
            return true;
        }
        false
    }

    /// Sends the current step's call (model, tool or memory).
    fn issue_call(&mut self, env: &mut impl Env) {
        let c = self.ctx.as_ref().expect("task");
        let (ordinal, key, args, job) = (c.cursor, c.key, c.args, c.job);
        let spec = self.template().steps[ordinal as usize];
        if spec.kind.is_side_effect() && self.dropped_past_lease(env) {
            return;
        }
        self.ctx().transcript += 1;
        let origin = self.origin(ordinal);
        match spec.kind {
            StepKind::Model { .. } => self.start_model(env),
            StepKind::MemWrite => {
                let to = env.resolve(Service::Vector);
                let point = PointId { job, step: ordinal };
                let g = spec.governed_by.unwrap_or(0);
                let basis = (g, self.ctx().decisions[g as usize]);
                self.request(env, to, Wait::Call, |req| Msg::VecUpsert { req, point, value: args, origin, basis });
            }
            StepKind::MemRead => {
                let to = env.resolve(Service::Vector);
                let point = PointId { job, step: ordinal };
                self.request(env, to, Wait::Call, |req| Msg::VecQuery { req, point, origin });
            }
            kind => {
                let (api, to) = self.api_for(kind);
                if self.tool_degraded(env, api, Again::Call) {
                    return;
                }
                let g = spec.governed_by.unwrap_or(0);
                let basis = (g, self.ctx().decisions[g as usize]);
                self.request(env, to, Wait::Call, |req| Msg::ToolReq { req, api, key, params: args, origin, basis });
            }
        }
    }

    /// Starts a model call for the step at the cursor (or the step being
    /// re-derived).
    fn start_model(&mut self, env: &mut impl Env) {
        let call = self.router.start(env.now_us());
        self.ctx().call = Some(call);
        self.route(env, None);
    }

    fn route(&mut self, env: &mut impl Env, last: Option<AttemptResult>) {
        let now = env.now_us();
        let mut call = self.ctx().call.take().expect("routing without a call");
        let step = call.next(&mut self.router, now, last);
        for t in self.router.take_transitions() {
            if matches!(t.to, crate::components::router::BreakerState::Open { .. }) {
                env.note(Note::BreakerOpened { provider: t.provider as u8 });
            }
        }
        self.ctx().call = Some(call);
        match step {
            RouteStep::Send { provider, .. } => {
                let c = self.ctx.as_ref().expect("task");
                let ordinal = c.rederiving.unwrap_or(c.cursor);
                let spec = self.template().steps[ordinal as usize];
                let StepKind::Model { options, input_tokens, output_tokens } = spec.kind else {
                    unreachable!("model call for a non-model step")
                };
                let request = ModelRequest {
                    prefix_hash: self.template().prefix_hash,
                    input_tokens,
                    prefix_tokens: input_tokens / 2,
                    output_tokens,
                    options,
                    defect_permille: self.ctx.as_ref().expect("task").prompt.defect_permille,
                    version: self.ctx.as_ref().expect("task").prompt.version,
                };
                self.ctx().decided_under = Some(self.ctx().prompt.version);
                let origin = self.origin(ordinal);
                let to = self.shared.providers[provider];
                // The SDK's own timeout for this provider (the provider
                // answers a timeout itself; this is the network's backstop).
                self.next_timeout_us = Some(self.shared.model_timeout_us[provider] + US_PER_S);
                self.request(env, to, Wait::Call, |req| Msg::ModelReq { req, request, origin });
            }
            RouteStep::Wait { until_us } => {
                self.ctx().on_resume = Again::Route;
                self.wait_then_resume(env, until_us.saturating_sub(now).max(1));
            }
            RouteStep::Done { .. } => {}
            RouteStep::GiveUp { .. } => {
                // Every provider failed or is open: try the whole call again later.
                self.ctx().call = None;
                self.ctx().on_resume = Again::Call;
                self.wait_then_resume(env, 10 * US_PER_S);
            }
        }
    }

    fn on_model_result(&mut self, env: &mut impl Env, last: AttemptResult) {
        if last != AttemptResult::Ok {
            self.route(env, Some(last));
            return;
        }
        // Close the router call so it records the success.
        self.route_success(env);
        let decision = self.model_decision.take().expect("decision of a successful call");
        if std::mem::take(&mut self.model_invalid) {
            // The output failed validation (a defective prompt version):
            // nothing is acted on; ask again.
            let version = self.ctx().prompt.version;
            let to = self.orchestrator(env);
            env.send(to, Msg::OutputRejected { version });
            self.ctx().on_resume = Again::Call;
            self.wait_then_resume(env, US_PER_S);
            return;
        }
        if let Some(g) = self.ctx().rederiving.take() {
            let job = self.ctx().job;
            self.ctx().decisions[g as usize] = decision;
            self.scratch.insert((job, g), decision);
            self.advance(env);
            return;
        }
        self.on_call_done(env, decision);
    }

    fn route_success(&mut self, env: &mut impl Env) {
        let now = env.now_us();
        if let Some(mut call) = self.ctx().call.take() {
            let _ = call.next(&mut self.router, now, Some(AttemptResult::Ok));
        }
    }

    fn on_tool(&mut self, env: &mut impl Env, outcome: CallOutcome) {
        match outcome {
            CallOutcome::Ok { .. } => self.on_call_done(env, NO_DECISION),
            CallOutcome::KeyInUse => {
                self.ctx().on_resume = Again::Call;
                self.wait_then_resume(env, US_PER_S);
            }
            CallOutcome::ParamsMismatch => {
                let c = self.ctx();
                let (task, ordinal, job) = (c.task, c.cursor, c.job);
                c.failing = true;
                env.note(Note::TaskFailed { job, step: ordinal });
                self.write(env, Wait::Persist, WorkerWrite::Fail { task, ordinal });
            }
        }
    }

    fn on_lookup(&mut self, env: &mut impl Env, found: Lookup) {
        let (job, ordinal, task) = (self.ctx().job, self.ctx().cursor, self.ctx().task);
        if let LookupFor::Decision { g, s } = self.ctx().lookup_for {
            match found {
                Lookup::Found { params, .. } => {
                    if let Some(d) = self.decision_behind(g, s, params) {
                        // The side effect this decision governs already
                        // happened: adopt the decision it was made with.
                        env.note(Note::Reconciled { job, step: s, found: true });
                        self.ctx().lookup_for = LookupFor::Step;
                        // Made by another worker's model call, perhaps under
                        // an older version: not an output of the live one.
                        self.ctx().decided_under = None;
                        self.on_call_done(env, d);
                        return;
                    }
                    self.ctx().lookup_for = LookupFor::Step;
                    self.advance(env);
                }
                Lookup::NotFound => {
                    self.ctx().lookup_for = LookupFor::Step;
                    self.advance(env);
                }
                Lookup::InProgress => {
                    self.ctx().replay_checked &= !(1 << g);
                    self.ctx().lookup_for = LookupFor::Step;
                    self.ctx().on_resume = Again::Advance;
                    self.wait_then_resume(env, US_PER_S);
                }
            }
            return;
        }
        let replay_check = self.ctx().lookup_for == LookupFor::ReplayStep;
        self.ctx().lookup_for = LookupFor::Step;
        match found {
            Lookup::NotFound if replay_check => {
                // It did not happen: run the step the normal way, checkpoint first.
                env.note(Note::Reconciled { job, step: ordinal, found: false });
                self.advance(env);
            }
            Lookup::InProgress if replay_check => {
                self.ctx().replay_checked &= !(1 << ordinal);
                self.ctx().on_resume = Again::Advance;
                self.wait_then_resume(env, US_PER_S);
            }
            Lookup::Found { params, .. } => {
                env.note(Note::Reconciled { job, step: ordinal, found: true });
                let spec = self.template().steps[ordinal as usize];
                if params != self.ctx().args
                    && let Some(g) = spec.governed_by
                    && let Some(d) = self.decision_behind(g, ordinal, params)
                {
                    // The effect was made with another decision than the one
                    // in hand: adopt it, durably, so later steps agree.
                    self.ctx().decisions[g as usize] = d;
                    self.ctx().adopt = Some((g, d));
                }
                let last = ordinal as usize + 1 == self.template().steps.len();
                let adopt = self.ctx().adopt.take();
                let write = WorkerWrite::Result {
                    task,
                    ordinal,
                    decision: NO_DECISION,
                    reconciled: true,
                    last,
                    corrupt: false,
                    adopt,
                    version: None,
                };
                self.write(env, Wait::Persist, write);
            }
            Lookup::NotFound => {
                env.note(Note::Reconciled { job, step: ordinal, found: false });
                self.issue_call(env);
            }
            Lookup::InProgress => {
                self.ctx().on_resume = Again::Lookup;
                self.wait_then_resume(env, US_PER_S);
            }
        }
    }

    fn on_call_done(&mut self, env: &mut impl Env, decision: u32) {
        let policy = self.shared.policy;
        let (job, ordinal, task) = (self.ctx().job, self.ctx().cursor, self.ctx().task);
        if env.reach(self.me, job, ordinal, Phase::AfterResult) {
            return;
        }
        let len = self.template().steps.len();
        let spec = self.template().steps[ordinal as usize];
        self.ctx().decisions[ordinal as usize] = decision;
        if spec.artefact {
            self.scratch.insert((job, ordinal), decision);
        }
        let durable = if spec.artefact && !policy.durable_artefacts { NO_DECISION } else { decision };
        if self.ctx().precommitted {
            self.ctx().precommitted = false;
            self.next_step(env);
            return;
        }
        if policy.checkpointing == Checkpointing::SessionEnd {
            self.ctx().cursor += 1;
            self.advance(env);
            return;
        }
        let last = ordinal as usize + 1 == len;
        let corrupt = std::mem::take(&mut self.ctx().corrupt);
        self.ctx().persisted_decision = durable != NO_DECISION;
        let version = self.ctx().decided_under.take();
        let write = WorkerWrite::Result {
            task,
            ordinal,
            decision: durable,
            reconciled: false,
            last,
            corrupt,
            adopt: None,
            version,
        };
        self.write(env, Wait::Persist, write);
    }

    fn on_persisted(&mut self, env: &mut impl Env, ok: bool) {
        if !ok {
            self.abandon(env);
            return;
        }
        let session_end = self.shared.policy.checkpointing == Checkpointing::SessionEnd;
        let c = self.ctx();
        if c.failing || session_end {
            self.request_lease(env);
            return;
        }
        if c.precommitted {
            self.issue_call(env);
            return;
        }
        let (job, ordinal) = (c.job, c.cursor);
        if c.persisted_decision {
            c.durable |= 1 << ordinal;
        }
        if env.reach(self.me, job, ordinal, Phase::AfterPersist) {
            return;
        }
        self.next_step(env);
    }

    fn next_step(&mut self, env: &mut impl Env) {
        let c = self.ctx();
        c.cursor += 1;
        let done = c.cursor as usize >= self.template().steps.len();
        if done {
            self.request_lease(env);
        } else {
            self.advance(env);
        }
    }

    fn abandon(&mut self, env: &mut impl Env) {
        if let Some(c) = &self.ctx {
            env.note(Note::Abandoned { job: c.job });
        }
        self.request_lease(env);
    }

    fn retry_current(&mut self, env: &mut impl Env) {
        let Some(c) = self.ctx.as_ref() else { return };
        match c.on_resume {
            Again::Route => self.route(env, None),
            Again::Lookup => self.lookup(env),
            Again::Advance => self.advance(env),
            Again::Call => {
                if c.rederiving.is_some() {
                    self.start_model(env);
                } else {
                    self.issue_call(env);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::components::orchestrator::Prompt;
    use crate::components::router::RouterSettings;
    use crate::components::workflow::builtin;

    const ME: HostId = HostId(1);
    const ORCH: HostId = HostId(2);

    /// A host's view of the world for one worker: what it sent, the timers
    /// it set (with the time each fires).
    struct TestEnv {
        now_us: Micros,
        sent: Vec<Msg>,
        timers: Vec<(Micros, Timer)>,
        rng: ChaCha8Rng,
    }

    impl Env for TestEnv {
        fn now_us(&self) -> Micros {
            self.now_us
        }
        fn me(&self) -> HostId {
            ME
        }
        fn send(&mut self, _to: HostId, msg: Msg) {
            self.sent.push(msg);
        }
        fn send_after(&mut self, _delay_us: Micros, _to: HostId, msg: Msg) {
            self.sent.push(msg);
        }
        fn set_timer(&mut self, after_us: Micros, timer: Timer) {
            self.timers.push((self.now_us + after_us, timer));
        }
        fn rng(&mut self) -> &mut ChaCha8Rng {
            &mut self.rng
        }
        fn resolve(&self, _svc: Service) -> HostId {
            ORCH
        }
        fn note(&mut self, _note: Note) {}
        fn reach(&mut self, _host: HostId, _job: JobId, _step: u16, _phase: Phase) -> bool {
            false
        }
    }

    fn worker() -> (Worker, TestEnv) {
        worker_with(Policy::default())
    }

    fn worker_with(policy: Policy) -> (Worker, TestEnv) {
        let shared = WorkerShared {
            policy,
            templates: crate::components::workflow::builtin_shared(),
            home: Some(ORCH),
            payment: HostId(3),
            email: HostId(4),
            search: HostId(5),
            providers: vec![HostId(6), HostId(7), HostId(8)],
            router: RouterSettings::default(),
            request_timeout_us: 10 * US_PER_S,
            // Every provider has the local model's long SDK timeout.
            model_timeout_us: vec![600 * US_PER_S; 3],
        };
        let env = TestEnv { now_us: 0, sent: Vec::new(), timers: Vec::new(), rng: ChaCha8Rng::seed_from_u64(1) };
        (Worker::new(Rc::new(shared), ME), env)
    }

    fn template(name: &str) -> u16 {
        builtin().iter().position(|t| t.name == name).expect("built-in template") as u16
    }

    /// The number and `sent_us` of the last lease request sent.
    fn last_lease_req(env: &TestEnv) -> (u32, Micros) {
        match env.sent.iter().rev().find(|m| matches!(m, Msg::LeaseReq { .. })) {
            Some(Msg::LeaseReq { req, sent_us }) => (*req, *sent_us),
            other => panic!("no lease request sent: {other:?}"),
        }
    }

    fn grant((req, asked_us): (u32, Micros), task: u64, template: u16) -> Msg {
        let grant = Grant {
            task: TaskId(task),
            job: JobId(task as u32),
            uid: task,
            template,
            prompt: Prompt::default(),
            token: 1,
            lease_ms: 60_000,
            parked_us: 0,
            asked_us,
            cursor: 0,
            steps: Box::default(),
            resumed: false,
            replay: false,
        };
        Msg::LeaseGrant { req, grant: Box::new(grant) }
    }

    /// The request number of the last message sent, which must be `kind`.
    fn last_req(env: &TestEnv) -> u32 {
        match env.sent.last().expect("a message was sent") {
            Msg::LeaseReq { req, .. }
            | Msg::Write { req, .. }
            | Msg::ModelReq { req, .. }
            | Msg::VecQuery { req, .. }
            | Msg::ToolReq { req, .. } => *req,
            other => panic!("not a request: {other:?}"),
        }
    }

    /// A worker waiting on a model call with a 600 s timeout drops its task
    /// and asks for a new lease (30 s timeout): a watchdog must fire by then,
    /// not only when the 600 s one is due.
    #[test]
    fn a_shorter_request_gets_its_own_watchdog_while_a_long_one_is_pending() {
        let (mut w, mut env) = worker();
        w.start(&mut env);
        let lease_req = last_lease_req(&env);
        env.now_us = 100_000;
        w.on_msg(&mut env, ORCH, grant(lease_req, 1, template("book_flight")));
        let checkpoint = last_req(&env);
        env.now_us = 200_000;
        w.on_msg(&mut env, ORCH, Msg::WriteAck { req: checkpoint, ok: true });
        assert!(matches!(env.sent.last(), Some(Msg::ModelReq { .. })), "{:?}", env.sent.last());
        // The start-up watchdog fires during the call and is re-armed for
        // the call's 601 s deadline.
        env.now_us = 30 * US_PER_S;
        w.on_timer(&mut env, Timer::Watchdog);
        env.now_us = 31 * US_PER_S;
        let before = env.timers.len();
        w.on_msg(
            &mut env,
            ORCH,
            Msg::HeartbeatAck { task: TaskId(1), ok: false, lease_ms: 0, prompt: Prompt::default(), sent_us: 0 },
        );
        assert!(matches!(env.sent.last(), Some(Msg::LeaseReq { .. })), "{:?}", env.sent.last());
        let deadline = env.now_us + 30 * US_PER_S;
        let armed = env.timers[before..].iter().any(|(at, t)| *t == Timer::Watchdog && *at <= deadline);
        assert!(armed, "no watchdog by the lease request's deadline: {:?}", &env.timers[before..]);
    }

    /// A "vector store unavailable" wait of one task must not fire in the
    /// next task the worker takes (it would send that task's call early,
    /// alongside the call the task makes itself).
    #[test]
    fn a_resume_timer_of_a_dropped_task_does_nothing_in_the_next_one() {
        let (mut w, mut env) = worker();
        w.start(&mut env);
        let lease_req = last_lease_req(&env);
        w.on_msg(&mut env, ORCH, grant(lease_req, 1, template("approve_refund")));
        let checkpoint = last_req(&env);
        w.on_msg(&mut env, ORCH, Msg::WriteAck { req: checkpoint, ok: true });
        let query = last_req(&env);
        assert!(matches!(env.sent.last(), Some(Msg::VecQuery { .. })), "{:?}", env.sent.last());
        w.on_msg(&mut env, ORCH, Msg::VecResp { req: query, unavailable: true });
        let resume = env.timers.iter().rev().find_map(|(_, t)| matches!(t, Timer::Resume { .. }).then_some(*t));
        let resume = resume.expect("a resume timer for the unavailable store");
        // The lease is lost; the worker takes another task.
        w.on_msg(
            &mut env,
            ORCH,
            Msg::HeartbeatAck { task: TaskId(1), ok: false, lease_ms: 0, prompt: Prompt::default(), sent_us: 0 },
        );
        let lease_req = last_lease_req(&env);
        w.on_msg(&mut env, ORCH, grant(lease_req, 2, template("approve_refund")));
        assert!(matches!(env.sent.last(), Some(Msg::Write { .. })), "the new task checkpoints first");
        let sent = env.sent.len();
        env.now_us = US_PER_S;
        w.on_timer(&mut env, resume);
        assert_eq!(env.sent.len(), sent, "the old task's timer sent {:?}", &env.sent[sent..]);
    }

    /// A grant that reaches a worker late (it was paused while the grant
    /// waited) times the lease from the request, not from the receipt.
    #[test]
    fn a_grant_received_late_times_its_lease_from_the_request() {
        let (mut w, mut env) = worker();
        w.start(&mut env);
        let lease_req = last_lease_req(&env);
        // Granted at once (not parked), received 50 s later.
        env.now_us = 50 * US_PER_S;
        w.on_msg(&mut env, ORCH, grant(lease_req, 1, template("book_flight")));
        let lease_until_us = w.ctx.as_ref().expect("task").lease_until_us;
        assert_eq!(lease_until_us, 60_000 * US_PER_MS * 9 / 10, "from the request at 0 s");
    }
    /// A grant that reaches a worker late renews the lease before what is
    /// left of it runs out, not a full third of a lease later (seed 11 case
    /// 44007: a grant held 29 s behind a synchronous replica left 8 s of a
    /// 41 s lease, and the first renewal was due 14 s later).
    #[test]
    fn a_grant_received_late_renews_before_its_lease_runs_out() {
        let (mut w, mut env) = worker();
        w.start(&mut env);
        let lease_req = last_lease_req(&env);
        // A 60 s lease held 48 s: 6 s of the worker's 54 s are left.
        env.now_us = 48 * US_PER_S;
        let before = env.timers.len();
        w.on_msg(&mut env, ORCH, grant(lease_req, 1, template("book_flight")));
        let lease_until_us = w.ctx.as_ref().expect("task").lease_until_us;
        let renewal = env.timers[before..].iter().find(|(_, t)| *t == Timer::Heartbeat).map(|(at, _)| *at);
        assert_eq!(renewal, Some(48 * US_PER_S + 4 * US_PER_S), "after two thirds of the 6 s left");
        assert!(renewal.is_some_and(|at| at < lease_until_us));
        // On time, the plain schedule: a third of the policy's lease.
        let (mut w, mut env) = worker();
        w.start(&mut env);
        let lease_req = last_lease_req(&env);
        w.on_msg(&mut env, ORCH, grant(lease_req, 1, template("book_flight")));
        let renewal = env.timers.iter().find(|(_, t)| *t == Timer::Heartbeat).map(|(at, _)| *at);
        assert_eq!(renewal, Some(w.shared.policy.lease_ms * US_PER_MS / 3));
    }

    /// A renewal timer armed on the plain schedule for a grant whose lease
    /// was already over (the worker dropped it) does not hold back the
    /// sooner renewal of the next grant, received with little of its lease
    /// left (seed 389715989 case 8014: grants released at once by a
    /// synchronous replica back after 10 min; the one that held had 0.7 s
    /// left, its first renewal was due 18 s later, and its 7.4 s email
    /// outlived the lease into the next holder's lookup).
    #[test]
    fn a_stale_renewal_timer_does_not_delay_the_next_grants_renewal() {
        let (mut w, mut env) = worker();
        w.start(&mut env);
        let first = last_lease_req(&env);
        // Received 60 s after its request: over on receipt, plain schedule.
        env.now_us = 60 * US_PER_S;
        w.on_msg(&mut env, ORCH, grant(first, 1, template("book_flight")));
        let plain_at = env.now_us + w.shared.policy.lease_ms * US_PER_MS / 3;
        assert!(env.timers.iter().any(|&(at, t)| t == Timer::Heartbeat && at == plain_at), "{:?}", env.timers);
        w.abandon(&mut env);
        // The next grant: asked 48 s ago, 6 s of the worker's 54 s left.
        let (req, _) = last_lease_req(&env);
        let asked_us = env.now_us - 48 * US_PER_S;
        w.on_msg(&mut env, ORCH, grant((req, asked_us), 2, template("book_flight")));
        let soon_at = env.now_us + 4 * US_PER_S;
        assert!(env.timers.iter().any(|&(at, t)| t == Timer::Heartbeat && at == soon_at), "{:?}", env.timers);
        env.now_us = soon_at;
        let sent = env.sent.len();
        w.on_timer(&mut env, Timer::Heartbeat);
        assert!(
            matches!(env.sent[sent..], [Msg::Heartbeat { task: TaskId(2), .. }]),
            "renewed at 4 s: {:?}",
            &env.sent[sent..]
        );
        // The stale timer fires before the renewal now due: it sends nothing.
        let next_at = w.heartbeat_at_us.expect("the next renewal is armed");
        assert!(next_at > soon_at);
        env.now_us = next_at - 1;
        let sent = env.sent.len();
        w.on_timer(&mut env, Timer::Heartbeat);
        assert_eq!(env.sent.len(), sent, "a superseded timer sent {:?}", &env.sent[sent..]);
        assert_eq!(w.heartbeat_at_us, Some(next_at));
    }

    /// A restarted worker process numbers its requests from 1 again: a
    /// grant answering the request of the process before it (held up, say,
    /// behind a synchronous replica) is timed from that earlier request,
    /// not from the new process's request with the same number.
    #[test]
    fn a_grant_for_an_earlier_process_is_timed_from_its_request() {
        let (mut old, mut env) = worker();
        old.start(&mut env);
        let old_req = last_lease_req(&env);
        env.now_us = 60 * US_PER_S;
        let mut w = Worker::new(old.shared(), ME);
        w.start(&mut env);
        let new_req = last_lease_req(&env);
        assert_eq!(new_req.0, old_req.0, "the numbers start over");
        w.on_msg(&mut env, ORCH, grant(old_req, 1, template("book_flight")));
        let lease_until_us = w.ctx.as_ref().expect("task").lease_until_us;
        assert_eq!(lease_until_us, 60_000 * US_PER_MS * 9 / 10, "from the earlier process's request at 0 s");
        assert!(lease_until_us < env.now_us, "the lease is over on receipt");
    }
    /// A lease request resent after its long-poll timed out carries its
    /// own send time: the grant it gets runs from then, not from the first
    /// request's (whose wait at the orchestrator started over).
    #[test]
    fn a_resent_lease_request_carries_its_own_send_time() {
        let (mut w, mut env) = worker();
        w.start(&mut env);
        assert_eq!(last_lease_req(&env).1, 0);
        env.now_us = LEASE_POLL_US;
        w.on_timer(&mut env, Timer::Watchdog);
        let resent = last_lease_req(&env);
        assert_eq!(resent.1, LEASE_POLL_US, "sent at the resend");
        w.on_msg(&mut env, ORCH, grant(resent, 1, template("book_flight")));
        let lease_until_us = w.ctx.as_ref().expect("task").lease_until_us;
        assert_eq!(lease_until_us, LEASE_POLL_US + 60_000 * US_PER_MS * 9 / 10);
    }

    /// An idle worker's long poll waits one lease (1 to 30 s), then asks
    /// again: with a 2 s lease, a request parked at an orchestrator that
    /// died is sent again after 2 s, not 30.
    #[test]
    fn an_idle_worker_asks_again_after_one_lease() {
        assert_eq!(lease_poll_us(2_000), 2 * US_PER_S);
        assert_eq!(lease_poll_us(0), MIN_LEASE_POLL_US, "at least 1 s");
        assert_eq!(lease_poll_us(600_000), LEASE_POLL_US, "at most 30 s");
        let (mut w, mut env) = worker_with(Policy { lease_ms: 2_000, ..Policy::default() });
        w.start(&mut env);
        let first = last_lease_req(&env);
        assert!(env.timers.iter().any(|&(at, t)| t == Timer::Watchdog && at == 2 * US_PER_S), "{:?}", env.timers);
        env.now_us = 2 * US_PER_S;
        w.on_timer(&mut env, Timer::Watchdog);
        let again = last_lease_req(&env);
        assert_ne!(again.0, first.0, "a new request");
        assert_eq!(again.1, 2 * US_PER_S, "sent after one lease");
    }

    /// A grant of job 13 replayed from its cursor at step 3 (a model step
    /// whose side effect the worker must look up first).
    fn replayed_grant(req: (u32, Micros)) -> Msg {
        match grant(req, 13, template("research_report")) {
            Msg::LeaseGrant { req, mut grant } => {
                grant.cursor = 3;
                grant.replay = true;
                Msg::LeaseGrant { req, grant }
            }
            _ => unreachable!("a grant"),
        }
    }

    /// A replayed task resumed before a model step asks the API about the
    /// side effect the step governs, but only while the worker's lease
    /// holds: a worker whose lease ran out (it woke from a pause past it)
    /// drops the task instead of asking (was seed 509 case 18377: its
    /// lookup met the next holder's call of the same step).
    #[test]
    fn a_replay_lookup_waits_for_a_lease_that_still_holds() {
        let (mut w, mut env) = worker();
        w.start(&mut env);
        let lease_req = last_lease_req(&env);
        w.on_msg(&mut env, ORCH, replayed_grant(lease_req));
        assert!(matches!(env.sent.last(), Some(Msg::LookupReq { .. })), "{:?}", env.sent.last());

        let (mut w, mut env) = worker();
        w.start(&mut env);
        let lease_req = last_lease_req(&env);
        // Received 70 s after the request: the 60 s lease is over.
        env.now_us = 70 * US_PER_S;
        w.on_msg(&mut env, ORCH, replayed_grant(lease_req));
        assert!(!env.sent.iter().any(|m| matches!(m, Msg::LookupReq { .. })), "{:?}", env.sent);
        assert!(w.ctx.is_none(), "the task is dropped");
        assert!(matches!(env.sent.last(), Some(Msg::LeaseReq { .. })), "{:?}", env.sent.last());
    }

    /// A lookup that timed out is resent only while the worker's lease
    /// holds: a worker that wakes from a pause past its lease drops the
    /// task instead (was seed 701 case 11460: the resent lookup met the
    /// next holder's call of the same step).
    #[test]
    fn a_timed_out_lookup_is_resent_only_under_a_lease_that_holds() {
        let lookups = |env: &TestEnv| env.sent.iter().filter(|m| matches!(m, Msg::LookupReq { .. })).count();
        for (woke_at_us, resent) in [(40 * US_PER_S, 1), (70 * US_PER_S, 0)] {
            let (mut w, mut env) = worker();
            w.start(&mut env);
            let lease_req = last_lease_req(&env);
            w.on_msg(&mut env, ORCH, replayed_grant(lease_req));
            assert_eq!(lookups(&env), 1, "{:?}", env.sent);
            env.now_us = woke_at_us;
            w.on_timer(&mut env, Timer::Watchdog);
            assert_eq!(lookups(&env), 1 + resent, "woke at {woke_at_us} us: {:?}", env.sent);
            assert_eq!(w.ctx.is_some(), resent == 1, "the task is kept only under a lease that holds");
        }
    }
}
