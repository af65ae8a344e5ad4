//! How long one write-behind flush of 100,000 dirty limiter snapshots takes (one
//! transaction, prepared statements), on a real SQLite file in WAL mode.

use criterion::{Criterion, criterion_group, criterion_main};
use ratewarden::clock::NANOS_PER_SEC;
use ratewarden::limiter::{Algorithm, Limit, State};
use ratewarden::snapshot::{ClientSnapshot, EndpointSnapshot, StatDelta, Totals};
use ratewarden::store::sqlite::{self, DatabaseUrl};
use std::sync::Arc;

const CLIENTS: u64 = 100_000;

fn batch(version: u64) -> Vec<ClientSnapshot> {
    let limits = Limit::new(Algorithm::SlidingWindow, 100, 3600);
    let now = 1_800_000_000 * NANOS_PER_SEC;
    let endpoint: Arc<str> = Arc::from("*");
    (0..CLIENTS)
        .map(|i| {
            let mut state = State::new(Algorithm::SlidingWindow);
            state.check(&limits, 1, now + i);
            ClientSnapshot {
                client: Arc::from(format!("client-{i}")),
                version,
                totals: Totals {
                    total_requests: version,
                    blocked_requests: 0,
                    last_request: now,
                },
                endpoints: vec![EndpointSnapshot {
                    endpoint: endpoint.clone(),
                    algorithm: Some(Algorithm::SlidingWindow),
                    state: state.encode(),
                    expires_at: now + 3600 * NANOS_PER_SEC,
                }],
                stats: vec![StatDelta {
                    minute: now / NANOS_PER_SEC / 60,
                    endpoint: endpoint.clone(),
                    allowed: 1,
                    blocked: 0,
                }],
            }
        })
        .collect()
}

fn flush(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::File(dir.path().join("bench.db").to_string_lossy().into_owned());
    let conn = sqlite::open(&url).unwrap();
    let mut group = c.benchmark_group("persist");
    group.sample_size(10);
    let mut version = 0;
    group.bench_function("flush_100k_dirty_snapshots", |b| {
        b.iter_batched(
            || {
                version += 1;
                batch(version)
            },
            |batch| sqlite::persist(&conn, &batch).unwrap(),
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, flush);
criterion_main!(benches);
