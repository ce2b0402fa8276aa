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
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use l7_rules::engine::{
    ConnectionPolicy, Decision, Flow as PolicyFlow, L7Request, Verdict as L7Verdict,
};
use l7_rules::l7::http::HeaderAction;
use l7_rules::l7::request::{Judged as JudgedRequest, RawHttpRequest};
use l7_rules::model::{Direction, Protocol};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, info, warn, Instrument};

use crate::flows::{FlowPeer, FlowWriter, HttpEvent, SharedPeer, Why};
use crate::metrics::Metrics;
use crate::node::NodeView;

/// Largest request head (request line + headers) accepted on HTTP/1.1; larger gets 431 (the
/// gate's limit, which it enforces first).
pub const MAX_HEAD_BYTES: usize = parsers::http1::MAX_HEAD_LEN;
/// Most request headers accepted on HTTP/1.1; more gets 431 (the gate's limit).
pub const MAX_HEADERS: usize = parsers::http1::MAX_HEADERS;
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
    /// The two ends as flows name them (built once per connection, shared by its flows).
    src_peer: Arc<SharedPeer>,
    dst_peer: Arc<SharedPeer>,
    /// The sides Ward enforces on (the source's egress, the destination's ingress), resolved
    /// by the engine: the one decision function judges every request against it.
    policy: ConnectionPolicy,
    /// The direction a flow reports when no side decided (none is enforced).
    default_direction: Direction,
}

fn conn_policy(view: &NodeView, client: SocketAddr, orig_dst: SocketAddr) -> ConnPolicy {
    let src = view.resolve(client.ip());
    let dst = view.resolve(orig_dst.ip());
    let mut audit = view.settings.audit;
    let mut flows = Vec::with_capacity(2);
    let port = orig_dst.port();
    if let Some(i) = src.endpoint {
        audit |= view.endpoints[i].config.audit;
        flows.push(PolicyFlow {
            direction: Direction::Egress,
            subject: &src.peer,
            peer: &dst.peer,
            protocol: Protocol::Tcp,
            port,
        });
    }
    if let Some(i) = dst.endpoint {
        audit |= view.endpoints[i].config.audit;
        flows.push(PolicyFlow {
            direction: Direction::Ingress,
            subject: &dst.peer,
            peer: &src.peer,
            protocol: Protocol::Tcp,
            port,
        });
    }
    let policy = view.engine.connection_policy(&flows, audit);
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
        policy,
        default_direction: if dst.endpoint.is_some() {
            Direction::Ingress
        } else {
            Direction::Egress
        },
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
        // A client that shuts its write side after a request still gets its answer; so do
        // the requests before a head the gate refuses (the gate ends the stream there).
        .half_close(true)
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
        .serve_connection_with_upgrades(TokioIo::new(crate::gate::Gated::new(stream)), svc)
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

fn bad_gateway() -> Response<Body> {
    full(
        StatusCode::BAD_GATEWAY,
        "text/plain",
        "Upstream unavailable\r\n",
    )
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

/// Headers a `Connection` list cannot remove: the request's target and its framing.
const NOT_HOP_BY_HOP: [&str; 2] = ["host", "content-length"];

/// The comma-separated tokens of every value of `name`, trimmed.
fn tokens<'h>(
    headers: &'h http::HeaderMap,
    name: &http::header::HeaderName,
) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// An HTTP/1.1 protocol switch the proxy can tunnel: `Upgrade` named in `Connection`, offering
/// WebSocket only (`parsers::http1::websocket_only`, the gate's test too), as Cilium's Envoy
/// tunnels WebSocket alone. Any other offer is dropped and the request goes on as plain
/// HTTP/1.1: above all `h2c`, which would let the client speak HTTP/2 with the backend past
/// every rule (h2c smuggling; Envoy's `http1/codec_impl.cc`, "Ignore h2c upgrade requests").
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    use http::header::{CONNECTION, UPGRADE};
    tokens(headers, &CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && parsers::http1::websocket_only(headers.get_all(UPGRADE).iter().map(|v| v.as_bytes()))
}

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1) before a message crosses the proxy:
/// `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
/// `Transfer-Encoding` (hyper frames each side itself), `Upgrade`, `HTTP2-Settings` (only
/// meaningful with an h2c upgrade, which is never forwarded), and `TE` unless it is `trailers`
/// (gRPC needs it). Each side's keep-alive is its own: an upstream `Connection: close` must not
/// close the client's connection. `upgrade` keeps `Upgrade` and `Connection: upgrade` for a
/// protocol switch. `Host` and `Content-Length` are never removed.
fn strip_hop_by_hop(headers: &mut http::HeaderMap, upgrade: bool) {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    if headers.contains_key(CONNECTION) {
        let named: Vec<String> = tokens(headers, &CONNECTION)
            .map(str::to_ascii_lowercase)
            .collect();
        for name in named {
            let kept = NOT_HOP_BY_HOP.contains(&name.as_str()) || (upgrade && name == "upgrade");
            if !kept {
                headers.remove(name.as_str());
            }
        }
        headers.remove(CONNECTION);
    }
    for name in ["keep-alive", "proxy-connection", "http2-settings"] {
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

/// How a request ended before it could be forwarded, for its flow and its answer.
struct Refusal {
    status: StatusCode,
    /// For the flow: why nothing was judged or forwarded.
    reason: String,
    location: Option<String>,
}

fn refuse(status: StatusCode, grpc: bool, location: Option<&str>) -> Response<Body> {
    if grpc {
        // Envoy answers gRPC requests it refuses with a gRPC local reply: 400 maps to
        // INTERNAL (13), and a pending escaped-slash redirect becomes that 400.
        let mut r = deny_grpc();
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("13"));
        r.headers_mut().insert(
            "grpc-message",
            HeaderValue::from_static("Request refused by the proxy"),
        );
        return r;
    }
    let body = match status {
        StatusCode::TEMPORARY_REDIRECT => "",
        StatusCode::NOT_IMPLEMENTED => "Not implemented\r\n",
        _ => "Bad request\r\n",
    };
    let mut r = full(status, "text/plain", body);
    if let Some(to) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
        r.headers_mut().insert(http::header::LOCATION, to);
    }
    r
}

async fn handle(
    proxy: Arc<Proxy>,
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let cp = ctx.policy(&proxy.view.load());
    let version = req.version();
    let grpc = is_grpc(&req);
    let proto_label = if grpc { "grpc" } else { "http" };
    let flow = |verdict: &'static str, code: u16, method, uri, host, why| HttpEvent {
        time: SystemTime::now(),
        verdict,
        direction: match &why {
            Why::Decision(d) => d.direction.unwrap_or(cp.default_direction),
            Why::Check { .. } => cp.default_direction,
        }
        .as_str(),
        source: cp.src_peer.clone(),
        destination: cp.dst_peer.clone(),
        method,
        host,
        orig_dst: ctx.orig_dst,
        uri,
        version: version_str(version),
        code,
        why,
    };
    // Judge exactly what is forwarded (ambiguous HTTP/1 framing never gets here: the gate
    // refuses it): hop-by-hop headers go (a header a client names in `Connection` is neither
    // checked nor sent), then the one request builder (`l7_rules::l7::request`) makes the
    // request that is both judged and forwarded.
    let upgrade = version != Version::HTTP_2 && is_upgrade(req.headers());
    let connect = req.method() == Method::CONNECT;
    // A client that asked to switch protocols (or to tunnel) and did not get it may not read
    // our answer as the end of that exchange, and the gate no longer follows its bytes:
    // the connection closes after the answer.
    let close_unless_switched = version != Version::HTTP_2
        && (connect || req.headers().contains_key(http::header::UPGRADE));
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let close = |mut r: Response<Body>| {
        if close_unless_switched {
            r.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    };
    let judged = match judge(&cp.policy, &req, version) {
        Ok(j) => j,
        Err(refusal) => {
            let code = refusal.status.as_u16();
            let host = req
                .headers()
                .get(HOST)
                .cloned()
                .unwrap_or(HeaderValue::from_static(""));
            let event = flow(
                "DROPPED",
                if grpc { 200 } else { code },
                req.method().clone(),
                req.uri().clone(),
                host,
                Why::Check {
                    policy: None,
                    reason: Arc::from(refusal.reason.as_str()),
                },
            );
            debug!(client = %ctx.client, method = %event.method, url = %event.url(), reason = %refusal.reason, "request refused");
            proxy
                .metrics
                .request(proto_label, "DROPPED", started.elapsed());
            proxy.flows.send_http(event);
            return close(refuse(refusal.status, grpc, refusal.location.as_deref()));
        }
    };
    let Judged {
        decision,
        uri,
        host,
        host_missing,
    } = judged;
    if !decision.verdict.forwards() {
        let resp = if grpc { deny_grpc() } else { deny_http() };
        let event = flow(
            "DROPPED",
            if grpc { 200 } else { 403 },
            req.method().clone(),
            uri,
            host,
            Why::Decision(decision),
        );
        // Every deny is a flow (`ward observe --verdict DROPPED`); the log has it at debug, so a
        // client hammering a denied path cannot flood the agent log.
        debug!(client = %ctx.client, method = %event.method, url = %event.url(), policy = ?event.why.policy(),
            reason = %event.reason(), "request denied");
        proxy
            .metrics
            .request(proto_label, "DROPPED", started.elapsed());
        proxy.flows.send_http(event);
        return close(resp);
    }
    let verdict = match decision.verdict {
        L7Verdict::Audit => "AUDIT",
        _ => "FORWARDED",
    };
    if version == Version::HTTP_2 && connect {
        // Tunnelling over an HTTP/2 stream is not built; say so rather than half-work.
        let event = flow(
            "DROPPED",
            501,
            req.method().clone(),
            uri,
            host,
            Why::Check {
                policy: None,
                reason: Arc::from("CONNECT over HTTP/2 is not supported by the proxy"),
            },
        );
        proxy
            .metrics
            .request(proto_label, "DROPPED", started.elapsed());
        proxy.flows.send_http(event);
        return close(refuse(StatusCode::NOT_IMPLEMENTED, grpc, None));
    }
    apply_actions(req.headers_mut(), &decision.header_actions);
    // The forwarded request is the judged one: its normalised target, and its authority.
    *req.uri_mut() = uri.clone();
    if version == Version::HTTP_2 {
        req.headers_mut().remove(HOST);
    } else if host_missing && !host.is_empty() {
        req.headers_mut().insert(HOST, host.clone());
    }
    let (method, why) = (req.method().clone(), Why::Decision(decision));
    if verdict == "AUDIT" {
        let e = flow(
            verdict,
            0,
            method.clone(),
            uri.clone(),
            host.clone(),
            why.clone(),
        );
        warn!(client = %ctx.client, %method, url = %e.url(), policy = ?e.why.policy(), reason = %e.reason(),
            "AUDIT: request would be denied; forwarding");
    }

    let tunnel = upgrade || connect;
    let down_upgrade = tunnel.then(|| hyper::upgrade::on(&mut req));
    let result = if version == Version::HTTP_2 {
        proxy.pool.send_h2(ctx.orig_dst, req).await
    } else {
        proxy.pool.send_h1(&ctx, req).await
    };
    let (resp, code) = match result {
        Ok(mut resp) => {
            let code = resp.status().as_u16();
            let switched = match down_upgrade {
                Some(_) if connect => resp.status().is_success(),
                Some(_) => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
                None => false,
            };
            strip_hop_by_hop(resp.headers_mut(), switched && upgrade);
            if let (true, Some(down)) = (switched, down_upgrade) {
                let up = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    match tokio::try_join!(down, up) {
                        Ok((d, u)) => {
                            let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                            if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                                debug!(error = %e, "tunnel ended");
                            }
                        }
                        Err(e) => debug!(error = %e, "upgrade failed"),
                    }
                });
            }
            let resp = resp.map(|b| b.map_err(Into::into).boxed());
            (if switched { resp } else { close(resp) }, code)
        }
        // The client's request body failed (cut short, or refused by the gate mid-body): the
        // client's fault, not the upstream's.
        Err(UpstreamError::Http(e)) if e.is_user() => {
            debug!(error = %e, client = %ctx.client, "the client's request body failed");
            (close(refuse(StatusCode::BAD_REQUEST, grpc, None)), 400)
        }
        Err(e) => {
            warn!(error = %e, client = %ctx.client, upstream = %ctx.orig_dst, "upstream request failed");
            (close(bad_gateway()), 502)
        }
    };
    proxy
        .metrics
        .request(proto_label, verdict, started.elapsed());
    proxy
        .flows
        .send_http(flow(verdict, code, method, uri, host, why));
    resp
}

/// A request the rules judged, and what to forward.
struct Judged {
    decision: Decision,
    /// The target to forward: origin-form normalised path and query (HTTP/1), the authority
    /// (CONNECT), or `http://authority/path` (HTTP/2).
    uri: Uri,
    /// The authority the request is for (`Host`, else the target's).
    host: HeaderValue,
    /// The client sent no `Host`: forward `host` as one.
    host_missing: bool,
}

/// The proxy's request path: builds the request to judge from what hyper parsed (through the
/// one builder, [`l7_rules::l7::request`]), decides it (the one decision function), and
/// returns the target and authority to forward. Nothing else in the proxy composes a verdict.
fn judge(
    policy: &ConnectionPolicy,
    req: &Request<Incoming>,
    version: Version,
) -> Result<Judged, Refusal> {
    judge_parts(policy, req.method(), req.uri(), req.headers(), version)
}

fn judge_parts(
    policy: &ConnectionPolicy,
    method: &Method,
    uri: &Uri,
    headers: &http::HeaderMap,
    version: Version,
) -> Result<Judged, Refusal> {
    let connect = *method == Method::CONNECT;
    let fields: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let raw = RawHttpRequest {
        method: method.as_str(),
        path: if connect {
            None
        } else {
            uri.path_and_query().map(|p| p.as_str())
        },
        authority: uri.authority().map(|a| a.as_str()),
        headers: &fields,
        // HTTP/1.1 and HTTP/2 need an authority (`Host` or `:authority`), as in Envoy
        // ("missing required header"); HTTP/1.0 may come without.
        require_host: version != Version::HTTP_10,
    };
    let judged = match policy.judge_http(&raw) {
        JudgedRequest::Request(j) => j,
        JudgedRequest::Redirect { location } => {
            return Err(Refusal {
                status: StatusCode::TEMPORARY_REDIRECT,
                reason: format!(
                    "the path has escaped slashes (%2F or %5C): the client is redirected to {location}, which is judged when it asks for it"
                ),
                location: Some(location),
            })
        }
        JudgedRequest::Reject(e) => {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                reason: format!("refused before any rule: {e}"),
                location: None,
            })
        }
    };
    let decision = policy.decide(Some(&L7Request::Http(judged.as_request())));
    let bad = |what: &str| Refusal {
        status: StatusCode::BAD_REQUEST,
        reason: format!("refused before any rule: {what}"),
        location: None,
    };
    let host = match headers.get(HOST) {
        // The judged authority is the Host header itself (its value, shared).
        Some(h) if !judged.host_missing => h.clone(),
        _ => HeaderValue::from_str(judged.host).map_err(|_| bad("invalid authority"))?,
    };
    let target = if connect {
        Uri::try_from(judged.host).map_err(|_| ())
    } else if version == Version::HTTP_2 && !judged.host.is_empty() {
        Uri::builder()
            .scheme(uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP))
            .authority(judged.host)
            .path_and_query(&*judged.path)
            .build()
            .map_err(|_| ())
    } else if uri.authority().is_none()
        && uri.path_and_query().map(|p| p.as_str()) == Some(&*judged.path)
    {
        Ok(uri.clone())
    } else {
        Uri::try_from(&*judged.path).map_err(|_| ())
    }
    .map_err(|_| bad("the normalised target is not a valid URI"))?;
    Ok(Judged {
        decision,
        uri: target,
        host,
        host_missing: judged.host_missing,
    })
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

    /// The proxy's request path on a request as hyper hands it over.
    fn judged(cp: &ConnPolicy, method: &str, target: &str, host: &str) -> Result<Judged, Refusal> {
        let mut headers = http::HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_str(host).unwrap());
        judge_parts(
            &cp.policy,
            &method.parse().unwrap(),
            &target.parse().unwrap(),
            &headers,
            Version::HTTP_11,
        )
    }

    fn allowed(j: &Result<Judged, Refusal>) -> bool {
        j.as_ref().is_ok_and(|j| j.decision.verdict.forwards())
    }

    #[test]
    fn ingress_l7_rules_decide_per_request() {
        let view = crate::node::tests::starwars_view();
        let tie: SocketAddr = "10.200.3.2:40000".parse().unwrap();
        let ds: SocketAddr = "10.200.1.2:80".parse().unwrap();
        let cp = conn_policy(&view, tie, ds);
        assert_eq!(cp.src_peer.peer().name, "tiefighter");
        assert_eq!(cp.dst_peer.peer().name, "deathstar-1");
        let ok = judged(&cp, "POST", "/v1/request-landing", "deathstar");
        assert!(allowed(&ok));
        let ok = ok.ok().unwrap();
        assert_eq!(ok.decision.policy().as_deref(), Some("default/rule1"));
        let no = judged(&cp, "PUT", "/v1/exhaust-port", "deathstar")
            .ok()
            .unwrap();
        assert_eq!(no.decision.verdict, L7Verdict::Deny);
        assert_eq!(no.decision.direction, Some(Direction::Ingress));
        assert_eq!(no.decision.policy().as_deref(), Some("default/rule1"));
        // The judged target is the normalised one, and it is what is forwarded.
        let j = judged(&cp, "POST", "/v1/x/../request-landing", "deathstar");
        assert!(allowed(&j));
        assert_eq!(j.ok().unwrap().uri, "/v1/request-landing");
        // Absolute-form: forwarded in origin-form, its authority as Host.
        let j = judged(
            &cp,
            "POST",
            "http://deathstar:80/v1/request-landing",
            "deathstar",
        );
        assert!(allowed(&j));
        assert_eq!(j.ok().unwrap().uri, "/v1/request-landing");
        assert!(judged(&cp, "POST", "http://other/v1/request-landing", "deathstar").is_err());
        // Escaped slashes: redirected, not judged.
        let r = judged(&cp, "POST", "/v1/x%2F..%2Frequest-landing", "deathstar");
        assert_eq!(r.err().unwrap().status, StatusCode::TEMPORARY_REDIRECT);
        // xwing is denied at L3/L4: a connection that still reaches the proxy gets nothing.
        let xw: SocketAddr = "10.200.4.2:40000".parse().unwrap();
        let cp = conn_policy(&view, xw, ds);
        assert!(!allowed(&judged(
            &cp,
            "POST",
            "/v1/request-landing",
            "deathstar"
        )));
        // A flow to an unrestricted endpoint passes everything.
        let cp = conn_policy(&view, ds, "10.200.3.2:80".parse().unwrap());
        assert!(allowed(&judged(&cp, "PUT", "/anything", "tiefighter")));
        assert!(!cp.policy.audit());
    }

    /// Every HTTP and gRPC case of `config/cases/` gets the same verdict through the proxy's
    /// request path (a request as hyper hands it over → [`judge_parts`]) as through `ward-check`
    /// (`l7_rules::check::answer`).
    #[test]
    fn case_files_agree_between_ward_check_and_the_proxy_request_path() {
        use l7_rules::check::{answer, connection, Case, L7Question};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut compared = 0;
        for entry in std::fs::read_dir(root.join("config/cases")).unwrap() {
            let path = entry.unwrap().path();
            let scene = path.file_stem().unwrap().to_string_lossy().into_owned();
            let set = l7_rules::load::load_paths(&[root.join("config/policies").join(&scene)])
                .unwrap_or_else(|e| panic!("{scene}: {e:?}"));
            let engine = l7_rules::engine::Engine::new(set);
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if line.trim().is_empty() || line.trim_start().starts_with('#') {
                    continue;
                }
                let case: Case = serde_json::from_str(line).unwrap();
                let (name, q, _) = case.question().unwrap();
                let (method, target, host, headers) = match &q.l7 {
                    Some(L7Question::Http {
                        method,
                        path,
                        host,
                        headers,
                    }) => (method.clone(), path.clone(), host.clone(), headers.clone()),
                    Some(L7Question::Grpc { service, method }) => (
                        "POST".into(),
                        format!("/{service}/{method}"),
                        String::new(),
                        vec![("content-type".into(), "application/grpc".into())],
                    ),
                    _ => continue,
                };
                let want = answer(&engine, &q).map(|a| a.allowed);
                let policy = connection(&engine, &q).unwrap();
                let mut map = http::HeaderMap::new();
                if !host.is_empty() {
                    map.append(HOST, HeaderValue::from_str(&host).unwrap());
                }
                for (k, v) in &headers {
                    map.append(
                        HeaderName::try_from(k.as_str()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    );
                }
                // HTTP/1.1 needs a Host; a case without one is an HTTP/1.0 request.
                let version = if host.is_empty() {
                    Version::HTTP_10
                } else {
                    Version::HTTP_11
                };
                let method: Method = method.parse().unwrap();
                let mut uri: Uri = target.parse().unwrap();
                let mut got = judge_parts(&policy, &method, &uri, &map, version);
                // A client follows the proxy's escaped-slash redirect.
                if let Err(Refusal {
                    location: Some(to), ..
                }) = &got
                {
                    uri = to.parse().unwrap();
                    got = judge_parts(&policy, &method, &uri, &map, version);
                }
                let got = got.map(|j| j.decision.verdict.forwards());
                match (want, got) {
                    (Ok(w), Ok(g)) => assert_eq!(w, g, "{scene}: {name:?}"),
                    (Err(_), Err(_)) => {}
                    (w, g) => panic!(
                        "{scene}: {name:?}: ward-check {w:?}, proxy {:?}",
                        g.map_err(|r| r.reason)
                    ),
                }
                compared += 1;
            }
        }
        assert!(compared >= 30, "only {compared} HTTP cases compared");
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
        for h2c in [
            "h2c",
            "H2C",
            "websocket, h2c",
            "h2c, websocket",
            " h2c ",
            "h2c/1",
        ] {
            assert!(!up("Upgrade, HTTP2-Settings", h2c), "{h2c}");
        }
        let mut h = http::HeaderMap::new();
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"),
        );
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
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
