//! The harness's TCP proxies (`live::net`) on loopback: bytes both ways,
//! each toxic doing what it says (latency at least as configured, reset
//! giving ECONNRESET, blackhole and partition stalling then flowing again,
//! loss dropping a seeded fraction of connections), the upstream switched
//! for new connections only, the control API's view, and nothing left
//! running after shutdown.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use agentdrill::live::net::{Endpoint, Network, Selector, Stream, TcpToxic, TcpToxicKind};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server; each connection is answered by a task. With `tag`, it
/// first sends the tag (to tell two upstreams apart).
async fn echo(tag: Option<&'static [u8]>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                if let Some(t) = tag {
                    let _ = s.write_all(t).await;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn worker(r: u16, region: &str) -> Endpoint {
    Endpoint::replica("worker", r, region)
}

fn toxic(name: &str, kind: TcpToxicKind, stream: Stream) -> TcpToxic {
    TcpToxic { name: name.into(), kind, stream, toxicity: 1.0 }
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await.unwrap();
    got
}

/// Whether `s` delivers nothing for `ms` (the read is still pending).
async fn stalls(s: &mut TcpStream, ms: u64) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(ms), s.read(&mut b)).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_bytes_both_ways_and_half_closes() {
    let net = Network::new(1);
    let up = echo(None).await;
    let addr = net.add_link(worker(0, "a"), Endpoint::component("payment", None), up).await.unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&big).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = async { r.read_to_end(&mut back).await.unwrap() };
    tokio::join!(send, recv);
    assert_eq!(back, big, "a megabyte through the proxy and back, then EOF");
    let l = net.link("worker-0-to-payment").unwrap();
    assert_eq!((l.bytes_up, l.bytes_down, l.connections), (1_000_000, 1_000_000, 1));
    assert_eq!(l.listen, addr.to_string());
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_at_least_what_is_configured() {
    let net = Network::new(1);
    let up = echo(None).await;
    let addr = net.add_link(worker(0, "a"), Endpoint::component("anthropic", None), up).await.unwrap();
    let link = "worker-0-to-anthropic";
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"warm").await, b"warm");
    let slow = TcpToxicKind::Latency { latency_ms: 150, jitter_ms: 20 };
    net.add_toxic(link, toxic("slow-down", slow.clone(), Stream::Downstream)).unwrap();
    let t = tokio::time::Instant::now();
    assert_eq!(roundtrip(&mut s, b"ping").await, b"ping");
    assert!(t.elapsed() >= Duration::from_millis(130), "one way delayed: {:?}", t.elapsed());
    net.add_toxic(link, toxic("slow-up", slow, Stream::Upstream)).unwrap();
    let t = tokio::time::Instant::now();
    assert_eq!(roundtrip(&mut s, b"pong").await, b"pong");
    assert!(t.elapsed() >= Duration::from_millis(260), "both ways delayed: {:?}", t.elapsed());
    assert!(net.remove_toxic(link, "slow-up").unwrap() && net.remove_toxic(link, "slow-down").unwrap());
    assert!(!net.remove_toxic(link, "slow-up").unwrap());
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peer_gives_econnreset() {
    let net = Network::new(1);
    let up = echo(None).await;
    let addr = net.add_link(worker(0, "a"), Endpoint::component("email", None), up).await.unwrap();
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut open, b"hi").await, b"hi");
    let reset = toxic("rst", TcpToxicKind::ResetPeer { timeout_ms: 0 }, Stream::Both);
    net.add_toxic("worker-0-to-email", reset).unwrap();
    let mut b = [0u8; 8];
    let e = open.read(&mut b).await.expect_err("an open connection is reset");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    // The proxy may reset a new connection before the client's connect has
    // reaped its completion; then connect itself reports the reset.
    let e = match TcpStream::connect(addr).await {
        Ok(mut fresh) => fresh.read(&mut b).await.expect_err("a new connection is reset"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_stalls_and_removal_lets_the_bytes_through() {
    let net = Network::new(1);
    let up = echo(None).await;
    let addr = net.add_link(worker(0, "a"), Endpoint::component("openai", None), up).await.unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"one").await, b"one");
    net.add_toxic("worker-0-to-openai", toxic("hole", TcpToxicKind::Blackhole, Stream::Upstream)).unwrap();
    s.write_all(b"two").await.unwrap();
    assert!(stalls(&mut s, 300).await, "nothing passes while the blackhole is on");
    assert!(net.remove_toxic("worker-0-to-openai", "hole").unwrap());
    let mut got = [0u8; 3];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"two", "the held bytes flow once it is removed");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_cut_links_between_regions_and_heal() {
    let net = Network::new(1);
    let up = echo(None).await;
    let orch = Endpoint::component("orchestrator", Some("a"));
    let across = net.add_link(worker(1, "b"), orch.clone(), up).await.unwrap();
    let inside = net.add_link(worker(0, "a"), orch.clone(), up).await.unwrap();
    let saas = net.add_link(worker(1, "b"), Endpoint::component("payment", None), up).await.unwrap();
    let mut open = TcpStream::connect(across).await.unwrap();
    assert_eq!(roundtrip(&mut open, b"x").await, b"x");
    let cut = net.partition("a", "b");
    let enabled: Vec<(String, bool)> = net.links().into_iter().map(|l| (l.name, l.enabled)).collect();
    assert_eq!(
        enabled,
        [
            ("worker-1-to-orchestrator".to_owned(), false),
            ("worker-0-to-orchestrator".to_owned(), true),
            ("worker-1-to-payment".to_owned(), true)
        ]
    );
    open.write_all(b"y").await.unwrap();
    assert!(stalls(&mut open, 300).await, "an open connection across the cut stalls");
    let mut fresh = TcpStream::connect(across).await.unwrap();
    fresh.write_all(b"z").await.unwrap();
    assert!(stalls(&mut fresh, 100).await, "a new one is accepted but goes nowhere");
    let mut ok = TcpStream::connect(inside).await.unwrap();
    assert_eq!(roundtrip(&mut ok, b"in").await, b"in", "inside region a still works");
    let mut ok = TcpStream::connect(saas).await.unwrap();
    assert_eq!(roundtrip(&mut ok, b"api").await, b"api", "the SaaS APIs are outside the regions");
    net.heal(cut);
    let mut got = [0u8; 1];
    open.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"y");
    fresh.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"z");
    // Region loss: region b from everything else, SaaS included.
    let iso = net.isolate("b");
    let cut_now: Vec<bool> = net.links().into_iter().map(|l| !l.enabled).collect();
    assert_eq!(cut_now, [true, false, true]);
    net.heal(iso);
    // Two named components.
    net.cut(Selector::parse("worker/0"), Selector::parse("orchestrator"));
    let cut_now: Vec<bool> = net.links().into_iter().map(|l| !l.enabled).collect();
    assert_eq!(cut_now, [false, true, false]);
    net.heal_all();
    assert!(net.links().iter().all(|l| l.enabled));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_upstream_takes_new_connections_only() {
    let net = Network::new(1);
    let (primary, standby) = (echo(Some(b"P")).await, echo(Some(b"S")).await);
    let db = Endpoint::component("postgres", Some("a"));
    let addr = net.add_link(worker(0, "a"), db, primary).await.unwrap();
    let mut old = TcpStream::connect(addr).await.unwrap();
    let mut tag = [0u8; 1];
    old.read_exact(&mut tag).await.unwrap();
    assert_eq!(&tag, b"P");
    assert_eq!(net.set_upstream("postgres", standby, Some("b")), 1);
    let mut new = TcpStream::connect(addr).await.unwrap();
    new.read_exact(&mut tag).await.unwrap();
    assert_eq!(&tag, b"S", "a new connection reaches the new upstream");
    assert_eq!(roundtrip(&mut old, b"still").await, b"still", "an open one keeps the old upstream");
    let l = net.link("worker-0-to-postgres").unwrap();
    assert_eq!((l.upstream, l.to.region.as_deref()), (standby.to_string(), Some("b")));
    // The endpoint's region moved: a partition now cuts it from region a.
    net.partition("a", "b");
    assert!(!net.link("worker-0-to-postgres").unwrap().enabled);
    net.shutdown().await;
}

/// Which of `n` connections a loss toxic with `toxicity` drops, with `seed`.
async fn lost(seed: u64, toxicity: f64, n: usize) -> Vec<bool> {
    let net = Network::new(seed);
    let up = echo(None).await;
    let addr = net.add_link(worker(0, "a"), Endpoint::component("local", None), up).await.unwrap();
    net.add_toxic("worker-0-to-local", TcpToxic { toxicity, ..toxic("loss", TcpToxicKind::Loss, Stream::Both) })
        .unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"q").await;
        let mut b = [0u8; 1];
        // A dropped connection ends with no byte; a kept one echoes.
        out.push(!matches!(s.read(&mut b).await, Ok(1)));
    }
    net.shutdown().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_drops_a_seeded_fraction_of_connections() {
    let a = lost(7, 0.3, 120).await;
    assert_eq!(a, lost(7, 0.3, 120).await, "same seed, same connections dropped");
    assert_ne!(a, lost(8, 0.3, 120).await, "another seed, another schedule");
    let dropped = a.iter().filter(|&&x| x).count();
    assert!((20..=55).contains(&dropped), "about 30% of 120, got {dropped}");
    assert!(lost(7, 1.0, 5).await.iter().all(|&x| x));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_paces_a_direction() {
    let net = Network::new(1);
    let up = echo(None).await;
    let addr = net.add_link(worker(0, "a"), Endpoint::component("vector-a", Some("a")), up).await.unwrap();
    let slow = toxic("narrow", TcpToxicKind::Bandwidth { kb_per_s: 100 }, Stream::Downstream);
    net.add_toxic("worker-0-to-vector-a", slow).unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t = tokio::time::Instant::now();
    let data = vec![7u8; 30_000];
    assert_eq!(roundtrip(&mut s, &data).await, data);
    assert!(t.elapsed() >= Duration::from_millis(280), "30 kB at 100 kB/s: {:?}", t.elapsed());
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_and_listener() {
    let net = Network::new(1);
    let up = echo(None).await;
    let addr = net.add_link(worker(0, "a"), Endpoint::component("payment", None), up).await.unwrap();
    let mut held = TcpStream::connect(addr).await.unwrap();
    net.add_toxic("worker-0-to-payment", toxic("hole", TcpToxicKind::Blackhole, Stream::Both)).unwrap();
    held.write_all(b"stuck").await.unwrap();
    assert!(stalls(&mut held, 100).await);
    net.shutdown().await;
    let mut b = [0u8; 1];
    assert!(matches!(held.read(&mut b).await, Ok(0) | Err(_)), "the stalled connection is closed");
    assert!(TcpStream::connect(addr).await.is_err(), "nothing listens any more");
}

async fn control(c: &reqwest::Client, base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let u = format!("{base}{path}");
    let req = match method {
        "POST" => c.post(u).json(&body.unwrap_or(Value::Null)),
        "DELETE" => c.delete(u),
        _ => c.get(u),
    };
    let r = req.send().await.expect("control API answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_lists_and_poisons_the_links() {
    let served = agentdrill::live::start(agentdrill::live::LiveConfig::default()).await.unwrap();
    let base = format!("http://{}", served.control);
    let c = reqwest::Client::new();
    let up = echo(None).await;
    let net = &served.shared.net;
    let addr = net.add_link(worker(0, "b"), Endpoint::component("orchestrator", Some("a")), up).await.unwrap();
    let (st, all) = control(&c, &base, "GET", "/proxies", None).await;
    assert_eq!(st, 200);
    assert!(all["payment"].is_object(), "the HTTP fakes are still listed");
    let l = &all["worker-0-to-orchestrator"];
    assert_eq!((l["listen"].as_str(), l["enabled"].as_bool()), (Some(addr.to_string().as_str()), Some(true)));
    let t = json!({"name":"slow","type":"latency","stream":"both","attributes":{"latency_ms":50}});
    let (st, added) = control(&c, &base, "POST", "/proxies/worker-0-to-orchestrator/toxics", Some(t)).await;
    assert_eq!((st, added["attributes"]["latency_ms"].as_u64()), (200, Some(50)));
    let bad = json!({"name":"b","type":"latency","attributes":{"latency":50}});
    let (st, e) = control(&c, &base, "POST", "/proxies/worker-0-to-orchestrator/toxics", Some(bad)).await;
    assert_eq!(st, 400);
    assert!(e["error"].as_str().unwrap().contains("latency_ms"), "{e}");
    let (_, ts) = control(&c, &base, "GET", "/proxies/worker-0-to-orchestrator/toxics", None).await;
    assert_eq!(ts.as_array().map(Vec::len), Some(1));
    let (st, cut) = control(&c, &base, "POST", "/network/cuts", Some(json!({"between":["region:a","region:b"]}))).await;
    assert_eq!(st, 200);
    let (_, l) = control(&c, &base, "GET", "/proxies/worker-0-to-orchestrator", None).await;
    assert_eq!(l["enabled"], false);
    let id = cut["id"].as_u64().unwrap();
    let (st, _) = control(&c, &base, "DELETE", &format!("/network/cuts/{id}"), None).await;
    assert_eq!(st, 204);
    let (st, _) = control(&c, &base, "DELETE", "/proxies/worker-0-to-orchestrator/toxics/slow", None).await;
    assert_eq!(st, 204);
    control(&c, &base, "POST", "/network/cuts", Some(json!({"isolate":"b"}))).await;
    let (st, _) = control(&c, &base, "POST", "/reset", None).await;
    assert_eq!(st, 204);
    let (_, l) = control(&c, &base, "GET", "/proxies/worker-0-to-orchestrator", None).await;
    assert_eq!((l["enabled"].as_bool(), l["toxics"].as_array().map(Vec::len)), (Some(true), Some(0)));
    let (st, _) = control(&c, &base, "GET", "/proxies/nope", None).await;
    assert_eq!(st, 404);
    served.shutdown().await;
}
