//! Flows: one record type for kernel verdicts and proxy verdicts, written as JSON lines to the
//! flow log, and the Hubble-like text `ward observe` prints.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use bpf_redirect::{Event, EventKind, Hook, PolicyDirection};
use l7_rules::engine::{Decision, L7Request};
use l7_rules::l7::http::HttpRequest;
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

#[cfg(test)]
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

    /// An L7 (HTTP) verdict of the proxy, as an owned flow (the proxy itself writes
    /// [`HttpEvent`]s; this is their reference shape).
    #[cfg(test)]
    pub fn http(
        verdict: &str,
        direction: &str,
        source: FlowPeer,
        destination: FlowPeer,
        http: HttpInfo,
        policy: Option<String>,
        reason: Option<String>,
    ) -> Flow {
        let summary = http_summary(
            &source,
            &destination,
            verdict,
            &http.version,
            &http.method,
            &http.url,
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
    json: Box<serde_json::value::RawValue>,
    text: String,
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

/// `default/tiefighter:56934 (ID:42250) -> default/deathstar-1:80 (ID:27476) http-request
/// DROPPED (HTTP/1.1 PUT http://deathstar/v1/exhaust-port)`.
#[cfg(test)]
fn http_summary(
    source: &FlowPeer,
    destination: &FlowPeer,
    verdict: &str,
    version: &str,
    method: &str,
    url: &str,
) -> String {
    format!(
        "{} (ID:{}) -> {} (ID:{}) http-request {verdict} ({version} {method} {url})",
        source.text(),
        source.identity,
        destination.text(),
        destination.identity,
    )
}

/// One HTTP request's verdict as the proxy hands it to the flow log: cheap to build (shared
/// peers, no formatting); [`HttpEvent::to_flow`] makes the [`Flow`] on the flow-log thread.
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

    /// Appends this flow's JSON line (without the newline) to `out`: the same object as
    /// `serde_json::to_writer(&self.to_flow())`, without building the owned [`Flow`].
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        #[derive(Serialize)]
        struct HttpOut<'a> {
            method: &'a str,
            url: &'a str,
            version: &'a str,
            code: u16,
        }
        #[derive(Serialize)]
        struct L7Out<'a> {
            protocol: &'a str,
            http: HttpOut<'a>,
        }
        #[derive(Serialize)]
        struct FlowOut<'a> {
            time: &'a str,
            verdict: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            drop_reason: Option<&'a str>,
            direction: &'a str,
            source: &'a serde_json::value::RawValue,
            destination: &'a serde_json::value::RawValue,
            protocol: &'a str,
            tcp_flags: Option<&'a str>,
            l7: Option<L7Out<'a>>,
            policy: Option<&'a str>,
            summary: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
        }
        let time = humantime::format_rfc3339_micros(self.time).to_string();
        let url = self.url();
        let summary = format!(
            "{} -> {} http-request {} ({} {} {url})",
            self.source.text,
            self.destination.text,
            self.verdict,
            self.version,
            self.method.as_str(),
        );
        let policy = self.why.policy();
        let reason = self.reason();
        serde_json::to_writer(
            out,
            &FlowOut {
                time: &time,
                verdict: self.verdict,
                kind: "l7",
                drop_reason: (self.verdict == "DROPPED").then_some(POLICY_DENIED),
                direction: self.direction,
                source: &self.source.json,
                destination: &self.destination.json,
                protocol: "TCP",
                tcp_flags: None,
                l7: Some(L7Out {
                    protocol: "http",
                    http: HttpOut {
                        method: self.method.as_str(),
                        url: &url,
                        version: self.version,
                        code: self.code,
                    },
                }),
                policy: policy.as_deref(),
                summary: &summary,
                reason: Some(reason.as_str()).filter(|r| !r.is_empty()),
            },
        )
    }

    #[cfg(test)]
    pub fn to_flow(&self) -> Flow {
        let mut f = Flow::http(
            self.verdict,
            self.direction,
            self.source.peer(),
            self.destination.peer(),
            HttpInfo {
                method: self.method.to_string(),
                url: self.url(),
                version: self.version.into(),
                code: self.code,
            },
            self.why.policy(),
            Some(self.reason()).filter(|r| !r.is_empty()),
        );
        f.time = humantime::format_rfc3339_micros(self.time).to_string();
        f
    }
}

/// Where the flow log is written and how much of it is kept.
#[derive(Clone, Debug)]
pub struct FlowLogConfig {
    pub path: PathBuf,
    /// The file is rotated (`flows.jsonl` → `flows.jsonl.1` → …) once it passes this size.
    pub max_bytes: u64,
    /// Rotated files kept; the oldest beyond this is deleted. 0: the file is truncated instead.
    pub max_backups: u32,
}

/// Flows waiting for the flow-log thread; beyond this they are counted as lost (the request
/// path never blocks on the log).
pub const FLOW_QUEUE: usize = 16 * 1024;
/// The flow-log thread writes in batches at most this often under load, so a busy proxy pays
/// one wake-up per batch rather than one per request.
pub const FLOW_BATCH_INTERVAL: Duration = Duration::from_millis(20);

// Requests are the common case and go unboxed (no allocation per request).
#[allow(clippy::large_enum_variant)]
enum Record {
    /// Kernel events are rare next to requests: boxed, so queue slots stay small.
    Flow(Box<Flow>),
    Http(HttpEvent),
    /// Everything queued before it is on disk: acknowledge.
    Flush(mpsc::SyncSender<()>),
}

/// Appends flows to the flow log from a dedicated thread, rotating it by size.
#[derive(Clone)]
pub struct FlowWriter {
    tx: mpsc::SyncSender<Record>,
    lost: prometheus_client::metrics::counter::Counter,
}

/// The open flow log and its rotation.
struct LogFile {
    cfg: FlowLogConfig,
    out: std::io::BufWriter<std::fs::File>,
    size: u64,
}

impl LogFile {
    fn open(cfg: FlowLogConfig) -> std::io::Result<LogFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            cfg,
            out: std::io::BufWriter::with_capacity(256 * 1024, file),
            size,
        })
    }

    fn write(&mut self, r: &Record, line: &mut Vec<u8>) -> std::io::Result<()> {
        line.clear();
        match r {
            Record::Flow(f) => serde_json::to_writer(&mut *line, f)?,
            Record::Http(e) => e.write_json(line)?,
            Record::Flush(ack) => {
                self.out.flush()?;
                let _ = ack.try_send(());
                return Ok(());
            }
        }
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.cfg.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Moves the file to `.1` (older backups shift up) and starts a new one. The log goes on
    /// whatever happens to the old file: one that is gone (deleted or moved by someone else)
    /// counts as rotated; one that cannot be moved is kept and retried after another
    /// `max_bytes`.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let path = &self.cfg.path;
        let moved = if !path.exists() {
            Ok(())
        } else if self.cfg.max_backups > 0 {
            for n in (1..self.cfg.max_backups).rev() {
                let _ = std::fs::rename(backup_path(path, n), backup_path(path, n + 1));
            }
            std::fs::rename(path, backup_path(path, 1))
        } else {
            std::fs::remove_file(path)
        };
        *self = LogFile::open(self.cfg.clone())?;
        if moved.is_err() {
            self.size = 0;
        }
        moved
    }
}

/// `flows.jsonl.N`.
pub fn backup_path(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

impl FlowWriter {
    pub fn start(
        cfg: FlowLogConfig,
        lost: prometheus_client::metrics::counter::Counter,
    ) -> std::io::Result<FlowWriter> {
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut log = LogFile::open(cfg)?;
        let (tx, rx) = mpsc::sync_channel::<Record>(FLOW_QUEUE);
        std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || {
                let mut line = Vec::with_capacity(2048);
                let mut write = |log: &mut LogFile, r: Record| {
                    if let Err(e) = log.write(&r, &mut line) {
                        tracing::warn!(error = %e, "writing the flow log");
                    }
                };
                while let Ok(r) = rx.recv() {
                    write(&mut log, r);
                    while let Ok(r) = rx.try_recv() {
                        write(&mut log, r);
                    }
                    if let Err(e) = log.out.flush() {
                        tracing::warn!(error = %e, "writing the flow log");
                    }
                    // Let the next batch gather instead of waking for every flow.
                    std::thread::sleep(FLOW_BATCH_INTERVAL);
                }
            })?;
        Ok(FlowWriter { tx, lost })
    }

    /// Waits (up to `timeout`) until every flow sent before this call is written: at shutdown,
    /// so the last requests' flows are not lost with the process.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::sync_channel(1);
        self.tx.send(Record::Flush(ack)).is_ok() && done.recv_timeout(timeout).is_ok()
    }

    fn enqueue(&self, r: Record) {
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(r) {
            self.lost.inc();
        }
    }

    pub fn send(&self, f: Flow) {
        tracing::debug!(target: "ward::flow", "{}", f.summary);
        self.enqueue(Record::Flow(Box::new(f)));
    }

    pub fn send_http(&self, e: HttpEvent) {
        self.enqueue(Record::Http(e));
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

/// Reads the flow log (its rotated files first, oldest first), printing matching flows; with
/// `follow`, keeps tailing, across rotations.
pub fn observe(
    path: &Path,
    filter: &Filter,
    json: bool,
    follow: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    // Every file is opened before any is read, newest first, so a rotation while reading
    // neither hides a file nor shows one twice (a file met again under a newer name is the
    // same inode and is skipped).
    let open = || loop {
        match std::fs::File::open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => return Err(e),
        }
    };
    let current = open()?;
    let mut seen = vec![inode(&current)];
    let mut backups = Vec::new();
    for n in 1.. {
        let Ok(f) = std::fs::File::open(backup_path(path, n)) else {
            break;
        };
        if !seen.contains(&inode(&f)) {
            seen.push(inode(&f));
            backups.push(f);
        }
    }
    for f in backups.into_iter().rev() {
        read_lines(std::io::BufReader::new(f), filter, json, out)?;
    }
    let mut reader = std::io::BufReader::new(current);
    if !follow {
        return read_lines(reader, filter, json, out);
    }
    let mut line = String::new();
    loop {
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            emit(&line, filter, json, out)?;
            line.clear();
            continue;
        }
        // At the end: was the file rotated away? The writer flushes before it renames, so
        // reading the old file to its end once more gets the rest; then the new one.
        if rotated(path, reader.get_ref()) {
            loop {
                let n = reader.read_line(&mut line)?;
                if !line.is_empty() && (n == 0 || line.ends_with('\n')) {
                    emit(&line, filter, json, out)?;
                    line.clear();
                }
                if n == 0 {
                    break;
                }
            }
            reader = std::io::BufReader::new(open()?);
            continue;
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn inode(f: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `path` no longer names the file `open` reads.
fn rotated(path: &Path, open: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), open.metadata()) {
        (Ok(now), Ok(ours)) => now.ino() != ours.ino() || now.dev() != ours.dev(),
        (Err(_), _) => true,
        _ => false,
    }
}

fn read_lines(
    reader: impl BufRead,
    filter: &Filter,
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for line in reader.lines() {
        emit(&line?, filter, json, out)?;
    }
    Ok(())
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

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ward-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A flow whose URL carries `n`, so the order of what `observe` prints can be checked.
    fn numbered(n: usize) -> Flow {
        let mut f = l7_deny();
        f.l7.as_mut().unwrap().http.url = format!("http://deathstar/{n}");
        f
    }

    fn urls(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| {
                let f: Flow = serde_json::from_str(l).unwrap();
                f.l7.unwrap().http.url
            })
            .collect()
    }

    #[test]
    fn the_flow_log_rotates_by_size_and_observe_reads_every_file_in_order() {
        let dir = temp_dir("rotate");
        let path = dir.join("flows.jsonl");
        let line_len = serde_json::to_string(&numbered(100)).unwrap().len() as u64 + 1;
        let cfg = FlowLogConfig {
            path: path.clone(),
            max_bytes: line_len * 10,
            max_backups: 2,
        };
        let lost = prometheus_client::metrics::counter::Counter::default();
        let w = FlowWriter::start(cfg, lost.clone()).unwrap();
        for n in 100..135 {
            w.send(numbered(n));
        }
        drop(w);
        // The writer thread ends once the queue is drained; wait for the last flow.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&path)
            .unwrap_or_default()
            .contains("/134\"")
        {
            assert!(std::time::Instant::now() < deadline, "flows not written");
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in [path.clone(), backup_path(&path, 1), backup_path(&path, 2)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= line_len * 10, "{} is {len} bytes", p.display());
        }
        assert!(!backup_path(&path, 3).exists(), "only two backups are kept");
        let mut out = Vec::new();
        observe(&path, &Filter::default(), true, false, &mut out).unwrap();
        // 10 lines a file: 130..135 in the file, 120..130 in .1, 110..120 in .2, older gone.
        let want: Vec<String> = (110..135)
            .map(|n| format!("http://deathstar/{n}"))
            .collect();
        assert_eq!(urls(&out), want);
        assert_eq!(lost.get(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_goes_on_when_its_file_disappears_and_flush_waits_for_the_disk() {
        let dir = temp_dir("vanish");
        let path = dir.join("flows.jsonl");
        let line_len = serde_json::to_string(&numbered(100)).unwrap().len() as u64 + 1;
        let cfg = FlowLogConfig {
            path: path.clone(),
            max_bytes: line_len * 4,
            max_backups: 1,
        };
        let w = FlowWriter::start(cfg, Default::default()).unwrap();
        for n in 100..103 {
            w.send(numbered(n));
        }
        assert!(w.flush(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        // Someone deletes the file; the next rotation finds nothing to move and starts anew.
        std::fs::remove_file(&path).unwrap();
        for n in 103..110 {
            w.send(numbered(n));
        }
        assert!(w.flush(Duration::from_secs(5)));
        let mut out = Vec::new();
        observe(&path, &Filter::default(), true, false, &mut out).unwrap();
        let got = urls(&out);
        assert_eq!(got.last().unwrap(), "http://deathstar/109", "{got:?}");
        assert!(got.len() >= 4, "flows after the deletion are kept: {got:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A `Write` another thread can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn observe_follow_continues_across_a_rotation() {
        let dir = temp_dir("follow");
        let path = dir.join("flows.jsonl");
        let line = |n| serde_json::to_string(&numbered(n)).unwrap() + "\n";
        std::fs::write(&path, line(1)).unwrap();
        let out = Shared::default();
        {
            let (path, mut out) = (path.clone(), out.clone());
            // Follows forever; the thread ends with the test process.
            std::thread::spawn(move || observe(&path, &Filter::default(), true, true, &mut out));
        }
        let wait_for = |n: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while urls(&out.0.lock().unwrap()).len() < n {
                assert!(std::time::Instant::now() < deadline, "follow stalled");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for(1);
        // The writer's rotation: append, rename away, start a new file.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(line(2).as_bytes())
            .unwrap();
        std::fs::rename(&path, backup_path(&path, 1)).unwrap();
        std::fs::write(&path, line(3)).unwrap();
        wait_for(3);
        assert_eq!(
            urls(&out.0.lock().unwrap()),
            [
                "http://deathstar/1",
                "http://deathstar/2",
                "http://deathstar/3"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_http_event_becomes_the_flow_the_proxy_used_to_build() {
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
        assert_eq!(e.to_flow(), want, "an empty reason is left out");
        let same_json = |e: &HttpEvent| {
            let mut line = Vec::new();
            e.write_json(&mut line).unwrap();
            let direct: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(direct, serde_json::to_value(e.to_flow()).unwrap());
        };
        same_json(&e);
        e.host = http::HeaderValue::from_static("");
        assert_eq!(e.url(), "http://10.200.1.2:80/v1/exhaust-port");
        // An allowed request: the engine's decision, explained on the flow-log thread.
        let view = crate::node::tests::starwars_view();
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
        same_json(&e);
        let f = e.to_flow();
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
