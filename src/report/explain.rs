//! `agentdrill explain`: a drill told in words, for a game-day facilitator
//! to read aloud: what the stack claims, how it is built, each fault, what
//! the stack did and when, how each number was reached, and the verdict.

use std::fmt::Write as _;

use super::{Entry, cost_increase_pct, failure_reason, timeline_rows};
use crate::components::env::{Note, Phase};
use crate::components::ids::us_to_s;
use crate::components::orchestrator::Replication;
use crate::components::policy::Policy;
use crate::components::provider::ErrorMode;
use crate::components::region::Pattern;
use crate::drill::scenario::{Expect, FaultSpec, RegionName, Scenario, SnapshotLocation, When, WorkerTarget};
use crate::drill::steps::StepLog;
use crate::drill::tier::Invariant;

/// The narrative of one drill.
pub fn narrative(e: &Entry, sc: &Scenario) -> String {
    let d = &e.result;
    let mut o = String::new();
    let _ = writeln!(o, "DRILL  {}", d.scenario);
    if !d.purpose.is_empty() {
        let _ = writeln!(o, "       {}", d.purpose.trim());
    }
    let mut meta = vec![format!("seed {}", d.seed), format!("horizon {}", sc.horizon)];
    if let Some(f) = &e.file {
        meta.insert(0, f.display().to_string());
    }
    if let Some(h) = &e.hash {
        meta.push(h.clone());
    }
    let _ = writeln!(o, "       {}", meta.join(" · "));

    let _ = writeln!(o, "\nWHAT THE STACK CLAIMS");
    let zero = if d.invariants.is_empty() {
        "no zero-tolerance counts".to_owned()
    } else {
        format!("no {}", d.invariants.iter().map(|i| i.counts()).collect::<Vec<_>>().join(", no "))
    };
    let _ = writeln!(
        o,
        "  Tier {}: back in service in under {} and losing under {} of acknowledged data, with {zero}.",
        d.tier,
        human_s(d.target_rto_s),
        human_s(d.target_rpo_s)
    );
    if sc.expect == Expect::Fail {
        let _ = writeln!(
            o,
            "  This is an anti-pattern drill: the stack is built wrong on purpose, and the drill passes only if it catches a violation."
        );
    }

    let _ = writeln!(o, "\nTHE STACK");
    for line in stack_lines(sc) {
        let _ = writeln!(o, "  {line}");
    }

    let _ = writeln!(o, "\nTHE FAULTS");
    if sc.faults.is_empty() {
        let _ = writeln!(o, "  None: this run is the baseline.");
    }
    for (i, f) in sc.faults.iter().enumerate() {
        let _ = writeln!(o, "  {}. {}", i + 1, fault_words(sc, f));
        if let Some(m) = d.faults.get(i) {
            match m.onset_s {
                Some(at) => {
                    let _ = writeln!(
                        o,
                        "     It struck at {at:.3} s, with {} task{} in flight.",
                        m.in_flight_tasks,
                        if m.in_flight_tasks == 1 { "" } else { "s" }
                    );
                }
                None => {
                    let _ = writeln!(o, "     It never struck: its trigger was not reached before the horizon.");
                }
            }
        }
    }

    let _ = writeln!(o, "\nWHAT HAPPENED (simulated time)");
    let rows = timeline_rows(d);
    if rows.is_empty() {
        let _ = writeln!(o, "  Nothing worth a line.");
    }
    for (t, host, what) in rows {
        let _ = writeln!(o, "  {t:>10.3} s  {host:<20} {what}");
    }

    let _ = writeln!(o, "\nWHAT EACH AFFECTED JOB DID (step events from the stores' logs and the workers' notes)");
    step_events(&mut o, &d.step_events);

    let _ = writeln!(o, "\nHOW THE NUMBERS WERE REACHED");
    measurements(&mut o, e, sc);

    let _ = writeln!(o, "\nVERDICT");
    let v = match (d.verdict, d.expect) {
        ("pass", Expect::Pass) => "PASS: every target was met.".to_owned(),
        ("pass", Expect::Fail) => {
            format!("PASS (caught): the drill caught the anti-pattern: {}.", d.violations.join("; "))
        }
        (_, Expect::Fail) => format!("FAIL (not caught): {}.", failure_reason(d)),
        _ => format!("FAIL: {}.", failure_reason(d)),
    };
    let _ = writeln!(o, "  {v}");
    o
}

/// Each affected job's step events in order: a reader can check that a
/// resumed job continued from its checkpoint and ran no step twice.
fn step_events(o: &mut String, log: &StepLog) {
    if log.jobs.is_empty() {
        let _ = writeln!(o, "  No job was in flight at a fault or recovered from one.");
        return;
    }
    for j in &log.jobs {
        let _ = writeln!(o, "  job {} ({})", j.job, j.template);
        for e in &j.events {
            let _ = writeln!(o, "  {:>10.3} s  {:<20} {}", e.at_s, e.host, e.describe());
        }
        if j.more_events > 0 {
            let _ = writeln!(o, "  {:>12}  and {} more events", "…", j.more_events);
        }
    }
    if log.more_jobs > 0 {
        let _ = writeln!(o, "  … and {} more affected jobs (the first {} are listed)", log.more_jobs, log.jobs.len());
    }
}

/// Seconds in the unit a person would say.
pub(crate) fn human_s(s: f64) -> String {
    if !s.is_finite() {
        "no limit".into()
    } else if s >= 3_600.0 && (s % 3_600.0) == 0.0 {
        let h = s / 3_600.0;
        format!("{h:.0} hour{}", if h == 1.0 { "" } else { "s" })
    } else if s >= 60.0 && (s % 60.0) == 0.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

fn stack_lines(sc: &Scenario) -> Vec<String> {
    let s = &sc.stack;
    let mut v = Vec::new();
    let pattern = match s.pattern {
        Pattern::SingleRegion => format!("One region (no failover): {} workers.", s.workers),
        Pattern::ActiveActive => {
            format!("Active-active: both regions serve; {} workers in region A, region B's already running.", s.workers)
        }
        Pattern::WarmStandby => format!(
            "Warm standby: {} workers in region A; region B runs {} and scales up to {} on failover (scale-up {}).",
            s.workers, s.standby_workers, s.workers, s.failover.scale_up
        ),
        Pattern::ColdStandby => format!(
            "Cold standby: {} workers in region A; nothing runs in region B until it is provisioned (takes {}).",
            s.workers, s.failover.scale_up
        ),
    };
    v.push(pattern);
    v.push(match s.replication {
        Replication::None => "Structured state is not replicated.".into(),
        Replication::Sync { degrade_after_ms: None } => {
            "Structured state replicates synchronously: a write is acknowledged once region B has it.".into()
        }
        Replication::Sync { degrade_after_ms: Some(ms) } => format!(
            "Structured state replicates synchronously, falling back to asynchronous after {} without region B's answer.",
            crate::drill::scenario::Dur(ms)
        ),
        Replication::Async { lag_ms, interval_ms } => format!(
            "Structured state replicates asynchronously, {} behind, shipped every {}.",
            crate::drill::scenario::Dur(lag_ms),
            crate::drill::scenario::Dur(interval_ms)
        ),
    });
    let vec = &s.vector;
    v.push(if vec.streaming_replica {
        "Vector memory streams to a replica in region B (no hydration needed).".into()
    } else {
        format!(
            "Vector memory is snapshotted every {}, {}.",
            vec.snapshot_interval,
            match vec.snapshot_location {
                SnapshotLocation::OtherRegion => format!("shipped to region B ({})", vec.ship_delay),
                SnapshotLocation::SameRegion => "kept in the same region (lost with it)".into(),
            }
        )
    });
    if s.pattern != Pattern::SingleRegion {
        let f = &s.failover;
        v.push(format!(
            "Failover: health checks every {} ({} timeout), {} failures declare region A down; promotion {}, DNS TTL {}.",
            f.health_interval, f.health_timeout, f.failure_threshold, f.promotion, f.dns_ttl
        ));
    }
    let names: Vec<&str> = s.providers.iter().map(|p| p.name.as_str()).collect();
    let p = s.effective_policy();
    v.push(if p.provider_router {
        format!(
            "Model providers in priority order: {}{}.",
            names.join(" → "),
            if p.circuit_breakers {
                format!(
                    ", each behind a circuit breaker ({} failures in {}, open {})",
                    s.breaker.failure_threshold,
                    crate::drill::scenario::Dur(s.breaker.window_ms),
                    crate::drill::scenario::Dur(s.breaker.open_ms)
                )
            } else {
                ", with no circuit breakers".into()
            }
        )
    } else {
        format!("One model provider ({}), no router.", names.first().copied().unwrap_or("none"))
    });
    v.push(format!(
        "Leases of {}{}{}; a recovery scan every {}.",
        crate::drill::scenario::Dur(p.lease_ms),
        if p.heartbeat { ", renewed while the worker works" } else { ", never renewed" },
        if p.fencing { ", with fencing tokens" } else { ", with NO fencing" },
        s.recovery_scan
    ));
    let diffs = policy_differences(&p);
    if diffs.is_empty() {
        v.push("Every reference safeguard is on.".into());
    } else {
        v.push(format!("Safeguards off: {}.", diffs.join("; ")));
    }
    let apis: Vec<&str> = [("payment", s.apis.payment_dedupe), ("email", s.apis.email_dedupe)]
        .iter()
        .filter(|a| !a.1)
        .map(|a| a.0)
        .collect();
    if !apis.is_empty() {
        v.push(format!("The {} API does not deduplicate on the idempotency key.", apis.join(" and ")));
    }
    if let Some(q) = s.queue {
        v.push(format!(
            "Jobs go through a queue ({}): duplicates within {} are dropped, redelivery after {}{}.",
            if q.replicated { "mirrored to region B" } else { "not replicated" },
            crate::drill::scenario::Dur(q.dedupe_window_ms),
            crate::drill::scenario::Dur(q.ack_wait_ms),
            q.max_deliver.map_or_else(String::new, |m| format!(", at most {m} deliveries"))
        ));
    }
    let w = &sc.workload;
    v.push(format!(
        "Workload: {} jobs ({}), {}.",
        w.tasks,
        w.templates.join(", "),
        match w.arrival {
            crate::drill::scenario::Arrival::AtOnce => "all at once".to_owned(),
            crate::drill::scenario::Arrival::Uniform => format!("one every {}", w.interval),
            crate::drill::scenario::Arrival::Poisson =>
                format!("arriving at random, one every {} on average", w.interval),
        }
    ));
    v
}

fn policy_differences(p: &Policy) -> Vec<String> {
    let r = Policy::default();
    let mut v = Vec::new();
    if p.key_source != r.key_source {
        v.push(format!("idempotency keys made by the agent ({:?})", p.key_source));
    }
    if !p.orchestrator_mints_task_id {
        v.push("the worker mints task ids".into());
    }
    if p.checkpointing != r.checkpointing {
        v.push(format!("checkpointing {:?} instead of before every tool call", p.checkpointing));
    }
    if !p.reconcile {
        v.push("no reconciliation by key on resume".into());
    }
    if !p.durable_artefacts {
        v.push("artefacts kept only on the worker's disk".into());
    }
    if p.planted_bug_persist_before_call {
        v.push("planted bug: the result is persisted before the call".into());
    }
    v
}

fn phase_words(p: Phase) -> &'static str {
    match p {
        Phase::BeforeCheckpoint => "before its checkpoint is written",
        Phase::AfterCheckpoint => "after the checkpoint is durable, before the call is sent",
        Phase::InFlight => "in flight: the API has processed the request, but the answer never reaches the worker",
        Phase::AfterResult => "after the answer arrived, before the result is persisted",
        Phase::AfterPersist => "after the result is persisted",
    }
}

fn step_name(sc: &Scenario, job: u32, step: u16) -> String {
    let templates = crate::components::workflow::builtin();
    let Some(name) = sc.workload.templates.get(job as usize % sc.workload.templates.len().max(1)) else {
        return format!("step {step}");
    };
    templates
        .iter()
        .find(|t| t.name == name)
        .and_then(|t| t.steps.get(usize::from(step)))
        .map_or_else(|| format!("step {step}"), |s| format!("step {step} ({} of {name})", s.kind.name()))
}

fn when_words(sc: &Scenario, at: &When) -> String {
    match at {
        When::At(d) => format!("at {d}"),
        When::Event { job, step, phase } => {
            format!("when job {job} reaches {}, {}", step_name(sc, *job, *step), phase_words(*phase))
        }
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| f.to_uppercase().collect::<String>() + c.as_str())
}

fn worker_words(w: Option<WorkerTarget>) -> String {
    match w {
        Some(WorkerTarget::Index(n)) => format!("worker {n} of region A"),
        Some(WorkerTarget::HoldingJob(j)) => format!("the worker holding job {j}"),
        None => "the worker running the job".into(),
    }
}

/// A fault in words.
pub fn fault_words(sc: &Scenario, f: &FaultSpec) -> String {
    match f {
        FaultSpec::WorkerKill { at, worker, restart_after } => format!(
            "worker_kill {}. {} is killed: its memory and local disk are gone; {}.",
            when_words(sc, at),
            capital(&worker_words(*worker)),
            restart_after.map_or_else(|| "it never comes back".into(), |d| format!("it restarts fresh {d} later"))
        ),
        FaultSpec::WorkerPause { at, worker, duration } => format!(
            "worker_pause {}. {} freezes for {duration} (a GC pause, a frozen VM) and wakes up still believing it holds its lease.",
            when_words(sc, at),
            capital(&worker_words(*worker))
        ),
        FaultSpec::RegionLoss { at, region, duration } => format!(
            "region_loss: region {} goes dark at {at}: every host in it crashes; {}.",
            if *region == RegionName::A { "A" } else { "B" },
            duration.map_or_else(
                || "the loss is permanent and its storage is gone".into(),
                |d| format!("it comes back {d} later with its committed storage")
            )
        ),
        FaultSpec::ProviderOutage { at, provider, mode, duration } => {
            format!("provider_outage: {provider} {} from {at} for {duration}.", mode_words(mode))
        }
        FaultSpec::Partition { at, duration, a, b, one_way } => format!(
            "partition: from {at} for {duration}, {} between {a} and {b}.",
            if *one_way { format!("nothing gets from {a} to {b} (one way)") } else { "no message gets through".into() }
        ),
        FaultSpec::LinkDegradation { at, duration, a, b, one_way, latency, loss } => format!(
            "link_degradation: from {at} for {duration}, messages between {a} and {b}{} take {latency} longer and {:.0} % are lost.",
            if *one_way { " (one way)" } else { "" },
            loss * 100.0
        ),
        FaultSpec::DiskLoss { at, worker } => format!(
            "disk_loss {}. {}'s local disk (its scratchpad) is gone; the process keeps running.",
            when_words(sc, at),
            capital(&worker_words(*worker))
        ),
        FaultSpec::ReplicationLagSpike { at, duration, lag } => {
            format!(
                "replication_lag_spike: from {at} for {duration}, asynchronous replication runs {lag} further behind."
            )
        }
        FaultSpec::PromptCacheLoss { at, duration, provider } => format!(
            "prompt_cache_loss: from {at} for {duration}, every request to {} is cold (full input price, more latency).",
            provider.as_deref().unwrap_or("every provider")
        ),
        FaultSpec::ClockSkew { at, host, offset, duration } => format!(
            "clock_skew: at {at} the wall clock of {host} jumps {offset}{}.",
            duration.map_or_else(String::new, |d| format!(" for {d}"))
        ),
        FaultSpec::VectorCorruption { at, fraction } => format!(
            "vector_corruption: at {at}, {:.0} % of vector memory is silently corrupted; the store's integrity check has to find it.",
            fraction * 100.0
        ),
        FaultSpec::ToolSchemaChange { at, duration, api } => format!(
            "tool_schema_change: from {at} for {duration}, the {api:?} API's responses stop matching their schema (the calls still happen)."
        ),
        FaultSpec::BadDeploy { at, error_rate } => format!(
            "bad_deploy: at {at} a new prompt version goes out; {:.0} % of model outputs fail validation under it.",
            error_rate * 100.0
        ),
        FaultSpec::QueueLoss { at, duration } => format!(
            "queue_loss: at {at} the queue's active node is lost{}.",
            duration.map_or_else(|| " for good".into(), |d| format!(" for {d}"))
        ),
    }
}

fn mode_words(m: &ErrorMode) -> String {
    #[allow(unreachable_patterns)] // new modes fall back to their JSON
    match m {
        ErrorMode::RateLimited { retry_after_ms } => {
            format!("answers 429 rate_limit_error with retry-after {}", crate::drill::scenario::Dur(*retry_after_ms))
        }
        ErrorMode::QuotaExhausted => "answers 429 insufficient_quota (not retryable)".into(),
        ErrorMode::ServerError => "answers 500 api_error".into(),
        ErrorMode::Unavailable => "answers 503 unavailable".into(),
        ErrorMode::Overloaded => "answers 529 overloaded_error".into(),
        ErrorMode::Timeout => "does not answer (every request times out)".into(),
        ErrorMode::Slow { factor } => format!("answers {factor} times slower than usual"),
        ErrorMode::StreamError { after_tokens } => {
            format!("answers 200, then fails mid-stream (event: error) after {after_tokens} tokens")
        }
        other => format!("fails in mode {}", serde_json::to_string(other).unwrap_or_default()),
    }
}

fn measurements(o: &mut String, e: &Entry, sc: &Scenario) {
    let d = &e.result;
    let several = d.faults.len() > 1;
    match d.rto_s {
        Some(r) => {
            let _ = writeln!(
                o,
                "  RTO {r:.1} s, target under {:.0} s: {}.",
                d.target_rto_s,
                if r < d.target_rto_s { "met" } else { "VIOLATED" }
            );
        }
        None => {
            let _ = writeln!(
                o,
                "  RTO: the stack did not recover by the horizon ({}). Target under {:.0} s: VIOLATED.",
                sc.horizon, d.target_rto_s
            );
        }
    }
    let _ = writeln!(
        o,
        "    Measured from the fault's onset until the stack completed new work in the serving region and every task in flight at the fault had progressed again{}.",
        if several { "; the worst fault counts" } else { "" }
    );
    let p = &d.rto_parts;
    // The fault whose RTO is reported, and the events that ended each part.
    let worst = d.faults.iter().filter(|f| f.onset_s.is_some()).find(|f| f.rto_s == d.rto_s);
    let onset = worst.and_then(|f| f.onset_s).unwrap_or(0.0);
    let first = |pred: &dyn Fn(&Note) -> bool| {
        d.trace
            .iter()
            .find(|e| us_to_s(e.at_us) >= onset && pred(&e.note))
            .map(|e| format!("; {} at {:.3} s", crate::drill::describe(&e.note), us_to_s(e.at_us)))
    };
    let when = |v: f64, s: Option<String>| if v > 0.0 { s.unwrap_or_default() } else { String::new() };
    let detected =
        first(&|n| matches!(n, Note::FailoverDetected | Note::LeaseExpired { .. } | Note::BreakerOpened { .. }));
    let _ = writeln!(
        o,
        "    detection  {:>8.1} s  until the stack noticed (lease expiry, failed health checks or an open breaker){}",
        p.detection_s,
        when(p.detection_s, detected)
    );
    let routed = first(&|n| matches!(n, Note::RoutingEffective));
    let _ = writeln!(
        o,
        "    routing    {:>8.1} s  promotion of the standby store and the DNS TTL{}",
        p.routing_s,
        when(p.routing_s, routed)
    );
    let scaled = first(&|n| matches!(n, Note::ScaledUp));
    let _ = writeln!(
        o,
        "    scale-up   {:>8.1} s  starting the standby's workers{}",
        p.scale_up_s,
        when(p.scale_up_s, scaled)
    );
    let serving = first(&|n| matches!(n, Note::Serving));
    let _ = writeln!(
        o,
        "    hydration  {:>8.1} s  restoring vector memory before serving{}",
        p.hydration_s,
        when(p.hydration_s, serving)
    );
    let _ = writeln!(
        o,
        "    resume     {:>8.1} s  until in-flight work progressed and new work completed{}",
        p.resume_s,
        d.rto_s.map_or_else(String::new, |r| format!("; recovered at {:.3} s", onset + r))
    );
    if several {
        for (i, f) in d.faults.iter().enumerate() {
            let _ = writeln!(
                o,
                "    fault {} ({}): RTO {}, RPO {:.1} s",
                i + 1,
                f.kind,
                f.rto_s.map_or_else(|| "not recovered".into(), |r| format!("{r:.1} s")),
                f.rpo.max_s()
            );
        }
    }
    let r = &d.rpo_surfaces;
    let _ = writeln!(
        o,
        "  RPO {:.1} s, target under {:.0} s: {}.",
        d.rpo_s,
        d.target_rpo_s,
        if d.rpo_s < d.target_rpo_s { "met" } else { "VIOLATED" }
    );
    let _ = writeln!(
        o,
        "    The age, at the fault, of the oldest acknowledged write that did not survive recovery (0 when nothing acknowledged was lost):"
    );
    let _ = writeln!(
        o,
        "    structured state {:.1} s (the serving store's log), vector memory {:.1} s (the serving vector store), accepted jobs {:.1} s (what the client was told).",
        r.structured_state_s, r.vector_memory_s, r.queue_s
    );
    let checked = |i: Invariant| if d.invariants.contains(&i) { "" } else { " (not checked by this tier)" };
    let _ = writeln!(
        o,
        "  Duplicate side effects {}{}: the payment and email ledgers hold {} side effects; any beyond one per (task, step) is a duplicate.",
        d.duplicates,
        checked(Invariant::NoDuplicates),
        d.counts.side_effects
    );
    let _ = writeln!(
        o,
        "  Lost side effects {}{}: side-effect steps the serving store records as done with no ledger entry.",
        d.lost_effects,
        checked(Invariant::NoLostEffects)
    );
    let _ = writeln!(
        o,
        "  Stuck tasks {}{}: {} of {} jobs finished by the horizon.",
        d.stuck_tasks,
        checked(Invariant::NoStuckTasks),
        d.counts.done_tasks,
        d.counts.done_tasks + d.counts.stuck_tasks
    );
    let _ = writeln!(
        o,
        "  Replanned steps {}{}: steps whose side effects acted on two different decisions (a resumer re-derived the plan).",
        d.replanned_steps,
        checked(Invariant::NoReplannedSteps)
    );
    let _ = writeln!(
        o,
        "  Stale writes {}{}: writes accepted from a worker whose lease had moved on.",
        d.stale_writes,
        checked(Invariant::NoStaleWrites)
    );
    let pct = cost_increase_pct(d).map_or_else(String::new, |p| format!(" ({p:+.0} %)"));
    let limit = sc.max_cost_increase_pct.map_or_else(String::new, |l| format!("; the limit is +{l:.0} %"));
    let _ = writeln!(
        o,
        "  Cost ${:.4} against ${:.4} for the same drill without faults{pct}{limit}; {} model calls against {}.",
        d.cost.usd, d.baseline_cost.usd, d.cost.model_calls, d.baseline_cost.model_calls
    );
}
