//! One link's accept loop and its proxied connections.
//!
//! Each connection is one task (owned by the accept loop's `JoinSet`, so it
//! ends with it): a reader and a writer per direction joined by a channel
//! bounded in bytes (latency delays chunks without limiting throughput), and a watch
//! on the link's fate (a `loss` or `reset_peer` toxic that applies to it).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::toxic::{self, Dir, TcpToxicKind};
use super::{CHUNK_BYTES, CONNECT_TIMEOUT_MS, Link, PIPE_BYTES};
use crate::live::lock;

/// Accepts on `listener` until `stop` turns true (or its sender is gone),
/// then ends every connection it started.
pub(super) async fn accept_loop(link: Arc<Link>, listener: tokio::net::TcpListener, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let for_conns = stop.clone();
    loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => {
                    let no = link.accepted.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve(s, link.clone(), no, for_conns.clone()));
                }
                // Out of descriptors and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    conns.shutdown().await;
}

/// Ends once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Both ways closed cleanly.
    Closed,
    /// An I/O error on one side (reset the other), or no upstream.
    Failed,
    /// A `loss` toxic dropped it (FIN both ways).
    Lost,
    /// A `reset_peer` toxic (RST both ways).
    Reset,
    /// The link was moved to another upstream (FIN both ways).
    Moved,
    /// The network stopped.
    Stopped,
}

/// Counts the link's open connections.
struct OpenGuard(Arc<Link>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(mut client: TcpStream, link: Arc<Link>, no: u64, mut stop: watch::Receiver<bool>) {
    link.open.fetch_add(1, Ordering::Relaxed);
    let _guard = OpenGuard(link.clone());
    let _ = client.set_nodelay(true);
    let generation = link.generation.load(Ordering::SeqCst);
    let ctl = Ctl { link, no, generation, opened: Instant::now(), seen: std::sync::Mutex::new(FxHashMap::default()) };
    let mut server: Option<TcpStream> = None;
    let end = tokio::select! {
        biased;
        e = ctl.fate() => e,
        _ = stopped(&mut stop) => End::Stopped,
        e = ctl.run(&mut client, &mut server) => e,
    };
    tracing::trace!(link = %ctl.link.name, conn = no, ?end, "connection ended");
    if matches!(end, End::Reset | End::Failed) {
        let _ = client.set_zero_linger();
        if let Some(s) = &server {
            let _ = s.set_zero_linger();
        }
    }
}

/// What a connection has drawn for each toxic it met (by toxic id).
#[derive(Debug)]
struct Seen {
    applies: bool,
    jitter: Option<ChaCha8Rng>,
}

/// A connection's view of its link.
struct Ctl {
    link: Arc<Link>,
    no: u64,
    /// The link's generation when the connection opened.
    generation: u64,
    opened: Instant,
    seen: std::sync::Mutex<FxHashMap<u64, Seen>>,
}

impl Ctl {
    /// Visits every toxic of the link that applies to this connection
    /// (drawing for toxics met the first time, in the link's order).
    fn each_applied(&self, mut f: impl FnMut(&toxic::Installed, &mut Seen)) {
        let mut ts = lock(&self.link.toxics);
        let mut seen = lock(&self.seen);
        for t in ts.iter_mut() {
            let s = seen.entry(t.id).or_insert_with(|| {
                // The toxic's rng lives behind the link's lock: draws come
                // in the order connections meet the toxic.
                let applies = t.draw();
                let jitter = matches!(t.toxic.kind, TcpToxicKind::Latency { jitter_ms, .. } if jitter_ms > 0)
                    .then(|| toxic::jitter_rng(t.seed, self.no));
                Seen { applies, jitter }
            });
            if s.applies {
                f(&*t, s);
            }
        }
    }

    /// Whether nothing may pass in `dir` now.
    fn blocked(&self, dir: Dir) -> bool {
        if self.link.cut.load(Ordering::SeqCst) {
            return true;
        }
        let mut b = false;
        self.each_applied(|t, _| b |= t.toxic.kind == TcpToxicKind::Blackhole && t.toxic.stream.covers(dir));
        b
    }

    /// The delay of the next chunk in `dir`, in µs.
    fn delay_us(&self, dir: Dir) -> u64 {
        let mut us = 0u64;
        self.each_applied(|t, s| {
            if let TcpToxicKind::Latency { latency_ms, jitter_ms } = t.toxic.kind
                && t.toxic.stream.covers(dir)
            {
                let d = match s.jitter.as_mut() {
                    Some(r) => toxic::delay_us(r, latency_ms, jitter_ms),
                    None => latency_ms * 1_000,
                };
                us = us.saturating_add(d);
            }
        });
        us
    }

    /// The pace of `dir` in bytes per second (the slowest bandwidth toxic).
    fn rate_bytes_s(&self, dir: Dir) -> Option<u64> {
        let mut rate: Option<u64> = None;
        self.each_applied(|t, _| {
            if let TcpToxicKind::Bandwidth { kb_per_s } = t.toxic.kind
                && t.toxic.stream.covers(dir)
            {
                let r = kb_per_s.saturating_mul(1_000);
                rate = Some(rate.map_or(r, |x| x.min(r)));
            }
        });
        rate
    }

    /// Lost now, or reset at a time.
    fn doom(&self) -> (bool, Option<Instant>) {
        let (mut lost, mut reset) = (false, None::<Instant>);
        self.each_applied(|t, _| match t.toxic.kind {
            TcpToxicKind::Loss => lost = true,
            TcpToxicKind::ResetPeer { timeout_ms } => {
                let at = self.opened.max(t.added) + Duration::from_millis(timeout_ms);
                reset = Some(reset.map_or(at, |r| r.min(at)));
            }
            _ => {}
        });
        (lost, reset)
    }

    /// Ends when a `loss` or `reset_peer` toxic takes the connection.
    async fn fate(&self) -> End {
        let mut rx = self.link.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if self.link.generation.load(Ordering::SeqCst) != self.generation {
                return End::Moved;
            }
            let (lost, reset_at) = self.doom();
            if lost {
                return End::Lost;
            }
            let reset = async {
                match reset_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = reset => return End::Reset,
                r = rx.changed() => if r.is_err() { return std::future::pending().await },
            }
        }
    }

    /// Waits until `dir` may pass.
    async fn wait_open(&self, dir: Dir, rx: &mut watch::Receiver<u64>) {
        loop {
            rx.borrow_and_update();
            if !self.blocked(dir) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Connects upstream (once the way there is open) and forwards both ways.
    async fn run(&self, client: &mut TcpStream, server: &mut Option<TcpStream>) -> End {
        let mut rx = self.link.changed.subscribe();
        self.wait_open(Dir::Up, &mut rx).await;
        let addr = *lock(&self.link.upstream);
        let s = match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(link = %self.link.name, %addr, error = %e, "upstream refused");
                return End::Failed;
            }
            Err(_) => return End::Failed,
        };
        let _ = s.set_nodelay(true);
        let s = server.insert(s);
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = s.split();
        match tokio::try_join!(self.pump(Dir::Up, &mut cr, &mut sw), self.pump(Dir::Down, &mut sr, &mut cw)) {
            Ok(_) => End::Closed,
            Err(_) => End::Failed,
        }
    }

    /// Forwards one direction: a reader stamps each chunk with its due time
    /// (latency), a writer delivers it when due and the way is open.
    async fn pump(&self, dir: Dir, src: &mut ReadHalf<'_>, dst: &mut WriteHalf<'_>) -> io::Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
        // Bytes the channel may still take: the reader takes them for each
        // chunk it queues, the writer gives them back once it is written.
        let room = Semaphore::new(PIPE_BYTES);
        let read = async {
            let mut last_due = Instant::now();
            loop {
                let mut buf = vec![0u8; CHUNK_BYTES];
                let n = src.read(&mut buf).await?;
                let bytes = u32::try_from(n).expect("a chunk is at most CHUNK_BYTES");
                match room.acquire_many(bytes).await {
                    Ok(p) => p.forget(),
                    Err(_) => return Ok(()),
                }
                let due = (Instant::now() + Duration::from_micros(self.delay_us(dir))).max(last_due);
                last_due = due;
                let chunk = (n > 0).then(|| {
                    buf.truncate(n);
                    buf
                });
                let eof = chunk.is_none();
                if tx.send((due, chunk)).is_err() || eof {
                    return Ok::<(), io::Error>(());
                }
            }
        };
        let write = async {
            let mut changes = self.link.changed.subscribe();
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                self.wait_open(dir, &mut changes).await;
                let Some(bytes) = chunk else {
                    dst.shutdown().await?;
                    return Ok(());
                };
                self.write_paced(dir, dst, &bytes).await?;
                room.add_permits(bytes.len());
                let i = if dir == Dir::Up { 0 } else { 1 };
                self.link.bytes[i].fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        };
        tokio::try_join!(read, write).map(|_| ())
    }

    /// Writes `bytes`, paced by the bandwidth toxics of `dir`.
    async fn write_paced(&self, dir: Dir, dst: &mut WriteHalf<'_>, bytes: &[u8]) -> io::Result<()> {
        let Some(rate) = self.rate_bytes_s(dir) else { return dst.write_all(bytes).await };
        // Slices of about 50 ms of the rate, each leaving after its time
        // (the last byte is not delivered before len / rate).
        let slice = usize::try_from((rate / 20).max(1)).unwrap_or(usize::MAX);
        for part in bytes.chunks(slice) {
            tokio::time::sleep(Duration::from_micros(part.len() as u64 * 1_000_000 / rate)).await;
            dst.write_all(part).await?;
        }
        Ok(())
    }
}
