//! Heap accounting: a global allocator that counts the bytes each thread
//! holds (always) and the whole process's bytes and their peak (once
//! [`start_counting`] is called).
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

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
/// Whether allocations are counted process-wide: off until
/// [`start_counting`], so that commands that measure no peak (`run`,
/// `fuzz` on every core) do not contend for the counters' cache line.
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Whether [`start_counting`] saw an allocation counted.
static COUNTED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Bytes allocated on this thread less bytes freed on it (memory freed
    /// on another thread than the one that allocated it moves bytes between
    /// the two counters; a drill allocates and frees on its own thread).
    static THREAD_BYTES: Cell<isize> = const { Cell::new(0) };
}

/// A global allocator that forwards to [`System`], counts the bytes each
/// thread holds, and, once [`start_counting`] is called, the bytes the
/// process holds and their peak. Install it in a binary with
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

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counters do not affect the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
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

/// Starts counting allocations process-wide (`bench::run` calls it first)
/// and says whether [`CountingAlloc`] is the global allocator. Memory
/// allocated before and freed after counts as negative, so only
/// differences ([`peak_during`]) mean anything.
pub fn start_counting() -> bool {
    COUNTING.store(true, Ordering::Relaxed);
    let counted = installed();
    COUNTED.store(counted, Ordering::Relaxed);
    counted
}

/// Bytes allocated process-wide since [`start_counting`], less those
/// freed (0 when it is not installed or not counting).
pub fn heap_bytes() -> usize {
    usize::try_from(CURRENT.load(Ordering::Relaxed)).unwrap_or(0)
}

/// Runs `f` and returns its result with the peak of heap bytes allocated
/// during it above what was allocated when it started (`None` when
/// [`CountingAlloc`] is not the global allocator, or [`start_counting`]
/// was not called).
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, Option<u64>) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    let peak = PEAK.load(Ordering::Relaxed);
    let installed = COUNTED.load(Ordering::Relaxed);
    (r, installed.then(|| u64::try_from(peak - base).unwrap_or(0)))
}
