//! Flows: one record type for kernel verdicts and proxy verdicts, written as JSON lines to the
//! flow log, and the Hubble-like text `ward observe` prints.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use bpf_redirect::{Event, EventKind, Hook, PolicyDirection};
use serde::{Deserialize, Serialize};

use crate::node::{NodeView, PeerInfo};

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
    fn text(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}:{}", self.name, self.port),
            None => format!("{}:{}", self.ip, self.port),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HttpInfo {
    pub method: String,
    pub url: String,
    pub version: String,
    pub code: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct L7Info {
    pub protocol: String,
    pub http: HttpInfo,
}

/// One flow line. The field names are the flow-log contract.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    pub time: String,
    pub verdict: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub drop_reason: Option<String>,
    pub direction: String,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    pub protocol: String,
    pub tcp_flags: Option<String>,
    pub l7: Option<L7Info>,
    pub policy: Option<String>,
    pub summary: String,
    /// Extra: why (the engine's explanation), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub const POLICY_DENIED: &str = "Policy denied";

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

fn tcp_flag_names(flags: u8) -> Option<String> {
    const NAMES: [(u8, &str); 5] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        132 => "SCTP".into(),
        n => format!("{n}"),
    }
}

/// Converts `CLOCK_MONOTONIC` nanoseconds to wall-clock time.
fn mono_to_system(ts_ns: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let now = SystemTime::now();
    if ts_ns <= now_mono {
        now - Duration::from_nanos(now_mono - ts_ns)
    } else {
        now
    }
}

impl Flow {
    /// A kernel event, resolved against the current view.
    pub fn from_event(e: &Event, view: &NodeView) -> Flow {
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
            tcp_flag_names(e.tcp_flags)
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
            time: humantime::format_rfc3339_micros(mono_to_system(e.ts_ns)).to_string(),
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

    /// An L7 (HTTP) verdict of the proxy.
    #[allow(clippy::too_many_arguments)]
    pub fn http(
        verdict: &str,
        direction: &str,
        source: FlowPeer,
        destination: FlowPeer,
        http: HttpInfo,
        policy: Option<String>,
        reason: Option<String>,
    ) -> Flow {
        let summary = format!(
            "{} (ID:{}) -> {} (ID:{}) http-request {verdict} ({} {} {})",
            source.text(),
            source.identity,
            destination.text(),
            destination.identity,
            http.version,
            http.method,
            http.url
        );
        Flow {
            time: now_rfc3339(),
            verdict: verdict.into(),
            kind: "l7".into(),
            drop_reason: (verdict == "DROPPED").then(|| POLICY_DENIED.to_string()),
            direction: direction.into(),
            source,
            destination,
            protocol: "TCP".into(),
            tcp_flags: None,
            l7: Some(L7Info {
                protocol: "http".into(),
                http,
            }),
            policy,
            summary,
            reason,
        }
    }

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

/// Appends flows to the flow log from a dedicated thread.
pub struct FlowWriter {
    tx: mpsc::Sender<Flow>,
}

impl Clone for FlowWriter {
    fn clone(&self) -> Self {
        FlowWriter {
            tx: self.tx.clone(),
        }
    }
}

impl FlowWriter {
    pub fn start(path: PathBuf) -> std::io::Result<FlowWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let (tx, rx) = mpsc::channel::<Flow>();
        std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::new(file);
                while let Ok(f) = rx.recv() {
                    let mut write = |f: &Flow| {
                        if let Ok(line) = serde_json::to_string(f) {
                            let _ = writeln!(w, "{line}");
                        }
                    };
                    write(&f);
                    while let Ok(f) = rx.try_recv() {
                        write(&f);
                    }
                    if let Err(e) = w.flush() {
                        tracing::warn!(error = %e, "writing the flow log");
                    }
                }
            })?;
        Ok(FlowWriter { tx })
    }

    pub fn send(&self, f: Flow) {
        tracing::debug!(target: "ward::flow", "{}", f.summary);
        let _ = self.tx.send(f);
    }
}

/// `ward observe` filters.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub verdict: Option<String>,
    pub from_labels: Vec<(String, String)>,
    pub to_labels: Vec<(String, String)>,
    pub protocol: Option<String>,
    pub since: Option<SystemTime>,
}

fn has_label(labels: &[String], k: &str, v: &str) -> bool {
    labels.iter().any(|l| {
        let bare = match l.split_once(':') {
            Some((src, rest)) if !src.contains('=') => rest,
            _ => l.as_str(),
        };
        bare == format!("{k}={v}") || l == &format!("{k}={v}")
    })
}

impl Filter {
    pub fn matches(&self, f: &Flow) -> bool {
        if let Some(v) = &self.verdict {
            if !f.verdict.eq_ignore_ascii_case(v) {
                return false;
            }
        }
        if !self
            .from_labels
            .iter()
            .all(|(k, v)| has_label(&f.source.labels, k, v))
        {
            return false;
        }
        if !self
            .to_labels
            .iter()
            .all(|(k, v)| has_label(&f.destination.labels, k, v))
        {
            return false;
        }
        if let Some(p) = &self.protocol {
            let p = p.to_ascii_lowercase();
            let ok = match p.as_str() {
                "http" => f.l7.as_ref().is_some_and(|l| l.protocol == "http"),
                other => f.protocol.eq_ignore_ascii_case(other),
            };
            if !ok {
                return false;
            }
        }
        if let Some(since) = self.since {
            match humantime::parse_rfc3339_weak(&f.time) {
                Ok(t) if t >= since => {}
                _ => return false,
            }
        }
        true
    }
}

/// Parses `k=v,k=v` (a `k8s:` prefix is accepted and ignored).
pub fn parse_label_filter(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected key=value"))?;
        let k = k.strip_prefix("k8s:").unwrap_or(k);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Reads the flow log, printing matching flows; with `follow`, keeps tailing.
pub fn observe(
    path: &Path,
    filter: &Filter,
    json: bool,
    follow: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => loop {
            std::thread::sleep(Duration::from_millis(200));
            if let Ok(f) = std::fs::File::open(path) {
                break f;
            }
        },
        Err(e) => return Err(e),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            if !follow {
                if !line.is_empty() {
                    emit(&line, filter, json, out)?;
                }
                return Ok(());
            }
            out.flush()?;
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        emit(&line, filter, json, out)?;
        line.clear();
    }
}

fn emit(line: &str, filter: &Filter, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let line = line.trim_end();
    let Ok(flow) = serde_json::from_str::<Flow>(line) else {
        return Ok(());
    };
    if !filter.matches(&flow) {
        return Ok(());
    }
    if json {
        writeln!(out, "{line}")
    } else {
        writeln!(out, "{}", flow.text_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(
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

    fn l7_deny() -> Flow {
        let mut f = Flow::http(
            "DROPPED",
            "ingress",
            peer(
                "tiefighter",
                Some("default"),
                42250,
                "10.200.3.2",
                56934,
                &["k8s:org=empire", "k8s:class=tiefighter"],
            ),
            peer(
                "deathstar-1",
                Some("default"),
                27476,
                "10.200.1.2",
                80,
                &["k8s:org=empire", "k8s:class=deathstar"],
            ),
            HttpInfo {
                method: "PUT".into(),
                url: "http://deathstar/v1/exhaust-port".into(),
                version: "HTTP/1.1".into(),
                code: 403,
            },
            Some("default/rule1".into()),
            None,
        );
        f.time = "2026-11-22T21:00:01.123456Z".into();
        f
    }

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
        let view = crate::node::tests::starwars_view();
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

    #[test]
    fn filters() {
        let f = l7_deny();
        let yes = |flt: Filter| assert!(flt.matches(&f), "{flt:?}");
        let no = |flt: Filter| assert!(!flt.matches(&f), "{flt:?}");
        yes(Filter::default());
        yes(Filter {
            verdict: Some("dropped".into()),
            ..Default::default()
        });
        no(Filter {
            verdict: Some("FORWARDED".into()),
            ..Default::default()
        });
        yes(Filter {
            from_labels: parse_label_filter("org=empire,k8s:class=tiefighter").unwrap(),
            ..Default::default()
        });
        no(Filter {
            to_labels: parse_label_filter("class=tiefighter").unwrap(),
            ..Default::default()
        });
        yes(Filter {
            protocol: Some("http".into()),
            ..Default::default()
        });
        yes(Filter {
            protocol: Some("tcp".into()),
            ..Default::default()
        });
        no(Filter {
            protocol: Some("udp".into()),
            ..Default::default()
        });
        no(Filter {
            since: Some(SystemTime::now()),
            ..Default::default()
        });
        assert!(parse_label_filter("novalue").is_err());
    }

    #[test]
    fn observe_reads_json_lines_and_skips_garbage() {
        let dir = std::env::temp_dir().join(format!("ward-observe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.jsonl");
        let line = serde_json::to_string(&l7_deny()).unwrap();
        std::fs::write(&path, format!("not json\n{line}\n")).unwrap();
        let mut out = Vec::new();
        observe(&path, &Filter::default(), true, false, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{line}\n"));
        let mut out = Vec::new();
        observe(&path, &Filter::default(), false, false, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("http-request DROPPED (HTTP/1.1 PUT http://deathstar/v1/exhaust-port)\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
