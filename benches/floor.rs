//! The stack against its floor: a 20k-task run of the reference stack, and
//! the same number of deliveries and timers through the bare runtime with
//! trivial handlers. Their ratio is `stack_over_floor` (printed at the end).

use criterion::{Criterion, Throughput, criterion_group};

use agentdrill::bench::{self, FloorWork, floor};
use agentdrill::drill;

fn work() -> (agentdrill::drill::scenario::Scenario, FloorWork) {
    let sc = bench::throughput_scenario(20_000);
    let stats = drill::simulate(&sc, sc.seed, false).stack.rt.stats();
    let work =
        FloorWork { deliveries: stats.delivered, timers: stats.events - stats.delivered, actors: sc.stack.workers };
    (sc, work)
}

fn stack_vs_floor(c: &mut Criterion) {
    let (sc, work) = work();
    let mut g = c.benchmark_group("floor");
    g.sample_size(20);
    g.throughput(Throughput::Elements(work.deliveries + work.timers));
    g.bench_function("stack_20k_tasks", |b| b.iter(|| drill::simulate(&sc, sc.seed, false).stack.rt.stats()));
    g.bench_function("bare_runtime_same_events", |b| b.iter(|| floor(work, sc.seed)));
    g.finish();
}

criterion_group!(benches, stack_vs_floor);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` runs each bench once; skip the ratio
    }
    let (sc, work) = work();
    // Back-to-back pairs, so a change of load hits both sides of each ratio.
    let mut ratios: Vec<f64> = (0..7)
        .map(|_| {
            let (_, stack) = bench::timed(|| drill::simulate(&sc, sc.seed, false));
            let (_, bare) = bench::timed(|| floor(work, sc.seed));
            stack / bare
        })
        .collect();
    println!(
        "stack_over_floor: {:.2} (median of 7 back-to-back pairs, {} events each side)",
        bench::median(&mut ratios),
        work.deliveries + work.timers
    );
}
