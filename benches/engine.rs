//! The bare runtime: events per second with trivial handlers (the floor of
//! `agentdrill bench`), at two queue depths.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use agentdrill::bench::{FloorWork, floor};

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    for actors in [16u32, 256] {
        let work = FloorWork { deliveries: 300_000, timers: 100_000, actors };
        g.throughput(Throughput::Elements(work.deliveries + work.timers));
        g.bench_function(format!("events_{actors}_actors"), |b| b.iter(|| floor(work, 1)));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = engine
}
criterion_main!(benches);
