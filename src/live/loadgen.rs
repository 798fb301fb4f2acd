//! A closed-loop load generator for the fakes (`agentdrill loadgen`, run by
//! `agentdrill bench` in a child process so the load crosses loopback from
//! another process): `concurrency` connections, each sending its next
//! request when the previous answer has been read in full.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Most requests one run may send.
pub const MAX_REQUESTS: u64 = 10_000_000;
/// Most concurrent connections.
pub const MAX_CONCURRENCY: usize = 1_024;

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// `POST /v1/payment_intents` with a fresh `Idempotency-Key` each.
    Payment,
    /// `POST /v1/messages` with `"stream": true`, read to `message_stop`.
    AnthropicStream,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    /// Requests answered with 200.
    pub ok: u64,
    /// Requests that failed (status, transport or an incomplete stream).
    pub errors: u64,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Answered requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad arguments.
    #[error("loadgen: {0}")]
    Args(String),
    /// The HTTP client could not be built.
    #[error("loadgen: cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Sends `requests` requests of `workload` to `base` over `concurrency`
/// connections and measures them.
pub async fn run(base: &str, workload: Workload, requests: u64, concurrency: usize) -> Result<LoadReport, LoadError> {
    if requests == 0 || requests > MAX_REQUESTS {
        return Err(LoadError::Args(format!("--requests must be in 1..={MAX_REQUESTS}, got {requests}")));
    }
    if concurrency == 0 || concurrency > MAX_CONCURRENCY {
        return Err(LoadError::Args(format!("--concurrency must be in 1..={MAX_CONCURRENCY}, got {concurrency}")));
    }
    let started = Instant::now();
    let per = requests.div_ceil(concurrency as u64);
    let mut tasks = Vec::with_capacity(concurrency);
    for c in 0..concurrency as u64 {
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).tcp_nodelay(true).build()?;
        let base = base.to_owned();
        let n = per.min(requests.saturating_sub(c * per));
        tasks.push(tokio::spawn(async move { connection(client, base, workload, c, n).await }));
    }
    let (mut lat_us, mut errors) = (Vec::with_capacity(requests as usize), 0);
    for t in tasks {
        let (l, e) = t.await.map_err(|e| LoadError::Args(format!("a connection task failed: {e}")))?;
        lat_us.extend(l);
        errors += e;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    lat_us.sort_unstable();
    let pct =
        |p: f64| lat_us.get(((lat_us.len() as f64 - 1.0) * p).round() as usize).map_or(0.0, |&u| u as f64 / 1_000.0);
    let ok = lat_us.len() as u64;
    Ok(LoadReport { ok, errors, elapsed_s, rps: ok as f64 / elapsed_s, p50_ms: pct(0.50), p99_ms: pct(0.99) })
}

/// One connection's closed loop; latencies of the 200s (µs) and the error count.
async fn connection(client: reqwest::Client, base: String, w: Workload, conn: u64, n: u64) -> (Vec<u32>, u64) {
    let (mut lat, mut errors) = (Vec::with_capacity(n as usize), 0);
    for i in 0..n {
        let t0 = Instant::now();
        let ok = match w {
            Workload::Payment => payment(&client, &base, conn, i).await,
            Workload::AnthropicStream => anthropic_stream(&client, &base, conn, i).await,
        };
        let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        if ok {
            lat.push(us);
        } else {
            errors += 1;
        }
    }
    (lat, errors)
}

async fn payment(client: &reqwest::Client, base: &str, conn: u64, i: u64) -> bool {
    let body =
        format!("amount={}&currency=usd&confirm=true&metadata[job_id]=job-{conn}&metadata[step]=3", 1_000 + i % 500);
    let r = client
        .post(format!("{base}/v1/payment_intents"))
        .header("authorization", "Bearer sk_test_bench")
        .header("idempotency-key", format!("bench-{conn}-{i}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    match r {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
        _ => false,
    }
}

async fn anthropic_stream(client: &reqwest::Client, base: &str, conn: u64, i: u64) -> bool {
    let body = serde_json::json!({ "model": "claude-bench", "max_tokens": 256, "stream": true,
        "messages": [{ "role": "user", "content": format!("Run job-{} (book_flight)", conn * 1_000_000 + i) }] });
    let r = client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", "bench")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    match r {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok_and(|b| b.ends_with(b"\"message_stop\"}\n\n")),
        _ => false,
    }
}
