//! The transparent HTTP proxy: HTTP/1.1 (keep-alive, upgrades) and HTTP/2 prior knowledge on
//! one listener (hyper-util's auto builder). The original destination is the accepted socket's
//! local address (`bpf_sk_assign` + `IP_TRANSPARENT`), the client its peer address. Every
//! request is checked against the source's egress and the destination's ingress L7 rules of
//! the current [`NodeView`]; allowed requests go upstream over pooled connections speaking the
//! same HTTP version, with `SO_MARK` = `MARK_PROXY_UPSTREAM`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use l7_rules::engine::{Flow as PolicyFlow, L3L4Verdict, L7Policy};
use l7_rules::l7::http::{HeaderAction, HttpRequest};
use l7_rules::model::{Direction, L7Parser, Protocol};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, info, warn, Instrument};

use crate::flows::{FlowPeer, FlowWriter, HttpEvent, SharedPeer, Why};
use crate::metrics::Metrics;
use crate::node::{NodeView, PeerInfo};

/// Largest request head (request line + headers) accepted on HTTP/1.1; larger gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most request headers accepted on HTTP/1.1; more gets 431.
pub const MAX_HEADERS: usize = 100;
/// HTTP/2 header list limit (SETTINGS_MAX_HEADER_LIST_SIZE).
pub const MAX_H2_HEADER_LIST: u32 = 64 * 1024;
/// A client must send its request head within this time.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Idle upstream HTTP/1.1 connections kept per original destination.
pub const MAX_IDLE_PER_UPSTREAM: usize = 64;
/// Upstream connect timeout.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The body of a denied request.
pub const DENY_BODY: &str = "Access denied\r\n";

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Shared state of the proxy.
pub struct Proxy {
    pub view: Arc<ArcSwap<NodeView>>,
    pub flows: FlowWriter,
    pub metrics: Arc<Metrics>,
    pool: Pool,
}

impl Proxy {
    pub fn new(view: Arc<ArcSwap<NodeView>>, flows: FlowWriter, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            view,
            flows,
            metrics,
            pool: Pool::default(),
        }
    }

    /// Registers every upstream socket in the datapath's proxy-socket map: the kernel honours
    /// the proxy mark only for registered sockets (a forged mark gets ordinary policy).
    pub fn with_proxy_sockets(mut self, sockets: bpf_redirect::ProxySockets) -> Proxy {
        self.pool.sockets = Some(Arc::new(Mutex::new(sockets)));
        self
    }
}

/// Binds the transparent listener (IP_TRANSPARENT, SO_REUSEADDR) on `0.0.0.0:port`.
pub fn bind_transparent(port: u16) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent(true)?;
    s.set_nonblocking(true)?;
    let addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], port));
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// The threads that own client connections: one current-thread runtime each, like nginx's
/// worker processes. A connection, its requests and its upstream connections stay on one
/// thread: no work stealing, no cross-thread wake-ups on the request path. The accept loop
/// hands connections out in turn.
pub struct Workers {
    senders: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Workers {
    /// Starts `n` (at least 1) worker threads serving connections through `proxy`. They end
    /// when the `Workers` is dropped.
    pub fn start(n: usize, proxy: Arc<Proxy>) -> std::io::Result<Workers> {
        let mut senders = Vec::new();
        for i in 0..n.max(1) {
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let proxy = proxy.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        while let Some((stream, peer)) = rx.recv().await {
                            let stream = match TcpStream::from_std(stream) {
                                Ok(s) => s,
                                Err(e) => {
                                    warn!(error = %e, "registering an accepted connection");
                                    continue;
                                }
                            };
                            let local = stream.local_addr().ok();
                            let span =
                                tracing::debug_span!("conn", client = %peer, orig_dst = ?local);
                            tokio::spawn(serve_conn(proxy.clone(), stream, peer).instrument(span));
                        }
                    })
                })?;
            senders.push(tx);
        }
        Ok(Workers {
            senders,
            next: Default::default(),
        })
    }

    fn dispatch(&self, stream: TcpStream, peer: SocketAddr) {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "handing over an accepted connection");
                return;
            }
        };
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.senders.len();
        if self.senders[i].send((stream, peer)).is_err() {
            warn!(worker = i, "proxy worker has stopped; connection dropped");
        }
    }
}

/// Accepts until `shutdown` fires, handing connections to the workers.
pub async fn serve(
    workers: Workers,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => workers.dispatch(stream, peer),
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// What one connection enforces, computed from one view generation.
struct ConnPolicy {
    generation: u64,
    dst: PeerInfo,
    /// The two ends as flows name them (built once per connection, shared by its flows).
    src_peer: Arc<SharedPeer>,
    dst_peer: Arc<SharedPeer>,
    checks: Vec<DirCheck>,
    audit: bool,
}

struct DirCheck {
    direction: Direction,
    /// L3/L4 denies this flow now (policy changed after the kernel let it in).
    denied_l3: bool,
    policy: Option<L7Policy>,
    /// `namespace/name` of the policy that redirected (named on denies).
    redirect_policy: Option<Arc<str>>,
    reason: Arc<str>,
}

fn conn_policy(view: &NodeView, client: SocketAddr, orig_dst: SocketAddr) -> ConnPolicy {
    let src = view.resolve(client.ip());
    let dst = view.resolve(orig_dst.ip());
    let mut checks = Vec::new();
    let mut audit = view.settings.audit;
    let mut check = |direction: Direction, subject: &PeerInfo, peer: &PeerInfo| {
        let flow = PolicyFlow {
            direction,
            subject: &subject.peer,
            peer: &peer.peer,
            protocol: Protocol::Tcp,
            port: orig_dst.port(),
        };
        let (verdict, reason, origin) = view.engine.l3l4(&flow);
        let redirect_policy = origin.as_ref().map(|o| Arc::from(o.policy.id()));
        let reason = Arc::from(reason);
        match verdict {
            L3L4Verdict::Allow => {}
            L3L4Verdict::Deny => checks.push(DirCheck {
                direction,
                denied_l3: true,
                policy: None,
                redirect_policy,
                reason,
            }),
            L3L4Verdict::Redirect(L7Parser::Http) => checks.push(DirCheck {
                direction,
                denied_l3: false,
                policy: Some(view.engine.l7_policy(&flow)),
                redirect_policy,
                reason,
            }),
            L3L4Verdict::Redirect(other) => checks.push(DirCheck {
                direction,
                denied_l3: false,
                policy: Some(L7Policy::Conflict(vec![other])),
                redirect_policy,
                reason: Arc::from(format!(
                    "the port is redirected to the {} parser, not http",
                    other.as_str()
                )),
            }),
        }
    };
    if let Some(i) = src.endpoint {
        audit |= view.endpoints[i].config.audit;
        check(Direction::Egress, &src, &dst);
    }
    if let Some(i) = dst.endpoint {
        audit |= view.endpoints[i].config.audit;
        check(Direction::Ingress, &dst, &src);
    }
    ConnPolicy {
        generation: view.generation,
        src_peer: Arc::new(SharedPeer::new(FlowPeer::new(
            &src,
            client.ip(),
            client.port(),
        ))),
        dst_peer: Arc::new(SharedPeer::new(FlowPeer::new(
            &dst,
            orig_dst.ip(),
            orig_dst.port(),
        ))),
        dst,
        checks,
        audit,
    }
}

struct ConnCtx {
    client: SocketAddr,
    orig_dst: SocketAddr,
    policy: Mutex<Option<Arc<ConnPolicy>>>,
    /// The upstream HTTP/1.1 connection this client connection last used. An HTTP/1.1 client
    /// sends its next request only after the previous response is complete, so the same
    /// upstream connection is normally ready for it: no pool lookup, no hand-back task.
    upstream_h1: Mutex<Option<client1::SendRequest<Incoming>>>,
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        let slot = self
            .upstream_h1
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = slot.take() {
            if sender.is_ready() {
                park_idle(self.orig_dst, sender);
            }
        }
    }
}

impl ConnCtx {
    /// The connection's policy for the current view (recomputed after a policy change, so
    /// live connections see new rules on their next request).
    fn policy(&self, view: &NodeView) -> Arc<ConnPolicy> {
        let mut g = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        match &*g {
            Some(p) if p.generation == view.generation => p.clone(),
            _ => {
                let p = Arc::new(conn_policy(view, self.client, self.orig_dst));
                *g = Some(p.clone());
                p
            }
        }
    }
}

async fn serve_conn(proxy: Arc<Proxy>, stream: TcpStream, client: SocketAddr) {
    let orig_dst = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "getsockname failed");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    debug!("accepted");
    let ctx = Arc::new(ConnCtx {
        client,
        orig_dst,
        policy: Mutex::new(None),
        upstream_h1: Mutex::new(None),
    });
    let svc = hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(proxy, ctx, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .auto_date_header(false)
        .preserve_header_case(true)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .auto_date_header(false)
        .max_header_list_size(MAX_H2_HEADER_LIST)
        .timer(TokioTimer::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await
    {
        // The client's fault (malformed request, reset) or a stuck peer: this connection only.
        info!(error = %e, %client, %orig_dst, "connection closed with an error");
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| parsers::grpc::is_grpc_content_type(v.as_bytes()))
}

fn full(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The 403 of a denied HTTP request.
pub fn deny_http() -> Response<Body> {
    full(StatusCode::FORBIDDEN, "text/plain", DENY_BODY)
}

/// The trailers-only reply of a denied gRPC call: HTTP 200, grpc-status 7.
pub fn deny_grpc() -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static("7"));
    h.insert("grpc-message", HeaderValue::from_static("Access denied"));
    r
}

fn bad_request(why: &str) -> Response<Body> {
    debug!(why, "bad request");
    full(StatusCode::BAD_REQUEST, "text/plain", "Bad request\r\n")
}

fn bad_gateway() -> Response<Body> {
    full(
        StatusCode::BAD_GATEWAY,
        "text/plain",
        "Upstream unavailable\r\n",
    )
}

/// The outcome of the L7 checks for one request.
struct Decision {
    allowed: bool,
    direction: Direction,
    why: Why,
    actions: Vec<HeaderAction>,
}

fn decide(cp: &ConnPolicy, req: &HttpRequest<'_>) -> Decision {
    let mut d = Decision {
        allowed: true,
        direction: if cp.dst.endpoint.is_some() {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        why: Why::none(),
        actions: Vec::new(),
    };
    for c in &cp.checks {
        let fixed = || Why::Check {
            policy: c.redirect_policy.clone(),
            reason: c.reason.clone(),
        };
        let (ok, why) = if c.denied_l3 {
            (false, fixed())
        } else {
            match &c.policy {
                None | Some(L7Policy::AllowAll(_)) => (true, fixed()),
                Some(L7Policy::Http(set)) => {
                    let v = set.check(req);
                    d.actions.extend(v.actions);
                    match v.allowed_by {
                        Some(i) => (true, Why::Rule(set.rules()[i].clone())),
                        None => (
                            false,
                            Why::Text {
                                policy: c.redirect_policy.clone(),
                                reason: format!(
                                    "{} {} matched no http rule of {}",
                                    req.method,
                                    req.path,
                                    c.redirect_policy.as_deref().unwrap_or("the policy")
                                ),
                            },
                        ),
                    }
                }
                Some(other) => (
                    false,
                    Why::Text {
                        policy: c.redirect_policy.clone(),
                        reason: format!("{}: {other:?}", c.reason),
                    },
                ),
            }
        };
        if !ok {
            if d.allowed {
                d.allowed = false;
                d.direction = c.direction;
                d.why = why;
            }
        } else if d.allowed && why.has_policy() {
            d.direction = c.direction;
            d.why = why;
        }
    }
    d
}

fn apply_actions(headers: &mut http::HeaderMap, actions: &[HeaderAction]) {
    for a in actions {
        match a {
            HeaderAction::Log { name } => info!(header = %name, "headerMatches mismatch (LOG)"),
            HeaderAction::Add { name, value } => {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::try_from(&**name),
                    HeaderValue::try_from(&**value),
                ) {
                    headers.append(n, v);
                }
            }
            HeaderAction::Delete { name } => {
                headers.remove(&**name);
            }
            HeaderAction::Replace { name, value } => {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::try_from(&**name),
                    HeaderValue::try_from(&**value),
                ) {
                    headers.insert(n, v);
                }
            }
        }
    }
}

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1) before a message crosses the proxy:
/// `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
/// `Transfer-Encoding` (hyper frames each side itself), `Upgrade`, and `TE` unless it is
/// `trailers` (gRPC needs it). Each side's keep-alive is its own: an upstream `Connection:
/// close` must not close the client's connection. `upgrade` keeps `Upgrade` and
/// `Connection: upgrade` for a protocol switch.
/// Headers a `Connection` list cannot remove: the request's target and its framing.
const NOT_HOP_BY_HOP: [&str; 2] = ["host", "content-length"];

/// An HTTP/1.1 protocol switch the proxy can tunnel: `Upgrade` named in `Connection`, to
/// anything but `h2c` (HTTP/2 goes upstream with prior knowledge; an h2c upgrade is forwarded
/// as a plain HTTP/1.1 request, as Envoy does).
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    use http::header::{CONNECTION, UPGRADE};
    let named = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    named
        && headers
            .get(UPGRADE)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"h2c"))
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap, upgrade: bool) {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    if let Some(named) = headers.get(CONNECTION).map(|_| {
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
    }) {
        for name in named {
            let kept = NOT_HOP_BY_HOP.contains(&name.as_str()) || (upgrade && name == "upgrade");
            if !kept {
                headers.remove(name.as_str());
            }
        }
        headers.remove(CONNECTION);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    headers.remove(TRANSFER_ENCODING);
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
    if headers
        .get(TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(TE);
    }
}

async fn handle(
    proxy: Arc<Proxy>,
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let cp = ctx.policy(&proxy.view.load());
    let version = req.version();
    // Hop-by-hop headers go first, so the rules judge exactly the headers that are forwarded
    // (a header a client names in `Connection` is neither checked nor sent).
    let upgrade = version != Version::HTTP_2 && is_upgrade(req.headers());
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let host = match req.headers().get(HOST) {
        Some(h) if h.to_str().is_err() => return bad_request("non-ASCII Host header"),
        Some(h) => h.clone(),
        None => match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).unwrap_or(HeaderValue::from_static("")),
            None => HeaderValue::from_static(""),
        },
    };
    // Absolute-form whose authority differs from Host: ambiguous, rejected (DESIGN §6).
    if version != Version::HTTP_2 {
        if let (Some(a), Some(h)) = (req.uri().authority(), req.headers().get(HOST)) {
            if !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) {
                return bad_request("absolute-form authority differs from Host");
            }
        }
    }
    let grpc = is_grpc(&req);
    let decision = {
        let raw_path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let path = match parsers::path::normalize(raw_path) {
            Ok(p) => p,
            Err(e) => return bad_request(&format!("path: {e}")),
        };
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
            .collect();
        decide(
            &cp,
            &HttpRequest {
                method: req.method().as_str(),
                path: &path,
                host: host.to_str().unwrap_or(""),
                headers: &headers,
            },
        )
    };
    let proto_label = if grpc { "grpc" } else { "http" };
    let flow = |verdict: &'static str, code: u16, method, uri, why| HttpEvent {
        time: SystemTime::now(),
        verdict,
        direction: decision.direction.as_str(),
        source: cp.src_peer.clone(),
        destination: cp.dst_peer.clone(),
        method,
        host: host.clone(),
        orig_dst: ctx.orig_dst,
        uri,
        version: version_str(version),
        code,
        why,
    };

    if !decision.allowed && !cp.audit {
        let resp = if grpc { deny_grpc() } else { deny_http() };
        let event = flow(
            "DROPPED",
            if grpc { 200 } else { 403 },
            req.method().clone(),
            req.uri().clone(),
            decision.why.clone(),
        );
        // Every deny is a flow (`ward observe --verdict DROPPED`); the log has it at debug, so a
        // client hammering a denied path cannot flood the agent log.
        debug!(client = %ctx.client, method = %event.method, url = %event.url(), policy = ?decision.why.policy(),
            reason = %decision.why.reason(), "request denied");
        proxy
            .metrics
            .request(proto_label, "DROPPED", started.elapsed());
        proxy.flows.send_http(event);
        return resp;
    }
    let verdict = if decision.allowed {
        "FORWARDED"
    } else {
        "AUDIT"
    };
    let (method, uri) = (req.method().clone(), req.uri().clone());
    if !decision.allowed {
        let url = flow(verdict, 0, method.clone(), uri.clone(), Why::none()).url();
        warn!(client = %ctx.client, %method, %url, policy = ?decision.why.policy(), reason = %decision.why.reason(),
            "AUDIT: request would be denied; forwarding");
    }
    apply_actions(req.headers_mut(), &decision.actions);

    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let result = if version == Version::HTTP_2 {
        proxy.pool.send_h2(ctx.orig_dst, req).await
    } else {
        proxy.pool.send_h1(&ctx, req).await
    };
    let (resp, code) = match result {
        Ok(mut resp) => {
            let code = resp.status().as_u16();
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            strip_hop_by_hop(resp.headers_mut(), switching && down_upgrade.is_some());
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(down) = down_upgrade {
                    let up = hyper::upgrade::on(&mut resp);
                    tokio::spawn(async move {
                        match tokio::try_join!(down, up) {
                            Ok((d, u)) => {
                                let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                                if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await
                                {
                                    debug!(error = %e, "upgraded tunnel ended");
                                }
                            }
                            Err(e) => debug!(error = %e, "upgrade failed"),
                        }
                    });
                }
            }
            (resp.map(|b| b.map_err(Into::into).boxed()), code)
        }
        Err(e) => {
            warn!(error = %e, client = %ctx.client, upstream = %ctx.orig_dst, "upstream request failed");
            (bad_gateway(), 502)
        }
    };
    proxy
        .metrics
        .request(proto_label, verdict, started.elapsed());
    proxy
        .flows
        .send_http(flow(verdict, code, method, uri, decision.why.clone()));
    resp
}

thread_local! {
    /// Idle upstream HTTP/1.1 connections of this worker thread, by original destination.
    /// Per thread because a connection's task runs on the thread that opened it: a request
    /// from another worker would cross threads twice (measured: a wake-up per request).
    static IDLE_H1: RefCell<HashMap<SocketAddr, Vec<client1::SendRequest<Incoming>>>> =
        RefCell::default();
    /// This worker thread's multiplexed HTTP/2 upstream connection per destination.
    static H2: RefCell<HashMap<SocketAddr, client2::SendRequest<Incoming>>> =
        RefCell::default();
}

/// Upstream connections: the datapath registry their sockets go into (the connections
/// themselves are per worker thread, [`IDLE_H1`] and [`H2`]).
#[derive(Default)]
struct Pool {
    sockets: Option<SocketRegistry>,
}

type SocketRegistry = Arc<Mutex<bpf_redirect::ProxySockets>>;

/// How long a closed upstream socket stays registered: its last ACK/FIN may leave after close.
const UNREGISTER_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// An upstream connection whose socket cookie is registered with the datapath for as long as
/// it lives (and [`UNREGISTER_DELAY`] after).
struct Upstream {
    stream: TcpStream,
    registration: Option<(SocketRegistry, u64)>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let Some((registry, cookie)) = self.registration.take() else {
            return;
        };
        let unregister = move || {
            if let Err(e) = registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(cookie)
            {
                warn!(error = %e, cookie, "unregistering an upstream socket");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    tokio::time::sleep(UNREGISTER_DELAY).await;
                    unregister();
                });
            }
            Err(_) => unregister(),
        }
    }
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Upstream failed: our side or the upstream's, never the client's.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("HTTP with the upstream: {0}")]
    Http(#[from] hyper::Error),
}

/// Opens an upstream connection: proxy mark, socket registered with the datapath (after
/// `socket()` and the mark, before `connect()`), no Nagle.
async fn connect(
    addr: SocketAddr,
    sockets: Option<&SocketRegistry>,
) -> Result<Upstream, UpstreamError> {
    use std::os::fd::AsFd;
    let sock = TcpSocket::new_v4().map_err(|e| UpstreamError::Connect(addr, e))?;
    socket2::SockRef::from(&sock)
        .set_mark(bpf_redirect::common::MARK_PROXY_UPSTREAM)
        .map_err(|e| UpstreamError::Connect(addr, e))?;
    let registration = match sockets {
        None => None,
        Some(registry) => {
            let cookie = bpf_redirect::socket_cookie(sock.as_fd())
                .map_err(|e| UpstreamError::Connect(addr, e))?;
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cookie)
                .map_err(|e| UpstreamError::Connect(addr, std::io::Error::other(e)))?;
            Some((registry.clone(), cookie))
        }
    };
    // From here the guard unregisters the cookie, also when connecting fails.
    let pending = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr));
    let guard = RegistrationGuard(registration);
    let stream = pending
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(addr))?
        .map_err(|e| UpstreamError::Connect(addr, e))?;
    let _ = stream.set_nodelay(true);
    Ok(guard.attach(stream))
}

/// Holds a registration until a stream takes it over.
struct RegistrationGuard(Option<(SocketRegistry, u64)>);

impl RegistrationGuard {
    fn attach(mut self, stream: TcpStream) -> Upstream {
        Upstream {
            stream,
            registration: self.0.take(),
        }
    }
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        if let Some((registry, cookie)) = self.0.take() {
            let _ = registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(cookie);
        }
    }
}

/// Puts an idle HTTP/1.1 sender back in this thread's pool (bounded per destination).
fn park_idle(addr: SocketAddr, sender: client1::SendRequest<Incoming>) {
    IDLE_H1.with_borrow_mut(|idle| {
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(sender);
        }
    });
}

impl Pool {
    /// An HTTP/2 request: one multiplexed upstream connection per destination.
    async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let existing = H2.with_borrow(|h2| h2.get(&addr).filter(|s| !s.is_closed()).cloned());
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let io = TokioIo::new(connect(addr, self.sockets.as_ref()).await?);
                let (sender, conn) = client2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "upstream h2 connection ended");
                    }
                });
                H2.with_borrow_mut(|h2| h2.insert(addr, sender.clone()));
                sender
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    /// An HTTP/1.1 request of the client connection `ctx`: on the upstream connection its
    /// previous request used when that one is ready, else an idle one from the pool, else a new
    /// one. The sender stays with the client connection afterwards.
    async fn send_h1(
        &self,
        ctx: &ConnCtx,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let addr = ctx.orig_dst;
        let previous = ctx
            .upstream_h1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let own = match previous {
            Some(s) if s.is_ready() => Some(s),
            Some(s) => {
                // Not ready yet (its last response still finishing) or closed: hand it to the
                // pool once it is ready; a closed one errors and is dropped.
                let mut s = s;
                tokio::spawn(async move {
                    if s.ready().await.is_ok() {
                        park_idle(addr, s);
                    }
                });
                None
            }
            None => None,
        };
        let idle = own.or_else(|| {
            IDLE_H1.with_borrow_mut(|idle| {
                let list = idle.get_mut(&addr)?;
                while let Some(s) = list.pop() {
                    if s.is_ready() {
                        return Some(s);
                    }
                }
                None
            })
        });
        let mut sender = match idle {
            Some(s) => s,
            None => {
                let io = TokioIo::new(connect(addr, self.sockets.as_ref()).await?);
                let (sender, conn) = client1::Builder::new()
                    .preserve_header_case(true)
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        debug!(error = %e, "upstream h1 connection ended");
                    }
                });
                sender
            }
        };
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        *ctx.upstream_h1.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(r: Response<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
        let (parts, body) = r.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn http_deny_is_403_text_plain_access_denied() {
        let (status, headers, body) = collect(deny_http()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers[CONTENT_TYPE], "text/plain");
        assert_eq!(&body[..], b"Access denied\r\n");
        assert!(headers.get("server").is_none());
        assert_eq!(headers.len(), 1);
    }

    #[tokio::test]
    async fn grpc_deny_is_trailers_only_status_7() {
        let r = deny_grpc();
        assert!(http_body::Body::is_end_stream(r.body()));
        let (status, headers, body) = collect(r).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers["grpc-status"], "7");
        assert_eq!(headers["grpc-message"], "Access denied");
        assert!(body.is_empty());
    }

    fn req<'a>(method: &'a str, path: &'a str) -> HttpRequest<'a> {
        HttpRequest {
            method,
            path,
            host: "deathstar",
            headers: &[],
        }
    }

    #[test]
    fn ingress_l7_rules_decide_per_request() {
        let view = crate::node::tests::starwars_view();
        let tie: SocketAddr = "10.200.3.2:40000".parse().unwrap();
        let ds: SocketAddr = "10.200.1.2:80".parse().unwrap();
        let cp = conn_policy(&view, tie, ds);
        assert_eq!(cp.src_peer.peer().name, "tiefighter");
        assert_eq!(cp.dst_peer.peer().name, "deathstar-1");
        assert_eq!(cp.checks.len(), 1, "only deathstar's ingress is restricted");
        let ok = decide(&cp, &req("POST", "/v1/request-landing"));
        assert!(ok.allowed, "{}", ok.why.reason());
        assert_eq!(ok.why.policy().as_deref(), Some("default/rule1"));
        assert!(
            ok.why.reason().contains("allows POST /v1/request-landing"),
            "{}",
            ok.why.reason()
        );
        let no = decide(&cp, &req("PUT", "/v1/exhaust-port"));
        assert!(!no.allowed);
        assert_eq!(no.direction, Direction::Ingress);
        assert_eq!(no.why.policy().as_deref(), Some("default/rule1"));
        assert!(no
            .why
            .reason()
            .contains("PUT /v1/exhaust-port matched no http rule"));
        // xwing is denied at L3/L4: a connection that still reaches the proxy gets nothing.
        let xw: SocketAddr = "10.200.4.2:40000".parse().unwrap();
        let cp = conn_policy(&view, xw, ds);
        assert!(!decide(&cp, &req("POST", "/v1/request-landing")).allowed);
        // A flow to an unrestricted endpoint has nothing to check.
        let cp = conn_policy(&view, ds, "10.200.3.2:80".parse().unwrap());
        assert!(cp.checks.is_empty());
        assert!(decide(&cp, &req("PUT", "/anything")).allowed);
        assert!(!cp.audit);
    }

    #[test]
    fn hop_by_hop_headers_stop_at_the_proxy() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("connection", "close, X-Hop"),
            ("connection", "keep-alive"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-end-to-end", "kept"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert_eq!(plain["x-end-to-end"], "kept");
        // A protocol switch keeps what it needs.
        let mut up = h.clone();
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up["upgrade"], "websocket");
        assert_eq!(up["connection"], "upgrade");
        assert!(up.get("x-hop").is_none());
        // `Connection` cannot take the target or the framing away.
        let mut h = http::HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Host, content-length, x-a"),
        );
        h.insert("host", HeaderValue::from_static("deathstar"));
        h.insert("content-length", HeaderValue::from_static("0"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["host"], "deathstar");
        assert_eq!(h["content-length"], "0");
        assert!(h.get("x-a").is_none());
        // An upgrade needs `Upgrade` named in `Connection`; h2c is not tunnelled.
        let up = |conn: &'static str, to: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("connection", HeaderValue::from_static(conn));
            h.insert("upgrade", HeaderValue::from_static(to));
            is_upgrade(&h)
        };
        assert!(up("keep-alive, Upgrade", "websocket"));
        assert!(!up("keep-alive", "websocket"));
        assert!(!up("Upgrade, HTTP2-Settings", "h2c"));
        // gRPC's `te: trailers` is end-to-end.
        let mut grpc = http::HeaderMap::new();
        grpc.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut grpc, false);
        assert_eq!(grpc["te"], "trailers");
    }

    #[test]
    fn header_actions_mutate_the_forwarded_request() {
        let mut h = http::HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("old"));
        h.insert("x-c", HeaderValue::from_static("gone"));
        apply_actions(
            &mut h,
            &[
                HeaderAction::Add {
                    name: "x-a".into(),
                    value: "2".into(),
                },
                HeaderAction::Replace {
                    name: "x-b".into(),
                    value: "new".into(),
                },
                HeaderAction::Delete { name: "x-c".into() },
                HeaderAction::Log { name: "x-d".into() },
            ],
        );
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert_eq!(h["x-b"], "new");
        assert!(h.get("x-c").is_none());
    }
}
