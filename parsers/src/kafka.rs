//! Kafka: the API-key names Cilium policies use, the topic/role key sets of Cilium's Kafka
//! matcher (docs/policy-semantics.md §4), request framing and parsing, and the deny responses a
//! proxy injects (§4.3), for every API version Ward knows, flexible versions included.
//!
//! Versions come from two releases of `kafka-protocol`: 0.17 (Kafka 4.x schemas) and, below its
//! minimum for a key, 0.15 (Kafka 3.9), because Kafka 4.0 dropped Produce v0–2, Fetch v0–3 and
//! other old versions (KIP-896) that Cilium's v0–5 tables and Kafka 3.x brokers still use. Deny
//! responses are encoded with the release that knows the version (`kafka_deny.rs`, included
//! once per release); the unit tests run once per release too (`kafka_tests.rs`).
//!
//! Request headers and bodies are walked by this module, never decoded with `kafka-protocol`:
//! it sizes each `Vec` from the array length on the wire before decoding a single element, so a
//! 10-byte request declaring 2^31 topics would make it allocate gigabytes and abort the proxy.
//! The walker reads only the fields up to and including the topic list (following
//! `kafka-protocol`'s schemas, which the tests cross-check by encoding every version with both
//! releases and walking it back), checks every count against the bytes left and
//! [`MAX_ARRAY_LEN`], and allocates only for what it actually read.

use bytes::BufMut;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::Status;

/// Largest request or response frame, as Kafka's default `socket.request.max.bytes` (100 MiB).
pub const MAX_FRAME_LEN: usize = 100 * 1024 * 1024;
/// Size of the frame's length prefix.
pub const FRAME_PREFIX_LEN: usize = 4;
/// Most elements accepted in any array of a request body (on top of the rule that each element
/// takes at least one byte of the frame).
pub const MAX_ARRAY_LEN: usize = 1 << 20;
/// Smallest request header: api key, api version, correlation id.
pub const MIN_REQUEST_LEN: usize = 8;
/// Up to this many topics, duplicates are found by a linear scan; beyond, with a hash set.
const LINEAR_DEDUP_MAX: usize = 16;
/// `TOPIC_AUTHORIZATION_FAILED`, the error Cilium's deny responses carry.
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// `GROUP_AUTHORIZATION_FAILED`: Ward's deny of a consumer-group API.
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
/// `CLUSTER_AUTHORIZATION_FAILED`: Ward's deny of a cluster API (and of an idempotent
/// producer's InitProducerId, which Kafka authorizes on the cluster).
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
/// `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`: Ward's deny of a transaction API.
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
/// `DELEGATION_TOKEN_AUTHORIZATION_FAILED`: Ward's deny of a delegation-token API.
pub const DELEGATION_TOKEN_AUTHORIZATION_FAILED: i16 = 65;

/// Every name [`api_key_from_name`] accepts, with its key. Keys 0–33 carry Cilium's names
/// (PROXY:`pkg/policy/api/kafka/kafka.go` `APIKeyMap`), which equal Apache Kafka's lower-cased
/// names except `offsets` (2, Kafka's `ListOffsets`); every key `kafka-protocol` knows is listed
/// under its lower-cased Apache Kafka name. The first entry for a key is its preferred name.
const API_KEY_NAMES: &[(&str, i16)] = &[
    ("produce", 0),
    ("fetch", 1),
    ("offsets", 2),
    ("listoffsets", 2),
    ("metadata", 3),
    ("leaderandisr", 4),
    ("stopreplica", 5),
    ("updatemetadata", 6),
    ("controlledshutdown", 7),
    ("offsetcommit", 8),
    ("offsetfetch", 9),
    ("findcoordinator", 10),
    ("joingroup", 11),
    ("heartbeat", 12),
    ("leavegroup", 13),
    ("syncgroup", 14),
    ("describegroups", 15),
    ("listgroups", 16),
    ("saslhandshake", 17),
    ("apiversions", 18),
    ("createtopics", 19),
    ("deletetopics", 20),
    ("deleterecords", 21),
    ("initproducerid", 22),
    ("offsetforleaderepoch", 23),
    ("addpartitionstotxn", 24),
    ("addoffsetstotxn", 25),
    ("endtxn", 26),
    ("writetxnmarkers", 27),
    ("txnoffsetcommit", 28),
    ("describeacls", 29),
    ("createacls", 30),
    ("deleteacls", 31),
    ("describeconfigs", 32),
    ("alterconfigs", 33),
    ("alterreplicalogdirs", 34),
    ("describelogdirs", 35),
    ("saslauthenticate", 36),
    ("createpartitions", 37),
    ("createdelegationtoken", 38),
    ("renewdelegationtoken", 39),
    ("expiredelegationtoken", 40),
    ("describedelegationtoken", 41),
    ("deletegroups", 42),
    ("electleaders", 43),
    ("incrementalalterconfigs", 44),
    ("alterpartitionreassignments", 45),
    ("listpartitionreassignments", 46),
    ("offsetdelete", 47),
    ("describeclientquotas", 48),
    ("alterclientquotas", 49),
    ("describeuserscramcredentials", 50),
    ("alteruserscramcredentials", 51),
    ("vote", 52),
    ("beginquorumepoch", 53),
    ("endquorumepoch", 54),
    ("describequorum", 55),
    ("alterpartition", 56),
    ("updatefeatures", 57),
    ("envelope", 58),
    ("fetchsnapshot", 59),
    ("describecluster", 60),
    ("describeproducers", 61),
    ("brokerregistration", 62),
    ("brokerheartbeat", 63),
    ("unregisterbroker", 64),
    ("describetransactions", 65),
    ("listtransactions", 66),
    ("allocateproducerids", 67),
    ("consumergroupheartbeat", 68),
    ("consumergroupdescribe", 69),
    ("controllerregistration", 70),
    ("gettelemetrysubscriptions", 71),
    ("pushtelemetry", 72),
    ("assignreplicastodirs", 73),
    ("listconfigresources", 74),
    ("listclientmetricsresources", 74),
    ("describetopicpartitions", 75),
    ("sharegroupheartbeat", 76),
    ("sharegroupdescribe", 77),
    ("sharefetch", 78),
    ("shareacknowledge", 79),
    ("addraftvoter", 80),
    ("removeraftvoter", 81),
    ("updateraftvoter", 82),
    ("initializesharegroupstate", 83),
    ("readsharegroupstate", 84),
    ("writesharegroupstate", 85),
    ("deletesharegroupstate", 86),
    ("readsharegroupstatesummary", 87),
    ("describesharegroupoffsets", 90),
    ("altersharegroupoffsets", 91),
    ("deletesharegroupoffsets", 92),
];

/// Request kinds whose topics Cilium's matcher checks against a rule's `topic`
/// (PROXY:`proxylib/kafka/kafkalib/request.go`).
pub const TOPIC_KINDS: &[i16] = &[
    0, 1, 2, 3, 4, 5, 6, 8, 9, 19, 20, 21, 23, 24, 27, 28, 34, 35, 37,
];

/// API keys of the `role: produce` shorthand: Cilium's Produce, Metadata and ApiVersions, and
/// (Ward's extension, docs/policy-semantics.md §4.1) SaslHandshake and SaslAuthenticate (a
/// client authenticates before anything else) and the keys an idempotent or transactional
/// producer of today needs: InitProducerId, AddPartitionsToTxn and EndTxn.
pub const ROLE_PRODUCE: &[i16] = &[0, 3, 17, 18, 22, 24, 26, 36];

/// API keys of the `role: consume` shorthand: Cilium's Fetch, ListOffsets, Metadata,
/// OffsetCommit, OffsetFetch, FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup and
/// ApiVersions, and (Ward's extension) SaslHandshake, SaslAuthenticate, OffsetForLeaderEpoch
/// (KIP-320: a consumer checks its position after a leader change) and the KIP-848
/// consumer-group ConsumerGroupHeartbeat and ConsumerGroupDescribe.
pub const ROLE_CONSUME: &[i16] = &[1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 17, 18, 23, 36, 68, 69];

/// The API key for a policy's `apiKey` name, case-insensitively: Cilium's names (`offsets`,
/// `produce`, …) and the current Apache Kafka names (`listoffsets`, `saslauthenticate`, …).
pub fn api_key_from_name(name: &str) -> Option<i16> {
    API_KEY_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, key)| key)
}

/// The name of an API key: Cilium's for keys 0–33, else Apache Kafka's (lower-cased).
pub fn api_key_name(key: i16) -> Option<&'static str> {
    API_KEY_NAMES
        .iter()
        .find(|&&(_, k)| k == key)
        .map(|&(name, _)| name)
}

/// `true` when Cilium's matcher checks the topics of this request kind.
pub fn is_topic_kind(key: i16) -> bool {
    TOPIC_KINDS.contains(&key)
}

/// Why a Kafka frame or request was refused. The client's fault: close the connection (Cilium
/// does the same on an unparseable request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KafkaError {
    /// The size prefix is negative.
    #[error("negative Kafka frame size {0}")]
    NegativeFrameLength(i32),
    /// The size prefix exceeds the maximum frame size ([`MAX_FRAME_LEN`] by default).
    #[error("Kafka frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The size prefix.
        len: usize,
        /// The maximum in force.
        max: usize,
    },
    /// The frame is shorter than a request header.
    #[error("Kafka request of {0} bytes is shorter than a request header")]
    TooShort(usize),
    /// An API key `kafka-protocol` does not know.
    #[error("unknown Kafka API key {0}")]
    UnknownApiKey(i16),
    /// A version outside the range `kafka-protocol` knows for the key.
    #[error("unsupported version {version} of Kafka API key {api_key}")]
    UnsupportedVersion {
        /// API key.
        api_key: i16,
        /// Requested version.
        version: i16,
    },
    /// The request header does not decode.
    #[error("malformed Kafka request header (api key {api_key} v{version})")]
    MalformedHeader {
        /// API key.
        api_key: i16,
        /// Requested version.
        version: i16,
    },
    /// The request body does not decode.
    #[error("malformed Kafka request body (api key {api_key} v{version}): {reason}")]
    MalformedBody {
        /// API key.
        api_key: i16,
        /// Requested version.
        version: i16,
        /// What was wrong.
        reason: &'static str,
    },
}

/// What the proxy and the policy need from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRequest {
    /// API key (0 = Produce, …).
    pub api_key: i16,
    /// API version.
    pub api_version: i16,
    /// Correlation id, echoed by the response.
    pub correlation_id: i32,
    /// Client id; `None` for request header v0 (ControlledShutdown v0), or when sent as null.
    pub client_id: Option<String>,
    /// Topic names for Produce, Fetch, ListOffsets, Metadata, OffsetCommit and OffsetFetch
    /// (all groups of v8+), first occurrence order, without duplicates. Empty for other keys.
    pub topics: Vec<String>,
    /// At least one topic is named only by its topic ID (Fetch v13+, Metadata v10+ with a null
    /// name), so [`Self::topics`] does not list every topic the request touches.
    pub topic_ids_only: bool,
    /// The IDs of the topics named only by ID, first occurrence order, without duplicates
    /// (at most [`MAX_ARRAY_LEN`]).
    pub topic_ids: Vec<[u8; 16]>,
    /// The request covers every topic: Metadata with a null or empty topic list (Cilium treats
    /// both as "all"), or OffsetFetch with a null topic list.
    pub all_topics: bool,
    /// Produce with `acks = 0`: the broker sends no response, so a denied request gets none.
    pub no_response: bool,
    /// Length of the request header within the frame; the body starts there.
    pub header_len: usize,
    /// Fetch v7+: the KIP-227 fetch session the request names (`session_id`,
    /// `session_epoch`); `None` for other requests.
    pub fetch_session: Option<FetchSession>,
}

/// A Fetch request's KIP-227 session fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchSession {
    /// 0 = no session (a full fetch).
    pub id: i32,
    /// 0 = create a session (full fetch), -1 = no session / close `id`, > 0 = an incremental
    /// fetch on session `id`: the topics listed are only those added or changed, and the
    /// broker answers for every partition the session holds.
    pub epoch: i32,
}

impl FetchSession {
    /// An incremental fetch on an existing session.
    pub fn is_incremental(self) -> bool {
        self.id != 0 && self.epoch > 0
    }
}

/// The (topic ID, name) pairs of a Metadata response (v10+, `frame` without its size prefix),
/// read with the bounded reader; topics without a name or with a zero ID are left out. `None`
/// if it does not walk.
pub fn metadata_response_topic_ids(version: i16, frame: &[u8]) -> Option<Vec<([u8; 16], String)>> {
    if version < 10 {
        return None;
    }
    let key = ApiKey::Metadata;
    let mut r = Reader {
        buf: frame,
        flexible: key.response_header_version(version) >= 1,
    };
    let walk = |r: &mut Reader<'_>| -> Walk<Vec<([u8; 16], String)>> {
        r.skip(4)?; // correlation_id
        r.skip_tagged_fields()?;
        r.skip(4)?; // throttle_time_ms
        for _ in 0..r.array()? {
            r.skip(4)?; // node_id
            r.string()?; // host
            r.skip(4)?; // port
            r.nullable_string()?; // rack
            r.skip_tagged_fields()?;
        }
        r.nullable_string()?; // cluster_id
        r.skip(4)?; // controller_id
        let mut out = Vec::new();
        for _ in 0..r.array()? {
            r.skip(2)?; // error_code
            let name = r.nullable_string()?;
            let id = r.uuid()?;
            r.skip(1)?; // is_internal
            for _ in 0..r.array()? {
                r.skip(2 + 4 + 4 + 4)?; // error_code, partition_index, leader_id, leader_epoch
                for _ in 0..3 {
                    // replica_nodes, isr_nodes, offline_replicas
                    let n = r.array()?;
                    r.skip(n.checked_mul(4).ok_or("array too long")?)?;
                }
                r.skip_tagged_fields()?;
            }
            r.skip(4)?; // topic_authorized_operations
            r.skip_tagged_fields()?;
            if let Some(name) = name.filter(|_| id != [0; 16]) {
                out.push((id, name.to_owned()));
            }
        }
        Ok(out)
    };
    walk(&mut r).ok()
}

/// A Metadata v12 request (framed) that asks for the topics with these IDs, with no topic
/// auto-creation: what the proxy sends to resolve IDs it has not seen.
pub fn metadata_request_for_ids(correlation_id: i32, ids: &[[u8; 16]]) -> Option<Vec<u8>> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::MetadataRequest;
    let version = 12;
    let mut out = Vec::with_capacity(32 + ids.len() * 20);
    out.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("ward")))
        .encode(&mut out, ApiKey::Metadata.request_header_version(version))
        .ok()?;
    MetadataRequest::default()
        .with_topics(Some(
            ids.iter()
                .map(|id| {
                    MetadataRequestTopic::default()
                        .with_topic_id(uuid::Uuid::from_bytes(*id))
                        .with_name(None)
                })
                .collect(),
        ))
        .with_allow_auto_topic_creation(false)
        .encode(&mut out, version)
        .ok()?;
    let size = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
    out[..FRAME_PREFIX_LEN].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// `FETCH_SESSION_ID_NOT_FOUND`: the answer to an incremental fetch on a session Ward cannot
/// vouch for; the client starts over with a full fetch.
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

/// The `session_id` of a Fetch response (v7+; `frame` without its size prefix), or `None`.
pub fn fetch_response_session_id(version: i16, frame: &[u8]) -> Option<i32> {
    if version < 7 {
        return None;
    }
    let key = ApiKey::Fetch;
    let mut r = Reader {
        buf: frame,
        flexible: key.response_header_version(version) >= 1,
    };
    r.skip(4).ok()?; // correlation_id
    if r.flexible {
        r.skip_tagged_fields().ok()?;
    }
    r.skip(4 + 2).ok()?; // throttle_time_ms, error_code
    r.i32().ok()
}

/// Ward's answer to an incremental Fetch (v7+) it will not forward: `FETCH_SESSION_ID_NOT_FOUND`
/// at the top level, at the request's version, framed. `None` for other requests.
pub fn fetch_session_not_found(req: &KafkaRequest) -> Option<Vec<u8>> {
    if req.api_key != ApiKey::Fetch as i16 || req.api_version < 7 {
        return None;
    }
    let key = ApiKey::Fetch;
    let version = req.api_version;
    let mut out = Vec::with_capacity(64);
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(req.correlation_id)
        .encode(&mut out, key.response_header_version(version))
        .ok()?;
    kafka_protocol::messages::FetchResponse::default()
        .with_error_code(FETCH_SESSION_ID_NOT_FOUND)
        .encode(&mut out, version)
        .ok()?;
    let size = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
    out[..FRAME_PREFIX_LEN].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// Splits one frame off the front of `buf` (4-byte big-endian size prefix). The complete value is
/// the frame without its prefix; `consumed` includes the prefix.
pub fn frame(buf: &[u8]) -> Result<Status<&[u8]>, KafkaError> {
    frame_within(buf, MAX_FRAME_LEN)
}

/// [`frame`] with a maximum frame size of `max` bytes (without the prefix).
pub fn frame_within(buf: &[u8], max: usize) -> Result<Status<&[u8]>, KafkaError> {
    let Some(prefix) = buf.first_chunk::<FRAME_PREFIX_LEN>() else {
        return Ok(Status::NeedMore);
    };
    let size = i32::from_be_bytes(*prefix);
    let len = usize::try_from(size).map_err(|_| KafkaError::NegativeFrameLength(size))?;
    if len > max {
        return Err(KafkaError::FrameTooLarge { len, max });
    }
    match buf.get(FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + len) {
        Some(frame) => Ok(Status::Complete(frame, FRAME_PREFIX_LEN + len)),
        None => Ok(Status::NeedMore),
    }
}

/// Parses a request frame (without its size prefix): header with `kafka-protocol`, topics with
/// this module's walker. Unknown keys and versions are errors.
pub fn parse_request(frame: &[u8]) -> Result<KafkaRequest, KafkaError> {
    let (api_key, version, correlation_id, client_id, header_len) = parse_header(frame)?;
    let mut request = KafkaRequest {
        api_key,
        api_version: version,
        correlation_id,
        client_id: client_id.map(str::to_owned),
        topics: Vec::new(),
        topic_ids_only: false,
        topic_ids: Vec::new(),
        all_topics: false,
        no_response: false,
        header_len,
        fetch_session: None,
    };
    if api_key_has_body_walker(api_key) {
        let body = walk_body(api_key, version, &frame[header_len..], false)?;
        request.no_response = api_key == ApiKey::Produce as i16 && body.acks == 0;
        request.fetch_session = body.fetch_session;
        let mut names = TopicNames::default();
        match &body.topics {
            Some(topics) => names.add(topics),
            None => request.all_topics = body.walked_topics,
        }
        for group in &body.groups {
            match &group.topics {
                Some(topics) => names.add(topics),
                None => request.all_topics = true,
            }
        }
        request.topic_ids_only = names.ids_only;
        request.topic_ids = names.ids;
        request.topics = names.names.into_iter().map(str::to_owned).collect();
        // An empty list is "all topics" in Metadata v0 only; from v1 it asks for no topic
        // (brokers and cluster only), and `null` is "all".
        if api_key == ApiKey::Metadata as i16
            && version == 0
            && body.topics.as_ref().is_some_and(Vec::is_empty)
        {
            request.all_topics = true;
        }
    }
    Ok(request)
}

/// Where the records of a Produce request lie, for a request the proxy can judge before the
/// records have arrived: exactly one topic with one partition, whose record batch runs to the
/// end of the frame but for the tagged-field counts that close the partition, the topic and the
/// request (flexible versions). The records are opaque to policy, so such a request is judged on
/// its head and trailer alone, and the records can pass client → broker by splice(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceSplit {
    /// Offset, within the frame (without its size prefix), of the records' length field.
    pub length_at: usize,
    /// Offset of the records, where the length field ends.
    pub records_at: usize,
    /// Length of the records.
    pub records_len: usize,
    /// Bytes after the records: 3 tagged-field counts in flexible versions, none before.
    pub trailer_len: usize,
}

/// The longest head [`produce_split`] waits for before it calls a Produce frame unsplittable.
pub const PRODUCE_HEAD_MAX: usize = 16 * 1024;

/// Decides from the first bytes of a request frame (`head`, without the size prefix) of
/// `frame_len` bytes whether it is a Produce request laid out as [`ProduceSplit`] describes.
/// `NeedMore`: `head` is too short to tell; `Complete(None, _)`: any other request, which is
/// read whole and parsed by [`parse_request`].
pub fn produce_split(head: &[u8], frame_len: usize) -> Status<Option<ProduceSplit>> {
    match produce_head(head, frame_len) {
        Ok(split) => Status::Complete(split, 0),
        Err("truncated") if head.len() < frame_len.min(PRODUCE_HEAD_MAX) => Status::NeedMore,
        Err(_) => Status::Complete(None, 0),
    }
}

fn produce_head(head: &[u8], frame_len: usize) -> Walk<Option<ProduceSplit>> {
    if head.len() < MIN_REQUEST_LEN {
        return Err("truncated");
    }
    if i16::from_be_bytes([head[0], head[1]]) != ApiKey::Produce as i16 {
        return Ok(None);
    }
    let (_, v, _, _, header_len) = match parse_header(head) {
        Ok(h) => h,
        Err(KafkaError::MalformedHeader { .. }) => return Err("truncated"),
        Err(_) => return Ok(None),
    };
    let flexible = request_header_version(ApiKey::Produce as i16, v) == Some(2);
    let mut r = Reader {
        buf: &head[header_len..],
        flexible,
    };
    if v >= 3 {
        r.nullable_string()?; // transactional_id
    }
    r.skip(2 + 4)?; // acks, timeout_ms
    if r.nullable_len(true)? != Some(1) {
        return Ok(None); // topic_data
    }
    if v >= 13 {
        r.uuid()?;
    } else {
        r.string()?;
    }
    if r.nullable_len(true)? != Some(1) {
        return Ok(None); // partition_data
    }
    r.skip(4)?; // index
    let length_at = head.len() - r.buf.len();
    let Some(records_len) = r.nullable_len(true)? else {
        return Ok(None);
    };
    let records_at = head.len() - r.buf.len();
    let trailer_len = if flexible { 3 } else { 0 };
    if records_at
        .checked_add(records_len)
        .and_then(|n| n.checked_add(trailer_len))
        != Some(frame_len)
    {
        return Ok(None);
    }
    Ok(Some(ProduceSplit {
        length_at,
        records_at,
        records_len,
        trailer_len,
    }))
}

/// Parses a Produce request laid out as `split` says from its head (at least
/// `split.records_at` bytes, the records' length field included) and its trailer, the records
/// left out: the request [`parse_request`] would read from the whole frame, and the frame it
/// judged (records empty) for [`deny_response`].
pub fn parse_produce_split(
    head: &[u8],
    split: &ProduceSplit,
    trailer: &[u8],
) -> Result<(KafkaRequest, Vec<u8>), KafkaError> {
    let mut judged = Vec::with_capacity(split.length_at + 4 + trailer.len());
    judged.extend_from_slice(&head[..split.length_at]);
    // The records, empty: compact (length + 1) in flexible versions, which alone have a
    // trailer; an int32 before.
    if split.trailer_len > 0 {
        judged.push(1);
    } else {
        judged.extend_from_slice(&0i32.to_be_bytes());
    }
    judged.extend_from_slice(trailer);
    let req = parse_request(&judged)?;
    Ok((req, judged))
}

/// Topic names in first-occurrence order without duplicates. Requests name a few topics; past
/// [`LINEAR_DEDUP_MAX`] a hash set keeps a hostile request with a million names linear.
#[derive(Default)]
struct TopicNames<'a> {
    names: Vec<&'a str>,
    seen: Option<std::collections::HashSet<&'a str>>,
    ids_only: bool,
    ids: Vec<[u8; 16]>,
}

impl<'a> TopicNames<'a> {
    fn add(&mut self, topics: &[Topic<'a>]) {
        for topic in topics {
            let Some(name) = topic.name else {
                self.ids_only = true;
                // Few IDs per request; a linear scan stays bounded by the walker's limits.
                if self.ids.len() < LINEAR_DEDUP_MAX * 64 && !self.ids.contains(&topic.id) {
                    self.ids.push(topic.id);
                }
                continue;
            };
            if self.seen.is_none() && self.names.len() >= LINEAR_DEDUP_MAX {
                self.seen = Some(self.names.iter().copied().collect());
            }
            let new = match &mut self.seen {
                Some(seen) => seen.insert(name),
                None => !self.names.contains(&name),
            };
            if new {
                self.names.push(name);
            }
        }
    }
}

/// `UNSUPPORTED_VERSION`: the ApiVersions answer to a client newer than Ward (KIP-511).
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The versions of `api_key` Ward can inspect: what `kafka-protocol` 0.17 and, below its
/// minimums, 0.15 know; topics named by ID (Fetch v13+, Produce v13) are
/// resolved through the proxy's topic-ID map. `None` for keys neither knows.
pub fn inspectable_versions(api_key: i16) -> Option<(i16, i16)> {
    let (min, max) = known_versions(api_key)?;
    // SaslHandshake v0 is followed by raw SASL tokens without Kafka framing, which Ward
    // cannot judge; v1 wraps them in SaslAuthenticate requests.
    let min = if api_key == ApiKey::SaslHandshake as i16 {
        min.max(1)
    } else {
        min
    };
    // AddPartitionsToTxn v4+ batches transactions for broker-to-broker verification; clients
    // send v0–3.
    let cap = if api_key == ApiKey::AddPartitionsToTxn as i16 {
        3
    } else {
        i16::MAX
    };
    Some((min, max.min(cap)))
}

/// Ward's answer to a SaslHandshake v0, after which the client would send raw SASL tokens Ward
/// cannot frame: `UNSUPPORTED_VERSION`, framed (the proxy then closes the connection). `None`
/// for other requests.
pub fn refuse_sasl_handshake_v0(req: &KafkaRequest) -> Option<Vec<u8>> {
    if req.api_key != ApiKey::SaslHandshake as i16 || req.api_version != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(16);
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(req.correlation_id)
        .encode(&mut out, 0)
        .ok()?;
    kafka_protocol::messages::SaslHandshakeResponse::default()
        .with_error_code(UNSUPPORTED_VERSION)
        .encode(&mut out, 0)
        .ok()?;
    let size = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
    out[..FRAME_PREFIX_LEN].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// Narrows a broker's ApiVersions response (`frame` without its size prefix, for a request of
/// `version`) to what Ward can inspect ([`inspectable_versions`]): keys Ward does not know are
/// left out, the others' ranges intersected, so a client never picks a version Ward would have
/// to refuse. Returns the framed response; `None` if it does not decode.
pub fn narrow_api_versions(version: i16, frame: &[u8]) -> Option<Vec<u8>> {
    use kafka_protocol::messages::ApiVersionsResponse;
    let key = ApiKey::ApiVersions;
    let header_version = key.response_header_version(version);
    let mut rest = frame;
    let header = ResponseHeader::decode(&mut rest, header_version).ok()?;
    let mut body = ApiVersionsResponse::decode(&mut rest, version).ok()?;
    body.api_keys
        .retain_mut(|k| match inspectable_versions(k.api_key) {
            Some((min, max)) => {
                k.min_version = k.min_version.max(min);
                k.max_version = k.max_version.min(max);
                k.min_version <= k.max_version
            }
            None => false,
        });
    let mut out = Vec::with_capacity(frame.len() + FRAME_PREFIX_LEN);
    out.put_i32(0);
    header.encode(&mut out, header_version).ok()?;
    body.encode(&mut out, version).ok()?;
    let len = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
    out[..FRAME_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// The answer to an ApiVersions request of a version newer than Ward knows (KIP-511): a v0
/// response with `UNSUPPORTED_VERSION` and the ApiVersions range Ward speaks, so the client
/// retries with that. `frame` is the request without its size prefix; `None` when it is not an
/// ApiVersions request or too short for a correlation id.
pub fn unsupported_api_versions(frame: &[u8]) -> Option<Vec<u8>> {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::ApiVersionsResponse;
    if frame.len() < MIN_REQUEST_LEN || i16::from_be_bytes([frame[0], frame[1]]) != 18 {
        return None;
    }
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let (min, max) = inspectable_versions(ApiKey::ApiVersions as i16)?;
    let body = ApiVersionsResponse::default()
        .with_error_code(UNSUPPORTED_VERSION)
        .with_api_keys(vec![ApiVersion::default()
            .with_api_key(ApiKey::ApiVersions as i16)
            .with_min_version(min)
            .with_max_version(max)]);
    let mut out = Vec::with_capacity(32);
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, 0)
        .ok()?;
    body.encode(&mut out, 0).ok()?;
    let len = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
    out[..FRAME_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// The keys whose bodies are walked: the six topic-bearing kinds Cilium parses,
/// OffsetForLeaderEpoch and AddPartitionsToTxn (topics, Ward's extension), and FindCoordinator,
/// InitProducerId, CreateTopics, DeleteTopics, DescribeGroups, DeleteGroups, TxnOffsetCommit
/// and DescribeConfigs (for their deny responses; the topics of CreateTopics, DeleteTopics and
/// TxnOffsetCommit stay invisible to rules, as in Cilium).
fn api_key_has_body_walker(api_key: i16) -> bool {
    (0..=3).contains(&api_key)
        || (8..=10).contains(&api_key)
        || matches!(
            api_key,
            15 | 19
                | 20
                | 21
                | 22
                | 23
                | 24
                | 28
                | 30
                | 31
                | 32
                | 33
                | 37
                | 42
                | 43
                | 44
                | 61
                | 65
                | 69
                | 75
        )
}

/// The error code Ward's deny response to `req` carries (docs/policy-semantics.md §4.3): per
/// topic `TOPIC_AUTHORIZATION_FAILED` for the topic-bearing keys, `GROUP_AUTHORIZATION_FAILED`
/// for group APIs (and FindCoordinator of a group), `TRANSACTIONAL_ID_AUTHORIZATION_FAILED` for
/// transaction APIs (and FindCoordinator or InitProducerId of a transactional ID),
/// `CLUSTER_AUTHORIZATION_FAILED` for cluster APIs and an idempotent producer's InitProducerId.
/// `None` when Ward has no deny response for the key: the connection is closed instead.
pub fn deny_error_code(req: &KafkaRequest, frame: &[u8]) -> Option<i16> {
    let key = ApiKey::try_from(req.api_key).ok()?;
    let transactional = || {
        let body = frame.get(req.header_len..)?;
        walk(req.api_key, req.api_version, body, false).ok()
    };
    Some(match key {
        ApiKey::Produce
        | ApiKey::Fetch
        | ApiKey::ListOffsets
        | ApiKey::Metadata
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::AddPartitionsToTxn => TOPIC_AUTHORIZATION_FAILED,
        ApiKey::FindCoordinator => match transactional()?.key_type {
            1 => TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            _ => GROUP_AUTHORIZATION_FAILED,
        },
        ApiKey::InitProducerId => match transactional()?.transactional_id {
            Some(_) => TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            None => CLUSTER_AUTHORIZATION_FAILED,
        },
        ApiKey::CreateTopics
        | ApiKey::DeleteTopics
        | ApiKey::OffsetForLeaderEpoch
        | ApiKey::DeleteRecords
        | ApiKey::CreatePartitions
        | ApiKey::DescribeProducers
        | ApiKey::DescribeTopicPartitions => TOPIC_AUTHORIZATION_FAILED,
        ApiKey::DescribeGroups
        | ApiKey::DeleteGroups
        | ApiKey::TxnOffsetCommit
        | ApiKey::ConsumerGroupDescribe
        | ApiKey::ShareGroupHeartbeat
        | ApiKey::ShareFetch
        | ApiKey::ShareAcknowledge => GROUP_AUTHORIZATION_FAILED,
        ApiKey::DescribeTransactions => TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        ApiKey::CreateAcls | ApiKey::DeleteAcls | ApiKey::ElectLeaders => {
            CLUSTER_AUTHORIZATION_FAILED
        }
        // The top-level error code exists from v3.
        ApiKey::DescribeLogDirs if req.api_version >= 3 => CLUSTER_AUTHORIZATION_FAILED,
        ApiKey::ListConfigResources => CLUSTER_AUTHORIZATION_FAILED,
        ApiKey::DescribeConfigs | ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            transactional()?
                .resources
                .first()
                .map_or(CLUSTER_AUTHORIZATION_FAILED, |&(kind, _)| {
                    config_resource_error(kind)
                })
        }
        ApiKey::CreateDelegationToken
        | ApiKey::RenewDelegationToken
        | ApiKey::ExpireDelegationToken
        | ApiKey::DescribeDelegationToken => DELEGATION_TOKEN_AUTHORIZATION_FAILED,
        ApiKey::AlterPartitionReassignments
        | ApiKey::ListPartitionReassignments
        | ApiKey::DescribeClientQuotas
        | ApiKey::DescribeUserScramCredentials
        | ApiKey::DescribeQuorum
        | ApiKey::UpdateFeatures => CLUSTER_AUTHORIZATION_FAILED,
        ApiKey::JoinGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::SyncGroup
        | ApiKey::ListGroups
        | ApiKey::OffsetDelete
        | ApiKey::ConsumerGroupHeartbeat => GROUP_AUTHORIZATION_FAILED,
        ApiKey::AddOffsetsToTxn | ApiKey::EndTxn => TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        ApiKey::DescribeAcls
        | ApiKey::DescribeCluster
        | ApiKey::ListTransactions
        | ApiKey::GetTelemetrySubscriptions
        | ApiKey::PushTelemetry => CLUSTER_AUTHORIZATION_FAILED,
        _ => return None,
    })
}

/// The request header: api key, version, correlation id, client id (header v1+; `None` in
/// v0 or when null) and the header's length. Read with the bounded reader, as both
/// `kafka-protocol` releases lay it out (v2 adds tagged fields; the client id is never compact).
fn parse_header(frame: &[u8]) -> Result<(i16, i16, i32, Option<&str>, usize), KafkaError> {
    if frame.len() < MIN_REQUEST_LEN {
        return Err(KafkaError::TooShort(frame.len()));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let (min, max) = known_versions(api_key).ok_or(KafkaError::UnknownApiKey(api_key))?;
    if version < min || version > max {
        return Err(KafkaError::UnsupportedVersion { api_key, version });
    }
    let header_version = request_header_version(api_key, version)
        .ok_or(KafkaError::UnsupportedVersion { api_key, version })?;
    let malformed = |_| KafkaError::MalformedHeader { api_key, version };
    let mut r = Reader {
        buf: &frame[MIN_REQUEST_LEN..],
        flexible: false,
    };
    let client_id = if header_version >= 1 {
        r.nullable_string().map_err(malformed)?
    } else {
        None
    };
    if header_version >= 2 {
        r.flexible = true;
        r.skip_tagged_fields().map_err(malformed)?;
    }
    Ok((
        api_key,
        version,
        correlation_id,
        client_id,
        frame.len() - r.buf.len(),
    ))
}

/// Builds the response a denied request gets (docs/policy-semantics.md §4.3): the request's own
/// response type at the request's version, same correlation id, with the error of
/// [`deny_error_code`] per topic/partition, per group or resource, or at the top level. Returns
/// the whole frame including the size prefix; `None` for keys Ward has no answer for, for
/// Produce with `acks = 0` (the client expects no response), or if `frame` does not parse.
///
/// Encoded with `kafka-protocol` 0.17 (Kafka 4.x) from its minimum version of the key up, and
/// with 0.15 (Kafka 3.9) below it: Kafka 4.0 dropped Produce v0–2, Fetch v0–3 and others
/// (KIP-896), which Cilium's v0–5 tables and Kafka 3.x brokers still use.
pub fn deny_response(req: &KafkaRequest, frame: &[u8]) -> Option<Vec<u8>> {
    if req.no_response {
        return None;
    }
    let code = deny_error_code(req, frame)?;
    let body = if api_key_has_body_walker(req.api_key) {
        let (_, _, _, _, header_len) = parse_header(frame).ok()?;
        Some(walk_body(req.api_key, req.api_version, &frame[header_len..], true).ok()?)
    } else {
        None
    };
    if is_legacy(req.api_key, req.api_version) {
        legacy::deny(req, body.as_ref(), code)
    } else {
        current::deny(req, body.as_ref(), code)
    }
}

/// The deny encoders on `kafka-protocol` 0.17 (Kafka 4.x).
mod current {
    use kafka_protocol as kp;

    /// Produce v13+ names topics by ID only.
    fn produce_topic_id(
        t: kp::messages::produce_response::TopicProduceResponse,
        topic: &Topic<'_>,
        version: i16,
    ) -> kp::messages::produce_response::TopicProduceResponse {
        if version >= 13 {
            t.with_topic_id(uuid::Uuid::from_bytes(topic.id))
        } else {
            t
        }
    }

    /// The keys Kafka 4.x added: top-level errors for the share-group APIs and
    /// ListConfigResources.
    fn deny_own_keys(api_key: i16, code: i16, version: i16, out: &mut Vec<u8>) -> Option<bool> {
        use kp::messages as m;
        use kp::protocol::Encodable;
        let encoded = match ApiKey::try_from(api_key).ok()? {
            ApiKey::ShareGroupHeartbeat => m::ShareGroupHeartbeatResponse::default()
                .with_error_code(code)
                .encode(out, version),
            ApiKey::ShareFetch => m::ShareFetchResponse::default()
                .with_error_code(code)
                .encode(out, version),
            ApiKey::ShareAcknowledge => m::ShareAcknowledgeResponse::default()
                .with_error_code(code)
                .encode(out, version),
            ApiKey::ListConfigResources => m::ListConfigResourcesResponse::default()
                .with_error_code(code)
                .encode(out, version),
            _ => return None,
        };
        Some(encoded.is_ok())
    }

    include!("kafka_deny.rs");
}

/// The deny encoders on `kafka-protocol` 0.15 (Kafka 3.9), for the versions 0.17 dropped.
mod legacy {
    use kafka_protocol_legacy as kp;

    /// No Produce version of 0.15 names topics by ID.
    fn produce_topic_id(
        t: kp::messages::produce_response::TopicProduceResponse,
        _: &Topic<'_>,
        _: i16,
    ) -> kp::messages::produce_response::TopicProduceResponse {
        t
    }

    /// Every key 0.15 knows is answered by the shared encoders (or not at all).
    fn deny_own_keys(_: i16, _: i16, _: i16, _: &mut Vec<u8>) -> Option<bool> {
        None
    }

    include!("kafka_deny.rs");
}

/// Whether `version` of `api_key` is below what `kafka-protocol` 0.17 knows (or the key is
/// gone from it), so the 0.15 schemas apply.
fn is_legacy(api_key: i16, version: i16) -> bool {
    ApiKey::try_from(api_key).map_or(true, |k| version < k.valid_versions().min)
}

/// The versions of `api_key` Ward knows: from the smaller minimum of `kafka-protocol` 0.15 and
/// 0.17 up to 0.17's maximum (0.15's for the keys Kafka 4.0 removed). `None` for a key neither
/// knows.
fn known_versions(api_key: i16) -> Option<(i16, i16)> {
    let current = ApiKey::try_from(api_key).ok().map(|k| {
        let range = k.valid_versions();
        // 0.17.0's `ApiKey` advertises versions its request schemas do not have yet
        // (OffsetCommit v10, OffsetFetch v10, InitProducerId v6): Ward cannot walk them.
        let cap = match k {
            ApiKey::OffsetCommit | ApiKey::OffsetFetch => 9,
            ApiKey::InitProducerId => 5,
            _ => i16::MAX,
        };
        (range.min, range.max.min(cap))
    });
    let legacy = kafka_protocol_legacy::messages::ApiKey::try_from(api_key)
        .ok()
        .map(|k| (k.valid_versions().min, k.valid_versions().max));
    match (current, legacy) {
        (Some(c), Some(l)) => Some((c.0.min(l.0), c.1.max(l.1))),
        (c, l) => c.or(l),
    }
}

/// The request header version of `version` of `api_key`, from the release that knows it.
fn request_header_version(api_key: i16, version: i16) -> Option<i16> {
    if is_legacy(api_key, version) {
        let key = kafka_protocol_legacy::messages::ApiKey::try_from(api_key).ok()?;
        Some(key.request_header_version(version))
    } else {
        Some(
            ApiKey::try_from(api_key)
                .ok()?
                .request_header_version(version),
        )
    }
}

/// The authorization error for a config resource: a topic (2), a group (3), else the cluster
/// (a broker, a broker logger, client metrics).
fn config_resource_error(kind: i8) -> i16 {
    match kind {
        2 => TOPIC_AUTHORIZATION_FAILED,
        3 => GROUP_AUTHORIZATION_FAILED,
        _ => CLUSTER_AUTHORIZATION_FAILED,
    }
}
// ---------------------------------------------------------------------------------------------
// The body walker.

/// A topic as named in a request body, with its partitions when asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Topic<'a> {
    /// `None` when the topic is named only by ID.
    name: Option<&'a str>,
    id: [u8; 16],
    partitions: Vec<i32>,
}

/// An OffsetFetch v8+ group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group<'a> {
    id: &'a str,
    /// `None` = all topics of the group.
    topics: Option<Vec<Topic<'a>>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Body<'a> {
    /// Produce `acks`.
    acks: i16,
    /// `None` for a null topic list (or no top-level topic list at all, see `walked_topics`).
    topics: Option<Vec<Topic<'a>>>,
    /// The kind has a top-level topic list (false for OffsetFetch v8+ and FindCoordinator).
    walked_topics: bool,
    groups: Vec<Group<'a>>,
    coordinator_keys: Vec<&'a str>,
    /// FindCoordinator `key_type` (0 = group, 1 = transaction).
    key_type: i8,
    /// InitProducerId `transactional_id` (`None` for an idempotent producer).
    transactional_id: Option<&'a str>,
    /// Fetch v7+ session fields.
    fetch_session: Option<FetchSession>,
    /// DescribeGroups and DeleteGroups: the groups named.
    names: Vec<&'a str>,
    /// DescribeConfigs, AlterConfigs, IncrementalAlterConfigs: the resources (type, name).
    resources: Vec<(i8, &'a str)>,
    /// CreateAcls and DeleteAcls: how many creations or filters (each gets a result).
    items: usize,
}

type Walk<T> = Result<T, &'static str>;

/// A cursor over a request body that checks every length before use.
struct Reader<'a> {
    buf: &'a [u8],
    flexible: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Walk<&'a [u8]> {
        if n > self.buf.len() {
            return Err("truncated");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn skip(&mut self, n: usize) -> Walk<()> {
        self.take(n).map(|_| ())
    }

    fn i16(&mut self) -> Walk<i16> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Walk<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn uuid(&mut self) -> Walk<[u8; 16]> {
        let b = self.take(16)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(b);
        Ok(id)
    }

    fn uvarint(&mut self) -> Walk<u32> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.take(1)?[0];
            if i == 4 && b > 0x0f {
                return Err("varint overflows u32");
            }
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 5 bytes")
    }

    /// A length that may be null: `i16`/`i32` with -1, or compact `uvarint` with 0.
    fn nullable_len(&mut self, wide: bool) -> Walk<Option<usize>> {
        if self.flexible {
            let n = self.uvarint()?;
            return Ok(n.checked_sub(1).map(|n| n as usize));
        }
        let n = if wide {
            self.i32()?
        } else {
            i32::from(self.i16()?)
        };
        match n {
            -1 => Ok(None),
            n => usize::try_from(n).map(Some).map_err(|_| "negative length"),
        }
    }

    fn nullable_string(&mut self) -> Walk<Option<&'a str>> {
        match self.nullable_len(false)? {
            None => Ok(None),
            Some(n) => std::str::from_utf8(self.take(n)?)
                .map(Some)
                .map_err(|_| "string is not UTF-8"),
        }
    }

    fn string(&mut self) -> Walk<&'a str> {
        self.nullable_string()?
            .ok_or("null where a string is required")
    }

    fn skip_nullable_bytes(&mut self) -> Walk<()> {
        if let Some(n) = self.nullable_len(true)? {
            self.skip(n)?;
        }
        Ok(())
    }

    /// An array length, checked against the bytes left (every element takes at least one).
    fn nullable_array(&mut self) -> Walk<Option<usize>> {
        let n = self.nullable_len(true)?;
        if let Some(n) = n {
            if n > MAX_ARRAY_LEN {
                return Err("array longer than MAX_ARRAY_LEN");
            }
            if n > self.buf.len() {
                return Err("array longer than the bytes left");
            }
        }
        Ok(n)
    }

    fn array(&mut self) -> Walk<usize> {
        self.nullable_array()?
            .ok_or("null where an array is required")
    }

    fn skip_tagged_fields(&mut self) -> Walk<()> {
        if !self.flexible {
            return Ok(());
        }
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(size as usize)?;
        }
        Ok(())
    }

    /// An array of topics: `name_or_id` reads the topic's identity, `partition` one partition
    /// element returning its index.
    fn topics(
        &mut self,
        nullable: bool,
        keep_partitions: bool,
        name_or_id: impl Fn(&mut Self) -> Walk<(Option<&'a str>, [u8; 16])>,
        partition: impl Fn(&mut Self) -> Walk<i32>,
    ) -> Walk<Option<Vec<Topic<'a>>>> {
        let n = if nullable {
            match self.nullable_array()? {
                None => return Ok(None),
                Some(n) => n,
            }
        } else {
            self.array()?
        };
        let mut topics = Vec::new();
        for _ in 0..n {
            let (name, id) = name_or_id(self)?;
            let count = self.array()?;
            let mut partitions = Vec::new();
            for _ in 0..count {
                let index = partition(self)?;
                if keep_partitions {
                    partitions.push(index);
                }
            }
            self.skip_tagged_fields()?;
            topics.push(Topic {
                name,
                id,
                partitions,
            });
        }
        Ok(Some(topics))
    }
}

fn named<'a>(r: &mut Reader<'a>) -> Walk<(Option<&'a str>, [u8; 16])> {
    Ok((Some(r.string()?), [0; 16]))
}

/// Walks the body of a topic-bearing request up to its topic list (the schemas are
/// `kafka-protocol`'s; field names in comments).
fn walk_body(
    api_key: i16,
    version: i16,
    body: &[u8],
    keep_partitions: bool,
) -> Result<Body<'_>, KafkaError> {
    walk(api_key, version, body, keep_partitions).map_err(|reason| KafkaError::MalformedBody {
        api_key,
        version,
        reason,
    })
}

fn walk<'a>(api_key: i16, v: i16, body: &'a [u8], keep: bool) -> Walk<Body<'a>> {
    let key = ApiKey::try_from(api_key).map_err(|()| "unknown api key")?;
    let flexible = request_header_version(api_key, v).ok_or("unknown api key")? >= 2;
    let mut r = Reader {
        buf: body,
        flexible,
    };
    let mut out = Body {
        walked_topics: true,
        ..Body::default()
    };
    match key {
        ApiKey::Produce => {
            if v >= 3 {
                r.nullable_string()?; // transactional_id
            }
            out.acks = r.i16()?;
            r.skip(4)?; // timeout_ms
            let name_or_id = |r: &mut Reader<'a>| {
                if v >= 13 {
                    Ok((None, r.uuid()?))
                } else {
                    named(r)
                }
            };
            out.topics = r.topics(false, keep, name_or_id, |r| {
                let index = r.i32()?;
                r.skip_nullable_bytes()?; // records
                r.skip_tagged_fields()?;
                Ok(index)
            })?;
            r.skip_tagged_fields()?;
        }
        ApiKey::Fetch => {
            if v <= 14 {
                r.skip(4)?; // replica_id
            }
            r.skip(8)?; // max_wait_ms, min_bytes
            if v >= 3 {
                r.skip(4)?; // max_bytes
            }
            if v >= 4 {
                r.skip(1)?; // isolation_level
            }
            if v >= 7 {
                out.fetch_session = Some(FetchSession {
                    id: r.i32()?,
                    epoch: r.i32()?,
                });
            }
            out.topics = r.topics(
                false,
                keep,
                |r| {
                    if v >= 13 {
                        Ok((None, r.uuid()?))
                    } else {
                        named(r)
                    }
                },
                |r| {
                    let partition = r.i32()?;
                    let fixed = [
                        if v >= 9 { 4 } else { 0 },  // current_leader_epoch
                        8,                           // fetch_offset
                        if v >= 12 { 4 } else { 0 }, // last_fetched_epoch
                        if v >= 5 { 8 } else { 0 },  // log_start_offset
                        4,                           // partition_max_bytes
                    ];
                    r.skip(fixed.iter().sum())?;
                    r.skip_tagged_fields()?;
                    Ok(partition)
                },
            )?;
        }
        ApiKey::ListOffsets => {
            r.skip(4)?; // replica_id
            if v >= 2 {
                r.skip(1)?; // isolation_level
            }
            out.topics = r.topics(false, keep, named, |r| {
                let index = r.i32()?;
                let fixed = [
                    if v >= 4 { 4 } else { 0 }, // current_leader_epoch
                    8,                          // timestamp
                    if v == 0 { 4 } else { 0 }, // max_num_offsets
                ];
                r.skip(fixed.iter().sum())?;
                r.skip_tagged_fields()?;
                Ok(index)
            })?;
        }
        ApiKey::Metadata => {
            // A topic here has no partition array: walk it by hand.
            let n = if v >= 1 {
                r.nullable_array()?
            } else {
                Some(r.array()?)
            };
            out.topics = match n {
                None => None,
                Some(n) => {
                    let mut topics = Vec::new();
                    for _ in 0..n {
                        let id = if v >= 10 { r.uuid()? } else { [0; 16] };
                        let name = if v >= 10 {
                            r.nullable_string()?
                        } else {
                            Some(r.string()?)
                        };
                        r.skip_tagged_fields()?;
                        topics.push(Topic {
                            name,
                            id,
                            partitions: Vec::new(),
                        });
                    }
                    Some(topics)
                }
            };
        }
        ApiKey::OffsetCommit => {
            r.string()?; // group_id
            if v >= 1 {
                r.skip(4)?; // generation_id_or_member_epoch
                r.string()?; // member_id
            }
            if v >= 7 {
                r.nullable_string()?; // group_instance_id
            }
            if (2..=4).contains(&v) {
                r.skip(8)?; // retention_time_ms
            }
            out.topics = r.topics(false, keep, named, |r| {
                let index = r.i32()?;
                r.skip(8)?; // committed_offset
                if v >= 6 {
                    r.skip(4)?; // committed_leader_epoch
                }
                if v == 1 {
                    r.skip(8)?; // commit_timestamp
                }
                r.nullable_string()?; // committed_metadata
                r.skip_tagged_fields()?;
                Ok(index)
            })?;
        }
        ApiKey::OffsetFetch => {
            if v <= 7 {
                r.string()?; // group_id
                out.topics = r.topics(v >= 2, keep, named, |r| r.i32())?;
            } else {
                out.walked_topics = false;
                let n = r.array()?;
                for _ in 0..n {
                    let id = r.string()?;
                    if v >= 9 {
                        r.nullable_string()?; // member_id
                        r.skip(4)?; // member_epoch
                    }
                    let topics = r.topics(true, keep, named, |r| r.i32())?;
                    r.skip_tagged_fields()?;
                    out.groups.push(Group { id, topics });
                }
            }
        }
        ApiKey::FindCoordinator => {
            out.walked_topics = false;
            if v <= 3 {
                r.string()?; // key
            }
            if v >= 1 {
                out.key_type = r.take(1)?[0] as i8;
            }
            if v >= 4 {
                let n = r.array()?;
                for _ in 0..n {
                    out.coordinator_keys.push(r.string()?);
                }
            }
        }
        ApiKey::InitProducerId => {
            out.walked_topics = false;
            out.transactional_id = r.nullable_string()?;
        }
        ApiKey::OffsetForLeaderEpoch => {
            if v >= 3 {
                r.skip(4)?; // replica_id
            }
            out.topics = r.topics(false, keep, named, |r| {
                let partition = r.i32()?;
                // current_leader_epoch (v2+), leader_epoch
                r.skip(if v >= 2 { 8 } else { 4 })?;
                r.skip_tagged_fields()?;
                Ok(partition)
            })?;
        }
        ApiKey::TxnOffsetCommit => {
            r.string()?; // transactional_id
            r.string()?; // group_id
            r.skip(8 + 2)?; // producer_id, producer_epoch
            if v >= 3 {
                r.skip(4)?; // generation_id
                r.string()?; // member_id
                r.nullable_string()?; // group_instance_id
            }
            out.topics = r.topics(false, keep, named, |r| {
                let index = r.i32()?;
                r.skip(8)?; // committed_offset
                if v >= 2 {
                    r.skip(4)?; // committed_leader_epoch
                }
                r.nullable_string()?; // committed_metadata
                r.skip_tagged_fields()?;
                Ok(index)
            })?;
        }
        ApiKey::DescribeConfigs => {
            out.walked_topics = false;
            for _ in 0..r.array()? {
                let kind = r.take(1)?[0] as i8;
                let name = r.string()?;
                if let Some(n) = r.nullable_array()? {
                    for _ in 0..n {
                        r.string()?; // configuration_keys
                    }
                }
                r.skip_tagged_fields()?;
                out.resources.push((kind, name));
            }
        }
        ApiKey::CreateTopics => {
            out.topics = Some({
                let mut topics = Vec::new();
                for _ in 0..r.array()? {
                    let name = r.string()?;
                    r.skip(4 + 2)?; // num_partitions, replication_factor
                    for _ in 0..r.array()? {
                        // assignments
                        r.skip(4)?; // partition_index
                        let n = r.array()?;
                        r.skip(n.checked_mul(4).ok_or("array too long")?)?; // broker_ids
                        r.skip_tagged_fields()?;
                    }
                    for _ in 0..r.array()? {
                        // configs
                        r.string()?;
                        r.nullable_string()?;
                        r.skip_tagged_fields()?;
                    }
                    r.skip_tagged_fields()?;
                    topics.push(Topic {
                        name: Some(name),
                        id: [0; 16],
                        partitions: Vec::new(),
                    });
                }
                topics
            });
        }
        ApiKey::DeleteTopics => {
            out.topics = Some({
                let mut topics = Vec::new();
                if v <= 5 {
                    for _ in 0..r.array()? {
                        topics.push(Topic {
                            name: Some(r.string()?),
                            id: [0; 16],
                            partitions: Vec::new(),
                        });
                    }
                } else {
                    for _ in 0..r.array()? {
                        let name = r.nullable_string()?;
                        let id = r.uuid()?;
                        r.skip_tagged_fields()?;
                        topics.push(Topic {
                            name,
                            id,
                            partitions: Vec::new(),
                        });
                    }
                }
                topics
            });
        }
        ApiKey::DescribeGroups | ApiKey::DeleteGroups => {
            out.walked_topics = false;
            for _ in 0..r.array()? {
                out.names.push(r.string()?);
            }
        }
        ApiKey::DeleteRecords => {
            out.topics = r.topics(false, keep, named, |r| {
                let index = r.i32()?;
                r.skip(8)?; // offset
                r.skip_tagged_fields()?;
                Ok(index)
            })?;
        }
        ApiKey::ElectLeaders => {
            if v >= 1 {
                r.skip(1)?; // election_type
            }
            out.topics = r.topics(true, keep, named, |r| r.i32())?;
        }
        ApiKey::DescribeProducers => {
            out.topics = r.topics(false, keep, named, |r| r.i32())?;
        }
        ApiKey::CreatePartitions | ApiKey::DescribeTopicPartitions => {
            let mut topics = Vec::new();
            for _ in 0..r.array()? {
                let name = r.string()?;
                if key == ApiKey::CreatePartitions {
                    r.skip(4)?; // count
                    if let Some(n) = r.nullable_array()? {
                        for _ in 0..n {
                            let ids = r.array()?; // broker_ids
                            r.skip(ids.checked_mul(4).ok_or("array too long")?)?;
                            r.skip_tagged_fields()?;
                        }
                    }
                }
                r.skip_tagged_fields()?;
                topics.push(Topic {
                    name: Some(name),
                    id: [0; 16],
                    partitions: Vec::new(),
                });
            }
            out.topics = Some(topics);
        }
        ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            out.walked_topics = false;
            for _ in 0..r.array()? {
                let kind = r.take(1)?[0] as i8;
                let name = r.string()?;
                for _ in 0..r.array()? {
                    r.string()?; // name
                    if key == ApiKey::IncrementalAlterConfigs {
                        r.skip(1)?; // config_operation
                    }
                    r.nullable_string()?; // value
                    r.skip_tagged_fields()?;
                }
                r.skip_tagged_fields()?;
                out.resources.push((kind, name));
            }
        }
        ApiKey::CreateAcls | ApiKey::DeleteAcls => {
            out.walked_topics = false;
            out.items = r.array()?; // creations or filters: one result each
        }
        ApiKey::DescribeTransactions | ApiKey::ConsumerGroupDescribe => {
            out.walked_topics = false;
            for _ in 0..r.array()? {
                out.names.push(r.string()?); // transactional_ids or group_ids
            }
        }
        ApiKey::AddPartitionsToTxn if v <= 3 => {
            r.string()?; // v3_and_below_transactional_id
            r.skip(8 + 2)?; // v3_and_below_producer_id, v3_and_below_producer_epoch
            out.topics = r.topics(false, keep, named, |r| r.i32())?;
        }
        _ => return Err("no body walker for this api key and version"),
    }
    Ok(out)
}

/// The unit tests, on `kafka-protocol` 0.17 (Kafka 4.x) messages.
#[cfg(test)]
mod tests {
    use kafka_protocol as kp;

    fn produce_request_topic_id(
        t: kp::messages::produce_request::TopicProduceData,
        id: uuid::Uuid,
    ) -> kp::messages::produce_request::TopicProduceData {
        t.with_topic_id(id)
    }

    fn produce_response_topic_id(
        t: &kp::messages::produce_response::TopicProduceResponse,
    ) -> uuid::Uuid {
        t.topic_id
    }

    include!("kafka_tests.rs");

    #[test]
    fn share_group_apis_and_list_config_resources_get_a_top_level_error() {
        use kp::messages::*;
        macro_rules! every_version {
            ($key:expr, $req:ty, $resp:ty, $code:expr) => {
                for version in versions($key) {
                    let (_, deny) = parse_and_deny($key, version, &<$req>::default());
                    let resp: $resp = decode_response($key, version, &deny);
                    assert_eq!(resp.error_code, $code, "{:?} v{version}", $key);
                }
            };
        }
        every_version!(
            ApiKey::ShareGroupHeartbeat,
            ShareGroupHeartbeatRequest,
            ShareGroupHeartbeatResponse,
            30
        );
        every_version!(
            ApiKey::ShareFetch,
            ShareFetchRequest,
            ShareFetchResponse,
            30
        );
        every_version!(
            ApiKey::ShareAcknowledge,
            ShareAcknowledgeRequest,
            ShareAcknowledgeResponse,
            30
        );
        every_version!(
            ApiKey::ListConfigResources,
            ListConfigResourcesRequest,
            ListConfigResourcesResponse,
            31
        );
    }
}

/// The same unit tests on `kafka-protocol` 0.15 (Kafka 3.9) messages, whose older versions
/// take Ward's legacy path.
#[cfg(test)]
mod tests_legacy {
    use kafka_protocol_legacy as kp;

    fn produce_request_topic_id(
        _: kp::messages::produce_request::TopicProduceData,
        _: uuid::Uuid,
    ) -> kp::messages::produce_request::TopicProduceData {
        unreachable!("0.15 has no Produce v13")
    }

    fn produce_response_topic_id(
        _: &kp::messages::produce_response::TopicProduceResponse,
    ) -> uuid::Uuid {
        unreachable!("0.15 has no Produce v13")
    }

    include!("kafka_tests.rs");

    /// ControlledShutdown v0, the one request with header v0, is gone from Kafka 4.0.
    #[test]
    fn header_v0_has_no_client_id() {
        let frame = encode_request(
            ApiKey::ControlledShutdown,
            0,
            &ControlledShutdownRequest::default(),
        );
        let req = parse_request(&frame).unwrap();
        assert_eq!(req.client_id, None);
        assert_eq!(req.header_len, 8);
        assert!(req.topics.is_empty());
        assert_eq!(deny_response(&req, &frame), None);
    }
}
