//! Kafka: the API-key names Cilium policies use, the topic/role key sets of Cilium's Kafka
//! matcher (docs/policy-semantics.md §4), request framing and parsing, and the deny responses a
//! proxy injects (§4.3), for every API version `kafka-protocol` knows, flexible versions included.
//!
//! Request headers are decoded and deny responses encoded with `kafka-protocol`. Request *bodies*
//! are walked by this module instead: `kafka-protocol` 0.15 sizes each `Vec` from the array length
//! on the wire before decoding a single element, so a 10-byte request declaring 2^31 topics would
//! make it allocate gigabytes and abort the proxy. The walker reads only the fields up to and
//! including the topic list (following `kafka-protocol`'s schemas, which the tests cross-check by
//! encoding every version with `kafka-protocol` and walking it back), checks every count against
//! the bytes left and [`MAX_ARRAY_LEN`], and allocates only for what it actually read.

use bytes::BufMut;
use kafka_protocol::messages::{
    fetch_response, find_coordinator_response, list_offsets_response, metadata_response,
    offset_commit_response, offset_fetch_response, produce_response, ApiKey, BrokerId, GroupId,
    RequestHeader, ResponseHeader, TopicName,
};
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
    ("listclientmetricsresources", 74),
    ("describetopicpartitions", 75),
    ("addraftvoter", 80),
    ("removeraftvoter", 81),
    ("updateraftvoter", 82),
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
    let (api_key, version, header, header_len) = parse_header(frame)?;
    let mut request = KafkaRequest {
        api_key,
        api_version: version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|c| c.to_string()),
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

/// The versions of `api_key` Ward can inspect: what `kafka-protocol` decodes, without the
/// versions that name topics only by ID where Ward does not resolve IDs yet (Produce v13+,
/// OffsetCommit v10+; Fetch v13+ IDs are resolved through the proxy's topic-ID map).
/// `None` for keys `kafka-protocol` does not know.
pub fn inspectable_versions(api_key: i16) -> Option<(i16, i16)> {
    let key = ApiKey::try_from(api_key).ok()?;
    let range = key.valid_versions();
    // SaslHandshake v0 is followed by raw SASL tokens without Kafka framing, which Ward
    // cannot judge; v1 wraps them in SaslAuthenticate requests.
    let min = if key == ApiKey::SaslHandshake {
        range.min.max(1)
    } else {
        range.min
    };
    let cap = match key {
        ApiKey::Produce => 12,
        ApiKey::OffsetCommit => 9,
        // v4+ batches transactions for broker-to-broker verification; clients send v0–3.
        ApiKey::AddPartitionsToTxn => 3,
        _ => i16::MAX,
    };
    Some((min, range.max.min(cap)))
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
        || matches!(api_key, 15 | 19 | 20 | 22 | 23 | 24 | 28 | 32 | 42)
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
        ApiKey::CreateTopics | ApiKey::DeleteTopics | ApiKey::OffsetForLeaderEpoch => {
            TOPIC_AUTHORIZATION_FAILED
        }
        ApiKey::DescribeGroups | ApiKey::DeleteGroups | ApiKey::TxnOffsetCommit => {
            GROUP_AUTHORIZATION_FAILED
        }
        ApiKey::DescribeConfigs => transactional()?
            .resources
            .first()
            .map_or(CLUSTER_AUTHORIZATION_FAILED, |&(kind, _)| {
                config_resource_error(kind)
            }),
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

fn parse_header(frame: &[u8]) -> Result<(i16, i16, RequestHeader, usize), KafkaError> {
    if frame.len() < MIN_REQUEST_LEN {
        return Err(KafkaError::TooShort(frame.len()));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let key = ApiKey::try_from(api_key).map_err(|()| KafkaError::UnknownApiKey(api_key))?;
    let range = key.valid_versions();
    if version < range.min || version > range.max {
        return Err(KafkaError::UnsupportedVersion { api_key, version });
    }
    let header_version = key.request_header_version(version);
    let mut rest = frame;
    let mut header = RequestHeader::decode(&mut rest, header_version)
        .map_err(|_| KafkaError::MalformedHeader { api_key, version })?;
    if header_version == 0 {
        header.client_id = None;
    }
    Ok((api_key, version, header, frame.len() - rest.len()))
}

/// Builds the response a denied request gets (docs/policy-semantics.md §4.3): the request's own
/// response type, same correlation id, `TOPIC_AUTHORIZATION_FAILED` on every topic/partition
/// (Produce, Fetch, ListOffsets, OffsetCommit, OffsetFetch), on every requested topic with no
/// brokers (Metadata), or at the top level / per coordinator key (FindCoordinator). Returns the
/// whole frame including the size prefix; `None` for other keys, for Produce with `acks = 0` (the
/// client expects no response), or if `frame` does not parse.
pub fn deny_response(req: &KafkaRequest, frame: &[u8]) -> Option<Vec<u8>> {
    use kafka_protocol::messages as m;
    let key = ApiKey::try_from(req.api_key).ok()?;
    if req.no_response {
        return None;
    }
    let code = deny_error_code(req, frame)?;
    let (_, _, _, header_len) = parse_header(frame).ok()?;
    let version = req.api_version;
    let header = ResponseHeader::default().with_correlation_id(req.correlation_id);
    let header_version = key.response_header_version(version);
    let mut out = Vec::with_capacity(256);
    out.put_i32(0);
    header.encode(&mut out, header_version).ok()?;
    // Keys answered with a top-level error code alone.
    macro_rules! top_level {
        ($t:ty) => {
            <$t>::default()
                .with_error_code(code)
                .encode(&mut out, version)
        };
    }
    let generic = match key {
        ApiKey::JoinGroup => Some(top_level!(m::JoinGroupResponse)),
        ApiKey::Heartbeat => Some(top_level!(m::HeartbeatResponse)),
        ApiKey::LeaveGroup => Some(top_level!(m::LeaveGroupResponse)),
        ApiKey::SyncGroup => Some(top_level!(m::SyncGroupResponse)),
        ApiKey::ListGroups => Some(top_level!(m::ListGroupsResponse)),
        ApiKey::OffsetDelete => Some(top_level!(m::OffsetDeleteResponse)),
        ApiKey::ConsumerGroupHeartbeat => Some(top_level!(m::ConsumerGroupHeartbeatResponse)),
        ApiKey::InitProducerId => Some(
            m::InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(m::ProducerId(-1))
                .with_producer_epoch(-1)
                .encode(&mut out, version),
        ),
        ApiKey::AddOffsetsToTxn => Some(top_level!(m::AddOffsetsToTxnResponse)),
        ApiKey::EndTxn => Some(top_level!(m::EndTxnResponse)),
        ApiKey::DescribeAcls => Some(top_level!(m::DescribeAclsResponse)),
        ApiKey::DescribeCluster => Some(top_level!(m::DescribeClusterResponse)),
        ApiKey::ListTransactions => Some(top_level!(m::ListTransactionsResponse)),
        ApiKey::GetTelemetrySubscriptions => Some(top_level!(m::GetTelemetrySubscriptionsResponse)),
        ApiKey::PushTelemetry => Some(top_level!(m::PushTelemetryResponse)),
        ApiKey::CreateDelegationToken => Some(top_level!(m::CreateDelegationTokenResponse)),
        ApiKey::RenewDelegationToken => Some(top_level!(m::RenewDelegationTokenResponse)),
        ApiKey::ExpireDelegationToken => Some(top_level!(m::ExpireDelegationTokenResponse)),
        ApiKey::DescribeDelegationToken => Some(top_level!(m::DescribeDelegationTokenResponse)),
        ApiKey::AlterPartitionReassignments => {
            Some(top_level!(m::AlterPartitionReassignmentsResponse))
        }
        ApiKey::ListPartitionReassignments => {
            Some(top_level!(m::ListPartitionReassignmentsResponse))
        }
        ApiKey::DescribeClientQuotas => Some(top_level!(m::DescribeClientQuotasResponse)),
        ApiKey::DescribeUserScramCredentials => {
            Some(top_level!(m::DescribeUserScramCredentialsResponse))
        }
        ApiKey::DescribeQuorum => Some(top_level!(m::DescribeQuorumResponse)),
        ApiKey::UpdateFeatures => Some(top_level!(m::UpdateFeaturesResponse)),
        _ => None,
    };
    if let Some(encoded) = generic {
        encoded.ok()?;
        let size = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
        out[..FRAME_PREFIX_LEN].copy_from_slice(&size.to_be_bytes());
        return Some(out);
    }
    let body = walk_body(req.api_key, req.api_version, &frame[header_len..], true).ok()?;
    let encoded = match key {
        ApiKey::Produce => deny_produce(&body).encode(&mut out, version),
        ApiKey::Fetch => deny_fetch(&body, version).encode(&mut out, version),
        ApiKey::ListOffsets => deny_list_offsets(&body).encode(&mut out, version),
        ApiKey::Metadata => deny_metadata(&body, version).encode(&mut out, version),
        ApiKey::OffsetCommit => deny_offset_commit(&body).encode(&mut out, version),
        ApiKey::OffsetFetch => deny_offset_fetch(&body, version).encode(&mut out, version),
        ApiKey::FindCoordinator => {
            deny_find_coordinator(&body, version, code).encode(&mut out, version)
        }
        ApiKey::AddPartitionsToTxn => deny_add_partitions_to_txn(&body).encode(&mut out, version),
        ApiKey::OffsetForLeaderEpoch => m::OffsetForLeaderEpochResponse::default()
            .with_topics(
                topics_of(&body)
                    .iter()
                    .map(|t| {
                        m::offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                            .with_topic(topic_name(t.name))
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|&p| {
                                        m::offset_for_leader_epoch_response::EpochEndOffset::default()
                                            .with_partition(p)
                                            .with_error_code(code)
                                            .with_leader_epoch(-1)
                                            .with_end_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::TxnOffsetCommit => m::TxnOffsetCommitResponse::default()
            .with_topics(
                topics_of(&body)
                    .iter()
                    .map(|t| {
                        m::txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                            .with_name(topic_name(t.name))
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|&p| {
                                        m::txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DescribeConfigs => m::DescribeConfigsResponse::default()
            .with_results(
                body.resources
                    .iter()
                    .map(|&(kind, name)| {
                        m::describe_configs_response::DescribeConfigsResult::default()
                            .with_error_code(config_resource_error(kind))
                            .with_resource_type(kind)
                            .with_resource_name(StrBytes::from_string(name.to_owned()))
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::CreateTopics => m::CreateTopicsResponse::default()
            .with_topics(
                topics_of(&body)
                    .iter()
                    .map(|t| {
                        m::create_topics_response::CreatableTopicResult::default()
                            .with_name(topic_name(t.name))
                            .with_error_code(code)
                            .with_num_partitions(-1)
                            .with_replication_factor(-1)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DeleteTopics => m::DeleteTopicsResponse::default()
            .with_responses(
                topics_of(&body)
                    .iter()
                    .map(|t| {
                        m::delete_topics_response::DeletableTopicResult::default()
                            .with_name(t.name.map(|n| topic_name(Some(n))))
                            .with_topic_id(uuid::Uuid::from_bytes(t.id))
                            .with_error_code(code)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DescribeGroups => m::DescribeGroupsResponse::default()
            .with_groups(
                body.names
                    .iter()
                    .map(|g| {
                        m::describe_groups_response::DescribedGroup::default()
                            .with_group_id(GroupId(StrBytes::from_string((*g).to_owned())))
                            .with_error_code(code)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DeleteGroups => m::DeleteGroupsResponse::default()
            .with_results(
                body.names
                    .iter()
                    .map(|g| {
                        m::delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(GroupId(StrBytes::from_string((*g).to_owned())))
                            .with_error_code(code)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        _ => return None,
    };
    encoded.ok()?;
    let size = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
    out[..FRAME_PREFIX_LEN].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

fn topic_name(name: Option<&str>) -> TopicName {
    TopicName(StrBytes::from_string(name.unwrap_or_default().to_owned()))
}

fn topics_of<'b, 'a>(body: &'b Body<'a>) -> &'b [Topic<'a>] {
    body.topics.as_deref().unwrap_or_default()
}

fn deny_produce(body: &Body<'_>) -> kafka_protocol::messages::ProduceResponse {
    use produce_response::*;
    ProduceResponse::default().with_responses(
        topics_of(body)
            .iter()
            .map(|t| {
                TopicProduceResponse::default()
                    .with_name(topic_name(t.name))
                    .with_partition_responses(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                PartitionProduceResponse::default()
                                    .with_index(p)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                    .with_base_offset(-1)
                                    .with_log_append_time_ms(-1)
                                    .with_log_start_offset(-1)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn deny_fetch(body: &Body<'_>, version: i16) -> kafka_protocol::messages::FetchResponse {
    use fetch_response::*;
    FetchResponse::default().with_responses(
        topics_of(body)
            .iter()
            .map(|t| {
                let topic = FetchableTopicResponse::default().with_partitions(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            PartitionData::default()
                                .with_partition_index(p)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                .with_high_watermark(-1)
                        })
                        .collect(),
                );
                if version >= 13 {
                    topic.with_topic_id(uuid::Uuid::from_bytes(t.id))
                } else {
                    topic.with_topic(topic_name(t.name))
                }
            })
            .collect(),
    )
}

fn deny_list_offsets(body: &Body<'_>) -> kafka_protocol::messages::ListOffsetsResponse {
    use list_offsets_response::*;
    ListOffsetsResponse::default().with_topics(
        topics_of(body)
            .iter()
            .map(|t| {
                ListOffsetsTopicResponse::default()
                    .with_name(topic_name(t.name))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(p)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn deny_metadata(body: &Body<'_>, version: i16) -> kafka_protocol::messages::MetadataResponse {
    use metadata_response::*;
    MetadataResponse::default().with_topics(
        topics_of(body)
            .iter()
            .map(|t| {
                let topic = MetadataResponseTopic::default()
                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                    .with_name(t.name.map(|n| topic_name(Some(n))));
                if version >= 10 {
                    topic.with_topic_id(uuid::Uuid::from_bytes(t.id))
                } else {
                    topic
                }
            })
            .collect(),
    )
}

fn deny_offset_commit(body: &Body<'_>) -> kafka_protocol::messages::OffsetCommitResponse {
    use offset_commit_response::*;
    OffsetCommitResponse::default().with_topics(
        topics_of(body)
            .iter()
            .map(|t| {
                OffsetCommitResponseTopic::default()
                    .with_name(topic_name(t.name))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn deny_offset_fetch(
    body: &Body<'_>,
    version: i16,
) -> kafka_protocol::messages::OffsetFetchResponse {
    use offset_fetch_response::*;
    if version >= 8 {
        return OffsetFetchResponse::default().with_groups(
            body.groups
                .iter()
                .map(|g| {
                    let group = OffsetFetchResponseGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(g.id.to_owned())));
                    match &g.topics {
                        None => group.with_error_code(TOPIC_AUTHORIZATION_FAILED),
                        Some(topics) => group.with_topics(
                            topics
                                .iter()
                                .map(|t| {
                                    OffsetFetchResponseTopics::default()
                                        .with_name(topic_name(t.name))
                                        .with_partitions(
                                            t.partitions
                                                .iter()
                                                .map(|&p| {
                                                    OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(p)
                                                        .with_committed_offset(-1)
                                                        .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ),
                    }
                })
                .collect(),
        );
    }
    let response = OffsetFetchResponse::default().with_topics(
        topics_of(body)
            .iter()
            .map(|t| {
                OffsetFetchResponseTopic::default()
                    .with_name(topic_name(t.name))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    if version >= 2 {
        // The top-level error exists from v2; it is the only way to deny "all topics" (null).
        response.with_error_code(TOPIC_AUTHORIZATION_FAILED)
    } else {
        response
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

fn deny_add_partitions_to_txn(
    body: &Body<'_>,
) -> kafka_protocol::messages::AddPartitionsToTxnResponse {
    use kafka_protocol::messages::add_partitions_to_txn_response::*;
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
        topics_of(body)
            .iter()
            .map(|t| {
                AddPartitionsToTxnTopicResult::default()
                    .with_name(topic_name(t.name))
                    .with_results_by_partition(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_partition_error_code(TOPIC_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn deny_find_coordinator(
    body: &Body<'_>,
    version: i16,
    code: i16,
) -> kafka_protocol::messages::FindCoordinatorResponse {
    use find_coordinator_response::*;
    if version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(
            body.coordinator_keys
                .iter()
                .map(|k| {
                    Coordinator::default()
                        .with_key(StrBytes::from_string((*k).to_owned()))
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(code)
                })
                .collect(),
        );
    }
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(BrokerId(-1))
        .with_port(-1)
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
    /// DescribeConfigs: the resources (type, name).
    resources: Vec<(i8, &'a str)>,
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

fn walk(api_key: i16, v: i16, body: &[u8], keep: bool) -> Walk<Body<'_>> {
    let key = ApiKey::try_from(api_key).map_err(|()| "unknown api key")?;
    let flexible = key.request_header_version(v) >= 2;
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
            out.topics = r.topics(false, keep, named, |r| {
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
        ApiKey::AddPartitionsToTxn if v <= 3 => {
            r.string()?; // v3_and_below_transactional_id
            r.skip(8 + 2)?; // v3_and_below_producer_id, v3_and_below_producer_epoch
            out.topics = r.topics(false, keep, named, |r| r.i32())?;
        }
        _ => return Err("no body walker for this api key and version"),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                assert_eq!(api_key_name(key), None, "{key}");
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
        assert_eq!(api_key_name(76), None);
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
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::*;

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
        use kafka_protocol::messages::api_versions_response::ApiVersion;
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
        assert_eq!(got, vec![(0, 3, 11), (1, 4, 17), (3, 0, 12), (18, 0, 4)]);
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

    fn versions(key: ApiKey) -> std::ops::RangeInclusive<i16> {
        let range = key.valid_versions();
        range.min..=range.max
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
            (b"\x00\x4c\0\0\0\0\0\x01", KafkaError::UnknownApiKey(76)),
            (b"\xff\xff\0\0\0\0\0\x01", KafkaError::UnknownApiKey(-1)),
            (
                b"\0\0\0\x0c\0\0\0\x01",
                KafkaError::UnsupportedVersion {
                    api_key: 0,
                    version: 12,
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
        // A non-topic kind on a flexible version parses its header only.
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
                        .map(|t| {
                            TopicProduceData::default()
                                .with_name(name(t))
                                .with_partition_data(
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
            assert_eq!(req.topics, want_topics(), "v{version}");
            assert!(!req.no_response);
            let resp: ProduceResponse = decode_response(ApiKey::Produce, version, &deny);
            assert_eq!(resp.responses.len(), 2, "v{version}");
            for (t, want) in resp.responses.iter().zip(TOPICS) {
                assert_eq!(t.name.0.as_str(), want);
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
        use kafka_protocol::messages::*;
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
        let frame = encode_request(ApiKey::AlterConfigs, 2, &AlterConfigsRequest::default());
        let req = parse_request(&frame).unwrap();
        assert_eq!(deny_error_code(&req, &frame), None);
        assert_eq!(deny_response(&req, &frame), None);
    }

    #[test]
    fn offset_for_leader_epoch_names_its_topics_and_is_denied_per_partition() {
        use kafka_protocol::messages::offset_for_leader_epoch_request::*;
        use kafka_protocol::messages::*;
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
        use kafka_protocol::messages::*;
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
        use kafka_protocol::messages::*;
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
        use kafka_protocol::messages::metadata_response::*;
        use kafka_protocol::messages::*;
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
        use kafka_protocol::messages::*;
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
        use kafka_protocol::messages::*;
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
        use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
        use kafka_protocol::messages::*;
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
}
