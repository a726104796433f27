//! What the agent's own authorization of a scrape costs ([`lookout_agent::authorization`]),
//! beside two things every scrape already does with its request headers: negotiating the
//! exposition format from `Accept` and gzip from `Accept-Encoding`. All three on the headers
//! Prometheus 2.42 sends through a proxy. A report, not a test:
//!
//! ```sh
//! cargo bench -p lookout-agent --bench authorization
//! ```

// `criterion_group!` defines a public function without documentation.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use lookout_agent::authorization;
use lookout_agent::exposition::Format;
use lookout_discovery::{Instance, GENERATION_HEADER, TENANT_HEADER};

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    put("accept", "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1");
    put("accept-encoding", "gzip");
    put("user-agent", "Prometheus/2.42.0");
    put("x-prometheus-scrape-timeout-seconds", "10");
    put("host", "127.0.0.1:9164");
    put(TENANT_HEADER, "acme");
    put(GENERATION_HEADER, "4a1f0c9e2b7d3e58");
    h
}

fn live() -> Instance {
    Instance {
        id: "web-1".into(),
        runtime_id: "4b825dc642cb6eb9a060e54bf8d69288fbee4904b825dc642cb6eb9a060e54bf".into(),
        generation: "4a1f0c9e2b7d3e58".into(),
        node: "node-a".into(),
        tenant: Some("acme".into()),
        alias: "web-1".into(),
        groups: vec!["web".into()],
        image: None,
        source: "runc".into(),
        labels: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let (h, i) = (headers(), live());
    let mut g = c.benchmark_group("per_scrape_header_work");
    g.bench_function("authorization_check", |b| {
        b.iter(|| authorization::check(black_box(&h), black_box(&i)))
    });
    g.bench_function("format_negotiation", |b| {
        b.iter(|| Format::negotiate(black_box(&h).get("accept").and_then(|v| v.to_str().ok())))
    });
    g.bench_function("gzip_negotiation", |b| {
        b.iter(|| {
            lookout_agent::server::accepts_gzip(
                black_box(&h)
                    .get("accept-encoding")
                    .and_then(|v| v.to_str().ok()),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
