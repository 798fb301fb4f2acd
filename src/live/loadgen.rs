//! A closed-loop load generator for the fakes (`agentdrill loadgen`, run by
//! `agentdrill bench` in a child process so the load crosses loopback from
//! another process): `concurrency` keep-alive HTTP/1.1 connections, each
//! sending its next request when the previous answer has been read in full.
//!
//! It must never be the bottleneck it measures, so it is lean: one thread
//! (a current-thread tokio runtime, no cross-thread wake-ups), hyper's
//! client connection directly (no pool, no redirects, no URL parsing per
//! request), header values built once. Its own CPU time per request is in
//! the report (`client_cpu_us_per_req`), and the `ping` workload measures
//! its ceiling against a trivial endpoint.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// Most requests one run may send.
pub const MAX_REQUESTS: u64 = 10_000_000;
/// Most concurrent connections.
pub const MAX_CONCURRENCY: usize = 1_024;
/// Longest one request may take before it counts as an error, in ms.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// `POST /v1/payment_intents` with a fresh `Idempotency-Key` each.
    Payment,
    /// `POST /v1/messages` with `"stream": true`, read to `message_stop`.
    AnthropicStream,
    /// `GET /` (any fake's cheapest answer): the load generator's ceiling.
    Ping,
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
    /// The load generator's own CPU time (user + system) per request, µs
    /// (from `/proc/self/stat`; 0 where it cannot be read).
    #[serde(default)]
    pub client_cpu_us_per_req: f64,
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad arguments.
    #[error("loadgen: {0}")]
    Args(String),
}

/// Sends `requests` requests of `workload` to `base` (`http://host:port`)
/// over `concurrency` connections and measures them. Runs on the caller's
/// runtime; `agentdrill loadgen` gives it a current-thread one.
pub async fn run(base: &str, workload: Workload, requests: u64, concurrency: usize) -> Result<LoadReport, LoadError> {
    if requests == 0 || requests > MAX_REQUESTS {
        return Err(LoadError::Args(format!("--requests must be in 1..={MAX_REQUESTS}, got {requests}")));
    }
    if concurrency == 0 || concurrency > MAX_CONCURRENCY {
        return Err(LoadError::Args(format!("--concurrency must be in 1..={MAX_CONCURRENCY}, got {concurrency}")));
    }
    let addr = socket_addr(base)?;
    let host = HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header value");
    let cpu0 = cpu_us();
    let started = Instant::now();
    let per = requests.div_ceil(concurrency as u64);
    let mut tasks = Vec::with_capacity(concurrency);
    for c in 0..concurrency as u64 {
        let n = per.min(requests.saturating_sub(c * per));
        let host = host.clone();
        tasks.push(tokio::spawn(async move { connection(addr, host, workload, c, n).await }));
    }
    let (mut lat_us, mut errors) = (Vec::with_capacity(requests as usize), 0);
    for t in tasks {
        let (l, e) = t.await.map_err(|e| LoadError::Args(format!("a connection task failed: {e}")))?;
        lat_us.extend(l);
        errors += e;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let client_cpu_us_per_req = match (cpu0, cpu_us()) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / requests as f64,
        _ => 0.0,
    };
    lat_us.sort_unstable();
    let pct = |p: f64| percentile_ms(&lat_us, p);
    let ok = lat_us.len() as u64;
    Ok(LoadReport {
        ok,
        errors,
        elapsed_s,
        rps: ok as f64 / elapsed_s,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        client_cpu_us_per_req,
    })
}

/// The `p` quantile (0 to 1, nearest rank) of `sorted_us`, in ms; 0 when empty.
pub fn percentile_ms<T: Copy + Into<u64>>(sorted_us: &[T], p: f64) -> f64 {
    let rank = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us.get(rank).map_or(0.0, |&u| u.into() as f64 / 1_000.0)
}

/// `http://127.0.0.1:PORT` as a socket address (the fakes listen on loopback).
fn socket_addr(base: &str) -> Result<SocketAddr, LoadError> {
    let bad = |why: &str| LoadError::Args(format!("--url `{base}`: {why}; give http://127.0.0.1:PORT"));
    let uri: Uri = base.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let auth = uri.authority().ok_or_else(|| bad("no host"))?;
    let port = auth.port_u16().unwrap_or(80);
    let ip = auth.host().parse().map_err(|_| bad("the host must be an IP address"))?;
    Ok(SocketAddr::new(ip, port))
}

/// This process's CPU time (user + system), µs, from `/proc/self/stat`
/// (fields 14 and 15, in clock ticks of 1/100 s on Linux).
pub fn cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it follow ")".
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ').skip(11);
    let (user, sys): (u64, u64) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
    Some((user + sys) * 10_000)
}

/// Opens one keep-alive HTTP/1.1 connection.
async fn connect(addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// One connection's closed loop; latencies of the 200s (µs) and the error
/// count. A broken connection counts its request as an error and is opened
/// again for the next one.
async fn connection(addr: SocketAddr, host: HeaderValue, w: Workload, conn: u64, n: u64) -> (Vec<u32>, u64) {
    let (mut lat, mut errors) = (Vec::with_capacity(n as usize), 0);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    for i in 0..n {
        let t0 = Instant::now();
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = connect(addr).await;
        }
        let ok = match &mut sender {
            Some(s) => {
                let req = request(w, &host, conn, i);
                let limit = Duration::from_millis(REQUEST_TIMEOUT_MS);
                tokio::time::timeout(limit, exchange(s, req, w)).await.unwrap_or(false)
            }
            None => false,
        };
        let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        if ok {
            lat.push(us);
        } else {
            errors += 1;
            sender = None;
        }
    }
    (lat, errors)
}

/// Sends one request and reads the whole answer; whether it is a success.
async fn exchange(s: &mut SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>, w: Workload) -> bool {
    if s.ready().await.is_err() {
        return false;
    }
    let Ok(resp) = s.send_request(req).await else { return false };
    if resp.status() != 200 {
        return false;
    }
    let Ok(body) = resp.into_body().collect().await else { return false };
    match w {
        Workload::AnthropicStream => body.to_bytes().ends_with(b"\"message_stop\"}\n\n"),
        Workload::Payment | Workload::Ping => true,
    }
}

/// The `i`th request of connection `conn`.
fn request(w: Workload, host: &HeaderValue, conn: u64, i: u64) -> Request<Full<Bytes>> {
    let (method, path, body) = match w {
        Workload::Payment => {
            let body = format!(
                "amount={}&currency=usd&confirm=true&metadata[job_id]=job-{conn}&metadata[step]=3",
                1_000 + i % 500
            );
            (Method::POST, "/v1/payment_intents", body)
        }
        Workload::AnthropicStream => {
            let job = conn * 1_000_000 + i;
            let body = format!(
                r#"{{"model":"claude-bench","max_tokens":256,"stream":true,"messages":[{{"role":"user","content":"Run job-{job} (book_flight)"}}]}}"#
            );
            (Method::POST, "/v1/messages", body)
        }
        Workload::Ping => (Method::GET, "/", String::new()),
    };
    let mut b = Request::builder().method(method).uri(path).header("host", host.clone());
    b = match w {
        Workload::Payment => b
            .header("authorization", HeaderValue::from_static("Bearer sk_test_bench"))
            .header("idempotency-key", format!("bench-{conn}-{i}"))
            .header("content-type", HeaderValue::from_static("application/x-www-form-urlencoded")),
        Workload::AnthropicStream => b
            .header("x-api-key", HeaderValue::from_static("bench"))
            .header("anthropic-version", HeaderValue::from_static("2023-06-01"))
            .header("content-type", HeaderValue::from_static("application/json")),
        Workload::Ping => b,
    };
    b.body(Full::new(Bytes::from(body))).expect("a valid request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_loopback_http_with_an_ip() {
        assert_eq!(socket_addr("http://127.0.0.1:9301").unwrap(), "127.0.0.1:9301".parse().unwrap());
        assert!(socket_addr("https://127.0.0.1:1").unwrap_err().to_string().contains("only http://"));
        assert!(socket_addr("http://localhost:1").unwrap_err().to_string().contains("IP address"));
    }

    #[test]
    fn cpu_time_is_read_and_grows() {
        let a = cpu_us().expect("/proc/self/stat on Linux");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_us().unwrap() > a, "30 ms of spinning shows in the CPU time");
    }
}
