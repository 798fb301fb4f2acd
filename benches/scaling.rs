//! Scaling: the reference stack without faults, 1k, 10k and 100k tasks of 5
//! steps (`agentdrill bench` adds the 1M run and peak memory). Throughput is
//! in tasks, so a flat time per task means linear cost.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use agentdrill::{bench, drill};

fn scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("scaling");
    g.sample_size(10);
    for tasks in [1_000u32, 10_000, 100_000] {
        let sc = bench::throughput_scenario(tasks);
        g.throughput(Throughput::Elements(u64::from(tasks)));
        g.bench_function(format!("tasks_{tasks}"), |b| b.iter(|| drill::run(&sc, sc.seed)));
    }
    g.finish();
}

criterion_group!(benches, scaling);
criterion_main!(benches);
