//! The peer comparison: one small workload written twice, once on
//! agentdrill's runtime ([`run_agentdrill`]) and once on turmoil 0.7
//! ([`run_turmoil`], with the `peer` feature), so the two simulators can be
//! timed on equal simulated work.
//!
//! The workload: `workers` workers share `tasks` tasks (task `t` belongs to
//! worker `t % workers`); each task makes `calls` request/response calls to
//! a payment API, one after the other. The API is the crate's own
//! Stripe-style [`SideEffectApi`] on both sides (same key semantics, same
//! processing time). A worker records its progress on a durable "disk"
//! after every answer. Worker 0 crashes at `crash_at_us` (losing its memory
//! and any answer in flight) and restarts `restart_after_us` later; it
//! resumes from its disk and re-sends the call it was waiting for with the
//! same idempotency key, which the API replays. Every link has the same
//! fixed one-way latency and no loss on both sides, and both sides end with
//! `tasks × calls` effects in the API's ledger and no duplicate.

use crate::components::ids::{HostId, IdemKey, JobId, Micros, Origin, RegionId, TaskId, US_PER_MS, US_PER_S};
use crate::components::ledger::{ApiConfig, CallOutcome, SideEffectApi};
use crate::components::workflow::args_for;
use crate::sim::net::LinkConfig;
use crate::sim::{Event, NetConfig, Runtime};

/// The shape of the peer workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerParams {
    /// Number of tasks.
    pub tasks: u32,
    /// Request/response calls per task.
    pub calls: u32,
    /// Number of workers.
    pub workers: u32,
    /// One-way link latency, fixed (multiple of 1 ms: turmoil's resolution).
    pub latency_us: Micros,
    /// The API's processing time per call.
    pub processing_us: Micros,
    /// A worker's request timeout before it re-sends.
    pub timeout_us: Micros,
    /// When worker 0 crashes.
    pub crash_at_us: Micros,
    /// How long worker 0 stays down.
    pub restart_after_us: Micros,
}

impl PeerParams {
    /// The default shape: `tasks` tasks × 5 calls over 8 workers, 1 ms
    /// links, 300 ms processing (the payment API's default), a 5 s timeout,
    /// and worker 0 down for 30 s from a third of the way through its work
    /// (in the middle of a call).
    pub fn new(tasks: u32) -> Self {
        let mut p = PeerParams {
            tasks,
            calls: 5,
            workers: 8,
            latency_us: US_PER_MS,
            processing_us: 300 * US_PER_MS,
            timeout_us: 5 * US_PER_S,
            crash_at_us: 0,
            restart_after_us: 30 * US_PER_S,
        };
        let per_call = p.processing_us + 2 * p.latency_us;
        p.crash_at_us = (u64::from(p.tasks_of(0) * p.calls) * per_call / 3 / US_PER_MS + 1) * US_PER_MS;
        p
    }

    /// The same shape with 1 ms of processing instead of 300 ms and worker 0
    /// down for 10 ms instead of 30 s: turmoil then has almost no idle tick
    /// to step through, so the ratio shows the cost per message rather than
    /// the skipping of idle time.
    pub fn busy(tasks: u32) -> Self {
        let mut p = PeerParams { processing_us: US_PER_MS, restart_after_us: 10 * US_PER_MS, ..PeerParams::new(tasks) };
        let per_call = p.processing_us + 2 * p.latency_us;
        p.crash_at_us = (u64::from(p.tasks_of(0) * p.calls) * per_call / 3 / US_PER_MS + 1) * US_PER_MS;
        p
    }

    /// Tasks of worker `w`, in order.
    fn tasks_of(&self, w: u32) -> u32 {
        (self.tasks + self.workers - 1 - w) / self.workers
    }

    /// The `i`-th task of worker `w`.
    fn task(&self, w: u32, i: u32) -> u32 {
        i * self.workers + w
    }
}

/// What a run of the peer workload produced (equal on both sides when the
/// simulated work is equal).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerOutcome {
    /// Effects in the API's ledger.
    pub effects: u64,
    /// Ledger entries beyond one per (task, call).
    pub duplicates: u64,
    /// Calls the API received (re-sends included).
    pub requests: u64,
    /// Simulated time when the last task finished.
    pub finished_us: Micros,
}

/// The payment API both sides call, sized up front for the workload's
/// calls (both sides alike: its growth is the API's cost, not the
/// simulator's).
fn payment_api(p: &PeerParams) -> SideEffectApi {
    let mut api = SideEffectApi::new(ApiConfig { processing_us: p.processing_us, ..ApiConfig::payment() });
    api.reserve(p.tasks as usize * p.calls as usize);
    api
}

/// What the API's ledger shows (both sides call this on their own API).
fn outcome(api: &SideEffectApi, finished_us: Micros) -> PeerOutcome {
    // One flag per (task, call) pair, both dense: an effect whose pair is
    // already flagged is a duplicate.
    let ledger = api.ledger();
    let calls = ledger.iter().map(|e| usize::from(e.origin.step) + 1).max().unwrap_or(0);
    let tasks = ledger.iter().map(|e| e.origin.job.0 as usize + 1).max().unwrap_or(0);
    let mut seen = vec![false; tasks * calls];
    let mut duplicates = 0;
    for e in ledger {
        let flag = &mut seen[e.origin.job.0 as usize * calls + usize::from(e.origin.step)];
        duplicates += u64::from(*flag);
        *flag = true;
    }
    PeerOutcome { effects: ledger.len() as u64, duplicates, requests: api.stats().calls, finished_us }
}

fn key(task: u32, call: u32) -> IdemKey {
    IdemKey { hi: u64::from(task), lo: u64::from(call) }
}

/// Messages of the peer workload on agentdrill's runtime.
#[derive(Clone, Copy, Debug)]
enum PMsg {
    Req { req: u32, task: u32, call: u32 },
    Resp { req: u32, ok: bool },
}

/// Timers and harness events of the peer workload.
#[derive(Clone, Copy, Debug)]
enum PTimer {
    /// A worker's one request timer (see [`PWorker::deadline_us`]).
    Watchdog,
    Retry,
    Crash,
    Restart,
}

/// A worker's volatile state (its durable progress lives outside).
///
/// The request timeout is one watchdog timer per worker, not a timer per
/// request: the runtime cannot cancel a timer, so a timer per request
/// would leave every answered request's timer in the queue until it fired
/// for nothing (turmoil's side cancels its `tokio::time::timeout` when the
/// answer arrives). The watchdog is armed for the current request's
/// deadline when none is armed; when it fires before the deadline (an
/// earlier request's), it is re-armed for the rest. So a request still
/// times out exactly at its send time plus the timeout, as the stack's
/// worker's watchdog does it.
#[derive(Clone, Copy, Debug, Default)]
struct PWorker {
    req: u32,
    waiting: bool,
    /// When the current request times out.
    deadline_us: Micros,
    /// A watchdog timer is queued for this incarnation.
    armed: bool,
}

/// Runs the workload on agentdrill's runtime ([`Runtime`], the engine the
/// stack runs on) and returns what happened.
pub fn run_agentdrill(p: &PeerParams) -> PeerOutcome {
    let link = LinkConfig { latency_us: p.latency_us, jitter_us: 0, loss: 0.0 };
    let mut rt: Runtime<PMsg, PTimer> = Runtime::new(1, NetConfig { intra_region: link, cross_region: link });
    let api_host = rt.add_host("api", RegionId(0));
    let workers: Vec<HostId> = (0..p.workers).map(|w| rt.add_host(format!("w{w}"), RegionId(0))).collect();
    let mut api = payment_api(p);
    let mut volatile = vec![PWorker::default(); p.workers as usize];
    // Durable progress per worker: calls completed, over all its tasks.
    let mut disk = vec![0u32; p.workers as usize];
    let mut finished_us = 0;

    let send = |rt: &mut Runtime<PMsg, PTimer>, v: &mut PWorker, w: u32, done: u32| -> bool {
        if done >= p.tasks_of(w) * p.calls {
            v.waiting = false;
            return false;
        }
        v.req = v.req.wrapping_add(1);
        v.waiting = true;
        v.deadline_us = rt.now_us() + p.timeout_us;
        let (task, call) = (p.task(w, done / p.calls), done % p.calls);
        let h = workers[w as usize];
        rt.send(h, api_host, PMsg::Req { req: v.req, task, call });
        if !v.armed {
            v.armed = true;
            rt.set_timer(h, p.timeout_us, PTimer::Watchdog);
        }
        true
    };
    // Workers with calls left: the run ends when the last one finishes, as
    // turmoil's does (what is still queued then is no work).
    let mut busy = 0;
    for w in 0..p.workers {
        busy += u32::from(send(&mut rt, &mut volatile[w as usize], w, 0));
    }
    rt.schedule_control(p.crash_at_us, PTimer::Crash);
    rt.schedule_control(p.crash_at_us + p.restart_after_us, PTimer::Restart);

    while let Some(ev) = rt.step(Micros::MAX) {
        match ev {
            Event::Deliver { from, msg: PMsg::Req { req, task, call }, .. } => {
                let now = rt.now_us();
                let origin =
                    Origin { job: JobId(task), step: call as u16, host: from, task: TaskId(u64::from(task)), token: 1 };
                let (out, done_at) = api.call(now, Some(key(task, call)), args_for(task, call as u16, 0), origin);
                let ok = matches!(out, CallOutcome::Ok { .. });
                rt.send_after(api_host, done_at - now, from, PMsg::Resp { req, ok });
            }
            Event::Deliver { to, msg: PMsg::Resp { req, ok }, .. } => {
                let w = to.0 - workers[0].0;
                let v = &mut volatile[w as usize];
                if !v.waiting || v.req != req {
                    continue;
                }
                if ok {
                    disk[w as usize] += 1;
                    if !send(&mut rt, v, w, disk[w as usize]) {
                        finished_us = finished_us.max(rt.now_us());
                        busy -= 1;
                        if busy == 0 {
                            break;
                        }
                    }
                } else {
                    v.waiting = false;
                    rt.set_timer(to, US_PER_S, PTimer::Retry);
                }
            }
            Event::Timer { host, timer: PTimer::Watchdog } => {
                let w = host.0 - workers[0].0;
                let v = &mut volatile[w as usize];
                v.armed = false;
                let now = rt.now_us();
                if v.waiting && v.deadline_us <= now {
                    send(&mut rt, v, w, disk[w as usize]);
                } else if v.waiting {
                    v.armed = true;
                    rt.set_timer(host, v.deadline_us - now, PTimer::Watchdog);
                }
            }
            Event::Timer { host, timer: PTimer::Retry } => {
                let w = host.0 - workers[0].0;
                send(&mut rt, &mut volatile[w as usize], w, disk[w as usize]);
            }
            Event::Control(PTimer::Crash) => {
                rt.crash(workers[0]);
                volatile[0] = PWorker::default();
            }
            Event::Control(PTimer::Restart) => {
                rt.restart(workers[0]);
                send(&mut rt, &mut volatile[0], 0, disk[0]);
            }
            _ => {}
        }
    }
    outcome(&api, finished_us)
}

/// Runs the same workload on turmoil 0.7: each worker and the API are
/// turmoil hosts speaking UDP through `turmoil::net`, timeouts are
/// `tokio::time::timeout`, and the crash is `Sim::crash` then `Sim::bounce`.
/// Turmoil advances time in ticks of 1 ms (its default) and polls every
/// host each tick.
#[cfg(feature = "peer")]
pub fn run_turmoil(p: &PeerParams) -> PeerOutcome {
    use std::cell::{Cell, RefCell};
    use std::net::{IpAddr, Ipv4Addr};
    use std::rc::Rc;
    use std::time::Duration;

    const PORT: u16 = 9_000;
    let latency = Duration::from_micros(p.latency_us);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(24 * 3_600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(latency)
        .max_message_latency(latency)
        .rng_seed(1)
        .build();
    let api = Rc::new(RefCell::new(payment_api(p)));
    let tasks_done = Rc::new(Cell::new(0u32));
    let finished_us = Rc::new(Cell::new(0u64));
    let now_us = || turmoil::sim_elapsed().map_or(0, |d| d.as_micros() as u64);

    {
        let api = api.clone();
        sim.host("api", move || {
            let api = api.clone();
            async move {
                let sock = Rc::new(turmoil::net::UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).await?);
                let mut buf = [0u8; 16];
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await?;
                    assert_eq!(n, 12, "request datagram");
                    let word = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
                    let (req, task, call) = (word(0), word(4), word(8));
                    let now = now_us();
                    let origin = Origin {
                        job: JobId(task),
                        step: call as u16,
                        host: HostId(0),
                        task: TaskId(u64::from(task)),
                        token: 1,
                    };
                    let (out, done_at) =
                        api.borrow_mut().call(now, Some(key(task, call)), args_for(task, call as u16, 0), origin);
                    let mut reply = [0u8; 5];
                    reply[..4].copy_from_slice(&req.to_le_bytes());
                    reply[4] = u8::from(matches!(out, CallOutcome::Ok { .. }));
                    let sock = sock.clone();
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep(Duration::from_micros(done_at - now)).await;
                        let _ = sock.send_to(&reply, from).await;
                    });
                }
            }
        });
    }
    for w in 0..p.workers {
        let disk = Rc::new(Cell::new(0u32));
        let (p, tasks_done, finished_us) = (*p, tasks_done.clone(), finished_us.clone());
        sim.host(format!("w{w}"), move || {
            let (disk, tasks_done, finished_us) = (disk.clone(), tasks_done.clone(), finished_us.clone());
            async move {
                let sock = turmoil::net::UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).await?;
                let total = p.tasks_of(w) * p.calls;
                let mut req = 0u32;
                let mut buf = [0u8; 16];
                while disk.get() < total {
                    let done = disk.get();
                    let (task, call) = (p.task(w, done / p.calls), done % p.calls);
                    req = req.wrapping_add(1);
                    let mut msg = [0u8; 12];
                    msg[..4].copy_from_slice(&req.to_le_bytes());
                    msg[4..8].copy_from_slice(&task.to_le_bytes());
                    msg[8..].copy_from_slice(&call.to_le_bytes());
                    sock.send_to(&msg, ("api", PORT)).await?;
                    let deadline = tokio::time::Instant::now() + Duration::from_micros(p.timeout_us);
                    // Wait for this request's answer (late answers to
                    // earlier requests are ignored), or time out and re-send.
                    let ok = loop {
                        match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                            Ok(r) => {
                                let (n, _) = r?;
                                if n == 5 && u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) == req {
                                    break Some(buf[4] == 1);
                                }
                            }
                            Err(_) => break None,
                        }
                    };
                    match ok {
                        Some(true) => {
                            disk.set(done + 1);
                            if (done + 1) % p.calls == 0 {
                                tasks_done.set(tasks_done.get() + 1);
                            }
                        }
                        Some(false) => tokio::time::sleep(Duration::from_secs(1)).await,
                        None => {}
                    }
                }
                finished_us.set(finished_us.get().max(now_us()));
                Ok(())
            }
        });
    }
    let (crash_at, restart_at) = (p.crash_at_us, p.crash_at_us + p.restart_after_us);
    let (mut crashed, mut restarted) = (false, false);
    while tasks_done.get() < p.tasks {
        sim.step().expect("the turmoil simulation runs");
        let now = sim.elapsed().as_micros() as u64;
        if !crashed && now >= crash_at {
            sim.crash("w0");
            crashed = true;
        }
        if crashed && !restarted && now >= restart_at {
            sim.bounce("w0");
            restarted = true;
        }
    }
    outcome(&api.borrow(), finished_us.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agentdrill_side_finishes_every_call_once_despite_the_crash() {
        let p = PeerParams::new(40);
        let o = run_agentdrill(&p);
        assert_eq!(o.effects, 200);
        assert_eq!(o.duplicates, 0);
        assert!(o.requests > o.effects, "the crash made worker 0 re-send: {o:?}");
    }

    #[cfg(feature = "peer")]
    #[test]
    fn both_sides_do_the_same_simulated_work() {
        let p = PeerParams::new(40);
        let (a, t) = (run_agentdrill(&p), run_turmoil(&p));
        assert_eq!(a.effects, t.effects);
        assert_eq!(t.duplicates, 0);
        assert_eq!(a.requests, t.requests, "{a:?} vs {t:?}");
        // Turmoil quantises time to its 1 ms tick.
        assert!(a.finished_us.abs_diff(t.finished_us) < 50 * US_PER_MS, "{a:?} vs {t:?}");
        let p = PeerParams::busy(40);
        let (a, t) = (run_agentdrill(&p), run_turmoil(&p));
        assert_eq!((a.effects, a.requests, a.duplicates), (t.effects, t.requests, t.duplicates), "{a:?} vs {t:?}");
        assert!(a.requests > a.effects, "the crash made worker 0 re-send: {a:?}");
    }
}
