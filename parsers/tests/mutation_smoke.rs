//! A stable-toolchain stand-in for the libFuzzer targets in `parsers/fuzz/`: every parser is fed
//! deterministic random mutations of valid inputs (bit flips, byte overwrites, truncations,
//! insertions, duplications) and must return without panicking while keeping its invariants.
//! It finds the shallow bugs in CI; the fuzz targets go deeper under `cargo +nightly fuzz`.

use parsers::{dns, grpc, http1, kafka, path, Status};

const ROUNDS: usize = 20_000;

/// xorshift64*: deterministic, so a failure names its round and replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = rng.next() as u8;
            }
            2 => data.truncate(at),
            3 => data.insert(at, rng.next() as u8),
            4 if !data.is_empty() => {
                let from = rng.below(data.len());
                let len = rng.below(16).min(data.len() - from);
                let chunk = data[from..from + len].to_vec();
                data.splice(at..at, chunk);
            }
            _ => {
                // Interesting bytes for these grammars.
                let special = [
                    0u8, b'\r', b'\n', b' ', b'\t', b':', b'/', b'.', b'%', 0xff, 0x80,
                ];
                data.insert(at, special[rng.below(special.len())]);
            }
        }
    }
    data
}

fn run(seeds: &[Vec<u8>], mut check: impl FnMut(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in seeds {
        check(seed);
    }
    for _ in 0..ROUNDS {
        let seed = &seeds[rng.below(seeds.len())];
        let data = mutate(&mut rng, seed);
        check(&data);
    }
}

#[test]
fn http1_survives_mutations() {
    let seeds = [
        &b"GET /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: a:80\r\nContent-Length: 5\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\nhello",
        b"PUT http://a/b/../c?x HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    ]
    .map(<[u8]>::to_vec);
    run(&seeds, |data| match http1::parse_request_head(data) {
        Ok(Status::Complete(head, consumed)) => {
            assert!(consumed <= data.len() && consumed <= http1::MAX_HEAD_LEN);
            assert!(!(head.chunked && head.content_length.is_some()));
            let _ = path::normalize(head.path_and_query());
        }
        Ok(Status::NeedMore) => assert!(data.len() < http1::MAX_HEAD_LEN),
        Err(e) => assert!(matches!(http1::error_status(&e), 400 | 431)),
    });
}

#[test]
fn path_survives_mutations() {
    let seeds = [
        "/a/b/../c//d/./%7e%2f?q=/../x",
        "/",
        "*",
        "/..%2E/%2e%2E\\x",
    ]
    .map(|s| s.as_bytes().to_vec());
    run(&seeds, |data| {
        let Ok(input) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(normal) = path::normalize(input) {
            assert_eq!(path::normalize(&normal).unwrap(), normal, "{input:?}");
        }
    });
}

#[test]
fn grpc_survives_mutations() {
    let seeds = [
        b"\0\0\0\0\x05hello".to_vec(),
        b"/pkg.Service/Method".to_vec(),
        b"application/grpc+proto".to_vec(),
    ];
    run(&seeds, |data| {
        if let Ok(Status::Complete(header, n)) = grpc::message_header(data) {
            assert!(n == grpc::MESSAGE_HEADER_LEN && header.len <= grpc::MAX_MESSAGE_LEN);
        }
        let _ = grpc::is_grpc_content_type(data);
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = grpc::parse_path(s);
        }
    });
}

/// Produce v9 (flexible) and Metadata v4 (classic), hand-encoded.
fn kafka_seeds() -> Vec<Vec<u8>> {
    let produce = [
        &[0u8, 0, 0, 9, 0, 0, 0, 7, 0, 3, b'c', b'l', b'i', 0][..],
        &[
            0, 0xff, 0xff, 0, 0, 0x75, 0x30, 2, 6, b'e', b'm', b'p', b'i', b'r', 2,
        ],
        &[0, 0, 0, 1, 4, b'a', b'b', b'c', 0, 0, 0],
    ]
    .concat();
    let metadata = [
        &[0u8, 3, 0, 4, 0, 0, 0, 8, 0, 1, b'x'][..],
        &[0, 0, 0, 2, 0, 2, b'a', b'b', 0, 3, b'c', b'd', b'e', 1],
    ]
    .concat();
    let offset_fetch_v8 = [
        &[0u8, 9, 0, 8, 0, 0, 0, 9, 0xff, 0xff, 0][..],
        &[2, 2, b'g', 2, 2, b't', 2, 0, 0, 0, 1, 0, 0, 1, 0],
    ]
    .concat();
    vec![produce, metadata, offset_fetch_v8]
}

#[test]
fn kafka_survives_mutations() {
    let seeds = kafka_seeds();
    for seed in &seeds {
        assert!(
            kafka::parse_request(seed).is_ok(),
            "seed must parse: {seed:?}"
        );
    }
    run(&seeds, |data| {
        let Ok(req) = kafka::parse_request(data) else {
            return;
        };
        if let Some(resp) = kafka::deny_response(&req, data) {
            match kafka::frame(&resp) {
                Ok(Status::Complete(body, n)) => {
                    assert_eq!(n, resp.len());
                    assert_eq!(body[..4], req.correlation_id.to_be_bytes());
                }
                other => panic!("deny response is not one frame: {other:?}"),
            }
        }
    });
}

fn dns_seeds() -> Vec<Vec<u8>> {
    let query = [
        &[0x12u8, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1][..],
        &[
            3, b'a', b'p', b'i', 6, b'g', b'i', b't', b'h', b'u', b'b', 3, b'c', b'o', b'm', 0, 0,
            1, 0, 1,
        ],
        &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0],
    ]
    .concat();
    // Response: api.github.com CNAME edge (compressed owner) + A 192.0.2.1.
    let response = [
        &[0x12u8, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0][..],
        &[
            3, b'a', b'p', b'i', 6, b'g', b'i', b't', b'h', b'u', b'b', 3, b'c', b'o', b'm', 0, 0,
            1, 0, 1,
        ],
        &[
            0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 7, 4, b'e', b'd', b'g', b'e', 0xc0, 16,
        ],
        &[0xc0, 44, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 1],
    ]
    .concat();
    vec![query, response]
}

#[test]
fn dns_survives_mutations() {
    let seeds = dns_seeds();
    assert!(dns::parse_query(&seeds[0]).is_ok());
    let info = dns::answer_addresses(&seeds[1]).unwrap();
    assert_eq!(
        info.addresses,
        ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(info.min_ttl, Some(30));
    run(&seeds, |data| {
        if let Ok(query) = dns::parse_query(data) {
            let resp = dns::refused_response(data, dns::DenyRcode::Refused).unwrap();
            let info = dns::answer_addresses(&resp).unwrap();
            assert_eq!((info.id, info.rcode), (query.id, 5));
        }
        if let Ok(info) = dns::answer_addresses(data) {
            assert!(info.cnames.len() <= dns::MAX_CNAME_CHAIN);
        }
        let mut framed = (data.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(data);
        let _ = dns::frame_tcp(&framed);
    });
}
