//! Nanoseconds per decision for each algorithm at cost 1 and cost 10, and for the sliding
//! window at limits of 10, 1,000 and 100,000 (its runs are bounded to 514 per key).

use criterion::{Criterion, criterion_group, criterion_main};
use ratewarden::clock::NANOS_PER_SEC;
use ratewarden::limiter::{Algorithm, Limit, State};
use std::hint::black_box;

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    for algorithm in Algorithm::ALL {
        for cost in [1u64, 10] {
            let limits = Limit::new(algorithm, 1_000 * cost, 60);
            let name = match cost {
                1 => algorithm.as_str().to_owned(),
                _ => format!("{}/cost={cost}", algorithm.as_str()),
            };
            group.bench_function(name, |b| {
                let mut state = State::new(algorithm);
                // Requests 100 µs apart: a steady 10,000 per second, most of them blocked.
                let mut now = 1_800_000_000 * NANOS_PER_SEC;
                b.iter(|| {
                    now += 100_000;
                    black_box(state.check(&limits, black_box(cost), black_box(now)))
                });
            });
        }
    }
    for limit in [10u64, 1_000, 100_000] {
        let limits = Limit::new(Algorithm::SlidingWindow, limit, 60);
        group.bench_function(format!("sliding_window/limit={limit}"), |b| {
            let mut state = State::new(Algorithm::SlidingWindow);
            // One request per millisecond: the window holds at most 514 runs.
            let mut now = 1_800_000_000 * NANOS_PER_SEC;
            b.iter(|| {
                now += 1_000_000;
                black_box(state.check(&limits, 1, black_box(now)))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
