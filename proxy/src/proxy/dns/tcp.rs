//! DNS over TCP (RFC 7766): one upstream connection per client connection, opened from the
//! client's own address at its first allowed query and kept; queries are pipelined on it and
//! answers matched by id, written back as they come (in any order). A framing error (a length
//! shorter than a header) closes the client's connection with a log line; an upstream that
//! closes gets its waiting queries a `SERVFAIL` (or silence) and is opened again by the next.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use l7_rules::model::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{DnsProxy, Outcome, Pending, Release};
use crate::proxy::conn::ConnState;
use crate::proxy::transport::Upstream;

/// A client connection with nothing waiting is closed after this long without a query.
pub const IDLE: Duration = Duration::from_secs(10);
const TRANSPORT: &str = "TCP";

/// Frames `msg` with its 2-byte length.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Splits the complete messages off the front of `buf`; `Err` on a framing error.
fn messages(buf: &mut BytesMut) -> Result<Vec<Vec<u8>>, parsers::dns::DnsError> {
    let mut out = Vec::new();
    loop {
        match parsers::dns::frame_tcp(buf)? {
            parsers::Status::Complete(m, used) => {
                out.push(m.to_vec());
                buf.advance(used);
            }
            parsers::Status::NeedMore => return Ok(out),
        }
    }
}

struct UpstreamConn {
    read: ReadHalf<Upstream>,
    write: WriteHalf<Upstream>,
    buf: BytesMut,
}

/// Serves one client connection.
/// Serves one DNS-over-TCP client; once `drain` turns true, reads no more queries and ends
/// when the ones it holds are answered.
pub async fn serve_conn(
    dns: Arc<DnsProxy>,
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
    let conn = ConnState::with_protocol(client, orig_dst, Protocol::Tcp);
    let (mut cr, mut cw) = stream.into_split();
    let mut cbuf = BytesMut::with_capacity(4096);
    let mut upstream: Option<UpstreamConn> = None;
    let mut pending: HashMap<u16, Pending> = HashMap::new();
    let mut deadlines: VecDeque<(Instant, u16)> = VecDeque::new();
    let mut client_open = true;
    let mut last = Instant::now();
    let timer = tokio::time::sleep(IDLE);
    tokio::pin!(timer);
    loop {
        if !client_open && pending.is_empty() {
            break;
        }
        let wake = match deadlines.front() {
            Some((d, _)) => *d,
            None => last + IDLE,
        };
        if timer.deadline() != wake.into() {
            timer.as_mut().reset(wake.into());
        }
        tokio::select! {
            _ = async { drop(drain.wait_for(|d| *d).await) }, if client_open => { client_open = false; continue; }
            r = cr.read_buf(&mut cbuf), if client_open => {
                match r {
                    Ok(0) => { client_open = false; continue; }
                    Ok(_) => last = Instant::now(),
                    Err(e) => { debug!(error = %e, %client, "DNS/TCP client read"); client_open = false; continue; }
                }
                let msgs = match messages(&mut cbuf) {
                    Ok(m) => m,
                    Err(e) => {
                        dns.proxy.metrics.dns.malformed.inc();
                        info!(error = %e, %client, %orig_dst, "DNS/TCP framing error: connection closed");
                        break;
                    }
                };
                for m in msgs {
                    match dns.judge(&conn, &m, TRANSPORT) {
                        Outcome::Ignore => {}
                        Outcome::Answer(bytes, event) => {
                            if let Some(e) = event {
                                dns.proxy.flows.send_dns(e);
                            }
                            if cw.write_all(&framed(&bytes)).await.is_err() {
                                client_open = false;
                            }
                        }
                        Outcome::Forward(p) => {
                            let mut sent = Err(String::new());
                            for attempt in 0..2 {
                                if upstream.is_none() {
                                    match connect_upstream(&dns, client, orig_dst).await {
                                        Ok(mut u) => {
                                            // Queries still owed an answer on a connection that
                                            // broke go once more on the new one.
                                            for w in pending.values_mut().filter(|w| attempt > 0 && !w.resent) {
                                                if u.write.write_all(&framed(&w.bytes)).await.is_ok() {
                                                    w.resent = true;
                                                }
                                            }
                                            upstream = Some(u);
                                        }
                                        Err(e) => {
                                            warn!(error = %e, %client, "DNS/TCP: cannot connect upstream");
                                            if let crate::proxy::transport::ConnectError::Io(_, e) = &e {
                                                dns.upstream_failed(e);
                                            }
                                            sent = Err(format!("connecting upstream: {e}"));
                                            break;
                                        }
                                    }
                                }
                                let up = upstream.as_mut().expect("connected above");
                                match up.write.write_all(&framed(&p.bytes)).await {
                                    Ok(()) => {
                                        sent = Ok(());
                                        break;
                                    }
                                    Err(e) => {
                                        upstream = None;
                                        sent = Err(format!("writing upstream: {e}"));
                                        // The server closed the connection (dnsmasq closes
                                        // idle ones): once, a new one.
                                        if attempt == 0 {
                                            debug!(error = %e, %orig_dst, "DNS/TCP: upstream gone; reconnecting");
                                            continue;
                                        }
                                        dns.upstream_failed(&e);
                                        break;
                                    }
                                }
                            }
                            match sent {
                                Ok(()) => {
                                    let id = p.query.id;
                                    deadlines.push_back((p.deadline, id));
                                    if pending.insert(id, p).is_none() {
                                        dns.started();
                                    }
                                }
                                Err(why) => {
                                    if let Some(b) = dns.timed_out(&p, TRANSPORT, &why) {
                                        let _ = cw.write_all(&framed(&b)).await;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            r = read_upstream(upstream.as_mut()) => {
                let lost = match r {
                    Ok(0) => Some("the upstream closed the connection".to_string()),
                    Ok(_) => None,
                    Err(e) => Some(format!("reading upstream: {e}")),
                };
                let up = upstream.as_mut().expect("read from it");
                let mut lost = lost;
                let answers = match messages(&mut up.buf) {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, %orig_dst, "DNS/TCP: the upstream's framing is broken; its connection is closed");
                        lost = Some(format!("the upstream's framing is broken: {e}"));
                        Vec::new()
                    }
                };
                for a in answers {
                    let Some(h) = parsers::dns::header(&a) else { continue };
                    let Some(p) = pending.get(&h.id) else {
                        debug!(id = h.id, "DNS/TCP answer to no waiting query: dropped");
                        continue;
                    };
                    let release = dns.answered(client, p, &a, TRANSPORT);
                    if matches!(release, Release::NotAnAnswer) {
                        continue;
                    }
                    pending.remove(&h.id);
                    dns.finished();
                    // Held (this connection waits) until the maps have its addresses.
                    dns.wait_release(release).await;
                    if cw.write_all(&framed(&a)).await.is_err() {
                        client_open = false;
                    }
                }
                if let Some(why) = lost {
                    upstream = None;
                    // A server may close a connection with answers still owed (RFC 7766
                    // §6.2.1): those queries go once more on a new connection; a query that
                    // was already resent gets SERVFAIL.
                    let (again, failed): (Vec<_>, Vec<_>) =
                        pending.drain().map(|(_, p)| p).partition(|p| !p.resent);
                    for p in failed {
                        dns.finished();
                        if let Some(b) = dns.timed_out(&p, TRANSPORT, &why) {
                            let _ = cw.write_all(&framed(&b)).await;
                        }
                    }
                    if !again.is_empty() {
                        let mut up = connect_upstream(&dns, client, orig_dst).await.ok();
                        for mut p in again {
                            let ok = match up.as_mut() {
                                Some(u) => u.write.write_all(&framed(&p.bytes)).await.is_ok(),
                                None => false,
                            };
                            if ok {
                                p.resent = true;
                                pending.insert(p.query.id, p);
                            } else {
                                dns.finished();
                                if let Some(b) = dns.timed_out(&p, TRANSPORT, &why) {
                                    let _ = cw.write_all(&framed(&b)).await;
                                }
                            }
                        }
                        upstream = up;
                    }
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                while let Some(&(deadline, id)) = deadlines.front() {
                    if deadline > now {
                        break;
                    }
                    deadlines.pop_front();
                    if pending.get(&id).is_some_and(|p| p.deadline == deadline) {
                        let p = pending.remove(&id).expect("checked");
                        dns.finished();
                        let why = format!(
                            "the upstream did not answer within {} ms",
                            dns.settings.upstream_timeout.as_millis()
                        );
                        if let Some(b) = dns.timed_out(&p, TRANSPORT, &why) {
                            let _ = cw.write_all(&framed(&b)).await;
                        }
                    }
                }
                if pending.is_empty() && last.elapsed() >= IDLE {
                    debug!(%client, "DNS/TCP connection idle: closed");
                    break;
                }
            }
        }
    }
    for _ in pending.drain() {
        dns.finished();
    }
}

/// Connects upstream from the client's own address (or the node's, for a server on the node).
async fn connect_upstream(
    dns: &DnsProxy,
    client: SocketAddr,
    orig_dst: SocketAddr,
) -> Result<UpstreamConn, crate::proxy::transport::ConnectError> {
    let up = match dns.upstream_source(client, orig_dst) {
        Some(from) => dns.proxy.upstreams.connect_from(from, orig_dst).await?,
        None => dns.proxy.upstreams.connect(orig_dst).await?,
    };
    up.reset_on_close();
    let (read, write) = tokio::io::split(up);
    Ok(UpstreamConn {
        read,
        write,
        buf: BytesMut::with_capacity(4096),
    })
}

async fn read_upstream(up: Option<&mut UpstreamConn>) -> std::io::Result<usize> {
    match up {
        Some(u) => u.read.read_buf(&mut u.buf).await,
        None => std::future::pending().await,
    }
}
