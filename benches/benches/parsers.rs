//! Parser benches: HTTP/1 request head of a typical curl request, path normalisation, Kafka
//! Produce request parsing, DNS query parsing. Each group carries a same-run baseline (a plain
//! scan over the same bytes) so the figures read as ratios on whatever machine runs them.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use parsers::{dns, http1, kafka, path, Status};

const CURL: &[u8] = b"GET /v1/request-landing HTTP/1.1\r\n\
Host: deathstar.default.svc.cluster.local\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
\r\n";

/// The baseline: find the end of the head, which every parser must at least do.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn bench_http1(c: &mut Criterion) {
    let mut g = c.benchmark_group("http1");
    g.throughput(Throughput::Bytes(CURL.len() as u64));
    g.bench_function("baseline_find_head_end", |b| {
        b.iter(|| find_head_end(black_box(CURL)))
    });
    g.bench_function("parse_curl_head", |b| {
        b.iter(|| match http1::parse_request_head(black_box(CURL)) {
            Ok(Status::Complete(head, n)) => (head.headers().len(), n),
            other => panic!("{other:?}"),
        })
    });
    g.finish();
}

fn bench_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("path");
    let clean = "/v1/request-landing?ship=xwing&count=1";
    let dirty = "/v1//public/../%7Eadmin/./exhaust-port%2fopen?ship=xwing";
    g.bench_function("baseline_scan", |b| {
        b.iter(|| black_box(clean).bytes().filter(|&c| c == b'/').count())
    });
    g.bench_function("normalize_clean", |b| {
        b.iter(|| path::normalize(black_box(clean)).map(|p| p.len()))
    });
    g.bench_function("normalize_dirty", |b| {
        b.iter(|| path::normalize(black_box(dirty)).map(|p| p.len()))
    });
    g.finish();
}

/// Produce v9 (flexible): one topic, one partition, `records_len` bytes of records.
fn produce_v9(records_len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0i16.to_be_bytes()); // api key: Produce
    f.extend_from_slice(&9i16.to_be_bytes()); // version
    f.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    let client = b"rdkafka";
    f.extend_from_slice(&(client.len() as i16).to_be_bytes());
    f.extend_from_slice(client);
    f.push(0); // header tagged fields
    f.push(0); // transactional_id: null
    f.extend_from_slice(&(-1i16).to_be_bytes()); // acks
    f.extend_from_slice(&30_000i32.to_be_bytes()); // timeout_ms
    f.push(2); // one topic
    let topic = b"empire-announce";
    f.push(topic.len() as u8 + 1);
    f.extend_from_slice(topic);
    f.push(2); // one partition
    f.extend_from_slice(&0i32.to_be_bytes());
    push_uvarint(&mut f, records_len as u32 + 1);
    f.resize(f.len() + records_len, 0xab);
    f.push(0); // partition tagged fields
    f.push(0); // topic tagged fields
    f.push(0); // request tagged fields
    f
}

fn push_uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bench_kafka(c: &mut Criterion) {
    let mut g = c.benchmark_group("kafka");
    let frame = produce_v9(1024);
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("baseline_sum_bytes", |b| {
        b.iter(|| {
            black_box(&frame)
                .iter()
                .fold(0u32, |a, &x| a.wrapping_add(u32::from(x)))
        })
    });
    g.bench_function("parse_produce_v9_1KiB", |b| {
        b.iter(|| {
            let req = kafka::parse_request(black_box(&frame)).unwrap();
            req.topics.len()
        })
    });
    g.bench_function("deny_produce_v9", |b| {
        let req = kafka::parse_request(&frame).unwrap();
        b.iter(|| kafka::deny_response(black_box(&req), black_box(&frame)).map(|r| r.len()))
    });
    g.finish();
}

/// A recursive A query for `name` with an EDNS OPT record (UDP size 1232), as dig sends.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
                                        // OPT: root name, type 41, class = UDP size, TTL 0, rdlen 0.
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    q
}

fn bench_dns(c: &mut Criterion) {
    let mut g = c.benchmark_group("dns");
    let query = dns_query("api.github.com");
    g.bench_function("baseline_sum_bytes", |b| {
        b.iter(|| {
            black_box(&query)
                .iter()
                .fold(0u32, |a, &x| a.wrapping_add(u32::from(x)))
        })
    });
    g.bench_function("parse_query", |b| {
        b.iter(|| dns::parse_query(black_box(&query)).unwrap().qtype)
    });
    g.bench_function("normalize_name", |b| {
        b.iter(|| dns::normalize_name(black_box("API.GitHub.com")).len())
    });
    g.bench_function("refused_response", |b| {
        b.iter(|| {
            dns::refused_response(black_box(&query), dns::DenyRcode::Refused)
                .unwrap()
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_http1, bench_path, bench_kafka, bench_dns);
criterion_main!(benches);
