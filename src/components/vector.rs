//! A sans-IO vector store for one region, modelled on Qdrant's snapshot API.
//!
//! # Design: an append-only op log with O(1) snapshots
//!
//! Every mutation is appended to an op log (`Upsert` or `Corrupt`), and a
//! materialised view (`BTreeMap<PointId, PointState>`, so iteration order is
//! deterministic) answers queries. The log is shared by reference count and is
//! only ever appended to, so its prefix `[..upto]` never changes: a
//! [`Snapshot`] is just a handle on the log plus `upto`, taken in O(1), and
//! cloning it to ship it to the other region is an `Rc` clone. Restoring
//! replays the prefix into a fresh view and seeds a **new** log with it, so the
//! restored store never appends to a log that a snapshot still reads.
//! [`VectorStore::clear`] (region loss) likewise starts a new log: snapshots
//! already shipped elsewhere keep the old one alive, which is exactly the
//! "a cross-region copy survives region loss" property.
//!
//! The module has no clock and does no I/O: every method that needs the time
//! takes `now_us`.
//!
//! # Mapping to Qdrant
//! - `POST /collections/{c}/snapshots` → [`VectorStore::snapshot`]
//! - `GET /collections/{c}/snapshots` → [`VectorStore::snapshots`]
//! - `GET …/snapshots/{name}` → [`VectorStore::find_snapshot`]
//! - `DELETE …/snapshots/{name}` → [`VectorStore::delete_snapshot`]
//! - `PUT /collections/{c}/snapshots/recover` with `{"location"}` →
//!   [`VectorStore::receive_snapshot`] (the file arrives) then
//!   [`VectorStore::restore`] (snapshot data replaces the collection; the time
//!   it takes is [`VectorStore::restore_duration_us`], part of the RTO).

use std::cell::{Ref, RefCell};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::rc::Rc;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::components::ids::{JobId, Micros, US_PER_MS, US_PER_S};

/// Microseconds per hour (the hourly rung's bucket).
const US_PER_HOUR: u64 = 3_600 * US_PER_S;
/// Microseconds per day (the daily rung's bucket).
const US_PER_DAY: u64 = 24 * US_PER_HOUR;
/// Microseconds per month of 30 days (the monthly rung's bucket).
const US_PER_MONTH: u64 = 30 * US_PER_DAY;

/// A point in the store: the memory written by one step of one job.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, serde::Deserialize)]
pub struct PointId {
    /// The logical job that wrote the point.
    pub job: JobId,
    /// The step ordinal within the job.
    pub step: u16,
}

/// What the store holds for one point.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct PointState {
    /// The stored value (a stand-in for the vector and its payload).
    pub value: u64,
    /// When the value was last upserted: the write's age is an RPO input.
    pub written_at_us: Micros,
    /// Whether the point was silently corrupted since it was written.
    pub corrupted: bool,
}

/// The answer to a point lookup.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct QueryHit {
    /// The stored value.
    pub value: u64,
    /// Whether the value is corrupted (a reader cannot tell; a verifier can).
    pub corrupted: bool,
}

/// Timing of restores: `restore_base_us + restore_per_point_us * points`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorConfig {
    /// Fixed cost of a restore (download, open, index load).
    pub restore_base_us: Micros,
    /// Cost per restored point (hydration).
    pub restore_per_point_us: Micros,
}

impl Default for VectorConfig {
    /// 5 s base plus 1 ms per point.
    fn default() -> Self {
        VectorConfig { restore_base_us: 5 * US_PER_S, restore_per_point_us: US_PER_MS }
    }
}

/// How many snapshots the retention ladder keeps per rung.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionLadder {
    /// Every snapshot taken within this long of the newest one is kept (so a
    /// corruption found minutes later can restore from just before it).
    pub recent_us: Micros,
    /// Newest snapshot of each of the newest `hourly` distinct hours.
    pub hourly: u32,
    /// Newest snapshot of each of the newest `daily` distinct days.
    pub daily: u32,
    /// Newest snapshot of each of the newest `monthly` distinct 30-day months.
    pub monthly: u32,
}

impl Default for RetentionLadder {
    /// Everything from the last hour, then 24 hourly, 14 daily, 12 monthly.
    fn default() -> Self {
        RetentionLadder { recent_us: US_PER_HOUR, hourly: 24, daily: 14, monthly: 12 }
    }
}

/// One entry of the op log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// A write of `value` to `point`; heals a corrupted point.
    Upsert { point: PointId, value: u64, at_us: Micros },
    /// Silent corruption of an existing point (its value is unchanged).
    Corrupt { point: PointId, at_us: Micros },
}

/// The shared, append-only op log. Only the store that created it appends;
/// snapshots read immutable prefixes of it.
#[derive(Clone, Default)]
struct OpLog(Rc<RefCell<Vec<Op>>>);

impl OpLog {
    fn from_ops(ops: Vec<Op>) -> Self {
        OpLog(Rc::new(RefCell::new(ops)))
    }
    fn push(&self, op: Op) {
        self.0.borrow_mut().push(op);
    }
    fn len(&self) -> usize {
        self.0.borrow().len()
    }
    fn ops(&self) -> Ref<'_, Vec<Op>> {
        self.0.borrow()
    }
    fn ptr_eq(&self, other: &OpLog) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for OpLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpLog(len={})", self.len())
    }
}

/// The materialised view plus its corruption counter.
#[derive(Debug, Default)]
struct View {
    points: BTreeMap<PointId, PointState>,
    corrupted: u64,
}

impl View {
    /// Applies one op. Corrupting an absent point is a no-op (never logged).
    #[inline]
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Upsert { point, value, at_us } => {
                let fresh = PointState { value, written_at_us: at_us, corrupted: false };
                match self.points.entry(point) {
                    Entry::Vacant(e) => {
                        e.insert(fresh);
                    }
                    Entry::Occupied(mut e) => {
                        if e.get().corrupted {
                            debug_assert!(self.corrupted > 0);
                            self.corrupted -= 1;
                        }
                        *e.get_mut() = fresh;
                    }
                }
            }
            Op::Corrupt { point, .. } => {
                if let Some(state) = self.points.get_mut(&point)
                    && !state.corrupted
                {
                    state.corrupted = true;
                    self.corrupted += 1;
                }
            }
        }
        debug_assert!(self.corrupted <= self.points.len() as u64);
    }
}

/// A point-in-time copy of a store: an O(1) handle on an immutable log prefix.
///
/// Fields are public for reading; treat them as read-only (restore asserts
/// that they still agree with the log).
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Qdrant-style file name, e.g. `snap-000042`.
    pub name: String,
    /// Sequence number, unique per originating store (never reused, even
    /// across [`VectorStore::clear`]).
    pub id: u32,
    /// When the snapshot was taken.
    pub taken_at_us: Micros,
    /// Number of log ops the snapshot includes.
    pub upto: usize,
    /// Number of points in the store when the snapshot was taken.
    pub point_count: u64,
    /// Number of corrupted points in the store when the snapshot was taken.
    pub corrupted_points: u64,
    log: OpLog,
}

/// A snapshot's file name, `snap-` and its id in at least six digits
/// (`format!("snap-{id:06}")`, without the formatting machinery: a drill
/// takes a snapshot every few seconds).
fn snapshot_name(id: u32) -> String {
    const PREFIX: &str = "snap-";
    // Ten digits hold any u32; unwritten ones stay '0', the padding.
    let mut digits = [b'0'; 10];
    let (mut n, mut len) = (id, 0);
    loop {
        digits[digits.len() - 1 - len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    let shown = &digits[digits.len() - len.max(6)..];
    let mut name = String::with_capacity(PREFIX.len() + shown.len());
    name.push_str(PREFIX);
    name.extend(shown.iter().map(|&d| char::from(d)));
    name
}

impl Snapshot {
    /// Whether the snapshot's contents hold no corrupted point.
    pub fn is_clean(&self) -> bool {
        self.corrupted_points == 0
    }

    /// The order of snapshot lists: `(taken_at_us, name)`.
    fn order_key(&self) -> (Micros, &str) {
        (self.taken_at_us, self.name.as_str())
    }
}

impl PartialEq for Snapshot {
    /// Same snapshot: same name, id, time and prefix of the same log.
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.taken_at_us == other.taken_at_us
            && self.upto == other.upto
            && self.name == other.name
            && self.log.ptr_eq(&other.log)
    }
}

impl Eq for Snapshot {}

/// A vector store for one region. Deliberately not `Clone`: two stores must
/// never append to the same log.
#[derive(Debug)]
pub struct VectorStore {
    cfg: VectorConfig,
    log: OpLog,
    view: View,
    /// Local and received snapshots, sorted by `(taken_at_us, name)`.
    snapshots: Vec<Snapshot>,
    next_snapshot_id: u32,
    /// [`VectorStore::prune`]'s marks, one per snapshot, kept between calls
    /// so that a prune (one per snapshot taken) does not allocate.
    keep: Vec<bool>,
}

impl VectorStore {
    /// An empty store with the given restore timing.
    pub fn new(cfg: VectorConfig) -> Self {
        VectorStore {
            cfg,
            log: OpLog::default(),
            view: View::default(),
            snapshots: Vec::new(),
            next_snapshot_id: 0,
            keep: Vec::new(),
        }
    }

    /// Writes `value` to `point` at `now_us` (insert or replace). Replacing a
    /// corrupted point heals it. Amortised O(log n), no allocation beyond
    /// log/map growth.
    #[inline]
    pub fn upsert(&mut self, now_us: Micros, point: PointId, value: u64) {
        let op = Op::Upsert { point, value, at_us: now_us };
        self.log.push(op);
        self.view.apply(&op);
    }

    /// Looks a point up.
    #[inline]
    pub fn query(&self, point: PointId) -> Option<QueryHit> {
        self.view.points.get(&point).map(|s| QueryHit { value: s.value, corrupted: s.corrupted })
    }

    /// Number of points stored.
    pub fn len(&self) -> usize {
        self.view.points.len()
    }

    /// Whether the store holds no point.
    pub fn is_empty(&self) -> bool {
        self.view.points.is_empty()
    }

    /// Silently corrupts `round(fraction * len)` distinct points, chosen
    /// deterministically from `rng` by a partial Fisher–Yates shuffle over the
    /// sorted point ids, and logs a `Corrupt` op for each. Points already
    /// corrupted may be chosen again. Returns the number of points chosen.
    pub fn corrupt(&mut self, now_us: Micros, fraction: f64, rng: &mut impl rand::Rng) -> u64 {
        assert!(fraction.is_finite(), "corrupt: fraction must be finite, got {fraction}");
        let fraction = fraction.clamp(0.0, 1.0);
        let len = self.len();
        let n = ((fraction * len as f64).round() as usize).min(len);
        if n == 0 {
            return 0;
        }
        let mut ids: Vec<PointId> = self.view.points.keys().copied().collect();
        for i in 0..n {
            let j = rng.random_range(i..len);
            ids.swap(i, j);
        }
        for &point in &ids[..n] {
            let op = Op::Corrupt { point, at_us: now_us };
            self.log.push(op);
            self.view.apply(&op);
        }
        assert!(self.view.corrupted >= n as u64);
        n as u64
    }

    /// How many points are currently corrupted (the verifier's check). O(1).
    pub fn corrupted_count(&self) -> u64 {
        self.view.corrupted
    }

    /// Takes a snapshot in O(1) (`POST /collections/{c}/snapshots`), adds it
    /// to the local list and returns it (clone it to ship it).
    pub fn snapshot(&mut self, now_us: Micros) -> Snapshot {
        let id = self.next_snapshot_id;
        self.next_snapshot_id = id.checked_add(1).expect("snapshot id overflow");
        let snap = Snapshot {
            name: snapshot_name(id),
            id,
            taken_at_us: now_us,
            upto: self.log.len(),
            point_count: self.len() as u64,
            corrupted_points: self.view.corrupted,
            log: self.log.clone(),
        };
        assert!(snap.upto <= snap.log.len());
        assert!(snap.point_count as usize <= snap.upto, "a point per upsert");
        self.insert_sorted(snap.clone());
        snap
    }

    /// The snapshots held here, local and received, oldest first by
    /// `(taken_at_us, name)` (`GET /collections/{c}/snapshots`).
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The newest held snapshot named `name` (`GET …/snapshots/{name}`).
    pub fn find_snapshot(&self, name: &str) -> Option<&Snapshot> {
        self.snapshots.iter().rev().find(|s| s.name == name)
    }

    /// Deletes every held snapshot named `name` (`DELETE …/snapshots/{name}`);
    /// returns how many were deleted.
    pub fn delete_snapshot(&mut self, name: &str) -> usize {
        let before = self.snapshots.len();
        self.snapshots.retain(|s| s.name != name);
        before - self.snapshots.len()
    }

    /// Accepts a snapshot shipped in from another region, keeping the list
    /// sorted by `(taken_at_us, name)`. Receiving the same snapshot twice is a
    /// no-op; returns whether it was added.
    pub fn receive_snapshot(&mut self, snap: Snapshot) -> bool {
        assert!(snap.upto <= snap.log.len());
        let key = snap.order_key();
        let first = self.snapshots.partition_point(|s| s.order_key() < key);
        let same_key = self.snapshots[first..].iter().take_while(|s| s.order_key() == key);
        if same_key.into_iter().any(|s| *s == snap) {
            return false;
        }
        self.insert_sorted(snap);
        true
    }

    /// Inserts after any snapshot with the same `(taken_at_us, name)`. O(log
    /// n) search; a local snapshot usually lands at the end.
    fn insert_sorted(&mut self, snap: Snapshot) {
        let key = snap.order_key();
        let at = self.snapshots.partition_point(|s| s.order_key() <= key);
        self.snapshots.insert(at, snap);
        let list = &self.snapshots;
        debug_assert!(at == 0 || list[at - 1].order_key() <= list[at].order_key());
        debug_assert!(at + 1 >= list.len() || list[at].order_key() <= list[at + 1].order_key());
    }

    /// How long restoring `snap` takes: base plus per-point hydration.
    pub fn restore_duration_us(&self, snap: &Snapshot) -> Micros {
        self.cfg.restore_per_point_us.saturating_mul(snap.point_count).saturating_add(self.cfg.restore_base_us)
    }

    /// Replaces the contents with `snap`'s (`PUT …/snapshots/recover`) by
    /// replaying its log prefix, and starts a new own log seeded with those
    /// ops, so later snapshots of this store are independent of the old log.
    /// `now_us` is unused: the caller charges [`VectorStore::restore_duration_us`]
    /// to the RTO's hydration part. Returns the number of points restored.
    pub fn restore(&mut self, now_us: Micros, snap: &Snapshot) -> u64 {
        let _ = now_us;
        let src = snap.log.ops();
        assert!(snap.upto <= src.len(), "snapshot past the end of its log");
        let prefix = &src[..snap.upto];
        let mut view = View::default();
        for op in prefix {
            view.apply(op);
        }
        assert_eq!(view.points.len() as u64, snap.point_count);
        assert_eq!(view.corrupted, snap.corrupted_points);
        let mut ops = Vec::with_capacity(prefix.len().max(16) * 2);
        ops.extend_from_slice(prefix);
        drop(src);
        self.log = OpLog::from_ops(ops);
        self.view = view;
        snap.point_count
    }

    /// The newest snapshot taken strictly before `before_us` whose contents
    /// hold no corrupted point. A point corrupted and later overwritten is
    /// healed, so a snapshot taken after every corrupted point was rewritten
    /// counts as clean. O(snapshots), no replay.
    pub fn newest_clean_snapshot(&self, before_us: Micros) -> Option<&Snapshot> {
        self.snapshots.iter().rev().find(|s| s.taken_at_us < before_us && s.is_clean())
    }

    /// Applies the retention ladder: for each rung, the newest snapshot of
    /// each of the newest `hourly` hours / `daily` days / `monthly` 30-day
    /// months (counted over the snapshots held, not back from `now_us`, so a
    /// store whose snapshotting stopped keeps its last snapshots) is kept;
    /// every other snapshot is dropped. Returns how many were dropped.
    pub fn prune(&mut self, now_us: Micros, ladder: RetentionLadder) -> usize {
        let _ = now_us;
        let n = self.snapshots.len();
        let mut keep = std::mem::take(&mut self.keep);
        keep.clear();
        keep.resize(n, false);
        if let Some(newest) = self.snapshots.last().map(|s| s.taken_at_us) {
            for (k, s) in keep.iter_mut().zip(&self.snapshots) {
                *k = s.taken_at_us + ladder.recent_us >= newest;
            }
        }
        let rungs = [(US_PER_HOUR, ladder.hourly), (US_PER_DAY, ladder.daily), (US_PER_MONTH, ladder.monthly)];
        for (width, limit) in rungs {
            let mut kept = 0u32;
            let mut last_bucket = None;
            for (i, snap) in self.snapshots.iter().enumerate().rev() {
                if kept >= limit {
                    break;
                }
                let bucket = snap.taken_at_us / width;
                if last_bucket != Some(bucket) {
                    keep[i] = true;
                    kept += 1;
                    last_bucket = Some(bucket);
                }
            }
        }
        let any_rung = ladder.hourly > 0 || ladder.daily > 0 || ladder.monthly > 0;
        assert!(n == 0 || !any_rung || keep[n - 1], "prune must keep the newest");
        let mut i = 0;
        self.snapshots.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        self.keep = keep;
        n - self.snapshots.len()
    }

    /// Points in sorted order: the ground truth of what survived.
    pub fn points_iter(&self) -> impl Iterator<Item = (PointId, &PointState)> {
        self.view.points.iter().map(|(id, s)| (*id, s))
    }

    /// Drops every point (a restore with no snapshot to restore), keeping
    /// the snapshot list. Starts a new log, as [`VectorStore::restore`] does.
    pub fn empty(&mut self) {
        self.log = OpLog::default();
        self.view = View::default();
    }

    /// The region's store was lost: contents and local snapshot list are
    /// gone. Snapshots already shipped elsewhere are unaffected. Snapshot ids
    /// keep counting so names stay unique for this origin.
    pub fn clear(&mut self) {
        self.empty();
        self.snapshots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    type Contents = Vec<(PointId, PointState)>;

    #[test]
    fn snapshot_names_are_the_formatted_ones() {
        for id in [0, 1, 9, 42, 99_999, 999_999, 1_000_000, 123_456_789, u32::MAX] {
            assert_eq!(snapshot_name(id), format!("snap-{id:06}"));
        }
    }

    fn pid(job: u32, step: u16) -> PointId {
        PointId { job: JobId(job), step }
    }

    fn store() -> VectorStore {
        VectorStore::new(VectorConfig::default())
    }

    fn contents(s: &VectorStore) -> Contents {
        s.points_iter().map(|(id, st)| (id, *st)).collect()
    }

    fn corrupted_set(s: &VectorStore) -> Vec<PointId> {
        let bad = s.points_iter().filter(|(_, st)| st.corrupted);
        bad.map(|(id, _)| id).collect()
    }

    /// A store with `n` points, point `i` holding value `i` written at `i`.
    fn filled(n: u32) -> VectorStore {
        let mut s = store();
        for i in 0..n {
            s.upsert(u64::from(i), pid(i / 4, (i % 4) as u16), u64::from(i));
        }
        s
    }

    fn seeded(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    #[test]
    fn upsert_query_len() {
        let mut s = store();
        assert!(s.is_empty() && s.query(pid(1, 0)).is_none());
        s.upsert(10, pid(1, 0), 7);
        s.upsert(20, pid(1, 1), 8);
        s.upsert(30, pid(1, 0), 9);
        assert_eq!(s.len(), 2);
        let hit = QueryHit { value: 9, corrupted: false };
        assert_eq!(s.query(pid(1, 0)), Some(hit));
        assert_eq!(s.query(pid(1, 1)).map(|h| h.value), Some(8));
        assert_eq!(contents(&s)[0].1.written_at_us, 30);
    }

    #[test]
    fn restore_returns_exactly_the_snapshot() {
        let mut s = filled(50);
        let (snap, at_snap) = (s.snapshot(100), contents(&s));
        assert_eq!((snap.point_count, snap.name.as_str()), (50, "snap-000000"));
        for i in 0..80 {
            s.upsert(200 + u64::from(i), pid(i, 0), 1_000);
        }
        assert_eq!(s.len(), 50 + 80 - 13);
        assert_eq!(s.restore(300, &snap), 50);
        assert_eq!(contents(&s), at_snap);
        // The restored store's own log is independent of the old one.
        s.upsert(400, pid(999, 0), 1);
        let snap2 = s.snapshot(500);
        assert_eq!(snap2.point_count, 51);
        assert_eq!(s.restore(600, &snap), 50);
        assert_eq!(contents(&s), at_snap);
        assert_eq!(s.restore(700, &snap2), 51);
    }

    #[test]
    fn restore_duration_is_linear_in_points() {
        let base = 5 * US_PER_S;
        let cfg = VectorConfig { restore_base_us: base, restore_per_point_us: 3 };
        let mut s = VectorStore::new(cfg);
        let mut durations = Vec::new();
        for round in 0..5u32 {
            let snap = s.snapshot(u64::from(round));
            durations.push(s.restore_duration_us(&snap));
            for i in 0..100 {
                s.upsert(0, pid(round * 100 + i, 0), 1);
            }
        }
        assert_eq!(durations[0], base);
        assert!(durations.windows(2).all(|w| w[1] - w[0] == 300));
    }

    #[test]
    fn shipped_snapshot_survives_region_loss() {
        let (mut a, mut b) = (filled(20), store());
        let expected = contents(&a);
        let snap = a.snapshot(1_000);
        assert!(b.receive_snapshot(snap.clone()));
        assert!(!b.receive_snapshot(snap), "receiving twice is a no-op");
        a.upsert(2_000, pid(77, 0), 1);
        a.clear();
        assert!(a.is_empty() && a.snapshots().is_empty());
        assert_eq!(a.snapshot(3_000).name, "snap-000001", "ids never reused");
        let shipped = b.newest_clean_snapshot(u64::MAX).unwrap().clone();
        assert_eq!(b.restore(5_000, &shipped), 20);
        assert_eq!(contents(&b), expected);
        // And back: the restored copy can be shipped to the rebuilt region.
        let back = b.snapshot(6_000);
        assert!(a.receive_snapshot(back.clone()));
        assert_eq!(a.restore(7_000, &back), 20);
        assert_eq!(contents(&a), expected);
    }

    #[test]
    fn snapshot_list_is_sorted_and_named() {
        let (mut a, mut b) = (store(), store());
        let (s1, s2) = (a.snapshot(100), a.snapshot(300));
        b.snapshot(200);
        b.receive_snapshot(s2);
        b.receive_snapshot(s1);
        let times: Vec<_> = b.snapshots().iter().map(|s| s.taken_at_us).collect();
        assert_eq!(times, vec![100, 200, 300]);
        assert_eq!(b.delete_snapshot("snap-000000"), 2, "local and shipped");
        let found = b.find_snapshot("snap-000001").map(|s| s.taken_at_us);
        assert_eq!(found, Some(300));
    }

    #[test]
    fn corruption_is_deterministic_and_counted() {
        let (mut a, mut b, mut c) = (filled(1_000), filled(1_000), filled(1_000));
        assert_eq!(a.corrupt(10, 0.1, &mut seeded(42)), 100);
        assert_eq!(b.corrupt(10, 0.1, &mut seeded(42)), 100);
        assert_eq!(c.corrupt(10, 0.1, &mut seeded(43)), 100);
        assert_eq!(a.corrupted_count(), 100);
        assert_eq!(corrupted_set(&a).len(), 100);
        assert_eq!(corrupted_set(&a), corrupted_set(&b));
        assert_ne!(corrupted_set(&a), corrupted_set(&c));
        assert_eq!(a.corrupt(11, 0.0, &mut seeded(1)), 0);
        assert_eq!(a.corrupt(12, 1.0, &mut seeded(1)), 1_000);
        assert_eq!(a.corrupted_count(), 1_000);
        assert_eq!(filled(3).corrupt(0, 0.5, &mut seeded(1)), 2);
        assert_eq!(store().corrupt(0, 0.5, &mut seeded(1)), 0);
        // Values survive corruption; only the flag changes. Upsert heals.
        let victim = corrupted_set(&b)[0];
        let value = u64::from(victim.job.0 * 4 + u32::from(victim.step));
        assert_eq!(b.query(victim).map(|h| h.value), Some(value));
        b.upsert(20, victim, 5);
        assert_eq!(b.query(victim).map(|h| h.corrupted), Some(false));
        assert_eq!(b.corrupted_count(), 99);
    }

    #[test]
    fn newest_clean_snapshot_skips_corrupted_ones() {
        let mut s = filled(100);
        let clean1 = s.snapshot(1_000);
        s.upsert(1_500, pid(500, 0), 1);
        let clean2 = s.snapshot(2_000);
        assert_eq!(s.corrupt(2_500, 0.05, &mut seeded(3)), 5);
        let dirty = s.snapshot(3_000);
        assert_eq!(dirty.corrupted_points, 5);
        assert_eq!(s.newest_clean_snapshot(u64::MAX), Some(&clean2));
        assert_eq!(s.newest_clean_snapshot(2_000), Some(&clean1));
        assert_eq!(s.newest_clean_snapshot(1_000), None);
        assert_eq!(s.restore(4_000, &clean2), 101);
        assert_eq!(s.corrupted_count(), 0);
        s.restore(5_000, &dirty);
        assert_eq!(s.corrupted_count(), 5, "restore brings corruption back");
    }

    #[test]
    fn retention_ladder_over_sixty_days() {
        let (mut s, ladder) = (filled(10), RetentionLadder { recent_us: 0, ..RetentionLadder::default() });
        let (step, end) = (5 * 60 * US_PER_S, 60 * US_PER_DAY);
        let mut newest = None;
        for t in (0..end).step_by(step as usize) {
            newest = Some(s.snapshot(t));
            if (t + step) % US_PER_HOUR == 0 {
                s.prune(t + step, ladder);
                assert!(s.snapshots().len() <= 24 + 14 + 12);
            }
        }
        let snaps = s.snapshots();
        assert_eq!(snaps.last(), newest.as_ref(), "newest kept");
        let kept = |t: Micros| snaps.iter().any(|x| x.taken_at_us == t);
        let (last_hour, last_day) = ((end - 1) / US_PER_HOUR, (end - 1) / US_PER_DAY);
        for h in last_hour - 23..=last_hour {
            assert!(kept((h + 1) * US_PER_HOUR - step), "hour {h}");
        }
        for d in last_day - 13..=last_day {
            assert!(kept((d + 1) * US_PER_DAY - step), "day {d}");
        }
        assert!(kept(US_PER_MONTH - step), "month 0");
        // Today's newest is also an hourly one; month 1's newest is today's.
        assert_eq!(snaps.len(), 24 + 13 + 1);
        assert_eq!(s.prune(end, ladder), 0, "prune is idempotent");
        s.prune(end, RetentionLadder { recent_us: 0, hourly: 1, daily: 0, monthly: 0 });
        assert_eq!(s.snapshots(), std::slice::from_ref(newest.as_ref().unwrap()));
    }

    #[test]
    fn the_recent_rung_keeps_every_snapshot_of_the_last_hour() {
        let mut s = filled(10);
        let step = 5 * 60 * US_PER_S;
        for t in (0..6 * US_PER_HOUR).step_by(step as usize) {
            s.snapshot(t);
        }
        s.prune(6 * US_PER_HOUR, RetentionLadder::default());
        let newest = s.snapshots().last().unwrap().taken_at_us;
        let recent = s.snapshots().iter().filter(|x| x.taken_at_us + US_PER_HOUR >= newest).count();
        assert_eq!(recent, 13, "12 five-minute snapshots of the last hour plus its start");
        // Hours 4 and 5 end inside the recent window; hours 0–3 keep their newest.
        assert_eq!(s.snapshots().len(), 13 + 4, "and one per earlier hour");
    }

    fn as_vec(m: &BTreeMap<PointId, PointState>) -> Contents {
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Random ops against a BTreeMap model, with snapshots, restores, shipping
    /// and region loss.
    #[test]
    fn randomized_against_model() {
        let mut rng = seeded(0xD15A57E2);
        let (mut s, mut other) = (store(), store());
        let mut model = BTreeMap::<PointId, PointState>::new();
        let mut saved = Vec::new();
        let mut now = 0;
        for _ in 0..20_000 {
            now += rng.random_range(1..1_000u64);
            let p = pid(rng.random_range(0..64), rng.random_range(0..8));
            match rng.random_range(0..100u32) {
                0..=79 => {
                    let value = rng.random::<u64>();
                    s.upsert(now, p, value);
                    let st = PointState { value, written_at_us: now, corrupted: false };
                    model.insert(p, st);
                }
                80..=87 => {
                    let snap = s.snapshot(now);
                    assert_eq!(snap.point_count, model.len() as u64);
                    other.receive_snapshot(snap.clone());
                    saved.push((snap, model.clone()));
                }
                88..=93 if !saved.is_empty() => {
                    let (snap, m) = &saved[rng.random_range(0..saved.len())];
                    assert_eq!(s.restore(now, snap), m.len() as u64);
                    model = m.clone();
                }
                94..=95 => {
                    let before = corrupted_set(&s);
                    let n = s.corrupt(now, rng.random_range(0.0..0.3), &mut rng);
                    let after = corrupted_set(&s);
                    assert!(before.iter().all(|p| after.contains(p)));
                    assert!(after.len() <= before.len() + n as usize);
                    for (id, st) in s.points_iter() {
                        let m = model.get_mut(&id).unwrap();
                        assert_eq!((m.value, m.written_at_us), (st.value, st.written_at_us));
                        m.corrupted = st.corrupted;
                    }
                }
                96 => {
                    s.clear();
                    model.clear();
                }
                _ => {
                    let want = model.get(&p).map(|m| (m.value, m.corrupted));
                    assert_eq!(s.query(p).map(|h| (h.value, h.corrupted)), want);
                }
            }
            let bad = model.values().filter(|m| m.corrupted).count() as u64;
            assert_eq!((s.len(), s.corrupted_count()), (model.len(), bad));
        }
        assert_eq!(contents(&s), as_vec(&model));
        // Every shipped snapshot still restores to its model in the other region.
        for (snap, m) in &saved {
            other.restore(now, snap);
            assert_eq!(contents(&other), as_vec(m));
        }
    }
}
