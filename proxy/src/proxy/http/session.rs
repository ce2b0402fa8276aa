//! An HTTP client connection's state across its requests: its per-connection policy, and the
//! upstream HTTP/1.1 connection it last used.

use std::sync::Mutex;

use http::header::CONTENT_TYPE;
use http::{Request, Version};
use hyper::body::Incoming;

use super::pool;
use crate::proxy::conn::ConnState;

/// An HTTP client connection: its policy, and the upstream HTTP/1.1 connection it last used.
pub(super) struct ConnCtx {
    pub conn: ConnState,
    /// The upstream HTTP/1.1 connection this client connection last used. An HTTP/1.1 client
    /// sends its next request only after the previous response is complete, so the same
    /// upstream connection is normally ready for it: no pool lookup, no hand-back task.
    pub upstream_h1: pool::LastUpstream,
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        let slot = self
            .upstream_h1
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = slot.take() {
            if sender.is_ready() {
                pool::park_idle(self.conn.orig_dst, sender);
            }
        }
    }
}

impl ConnCtx {
    pub fn new(conn: ConnState) -> ConnCtx {
        ConnCtx {
            conn,
            upstream_h1: Mutex::new(None),
        }
    }
}

pub(super) fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

pub(super) fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| parsers::grpc::is_grpc_content_type(v.as_bytes()))
}
