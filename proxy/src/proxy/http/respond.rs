//! The proxy's own HTTP answers: a denied request (403 `Access denied`, or gRPC
//! `PERMISSION_DENIED`), a request refused before any rule, and an unreachable upstream.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// The body of a denied request.
pub const DENY_BODY: &str = "Access denied\r\n";

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

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

/// The upstream failed before its response head (refused, reset, closed), as Envoy answers it:
/// 503, or for gRPC `UNAVAILABLE` (14).
pub fn upstream_unavailable(grpc: bool) -> Response<Body> {
    upstream_error(
        grpc,
        StatusCode::SERVICE_UNAVAILABLE,
        "Upstream unavailable",
        "Upstream unavailable\r\n",
    )
}

/// The upstream sent no response head within `http.upstream_timeout_ms`: 504, or for gRPC
/// `UNAVAILABLE` (14).
pub fn upstream_timeout(grpc: bool) -> Response<Body> {
    upstream_error(
        grpc,
        StatusCode::GATEWAY_TIMEOUT,
        "Upstream request timeout",
        "Upstream request timeout\r\n",
    )
}

fn upstream_error(
    grpc: bool,
    status: StatusCode,
    message: &'static str,
    body: &'static str,
) -> Response<Body> {
    if grpc {
        let mut r = deny_grpc();
        let h = r.headers_mut();
        h.insert("grpc-status", HeaderValue::from_static("14"));
        h.insert("grpc-message", HeaderValue::from_static(message));
        return r;
    }
    full(status, "text/plain", body)
}

pub fn refuse(status: StatusCode, grpc: bool, location: Option<&str>) -> Response<Body> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

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
}
