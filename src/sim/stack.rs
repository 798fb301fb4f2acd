//! The simulated agent stack: builds the hosts of a scenario's stack on the
//! runtime, routes every event to its component through `SimEnv`, and
//! keeps the harness's ground-truth instruments ([`Truth`]).
//!
//! Topology: region A (primary) and region B (standby) each have an
//! orchestrator, a vector store, a local fallback model and workers; the
//! client, the fake payment/email/search APIs, the hosted LLM providers and
//! the failover controller live outside both regions.

use std::rc::Rc;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;

use crate::components::env::{Env, Note, Phase, Service, Timer};
use crate::components::ids::{HostId, JobId, Micros, Origin, RegionId, US_PER_MS, US_PER_S};
use crate::components::lazy_timer::LazyTimer;
use crate::components::ledger::{ApiConfig, CallOutcome, SideEffectApi};
use crate::components::orchestrator::{OrchConfig, Orchestrator, Replication};
use crate::components::provider::ProviderMock;
use crate::components::queue::Queue;
use crate::components::region::{Controller, Dns, FailoverConfig, Pattern, Record, Request};
use crate::components::resend::{Resends, is_replay};
use crate::components::vector::{PointId, RetentionLadder, Snapshot, VectorConfig, VectorStore};
use crate::components::wire::Msg;
use crate::components::worker::{Worker, WorkerShared};
use crate::components::workflow::{self, Template};
use crate::drill::scenario::{Arrival, Scenario, SnapshotLocation};
use crate::sim::{Event, NetConfig, Runtime};

/// Region A.
pub const REGION_A: RegionId = RegionId(0);
/// Region B.
pub const REGION_B: RegionId = RegionId(1);
/// Outside both regions (SaaS APIs, providers, client, controller).
pub const EXTERNAL: RegionId = RegionId(2);

/// One job of the workload.
#[derive(Clone, Copy, Debug)]
pub struct JobSpec {
    /// Template index.
    pub template: u16,
    /// Arrival time.
    pub at_us: Micros,
    /// Harness probe.
    pub probe: bool,
}

/// A point on the fault hooks: kill or pause when a job reaches a phase.
#[derive(Clone, Copy, Debug)]
pub struct Trigger {
    /// Fault index in the scenario.
    pub fault: u16,
    /// Job.
    pub job: JobId,
    /// Step.
    pub step: u16,
    /// Phase.
    pub phase: Phase,
    /// What happens to the worker there.
    pub action: HookAction,
    /// Fired already.
    pub fired: bool,
}

/// What a fault hook does to the worker that reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookAction {
    /// Kill it at that exact point.
    Kill,
    /// Freeze it for this long from that point.
    Pause(Micros),
    /// Its local disk is lost (applied once the handler returns).
    DiskLoss,
}

/// A crash or pause the fault hooks asked for during a handler.
#[derive(Clone, Copy, Debug)]
pub struct HookHit {
    /// Fault index.
    pub fault: u16,
    /// Host hit.
    pub host: HostId,
}

/// A timeline entry.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TraceEvent {
    /// When.
    pub at_us: Micros,
    /// Host that noted it.
    pub host: HostId,
    /// What.
    pub note: Note,
}

/// Ground-truth instruments that live outside the stack's components.
#[derive(Default)]
pub struct Truth {
    /// When each job was acknowledged to the client (indexed by job; probe
    /// jobs are added as they are acknowledged).
    pub accepted_us: Vec<Option<Micros>>,
    /// Jobs the client was told had finished (indexed by job; covers every
    /// workload job, probes are added as they finish).
    pub completed: Vec<bool>,
    /// First decision a side effect (a ledger entry) acted upon, per (job,
    /// governing step): read with [`Truth::acted`].
    acted: ActedMap,
    /// (job, step) pairs whose side effects acted on two different decisions.
    pub replanned: Vec<(JobId, u16)>,
    /// First acknowledgement time of each vector point by the primary.
    pub vec_acks: FxHashMap<PointId, Micros>,
    /// The decision behind the last write of each vector point, and the
    /// value written (to tell whether that write survived).
    pub vec_basis: FxHashMap<PointId, ((u16, u32), u64)>,
    /// The timeline.
    pub trace: Vec<TraceEvent>,
    /// Fault hooks.
    pub triggers: Vec<Trigger>,
    /// Hooks hit during the current handler.
    pub hits: Vec<HookHit>,
    /// LSN the promoted standby held at promotion, and when.
    pub promoted_at: Option<(u64, Micros)>,
    /// Model calls and tool calls completed (for benchmarks).
    pub calls: u64,
    /// Requests for an effect (a call or a lookup by its key) from one
    /// worker while another's request for it was being processed.
    pub concurrent_runs: u64,
    /// First side-effect request seen per task, and whether the task has
    /// seen requests under two different lease tokens.
    first_side_request: crate::components::store::TaskMap<(Origin, Micros, bool)>,
    /// Side-effect requests of tasks that saw two lease tokens: checked
    /// after the run against the lease history (two workers ran a step?).
    pub suspect_requests: Vec<(Origin, Micros)>,
    /// When a provider first answered a model request made under each
    /// prompt/config version (the version's first model output), by
    /// version.
    pub first_output_us: std::collections::BTreeMap<u32, Micros>,
}

impl Truth {
    /// Records a side-effect request for the lease check after the run.
    pub fn side_request(&mut self, origin: Origin, at_us: Micros) {
        match self.first_side_request.get_mut(&origin.task) {
            None => {
                self.first_side_request.insert(origin.task, (origin, at_us, false));
            }
            Some((first, first_at, suspect)) => {
                if !*suspect && first.token != origin.token {
                    *suspect = true;
                    self.suspect_requests.push((*first, *first_at));
                }
                if *suspect {
                    self.suspect_requests.push((origin, at_us));
                }
            }
        }
    }

    /// Ground truth of replanning: a side effect happened on decision
    /// `basis.1` of plan step `basis.0`; a different decision than an
    /// earlier effect's for the same step means the plan was re-derived.
    pub fn acted_on(&mut self, job: JobId, basis: (u16, u32)) {
        let k = (job, basis.0);
        match self.acted.get(job, basis.0) {
            Some(d) if d != basis.1 => {
                if !self.replanned.contains(&k) {
                    self.replanned.push(k);
                }
            }
            Some(_) => {}
            None => self.acted.insert(job, basis.0, basis.1),
        }
    }

    /// The first decision a side effect of `job` acted upon for plan step
    /// `step` (see [`Truth::acted_on`]), if any did.
    pub fn acted(&self, job: JobId, step: u16) -> Option<u32> {
        self.acted.get(job, step)
    }
}

/// [`Truth`]'s first decision per (job, plan step): jobs are dense and
/// nearly every job acts on one step, so the first step acted upon sits in
/// a vector indexed by job (8 bytes a job) and any later step of the same
/// job in a small hash map. A hash map of a million (job, step) keys missed
/// the cache on every insert and lookup.
#[derive(Default)]
struct ActedMap {
    /// Per job: `(step + 1, decision)`, step 0 for none yet.
    first: Vec<(u32, u32)>,
    /// Every other (job, step).
    more: FxHashMap<(JobId, u16), u32>,
}

impl ActedMap {
    fn get(&self, job: JobId, step: u16) -> Option<u32> {
        match self.first.get(job.0 as usize) {
            Some(&(s, d)) if s == u32::from(step) + 1 => Some(d),
            Some(&(0, _)) | None if self.more.is_empty() => None,
            _ => self.more.get(&(job, step)).copied(),
        }
    }

    /// Records `decision` for a (job, step) [`ActedMap::get`] has none for.
    fn insert(&mut self, job: JobId, step: u16, decision: u32) {
        debug_assert!(self.get(job, step).is_none(), "ActedMap::insert over a recorded step");
        let slot = at_grow(&mut self.first, job.0 as usize);
        if slot.0 == 0 {
            *slot = (u32::from(step) + 1, decision);
        } else {
            self.more.insert((job, step), decision);
        }
    }
}

/// `v[i]`, growing `v` with default values to reach it.
#[inline]
fn at_grow<T: Default + Clone>(v: &mut Vec<T>, i: usize) -> &mut T {
    if i >= v.len() {
        v.resize(i + 1, T::default());
    }
    &mut v[i]
}

/// Vector store host.
pub struct VectorNode {
    /// The store (durable).
    pub store: VectorStore,
    /// Serving traffic.
    pub serving: bool,
    /// The store holds a serving copy (it served at start-up or finished a
    /// hydration): durable, so a returning host may serve again; a store
    /// whose hydration a crash cut short must hydrate first.
    hydrated: bool,
    /// Where snapshots and streaming replication go.
    pub peer: Option<HostId>,
    stream: bool,
    snapshot_interval_us: Micros,
    ship_delay_us: Micros,
    snapshots_local_only: bool,
    controller: HostId,
    hydrate_from: Option<Snapshot>,
    restore_base_us: Micros,
    /// A streaming replica: its primary streams every write to it, so it is
    /// in sync and hydrates at once (from the start, when both are empty;
    /// a replica built without a stream becomes one when writes arrive).
    streamed: bool,
    integrity_check_us: Micros,
    hydrating: bool,
    /// Snapshots uploading to the other region.
    shipping: std::collections::VecDeque<Snapshot>,
    /// Point-in-time restore in progress after corruption was found: the
    /// store is read-only (and briefly unavailable).
    restoring: Option<Snapshot>,
    /// Traffic was routed to the other store while this one served: it
    /// takes and ships no more snapshots.
    stood_down: bool,
    /// Point-in-time restores made (a streaming primary) or followed (its
    /// replica).
    restores: u32,
    /// Streamed writes the primary took after a restore this replica has
    /// not followed yet (the network may deliver them first): replayed once
    /// it has, as `(restores, point, value, at_us)`.
    early: Vec<(u32, PointId, u64, Micros)>,
}

/// The read-only search tool.
pub struct SearchApi {
    /// Response time.
    pub latency_us: Micros,
    /// Periods whose responses break the schema.
    pub breaks: Vec<(Micros, Micros)>,
}

/// The client: submits the workload and health probes, retries until acked.
pub struct Client {
    jobs: Rc<Vec<JobSpec>>,
    next_arrival: usize,
    acked: Vec<bool>,
    /// Per job, whether its latest send was acknowledged (a resubmission
    /// is a send like the first: retried until acknowledged).
    answered: Vec<bool>,
    /// Per job, the orchestrator its first send was addressed to: a send
    /// once traffic has moved to another one goes out as a replay,
    /// acknowledged or not (the first may have been taken and run there,
    /// and only its acknowledgement lost).
    first_orch: Vec<Option<HostId>>,
    done: Vec<bool>,
    /// `submit_retry` and `resubmit_after`: the one resend rule.
    resends: Resends,
    via_queue: bool,
    probe_since: Option<Micros>,
    /// The tick that checks whether a probe is due: every
    /// `probe_interval_us` from the first probe, queued only for the
    /// firing that sends the next one ([`PROBE_EVERY_US`] after the last).
    probe_tick: LazyTimer,
    probe_interval_us: Micros,
    next_probe: u32,
    last_probe: Option<(JobId, Micros)>,
    first_probe_job: u32,
    templates: &'static [Template],
    probe_template: u16,
    /// The standby orchestrator: after its promotion, the old primary's
    /// completions are no recovery (see `on_msg`).
    standby_orch: HostId,
}

/// A host's component. Workers are most hosts and the largest variant, so
/// boxing them would add an indirection to most events for no saving.
#[allow(clippy::large_enum_variant)]
pub enum Node {
    /// Workload generator.
    Client(Client),
    /// Orchestrator (region A or B).
    Orchestrator(Orchestrator),
    /// Worker.
    Worker(Worker),
    /// Payment or email API.
    Api(SideEffectApi),
    /// Read-only search tool.
    Search(SearchApi),
    /// An LLM provider.
    Provider(ProviderMock),
    /// Vector store.
    Vector(VectorNode),
    /// Failover controller.
    Controller(Controller),
    /// In-flight task queue node.
    Queue(Queue),
}

/// The built stack.
pub struct Stack {
    /// The runtime.
    pub rt: Runtime<Msg, Timer>,
    /// Components by host.
    pub nodes: Vec<Node>,
    /// DNS.
    pub dns: Dns,
    /// Ground truth.
    pub truth: Truth,
    /// Named hosts.
    pub hosts: Hosts,
    /// The workload's jobs. Probe jobs are numbered after them (see
    /// [`MAX_PROBES`]) and are not listed.
    pub jobs: Rc<Vec<JobSpec>>,
    /// Worker settings.
    pub worker_shared: Rc<WorkerShared>,
    /// Number of workload jobs (probes come after).
    pub workload_jobs: u32,
    /// Templates.
    pub templates: &'static [Template],
    /// The pattern.
    pub pattern: Pattern,
    /// Whether the client probes after a fault (`[workload] probes`).
    pub probes: bool,
}

/// Where things are.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    /// Client.
    pub client: HostId,
    /// Orchestrators: A, B.
    pub orch: [HostId; 2],
    /// Vector stores: A, B.
    pub vec: [HostId; 2],
    /// Workers in A.
    pub workers_a: Vec<HostId>,
    /// Workers in B (running and scale-up ones).
    pub workers_b: Vec<HostId>,
    /// Workers in B that start only on scale-up.
    pub scale_up_b: Vec<HostId>,
    /// Payment API.
    pub payment: HostId,
    /// Email API.
    pub email: HostId,
    /// Search API.
    pub search: HostId,
    /// Providers in priority order (the last one is region A's local model).
    pub providers: Vec<HostId>,
    /// Region B's local model.
    pub local_b: Option<HostId>,
    /// Failover controller.
    pub controller: Option<HostId>,
    /// Queue nodes (active, replica), when the stack has a queue.
    pub queue: Option<[HostId; 2]>,
}

/// How often the client probes after a fault, until a probe completes
/// (checked on every `workload.probe_interval` tick).
pub const PROBE_EVERY_US: Micros = 30 * US_PER_S;

/// The maximum number of probe jobs a drill may submit.
pub const MAX_PROBES: u32 = 100_000;

struct SimEnv<'a> {
    rt: &'a mut Runtime<Msg, Timer>,
    me: HostId,
    dns: &'a Dns,
    truth: &'a mut Truth,
}

impl Env for SimEnv<'_> {
    #[inline]
    fn now_us(&self) -> Micros {
        // A paused host acts at its wake-up time (see Runtime::pause).
        self.rt.now_us().max(self.rt.host(self.me).paused_until_us)
    }
    #[inline]
    fn wall_now_us(&self) -> Micros {
        self.now_us().saturating_add_signed(self.rt.host(self.me).skew_us)
    }
    #[inline]
    fn me(&self) -> HostId {
        self.me
    }
    #[inline(always)]
    fn send(&mut self, to: HostId, msg: Msg) {
        self.rt.send(self.me, to, msg);
    }
    #[inline(always)]
    fn send_after(&mut self, delay_us: Micros, to: HostId, msg: Msg) {
        self.rt.send_after(self.me, delay_us, to, msg);
    }
    #[inline]
    fn send_built(&mut self, to: HostId, make: impl FnOnce() -> Msg) {
        self.rt.send_built(self.me, to, make);
    }
    #[inline]
    fn send_copies(&mut self, to: HostId, copies: u32, make: impl FnOnce(u32) -> Msg) {
        self.rt.send_copies(self.me, to, copies, make);
    }
    #[inline(always)]
    fn set_timer(&mut self, after_us: Micros, timer: Timer) {
        self.rt.set_timer(self.me, after_us, timer);
    }
    #[inline]
    fn rng(&mut self) -> &mut ChaCha8Rng {
        self.rt.rng()
    }
    #[inline]
    fn resolve(&self, svc: Service) -> HostId {
        self.dns.resolve(svc, self.rt.now_us())
    }
    fn note(&mut self, note: Note) {
        // A paused host acts (and notes) at its wake-up time.
        let at_us = Env::now_us(self);
        self.truth.trace.push(TraceEvent { at_us, host: self.me, note });
    }
    #[inline]
    fn reach(&mut self, host: HostId, job: JobId, step: u16, phase: Phase) -> bool {
        if self.truth.triggers.is_empty() {
            return false;
        }
        let Some(t) =
            self.truth.triggers.iter_mut().find(|t| !t.fired && t.job == job && t.step == step && t.phase == phase)
        else {
            return false;
        };
        t.fired = true;
        let (fault, action) = (t.fault, t.action);
        self.truth.hits.push(HookHit { fault, host });
        match action {
            HookAction::Pause(d) => {
                // Freeze the host from this exact point: the rest of the
                // handler acts at its wake-up time.
                let until = self.rt.now_us() + d;
                self.rt.pause(host, until);
                false
            }
            HookAction::DiskLoss => false,
            HookAction::Kill => host == self.me,
        }
    }
}

/// The names of the hosts `Stack::build` creates for a stack, in host-id
/// order (validation checks fault endpoints against them without building).
pub fn host_names(spec: &crate::drill::scenario::StackSpec) -> Vec<String> {
    let two = spec.pattern != Pattern::SingleRegion;
    let mut names: Vec<String> = ["client", "orchestrator-a", "orchestrator-b", "vector-a", "vector-b"]
        .into_iter()
        .chain(["payment-api", "email-api", "search-api"])
        .map(String::from)
        .collect();
    for (i, p) in spec.providers.iter().enumerate() {
        names.push(format!("provider-{}", p.name));
        let local = p.kind == crate::components::provider::ProviderKind::Local;
        if local && i + 1 == spec.providers.len() && two {
            names.push(format!("provider-{}-b", p.name));
        }
    }
    if two {
        names.push("failover-controller".into());
    }
    if spec.queue.is_some() {
        names.extend(["queue-a".to_string(), "queue-b".to_string()]);
    }
    names.extend((0..spec.workers).map(|i| format!("worker-a-{i}")));
    if two {
        names.extend((0..spec.workers).map(|i| format!("worker-b-{i}")));
    }
    names
}

/// The templates' step counts by index (used by the client).
fn steps_of(templates: &[Template], t: u16) -> u16 {
    templates[t as usize].steps.len() as u16
}

/// Adds every host but the workers, in the order `host_names` lists them,
/// and returns their ids (no workers yet).
fn add_service_hosts(rt: &mut Runtime<Msg, Timer>, spec: &crate::drill::scenario::StackSpec) -> Hosts {
    let two = spec.pattern != Pattern::SingleRegion;
    let client = rt.add_host("client", EXTERNAL);
    let orch = [rt.add_host("orchestrator-a", REGION_A), rt.add_host("orchestrator-b", REGION_B)];
    let vec = [rt.add_host("vector-a", REGION_A), rt.add_host("vector-b", REGION_B)];
    let payment = rt.add_host("payment-api", EXTERNAL);
    let email = rt.add_host("email-api", EXTERNAL);
    let search = rt.add_host("search-api", EXTERNAL);
    let mut providers = Vec::new();
    let mut local_b = None;
    for (i, p) in spec.providers.iter().enumerate() {
        let is_last = i + 1 == spec.providers.len();
        let local = p.kind == crate::components::provider::ProviderKind::Local;
        let region = if local { REGION_A } else { EXTERNAL };
        providers.push(rt.add_host(format!("provider-{}", p.name), region));
        if local && is_last && two {
            local_b = Some(rt.add_host(format!("provider-{}-b", p.name), REGION_B));
        }
    }
    let controller = two.then(|| rt.add_host("failover-controller", EXTERNAL));
    let queue = spec.queue.map(|_| {
        let a = rt.add_host("queue-a", REGION_A);
        let b = rt.add_host("queue-b", if two { REGION_B } else { REGION_A });
        [a, b]
    });
    Hosts { client, orch, vec, payment, email, search, providers, local_b, controller, queue, ..Hosts::default() }
}

/// The components of every host but the workers and the client, indexed by
/// host id (`host_count` slots; the client's is filled later).
fn service_nodes(spec: &crate::drill::scenario::StackSpec, hosts: &Hosts, host_count: usize) -> Vec<Option<Node>> {
    let mut nodes: Vec<Option<Node>> = (0..host_count).map(|_| None).collect();
    let slot = |h: HostId| h.0 as usize;
    let [orch_a, orch_b] = hosts.orch;
    let orch_cfg = orch_config(spec, hosts);
    nodes[slot(orch_a)] = Some(Node::Orchestrator(Orchestrator::new(orch_cfg, true)));
    // The controller health-checks region A's orchestrator only.
    let standby_cfg = OrchConfig { replica: None, controller_silence_us: None, ..orch_cfg };
    nodes[slot(orch_b)] = Some(Node::Orchestrator(Orchestrator::new(standby_cfg, false)));
    let [vec_a, vec_b] = vector_nodes(spec, hosts);
    nodes[slot(hosts.vec[0])] = Some(Node::Vector(vec_a));
    nodes[slot(hosts.vec[1])] = Some(Node::Vector(vec_b));
    let api = |dedupe: bool, latency: crate::drill::scenario::Dur, base: ApiConfig| {
        Node::Api(SideEffectApi::new(ApiConfig { dedupe, processing_us: latency.us(), ..base }))
    };
    nodes[slot(hosts.payment)] = Some(api(spec.apis.payment_dedupe, spec.apis.payment_latency, ApiConfig::payment()));
    nodes[slot(hosts.email)] = Some(api(spec.apis.email_dedupe, spec.apis.email_latency, ApiConfig::email()));
    nodes[slot(hosts.search)] =
        Some(Node::Search(SearchApi { latency_us: spec.apis.search_latency.us(), breaks: Vec::new() }));
    for (h, p) in hosts.providers.iter().zip(&spec.providers) {
        nodes[slot(*h)] = Some(Node::Provider(ProviderMock::new(p.clone())));
    }
    if let (Some(h), Some(p)) = (hosts.local_b, spec.providers.last()) {
        nodes[slot(h)] = Some(Node::Provider(ProviderMock::new(p.clone())));
    }
    if let (Some([qa, qb]), Some(qcfg)) = (hosts.queue, spec.queue) {
        let replica = qcfg.replicated.then_some(qb);
        nodes[slot(qa)] = Some(Node::Queue(Queue::new(qcfg, replica, true)));
        nodes[slot(qb)] = Some(Node::Queue(Queue::new(qcfg, None, false)));
    }
    if let Some(c) = hosts.controller {
        nodes[slot(c)] = Some(Node::Controller(Controller::new(failover_config(spec), orch_a, orch_b, hosts.vec[1])));
    }
    nodes
}

/// The primary orchestrator's configuration (the standby's drops `replica`).
fn orch_config(spec: &crate::drill::scenario::StackSpec, hosts: &Hosts) -> OrchConfig {
    let policy = spec.effective_policy();
    let two = spec.pattern != Pattern::SingleRegion;
    let replication = if two { spec.replication } else { Replication::None };
    OrchConfig {
        lease_ms: policy.lease_ms,
        recovery_scan_ms: spec.recovery_scan.ms().max(1),
        fencing: policy.fencing,
        replication,
        replica: (two && replication != Replication::None).then_some(hosts.orch[1]),
        client: hosts.client,
        wall_clock_leases: policy.wall_clock_leases,
        auto_rollback: policy.auto_rollback,
        idempotent_create: policy.idempotent_create,
        // A primary silent for longer than the controller's detection self-fences.
        controller_silence_us: two.then(|| failover_config(spec).detection_us()),
        commit_us: spec.commit_latency.us(),
    }
}

/// The failover controller's configuration (active-active has no scale-up).
fn failover_config(spec: &crate::drill::scenario::StackSpec) -> FailoverConfig {
    let f = spec.failover;
    FailoverConfig {
        health_interval_ms: f.health_interval.ms(),
        health_timeout_ms: f.health_timeout.ms(),
        failure_threshold: f.failure_threshold,
        promotion_ms: f.promotion.ms(),
        dns_ttl_ms: f.dns_ttl.ms(),
        scale_up_ms: if spec.pattern == Pattern::ActiveActive { 0 } else { f.scale_up.ms() },
    }
}

/// The vector stores of regions A (serving, shipping snapshots and maybe
/// streaming to B) and B (standby).
fn vector_nodes(spec: &crate::drill::scenario::StackSpec, hosts: &Hosts) -> [VectorNode; 2] {
    let two = spec.pattern != Pattern::SingleRegion;
    let local_only = spec.vector.snapshot_location == SnapshotLocation::SameRegion || !two;
    let stream = two && spec.vector.streaming_replica;
    let primary = vector_node(spec, hosts, true, two.then_some(hosts.vec[1]), stream, local_only);
    let mut standby = vector_node(spec, hosts, false, None, false, true);
    // In sync from the start (both empty), as `Budget::hydration_us` counts
    // it, not only once a write has streamed: a workload without memory
    // writes would otherwise hydrate `restore_base` at failover.
    standby.streamed = stream;
    [primary, standby]
}

/// One vector store node with the scenario's snapshot and restore settings.
fn vector_node(
    spec: &crate::drill::scenario::StackSpec,
    hosts: &Hosts,
    serving: bool,
    peer: Option<HostId>,
    stream: bool,
    snapshots_local_only: bool,
) -> VectorNode {
    let v = &spec.vector;
    let vcfg = VectorConfig { restore_base_us: v.restore_base.us(), restore_per_point_us: v.restore_per_point_us };
    VectorNode {
        store: VectorStore::new(vcfg),
        serving,
        hydrated: serving,
        peer,
        stream,
        snapshot_interval_us: v.snapshot_interval.us(),
        ship_delay_us: v.ship_delay.us(),
        snapshots_local_only,
        controller: hosts.controller.unwrap_or(hosts.client),
        hydrate_from: None,
        restore_base_us: v.restore_base.us(),
        streamed: false,
        integrity_check_us: v.integrity_check_interval.us(),
        hydrating: false,
        shipping: Default::default(),
        restoring: None,
        stood_down: false,
        restores: 0,
        early: Vec::new(),
    }
}

/// Adds the workers of region A and, in two-region patterns, of region B
/// (those beyond the running count start on scale-up); returns region A's
/// shared worker settings.
fn add_workers(
    rt: &mut Runtime<Msg, Timer>,
    spec: &crate::drill::scenario::StackSpec,
    templates: &'static [Template],
    hosts: &mut Hosts,
    nodes: &mut Vec<Option<Node>>,
) -> Rc<WorkerShared> {
    let pattern = spec.pattern;
    let two = pattern != Pattern::SingleRegion;
    let policy = spec.effective_policy();
    let mut router = crate::components::router::RouterSettings::for_providers(&spec.providers);
    router.breaker = spec.breaker;
    let shared_for = |home: Option<HostId>, providers: Vec<HostId>| {
        Rc::new(WorkerShared {
            policy,
            templates,
            home,
            payment: hosts.payment,
            email: hosts.email,
            search: hosts.search,
            providers,
            router: router.clone(),
            request_timeout_us: spec.request_timeout.us(),
            model_timeout_us: spec.providers.iter().map(|p| p.timeout_ms * US_PER_MS).collect(),
        })
    };
    let shared_a = shared_for(None, hosts.providers.clone());
    let mut providers_b = hosts.providers.clone();
    if let (Some(b), Some(last)) = (hosts.local_b, providers_b.last_mut()) {
        *last = b;
    }
    let home_b = if pattern == Pattern::ActiveActive { None } else { Some(hosts.orch[1]) };
    let shared_b = shared_for(home_b, providers_b);
    for i in 0..spec.workers {
        let h = rt.add_host(format!("worker-a-{i}"), REGION_A);
        nodes.push(Some(Node::Worker(Worker::new(shared_a.clone(), h))));
        hosts.workers_a.push(h);
    }
    if two {
        let running = match pattern {
            Pattern::ActiveActive => spec.workers,
            Pattern::WarmStandby => spec.standby_workers,
            _ => 0,
        };
        for i in 0..spec.workers {
            let h = rt.add_host(format!("worker-b-{i}"), REGION_B);
            nodes.push(Some(Node::Worker(Worker::new(shared_b.clone(), h))));
            hosts.workers_b.push(h);
            if i >= running {
                hosts.scale_up_b.push(h);
            }
        }
    }
    shared_a
}

/// The index of a (validated) template name.
fn template_index(templates: &[Template], name: &str) -> u16 {
    templates.iter().position(|t| t.name == name).expect("validated") as u16
}

/// The workload's jobs with their arrival times (Poisson gaps draw from the
/// runtime's seeded generator).
fn workload(sc: &Scenario, rt: &mut Runtime<Msg, Timer>, templates: &[Template]) -> Vec<JobSpec> {
    let n = sc.workload.tasks;
    let gap = sc.workload.interval.us();
    let mut jobs = Vec::with_capacity(n as usize);
    let mut t = 0u64;
    for i in 0..n {
        let name = &sc.workload.templates[i as usize % sc.workload.templates.len()];
        match sc.workload.arrival {
            Arrival::AtOnce => {}
            Arrival::Uniform => t = u64::from(i) * gap,
            Arrival::Poisson => {
                if i > 0 {
                    let u: f64 = rt.rng().random_range(f64::EPSILON..1.0);
                    t += (-u.ln() * gap as f64) as u64;
                }
            }
        }
        jobs.push(JobSpec { template: template_index(templates, name), at_us: t, probe: false });
    }
    jobs
}

/// The client that submits the workload and, after a fault, health probes.
fn client_node(sc: &Scenario, jobs: Rc<Vec<JobSpec>>, templates: &'static [Template], standby_orch: HostId) -> Client {
    let n = sc.workload.tasks;
    Client {
        next_arrival: 0,
        acked: vec![false; jobs.len()],
        answered: vec![false; jobs.len()],
        first_orch: vec![None; jobs.len()],
        done: vec![false; jobs.len()],
        jobs,
        probe_template: template_index(templates, "probe"),
        resends: Resends::new(sc.workload.submit_retry.us(), sc.workload.resubmit_after.us()),
        via_queue: sc.stack.queue.is_some(),
        probe_since: None,
        probe_tick: LazyTimer::default(),
        probe_interval_us: sc.workload.probe_interval.us().max(US_PER_MS),
        next_probe: n,
        last_probe: None,
        first_probe_job: n,
        templates,
        standby_orch,
    }
}

impl Stack {
    /// Builds the stack, the workload and the DNS of a scenario.
    pub fn build(sc: &Scenario, seed: u64) -> Stack {
        let spec = &sc.stack;
        let mut rt: Runtime<Msg, Timer> = Runtime::new(seed, NetConfig::from(&spec.network));
        let templates = workflow::builtin_shared();
        let mut hosts = add_service_hosts(&mut rt, spec);
        let mut nodes = service_nodes(spec, &hosts, rt.hosts().len());
        let worker_shared = add_workers(&mut rt, spec, templates, &mut hosts, &mut nodes);
        let jobs = Rc::new(workload(sc, &mut rt, templates));
        nodes[hosts.client.0 as usize] = Some(Node::Client(client_node(sc, jobs.clone(), templates, hosts.orch[1])));

        let ttl = spec.failover.dns_ttl.us();
        let [orch_a, _] = hosts.orch;
        let queue_record = Record::new(hosts.queue.map_or(orch_a, |[qa, _]| qa), 0);
        let dns =
            Dns { orchestrator: Record::new(orch_a, ttl), vector: Record::new(hosts.vec[0], ttl), queue: queue_record };
        let nodes: Vec<Node> = nodes.into_iter().map(|n| n.expect("every host has a component")).collect();
        let mut truth =
            Truth { accepted_us: vec![None; jobs.len()], completed: vec![false; jobs.len()], ..Truth::default() };
        truth.trace.reserve(64);
        let workload_jobs = sc.workload.tasks;
        let pattern = spec.pattern;
        let probes = sc.workload.probes;
        let mut stack =
            Stack { rt, nodes, dns, truth, hosts, jobs, worker_shared, workload_jobs, templates, pattern, probes };
        // Scale-up workers are not running yet.
        for h in stack.hosts.scale_up_b.clone() {
            stack.rt.crash(h);
        }
        stack
    }

    /// Runs every component's start-up.
    pub fn start(&mut self) {
        for i in 0..self.nodes.len() {
            let h = HostId(i as u32);
            if self.rt.host(h).up {
                self.start_host(h);
            }
        }
    }

    /// Runs one host's start-up.
    pub fn start_host(&mut self, h: HostId) {
        // Which orchestrator is primary, as the failover controller (or,
        // without one, the authoritative DNS record) says: a returning
        // primary asks before serving.
        let primary = match self.hosts.controller.map(|c| &self.nodes[c.0 as usize]) {
            Some(Node::Controller(c)) => c.primary_now(),
            _ => self.dns.orchestrator.target(),
        };
        let Stack { rt, nodes, dns, truth, .. } = self;
        let mut env = SimEnv { rt, me: h, dns, truth };
        match &mut nodes[h.0 as usize] {
            Node::Orchestrator(o) => {
                // A returning primary that was failed away from stays
                // standby: it asks the controller, not a resolver cache that
                // may still hold it for a TTL (two primaries).
                if o.is_primary() && primary != h {
                    o.demote();
                }
                o.start(&mut env);
            }
            Node::Worker(w) => w.start(&mut env),
            Node::Controller(c) => c.start(&mut env),
            Node::Queue(q) => {
                // A returning node that was failed away from is no longer
                // active: it rejoins as the replica (below).
                q.active = q.active && env.dns.queue.target() == h;
                q.start(&mut env)
            }
            Node::Client(c) => c.start(&mut env),
            Node::Vector(v) => {
                // A returning store serves again if traffic still goes to it
                // and it holds a serving copy (not a cut-short hydration).
                v.serving = v.serving || (v.hydrated && env.dns.vector.target() == h);
                v.start(&mut env)
            }
            _ => {}
        }
        match &self.nodes[h.0 as usize] {
            Node::Queue(q) if !q.active => self.rejoin_queue_replica(h),
            // An active node back from a loss nobody failed over from (its
            // peer was down then) takes its peer back as the replica when
            // the peer is up and idle (it came back first and had no one to
            // rejoin): without that, the queue never mirrors again and a
            // later loss of this node has nothing to fail over to.
            Node::Queue(q) if q.replicated() && !q.mirrors() => {
                if let Some([qa, qb]) = self.hosts.queue {
                    self.rejoin_queue_replica(if h == qa { qb } else { qa });
                }
            }
            _ => {}
        }
    }

    /// Crashes a host: its volatile state is dropped (a worker is replaced by
    /// a fresh process with an empty disk).
    pub fn crash_host(&mut self, h: HostId) {
        if !self.rt.host(h).up {
            return;
        }
        self.rt.crash(h);
        match &mut self.nodes[h.0 as usize] {
            Node::Worker(w) => *w = Worker::new(w.shared(), h),
            Node::Orchestrator(o) => o.crash(),
            Node::Vector(v) => {
                v.serving = false;
                v.hydrating = false;
                v.shipping.clear(); // uploads in progress die with the host
            }
            _ => {}
        }
        self.truth.trace.push(TraceEvent { at_us: self.rt.now_us(), host: h, note: Note::Crashed { host: h } });
    }

    /// Restarts a crashed host and runs its start-up.
    pub fn restart_host(&mut self, h: HostId) {
        if self.rt.host(h).up {
            return;
        }
        self.rt.restart(h);
        self.truth.trace.push(TraceEvent { at_us: self.rt.now_us(), host: h, note: Note::Restarted { host: h } });
        self.start_host(h);
    }

    /// Hands one event to its component. Returns the controller's requests
    /// and the hooks hit, for the drill to act on.
    #[inline(always)]
    pub fn dispatch(&mut self, ev: Event<Msg, Timer>) -> Option<Timer> {
        let Stack { rt, nodes, dns, truth, jobs, .. } = self;
        match ev {
            Event::Control(t) => return Some(t),
            Event::Deliver { from, to, msg } => {
                let mut env = SimEnv { rt, me: to, dns, truth };
                match &mut nodes[to.0 as usize] {
                    Node::Worker(w) => w.on_msg(&mut env, from, msg),
                    Node::Orchestrator(o) => o.on_msg(&mut env, from, msg),
                    Node::Api(api) => api_on_msg(api, &mut env, from, msg),
                    Node::Search(search) => {
                        if let Msg::ToolReq { req, origin, .. } = msg {
                            let ok = CallOutcome::Ok { effect: 0, replayed: false };
                            let now = env.now_us();
                            let malformed = search.breaks.iter().any(|&(f, u)| f <= now && now < u);
                            env.send_after(search.latency_us, from, Msg::ToolResp { req, outcome: ok, malformed });
                            env.truth.calls += 1;
                            env.reach(origin.host, origin.job, origin.step, Phase::InFlight);
                        }
                    }
                    Node::Provider(p) => {
                        if let Msg::ModelReq { req, request, origin } = msg {
                            let now = env.now_us();
                            let outcome = p.handle(now, &request, env.rng());
                            env.send_after(outcome.latency_us, from, Msg::ModelResp { req, outcome });
                            env.truth.calls += 1;
                            if outcome.result.is_ok() {
                                // The earliest answer (a later request may be answered sooner).
                                let at = now + outcome.latency_us;
                                let first = env.truth.first_output_us.entry(request.version).or_insert(at);
                                *first = (*first).min(at);
                                env.reach(origin.host, origin.job, origin.step, Phase::InFlight);
                            }
                        }
                    }
                    Node::Vector(v) => v.on_msg(&mut env, from, msg),
                    Node::Controller(c) => c.on_msg(&mut env, from, msg),
                    Node::Queue(q) => q.on_msg(&mut env, from, msg),
                    Node::Client(c) => c.on_msg(&mut env, from, msg),
                }
            }
            Event::Timer { host, timer } => {
                let mut env = SimEnv { rt, me: host, dns, truth };
                match &mut nodes[host.0 as usize] {
                    Node::Worker(w) => w.on_timer(&mut env, timer),
                    Node::Orchestrator(o) => o.on_timer(&mut env, timer),
                    Node::Vector(v) => v.on_timer(&mut env, timer),
                    Node::Controller(c) => c.on_timer(&mut env, timer),
                    Node::Queue(q) => q.on_timer(&mut env, timer),
                    Node::Client(c) => c.on_timer(&mut env, timer, jobs),
                    _ => {}
                }
            }
        }
        None
    }

    /// Drains the controller's requests (DNS switch, scale-up).
    pub fn controller_requests(&mut self) -> Vec<Request> {
        match self.hosts.controller {
            Some(c) => match &mut self.nodes[c.0 as usize] {
                Node::Controller(ctl) => ctl.take_requests(),
                _ => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    /// The orchestrator on host `h`.
    pub fn orch(&self, h: HostId) -> &Orchestrator {
        match &self.nodes[h.0 as usize] {
            Node::Orchestrator(o) => o,
            _ => panic!("host {h:?} is not an orchestrator"),
        }
    }

    /// The orchestrator on host `h`, mutably.
    pub fn orch_mut(&mut self, h: HostId) -> &mut Orchestrator {
        match &mut self.nodes[h.0 as usize] {
            Node::Orchestrator(o) => o,
            _ => panic!("host {h:?} is not an orchestrator"),
        }
    }

    /// The vector node on host `h`.
    pub fn vector(&self, h: HostId) -> &VectorNode {
        match &self.nodes[h.0 as usize] {
            Node::Vector(v) => v,
            _ => panic!("host {h:?} is not a vector store"),
        }
    }

    /// The vector node on host `h`, mutably.
    pub fn vector_mut(&mut self, h: HostId) -> &mut VectorNode {
        match &mut self.nodes[h.0 as usize] {
            Node::Vector(v) => v,
            _ => panic!("host {h:?} is not a vector store"),
        }
    }

    /// A side-effect API.
    pub fn api(&self, h: HostId) -> &SideEffectApi {
        match &self.nodes[h.0 as usize] {
            Node::Api(a) => a,
            _ => panic!("host {h:?} is not an API"),
        }
    }

    /// A provider mock.
    pub fn provider_mut(&mut self, h: HostId) -> &mut ProviderMock {
        match &mut self.nodes[h.0 as usize] {
            Node::Provider(p) => p,
            _ => panic!("host {h:?} is not a provider"),
        }
    }

    /// Every provider mock (for cost).
    pub fn providers(&self) -> impl Iterator<Item = &ProviderMock> {
        self.nodes.iter().filter_map(|n| if let Node::Provider(p) = n { Some(p) } else { None })
    }

    /// The orchestrator that serves at the end (the primary).
    pub fn serving_orch(&self) -> HostId {
        self.dns.orchestrator.target()
    }

    /// The vector store that serves at the end.
    pub fn serving_vector(&self) -> HostId {
        self.dns.vector.target()
    }
}

fn api_on_msg(api: &mut SideEffectApi, env: &mut SimEnv<'_>, from: HostId, msg: Msg) {
    let now = env.now_us();
    match msg {
        Msg::ToolReq { req, key, params, origin, basis, .. } => {
            env.truth.side_request(origin, now);
            if api.in_progress_by(now, key).is_some_and(|(h, _)| h != from) {
                env.truth.concurrent_runs += 1;
            }
            let (outcome, done_at) = api.call(now, Some(key), params, origin);
            if matches!(outcome, CallOutcome::Ok { replayed: false, .. }) {
                env.truth.acted_on(origin.job, basis);
            }
            let malformed = api.malformed(now);
            env.send_after(done_at - now, from, Msg::ToolResp { req, outcome, malformed });
            env.truth.calls += 1;
            if matches!(outcome, CallOutcome::Ok { replayed: false, .. }) {
                env.reach(origin.host, origin.job, origin.step, Phase::InFlight);
            }
        }
        Msg::LookupReq { req, key, .. } => {
            if api.in_progress_by(now, key).is_some_and(|(h, at)| h != from && still_running(env.rt, h, at, now)) {
                // Another worker is making this very effect right now: two
                // workers are running the same step. A lookup that meets
                // the call of a worker frozen (paused) or killed since it
                // sent it is the reconciliation safeguard doing its job
                // after a stall no lease can outlast, not a second run.
                env.truth.concurrent_runs += 1;
            }
            let found = api.lookup(now, key);
            let malformed = api.malformed(now);
            env.send_after(50 * US_PER_MS, from, Msg::LookupResp { req, found, malformed });
        }
        _ => {}
    }
}

/// Whether the process on host `h` that sent a request reaching an API at
/// `sent_at_us` still runs at `now_us`: up, not crashed since, not paused.
fn still_running(rt: &Runtime<Msg, Timer>, h: HostId, sent_at_us: Micros, now_us: Micros) -> bool {
    let host = rt.host(h);
    host.up && host.crashed_at_us <= sent_at_us && host.paused_until_us <= now_us
}

impl VectorNode {
    fn start(&mut self, env: &mut impl Env) {
        if self.serving {
            env.set_timer(self.snapshot_interval_us, Timer::SnapshotTick);
            self.arm_integrity_check(env);
        }
        // A point-in-time restore a crash cut short starts over: its timer
        // died with the host, and until it finishes the store is read-only
        // and its integrity check waits for it.
        if let Some(s) = &self.restoring {
            env.set_timer(self.store.restore_duration_us(s), Timer::RestoreDone);
        }
    }

    fn arm_integrity_check(&self, env: &mut impl Env) {
        if self.integrity_check_us > 0 {
            env.set_timer(self.integrity_check_us, Timer::IntegrityCheck);
        }
    }

    fn available(&self) -> bool {
        self.serving && self.restoring.is_none()
    }

    fn on_msg(&mut self, env: &mut SimEnv<'_>, from: HostId, msg: Msg) {
        let now = env.now_us();
        match msg {
            Msg::VecUpsert { req, point, value, origin, basis } => {
                if !self.available() {
                    env.send(from, Msg::VecResp { req, unavailable: true });
                    return;
                }
                self.store.upsert(now, point, value);
                env.truth.vec_acks.entry(point).or_insert(now);
                env.truth.vec_basis.insert(point, (basis, value));
                if self.stream
                    && let Some(peer) = self.peer
                {
                    env.send(peer, Msg::VecReplicate { point, value, at_us: now, restores: self.restores });
                }
                env.send_after(5 * US_PER_MS, from, Msg::VecResp { req, unavailable: false });
                env.truth.calls += 1;
                env.reach(origin.host, origin.job, origin.step, Phase::InFlight);
            }
            Msg::VecQuery { req, origin, .. } => {
                let unavailable = !self.available();
                env.send_after(5 * US_PER_MS, from, Msg::VecResp { req, unavailable });
                if !unavailable {
                    env.truth.calls += 1;
                    env.reach(origin.host, origin.job, origin.step, Phase::InFlight);
                }
            }
            Msg::VecReplicate { point, value, at_us, restores } => {
                self.streamed = true;
                self.store.upsert(at_us, point, value);
                if restores > self.restores && !self.serving {
                    self.early.push((restores, point, value, at_us));
                }
            }
            Msg::VecRestored { snapshot, restores } => self.follow_restore(snapshot.as_deref(), restores),
            Msg::ShipSnapshot(snap) => {
                self.store.receive_snapshot(*snap);
                self.store.prune(now, RetentionLadder::default());
            }
            Msg::Hydrate if self.serving => env.send(from, Msg::Hydrated),
            Msg::Hydrate if self.hydrating => {} // under way; it answers when done
            Msg::Hydrate => {
                // Restore the newest snapshot held that verifies clean (a
                // corrupted one would only be restored again from an older
                // one at the first integrity check, losing what the promoted
                // store took meanwhile), else the newest held; a streaming
                // replica is already hydrated.
                self.hydrating = true;
                let (dur, snap) = if self.streamed {
                    (0, None)
                } else {
                    let newest = self.store.newest_clean_snapshot(Micros::MAX).or(self.store.snapshots().last());
                    match newest {
                        Some(s) => (self.store.restore_duration_us(s), Some(s.clone())),
                        None => (self.restore_base_us, None),
                    }
                };
                self.hydrate_from = snap;
                env.set_timer(dur, Timer::HydrationDone);
            }
            _ => {}
        }
    }

    /// A streaming primary replaced its contents with a point-in-time
    /// restore: tells its replica, which follows (the replica is its copy:
    /// had it kept the writes the restore dropped, a later restore of the
    /// replica, promoted by a failover, from the primary's snapshots would
    /// drop them again, charged to a fault long after the one they were
    /// lost to).
    fn stream_restore(&mut self, env: &mut SimEnv<'_>, snapshot: Option<&Snapshot>) {
        if self.stream
            && let Some(peer) = self.peer
        {
            self.restores += 1;
            let snapshot = snapshot.map(|s| Box::new(s.clone()));
            env.send(peer, Msg::VecRestored { snapshot, restores: self.restores });
        }
    }

    /// A replica follows its primary's `restores`-th restore: the
    /// snapshot's contents (none: empty), then the writes the primary took
    /// since that arrived first. A serving store follows no other (a
    /// primary cut off or failed away from), nor an older restore than one
    /// it followed.
    fn follow_restore(&mut self, snapshot: Option<&Snapshot>, restores: u32) {
        if self.serving {
            self.early.clear();
            return;
        }
        if restores <= self.restores {
            return;
        }
        self.restores = restores;
        self.streamed = true;
        match snapshot {
            Some(s) => {
                self.store.restore(0, s);
            }
            None => self.store.empty(),
        }
        for &(r, point, value, at_us) in &self.early {
            if r >= restores {
                self.store.upsert(at_us, point, value);
            }
        }
        self.early.retain(|&(r, ..)| r > restores);
    }

    /// Whether this vector node can do nothing a reader sees: it does not
    /// serve, or it serves as the name's target with no corrupted point,
    /// no restore and no hydration under way. Its snapshot ticks and
    /// integrity checks then only take and ship snapshots (read at a
    /// restore no fault is left to cause).
    pub fn is_idle(&self, target: bool) -> bool {
        !self.serving || (target && !self.hydrating && self.restoring.is_none() && self.store.corrupted_count() == 0)
    }

    /// Stops taking snapshots and checking integrity (once).
    fn stand_down(&mut self, env: &mut SimEnv<'_>) {
        if !self.stood_down {
            self.stood_down = true;
            env.note(Note::Demoted);
        }
    }

    fn on_timer(&mut self, env: &mut SimEnv<'_>, timer: Timer) {
        let now = env.now_us();
        match timer {
            // A serving store that the authoritative vector record no longer
            // routes to (a failover away from a primary still up: a cut or
            // a lossy link) stops its snapshots and integrity checks: its
            // stale snapshots must not reach the promoted store (whose next
            // restore would go back to them, losing its own writes).
            Timer::SnapshotTick | Timer::IntegrityCheck if self.serving && env.dns.vector.target() != env.me => {
                self.stand_down(env);
            }
            Timer::IntegrityCheck if self.serving => {
                self.arm_integrity_check(env);
                let corrupted = self.store.corrupted_count();
                if corrupted == 0 || self.restoring.is_some() {
                    return;
                }
                // Read-only, then point-in-time restore from the newest clean
                // snapshot the retention ladder still holds.
                env.note(Note::CorruptionDetected { points: corrupted });
                let snap = self.store.newest_clean_snapshot(now).cloned();
                let dur = snap.as_ref().map_or(self.restore_base_us, |s| self.store.restore_duration_us(s));
                self.restoring = snap;
                if self.restoring.is_none() {
                    self.store.clear();
                    self.stream_restore(env, None);
                }
                env.set_timer(dur, Timer::RestoreDone);
            }
            Timer::RestoreDone => {
                let (points, taken_at_us) = match self.restoring.take() {
                    Some(s) => {
                        let n = self.store.restore(now, &s);
                        // Verify the restored count against the snapshot's.
                        assert_eq!(n, s.point_count, "restore verification");
                        assert_eq!(self.store.len() as u64, s.point_count, "restore verification");
                        self.stream_restore(env, Some(&s));
                        (n, s.taken_at_us)
                    }
                    None => (0, 0),
                };
                env.note(Note::Restored { points, snapshot_taken_at_us: taken_at_us });
            }
            Timer::SnapshotTick if self.serving => {
                let snap = self.store.snapshot(now);
                if !self.snapshots_local_only {
                    // Held for shipping apart from the retention ladder, which
                    // may prune it locally before the upload finishes.
                    env.set_timer(self.ship_delay_us, Timer::ShipSnapshot { id: snap.id });
                    self.shipping.push_back(snap);
                }
                self.store.prune(now, RetentionLadder::default());
                env.set_timer(self.snapshot_interval_us, Timer::SnapshotTick);
            }
            Timer::ShipSnapshot { id } => {
                if let Some(i) = self.shipping.iter().position(|s| s.id == id) {
                    let snap = self.shipping.remove(i).expect("found");
                    if let Some(peer) = self.peer {
                        env.send(peer, Msg::ShipSnapshot(Box::new(snap)));
                    }
                }
            }
            Timer::HydrationDone => {
                self.hydrating = false;
                let points = match self.hydrate_from.take() {
                    Some(s) => self.store.restore(now, &s),
                    None => self.store.len() as u64,
                };
                self.serving = true;
                self.hydrated = true;
                env.note(Note::Hydrated { points });
                env.send(self.controller, Msg::Hydrated);
                env.set_timer(self.snapshot_interval_us, Timer::SnapshotTick);
                // A promoted store checks its integrity like one serving
                // from the start.
                self.arm_integrity_check(env);
            }
            _ => {}
        }
    }
}

impl Client {
    fn start(&mut self, env: &mut impl Env) {
        self.arm_next_arrival(env);
    }

    fn arm_next_arrival(&mut self, env: &mut impl Env) {
        if let Some(j) = self.jobs.get(self.next_arrival)
            && !j.probe
        {
            let at = j.at_us.max(env.now_us());
            env.set_timer(at - env.now_us(), Timer::Arrival { job: JobId(self.next_arrival as u32) });
        }
    }

    /// A job's spec: a workload job, or a probe (numbered after them).
    fn spec(&self, job: JobId) -> JobSpec {
        self.jobs.get(job.0 as usize).copied().unwrap_or(JobSpec {
            template: self.probe_template,
            at_us: u64::MAX,
            probe: true,
        })
    }

    fn submit(&mut self, env: &mut impl Env, job: JobId) {
        let spec = self.spec(job);
        let to = env.resolve(Service::Orchestrator);
        let steps = steps_of(self.templates, spec.template);
        // An acknowledged job sent again is a replay; so is one first sent
        // while traffic went to another orchestrator, acknowledged or not:
        // the stack there may have run it (its answer lost, say with a
        // queue replica that never mirrored it), and the store serving now
        // may not hold that run. A send that creates a task there must
        // reconcile before it decides or acts rather than plan afresh.
        let first = *at_grow(&mut self.first_orch, job.0 as usize).get_or_insert(to);
        let replay = is_replay(self.acked.get(job.0 as usize).copied().unwrap_or(false), &first, &to);
        let (template, probe) = (spec.template, spec.probe);
        if self.via_queue {
            let to = env.resolve(Service::Queue);
            env.send(to, Msg::Publish { job, template, steps, probe, replay });
        } else {
            env.send(to, Msg::Submit { job, template, steps, probe, replay });
        }
        *at_grow(&mut self.answered, job.0 as usize) = false;
        if let Some(after_us) = self.resends.sent(env.now_us(), job) {
            env.set_timer(after_us, Timer::ClientRetry);
        }
    }

    /// Whether the client has nothing left to send: it is not probing and
    /// was told every one of the first `jobs` (the workload) finished. A
    /// resubmission timer then finds every job done.
    pub fn is_settled(&self, jobs: u32) -> bool {
        self.probe_since.is_none() && (0..jobs as usize).all(|j| self.done.get(j).copied().unwrap_or(false))
    }

    /// Starts probing until a probe submitted from now on completes.
    pub fn start_probing(&mut self, env: &mut impl Env) {
        let first = self.probe_since.is_none();
        self.probe_since = Some(env.now_us());
        self.last_probe = None;
        if first {
            // A new schedule (a tick still queued from an earlier one is stale).
            self.probe_tick.restart(env.now_us());
            self.probe(env);
        } else {
            self.arm_probe(env); // the schedule's next tick probes
        }
    }

    /// Whether the client is probing: its probe ticks are then its work,
    /// not idle chatter.
    pub fn is_probing(&self) -> bool {
        self.probe_since.is_some()
    }

    fn probe(&mut self, env: &mut impl Env) {
        if self.probe_since.is_none() {
            return;
        }
        let now = env.now_us();
        let due = match self.last_probe {
            None => true,
            Some((_, at)) => now >= at + PROBE_EVERY_US,
        };
        if due && self.next_probe < self.first_probe_job + MAX_PROBES {
            let job = JobId(self.next_probe);
            self.next_probe += 1;
            self.last_probe = Some((job, now));
            self.submit(env, job);
        }
        self.arm_probe(env);
    }

    /// Arms the probe tick for the schedule's first firing that probes: the
    /// next one after a fault's onset, else the first [`PROBE_EVERY_US`]
    /// after the last probe. None while no probe is left to send.
    fn arm_probe(&mut self, env: &mut impl Env) {
        if self.next_probe >= self.first_probe_job + MAX_PROBES {
            return;
        }
        let now = env.now_us();
        let not_before_us = self.last_probe.map_or(now, |(_, at)| at + PROBE_EVERY_US);
        if let Some(after_us) = self.probe_tick.arm(self.probe_interval_us, now, not_before_us) {
            env.set_timer(after_us, Timer::ProbeTick);
        }
    }

    fn on_timer(&mut self, env: &mut SimEnv<'_>, timer: Timer, jobs: &[JobSpec]) {
        let now = env.now_us();
        match timer {
            Timer::Arrival { job } => {
                self.next_arrival += 1;
                self.submit(env, job);
                // Jobs arriving at the same instant go out together.
                while let Some(j) = jobs.get(self.next_arrival) {
                    if j.probe || j.at_us > now {
                        break;
                    }
                    let job = JobId(self.next_arrival as u32);
                    self.next_arrival += 1;
                    self.submit(env, job);
                }
                self.arm_next_arrival(env);
            }
            Timer::ClientRetry => {
                // A probe not acknowledged when the next one went out is
                // given up, not retried: the newest probe stands for new
                // work. Retrying every probe of a long outage would send
                // probes × outage / submit_retry times, quadratic in the
                // outage (a region lost for 51 h with a 290 ms retry: two
                // billion sends to a dead orchestrator).
                let (answered, first_probe) = (&self.answered, self.first_probe_job);
                let newest_probe = self.last_probe.map(|(job, _)| job);
                let is_acked = |j: JobId| {
                    answered.get(j.0 as usize).copied().unwrap_or(false)
                        || (j.0 >= first_probe && Some(j) != newest_probe)
                };
                for job in self.resends.retry_fired(now, is_acked) {
                    self.submit(env, job);
                }
                if let Some(after_us) = self.resends.arm_retry(now) {
                    env.set_timer(after_us, Timer::ClientRetry);
                }
            }
            Timer::ProbeTick if self.probe_tick.fired(now) => self.probe(env),
            Timer::ClientResubmit => {
                // A job accepted long ago and never reported done may have
                // been lost with a region: submit it again (idempotent on
                // the job id where the orchestrator still knows it).
                let done = &self.done;
                let is_done = |j: JobId| done.get(j.0 as usize).copied().unwrap_or(false);
                for job in self.resends.resubmit_fired(now, is_done) {
                    self.submit(env, job);
                }
                if let Some(after_us) = self.resends.arm_resubmit(now) {
                    env.set_timer(after_us, Timer::ClientResubmit);
                }
            }
            _ => {}
        }
    }

    fn on_msg(&mut self, env: &mut SimEnv<'_>, from: HostId, msg: Msg) {
        match msg {
            Msg::SubmitAck { job } => {
                let j = job.0 as usize;
                *at_grow(&mut self.answered, j) = true;
                if !*at_grow(&mut self.acked, j) {
                    self.acked[j] = true;
                    *at_grow(&mut env.truth.accepted_us, j) = Some(env.now_us());
                    if !self.spec(job).probe
                        && let Some(after_us) = self.resends.accepted(env.now_us(), job)
                    {
                        env.set_timer(after_us, Timer::ClientResubmit);
                    }
                }
            }
            Msg::Completed { job } => {
                *at_grow(&mut self.done, job.0 as usize) = true;
                *at_grow(&mut env.truth.completed, job.0 as usize) = true;
                // Probing ends with a probe completed by the orchestrator the
                // authoritative DNS record names: one finished by an old
                // primary that was failed away from (a stale resolver sent
                // it there, and it was not fenced yet) is not the serving
                // region's recovery, so the client probes on. Nor is one the
                // old primary finished after the standby's promotion, before
                // the DNS record changed: the standby is the primary then
                // (the measurement reads the old primary's log only up to
                // the promotion).
                let promoted_away = env.truth.promoted_at.is_some_and(|(_, p)| p < env.now_us());
                if let (Some(since), Some((last, at))) = (self.probe_since, self.last_probe)
                    && job == last
                    && at >= since
                    && from == env.dns.orchestrator.target()
                    && (from == self.standby_orch || !promoted_away)
                {
                    self.probe_since = None;
                }
            }
            _ => {}
        }
    }
}

impl Stack {
    /// Resolves a fault endpoint: a host name or `region:a|b|external`.
    pub fn endpoint(&self, name: &str) -> Option<crate::sim::Endpoint> {
        if let Some(r) = name.strip_prefix("region:") {
            return match r {
                "a" => Some(crate::sim::Endpoint::Region(REGION_A)),
                "b" => Some(crate::sim::Endpoint::Region(REGION_B)),
                "external" => Some(crate::sim::Endpoint::Region(EXTERNAL)),
                _ => None,
            };
        }
        let i = self.rt.hosts().iter().position(|h| h.name == name)?;
        Some(crate::sim::Endpoint::Host(HostId(i as u32)))
    }

    /// A host by name.
    pub fn host_named(&self, name: &str) -> Option<HostId> {
        self.rt.hosts().iter().position(|h| h.name == name).map(|i| HostId(i as u32))
    }

    /// The queue node on `h`.
    pub fn queue(&self, h: HostId) -> Option<&Queue> {
        match &self.nodes[h.0 as usize] {
            Node::Queue(q) => Some(q),
            _ => None,
        }
    }

    /// The queue node on `h`, mutably.
    pub fn queue_mut(&mut self, h: HostId) -> Option<&mut Queue> {
        match &mut self.nodes[h.0 as usize] {
            Node::Queue(q) => Some(q),
            _ => None,
        }
    }

    /// The queue's replica on `h` becomes the active node; clients follow.
    pub fn activate_queue(&mut self, h: HostId) {
        let now = self.rt.now_us();
        self.dns.queue.switch(now, h);
        let Stack { rt, nodes, dns, truth, .. } = self;
        let mut env = SimEnv { rt, me: h, dns, truth };
        if let Node::Queue(q) = &mut nodes[h.0 as usize] {
            q.activate(&mut env);
        }
        // The old active node, if it is back already, becomes the replica.
        if let Some([qa, qb]) = self.hosts.queue {
            self.rejoin_queue_replica(if h == qa { qb } else { qa });
        }
    }

    /// A replicated queue's node that is up and not active rejoins as the
    /// active node's replica: it takes a copy of the active node's stream,
    /// and the active node mirrors to it again (a JetStream peer catching
    /// up), so a later loss of the active node can fail over again.
    pub fn rejoin_queue_replica(&mut self, h: HostId) {
        let active = self.dns.queue.target();
        if active == h || !self.rt.host(h).up || !self.rt.host(active).up {
            return;
        }
        let copy = match &self.nodes[active.0 as usize] {
            Node::Queue(a) if a.replicated() && a.active => a.replica_copy(),
            _ => return,
        };
        if let Node::Queue(q) = &mut self.nodes[h.0 as usize] {
            *q = copy;
        }
        if let Node::Queue(a) = &mut self.nodes[active.0 as usize] {
            a.set_replica(h);
        }
    }

    /// A worker's local disk is lost.
    pub fn lose_disk(&mut self, h: HostId) {
        if let Node::Worker(w) = &mut self.nodes[h.0 as usize] {
            w.lose_disk();
        }
    }

    /// A tool API's responses break their schema for a period.
    pub fn break_schema(&mut self, api: crate::drill::scenario::ToolApi, from_us: Micros, until_us: Micros) {
        use crate::drill::scenario::ToolApi;
        let h = match api {
            ToolApi::Payment => self.hosts.payment,
            ToolApi::Email => self.hosts.email,
            ToolApi::Search => self.hosts.search,
        };
        match &mut self.nodes[h.0 as usize] {
            Node::Api(a) => a.set_schema_break(from_us, until_us),
            Node::Search(s) => s.breaks.push((from_us, until_us)),
            _ => unreachable!("tool API hosts are APIs"),
        }
    }

    /// Deploys a prompt/config version with these defects (per mille of
    /// model outputs failing validation) through the serving orchestrator.
    pub fn deploy(&mut self, defect_permille: u16) {
        let h = self.serving_orch();
        let Stack { rt, nodes, dns, truth, .. } = self;
        let mut env = SimEnv { rt, me: h, dns, truth };
        if let Node::Orchestrator(o) = &mut nodes[h.0 as usize] {
            o.deploy(&mut env, defect_permille);
        }
    }

    /// Silently corrupts a fraction of the serving vector store's points.
    pub fn corrupt_vector(&mut self, fraction: f64) -> u64 {
        let h = self.serving_vector();
        let now = self.rt.now_us();
        let Stack { rt, nodes, .. } = self;
        match &mut nodes[h.0 as usize] {
            Node::Vector(v) => v.store.corrupt(now, fraction, rt.rng()),
            _ => 0,
        }
    }

    /// Tells the client to probe from now on (a fault began), unless the
    /// workload says it does not probe.
    pub fn start_probing(&mut self) {
        if !self.probes {
            return;
        }
        let Stack { rt, nodes, dns, truth, hosts, .. } = self;
        let mut env = SimEnv { rt, me: hosts.client, dns, truth };
        if let Node::Client(c) = &mut nodes[hosts.client.0 as usize] {
            c.start_probing(&mut env);
        }
    }

    /// Sets an outage on a provider by name (and on region B's copy of the
    /// local model when it is the one named).
    pub fn provider_hosts_named(&self, name: &str, names: &[String]) -> Vec<HostId> {
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if n == name {
                out.push(self.hosts.providers[i]);
                if i + 1 == names.len()
                    && let Some(b) = self.hosts.local_b
                {
                    out.push(b);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn pid(job: u32, step: u16) -> PointId {
        PointId { job: JobId(job), step }
    }

    #[test]
    fn acted_map_and_task_map_answer_as_hash_maps() {
        use crate::components::ids::TaskId;
        let mut x: u64 = 5;
        let mut next = move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let (mut acted, mut acted_ref) = (ActedMap::default(), FxHashMap::default());
        let (mut slots, mut slots_ref) = (crate::components::store::TaskMap::default(), FxHashMap::default());
        for i in 0..20_000u64 {
            let (job, step, d) = (JobId((next() % 3_000) as u32), (next() % 4) as u16, next() as u32);
            assert_eq!(acted.get(job, step), acted_ref.get(&(job, step)).copied());
            if acted.get(job, step).is_none() {
                acted.insert(job, step, d);
                acted_ref.insert((job, step), d);
            }
            // Two timelines, dense ids, and now and then an id far away.
            let index = if i % 97 == 0 { next() << 20 } else { next() % 5_000 };
            let task = TaskId((next() % 2) << 40 | index);
            match (slots.get_mut(&task), slots_ref.get_mut(&task)) {
                (Some(a), Some(b)) => {
                    assert_eq!(*a, *b);
                    *a += 1;
                    *b += 1;
                }
                (None, None) => {
                    slots.insert(task, i);
                    slots_ref.insert(task, i);
                }
                (a, b) => panic!("task {task:?}: {a:?} against {b:?}"),
            }
        }
    }

    /// Hands `msg` to vector host `to`, as the network would.
    fn deliver(stack: &mut Stack, to: HostId, msg: Msg) {
        let Stack { rt, nodes, dns, truth, hosts, .. } = stack;
        let mut env = SimEnv { rt, me: to, dns, truth };
        match &mut nodes[to.0 as usize] {
            Node::Vector(v) => v.on_msg(&mut env, hosts.vec[0], msg),
            _ => panic!("not a vector host"),
        }
    }

    fn values(stack: &Stack, h: HostId) -> Vec<(PointId, u64)> {
        stack.vector(h).store.points_iter().map(|(p, s)| (p, s.value)).collect()
    }

    /// A job sent again after traffic moved to the other orchestrator is a
    /// replay though no send of it was acknowledged (seed 13 case 7392: A
    /// ran the job from the first publish, whose answer waited for a queue
    /// replica that was down; the retry reached B's promoted store after
    /// the queue's dedupe window and must not plan afresh). Sent again to
    /// the same orchestrator, unacknowledged, it is not (a short dedupe
    /// window's harm, anti-pattern 12, stays visible).
    #[test]
    fn a_send_after_traffic_moved_is_a_replay_acknowledged_or_not() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/regressions/reference-unacknowledged-publish-retried-after-the-dedupe-window-replays.toml");
        let sc = crate::drill::scenario::load(&path).expect("scenario");
        let mut stack = Stack::build(&sc, 1);
        let client = stack.hosts.client;
        let standby = stack.hosts.orch[1];
        let mut replays = Vec::new();
        for i in 0..3u64 {
            if i == 2 {
                let now = stack.rt.now_us();
                stack.dns.orchestrator.switch(now, standby);
            }
            let Stack { rt, nodes, dns, truth, .. } = &mut stack;
            let mut env = SimEnv { rt, me: client, dns, truth };
            let Node::Client(c) = &mut nodes[client.0 as usize] else { panic!("client host") };
            c.submit(&mut env, JobId(0));
            // One send at a time: the network may reorder sends in flight.
            while let Some(ev) = stack.rt.step((i + 1) * US_PER_S) {
                if let Event::Deliver { msg: Msg::Publish { job: JobId(0), replay, .. }, .. } = ev {
                    replays.push(replay);
                }
            }
        }
        assert_eq!(replays, vec![false, false, true], "a replay once traffic moved, not before");
    }

    /// A streaming replica that never received a write (a workload without
    /// memory writes) is still in sync with its primary: it hydrates at once
    /// at failover, as the RTO bound counts it (it restored for
    /// `restore_base`, 10 min here: RTO 649.7 s against 161.1 s).
    #[test]
    fn an_idle_streaming_replica_hydrates_at_once() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/regressions/reference-idle-streaming-replica-hydrates-at-once.toml");
        let sc = crate::drill::scenario::load(&path).expect("scenario");
        assert!(sc.stack.vector.streaming_replica && sc.stack.vector.restore_base.us() > 0);
        let mut stack = Stack::build(&sc, 1);
        let b = stack.hosts.vec[1];
        deliver(&mut stack, b, Msg::Hydrate);
        let mut done = false;
        while let Some(ev) = stack.rt.step(0) {
            done |= matches!(ev, Event::Timer { host, timer: Timer::HydrationDone } if host == b);
        }
        assert!(done, "the idle replica's hydration ends at once");
    }

    /// The replica follows its primary's restore, keeps a write the primary
    /// took after it that the network delivered first, and ignores a
    /// restore older than one it followed.
    #[test]
    fn a_streamed_replica_follows_its_primarys_restore() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/regressions/reference-streamed-replica-follows-the-primarys-restore-seed5-case51763.toml");
        let sc = crate::drill::scenario::load(&path).expect("scenario");
        let mut stack = Stack::build(&sc, 1);
        let b = stack.hosts.vec[1];
        let replicate = |point, value, at_us, restores| Msg::VecReplicate { point, value, at_us, restores };
        // The primary's store: a snapshot, then a write its restore drops.
        let mut a = VectorStore::new(VectorConfig::default());
        a.upsert(10, pid(0, 0), 1);
        let snap = a.snapshot(20);
        for msg in [replicate(pid(0, 0), 1, 10, 0), replicate(pid(0, 1), 2, 30, 0), replicate(pid(0, 2), 3, 50, 1)] {
            deliver(&mut stack, b, msg);
        }
        assert_eq!(values(&stack, b).len(), 3);
        let restored = Msg::VecRestored { snapshot: Some(Box::new(snap.clone())), restores: 1 };
        deliver(&mut stack, b, restored);
        assert_eq!(values(&stack, b), vec![(pid(0, 0), 1), (pid(0, 2), 3)]);
        deliver(&mut stack, b, Msg::VecRestored { snapshot: None, restores: 1 });
        assert_eq!(values(&stack, b).len(), 2, "a restore already followed is not followed again");
        deliver(&mut stack, b, Msg::VecRestored { snapshot: None, restores: 2 });
        assert!(values(&stack, b).is_empty(), "no clean snapshot: the primary was emptied");
    }
}
