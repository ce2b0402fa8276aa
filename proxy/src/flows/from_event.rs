//! What becomes a flow: a kernel event (resolved against the node snapshot), and an HTTP
//! verdict of the proxy, handed over cheaply on the request path and formatted on the
//! flow-log thread.

use std::sync::Arc;
use std::time::SystemTime;

use bpf_redirect::{Event, EventKind, Hook, PolicyDirection};
use l7_rules::engine::{Decision, L7Request};
use l7_rules::l7::http::HttpRequest;

use super::model::{Flow, FlowPeer, POLICY_DENIED};
use crate::state::NodeState;

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        132 => "SCTP".into(),
        n => format!("{n}"),
    }
}

impl Flow {
    /// A kernel event, resolved against the current view.
    pub fn from_event(e: &Event, view: &NodeState) -> Flow {
        let src_info = view.resolve((*e.src.ip()).into());
        let dst_info = view.resolve((*e.dst.ip()).into());
        let mut source = FlowPeer::new(&src_info, (*e.src.ip()).into(), e.src.port());
        let mut destination = FlowPeer::new(&dst_info, (*e.dst.ip()).into(), e.dst.port());
        // The kernel's identities are authoritative for what it decided.
        source.identity = e.src_identity;
        destination.identity = e.dst_identity;
        let direction = match (e.policy_direction, e.hook) {
            (PolicyDirection::Egress, _) => "egress",
            (PolicyDirection::Ingress, _) => "ingress",
            (_, Some(Hook::FromEndpoint)) => "egress",
            _ => "ingress",
        };
        let (verdict, drop_reason, what) = match e.kind {
            EventKind::Drop(r) => {
                let reason = if r.0 == bpf_redirect::common::drop_reason::POLICY
                    || r.0 == bpf_redirect::common::drop_reason::POLICY_DENY
                {
                    POLICY_DENIED.to_string()
                } else {
                    r.name().to_string()
                };
                ("DROPPED", Some(reason.clone()), reason)
            }
            EventKind::Allow => (
                "FORWARDED",
                None,
                if e.hook == Some(Hook::ToEndpoint) || direction == "ingress" {
                    "to-endpoint".to_string()
                } else {
                    "to-stack".to_string()
                },
            ),
            EventKind::Redirect { proxy_port } => {
                ("REDIRECTED", None, format!("to-proxy:{proxy_port}"))
            }
            EventKind::Audit(r) => ("AUDIT", None, format!("policy-verdict:{}", r.name())),
            EventKind::Unknown(k) => ("UNKNOWN", None, format!("event-kind-{k}")),
        };
        let protocol = proto_name(e.proto);
        let tcp_flags = if e.proto == 6 {
            Some(bpf_redirect::tcp_flag_names(e.tcp_flags)).filter(|f| !f.is_empty())
        } else {
            None
        };
        let detail = match e.proto {
            6 => format!("TCP Flags: {}", tcp_flags.clone().unwrap_or_default()),
            17 => "UDP".into(),
            1 => format!("ICMPv4 type {}", e.dst.port()),
            p => format!("proto {p}"),
        };
        let summary = format!(
            "{} (ID:{}) -> {} (ID:{}) {what} {verdict} ({detail})",
            source.text(),
            source.identity,
            destination.text(),
            destination.identity
        );
        Flow {
            time: humantime::format_rfc3339_micros(crate::sys::monotonic_to_system(e.ts_ns))
                .to_string(),
            verdict: verdict.into(),
            kind: "l3l4".into(),
            drop_reason,
            direction: direction.into(),
            source,
            destination,
            protocol,
            tcp_flags,
            l7: None,
            policy: None,
            summary,
            reason: None,
        }
    }
}

/// Why the proxy decided what it did about one request; formatted only when the flow is
/// written (on the flow-log thread), not on the request path.
#[derive(Clone, Debug)]
pub enum Why {
    /// Decided before any rule ran (a redirect, a refused request), or nothing to explain.
    Check {
        policy: Option<Arc<str>>,
        reason: Arc<str>,
    },
    /// The engine's decision ([`l7_rules::engine::ConnectionPolicy::decide`]).
    Decision(Decision),
}

impl Why {
    /// `namespace/name` of the deciding policy.
    pub fn policy(&self) -> Option<String> {
        match self {
            Why::Decision(d) => d.policy(),
            Why::Check { policy, .. } => policy.as_deref().map(str::to_string),
        }
    }
}

/// A peer as every flow of one connection repeats it, rendered once per connection: its JSON
/// object and its `name:port (ID:n)` text.
#[derive(Debug)]
pub struct SharedPeer {
    pub(super) json: Box<serde_json::value::RawValue>,
    pub(super) text: String,
}

impl SharedPeer {
    pub fn new(peer: FlowPeer) -> SharedPeer {
        let json = serde_json::value::to_raw_value(&peer).expect("a FlowPeer serialises");
        let text = format!("{} (ID:{})", peer.text(), peer.identity);
        SharedPeer { json, text }
    }

    /// The peer back from its JSON.
    #[cfg(test)]
    pub fn peer(&self) -> FlowPeer {
        serde_json::from_str(self.json.get()).expect("a FlowPeer's own JSON")
    }
}

/// One HTTP request's verdict as the proxy hands it to the flow log: cheap to build (shared
/// peers, no formatting); [`super::encode`] writes it on the flow-log thread.
#[derive(Clone, Debug)]
pub struct HttpEvent {
    pub time: SystemTime,
    pub verdict: &'static str,
    pub direction: &'static str,
    pub source: Arc<SharedPeer>,
    pub destination: Arc<SharedPeer>,
    pub method: http::Method,
    /// `Host` / `:authority`, empty when the request had none.
    pub host: http::HeaderValue,
    /// The original destination, used in the URL when there is no host.
    pub orig_dst: std::net::SocketAddr,
    pub uri: http::Uri,
    pub version: &'static str,
    pub code: u16,
    pub why: Why,
}

impl HttpEvent {
    /// The explanation of the verdict, for the request as it was judged.
    pub fn reason(&self) -> String {
        match &self.why {
            Why::Check { reason, .. } => reason.to_string(),
            Why::Decision(d) => {
                let path = self.uri.path_and_query().map_or("", |p| p.as_str());
                let request = HttpRequest {
                    method: self.method.as_str(),
                    path,
                    host: self.host.to_str().unwrap_or(""),
                    headers: &[],
                };
                d.explain(Some(&L7Request::Http(request)))
            }
        }
    }

    /// `http://<host><path?query>`, as the client asked.
    pub fn url(&self) -> String {
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        match self.host.to_str() {
            Ok(h) if !h.is_empty() => format!("http://{h}{path}"),
            _ => format!("http://{}{path}", self.orig_dst),
        }
    }
}

/// What a DNS answer carried, for the flow.
#[derive(Clone, Debug)]
pub struct DnsAnswer {
    pub ips: Vec<std::net::IpAddr>,
    pub ttl: Option<u32>,
    pub cnames: Vec<String>,
}

/// One DNS query's outcome as the proxy hands it to the flow log (formatted on the flow-log
/// thread).
#[derive(Clone, Debug)]
pub struct DnsEvent {
    pub time: SystemTime,
    pub verdict: &'static str,
    pub direction: &'static str,
    /// The client.
    pub source: Arc<SharedPeer>,
    /// The server it asked.
    pub destination: Arc<SharedPeer>,
    /// `UDP` or `TCP`.
    pub transport: &'static str,
    /// The first question's name as asked; empty when the message had none.
    pub name: String,
    pub qtype: u16,
    /// The rcode the client got, when it got an answer.
    pub rcode: Option<u16>,
    /// The upstream's answer, when it was forwarded.
    pub answer: Option<DnsAnswer>,
    pub why: Why,
}

impl DnsEvent {
    /// The explanation of the verdict.
    pub fn reason(&self) -> String {
        match &self.why {
            Why::Check { reason, .. } => reason.to_string(),
            Why::Decision(d) => d.explain(Some(&L7Request::Dns { name: &self.name })),
        }
    }

    /// The flow's `l7.dns`.
    pub fn info(&self) -> super::model::DnsInfo {
        let answer = self.answer.as_ref();
        super::model::DnsInfo {
            query: self.name.clone(),
            qtypes: vec![parsers::dns::qtype_name(self.qtype)],
            rcode: self.rcode,
            ips: answer.map_or_else(Vec::new, |a| {
                a.ips.iter().map(ToString::to_string).collect()
            }),
            ttl: answer.and_then(|a| a.ttl),
            cnames: answer.map_or_else(Vec::new, |a| a.cnames.clone()),
            kind: if answer.is_some() {
                "response"
            } else {
                "request"
            }
            .into(),
        }
    }
}

/// One Kafka request's outcome, as the proxy hands it to the flow log.
#[derive(Clone, Debug)]
pub struct KafkaEvent {
    pub time: SystemTime,
    pub verdict: &'static str,
    pub direction: &'static str,
    /// The client.
    pub source: Arc<SharedPeer>,
    /// The broker.
    pub destination: Arc<SharedPeer>,
    /// `None` when the frame did not parse.
    pub api_key: Option<i16>,
    pub api_version: i16,
    pub correlation_id: i32,
    pub topics: Vec<String>,
    pub client_id: Option<String>,
    pub error_code: i16,
    pub why: Why,
}

impl KafkaEvent {
    /// The explanation of the verdict.
    pub fn reason(&self) -> String {
        match &self.why {
            Why::Check { reason, .. } => reason.to_string(),
            Why::Decision(d) => {
                let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                d.explain(Some(&L7Request::Kafka(l7_rules::l7::kafka::KafkaRequest {
                    api_key: self.api_key.unwrap_or(-1),
                    api_version: self.api_version,
                    client_id: self.client_id.as_deref(),
                    topics: &topics,
                    broker_discovery: false,
                })))
            }
        }
    }

    /// The flow's `l7.kafka`.
    pub fn info(&self) -> super::model::KafkaInfo {
        super::model::KafkaInfo {
            api_key: match self.api_key {
                Some(k) => {
                    parsers::kafka::api_key_name(k).map_or_else(|| k.to_string(), str::to_string)
                }
                None => "unparsed".into(),
            },
            api_version: self.api_version,
            correlation_id: self.correlation_id,
            topics: self.topics.clone(),
            error_code: self.error_code,
            client_id: self.client_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_event_becomes_a_flow_named_from_the_snapshot() {
        let e = Event {
            kind: EventKind::Drop(bpf_redirect::DropReason::POLICY),
            ts_ns: 0,
            src: "10.200.4.2:56934".parse().unwrap(),
            dst: "10.200.1.2:80".parse().unwrap(),
            proto: 6,
            src_identity: 42250,
            dst_identity: 27476,
            src_endpoint: 4,
            dst_endpoint: 1,
            ifindex: 3,
            hook: Some(Hook::FromEndpoint),
            policy_direction: PolicyDirection::Ingress,
            ct_state: 0,
            tcp_flags: 0x02,
            cookie: 0,
        };
        let view = crate::state::tests::starwars_view();
        let f = Flow::from_event(&e, &view);
        assert_eq!(f.verdict, "DROPPED");
        assert_eq!(f.drop_reason.as_deref(), Some(POLICY_DENIED));
        assert_eq!(f.tcp_flags.as_deref(), Some("SYN"));
        assert_eq!(f.source.name, "xwing");
        assert_eq!(f.destination.port, 80);
        assert_eq!(
            f.summary,
            "default/xwing:56934 (ID:42250) -> default/deathstar-1:80 (ID:27476) Policy denied DROPPED (TCP Flags: SYN)"
        );
    }
}
