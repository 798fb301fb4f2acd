//! `agentdrill bench`'s live-fake figures: the payment fake (with
//! idempotency keys) and the Anthropic fake (streaming) served in this
//! process, driven over loopback by `agentdrill loadgen` in a child process.

use std::path::Path;
use std::process::Command;

use super::{Figure, Target, fig};
use crate::live::loadgen::{LoadReport, Workload};
use crate::live::{self, Fake, LiveConfig};

/// Concurrent connections of the load generator.
pub const CONCURRENCY: usize = 8;

/// The fake figures; `None` values (with the reason) without a load generator.
pub fn figures(exe: Option<&Path>, quick: bool) -> Vec<Figure> {
    let requests = if quick { 5_000 } else { 200_000 };
    let warmup = if quick { 500 } else { 2_000 };
    let runs = match exe {
        Some(exe) => measure(exe, warmup, requests),
        None => Err("no agentdrill binary to run the load generator (bench::Options::loadgen_exe)".into()),
    };
    let cfg = format!(
        "{CONCURRENCY} keep-alive connections from `agentdrill loadgen` in a child process, closed loop, {requests} requests after {warmup} of warm-up, fakes with the ledger of attempts on and 0 ms processing; machine shared"
    );
    let mut out = Vec::new();
    let names = [
        (
            "fake_payment_rps",
            "fake_payment_p50_ms",
            "fake_payment_p99_ms",
            "POST /v1/payment_intents, a fresh Idempotency-Key each",
        ),
        (
            "fake_anthropic_stream_rps",
            "fake_anthropic_stream_p50_ms",
            "fake_anthropic_stream_p99_ms",
            "POST /v1/messages with stream: true, read to message_stop",
        ),
    ];
    for (i, (rps, p50, p99, what)) in names.into_iter().enumerate() {
        let r = runs.as_ref().map(|v| v[i].clone());
        let note = match &r {
            Ok(r) => format!("{what}; {cfg}; {} answered, {} errors in {:.2} s", r.ok, r.errors, r.elapsed_s),
            Err(e) => (*e).clone(),
        };
        let v = r.as_ref().ok();
        out.push(fig(rps, v.map(|r| r.rps), "req/s", Some(Target::AtLeast(20_000.0)), note.clone()));
        out.push(fig(p50, v.map(|r| r.p50_ms), "ms", None, note.clone()));
        out.push(fig(p99, v.map(|r| r.p99_ms), "ms", Some(Target::Below(2.0)), note));
    }
    out
}

/// Serves the fakes and runs the two workloads against them.
fn measure(exe: &Path, warmup: u64, requests: u64) -> Result<Vec<LoadReport>, String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let cfg = LiveConfig { processing_ms: 0, ..LiveConfig::default() };
    let served = rt.block_on(live::start(cfg)).map_err(|e| e.to_string())?;
    let url = |f: Fake| format!("http://{}", served.shared.addr(f));
    let mut out = Vec::new();
    for (fake, w) in [(Fake::Payment, Workload::Payment), (Fake::Anthropic, Workload::AnthropicStream)] {
        loadgen(exe, &url(fake), w, warmup)?;
        out.push(loadgen(exe, &url(fake), w, requests)?);
        served.shared.reset();
    }
    rt.block_on(served.shutdown());
    Ok(out)
}

fn loadgen(exe: &Path, url: &str, w: Workload, requests: u64) -> Result<LoadReport, String> {
    let workload = match w {
        Workload::Payment => "payment",
        Workload::AnthropicStream => "anthropic-stream",
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
