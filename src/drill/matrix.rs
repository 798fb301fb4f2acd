//! The tier matrix: every disruption type run against one stack over
//! several seeds, and the tiers the stack *measurably* meets for each —
//! the measured counterpart of an estimated resilience assessment.
//!
//! With [`patterns`], the same is done for the three failover patterns
//! built from the stack's workload, side by side, with what each costs to
//! keep running.

use serde::Serialize;

use crate::components::env::Phase;
use crate::components::orchestrator::Replication;
use crate::components::provider::ErrorMode;
use crate::components::region::Pattern;
use crate::components::workflow;
use crate::drill;
use crate::drill::scenario::{Arrival, Dur, FaultSpec, Scenario, When};
use crate::drill::tier::Tier;

/// The kinds of disruption the matrix covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disruption {
    /// Workers killed mid-call and frozen past their leases.
    Worker,
    /// The primary LLM provider down.
    Provider,
    /// A worker cut off from the store; a degraded link to the outside.
    Network,
    /// The primary region lost for good.
    Region,
    /// Silent vector-memory corruption.
    DataCorruption,
}

impl Disruption {
    /// Every disruption type.
    pub const ALL: [Disruption; 5] =
        [Disruption::Worker, Disruption::Provider, Disruption::Network, Disruption::Region, Disruption::DataCorruption];

    /// Name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Disruption::Worker => "worker",
            Disruption::Provider => "provider",
            Disruption::Network => "network",
            Disruption::Region => "region",
            Disruption::DataCorruption => "data corruption",
        }
    }
}

/// The measured outcome of one disruption type over every seed.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The disruption.
    pub disruption: Disruption,
    /// Worst RTO over seeds and faults (None: some drill never recovered).
    pub worst_rto_s: Option<f64>,
    /// Worst RPO over seeds, faults and surfaces.
    pub worst_rpo_s: f64,
    /// Duplicates, lost effects, stuck tasks and the other zero-tolerance
    /// counts were all zero in every run.
    pub clean: bool,
    /// Tiers whose every target was met, strictest first.
    pub tiers_met: Vec<&'static str>,
    /// Seeds run.
    pub seeds: u64,
}

/// The matrix of one stack.
#[derive(Clone, Debug, Serialize)]
pub struct Matrix {
    /// Stack (scenario) name.
    pub stack: String,
    /// Failover pattern.
    pub pattern: Pattern,
    /// One row per disruption type.
    pub rows: Vec<Row>,
    /// Tiers met across every disruption type.
    pub tiers_met: Vec<&'static str>,
    /// What the standby costs to keep running, USD per month.
    pub standby_usd_per_month: f64,
}

/// Hourly price of one running host of each kind (on-demand list prices of
/// small instances), for the standby cost.
pub mod prices {
    /// A worker.
    pub const WORKER_USD_PER_H: f64 = 0.17;
    /// An orchestrator with its database (replica).
    pub const DATABASE_USD_PER_H: f64 = 0.34;
    /// A vector store node.
    pub const VECTOR_USD_PER_H: f64 = 0.25;
    /// Hours in a month.
    pub const HOURS_PER_MONTH: f64 = 730.0;
}

/// What the standby region costs per month before any failover: the hosts
/// the pattern keeps running there.
pub fn standby_usd_per_month(sc: &Scenario) -> f64 {
    use prices::*;
    let s = &sc.stack;
    let per_h = match s.pattern {
        Pattern::SingleRegion | Pattern::ColdStandby => 0.0,
        Pattern::WarmStandby => DATABASE_USD_PER_H + VECTOR_USD_PER_H + f64::from(s.standby_workers) * WORKER_USD_PER_H,
        Pattern::ActiveActive => DATABASE_USD_PER_H + VECTOR_USD_PER_H + f64::from(s.workers) * WORKER_USD_PER_H,
    };
    per_h * HOURS_PER_MONTH
}

/// Rewrites a stack description into one of the failover patterns, with the
/// settings that pattern is known for (seed 003's table):
/// - active-active: synchronous replication (semi-sync after 5 s), a
///   streaming vector replica and 20-second snapshots checked every 20 s,
///   10 s × 3 health checks, a 30 s TTL, both regions' workers running;
/// - warm standby: asynchronous replication 1 s behind, vector snapshots
///   every 4 minutes shipped in 20 s (so the worst loss stays under 5
///   minutes), 30 s × 3 checks, a 60 s TTL, a 2-minute scale-up from a pilot
///   light of one worker, a 1-minute hydration;
/// - cold standby: a state backup and a vector snapshot every 30 minutes,
///   nothing running, 15 minutes to provision and 5 to restore.
pub fn apply_pattern(sc: &mut Scenario, pattern: Pattern) {
    let s = &mut sc.stack;
    s.pattern = pattern;
    match pattern {
        Pattern::SingleRegion => {}
        Pattern::ActiveActive => {
            s.replication = Replication::Sync { degrade_after_ms: Some(5_000) };
            s.vector.streaming_replica = true;
            s.vector.snapshot_interval = Dur::secs(20);
            s.vector.integrity_check_interval = Dur::secs(20);
            s.vector.restore_base = Dur::secs(10);
            s.failover.health_interval = Dur::secs(10);
            s.failover.failure_threshold = 3;
            s.failover.dns_ttl = Dur::secs(30);
            s.failover.scale_up = Dur(0);
        }
        Pattern::WarmStandby => {
            s.replication = Replication::Async { lag_ms: 1_000, interval_ms: 1_000 };
            s.vector.streaming_replica = false;
            s.vector.snapshot_interval = Dur::secs(240);
            s.vector.ship_delay = Dur::secs(20);
            s.vector.integrity_check_interval = Dur::secs(120);
            s.vector.restore_base = Dur::secs(60);
            s.failover.health_interval = Dur::secs(30);
            s.failover.failure_threshold = 3;
            s.failover.dns_ttl = Dur::secs(60);
            s.failover.scale_up = Dur::secs(120);
            s.standby_workers = s.standby_workers.clamp(1, s.workers);
        }
        Pattern::ColdStandby => {
            s.replication = Replication::Async { lag_ms: 0, interval_ms: 1_800_000 };
            s.vector.streaming_replica = false;
            s.vector.snapshot_interval = Dur::secs(1_800);
            s.vector.ship_delay = Dur::secs(60);
            s.vector.integrity_check_interval = Dur::secs(600);
            s.vector.restore_base = Dur::secs(300);
            s.failover.health_interval = Dur::secs(30);
            s.failover.failure_threshold = 3;
            s.failover.dns_ttl = Dur::secs(60);
            s.failover.scale_up = Dur::secs(900);
            s.standby_workers = 0;
        }
    }
}

/// The matrix workload: the stack's templates, a steady stream of jobs for
/// the first hour, and a three-hour horizon.
fn base(stack: &Scenario) -> Scenario {
    let mut sc = stack.clone();
    sc.faults.clear();
    sc.expect = crate::drill::scenario::Expect::Pass;
    sc.max_cost_increase_pct = None;
    sc.horizon = Dur::secs(3 * 3_600);
    sc.workload.tasks = sc.workload.tasks.max(120);
    sc.workload.arrival = Arrival::Uniform;
    sc.workload.interval = Dur::secs(30);
    sc
}

/// The faults of one disruption type, for this stack.
pub fn faults_for(sc: &Scenario, d: Disruption) -> Vec<Vec<FaultSpec>> {
    let tpl_name = &sc.workload.templates[0];
    let tpl = workflow::builtin().into_iter().find(|t| t.name == tpl_name).expect("validated template");
    let side = tpl.steps.iter().position(|s| s.kind.is_side_effect()).unwrap_or(0) as u16;
    let first_provider = sc.stack.providers[0].name.clone();
    let m = |min: u64| Dur::secs(min * 60);
    match d {
        Disruption::Worker => vec![
            vec![FaultSpec::WorkerKill {
                at: When::Event { job: 4, step: side, phase: Phase::InFlight },
                worker: None,
                restart_after: Some(Dur::secs(30)),
            }],
            vec![FaultSpec::WorkerPause {
                at: When::Event { job: 7, step: side, phase: Phase::AfterCheckpoint },
                worker: None,
                duration: m(3),
            }],
        ],
        Disruption::Provider => vec![vec![FaultSpec::ProviderOutage {
            at: m(5),
            provider: first_provider,
            mode: ErrorMode::Overloaded,
            duration: m(20),
        }]],
        Disruption::Network => vec![
            vec![FaultSpec::Partition {
                at: m(5),
                duration: m(3),
                a: "worker-a-0".into(),
                b: "orchestrator-a".into(),
                one_way: false,
            }],
            vec![FaultSpec::LinkDegradation {
                at: m(5),
                duration: m(10),
                a: "region:a".into(),
                b: "region:external".into(),
                one_way: false,
                latency: Dur(500),
                loss: 0.1,
            }],
        ],
        Disruption::Region => {
            vec![vec![FaultSpec::RegionLoss {
                at: m(20),
                region: crate::drill::scenario::RegionName::A,
                duration: None,
            }]]
        }
        Disruption::DataCorruption => vec![vec![FaultSpec::VectorCorruption { at: m(50), fraction: 0.05 }]],
    }
}

/// Runs the matrix of one stack over `seeds` seeds (1..=seeds), each drill
/// within the default [`drill::Budget`], reporting progress through `tick`
/// after every drill.
pub fn matrix(stack: &Scenario, seeds: u64, mut tick: impl FnMut()) -> Result<Matrix, drill::OverBudget> {
    let budget = drill::Budget::default();
    let sc0 = base(stack);
    let mut rows = Vec::new();
    for d in Disruption::ALL {
        let mut worst_rto = Some(0.0f64);
        let mut worst_rpo = 0.0f64;
        let mut clean = true;
        for faults in faults_for(&sc0, d) {
            let mut sc = sc0.clone();
            sc.faults = faults;
            for seed in 1..=seeds {
                let r = drill::try_run(&sc, seed, &budget)?;
                worst_rto = match (worst_rto, r.rto_s) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                worst_rpo = worst_rpo.max(r.rpo_s);
                let c = &r.counts;
                clean &= c.duplicates
                    + c.lost_effects
                    + c.stuck_tasks
                    + c.replanned_steps
                    + c.stale_writes
                    + c.stale_actions
                    + c.corrupted_writes
                    == 0;
                tick();
            }
        }
        let tiers_met = Tier::ALL
            .iter()
            .filter(|t| clean && worst_rto.is_some_and(|r| r < t.rto_s()) && worst_rpo < t.rpo_s())
            .map(|t| t.name())
            .collect();
        rows.push(Row { disruption: d, worst_rto_s: worst_rto, worst_rpo_s: worst_rpo, clean, tiers_met, seeds });
    }
    let tiers_met =
        Tier::ALL.iter().map(|t| t.name()).filter(|t| rows.iter().all(|r| r.tiers_met.contains(t))).collect();
    Ok(Matrix {
        stack: stack.name.clone(),
        pattern: stack.stack.pattern,
        rows,
        tiers_met,
        standby_usd_per_month: standby_usd_per_month(stack),
    })
}

/// The matrix of the three failover patterns built from one stack.
pub fn patterns(stack: &Scenario, seeds: u64, mut tick: impl FnMut()) -> Result<Vec<Matrix>, drill::OverBudget> {
    [Pattern::ActiveActive, Pattern::WarmStandby, Pattern::ColdStandby]
        .into_iter()
        .map(|p| {
            let mut sc = stack.clone();
            apply_pattern(&mut sc, p);
            sc.name = format!("{} ({})", stack.name, pattern_name(p));
            matrix(&sc, seeds, &mut tick)
        })
        .collect()
}

/// Number of drills a matrix runs (for progress bars).
pub fn drills_per_matrix(stack: &Scenario, seeds: u64) -> u64 {
    let sc = base(stack);
    Disruption::ALL.iter().map(|d| faults_for(&sc, *d).len() as u64).sum::<u64>() * seeds
}

/// A pattern's name for tables.
pub fn pattern_name(p: Pattern) -> &'static str {
    match p {
        Pattern::SingleRegion => "single region",
        Pattern::ActiveActive => "active-active",
        Pattern::WarmStandby => "warm standby",
        Pattern::ColdStandby => "cold standby",
    }
}

/// The strictest tier in a list (they are kept strictest first).
pub fn strictest(tiers: &[&'static str]) -> &'static str {
    tiers.first().copied().unwrap_or("none")
}

/// Renders one matrix as a table.
pub fn render(m: &Matrix) -> String {
    use tabled::{Table, Tabled, settings::Style};
    #[derive(Tabled)]
    struct Line {
        disruption: &'static str,
        #[tabled(rename = "worst RTO s")]
        rto: String,
        #[tabled(rename = "worst RPO s")]
        rpo: String,
        clean: &'static str,
        #[tabled(rename = "tiers met")]
        tiers: String,
    }
    let lines: Vec<Line> = m
        .rows
        .iter()
        .map(|r| Line {
            disruption: r.disruption.name(),
            rto: r.worst_rto_s.map_or_else(|| "never".into(), |x| format!("{x:.1}")),
            rpo: format!("{:.1}", r.worst_rpo_s),
            clean: if r.clean { "yes" } else { "NO" },
            tiers: if r.tiers_met.is_empty() { "none".into() } else { r.tiers_met.join(", ") },
        })
        .collect();
    format!(
        "{} — pattern {}, standby ${:.0}/month\n{}\nmeets: {}\n",
        m.stack,
        pattern_name(m.pattern),
        m.standby_usd_per_month,
        Table::new(lines).with(Style::rounded()),
        if m.tiers_met.is_empty() { "no tier".to_string() } else { m.tiers_met.join(", ") }
    )
}

/// Renders the patterns side by side.
pub fn render_patterns(ms: &[Matrix]) -> String {
    let mut b = tabled::builder::Builder::default();
    let mut head = vec!["disruption".to_string()];
    head.extend(ms.iter().map(|m| pattern_name(m.pattern).to_string()));
    b.push_record(head);
    for (i, d) in Disruption::ALL.iter().enumerate() {
        let mut row = vec![d.name().to_string()];
        for m in ms {
            let r = &m.rows[i];
            let rto = r.worst_rto_s.map_or_else(|| "never".into(), |x| format!("{x:.0}"));
            row.push(format!("{} (RTO {rto} s, RPO {:.0} s)", strictest(&r.tiers_met), r.worst_rpo_s));
        }
        b.push_record(row);
    }
    let mut meets = vec!["meets".to_string()];
    meets.extend(ms.iter().map(|m| strictest(&m.tiers_met).to_string()));
    b.push_record(meets);
    let mut cost = vec!["standby $/month".to_string()];
    cost.extend(ms.iter().map(|m| format!("{:.0}", m.standby_usd_per_month)));
    b.push_record(cost);
    format!("{}\n", b.build().with(tabled::settings::Style::rounded()))
}
