//! Speed measurements of the simulator: what `agentdrill bench` prints and
//! what the criterion benches in `benches/` time.
//!
//! Every workload is built here, in code, so the command, the benches and
//! `BENCHMARKS.md` measure the same thing:
//! - [`throughput_scenario`]: the reference stack, no faults, `n` tasks of
//!   5 steps (`book_flight` and `approve_refund` alternate: 6 + 4 steps),
//!   256 workers, one arrival every 40 ms (below the stack's capacity, so
//!   the queue stays short and the cost per task stays flat);
//! - [`sandbox_24h`] and [`warm_standby_2h`]: the catalogue's 24-hour
//!   sandbox drill and 2-hour warm-standby region loss;
//! - [`generated_drill`]: the former stand-in for the fuzzer (`fuzz_cases_per_s` now runs `fuzz::fuzz`): a random drill
//!   of about 100 calls built from a seed;
//! - [`floor`]: the bare runtime with trivial handlers;
//! - [`peer`]: the same small workload on agentdrill's runtime and on
//!   turmoil.
//!
//! Peak memory comes from [`crate::heap::CountingAlloc`], a global
//! allocator that wraps the system allocator and counts the bytes currently
//! allocated and their peak. The `agentdrill` binary installs it; a program
//! that does not reports no peak.

pub mod fakes;
pub mod peer;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::components::env::{Phase, Timer};
use crate::components::ids::{HostId, Micros, RegionId, US_PER_MS};
use crate::components::provider::ErrorMode;
use crate::components::wire::Msg;
use crate::drill;
use crate::drill::scenario::{self, Dur, FaultSpec, RegionName, Scenario, When, WorkerTarget};
use crate::heap::peak_during;
use crate::sim::{Event, NetConfig, Runtime};

// ---------------------------------------------------------------- workloads

fn parse(name: &str, text: &str) -> Scenario {
    scenario::parse(Path::new(name), text).unwrap_or_else(|e| panic!("built-in bench scenario: {e}"))
}

/// Gap between arrivals of [`throughput_scenario`].
pub const THROUGHPUT_INTERVAL_MS: u64 = 40;

/// The reference stack without faults: `tasks` tasks of 5 steps on average
/// (`book_flight`, 6 steps, and `approve_refund`, 4 steps, alternate), 256
/// workers, one arrival every 40 ms, and a horizon 30 minutes past the last
/// arrival. No job waits long, so the client's resend timers are set to
/// 12 h: at the defaults a million tasks would be above
/// [`crate::drill::limits::MAX_CLIENT_RESENDS`].
pub fn throughput_scenario(tasks: u32) -> Scenario {
    if tasks > crate::drill::limits::MAX_TASKS {
        // Above what a scenario file may ask for (`MAX_TASKS`): the same
        // drill, sized in code (the opt-in 10M-task scaling run).
        let mut sc = throughput_scenario(crate::drill::limits::MAX_TASKS);
        sc.workload.tasks = tasks;
        sc.horizon = crate::drill::scenario::Dur(throughput_horizon_s(tasks) * 1_000);
        return sc;
    }
    let horizon_s = throughput_horizon_s(tasks);
    parse(
        "bench-throughput",
        &format!(
            "tier = \"batch\"\nhorizon = \"{horizon_s}s\"\n[stack]\nworkers = 256\n\
             [workload]\ntasks = {tasks}\ntemplates = [\"book_flight\", \"approve_refund\"]\n\
             arrival = \"uniform\"\ninterval = \"{THROUGHPUT_INTERVAL_MS}ms\"\n\
             submit_retry = \"12h\"\nresubmit_after = \"12h\"\n"
        ),
    )
}

/// [`throughput_scenario`]'s horizon: 30 minutes past the last arrival.
fn throughput_horizon_s(tasks: u32) -> u64 {
    u64::from(tasks) * THROUGHPUT_INTERVAL_MS / 1_000 + 1_800
}

/// The 24-hour sandbox drill of the catalogue
/// (`scenarios/region/sandbox-daily.toml`): cold standby, daily backups and
/// snapshots, 300 tasks, region A lost at 12 h.
pub fn sandbox_24h() -> Scenario {
    parse(
        "bench-sandbox-24h",
        "tier = \"sandbox\"\nhorizon = \"24h\"\n\
         [stack]\npattern = \"cold_standby\"\n\
         replication = { mode = \"async\", lag_ms = 0, interval_ms = 86400000 }\n\
         vector = { snapshot_interval = \"24h\" }\nfailover = { scale_up = \"30m\" }\n\
         [workload]\ntasks = 300\narrival = \"poisson\"\ninterval = \"4m\"\n\
         [[faults]]\nkind = \"region_loss\"\nat = \"12h\"\n",
    )
}

/// The 2-hour warm-standby drill of the catalogue
/// (`scenarios/region/warm-standby-loss.toml`): region A lost for good at
/// 6 min, asynchronous replication 1 s behind.
pub fn warm_standby_2h() -> Scenario {
    let mut sc = parse(
        "bench-warm-standby-2h",
        "tier = \"internal-ops\"\nhorizon = \"2h\"\n\
         [stack]\npattern = \"warm_standby\"\nworkers = 4\nstandby_workers = 1\n\
         replication = { mode = \"async\", lag_ms = 1000, interval_ms = 1000 }\n\
         [workload]\ntasks = 40\ninterval = \"10s\"\n\
         [[faults]]\nkind = \"region_loss\"\nat = \"6m\"\nregion = \"a\"\n",
    );
    sc.seed = 5;
    sc
}

/// Tasks in a [`generated_drill`]: 19 tasks of the three default templates
/// (6, 6 and 4 steps) make about 100 calls.
pub const GENERATED_TASKS: u32 = 19;

/// A random drill of about 100 calls, built from `seed`: the reference
/// stack (warm standby), [`GENERATED_TASKS`] tasks arriving every 5 s, a
/// 1-hour horizon and one fault drawn among a worker kill at a random
/// (job, step, phase), a zombie pause there, a kill at a random time, a
/// permanent loss of region A and a provider outage of a random mode.
///
/// This is a stand-in for the fuzzer of issue 4, which will replace it: it
/// measures how fast drills of that size run, not how good the generator is.
pub fn generated_drill(base: &Scenario, seed: u64) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sc = base.clone();
    sc.seed = seed;
    let templates = crate::components::workflow::builtin();
    let job = rng.random_range(0..GENERATED_TASKS);
    let tpl = &sc.workload.templates[job as usize % sc.workload.templates.len()];
    let steps = templates.iter().find(|t| t.name == tpl).map_or(1, |t| t.steps.len()) as u16;
    let step = rng.random_range(0..steps);
    let phase = Phase::ALL[rng.random_range(0..Phase::ALL.len())];
    let at_s = |rng: &mut ChaCha8Rng, lo: u64, hi: u64| Dur::secs(rng.random_range(lo..hi));
    let fault = match rng.random_range(0..5u32) {
        0 => FaultSpec::WorkerKill {
            at: When::Event { job, step, phase },
            worker: None,
            restart_after: Some(Dur::secs(30)),
        },
        1 => FaultSpec::WorkerPause {
            at: When::Event { job, step, phase },
            worker: None,
            duration: at_s(&mut rng, 30, 180),
        },
        2 => FaultSpec::WorkerKill {
            at: When::At(at_s(&mut rng, 10, 120)),
            worker: Some(WorkerTarget::Index(rng.random_range(0..sc.stack.workers))),
            restart_after: Some(Dur::secs(30)),
        },
        3 => FaultSpec::RegionLoss { at: at_s(&mut rng, 30, 600), region: RegionName::A, duration: None },
        _ => {
            let modes = [
                ErrorMode::ServerError,
                ErrorMode::Overloaded,
                ErrorMode::Timeout,
                ErrorMode::RateLimited { retry_after_ms: 20_000 },
                ErrorMode::StreamError { after_tokens: 100 },
            ];
            FaultSpec::ProviderOutage {
                at: at_s(&mut rng, 10, 120),
                provider: "anthropic".into(),
                mode: modes[rng.random_range(0..modes.len())],
                duration: at_s(&mut rng, 60, 1_200),
            }
        }
    };
    sc.faults = vec![fault];
    debug_assert!(scenario::validate(Path::new("generated"), &sc).is_ok());
    sc
}

/// The base every [`generated_drill`] starts from.
pub fn generated_base() -> Scenario {
    parse(
        "bench-generated",
        &format!(
            "tier = \"internal-ops\"\nhorizon = \"1h\"\n[workload]\ntasks = {GENERATED_TASKS}\ninterval = \"5s\"\n"
        ),
    )
}

// ---------------------------------------------------------------- floor

/// What the floor has to reproduce: a run's message deliveries and timer
/// events, with about as many concurrent actors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloorWork {
    /// Messages to deliver.
    pub deliveries: u64,
    /// Timer events to fire.
    pub timers: u64,
    /// Concurrent ping-pong pairs (the stack's workers).
    pub actors: u32,
}

/// The floor: `work.deliveries` messages and `work.timers` timers pushed
/// through the bare [`Runtime`] with the stack's own message and timer
/// types and network (so the same entry size and the same RNG draw per
/// send), by `work.actors` clients ping-ponging with one server and
/// sleeping on a timer in the run's ratio of timers to deliveries. The
/// handlers do nothing else. Returns the runtime's counters.
pub fn floor(work: FloorWork, seed: u64) -> crate::sim::RuntimeStats {
    let mut rt: Runtime<Msg, Timer> = Runtime::new(seed, NetConfig::default());
    let server = rt.add_host("server", RegionId(0));
    let first = rt.add_host("client-0", RegionId(0));
    for i in 1..work.actors.max(1) {
        rt.add_host(format!("client-{i}"), RegionId(0));
    }
    let mut sent = 0u64;
    let mut timers = 0u64;
    for i in 0..work.actors.max(1) {
        if sent < work.deliveries {
            sent += 1;
            rt.send(HostId(first.0 + i), server, Msg::Ping { seq: i });
        }
    }
    // Pongs and pings alternate; after each pong a client sleeps on a timer
    // while timers are behind the run's ratio, else pings again.
    while let Some(ev) = rt.step(Micros::MAX) {
        let client = match ev {
            Event::Deliver { from, to, msg: Msg::Ping { seq } } if to == server => {
                if sent < work.deliveries {
                    sent += 1;
                    rt.send(server, from, Msg::Pong { seq });
                }
                continue;
            }
            Event::Deliver { to, .. } => {
                if u128::from(timers) * u128::from(work.deliveries) < u128::from(sent) * u128::from(work.timers) {
                    timers += 1;
                    rt.set_timer(to, 10 * US_PER_MS, Timer::Watchdog);
                    continue;
                }
                to
            }
            Event::Timer { host, .. } => host,
            Event::Control(_) => continue,
        };
        if sent < work.deliveries {
            sent += 1;
            rt.send(client, server, Msg::Ping { seq: 0 });
        } else if timers < work.timers {
            timers += 1;
            rt.set_timer(client, 10 * US_PER_MS, Timer::Watchdog);
        }
    }
    rt.stats()
}

// ---------------------------------------------------------------- report

/// A target a figure is compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The value must be at least this.
    AtLeast(f64),
    /// The value must be at most this.
    AtMost(f64),
    /// The value must be below this.
    Below(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
            Target::Below(t) => v < t,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtLeast(t) => write!(f, ">= {t}"),
            Target::AtMost(t) => write!(f, "<= {t}"),
            Target::Below(t) => write!(f, "< {t}"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// Stable name (the JSON key people script against).
    pub name: &'static str,
    /// The value; `null` when it was not measured (skipped by `--quick`, or
    /// not available in this build).
    pub value: Option<f64>,
    /// Unit of `value`.
    pub unit: &'static str,
    /// The target, as `">= 250000"`, `"<= 5"` or `"< 60"`; `null` when
    /// there is none.
    pub target: Option<Target>,
    /// Whether the value meets the target (`null` without a value or target).
    pub met: Option<bool>,
    /// How it was measured.
    pub note: String,
}

/// The machine the figures come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPUs available to the process.
    pub cpus: usize,
    /// CPU model (from `/proc/cpuinfo`, when readable).
    pub cpu_model: String,
    /// Whether the peak-memory figures are available (the counting
    /// allocator is installed).
    pub counting_allocator: bool,
}

/// Everything `agentdrill bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// agentdrill version.
    pub version: &'static str,
    /// Smaller sizes (`--quick`).
    pub quick: bool,
    /// The machine.
    pub machine: Machine,
    /// The figures.
    pub figures: Vec<Figure>,
}

impl Report {
    /// A figure by name.
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Smaller sizes, fewer repetitions, no 100k and 1M scaling runs.
    pub quick: bool,
    /// The catalogue to time (`scenarios/` by default).
    pub catalogue: PathBuf,
    /// The `agentdrill` binary, to run the fakes' load generator in a child
    /// process (`agentdrill loadgen`); None skips the fake figures.
    pub loadgen_exe: Option<PathBuf>,
    /// Also run the scaling workload at 10M tasks (`scaling_10m_*`, peak
    /// target 16 GiB): opt-in, it takes minutes and about ten times the
    /// 1M run's memory. It runs with `quick` too (which skips only the
    /// 100k and 1M sizes then).
    pub ten_million: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { quick: false, catalogue: PathBuf::from("scenarios"), loadgen_exe: None, ten_million: false }
    }
}

/// Wall seconds of `f`, and its result.
pub fn timed<R>(f: impl FnOnce() -> R) -> (R, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

/// The median of `reps` timings of `f` (at least one run), and the last result.
pub fn median_wall<R>(reps: usize, mut f: impl FnMut() -> R) -> (R, f64) {
    let mut walls = Vec::with_capacity(reps.max(1));
    let mut last = None;
    for _ in 0..reps.max(1) {
        let (r, w) = timed(&mut f);
        walls.push(w);
        last = Some(r);
    }
    (last.expect("ran at least once"), median(&mut walls))
}

/// The median of a non-empty list (the upper one of an even count).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        counting_allocator: crate::heap::installed(),
    }
}

fn fig(name: &'static str, value: Option<f64>, unit: &'static str, target: Option<Target>, note: String) -> Figure {
    let met = match (value, target) {
        (Some(v), Some(t)) => Some(t.met(v)),
        _ => None,
    };
    Figure { name, value, unit, target, met, note }
}

/// The process's resident-set high-water mark (`VmHWM` in
/// `/proc/self/status`), where the system reports it.
fn vm_hwm_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The catalogue's scenario files (what `agentdrill run DIR` runs).
pub fn catalogue_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    crate::drill::loader::scenario_files(dir)
}

/// Loads and runs every drill of a catalogue (what `agentdrill run DIR`
/// does, without printing). Returns the number of drills.
pub fn run_catalogue(files: &[PathBuf]) -> Result<usize, scenario::ScenarioError> {
    for f in files {
        let sc = scenario::load(f)?;
        std::hint::black_box(drill::run(&sc, sc.seed));
    }
    Ok(files.len())
}

/// Scaling sizes: label, tasks, repetitions.
const SCALING: [(&str, u32, usize); 4] =
    [("1k", 1_000, 5), ("10k", 10_000, 3), ("100k", 100_000, 3), ("1m", 1_000_000, 1)];

/// Runs every measurement. `progress` is told what is being measured.
pub fn run(opts: &Options, mut progress: impl FnMut(&str)) -> Report {
    let quick = opts.quick;
    let p: &mut dyn FnMut(&str) = &mut progress;
    let mut figures = scaling_figures(quick, opts.ten_million, p);
    figures.extend(acceleration_figures(quick, p));
    figures.extend(catalogue_figures(opts, p));
    figures.extend(fuzz_figures(quick, p));
    figures.extend(floor_figures(quick, p));
    figures.extend(peer_figures(quick, p));
    figures.extend(fake_figures(opts, p));
    figures.extend(live_figures(opts, p));
    figures.sort_by_key(|f| ORDER.iter().position(|n| *n == f.name).unwrap_or(ORDER.len()));
    Report { version: env!("CARGO_PKG_VERSION"), quick, machine: machine(), figures }
}

/// Scaling to 1M tasks, and tool calls per second from the largest size run.
fn scaling_figures(quick: bool, ten_million: bool, progress: &mut dyn FnMut(&str)) -> Vec<Figure> {
    let mut figures = Vec::new();
    let mut calls_per_s = None;
    let mut calls_note = String::new();
    let mut curve = Vec::new();
    let sizes = SCALING.into_iter().chain(ten_million.then_some(("10m", 10_000_000, 1)));
    for (label, tasks, reps) in sizes {
        // `--ten-million` runs its size even with `--quick` (which skips
        // 100k and 1M): `bench --quick --ten-million` is the 10M drill
        // beside the 10k one, without the 1M run's time and memory.
        let skip = quick && tasks > 10_000 && tasks < 10_000_000;
        let names: (&'static str, &'static str, &'static str) = match label {
            "1k" => ("scaling_1k_wall_s", "scaling_1k_peak_bytes", "scaling_1k_cost_per_task_us"),
            "10k" => ("scaling_10k_wall_s", "scaling_10k_peak_bytes", "scaling_10k_cost_per_task_us"),
            "100k" => ("scaling_100k_wall_s", "scaling_100k_peak_bytes", "scaling_100k_cost_per_task_us"),
            "1m" => ("scaling_1m_wall_s", "scaling_1m_peak_bytes", "scaling_1m_cost_per_task_us"),
            _ => ("scaling_10m_wall_s", "scaling_10m_peak_bytes", "scaling_10m_cost_per_task_us"),
        };
        const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
        let (wall_target, peak_target) = match tasks {
            1_000_000 => (Some(Target::Below(15.0)), Some(Target::Below(2.0 * GIB))),
            10_000_000 => (None, Some(Target::Below(16.0 * GIB))),
            _ => (None, None),
        };
        if skip {
            figures.push(fig(names.0, None, "s", wall_target, "skipped by --quick".into()));
            figures.push(fig(names.1, None, "bytes", peak_target, "skipped by --quick".into()));
            figures.push(fig(names.2, None, "µs/task", None, "skipped by --quick".into()));
            continue;
        }
        progress(&format!("scaling: {tasks} tasks × 5 steps"));
        let sc = throughput_scenario(tasks);
        let ((r, peak), wall) = median_wall(if quick { 1 } else { reps }, || peak_during(|| drill::run(&sc, sc.seed)));
        assert_eq!(r.stuck_tasks, 0, "the scaling workload finishes");
        let note = format!(
            "drill::run of {tasks} tasks (reference stack, no faults, 256 workers, an arrival every {THROUGHPUT_INTERVAL_MS} ms): {} events, {} calls; median of {} run(s); peak = heap bytes above the start (counting allocator)",
            r.events,
            r.calls,
            if quick { 1 } else { reps }
        );
        let note = match (tasks, vm_hwm_bytes()) {
            (1_000_000.., Some(hwm)) => {
                format!("{note}; cross-check: the process's resident high-water mark (VmHWM) is {hwm} bytes")
            }
            _ => note,
        };
        curve.push((tasks, wall, r.calls));
        // Calls per second come from the 100k run (10k with --quick): large,
        // but not yet bound by memory as the 1M run is.
        if tasks == if quick { 10_000 } else { 100_000 } {
            calls_per_s = Some(r.calls as f64 / wall);
            calls_note = format!(
                "model + tool + memory calls completed ÷ wall seconds, reference stack, no faults, {tasks} tasks × 5 steps ({} calls in {wall:.3} s, one core)",
                r.calls
            );
        }
        figures.push(fig(names.0, Some(wall), "s", wall_target, note.clone()));
        figures.push(fig(
            names.2,
            Some(wall / f64::from(tasks) * 1e6),
            "µs/task",
            None,
            format!("wall ÷ tasks of the {tasks}-task run ({} events per task)", r.events / u64::from(tasks)),
        ));
        figures.push(fig(
            names.1,
            peak.map(|p| p as f64),
            "bytes",
            peak_target,
            if peak.is_some() { note } else { "the counting allocator is not installed in this program".into() },
        ));
    }
    figures.insert(0, fig("tool_calls_per_s", calls_per_s, "calls/s", Some(Target::AtLeast(600_000.0)), calls_note));
    let per_task = |t: u32, w: f64| w / f64::from(t) * 1e6;
    if let Some((t1, w1, _)) = curve.last().copied() {
        figures.push(fig(
            "scaling_cost_per_task_us",
            Some(per_task(t1, w1)),
            "µs/task",
            None,
            format!("wall per task at the largest size run ({t1} tasks); each size has its scaling_*_cost_per_task_us"),
        ));
    }
    let at = |n: u32| curve.iter().find(|(t, _, _)| *t == n).map(|&(t, w, _)| per_task(t, w));
    let (ratio, ratio_note) = match (at(10_000), curve.last().copied()) {
        (Some(c0), Some((t1, w1, _))) if t1 > 10_000 => (
            Some(per_task(t1, w1) / c0),
            format!("µs per task at {t1} tasks ({:.2}) ÷ at 10k tasks ({c0:.2}), this run", per_task(t1, w1)),
        ),
        _ => (None, "needs a run above 10k tasks (skipped by --quick)".to_owned()),
    };
    figures.push(fig("scaling_cost_ratio_largest_over_10k", ratio, "x", Some(Target::Below(1.3)), ratio_note));
    // The target is at 1M; with `--ten-million` the largest size is
    // 10M, so the 1M ratio is reported on its own too.
    let (ratio_1m, note_1m) = match (at(10_000), at(1_000_000)) {
        (Some(c0), Some(c1)) => {
            (Some(c1 / c0), format!("µs per task at 1M tasks ({c1:.2}) ÷ at 10k tasks ({c0:.2}), this run"))
        }
        _ => (None, "needs the 1M run (skipped by --quick)".to_owned()),
    };
    figures.push(fig("scaling_cost_ratio_1m_over_10k", ratio_1m, "x", Some(Target::Below(1.3)), note_1m));

    figures
}

/// Time acceleration of a 24 h sandbox drill and a 2 h warm-standby drill.
fn acceleration_figures(quick: bool, progress: &mut dyn FnMut(&str)) -> Vec<Figure> {
    let mut figures = Vec::new();
    let reps = if quick { 1 } else { 5 };
    for (name, wall_name, sc, target_ms) in [
        ("acceleration_24h", "drill_24h_wall_ms", sandbox_24h(), Some(Target::Below(10.0))),
        ("acceleration_warm_standby_2h", "drill_warm_standby_2h_wall_ms", warm_standby_2h(), None),
    ] {
        progress(&format!("acceleration: {}", sc.name));
        let (r, wall) = median_wall(reps, || drill::run(&sc, sc.seed));
        let note = format!(
            "simulated {} s ÷ wall of drill::run (the drill with its fault and the fault-free baseline run: {} + baseline events); median of {reps}",
            r.simulated_s, r.events
        );
        figures.push(fig(name, Some(r.simulated_s / wall), "x", None, note.clone()));
        figures.push(fig(wall_name, Some(wall * 1e3), "ms", target_ms, note));
    }

    figures
}

/// Wall time of the whole catalogue.
fn catalogue_figures(opts: &Options, progress: &mut dyn FnMut(&str)) -> Vec<Figure> {
    let mut figures = Vec::new();
    let quick = opts.quick;
    progress("catalogue");
    let cat = catalogue_files(&opts.catalogue);
    let figure = match cat {
        Ok(files) if !files.is_empty() => {
            let (n, wall) = median_wall(if quick { 1 } else { 3 }, || run_catalogue(&files));
            match n {
                Ok(n) => fig(
                    "catalogue_wall_s",
                    Some(wall),
                    "s",
                    Some(Target::Below(2.0)),
                    format!(
                        "load and run (with baselines) every drill under {}: {n} drills; median of {}",
                        opts.catalogue.display(),
                        if quick { 1 } else { 3 }
                    ),
                ),
                Err(e) => {
                    fig("catalogue_wall_s", None, "s", Some(Target::Below(2.0)), format!("unusable catalogue: {e}"))
                }
            }
        }
        _ => fig(
            "catalogue_wall_s",
            None,
            "s",
            Some(Target::Below(2.0)),
            format!("no scenario files under {}", opts.catalogue.display()),
        ),
    };
    figures.push(figure);

    figures
}

/// The fuzzer: generated drills under the reference policy, each
/// simulated and checked against every invariant.
fn fuzz_figures(quick: bool, progress: &mut dyn FnMut(&str)) -> Vec<Figure> {
    let mut figures = Vec::new();
    progress("fuzz");
    let cases = if quick { 200 } else { 5_000 };
    let jobs = crate::par::default_jobs();
    crate::fuzz::quiet_panics();
    let measure = |jobs: usize| {
        let opts = crate::fuzz::FuzzOptions { cases, seed: 1, jobs, ..crate::fuzz::FuzzOptions::default() };
        crate::fuzz::fuzz(&opts)
    };
    // Every core and one core take turns, so that a change of load on the
    // machine hits both sides of each pair; the figures are medians (5,000
    // cases take well under a second: a single run swings with the load).
    let reps = if quick { 1 } else { 3 };
    let mut runs: Vec<_> = (0..reps).map(|_| (measure(jobs), measure(1))).collect();
    let rates: Option<Vec<(f64, f64)>> =
        runs.iter().map(|(a, o)| Some((a.as_ref().ok()?.cases_per_s(), o.as_ref().ok()?.cases_per_s()))).collect();
    let (all, _) = runs.pop().expect("at least one run");
    let value = rates.as_ref().map(|r| median(&mut r.iter().map(|p| p.0).collect::<Vec<_>>()));
    let note = match &all {
        Ok(r) => format!(
            "agentdrill fuzz --policy reference --seed 1 --cases {cases} --jobs {jobs} (every core), median of {reps} run(s): {} generated drills (up to {} faults from the whole catalogue, none skipped), each simulated and checked against every recovery invariant{}",
            r.cases_run,
            crate::fuzz::MAX_FAULTS,
            r.finding.as_ref().map_or_else(String::new, |f| format!("; stopped at a violation in case {}", f.case))
        ),
        Err(e) => format!("the fuzz run failed: {e}"),
    };
    figures.push(fig("fuzz_cases_per_s", value, "cases/s", Some(Target::AtLeast(10_000.0)), note));
    let speedup = match &rates {
        Some(r) => fig(
            "fuzz_parallel_speedup",
            Some(median(&mut r.iter().map(|(a, o)| a / o).collect::<Vec<_>>())),
            "x",
            None,
            format!(
                "cases/s with --jobs {jobs} ÷ cases/s with --jobs 1, the same {cases} cases back to back, the median of {reps} such pair(s) in this run ({}; the machine's other load shares the cores)",
                r.iter().map(|(a, o)| format!("{a:.0} vs {o:.0}")).collect::<Vec<_>>().join(", ")
            ),
        ),
        None => fig("fuzz_parallel_speedup", None, "x", None, "a fuzz run failed".into()),
    };
    figures.push(speedup);

    figures
}

/// The reference stack against the bare runtime with trivial handlers.
fn floor_figures(quick: bool, progress: &mut dyn FnMut(&str)) -> Vec<Figure> {
    let mut figures = Vec::new();
    progress("floor");
    let tasks = if quick { 2_000 } else { 20_000 };
    let sc = throughput_scenario(tasks);
    let reps = if quick { 3 } else { 7 };
    let stats = drill::simulate(&sc, sc.seed, false).stack.rt.stats();
    let timers = stats.events - stats.delivered;
    let work = FloorWork { deliveries: stats.delivered, timers, actors: sc.stack.workers };
    // Stack and floor alternate, and the ratio is taken pair by pair, so a
    // change of load on the machine hits both sides of each ratio.
    let (mut ratios, mut stack_walls, mut floor_walls) = (Vec::new(), Vec::new(), Vec::new());
    let mut fstats = stats;
    for _ in 0..reps {
        let (_, s) = timed(|| drill::simulate(&sc, sc.seed, false));
        let (f, w) = timed(|| floor(work, sc.seed));
        fstats = f;
        ratios.push(s / w);
        stack_walls.push(s);
        floor_walls.push(w);
    }
    let (ratio, stack_wall, floor_wall) = (median(&mut ratios), median(&mut stack_walls), median(&mut floor_walls));
    debug_assert_eq!(fstats.delivered, work.deliveries);
    figures.push(fig(
        "stack_over_floor",
        Some(ratio),
        "x",
        Some(Target::AtMost(5.0)),
        format!(
            "drill::simulate of {tasks} tasks ({} deliveries + {timers} timers and controls: median {stack_wall:.4} s) ÷ the same counts through the bare runtime with trivial handlers ({} events: median {floor_wall:.4} s); median of {reps} ratios of back-to-back pairs",
            stats.delivered, fstats.events
        ),
    ));
    figures.push(fig(
        "engine_events_per_s",
        Some(fstats.events as f64 / floor_wall),
        "events/s",
        None,
        "the floor's events ÷ its wall seconds".into(),
    ));
    figures.push(fig(
        "stack_events_per_s",
        Some(stats.events as f64 / stack_wall),
        "events/s",
        None,
        "the reference stack's events ÷ its wall seconds".into(),
    ));

    figures
}

/// The same workload on turmoil.
fn peer_figures(quick: bool, progress: &mut dyn FnMut(&str)) -> Vec<Figure> {
    let mut figures = Vec::new();
    progress("turmoil peer");
    let p = peer::PeerParams::new(if quick { 40 } else { 200 });
    let (_, a_wall) = median_wall(if quick { 3 } else { 21 }, || peer::run_agentdrill(&p));
    figures.push(peer_figure(&p, quick));
    figures.push(peer_busy_figure(&peer::PeerParams::busy(if quick { 40 } else { 400 }), quick));
    figures.push(fig(
        "peer_agentdrill_wall_s",
        Some(a_wall),
        "s",
        None,
        format!(
            "{} tasks × {} calls, {} workers, one crash, on agentdrill's runtime; median of {}",
            p.tasks,
            p.calls,
            p.workers,
            if quick { 3 } else { 21 }
        ),
    ));

    figures
}

/// The live fakes over loopback, driven by a load generator in a child process.
fn fake_figures(opts: &Options, progress: &mut dyn FnMut(&str)) -> Vec<Figure> {
    progress("live fakes over loopback");
    fakes::figures(opts.loadgen_exe.as_deref(), opts.quick)
}

/// The live drill timed by `live_kill_drill_wall_s` (under the catalogue folder).
pub const LIVE_KILL_DRILL: &str = "live/python-worker-kill-after-commit.toml";

/// A live worker-kill drill of 10 jobs on real processes (the python agent,
/// killed with its charge in flight), start to end: the processes' start,
/// the drill and the stop.
fn live_figures(opts: &Options, progress: &mut dyn FnMut(&str)) -> Vec<Figure> {
    progress("live worker-kill drill");
    let file = opts.catalogue.join(LIVE_KILL_DRILL);
    let target = Some(Target::Below(20.0));
    let name = "live_kill_drill_wall_s";
    let sc = match crate::live::scenario::load(&file) {
        Ok(l) => l.scenario,
        Err(e) => return vec![fig(name, None, "s", target, format!("unusable live drill: {e}"))],
    };
    let (r, wall) = timed(|| crate::live::drill::run(&sc, sc.seed));
    let f = match r {
        Ok(r) if r.verdict == "pass" => fig(
            name,
            Some(wall),
            "s",
            target,
            format!(
                "{}: {} jobs, the worker SIGKILLed at a kill point and restarted; processes' start to stop (RTO {:.2} s, {} duplicates); needs the SDK venv of `cargo xtask test` (AGENTDRILL_PYTHON)",
                file.display(),
                sc.jobs.count,
                r.rto_s.unwrap_or(f64::NAN),
                r.duplicates
            ),
        ),
        Ok(r) => {
            fig(name, None, "s", target, format!("{}: verdict {} ({:?})", file.display(), r.verdict, r.violations))
        }
        Err(e) => fig(
            name,
            None,
            "s",
            target,
            format!("{}: {e} (run `cargo xtask test` once for the SDK venv)", file.display()),
        ),
    };
    vec![f]
}

/// The order figures are printed in.
const ORDER: &[&str] = &[
    "tool_calls_per_s",
    "acceleration_24h",
    "drill_24h_wall_ms",
    "acceleration_warm_standby_2h",
    "drill_warm_standby_2h_wall_ms",
    "catalogue_wall_s",
    "fuzz_cases_per_s",
    "fuzz_parallel_speedup",
    "scaling_1k_wall_s",
    "scaling_10k_wall_s",
    "scaling_100k_wall_s",
    "scaling_1m_wall_s",
    "scaling_10m_wall_s",
    "scaling_1k_peak_bytes",
    "scaling_10k_peak_bytes",
    "scaling_100k_peak_bytes",
    "scaling_1m_peak_bytes",
    "scaling_10m_peak_bytes",
    "scaling_cost_per_task_us",
    "scaling_1k_cost_per_task_us",
    "scaling_10k_cost_per_task_us",
    "scaling_100k_cost_per_task_us",
    "scaling_1m_cost_per_task_us",
    "scaling_10m_cost_per_task_us",
    "scaling_cost_ratio_largest_over_10k",
    "scaling_cost_ratio_1m_over_10k",
    "stack_over_floor",
    "stack_events_per_s",
    "engine_events_per_s",
    "speedup_vs_turmoil",
    "speedup_vs_turmoil_busy",
    "peer_agentdrill_wall_s",
    "peer_turmoil_wall_s",
    "fake_payment_rps",
    "fake_payment_p50_ms",
    "fake_payment_p99_ms",
    "fake_anthropic_stream_rps",
    "fake_anthropic_stream_p50_ms",
    "fake_anthropic_stream_p99_ms",
    "fake_payment_server_cpu_us",
    "fake_payment_client_cpu_us",
    "fake_anthropic_stream_server_cpu_us",
    "fake_anthropic_stream_client_cpu_us",
    "fake_loadgen_ceiling_rps",
    "fake_loadgen_ceiling_p50_ms",
    "fake_loadgen_ceiling_p99_ms",
    "fake_loadgen_ceiling_server_cpu_us",
    "fake_loadgen_ceiling_client_cpu_us",
    "live_kill_drill_wall_s",
];

/// Times turmoil and agentdrill back to back `reps` times and returns the
/// median of the pairs' ratios, the median wall of each side, and both
/// outcomes, checked equal. Both sides are measured alike: one untimed
/// run of each first (a process's first run pays its first touches), then
/// each side's wall is a median of warm runs (turmoil 3, agentdrill 9: one
/// run of it is a fraction of a millisecond).
#[cfg(feature = "peer")]
fn peer_pairs(p: &peer::PeerParams, reps: usize) -> (f64, f64, f64, peer::PeerOutcome) {
    let (mut ratios, mut a_walls, mut t_walls) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = None;
    std::hint::black_box((peer::run_turmoil(p), peer::run_agentdrill(p)));
    for _ in 0..reps.max(1) {
        let (t, t_wall) = median_wall(3, || peer::run_turmoil(p));
        let (a, a_wall) = median_wall(9, || peer::run_agentdrill(p));
        assert_eq!((a.effects, a.requests, a.duplicates), (t.effects, t.requests, t.duplicates), "equal work");
        ratios.push(t_wall / a_wall);
        a_walls.push(a_wall);
        t_walls.push(t_wall);
        out = Some(a);
    }
    (median(&mut ratios), median(&mut t_walls), median(&mut a_walls), out.expect("ran at least once"))
}

#[cfg(feature = "peer")]
fn peer_figure(p: &peer::PeerParams, quick: bool) -> Figure {
    let reps = if quick { 1 } else { 3 };
    let (ratio, t_wall, a_wall, a) = peer_pairs(p, reps);
    fig(
        "speedup_vs_turmoil",
        Some(ratio),
        "x",
        Some(Target::AtLeast(10.0)),
        format!(
            "turmoil wall ÷ agentdrill wall for the same workload, median of {reps} back-to-back pairs after an untimed run of each side (turmoil {t_wall:.4} s, a median of 3 runs; agentdrill {a_wall:.6} s, a median of 9): {} tasks × {} request/response calls to a Stripe-style payment API from {} workers, 1 ms links, 300 ms processing, worker 0 down from {:.3} s for 30 s; {} requests and {} effects on both sides, {:.1} s simulated",
            p.tasks,
            p.calls,
            p.workers,
            p.crash_at_us as f64 / 1e6,
            a.requests,
            a.effects,
            a.finished_us as f64 / 1e6
        ),
    )
}

#[cfg(feature = "peer")]
fn peer_busy_figure(p: &peer::PeerParams, quick: bool) -> Figure {
    let reps = if quick { 1 } else { 3 };
    let (ratio, t_wall, a_wall, a) = peer_pairs(p, reps);
    fig(
        "speedup_vs_turmoil_busy",
        Some(ratio),
        "x",
        Some(Target::AtLeast(100.0)),
        format!(
            "the cost per message against turmoil's: speedup_vs_turmoil's workload with 1 ms processing and a 10 ms outage, so turmoil's 1 ms ticks are rarely idle and the ratio is the cost per message: {} tasks × {} calls, {} requests on both sides, {:.3} s simulated; median of {reps} pairs after an untimed run of each side (turmoil {t_wall:.4} s, a median of 3 runs; agentdrill {a_wall:.6} s, a median of 9)",
            p.tasks,
            p.calls,
            a.requests,
            a.finished_us as f64 / 1e6
        ),
    )
}

#[cfg(not(feature = "peer"))]
fn peer_busy_figure(_: &peer::PeerParams, _: bool) -> Figure {
    fig("speedup_vs_turmoil_busy", None, "x", None, "built without the `peer` feature (turmoil)".into())
}

#[cfg(not(feature = "peer"))]
fn peer_figure(_: &peer::PeerParams, _: bool) -> Figure {
    fig(
        "speedup_vs_turmoil",
        None,
        "x",
        Some(Target::AtLeast(10.0)),
        "built without the `peer` feature (turmoil); `cargo bench --bench vs_turmoil` measures it".into(),
    )
}

/// The table `agentdrill bench` prints.
pub fn table(r: &Report) -> String {
    #[derive(tabled::Tabled)]
    struct Row {
        figure: &'static str,
        value: String,
        unit: &'static str,
        target: String,
        met: &'static str,
    }
    let rows: Vec<Row> = r
        .figures
        .iter()
        .map(|f| Row {
            figure: f.name,
            value: f.value.map_or_else(|| "-".into(), fmt_value),
            unit: f.unit,
            target: f.target.map_or_else(String::new, |t| t.to_string()),
            met: match f.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            },
        })
        .collect();
    let mut out = format!(
        "agentdrill {} bench{} on {} ({} CPUs)\n",
        r.version,
        if r.quick { " --quick" } else { "" },
        r.machine.cpu_model,
        r.machine.cpus
    );
    out.push_str(&tabled::Table::new(rows).with(tabled::settings::Style::sharp()).to_string());
    out.push('\n');
    out
}

fn fmt_value(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.6}")
    } else if v.abs() >= 1_000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

/// The JSON `agentdrill bench --format json` prints:
/// `{"figures":[{"name","value","unit","target","met","note"}], ...}`.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).expect("the report serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_drills_are_valid_and_about_a_hundred_calls() {
        let base = generated_base();
        let mut calls = 0;
        for seed in 1..=20 {
            let sc = generated_drill(&base, seed);
            scenario::validate(Path::new("g"), &sc).expect("valid");
            calls += drill::run(&sc, seed).calls;
        }
        let avg = calls / 20;
        assert!((80..=140).contains(&avg), "about 100 calls per drill, got {avg}");
    }

    #[test]
    fn the_floor_reproduces_the_counts() {
        let work = FloorWork { deliveries: 10_000, timers: 3_000, actors: 16 };
        let s = floor(work, 1);
        assert_eq!(s.delivered, 10_000);
        assert_eq!(s.events - s.delivered, 3_000);
    }
}
