//! The transparent Kafka proxy: one upstream connection to the broker the client dialled per
//! client connection. Every request frame is parsed ([`parsers::kafka`]) and judged by the one
//! decision API; an allowed one goes to the broker byte for byte, a denied one is answered by
//! Ward with the request's own response type at its version (`TOPIC_AUTHORIZATION_FAILED` per
//! topic, see [`parsers::kafka::deny_response`]). Responses reach the client in request order:
//! the connection keeps what it owes the client, in order, and a local answer waits behind the
//! broker responses owed before it.
//!
//! Large frames are not copied through Ward where policy does not need their bytes: a broker
//! response with at least [`SPLICE_MIN`] still to come passes broker → client by splice(2), and
//! so do the records of a Produce of one topic and one partition, which is judged on its head
//! (the records are opaque to policy) before they arrive; a frame that does not end with the
//! trailer judged is never completed to the broker ([`take_requests`]).
//!
//! What is never forwarded unjudged:
//! - a frame that does not parse (unknown key, a version Ward cannot read, a malformed header
//!   or topic list) closes the connection with a flow and a log line;
//! - a denied request Ward has no answer for (a denied `acks=0` Produce, which gets no
//!   response from a broker either, or a key without a deny encoder) closes the connection.
//!
//! The broker's ApiVersions response is narrowed to the versions Ward can inspect
//! ([`parsers::kafka::narrow_api_versions`]), and an ApiVersions request newer than Ward gets
//! the KIP-511 answer, so clients only pick versions Ward reads. SaslHandshake v0 (raw SASL
//! tokens follow it) is answered `UNSUPPORTED_VERSION` and the connection closed; a TLS
//! ClientHello is refused with a flow saying why.
//!
//! Topic IDs (Fetch v13+, Metadata by ID): the proxy keeps an ID → name map per broker, fed by
//! the Metadata responses it passes on; an ID it has not seen is looked up with a Metadata
//! request of Ward's own to the same broker before the request is judged, and an ID the broker
//! does not name is judged as a topic no topic rule covers.
//!
//! Fetch sessions (KIP-227): an incremental fetch lists only the partitions it adds, and the
//! broker answers for every partition its session holds. Ward binds each session to the
//! connection whose full fetch created it, remembers every topic the session was given, and
//! judges each incremental fetch over all of them, so a policy change that revokes a topic
//! takes effect at the next fetch. An incremental fetch on a session this connection did not
//! create, or whose topics are no longer all allowed, is answered `FETCH_SESSION_ID_NOT_FOUND`:
//! the client falls back to a full fetch, which is judged topic by topic. The cost is one rule
//! check over the session's topics per fetch instead of over the changed ones.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use l7_rules::engine::{L7Request, Verdict};
use l7_rules::model::Protocol;
use parsers::kafka::{KafkaError, KafkaRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::conn::{ConnPolicy, ConnState};
use super::context::Proxy;
use crate::config::KafkaSection;
use crate::flows::{KafkaEvent, Why};

/// Starts the Kafka proxy on a thread of its own until `shutdown` fires.
pub fn start(
    kafka: Arc<KafkaProxy>,
    tcp: std::net::TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
    drain_timeout: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("kafka".into())
        .spawn(move || {
            rt.block_on(super::transport::accept_until(
                tcp,
                "Kafka",
                shutdown,
                drain_timeout,
                |stream, client, drain| serve_conn(kafka.clone(), stream, client, drain),
            ));
            rt.shutdown_timeout(Duration::from_millis(200));
        })
}

/// What the Kafka connections share.
pub struct KafkaProxy {
    pub proxy: Arc<Proxy>,
    /// Largest frame either side may send.
    max_frame: usize,
    /// Leave client IDs out of flows.
    redact_client_id: bool,
    /// Topic ID → name, per broker address: learned from the Metadata responses Ward passes
    /// on, and from its own Metadata requests for IDs it has not seen. Per broker, so what
    /// one pod's "broker" answers cannot rename another broker's topics.
    topic_ids: std::sync::Mutex<HashMap<SocketAddr, TopicIds>>,
}

/// One broker's topic ID → name map.
type TopicIds = HashMap<[u8; 16], Arc<str>>;

/// Topic IDs remembered per broker; past it the broker's map starts over (and fills again
/// from Metadata answers and lookups).
const MAX_TOPIC_IDS_PER_BROKER: usize = 100_000;
/// How long Ward waits for the broker to name topic IDs it has not seen.
const TOPIC_ID_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Fetch sessions remembered per connection; a client uses one per broker connection.
const MAX_FETCH_SESSIONS: usize = 8;

/// What the connection owes the client, in request order.
enum Owed {
    /// The broker's response to a forwarded request; `new_fetch_session` holds the topics of a
    /// full fetch that asks for a session, until the response says its id.
    Broker {
        api_key: i16,
        version: i16,
        new_fetch_session: Option<Vec<String>>,
    },
    /// Ward's answer to a denied request, framed.
    Local(Vec<u8>),
}

impl Owed {
    /// A broker response Ward passes on as it arrives, without reading it whole.
    fn passes_through(&self) -> bool {
        match self {
            Owed::Broker {
                api_key,
                version,
                new_fetch_session,
            } => !reads_whole(*api_key, *version) && new_fetch_session.is_none(),
            Owed::Local(_) => false,
        }
    }
}

/// The responses Ward reads whole besides a session-opening fetch: ApiVersions (narrowed) and
/// Metadata with topic IDs (learned).
fn reads_whole(api_key: i16, version: i16) -> bool {
    api_key == 18 || (api_key == 3 && version >= 10)
}

/// What to do with one request frame.
enum Judged {
    Forward(KafkaRequest, Option<Vec<String>>),
    Answer(Vec<u8>),
    /// Answer, then close once everything owed before it is written.
    AnswerAndClose(Vec<u8>),
    Close,
}

/// A client connection as the judge sees it.
struct KafkaConn {
    conn: ConnState,
    /// API keys whose version in use has been logged.
    logged: u128,
    /// Fetch sessions the broker created for this connection, with every topic each was given.
    fetch_sessions: VecDeque<(i32, Vec<String>)>,
}

/// Spare room a read gets at least.
const READ_CHUNK: usize = 64 * 1024;
/// Most room reserved ahead for a frame still arriving (it grows as its bytes come).
const RESERVE_AHEAD_MAX: usize = 1024 * 1024;

/// Makes room for the next read: at least [`READ_CHUNK`], or what the frame at the front still
/// needs (up to [`RESERVE_AHEAD_MAX`]), so a large frame arrives in large reads. `passing` is
/// what is still to come of a response being passed through (then `buf` holds no prefix).
fn reserve_for_read(buf: &mut BytesMut, passing: usize) {
    let pending = if passing > 0 {
        passing.saturating_sub(buf.len())
    } else {
        buf.first_chunk::<{ parsers::kafka::FRAME_PREFIX_LEN }>()
            .and_then(|p| usize::try_from(i32::from_be_bytes(*p)).ok())
            .map_or(0, |len| {
                (len + parsers::kafka::FRAME_PREFIX_LEN).saturating_sub(buf.len())
            })
    };
    buf.reserve(pending.clamp(READ_CHUNK, RESERVE_AHEAD_MAX));
}

/// A response with at least this much still to come passes broker → client by splice(2)
/// through a pipe, never copied into Ward (Fetch answers, mostly).
const SPLICE_MIN: usize = 64 * 1024;
/// The pipe's capacity asked for (the kernel's default is 64 KiB).
const PIPE_SIZE: i32 = 1024 * 1024;

/// A non-blocking pipe for splice(2), per connection.
struct Pipe {
    r: std::os::fd::OwnedFd,
    w: std::os::fd::OwnedFd,
    cap: usize,
}

impl Pipe {
    fn new() -> std::io::Result<Pipe> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let cap = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .ok()
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(64 * 1024);
        Ok(Pipe { r, w, cap })
    }
}

/// Moves what the broker has ready of the response in flight, up to `max` bytes, into `pipe`
/// and from there to the client, without copying it into Ward. `Ok(None)`: nothing was
/// ready after all; `Ok(Some(0))`: the broker closed.
async fn splice_step(
    from: &tokio::net::TcpStream,
    to: &tokio::net::TcpStream,
    pipe: &Pipe,
    max: usize,
) -> std::io::Result<Option<usize>> {
    use nix::fcntl::{splice, SpliceFFlags};
    use tokio::io::Interest;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    // The pipe is empty here: every step drains it before returning.
    let n = match from.try_io(Interest::READABLE, || {
        splice(from, None, &pipe.w, None, max.min(pipe.cap), flags).map_err(std::io::Error::from)
    }) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut left = n;
    while left > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || {
            splice(&pipe.r, None, to, None, left, flags).map_err(std::io::Error::from)
        }) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(k) => left -= k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(n))
}

/// A frame without its size prefix.
fn body(frame: &[u8]) -> &[u8] {
    &frame[parsers::kafka::FRAME_PREFIX_LEN..]
}

/// Serves one client connection; once `drain` turns true, reads no more requests and ends
/// when every response it owes is written.
pub async fn serve_conn(
    k: Arc<KafkaProxy>,
    stream: TcpStream,
    client: SocketAddr,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let orig_dst = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "getsockname failed");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut kc = KafkaConn {
        conn: ConnState::with_protocol(client, orig_dst, Protocol::Tcp),
        logged: 0,
        fetch_sessions: VecDeque::new(),
    };
    let mut upstream = match k.proxy.upstreams.connect(orig_dst).await {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, %client, %orig_dst, "Kafka: cannot connect to the broker");
            return;
        }
    };
    let (mut cr, mut cw) = stream.into_split();
    let (mut ur, mut uw) = upstream.stream_mut().split();
    // Created on the first large response (or Produce) passed through; `None` inside after a
    // failure.
    let mut pipe: Option<Option<Pipe>> = None;
    let mut produce_pipe: Option<Option<Pipe>> = None;
    let mut cs = ClientSide {
        buf: BytesMut::with_capacity(8192),
        incoming: None,
        plain_front: false,
    };
    let mut ubuf = BytesMut::with_capacity(8192);
    let mut owed: VecDeque<Owed> = VecDeque::new();
    let mut client_open = true;
    let mut first_read = true;
    // Bytes of the broker response being passed through that are still to come.
    let mut response_left = 0usize;
    loop {
        if !client_open && owed.is_empty() && response_left == 0 {
            break;
        }
        // The rest of a large response in flight moves broker → client by splice(2).
        let splicing = response_left >= SPLICE_MIN
            && ubuf.is_empty()
            && pipe.get_or_insert_with(|| Pipe::new().ok()).is_some();
        // The records of an allowed Produce move client → broker by splice(2).
        let splicing_in = cs.buf.is_empty()
            && cs
                .incoming
                .as_ref()
                .is_some_and(|i| i.forward && i.left > 0)
            && produce_pipe
                .get_or_insert_with(|| Pipe::new().ok())
                .is_some();
        tokio::select! {
            _ = async { drop(drain.wait_for(|d| *d).await) }, if client_open && cs.incoming.is_none() => { client_open = false; continue; }
            r = async {
                if splicing_in {
                    return cr.as_ref().readable().await.map(|()| None);
                }
                let limit = match &cs.incoming {
                    // Dropping a denied Produce's records: as fast as they come.
                    Some(i) if !i.forward => {
                        reserve_for_read(&mut cs.buf, i.left);
                        usize::MAX
                    }
                    _ if cs.plain_front => {
                        reserve_for_read(&mut cs.buf, 0);
                        usize::MAX
                    }
                    // A frame's first chunk, so that a large Produce's records can be spliced.
                    _ => {
                        cs.buf.reserve(READ_CHUNK);
                        READ_CHUNK
                    }
                };
                (&mut cr).take(limit as u64).read_buf(&mut cs.buf).await.map(Some)
            }, if client_open => {
                match r {
                    Ok(None) => {
                        let (Some(Some(p)), Some(i)) = (&produce_pipe, &mut cs.incoming) else {
                            unreachable!("splicing in has a pipe and a Produce in flight")
                        };
                        match splice_step(cr.as_ref(), uw.as_ref(), p, i.left).await {
                            Ok(None) => continue,
                            Ok(Some(0)) => break,
                            Ok(Some(n)) => {
                                k.proxy.metrics.kafka_spliced(true, n);
                                i.left -= n;
                                // Without a trailer to check, the frame is through.
                                if i.left == 0 && i.trailer.is_empty() {
                                    cs.incoming = None;
                                }
                                continue;
                            }
                            Err(e) => { debug!(error = %e, %client, %orig_dst, "Kafka Produce splice"); break; }
                        }
                    }
                    // Kafka clients never half-close: the client is gone, and so is the need
                    // for the broker's answers (a broker that never answers cannot hold the
                    // connection).
                    Ok(Some(0)) => break,
                    Ok(Some(_)) => {}
                    Err(e) => { debug!(error = %e, %client, "Kafka client read"); break; }
                }
                if std::mem::take(&mut first_read) && looks_like_tls(&cs.buf) {
                    info!(%client, %orig_dst, "TLS ClientHello on a Kafka L7 port: connection closed");
                    k.refused(&kc.conn, None, "TLS ClientHello on a Kafka L7 port: Ward judges plaintext Kafka only; connection closed");
                    k.proxy.metrics.kafka_request("unknown", "DROPPED");
                    break;
                }
                let next = take_requests(&k, &mut kc, &mut cs, &mut uw, &mut owed).await;
                if next == Next::StopReading {
                    client_open = false;
                }
                // Mid-response, the answers wait: `relay` writes them when it ends.
                if (response_left == 0 && flush_local(&mut owed, &mut cw).await.is_err()) || next == Next::Close {
                    break;
                }
            }
            r = async {
                if splicing {
                    ur.as_ref().readable().await.map(|()| None)
                } else {
                    reserve_for_read(&mut ubuf, response_left);
                    // Between responses, a response that passes through is read no further
                    // than its first chunk: the rest can then be spliced.
                    let limit = if response_left == 0 && owed.front().is_some_and(Owed::passes_through) {
                        READ_CHUNK
                    } else {
                        usize::MAX
                    };
                    (&mut ur).take(limit as u64).read_buf(&mut ubuf).await.map(Some)
                }
            } => {
                match r {
                    Ok(None) => {
                        let Some(Some(p)) = &pipe else { unreachable!("splicing has a pipe") };
                        match splice_step(ur.as_ref(), cw.as_ref(), p, response_left).await {
                            Ok(None) => continue,
                            Ok(Some(0)) => { debug!(%client, %orig_dst, "Kafka broker closed"); break; }
                            Ok(Some(n)) => {
                                k.proxy.metrics.kafka_spliced(false, n);
                                response_left -= n;
                                if response_left == 0 && flush_local(&mut owed, &mut cw).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            Err(e) => { debug!(error = %e, %orig_dst, "Kafka response splice"); break; }
                        }
                    }
                    Ok(Some(0)) => { debug!(%client, %orig_dst, "Kafka broker closed"); break; }
                    Ok(Some(_)) => {}
                    Err(e) => { debug!(error = %e, %orig_dst, "Kafka broker read"); break; }
                }
                if let Err(e) = relay(&k, orig_dst, &mut ubuf, &mut response_left, &mut owed, &mut kc, &mut cw).await {
                    warn!(error = %e, %client, %orig_dst, "Kafka broker response: connection closed");
                    break;
                }
            }
        }
    }
}

/// The client's side of a connection: what it sent that is not yet judged or passed on.
struct ClientSide {
    buf: BytesMut,
    /// A large Produce judged on its head, whose records are still coming.
    incoming: Option<Incoming>,
    /// The frame at the front of `buf` is read whole (it is not a Produce Ward can judge on
    /// its head), so reads need not stop at its first chunk.
    plain_front: bool,
}

/// A Produce request judged on its head and passed on as its records arrive
/// ([`parsers::kafka::ProduceSplit`]): the records, opaque to policy, are spliced client →
/// broker (or dropped, if it was denied), and the frame must end with the trailer judged.
struct Incoming {
    /// Bytes of records still to come from the client.
    left: usize,
    /// The trailer judged: the tagged-field counts of a flexible version, each zero.
    trailer: &'static [u8],
    /// Allowed: the records go to the broker. Denied: they are read and dropped.
    forward: bool,
}

/// The trailer of a [`parsers::kafka::ProduceSplit`] Produce as Ward judges it: no tagged
/// fields after the partition, the topic and the request.
const NO_TAGGED_FIELDS: [u8; 3] = [0; 3];

/// What the connection does after taking what the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Read,
    /// Read no more; end once everything owed is written.
    StopReading,
    Close,
}

/// Judges and passes on (or answers) the requests in `cs.buf`. A complete frame is parsed
/// whole. A frame still arriving that is a Produce of one topic and partition with at least
/// [`SPLICE_MIN`] still to come is judged on its head ([`parsers::kafka::produce_split`]):
/// the head goes to the broker at once and the records follow by splice(2); if the frame then
/// ends otherwise than with the trailer judged, the connection is closed, and the broker, which
/// acts on whole frames only, never has the frame whole.
async fn take_requests(
    k: &KafkaProxy,
    kc: &mut KafkaConn,
    cs: &mut ClientSide,
    uw: &mut tokio::net::tcp::WriteHalf<'_>,
    owed: &mut VecDeque<Owed>,
) -> Next {
    loop {
        if let Some(i) = &mut cs.incoming {
            let n = i.left.min(cs.buf.len());
            if n > 0 {
                let records = cs.buf.split_to(n);
                if i.forward && uw.write_all(&records).await.is_err() {
                    return Next::Close;
                }
                i.left -= n;
            }
            if i.left > 0 || cs.buf.len() < i.trailer.len() {
                return Next::Read;
            }
            let trailer = cs.buf.split_to(i.trailer.len());
            if trailer != i.trailer {
                let why = "a Produce request judged on its head ends with tagged fields Ward did not judge: connection closed";
                info!(client = %kc.conn.client, "{why}");
                k.refused(&kc.conn, None, why);
                k.proxy.metrics.kafka_request("produce", "DROPPED");
                return Next::Close;
            }
            if i.forward && uw.write_all(&trailer).await.is_err() {
                return Next::Close;
            }
            cs.incoming = None;
            continue;
        }
        let len = match parsers::kafka::frame_within(&cs.buf, k.max_frame) {
            Ok(parsers::Status::Complete(_, used)) => {
                cs.plain_front = false;
                let frame = cs.buf.split_to(used);
                let start = Instant::now();
                let parsed = parsers::kafka::parse_request(body(&frame));
                match k.judge_counted(kc, body(&frame), parsed, start).await {
                    Judged::Forward(req, new_fetch_session) => {
                        // The frame judged, prefix and all, byte for byte.
                        if uw.write_all(&frame).await.is_err() {
                            return Next::Close;
                        }
                        owe_broker(owed, &req, new_fetch_session);
                    }
                    Judged::Answer(b) => owed.push_back(Owed::Local(b)),
                    Judged::AnswerAndClose(b) => {
                        owed.push_back(Owed::Local(b));
                        return Next::StopReading;
                    }
                    Judged::Close => return Next::Close,
                }
                continue;
            }
            Ok(parsers::Status::NeedMore) if !cs.plain_front => {
                match cs.buf.first_chunk::<{ parsers::kafka::FRAME_PREFIX_LEN }>() {
                    // Checked by `frame_within`: not negative, at most the maximum.
                    Some(p) => i32::from_be_bytes(*p) as usize,
                    None => return Next::Read,
                }
            }
            Ok(parsers::Status::NeedMore) => return Next::Read,
            Err(e) => {
                info!(error = %e, client = %kc.conn.client, broker = %kc.conn.orig_dst, "Kafka framing error: connection closed");
                k.refused(&kc.conn, None, &e.to_string());
                k.proxy.metrics.kafka_request("unknown", "DROPPED");
                return Next::Close;
            }
        };
        let prefix = parsers::kafka::FRAME_PREFIX_LEN;
        if prefix + len - cs.buf.len() < SPLICE_MIN {
            cs.plain_front = true;
            return Next::Read;
        }
        let split = match parsers::kafka::produce_split(&cs.buf[prefix..], len) {
            parsers::Status::NeedMore => return Next::Read,
            parsers::Status::Complete(None, _) => {
                cs.plain_front = true;
                return Next::Read;
            }
            parsers::Status::Complete(Some(s), _) => s,
        };
        let trailer = &NO_TAGGED_FIELDS[..split.trailer_len];
        let head = &cs.buf[prefix..prefix + split.records_at];
        let start = Instant::now();
        let (parsed, judged) = match parsers::kafka::parse_produce_split(head, &split, trailer) {
            Ok((req, judged)) => (Ok(req), judged),
            Err(e) => (Err(e), head.to_vec()),
        };
        let left = prefix + split.records_at + split.records_len - cs.buf.len();
        let forward = match k.judge_counted(kc, &judged, parsed, start).await {
            Judged::Forward(req, new_fetch_session) => {
                // The head (and what came of the records with it) now; the records follow.
                if uw.write_all(&cs.buf).await.is_err() {
                    return Next::Close;
                }
                owe_broker(owed, &req, new_fetch_session);
                true
            }
            Judged::Answer(b) => {
                owed.push_back(Owed::Local(b));
                false
            }
            Judged::AnswerAndClose(b) => {
                owed.push_back(Owed::Local(b));
                return Next::StopReading;
            }
            Judged::Close => return Next::Close,
        };
        cs.buf.clear();
        cs.incoming = Some(Incoming {
            left,
            trailer,
            forward,
        });
    }
}

/// Records the broker response a forwarded request is owed (none for `acks=0` Produce).
fn owe_broker(
    owed: &mut VecDeque<Owed>,
    req: &KafkaRequest,
    new_fetch_session: Option<Vec<String>>,
) {
    if !req.no_response {
        owed.push_back(Owed::Broker {
            api_key: req.api_key,
            version: req.api_version,
            new_fetch_session,
        });
    }
}

/// Writes the broker's responses in `ubuf` to the client, in order, with the local answers
/// owed after each. A response passes through as its bytes arrive (`left` counts what is
/// still to come of the one in flight), except the two Ward reads: ApiVersions (narrowed) and
/// the full fetch that opens a session (its id), which wait for their whole frame.
async fn relay(
    k: &KafkaProxy,
    broker: SocketAddr,
    ubuf: &mut BytesMut,
    left: &mut usize,
    owed: &mut VecDeque<Owed>,
    kc: &mut KafkaConn,
    cw: &mut tokio::net::tcp::OwnedWriteHalf,
) -> Result<(), String> {
    let max = k.max_frame;
    loop {
        if *left > 0 {
            if ubuf.is_empty() {
                return Ok(());
            }
            let chunk = ubuf.split_to((*left).min(ubuf.len()));
            cw.write_all(&chunk).await.map_err(|e| e.to_string())?;
            *left -= chunk.len();
            if *left == 0 {
                flush_local(owed, cw).await.map_err(|e| e.to_string())?;
            }
            continue;
        }
        let Some(prefix) = ubuf.first_chunk::<{ parsers::kafka::FRAME_PREFIX_LEN }>() else {
            return Ok(());
        };
        let size = i32::from_be_bytes(*prefix);
        let len = usize::try_from(size).map_err(|_| format!("negative frame size {size}"))?;
        if len > max {
            return Err(format!("a {len}-byte frame exceeds the maximum of {max}"));
        }
        let whole_len = parsers::kafka::FRAME_PREFIX_LEN + len;
        let Some(Owed::Broker {
            api_key,
            version,
            new_fetch_session,
        }) = owed.front()
        else {
            return Err("a response to no forwarded request".into());
        };
        // Read whole: ApiVersions (narrowed), Metadata with topic IDs (learned), and a full
        // fetch that opens a session (its id).
        let read = reads_whole(*api_key, *version);
        if !read && new_fetch_session.is_none() {
            owed.pop_front();
            *left = whole_len;
            continue;
        }
        if ubuf.len() < whole_len {
            return Ok(());
        }
        let resp = ubuf.split_to(whole_len);
        let Some(Owed::Broker {
            api_key,
            version,
            new_fetch_session,
        }) = owed.pop_front()
        else {
            unreachable!("checked above");
        };
        if let Some(topics) = new_fetch_session {
            match parsers::kafka::fetch_response_session_id(version, body(&resp)) {
                Some(id) if id != 0 => {
                    kc.fetch_sessions.retain(|(s, _)| *s != id);
                    if kc.fetch_sessions.len() == MAX_FETCH_SESSIONS {
                        kc.fetch_sessions.pop_front();
                    }
                    kc.fetch_sessions.push_back((id, topics));
                }
                _ => {}
            }
        }
        if api_key == 3 {
            if let Some(pairs) = parsers::kafka::metadata_response_topic_ids(version, body(&resp)) {
                k.learn_topic_ids(broker, pairs);
            }
        }
        let narrowed = (api_key == 18)
            .then(|| parsers::kafka::narrow_api_versions(version, body(&resp)))
            .flatten();
        cw.write_all(narrowed.as_deref().unwrap_or(&resp))
            .await
            .map_err(|e| e.to_string())?;
        flush_local(owed, cw).await.map_err(|e| e.to_string())?;
    }
}

/// A TLS handshake record (content type 22, version 3.x) where a Kafka size prefix belongs.
fn looks_like_tls(buf: &[u8]) -> bool {
    matches!(buf, [0x16, 0x03, 0x00..=0x04, ..])
}

/// Writes the local answers at the front of `owed` (those no broker response is owed before).
async fn flush_local(
    owed: &mut VecDeque<Owed>,
    cw: &mut tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<()> {
    while let Some(Owed::Local(_)) = owed.front() {
        let Some(Owed::Local(b)) = owed.pop_front() else {
            unreachable!("checked above");
        };
        cw.write_all(&b).await?;
    }
    Ok(())
}

impl KafkaProxy {
    pub fn new(proxy: Arc<Proxy>, cfg: &KafkaSection) -> KafkaProxy {
        KafkaProxy {
            proxy,
            max_frame: cfg.max_frame_bytes,
            redact_client_id: cfg.redact_client_id,
            topic_ids: Default::default(),
        }
    }

    fn learn_topic_ids(&self, broker: SocketAddr, pairs: Vec<([u8; 16], String)>) {
        if pairs.is_empty() {
            return;
        }
        let mut all = self.topic_ids.lock().unwrap_or_else(|p| p.into_inner());
        let map = all.entry(broker).or_default();
        if map.len() + pairs.len() > MAX_TOPIC_IDS_PER_BROKER {
            map.clear();
        }
        for (id, name) in pairs {
            map.insert(id, name.into());
        }
    }

    fn topic_name(&self, broker: SocketAddr, id: &[u8; 16]) -> Option<Arc<str>> {
        let all = self.topic_ids.lock().unwrap_or_else(|p| p.into_inner());
        all.get(&broker)?.get(id).cloned()
    }

    /// Asks `broker`, on a connection of Ward's own, for the names of the IDs it has not seen
    /// (Metadata v12 by topic ID). An ID still unknown afterwards stays unknown: the request
    /// that names it is judged with a topic no rule covers.
    async fn resolve_topic_ids(&self, broker: SocketAddr, ids: &[[u8; 16]]) {
        let unknown: Vec<[u8; 16]> = ids
            .iter()
            .filter(|id| self.topic_name(broker, id).is_none())
            .copied()
            .collect();
        if unknown.is_empty() {
            return;
        }
        let lookup = async {
            let mut up = self
                .proxy
                .upstreams
                .connect(broker)
                .await
                .map_err(|e| e.to_string())?;
            let request = parsers::kafka::metadata_request_for_ids(1, &unknown)
                .ok_or("cannot encode the Metadata request")?;
            up.write_all(&request).await.map_err(|e| e.to_string())?;
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                reserve_for_read(&mut buf, 0);
                if up.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("the broker closed the connection".to_string());
                }
                match parsers::kafka::frame_within(&buf, self.max_frame) {
                    Ok(parsers::Status::Complete(f, _)) => {
                        return parsers::kafka::metadata_response_topic_ids(12, f)
                            .ok_or_else(|| "the Metadata response does not walk".to_string());
                    }
                    Ok(parsers::Status::NeedMore) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        match tokio::time::timeout(TOPIC_ID_LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(pairs)) => {
                debug!(%broker, asked = unknown.len(), named = pairs.len(), "Kafka topic IDs looked up");
                self.learn_topic_ids(broker, pairs);
            }
            Ok(Err(e)) => info!(%broker, error = %e, "Kafka topic ID lookup failed"),
            Err(_) => info!(%broker, "Kafka topic ID lookup timed out"),
        }
    }

    /// Resolves the topic IDs a request names, judges it ([`Self::judge`]) and counts it.
    async fn judge_counted(
        &self,
        kc: &mut KafkaConn,
        frame: &[u8],
        parsed: Result<KafkaRequest, KafkaError>,
        start: Instant,
    ) -> Judged {
        let name = frame
            .first_chunk::<2>()
            .and_then(|b| parsers::kafka::api_key_name(i16::from_be_bytes(*b)))
            .unwrap_or("unknown");
        if let Ok(req) = &parsed {
            if !req.topic_ids.is_empty() {
                self.resolve_topic_ids(kc.conn.orig_dst, &req.topic_ids)
                    .await;
            }
        }
        let judged = self.judge(kc, frame, parsed);
        let verdict = match judged {
            Judged::Forward(..) => "FORWARDED",
            _ => "DROPPED",
        };
        self.proxy
            .metrics
            .request("kafka", verdict, start.elapsed());
        self.proxy.metrics.kafka_request(name, verdict);
        judged
    }

    /// Judges one request frame of `kc`'s client.
    fn judge(
        &self,
        kc: &mut KafkaConn,
        frame: &[u8],
        parsed: Result<KafkaRequest, KafkaError>,
    ) -> Judged {
        let conn = &kc.conn;
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                // KIP-511: a client newer than Ward learns the ApiVersions range Ward speaks.
                if let (KafkaError::UnsupportedVersion { api_key: 18, .. }, Some(b)) =
                    (&e, parsers::kafka::unsupported_api_versions(frame))
                {
                    debug!(client = %conn.client, "Kafka ApiVersions newer than Ward: answered UNSUPPORTED_VERSION");
                    return Judged::Answer(b);
                }
                info!(error = %e, client = %conn.client, "Kafka request Ward cannot inspect: connection closed");
                self.refused(conn, Some(frame), &format!("{e}: never forwarded unjudged"));
                return Judged::Close;
            }
        };
        let key_bit = 1u128 << req.api_key.clamp(0, 127);
        if kc.logged & key_bit == 0 {
            kc.logged |= key_bit;
            info!(
                client = %conn.client,
                broker = %conn.orig_dst,
                api = %parsers::kafka::api_key_name(req.api_key).unwrap_or("unknown"),
                version = req.api_version,
                "Kafka API version in use"
            );
        }
        if let Some(b) = parsers::kafka::refuse_sasl_handshake_v0(&req) {
            info!(client = %conn.client, "Kafka SaslHandshake v0 (unframed SASL tokens follow): answered UNSUPPORTED_VERSION, connection closed");
            self.refused(
                conn,
                Some(frame),
                "SaslHandshake v0 sends SASL tokens Ward cannot frame: UNSUPPORTED_VERSION, connection closed",
            );
            return Judged::AnswerAndClose(b);
        }
        let view = self.proxy.view.load();
        let policy = conn.policy(&view);
        // Topics named only by ID, by the names the broker gave them; an ID it did not name
        // stays a topic no topic rule covers.
        let by_id: Vec<Arc<str>> = req
            .topic_ids
            .iter()
            .map(|id| {
                self.topic_name(conn.orig_dst, id)
                    .unwrap_or_else(|| Arc::from(""))
            })
            .collect();
        let mut topics: Vec<&str> = req.topics.iter().map(String::as_str).collect();
        for name in &by_id {
            if !topics.contains(&&**name) {
                topics.push(name);
            }
        }
        let named: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        // An incremental fetch is answered for every partition of its session: judge them all.
        let session = req.fetch_session.filter(|s| s.is_incremental());
        let mut session_topics: Option<Vec<String>> = None;
        if let Some(fs) = session {
            let Some((_, known)) = kc.fetch_sessions.iter_mut().find(|(id, _)| *id == fs.id) else {
                return self.refuse_session(
                    &policy,
                    &req,
                    "an incremental fetch on a fetch session this connection did not create",
                );
            };
            for t in &named {
                if !known.contains(t) {
                    known.push(t.clone());
                }
            }
            session_topics = Some(known.clone());
        }
        if let Some(known) = &session_topics {
            topics = known.iter().map(String::as_str).collect();
        }
        let decision =
            policy
                .policy
                .decide(Some(&L7Request::Kafka(l7_rules::l7::kafka::KafkaRequest {
                    api_key: req.api_key,
                    api_version: req.api_version,
                    client_id: req.client_id.as_deref(),
                    topics: &topics,
                    broker_discovery: req.api_key == 3
                        && req.api_version >= 1
                        && !req.all_topics
                        && req.topics.is_empty()
                        && !req.topic_ids_only,
                })));
        let topics_seen = session_topics.clone().unwrap_or_else(|| named.clone());
        let direction = decision
            .direction
            .unwrap_or(policy.default_direction)
            .as_str();
        match decision.verdict {
            Verdict::Deny if session.is_some() => {
                let id = session.map_or(0, |s| s.id);
                kc.fetch_sessions.retain(|(s, _)| *s != id);
                let mut event = self.event(&policy, &req, "DROPPED", Why::Decision(decision));
                event.direction = direction;
                event.topics = topics_seen;
                event.error_code = parsers::kafka::FETCH_SESSION_ID_NOT_FOUND;
                self.proxy.flows.send_kafka(event);
                match parsers::kafka::fetch_session_not_found(&req) {
                    Some(b) => Judged::Answer(b),
                    None => Judged::Close,
                }
            }
            Verdict::Deny => {
                let answer = parsers::kafka::deny_response(&req, frame);
                let code = answer
                    .as_ref()
                    .and(parsers::kafka::deny_error_code(&req, frame))
                    .unwrap_or(0);
                let reason = match (&answer, req.no_response) {
                    (Some(_), _) => None,
                    (None, true) => {
                        Some("a denied acks=0 Produce gets no response: connection closed")
                    }
                    (None, false) => Some("no deny response for this API key: connection closed"),
                };
                if let Some(r) = reason {
                    info!(client = %conn.client, api_key = req.api_key, "{r}");
                }
                let mut event = self.event(&policy, &req, "DROPPED", Why::Decision(decision));
                event.direction = direction;
                event.topics = topics_seen;
                event.error_code = code;
                self.proxy.flows.send_kafka(event);
                match answer {
                    Some(b) => Judged::Answer(b),
                    None => Judged::Close,
                }
            }
            v => {
                let verdict = if v == Verdict::Audit {
                    "AUDIT"
                } else {
                    "FORWARDED"
                };
                let mut event = self.event(&policy, &req, verdict, Why::Decision(decision));
                event.direction = direction;
                event.topics = topics_seen;
                self.proxy.flows.send_kafka(event);
                // A full fetch that asks for a session (epoch 0): its topics seed the session.
                let new_session = match req.fetch_session {
                    Some(fs) if fs.epoch <= 0 => {
                        kc.fetch_sessions.retain(|(id, _)| *id != fs.id);
                        (fs.epoch == 0).then_some(named)
                    }
                    _ => None,
                };
                Judged::Forward(req, new_session)
            }
        }
    }

    /// Answers an incremental fetch Ward will not forward with `FETCH_SESSION_ID_NOT_FOUND`.
    fn refuse_session(&self, policy: &ConnPolicy, req: &KafkaRequest, reason: &str) -> Judged {
        debug!(session = ?req.fetch_session, "Kafka: {reason}: FETCH_SESSION_ID_NOT_FOUND");
        let mut event = self.event(
            policy,
            req,
            "DROPPED",
            Why::Check {
                policy: None,
                reason: format!("{reason}: answered FETCH_SESSION_ID_NOT_FOUND").into(),
            },
        );
        event.error_code = parsers::kafka::FETCH_SESSION_ID_NOT_FOUND;
        self.proxy.flows.send_kafka(event);
        match parsers::kafka::fetch_session_not_found(req) {
            Some(b) => Judged::Answer(b),
            None => Judged::Close,
        }
    }

    /// A flow for a frame refused before any rule ran.
    fn refused(&self, conn: &ConnState, frame: Option<&[u8]>, reason: &str) {
        let view = self.proxy.view.load();
        let policy = conn.policy(&view);
        let field = |r: std::ops::Range<usize>| frame.and_then(|f| f.get(r));
        let event = KafkaEvent {
            time: SystemTime::now(),
            verdict: "DROPPED",
            direction: policy.default_direction.as_str(),
            source: policy.src_peer.clone(),
            destination: policy.dst_peer.clone(),
            api_key: field(0..2).map(|b| i16::from_be_bytes([b[0], b[1]])),
            api_version: field(2..4).map_or(-1, |b| i16::from_be_bytes([b[0], b[1]])),
            correlation_id: field(4..8)
                .map_or(-1, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            topics: Vec::new(),
            client_id: None,
            error_code: 0,
            why: Why::Check {
                policy: None,
                reason: reason.into(),
            },
        };
        self.proxy.flows.send_kafka(event);
    }

    fn event(
        &self,
        policy: &ConnPolicy,
        req: &KafkaRequest,
        verdict: &'static str,
        why: Why,
    ) -> KafkaEvent {
        KafkaEvent {
            time: SystemTime::now(),
            verdict,
            direction: policy.default_direction.as_str(),
            source: policy.src_peer.clone(),
            destination: policy.dst_peer.clone(),
            api_key: Some(req.api_key),
            api_version: req.api_version,
            correlation_id: req.correlation_id,
            topics: req.topics.clone(),
            client_id: if self.redact_client_id {
                None
            } else {
                req.client_id.clone()
            },
            error_code: 0,
            why,
        }
    }
}
