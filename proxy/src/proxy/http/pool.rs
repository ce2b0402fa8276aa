//! Upstream HTTP connections per worker thread: HTTP/1.1 senders kept with their client
//! connection or parked idle per destination, one multiplexed HTTP/2 connection per
//! destination. Sockets come from the shared [`Upstreams`] (marked and registered).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use crate::proxy::transport::{ConnectError, Upstreams};
use std::sync::Mutex;

/// Idle upstream HTTP/1.1 connections kept per original destination.
pub const MAX_IDLE_PER_UPSTREAM: usize = 64;

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

/// The upstream request failed: our side or the upstream's, or the client's request body.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP with the upstream: {0}")]
    Http(#[from] hyper::Error),
}

/// Puts an idle HTTP/1.1 sender back in this thread's pool (bounded per destination).
pub fn park_idle(addr: SocketAddr, sender: client1::SendRequest<Incoming>) {
    IDLE_H1.with_borrow_mut(|idle| {
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(sender);
        }
    });
}

/// An HTTP/2 request: one multiplexed upstream connection per destination.
pub async fn send_h2(
    upstreams: &Upstreams,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, UpstreamError> {
    let existing = H2.with_borrow(|h2| h2.get(&addr).filter(|s| !s.is_closed()).cloned());
    let mut sender = match existing {
        Some(s) => s,
        None => {
            let io = TokioIo::new(upstreams.connect(addr).await?);
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

/// The upstream HTTP/1.1 connection a client connection last used.
pub type LastUpstream = Mutex<Option<client1::SendRequest<Incoming>>>;

/// An HTTP/1.1 request to `addr` of the client connection whose last upstream is `last`: on
/// that upstream connection when it is ready, else an idle one from the pool, else a new one.
/// The sender stays in `last` afterwards.
pub async fn send_h1(
    upstreams: &Upstreams,
    addr: SocketAddr,
    last: &LastUpstream,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, UpstreamError> {
    let previous = last.lock().unwrap_or_else(|p| p.into_inner()).take();
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
            let io = TokioIo::new(upstreams.connect(addr).await?);
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
    *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
    Ok(resp)
}
