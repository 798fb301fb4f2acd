//! Independent drills on every core, with results in input order.
//!
//! The simulator is single-threaded by design (`Rc` inside, one RNG, one
//! event queue), so parallelism is one whole drill per thread: `--jobs N`
//! threads each take the next unclaimed index, in increasing order, and run
//! it to the end. Results are put back in index order, so what a command
//! prints does not depend on `N` (only wall times do).
//!
//! Claims happen in index order under one lock, and a claimed index always
//! runs to the end: the indices that ran are always a prefix `0..k`, whatever
//! the interleaving. That is what makes [`first_find`] return the same find
//! as a sequential loop.
//!
//! `jobs == 1` runs everything on the calling thread (no thread is spawned).

use std::num::NonZeroUsize;
use std::sync::Mutex;

/// The most threads `--jobs` may ask for.
pub const MAX_JOBS: usize = 1_024;

/// Stack of each worker thread: a drill runs on it as it would on the main
/// thread (8 MiB, Linux's default main-thread stack).
const STACK_BYTES: usize = 8 * 1024 * 1024;

/// The default `--jobs`: the number of cores (`available_parallelism`), 1
/// when unknown.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(MAX_JOBS)
}

/// Parses `--jobs`: a whole number of threads in `1..=MAX_JOBS`.
pub fn parse_jobs(s: &str) -> Result<usize, String> {
    let n: usize =
        s.trim().parse().map_err(|_| format!("invalid job count {s:?}; write a whole number, e.g. --jobs 2"))?;
    if !(1..=MAX_JOBS).contains(&n) {
        return Err(format!("--jobs {n}: need 1 ≤ N ≤ {MAX_JOBS}"));
    }
    Ok(n)
}

/// Runs `work(i)` for every `i` in `0..count` on `jobs` threads and returns
/// the results in index order.
pub fn map_in_order<R: Send>(count: usize, jobs: usize, work: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let slots: Vec<Mutex<Option<R>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let next = Mutex::new(0usize);
    let claim = || {
        let mut n = next.lock().expect("no worker panics while claiming");
        let i = *n;
        (i < count).then(|| {
            *n += 1;
            i
        })
    };
    let worker = || {
        while let Some(i) = claim() {
            let r = work(i);
            *slots[i].lock().expect("a slot is written once") = Some(r);
        }
    };
    spawn_workers(jobs.clamp(1, count.max(1)), &worker);
    slots.into_iter().map(|s| s.into_inner().expect("a slot is written once").expect("every index ran")).collect()
}

/// What [`first_find`] did.
#[derive(Debug)]
pub struct FirstFind<R> {
    /// How many indices ran, counted as a sequential loop that stops at the
    /// find would: `k + 1` for a find at `k`, else every index that ran.
    pub ran: u64,
    /// The lowest index whose `work` returned `Some`, with its result.
    pub find: Option<(u64, R)>,
}

/// Runs `work(0)`, `work(1)`, … on `jobs` threads until one returns `Some`,
/// `count` is reached, or `go_on()` says stop (checked before each claim;
/// it must stay false once false, as a deadline does). Returns the lowest
/// index that found something: the one a sequential loop finds. Indices
/// above a find that were already running finish and are forgotten.
pub fn first_find<R: Send>(
    count: u64,
    jobs: usize,
    go_on: impl Fn() -> bool + Sync,
    work: impl Fn(u64) -> Option<R> + Sync,
) -> FirstFind<R> {
    struct State<R> {
        next: u64,
        done: u64,
        find: Option<(u64, R)>,
    }
    let state = Mutex::new(State { next: 0, done: 0, find: None });
    let claim = || {
        let mut s = state.lock().expect("no worker panics while claiming");
        let below_find = s.find.as_ref().is_none_or(|(k, _)| s.next < *k);
        (s.next < count && below_find && go_on()).then(|| {
            s.next += 1;
            s.next - 1
        })
    };
    let worker = || {
        while let Some(i) = claim() {
            let r = work(i);
            let mut s = state.lock().expect("no worker panics while recording");
            s.done += 1;
            if let Some(r) = r
                && s.find.as_ref().is_none_or(|(k, _)| i < *k)
            {
                s.find = Some((i, r));
            }
        }
    };
    let jobs = usize::try_from(count).map_or(jobs, |c| jobs.clamp(1, c.max(1)));
    spawn_workers(jobs, &worker);
    let s = state.into_inner().expect("no worker panicked");
    assert!(s.done <= s.next && s.next <= count, "every claimed index ran once");
    match s.find {
        Some((k, r)) => FirstFind { ran: k + 1, find: Some((k, r)) },
        None => FirstFind { ran: s.done, find: None },
    }
}

/// Runs `worker` on the calling thread (`jobs == 1`) or on `jobs` scoped
/// threads, and waits for all of them. A panic in a worker is re-raised.
fn spawn_workers(jobs: usize, worker: &(impl Fn() + Sync)) {
    assert!((1..=MAX_JOBS).contains(&jobs), "jobs {jobs} out of 1..={MAX_JOBS}");
    if jobs == 1 {
        worker();
        return;
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|n| {
                std::thread::Builder::new()
                    .name(format!("drill-{n}"))
                    .stack_size(STACK_BYTES)
                    .spawn_scoped(s, worker)
                    .expect("the system can start a thread")
            })
            .collect();
        for h in handles {
            if let Err(payload) = h.join() {
                std::panic::resume_unwind(payload);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_index_order() {
        for jobs in [1, 2, 5] {
            let out = map_in_order(37, jobs, |i| i * i);
            assert_eq!(out, (0..37).map(|i| i * i).collect::<Vec<_>>(), "jobs {jobs}");
        }
        assert!(map_in_order(0, 3, |i| i).is_empty());
    }

    #[test]
    fn the_first_find_is_the_lowest_index_whatever_the_jobs() {
        for jobs in [1, 2, 4, 8] {
            // Later indices are quicker, so with several jobs a higher
            // index often finds first: the lowest must still win.
            let f = first_find(
                100,
                jobs,
                || true,
                |i| {
                    std::thread::sleep(std::time::Duration::from_micros(100 - i));
                    (i % 7 == 5 && i > 20).then_some(i * 10)
                },
            );
            assert_eq!(f.ran, 27, "jobs {jobs}");
            assert_eq!(f.find, Some((26, 260)), "jobs {jobs}");
        }
    }

    #[test]
    fn no_find_runs_every_index_and_a_stop_keeps_a_prefix() {
        for jobs in [1, 3] {
            let f = first_find(50, jobs, || true, |_| None::<()>);
            assert_eq!(f.ran, 50);
            assert!(f.find.is_none());
            let f = first_find(50, jobs, || false, |_| Some(()));
            assert_eq!(f.ran, 0);
            assert!(f.find.is_none());
        }
    }
}
