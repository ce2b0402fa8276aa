//! DNS: name normalisation for policy matching, TCP framing, query parsing, deny responses and
//! the answer facts that feed FQDN learning (docs/policy-semantics.md §5), on top of
//! `hickory-proto`.
//!
//! Names are compared lower-cased with a trailing dot (Cilium's dnsproxy does
//! `strings.ToLower(dns.Fqdn(name))`); the original case is kept in what is forwarded. Before any
//! message is handed to `hickory-proto`, its section counts are checked against the message
//! length, so a 12-byte header cannot make the decoder reserve room for 65535 records.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData};

use crate::Status;

/// Largest DNS message on any transport (TCP length prefix is a `u16`).
pub const MAX_MESSAGE_LEN: usize = 65_535;
/// Largest DNS message carried by one UDP datagram (IPv4 maximum UDP payload); size the proxy's
/// receive buffer with this so an answer is never silently cut.
pub const MAX_UDP_MESSAGE: usize = 65_507;
/// UDP payload a client without EDNS can receive (RFC 1035 §4.2.1).
pub const DEFAULT_UDP_PAYLOAD: u16 = 512;
/// Fixed size of the DNS header.
pub const HEADER_LEN: usize = 12;
/// Size of the TCP length prefix (RFC 1035 §4.2.2).
pub const TCP_LENGTH_PREFIX: usize = 2;
/// Most questions accepted in one message. Real resolvers send exactly one; Cilium checks only
/// the first, so a proxy should refuse queries whose `question_count` is not 1.
pub const MAX_QUESTIONS: u16 = 8;
/// Longest CNAME chain followed from the query name when collecting answer addresses.
pub const MAX_CNAME_CHAIN: usize = 16;
/// Smallest encoded question: root name (1) + type (2) + class (2).
const MIN_QUESTION_LEN: usize = 5;
/// Smallest encoded resource record: root name (1) + type, class, TTL, rdlength (10).
const MIN_RECORD_LEN: usize = 11;

/// Response code of a denied query (`--tofqdns-dns-reject-response-code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyRcode {
    /// `REFUSED` (5), Cilium's default.
    #[default]
    Refused,
    /// `NXDOMAIN` (3), Cilium's `nameError` option.
    NameError,
}

impl DenyRcode {
    /// The numeric rcode.
    pub fn code(self) -> u16 {
        match self {
            DenyRcode::Refused => 5,
            DenyRcode::NameError => 3,
        }
    }
}

/// Numeric rcode `NOERROR`.
pub const RCODE_NOERROR: u16 = 0;

/// Why a DNS message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Shorter than the 12-byte header.
    #[error("DNS message of {0} bytes is shorter than its header")]
    TooShort(usize),
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("DNS message of {0} bytes exceeds {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// More questions than [`MAX_QUESTIONS`].
    #[error("DNS message has {0} questions (limit {MAX_QUESTIONS})")]
    TooManyQuestions(u16),
    /// The section counts cannot fit in the message.
    #[error("DNS section counts (qd {qd}, an {an}, ns {ns}, ar {ar}) do not fit in {len} bytes")]
    CountsExceedLength {
        /// Question count.
        qd: u16,
        /// Answer count.
        an: u16,
        /// Authority count.
        ns: u16,
        /// Additional count.
        ar: u16,
        /// Message length.
        len: usize,
    },
    /// A query without a question.
    #[error("DNS query has no question")]
    NoQuestion,
    /// A response where a query was expected, or the reverse.
    #[error("expected a DNS {expected}, got a {got}")]
    WrongDirection {
        /// What the caller expected.
        expected: &'static str,
        /// What the QR bit said.
        got: &'static str,
    },
    /// `hickory-proto` could not decode the message.
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    /// `hickory-proto` could not encode our response (a bug on our side).
    #[error("could not encode DNS response: {0}")]
    Encode(String),
}

/// The facts of a query that policy and logging need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// Message id.
    pub id: u16,
    /// Opcode (0 = QUERY).
    pub opcode: u8,
    /// Recursion desired.
    pub recursion_desired: bool,
    /// First question's name as received (original case, trailing dot, non-printable bytes
    /// escaped as `\DDD`). Match on [`normalize_name`] of it.
    pub name: String,
    /// First question's type (1 = A, 28 = AAAA, …).
    pub qtype: u16,
    /// First question's class (1 = IN).
    pub qclass: u16,
    /// UDP payload size advertised by an EDNS OPT record.
    pub edns_udp_size: Option<u16>,
    /// Number of questions (see [`MAX_QUESTIONS`]).
    pub question_count: u16,
}

/// The facts of a response that FQDN learning needs (docs/policy-semantics.md §5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerInfo {
    /// Message id.
    pub id: u16,
    /// Response code (0 = NOERROR).
    pub rcode: u16,
    /// The truncation bit (TC): a UDP client will retry over TCP.
    pub truncated: bool,
    /// First question's name as received; `None` when the response echoes no question.
    pub query_name: Option<String>,
    /// Every A/AAAA address of the query name or of a name its CNAME chain reaches, in answer
    /// order, without duplicates.
    pub addresses: Vec<IpAddr>,
    /// Names the CNAME chain went through, in order (as received).
    pub cnames: Vec<String>,
    /// Minimum TTL over the A/AAAA/CNAME records used; `None` when there were none.
    pub min_ttl: Option<u32>,
}

/// Lower-cases `name` and adds the trailing dot; `""` and `"."` are the root `"."`.
pub fn normalize_name(name: &str) -> String {
    if name.is_empty() || name == "." {
        return ".".to_owned();
    }
    let mut out = String::with_capacity(name.len() + 1);
    out.push_str(name);
    out.make_ascii_lowercase();
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// Splits one DNS-over-TCP message off the front of `buf` (2-byte big-endian length prefix).
/// The complete value is the message without its prefix; `consumed` includes the prefix.
pub fn frame_tcp(buf: &[u8]) -> Result<Status<&[u8]>, DnsError> {
    let Some(prefix) = buf.first_chunk::<TCP_LENGTH_PREFIX>() else {
        return Ok(Status::NeedMore);
    };
    let len = usize::from(u16::from_be_bytes(*prefix));
    // A u16 cannot exceed MAX_MESSAGE_LEN; the header check is the one that can fail.
    if len < HEADER_LEN {
        return Err(DnsError::TooShort(len));
    }
    if len > MAX_MESSAGE_LEN {
        return Err(DnsError::TooLong(len));
    }
    match buf.get(TCP_LENGTH_PREFIX..TCP_LENGTH_PREFIX + len) {
        Some(msg) => Ok(Status::Complete(msg, TCP_LENGTH_PREFIX + len)),
        None => Ok(Status::NeedMore),
    }
}

/// Checks the message length and that the header's section counts can fit in it, then decodes.
fn decode(msg: &[u8]) -> Result<Message, DnsError> {
    if msg.len() < HEADER_LEN {
        return Err(DnsError::TooShort(msg.len()));
    }
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(DnsError::TooLong(msg.len()));
    }
    let count = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd > MAX_QUESTIONS {
        return Err(DnsError::TooManyQuestions(qd));
    }
    let min_len = HEADER_LEN
        + usize::from(qd) * MIN_QUESTION_LEN
        + (usize::from(an) + usize::from(ns) + usize::from(ar)) * MIN_RECORD_LEN;
    if min_len > msg.len() {
        return Err(DnsError::CountsExceedLength {
            qd,
            an,
            ns,
            ar,
            len: msg.len(),
        });
    }
    Message::from_vec(msg).map_err(|e| DnsError::Malformed(e.to_string()))
}

fn direction(t: MessageType) -> &'static str {
    match t {
        MessageType::Query => "query",
        MessageType::Response => "response",
    }
}

/// Parses a query (a message with QR=0 and at least one question).
pub fn parse_query(msg: &[u8]) -> Result<DnsQuery, DnsError> {
    let message = decode(msg)?;
    if message.message_type() != MessageType::Query {
        return Err(DnsError::WrongDirection {
            expected: "query",
            got: direction(message.message_type()),
        });
    }
    let question = message.queries().first().ok_or(DnsError::NoQuestion)?;
    Ok(DnsQuery {
        id: message.id(),
        opcode: message.op_code().into(),
        recursion_desired: message.recursion_desired(),
        name: question.name().to_ascii(),
        qtype: question.query_type().into(),
        qclass: question.query_class().into(),
        edns_udp_size: message.extensions().as_ref().map(|e| e.max_payload()),
        // Bounded by MAX_QUESTIONS, which fits u16.
        question_count: u16::try_from(message.queries().len()).unwrap_or(u16::MAX),
    })
}

/// Builds the answer to a denied query: same id and opcode, QR=1, RD copied, RA=1, CD copied,
/// the given rcode, and the first question echoed as received. No EDNS record is added.
pub fn refused_response(query: &[u8], rcode: DenyRcode) -> Result<Vec<u8>, DnsError> {
    let request = decode(query)?;
    if request.message_type() != MessageType::Query {
        return Err(DnsError::WrongDirection {
            expected: "query",
            got: direction(request.message_type()),
        });
    }
    let question: Query = request
        .queries()
        .first()
        .cloned()
        .ok_or(DnsError::NoQuestion)?;
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(request.checking_disabled())
        .set_response_code(match rcode {
            DenyRcode::Refused => ResponseCode::Refused,
            DenyRcode::NameError => ResponseCode::NXDomain,
        })
        .add_query(question);
    response
        .to_vec()
        .map_err(|e| DnsError::Encode(e.to_string()))
}

/// Response codes the proxy answers with itself.
pub mod rcode {
    /// The query could not be understood (no question, several, truncated).
    pub const FORMERR: u8 = 1;
    /// The upstream did not answer in time, or the proxy is overloaded.
    pub const SERVFAIL: u8 = 2;
    /// `NXDOMAIN`.
    pub const NXDOMAIN: u8 = 3;
    /// `REFUSED`.
    pub const REFUSED: u8 = 5;
}

/// The header fields of any message of at least [`HEADER_LEN`] bytes, read without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// QR: the message is a response.
    pub response: bool,
    pub opcode: u8,
    pub truncated: bool,
    pub rcode: u8,
    pub question_count: u16,
}

/// Reads the header of `msg`; `None` when it is shorter than a header.
pub fn header(msg: &[u8]) -> Option<Header> {
    let h = msg.first_chunk::<HEADER_LEN>()?;
    Some(Header {
        id: u16::from_be_bytes([h[0], h[1]]),
        response: h[2] & 0x80 != 0,
        opcode: (h[2] >> 3) & 0x0f,
        truncated: h[2] & 0x02 != 0,
        rcode: h[3] & 0x0f,
        question_count: u16::from_be_bytes([h[4], h[5]]),
    })
}

/// The end of the first question of `msg` (after its type and class), when it is whole.
fn first_question_end(msg: &[u8]) -> Option<usize> {
    let mut at = HEADER_LEN;
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => {
                at += 1;
                break;
            }
            // A compression pointer ends the name.
            l if l & 0xc0 == 0xc0 => {
                at += 2;
                break;
            }
            l if l & 0xc0 != 0 => return None,
            l => at += 1 + usize::from(l),
        }
    }
    let end = at + 4;
    (end <= msg.len()).then_some(end)
}

/// The proxy's own answer to `query` with `rcode`, built from its bytes without decoding it:
/// same id and opcode, QR=1, RD and CD copied, RA=1, and the first question echoed byte for
/// byte when the query has a whole one (otherwise only the header). No EDNS record is added.
/// `None` when `query` is shorter than a header or is itself a response (answering a response
/// could start a loop between two proxies).
pub fn error_response(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let h = header(query)?;
    if h.response {
        return None;
    }
    let question = (h.question_count >= 1)
        .then(|| first_question_end(query))
        .flatten();
    let end = question.unwrap_or(HEADER_LEN);
    let mut out = Vec::with_capacity(end);
    out.extend_from_slice(&query[..end]);
    // QR=1, opcode kept, AA=0, TC=0, RD kept.
    out[2] = 0x80 | (query[2] & 0x78) | (query[2] & 0x01);
    // RA=1, Z=0, AD=0, CD kept, rcode.
    out[3] = 0x80 | (query[3] & 0x10) | (rcode & 0x0f);
    out[4..6].copy_from_slice(&u16::from(question.is_some()).to_be_bytes());
    out[6..12].fill(0);
    Some(out)
}

/// The mnemonic of a query type (`A`, `AAAA`, …; `TYPE65280` for one without a name).
pub fn qtype_name(qtype: u16) -> String {
    hickory_proto::rr::RecordType::from(qtype).to_string()
}

/// The mnemonic of a response code (`NoError`, `Refused`, …).
pub fn rcode_name(rcode: u16) -> &'static str {
    match rcode {
        0 => "NoError",
        1 => "FormErr",
        2 => "ServFail",
        3 => "NXDomain",
        4 => "NotImp",
        5 => "Refused",
        6 => "YXDomain",
        7 => "YXRRSet",
        8 => "NXRRSet",
        9 => "NotAuth",
        10 => "NotZone",
        _ => "Other",
    }
}

/// Extracts what FQDN learning needs from a response: rcode, query name, the A/AAAA addresses of
/// the query name and of every name its CNAME chain reaches (answer section only, owner names
/// compared case-insensitively, chain at most [`MAX_CNAME_CHAIN`] long), and the minimum TTL
/// over the A/AAAA/CNAME records used. Records for names off the chain are ignored: attributing
/// them to the query name would let a server claim addresses for names it was not asked about.
pub fn answer_addresses(resp: &[u8]) -> Result<AnswerInfo, DnsError> {
    let message = decode(resp)?;
    if message.message_type() != MessageType::Response {
        return Err(DnsError::WrongDirection {
            expected: "response",
            got: direction(message.message_type()),
        });
    }
    let query_name = message.queries().first().map(|q| q.name().clone());
    let mut info = AnswerInfo {
        id: message.id(),
        rcode: message.response_code().into(),
        truncated: message.truncated(),
        query_name: query_name.as_ref().map(Name::to_ascii),
        addresses: Vec::new(),
        cnames: Vec::new(),
        min_ttl: None,
    };
    let Some(query_name) = query_name else {
        return Ok(info);
    };
    // Names on the chain so far; a CNAME is followed only from a name already on it, whatever
    // the record order, and each name is visited once (loops end).
    let mut chain: Vec<Name> = vec![query_name];
    let mut used = vec![false; message.answers().len()];
    let mut next = 0;
    while next < chain.len() {
        let owner = chain[next].clone();
        next += 1;
        for (record, used) in message.answers().iter().zip(used.iter_mut()) {
            if *used || !eq_ignore_case(record.name(), &owner) {
                continue;
            }
            let ip = match record.data() {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                RData::CNAME(target) => {
                    if chain.len() <= MAX_CNAME_CHAIN
                        && !chain.iter().any(|n| eq_ignore_case(n, &target.0))
                    {
                        info.cnames.push(target.0.to_ascii());
                        chain.push(target.0.clone());
                    }
                    None
                }
                _ => continue,
            };
            *used = true;
            info.min_ttl = Some(info.min_ttl.map_or(record.ttl(), |t| t.min(record.ttl())));
            if let Some(ip) = ip {
                if !info.addresses.contains(&ip) {
                    info.addresses.push(ip);
                }
            }
        }
    }
    Ok(info)
}

fn eq_ignore_case(a: &Name, b: &Name) -> bool {
    // `Name`'s `PartialEq` is case-insensitive (RFC 4343).
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, OpCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
    use hickory_proto::rr::{DNSClass, Record, RecordType};
    use std::str::FromStr;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn query_bytes(qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0xbeef)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name(qname), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn error_responses_echo_the_question_byte_for_byte() {
        let q = query_bytes("WwW.Example.ORG.", RecordType::AAAA, Some(1232));
        let r = error_response(&q, rcode::REFUSED).unwrap();
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.id(), 0xbeef);
        assert_eq!(m.message_type(), MessageType::Response);
        assert_eq!(m.response_code(), ResponseCode::Refused);
        assert!(m.recursion_desired());
        assert_eq!(m.queries().len(), 1);
        assert_eq!(m.queries()[0].name().to_ascii(), "WwW.Example.ORG.");
        assert_eq!(m.queries()[0].query_type(), RecordType::AAAA);
        assert!(m.answers().is_empty() && m.extensions().is_none());
        // No whole question: the header alone, with FORMERR.
        let r = error_response(&q[..20], rcode::FORMERR).unwrap();
        assert_eq!(r.len(), HEADER_LEN);
        let h = header(&r).unwrap();
        assert_eq!(
            (h.id, h.response, h.rcode, h.question_count),
            (0xbeef, true, 1, 0)
        );
        // Too short, or a response: no answer.
        assert!(error_response(&q[..11], rcode::FORMERR).is_none());
        assert!(error_response(&r, rcode::FORMERR).is_none());
    }

    #[test]
    fn names_types_and_rcodes() {
        assert_eq!(qtype_name(1), "A");
        assert_eq!(qtype_name(28), "AAAA");
        assert_eq!(rcode_name(5), "Refused");
        assert_eq!(rcode_name(3), "NXDomain");
    }

    #[test]
    fn normalises_names() {
        let cases = [
            ("", "."),
            (".", "."),
            ("Cilium.IO", "cilium.io."),
            ("cilium.io.", "cilium.io."),
            ("API.github.com.", "api.github.com."),
            ("_sip._tcp.X", "_sip._tcp.x."),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_name(input), want, "{input:?}");
        }
    }

    #[test]
    fn frames_tcp() {
        type Want<'a> = Result<Status<&'a [u8]>, DnsError>;
        let msg = [7u8; 12];
        let mut framed = vec![0, 12];
        framed.extend_from_slice(&msg);
        framed.push(0xff); // start of the next message
        let cases: &[(&[u8], Want<'_>)] = &[
            (&[], Ok(Status::NeedMore)),
            (&[0], Ok(Status::NeedMore)),
            (&[0, 12, 7, 7], Ok(Status::NeedMore)),
            (&framed, Ok(Status::Complete(&msg, 14))),
            (&[0, 0], Err(DnsError::TooShort(0))),
            (&[0, 11], Err(DnsError::TooShort(11))),
            (&[0xff, 0xff], Ok(Status::NeedMore)),
        ];
        for (buf, want) in cases {
            assert_eq!(&frame_tcp(buf), want, "{buf:?}");
        }
    }

    #[test]
    fn parses_queries() {
        let q = parse_query(&query_bytes("WWW.Cilium.io.", RecordType::AAAA, Some(1232))).unwrap();
        assert_eq!(
            q,
            DnsQuery {
                id: 0xbeef,
                opcode: 0,
                recursion_desired: true,
                name: "WWW.Cilium.io.".into(),
                qtype: 28,
                qclass: 1,
                edns_udp_size: Some(1232),
                question_count: 1,
            }
        );
        let q = parse_query(&query_bytes("example.com.", RecordType::A, None)).unwrap();
        assert_eq!((q.qtype, q.edns_udp_size), (1, None));
        assert_eq!(normalize_name(&q.name), "example.com.");
    }

    #[test]
    fn rejects_bad_queries() {
        let good = query_bytes("example.com.", RecordType::A, None);
        let mut too_many_q = good.clone();
        too_many_q[4..6].copy_from_slice(&9u16.to_be_bytes());
        let mut huge_counts = good.clone();
        huge_counts[6..8].copy_from_slice(&u16::MAX.to_be_bytes());
        let mut no_question = good[..HEADER_LEN].to_vec();
        no_question[4..6].copy_from_slice(&0u16.to_be_bytes());
        let mut response = good.clone();
        response[2] |= 0x80;
        let truncated = good[..good.len() - 2].to_vec();
        type Check = fn(&DnsError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (vec![0; 5], |e| matches!(e, DnsError::TooShort(5))),
            (vec![0; MAX_MESSAGE_LEN + 1], |e| {
                matches!(e, DnsError::TooLong(_))
            }),
            (too_many_q, |e| matches!(e, DnsError::TooManyQuestions(9))),
            (huge_counts, |e| {
                matches!(e, DnsError::CountsExceedLength { an: u16::MAX, .. })
            }),
            (no_question, |e| matches!(e, DnsError::NoQuestion)),
            (response, |e| matches!(e, DnsError::WrongDirection { .. })),
            (truncated, |e| matches!(e, DnsError::Malformed(_))),
        ];
        for (i, (msg, check)) in cases.iter().enumerate() {
            let err = parse_query(msg).unwrap_err();
            assert!(check(&err), "case {i}: {err:?}");
        }
    }

    #[test]
    fn builds_refusals() {
        let query = query_bytes("Secret.Example.com.", RecordType::A, Some(4096));
        for (rcode, code) in [(DenyRcode::Refused, 5u16), (DenyRcode::NameError, 3)] {
            let bytes = refused_response(&query, rcode).unwrap();
            let m = Message::from_vec(&bytes).unwrap();
            assert_eq!(m.id(), 0xbeef);
            assert_eq!(m.message_type(), MessageType::Response);
            assert!(m.recursion_desired());
            assert!(m.recursion_available());
            assert_eq!(u16::from(m.response_code()), code);
            assert_eq!(m.queries().len(), 1);
            assert_eq!(m.queries()[0].name().to_ascii(), "Secret.Example.com.");
            assert_eq!(m.queries()[0].query_type(), RecordType::A);
            assert!(m.answers().is_empty());
            let info = answer_addresses(&bytes).unwrap();
            assert_eq!(info.rcode, code);
        }
        // RD=0 is copied too.
        let mut no_rd = query.clone();
        no_rd[2] &= !0x01;
        let m = Message::from_vec(&refused_response(&no_rd, DenyRcode::Refused).unwrap()).unwrap();
        assert!(!m.recursion_desired());
    }

    fn record(owner: &str, ttl: u32, data: RData) -> Record {
        let mut r = Record::from_rdata(name(owner), ttl, data);
        r.set_dns_class(DNSClass::IN);
        r
    }

    fn response(qname: &str, answers: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7)
            .set_message_type(MessageType::Response)
            .set_recursion_available(true)
            .add_query(Query::query(name(qname), RecordType::A))
            .add_answers(answers);
        m.to_vec().unwrap()
    }

    #[test]
    fn collects_answers_through_cname_chains() {
        let a = |s: &str| RData::A(A::from_str(s).unwrap());
        let aaaa = |s: &str| RData::AAAA(AAAA::from_str(s).unwrap());
        let cname = |s: &str| RData::CNAME(CNAME(name(s)));
        struct Case {
            what: &'static str,
            answers: Vec<Record>,
            want_ips: &'static [&'static str],
            want_ttl: Option<u32>,
        }
        let cases = vec![
            Case {
                what: "plain A",
                answers: vec![
                    record("api.example.com.", 300, a("10.0.0.1")),
                    record("api.example.com.", 60, a("10.0.0.2")),
                ],
                want_ips: &["10.0.0.1", "10.0.0.2"],
                want_ttl: Some(60),
            },
            Case {
                what: "case-insensitive owner, AAAA",
                answers: vec![record("API.Example.COM.", 30, aaaa("2001:db8::1"))],
                want_ips: &["2001:db8::1"],
                want_ttl: Some(30),
            },
            Case {
                what: "CNAME chain, CNAME TTL is the minimum",
                answers: vec![
                    record("api.example.com.", 20, cname("edge.cdn.net.")),
                    record("edge.cdn.net.", 100, cname("pop1.cdn.net.")),
                    record("pop1.cdn.net.", 50, a("192.0.2.7")),
                ],
                want_ips: &["192.0.2.7"],
                want_ttl: Some(20),
            },
            Case {
                what: "chain out of order",
                answers: vec![
                    record("pop1.cdn.net.", 50, a("192.0.2.7")),
                    record("api.example.com.", 80, cname("pop1.cdn.net.")),
                ],
                want_ips: &["192.0.2.7"],
                want_ttl: Some(50),
            },
            Case {
                what: "records off the chain are ignored",
                answers: vec![
                    record("api.example.com.", 80, a("192.0.2.1")),
                    record("evil.example.org.", 5, a("203.0.113.9")),
                ],
                want_ips: &["192.0.2.1"],
                want_ttl: Some(80),
            },
            Case {
                what: "CNAME loop ends",
                answers: vec![
                    record("api.example.com.", 10, cname("b.example.com.")),
                    record("b.example.com.", 10, cname("api.example.com.")),
                ],
                want_ips: &[],
                want_ttl: Some(10),
            },
            Case {
                what: "other types ignored",
                answers: vec![record(
                    "api.example.com.",
                    1,
                    RData::TXT(TXT::new(vec!["x".into()])),
                )],
                want_ips: &[],
                want_ttl: None,
            },
        ];
        for case in cases {
            let info = answer_addresses(&response("api.example.com.", case.answers)).unwrap();
            let want: Vec<IpAddr> = case.want_ips.iter().map(|s| s.parse().unwrap()).collect();
            assert_eq!(info.addresses, want, "{}", case.what);
            assert_eq!(info.min_ttl, case.want_ttl, "{}", case.what);
            assert_eq!(info.rcode, RCODE_NOERROR, "{}", case.what);
            assert_eq!(info.query_name.as_deref(), Some("api.example.com."));
        }
    }

    #[test]
    fn cname_chain_is_bounded() {
        let mut answers = Vec::new();
        let n = MAX_CNAME_CHAIN + 5;
        for i in 0..n {
            let owner = if i == 0 {
                "q.example.".to_owned()
            } else {
                format!("c{i}.example.")
            };
            answers.push(record(
                &owner,
                10,
                RData::CNAME(CNAME(name(&format!("c{}.example.", i + 1)))),
            ));
        }
        answers.push(record(
            &format!("c{n}.example."),
            10,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        let info = answer_addresses(&response("q.example.", answers)).unwrap();
        assert!(info.addresses.is_empty());
        assert_eq!(info.cnames.len(), MAX_CNAME_CHAIN);
        assert!(answer_addresses(&query_bytes("q.example.", RecordType::A, None)).is_err());
    }
}
