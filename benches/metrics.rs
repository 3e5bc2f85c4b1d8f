//! The metrics work of one proxied request: a request counter (route × status) and an
//! upstream latency observation, on an existing series (the steady state), plus a scrape.
//! It is the figure to compare when the metrics backend changes (issue 15: a metrics
//! crate must not make the hot path clearly slower).
//!
//! Run: `cargo bench --bench metrics`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::metrics::Metrics;
use portcullis::tokens::validate::CacheStats;

fn hot_path(c: &mut Criterion) {
    let m = Metrics::new();
    let routes = ["/api", "/static", "/admin-api", "/users"];
    for r in routes {
        m.request(r, 200);
        m.upstream_latency(r, Duration::from_millis(2));
    }
    c.bench_function("metrics/per_request", |b| {
        b.iter(|| {
            m.request(black_box("/users"), black_box(200));
            m.upstream_latency(black_box("/users"), black_box(Duration::from_micros(1800)));
        })
    });
    c.bench_function("metrics/render", |b| {
        b.iter(|| black_box(m.render(&CacheStats { hits: 1, misses: 2, entries: 3 })))
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
