//! The benchmark's gRPC client (scripts/bench, scenario 11): `ShouldRateLimit` calls over
//! ONE HTTP/2 connection with a fixed number of calls in flight (streams), for a bounded
//! time, each for one of 10,000 rotating clients (descriptor `[client=c<n>]` in domain
//! `bench`). Prints one JSON line: calls per second, median and 99th-percentile latency
//! in ms, calls made, and calls not answered OK.
//!
//! Usage: `cargo run --release --example grpc_bench -- 127.0.0.1:8081 [seconds] [streams] [clients]`

use ratewarden::envoy::proto::{Code, Entry, RateLimitDescriptor, RateLimitRequest};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[actix_rt::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (seconds, streams, clients) = (arg(2, 5), arg(3, 64), arg(4, 10_000));
    assert!(
        addr.starts_with("127."),
        "the benchmark only targets loopback addresses"
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("an address")
        .connect()
        .await
        .expect("connect to the gRPC server");
    let until = Instant::now() + Duration::from_secs(seconds);
    let counter = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let workers = (0..streams).map(|_| {
        let (channel, counter) = (channel.clone(), counter.clone());
        async move {
            let (mut latencies, mut not_ok) = (Vec::new(), 0u64);
            while Instant::now() < until {
                let n = counter.get();
                counter.set(n + 1);
                let req = RateLimitRequest {
                    domain: "bench".into(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: vec![Entry {
                            key: "client".into(),
                            value: format!("c{}", n % clients),
                        }],
                        ..Default::default()
                    }],
                    hits_addend: 0,
                };
                let sent = Instant::now();
                let answer = ratewarden::envoy::grpc::call(channel.clone(), req, None).await;
                latencies.push(sent.elapsed());
                if !matches!(answer, Ok(r) if r.overall_code == Code::Ok as i32) {
                    not_ok += 1;
                }
            }
            (latencies, not_ok)
        }
    });
    let results = futures_util::future::join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let not_ok: u64 = results.iter().map(|r| r.1).sum();
    let mut all: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "rps": all.len() as f64 / elapsed,
            "p50_ms": at(0.50),
            "p99_ms": at(0.99),
            "requests": all.len(),
            "non_ok": not_ok,
        })
    );
}
