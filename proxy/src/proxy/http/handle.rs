//! One HTTP request through the proxy: hop-by-hop headers off, the one request builder
//! (`l7_rules::l7::request`) makes the request that is both judged and forwarded, the one
//! decision function judges it, and an allowed request goes upstream (tunnelled after an
//! accepted WebSocket upgrade or CONNECT); every request ends as one flow and one metric.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{HeaderValue, HOST};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use l7_rules::engine::{ConnectionPolicy, Decision, L7Request, Verdict as L7Verdict};
use l7_rules::l7::request::{Judged as JudgedRequest, RawHttpRequest};
use tracing::{debug, warn};

use super::headers::{apply_actions, is_upgrade, strip_hop_by_hop};
use super::pool::{self, UpstreamError};
use super::respond::{deny_grpc, deny_http, refuse, upstream_timeout, upstream_unavailable, Body};
use super::session::{is_grpc, version_str, ConnCtx};
use crate::flows::{HttpEvent, Why};
use crate::proxy::context::Proxy;

/// How a request ended before it could be forwarded, for its flow and its answer.
pub(super) struct Refusal {
    pub status: StatusCode,
    /// For the flow: why nothing was judged or forwarded.
    pub reason: String,
    pub location: Option<String>,
}

/// Most of a denied request's body read and thrown away so its connection stays usable (as
/// nginx discards the body of a request it answers itself).
const DISCARD_MAX: usize = 64 * 1024;
/// How long a denied request's body may take to arrive before its connection is closed instead.
const DISCARD_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads and drops the rest of a request body Ward answers without forwarding, so the next
/// request on the connection starts where the client thinks it does. `false` when it is longer
/// than [`DISCARD_MAX`], slower than [`DISCARD_WAIT`], or broken: the answer must then close
/// the connection (with `Connection: close`, so the client knows not to reuse it).
async fn discard_body(req: &mut Request<Incoming>) -> bool {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return true;
    }
    // Reading would send `100 Continue` and invite a body the answer refuses: close instead.
    if req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        return false;
    }
    let body = req.body_mut();
    if body.size_hint().lower() > DISCARD_MAX as u64 {
        return false;
    }
    let drain = async {
        let mut read = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                read += data.len();
                if read > DISCARD_MAX {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DISCARD_WAIT, drain)
        .await
        .unwrap_or(false)
}

/// `r` with `Connection: close` when `close`.
fn close_if(close: bool, mut r: Response<Body>) -> Response<Body> {
    if close {
        r.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

pub(super) async fn handle(
    proxy: Arc<Proxy>,
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let cp = ctx.conn.policy(&proxy.view.load());
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
        orig_dst: ctx.conn.orig_dst,
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
            debug!(client = %ctx.conn.client, method = %event.method, url = %event.url(), reason = %refusal.reason, "request refused");
            proxy
                .metrics
                .request(proto_label, "DROPPED", started.elapsed());
            proxy.flows.send_http(event);
            let keep = version == Version::HTTP_2 || discard_body(&mut req).await;
            return close_if(
                !keep,
                close(refuse(refusal.status, grpc, refusal.location.as_deref())),
            );
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
        debug!(client = %ctx.conn.client, method = %event.method, url = %event.url(), policy = ?event.why.policy(),
            reason = %event.reason(), "request denied");
        proxy
            .metrics
            .request(proto_label, "DROPPED", started.elapsed());
        proxy.flows.send_http(event);
        let keep = version == Version::HTTP_2 || discard_body(&mut req).await;
        return close_if(!keep, close(resp));
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
        warn!(client = %ctx.conn.client, %method, url = %e.url(), policy = ?e.why.policy(), reason = %e.reason(),
            "AUDIT: request would be denied; forwarding");
    }

    let tunnel = upgrade || connect;
    let down_upgrade = tunnel.then(|| hyper::upgrade::on(&mut req));
    let send = async {
        if version == Version::HTTP_2 {
            pool::send_h2(&proxy.upstreams, ctx.conn.orig_dst, req).await
        } else {
            pool::send_h1(&proxy.upstreams, ctx.conn.orig_dst, &ctx.upstream_h1, req).await
        }
    };
    // A hung upstream holds this request only, for `http.upstream_timeout_ms`.
    let result = match proxy.upstream_timeout {
        Some(limit) => match tokio::time::timeout(limit, send).await {
            Ok(r) => r,
            Err(_) => {
                warn!(client = %ctx.conn.client, upstream = %ctx.conn.orig_dst, timeout_ms = limit.as_millis() as u64, "upstream response timeout");
                let resp = close(upstream_timeout(grpc));
                proxy
                    .metrics
                    .request(proto_label, verdict, started.elapsed());
                proxy
                    .flows
                    .send_http(flow(verdict, 504, method, uri, host, why));
                return resp;
            }
        },
        None => send.await,
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
                let open = crate::proxy::context::worker_tunnels().open();
                tokio::spawn(async move {
                    let _open = open;
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
            debug!(error = %e, client = %ctx.conn.client, "the client's request body failed");
            (close(refuse(StatusCode::BAD_REQUEST, grpc, None)), 400)
        }
        Err(e) => {
            warn!(error = %e, client = %ctx.conn.client, upstream = %ctx.conn.orig_dst, "upstream request failed");
            (close(upstream_unavailable(grpc)), 503)
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
pub(super) struct Judged {
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

pub(super) fn judge_parts(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::conn::{conn_policy, ConnPolicy};
    use http::header::HeaderName;
    use l7_rules::model::{Direction, Protocol};
    use std::net::SocketAddr;

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
        let view = crate::state::tests::starwars_view();
        let tie: SocketAddr = "10.200.3.2:40000".parse().unwrap();
        let ds: SocketAddr = "10.200.1.2:80".parse().unwrap();
        let cp = conn_policy(&view, tie, ds, Protocol::Tcp);
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
        let cp = conn_policy(&view, xw, ds, Protocol::Tcp);
        assert!(!allowed(&judged(
            &cp,
            "POST",
            "/v1/request-landing",
            "deathstar"
        )));
        // A flow to an unrestricted endpoint passes everything.
        let cp = conn_policy(&view, ds, "10.200.3.2:80".parse().unwrap(), Protocol::Tcp);
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
            let set = l7_rules::source::load_paths(&[root.join("config/policies").join(&scene)])
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
}
