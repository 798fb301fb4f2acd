//! A harness TCP link between two components: a loopback listener that
//! forwards every connection to a switchable upstream, with a latency (per
//! direction, order kept) and a blackhole.
//!
//! **Debt**: this was written while `live::net` (the project's TCP proxy,
//! with the full toxic set and the `Network`) was being built beside it,
//! and is still a second forwarder: the processes reach it through their
//! own `live::net` links. It should become `live::net` links (switched with
//! `set_link_upstream`, lagged with a latency toxic, lost with a cut).
//!
//! - `switch`: new connections go to the new upstream; open ones are closed
//!   (a client sees its connection drop, reconnects, and lands on the new
//!   upstream — a DNS switch seen after the TTL);
//! - `blackhole`: open connections are closed with whatever they had in
//!   flight (data inside the latency queue never arrives), new ones are
//!   accepted and never answered;
//! - `latency_ms`: every chunk is held this long before it is written on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Bytes read at once from either side.
const CHUNK: usize = 16 * 1024;

#[derive(Debug)]
struct State {
    upstream: Mutex<SocketAddr>,
    blackholed: AtomicBool,
    latency_ms: AtomicU64,
    /// Bumped by `switch` and `blackhole`: connections of an older epoch end.
    epoch: watch::Sender<u64>,
}

/// A link: `addr()` is what the client dials.
#[derive(Debug, Clone)]
pub struct Link {
    name: String,
    addr: SocketAddr,
    state: Arc<State>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Link {
    /// Starts a link named `name` on a free loopback port, to `upstream`.
    pub async fn start(name: &str, upstream: SocketAddr) -> std::io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (epoch, _) = watch::channel(0u64);
        let state = Arc::new(State {
            upstream: Mutex::new(upstream),
            blackholed: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            epoch,
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let st = st.clone();
                tokio::spawn(async move { serve(client, st).await });
            }
        });
        tracing::debug!(link = name, %addr, %upstream, "link up");
        Ok(Link { name: name.to_owned(), addr, state, task: Arc::new(task) })
    }

    /// Where clients connect (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current upstream.
    pub fn upstream(&self) -> SocketAddr {
        *super::super::lock(&self.state.upstream)
    }

    /// Sends new connections to `to` and closes the open ones.
    pub fn switch(&self, to: SocketAddr) {
        *super::super::lock(&self.state.upstream) = to;
        self.state.epoch.send_modify(|e| *e += 1);
        tracing::info!(link = %self.name, %to, "link switched");
    }

    /// Cuts the link (`true`) or mends it (`false`).
    pub fn blackhole(&self, on: bool) {
        self.state.blackholed.store(on, Ordering::SeqCst);
        self.state.epoch.send_modify(|e| *e += 1);
        tracing::info!(link = %self.name, on, "link blackhole");
    }

    /// Whether the link is cut.
    pub fn is_blackholed(&self) -> bool {
        self.state.blackholed.load(Ordering::SeqCst)
    }

    /// Holds every chunk `ms` before writing it on (new and open connections).
    pub fn set_latency_ms(&self, ms: u64) {
        self.state.latency_ms.store(ms, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
            // Open connections end with the epoch.
            self.state.blackholed.store(true, Ordering::SeqCst);
            self.state.epoch.send_modify(|e| *e += 1);
        }
    }
}

async fn serve(client: TcpStream, st: Arc<State>) {
    let mut epoch = st.epoch.subscribe();
    epoch.mark_unchanged();
    if st.blackholed.load(Ordering::SeqCst) {
        // Accepted, never answered: held until the link changes.
        let _ = epoch.changed().await;
        return;
    }
    let to = *super::super::lock(&st.upstream);
    let Ok(upstream) = TcpStream::connect(to).await else { return };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    tokio::select! {
        _ = pipe(cr, uw, st.clone()) => {}
        _ = pipe(ur, cw, st.clone()) => {}
        _ = epoch.changed() => {}
    }
}

/// One direction: read chunks, hold each for the latency, write them in order.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, st: Arc<State>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due =
                        tokio::time::Instant::now() + Duration::from_millis(st.latency_ms.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        a
    }

    async fn roundtrip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut b)).await??;
        Ok(b.to_vec())
    }

    #[tokio::test]
    async fn forwards_switches_and_blackholes() {
        let (a, b) = (echo().await, echo().await);
        let link = Link::start("t", a).await.unwrap();
        assert_eq!(roundtrip(link.addr()).await.unwrap(), b"ping");
        link.switch(b);
        assert_eq!(link.upstream(), b);
        assert_eq!(roundtrip(link.addr()).await.unwrap(), b"ping");
        link.blackhole(true);
        assert!(roundtrip(link.addr()).await.is_err(), "a blackholed link answers nothing");
        link.blackhole(false);
        assert_eq!(roundtrip(link.addr()).await.unwrap(), b"ping");
    }
}
