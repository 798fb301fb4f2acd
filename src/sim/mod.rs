//! The deterministic simulation runtime: virtual time, hosts grouped into
//! regions, a network with per-link latency, loss and partitions, and one
//! seeded RNG.
//!
//! The runtime knows nothing of agents. It is generic over the message type
//! `M` and the timer type `T` of whatever runs on it, keeps one event queue
//! ordered by `(time, sequence)`, and *skips idle time*: popping an event
//! jumps the clock straight to it, so a 24-hour drill costs as much wall
//! time as its number of events, not its simulated length.
//!
//! Determinism: every random choice comes from the one `ChaCha8Rng` seeded
//! by the drill; ties in time are broken by the order events were
//! scheduled; nothing iterates a `HashMap`; there is no wall clock.
//!
//! Crash semantics (see [`Runtime::crash`]): a crash bumps the host's
//! incarnation. Every message and timer remembers the incarnation of its
//! destination at the moment it was scheduled, and is dropped on delivery
//! if the host has crashed (or crashed and restarted) since. So messages in
//! flight to a crashed host are lost, and replies to a crashed caller are
//! lost, without any bookkeeping in the components.

pub mod net;
mod queue;
pub mod quiet;
pub mod stack;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::components::ids::{HostId, Micros, RegionId};
pub use net::{Endpoint, LinkClass, NetConfig, Network, Partition};
use queue::{Entry, Queue};

/// A host's runtime status.
#[derive(Clone, Debug)]
pub struct Host {
    /// Human-readable name (`"worker-a-3"`), for reports only.
    pub name: String,
    /// The failure domain.
    pub region: RegionId,
    /// `false` between a crash and the next restart.
    pub up: bool,
    /// Bumped at every crash; stale messages and timers are dropped.
    pub incarnation: u32,
    /// A paused host (GC pause, frozen VM) handles nothing before this time;
    /// its events are deferred, not lost.
    pub paused_until_us: Micros,
    /// Offset of the host's wall clock from true time (clock skew). The
    /// monotonic clock the runtime schedules with is never skewed.
    pub skew_us: i64,
    /// When it last crashed.
    pub crashed_at_us: Micros,
}

impl Host {
    /// The time the host acts at, when the runtime's clock reads `now_us`:
    /// then, or its wake-up time while it is paused (a frozen process sends
    /// nothing and sets no timer until it wakes).
    #[inline(always)]
    pub fn acts_at(&self, now_us: Micros) -> Micros {
        now_us.max(self.paused_until_us)
    }
}

/// What the runtime hands back from [`Runtime::step`].
#[derive(Debug)]
pub enum Event<M, T> {
    /// A message arrives at `to`, which is up and is the incarnation it was
    /// addressed to.
    Deliver {
        /// Sender.
        from: HostId,
        /// Receiver.
        to: HostId,
        /// Payload.
        msg: M,
    },
    /// A timer set by `host` fires.
    Timer {
        /// The host that set the timer.
        host: HostId,
        /// Payload.
        timer: T,
    },
    /// A harness event (fault injection, measurement tick); not tied to any
    /// host's liveness.
    Control(T),
}

/// A queued event, as [`Runtime::queued`] lists it.
#[derive(Debug)]
pub enum Queued<'a, M, T> {
    /// A message in flight.
    Message {
        /// Its sender.
        from: HostId,
        /// The message.
        msg: &'a M,
    },
    /// A host's timer.
    Timer(&'a T),
    /// A harness event.
    Control(&'a T),
}

enum Payload<M, T> {
    /// `sent_by` and `depart_us`: the sender's incarnation and when the
    /// message leaves it (later than the send for a paused sender or a
    /// processing delay); a sender that crashes before then never sends it.
    Deliver {
        from: HostId,
        to: HostId,
        incarnation: u32,
        sent_by: u32,
        depart_us: Micros,
        /// Taken (`None`) as the event is handed out; never built (`None`
        /// from the start) for a receiver that was down when it was sent.
        msg: Option<M>,
    },
    Timer {
        host: HostId,
        incarnation: u32,
        timer: Option<T>,
    },
    Control(Option<T>),
}

/// A slot of the payload slab: a queued event's payload, or a link of the
/// free list (the next free slot, [`NO_SLOT`] at its end).
enum Slot<M, T> {
    Full(Payload<M, T>),
    Free(u32),
}

/// Asks the CPU to fetch `x` into the cache (a hint; nothing where the
/// target has no such instruction).
#[inline(always)]
fn prefetch<X>(x: &X) {
    // SAFETY: a prefetch reads nothing and cannot fault; SSE is part of
    // every x86-64 CPU.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(std::ptr::from_ref(x).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// The end of the slab's free list.
const NO_SLOT: u32 = u32::MAX;

/// Counters of what the runtime did, for benchmarks and the event digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Events popped and handed out (messages, timers, controls).
    pub events: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages dropped: lost on the link, partitioned, or to a crashed host.
    pub dropped: u64,
    /// Timers dropped because their host crashed.
    pub stale_timers: u64,
}

impl RuntimeStats {
    /// Everything the runtime handled: events handed out, and messages and
    /// timers it dropped. A drill's budget counts this, not `events`: a
    /// client resending to a dead host does work that no event shows.
    pub fn work(&self) -> u64 {
        self.events + self.dropped + self.stale_timers
    }
}

/// The simulation runtime. See the module docs.
pub struct Runtime<M, T> {
    now_us: Micros,
    seq: u64,
    queue: Queue,
    /// Payloads of queued events, indexed by `Entry::slot`; the free
    /// slots form a list threaded through the slab itself.
    slab: Vec<Slot<M, T>>,
    /// The first free slot of `slab` ([`NO_SLOT`]: none).
    free: u32,
    hosts: Vec<Host>,
    net: Network,
    rng: ChaCha8Rng,
    stats: RuntimeStats,
    digest: u64,
}

const FNV_PRIME: u64 = 0x100_0000_01b3;

impl<M, T> Runtime<M, T> {
    /// A runtime at time zero with no hosts.
    pub fn new(seed: u64, net: NetConfig) -> Self {
        Runtime {
            now_us: 0,
            seq: 0,
            queue: Queue::new(),
            slab: Vec::with_capacity(1024),
            free: NO_SLOT,
            hosts: Vec::with_capacity(32), // a two-region stack has about 20
            net: Network::new(net),
            rng: ChaCha8Rng::seed_from_u64(seed),
            stats: RuntimeStats::default(),
            digest: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// Adds a host (up, incarnation 0) and returns its id.
    pub fn add_host(&mut self, name: impl Into<String>, region: RegionId) -> HostId {
        let id = HostId(u32::try_from(self.hosts.len()).expect("fewer than 2^32 hosts"));
        self.hosts.push(Host {
            name: name.into(),
            region,
            up: true,
            incarnation: 0,
            paused_until_us: 0,
            skew_us: 0,
            crashed_at_us: 0,
        });
        id
    }

    /// The current simulated time.
    #[inline]
    pub fn now_us(&self) -> Micros {
        self.now_us
    }

    /// The one RNG.
    #[inline]
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// All hosts, indexed by `HostId`.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// One host.
    #[inline]
    pub fn host(&self, h: HostId) -> &Host {
        &self.hosts[h.0 as usize]
    }

    /// The network, for faults that change links.
    pub fn net_mut(&mut self) -> &mut Network {
        &mut self.net
    }

    /// The network.
    pub fn net(&self) -> &Network {
        &self.net
    }

    /// Counters.
    pub fn stats(&self) -> RuntimeStats {
        self.stats
    }

    /// A running FNV-1a digest over every event handed out (time, kind,
    /// hosts): two runs with equal digests saw the same event sequence.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Number of events waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    #[inline(always)]
    fn push(&mut self, at_us: Micros, payload: Payload<M, T>) {
        debug_assert!(at_us >= self.now_us, "scheduling into the past");
        let slot = self.alloc_slot();
        // The slot is free: there is nothing to drop (and the old value is
        // never read).
        std::mem::forget(std::mem::replace(&mut self.slab[slot as usize], Slot::Full(payload)));
        self.seq += 1;
        self.queue.push(Entry { at_us, seq: self.seq, slot });
    }

    /// A free slot of the slab, taken off the free list (or added).
    #[inline(always)]
    fn alloc_slot(&mut self) -> u32 {
        let slot = self.free;
        if slot != NO_SLOT {
            let Slot::Free(next) = self.slab[slot as usize] else { unreachable!("the free list holds free slots") };
            self.free = next;
            slot
        } else {
            let slot = u32::try_from(self.slab.len()).ok().filter(|&s| s != NO_SLOT);
            let slot = slot.expect("fewer than 2^32 - 1 pending events");
            self.slab.push(Slot::Free(NO_SLOT));
            slot
        }
    }

    /// Sends `msg` from `from` to `to` over the network: it arrives after the
    /// link's latency unless the link drops it or a partition cuts it.
    #[inline]
    pub fn send(&mut self, from: HostId, to: HostId, msg: M) {
        self.send_after(from, 0, to, msg);
    }

    /// The time a host acts at: now, or its wake-up time while it is paused
    /// (a frozen process sends nothing and sets no timer until it wakes).
    #[inline(always)]
    fn local_now(&self, h: HostId) -> Micros {
        self.hosts[h.0 as usize].acts_at(self.now_us)
    }

    /// Sends `msg` after the sender spent `delay_us` processing it.
    #[inline(always)]
    pub fn send_after(&mut self, from: HostId, delay_us: Micros, to: HostId, msg: M) {
        self.send_after_built(from, delay_us, to, move || msg);
    }

    /// [`Runtime::send`] of the message `make` builds, built only once the
    /// route is known to deliver it to a host that is up: the same draws,
    /// the same event, and no work for a message the link drops or the
    /// receiver, crashed, never gets.
    #[inline]
    pub fn send_built(&mut self, from: HostId, to: HostId, make: impl FnOnce() -> M) {
        self.send_after_built(from, 0, to, make);
    }

    /// The one send: routes the message, then builds and queues it if the
    /// link delivers it.
    #[inline(always)]
    fn send_after_built(&mut self, from: HostId, delay_us: Micros, to: HostId, make: impl FnOnce() -> M) {
        // What the send needs of both hosts, read once.
        let (sender, receiver) = (&self.hosts[from.0 as usize], &self.hosts[to.0 as usize]);
        let depart = sender.acts_at(self.now_us) + delay_us;
        let (fr, sent_by) = (sender.region, sender.incarnation);
        let (tr, incarnation, up) = (receiver.region, receiver.incarnation, receiver.up);
        match self.net.route(depart, from, fr, to, tr, &mut self.rng) {
            Some(latency_us) => {
                // A message to a crashed host carries the incarnation its
                // restart replaces, so `step` drops it on arrival: queued
                // all the same (the same event, counted as dropped when it
                // arrives), but not built (a primary re-ships its whole
                // backlog to a lost replica every tick).
                let msg = up.then(make);
                self.push(
                    depart + latency_us,
                    Payload::Deliver { from, to, incarnation, sent_by, depart_us: depart, msg },
                );
            }
            None => self.stats.dropped += 1,
        }
    }

    /// Sends `copies` copies of a message from `from` to `to`, each routed
    /// as a send of its own (the same random draws as `copies` calls of
    /// [`Runtime::send`]: jitter and loss per copy), and queues only the
    /// first copy to arrive: a probe sent from several places at once whose
    /// receiver acts on the first copy (a health check). `make(n)` builds
    /// the message knowing that `n` copies (at least 1) made it; nothing is
    /// queued when none did. Returns `n` (0 when all were lost).
    pub fn send_copies(&mut self, from: HostId, to: HostId, copies: u32, make: impl FnOnce(u32) -> M) -> u32 {
        let depart = self.local_now(from);
        let (fr, tr) = (self.hosts[from.0 as usize].region, self.hosts[to.0 as usize].region);
        let mut first_us: Option<Micros> = None;
        let mut arrived = 0;
        for _ in 0..copies {
            match self.net.route(depart, from, fr, to, tr, &mut self.rng) {
                Some(latency_us) => {
                    arrived += 1;
                    first_us = Some(first_us.map_or(latency_us, |f| f.min(latency_us)));
                }
                None => self.stats.dropped += 1,
            }
        }
        if let Some(latency_us) = first_us {
            let incarnation = self.hosts[to.0 as usize].incarnation;
            let sent_by = self.hosts[from.0 as usize].incarnation;
            let msg = make(arrived);
            self.push(
                depart + latency_us,
                Payload::Deliver { from, to, incarnation, sent_by, depart_us: depart, msg: Some(msg) },
            );
        }
        arrived
    }

    /// Sets a timer on `host`, firing after `after_us` unless the host
    /// crashes first.
    #[inline(always)]
    pub fn set_timer(&mut self, host: HostId, after_us: Micros, timer: T) {
        let incarnation = self.hosts[host.0 as usize].incarnation;
        let at = self.local_now(host) + after_us;
        self.push(at, Payload::Timer { host, incarnation, timer: Some(timer) });
    }

    /// Schedules a harness event at an absolute time (clamped to now).
    pub fn schedule_control(&mut self, at_us: Micros, ev: T) {
        let at = at_us.max(self.now_us);
        self.push(at, Payload::Control(Some(ev)));
    }

    /// Crashes a host: it drops everything in memory (the caller resets the
    /// component), and every message and timer addressed to its current
    /// incarnation is lost.
    pub fn crash(&mut self, h: HostId) {
        let host = &mut self.hosts[h.0 as usize];
        host.up = false;
        host.incarnation += 1;
        host.paused_until_us = 0;
        host.crashed_at_us = self.now_us;
    }

    /// Brings a crashed host back up as a new incarnation. The caller re-runs
    /// the component's start-up.
    pub fn restart(&mut self, h: HostId) {
        let host = &mut self.hosts[h.0 as usize];
        assert!(!host.up, "restart of a host that is up: {}", host.name);
        host.up = true;
        host.incarnation += 1;
    }

    /// Sets a host's wall-clock offset.
    pub fn set_skew(&mut self, h: HostId, skew_us: i64) {
        self.hosts[h.0 as usize].skew_us = skew_us;
    }

    /// Freezes a host until `until_us`: it neither handles messages nor
    /// fires timers before then; they are deferred, in order.
    pub fn pause(&mut self, h: HostId, until_us: Micros) {
        let host = &mut self.hosts[h.0 as usize];
        host.paused_until_us = host.paused_until_us.max(until_us);
    }

    /// Pops the next live event, advancing the clock to it. Returns `None`
    /// when nothing is left or the next event lies beyond `horizon_us`.
    #[inline(always)]
    pub fn step(&mut self, horizon_us: Micros) -> Option<Event<M, T>> {
        loop {
            let slab = &self.slab;
            let head_at = self.queue.peek(|slot| prefetch(&slab[slot as usize]))?.at_us;
            if head_at > horizon_us {
                return None;
            }
            let Entry { at_us, slot, .. } = self.queue.take();
            self.now_us = at_us;
            // The checks read the parked payload in place; only what is
            // handed out is moved out of the slab, and an event deferred by
            // a pause keeps its slot.
            match &self.slab[slot as usize] {
                Slot::Full(Payload::Deliver { from, to, incarnation, sent_by, depart_us, .. }) => {
                    let (from, to) = (*from, *to);
                    let sender = &self.hosts[from.0 as usize];
                    if sender.incarnation != *sent_by && sender.crashed_at_us < *depart_us {
                        self.release(slot);
                        self.stats.dropped += 1; // the sender died before it left
                        continue;
                    }
                    let host = &self.hosts[to.0 as usize];
                    if !host.up || host.incarnation != *incarnation {
                        self.release(slot);
                        self.stats.dropped += 1;
                        continue;
                    }
                    if host.paused_until_us > at_us {
                        let wake = host.paused_until_us;
                        self.requeue(wake, slot);
                        continue;
                    }
                    self.stats.events += 1;
                    self.stats.delivered += 1;
                    self.mix(at_us, 1, u64::from(from.0) << 32 | u64::from(to.0));
                    let Slot::Full(Payload::Deliver { msg, .. }) = &mut self.slab[slot as usize] else {
                        unreachable!("the slot holds this message")
                    };
                    let msg = msg.take().expect("a message is handed out once");
                    self.vacate(slot);
                    return Some(Event::Deliver { from, to, msg });
                }
                Slot::Full(Payload::Timer { host: h, incarnation, .. }) => {
                    let h = *h;
                    let host = &self.hosts[h.0 as usize];
                    if !host.up || host.incarnation != *incarnation {
                        self.release(slot);
                        self.stats.stale_timers += 1;
                        continue;
                    }
                    if host.paused_until_us > at_us {
                        let wake = host.paused_until_us;
                        self.requeue(wake, slot);
                        continue;
                    }
                    self.stats.events += 1;
                    self.mix(at_us, 2, u64::from(h.0));
                    let Slot::Full(Payload::Timer { timer, .. }) = &mut self.slab[slot as usize] else {
                        unreachable!("the slot holds this timer")
                    };
                    let timer = timer.take().expect("a timer is handed out once");
                    self.vacate(slot);
                    return Some(Event::Timer { host: h, timer });
                }
                Slot::Full(Payload::Control(_)) => {
                    self.stats.events += 1;
                    self.mix(at_us, 3, 0);
                    let Slot::Full(Payload::Control(t)) = &mut self.slab[slot as usize] else {
                        unreachable!("the slot holds this control event")
                    };
                    let t = t.take().expect("a control event is handed out once");
                    self.vacate(slot);
                    return Some(Event::Control(t));
                }
                Slot::Free(_) => unreachable!("a queued event has its payload"),
            }
        }
    }

    /// Every queued event that will be handed out, in no particular order,
    /// as the host it is addressed to (`None` for a harness event) and what
    /// it carries. A message or timer [`Runtime::step`] will drop (its host
    /// crashed since, or its sender died before it left) is not listed; one
    /// a pause defers is.
    pub fn queued(&self) -> impl Iterator<Item = (Option<HostId>, Queued<'_, M, T>)> {
        let live = |h: HostId, incarnation: u32| {
            let host = &self.hosts[h.0 as usize];
            host.up && host.incarnation == incarnation
        };
        self.slab.iter().filter_map(move |slot| match slot {
            Slot::Full(Payload::Deliver { from, to, incarnation, sent_by, depart_us, msg: Some(msg) }) => {
                let sender = &self.hosts[from.0 as usize];
                let left = sender.incarnation == *sent_by || sender.crashed_at_us >= *depart_us;
                (left && live(*to, *incarnation)).then_some((Some(*to), Queued::Message { from: *from, msg }))
            }
            Slot::Full(Payload::Timer { host, incarnation, timer: Some(timer) }) => {
                live(*host, *incarnation).then_some((Some(*host), Queued::Timer(timer)))
            }
            Slot::Full(Payload::Control(Some(t))) => Some((None, Queued::Control(t))),
            _ => None,
        })
    }

    /// Frees the slot of an event just handed out: its payload was taken,
    /// so what is left holds nothing to drop (and is not read again).
    #[inline(always)]
    fn vacate(&mut self, slot: u32) {
        std::mem::forget(std::mem::replace(&mut self.slab[slot as usize], Slot::Free(self.free)));
        self.free = slot;
    }

    /// Drops a queued event's payload and frees its slot.
    #[inline]
    fn release(&mut self, slot: u32) {
        self.slab[slot as usize] = Slot::Free(self.free);
        self.free = slot;
    }

    /// Queues again, at `at_us`, the event whose payload is parked in
    /// `slot` (a paused host's), as a new schedule (a fresh sequence
    /// number, as a push of the same payload would take).
    #[inline]
    fn requeue(&mut self, at_us: Micros, slot: u32) {
        self.seq += 1;
        self.queue.push(Entry { at_us, seq: self.seq, slot });
    }

    #[inline]
    fn mix(&mut self, at: Micros, kind: u64, hosts: u64) {
        for word in [at, kind, hosts] {
            self.digest ^= word;
            self.digest = self.digest.wrapping_mul(FNV_PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::ids::US_PER_S;

    fn rt() -> Runtime<u32, u32> {
        Runtime::new(7, NetConfig::default())
    }

    #[test]
    fn idle_time_is_skipped_and_order_is_by_time_then_schedule() {
        let mut r = rt();
        let a = r.add_host("a", RegionId(0));
        r.set_timer(a, 3_600 * US_PER_S, 1);
        r.set_timer(a, 10, 2);
        r.set_timer(a, 10, 3);
        let mut seen = Vec::new();
        while let Some(Event::Timer { timer, .. }) = r.step(u64::MAX) {
            seen.push((r.now_us(), timer));
        }
        assert_eq!(seen, vec![(10, 2), (10, 3), (3_600 * US_PER_S, 1)]);
    }

    #[test]
    fn messages_to_a_crashed_host_are_lost_and_restart_does_not_revive_them() {
        let mut r = rt();
        let a = r.add_host("a", RegionId(0));
        let b = r.add_host("b", RegionId(0));
        r.send(a, b, 1);
        r.set_timer(b, 5, 9);
        r.crash(b);
        r.restart(b);
        r.send(a, b, 2);
        let mut got = Vec::new();
        while let Some(ev) = r.step(u64::MAX) {
            if let Event::Deliver { msg, .. } = ev {
                got.push(msg);
            } else {
                panic!("stale timer fired");
            }
        }
        assert_eq!(got, vec![2]);
        assert_eq!(r.stats().dropped, 1);
        assert_eq!(r.stats().stale_timers, 1);
    }

    #[test]
    fn a_paused_host_defers_events_until_it_wakes() {
        let mut r = rt();
        let a = r.add_host("a", RegionId(0));
        r.set_timer(a, 10, 1);
        r.pause(a, 1_000);
        let ev = r.step(u64::MAX);
        assert!(matches!(ev, Some(Event::Timer { timer: 1, .. })));
        assert_eq!(r.now_us(), 1_000);
    }

    #[test]
    fn copies_arrive_once_at_the_first_arrival_and_count_the_survivors() {
        let mut r = rt();
        let a = r.add_host("a", RegionId(0));
        let b = r.add_host("b", RegionId(1));
        assert_eq!(r.send_copies(a, b, 3, |n| n), 3);
        let Some(Event::Deliver { msg, .. }) = r.step(u64::MAX) else { panic!("one copy is delivered") };
        assert_eq!(msg, 3);
        assert!(r.step(u64::MAX).is_none(), "only the first copy is queued");
        r.net_mut().add_partition(Partition {
            a: Endpoint::Host(a),
            b: Endpoint::Host(b),
            from_us: 0,
            until_us: u64::MAX,
            one_way: false,
            extra_latency_us: 0,
            loss: 1.0,
        });
        assert_eq!(r.send_copies(a, b, 3, |n| n), 0);
        assert!(r.step(u64::MAX).is_none());
        assert_eq!(r.stats().dropped, 3);
    }

    #[test]
    fn horizon_stops_the_clock() {
        let mut r = rt();
        let a = r.add_host("a", RegionId(0));
        r.set_timer(a, 100, 1);
        assert!(r.step(50).is_none());
        assert!(r.step(100).is_some());
    }

    #[test]
    fn same_seed_same_digest() {
        let run = |seed| {
            let mut r: Runtime<u32, u32> = Runtime::new(seed, NetConfig::default());
            let a = r.add_host("a", RegionId(0));
            let b = r.add_host("b", RegionId(1));
            for i in 0..100 {
                r.send(a, b, i);
            }
            while r.step(u64::MAX).is_some() {}
            r.digest()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
