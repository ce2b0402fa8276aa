//! Header work on a message crossing the proxy: the hop-by-hop headers that stop at it, the
//! protocol switches it tunnels, and the header actions of the rule that allowed a request.

use http::header::{HeaderName, HeaderValue};
use l7_rules::l7::http::HeaderAction;
use tracing::info;

pub fn apply_actions(headers: &mut http::HeaderMap, actions: &[HeaderAction]) {
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
pub fn is_upgrade(headers: &http::HeaderMap) -> bool {
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
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap, upgrade: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

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
