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

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

use mimalloc::MiMalloc;

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

/// A global allocator that forwards to mimalloc (small blocks) or the
/// system allocator (large ones, see [`LARGE_BLOCK_BYTES`]), counts the bytes each
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

/// Blocks of at least this many bytes come from the system allocator, the
/// rest from mimalloc. The simulator's many small blocks (messages, log
/// batches, per-task maps) are cheapest from mimalloc's per-thread free
/// lists; the few large ones (a 1M-task drill's op log and task tables, grown
/// by doubling) stay with glibc, whose realloc moves a large block by
/// remapping its pages. Measured on the bench's 1M-task drill: mimalloc for
/// every block held 1.44–1.46 GB resident against glibc's 1.32 GB; split
/// here, 1.32 GB and the same wall time. (mimalloc is built with `no_thp`:
/// asking for transparent huge pages made the kernel zero whole 2 MiB pages,
/// 12 % of that drill's time.)
pub const LARGE_BLOCK_BYTES: usize = 128 * 1024;

/// Which allocator serves a block of `size` bytes. A block is freed and
/// resized with the size it has (the `GlobalAlloc` contract), so the same
/// allocator that made it always gets it back.
#[inline(always)]
fn large(size: usize) -> bool {
    size >= LARGE_BLOCK_BYTES
}

/// # Safety
/// As [`GlobalAlloc::alloc`] (`zeroed` as `alloc_zeroed`).
#[inline(always)]
unsafe fn raw_alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: the caller's contract, forwarded.
    unsafe {
        match (large(layout.size()), zeroed) {
            (true, false) => System.alloc(layout),
            (true, true) => System.alloc_zeroed(layout),
            (false, false) => MiMalloc.alloc(layout),
            (false, true) => MiMalloc.alloc_zeroed(layout),
        }
    }
}

/// # Safety
/// As [`GlobalAlloc::dealloc`].
#[inline(always)]
unsafe fn raw_dealloc(ptr: *mut u8, layout: Layout) {
    // SAFETY: the caller's contract; `ptr` came from the allocator its
    // size picks (see `large`).
    unsafe { if large(layout.size()) { System.dealloc(ptr, layout) } else { MiMalloc.dealloc(ptr, layout) } }
}

// SAFETY: every method hands the caller's arguments to the allocator the
// block's size picks (the same one for a block's whole life, see `large`);
// a resize across the threshold allocates from the other one, copies and
// frees. The counters do not affect the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { raw_alloc(layout, false) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { raw_alloc(layout, true) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { raw_dealloc(ptr, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = if large(layout.size()) == large(new_size) {
            // SAFETY: forwarded to the allocator that made the block.
            unsafe {
                if large(new_size) {
                    System.realloc(ptr, layout, new_size)
                } else {
                    MiMalloc.realloc(ptr, layout, new_size)
                }
            }
        } else {
            // SAFETY: `new_size` is non-zero and fits `isize` with the
            // alignment (the realloc contract), so the layout is valid; the
            // copy is within both blocks; the old block is freed once.
            unsafe {
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let p = raw_alloc(new_layout, false);
                if !p.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                    raw_dealloc(ptr, layout);
                }
                p
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A block that grows past [`LARGE_BLOCK_BYTES`] moves from mimalloc to
    /// the system allocator and back as it shrinks, keeping its bytes, and
    /// the thread's counter ends where it began.
    #[test]
    fn a_block_resized_across_the_large_threshold_keeps_its_bytes() {
        let a = CountingAlloc;
        let before = thread_heap_bytes();
        let layout = |size| Layout::from_size_align(size, 16).expect("valid layout");
        let big = LARGE_BLOCK_BYTES * 2;
        // SAFETY: each block is used within its size and freed once, with the
        // layout it has.
        unsafe {
            let p = a.alloc(layout(64));
            assert!(!p.is_null());
            for i in 0..64 {
                *p.add(i) = i as u8;
            }
            let q = a.realloc(p, layout(64), big);
            assert!(!q.is_null());
            assert_eq!(thread_heap_bytes() - before, big as isize);
            *q.add(big - 1) = 0xAB;
            let r = a.realloc(q, layout(big), big + 4096); // stays with the system allocator
            assert_eq!(*r.add(big - 1), 0xAB);
            let s = a.realloc(r, layout(big + 4096), 32);
            assert!(!s.is_null());
            assert!((0..32).all(|i| *s.add(i) == i as u8), "the bytes survive both moves");
            a.dealloc(s, layout(32));
            let z = a.alloc_zeroed(layout(big));
            assert!((0..big).step_by(4096).all(|i| *z.add(i) == 0));
            a.dealloc(z, layout(big));
        }
        assert_eq!(thread_heap_bytes(), before);
    }
}
