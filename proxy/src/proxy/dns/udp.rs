//! DNS over UDP. The listener (`IP_TRANSPARENT`, `IP_RECVORIGDSTADDR`) gets the first
//! datagram of a client 5-tuple with the address the client sent it to, and starts a session
//! for that 5-tuple: a reply socket bound (transparently) to the server's address and
//! connected to the client, which answers the client and also receives its next datagrams,
//! and an upstream socket bound to the client's own address and port, connected to the
//! server, marked and registered with the datapath (which hands the server's replies, addressed
//! to the pod, to it). A session ends [`IDLE`] after its last answer.

use std::collections::{HashMap, VecDeque};
use std::io::IoSliceMut;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use l7_rules::model::Protocol;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{DnsProxy, Outcome, Pending, Release};
use crate::proxy::conn::ConnState;
use crate::proxy::transport::{udp_reply_socket, UdpUpstream};

/// A session with no query waiting ends this long after its last message.
pub const IDLE: Duration = Duration::from_secs(2);
/// Datagrams the listener may queue for one session before dropping (the client retries).
const SESSION_QUEUE: usize = 64;
const TRANSPORT: &str = "UDP";

/// One datagram off the listener, with its source and original destination.
fn recv_with_orig_dst(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in);
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)?;
    let n = msg.bytes;
    let from = msg
        .address
        .map(|a| SocketAddr::V4(SocketAddrV4::from(a)))
        .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    let mut orig = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::Ipv4OrigDstAddr(a) = c {
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            orig = Some(SocketAddr::from((ip, u16::from_be(a.sin_port))));
        }
    }
    Ok((n, from, orig))
}

/// Serves the UDP listener until `shutdown` fires.
pub async fn serve(
    dns: Arc<DnsProxy>,
    listener: std::net::UdpSocket,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let sock = UdpSocket::from_std(listener)?;
    let fd = sock.as_raw_fd();
    let mut sessions: HashMap<(SocketAddr, SocketAddr), mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; parsers::dns::MAX_UDP_MESSAGE + 1];
    let mut prune = tokio::time::interval(Duration::from_secs(1));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            r = sock.readable() => r?,
            _ = prune.tick() => {
                sessions.retain(|_, tx| !tx.is_closed());
                continue;
            }
            _ = stop.changed() => return Ok(()),
        }
        // Drain what is there, then wait again.
        loop {
            let (n, client, orig_dst) =
                match sock.try_io(Interest::READABLE, || recv_with_orig_dst(fd, &mut buf)) {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        warn!(error = %e, "DNS listener: recvmsg");
                        break;
                    }
                };
            let Some(orig_dst) = orig_dst else {
                warn!(%client, "DNS datagram without its original destination: dropped");
                continue;
            };
            let msg = buf[..n].to_vec();
            let key = (client, orig_dst);
            if let Some(tx) = sessions.get(&key) {
                match tx.try_send(msg) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        debug!(%client, "DNS session queue full: datagram dropped");
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(m)) => {
                        sessions.remove(&key);
                        start(&dns, &mut sessions, key, m, &shutdown);
                    }
                }
            } else {
                start(&dns, &mut sessions, key, msg, &shutdown);
            }
        }
    }
}

/// Starts the session of `key` with its first datagram.
fn start(
    dns: &Arc<DnsProxy>,
    sessions: &mut HashMap<(SocketAddr, SocketAddr), mpsc::Sender<Vec<u8>>>,
    key: (SocketAddr, SocketAddr),
    first: Vec<u8>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) {
    let (client, orig_dst) = key;
    let reply = match udp_reply_socket(orig_dst, client) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, %client, %orig_dst, "DNS: cannot open the reply socket; datagram dropped");
            dns.upstream_failed(&e);
            return;
        }
    };
    if !dns.open_session() {
        // Over max_sessions: SERVFAIL from a socket of the moment, no session.
        if let Some(b) = parsers::dns::error_response(&first, parsers::dns::rcode::SERVFAIL) {
            let _ = reply.try_send(&b);
        }
        return;
    }
    debug!(%client, %orig_dst, "DNS session starts");
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    let _ = tx.try_send(first);
    sessions.insert(key, tx);
    let session = Session {
        dns: dns.clone(),
        conn: ConnState::with_protocol(client, orig_dst, Protocol::Udp),
        reply,
        upstream: None,
        pending: HashMap::new(),
        deadlines: VecDeque::new(),
    };
    tokio::spawn(session.run(rx, shutdown.clone()));
}

struct Session {
    dns: Arc<DnsProxy>,
    conn: ConnState,
    reply: Arc<UdpSocket>,
    upstream: Option<UdpUpstream>,
    pending: HashMap<u16, Pending>,
    /// (deadline, id) in the order queries were sent: deadlines only grow.
    deadlines: VecDeque<(Instant, u16)>,
}

impl Session {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<u8>>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut cbuf = vec![0u8; parsers::dns::MAX_UDP_MESSAGE + 1];
        let mut ubuf = vec![0u8; parsers::dns::MAX_UDP_MESSAGE + 1];
        let timer = tokio::time::sleep(IDLE);
        tokio::pin!(timer);
        let mut last = Instant::now();
        // Closed once the session decided to end: the listener then starts a new session for
        // the client's next datagram, and this one only finishes what it already took.
        let mut inbox_open = true;
        // Shutting down: the session takes nothing new from the listener and ends once the
        // queries it holds are answered or timed out.
        let mut draining = false;
        loop {
            if draining && self.pending.is_empty() {
                break;
            }
            // The next thing to wake for: the oldest query's deadline, or the idle end.
            let wake = match self.deadlines.front() {
                Some((d, _)) => *d,
                None => last + IDLE,
            };
            if timer.deadline() != wake.into() {
                timer.as_mut().reset(wake.into());
            }
            tokio::select! {
                m = rx.recv(), if inbox_open => match m {
                    Some(m) => { last = Instant::now(); self.query(&m).await },
                    None if self.pending.is_empty() => break,
                    None => inbox_open = false,
                },
                r = self.reply.recv(&mut cbuf) => match r {
                    Ok(n) => { last = Instant::now(); self.query(&cbuf[..n]).await },
                    Err(e) => debug!(error = %e, client = %self.conn.client, "DNS reply socket"),
                },
                r = recv_upstream(self.upstream.as_ref(), &mut ubuf) => match r {
                    Ok(n) => { last = Instant::now(); self.answer(n, &ubuf).await },
                    Err(e) => {
                        // An ICMP error (port unreachable) from the server: its queries
                        // will time out.
                        debug!(error = %e, server = %self.conn.orig_dst, "DNS upstream socket");
                    }
                },
                _ = &mut timer => {
                    if !self.expire() && self.pending.is_empty() && last.elapsed() >= IDLE {
                        // A datagram may have arrived just as the idle time ran out (a client
                        // retrying every IDLE does that): it is this session's to serve.
                        let mut late = self.arrived(&mut rx, &mut cbuf);
                        if late.is_empty() && inbox_open {
                            rx.close();
                            inbox_open = false;
                            late = self.arrived(&mut rx, &mut cbuf);
                        }
                        if late.is_empty() {
                            break;
                        }
                        last = Instant::now();
                        for m in late {
                            self.query(&m).await;
                        }
                    }
                }
                _ = shutdown.changed(), if !draining => {
                    draining = true;
                    if inbox_open {
                        rx.close();
                        inbox_open = false;
                    }
                    for m in self.arrived(&mut rx, &mut cbuf) {
                        self.query(&m).await;
                    }
                }
            }
        }
        // The reply socket goes first, right after the last look at its queue: from then on
        // the client's datagrams reach the listener, which starts a new session.
        let Session {
            dns,
            reply,
            pending,
            conn,
            ..
        } = self;
        drop(reply);
        debug!(client = %conn.client, "DNS session ends");
        for _ in pending {
            dns.finished();
        }
        dns.close_session();
    }

    /// The datagrams already queued for this session, on its inbox or its reply socket.
    fn arrived(&self, rx: &mut mpsc::Receiver<Vec<u8>>, buf: &mut [u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m);
        }
        // Straight from the socket: tokio's `try_recv` answers from the readiness its reactor
        // last saw, which lags the kernel's queue by as much as a datagram that just came.
        let fd = self.reply.as_raw_fd();
        while let Ok(n) = nix::sys::socket::recv(fd, buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT)
        {
            out.push(buf[..n].to_vec());
        }
        out
    }

    async fn query(&mut self, msg: &[u8]) {
        match self.dns.judge(&self.conn, msg, TRANSPORT) {
            Outcome::Ignore => {}
            Outcome::Answer(bytes, event) => {
                if let Some(e) = event {
                    self.dns.proxy.flows.send_dns(e);
                }
                let _ = self.reply.send(&bytes).await;
            }
            Outcome::Forward(p) => {
                if self.upstream.is_none() {
                    let from = self
                        .dns
                        .upstream_source(self.conn.client, self.conn.orig_dst);
                    match self.dns.proxy.upstreams.udp(from, self.conn.orig_dst) {
                        Ok(u) => self.upstream = Some(u),
                        Err(e) => {
                            warn!(error = %e, client = %self.conn.client, "DNS: cannot open the upstream socket");
                            if let crate::proxy::transport::ConnectError::Io(_, e) = &e {
                                self.dns.upstream_failed(e);
                            }
                            if let Some(b) = self.dns.timed_out(
                                &p,
                                TRANSPORT,
                                &format!("no upstream socket: {e}"),
                            ) {
                                let _ = self.reply.send(&b).await;
                            }
                            return;
                        }
                    }
                }
                let Some(up) = &self.upstream else { return };
                if let Err(e) = up.socket.send(&p.bytes).await {
                    self.dns.upstream_failed(&e);
                    if let Some(b) =
                        self.dns
                            .timed_out(&p, TRANSPORT, &format!("sending upstream: {e}"))
                    {
                        let _ = self.reply.send(&b).await;
                    }
                    return;
                }
                let id = p.query.id;
                self.deadlines.push_back((p.deadline, id));
                if self.pending.insert(id, p).is_none() {
                    self.dns.started();
                }
            }
        }
    }

    async fn answer(&mut self, n: usize, buf: &[u8]) {
        let msg = &buf[..n];
        let Some(h) = parsers::dns::header(msg) else {
            return;
        };
        let Some(p) = self.pending.get(&h.id) else {
            debug!(id = h.id, "DNS answer to no waiting query: dropped");
            return;
        };
        let release = self.dns.answered(self.conn.client, p, msg, TRANSPORT);
        match release {
            Release::NotAnAnswer => {}
            Release::Now => {
                self.pending.remove(&h.id);
                self.dns.finished();
                let _ = self.reply.send(msg).await;
            }
            release @ Release::After(..) => {
                self.pending.remove(&h.id);
                self.dns.finished();
                // Held until the maps have its addresses; the session goes on meanwhile.
                let (dns, reply, msg) = (self.dns.clone(), self.reply.clone(), msg.to_vec());
                tokio::spawn(async move {
                    dns.wait_release(release).await;
                    let _ = reply.send(&msg).await;
                });
            }
        }
    }

    /// Answers (or drops) the queries whose time ran out; whether any did.
    fn expire(&mut self) -> bool {
        let now = Instant::now();
        let mut any = false;
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            // The entry may be for an answered query, or one replaced by a retry of its id.
            if self
                .pending
                .get(&id)
                .is_some_and(|p| p.deadline == deadline)
            {
                let p = self.pending.remove(&id).expect("checked");
                self.dns.finished();
                any = true;
                let timeout = self.dns.settings.upstream_timeout;
                if let Some(b) = self.dns.timed_out(
                    &p,
                    TRANSPORT,
                    &format!(
                        "the upstream did not answer within {} ms",
                        timeout.as_millis()
                    ),
                ) {
                    let _ = self.reply.try_send(&b);
                }
            }
        }
        any
    }
}

async fn recv_upstream(up: Option<&UdpUpstream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match up {
        Some(u) => u.socket.recv(buf).await,
        None => std::future::pending().await,
    }
}
