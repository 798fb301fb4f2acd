//! The live [`Env`]: the same trait the simulator implements, over a real
//! clock, tokio timers and an outbox the process loop turns into HTTP.
//!
//! A component handler runs synchronously on the process's one loop task.
//! What it sends goes to [`LiveEnv::outbox`]; after the handler returns, the
//! loop makes whatever it wrote durable (the orchestrator's store) and only
//! then delivers the outbox, so no acknowledgement leaves before the write it
//! acknowledges. Timers are tokio sleeps that post the [`Timer`] back to the
//! loop's channel.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::components::env::{Env, Note, Phase, Service, Timer};
use crate::components::ids::{HostId, JobId, Micros};
use crate::components::wire::Msg;

/// The orchestrator's host id (one serving orchestrator per stack).
pub const ORCHESTRATOR: HostId = HostId(1);
/// Whoever submits jobs with `POST /jobs`.
pub const CLIENT: HostId = HostId(2);
/// The payment fake (Stripe-shaped, `STRIPE_API_BASE`).
pub const PAYMENT: HostId = HostId(3);
/// The email fake (Resend-shaped, `EMAIL_API_URL`).
pub const EMAIL: HostId = HostId(4);
/// The read-only search tool (answered in the worker: it has no effect).
pub const SEARCH: HostId = HostId(5);
/// The model providers in priority order: Anthropic, OpenAI, the local fallback.
pub const PROVIDERS: [HostId; 3] = [HostId(6), HostId(7), HostId(8)];
/// The vector store (Qdrant-shaped, `QDRANT_URL`).
pub const VECTOR: HostId = HostId(9);
/// The failover controller, as the orchestrator names it: a process that
/// starts on a database PostgreSQL has promoted takes `Promote` and `Open`
/// from it (its answers go nowhere: the harness's controller watches
/// PostgreSQL, not this process).
pub const CONTROLLER: HostId = HostId(10);
/// Worker replica `r` is host `FIRST_WORKER + r`.
pub const FIRST_WORKER: u32 = 100;
/// Most worker replicas one stack may run.
pub const MAX_REPLICAS: u32 = 10_000;

/// The host id of worker replica `replica`.
pub fn worker_host(replica: u32) -> HostId {
    assert!(replica < MAX_REPLICAS, "replica {replica} is past the limit of {MAX_REPLICAS}");
    HostId(FIRST_WORKER + replica)
}

/// The system-wide monotonic clock (`CLOCK_BOOTTIME`), in microseconds: the
/// same in every process of the machine and across restarts, so a lease
/// expiry written by one orchestrator process is still right for the next.
pub fn monotonic_us() -> Micros {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is always readable");
    let us = t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000;
    assert!(us > 0, "the boot clock reads zero");
    us
}

/// The wall clock in microseconds since the Unix epoch (what an
/// anti-pattern that times leases or makes keys from the wall clock reads).
pub fn wall_us() -> Micros {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(d.as_micros()).expect("under 584 000 years")
}

/// A message between two processes of the stack: `POST /msg` carries one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's host id.
    pub from: HostId,
    /// The incarnation the message is for (sent to a worker) or from (sent
    /// by a worker): the process start time on [`monotonic_us`]. A restarted
    /// process is a new incarnation; messages of another one are dropped,
    /// as the simulator drops messages to and from a crashed host.
    pub incarnation: u64,
    /// Where the sender listens (`http://127.0.0.1:PORT`), for the answer.
    pub reply_to: Option<String>,
    /// The wire message, as JSON ([`Msg`] itself stays on the loop's
    /// thread: a snapshot shipment inside it is not `Send`).
    pub msg: serde_json::Value,
}

impl Envelope {
    /// An envelope around `msg`.
    pub fn new(from: HostId, incarnation: u64, reply_to: Option<String>, msg: &Msg) -> Self {
        Envelope { from, incarnation, reply_to, msg: serde_json::to_value(msg).expect("wire messages serialise") }
    }

    /// The message inside (`None`, with a warning, when it is not one).
    pub fn msg(&self) -> Option<Msg> {
        match serde_json::from_value(self.msg.clone()) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(from = self.from.0, error = %e, "an envelope that holds no wire message; dropped");
                None
            }
        }
    }
}

/// One timeline note as a process prints it (a JSON line on stdout).
#[derive(Serialize)]
struct NoteLine<'a> {
    at_us: Micros,
    process: &'a str,
    host: u32,
    note: &'a Note,
}

/// The live environment of one component.
pub struct LiveEnv {
    me: HostId,
    process: String,
    rng: ChaCha8Rng,
    timers: mpsc::UnboundedSender<Timer>,
    /// What the handler sent, in order; the loop delivers it.
    pub outbox: Vec<(HostId, Msg)>,
}

impl LiveEnv {
    /// An environment for host `me`; timers are posted to `timers`. The rng
    /// is seeded from `seed` and `incarnation`, so a restarted process does
    /// not repeat its predecessor's draws (a key sampled from model output
    /// is new after a restart, as it would be in a real agent).
    pub fn new(me: HostId, process: &str, seed: u64, incarnation: u64, timers: mpsc::UnboundedSender<Timer>) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(seed ^ incarnation.rotate_left(17) ^ u64::from(me.0));
        LiveEnv { me, process: process.to_owned(), rng, timers, outbox: Vec::new() }
    }
}

impl Env for LiveEnv {
    fn now_us(&self) -> Micros {
        monotonic_us()
    }

    fn wall_now_us(&self) -> Micros {
        wall_us()
    }

    fn me(&self) -> HostId {
        self.me
    }

    fn send(&mut self, to: HostId, msg: Msg) {
        self.outbox.push((to, msg));
    }

    /// The processing delay is real time spent in a live process: the
    /// message leaves now.
    fn send_after(&mut self, _delay_us: Micros, to: HostId, msg: Msg) {
        self.outbox.push((to, msg));
    }

    fn set_timer(&mut self, after_us: Micros, timer: Timer) {
        let tx = self.timers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_micros(after_us)).await;
            // The loop is gone only when the process is stopping.
            let _ = tx.send(timer);
        });
    }

    fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    fn resolve(&self, svc: Service) -> HostId {
        match svc {
            Service::Orchestrator | Service::Queue => ORCHESTRATOR,
            Service::Vector => VECTOR,
        }
    }

    fn note(&mut self, note: Note) {
        let line = NoteLine { at_us: monotonic_us(), process: &self.process, host: self.me.0, note: &note };
        println!("{}", serde_json::to_string(&line).expect("notes serialise"));
    }

    /// Live kill points are at the fakes (the harness holds the request and
    /// kills the process group): a component is never stopped from inside.
    fn reach(&mut self, _host: HostId, _job: JobId, _step: u16, _phase: Phase) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_never_goes_back() {
        let a = monotonic_us();
        let b = monotonic_us();
        assert!(b >= a);
    }

    #[tokio::test]
    async fn a_timer_comes_back_to_the_loop_and_sends_wait_in_the_outbox() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut env = LiveEnv::new(worker_host(0), "worker", 1, 2, tx);
        env.set_timer(1_000, Timer::Heartbeat);
        env.send(ORCHESTRATOR, Msg::LeaseReq { req: 1, sent_us: 0 });
        assert_eq!(env.outbox.len(), 1);
        assert_eq!(rx.recv().await, Some(Timer::Heartbeat));
    }
}
