//! The peer: the same workload (N tasks × 5 request/response calls to a
//! Stripe-style payment API from 8 workers, 1 ms links, 300 ms processing,
//! worker 0 crashed for 30 s) on agentdrill's runtime and on turmoil 0.7.
//! Prints `speedup_vs_turmoil` (turmoil wall ÷ agentdrill wall) at the end.
//! A second group runs the same shape with 1 ms processing (turmoil's ticks
//! then rarely idle), which shows the cost per message on its own.

use criterion::{Criterion, criterion_group};

use agentdrill::bench::{self, peer};

fn vs_turmoil(c: &mut Criterion) {
    let p = peer::PeerParams::new(200);
    let mut g = c.benchmark_group("peer_200x5");
    g.sample_size(10);
    g.bench_function("agentdrill", |b| b.iter(|| peer::run_agentdrill(&p)));
    g.bench_function("turmoil", |b| b.iter(|| peer::run_turmoil(&p)));
    g.finish();
    // Context: 1 ms processing, so turmoil's ticks are rarely idle.
    let p = peer::PeerParams::busy(400);
    let mut g = c.benchmark_group("peer_busy_400x5");
    g.sample_size(10);
    g.bench_function("agentdrill", |b| b.iter(|| peer::run_agentdrill(&p)));
    g.bench_function("turmoil", |b| b.iter(|| peer::run_turmoil(&p)));
    g.finish();
}

criterion_group!(benches, vs_turmoil);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` runs each bench once; skip the ratio
    }
    let p = peer::PeerParams::new(200);
    // Back-to-back pairs: one turmoil run against the median of 9 agentdrill
    // runs (one is a fraction of a millisecond).
    let mut ratios = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let (t, tw) = bench::timed(|| peer::run_turmoil(&p));
        let (a, aw) = bench::median_wall(9, || peer::run_agentdrill(&p));
        assert_eq!((a.effects, a.requests), (t.effects, t.requests), "equal simulated work");
        ratios.push(tw / aw);
        last = Some(a);
    }
    let a = last.expect("ran");
    println!(
        "speedup_vs_turmoil: {:.0}x (median of 5 back-to-back pairs; {} requests, {} effects, {:.1} s simulated on both)",
        bench::median(&mut ratios),
        a.requests,
        a.effects,
        a.finished_us as f64 / 1e6
    );
}
