//! Whole drills as `agentdrill run` runs them (with the fault-free baseline):
//! the 24-hour sandbox drill, the 2-hour warm-standby region loss, and a
//! generated drill of about 100 calls (the stand-in for issue 4's fuzzer).

use criterion::{Criterion, criterion_group, criterion_main};

use agentdrill::{bench, drill};

fn drills(c: &mut Criterion) {
    let mut g = c.benchmark_group("drill");
    let day = bench::sandbox_24h();
    g.bench_function("sandbox_24h", |b| b.iter(|| drill::run(&day, day.seed)));
    let warm = bench::warm_standby_2h();
    g.bench_function("warm_standby_2h", |b| b.iter(|| drill::run(&warm, warm.seed)));
    let base = bench::generated_base();
    let mut seed = 0;
    g.bench_function("generated_100_calls", |b| {
        b.iter(|| {
            seed += 1;
            let sc = bench::generated_drill(&base, seed);
            drill::run(&sc, sc.seed)
        })
    });
    g.finish();
}

criterion_group!(benches, drills);
criterion_main!(benches);
