//! Heap accounting: a global allocator that counts the bytes each thread
//! holds (always) and the whole process's bytes and their peak (only
//! inside [`peak_during`]).
//!
//! The `agentdrill` binary installs [`CountingAlloc`]. Two readers use it:
//! - a drill's memory budget ([`crate::drill::Budget`]) reads
//!   [`thread_heap_bytes`], the bytes allocated less those freed on the
//!   drill's own thread, so drills running side by side on other threads
//!   (`run --jobs N`) do not count against each other;
//! - `agentdrill bench` reads the process's peak through [`peak_during`].
//!
//! A program that does not install it (the test binaries, a library user)
//! counts nothing: [`installed`] says so, and the memory budget is then not
//! enforced.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
/// Whether allocations are counted process-wide: only inside
/// [`peak_during`], so that nothing else (`run`, `fuzz` on every core, the
/// bench's other figures) contends for the counters' cache line.
static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Bytes allocated on this thread less bytes freed on it (memory freed
    /// on another thread than the one that allocated it moves bytes between
    /// the two counters; a drill allocates and frees on its own thread).
    static THREAD_BYTES: Cell<isize> = const { Cell::new(0) };
}

/// A global allocator that forwards to mimalloc, counts the bytes each
/// thread holds, and, inside [`peak_during`], the bytes the process
/// allocated since it began and their peak. Install it in a binary with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
/// Counting costs a thread-local add per allocation, plus two relaxed
/// atomic operations while process-wide counting is on.
pub struct CountingAlloc;

#[inline]
fn thread_add(bytes: isize) {
    // A const-initialised cell with no destructor: reachable for the whole
    // life of the thread, and its access never allocates.
    THREAD_BYTES.with(|c| c.set(c.get().wrapping_add(bytes)));
}

#[inline]
fn grew(bytes: usize) {
    let bytes = isize::try_from(bytes).unwrap_or(isize::MAX);
    thread_add(bytes);
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if now > PEAK.load(Ordering::Relaxed) {
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

#[inline]
fn shrank(bytes: usize) {
    let bytes = isize::try_from(bytes).unwrap_or(isize::MAX);
    thread_add(-bytes);
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `MiMalloc` with the caller's arguments
// unchanged; the counters do not affect the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { MiMalloc.dealloc(ptr, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

/// Whether [`CountingAlloc`] is the global allocator (an allocation moves
/// this thread's counter).
pub fn installed() -> bool {
    let before = thread_heap_bytes();
    let probe = std::hint::black_box(Box::new([0u8; 64]));
    let counted = thread_heap_bytes() != before;
    drop(probe);
    counted
}

/// Bytes allocated on this thread less those freed on it, since the
/// thread started (0 when [`CountingAlloc`] is not installed). Only
/// differences mean anything.
pub fn thread_heap_bytes() -> isize {
    THREAD_BYTES.with(Cell::get)
}

/// Runs `f` and returns its result with the peak of heap bytes allocated
/// process-wide during it above what was allocated when it started (`None`
/// when [`CountingAlloc`] is not the global allocator).
///
/// Process-wide counting is on only while `f` runs: every allocation then
/// updates one shared counter, and threads allocating side by side would
/// contend for its cache line (measured: `fuzz --jobs 2` ran 14 % fewer
/// cases a second with it on). The count needs no start-up total: the
/// heap's growth since `f` began is what was allocated during `f` less
/// what was freed, whenever the freed blocks were allocated. Calls do not
/// nest.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, Option<u64>) {
    assert!(!COUNTING.load(Ordering::Relaxed), "peak_during does not nest");
    CURRENT.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    let counted = installed();
    COUNTING.store(true, Ordering::Relaxed);
    let r = f();
    COUNTING.store(false, Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed);
    (r, counted.then(|| u64::try_from(peak).unwrap_or(0)))
}
