//! The `agentdrill` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use agentdrill::{drill, report, scenario};

/// Counts heap bytes so `bench` can report peak memory (two relaxed atomic
/// operations per allocation; see `agentdrill::bench::CountingAlloc`).
#[global_allocator]
static ALLOC: agentdrill::bench::CountingAlloc = agentdrill::bench::CountingAlloc;

/// Chaos and disaster-recovery drills for AI-agent stacks: RTO, RPO and
/// duplicate side effects measured from ground truth.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run drills (files or folders of *.toml) and print the verdicts.
    ///
    /// Exit code: 0 every drill passed (anti-pattern drills pass when
    /// caught), 1 a drill failed, 2 unusable input.
    ///
    /// Example: agentdrill run scenarios/ --seed 7 --format json
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
    },
    /// Print a drill's timeline: faults, detection, failover, recovery.
    ///
    /// Example: agentdrill explain scenarios/worker/kill-in-flight.toml
    Explain {
        /// Scenario file.
        file: PathBuf,
        /// Override the seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Measure the simulator's speed: calls per second, time acceleration,
    /// catalogue time, generated drills per second, scaling to 1M tasks,
    /// the ratio to the bare runtime and to turmoil (see BENCHMARKS.md).
    ///
    /// Example: agentdrill bench --quick --format json
    Bench {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Smaller sizes and fewer repetitions (no 100k or 1M runs).
        #[arg(long)]
        quick: bool,
        /// The catalogue to time.
        #[arg(long, default_value = "scenarios")]
        catalogue: PathBuf,
    },
}

fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut files).with_context(|| format!("{}: cannot read folder", p.display()))?;
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

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
    Ok(())
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<scenario::Scenario>, ExitCode> {
    let files = collect(paths).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })?;
    let mut out = Vec::new();
    let mut bad = false;
    for f in files {
        match scenario::load(&f) {
            Ok(s) => out.push(s),
            Err(e) => {
                eprintln!("error: {e}");
                bad = true;
            }
        }
    }
    if bad { Err(ExitCode::from(2)) } else { Ok(out) }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { paths, seed, format } => {
            let scenarios = match load_all(&paths) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let results: Vec<_> = scenarios
                .iter()
                .map(|s| {
                    tracing::info!(scenario = %s.name, "running");
                    drill::run(s, seed.unwrap_or(s.seed))
                })
                .collect();
            match format {
                Format::Table => print!("{}", report::table(&results)),
                Format::Json => println!("{}", report::json(&results)),
            }
            if results.iter().all(|r| r.verdict == "pass") { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Command::Explain { file, seed } => {
            let sc = match scenario::load(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let r = drill::run(&sc, seed.unwrap_or(sc.seed));
            println!("{} (tier {}, seed {})", r.scenario, r.tier, r.seed);
            print!("{}", report::timeline(&r));
            print!("{}", report::table(std::slice::from_ref(&r)));
            ExitCode::SUCCESS
        }
        Command::Bench { format, quick, catalogue } => {
            let bar = indicatif::ProgressBar::new_spinner();
            let opts = agentdrill::bench::Options { quick, catalogue };
            let r = agentdrill::bench::run(&opts, |what| bar.set_message(what.to_owned()));
            bar.finish_and_clear();
            match format {
                Format::Table => print!("{}", agentdrill::bench::table(&r)),
                Format::Json => println!("{}", agentdrill::bench::json(&r)),
            }
            ExitCode::SUCCESS
        }
    }
}
