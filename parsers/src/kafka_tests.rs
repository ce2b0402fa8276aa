// Unit tests of `parsers::kafka`, included once per `kafka-protocol` release (`kp`): requests
// are encoded and responses decoded with 0.17 (Kafka 4.x) and with 0.15 (Kafka 3.9), at every
// version each knows.

use super::*;
use kp::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName, GroupId};
use kp::protocol::{Decodable, Encodable, StrBytes};

#[test]
fn cilium_names() {
    let cilium = [
        "produce",
        "fetch",
        "offsets",
        "metadata",
        "leaderandisr",
        "stopreplica",
        "updatemetadata",
        "controlledshutdown",
        "offsetcommit",
        "offsetfetch",
        "findcoordinator",
        "joingroup",
        "heartbeat",
        "leavegroup",
        "syncgroup",
        "describegroups",
        "listgroups",
        "saslhandshake",
        "apiversions",
        "createtopics",
        "deletetopics",
        "deleterecords",
        "initproducerid",
        "offsetforleaderepoch",
        "addpartitionstotxn",
        "addoffsetstotxn",
        "endtxn",
        "writetxnmarkers",
        "txnoffsetcommit",
        "describeacls",
        "createacls",
        "deleteacls",
        "describeconfigs",
        "alterconfigs",
    ];
    for (key, name) in (0i16..).zip(cilium) {
        assert_eq!(api_key_from_name(name), Some(key), "{name}");
        assert_eq!(
            api_key_from_name(&name.to_ascii_uppercase()),
            Some(key),
            "{name}"
        );
        assert_eq!(api_key_name(key), Some(name), "{key}");
    }
}

#[test]
fn kafka_names_cover_kafka_protocol() {
    let mut known = 0;
    for key in 0..=i16::MAX {
        let Ok(api_key) = ApiKey::try_from(key) else {
            // Names exactly for the keys one of the two releases knows.
            assert_eq!(
                api_key_name(key).is_some(),
                known_versions(key).is_some(),
                "{key}"
            );
            continue;
        };
        known += 1;
        let kafka_name = format!("{api_key:?}");
        assert_eq!(api_key_from_name(&kafka_name), Some(key), "{kafka_name}");
        assert!(api_key_name(key).is_some(), "{key}");
    }
    assert!(known >= 78, "kafka-protocol knows {known} keys");
}

#[test]
fn name_lookups() {
    let cases: &[(&str, Option<i16>)] = &[
        ("ListOffsets", Some(2)),
        ("Offsets", Some(2)),
        ("SaslAuthenticate", Some(36)),
        ("describecluster", Some(60)),
        ("PRODUCE", Some(0)),
        ("produce ", None),
        ("", None),
        ("nosuchkey", None),
    ];
    for &(name, want) in cases {
        assert_eq!(api_key_from_name(name), want, "{name:?}");
    }
    assert_eq!(api_key_name(-1), None);
    assert_eq!(api_key_name(88), None);
    assert_eq!(api_key_name(36), Some("saslauthenticate"));
}

#[test]
fn key_sets() {
    for key in [0, 1, 2, 3, 37] {
        assert!(is_topic_kind(key), "{key}");
    }
    for key in [7, 10, 18, 36, -1] {
        assert!(!is_topic_kind(key), "{key}");
    }
    assert_eq!(TOPIC_KINDS.len(), 19);
    assert_eq!(ROLE_PRODUCE, &[0, 3, 17, 18, 22, 24, 26, 36]);
    assert!(ROLE_CONSUME.iter().all(|k| api_key_name(*k).is_some()));
}

// ---- message side -------------------------------------------------------------------

use bytes::Bytes;
use kp::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kp::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kp::messages::metadata_request::MetadataRequestTopic;
use kp::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kp::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kp::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kp::messages::*;

const TOPICS: [&str; 2] = ["orders", "payments"];
const PARTITIONS: [i32; 2] = [0, 3];
const CORRELATION: i32 = 0x1234_5678;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn topic_id(i: usize) -> uuid::Uuid {
    uuid::Uuid::from_bytes([u8::try_from(i + 1).unwrap(); 16])
}

#[test]
fn metadata_empty_list_is_all_topics_in_v0_only() {
    for (version, all) in [(0, true), (1, false), (12, false)] {
        let body = MetadataRequest::default().with_topics(Some(vec![]));
        let frame = encode_request(ApiKey::Metadata, version, &body);
        let req = parse_request(&frame).unwrap();
        assert_eq!(req.all_topics, all, "v{version}");
        assert!(req.topics.is_empty());
    }
    let frame = encode_request(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    assert!(parse_request(&frame).unwrap().all_topics);
}

#[test]
fn api_versions_are_narrowed_to_what_ward_inspects() {
    use kp::messages::api_versions_response::ApiVersion;
    let range = |k: i16, min: i16, max: i16| {
        ApiVersion::default()
            .with_api_key(k)
            .with_min_version(min)
            .with_max_version(max)
    };
    let body = ApiVersionsResponse::default().with_api_keys(vec![
        range(0, 3, 13),
        range(1, 4, 17),
        range(3, 0, 12),
        range(18, 0, 4),
        range(9999, 0, 1),
    ]);
    let mut frame = Vec::new();
    ResponseHeader::default()
        .with_correlation_id(CORRELATION)
        .encode(&mut frame, 0)
        .unwrap();
    body.encode(&mut frame, 3).unwrap();
    let out = narrow_api_versions(3, &frame).unwrap();
    assert_eq!(
        i32::from_be_bytes(out[..4].try_into().unwrap()) as usize,
        out.len() - FRAME_PREFIX_LEN
    );
    let mut rest = &out[FRAME_PREFIX_LEN..];
    let header = ResponseHeader::decode(&mut rest, 0).unwrap();
    assert_eq!(header.correlation_id, CORRELATION);
    let got = ApiVersionsResponse::decode(&mut rest, 3).unwrap();
    let got: Vec<(i16, i16, i16)> = got
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    // Fetch goes up to what `kafka-protocol` knows (Ward resolves its topic IDs), Produce
    // too (below its ID versions); the unknown key is gone.
    assert_eq!(got, vec![(0, 3, 13), (1, 4, 17), (3, 0, 12), (18, 0, 4)]);
}

#[test]
fn a_newer_api_versions_request_gets_the_kip_511_answer() {
    let mut frame = encode_request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    frame[3] = 99; // version 99
    let req = &frame[..];
    assert!(matches!(
        parse_request(req),
        Err(KafkaError::UnsupportedVersion {
            api_key: 18,
            version: 99
        })
    ));
    let out = unsupported_api_versions(req).unwrap();
    let mut rest = &out[FRAME_PREFIX_LEN..];
    assert_eq!(
        ResponseHeader::decode(&mut rest, 0).unwrap().correlation_id,
        CORRELATION
    );
    let body = ApiVersionsResponse::decode(&mut rest, 0).unwrap();
    assert_eq!(body.error_code, UNSUPPORTED_VERSION);
    assert_eq!(body.api_keys.len(), 1);
    assert_eq!(body.api_keys[0].api_key, 18);
}

fn encode_request(key: ApiKey, version: i16, body: &impl Encodable) -> Vec<u8> {
    let header_version = key.request_header_version(version);
    let mut header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(CORRELATION);
    if header_version >= 1 {
        header = header.with_client_id(Some(StrBytes::from_static_str("ward-test")));
    }
    let mut buf = Vec::new();
    header.encode(&mut buf, header_version).unwrap();
    body.encode(&mut buf, version).unwrap();
    buf
}

/// The versions of `key` both this `kafka-protocol` and Ward know.
fn versions(key: ApiKey) -> std::ops::RangeInclusive<i16> {
    let range = key.valid_versions();
    let (min, max) = known_versions(key as i16).unwrap();
    range.min.max(min)..=range.max.min(max)
}

/// Decodes a deny response frame with kafka-protocol, checking prefix and header.
fn decode_response<R: Decodable>(key: ApiKey, version: i16, framed: &[u8]) -> R {
    let Status::Complete(body, n) = frame(framed).unwrap() else {
        panic!("incomplete response frame");
    };
    assert_eq!(n, framed.len());
    let mut buf = body;
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(version))
        .unwrap_or_else(|e| panic!("{key:?} v{version} header: {e}"));
    assert_eq!(header.correlation_id, CORRELATION);
    let response =
        R::decode(&mut buf, version).unwrap_or_else(|e| panic!("{key:?} v{version} body: {e}"));
    assert!(
        buf.is_empty(),
        "{key:?} v{version}: {} trailing bytes",
        buf.len()
    );
    response
}

fn parse_and_deny(key: ApiKey, version: i16, body: &impl Encodable) -> (KafkaRequest, Vec<u8>) {
    let frame = encode_request(key, version, body);
    let req = parse_request(&frame).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
    assert_eq!(
        (req.api_key, req.api_version, req.correlation_id),
        (key as i16, version, CORRELATION)
    );
    let header_version = key.request_header_version(version);
    let want_client = (header_version >= 1).then(|| "ward-test".to_owned());
    assert_eq!(req.client_id, want_client, "{key:?} v{version}");
    let deny = deny_response(&req, &frame)
        .unwrap_or_else(|| panic!("{key:?} v{version}: no deny response"));
    (req, deny)
}

fn want_topics() -> Vec<String> {
    TOPICS.iter().map(|t| (*t).to_owned()).collect()
}

#[test]
fn frames() {
    type Want<'a> = Result<Status<&'a [u8]>, KafkaError>;
    let cases: &[(&[u8], Want<'_>)] = &[
        (b"", Ok(Status::NeedMore)),
        (b"\0\0\0", Ok(Status::NeedMore)),
        (b"\0\0\0\x03ab", Ok(Status::NeedMore)),
        (b"\0\0\0\x03abcd", Ok(Status::Complete(b"abc", 7))),
        (b"\0\0\0\0", Ok(Status::Complete(b"", 4))),
        (
            b"\xff\xff\xff\xff",
            Err(KafkaError::NegativeFrameLength(-1)),
        ),
        (
            b"\x06\x40\x00\x01",
            Err(KafkaError::FrameTooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN,
            }),
        ),
    ];
    for (buf, want) in cases {
        assert_eq!(&frame(buf), want, "{buf:?}");
    }
}

#[test]
fn rejects_bad_headers() {
    let cases: &[(&[u8], KafkaError)] = &[
        (b"\0\0\0\0\0\0\0", KafkaError::TooShort(7)),
        (b"\x00\x58\0\0\0\0\0\x01", KafkaError::UnknownApiKey(88)),
        (b"\xff\xff\0\0\0\0\0\x01", KafkaError::UnknownApiKey(-1)),
        // kafka-protocol 0.17.0 advertises OffsetCommit v10 but has no schema for it.
        (
            b"\0\x08\0\x0a\0\0\0\x01",
            KafkaError::UnsupportedVersion {
                api_key: 8,
                version: 10,
            },
        ),
        (
            b"\0\0\0\x0e\0\0\0\x01",
            KafkaError::UnsupportedVersion {
                api_key: 0,
                version: 14,
            },
        ),
        (
            b"\0\0\xff\xff\0\0\0\x01",
            KafkaError::UnsupportedVersion {
                api_key: 0,
                version: -1,
            },
        ),
        // Produce v3: client_id length 5 but only 1 byte follows.
        (
            b"\0\0\0\x03\0\0\0\x01\0\x05a",
            KafkaError::MalformedHeader {
                api_key: 0,
                version: 3,
            },
        ),
    ];
    for (buf, want) in cases {
        assert_eq!(parse_request(buf).as_ref().err(), Some(want), "{buf:?}");
    }
}

#[test]
fn a_non_topic_kind_on_a_flexible_version_parses_its_header_only() {
    let frame = encode_request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let req = parse_request(&frame).unwrap();
    assert_eq!(req.client_id.as_deref(), Some("ward-test"));
    assert!(req.topics.is_empty() && !req.all_topics && !req.topic_ids_only);
    assert_eq!(deny_response(&req, &frame), None);
}

#[test]
fn produce_every_version() {
    for version in versions(ApiKey::Produce) {
        let body = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(
                TOPICS
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let topic = if version >= 13 {
                            produce_request_topic_id(TopicProduceData::default(), topic_id(i))
                        } else {
                            TopicProduceData::default().with_name(name(t))
                        };
                        topic.with_partition_data(
                                PARTITIONS
                                    .iter()
                                    .map(|&p| {
                                        PartitionProduceData::default()
                                            .with_index(p)
                                            .with_records(Some(Bytes::from_static(b"records")))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let body = if version >= 3 {
            body.with_transactional_id(Some(StrBytes::from_static_str("tx").into()))
        } else {
            body
        };
        let (req, deny) = parse_and_deny(ApiKey::Produce, version, &body);
        if version >= 13 {
            assert!(req.topics.is_empty() && req.topic_ids_only, "v{version}");
            assert_eq!(req.topic_ids, [topic_id(0), topic_id(1)].map(|id| id.into_bytes()));
        } else {
            assert_eq!(req.topics, want_topics(), "v{version}");
        }
        assert!(!req.no_response);
        let resp: ProduceResponse = decode_response(ApiKey::Produce, version, &deny);
        assert_eq!(resp.responses.len(), 2, "v{version}");
        for (i, (t, want)) in resp.responses.iter().zip(TOPICS).enumerate() {
            if version >= 13 {
                assert_eq!(produce_response_topic_id(t), topic_id(i));
            } else {
                assert_eq!(t.name.0.as_str(), want);
            }
            let got: Vec<_> = t
                .partition_responses
                .iter()
                .map(|p| (p.index, p.error_code))
                .collect();
            assert_eq!(got, [(0, 29), (3, 29)], "v{version}");
        }
    }
}

#[test]
fn produce_without_acks_gets_no_response() {
    let body = ProduceRequest::default()
        .with_acks(0)
        .with_topic_data(vec![TopicProduceData::default().with_name(name("t"))]);
    let frame = encode_request(ApiKey::Produce, 7, &body);
    let req = parse_request(&frame).unwrap();
    assert!(req.no_response);
    assert_eq!(deny_response(&req, &frame), None);
}

#[test]
fn produce_deny_matches_cilium_wire_example() {
    // docs/policy-semantics.md §4.3: Produce v3, topics EF and GH with no partitions.
    let body = ProduceRequest::default().with_acks(1).with_topic_data(vec![
        TopicProduceData::default().with_name(name("EF")),
        TopicProduceData::default().with_name(name("GH")),
    ]);
    let mut frame = encode_request(ApiKey::Produce, 3, &body);
    frame[4..8].copy_from_slice(&0x0001_0001i32.to_be_bytes());
    let req = parse_request(&frame).unwrap();
    let want: &[u8] = &[
        0, 0, 0, 0x1c, 0, 1, 0, 1, 0, 0, 0, 2, 0, 2, 0x45, 0x46, 0, 0, 0, 0, 0, 2, 0x47, 0x48,
        0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(deny_response(&req, &frame).unwrap(), want);
}

#[test]
fn fetch_every_version() {
    for version in versions(ApiKey::Fetch) {
        let topics = TOPICS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let topic = FetchTopic::default().with_partitions(
                    PARTITIONS
                        .iter()
                        .map(|&p| FetchPartition::default().with_partition(p))
                        .collect(),
                );
                if version >= 13 {
                    topic.with_topic_id(topic_id(i))
                } else {
                    topic.with_topic(name(t))
                }
            })
            .collect();
        let mut body = FetchRequest::default()
            .with_max_wait_ms(500)
            .with_topics(topics);
        if version >= 7 {
            body = body.with_forgotten_topics_data(vec![ForgottenTopic::default()]);
        }
        if version >= 12 {
            body = body.with_cluster_id(Some(StrBytes::from_static_str("cluster")));
        }
        let (req, deny) = parse_and_deny(ApiKey::Fetch, version, &body);
        if version >= 13 {
            assert!(req.topics.is_empty() && req.topic_ids_only, "v{version}");
        } else {
            assert_eq!(req.topics, want_topics(), "v{version}");
            assert!(!req.topic_ids_only);
        }
        let resp: FetchResponse = decode_response(ApiKey::Fetch, version, &deny);
        assert_eq!(resp.responses.len(), 2, "v{version}");
        for (i, t) in resp.responses.iter().enumerate() {
            if version >= 13 {
                assert_eq!(t.topic_id, topic_id(i));
            } else {
                assert_eq!(t.topic.0.as_str(), TOPICS[i]);
            }
            let got: Vec<_> = t
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.error_code))
                .collect();
            assert_eq!(got, [(0, 29), (3, 29)], "v{version}");
        }
    }
}

#[test]
fn list_offsets_every_version() {
    for version in versions(ApiKey::ListOffsets) {
        let body = ListOffsetsRequest::default().with_topics(
            TOPICS
                .iter()
                .map(|t| {
                    ListOffsetsTopic::default()
                        .with_name(name(t))
                        .with_partitions(
                            PARTITIONS
                                .iter()
                                .map(|&p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p)
                                        .with_timestamp(-1)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
        let (req, deny) = parse_and_deny(ApiKey::ListOffsets, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        let resp: ListOffsetsResponse = decode_response(ApiKey::ListOffsets, version, &deny);
        for (t, want) in resp.topics.iter().zip(TOPICS) {
            assert_eq!(t.name.0.as_str(), want);
            let got: Vec<_> = t
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.error_code))
                .collect();
            assert_eq!(got, [(0, 29), (3, 29)], "v{version}");
        }
        assert_eq!(resp.topics.len(), 2);
    }
}

#[test]
fn metadata_every_version() {
    for version in versions(ApiKey::Metadata) {
        let topics: Vec<_> = TOPICS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let topic = MetadataRequestTopic::default().with_name(Some(name(t)));
                if version >= 10 {
                    topic.with_topic_id(topic_id(i))
                } else {
                    topic
                }
            })
            .collect();
        let body = MetadataRequest::default().with_topics(Some(topics));
        let (req, deny) = parse_and_deny(ApiKey::Metadata, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        assert!(!req.all_topics && !req.topic_ids_only);
        let resp: MetadataResponse = decode_response(ApiKey::Metadata, version, &deny);
        assert!(resp.brokers.is_empty());
        let got: Vec<_> = resp
            .topics
            .iter()
            .map(|t| (t.name.as_ref().unwrap().0.as_str(), t.error_code))
            .collect();
        assert_eq!(got, [("orders", 29), ("payments", 29)], "v{version}");

        // "All topics": null from v1, empty in every version.
        let all = if version >= 1 { None } else { Some(vec![]) };
        let (req, deny) = parse_and_deny(
            ApiKey::Metadata,
            version,
            &MetadataRequest::default().with_topics(all),
        );
        assert!(req.all_topics && req.topics.is_empty(), "v{version}");
        let resp: MetadataResponse = decode_response(ApiKey::Metadata, version, &deny);
        assert!(resp.topics.is_empty() && resp.brokers.is_empty());
    }
    // v10+: a topic named only by ID.
    let body = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default()
            .with_topic_id(topic_id(0))
            .with_name(None),
        MetadataRequestTopic::default().with_name(Some(name("named"))),
    ]));
    let (req, deny) = parse_and_deny(ApiKey::Metadata, 12, &body);
    assert!(req.topic_ids_only);
    assert_eq!(req.topics, ["named"]);
    let resp: MetadataResponse = decode_response(ApiKey::Metadata, 12, &deny);
    assert_eq!(resp.topics[0].topic_id, topic_id(0));
    assert_eq!(resp.topics[0].error_code, 29);
}

#[test]
fn many_topics_are_deduplicated_in_order() {
    let names: Vec<String> = (0..100).map(|i| format!("t{}", i % 40)).collect();
    let body = MetadataRequest::default().with_topics(Some(
        names
            .iter()
            .map(|n| MetadataRequestTopic::default().with_name(Some(name(n))))
            .collect(),
    ));
    let frame = encode_request(ApiKey::Metadata, 9, &body);
    let req = parse_request(&frame).unwrap();
    let want: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    assert_eq!(req.topics, want);
}

#[test]
fn offset_commit_every_version() {
    for version in versions(ApiKey::OffsetCommit) {
        let body = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_topics(
                TOPICS
                    .iter()
                    .map(|t| {
                        OffsetCommitRequestTopic::default()
                            .with_name(name(t))
                            .with_partitions(
                                PARTITIONS
                                    .iter()
                                    .map(|&p| {
                                        OffsetCommitRequestPartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(42)
                                            .with_committed_metadata(Some(
                                                StrBytes::from_static_str("meta"),
                                            ))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let body = if version >= 1 {
            body.with_member_id(StrBytes::from_static_str("member"))
        } else {
            body
        };
        let (req, deny) = parse_and_deny(ApiKey::OffsetCommit, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        let resp: OffsetCommitResponse = decode_response(ApiKey::OffsetCommit, version, &deny);
        for (t, want) in resp.topics.iter().zip(TOPICS) {
            assert_eq!(t.name.0.as_str(), want);
            let got: Vec<_> = t
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.error_code))
                .collect();
            assert_eq!(got, [(0, 29), (3, 29)], "v{version}");
        }
        assert_eq!(resp.topics.len(), 2);
    }
}

#[test]
fn offset_fetch_every_version() {
    for version in versions(ApiKey::OffsetFetch) {
        if version >= 8 {
            let group = |id: &'static str, topics: Option<&[&str]>| {
                OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(StrBytes::from_static_str(id)))
                    .with_topics(topics.map(|ts| {
                        ts.iter()
                            .map(|t| {
                                OffsetFetchRequestTopics::default()
                                    .with_name(name(t))
                                    .with_partition_indexes(PARTITIONS.to_vec())
                            })
                            .collect()
                    }))
            };
            let body = OffsetFetchRequest::default().with_groups(vec![
                group("g1", Some(&TOPICS)),
                group("g2", Some(&["orders", "audit"])),
                group("g3", None),
            ]);
            let (req, deny) = parse_and_deny(ApiKey::OffsetFetch, version, &body);
            assert_eq!(req.topics, ["orders", "payments", "audit"], "v{version}");
            assert!(req.all_topics);
            let resp: OffsetFetchResponse =
                decode_response(ApiKey::OffsetFetch, version, &deny);
            assert_eq!(resp.groups.len(), 3);
            let g1 = &resp.groups[0];
            assert_eq!(g1.group_id.0.as_str(), "g1");
            let got: Vec<_> = g1.topics[1]
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.error_code))
                .collect();
            assert_eq!(got, [(0, 29), (3, 29)], "v{version}");
            assert_eq!(resp.groups[2].error_code, 29);
            continue;
        }
        let topics = TOPICS
            .iter()
            .map(|t| {
                OffsetFetchRequestTopic::default()
                    .with_name(name(t))
                    .with_partition_indexes(PARTITIONS.to_vec())
            })
            .collect();
        let body = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_topics(Some(topics));
        let (req, deny) = parse_and_deny(ApiKey::OffsetFetch, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        assert!(!req.all_topics);
        let resp: OffsetFetchResponse = decode_response(ApiKey::OffsetFetch, version, &deny);
        for (t, want) in resp.topics.iter().zip(TOPICS) {
            assert_eq!(t.name.0.as_str(), want);
            let got: Vec<_> = t
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.error_code))
                .collect();
            assert_eq!(got, [(0, 29), (3, 29)], "v{version}");
        }
        if version >= 2 {
            assert_eq!(resp.error_code, 29);
            let all = OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_topics(None);
            let (req, deny) = parse_and_deny(ApiKey::OffsetFetch, version, &all);
            assert!(req.all_topics && req.topics.is_empty(), "v{version}");
            let resp: OffsetFetchResponse =
                decode_response(ApiKey::OffsetFetch, version, &deny);
            assert_eq!(resp.error_code, 29);
        }
    }
}

#[test]
fn find_coordinator_every_version() {
    for version in versions(ApiKey::FindCoordinator) {
        let body = if version >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![
                StrBytes::from_static_str("g1"),
                StrBytes::from_static_str("g2"),
            ])
        } else {
            FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g1"))
        };
        let (req, deny) = parse_and_deny(ApiKey::FindCoordinator, version, &body);
        assert!(req.topics.is_empty() && !req.all_topics, "v{version}");
        let resp: FindCoordinatorResponse =
            decode_response(ApiKey::FindCoordinator, version, &deny);
        if version >= 4 {
            let got: Vec<_> = resp
                .coordinators
                .iter()
                .map(|c| (c.key.as_str(), c.error_code))
                .collect();
            assert_eq!(got, [("g1", 30), ("g2", 30)], "v{version}");
        } else {
            assert_eq!(resp.error_code, 30, "v{version}");
        }
        if version >= 1 {
            // A transaction coordinator: TRANSACTIONAL_ID_AUTHORIZATION_FAILED.
            let (_, deny) =
                parse_and_deny(ApiKey::FindCoordinator, version, &body.with_key_type(1));
            let resp: FindCoordinatorResponse =
                decode_response(ApiKey::FindCoordinator, version, &deny);
            let code = resp
                .coordinators
                .first()
                .map_or(resp.error_code, |c| c.error_code);
            assert_eq!(code, 53, "v{version}");
        }
    }
}

#[test]
fn group_transaction_and_cluster_apis_get_their_own_authorization_error() {
    use kp::messages::*;
    // Encodes a default request of `key` at every version, denies it, and returns the
    // top-level error code of the decoded response.
    macro_rules! every_version {
        ($key:expr, $req:expr, $resp:ty, $code:expr) => {
            for version in versions($key) {
                let (_, deny) = parse_and_deny($key, version, &$req);
                let resp: $resp = decode_response($key, version, &deny);
                assert_eq!(resp.error_code, $code, "{:?} v{version}", $key);
                let frame = encode_request($key, version, &$req);
                let req = parse_request(&frame).unwrap();
                assert_eq!(deny_error_code(&req, &frame), Some($code));
            }
        };
    }
    let group = GroupId(StrBytes::from_static_str("g1"));
    every_version!(
        ApiKey::JoinGroup,
        JoinGroupRequest::default()
            .with_group_id(group.clone())
            .with_protocol_type(StrBytes::from_static_str("consumer")),
        JoinGroupResponse,
        30
    );
    every_version!(
        ApiKey::Heartbeat,
        HeartbeatRequest::default().with_group_id(group.clone()),
        HeartbeatResponse,
        30
    );
    every_version!(
        ApiKey::LeaveGroup,
        LeaveGroupRequest::default().with_group_id(group.clone()),
        LeaveGroupResponse,
        30
    );
    every_version!(
        ApiKey::SyncGroup,
        SyncGroupRequest::default().with_group_id(group.clone()),
        SyncGroupResponse,
        30
    );
    every_version!(
        ApiKey::ListGroups,
        ListGroupsRequest::default(),
        ListGroupsResponse,
        30
    );
    every_version!(
        ApiKey::OffsetDelete,
        OffsetDeleteRequest::default().with_group_id(group.clone()),
        OffsetDeleteResponse,
        30
    );
    every_version!(
        ApiKey::ConsumerGroupHeartbeat,
        ConsumerGroupHeartbeatRequest::default().with_group_id(group.clone()),
        ConsumerGroupHeartbeatResponse,
        30
    );
    let txn = TransactionalId(StrBytes::from_static_str("t1"));
    every_version!(
        ApiKey::InitProducerId,
        InitProducerIdRequest::default().with_transactional_id(Some(txn.clone())),
        InitProducerIdResponse,
        53
    );
    every_version!(
        ApiKey::InitProducerId,
        InitProducerIdRequest::default().with_transactional_id(None),
        InitProducerIdResponse,
        31
    );
    every_version!(
        ApiKey::AddOffsetsToTxn,
        AddOffsetsToTxnRequest::default()
            .with_transactional_id(txn.clone())
            .with_group_id(group.clone()),
        AddOffsetsToTxnResponse,
        53
    );
    every_version!(
        ApiKey::EndTxn,
        EndTxnRequest::default().with_transactional_id(txn.clone()),
        EndTxnResponse,
        53
    );
    every_version!(
        ApiKey::DescribeCluster,
        DescribeClusterRequest::default(),
        DescribeClusterResponse,
        31
    );
    every_version!(
        ApiKey::ListTransactions,
        ListTransactionsRequest::default(),
        ListTransactionsResponse,
        31
    );
    // KIP-714 client telemetry (librdkafka asks for it after ApiVersions).
    every_version!(
        ApiKey::GetTelemetrySubscriptions,
        GetTelemetrySubscriptionsRequest::default(),
        GetTelemetrySubscriptionsResponse,
        31
    );
    every_version!(
        ApiKey::PushTelemetry,
        PushTelemetryRequest::default(),
        PushTelemetryResponse,
        31
    );
    every_version!(
        ApiKey::CreateDelegationToken,
        CreateDelegationTokenRequest::default(),
        CreateDelegationTokenResponse,
        65
    );
    every_version!(
        ApiKey::DescribeDelegationToken,
        DescribeDelegationTokenRequest::default(),
        DescribeDelegationTokenResponse,
        65
    );
    every_version!(
        ApiKey::AlterPartitionReassignments,
        AlterPartitionReassignmentsRequest::default(),
        AlterPartitionReassignmentsResponse,
        31
    );
    every_version!(
        ApiKey::ListPartitionReassignments,
        ListPartitionReassignmentsRequest::default(),
        ListPartitionReassignmentsResponse,
        31
    );
    every_version!(
        ApiKey::DescribeClientQuotas,
        DescribeClientQuotasRequest::default(),
        DescribeClientQuotasResponse,
        31
    );
    every_version!(
        ApiKey::UpdateFeatures,
        UpdateFeaturesRequest::default(),
        UpdateFeaturesResponse,
        31
    );
    // A key Ward has no answer for: no deny response, so the proxy closes the connection.
    let frame = encode_request(
        ApiKey::AlterClientQuotas,
        1,
        &AlterClientQuotasRequest::default(),
    );
    let req = parse_request(&frame).unwrap();
    assert_eq!(deny_error_code(&req, &frame), None);
    assert_eq!(deny_response(&req, &frame), None);
}

#[test]
fn offset_for_leader_epoch_names_its_topics_and_is_denied_per_partition() {
    use kp::messages::offset_for_leader_epoch_request::*;
    use kp::messages::*;
    let body = OffsetForLeaderEpochRequest::default().with_topics(
        TOPICS
            .iter()
            .map(|t| {
                OffsetForLeaderTopic::default()
                    .with_topic(name(t))
                    .with_partitions(vec![
                        OffsetForLeaderPartition::default().with_partition(0),
                        OffsetForLeaderPartition::default().with_partition(3),
                    ])
            })
            .collect(),
    );
    for version in versions(ApiKey::OffsetForLeaderEpoch) {
        let (req, deny) = parse_and_deny(ApiKey::OffsetForLeaderEpoch, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        let resp: OffsetForLeaderEpochResponse =
            decode_response(ApiKey::OffsetForLeaderEpoch, version, &deny);
        let got: Vec<(i32, i16)> = resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (p.partition, p.error_code)))
            .collect();
        assert_eq!(got, [(0, 29), (3, 29), (0, 29), (3, 29)], "v{version}");
    }
}

#[test]
fn txn_offset_commit_and_describe_configs_are_denied_item_by_item() {
    use kp::messages::*;
    for version in versions(ApiKey::TxnOffsetCommit) {
        let body = TxnOffsetCommitRequest::default()
            .with_group_instance_id(
                (version >= 3).then(|| StrBytes::from_static_str("i1")),
            )
            .with_topics(
                TOPICS
                    .iter()
                    .map(|t| {
                        txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                            .with_name(name(t))
                            .with_partitions(vec![
                                txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                    .with_partition_index(2)
                                    .with_committed_metadata(Some(StrBytes::from_static_str("m"))),
                            ])
                    })
                    .collect(),
            );
        let (req, deny) = parse_and_deny(ApiKey::TxnOffsetCommit, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        let resp: TxnOffsetCommitResponse =
            decode_response(ApiKey::TxnOffsetCommit, version, &deny);
        let got: Vec<(i32, i16)> = resp
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.partition_index, p.error_code))
            })
            .collect();
        assert_eq!(got, [(2, 30), (2, 30)], "v{version}");
    }
    for version in versions(ApiKey::DescribeConfigs) {
        let resource = |kind: i8, n: &'static str| {
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(kind)
                .with_resource_name(StrBytes::from_static_str(n))
                .with_configuration_keys(Some(vec![StrBytes::from_static_str("k")]))
        };
        let body = DescribeConfigsRequest::default()
            .with_resources(vec![resource(2, "orders"), resource(4, "1")]);
        let (_, deny) = parse_and_deny(ApiKey::DescribeConfigs, version, &body);
        let resp: DescribeConfigsResponse =
            decode_response(ApiKey::DescribeConfigs, version, &deny);
        let got: Vec<_> = resp
            .results
            .iter()
            .map(|r| (r.resource_type, r.resource_name.as_str(), r.error_code))
            .collect();
        assert_eq!(got, [(2, "orders", 29), (4, "1", 31)], "v{version}");
    }
}

#[test]
fn admin_apis_on_topics_and_groups_are_denied_item_by_item() {
    use kp::messages::*;
    for version in versions(ApiKey::CreateTopics) {
        let body = CreateTopicsRequest::default().with_topics(
            TOPICS
                .iter()
                .map(|t| {
                    create_topics_request::CreatableTopic::default()
                        .with_name(name(t))
                        .with_assignments(vec![
                            create_topics_request::CreatableReplicaAssignment::default()
                                .with_broker_ids(vec![BrokerId(1), BrokerId(2)]),
                        ])
                        .with_configs(vec![
                            create_topics_request::CreatableTopicConfig::default()
                                .with_name(StrBytes::from_static_str("retention.ms"))
                                .with_value(Some(StrBytes::from_static_str("1"))),
                        ])
                })
                .collect(),
        );
        let (req, deny) = parse_and_deny(ApiKey::CreateTopics, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        let resp: CreateTopicsResponse = decode_response(ApiKey::CreateTopics, version, &deny);
        let got: Vec<_> = resp
            .topics
            .iter()
            .map(|t| (t.name.as_str(), t.error_code))
            .collect();
        assert_eq!(got, [("orders", 29), ("payments", 29)], "v{version}");
    }
    for version in versions(ApiKey::DeleteTopics) {
        let body = if version <= 5 {
            DeleteTopicsRequest::default()
                .with_topic_names(TOPICS.iter().map(|t| name(t)).collect())
        } else {
            DeleteTopicsRequest::default().with_topics(
                TOPICS
                    .iter()
                    .map(|t| {
                        delete_topics_request::DeleteTopicState::default()
                            .with_name(Some(name(t)))
                    })
                    .collect(),
            )
        };
        let (req, deny) = parse_and_deny(ApiKey::DeleteTopics, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        let resp: DeleteTopicsResponse = decode_response(ApiKey::DeleteTopics, version, &deny);
        assert_eq!(resp.responses.len(), 2, "v{version}");
        assert!(
            resp.responses.iter().all(|r| r.error_code == 29),
            "v{version}"
        );
    }
    let groups = vec![
        GroupId(StrBytes::from_static_str("g1")),
        GroupId(StrBytes::from_static_str("g2")),
    ];
    for version in versions(ApiKey::DescribeGroups) {
        let body = DescribeGroupsRequest::default().with_groups(groups.clone());
        let (_, deny) = parse_and_deny(ApiKey::DescribeGroups, version, &body);
        let resp: DescribeGroupsResponse =
            decode_response(ApiKey::DescribeGroups, version, &deny);
        let got: Vec<_> = resp
            .groups
            .iter()
            .map(|g| (g.group_id.as_str(), g.error_code))
            .collect();
        assert_eq!(got, [("g1", 30), ("g2", 30)], "v{version}");
    }
    for version in versions(ApiKey::DeleteGroups) {
        let body = DeleteGroupsRequest::default().with_groups_names(groups.clone());
        let (_, deny) = parse_and_deny(ApiKey::DeleteGroups, version, &body);
        let resp: DeleteGroupsResponse = decode_response(ApiKey::DeleteGroups, version, &deny);
        let got: Vec<_> = resp
            .results
            .iter()
            .map(|g| (g.group_id.as_str(), g.error_code))
            .collect();
        assert_eq!(got, [("g1", 30), ("g2", 30)], "v{version}");
    }
}

#[test]
fn metadata_responses_teach_topic_ids_and_ward_can_ask_for_ids() {
    use kp::messages::metadata_response::*;
    use kp::messages::*;
    let id = [7u8; 16];
    for version in 10..=ApiKey::Metadata.valid_versions().max {
        let body = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_host(StrBytes::from_static_str("b1"))
                .with_rack(Some(StrBytes::from_static_str("r1")))])
            .with_cluster_id(Some(StrBytes::from_static_str("c")))
            .with_topics(vec![
                MetadataResponseTopic::default()
                    .with_name(Some(name("orders")))
                    .with_topic_id(uuid::Uuid::from_bytes(id))
                    .with_partitions(vec![MetadataResponsePartition::default()
                        .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
                        .with_isr_nodes(vec![BrokerId(1)])]),
                MetadataResponseTopic::default().with_name(Some(name("no-id"))),
            ]);
        let mut out = Vec::new();
        ResponseHeader::default()
            .with_correlation_id(9)
            .encode(&mut out, ApiKey::Metadata.response_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        assert_eq!(
            metadata_response_topic_ids(version, &out),
            Some(vec![(id, "orders".to_owned())]),
            "v{version}"
        );
        // Truncated: never a panic, never a wrong pair (the fields after the topics are
        // not needed).
        for len in 0..out.len() {
            let got = metadata_response_topic_ids(version, &out[..len]);
            assert!(
                got.is_none() || got == Some(vec![(id, "orders".to_owned())]),
                "v{version} at {len}"
            );
        }
    }
    // Ward's own request parses as a Metadata v12 for those IDs.
    let req = metadata_request_for_ids(5, &[id, [8; 16]]).unwrap();
    let Status::Complete(frame, _) = frame(&req).unwrap() else {
        panic!("incomplete")
    };
    let parsed = parse_request(frame).unwrap();
    assert_eq!(
        (parsed.api_key, parsed.api_version, parsed.correlation_id),
        (3, 12, 5)
    );
    assert_eq!(parsed.topic_ids, vec![id, [8; 16]]);
    assert!(parsed.topic_ids_only && parsed.topics.is_empty());
}

#[test]
fn sasl_handshake_v0_is_refused_and_v1_is_inspectable() {
    use kp::messages::*;
    let body =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    let frame = encode_request(ApiKey::SaslHandshake, 0, &body);
    let req = parse_request(&frame).unwrap();
    let answer = refuse_sasl_handshake_v0(&req).unwrap();
    let resp: SaslHandshakeResponse = decode_response(ApiKey::SaslHandshake, 0, &answer);
    assert_eq!(resp.error_code, UNSUPPORTED_VERSION);
    let v1 = parse_request(&encode_request(ApiKey::SaslHandshake, 1, &body)).unwrap();
    assert_eq!(refuse_sasl_handshake_v0(&v1), None);
    assert_eq!(inspectable_versions(17), Some((1, 1)));
}

#[test]
fn fetch_sessions_are_read_and_refused_by_session_not_found() {
    use kp::messages::*;
    for version in versions(ApiKey::Fetch) {
        let body = FetchRequest::default()
            .with_session_id(42)
            .with_session_epoch(3);
        let frame = encode_request(ApiKey::Fetch, version, &body);
        let req = parse_request(&frame).unwrap();
        if version < 7 {
            assert_eq!(req.fetch_session, None);
            assert_eq!(fetch_session_not_found(&req), None);
            continue;
        }
        assert_eq!(req.fetch_session, Some(FetchSession { id: 42, epoch: 3 }));
        assert!(req.fetch_session.unwrap().is_incremental());
        let answer = fetch_session_not_found(&req).unwrap();
        let resp: FetchResponse = decode_response(ApiKey::Fetch, version, &answer);
        assert_eq!((resp.error_code, resp.session_id), (70, 0), "v{version}");
        // The session id of a broker's response.
        let mut out = Vec::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut out, ApiKey::Fetch.response_header_version(version))
            .unwrap();
        FetchResponse::default()
            .with_session_id(99)
            .encode(&mut out, version)
            .unwrap();
        assert_eq!(
            fetch_response_session_id(version, &out),
            Some(99),
            "v{version}"
        );
        assert_eq!(fetch_response_session_id(version, &out[..9]), None);
    }
}

#[test]
fn add_partitions_to_txn_names_its_topics_and_is_denied_per_partition() {
    use kp::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kp::messages::*;
    let body = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str("t1")))
        .with_v3_and_below_topics(
            TOPICS
                .iter()
                .map(|t| {
                    AddPartitionsToTxnTopic::default()
                        .with_name(name(t))
                        .with_partitions(vec![0, 1])
                })
                .collect(),
        );
    for version in 0..=3 {
        let (req, deny) = parse_and_deny(ApiKey::AddPartitionsToTxn, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        let resp: AddPartitionsToTxnResponse =
            decode_response(ApiKey::AddPartitionsToTxn, version, &deny);
        let codes: Vec<i16> = resp
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| {
                t.results_by_partition
                    .iter()
                    .map(|p| p.partition_error_code)
            })
            .collect();
        assert_eq!(codes.len(), TOPICS.len() * 2, "v{version}");
        assert!(codes.iter().all(|c| *c == 29), "v{version}");
    }
    // v4+ (broker-to-broker batches) is not inspectable: refused, never forwarded.
    let frame = encode_request(
        ApiKey::AddPartitionsToTxn,
        4,
        &AddPartitionsToTxnRequest::default(),
    );
    assert!(matches!(
        parse_request(&frame),
        Err(KafkaError::MalformedBody { api_key: 24, .. })
    ));
    assert_eq!(inspectable_versions(24), Some((0, 3)));
}

#[test]
fn hostile_counts_are_refused_without_allocating() {
    // Metadata v0 declaring 54 million topics in 4 bytes (the kafka-protocol OOM reproducer).
    let mut frame = b"\x00\x03\x00\x00\x00\x00\x00\x01\x00\x00".to_vec();
    frame.extend_from_slice(&0x033c_0c00i32.to_be_bytes());
    let err = parse_request(&frame).unwrap_err();
    assert!(
        matches!(err, KafkaError::MalformedBody { api_key: 3, .. }),
        "{err:?}"
    );

    // Produce v9 (flexible) whose partition array claims u32::MAX - 1 elements.
    let mut frame = encode_request(ApiKey::Produce, 9, &ProduceRequest::default());
    frame.truncate(frame.len() - 2); // drop the empty topic array and tagged fields
    frame.extend_from_slice(&[0x02, 0x02, b'a', 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let err = parse_request(&frame).unwrap_err();
    assert!(
        matches!(err, KafkaError::MalformedBody { api_key: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let body = ProduceRequest::default().with_acks(1).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(name("orders"))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(1)
                .with_records(Some(Bytes::from_static(b"xyz")))]),
    ]);
    for version in [3, 9, 11] {
        let frame = encode_request(ApiKey::Produce, version, &body);
        assert!(parse_request(&frame).is_ok());
        for len in 0..frame.len() {
            assert!(
                parse_request(&frame[..len]).is_err(),
                "v{version} truncated to {len}"
            );
        }
    }
}

#[test]
fn admin_and_describe_apis_are_denied_item_by_item() {
    use kp::messages::*;
    // Each request names two items; the answer has both with the key's error.
    fn codes<T>(items: &[T], f: impl Fn(&T) -> i16) -> Vec<i16> {
        items.iter().map(f).collect()
    }
    for version in versions(ApiKey::DeleteRecords) {
        use delete_records_request::*;
        let body = DeleteRecordsRequest::default().with_topics(
            TOPICS
                .iter()
                .map(|t| {
                    DeleteRecordsTopic::default()
                        .with_name(name(t))
                        .with_partitions(
                            PARTITIONS
                                .iter()
                                .map(|&p| {
                                    DeleteRecordsPartition::default()
                                        .with_partition_index(p)
                                        .with_offset(5)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
        let (req, deny) = parse_and_deny(ApiKey::DeleteRecords, version, &body);
        assert_eq!(req.topics, want_topics(), "v{version}");
        let resp: DeleteRecordsResponse = decode_response(ApiKey::DeleteRecords, version, &deny);
        let got: Vec<_> = resp.topics[1]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code))
            .collect();
        assert_eq!(got, [(0, 29), (3, 29)], "v{version}");
        assert_eq!(resp.topics[1].name.0.as_str(), "payments");
    }
    for version in versions(ApiKey::CreatePartitions) {
        use create_partitions_request::*;
        let body = CreatePartitionsRequest::default().with_topics(
            TOPICS
                .iter()
                .map(|t| {
                    CreatePartitionsTopic::default()
                        .with_name(name(t))
                        .with_count(4)
                        .with_assignments(Some(vec![CreatePartitionsAssignment::default()
                            .with_broker_ids(vec![BrokerId(1), BrokerId(2)])]))
                })
                .collect(),
        );
        let (_, deny) = parse_and_deny(ApiKey::CreatePartitions, version, &body);
        let resp: CreatePartitionsResponse =
            decode_response(ApiKey::CreatePartitions, version, &deny);
        assert_eq!(codes(&resp.results, |r| r.error_code), [29, 29], "v{version}");
        assert_eq!(resp.results[0].name.0.as_str(), "orders");
    }
    for version in versions(ApiKey::DescribeProducers) {
        use describe_producers_request::*;
        let body = DescribeProducersRequest::default().with_topics(
            TOPICS
                .iter()
                .map(|t| {
                    TopicRequest::default()
                        .with_name(name(t))
                        .with_partition_indexes(PARTITIONS.to_vec())
                })
                .collect(),
        );
        let (_, deny) = parse_and_deny(ApiKey::DescribeProducers, version, &body);
        let resp: DescribeProducersResponse =
            decode_response(ApiKey::DescribeProducers, version, &deny);
        assert_eq!(
            codes(&resp.topics[0].partitions, |p| p.error_code),
            [29, 29]
        );
    }
    for version in versions(ApiKey::DescribeTopicPartitions) {
        use describe_topic_partitions_request::*;
        let body = DescribeTopicPartitionsRequest::default()
            .with_topics(
                TOPICS
                    .iter()
                    .map(|t| TopicRequest::default().with_name(name(t)))
                    .collect(),
            )
            .with_response_partition_limit(100);
        let (_, deny) = parse_and_deny(ApiKey::DescribeTopicPartitions, version, &body);
        let resp: DescribeTopicPartitionsResponse =
            decode_response(ApiKey::DescribeTopicPartitions, version, &deny);
        assert_eq!(codes(&resp.topics, |t| t.error_code), [29, 29]);
        assert_eq!(resp.topics[1].name.as_ref().unwrap().0.as_str(), "payments");
    }
    for version in versions(ApiKey::AlterConfigs) {
        use alter_configs_request::*;
        let resource = |kind: i8, n: &'static str| {
            AlterConfigsResource::default()
                .with_resource_type(kind)
                .with_resource_name(StrBytes::from_static_str(n))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_value(Some(StrBytes::from_static_str("1")))])
        };
        let body = AlterConfigsRequest::default()
            .with_resources(vec![resource(2, "orders"), resource(4, "1")]);
        let (_, deny) = parse_and_deny(ApiKey::AlterConfigs, version, &body);
        let resp: AlterConfigsResponse = decode_response(ApiKey::AlterConfigs, version, &deny);
        assert_eq!(codes(&resp.responses, |r| r.error_code), [29, 31], "v{version}");
        assert_eq!(resp.responses[0].resource_name.as_str(), "orders");
    }
    for version in versions(ApiKey::IncrementalAlterConfigs) {
        use incremental_alter_configs_request::*;
        let body = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(3)
                .with_resource_name(StrBytes::from_static_str("g"))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("x"))
                    .with_config_operation(1)]),
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("orders")),
        ]);
        let (_, deny) = parse_and_deny(ApiKey::IncrementalAlterConfigs, version, &body);
        let resp: IncrementalAlterConfigsResponse =
            decode_response(ApiKey::IncrementalAlterConfigs, version, &deny);
        assert_eq!(codes(&resp.responses, |r| r.error_code), [30, 29], "v{version}");
    }
    for version in versions(ApiKey::CreateAcls) {
        let body = CreateAclsRequest::default().with_creations(vec![
            create_acls_request::AclCreation::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("orders")),
            create_acls_request::AclCreation::default(),
        ]);
        let (_, deny) = parse_and_deny(ApiKey::CreateAcls, version, &body);
        let resp: CreateAclsResponse = decode_response(ApiKey::CreateAcls, version, &deny);
        assert_eq!(codes(&resp.results, |r| r.error_code), [31, 31], "v{version}");
    }
    for version in versions(ApiKey::DeleteAcls) {
        let filter = delete_acls_request::DeleteAclsFilter::default();
        let body = DeleteAclsRequest::default().with_filters(vec![filter.clone(), filter]);
        let (_, deny) = parse_and_deny(ApiKey::DeleteAcls, version, &body);
        let resp: DeleteAclsResponse = decode_response(ApiKey::DeleteAcls, version, &deny);
        assert_eq!(codes(&resp.filter_results, |r| r.error_code), [31, 31]);
    }
    for version in versions(ApiKey::DescribeTransactions) {
        let body = DescribeTransactionsRequest::default().with_transactional_ids(vec![
            TransactionalId(StrBytes::from_static_str("t1")),
            TransactionalId(StrBytes::from_static_str("t2")),
        ]);
        let (_, deny) = parse_and_deny(ApiKey::DescribeTransactions, version, &body);
        let resp: DescribeTransactionsResponse =
            decode_response(ApiKey::DescribeTransactions, version, &deny);
        assert_eq!(codes(&resp.transaction_states, |t| t.error_code), [53, 53]);
        assert_eq!(resp.transaction_states[1].transactional_id.0.as_str(), "t2");
    }
    for version in versions(ApiKey::ConsumerGroupDescribe) {
        let body = ConsumerGroupDescribeRequest::default().with_group_ids(vec![
            GroupId(StrBytes::from_static_str("g1")),
            GroupId(StrBytes::from_static_str("g2")),
        ]);
        let (_, deny) = parse_and_deny(ApiKey::ConsumerGroupDescribe, version, &body);
        let resp: ConsumerGroupDescribeResponse =
            decode_response(ApiKey::ConsumerGroupDescribe, version, &deny);
        assert_eq!(codes(&resp.groups, |g| g.error_code), [30, 30]);
    }
    for version in versions(ApiKey::ElectLeaders) {
        let body = ElectLeadersRequest::default().with_topic_partitions(Some(
            TOPICS
                .iter()
                .map(|t| {
                    elect_leaders_request::TopicPartitions::default()
                        .with_topic(name(t))
                        .with_partitions(PARTITIONS.to_vec())
                })
                .collect(),
        ));
        let (_, deny) = parse_and_deny(ApiKey::ElectLeaders, version, &body);
        let resp: ElectLeadersResponse = decode_response(ApiKey::ElectLeaders, version, &deny);
        if version >= 1 {
            assert_eq!(resp.error_code, 31);
        } else {
            let r = &resp.replica_election_results[1];
            assert_eq!(r.topic.0.as_str(), "payments");
            assert_eq!(codes(&r.partition_result, |p| p.error_code), [31, 31]);
        }
    }
    for version in versions(ApiKey::DescribeLogDirs) {
        let frame = encode_request(
            ApiKey::DescribeLogDirs,
            version,
            &DescribeLogDirsRequest::default(),
        );
        let req = parse_request(&frame).unwrap();
        let Some(deny) = deny_response(&req, &frame) else {
            // No error code to carry before v3: the connection is closed instead.
            assert!(version < 3, "v{version}");
            continue;
        };
        let resp: DescribeLogDirsResponse =
            decode_response(ApiKey::DescribeLogDirs, version, &deny);
        assert_eq!(resp.error_code, 31);
    }
}

/// A Produce frame of one topic and one partition, with `records` as its records.
fn single_partition_produce(version: i16, records: Option<Bytes>) -> Vec<u8> {
    let topic = if version >= 13 {
        produce_request_topic_id(TopicProduceData::default(), topic_id(0))
    } else {
        TopicProduceData::default().with_name(name("orders"))
    };
    let body = ProduceRequest::default().with_acks(1).with_topic_data(vec![topic
        .with_partition_data(vec![PartitionProduceData::default()
            .with_index(0)
            .with_records(records)])]);
    let body = if version >= 3 {
        body.with_transactional_id(Some(StrBytes::from_static_str("tx").into()))
    } else {
        body
    };
    encode_request(ApiKey::Produce, version, &body)
}

#[test]
fn a_single_partition_produce_is_judged_from_its_head_and_trailer() {
    let records = Bytes::from((0..100_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
    for version in versions(ApiKey::Produce) {
        let full = single_partition_produce(version, Some(records.clone()));
        // Too short to tell, then told as soon as the records' length field is in.
        let mut told = None;
        for n in 0..=full.len() {
            match produce_split(&full[..n], full.len()) {
                Status::NeedMore => assert!(told.is_none(), "v{version}: NeedMore after told"),
                Status::Complete(split, _) => {
                    let split = split.unwrap_or_else(|| panic!("v{version}: not split at {n}"));
                    told.get_or_insert((n, split));
                }
            }
        }
        let (at, split) = told.unwrap();
        assert_eq!(at, split.records_at, "v{version}");
        let end = split.records_at + split.records_len;
        assert_eq!(&full[split.records_at..end], &records[..], "v{version}");
        assert_eq!(split.trailer_len, full.len() - end, "v{version}");
        // Judged on head and trailer: what the whole frame parses to, and the same deny.
        let (req, judged) =
            parse_produce_split(&full[..split.records_at], &split, &full[end..]).unwrap();
        let whole = parse_request(&full).unwrap();
        assert_eq!(req, whole, "v{version}");
        assert_eq!(
            deny_response(&req, &judged),
            deny_response(&whole, &full),
            "v{version}"
        );
    }
}

#[test]
fn other_produce_layouts_and_other_keys_are_not_split() {
    let records = Some(Bytes::from_static(&[7u8; 1000]));
    for version in versions(ApiKey::Produce) {
        let full = single_partition_produce(version, records.clone());
        // A frame longer or shorter than the records say (bytes after the records, or a
        // trailer that is not there) is read whole.
        for len in [full.len() - 1, full.len() + 1] {
            assert_eq!(
                produce_split(&full, len),
                Status::Complete(None, 0),
                "v{version} len {len}"
            );
        }
        let null = single_partition_produce(version, None);
        assert_eq!(produce_split(&null, null.len()), Status::Complete(None, 0));
        // Two partitions, or two topics.
        let two = |topics: usize, partitions: usize| {
            let body = ProduceRequest::default().with_acks(1).with_topic_data(
                (0..topics)
                    .map(|i| {
                        let t = if version >= 13 {
                            produce_request_topic_id(TopicProduceData::default(), topic_id(i))
                        } else {
                            TopicProduceData::default().with_name(name(TOPICS[i]))
                        };
                        t.with_partition_data(
                            (0..partitions as i32)
                                .map(|p| {
                                    PartitionProduceData::default()
                                        .with_index(p)
                                        .with_records(records.clone())
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            );
            encode_request(ApiKey::Produce, version, &body)
        };
        for frame in [two(1, 2), two(2, 1)] {
            assert_eq!(produce_split(&frame, frame.len()), Status::Complete(None, 0));
        }
    }
    let fetch = encode_request(ApiKey::Fetch, 12, &FetchRequest::default());
    assert_eq!(produce_split(&fetch, fetch.len()), Status::Complete(None, 0));
    // A head that never parses is called unsplittable once PRODUCE_HEAD_MAX bytes are in.
    let mut junk = single_partition_produce(9, records.clone())[..MIN_REQUEST_LEN].to_vec();
    junk.resize(PRODUCE_HEAD_MAX, 0xff);
    assert_eq!(
        produce_split(&junk[..100], 1_000_000),
        Status::NeedMore
    );
    assert_eq!(produce_split(&junk, 1_000_000), Status::Complete(None, 0));
}
