//! The one function that turns an HTTP request as received into the request that is judged,
//! which is then exactly the request that is forwarded. The proxy calls it for every request,
//! `ward-check` for every question, so what a user tests offline is what the node enforces.
//!
//! It reproduces what Cilium's Envoy does before its HTTP filters run (Cilium's default
//! `--http-normalize-path` sets Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT`, `pkg/envoy/xds_server.go`), and
//! refuses what a proxy and a backend could read two ways:
//! - the path is normalised ([`parsers::path::normalize`]) and the normalised path is forwarded;
//! - a path with `%2F` or `%5C` is not judged: the client is redirected to the unescaped path
//!   (`307`, Envoy's `UNESCAPE_AND_REDIRECT`), and judged when it asks for that;
//! - several `Host` headers, or a request target / `:authority` naming another authority than
//!   `Host`, are rejected (Envoy's codecs refuse both; RFC 9112 §3.2, RFC 9113 §8.3.1);
//! - a header value that a rule reads must be visible ASCII: a control character or obs-text
//!   byte is rejected, so a rule never skips a value that the backend then reads.

use parsers::http1::same_authority;
use parsers::path::{normalize, unescape_slashes, PathError};
use std::borrow::Cow;

/// A request as the proxy (or `ward-check`) received it; hop-by-hop headers already removed.
#[derive(Clone, Copy, Debug)]
pub struct RawHttpRequest<'a> {
    pub method: &'a str,
    /// The path and query of an origin-form or absolute-form target, HTTP/2 `:path`, or `*`;
    /// `None` for an authority-form target (CONNECT) or a missing `:path`.
    pub path: Option<&'a str>,
    /// The authority of an absolute-form or authority-form target, or HTTP/2 `:authority`.
    pub authority: Option<&'a str>,
    /// Every header, names lower-case, values as received.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// HTTP/1.1 and HTTP/2 require an authority (`Host`, the target's, or `:authority`), as
    /// Envoy does; HTTP/1.0 and `ward-check` questions do not.
    pub require_host: bool,
}

/// The request the rules judge and the proxy forwards.
#[derive(Clone, Debug)]
pub struct JudgedHttp<'a> {
    pub method: &'a str,
    /// Normalised path and query (origin-form); empty for CONNECT.
    pub path: Cow<'a, str>,
    /// The authority the request is for: `Host`, else the target's authority.
    pub host: &'a str,
    /// The request carried no `Host` header: forward `host` as its `Host` (HTTP/1.1) or
    /// `:authority` (HTTP/2).
    pub host_missing: bool,
    /// Headers whose values are visible ASCII; values no rule reads may be left out.
    pub headers: Vec<(&'a str, &'a str)>,
}

impl JudgedHttp<'_> {
    /// The view the rules match.
    pub fn as_request(&self) -> crate::l7::http::HttpRequest<'_> {
        crate::l7::http::HttpRequest {
            method: self.method,
            path: &self.path,
            host: self.host,
            headers: &self.headers,
        }
    }
}

/// What becomes of a received request.
#[derive(Clone, Debug)]
pub enum Judged<'a> {
    /// Judge this request, and forward it if allowed.
    Request(JudgedHttp<'a>),
    /// The path has escaped slashes: answer `307` with this `Location` (the unescaped,
    /// normalised path and the query); no rule runs, nothing is forwarded.
    Redirect { location: String },
    /// Ambiguous or malformed: answer `400`, forward nothing. Always the client's fault.
    Reject(Rejection),
}

/// Why a request was refused before any rule ran.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("several Host headers")]
    MultipleHost,
    #[error("the request target's authority {authority:?} differs from Host {host:?}")]
    AuthorityMismatch { authority: String, host: String },
    #[error("no Host (or :authority)")]
    MissingHost,
    #[error("no request path")]
    MissingPath,
    #[error("CONNECT needs an authority-form target (host:port)")]
    ConnectTarget,
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("header {name:?}: a control character or non-ASCII byte in a value the rules read")]
    HeaderValue { name: String },
}

/// A header value a rule may compare: visible ASCII, spaces and tabs.
fn is_plain(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Turns `raw` into the request to judge and forward (see the module docs). `reads_header`
/// says whether some rule reads a header (by lower-case name).
pub fn judge_request<'a>(
    raw: &RawHttpRequest<'a>,
    reads_header: &dyn Fn(&str) -> bool,
) -> Judged<'a> {
    let mut host_header: Option<&'a str> = None;
    let mut headers = Vec::with_capacity(raw.headers.len());
    for &(name, value) in raw.headers {
        let plain = is_plain(value);
        if name == "host" {
            if host_header.is_some() {
                return Judged::Reject(Rejection::MultipleHost);
            }
            if !plain {
                return Judged::Reject(Rejection::HeaderValue { name: name.into() });
            }
        }
        if !plain {
            if reads_header(name) {
                return Judged::Reject(Rejection::HeaderValue { name: name.into() });
            }
            // No rule reads it, so leaving it out cannot change a verdict.
            continue;
        }
        // Checked: visible ASCII is UTF-8.
        let value = std::str::from_utf8(value).unwrap_or_default();
        if name == "host" {
            host_header = Some(value);
        }
        headers.push((name, value));
    }
    let (host, host_missing) = match (host_header, raw.authority) {
        (Some(h), Some(a)) if !same_authority(h.as_bytes(), a.as_bytes()) => {
            return Judged::Reject(Rejection::AuthorityMismatch {
                authority: a.into(),
                host: h.into(),
            })
        }
        (Some(h), _) => (h, false),
        (None, Some(a)) => (a, true),
        (None, None) if raw.require_host => return Judged::Reject(Rejection::MissingHost),
        (None, None) => ("", false),
    };
    if raw.method.eq_ignore_ascii_case("CONNECT") {
        if raw.path.is_some() || raw.authority.is_none() {
            return Judged::Reject(Rejection::ConnectTarget);
        }
        return Judged::Request(JudgedHttp {
            method: raw.method,
            path: Cow::Borrowed(""),
            host,
            host_missing,
            headers,
        });
    }
    let Some(target) = raw.path else {
        return Judged::Reject(Rejection::MissingPath);
    };
    let path = match normalize(target) {
        Ok(p) => p,
        Err(e) => return Judged::Reject(e.into()),
    };
    match unescape_slashes(&path) {
        None => {}
        Some(Ok(location)) => return Judged::Redirect { location },
        Some(Err(e)) => return Judged::Reject(e.into()),
    }
    Judged::Request(JudgedHttp {
        method: raw.method,
        path,
        host,
        host_missing,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(
        method: &'a str,
        path: Option<&'a str>,
        authority: Option<&'a str>,
        headers: &'a [(&'a str, &'a [u8])],
    ) -> RawHttpRequest<'a> {
        RawHttpRequest {
            method,
            path,
            authority,
            headers,
            require_host: true,
        }
    }

    fn judged<'a>(r: &RawHttpRequest<'a>) -> JudgedHttp<'a> {
        match judge_request(r, &|n| n == "x-token") {
            Judged::Request(j) => j,
            other => panic!("{r:?}: {other:?}"),
        }
    }

    fn rejected(r: &RawHttpRequest<'_>) -> Rejection {
        match judge_request(r, &|n| n == "x-token") {
            Judged::Reject(e) => e,
            other => panic!("{r:?}: {other:?}"),
        }
    }

    #[test]
    fn the_judged_path_is_the_normalised_one() {
        let h: &[(&str, &[u8])] = &[("host", b"server")];
        for (target, want) in [
            ("/public/../admin", "/admin"),
            ("/public/%2e%2E/admin", "/admin"),
            ("//public//x", "/public/x"),
            ("/public\\..\\admin", "/admin"),
            ("/public/x?q=/../y", "/public/x?q=/../y"),
        ] {
            assert_eq!(judged(&raw("GET", Some(target), None, h)).path, want);
        }
    }

    #[test]
    fn escaped_slashes_redirect() {
        let h: &[(&str, &[u8])] = &[("host", b"server")];
        for (target, want) in [
            ("/public/..%2Fadmin", "/admin"),
            ("/a%5cb?x=%2F", "/a/b?x=%2F"),
        ] {
            match judge_request(&raw("GET", Some(target), None, h), &|_| false) {
                Judged::Redirect { location } => assert_eq!(location, want),
                other => panic!("{target}: {other:?}"),
            }
        }
    }

    #[test]
    fn host_confusion_is_rejected() {
        let two: &[(&str, &[u8])] = &[("host", b"a"), ("host", b"b")];
        assert_eq!(
            rejected(&raw("GET", Some("/"), None, two)),
            Rejection::MultipleHost
        );
        let one: &[(&str, &[u8])] = &[("host", b"a")];
        assert!(matches!(
            rejected(&raw("GET", Some("/"), Some("b"), one)),
            Rejection::AuthorityMismatch { .. }
        ));
        assert_eq!(
            rejected(&raw("GET", Some("/"), None, &[])),
            Rejection::MissingHost
        );
        // Equal authorities, with the default port spelled out or not, in any case.
        let j = judged(&raw("GET", Some("/x"), Some("A:80"), one));
        assert_eq!((j.host, j.host_missing), ("a", false));
        // An absolute-form target without Host: its authority is forwarded as Host.
        let j = judged(&raw("GET", Some("/x"), Some("server"), &[]));
        assert_eq!((j.host, j.host_missing), ("server", true));
        assert!(same_authority(b"[::1]:80", b"[::1]"));
        assert!(!same_authority(b"a:8080", b"a"));
        assert!(!same_authority(b"a", b"a.evil"));
    }

    #[test]
    fn header_values_the_rules_read_must_be_plain() {
        let h: &[(&str, &[u8])] = &[("host", b"s"), ("x-token", b"\xffbad"), ("x-token", b"ok")];
        assert!(matches!(
            rejected(&raw("GET", Some("/"), None, h)),
            Rejection::HeaderValue { .. }
        ));
        // A header no rule reads is left out of the judged request, not refused.
        let h: &[(&str, &[u8])] = &[("host", b"s"), ("x-other", b"\xff"), ("x-token", b"ok")];
        let j = judged(&raw("GET", Some("/"), None, h));
        assert_eq!(j.headers, vec![("host", "s"), ("x-token", "ok")]);
        let h: &[(&str, &[u8])] = &[("host", b"s\x01")];
        assert!(matches!(
            rejected(&raw("GET", Some("/"), None, h)),
            Rejection::HeaderValue { .. }
        ));
    }

    #[test]
    fn connect_is_judged_by_its_authority() {
        let j = judged(&raw("CONNECT", None, Some("tunnel.example:443"), &[]));
        assert_eq!((j.path.as_ref(), j.host), ("", "tunnel.example:443"));
        assert_eq!(
            rejected(&raw("CONNECT", Some("/x"), Some("a:1"), &[])),
            Rejection::ConnectTarget
        );
    }
}
