//! The flow record: one shape for kernel verdicts and proxy verdicts, the flow-log contract.
//! It is generic over how its strings and peers are held, so the proxy can write a flow from
//! borrowed parts ([`super::encode`]) and readers get owned values ([`Flow`]), with one
//! definition of the field names.

use serde::{Deserialize, Serialize};

use crate::state::PeerInfo;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowPeer {
    pub name: String,
    pub namespace: Option<String>,
    pub identity: u32,
    pub ip: String,
    pub port: u16,
    pub labels: Vec<String>,
}

impl FlowPeer {
    pub fn new(info: &PeerInfo, ip: std::net::IpAddr, port: u16) -> FlowPeer {
        FlowPeer {
            name: if info.name == "world" {
                ip.to_string()
            } else {
                info.name.clone()
            },
            namespace: info.namespace.clone(),
            identity: info.peer.identity.0,
            ip: ip.to_string(),
            port,
            labels: info.labels(),
        }
    }

    /// `default/xwing:56934` for endpoints, `10.0.0.1:80` otherwise.
    pub fn text(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}:{}", self.name, self.port),
            None => format!("{}:{}", self.ip, self.port),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HttpInfo<S = String> {
    pub method: S,
    pub url: S,
    pub version: S,
    pub code: u16,
}

/// A DNS query and, once answered, its answer (Hubble's `l7.dns`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DnsInfo {
    /// The first question's name as asked, fully qualified.
    pub query: String,
    /// Its type (`A`, `AAAA`, …).
    pub qtypes: Vec<String>,
    /// The rcode the client got; `None` when it got no answer.
    pub rcode: Option<u16>,
    /// The A/AAAA addresses of the answer (CNAME chains followed).
    pub ips: Vec<String>,
    /// The smallest TTL of the records those came from.
    pub ttl: Option<u32>,
    pub cnames: Vec<String>,
    /// `request` or `response`, as Hubble's `l7.type`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// A Kafka request (Hubble's `l7.kafka`, with every topic instead of the first).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KafkaInfo {
    /// The API key's name (`produce`, `fetch`, …), or its number when unknown.
    pub api_key: String,
    pub api_version: i16,
    pub correlation_id: i32,
    /// The topics the request names, in order; empty for keys without topics.
    pub topics: Vec<String>,
    /// The error code Ward answered a denied request with (0 when forwarded).
    pub error_code: i16,
    /// The client ID; `None` when redacted or not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct L7Info<S = String> {
    pub protocol: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInfo<S>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaInfo>,
}

/// One flow line. The field names are the flow-log contract.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowRecord<S, P> {
    pub time: S,
    pub verdict: S,
    #[serde(rename = "type")]
    pub kind: S,
    pub drop_reason: Option<S>,
    pub direction: S,
    pub source: P,
    pub destination: P,
    pub protocol: S,
    pub tcp_flags: Option<S>,
    pub l7: Option<L7Info<S>>,
    pub policy: Option<S>,
    pub summary: S,
    /// Extra: why (the engine's explanation), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<S>,
}

/// A flow with owned parts: what kernel events become and what readers parse.
pub type Flow = FlowRecord<String, FlowPeer>;

pub const POLICY_DENIED: &str = "Policy denied";

impl Flow {
    /// `Nov 22 21:00:01.123: <summary>`.
    pub fn text_line(&self) -> String {
        format!("{}: {}", short_time(&self.time), self.summary)
    }
}

/// `2026-11-22T21:00:01.123456Z` → `Nov 22 21:00:01.123`.
pub fn short_time(rfc3339: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (Some(month), Some(day), Some(clock)) = (
        rfc3339.get(5..7).and_then(|m| m.parse::<usize>().ok()),
        rfc3339.get(8..10),
        rfc3339.get(11..),
    ) else {
        return rfc3339.to_string();
    };
    let clock = clock.trim_end_matches('Z');
    let clock = match clock.find('.') {
        Some(dot) => &clock[..(dot + 4).min(clock.len())],
        None => clock,
    };
    format!(
        "{} {day} {clock}",
        MONTHS.get(month.wrapping_sub(1)).unwrap_or(&"???")
    )
}

#[cfg(test)]
mod tests {
    use crate::flows::fixtures::l7_deny;

    #[test]
    fn l7_flow_json_has_exactly_the_contract_keys() {
        let v: serde_json::Value = serde_json::to_value(l7_deny()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "destination",
                "direction",
                "drop_reason",
                "l7",
                "policy",
                "protocol",
                "source",
                "summary",
                "tcp_flags",
                "time",
                "type",
                "verdict"
            ]
        );
        assert_eq!(v["type"], "l7");
        assert_eq!(v["drop_reason"], "Policy denied");
        assert_eq!(v["tcp_flags"], serde_json::Value::Null);
        assert_eq!(v["l7"]["http"]["method"], "PUT");
        assert_eq!(v["l7"]["http"]["code"], 403);
        assert_eq!(v["source"]["port"], 56934);
        assert_eq!(v["policy"], "default/rule1");
        let mut src_keys: Vec<&str> = v["source"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.as_str())
            .collect();
        src_keys.sort();
        assert_eq!(
            src_keys,
            ["identity", "ip", "labels", "name", "namespace", "port"]
        );
    }

    #[test]
    fn hubble_like_text() {
        let f = l7_deny();
        assert_eq!(
            f.text_line(),
            "Nov 22 21:00:01.123: default/tiefighter:56934 (ID:42250) -> default/deathstar-1:80 (ID:27476) http-request DROPPED (HTTP/1.1 PUT http://deathstar/v1/exhaust-port)"
        );
    }
}
