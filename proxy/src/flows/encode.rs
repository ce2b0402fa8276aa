//! The one JSON encoder of flows: every line of the flow log is a [`FlowRecord`] serialised
//! here, whether its parts are owned (kernel events) or borrowed from an [`HttpEvent`].

use serde_json::value::RawValue;

use super::from_event::{DnsEvent, HttpEvent, KafkaEvent};
use super::model::{Flow, FlowRecord, HttpInfo, L7Info, POLICY_DENIED};

/// Appends `flow`'s JSON (without the newline) to `out`.
pub fn write_flow(flow: &Flow, out: &mut Vec<u8>) -> serde_json::Result<()> {
    serde_json::to_writer(out, flow)
}

/// Appends the JSON (without the newline) of one HTTP verdict to `out`: the peers as rendered
/// once per connection, the rest borrowed from the event; only the time, URL, summary and
/// explanation are formatted here.
pub fn write_http(e: &HttpEvent, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let time = humantime::format_rfc3339_micros(e.time).to_string();
    let url = e.url();
    let summary = format!(
        "{} -> {} http-request {} ({} {} {url})",
        e.source.text,
        e.destination.text,
        e.verdict,
        e.version,
        e.method.as_str(),
    );
    let policy = e.why.policy();
    let reason = e.reason();
    let record: FlowRecord<&str, &RawValue> = FlowRecord {
        time: &time,
        verdict: e.verdict,
        kind: "l7",
        drop_reason: (e.verdict == "DROPPED").then_some(POLICY_DENIED),
        direction: e.direction,
        source: &e.source.json,
        destination: &e.destination.json,
        protocol: "TCP",
        tcp_flags: None,
        l7: Some(L7Info {
            protocol: "http",
            http: Some(HttpInfo {
                method: e.method.as_str(),
                url: &url,
                version: e.version,
                code: e.code,
            }),
            dns: None,
            kafka: None,
        }),
        policy: policy.as_deref(),
        summary: &summary,
        reason: Some(reason.as_str()).filter(|r| !r.is_empty()),
    };
    serde_json::to_writer(out, &record)
}

/// Appends the JSON (without the newline) of one DNS query's outcome to `out`: a
/// `dns-request` line for a query the client got no upstream answer to (denied, malformed,
/// timed out), a `dns-response` line (server to client) for an answered one.
pub fn write_dns(e: &DnsEvent, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let time = humantime::format_rfc3339_micros(e.time).to_string();
    let info = e.info();
    let qtype = info.qtypes.first().map_or("?", String::as_str);
    let (source, destination, summary) = match &e.answer {
        Some(a) => (
            &e.destination,
            &e.source,
            format!(
                "{} -> {} dns-response {} (DNS Answer \"{}\" TTL: {} (Proxy {} {qtype}))",
                e.destination.text,
                e.source.text,
                e.verdict,
                a.ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                a.ttl.unwrap_or(0),
                info.query,
            ),
        ),
        None => (
            &e.source,
            &e.destination,
            format!(
                "{} -> {} dns-request {} (DNS Query {} {qtype}{})",
                e.source.text,
                e.destination.text,
                e.verdict,
                info.query,
                e.rcode
                    .map(|r| format!(", answered {}", parsers::dns::rcode_name(r)))
                    .unwrap_or_default(),
            ),
        ),
    };
    let policy = e.why.policy();
    let reason = e.reason();
    let record: FlowRecord<&str, &RawValue> = FlowRecord {
        time: &time,
        verdict: e.verdict,
        kind: "l7",
        drop_reason: (e.verdict == "DROPPED").then_some(POLICY_DENIED),
        direction: e.direction,
        source: &source.json,
        destination: &destination.json,
        protocol: e.transport,
        tcp_flags: None,
        l7: Some(L7Info {
            protocol: "dns",
            http: None,
            dns: Some(info),
            kafka: None,
        }),
        policy: policy.as_deref(),
        summary: &summary,
        reason: Some(reason.as_str()).filter(|r| !r.is_empty()),
    };
    serde_json::to_writer(out, &record)
}

pub fn write_kafka(e: &KafkaEvent, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let time = humantime::format_rfc3339_micros(e.time).to_string();
    let info = e.info();
    let summary = format!(
        "{} -> {} kafka-request {} ({} v{} correlation {}{}{})",
        e.source.text,
        e.destination.text,
        e.verdict,
        info.api_key,
        info.api_version,
        info.correlation_id,
        if info.topics.is_empty() {
            String::new()
        } else {
            format!(" topics {}", info.topics.join(","))
        },
        if info.error_code != 0 {
            format!(", answered error {}", info.error_code)
        } else {
            String::new()
        },
    );
    let policy = e.why.policy();
    let reason = e.reason();
    let record: FlowRecord<&str, &RawValue> = FlowRecord {
        time: &time,
        verdict: e.verdict,
        kind: "l7",
        drop_reason: (e.verdict == "DROPPED").then_some(POLICY_DENIED),
        direction: e.direction,
        source: &e.source.json,
        destination: &e.destination.json,
        protocol: "TCP",
        tcp_flags: None,
        l7: Some(L7Info {
            protocol: "kafka",
            http: None,
            dns: None,
            kafka: Some(info),
        }),
        policy: policy.as_deref(),
        summary: &summary,
        reason: Some(reason.as_str()).filter(|r| !r.is_empty()),
    };
    serde_json::to_writer(out, &record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::fixtures::l7_deny;
    use crate::flows::{SharedPeer, Why};
    use l7_rules::engine::L7Request;
    use l7_rules::l7::http::HttpRequest;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    #[test]
    fn an_http_event_is_written_as_the_flow_contract_says() {
        let want = l7_deny();
        let mut e = HttpEvent {
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_381_201_123_456),
            verdict: "DROPPED",
            direction: "ingress",
            source: Arc::new(SharedPeer::new(want.source.clone())),
            destination: Arc::new(SharedPeer::new(want.destination.clone())),
            method: http::Method::PUT,
            host: http::HeaderValue::from_static("deathstar"),
            orig_dst: "10.200.1.2:80".parse().unwrap(),
            uri: "/v1/exhaust-port".parse().unwrap(),
            version: "HTTP/1.1",
            code: 403,
            why: Why::Check {
                policy: Some(Arc::from("default/rule1")),
                reason: Arc::from(""),
            },
        };
        // The line is the contract's object, field for field (an empty reason is left out).
        let line = |e: &HttpEvent| {
            let mut line = Vec::new();
            write_http(e, &mut line).unwrap();
            serde_json::from_slice::<serde_json::Value>(&line).unwrap()
        };
        let decode = |e: &HttpEvent| serde_json::from_value::<Flow>(line(e)).unwrap();
        assert_eq!(line(&e), serde_json::to_value(&want).unwrap());
        assert_eq!(decode(&e), want);
        e.host = http::HeaderValue::from_static("");
        assert_eq!(e.url(), "http://10.200.1.2:80/v1/exhaust-port");
        // An allowed request: the engine's decision, explained on the flow-log thread.
        let view = crate::state::tests::starwars_view();
        let tie = view.resolve("10.200.3.2".parse().unwrap());
        let ds = view.resolve("10.200.1.2".parse().unwrap());
        let policy = view.engine.connection_policy(
            &[l7_rules::engine::Flow {
                direction: l7_rules::model::Direction::Ingress,
                subject: &ds.peer,
                peer: &tie.peer,
                protocol: l7_rules::model::Protocol::Tcp,
                port: 80,
            }],
            false,
        );
        let request = HttpRequest {
            method: "POST",
            path: "/v1/request-landing",
            host: "deathstar",
            headers: &[],
        };
        e.why = Why::Decision(policy.decide(Some(&L7Request::Http(request))));
        e.method = http::Method::POST;
        e.uri = "/v1/request-landing".parse().unwrap();
        e.verdict = "FORWARDED";
        let f = decode(&e);
        assert_eq!(f.policy.as_deref(), Some("default/rule1"));
        assert!(f
            .reason
            .unwrap()
            .ends_with("ingress[0].toPorts[0].rules.http[0] allows POST /v1/request-landing"));
        // A denied one names the request it judged.
        let request = HttpRequest {
            method: "PUT",
            path: "/v1/exhaust-port",
            host: "deathstar",
            headers: &[],
        };
        e.why = Why::Decision(policy.decide(Some(&L7Request::Http(request))));
        e.method = http::Method::PUT;
        e.uri = "/v1/exhaust-port".parse().unwrap();
        assert!(e
            .reason()
            .ends_with("PUT /v1/exhaust-port matched no http rule"));
    }
}
