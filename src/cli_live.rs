//! `agentdrill serve`, `agentdrill doctor` and `agentdrill loadgen`: the live
//! runtime's commands.

use std::process::ExitCode;

use agentdrill::live::{self, LiveConfig, loadgen};

/// A multi-threaded tokio runtime for the live commands.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// `agentdrill serve`: starts every fake, prints the `export` lines, serves
/// until Ctrl-C (or SIGTERM).
pub fn serve(cfg: LiveConfig, print_tools: bool) -> ExitCode {
    if print_tools {
        let tools = serde_json::json!({
            "anthropic": live::script::anthropic_tools(),
            "openai": live::script::openai_tools(),
        });
        println!("{}", serde_json::to_string_pretty(&tools).expect("serialises"));
        return ExitCode::SUCCESS;
    }
    match runtime().and_then(|rt| rt.block_on(serve_until_stopped(cfg))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve_until_stopped(cfg: LiveConfig) -> anyhow::Result<()> {
    let seed = cfg.seed;
    let served = live::start(cfg).await?;
    print!("{}", served.export_lines());
    println!("# agentdrill serve: seed {seed}; control API {}; Ctrl-C stops.", served.env()[7].1);
    std::io::Write::flush(&mut std::io::stdout())?;
    tracing::info!(control = %served.control, "serving");
    wait_for_stop().await;
    tracing::info!("stopping");
    served.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn wait_for_stop() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// `agentdrill loadgen`: prints a [`loadgen::LoadReport`] as JSON.
pub fn loadgen(url: &str, workload: loadgen::Workload, requests: u64, concurrency: usize) -> ExitCode {
    // One thread: the load generator must not add cross-thread wake-ups to
    // the machine it measures.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let report = rt
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(loadgen::run(url, workload, requests, concurrency)).map_err(|e| e.to_string()));
    match report {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).expect("serialises"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `agentdrill stack orchestrator`.
pub fn stack_orchestrator(anti_patterns: &[String], lease_ms: Option<u64>, memory: bool) -> ExitCode {
    use agentdrill::live::stack::orchestrator;
    let cfg = match orchestrator::OrchestratorConfig::from_env(anti_patterns, lease_ms, memory) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match orchestrator::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: orchestrator stopped: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `agentdrill stack worker`.
pub fn stack_worker(anti_patterns: &[String], lease_ms: Option<u64>) -> ExitCode {
    use agentdrill::live::stack::worker;
    let cfg = match worker::WorkerConfig::from_env(anti_patterns, lease_ms) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match worker::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: worker stopped: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `agentdrill doctor`: which PostgreSQL backends work; exit 0 when `local` does.
pub fn doctor(scratch: &std::path::Path, json: bool) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let report = rt.block_on(live::pg::doctor::check(scratch));
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serialises"));
    } else {
        print!("{}", live::pg::doctor::text(&report));
    }
    if report.local_works() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
