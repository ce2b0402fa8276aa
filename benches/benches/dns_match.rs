//! DNS pattern matching: one name against rule sets of names and patterns.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use l7_rules::l7::dns::{DnsMatcher, NamePattern};
use l7_rules::RuleRef;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("dns_match");
    g.throughput(Throughput::Elements(1));
    for n in [10usize, 1_000] {
        let origin = RuleRef::test("dns");
        let mut patterns = Vec::new();
        for i in 0..n {
            let p = if i % 2 == 0 {
                NamePattern::name(&format!("api{i}.example.com")).unwrap()
            } else {
                NamePattern::pattern(&format!("*.svc{i}.example.org")).unwrap()
            };
            patterns.push((p, origin.clone()));
        }
        patterns.push((
            NamePattern::pattern("**.cilium.io").unwrap(),
            origin.clone(),
        ));
        let m = DnsMatcher::new(&patterns);
        assert!(m.matches("a.b.cilium.io"));
        assert!(!m.matches("www.github.com"));
        g.bench_with_input(BenchmarkId::new("name_hit", n), &n, |b, _| {
            b.iter(|| black_box(m.matches(black_box("api0.example.com."))))
        });
        g.bench_with_input(BenchmarkId::new("pattern_hit", n), &n, |b, _| {
            b.iter(|| black_box(m.matches(black_box("a.b.cilium.io"))))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| black_box(m.matches(black_box("www.github.com"))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
