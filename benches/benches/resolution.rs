//! Policy resolution of 10k rules: loading/compiling them, and computing the kernel map entries
//! of one endpoint selected by all of them against a node's identities.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use l7_rules::check::parse_peer;
use l7_rules::engine::Engine;
use l7_rules::identity::IdentityTable;
use l7_rules::source::load_sources;
use ward_benches::many_rules;

fn bench(c: &mut Criterion) {
    let yaml = many_rules(10_000);
    let mut g = c.benchmark_group("resolution");
    g.sample_size(10);
    g.bench_function("load_compile_10k_rules", |b| {
        b.iter(|| {
            black_box(
                load_sources(&[("bench.yaml".into(), yaml.clone())])
                    .unwrap()
                    .policies
                    .len(),
            )
        })
    });
    let e = Engine::new(load_sources(&[("bench.yaml".into(), yaml.clone())]).unwrap());
    let subject = e.peer(&parse_peer("app=svc").unwrap());
    let mut ids = IdentityTable::with_reserved();
    for t in 0..100 {
        ids.insert(e.peer(&parse_peer(&format!("team=t{t}")).unwrap()))
            .unwrap();
    }
    let n = e.map_entries(&subject, &ids).len();
    assert!(n >= 10_000, "{n} entries");
    g.bench_function("map_entries_10k_rules_110_identities", |b| {
        b.iter(|| black_box(e.map_entries(black_box(&subject), &ids).len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
