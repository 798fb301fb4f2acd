//! Runs a live drill: starts the fakes (one port per replica on each), the
//! stack's processes under the [`supervisor`], submits the jobs, injects
//! the faults on real things (kill points at the fakes, kills and pauses by
//! time, provider outages through the toxics), and measures from the
//! fakes' ledgers and the script (ground truth), with the simulator's
//! definitions, verdict and report contract ([`crate::drill::worst`],
//! [`crate::drill::target_violations`], [`crate::drill::verdict`]).
//!
//! A job is **done** when every side-effecting step of its script has its
//! effect in a ledger and a model fake served its final answer (or, with
//! `[jobs] done = "last_effect"`, at its last effect's commit). Then:
//! - duplicates: effects beyond one per (job, step) of the script;
//! - lost: steps with no effect in a job that went past them: its final
//!   answer was served (the agent said it was done), or with `last_effect`
//!   a later step's effect is in a ledger;
//! - stuck: jobs that did not end by the horizon: no final answer served
//!   (with `last_effect`: the last step's effect missing);
//! - RTO of a fault: onset → every job in flight at the onset, and the
//!   first job submitted after it, done (None: not by the horizon). Its
//!   parts: `scale_up_s` until the killed process runs again, `resume_s`
//!   the rest.
//!
//! Every time is on the fakes' clock (µs since they started), reported
//! from the first submission.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::Serialize;
use tokio::sync::mpsc;

use super::killpoint::{Fired, Point};
use super::net::{Endpoint, Selector, TcpToxic};
use super::scenario::{DoneWhen, LiveFault, LiveScenario, env_name, expand};
use super::supervisor::{self, ExitRecord, Spec, Supervisor};
use super::toxics::{Toxic, ToxicKind};
use super::{Fake, LiveConfig, Served, Shared, lock};
use crate::components::ids::{JobId, Micros};
use crate::drill::measure::{Counts, FaultResult, RpoSurfaces, RtoParts};
use crate::drill::{Cost, DrillResult};

/// How often the harness looks at the ledgers, in ms.
pub const POLL_MS: u64 = 20;
/// Most time one HTTP submission may take, in ms.
pub const SUBMIT_TIMEOUT_MS: u64 = 2_000;

/// What a live drill adds to the report contract of a simulated one.
#[derive(Clone, Debug, Serialize)]
pub struct LiveInfo {
    /// `"live"`.
    pub mode: &'static str,
    /// Wall time of the drill, seconds (first submission → end).
    pub wall_s: f64,
    /// Jobs submitted (accepted by the stack).
    pub jobs_submitted: u32,
    /// Every replica's exits: killed by the harness, or unexpected (with the
    /// tail of its log).
    pub process_exits: Vec<ExitRecord>,
    /// Counts this drill had no ground truth for, reported as 0: they need
    /// the stack's own durable records, which only the reference stack's
    /// PostgreSQL gives (`agentdrill.event_log` and `agentdrill.writes`); a
    /// foreign stack keeps them here.
    pub unmeasured: Vec<&'static str>,
    /// Where each measured count came from (count → ground truth).
    pub measured_from: BTreeMap<&'static str, &'static str>,
}

/// Why a live drill could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum LiveRunError {
    /// The fakes could not start.
    #[error(transparent)]
    Fakes(#[from] super::LiveError),
    /// The processes could not start.
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    /// `[database]`: PostgreSQL could not start (or a dead run's could not
    /// be cleaned up).
    #[error("{scenario}: [database]: {source}; `agentdrill doctor` tells which backends work here")]
    Database {
        /// Scenario.
        scenario: String,
        /// Cause.
        source: super::pg::PgError,
    },
    /// The submit process never listened.
    #[error(
        "{scenario}: process `{process}` did not listen on {addr} (AGENTDRILL_LISTEN_ADDR) within startup = {startup_ms} ms; its log ends:\n{tail}"
    )]
    NotReady {
        /// Scenario.
        scenario: String,
        /// Process.
        process: String,
        /// Its listen address.
        addr: SocketAddr,
        /// Startup limit.
        startup_ms: u64,
        /// The last lines of its log.
        tail: String,
    },
    /// A kill point could not be armed.
    #[error("{scenario}: faults: {source}")]
    Arm {
        /// Scenario.
        scenario: String,
        /// Cause.
        source: super::killpoint::ArmError,
    },
    /// The TCP proxies could not be set up.
    #[error("{scenario}: cannot set up the TCP proxies between components: {source}")]
    Net {
        /// Scenario.
        scenario: String,
        /// Cause.
        source: super::net::NetError,
    },
    /// The runtime could not start.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
}

/// One replica's place: process, replica, sender slot, listen address.
#[derive(Clone, Debug)]
struct Replica {
    process: String,
    replica: u16,
    listen: SocketAddr,
}

/// A free loopback port (bound, read, released).
fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The replicas of the scenario, in slot order.
fn replicas(sc: &LiveScenario) -> std::io::Result<Vec<Replica>> {
    let mut out = Vec::new();
    for p in &sc.processes {
        for r in 0..p.replicas {
            out.push(Replica { process: p.name.clone(), replica: r, listen: free_addr()? });
        }
    }
    Ok(out)
}

fn slot_of(reps: &[Replica], process: &str, replica: u16) -> Option<usize> {
    reps.iter().position(|r| r.process == process && r.replica == replica)
}

/// The proxies of a drill: every address a replica is handed is a link of
/// `Shared::net` (its own per fake, per peer and to the database).
#[derive(Debug, Default)]
struct Wiring {
    /// Per slot, per fake (in [`Fake::ALL`] order).
    fakes: Vec<Vec<SocketAddr>>,
    /// (slot, process) → the link from the slot to that process's replica 0.
    peers: FxHashMap<(usize, String), SocketAddr>,
    /// (slot, process) → the link from that process's replica 0 to the slot.
    replies: FxHashMap<(usize, String), SocketAddr>,
    /// Per slot, the link to the database.
    db: Vec<SocketAddr>,
    /// The link from the client (the submitter) to the submit process.
    submit: Option<SocketAddr>,
}

fn endpoint(sc: &LiveScenario, r: &Replica) -> Endpoint {
    let region = sc.processes.iter().find(|p| p.name == r.process).map_or("a", |p| p.region.as_str());
    Endpoint::replica(&r.process, r.replica, region)
}

/// Puts a harness proxy on every connection between components.
async fn wire(
    sc: &LiveScenario,
    served: &Served,
    reps: &[Replica],
    db: Option<SocketAddr>,
) -> Result<Wiring, super::net::NetError> {
    let net = &served.shared.net;
    let mut w = Wiring::default();
    let mut made: FxHashMap<String, SocketAddr> = FxHashMap::default();
    for (slot, r) in reps.iter().enumerate() {
        let me = endpoint(sc, r);
        let slot16 = u16::try_from(slot).expect("at most MAX_SENDER_SLOTS");
        let mut fakes = Vec::with_capacity(Fake::ALL.len());
        for f in Fake::ALL {
            let to = Endpoint::component(f.name(), f.region());
            fakes.push(net.add_link(me.clone(), to, served.shared.addr_for(f, Some(slot16))).await?);
        }
        w.fakes.push(fakes);
        for q in &sc.processes {
            let Some(q0) = reps.iter().find(|x| x.process == q.name && x.replica == 0) else { continue };
            if q0.process == r.process && q0.replica == r.replica {
                continue;
            }
            let them = endpoint(sc, q0);
            for (from, to, upstream, map) in
                [(&me, &them, q0.listen, &mut w.peers), (&them, &me, r.listen, &mut w.replies)]
            {
                let key = format!("{}>{}", from.label(), to.label());
                let addr = match made.get(&key) {
                    Some(a) => *a,
                    None => {
                        let a = net.add_link(from.clone(), to.clone(), upstream).await?;
                        made.insert(key, a);
                        a
                    }
                };
                map.insert((slot, q.name.clone()), addr);
            }
        }
        if let Some(db) = db {
            w.db.push(net.add_link(me.clone(), Endpoint::component("postgres", Some("a")), db).await?);
        }
    }
    if let Some(p) = &sc.submit.process
        && let Some(s0) = reps.iter().find(|x| &x.process == p && x.replica == 0)
    {
        w.submit = Some(net.add_link(Endpoint::component("client", None), endpoint(sc, s0), s0.listen).await?);
    }
    Ok(w)
}

/// The environment of every replica (the process contract).
fn specs(sc: &LiveScenario, served: &Served, reps: &[Replica], state_root: &std::path::Path, w: &Wiring) -> Vec<Spec> {
    // `${AGENTDRILL_BIN}` is this very binary unless the environment says
    // otherwise: the reference stack's processes are `agentdrill stack …`.
    let host = |n: &str| {
        std::env::var(n).ok().or_else(|| {
            (n == "AGENTDRILL_BIN").then(|| std::env::current_exe().ok().map(|p| p.display().to_string())).flatten()
        })
    };
    reps.iter()
        .enumerate()
        .map(|(slot, r)| {
            let p = sc.processes.iter().find(|p| p.name == r.process).expect("replicas come from processes");
            let mut env: Vec<(String, String)> =
                served.env_via(|f| w.fakes[slot][f.index()]).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            // Peers (replica 0 of each process) through the links; a
            // replica 0 reaches itself directly.
            let peer = |q: &str| {
                w.peers
                    .get(&(slot, q.to_owned()))
                    .copied()
                    .or_else(|| reps.iter().find(|x| x.process == q && x.replica == 0).map(|x| x.listen))
            };
            for q in &sc.processes {
                if let Some(a) = peer(&q.name) {
                    env.push((format!("AGENTDRILL_PEER_{}_URL", env_name(&q.name)), format!("http://{a}")));
                }
                if let Some(a) = w.replies.get(&(slot, q.name.clone())) {
                    env.push((format!("AGENTDRILL_PEER_{}_REPLY_URL", env_name(&q.name)), format!("http://{a}")));
                }
            }
            if let Some(a) = sc.submit.process.as_deref().and_then(peer) {
                env.push(("AGENTDRILL_SUBMIT_URL".into(), format!("http://{a}{}", sc.submit.path)));
            }
            if let Some(a) = w.db.get(slot) {
                env.push(("DATABASE_URL".into(), super::pg::url_for(*a)));
            }
            env.push(("AGENTDRILL_PROCESS".into(), r.process.clone()));
            env.push(("AGENTDRILL_REPLICA".into(), r.replica.to_string()));
            env.push(("AGENTDRILL_REGION".into(), p.region.clone()));
            env.push(("AGENTDRILL_LISTEN_ADDR".into(), r.listen.to_string()));
            env.push(("AGENTDRILL_STATE_DIR".into(), state_root.join(&p.name).display().to_string()));
            env.push(("AGENTDRILL_SEED".into(), sc.seed.to_string()));
            for (k, v) in &p.env {
                env.push((k.clone(), expand(v, &host)));
            }
            Spec {
                name: r.process.clone(),
                replica: r.replica,
                command: expand(&p.command, &host),
                args: p.args.iter().map(|a| expand(a, &host)).collect(),
                env,
                restart_delay_ms: p.restart_delay.ms(),
            }
        })
        .collect()
}

/// One fault's record during the drill.
#[derive(Clone, Debug, Default)]
struct Onset {
    at_us: Option<Micros>,
    slot: Option<usize>,
    back_us: Option<Micros>,
    starts_before: u32,
}

/// A job's truth at one moment.
#[derive(Clone, Debug, Default)]
struct JobTruth {
    submitted_us: Option<Micros>,
    final_us: Option<Micros>,
    /// Effects per side-effecting step, with the first effect's time.
    effects: BTreeMap<u16, (u64, Micros)>,
    /// Side-effecting steps of the script.
    expected: Vec<u16>,
    /// The script's tool input of each side-effecting step.
    inputs: BTreeMap<u16, serde_json::Value>,
    done_us: Option<Micros>,
}

/// Effects per (job, step): (count, first at).
type EffectCounts = FxHashMap<(u32, u16), (u64, Micros)>;

/// Effects per (job, step) in both ledgers, and the total.
fn ledger_counts(shared: &Shared) -> (EffectCounts, u64) {
    let mut m: EffectCounts = FxHashMap::default();
    let mut total = 0;
    let mut add = |ledger: &[crate::components::ledger::LedgerEntry]| {
        for e in ledger {
            total += 1;
            let JobId(j) = e.origin.job;
            let c = m.entry((j, e.origin.step)).or_insert((0, e.at_us));
            c.0 += 1;
            c.1 = c.1.min(e.at_us);
        }
    };
    add(lock(&shared.payment).api.ledger());
    add(lock(&shared.email).api.ledger());
    (m, total)
}

/// Updates every job's truth from the ledgers and the model fakes.
fn observe(shared: &Shared, done: DoneWhen, jobs: &mut BTreeMap<u32, JobTruth>) {
    let (counts, _) = ledger_counts(shared);
    let finals = lock(&shared.finals).clone();
    for (&job, t) in jobs.iter_mut() {
        t.final_us = finals.get(&job).copied();
        t.effects = t.expected.iter().filter_map(|&s| counts.get(&(job, s)).map(|&c| (s, c))).collect();
        if t.done_us.is_some() || !t.expected.iter().all(|s| t.effects.contains_key(s)) {
            continue;
        }
        let last_effect = t.effects.values().map(|c| c.1).max().unwrap_or(0);
        t.done_us = match done {
            DoneWhen::FinalAnswer => t.final_us.map(|f| f.max(last_effect)),
            // A job with no side effect at all shows its end only in its
            // final answer.
            DoneWhen::LastEffect if t.expected.is_empty() => t.final_us,
            DoneWhen::LastEffect => Some(last_effect),
        };
    }
}

/// Runs a live drill with `seed` (the scenario's unless overridden).
pub fn run(sc: &LiveScenario, seed: u64) -> Result<DrillResult, LiveRunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(LiveRunError::Runtime)?;
    rt.block_on(run_async(sc, seed))
}

async fn run_async(sc: &LiveScenario, seed: u64) -> Result<DrillResult, LiveRunError> {
    let root = supervisor::run_root();
    // PostgreSQL nodes of dead runs first: their records live in the run
    // folders `clean_leftovers` removes.
    // A drill without a database is not stopped by a failed clean-up of
    // another run's (it is reported); one with a database is.
    match super::pg::cleanup_stale(&root) {
        Ok(_) => {}
        Err(source) if sc.database.is_some() => {
            return Err(LiveRunError::Database { scenario: sc.name.clone(), source });
        }
        Err(e) => tracing::warn!(error = %e, "cleaning up a dead run's PostgreSQL failed"),
    }
    supervisor::clean_leftovers(&root);
    let database = start_database(sc, &root).await?;
    let reps = replicas(sc).map_err(|source| {
        LiveRunError::Fakes(super::LiveError::Bind { port: 0, what: "a replica's listen address", source })
    })?;
    let cfg = LiveConfig {
        seed,
        port: 0,
        processing_ms: sc.fakes.processing.ms(),
        model_latency_permille: 0,
        payment_dedupe: sc.fakes.payment_dedupe,
        email_dedupe: sc.fakes.email_dedupe,
        record_attempts: true,
        sender_slots: u16::try_from(reps.len()).unwrap_or(u16::MAX),
    };
    let served = super::start(cfg).await?;
    let shared = served.shared.clone();
    let state_root = Supervisor::run_dir_in(&root).join("state");
    for p in &sc.processes {
        let dir = state_root.join(&p.name);
        std::fs::create_dir_all(&dir)
            .map_err(|source| supervisor::SupervisorError::RunDir { path: dir.clone(), source })?;
    }
    let wiring = match wire(sc, &served, &reps, database.as_ref().map(|d| d.addr())).await {
        Ok(w) => w,
        Err(source) => {
            served.shutdown().await;
            return Err(LiveRunError::Net { scenario: sc.name.clone(), source });
        }
    };
    let specs = specs(sc, &served, &reps, &state_root, &wiring);
    let sup = Arc::new(Supervisor::start(&root, specs)?);
    let outcome = drive(sc, &served, &reps, &sup, wiring.submit).await;
    let sup = Arc::try_unwrap(sup).expect("the drill holds the only handle");
    let run_dir = sup.run_dir.clone();
    let exits = tokio::task::spawn_blocking(move || sup.stop_keeping_folder()).await.unwrap_or_default();
    served.shutdown().await;
    // What the stack's database committed, read before it is dropped.
    let audit = match &database {
        Some(db) => super::stack::pg::audit(&db.url()).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the stack's database could not be audited: stale writes unmeasured");
            None
        }),
        None => None,
    };
    // The stack is down: now the database (dropping the node kills the
    // server and removes its data folder), then the run folder it was in.
    drop(database);
    let _ = std::fs::remove_dir_all(&run_dir);
    let driven = outcome?;
    Ok(measure(sc, seed, &shared, driven, exits, audit))
}

/// Starts the scenario's PostgreSQL primary (`[database]`), in this run's
/// folder under `root`, on the backend the scenario names.
async fn start_database(sc: &LiveScenario, root: &std::path::Path) -> Result<Option<super::pg::PgNode>, LiveRunError> {
    let Some(spec) = &sc.database else { return Ok(None) };
    let run_dir = Supervisor::run_dir_in(root);
    let run_id = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut opts = super::pg::PgOptions::local(run_dir, run_id);
    opts.backend = match spec.backend {
        super::scenario::DbBackend::Local => super::pg::Backend::Local,
        super::scenario::DbBackend::Docker => super::pg::Backend::Docker,
    };
    super::pg::Cluster::start_primary(&opts)
        .await
        .map(Some)
        .map_err(|source| LiveRunError::Database { scenario: sc.name.clone(), source })
}

/// What [`drive`] hands to [`measure`].
struct Driven {
    base_us: Micros,
    end_us: Micros,
    jobs: BTreeMap<u32, JobTruth>,
    onsets: Vec<Onset>,
}

async fn wait_ready(sc: &LiveScenario, reps: &[Replica], sup: &Supervisor) -> Result<(), LiveRunError> {
    let Some(process) = &sc.submit.process else { return Ok(()) };
    let slot = slot_of(reps, process, 0).expect("validated: the submit process exists");
    let addr = reps[slot].listen;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(sc.startup.ms());
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    let log = sup.run_dir.join("logs").join(format!("{process}-0.log"));
    Err(LiveRunError::NotReady {
        scenario: sc.name.clone(),
        process: process.clone(),
        addr,
        startup_ms: sc.startup.ms(),
        tail: supervisor::log_tail(&log),
    })
}

/// Submits every job on schedule; each accepted job is sent on `accepted`.
async fn submitter(
    sc: LiveScenario,
    submit_url: Option<String>,
    env: Vec<(String, String)>,
    accepted: mpsc::UnboundedSender<u32>,
) {
    let client = reqwest::Client::builder().timeout(Duration::from_millis(SUBMIT_TIMEOUT_MS)).build();
    let start = tokio::time::Instant::now();
    let script = super::script::Script::new(sc.seed);
    for k in 0..sc.jobs.count {
        let job = sc.jobs.first + k;
        tokio::time::sleep_until(start + Duration::from_millis(sc.jobs.every.ms() * u64::from(k))).await;
        let workflow = sc.jobs.workflow.clone().unwrap_or_else(|| script.template_for(job).name.to_owned());
        loop {
            let ok = match (&submit_url, &sc.submit.command, &client) {
                (Some(url), _, Ok(c)) => c
                    .post(url)
                    .json(&serde_json::json!({ "job": job, "workflow": workflow }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                (None, Some(cmd), _) => {
                    let sub = |s: &String| s.replace("{job}", &job.to_string()).replace("{workflow}", &workflow);
                    let mut c = tokio::process::Command::new(sub(&cmd[0]));
                    c.args(cmd[1..].iter().map(sub)).envs(env.iter().cloned()).kill_on_drop(true);
                    c.status().await.is_ok_and(|s| s.success())
                }
                _ => false,
            };
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        if accepted.send(job).is_err() {
            return;
        }
    }
}

/// A fault that fires at a time.
enum Timed {
    Kill(usize, usize),
    Stop(usize, usize),
    Cont(usize),
    OutageOn(usize, Fake, u16),
    OutageOff(Fake),
    CutOn(usize, Selector, Selector),
    CutOff(usize),
    ToxicOn(usize, Selector, Selector, TcpToxic),
    ToxicOff(usize),
}

async fn drive(
    sc: &LiveScenario,
    served: &Served,
    reps: &[Replica],
    sup: &Arc<Supervisor>,
    submit_via: Option<SocketAddr>,
) -> Result<Driven, LiveRunError> {
    let shared = &served.shared;
    wait_ready(sc, reps, sup).await?;
    let (fired_tx, mut fired_rx) = mpsc::unbounded_channel::<Fired>();
    let mut point_fault: Vec<usize> = Vec::new();
    let mut timed: Vec<(u64, Timed)> = Vec::new();
    for (i, f) in sc.faults.iter().enumerate() {
        match f {
            LiveFault::KillAtCall { api, job, step, call, phase } => {
                let p = Point { fake: api.fake(), job: *job, step: *step, call: *call, phase: *phase, pause: false };
                shared
                    .killpoints
                    .arm(p, fired_tx.clone())
                    .map_err(|source| LiveRunError::Arm { scenario: sc.name.clone(), source })?;
                point_fault.push(i);
            }
            LiveFault::PauseAtCall { api, job, step, call, phase, .. } => {
                let p = Point { fake: api.fake(), job: *job, step: *step, call: *call, phase: *phase, pause: true };
                shared
                    .killpoints
                    .arm(p, fired_tx.clone())
                    .map_err(|source| LiveRunError::Arm { scenario: sc.name.clone(), source })?;
                point_fault.push(i);
            }
            LiveFault::Kill { process, replica, at } => {
                timed.push((at.ms(), Timed::Kill(i, slot_of(reps, process, *replica).expect("validated"))));
            }
            LiveFault::Pause { process, replica, at, duration } => {
                let slot = slot_of(reps, process, *replica).expect("validated");
                timed.push((at.ms(), Timed::Stop(i, slot)));
                timed.push((at.ms() + duration.ms(), Timed::Cont(slot)));
            }
            LiveFault::ProviderOutage { provider, status, at, duration } => {
                timed.push((at.ms(), Timed::OutageOn(i, provider.fake(), *status)));
                timed.push((at.ms() + duration.ms(), Timed::OutageOff(provider.fake())));
            }
            LiveFault::Partition { between, at, duration } => {
                let (a, b) = (Selector::parse(&between[0]), Selector::parse(&between[1]));
                timed.push((at.ms(), Timed::CutOn(i, a, b)));
                timed.push((at.ms() + duration.ms(), Timed::CutOff(i)));
            }
            LiveFault::Network { toxic, between, direction, toxicity, at, duration } => {
                let (a, b) = (Selector::parse(&between[0]), Selector::parse(&between[1]));
                let t = TcpToxic {
                    name: format!("fault-{i}"),
                    kind: toxic.clone(),
                    stream: *direction,
                    toxicity: *toxicity,
                };
                timed.push((at.ms(), Timed::ToxicOn(i, a, b, t)));
                timed.push((at.ms() + duration.ms(), Timed::ToxicOff(i)));
            }
        }
    }
    let mut cuts: FxHashMap<usize, super::net::CutId> = FxHashMap::default();
    timed.sort_by_key(|t| t.0);
    let mut timed = std::collections::VecDeque::from(timed);
    let submit_url = sc.submit.process.as_ref().map(|p| {
        let slot = slot_of(reps, p, 0).expect("validated");
        format!("http://{}{}", submit_via.unwrap_or(reps[slot].listen), sc.submit.path)
    });
    let env: Vec<(String, String)> = served.env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let (acc_tx, mut acc_rx) = mpsc::unbounded_channel();
    let base_us = shared.now_us();
    let start = tokio::time::Instant::now();
    let sub = tokio::spawn(submitter(sc.clone(), submit_url, env, acc_tx));
    let script = super::script::Script::new(shared.script.seed());
    let mut jobs: BTreeMap<u32, JobTruth> = BTreeMap::new();
    let mut onsets = vec![Onset::default(); sc.faults.len()];
    let horizon = start + Duration::from_millis(sc.horizon.ms());
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_MS));
    let mut outage_no = 0u32;
    // The last fault event, and since when every job has looked done (ms
    // since the first submission): the drill ends `[jobs] settle` after both.
    let mut last_fault_ms = 0u64;
    let mut all_done_ms: Option<u64> = None;
    loop {
        tokio::select! {
            Some(job) = acc_rx.recv() => {
                let t = sc.jobs.workflow.as_deref().and_then(|w| script.template_named(w)).unwrap_or_else(|| script.template_for(job));
                let steps: Vec<_> = script.expected(job, t).into_iter().filter(|e| e.side_effect).collect();
                let expected = steps.iter().map(|e| e.step).collect();
                let inputs = steps.into_iter().map(|e| (e.step, e.input)).collect();
                jobs.insert(job, JobTruth { submitted_us: Some(shared.now_us()), expected, inputs, ..JobTruth::default() });
            }
            Some(f) = fired_rx.recv() => {
                let i = point_fault[f.point];
                last_fault_ms = last_fault_ms.max(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
                onsets[i].at_us = Some(f.at_us);
                match (f.slot, &sc.faults[i]) {
                    (Some(slot), LiveFault::PauseAtCall { duration, .. }) => {
                        let slot = usize::from(slot);
                        let s = sup.clone();
                        let _ = tokio::task::spawn_blocking(move || s.pause(slot)).await;
                        let wake_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + duration.ms();
                        let at = timed.partition_point(|t| t.0 <= wake_ms);
                        timed.insert(at, (wake_ms, Timed::Cont(slot)));
                        tracing::info!(fault = i, slot, job = ?f.job, phase = f.phase.name(), "paused the sender");
                    }
                    (Some(slot), _) => {
                        let slot = usize::from(slot);
                        onsets[i].slot = Some(slot);
                        onsets[i].starts_before = sup.starts(slot);
                        let s = sup.clone();
                        let _ = tokio::task::spawn_blocking(move || s.kill(slot)).await;
                        tracing::info!(fault = i, slot, job = ?f.job, phase = f.phase.name(), "killed the sender");
                    }
                    (None, _) => tracing::warn!(fault = i, "the request came on a shared port: no sender to kill (does the process use the AGENTDRILL_* / *_BASE_URL environment?)"),
                }
                let _ = f.ack.send(());
            }
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(horizon) => break,
        }
        let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        while timed.front().is_some_and(|t| t.0 <= elapsed_ms) {
            let (at_ms, t) = timed.pop_front().expect("front exists");
            last_fault_ms = last_fault_ms.max(at_ms);
            let now = shared.now_us();
            match t {
                Timed::Kill(i, slot) => {
                    onsets[i] =
                        Onset { at_us: Some(now), slot: Some(slot), back_us: None, starts_before: sup.starts(slot) };
                    let s = sup.clone();
                    let _ = tokio::task::spawn_blocking(move || s.kill(slot)).await;
                }
                Timed::Stop(i, slot) => {
                    onsets[i] = Onset { at_us: Some(now), ..Onset::default() };
                    let s = sup.clone();
                    let _ = tokio::task::spawn_blocking(move || s.pause(slot)).await;
                }
                Timed::Cont(slot) => sup.resume(slot),
                Timed::OutageOn(i, fake, status) => {
                    onsets[i] = Onset { at_us: Some(now), ..Onset::default() };
                    outage_no += 1;
                    let toxic = Toxic {
                        name: format!("outage-{outage_no}"),
                        kind: ToxicKind::Error { status, retry_after_ms: None },
                        count: None,
                        toxicity: 1.0,
                    };
                    if let Err(e) = lock(&shared.toxics).add(fake.name(), toxic) {
                        tracing::error!(error = %e, "outage toxic refused");
                    }
                }
                Timed::OutageOff(fake) => {
                    let names: Vec<String> = lock(&shared.toxics)
                        .list(fake.name())
                        .iter()
                        .filter(|t| t.name.starts_with("outage-"))
                        .map(|t| t.name.clone())
                        .collect();
                    for n in names {
                        lock(&shared.toxics).remove(fake.name(), &n);
                    }
                    shared.toxics_changed.notify_waiters();
                }
                Timed::CutOn(i, a, b) => {
                    onsets[i] = Onset { at_us: Some(now), ..Onset::default() };
                    cuts.insert(i, shared.net.cut(a, b));
                }
                Timed::CutOff(i) => {
                    if let Some(id) = cuts.remove(&i) {
                        shared.net.heal(id);
                    }
                }
                Timed::ToxicOn(i, a, b, t) => {
                    onsets[i] = Onset { at_us: Some(now), ..Onset::default() };
                    match shared.net.add_toxic_where(&a, &b, &t) {
                        Ok(links) => tracing::info!(fault = i, links = links.len(), "network toxic on"),
                        Err(e) => tracing::error!(error = %e, "network toxic refused"),
                    }
                }
                Timed::ToxicOff(i) => {
                    shared.net.remove_toxic_everywhere(&format!("fault-{i}"));
                }
            }
        }
        for o in onsets.iter_mut() {
            if let (Some(slot), None) = (o.slot, o.back_us)
                && sup.starts(slot) > o.starts_before
            {
                o.back_us = Some(shared.now_us());
            }
        }
        observe(shared, sc.jobs.done, &mut jobs);
        let all_in = jobs.len() == sc.jobs.count as usize;
        let all_done = all_in && timed.is_empty() && jobs.values().all(|j| j.done_us.is_some());
        all_done_ms = if all_done { all_done_ms.or(Some(elapsed_ms)) } else { None };
        if all_done_ms.is_some_and(|d| elapsed_ms >= d.max(last_fault_ms).saturating_add(sc.jobs.settle.ms())) {
            break;
        }
    }
    sub.abort();
    shared.killpoints.clear();
    observe(shared, sc.jobs.done, &mut jobs);
    Ok(Driven { base_us, end_us: shared.now_us(), jobs, onsets })
}

fn s_of(us: Micros) -> f64 {
    us as f64 / 1e6
}

/// The measurements and the verdict, from ground truth.
fn measure(
    sc: &LiveScenario,
    seed: u64,
    shared: &Shared,
    d: Driven,
    exits: Vec<ExitRecord>,
    audit: Option<super::stack::pg::Audit>,
) -> DrillResult {
    let (ledger, total_effects) = ledger_counts(shared);
    let mut counts = Counts { side_effects: total_effects, ..Counts::default() };
    counts.replanned_steps = replanned(shared, &d.jobs);
    let mut unmeasured = vec!["stale_actions", "corrupted_writes", "concurrent_runs"];
    let mut measured_from = BTreeMap::from([
        ("duplicates", "the payment and email fakes' ledgers, per (job, step) of the script"),
        ("lost_effects", "the ledgers and the model fakes' final answers"),
        ("stuck_tasks", "the ledgers and the model fakes' final answers"),
        ("replanned_steps", "each effect's parameters at the fakes against the script's tool input"),
    ]);
    match audit {
        Some(a) => {
            counts.stale_writes = a.stale_writes;
            measured_from.insert(
                "stale_writes",
                "the stack's PostgreSQL: agentdrill.writes judged against the lease history of agentdrill.event_log",
            );
        }
        None => unmeasured.insert(0, "stale_writes"),
    }
    for (&job, t) in &d.jobs {
        for (i, s) in t.expected.iter().enumerate() {
            let n = ledger.get(&(job, *s)).map_or(0, |c| c.0);
            counts.duplicates += n.saturating_sub(1);
            // Lost: the job went past the step without its effect — it said
            // it was done, or (last_effect) a later step's effect exists.
            let went_past = match sc.jobs.done {
                DoneWhen::FinalAnswer => t.final_us.is_some(),
                DoneWhen::LastEffect => t.expected[i + 1..].iter().any(|l| ledger.contains_key(&(job, *l))),
            };
            if n == 0 && went_past {
                counts.lost_effects += 1;
            }
        }
        let ended = match sc.jobs.done {
            DoneWhen::FinalAnswer => t.final_us.is_some(),
            // Its last step's effect is in (earlier missing ones are lost).
            DoneWhen::LastEffect => match t.expected.last() {
                Some(l) => ledger.contains_key(&(job, *l)),
                None => t.final_us.is_some(),
            },
        };
        if !ended {
            counts.stuck_tasks += 1;
        }
        if t.done_us.is_some() {
            counts.done_tasks += 1;
        }
    }
    let faults: Vec<FaultResult> = sc.faults.iter().zip(&d.onsets).map(|(f, o)| fault_result(f, o, &d)).collect();
    let targets = sc.tier.targets();
    let (rto_s, rto_parts, rpo) = crate::drill::worst(&faults);
    let rpo_s = rpo.max_s();
    let horizon_us = sc.horizon.us();
    let violations = crate::drill::target_violations(&targets, rto_s, rpo_s, &counts, horizon_us);
    let met_targets = violations.is_empty();
    let models = [&shared.models[0], &shared.models[1], &shared.models[2]];
    let mut cost = Cost::default();
    for m in models {
        let st = lock(m).provider.stats();
        cost.model_calls += st.requests;
        cost.tokens += st.tokens_in + st.tokens_out;
        cost.usd += st.cost_micro_usd as f64 / 1e6;
    }
    let attempts = lock(&shared.attempts).attempts.len() as u64;
    let wall_s = s_of(d.end_us.saturating_sub(d.base_us));
    DrillResult {
        scenario: sc.name.clone(),
        purpose: sc.purpose.clone(),
        seed,
        tier: sc.tier.name().to_owned(),
        expect: sc.expect,
        verdict: crate::drill::verdict(sc.expect, met_targets),
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
        step_events: crate::drill::steps::StepLog::default(),
        counts,
        cost,
        baseline_cost: cost,
        standby_usd_per_month: 0.0,
        simulated_s: wall_s,
        events: attempts,
        calls: cost.model_calls + total_effects,
        event_digest: String::new(),
        trace: Vec::new(),
        host_names: Vec::new(),
        lanes: Vec::new(),
        lanes_more: 0,
        live: Some(LiveInfo {
            mode: "live",
            wall_s,
            jobs_submitted: u32::try_from(d.jobs.len()).unwrap_or(u32::MAX),
            process_exits: exits,
            unmeasured,
            measured_from,
        }),
    }
}

/// Fields of an effect's object the script's tool input also names: equal
/// when the effect acted on the script's decision.
const DECIDED_FIELDS: [&str; 5] = ["amount", "description", "payment_intent", "subject", "text"];

/// Whether `object` (what the fake made) carries `input`'s decision: every
/// field both name is equal (fields only one side has say nothing).
fn acted_on(object: &serde_json::Value, input: &serde_json::Value) -> bool {
    DECIDED_FIELDS.iter().all(|f| match (&object[*f], &input[*f]) {
        (serde_json::Value::Null, _) | (_, serde_json::Value::Null) => true,
        (o, i) => o == i,
    })
}

/// Replanned steps: side-effecting (job, step)s of the script with an
/// effect whose parameters are not the script's (the model fakes play one
/// decision per step, however often they are asked: an effect on another
/// one was re-derived, or made up, by the agent).
fn replanned(shared: &Shared, jobs: &BTreeMap<u32, JobTruth>) -> u64 {
    let mut steps = std::collections::BTreeSet::new();
    let ledgers = [lock(&shared.payment).ledger_json(), lock(&shared.email).ledger_json()];
    for row in ledgers.iter().filter_map(serde_json::Value::as_array).flatten() {
        let (Some(job), Some(step)) = (row["job"].as_u64(), row["step"].as_u64()) else { continue };
        let (Ok(job), Ok(step)) = (u32::try_from(job), u16::try_from(step)) else { continue };
        let Some(input) = jobs.get(&job).and_then(|t| t.inputs.get(&step)) else { continue };
        if !acted_on(&row["object"], input) {
            steps.insert((job, step));
        }
    }
    steps.len() as u64
}

/// One fault's RTO: onset → the jobs in flight at it, and the first job
/// submitted after it, done.
fn fault_result(f: &LiveFault, o: &Onset, d: &Driven) -> FaultResult {
    let mut r = FaultResult {
        kind: f.kind(),
        onset_s: None,
        rto_s: None,
        rto_parts: RtoParts::default(),
        rpo: RpoSurfaces::default(),
        in_flight_tasks: 0,
        rollback_s: None,
    };
    let Some(onset) = o.at_us else {
        // Never triggered: nothing to recover from.
        r.rto_s = Some(0.0);
        return r;
    };
    r.onset_s = Some(s_of(onset.saturating_sub(d.base_us)));
    let in_flight: Vec<&JobTruth> = d
        .jobs
        .values()
        .filter(|j| j.submitted_us.is_some_and(|s| s <= onset) && j.done_us.is_none_or(|t| t > onset))
        .collect();
    r.in_flight_tasks = in_flight.len();
    let next = d.jobs.values().filter(|j| j.submitted_us.is_some_and(|s| s > onset)).min_by_key(|j| j.submitted_us);
    let watched: Vec<&JobTruth> = in_flight.into_iter().chain(next).collect();
    let rto_us = watched.iter().try_fold(0, |acc: Micros, j| j.done_us.map(|t| acc.max(t.saturating_sub(onset))));
    r.rto_s = rto_us.map(s_of);
    if let Some(rto) = r.rto_s {
        let up = o.back_us.map_or(0.0, |b| s_of(b.saturating_sub(onset)));
        r.rto_parts.scale_up_s = up.min(rto);
        r.rto_parts.resume_s = rto - r.rto_parts.scale_up_s;
    }
    r
}
