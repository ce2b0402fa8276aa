//! The transparent DNS proxy: UDP ([`udp`]) and TCP ([`tcp`]) on one port. Every query is
//! judged by the one decision API (the first question's name, lower-cased and fully
//! qualified, against the `rules.dns` of the source's egress and the destination's ingress);
//! a denied one is answered locally (`REFUSED`, or `NXDOMAIN` by option) with its id and
//! question; an allowed one goes, unchanged, to the server the client asked, from the client's
//! own address and port, and its answer comes back byte for byte once the `toFQDNs` addresses
//! it carries are in the maps (bounded by `max_release_delay_ms`).
//!
//! Messages that are not a well-formed query get a documented answer:
//! - shorter than a header, or a response (QR=1): nothing (and counted);
//! - an opcode other than QUERY: `REFUSED` (policy names only queries);
//! - no question, more than one, or a question that does not decode: `FORMERR`.
//!
//! Beyond `max_in_flight` queries waiting for upstream answers (or `max_sessions` UDP client
//! 5-tuples), a query is answered `SERVFAIL` at once and counted; an upstream that does not
//! answer within `upstream_timeout_ms` gets the client a `SERVFAIL` (or silence, by option).

pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use l7_rules::engine::{L7Request, Verdict};
use parsers::dns::{rcode, DnsQuery};

use super::conn::ConnState;
use super::context::Proxy;
use crate::config::{Config, DnsDenyResponse, DnsTimeoutResponse};
use crate::flows::{DnsAnswer, DnsEvent, Why};

/// Starts the DNS proxy on a thread of its own: the UDP listener and its sessions, and the
/// TCP listener and its connections, until `shutdown` fires.
pub fn start(
    dns: Arc<DnsProxy>,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
    drain_timeout: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            rt.block_on(async move {
                let udp_task = tokio::spawn(udp::serve(dns.clone(), udp, shutdown.clone()));
                super::transport::accept_until(
                    tcp,
                    "DNS over TCP",
                    shutdown,
                    drain_timeout,
                    |stream, client, drain| tcp::serve_conn(dns.clone(), stream, client, drain),
                )
                .await;
                match udp_task.await {
                    Ok(Err(e)) => tracing::error!(error = %e, "DNS: the UDP listener failed"),
                    Err(e) => tracing::error!(error = %e, "DNS: the UDP listener panicked"),
                    Ok(Ok(())) => {}
                }
                // UDP sessions answer the queries they hold, within the drain timeout.
                let deadline = tokio::time::Instant::now() + drain_timeout;
                while dns.sessions_open() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if dns.sessions_open() > 0 {
                    tracing::warn!(
                        sessions = dns.sessions_open(),
                        "DNS: drain timeout with queries still waiting upstream"
                    );
                }
            });
            // Sessions and connections still open end with the runtime.
            rt.shutdown_timeout(Duration::from_millis(200));
        })
}

/// The DNS proxy's settings (from the node config's `dns:` section).
#[derive(Clone, Debug)]
pub struct DnsSettings {
    pub deny_rcode: u8,
    pub upstream_timeout: Duration,
    pub servfail_on_timeout: bool,
    pub max_in_flight: usize,
    pub max_sessions: usize,
    pub max_release_delay: Duration,
}

impl DnsSettings {
    pub fn from_config(c: &Config) -> DnsSettings {
        DnsSettings {
            deny_rcode: match c.dns.deny_response {
                DnsDenyResponse::Refused => rcode::REFUSED,
                DnsDenyResponse::Nxdomain => rcode::NXDOMAIN,
            },
            upstream_timeout: Duration::from_millis(c.dns.upstream_timeout_ms),
            servfail_on_timeout: c.dns.on_upstream_timeout == DnsTimeoutResponse::Servfail,
            max_in_flight: c.dns.max_in_flight,
            max_sessions: c.dns.max_sessions,
            max_release_delay: Duration::from_millis(c.dns.max_release_delay_ms),
        }
    }
}

/// What the DNS handlers share.
pub struct DnsProxy {
    pub proxy: Arc<Proxy>,
    pub settings: DnsSettings,
    /// The controller's inbox, where learned `toFQDNs` addresses go.
    learn: Option<std::sync::mpsc::Sender<crate::sources::SourceEvent>>,
    in_flight: AtomicUsize,
    sessions: AtomicUsize,
    /// When each (client, name) last refreshed addresses the maps already held: a repeated
    /// answer refreshes their expiry at most once per [`REFRESH_EVERY`], not per query.
    refreshed: std::sync::Mutex<std::collections::HashMap<(std::net::Ipv4Addr, String), Instant>>,
}

/// How often a repeated answer refreshes the expiry of addresses already in the maps.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Entries of [`DnsProxy::refreshed`] before it is emptied (it only saves work).
const REFRESHED_MAX: usize = 65_536;

/// What to do with one message from a client.
pub enum Outcome {
    /// Forward it unchanged; the query and why it may go.
    Forward(Pending),
    /// Answer the client with these bytes (and write this flow).
    Answer(Vec<u8>, Option<DnsEvent>),
    /// Nothing to answer (too short, a response).
    Ignore,
}

/// When an answer may go to the client.
pub enum Release {
    /// Not an answer to the query (the caller keeps waiting).
    NotAnAnswer,
    /// Now.
    Now,
    /// When the controller says its addresses are in the maps (or `max_release_delay`).
    After(tokio::sync::oneshot::Receiver<()>, Instant),
}

/// A forwarded query, until its answer comes back or its time runs out.
pub struct Pending {
    pub query: DnsQuery,
    /// The query as received (for a `SERVFAIL` built from it).
    pub bytes: Vec<u8>,
    pub verdict: &'static str,
    pub why: Why,
    pub direction: &'static str,
    pub conn: Arc<super::conn::ConnPolicy>,
    pub sent: Instant,
    pub deadline: Instant,
    /// Sent again on a new TCP connection after the first one closed.
    pub resent: bool,
}

impl DnsProxy {
    pub fn new(
        proxy: Arc<Proxy>,
        settings: DnsSettings,
        learn: Option<std::sync::mpsc::Sender<crate::sources::SourceEvent>>,
    ) -> DnsProxy {
        DnsProxy {
            proxy,
            settings,
            learn,
            in_flight: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            refreshed: Default::default(),
        }
    }

    /// Judges one message of `conn`'s client.
    pub fn judge(&self, conn: &ConnState, msg: &[u8], transport: &'static str) -> Outcome {
        let m = &self.proxy.metrics.dns;
        let Some(h) = parsers::dns::header(msg) else {
            m.malformed.inc();
            tracing::debug!(client = %conn.client, len = msg.len(), "DNS message shorter than a header: dropped");
            return Outcome::Ignore;
        };
        if h.response {
            m.malformed.inc();
            tracing::debug!(client = %conn.client, "a DNS response sent to the proxy: dropped");
            return Outcome::Ignore;
        }
        let view = self.proxy.view.load();
        let policy = conn.policy(&view);
        let refuse = |code: u8, reason: String, query: Option<&DnsQuery>| {
            let event = self.event(
                &policy,
                transport,
                "DROPPED",
                query,
                Some(u16::from(code)),
                Why::Check {
                    policy: None,
                    reason: reason.into(),
                },
            );
            m.query("DROPPED", parsers::dns::rcode_name(u16::from(code)));
            match parsers::dns::error_response(msg, code) {
                Some(bytes) => Outcome::Answer(bytes, Some(event)),
                None => Outcome::Ignore,
            }
        };
        if h.opcode != 0 {
            m.malformed.inc();
            return refuse(
                rcode::REFUSED,
                format!("opcode {} is not QUERY: only queries are judged", h.opcode),
                None,
            );
        }
        if h.question_count != 1 {
            m.malformed.inc();
            return refuse(
                rcode::FORMERR,
                format!(
                    "{} questions: a query must ask exactly one",
                    h.question_count
                ),
                None,
            );
        }
        let query = match parsers::dns::parse_query(msg) {
            Ok(q) => q,
            Err(e) => {
                m.malformed.inc();
                return refuse(rcode::FORMERR, format!("malformed query: {e}"), None);
            }
        };
        let decision = policy
            .policy
            .decide(Some(&L7Request::Dns { name: &query.name }));
        let direction = decision
            .direction
            .unwrap_or(policy.default_direction)
            .as_str();
        match decision.verdict {
            Verdict::Deny => {
                let code = self.settings.deny_rcode;
                m.query("DROPPED", parsers::dns::rcode_name(u16::from(code)));
                let bytes = parsers::dns::error_response(msg, code);
                let mut event = self.event(
                    &policy,
                    transport,
                    "DROPPED",
                    Some(&query),
                    Some(u16::from(code)),
                    Why::Decision(decision),
                );
                event.direction = direction;
                match bytes {
                    Some(b) => Outcome::Answer(b, Some(event)),
                    None => Outcome::Ignore,
                }
            }
            v => {
                if self.in_flight.load(Ordering::Relaxed) >= self.settings.max_in_flight {
                    m.overflow.inc();
                    return refuse(
                        rcode::SERVFAIL,
                        format!(
                            "{} queries already wait for upstream answers (dns.max_in_flight)",
                            self.settings.max_in_flight
                        ),
                        Some(&query),
                    );
                }
                let now = Instant::now();
                Outcome::Forward(Pending {
                    query,
                    bytes: msg.to_vec(),
                    verdict: if v == Verdict::Audit {
                        "AUDIT"
                    } else {
                        "FORWARDED"
                    },
                    why: Why::Decision(decision),
                    direction,
                    conn: policy,
                    sent: now,
                    deadline: now + self.settings.upstream_timeout,
                    resent: false,
                })
            }
        }
    }

    /// A query is now waiting upstream.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.proxy.metrics.dns.in_flight.inc();
    }

    /// A query stopped waiting upstream (answered, timed out, or its socket went).
    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.proxy.metrics.dns.in_flight.dec();
    }

    /// A new UDP client 5-tuple, unless `max_sessions` are live.
    pub fn open_session(&self) -> bool {
        if self.sessions.fetch_add(1, Ordering::Relaxed) >= self.settings.max_sessions {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
            self.proxy.metrics.dns.overflow.inc();
            return false;
        }
        true
    }

    pub fn close_session(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// UDP client sessions still open.
    pub fn sessions_open(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// The upstream's answer to `p`: checked, counted, its flow written, and its `toFQDNs`
    /// addresses sent to the controller. The caller then sends the answer to the client
    /// unchanged, once [`Release`] says.
    pub fn answered(
        &self,
        client: SocketAddr,
        p: &Pending,
        answer: &[u8],
        transport: &'static str,
    ) -> Release {
        let Some(h) = parsers::dns::header(answer) else {
            return Release::NotAnAnswer;
        };
        if !h.response || h.id != p.query.id {
            return Release::NotAnAnswer;
        }
        let m = &self.proxy.metrics.dns;
        m.upstream_latency.observe(p.sent.elapsed().as_secs_f64());
        m.query(p.verdict, parsers::dns::rcode_name(u16::from(h.rcode)));
        let info = parsers::dns::answer_addresses(answer).ok();
        let release = match &info {
            Some(i) => self.learn(client, &p.query, i),
            None => Release::Now,
        };
        let mut event = self.event(
            &p.conn,
            transport,
            p.verdict,
            Some(&p.query),
            Some(info.as_ref().map_or(u16::from(h.rcode), |i| i.rcode)),
            p.why.clone(),
        );
        event.direction = p.direction;
        event.answer = Some(match info {
            Some(i) => DnsAnswer {
                ips: i.addresses,
                ttl: i.min_ttl,
                cnames: i.cnames,
            },
            None => DnsAnswer {
                ips: Vec::new(),
                ttl: None,
                cnames: Vec::new(),
            },
        });
        self.proxy.flows.send_dns(event);
        release
    }

    /// Sends the addresses of an allowed answer to the controller when a `toFQDNs` selector
    /// selects the query name (Cilium attributes a CNAME chain's addresses to the name asked).
    fn learn(
        &self,
        client: SocketAddr,
        query: &DnsQuery,
        info: &parsers::dns::AnswerInfo,
    ) -> Release {
        let Some(inbox) = &self.learn else {
            return Release::Now;
        };
        if info.rcode != 0 || info.addresses.is_empty() {
            return Release::Now;
        }
        let view = self.proxy.view.load();
        let name = parsers::dns::normalize_name(&query.name);
        if !view.fqdn_selectors.selects(&name) {
            return Release::Now;
        }
        let ips: Vec<std::net::Ipv4Addr> = info
            .addresses
            .iter()
            .filter_map(|a| match a {
                std::net::IpAddr::V4(v4) => Some(*v4),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        let std::net::IpAddr::V4(client) = client.ip() else {
            return Release::Now;
        };
        if ips.is_empty() {
            return Release::Now;
        }
        // Addresses the maps already hold for this name: nothing to wait for; the controller
        // only refreshes their expiry.
        let in_maps = ips.iter().all(|ip| {
            view.learned
                .get(ip)
                .is_some_and(|names| names.contains(&name))
        });
        if in_maps {
            let mut r = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let key = (client, name);
            match r.get(&key) {
                Some(t) if now.duration_since(*t) < REFRESH_EVERY => return Release::Now,
                _ => {}
            }
            if r.len() >= REFRESHED_MAX {
                r.clear();
            }
            r.insert(key.clone(), now);
            drop(r);
            let (done, _) = tokio::sync::oneshot::channel();
            let _ = inbox.send(crate::sources::SourceEvent::FqdnLearned(
                crate::sources::FqdnAnswer {
                    client,
                    name: key.1,
                    ips,
                    ttl: info.min_ttl.unwrap_or(0),
                    done,
                },
            ));
            return Release::Now;
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        let sent = inbox.send(crate::sources::SourceEvent::FqdnLearned(
            crate::sources::FqdnAnswer {
                client,
                name,
                ips,
                ttl: info.min_ttl.unwrap_or(0),
                done,
            },
        ));
        match sent {
            Ok(()) => Release::After(wait, Instant::now()),
            Err(_) => Release::Now,
        }
    }

    /// Waits until the maps hold an answer's addresses, at most `max_release_delay`
    /// (counted when it runs out).
    pub async fn wait_release(&self, release: Release) {
        if let Release::After(wait, since) = release {
            let m = &self.proxy.metrics.dns;
            match tokio::time::timeout(self.settings.max_release_delay, wait).await {
                Ok(_) => m.release_delay.observe(since.elapsed().as_secs_f64()),
                Err(_) => {
                    m.max_delay_hits.inc();
                    m.release_delay.observe(since.elapsed().as_secs_f64());
                    tracing::warn!(
                        max_ms = self.settings.max_release_delay.as_millis() as u64,
                        "a DNS answer was released before its addresses were in the maps"
                    );
                }
            }
        }
    }

    /// `p`'s upstream did not answer in time (or its connection went): the bytes to answer
    /// the client with, if any (`SERVFAIL`, unless the node config says silence).
    pub fn timed_out(&self, p: &Pending, transport: &'static str, why: &str) -> Option<Vec<u8>> {
        let m = &self.proxy.metrics.dns;
        m.upstream_timeouts.inc();
        let answer = self
            .settings
            .servfail_on_timeout
            .then(|| parsers::dns::error_response(&p.bytes, rcode::SERVFAIL))
            .flatten();
        let code = answer.as_ref().map(|_| u16::from(rcode::SERVFAIL));
        m.query(p.verdict, code.map_or("none", parsers::dns::rcode_name));
        let mut event = self.event(
            &p.conn,
            transport,
            p.verdict,
            Some(&p.query),
            code,
            Why::Check {
                policy: None,
                reason: why.into(),
            },
        );
        event.direction = p.direction;
        self.proxy.flows.send_dns(event);
        answer
    }

    /// An upstream socket could not be opened or used.
    pub fn upstream_failed(&self, e: &std::io::Error) {
        self.proxy
            .metrics
            .dns
            .upstream_error(e.raw_os_error().unwrap_or(0));
    }

    fn event(
        &self,
        policy: &super::conn::ConnPolicy,
        transport: &'static str,
        verdict: &'static str,
        query: Option<&DnsQuery>,
        rcode: Option<u16>,
        why: Why,
    ) -> DnsEvent {
        DnsEvent {
            time: SystemTime::now(),
            verdict,
            direction: policy.default_direction.as_str(),
            source: policy.src_peer.clone(),
            destination: policy.dst_peer.clone(),
            transport,
            name: query.map_or_else(String::new, |q| q.name.clone()),
            qtype: query.map_or(0, |q| q.qtype),
            rcode,
            answer: None,
            why,
        }
    }

    /// Whether the proxy speaks to `server` from the client's own address: always, except to
    /// the node's own addresses (a local server's answer to a pod address would be routed to
    /// the pod, never through a hook that could hand it back).
    pub fn upstream_source(&self, client: SocketAddr, server: SocketAddr) -> Option<SocketAddr> {
        let view = self.proxy.view.load();
        let dst = view.resolve(server.ip());
        (dst.peer.identity
            != l7_rules::identity::Identity(l7_rules::identity::Reserved::Host as u32))
        .then_some(client)
    }
}
