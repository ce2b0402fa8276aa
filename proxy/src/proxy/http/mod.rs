//! The HTTP handler: HTTP/1.1 (keep-alive, WebSocket upgrades, CONNECT) and HTTP/2 prior
//! knowledge on one listener (hyper-util's auto builder), behind the [`gate`] that refuses
//! ambiguous HTTP/1 framing before hyper reads it. Every request is judged against the
//! source's egress and the destination's ingress L7 rules of the current snapshot; allowed
//! requests go upstream over pooled connections speaking the same HTTP version.

mod gate;
mod handle;
mod headers;
mod pool;
mod respond;
mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::proxy::conn::ConnState;
use crate::proxy::context::Proxy;
use session::ConnCtx;

/// Largest request head (request line + headers) accepted on HTTP/1.1; larger gets 431 (the
/// gate's limit, which it enforces first).
pub const MAX_HEAD_BYTES: usize = parsers::http1::MAX_HEAD_LEN;
/// Most request headers accepted on HTTP/1.1; more gets 431 (the gate's limit).
pub const MAX_HEADERS: usize = parsers::http1::MAX_HEADERS;
/// HTTP/2 header list limit (SETTINGS_MAX_HEADER_LIST_SIZE).
pub const MAX_H2_HEADER_LIST: u32 = 64 * 1024;
/// A client must send its request head within this time (`http.header_timeout_ms`'s default).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a draining HTTP/1.1 connection may stay idle before it is closed. Until then its
/// next response carries `Connection: close`, so a client that keeps using it learns of the
/// close from an answer instead of finding the connection gone under its next request.
pub const DRAIN_IDLE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What a connection has served, for its drain.
#[derive(Default)]
struct Seen {
    h2: std::sync::atomic::AtomicBool,
    requests: std::sync::atomic::AtomicU64,
}

impl Seen {
    fn request(&self, h2: bool) {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves one client connection; when `drain` turns true, shuts it down gracefully (see
/// [`super::Workers`]): an HTTP/2 connection gets GOAWAY at once, an HTTP/1.1 connection
/// `Connection: close` on its next response, and is closed after [`DRAIN_IDLE_GRACE`] idle.
pub async fn serve_conn(
    proxy: Arc<Proxy>,
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
    debug!("accepted");
    let ctx = Arc::new(ConnCtx::new(ConnState::new(client, orig_dst)));
    let header_timeout = proxy.header_timeout;
    let seen = Arc::new(Seen::default());
    let (svc_seen, svc_drain) = (seen.clone(), drain.clone());
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let proxy = proxy.clone();
        let ctx = ctx.clone();
        let is_h2 = req.version() == http::Version::HTTP_2;
        svc_seen.request(is_h2);
        let draining = !is_h2 && *svc_drain.borrow();
        async move {
            let mut resp = handle::handle(proxy, ctx, req).await;
            if draining && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(resp)
        }
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
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .auto_date_header(false)
        .max_header_list_size(MAX_H2_HEADER_LIST)
        .timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(gate::Gated::new(stream).with_head_timeout(header_timeout)),
        svc,
    );
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { drop(drain.wait_for(|d| *d).await) } => {
            let mut done = None;
            if !seen.h2.load(Ordering::Relaxed) {
                // HTTP/1.1: answers now say `Connection: close`; a connection that took no
                // request for a whole grace is closed.
                let mut before = seen.requests.load(Ordering::Relaxed);
                loop {
                    tokio::select! {
                        r = conn.as_mut() => { done = Some(r); break; }
                        _ = tokio::time::sleep(DRAIN_IDLE_GRACE) => {
                            let now = seen.requests.load(Ordering::Relaxed);
                            if now == before { break; }
                            before = now;
                        }
                    }
                }
            }
            match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = served {
        // The client's fault (malformed request, reset) or a stuck peer: this connection only.
        info!(error = %e, %client, %orig_dst, "connection closed with an error");
    }
}
