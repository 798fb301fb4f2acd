//! Runs a drill: builds the stack, injects the faults, runs the simulation
//! to the horizon, measures from ground truth, runs the same drill without
//! faults for the cost baseline, and gives a verdict against the tier.

pub mod budget;
pub mod invariants;
pub mod lanes;
pub mod limits;
pub mod loader;
pub mod matrix;
pub mod measure;
pub mod scenario;
pub mod schema;
pub mod steps;
pub mod tier;

use serde::Serialize;

use crate::components::env::{Note, Timer};
use crate::components::ids::{HostId, JobId, Micros, RegionId, us_to_s};
use crate::components::orchestrator::Replication;
use crate::components::region::Request;
use crate::components::store::TaskStatus;
pub use crate::drill::budget::{Budget, OverBudget};
use crate::drill::measure::{Counts, FaultObs, FaultResult, LostLog, RpoSurfaces, RtoParts};
use crate::drill::scenario::{Expect, FaultSpec, RegionName, Scenario, When, WorkerTarget};
use crate::drill::tier::Invariant;
use crate::sim::Partition;
use crate::sim::stack::{HookAction, REGION_A, REGION_B, Stack, TraceEvent, Trigger};

/// Automated rollback of a bad deploy must finish within this (seed 002).
pub const ROLLBACK_TARGET_S: f64 = 300.0;

/// Cost of a run.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Cost {
    /// Model calls made.
    pub model_calls: u64,
    /// Tokens billed (input + output).
    pub tokens: u64,
    /// Money, USD.
    pub usd: f64,
}

/// Everything one drill produced.
#[derive(Clone, Debug, Serialize)]
pub struct DrillResult {
    /// Scenario name.
    pub scenario: String,
    /// One-line purpose.
    pub purpose: String,
    /// Seed.
    pub seed: u64,
    /// Tier name.
    pub tier: String,
    /// Expected outcome.
    pub expect: Expect,
    /// "pass" or "fail" (for an `expect = "fail"` drill, "pass" means the
    /// anti-pattern was caught).
    pub verdict: &'static str,
    /// Whether the stack met every target.
    pub met_targets: bool,
    /// Worst RTO over faults, seconds (None: not recovered).
    pub rto_s: Option<f64>,
    /// Worst RPO over faults and surfaces, seconds.
    pub rpo_s: f64,
    /// Worst RPO per surface.
    pub rpo_surfaces: RpoSurfaces,
    /// RTO parts of the fault with the worst RTO.
    pub rto_parts: RtoParts,
    /// Duplicate side effects.
    pub duplicates: u64,
    /// Lost side effects.
    pub lost_effects: u64,
    /// Stuck tasks.
    pub stuck_tasks: u64,
    /// Replanned steps.
    pub replanned_steps: u64,
    /// Writes accepted from stale lease holders.
    pub stale_writes: u64,
    /// Target RTO, seconds.
    pub target_rto_s: f64,
    /// Target RPO, seconds.
    pub target_rpo_s: f64,
    /// The zero-tolerance counts the tier checks.
    pub invariants: Vec<Invariant>,
    /// Every violated target, with the measured value.
    pub violations: Vec<String>,
    /// Per-fault measurements.
    pub faults: Vec<FaultResult>,
    /// The step events of each job a fault touched, in order, from ground
    /// truth (see [`steps`]).
    pub step_events: steps::StepLog,
    /// Counts.
    pub counts: Counts,
    /// Cost with the faults.
    pub cost: Cost,
    /// Cost of the same drill without faults.
    pub baseline_cost: Cost,
    /// What the standby region costs to keep running, USD per month (the
    /// price of the pattern, whatever the drill).
    pub standby_usd_per_month: f64,
    /// Simulated seconds covered (the horizon; idle time is skipped, not run).
    pub simulated_s: f64,
    /// Events the runtime handled.
    pub events: u64,
    /// Model and tool calls completed.
    pub calls: u64,
    /// FNV digest of the whole event sequence (determinism check).
    pub event_digest: String,
    /// The timeline.
    #[serde(skip)]
    pub trace: Vec<TraceEvent>,
    /// Host names by id (for the timeline).
    #[serde(skip)]
    pub host_names: Vec<String>,
    /// The lanes of the jobs the faults touched (for the timeline plot).
    #[serde(skip)]
    pub lanes: Vec<lanes::JobLane>,
    /// Touched jobs beyond [`lanes::MAX_LANES`], not drawn.
    #[serde(skip)]
    pub lanes_more: usize,
    /// A live drill's own records (None for a simulated drill, whose JSON
    /// has no `mode`).
    #[serde(flatten)]
    pub live: Option<crate::live::drill::LiveInfo>,
}

/// Raw outcome of one simulation run.
pub struct Run {
    /// The stack at the horizon.
    pub stack: Stack,
    /// Per-fault observations.
    pub faults: Vec<FaultObs>,
}

/// Runs the simulation once, with or without the scenario's faults, with
/// no budget (built-in and test scenarios; a scenario from a file goes
/// through [`simulate_within`]).
pub fn simulate(sc: &Scenario, seed: u64, with_faults: bool) -> Run {
    match simulate_within(sc, seed, with_faults, &Budget::UNLIMITED) {
        Ok(run) => run,
        Err(e) => unreachable!("an unlimited budget is never spent: {e}"),
    }
}

/// Runs the simulation once, with or without the scenario's faults, and
/// stops it with [`OverBudget`] once it has handled more events or holds
/// more heap than `budget` allows.
pub fn simulate_within(sc: &Scenario, seed: u64, with_faults: bool, budget: &Budget) -> Result<Run, OverBudget> {
    simulate_until(sc, seed, with_faults, budget, false)
}

/// [`simulate_within`] with the faults, stopped early once the stack is
/// quiescent ([`Stack::quiescent`]): every workload job done, every fault
/// over (or, for a fault only a busy stack can meet, begun: a provider
/// outage, a prompt-cache loss, a tool schema change, a clock skew, a
/// replication-lag spike), and nothing queued but idle chatter. What any
/// invariant or measurement reads is then what it would read at the
/// horizon (`tests/quiescence.rs` compares the two). The fuzzer's runs; a
/// drill's report (`run`) goes to the horizon, where its event counts and
/// digest are taken.
pub fn simulate_checked(sc: &Scenario, seed: u64, budget: &Budget) -> Result<Run, OverBudget> {
    simulate_until(sc, seed, true, budget, true)
}

/// The first quiescence test comes this long after the last fault and
/// workload job; each failed test doubles the wait, up to
/// [`QUIET_CHECK_MAX_US`] (a test reads every host and queued event).
const QUIET_CHECK_FIRST_US: Micros = 5 * crate::components::ids::US_PER_S;

/// The longest wait between two quiescence tests.
const QUIET_CHECK_MAX_US: Micros = 120 * crate::components::ids::US_PER_S;

fn simulate_until(
    sc: &Scenario,
    seed: u64,
    with_faults: bool,
    budget: &Budget,
    stop_when_quiet: bool,
) -> Result<Run, OverBudget> {
    let horizon_us = sc.horizon.us();
    // No quiescence test before every fault has begun and ended, or only
    // begun for the kinds an idle stack cannot meet (an event trigger fires
    // only while a job runs, and the test waits for them all).
    let over_us = |f: &FaultSpec| if over_once_begun(f) { f.at() } else { f.end().or(f.at()) };
    let faults_over_us = sc.faults.iter().filter_map(over_us).map(|d| d.us()).max().unwrap_or(0);
    let idle_control = |t: &Timer| matches!(t, Timer::FaultEnd(i) if over_once_begun(&sc.faults[*i as usize]));
    let (mut next_check_us, mut check_wait_us) =
        if stop_when_quiet { (faults_over_us, QUIET_CHECK_FIRST_US) } else { (Micros::MAX, 0) };
    let mut meter = budget::Meter::start(budget, horizon_us, !with_faults);
    let mut stack = Stack::build(sc, seed);
    let mut obs: Vec<FaultObs> = sc.faults.iter().map(|f| FaultObs { kind: f.kind(), ..FaultObs::default() }).collect();
    if with_faults {
        for (i, f) in sc.faults.iter().enumerate() {
            arm(&mut stack, sc, i as u16, f);
        }
    }
    stack.start();
    let controller = stack.hosts.controller;
    let mut region_down: Vec<(u16, HostId)> = Vec::new();
    while let Some(ev) = stack.rt.step(horizon_us) {
        meter.check(stack.rt.stats().work(), stack.rt.now_us())?;
        let from_controller = match &ev {
            crate::sim::Event::Timer { host, .. } | crate::sim::Event::Deliver { to: host, .. } => {
                Some(*host) == controller
            }
            crate::sim::Event::Control(_) => false,
        };
        let notes_before = stack.truth.trace.len();
        if let Some(ctrl) = stack.dispatch(ev) {
            control(&mut stack, sc, &mut obs, &mut region_down, ctrl);
        }
        // Vector memory's loss is judged at the restore, before replays
        // re-write what was lost.
        for e in &stack.truth.trace[notes_before..] {
            let restore = match e.note {
                Note::Serving => measure::Restore::Hydration,
                Note::Restored { .. } => measure::Restore::PointInTime,
                _ => continue,
            };
            measure::judge_vector(&stack, &mut obs, restore);
        }
        if !stack.truth.hits.is_empty() {
            let hits = std::mem::take(&mut stack.truth.hits);
            for hit in hits {
                onset(&mut stack, &mut obs, hit.fault as usize);
                match &sc.faults[hit.fault as usize] {
                    FaultSpec::WorkerKill { restart_after, .. } => kill(&mut stack, hit.host, *restart_after),
                    FaultSpec::DiskLoss { .. } => stack.lose_disk(hit.host),
                    _ => {}
                }
            }
        }
        if from_controller {
            for r in stack.controller_requests() {
                let now = stack.rt.now_us();
                match r {
                    Request::SwitchDns => {
                        let [_, ob] = stack.hosts.orch;
                        let [_, vb] = stack.hosts.vec;
                        stack.dns.orchestrator.switch(now, ob);
                        stack.dns.vector.switch(now, vb);
                    }
                    Request::ScaleUp => {
                        for h in stack.hosts.scale_up_b.clone() {
                            stack.restart_host(h);
                        }
                    }
                }
            }
        }
        if stack.truth.promoted_at.is_none() && stack.orch(stack.hosts.orch[1]).is_primary() {
            let lsn = stack.orch(stack.hosts.orch[1]).store().last_lsn();
            stack.truth.promoted_at = Some((lsn, stack.rt.now_us()));
            blame_false_failover(&stack, sc, &mut obs);
        }
        let now_us = stack.rt.now_us();
        if now_us >= next_check_us && workload_done(&stack) {
            if stack.quiescent(idle_control) {
                break;
            }
            next_check_us = now_us + check_wait_us;
            check_wait_us = (check_wait_us * 2).min(QUIET_CHECK_MAX_US);
        }
    }
    Ok(Run { stack, faults: obs })
}

/// Whether a fault's end can change nothing once the stack is quiescent:
/// a provider outage, a prompt-cache loss and a tool schema change are
/// windows on a service only a worker's call meets, and an idle stack
/// makes none (its jobs are done; its chatter calls no model or tool).
/// Their end does nothing in the drill either ([`control`]). A clock
/// skew's end resets a host's wall clock, which only leases timed on it
/// and keys minted from it read: an idle stack holds no lease and mints
/// no key (an idle worker's parked lease request carries its clock, but
/// no grant answers it while nothing is queued). A replication-lag spike's
/// end only lets the primary ship sooner, and replication is idle chatter
/// to [`Stack::quiescent`] already (what reaches the replica after the
/// last fault is read by nothing).
fn over_once_begun(f: &FaultSpec) -> bool {
    matches!(
        f,
        FaultSpec::ProviderOutage { .. }
            | FaultSpec::PromptCacheLoss { .. }
            | FaultSpec::ToolSchemaChange { .. }
            | FaultSpec::ClockSkew { .. }
            | FaultSpec::ReplicationLagSpike { .. }
    )
}

/// Whether the client was told every workload job finished.
fn workload_done(stack: &Stack) -> bool {
    let jobs = stack.workload_jobs as usize;
    stack.truth.completed.len() >= jobs && stack.truth.completed[..jobs].iter().all(|&c| c)
}

/// At the standby's promotion: when the primary failed away from is still
/// up with its store (a false failover, not a lost region), a cut or lossy
/// link begun by now made the controller's health checks fail, and owns
/// what the old primary acknowledged that the standby never got
/// ([`FaultObs::failed_away`]): the latest of those between the controller
/// and the old primary (either way: a lost check or a lost answer fails
/// it), else the latest of any (one that slowed the path some other way).
/// Under fully synchronous replication it acknowledged nothing the standby
/// lacks: no loss to own.
fn blame_false_failover(stack: &Stack, sc: &Scenario, obs: &mut [FaultObs]) {
    let old = stack.hosts.orch[0];
    if !stack.rt.host(old).up
        || stack.orch(old).store().log().is_empty()
        || matches!(sc.stack.replication, Replication::Sync { degrade_after_ms: None })
    {
        return;
    }
    let now = stack.rt.now_us();
    let begun =
        |f: &FaultObs| matches!(f.kind, "partition" | "link_degradation") && f.onset_us.is_some_and(|t| t <= now);
    let on_check_path = |i: usize| checks_cut(stack, &sc.faults[i], old);
    let latest = |on_path: bool| {
        (0..obs.len())
            .filter(|&i| begun(&obs[i]) && (!on_path || on_check_path(i)))
            .max_by_key(|&i| (obs[i].onset_us, i))
    };
    if let Some(i) = latest(true).or_else(|| latest(false)) {
        obs[i].failed_away = Some(old);
    }
}

/// Whether a cut or degraded link lies between the failover controller and
/// the orchestrator `orch`, in either direction.
fn checks_cut(stack: &Stack, f: &FaultSpec, orch: HostId) -> bool {
    let (FaultSpec::Partition { a, b, .. } | FaultSpec::LinkDegradation { a, b, .. }) = f else { return false };
    let (Some(ctrl), Some(a), Some(b)) = (stack.hosts.controller, stack.endpoint(a), stack.endpoint(b)) else {
        return false;
    };
    let side = |h: HostId| (h, stack.rt.host(h).region);
    let ((c, cr), (o, or)) = (side(ctrl), side(orch));
    (a.matches(c, cr) && b.matches(o, or)) || (a.matches(o, or) && b.matches(c, cr))
}

/// Sets a fault up before the run: hooks for event triggers, windows on the
/// components that model them, and control events for the rest.
fn arm(stack: &mut Stack, sc: &Scenario, i: u16, f: &FaultSpec) {
    let trigger = |action| {
        let When::Event { job, step, phase } = f.when()? else { return None };
        Some(Trigger { fault: i, job: JobId(job), step, phase, action, fired: false })
    };
    let hook = match f {
        FaultSpec::WorkerKill { .. } => trigger(HookAction::Kill),
        FaultSpec::WorkerPause { duration, .. } => trigger(HookAction::Pause(duration.us())),
        FaultSpec::DiskLoss { .. } => trigger(HookAction::DiskLoss),
        _ => None,
    };
    if let Some(t) = hook {
        stack.truth.triggers.push(t);
    }
    let names: Vec<String> = sc.stack.providers.iter().map(|p| p.name.clone()).collect();
    let window = |at: crate::drill::scenario::Dur, d: crate::drill::scenario::Dur| (at.us(), at.us() + d.us());
    match f {
        FaultSpec::ProviderOutage { at, provider, mode, duration } => {
            let (from, until) = window(*at, *duration);
            for h in stack.provider_hosts_named(provider, &names) {
                stack.provider_mut(h).set_outage(*mode, from, until);
            }
        }
        FaultSpec::PromptCacheLoss { at, duration, provider } => {
            let (from, until) = window(*at, *duration);
            let hosts: Vec<HostId> = match provider {
                Some(p) => stack.provider_hosts_named(p, &names),
                None => names.iter().flat_map(|n| stack.provider_hosts_named(n, &names)).collect(),
            };
            for h in hosts {
                stack.provider_mut(h).set_cache_outage(from, until);
            }
        }
        FaultSpec::Partition { at, duration, a, b, one_way }
        | FaultSpec::LinkDegradation { at, duration, a, b, one_way, .. } => {
            let (from_us, until_us) = window(*at, *duration);
            let (extra_latency_us, loss) = match f {
                FaultSpec::LinkDegradation { latency, loss, .. } => (latency.us(), *loss),
                _ => (0, 1.0),
            };
            let (a, b) = (stack.endpoint(a).expect("validated"), stack.endpoint(b).expect("validated"));
            let p = Partition { a, b, from_us, until_us, one_way: *one_way, extra_latency_us, loss };
            stack.rt.net_mut().add_partition(p);
        }
        FaultSpec::ToolSchemaChange { at, duration, api } => {
            let (from, until) = window(*at, *duration);
            stack.break_schema(*api, from, until);
        }
        _ => {}
    }
    if let Some(at) = f.at() {
        stack.rt.schedule_control(at.us(), Timer::FaultStart(i));
    }
    if let Some(end) = f.end() {
        stack.rt.schedule_control(end.us(), Timer::FaultEnd(i));
    }
}

fn onset(stack: &mut Stack, obs: &mut [FaultObs], i: usize) {
    if obs[i].onset_us.is_some() {
        return;
    }
    measure::vector_onset(stack, obs, i);
    let f = &mut obs[i];
    let now = stack.rt.now_us();
    f.onset_us = Some(now);
    let store = stack.orch(stack.serving_orch()).store();
    f.in_flight = measure::leased_jobs(store);
    stack.start_probing();
}

/// How long a replicated queue takes to elect its replica as the new
/// active node (a JetStream leader election).
pub const QUEUE_FAILOVER_US: crate::components::ids::Micros = 2 * crate::components::ids::US_PER_S;

/// How long the platform takes to replace a lost unreplicated queue node
/// (with an empty volume).
pub const QUEUE_REPLACE_US: crate::components::ids::Micros = 60 * crate::components::ids::US_PER_S;

/// The queue's active node is lost. Replicated, the replica takes over after
/// an election; unreplicated, the queue is down until the node returns, and
/// a permanent loss takes its messages (recorded for the queue RPO).
/// Returns the crashed node.
fn lose_queue_node(stack: &mut Stack, f: &mut FaultObs, permanent: bool) -> Option<HostId> {
    let [qa, qb] = stack.hosts.queue?;
    let active = stack.dns.queue.target();
    let other = if active == qa { qb } else { qa };
    let (mirrors, held) = match stack.queue(active) {
        Some(q) => (q.mirrors(), q.messages().map(|m| (m.job, m.published_us)).collect::<Vec<_>>()),
        None => return None,
    };
    stack.crash_host(active);
    // A replica that already took over (its peer lost), or whose peer is
    // down too, has nothing to fail over to: it is handled as an
    // unreplicated node (waited for, or replaced empty).
    if mirrors && stack.rt.host(other).up {
        stack.rt.schedule_control(stack.rt.now_us() + QUEUE_FAILOVER_US, Timer::QueueFailover(other));
        if permanent {
            // Its messages live on in the replica. The platform replaces
            // the node, empty, as below; it rejoins as the replica, or takes
            // over if the replica was lost too meanwhile (`take_over_queue`).
            if let Some(q) = stack.queue_mut(active) {
                q.wipe();
            }
            stack.rt.schedule_control(stack.rt.now_us() + QUEUE_REPLACE_US, Timer::Restart(active));
        }
    } else if permanent {
        // Unreplicated and gone for good: what it held is lost. (A node that
        // comes back keeps its disk; its messages wait for it.)
        f.lost_messages.extend(held);
        if let Some(q) = stack.queue_mut(active) {
            q.wipe();
        }
        // The platform replaces the node, empty.
        stack.rt.schedule_control(stack.rt.now_us() + QUEUE_REPLACE_US, Timer::Restart(active));
    }
    Some(active)
}

/// Region `r` is lost for good while the queue's active node elsewhere is
/// down for good too (its election to `r`'s node pending, or nothing to
/// elect): `r`'s node held the only copy of the messages, now lost
/// (recorded for the queue RPO).
fn lost_last_queue_copy(stack: &mut Stack, f: &mut FaultObs, down: &[(u16, HostId)], r: RegionId) {
    let Some([qa, qb]) = stack.hosts.queue else { return };
    let active = stack.dns.queue.target();
    let Some(here) = [qa, qb].into_iter().find(|&q| q != active && stack.rt.host(q).region == r) else { return };
    if !stays_down(stack, down, active) || !stack.rt.host(here).up {
        return;
    }
    if let Some(q) = stack.queue_mut(here) {
        f.lost_messages.extend(q.messages().map(|m| (m.job, m.published_us)));
        q.wipe();
    }
}

/// A queue node that comes back (from a temporary loss, or the platform's
/// replacement) takes over when the active node is down and no temporary
/// loss holds it, so it will not come back by itself: lost for good (its
/// replacement pending), or an election's candidate that went down before
/// it won (a queue loss, then the replica's region lost 2 s later). An
/// active node a temporary loss holds is waited for: it comes back with
/// its messages.
fn take_over_queue(stack: &mut Stack, down: &[(u16, HostId)], h: HostId) {
    let Some([qa, qb]) = stack.hosts.queue else { return };
    let active = stack.dns.queue.target();
    if (h != qa && h != qb) || h == active || !stack.rt.host(h).up {
        return;
    }
    if stays_down(stack, down, active) {
        stack.activate_queue(h);
    }
}

/// Whether host `h` is down and no temporary loss holds it: it will not come
/// back by itself (lost for good, a replacement pending at most).
fn stays_down(stack: &Stack, down: &[(u16, HostId)], h: HostId) -> bool {
    !stack.rt.host(h).up && !held(down, h)
}

/// Whether a temporary loss in `down` holds host `h`.
fn held(down: &[(u16, HostId)], h: HostId) -> bool {
    down.iter().any(|&(_, g)| g == h)
}

fn kill(stack: &mut Stack, h: HostId, restart_after: Option<crate::drill::scenario::Dur>) {
    stack.crash_host(h);
    if let Some(d) = restart_after {
        stack.rt.schedule_control(stack.rt.now_us() + d.us(), Timer::Restart(h));
    }
}

fn worker_target(stack: &Stack, t: Option<WorkerTarget>) -> Option<HostId> {
    match t? {
        WorkerTarget::Index(n) => stack.hosts.workers_a.get(n as usize).copied(),
        WorkerTarget::HoldingJob(j) => {
            let store = stack.orch(stack.serving_orch()).store();
            let task = store.task(store.task_for_job(JobId(j))?)?;
            (task.status == TaskStatus::Leased).then_some(task.lease.holder)
        }
    }
}

/// `down` holds the hosts temporary losses took down, each with the fault
/// that holds it: a host comes back when the last loss holding it ends.
fn control(stack: &mut Stack, sc: &Scenario, obs: &mut [FaultObs], down: &mut Vec<(u16, HostId)>, t: Timer) {
    match t {
        Timer::Restart(h) => {
            stack.restart_host(h);
            take_over_queue(stack, down, h);
        }
        Timer::FaultStart(i) => {
            let f = &sc.faults[i as usize];
            match f {
                FaultSpec::WorkerKill { worker, restart_after, .. } => {
                    if let Some(h) = worker_target(stack, *worker) {
                        onset(stack, obs, i as usize);
                        kill(stack, h, *restart_after);
                    }
                }
                FaultSpec::WorkerPause { worker, duration, .. } => {
                    if let Some(h) = worker_target(stack, *worker) {
                        onset(stack, obs, i as usize);
                        let until = stack.rt.now_us() + duration.us();
                        stack.rt.pause(h, until);
                    }
                }
                FaultSpec::DiskLoss { worker, .. } => {
                    if let Some(h) = worker_target(stack, *worker) {
                        onset(stack, obs, i as usize);
                        stack.lose_disk(h);
                    }
                }
                FaultSpec::ProviderOutage { .. }
                | FaultSpec::PromptCacheLoss { .. }
                | FaultSpec::Partition { .. }
                | FaultSpec::LinkDegradation { .. }
                | FaultSpec::ToolSchemaChange { .. } => onset(stack, obs, i as usize),
                FaultSpec::ReplicationLagSpike { lag, .. } => {
                    onset(stack, obs, i as usize);
                    let h = stack.serving_orch();
                    stack.orch_mut(h).set_extra_lag_us(lag.us());
                }
                FaultSpec::ClockSkew { host, offset, .. } => {
                    onset(stack, obs, i as usize);
                    let h = stack.host_named(host).expect("validated");
                    stack.rt.set_skew(h, offset.0 * 1_000);
                }
                FaultSpec::VectorCorruption { fraction, .. } => {
                    onset(stack, obs, i as usize);
                    stack.corrupt_vector(*fraction);
                    measure::vector_corrupted(stack, obs, i as usize);
                }
                FaultSpec::QueueLoss { duration, .. } => {
                    onset(stack, obs, i as usize);
                    if let Some(h) = lose_queue_node(stack, &mut obs[i as usize], duration.is_none())
                        && duration.is_some()
                    {
                        down.push((i, h));
                    }
                }
                FaultSpec::BadDeploy { error_rate, .. } => {
                    onset(stack, obs, i as usize);
                    stack.deploy((error_rate * 1_000.0).round() as u16);
                }
                FaultSpec::RegionLoss { region, duration, .. } => {
                    onset(stack, obs, i as usize);
                    let r = if *region == RegionName::A { REGION_A } else { REGION_B };
                    let hosts: Vec<HostId> = (0..stack.rt.hosts().len() as u32)
                        .map(HostId)
                        .filter(|&h| stack.rt.host(h).region == r && stack.rt.host(h).up)
                        .collect();
                    // Hosts an earlier, still ongoing loss holds down stay
                    // down until this one ends too.
                    let held: Vec<HostId> =
                        down.iter().filter(|(_, h)| stack.rt.host(*h).region == r).map(|&(_, h)| h).collect();
                    let primary = stack.serving_orch();
                    if stack.rt.host(primary).region == r {
                        let o = stack.orch(primary);
                        let acked_upto = match sc.stack.replication {
                            // Under semi-sync fallback, writes released unconfirmed were acknowledged.
                            Replication::Sync { degrade_after_ms: None } => o.replica_acked(),
                            _ => o.store().last_lsn(),
                        };
                        obs[i as usize].lost_log =
                            Some(LostLog { log: o.store().log().to_vec(), acked_upto, host: primary });
                    }
                    let active_queue = stack.dns.queue.target();
                    if stack.hosts.queue.is_some() && stack.rt.host(active_queue).region == r {
                        lose_queue_node(stack, &mut obs[i as usize], duration.is_none());
                    } else if duration.is_none() {
                        lost_last_queue_copy(stack, &mut obs[i as usize], down, r);
                    }
                    for &h in &hosts {
                        stack.crash_host(h);
                    }
                    if duration.is_none() {
                        // Gone for good: an earlier temporary loss of this
                        // region must not bring its hosts back.
                        down.retain(|(_, h)| stack.rt.host(*h).region != r);
                        // Storage in a lost region is gone.
                        let [oa, ob] = stack.hosts.orch;
                        let [va, vb] = stack.hosts.vec;
                        let (o, v) = if r == REGION_A { (oa, va) } else { (ob, vb) };
                        let store = stack.orch_mut(o).take_store();
                        if o != primary {
                            obs[i as usize].wiped_log = Some((o, store.log().to_vec()));
                        }
                        stack.vector_mut(v).store.clear();
                    } else {
                        down.extend(hosts.into_iter().chain(held).map(|h| (i, h)));
                    }
                }
            }
        }
        // An election whose only candidate went down meanwhile elects
        // nobody: the old active node serves again when it returns, or a
        // node that comes back takes over (`take_over_queue`).
        Timer::QueueFailover(h) if stack.rt.host(h).up => stack.activate_queue(h),
        Timer::QueueFailover(_) => {}
        Timer::FaultEnd(i) => match &sc.faults[i as usize] {
            FaultSpec::RegionLoss { .. } | FaultSpec::QueueLoss { .. } => {
                // Only the hosts this loss took down, and of those only the
                // ones no other ongoing loss still holds.
                let (ended, rest): (Vec<_>, Vec<_>) = std::mem::take(down).into_iter().partition(|&(j, _)| j == i);
                *down = rest;
                for (_, h) in ended {
                    if !held(down, h) {
                        stack.restart_host(h);
                        take_over_queue(stack, down, h);
                    }
                }
            }
            FaultSpec::ReplicationLagSpike { .. } => {
                for h in stack.hosts.orch {
                    stack.orch_mut(h).set_extra_lag_us(0);
                }
            }
            FaultSpec::ClockSkew { host, .. } => {
                let h = stack.host_named(host).expect("validated");
                stack.rt.set_skew(h, 0);
            }
            _ => {}
        },
        _ => {}
    }
}

fn cost(stack: &Stack) -> Cost {
    let mut c = Cost::default();
    for p in stack.providers() {
        let s = p.stats();
        c.model_calls += s.requests;
        c.tokens += s.tokens_in + s.tokens_out;
        c.usd += s.cost_micro_usd as f64 / 1e6;
    }
    c
}

/// Runs a drill with no budget (built-in and test scenarios; a scenario
/// from a file goes through [`try_run`]) and gives the verdict.
pub fn run(sc: &Scenario, seed: u64) -> DrillResult {
    match try_run(sc, seed, &Budget::UNLIMITED) {
        Ok(r) => r,
        Err(e) => unreachable!("an unlimited budget is never spent: {e}"),
    }
}

/// Runs a drill (the baseline without faults, for its cost, then the drill
/// with them) within `budget`, and gives the verdict. The baseline's events
/// count against the drill's; its memory is freed before the drill starts.
pub fn try_run(sc: &Scenario, seed: u64, budget: &Budget) -> Result<DrillResult, OverBudget> {
    let horizon_us = sc.horizon.us();
    let mut left = *budget;
    let baseline_cost = if sc.faults.is_empty() {
        None
    } else {
        let b = simulate_within(sc, seed, false, &left)?;
        left.max_events = left.max_events.saturating_sub(b.stack.rt.stats().work());
        Some(cost(&b.stack))
    };
    let mut run = simulate_within(sc, seed, true, &left)?;
    let (faults, counts, progress) = measure::measure_with_progress(&run.stack, &run.faults, horizon_us);
    let cost_now = cost(&run.stack);
    let baseline_cost = baseline_cost.unwrap_or(cost_now);

    let mut extra = Vec::new();
    for f in faults.iter().filter(|f| f.kind == "bad_deploy" && f.onset_s.is_some()) {
        match f.rollback_s {
            None => extra.push(format!("bad deploy never rolled back; target < {ROLLBACK_TARGET_S:.0} s")),
            Some(s) if s >= ROLLBACK_TARGET_S => {
                extra.push(format!("rollback took {s:.1} s ≥ target {ROLLBACK_TARGET_S:.0} s"))
            }
            _ => {}
        }
    }
    if let Some(limit) = sc.max_cost_increase_pct
        && baseline_cost.usd > 0.0
    {
        let pct = (cost_now.usd - baseline_cost.usd) / baseline_cost.usd * 100.0;
        if pct > limit {
            extra.push(format!("cost +{pct:.0}% over the fault-free run, limit +{limit:.0}%"));
        }
    }
    // The recovery invariants (`invariants`), so a `fuzz` reproducer fails here too.
    extra
        .extend(crate::drill::invariants::check_measured(sc, &run, &faults, &progress).iter().map(ToString::to_string));
    drop(progress); // a map over every job: not held while the report is built
    let step_events = steps::step_log(&run.stack, &run.faults);
    let header = Header { scenario: &sc.name, purpose: &sc.purpose, seed, tier: &sc.tier, expect: sc.expect };
    let mut result = DrillResult::judged(header, faults, counts, horizon_us, extra);
    let stack = &run.stack;
    let stats = stack.rt.stats();
    let (job_lanes, lanes_more) =
        lanes::lanes(stack.orch(stack.serving_orch()).store().log(), &stack.truth.trace, &run.faults);
    result.step_events = step_events;
    result.cost = cost_now;
    result.baseline_cost = baseline_cost;
    result.standby_usd_per_month = crate::drill::matrix::standby_usd_per_month(sc);
    result.simulated_s = us_to_s(horizon_us);
    result.events = stats.events;
    result.calls = stack.truth.calls;
    result.event_digest = format!("{:016x}", stack.rt.digest());
    result.host_names = stack.rt.hosts().iter().map(|h| h.name.clone()).collect();
    result.lanes = job_lanes;
    result.lanes_more = lanes_more;
    // Moved, not copied: the timeline can be the largest thing a drill holds.
    result.trace = std::mem::take(&mut run.stack.truth.trace);
    Ok(result)
}

/// Which drill a result is of: the scenario's own words and the seed.
pub struct Header<'a> {
    /// Scenario name.
    pub scenario: &'a str,
    /// One-line purpose.
    pub purpose: &'a str,
    /// Seed.
    pub seed: u64,
    /// The tier it claims.
    pub tier: &'a tier::TierSpec,
    /// Expected outcome.
    pub expect: Expect,
}

impl DrillResult {
    /// A drill's result from what it measured, simulated or live alike: the
    /// worst RTO and RPO, the tier's targets, the violations (the tier's,
    /// then `extra`), the verdict. What only one runtime has (cost, events,
    /// the timeline, the step log, live records) is empty, for the caller
    /// to fill.
    pub fn judged(
        h: Header<'_>,
        faults: Vec<FaultResult>,
        counts: Counts,
        horizon_us: crate::components::ids::Micros,
        extra: Vec<String>,
    ) -> DrillResult {
        let targets = h.tier.targets();
        let (rto_s, rto_parts, rpo) = worst(&faults);
        let rpo_s = rpo.max_s();
        let mut violations = target_violations(&targets, rto_s, rpo_s, &counts, horizon_us);
        violations.extend(extra);
        let met_targets = violations.is_empty();
        DrillResult {
            scenario: h.scenario.to_owned(),
            purpose: h.purpose.to_owned(),
            seed: h.seed,
            tier: h.tier.name().to_owned(),
            expect: h.expect,
            verdict: verdict(h.expect, met_targets),
            met_targets,
            rto_s,
            rpo_s,
            rpo_surfaces: rpo,
            rto_parts,
            duplicates: counts.duplicates,
            lost_effects: counts.lost_effects,
            stuck_tasks: counts.stuck_tasks,
            replanned_steps: counts.replanned_steps,
            stale_writes: counts.stale_writes,
            target_rto_s: targets.rto_s,
            target_rpo_s: targets.rpo_s,
            invariants: targets.invariants,
            violations,
            faults,
            step_events: steps::StepLog::default(),
            counts,
            cost: Cost::default(),
            baseline_cost: Cost::default(),
            standby_usd_per_month: 0.0,
            simulated_s: 0.0,
            events: 0,
            calls: 0,
            event_digest: String::new(),
            trace: Vec::new(),
            host_names: Vec::new(),
            lanes: Vec::new(),
            lanes_more: 0,
            live: None,
        }
    }
}

/// The worst RTO over the faults (None: one did not recover) with its
/// parts, and the worst RPO per surface. Simulated and live drills alike.
pub fn worst(faults: &[FaultResult]) -> (Option<f64>, RtoParts, RpoSurfaces) {
    let mut rto_s = Some(0.0);
    let mut rto_parts = RtoParts::default();
    let mut rpo = RpoSurfaces::default();
    for f in faults {
        match (rto_s, f.rto_s) {
            (Some(a), Some(b)) if b >= a => {
                rto_s = Some(b);
                rto_parts = f.rto_parts;
            }
            (Some(_), None) => {
                rto_s = None;
                rto_parts = f.rto_parts;
            }
            _ => {}
        }
        rpo.structured_state_s = rpo.structured_state_s.max(f.rpo.structured_state_s);
        rpo.vector_memory_s = rpo.vector_memory_s.max(f.rpo.vector_memory_s);
        rpo.queue_s = rpo.queue_s.max(f.rpo.queue_s);
    }
    (rto_s, rto_parts, rpo)
}

/// Every target of the tier the measurements miss, in words: RTO (None:
/// not recovered by the horizon), RPO and the zero-tolerance counts.
/// Simulated and live drills alike.
pub fn target_violations(
    targets: &tier::Targets,
    rto_s: Option<f64>,
    rpo_s: f64,
    counts: &Counts,
    horizon_us: crate::components::ids::Micros,
) -> Vec<String> {
    let (target_rto_s, target_rpo_s) = (targets.rto_s, targets.rpo_s);
    let mut violations = Vec::new();
    match rto_s {
        None => violations.push(format!(
            "RTO: not recovered by the horizon ({:.0} s); target < {target_rto_s:.0} s",
            us_to_s(horizon_us)
        )),
        Some(r) if r >= target_rto_s => violations.push(format!("RTO {r:.1} s ≥ target {target_rto_s:.0} s")),
        _ => {}
    }
    if rpo_s >= target_rpo_s {
        violations.push(format!("RPO {rpo_s:.1} s ≥ target {target_rpo_s:.0} s"));
    }
    for &inv in &targets.invariants {
        let n = counts.of(inv);
        if n > 0 {
            violations.push(format!("{}: {n}, target 0", inv.counts()));
        }
    }
    violations
}

/// "pass" or "fail": an `expect = "pass"` drill passes when the stack met
/// its targets; an `expect = "fail"` drill passes when it did not (caught).
pub fn verdict(expect: Expect, met_targets: bool) -> &'static str {
    let passed = match expect {
        Expect::Pass => met_targets,
        Expect::Fail => !met_targets,
    };
    if passed { "pass" } else { "fail" }
}

/// A timeline line for a note (used by reports).
pub fn describe(note: &Note) -> String {
    match note {
        Note::LeaseExpired { job, .. } => format!("lease of job {} expired; recovery service requeued it", job.0),
        Note::Resumed { job, step } => format!("job {} resumed at step {step}", job.0),
        Note::Reconciled { job, step, found } => format!(
            "job {} step {step}: status unknown, asked the API by key: {}",
            job.0,
            if *found { "found, adopted the result" } else { "not found, re-issued with the same key" }
        ),
        Note::Reissued { job, step } => format!("job {} step {step}: re-issued WITHOUT asking the API", job.0),
        Note::Rederived { job, step } => {
            format!("job {} step {step}: decision lost, re-derived by a new model call", job.0)
        }
        Note::Abandoned { job } => format!("worker dropped job {} (its lease is gone)", job.0),
        Note::Fenced { task } => format!("stale write to task {:x} rejected by fencing", task.0),
        Note::SchemaViolation { job, step } => {
            format!("job {} step {step}: tool response failed schema validation; nothing persisted", job.0)
        }
        Note::TaskFailed { job, step } => format!("job {} failed at step {step} (400 idempotency_error)", job.0),
        Note::BreakerOpened { provider } => {
            format!("circuit breaker of provider #{provider} opened")
        }
        Note::FailoverDetected => "health checks failed: failover begins".into(),
        Note::FailoverCancelled => "primary healthy again before the standby was promoted: failover called off".into(),
        Note::Promoted => "standby store promoted".into(),
        Note::Demoted => "the old primary stood down (another region was promoted)".into(),
        Note::DnsSwitched => "DNS switched to the standby".into(),
        Note::RoutingEffective => "DNS TTL passed: traffic goes to the standby".into(),
        Note::ScaledUp => "standby scaled up".into(),
        Note::Hydrated { points } => format!("vector memory hydrated ({points} points)"),
        Note::Serving => "standby region serves".into(),
        Note::CorruptionDetected { points } => {
            format!("integrity check found {points} corrupted points: read-only, point-in-time restore")
        }
        Note::Restored { points, snapshot_taken_at_us } => format!(
            "restored {points} points from the snapshot taken at {:.0} s; count verified",
            us_to_s(*snapshot_taken_at_us)
        ),
        Note::Deployed { version } => format!("prompt/config version {version} deployed"),
        Note::RollbackStarted { version } => {
            format!("health checks after deploy failed: rolling back version {version}")
        }
        Note::RolledBack { version } => format!("rolled back: version {version} is live"),
        Note::SyncDegraded => "synchronous replica silent: writes acknowledged without it (semi-sync fallback)".into(),
        Note::Redelivered { job } => format!("queue redelivered job {} (no acknowledgement within AckWait)", job.0),
        Note::Crashed { .. } => "host crashed".into(),
        Note::Restarted { .. } => "host restarted".into(),
    }
}
