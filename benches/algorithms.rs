//! Nanoseconds per decision for each algorithm, and for the sliding window at limits of
//! 10, 1,000 and 100,000 (its memory and work grow with the requests it records).

use criterion::{Criterion, criterion_group, criterion_main};
use ratewarden::clock::NANOS_PER_SEC;
use ratewarden::limiter::{Algorithm, Limits, State};
use std::hint::black_box;

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    for algorithm in Algorithm::ALL {
        let limits = Limits::new(algorithm, 1_000, 60);
        group.bench_function(algorithm.as_str(), |b| {
            let mut state = State::new(algorithm);
            // Requests 100 µs apart: a steady 10,000 per second, half of them blocked.
            let mut now = 1_800_000_000 * NANOS_PER_SEC;
            b.iter(|| {
                now += 100_000;
                black_box(state.check(&limits, black_box(now)))
            });
        });
    }
    for limit in [10u64, 1_000, 100_000] {
        let limits = Limits::new(Algorithm::SlidingWindow, limit, 60);
        group.bench_function(format!("sliding_window/limit={limit}"), |b| {
            let mut state = State::new(Algorithm::SlidingWindow);
            // One request per millisecond: the window holds min(limit, 60,000) runs.
            let mut now = 1_800_000_000 * NANOS_PER_SEC;
            b.iter(|| {
                now += 1_000_000;
                black_box(state.check(&limits, black_box(now)))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
