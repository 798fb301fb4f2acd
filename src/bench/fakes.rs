//! `agentdrill bench`'s live-fake figures: the payment fake (with
//! idempotency keys) and the Anthropic fake (streaming) served in this
//! process, driven over loopback by `agentdrill loadgen` in a child process;
//! the server's CPU time per request (this process's, read around each run)
//! and the load generator's own (its report), so a reader can tell which
//! side costs what; and the load generator's ceiling against the cheapest
//! endpoint (`GET /` of a vector fake).

use std::path::Path;
use std::process::Command;

use super::{Figure, Target, fig};
use crate::live::loadgen::{self, LoadReport, Workload};
use crate::live::{self, Fake, LiveConfig};

/// Concurrent connections of the load generator.
pub const CONCURRENCY: usize = 8;

/// One measured workload.
struct Run {
    /// Figure names: rps, p50, p99, server and client CPU per request.
    names: [&'static str; 5],
    /// What is sent.
    what: &'static str,
    fake: Fake,
    workload: Workload,
    /// Whether the 20 000 req/s and 2 ms targets apply.
    targeted: bool,
}

const RUNS: [Run; 3] = [
    Run {
        names: [
            "fake_payment_rps",
            "fake_payment_p50_ms",
            "fake_payment_p99_ms",
            "fake_payment_server_cpu_us",
            "fake_payment_client_cpu_us",
        ],
        what: "POST /v1/payment_intents, a fresh Idempotency-Key each",
        fake: Fake::Payment,
        workload: Workload::Payment,
        targeted: true,
    },
    Run {
        names: [
            "fake_anthropic_stream_rps",
            "fake_anthropic_stream_p50_ms",
            "fake_anthropic_stream_p99_ms",
            "fake_anthropic_stream_server_cpu_us",
            "fake_anthropic_stream_client_cpu_us",
        ],
        what: "POST /v1/messages with stream: true, read to message_stop",
        fake: Fake::Anthropic,
        workload: Workload::AnthropicStream,
        targeted: true,
    },
    Run {
        names: [
            "fake_loadgen_ceiling_rps",
            "fake_loadgen_ceiling_p50_ms",
            "fake_loadgen_ceiling_p99_ms",
            "fake_loadgen_ceiling_server_cpu_us",
            "fake_loadgen_ceiling_client_cpu_us",
        ],
        what: "GET / of the vector fake (the cheapest answer): the load generator's ceiling",
        fake: Fake::VectorA,
        workload: Workload::Ping,
        targeted: false,
    },
];

/// A measured run: the load generator's report and the server's CPU µs per request.
type Measured = (LoadReport, Option<f64>);

/// The fake figures; `None` values (with the reason) without a load generator.
pub fn figures(exe: Option<&Path>, quick: bool) -> Vec<Figure> {
    let requests = if quick { 5_000 } else { 200_000 };
    let warmup = if quick { 500 } else { 2_000 };
    let runs = match exe {
        Some(exe) => measure(exe, warmup, requests),
        None => Err("no agentdrill binary to run the load generator (bench::Options::loadgen_exe)".into()),
    };
    let cfg = format!(
        "{CONCURRENCY} keep-alive connections from `agentdrill loadgen` (one thread, hyper) in a child process, closed loop, {requests} requests after {warmup} of warm-up, fakes with the ledger of attempts on and 0 ms processing; machine shared"
    );
    let mut out = Vec::new();
    for (i, run) in RUNS.iter().enumerate() {
        let r: Result<&Measured, &String> = runs.as_ref().map(|v| &v[i]);
        let note = match r {
            Ok((r, _)) => {
                format!("{}; {cfg}; {} answered, {} errors in {:.2} s", run.what, r.ok, r.errors, r.elapsed_s)
            }
            Err(e) => e.clone(),
        };
        let v = r.ok();
        let (rps_t, p99_t) =
            if run.targeted { (Some(Target::AtLeast(20_000.0)), Some(Target::Below(2.0))) } else { (None, None) };
        let [rps, p50, p99, server, client] = run.names;
        out.push(fig(rps, v.map(|(r, _)| r.rps), "req/s", rps_t, note.clone()));
        out.push(fig(p50, v.map(|(r, _)| r.p50_ms), "ms", None, note.clone()));
        out.push(fig(p99, v.map(|(r, _)| r.p99_ms), "ms", p99_t, note.clone()));
        out.push(fig(server, v.and_then(|(_, s)| *s), "µs/req", None, note.clone()));
        out.push(fig(client, v.map(|(r, _)| r.client_cpu_us_per_req), "µs/req", None, note));
    }
    out
}

/// Serves the fakes and runs the workloads against them.
fn measure(exe: &Path, warmup: u64, requests: u64) -> Result<Vec<Measured>, String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let cfg = LiveConfig { processing_ms: 0, ..LiveConfig::default() };
    let served = rt.block_on(live::start(cfg)).map_err(|e| e.to_string())?;
    let url = |f: Fake| format!("http://{}", served.shared.addr(f));
    let mut out = Vec::new();
    for run in &RUNS {
        run_loadgen(exe, &url(run.fake), run.workload, warmup)?;
        let cpu0 = loadgen::cpu_us();
        let report = run_loadgen(exe, &url(run.fake), run.workload, requests)?;
        let server = match (cpu0, loadgen::cpu_us()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / requests as f64),
            _ => None,
        };
        out.push((report, server));
        served.shared.reset();
    }
    rt.block_on(served.shutdown());
    Ok(out)
}

fn run_loadgen(exe: &Path, url: &str, w: Workload, requests: u64) -> Result<LoadReport, String> {
    let workload = match w {
        Workload::Payment => "payment",
        Workload::AnthropicStream => "anthropic-stream",
        Workload::Ping => "ping",
    };
    let out = Command::new(exe)
        .args(["loadgen", "--url", url, "--workload", workload])
        .args(["--requests", &requests.to_string(), "--concurrency", &CONCURRENCY.to_string()])
        .output()
        .map_err(|e| format!("cannot run {} loadgen: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!("loadgen failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("loadgen printed no report: {e}"))
}
