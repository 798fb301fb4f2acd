//! The `agentdrill` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

mod cli;
mod cli_live;
mod gameday_cli;

/// Counts heap bytes per thread, so a drill's memory budget holds, and
/// process-wide once `bench` starts counting, so it can report peak memory
/// (see `agentdrill::heap`).
#[global_allocator]
static ALLOC: agentdrill::heap::CountingAlloc = agentdrill::heap::CountingAlloc;

/// Chaos and disaster-recovery drills for AI-agent stacks: RTO, RPO and
/// duplicate side effects measured from ground truth.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = "Examples:\n  agentdrill run scenarios/                      run the catalogue, print the table\n  agentdrill run scenarios/ --out reports/       also write report.json, junit.xml, report.md\n  agentdrill explain scenarios/worker/kill-in-flight.toml\n  agentdrill validate scenarios/\n\nLogs: RUST_LOG=info agentdrill run scenarios/. Colour: off when NO_COLOR is set.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What one simulated drill may spend before it is stopped (exit 2).
#[derive(Clone, Copy, clap::Args)]
struct BudgetArgs {
    /// Most simulated events one drill may handle, its fault-free baseline
    /// included, counting messages and timers the simulator dropped (a send
    /// to a dead host); 3 to 10 million a second on one core, the fewer the
    /// more memory the drill holds.
    #[arg(long, value_name = "N", default_value_t = agentdrill::drill::limits::MAX_DRILL_EVENTS)]
    max_events: u64,
    /// Most heap one run of a drill may hold, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = agentdrill::drill::limits::MAX_DRILL_HEAP_BYTES >> 20)]
    max_memory_mib: u64,
}

impl BudgetArgs {
    fn budget(&self) -> agentdrill::drill::Budget {
        agentdrill::drill::Budget {
            max_events: self.max_events,
            max_heap_bytes: self.max_memory_mib.saturating_mul(1 << 20),
        }
    }
}

/// Names the stack whose matrix drill went past its budget; exit 2.
fn matrix_over_budget(stack: &std::path::Path, e: &agentdrill::drill::OverBudget) -> ExitCode {
    eprintln!("error: {}: a drill of the matrix stopped: {e}", stack.display());
    ExitCode::from(2)
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// A table: one row per drill, then why each failed drill failed.
    Table,
    /// JSON: every measurement, the file, its content hash and the version.
    Json,
    /// JUnit XML: one test case per drill.
    Junit,
    /// Markdown: a summary table and one section per drill.
    Markdown,
    /// HTML: one self-contained page (inline SVG and CSS, no script) with a
    /// card and a timeline per drill and the runbook; prints to PDF.
    Html,
}

/// What `matrix` and `bench` print.
#[derive(Clone, Copy, ValueEnum)]
enum TableOrJson {
    /// A table for people.
    Table,
    /// JSON for tools.
    Json,
}

/// The processes of the live reference stack.
#[derive(Subcommand)]
enum StackProcess {
    /// The orchestrator: takes jobs (POST /jobs {"job": N, "workflow": NAME}),
    /// grants leases with fencing tokens, keeps its store in PostgreSQL.
    #[command(
        after_help = "Examples:\n  AGENTDRILL_LISTEN_ADDR=127.0.0.1:9200 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres agentdrill stack orchestrator\n  AGENTDRILL_LISTEN_ADDR=127.0.0.1:9200 agentdrill stack orchestrator --memory --lease-ms 3000"
    )]
    Orchestrator {
        /// An anti-pattern to run with (repeatable; after AGENTDRILL_POLICY).
        #[arg(long = "anti-pattern", value_name = "NAME")]
        anti_patterns: Vec<String>,
        /// Lease duration in ms (default: the policy's 30 000, or AGENTDRILL_LEASE_MS).
        #[arg(long)]
        lease_ms: Option<u64>,
        /// Keep the store in memory instead of DATABASE_URL (lost on a crash).
        #[arg(long)]
        memory: bool,
    },
    /// A worker: leases tasks from the orchestrator and runs them against the fakes.
    #[command(
        after_help = "Examples:\n  eval \"$(agentdrill serve --port 9100 | grep ^export)\"\n  AGENTDRILL_LISTEN_ADDR=127.0.0.1:9201 AGENTDRILL_REPLICA=0 AGENTDRILL_PEER_ORCHESTRATOR_URL=http://127.0.0.1:9200 agentdrill stack worker\n  ... agentdrill stack worker --anti-pattern key_from_model_output"
    )]
    Worker {
        /// An anti-pattern to run with (repeatable; after AGENTDRILL_POLICY).
        #[arg(long = "anti-pattern", value_name = "NAME")]
        anti_patterns: Vec<String>,
        /// Lease duration in ms the worker renews at a third of (default:
        /// the policy's, or AGENTDRILL_LEASE_MS); match the orchestrator's.
        #[arg(long)]
        lease_ms: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run drills (files or folders of *.toml) and print the verdicts.
    ///
    /// Exit code: 0 every drill passed (anti-pattern drills pass when
    /// caught), 1 a drill failed, 2 unusable input.
    ///
    /// Example: agentdrill run scenarios/ --seed 7 --format json
    #[command(
        after_help = "Examples:\n  agentdrill run scenarios/\n  agentdrill run scenarios/worker/ scenarios/region/warm-standby-loss.toml --seed 7\n  agentdrill run scenarios/ --format junit > junit.xml\n  agentdrill run scenarios/ --format html > report.html\n  agentdrill run scenarios/ --jobs 1          one drill at a time (the reports are the same for every N)\n  agentdrill run scenarios/ --out            writes reports/<UTC time>/{report.json,junit.xml,report.md,report.html}\n                                             and appends to reports/history.jsonl"
    )]
    Run {
        /// Scenario files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Override every scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Also write report.json, junit.xml, report.md and report.html into
        /// DIR/<UTC time>/ (DIR defaults to reports/), and append one record
        /// per drill to DIR/history.jsonl. Files are written atomically.
        #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "reports")]
        out: Option<PathBuf>,
        /// Drills run at once, one per thread (default: the number of
        /// cores). Results and reports are in file order for every N.
        #[arg(long, value_parser = agentdrill::par::parse_jobs, default_value_t = agentdrill::par::default_jobs())]
        jobs: usize,
        #[command(flatten)]
        budget: BudgetArgs,
    },
    /// Run every disruption type (worker, provider, network, region, data
    /// corruption) against a stack over several seeds and print which tiers
    /// it measurably meets, per disruption type, with the worst RTO and RPO.
    ///
    /// STACK is a scenario file; its faults are ignored. With --patterns the
    /// same is done for the active-active, warm-standby and cold-standby
    /// patterns built from the stack, side by side, with their standby cost.
    ///
    /// Example: agentdrill matrix fixtures/stacks/warm-standby.toml --patterns
    Matrix {
        /// The stack description (a scenario file).
        stack: PathBuf,
        /// Seeds per drill (1..=N).
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Compare the three failover patterns built from this stack.
        #[arg(long)]
        patterns: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
    /// Tell a drill in words: faults, detection, failover, recovery, numbers.
    ///
    /// What a game-day facilitator reads aloud: the tier's claim, the stack,
    /// each fault, what the stack did and when (detection, failover, lease
    /// expiry, reconciliation, resume), and how each measurement was reached.
    ///
    /// Example: agentdrill explain scenarios/worker/kill-in-flight.toml
    #[command(
        after_help = "Examples:\n  agentdrill explain scenarios/worker/kill-in-flight.toml\n  agentdrill explain scenarios/region/warm-standby-loss.toml --seed 3"
    )]
    Explain {
        /// Scenario file.
        file: PathBuf,
        /// Override the seed.
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        budget: BudgetArgs,
    },
    /// Print the JSON Schema of scenario files (generated from the types).
    ///
    /// Point an editor at it to check scenarios as you type.
    #[command(
        after_help = "Examples:\n  agentdrill schema > scenario.schema.json\n  agentdrill schema --live > live-scenario.schema.json"
    )]
    Schema {
        /// The schema of live scenarios (`mode = "live"`) instead.
        #[arg(long)]
        live: bool,
    },
    /// List drills with their tier, expected outcome, faults and purpose.
    #[command(after_help = "Examples:\n  agentdrill list scenarios/\n  agentdrill list scenarios/antipatterns/")]
    List {
        /// Scenario files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check scenarios without running them.
    ///
    /// Stops at the first bad file and lists every error in it, each with
    /// file:line:col, the field and what was expected. Exit code 2 then.
    #[command(after_help = "Examples:\n  agentdrill validate scenarios/\n  agentdrill validate my-drill.toml")]
    Validate {
        /// Scenario files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Generate drills, check every recovery invariant, shrink a violation to
    /// the smallest drill and write it as a scenario file.
    ///
    /// Exit code: 0 no violation found, 1 a violation (its reproducer is
    /// written), 2 unusable input.
    ///
    /// Example: agentdrill fuzz --cases 500 --policy no-fencing --seed 7
    #[command(
        after_help = "Examples:\n  agentdrill fuzz --cases 500 --policy no-fencing --seed 7\n  agentdrill fuzz --cases 10000 --jobs 2        two threads; the same find and reproducer as --jobs 1\n  agentdrill fuzz --time-budget 10m --shard 2/4  the second of four CI jobs"
    )]
    Fuzz(agentdrill::fuzz::FuzzArgs),
    /// Run a game-day programme (gameday.toml: drills by cadence, owners,
    /// claimed tiers), write the HTML report and append to the history; or
    /// run a blind exercise and time the responders.
    ///
    /// Exit code: 0 every drill passed, 1 a drill failed, 2 unusable input.
    #[command(
        after_help = "Examples:\n  agentdrill gameday examples/gameday.toml\n  agentdrill gameday examples/gameday.toml --cadence quarterly\n  agentdrill gameday examples/gameday.toml --blind      draw a hidden fault; then:\n  agentdrill gameday ack\n  agentdrill gameday note \"router is on the fallback\"\n  agentdrill gameday note --update \"degraded, recovering\"\n  agentdrill gameday resolved                         reveals the fault, writes the report"
    )]
    Gameday(gameday_cli::GamedayArgs),
    /// Print each drill's trend from the history: RTO and RPO over time,
    /// MTTR and the drill success rate.
    #[command(
        after_help = "Examples:\n  agentdrill history\n  agentdrill history reports/ --drill region/warm-standby-loss"
    )]
    History {
        /// The reports folder (or its history.jsonl).
        #[arg(default_value = "reports")]
        path: PathBuf,
        /// Only this drill, with each of its runs.
        #[arg(long, value_name = "NAME")]
        drill: Option<String>,
    },
    /// Measure the simulator's speed: calls per second, time acceleration,
    /// catalogue time, generated drills per second, scaling to 1M tasks,
    /// the ratio to the bare runtime and to turmoil (see BENCHMARKS.md).
    ///
    /// Example: agentdrill bench --quick --format json
    Bench {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
        /// Smaller sizes and fewer repetitions (no 100k or 1M runs).
        #[arg(long)]
        quick: bool,
        /// The catalogue to time.
        #[arg(long, default_value = "scenarios")]
        catalogue: PathBuf,
        /// Also run 10M tasks (scaling_10m_*: minutes, about 15 GiB).
        #[arg(long)]
        ten_million: bool,
    },
    /// Serve the fakes over HTTP on 127.0.0.1 for a real agent: payment
    /// (Stripe-shaped), email (Resend-shaped), Anthropic Messages, OpenAI Chat
    /// Completions, a self-hosted fallback and a Qdrant-shaped vector store per
    /// region, plus the control API (toxics, ledgers, the script).
    ///
    /// Prints the `export` lines to point the official SDKs at the fakes, logs
    /// every request (RUST_LOG=warn to quiet it), stops on Ctrl-C. The model
    /// fakes play the workflow of the job named `job-<N>` in the first user
    /// message; declare the tools `--print-tools` prints.
    #[command(
        after_help = "Examples:\n  eval \"$(agentdrill serve --seed 7 | grep ^export)\"   (or run it in another terminal and paste the exports)\n  agentdrill serve --port 9100                  control on 9100, fakes on 9101..9107\n  agentdrill serve --print-tools > tools.json\n  curl -s $AGENTDRILL_CONTROL_URL/jobs/7       the script for job-7, with the effects seen so far\n  curl -s -XPOST $AGENTDRILL_CONTROL_URL/proxies/anthropic/toxics \\\n       -d '{\"name\":\"busy\",\"type\":\"error\",\"attributes\":{\"status\":529},\"count\":1}'"
    )]
    Serve {
        /// Seed of the script (same seed, same decisions and tool inputs).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Control API port; the fakes take the next seven (0: free ports).
        #[arg(long, default_value_t = 8470)]
        port: u16,
        /// Processing time of a payment or email request, in ms (a second
        /// request with the same Idempotency-Key meanwhile gets 409).
        #[arg(long, default_value_t = 50)]
        processing_ms: u64,
        /// Model answers take the modelled provider latency times this per
        /// mille (0: at once; 1000: real provider latency).
        #[arg(long, default_value_t = 0)]
        model_latency_permille: u64,
        /// The payment API performs every request, even with a known
        /// Idempotency-Key (a non-deduplicating API).
        #[arg(long)]
        no_dedupe: bool,
        /// Do not keep the ledger of attempts (raw-speed measurements only).
        #[arg(long)]
        no_attempts: bool,
        /// Print the tools (names and JSON schemas) in Anthropic and OpenAI
        /// form, and exit.
        #[arg(long)]
        print_tools: bool,
    },
    /// Run a process of the live reference stack: the simulator's own
    /// orchestrator and worker behind a live Env (tokio time, HTTP between
    /// processes and to the fakes, PostgreSQL for the orchestrator's store).
    ///
    /// Each process reads the live harness's environment: AGENTDRILL_LISTEN_ADDR,
    /// AGENTDRILL_REPLICA, AGENTDRILL_PEER_ORCHESTRATOR_URL (workers),
    /// DATABASE_URL (orchestrator), the fakes' ANTHROPIC_BASE_URL,
    /// OPENAI_BASE_URL, STRIPE_API_BASE, EMAIL_API_URL, QDRANT_URL, and
    /// AGENTDRILL_POLICY (anti-pattern names, comma-separated).
    #[command(
        after_help = "Examples:\n  eval \"$(agentdrill serve --port 9100 | grep ^export)\"\n  AGENTDRILL_LISTEN_ADDR=127.0.0.1:9200 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\\n      agentdrill stack orchestrator\n  AGENTDRILL_LISTEN_ADDR=127.0.0.1:9201 AGENTDRILL_REPLICA=0 AGENTDRILL_PEER_ORCHESTRATOR_URL=http://127.0.0.1:9200 \\\n      agentdrill stack worker\n  curl -s -XPOST 127.0.0.1:9200/jobs -d '{\"job\": 1, \"workflow\": \"book_flight\"}'\n  curl -s $AGENTDRILL_CONTROL_URL/jobs/1?template=book_flight     one effect per step\n  AGENTDRILL_POLICY=no_fencing,resume_without_reconcile agentdrill stack worker   an anti-pattern, live"
    )]
    Stack {
        /// Which process.
        #[command(subcommand)]
        process: StackProcess,
    },
    /// Tell which PostgreSQL backends of the live drills work on this
    /// machine, and why not: `local` (initdb/postgres/pg_basebackup found,
    /// their version) and `docker` (the daemon, the offline-built image).
    /// Each is tried by starting a throw-away primary. Exit 0 when at least
    /// `local` works, 1 otherwise.
    #[command(
        after_help = "Examples:\n  agentdrill doctor\n  agentdrill doctor --format json | jq '.backends[] | select(.works) | .backend'\n\nA missing backend is installed by `cargo xtask test` (apt-get install postgresql-15; the image by scripts/build-pg-image.sh when Docker answers)."
    )]
    Doctor {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
        /// Folder for the throw-away servers (removed afterwards).
        #[arg(long, default_value_os_t = std::env::temp_dir().join("agentdrill-doctor"))]
        scratch: PathBuf,
    },
    /// Load generator for `bench` (closed loop over loopback; prints JSON).
    #[command(hide = true)]
    Loadgen {
        /// Base URL of the fake.
        #[arg(long)]
        url: String,
        /// What to send.
        #[arg(long, value_enum)]
        workload: agentdrill::live::loadgen::Workload,
        /// Requests in all.
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        /// Concurrent connections.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(
                agentdrill::drill::loader::scenario_files(p)
                    .with_context(|| format!("{}: cannot read folder", p.display()))?,
            );
        } else if p.exists() {
            files.push(p.clone());
        } else {
            anyhow::bail!("{}: no such file or folder", p.display());
        }
    }
    files.sort();
    if files.is_empty() {
        anyhow::bail!(
            "no scenario files (*.toml) under {}",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(files)
}

/// A progress bar on stderr when it is a terminal (hidden otherwise).
fn progress(len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} drills {elapsed}") {
        bar.set_style(style);
    }
    bar
}

/// Commands that only compute and print: no sockets, no children. For them a
/// closed standard output (`agentdrill fuzz | head -1`) ends the process
/// quietly, as it ends `ls` or `grep`, instead of a panic in `println!`.
fn prints_only(c: &Command) -> bool {
    matches!(
        c,
        Command::Matrix { .. }
            | Command::Explain { .. }
            | Command::Schema { .. }
            | Command::List { .. }
            | Command::Validate { .. }
            | Command::Fuzz(_)
            | Command::History { .. }
    )
}

/// Restores the default action of SIGPIPE (the Rust runtime ignores it, so a
/// write to a closed pipe returns an error that `println!` turns into a
/// panic). Only for [`prints_only`] commands: the live harness writes to
/// sockets and child pipes, where a broken pipe is an error to handle.
fn die_quietly_on_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called at the start of `main`, before any thread is spawned;
    // SIG_DFL installs no Rust handler.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        eprintln!("warning: cannot restore SIGPIPE: {e}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if prints_only(&cli.command) {
        die_quietly_on_closed_pipe();
    }
    let default_level =
        if matches!(cli.command, Command::Serve { .. } | Command::Stack { .. }) { "info" } else { "error" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    match cli.command {
        Command::Matrix { stack, seeds, patterns, format } => {
            let sc = match agentdrill::drill::scenario::load(&stack) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if seeds == 0 {
                eprintln!("error: --seeds must be at least 1");
                return ExitCode::from(2);
            }
            let per = agentdrill::drill::matrix::drills_per_matrix(&sc, seeds) * if patterns { 3 } else { 1 };
            let bar = progress(per);
            let tick = || bar.inc(1);
            let out = if patterns {
                let ms = agentdrill::drill::matrix::patterns(&sc, seeds, tick);
                bar.finish_and_clear();
                let ms = match ms {
                    Ok(ms) => ms,
                    Err(e) => return matrix_over_budget(&stack, &e),
                };
                match format {
                    TableOrJson::Table => agentdrill::drill::matrix::render_patterns(&ms),
                    TableOrJson::Json => serde_json::to_string_pretty(&ms).expect("serialises") + "\n",
                }
            } else {
                let m = agentdrill::drill::matrix::matrix(&sc, seeds, tick);
                bar.finish_and_clear();
                let m = match m {
                    Ok(m) => m,
                    Err(e) => return matrix_over_budget(&stack, &e),
                };
                match format {
                    TableOrJson::Table => agentdrill::drill::matrix::render(&m),
                    TableOrJson::Json => serde_json::to_string_pretty(&m).expect("serialises") + "\n",
                }
            };
            print!("{out}");
            ExitCode::SUCCESS
        }
        Command::Run { paths, seed, format, out, jobs, budget } => {
            cli::run(&paths, seed, format, out, jobs, &budget.budget())
        }
        Command::Explain { file, seed, budget } => cli::explain(&file, seed, &budget.budget()),
        Command::Schema { live } => {
            if live {
                println!("{}", agentdrill::drill::schema::render_live());
            } else {
                println!("{}", agentdrill::drill::schema::render());
            }
            ExitCode::SUCCESS
        }
        Command::List { paths } => cli::list(&paths),
        Command::Validate { paths } => cli::validate(&paths),
        Command::Fuzz(args) => agentdrill::fuzz::cli(args),
        Command::Gameday(args) => gameday_cli::gameday(args),
        Command::History { path, drill } => gameday_cli::history(&path, drill.as_deref()),
        Command::Bench { format, quick, catalogue, ten_million } => {
            let bar = indicatif::ProgressBar::new_spinner();
            let loadgen_exe = std::env::current_exe().ok();
            let opts = agentdrill::bench::Options { quick, catalogue, loadgen_exe, ten_million };
            let r = agentdrill::bench::run(&opts, |what| bar.set_message(what.to_owned()));
            bar.finish_and_clear();
            match format {
                TableOrJson::Table => print!("{}", agentdrill::bench::table(&r)),
                TableOrJson::Json => println!("{}", agentdrill::bench::json(&r)),
            }
            ExitCode::SUCCESS
        }
        Command::Serve { seed, port, processing_ms, model_latency_permille, no_dedupe, no_attempts, print_tools } => {
            let cfg = agentdrill::live::LiveConfig {
                seed,
                port,
                processing_ms,
                model_latency_permille,
                payment_dedupe: !no_dedupe,
                email_dedupe: true,
                record_attempts: !no_attempts,
                sender_slots: 0,
            };
            cli_live::serve(cfg, print_tools)
        }
        Command::Stack { process } => match process {
            StackProcess::Orchestrator { anti_patterns, lease_ms, memory } => {
                cli_live::stack_orchestrator(&anti_patterns, lease_ms, memory)
            }
            StackProcess::Worker { anti_patterns, lease_ms } => cli_live::stack_worker(&anti_patterns, lease_ms),
        },
        Command::Doctor { format, scratch } => cli_live::doctor(&scratch, matches!(format, TableOrJson::Json)),
        Command::Loadgen { url, workload, requests, concurrency } => {
            cli_live::loadgen(&url, workload, requests, concurrency)
        }
    }
}
