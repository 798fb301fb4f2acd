//! Runs a drill: builds the stack, injects the faults, runs the simulation
//! to the horizon, measures from ground truth, runs the same drill without
//! faults for the cost baseline, and gives a verdict against the tier.

use serde::Serialize;

use crate::env::{Note, Timer};
use crate::ids::{HostId, JobId, us_to_s};
use crate::measure::{self, Counts, FaultObs, FaultResult, LostLog, RpoSurfaces, RtoParts};
use crate::orchestrator::Replication;
use crate::region::Request;
use crate::scenario::{Expect, FaultSpec, RegionName, Scenario, When, WorkerTarget};
use crate::stack::{REGION_A, REGION_B, Stack, TraceEvent, Trigger};
use crate::store::TaskStatus;

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
    pub tier: &'static str,
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
    /// Every violated target, with the measured value.
    pub violations: Vec<String>,
    /// Per-fault measurements.
    pub faults: Vec<FaultResult>,
    /// Counts.
    pub counts: Counts,
    /// Cost with the faults.
    pub cost: Cost,
    /// Cost of the same drill without faults.
    pub baseline_cost: Cost,
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
}

/// Raw outcome of one simulation run.
pub struct Run {
    /// The stack at the horizon.
    pub stack: Stack,
    /// Per-fault observations.
    pub faults: Vec<FaultObs>,
}

/// Runs the simulation once, with or without the scenario's faults.
pub fn simulate(sc: &Scenario, seed: u64, with_faults: bool) -> Run {
    let horizon_us = sc.horizon.us();
    let mut stack = Stack::build(sc, seed);
    let mut obs: Vec<FaultObs> = sc.faults.iter().map(|f| FaultObs { kind: f.kind(), ..FaultObs::default() }).collect();
    if with_faults {
        for (i, f) in sc.faults.iter().enumerate() {
            let i = i as u16;
            match f {
                FaultSpec::WorkerKill { at: When::Event { job, step, phase }, .. } => {
                    stack.truth.triggers.push(Trigger {
                        fault: i,
                        job: JobId(*job),
                        step: *step,
                        phase: *phase,
                        pause_us: None,
                        fired: false,
                    });
                }
                FaultSpec::WorkerPause { at: When::Event { job, step, phase }, duration, .. } => {
                    stack.truth.triggers.push(Trigger {
                        fault: i,
                        job: JobId(*job),
                        step: *step,
                        phase: *phase,
                        pause_us: Some(duration.us()),
                        fired: false,
                    });
                }
                FaultSpec::ProviderOutage { at, provider, mode, duration } => {
                    let names: Vec<String> = sc.stack.providers.iter().map(|p| p.name.clone()).collect();
                    for h in stack.provider_hosts_named(provider, &names) {
                        stack.provider_mut(h).set_outage(*mode, at.us(), at.us() + duration.us());
                    }
                    stack.rt.schedule_control(at.us(), Timer::FaultStart(i));
                }
                FaultSpec::RegionLoss { at, duration, .. } => {
                    stack.rt.schedule_control(at.us(), Timer::FaultStart(i));
                    if let Some(d) = duration {
                        stack.rt.schedule_control(at.us() + d.us(), Timer::FaultEnd(i));
                    }
                }
                FaultSpec::WorkerKill { at: When::At(at), .. } | FaultSpec::WorkerPause { at: When::At(at), .. } => {
                    stack.rt.schedule_control(at.us(), Timer::FaultStart(i));
                }
            }
        }
    }
    stack.start();
    let controller = stack.hosts.controller;
    let mut region_down: Vec<HostId> = Vec::new();
    while let Some(ev) = stack.rt.step(horizon_us) {
        let from_controller = match &ev {
            crate::sim::Event::Timer { host, .. } | crate::sim::Event::Deliver { to: host, .. } => {
                Some(*host) == controller
            }
            crate::sim::Event::Control(_) => false,
        };
        if let Some(ctrl) = stack.dispatch(ev) {
            control(&mut stack, sc, &mut obs, &mut region_down, ctrl);
        }
        if !stack.truth.hits.is_empty() {
            let hits = std::mem::take(&mut stack.truth.hits);
            for hit in hits {
                let f = &sc.faults[hit.fault as usize];
                onset(&mut stack, &mut obs[hit.fault as usize]);
                if let FaultSpec::WorkerKill { restart_after, .. } = f {
                    kill(&mut stack, hit.host, *restart_after);
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
        }
    }
    Run { stack, faults: obs }
}

fn onset(stack: &mut Stack, f: &mut FaultObs) {
    if f.onset_us.is_some() {
        return;
    }
    let now = stack.rt.now_us();
    f.onset_us = Some(now);
    let store = stack.orch(stack.serving_orch()).store();
    f.in_flight = store.tasks().iter().filter(|t| t.status == TaskStatus::Leased && !t.probe).map(|t| t.job).collect();
    stack.start_probing();
}

fn kill(stack: &mut Stack, h: HostId, restart_after: Option<crate::scenario::Dur>) {
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

fn control(stack: &mut Stack, sc: &Scenario, obs: &mut [FaultObs], down: &mut Vec<HostId>, t: Timer) {
    match t {
        Timer::Restart(h) => stack.restart_host(h),
        Timer::FaultStart(i) => {
            let f = &sc.faults[i as usize];
            match f {
                FaultSpec::WorkerKill { worker, restart_after, .. } => {
                    if let Some(h) = worker_target(stack, *worker) {
                        onset(stack, &mut obs[i as usize]);
                        kill(stack, h, *restart_after);
                    }
                }
                FaultSpec::WorkerPause { worker, duration, .. } => {
                    if let Some(h) = worker_target(stack, *worker) {
                        onset(stack, &mut obs[i as usize]);
                        let until = stack.rt.now_us() + duration.us();
                        stack.rt.pause(h, until);
                    }
                }
                FaultSpec::ProviderOutage { .. } => onset(stack, &mut obs[i as usize]),
                FaultSpec::RegionLoss { region, duration, .. } => {
                    onset(stack, &mut obs[i as usize]);
                    let r = if *region == RegionName::A { REGION_A } else { REGION_B };
                    let hosts: Vec<HostId> = (0..stack.rt.hosts().len() as u32)
                        .map(HostId)
                        .filter(|&h| stack.rt.host(h).region == r && stack.rt.host(h).up)
                        .collect();
                    let primary = stack.serving_orch();
                    if stack.rt.host(primary).region == r {
                        let o = stack.orch(primary);
                        let acked_upto = match sc.stack.replication {
                            Replication::Sync => o.replica_acked(),
                            _ => o.store().last_lsn(),
                        };
                        obs[i as usize].lost_log = Some(LostLog { log: o.store().log().to_vec(), acked_upto });
                    }
                    for &h in &hosts {
                        stack.crash_host(h);
                    }
                    if duration.is_none() {
                        // Storage in a lost region is gone.
                        let [oa, ob] = stack.hosts.orch;
                        let [va, vb] = stack.hosts.vec;
                        let (o, v) = if r == REGION_A { (oa, va) } else { (ob, vb) };
                        drop(stack.orch_mut(o).take_store());
                        stack.vector_mut(v).store.clear();
                    } else {
                        down.extend(hosts);
                    }
                }
            }
        }
        Timer::FaultEnd(_) => {
            for h in std::mem::take(down) {
                stack.restart_host(h);
            }
        }
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

/// Runs a drill (with its faults, then the baseline) and gives the verdict.
pub fn run(sc: &Scenario, seed: u64) -> DrillResult {
    let horizon_us = sc.horizon.us();
    let run = simulate(sc, seed, true);
    let baseline = if sc.faults.is_empty() { None } else { Some(simulate(sc, seed, false)) };
    let (faults, counts) = measure::measure(&run.stack, &run.faults, horizon_us);
    let cost_now = cost(&run.stack);
    let baseline_cost = baseline.as_ref().map_or(cost_now, |b| cost(&b.stack));

    let tier = sc.tier;
    let (target_rto_s, target_rpo_s) = (tier.rto_s(), tier.rpo_s());
    let mut rto_s = Some(0.0);
    let mut rto_parts = RtoParts::default();
    let mut rpo = RpoSurfaces::default();
    for f in &faults {
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
    let rpo_s = rpo.max_s();
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
    let zero = [
        ("duplicate side effects", counts.duplicates),
        ("lost side effects", counts.lost_effects),
        ("stuck tasks", counts.stuck_tasks),
        ("replanned steps", counts.replanned_steps),
        ("stale writes (fencing)", counts.stale_writes),
    ];
    for (what, n) in zero {
        if n > 0 {
            violations.push(format!("{what}: {n}, target 0"));
        }
    }
    if let Some(limit) = sc.max_cost_increase_pct
        && baseline_cost.usd > 0.0
    {
        let pct = (cost_now.usd - baseline_cost.usd) / baseline_cost.usd * 100.0;
        if pct > limit {
            violations.push(format!("cost +{pct:.0}% over the fault-free run, limit +{limit:.0}%"));
        }
    }
    // The recovery invariants (`invariants`), so a `fuzz` reproducer fails here too.
    violations.extend(crate::invariants::check_measured(sc, &run, &faults).iter().map(ToString::to_string));
    let met_targets = violations.is_empty();
    let passed = match sc.expect {
        Expect::Pass => met_targets,
        Expect::Fail => !met_targets,
    };
    let stack = &run.stack;
    let stats = stack.rt.stats();
    DrillResult {
        scenario: sc.name.clone(),
        purpose: sc.purpose.clone(),
        seed,
        tier: tier.name(),
        expect: sc.expect,
        verdict: if passed { "pass" } else { "fail" },
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
        target_rto_s,
        target_rpo_s,
        violations,
        faults,
        counts,
        cost: cost_now,
        baseline_cost,
        simulated_s: us_to_s(horizon_us),
        events: stats.events,
        calls: stack.truth.calls,
        event_digest: format!("{:016x}", stack.rt.digest()),
        trace: stack.truth.trace.clone(),
        host_names: stack.rt.hosts().iter().map(|h| h.name.clone()).collect(),
    }
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
        Note::TaskFailed { job, step } => format!("job {} failed at step {step} (400 idempotency_error)", job.0),
        Note::BreakerOpened { provider } => {
            format!("circuit breaker of provider #{provider} opened")
        }
        Note::FailoverDetected => "health checks failed: failover begins".into(),
        Note::Promoted => "standby store promoted".into(),
        Note::DnsSwitched => "DNS switched to the standby".into(),
        Note::RoutingEffective => "DNS TTL passed: traffic goes to the standby".into(),
        Note::ScaledUp => "standby scaled up".into(),
        Note::Hydrated { points } => format!("vector memory hydrated ({points} points)"),
        Note::Serving => "standby region serves".into(),
        Note::Crashed { .. } => "host crashed".into(),
        Note::Restarted { .. } => "host restarted".into(),
    }
}
