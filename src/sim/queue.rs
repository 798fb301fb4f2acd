//! The runtime's event queue: `(at_us, seq)` order, two representations.
//!
//! A queue of up to [`GROW_AT`] entries is a binary heap ([`Binary`]),
//! the cheapest for the few hundred events a drill usually holds. Past that
//! it becomes a radix heap ([`Radix`]), and goes back below [`SHRINK_AT`].
//!
//! Why two: a binary heap costs a full-depth sift per event, and once it
//! outgrows the cache its lower levels are cache misses. A drill holding
//! ten million queued events (a backlog of unacknowledged queue messages,
//! each redelivery's acknowledgement waiting on a commit) spent about half
//! its time in the sifts and in cache misses on the payload slab, about a
//! microsecond per event, and its cost per event grew with the backlog
//! while its budget counts events.
//! The radix heap uses what the simulator guarantees, that it schedules at
//! or after the event it handles (a monotone queue): a push appends to one
//! of 128 buckets, chosen by the highest bit in which its key differs from
//! the last minimum, and a pop that finds no head takes the lowest
//! non-empty bucket, finds its minimum and spreads the rest over lower
//! buckets, by sequential reads and appends. Its own cost per event does
//! not grow with its size, and it can say which entries come out next, so
//! the runtime prefetches their payloads. For a small queue it moves each
//! entry more often than a heap sifts it (13 % more instructions over 500
//! fuzz cases), hence the binary heap below [`GROW_AT`].
//!
//! Written here rather than taken from the `radix-heap` crate (0.4): its
//! `RadixHeapMap` panics on a push above its top key, while a step that
//! stops at its horizon peeks a head it does not take and the harness may
//! then schedule before it ([`Radix::rebase`]); and it has no hook to
//! prefetch the payloads of the entries about to come out.
//!
//! `(at_us, seq)` is unique, so entries come out in exactly the order any
//! priority queue over the same keys gives: the switch changes no result.

use crate::components::ids::Micros;

/// The number of buckets: one per bit of the 128-bit key.
const BUCKETS: usize = 128;

/// A queue entry: the ordering key and where its payload is parked.
///
/// Payloads (a message is ~60 bytes) live in the runtime's slab and only
/// this 24-byte key moves through the queue.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub(super) at_us: Micros,
    pub(super) seq: u64,
    pub(super) slot: u32,
}

impl Entry {
    /// Later than every queued entry (`seq` counts from 1 and never reaches
    /// `u64::MAX`): a missing child in [`Binary::sift_down`].
    const NEVER: Entry = Entry { at_us: Micros::MAX, seq: u64::MAX, slot: u32::MAX };

    /// The order: earlier time first, then the first scheduled.
    #[inline(always)]
    fn key(&self) -> u128 {
        u128::from(self.at_us) << 64 | u128::from(self.seq)
    }

    /// Whether `self` comes out before `other` (one 128-bit compare,
    /// without branches).
    #[inline(always)]
    fn before(&self, other: &Entry) -> bool {
        self.key() < other.key()
    }
}

/// Entries past which a [`Binary`] queue becomes a [`Radix`] one.
const GROW_AT: usize = 1 << 17;

/// Entries below which a [`Radix`] queue becomes a [`Binary`] one again.
const SHRINK_AT: usize = 1 << 15;

/// Bucket capacity (entries) past which a drained bucket frees its memory
/// instead of keeping it for the next fill.
const KEEP_CAPACITY: usize = 1 << 12;

/// The event queue. See the module docs.
pub(super) struct Queue {
    small: Binary,
    large: Option<Box<Radix>>,
    /// [`GROW_AT`] and [`SHRINK_AT`] (smaller in tests).
    grow_at: usize,
    shrink_at: usize,
}

impl Queue {
    /// An empty queue.
    pub(super) fn new() -> Self {
        Self::with_thresholds(GROW_AT, SHRINK_AT)
    }

    /// An empty queue that switches at the given sizes.
    fn with_thresholds(grow_at: usize, shrink_at: usize) -> Self {
        assert!(shrink_at < grow_at, "a gap between the sizes keeps the queue from switching back and forth");
        Queue { small: Binary::with_capacity(1024), large: None, grow_at, shrink_at }
    }

    /// Entries queued.
    #[inline]
    pub(super) fn len(&self) -> usize {
        match &self.large {
            Some(r) => r.len,
            None => self.small.len(),
        }
    }

    /// Queues `e`.
    #[inline(always)]
    pub(super) fn push(&mut self, e: Entry) {
        match &mut self.large {
            // `Binary::push` written out, with the size checked only where
            // the heap grows: calling it and checking after cost 0.6 % more
            // instructions over 500 fuzz cases (811.5M against 806.6M Ir).
            None if self.small.dead_root => {
                self.small.dead_root = false;
                self.small.sift_down(0, e);
            }
            None => {
                self.small.heap.push(e);
                let n = self.small.heap.len();
                self.small.sift_up(n - 1, e);
                if n > self.grow_at {
                    self.grow();
                }
            }
            Some(r) => {
                r.push(e);
                if r.len < self.shrink_at {
                    self.shrink();
                }
            }
        }
    }

    /// The earliest entry.
    ///
    /// `prefetch` is told the slots of entries that will come out soon (the
    /// radix heap's, at its minimum's time), so their payloads can be
    /// fetched into the cache while the events before them run.
    #[inline(always)]
    pub(super) fn peek(&mut self, prefetch: impl Fn(u32)) -> Option<&Entry> {
        match &mut self.large {
            None => self.small.peek(),
            Some(r) => r.peek(prefetch),
        }
    }

    /// Hands out the earliest entry (call after `peek` returned one).
    #[inline(always)]
    pub(super) fn take(&mut self) -> Entry {
        match &mut self.large {
            None => self.small.take(),
            Some(r) => r.take(),
        }
    }

    /// Moves every entry of the binary heap to a radix heap.
    #[cold]
    fn grow(&mut self) {
        debug_assert!(!self.small.dead_root, "a push fills the dead root");
        let mut r = Box::new(Radix::new());
        for e in std::mem::replace(&mut self.small, Binary::with_capacity(1024)).heap {
            r.push(e);
        }
        self.large = Some(r);
    }

    /// Moves every entry of the radix heap back to a binary heap.
    #[cold]
    fn shrink(&mut self) {
        let r = self.large.take().expect("shrinks a radix heap");
        let mut small = Binary::with_capacity(self.grow_at);
        for e in r.head.into_iter().chain(r.buckets.into_iter().flatten()) {
            small.push(e);
        }
        self.small = small;
    }
}

/// A monotone min-queue of [`Entry`] by `(at_us, seq)`: a radix heap. See
/// the module docs.
pub(super) struct Radix {
    /// The earliest entry, once a [`Queue::peek`] found it; its key is
    /// `last`, and every other entry's is above it.
    head: Option<Entry>,
    /// `buckets[b]` holds the entries whose key differs from `last` first
    /// in bit `b` (counting from the least significant): each is above
    /// `last`, and above every entry of a lower bucket.
    buckets: Box<[Vec<Entry>; BUCKETS]>,
    /// Bit `b` set: `buckets[b]` is not empty.
    occupied: u128,
    /// The key of the last minimum found (0 before the first).
    last: u128,
    len: usize,
}

impl Radix {
    /// An empty radix heap.
    fn new() -> Self {
        Radix { head: None, buckets: Box::new(std::array::from_fn(|_| Vec::new())), occupied: 0, last: 0, len: 0 }
    }

    /// Queues `e`.
    #[inline(never)]
    fn push(&mut self, e: Entry) {
        let key = e.key();
        if key < self.last {
            // Earlier than a head found by a `peek` that was not followed
            // by a `take` (a step that stopped at its horizon): rare, and
            // the buckets are rebuilt around the new minimum.
            self.rebase(e);
            return;
        }
        self.len += 1;
        self.file(key, e);
    }

    /// Puts `e` (key `key`, above `last`) in its bucket.
    #[inline(always)]
    fn file(&mut self, key: u128, e: Entry) {
        debug_assert!(key > self.last, "keys are unique and pushed above the last minimum");
        let b = (127 - (key ^ self.last).leading_zeros()) as usize;
        self.buckets[b].push(e);
        self.occupied |= 1 << b;
    }

    /// The earliest entry.
    #[inline(never)]
    fn peek(&mut self, prefetch: impl Fn(u32)) -> Option<&Entry> {
        if self.head.is_none() && self.occupied != 0 {
            self.find_head(prefetch);
        }
        self.head.as_ref()
    }

    /// Hands out the earliest entry (call after `peek` returned one).
    #[inline(never)]
    fn take(&mut self) -> Entry {
        let e = self.head.take().expect("take follows a peek that found an entry");
        self.len -= 1;
        e
    }

    /// Moves the minimum of the lowest non-empty bucket to `head` and
    /// spreads the rest of that bucket over the buckets below it.
    fn find_head(&mut self, prefetch: impl Fn(u32)) {
        let b = self.occupied.trailing_zeros() as usize;
        let mut bucket = std::mem::take(&mut self.buckets[b]);
        self.occupied &= !(1 << b);
        let min = bucket.iter().copied().min_by_key(Entry::key).expect("an occupied bucket holds an entry");
        self.last = min.key();
        for e in bucket.drain(..) {
            let key = e.key();
            if key != self.last {
                // The same microsecond as the head: out within a few events.
                if key >> 64 == self.last >> 64 {
                    prefetch(e.slot);
                }
                self.file(key, e);
            }
        }
        // Keep a small allocation for the next fill; free a large one.
        if bucket.capacity() <= KEEP_CAPACITY {
            self.buckets[b] = bucket;
        }
        self.head = Some(min);
    }

    /// Files every entry again around `e`, the new minimum (see `push`).
    #[cold]
    fn rebase(&mut self, e: Entry) {
        let mut all: Vec<Entry> = self.head.take().into_iter().collect();
        for bucket in self.buckets.iter_mut() {
            all.append(bucket);
        }
        self.occupied = 0;
        self.last = e.key();
        self.head = Some(e);
        self.len += 1;
        for x in all {
            self.file(x.key(), x);
        }
    }
}

/// A binary min-heap of [`Entry`] ordered by `(at_us, seq)` that fuses
/// "pop the earliest" with the next push.
///
/// Almost every event's handler schedules another event. So [`Binary::take`]
/// leaves the entry it hands out at the root, marked dead, and the next
/// [`Binary::push`] overwrites the root and sifts it down once, instead of a
/// full pop (sift down, then up) followed by a push (sift up). `(at_us, seq)`
/// is unique, so the order in which entries come out is exactly that of any
/// other priority queue over the same keys.
pub(super) struct Binary {
    heap: Vec<Entry>,
    /// `heap[0]` was handed out by `take` and awaits replacement.
    dead_root: bool,
}

impl Binary {
    fn with_capacity(n: usize) -> Self {
        Binary { heap: Vec::with_capacity(n), dead_root: false }
    }

    #[inline]
    fn len(&self) -> usize {
        self.heap.len() - usize::from(self.dead_root)
    }

    #[inline(always)]
    fn push(&mut self, e: Entry) {
        if self.dead_root {
            self.dead_root = false;
            self.sift_down(0, e);
        } else {
            self.heap.push(e);
            self.sift_up(self.heap.len() - 1, e);
        }
    }

    /// The earliest live entry.
    #[inline(always)]
    fn peek(&mut self) -> Option<&Entry> {
        if self.dead_root {
            self.dead_root = false;
            let last = self.heap.pop().expect("a dead root is an entry");
            if !self.heap.is_empty() {
                self.sift_down(0, last);
            }
        }
        self.heap.first()
    }

    /// Hands out the earliest entry (call after `peek` returned one).
    #[inline(always)]
    fn take(&mut self) -> Entry {
        debug_assert!(!self.dead_root && !self.heap.is_empty());
        self.dead_root = true;
        self.heap[0]
    }

    /// Moves `e` up from the hole at `i` to its place.
    #[inline(always)]
    fn sift_up(&mut self, mut i: usize, e: Entry) {
        while i > 0 {
            let parent = (i - 1) / 2;
            let p = self.heap[parent];
            if !e.before(&p) {
                break;
            }
            self.heap[i] = p;
            i = parent;
        }
        self.heap[i] = e;
    }

    /// Moves `e` down from the hole at `i` to its place.
    #[inline]
    fn sift_down(&mut self, mut i: usize, e: Entry) {
        let heap = self.heap.as_mut_slice();
        loop {
            let first = 2 * i + 1;
            let Some(&a) = heap.get(first) else { break };
            // The earlier child, chosen without a branch: a missing second
            // child reads as `Entry::NEVER`, which no entry comes after.
            let b = heap.get(first + 1).copied().unwrap_or(Entry::NEVER);
            let (child, c) = if b.before(&a) { (first + 1, b) } else { (first, a) };
            if !c.before(&e) {
                break;
            }
            heap[i] = c;
            i = child;
        }
        heap[i] = e;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BinaryHeap;

    use proptest::prelude::*;

    use super::*;

    /// What a step does: push what the handler schedules (at or after now),
    /// then look at the head and take it if it is within the horizon.
    #[derive(Clone, Debug)]
    enum Op {
        Push { after_us: u64 },
        Step { horizon_after_us: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => prop_oneof![0..3u64, 0..1_000u64, 0..u64::from(u32::MAX)].prop_map(|after_us| Op::Push { after_us }),
            2 => prop_oneof![0..3u64, 0..2_000u64].prop_map(|horizon_after_us| Op::Step { horizon_after_us }),
        ]
    }

    proptest! {
        /// Entries come out in exactly the binary heap's order, including
        /// pushes below a head a stopped step looked at.
        #[test]
        fn it_hands_out_what_a_binary_heap_would(
            ops in prop::collection::vec(op(), 1..600),
            shrink_at in 1..20usize,
            gap in 1..40usize,
        ) {
            // Small thresholds: the queue switches back and forth.
            let mut q = Queue::with_thresholds(shrink_at + gap, shrink_at);
            let mut model = BinaryHeap::new();
            let (mut now_us, mut seq) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Push { after_us } => {
                        seq += 1;
                        let e = Entry { at_us: now_us + after_us, seq, slot: seq as u32 };
                        q.push(e);
                        model.push(std::cmp::Reverse((e.at_us, e.seq)));
                    }
                    Op::Step { horizon_after_us } => {
                        let horizon_us = now_us + horizon_after_us;
                        let head = q.peek(|_| ()).map(|e| (e.at_us, e.seq));
                        prop_assert_eq!(head, model.peek().map(|r| r.0));
                        if let Some((at_us, _)) = head.filter(|h| h.0 <= horizon_us) {
                            let e = q.take();
                            prop_assert_eq!(Some((e.at_us, e.seq)), model.pop().map(|r| r.0));
                            now_us = at_us;
                        }
                    }
                }
                prop_assert_eq!(q.len(), model.len());
            }
            while let Some(&e) = q.peek(|_| ()) {
                prop_assert_eq!(Some((e.at_us, e.seq)), model.pop().map(|r| r.0));
                q.take();
            }
            prop_assert!(model.is_empty());
        }
    }

    #[test]
    fn the_queue_hands_out_entries_in_time_then_schedule_order() {
        use rand::{RngExt, SeedableRng};
        use rand_chacha::ChaCha8Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Thresholds the run crosses both ways.
        let mut q = Queue::with_thresholds(64, 16);
        let mut model = std::collections::BTreeSet::new();
        let mut seq = 0u64;
        let mut now = 0u64;
        for _ in 0..20_000 {
            if rng.random_range(0..3u32) > 0 || model.is_empty() {
                // Pushes at or after now, with many ties.
                seq += 1;
                let at = now + rng.random_range(0..8u64);
                q.push(Entry { at_us: at, seq, slot: seq as u32 });
                model.insert((at, seq));
            } else {
                let head = *q.peek(|_| ()).expect("non-empty");
                let want = model.pop_first().expect("non-empty");
                assert_eq!((head.at_us, head.seq), want);
                assert_eq!(q.take().seq, want.1);
                now = want.0;
            }
            assert_eq!(q.len(), model.len());
        }
    }

    #[test]
    fn a_push_below_a_peeked_head_comes_out_first() {
        let mut q = Radix::new();
        q.push(Entry { at_us: 100, seq: 1, slot: 0 });
        q.push(Entry { at_us: 200, seq: 2, slot: 1 });
        assert_eq!(q.peek(|_| ()).map(|e| e.at_us), Some(100));
        q.push(Entry { at_us: 50, seq: 3, slot: 2 });
        let order: Vec<u64> = std::iter::from_fn(|| q.peek(|_| ()).is_some().then(|| q.take().at_us)).collect();
        assert_eq!(order, [50, 100, 200]);
        assert_eq!(q.len, 0);
    }
}
