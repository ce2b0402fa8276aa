//! Flows: what the kernel and the proxy decided, as one record type ([`model`]), built from
//! kernel events and proxy verdicts ([`from_event`]), encoded by one JSON encoder
//! ([`encode`]) and appended to the rotated flow log ([`writer`]).

pub mod encode;
pub mod from_event;
pub mod model;
pub mod writer;

pub use from_event::{DnsAnswer, DnsEvent, HttpEvent, KafkaEvent, SharedPeer, Why};
pub use model::{Flow, FlowPeer};
pub use writer::{FlowLogConfig, FlowWriter};

/// Flows the tests of the flow log and of `ward observe` share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::model::{Flow, FlowPeer, HttpInfo, L7Info, POLICY_DENIED};

    pub fn peer(
        name: &str,
        ns: Option<&str>,
        id: u32,
        ip: &str,
        port: u16,
        labels: &[&str],
    ) -> FlowPeer {
        FlowPeer {
            name: name.into(),
            namespace: ns.map(Into::into),
            identity: id,
            ip: ip.into(),
            port,
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// tiefighter's `PUT /v1/exhaust-port`, denied by `default/rule1`.
    pub fn l7_deny() -> Flow {
        Flow {
            time: "2026-11-22T21:00:01.123456Z".into(),
            verdict: "DROPPED".into(),
            kind: "l7".into(),
            drop_reason: Some(POLICY_DENIED.into()),
            direction: "ingress".into(),
            source: peer(
                "tiefighter",
                Some("default"),
                42250,
                "10.200.3.2",
                56934,
                &["k8s:org=empire", "k8s:class=tiefighter"],
            ),
            destination: peer(
                "deathstar-1",
                Some("default"),
                27476,
                "10.200.1.2",
                80,
                &["k8s:org=empire", "k8s:class=deathstar"],
            ),
            protocol: "TCP".into(),
            tcp_flags: None,
            l7: Some(L7Info {
                protocol: "http".into(),
                http: Some(HttpInfo {
                    method: "PUT".into(),
                    url: "http://deathstar/v1/exhaust-port".into(),
                    version: "HTTP/1.1".into(),
                    code: 403,
                }),
                dns: None,
                kafka: None,
            }),
            policy: Some("default/rule1".into()),
            summary: "default/tiefighter:56934 (ID:42250) -> default/deathstar-1:80 (ID:27476) \
                http-request DROPPED (HTTP/1.1 PUT http://deathstar/v1/exhaust-port)"
                .into(),
            reason: None,
        }
    }

    /// A flow whose URL carries `n`, so the order of what `observe` prints can be checked.
    pub fn numbered(n: usize) -> Flow {
        let mut f = l7_deny();
        f.l7.as_mut().unwrap().http.as_mut().unwrap().url = format!("http://deathstar/{n}");
        f
    }

    /// The URLs of the flow lines in `out`.
    pub fn urls(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| {
                let f: Flow = serde_json::from_str(l).unwrap();
                f.l7.unwrap().http.unwrap().url
            })
            .collect()
    }

    pub fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ward-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
