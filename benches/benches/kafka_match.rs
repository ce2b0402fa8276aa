//! Kafka request matching: role-expanded rules with topic coverage.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use l7_rules::l7::kafka::{check, ApiKeySet, KafkaRequest, KafkaRule};
use l7_rules::RuleRef;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("kafka_match");
    g.throughput(Throughput::Elements(1));
    for n in [10usize, 100] {
        let rules: Vec<KafkaRule> = (0..n)
            .map(|i| KafkaRule {
                api_keys: ApiKeySet::from_keys(parsers::kafka::ROLE_CONSUME),
                api_version: None,
                client_id: None,
                topic: Some(format!("topic-{i}").into()),
                origin: RuleRef::test("kafka"),
                summary: String::new(),
            })
            .collect();
        let last = format!("topic-{}", n - 1);
        let topics = ["topic-0", last.as_str()];
        let fetch = KafkaRequest {
            api_key: 1,
            api_version: 12,
            client_id: Some("c"),
            topics: &topics,
            broker_discovery: false,
        };
        let produce = KafkaRequest {
            api_key: 0,
            api_version: 9,
            client_id: Some("c"),
            topics: &topics,
            broker_discovery: false,
        };
        g.bench_with_input(BenchmarkId::new("fetch_two_topics_allow", n), &n, |b, _| {
            b.iter(|| black_box(check(&rules, black_box(&fetch))))
        });
        g.bench_with_input(BenchmarkId::new("produce_deny", n), &n, |b, _| {
            b.iter(|| black_box(check(&rules, black_box(&produce))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
