//! HTTP decision throughput at 10 / 1,000 / 10,000 path rules, literal and regex paths,
//! against the compiled rule set (what the proxy runs per request) and through the full engine.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use l7_rules::check::parse_peer;
use l7_rules::engine::{Engine, Flow, L7Policy, L7Request};
use l7_rules::l7::http::HttpRequest;
use l7_rules::model::{Direction, Protocol};
use l7_rules::source::load_sources;
use ward_benches::http_policy;

fn engine(yaml: String) -> Engine {
    Engine::new(load_sources(&[("bench.yaml".into(), yaml)]).expect("bench policy loads"))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("http_decision");
    g.throughput(Throughput::Elements(1));
    for regex in [false, true] {
        for n in [10usize, 1_000, 10_000] {
            let e = engine(http_policy(n, regex));
            let subject = e.peer(&parse_peer("app=svc").unwrap());
            let peer = e.peer(&parse_peer("app=client").unwrap());
            let flow = Flow {
                direction: Direction::Ingress,
                subject: &subject,
                peer: &peer,
                protocol: Protocol::Tcp,
                port: 80,
            };
            let L7Policy::Http(set) = e.l7_policy(&flow) else {
                panic!("expected an HTTP rule set");
            };
            let last = n - 1;
            let hit_path = if regex {
                format!("/api/v1/resource-{last}/42")
            } else {
                format!("/api/v1/resource-{last}")
            };
            let method = if last % 2 == 0 { "GET" } else { "POST" };
            let headers = [("user-agent", "curl/7.88.1"), ("accept", "*/*")];
            let hit = HttpRequest {
                method,
                path: &hit_path,
                host: "svc",
                headers: &headers,
            };
            let miss = HttpRequest {
                method: "PUT",
                path: "/v1/exhaust-port",
                host: "svc",
                headers: &headers,
            };
            let kind = if regex { "regex" } else { "literal" };
            assert!(set.check(&hit).allowed_by.is_some());
            assert!(set.check(&miss).allowed_by.is_none());
            g.bench_with_input(
                BenchmarkId::new(format!("ruleset_{kind}_allow"), n),
                &n,
                |b, _| b.iter(|| black_box(set.check(black_box(&hit)))),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("ruleset_{kind}_deny"), n),
                &n,
                |b, _| b.iter(|| black_box(set.check(black_box(&miss)))),
            );
            if n == 1_000 {
                let req = L7Request::Http(hit);
                // Per connection: resolve the sides (L3/L4 lookup, cached L7 rules) and decide.
                g.bench_with_input(
                    BenchmarkId::new(format!("engine_connection_and_decide_{kind}"), n),
                    &n,
                    |b, _| {
                        b.iter(|| {
                            let policy =
                                e.connection_policy(black_box(std::slice::from_ref(&flow)), false);
                            black_box(policy.decide(Some(&req)).verdict)
                        })
                    },
                );
                // Per request on an open connection: the one decision function.
                let policy = e.connection_policy(std::slice::from_ref(&flow), false);
                g.bench_with_input(
                    BenchmarkId::new(format!("engine_decide_{kind}"), n),
                    &n,
                    |b, _| b.iter(|| black_box(policy.decide(black_box(Some(&req))).verdict)),
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
