//! The node config (`ward run --config FILE`): typed, `deny_unknown_fields`, named defaults,
//! and a validation pass that reports every problem at once with the file, line (when serde
//! knows it) and field path. Relative paths resolve against the config file's directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default pin root of the datapath's maps and links.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/ward";
/// Default transparent HTTP listener port.
pub const DEFAULT_HTTP_PORT: u16 = 15001;
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/ward/admin.sock";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9962";
pub const DEFAULT_FLOW_LOG: &str = "/run/ward/flows.jsonl";
/// Linux interface names are at most 15 bytes.
pub const MAX_IFNAME_LEN: usize = 15;
/// Endpoint ids are u16 and 0 is reserved.
pub const MAX_ENDPOINTS: usize = 4096;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    #[default]
    Default,
    Always,
    Never,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    #[serde(default)]
    pub name: Option<String>,
    /// The node's labels: what a host policy's `nodeSelector` selects.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Audit mode for the host endpoint: host-policy drops are logged as AUDIT and let
    /// through (Cilium's advice before enforcing a host firewall: audit it first).
    #[serde(default)]
    pub audit: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Transparent HTTP / HTTP/2 / gRPC listener.
    #[serde(default = "default_http")]
    pub http: u16,
    /// Transparent DNS listener (UDP and TCP on the same port): flows under a `rules.dns`
    /// port are redirected here, their queries judged by name, and `toFQDNs` learned from the
    /// answers. When unset, such flows fail closed (the kernel drops them) and `ward status`
    /// lists DNS as unproxied.
    #[serde(default)]
    pub dns: Option<u16>,
    /// Port Kafka redirects go to. Ward has no Kafka listener yet: when set, Kafka-redirected
    /// flows are sent there (and fail closed unless something listens).
    #[serde(default)]
    pub kafka: Option<u16>,
}

fn default_http() -> u16 {
    DEFAULT_HTTP_PORT
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            http: DEFAULT_HTTP_PORT,
            dns: None,
            kafka: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<Ipv4Addr>,
    /// Host-side veth in the node's network namespace.
    pub interface: String,
    #[serde(default)]
    pub named_ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub audit: bool,
}

impl EndpointConfig {
    /// `namespace/name`.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether `spec` names this endpoint: `namespace/name`, or its name alone.
    pub fn is(&self, spec: &str) -> bool {
        match spec.split_once('/') {
            Some((ns, name)) => self.namespace == ns && self.name == name,
            None => self.name == spec,
        }
    }
}

fn default_namespace() -> String {
    "default".into()
}

/// What a denied DNS query gets (Cilium's `--tofqdns-dns-reject-response-code`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsDenyResponse {
    /// `REFUSED`, as Cilium answers by default.
    #[default]
    Refused,
    /// `NXDOMAIN`: musl's resolver stops walking its search list at a `REFUSED`, and goes on
    /// at an `NXDOMAIN`.
    Nxdomain,
}

/// What a client gets when the upstream server does not answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsTimeoutResponse {
    /// `SERVFAIL`: the client's resolver moves on to its next server at once.
    #[default]
    Servfail,
    /// Nothing: the client's own timeout and retry decide.
    Silence,
}

/// What a `ward run` does once it has handed its listening sockets to a new one and drained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterHandover {
    /// Exit 0.
    #[default]
    Exit,
    /// Stay up, serving nothing, until SIGTERM: for a supervisor that restarts an exited
    /// process (a Kubernetes DaemonSet surging a new pod next to the old one), which would
    /// otherwise start the old version again and take the sockets back.
    Wait,
}

/// The DNS proxy and `toFQDNs` learning (`dns:` in the node config).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// The answer to a query no rule allows.
    #[serde(default)]
    pub deny_response: DnsDenyResponse,
    /// How long a forwarded query waits for the upstream's answer (below glibc's 5 s).
    #[serde(default = "default_dns_upstream_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// What the client gets when that time passes.
    #[serde(default)]
    pub on_upstream_timeout: DnsTimeoutResponse,
    /// Queries waiting for an upstream answer, node-wide. A query beyond it is answered
    /// `SERVFAIL` at once (and counted), never queued.
    #[serde(default = "default_dns_max_in_flight")]
    pub max_in_flight: usize,
    /// Client 5-tuples with live upstream sockets (UDP). A query from a new 5-tuple beyond it
    /// is answered `SERVFAIL` (and counted).
    #[serde(default = "default_dns_max_sessions")]
    pub max_sessions: usize,
    /// A learned address stays at least this long, whatever the answer's TTL
    /// (`--tofqdns-min-ttl`), seconds.
    #[serde(default)]
    pub min_ttl: u32,
    /// The longest an allowed answer is held while its addresses are written to the maps
    /// (`--tofqdns-proxy-response-max-delay`); past it the answer is released anyway and
    /// counted.
    #[serde(default = "default_dns_max_release_delay_ms")]
    pub max_release_delay_ms: u64,
    /// Addresses kept per name and endpoint (`--tofqdns-endpoint-max-ip-per-hostname`); the
    /// oldest go first.
    #[serde(default = "default_dns_max_ips_per_name")]
    pub max_ips_per_name: usize,
    /// Learned (endpoint, name, address) entries node-wide; the ones closest to expiry go
    /// first.
    #[serde(default = "default_dns_max_entries")]
    pub max_entries: usize,
}

fn default_dns_upstream_timeout_ms() -> u64 {
    2000
}
fn default_dns_max_in_flight() -> usize {
    10_000
}
fn default_dns_max_sessions() -> usize {
    16_384
}
fn default_dns_max_release_delay_ms() -> u64 {
    100
}
fn default_dns_max_ips_per_name() -> usize {
    50
}
fn default_dns_max_entries() -> usize {
    65_536
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            deny_response: DnsDenyResponse::default(),
            upstream_timeout_ms: default_dns_upstream_timeout_ms(),
            on_upstream_timeout: DnsTimeoutResponse::default(),
            max_in_flight: default_dns_max_in_flight(),
            max_sessions: default_dns_max_sessions(),
            min_ttl: 0,
            max_release_delay_ms: default_dns_max_release_delay_ms(),
            max_ips_per_name: default_dns_max_ips_per_name(),
            max_entries: default_dns_max_entries(),
        }
    }
}

/// The Kafka proxy (`kafka:` in the node config).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Largest request or response frame, bytes (the broker's `socket.request.max.bytes`,
    /// 100 MiB by default). A larger size prefix closes the connection.
    #[serde(default = "default_kafka_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Leave the client ID out of flows (it can name a user or a host).
    #[serde(default)]
    pub redact_client_id: bool,
}

fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// The HTTP proxy's timeouts (`http:` in the node config).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// From a forwarded request to the upstream's response head, milliseconds; past it the
    /// client gets 504 (gRPC: UNAVAILABLE), as Envoy's 15 s route timeout. 0: no limit.
    #[serde(default = "default_upstream_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// A client must send a request head within this, milliseconds (slowloris).
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
}

fn default_upstream_timeout_ms() -> u64 {
    15_000
}

fn default_header_timeout_ms() -> u64 {
    30_000
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            upstream_timeout_ms: default_upstream_timeout_ms(),
            header_timeout_ms: default_header_timeout_ms(),
        }
    }
}

fn default_kafka_max_frame_bytes() -> usize {
    parsers::kafka::MAX_FRAME_LEN
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            max_frame_bytes: default_kafka_max_frame_bytes(),
            redact_client_id: false,
        }
    }
}

/// How the policy-file source notices changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyWatch {
    /// inotify on the policy directories, with a slow metadata poll behind it (a change
    /// inotify cannot see, such as one on a network filesystem, is still found).
    #[default]
    Inotify,
    /// A metadata poll only, every 200 ms.
    Poll,
}

/// Where policies come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    /// The files of `policy_dirs`.
    #[default]
    Files,
    /// CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy objects watched
    /// on the Kubernetes API (`policy_dirs` is not read).
    Kubernetes,
}

/// How to reach the Kubernetes API (`policy_source: kubernetes`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSection {
    /// A kubeconfig file; without one, the in-cluster service account (then `KUBECONFIG`,
    /// then `~/.kube/config`), as kube-rs's `Config::infer` does.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Where the last state (policy documents in force, endpoints) is kept for a restart
    /// while the API server is unreachable.
    #[serde(default = "default_checkpoint")]
    pub checkpoint: PathBuf,
    /// Not configured: the endpoints `ward run` restored from the checkpoint (pods, not the
    /// node config's own endpoints), as `namespace/name`.
    #[serde(skip)]
    pub restored_pods: Vec<String>,
    /// Not configured: the pods' interfaces `ward-cni` reported, from the checkpoint.
    #[serde(skip)]
    pub restored_cni: Vec<crate::admin::api::CniAttachment>,
    /// Not configured: other nodes' pods, from the checkpoint.
    #[serde(skip)]
    pub restored_remote: Vec<(std::net::Ipv4Addr, crate::state::RemotePod)>,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        KubernetesSection {
            kubeconfig: None,
            checkpoint: default_checkpoint(),
            restored_pods: Vec::new(),
            restored_cni: Vec::new(),
            restored_remote: Vec::new(),
        }
    }
}

fn default_checkpoint() -> PathBuf {
    PathBuf::from("/run/ward/kubernetes-checkpoint.json")
}

/// The node config as written.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default = "default_pin_root")]
    pub pin_root: PathBuf,
    #[serde(default)]
    pub uplink: Option<String>,
    #[serde(default)]
    pub enforcement: Enforcement,
    #[serde(default)]
    pub audit: bool,
    #[serde(default = "default_policy_dirs")]
    pub policy_dirs: Vec<PathBuf>,
    /// Where policies come from.
    #[serde(default)]
    pub policy_source: PolicySource,
    #[serde(default)]
    pub kubernetes: KubernetesSection,
    /// How policy changes are noticed.
    #[serde(default)]
    pub policy_watch: PolicyWatch,
    #[serde(default)]
    pub listeners: Listeners,
    /// The DNS proxy and `toFQDNs` learning.
    #[serde(default)]
    pub dns: DnsSection,
    /// The Kafka proxy.
    #[serde(default)]
    pub kafka: KafkaSection,
    /// The HTTP proxy's timeouts.
    #[serde(default)]
    pub http: HttpSection,
    /// On SIGTERM, how long open connections get to finish (HTTP: `Connection: close`,
    /// GOAWAY; Kafka and DNS over TCP: the answers owed) before they are cut, milliseconds.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// After handing the listening sockets to a new `ward run` and draining: `exit` or
    /// `wait` for SIGTERM.
    #[serde(default)]
    pub after_handover: AfterHandover,
    /// Threads that own client connections (like nginx's `worker_processes`); default: one
    /// per CPU.
    #[serde(default)]
    pub proxy_threads: Option<usize>,
    #[serde(default = "default_admin")]
    pub admin_socket: PathBuf,
    /// `null` disables the metrics endpoint.
    #[serde(default = "default_metrics")]
    pub metrics: Option<SocketAddr>,
    #[serde(default = "default_flow_log")]
    pub flow_log: PathBuf,
    /// The flow log is rotated when it passes this many MiB (like Hubble's file exporter).
    #[serde(default = "default_flow_log_max_mb")]
    pub flow_log_max_mb: u64,
    /// Rotated flow logs kept (`flows.jsonl.1` is the newest).
    #[serde(default = "default_flow_log_max_backups")]
    pub flow_log_max_backups: u32,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

fn default_pin_root() -> PathBuf {
    DEFAULT_PIN_ROOT.into()
}
fn default_policy_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("policies")]
}
fn default_admin() -> PathBuf {
    DEFAULT_ADMIN_SOCKET.into()
}
fn default_metrics() -> Option<SocketAddr> {
    Some(DEFAULT_METRICS.parse().expect("valid default"))
}
fn default_flow_log() -> PathBuf {
    DEFAULT_FLOW_LOG.into()
}
fn default_flow_log_max_mb() -> u64 {
    10
}
fn default_flow_log_max_backups() -> u32 {
    5
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: String,
    pub line: Option<usize>,
    /// `endpoints[1].ips[0]`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The config file is unusable; every issue found.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the node config:\n{}", issues.len(), issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl Config {
    /// Reads, parses, resolves relative paths and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            issues: vec![ConfigIssue {
                file: file.clone(),
                line: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&file, &text, &base)
    }

    /// Parses and validates `text` (named `file` in messages), resolving relative paths
    /// against `base`.
    pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let mut cfg: Config = match serde_path_to_error::deserialize(de) {
            Ok(c) => c,
            Err(e) => {
                let field = e.path().to_string();
                let inner = e.into_inner();
                let line = inner.location().map(|l| l.line());
                let mut message = inner.to_string();
                // serde_yaml appends " at line N column M"; the line is reported separately.
                if let Some(i) = message.find(" at line ") {
                    message.truncate(i);
                }
                // serde_yaml may already start the message with the path (or its parent).
                if let Some((head, rest)) = message.split_once(": ") {
                    if !head.is_empty() && field.starts_with(head) {
                        message = rest.to_string();
                    }
                }
                return Err(ConfigError {
                    issues: vec![ConfigIssue {
                        file: file.into(),
                        line,
                        field: if field == "." { String::new() } else { field },
                        message,
                    }],
                });
            }
        };
        cfg.resolve_paths(base);
        let issues = cfg.validate(file);
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError { issues })
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.pin_root);
        abs(&mut self.admin_socket);
        abs(&mut self.flow_log);
        for d in &mut self.policy_dirs {
            abs(d);
        }
    }

    /// Semantic checks; every issue at once.
    pub fn validate(&self, file: &str) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut issue = |field: String, message: String| {
            out.push(ConfigIssue {
                file: file.into(),
                line: None,
                field,
                message,
            })
        };
        if self.policy_source == PolicySource::Kubernetes && !cfg!(feature = "kubernetes") {
            issue(
                "policy_source".into(),
                "this ward was built without the `kubernetes` feature".into(),
            );
        }
        if self.listeners.http == 0 {
            issue("listeners.http".into(), "port 0 is not a port".into());
        }
        for (name, p) in [("dns", self.listeners.dns), ("kafka", self.listeners.kafka)] {
            match p {
                Some(0) => issue(format!("listeners.{name}"), "port 0 is not a port".into()),
                Some(p) if p == self.listeners.http => issue(
                    format!("listeners.{name}"),
                    format!("port {p} is already the http listener"),
                ),
                _ => {}
            }
        }
        if self.listeners.dns.is_some() && self.listeners.dns == self.listeners.kafka {
            issue(
                "listeners.kafka".into(),
                "is already the dns listener's port".into(),
            );
        }
        if !(1..=4_900).contains(&self.dns.upstream_timeout_ms) {
            issue(
                "dns.upstream_timeout_ms".into(),
                "must be 1..=4900 (answer before glibc's 5 s timeout)".into(),
            );
        }
        for (field, v) in [
            ("dns.max_in_flight", self.dns.max_in_flight),
            ("dns.max_sessions", self.dns.max_sessions),
            ("dns.max_ips_per_name", self.dns.max_ips_per_name),
            ("dns.max_entries", self.dns.max_entries),
        ] {
            if v == 0 {
                issue(field.into(), "must be at least 1".into());
            }
        }
        if self.dns.max_release_delay_ms > 5_000 {
            issue(
                "dns.max_release_delay_ms".into(),
                "must be at most 5000".into(),
            );
        }
        if !(1024..=1 << 30).contains(&self.kafka.max_frame_bytes) {
            issue(
                "kafka.max_frame_bytes".into(),
                "must be 1024..=1073741824 (1 KiB to 1 GiB)".into(),
            );
        }
        if self.drain_timeout_ms > 600_000 {
            issue(
                "drain_timeout_ms".into(),
                "must be at most 600000 (10 minutes)".into(),
            );
        }
        if self.http.header_timeout_ms == 0 {
            issue("http.header_timeout_ms".into(), "must be at least 1".into());
        }
        if self.proxy_threads == Some(0) {
            issue("proxy_threads".into(), "must be at least 1".into());
        }
        if self.flow_log_max_mb == 0 {
            issue("flow_log_max_mb".into(), "must be at least 1 (MiB)".into());
        }
        if self.policy_dirs.is_empty() {
            issue(
                "policy_dirs".into(),
                "at least one file or directory".into(),
            );
        }
        if let Some(u) = &self.uplink {
            if let Err(m) = check_ifname(u) {
                issue("uplink".into(), m);
            }
        }
        if let Some(n) = &self.node.name {
            if n.is_empty() {
                issue("node.name".into(), "must not be empty".into());
            }
        }
        for k in self.node.labels.keys() {
            if let Err(m) = check_label_key(k) {
                issue(format!("node.labels.{k}"), m);
            }
        }
        if !self.pin_root.starts_with("/sys/fs/bpf") {
            issue(
                "pin_root".into(),
                format!(
                    "{} is not below /sys/fs/bpf (the bpffs)",
                    self.pin_root.display()
                ),
            );
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            issue(
                "endpoints".into(),
                format!("more than {MAX_ENDPOINTS} endpoints"),
            );
        }
        let mut names = BTreeSet::new();
        let mut ips = BTreeMap::new();
        let mut ifaces = BTreeMap::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = |f: &str| format!("endpoints[{i}].{f}");
            for m in check_endpoint(e) {
                issue(at(&m.0), m.1);
            }
            if !names.insert((e.namespace.clone(), e.name.clone())) || {
                // Names are also unique across namespaces: `ward endpoint remove NAME`.
                self.endpoints[..i].iter().any(|o| o.name == e.name)
            } {
                issue(at("name"), format!("endpoint {:?} is listed twice", e.name));
            }
            for (j, ip) in e.ips.iter().enumerate() {
                if let Some(other) = ips.insert(*ip, e.name.clone()) {
                    issue(
                        at(&format!("ips[{j}]")),
                        format!("{ip} already belongs to endpoint {other:?}"),
                    );
                }
            }
            if let Some(other) = ifaces.insert(e.interface.clone(), e.name.clone()) {
                issue(
                    at("interface"),
                    format!("{} is already endpoint {other:?}'s interface", e.interface),
                );
            }
            if Some(&e.interface) == self.uplink.as_ref() {
                issue(at("interface"), "is the uplink".into());
            }
        }
        out
    }
}

fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "interface name {name:?} must be 1..={MAX_IFNAME_LEN} bytes"
        ));
    }
    if name.contains(['/', ' ', '\0', ':']) || name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

fn check_label_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > 317 || k.contains([',', '=', ' ']) {
        return Err(format!("{k:?} is not a valid label key"));
    }
    Ok(())
}

/// Checks one endpoint; `(field, message)` pairs. Shared with `ward endpoint add`.
pub fn check_endpoint(e: &EndpointConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    };
    if !valid_name(&e.name) {
        out.push((
            "name".into(),
            format!("{:?} is not a valid endpoint name", e.name),
        ));
    }
    if !valid_name(&e.namespace) {
        out.push((
            "namespace".into(),
            format!("{:?} is not a valid namespace", e.namespace),
        ));
    }
    for k in e.labels.keys() {
        if let Err(m) = check_label_key(k) {
            out.push((format!("labels.{k}"), m));
        }
    }
    if e.ips.is_empty() {
        out.push((
            "ips".into(),
            "an endpoint needs at least one IPv4 address".into(),
        ));
    }
    for (j, ip) in e.ips.iter().enumerate() {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            out.push((format!("ips[{j}]"), format!("{ip} cannot be a pod address")));
        }
    }
    if let Err(m) = check_ifname(&e.interface) {
        out.push(("interface".into(), m));
    }
    for (n, p) in &e.named_ports {
        if *p == 0 {
            out.push((format!("named_ports.{n}"), "port 0 is not a port".into()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node: {name: demo, labels: {}}
pin_root: /sys/fs/bpf/ward-test
uplink: null
enforcement: default
audit: false
policy_dirs: [policies]
listeners: {http: 15001}
admin_socket: run/admin.sock
metrics: 127.0.0.1:9962
flow_log: /run/ward/flows.jsonl
endpoints:
- name: deathstar-1
  namespace: default
  labels: {org: empire, class: deathstar}
  ips: [10.200.2.2]
  interface: wds1h
  named_ports: {http: 80}
  audit: false
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("node.yaml", text, Path::new("/etc/ward"))
    }

    /// The node config the DaemonSet ships (deploy/kubernetes/configmap.yaml) parses and
    /// validates, in Kubernetes mode; the shipped CRDs carry Ward's `kafka` rules.
    #[test]
    fn the_shipped_kubernetes_config_and_crds_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
        let cm: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(root.join("configmap.yaml")).unwrap())
                .unwrap();
        let node = cm["data"]["node.yaml"]
            .as_str()
            .unwrap()
            .replace("NODE_NAME", "node-1");
        let c = parse(&node).unwrap();
        assert_eq!(c.policy_source, PolicySource::Kubernetes);
        assert!(c.validate("node.yaml").is_empty());
        for crd in [
            "crds/ciliumnetworkpolicies.yaml",
            "crds/ciliumclusterwidenetworkpolicies.yaml",
        ] {
            let text = std::fs::read_to_string(root.join(crd)).unwrap();
            let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            assert_eq!(
                v["kind"],
                serde_yaml::Value::from("CustomResourceDefinition")
            );
            // Next to dns under every rules schema (ingress, egress, specs…).
            let kafka = text.matches(" kafka:\n").count();
            assert!(kafka > 0, "{crd}: no kafka rules");
            assert_eq!(kafka, text.matches(" dns:\n").count(), "{crd}");
        }
    }

    #[test]
    fn the_documented_example_parses_and_paths_resolve() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.policy_dirs, vec![PathBuf::from("/etc/ward/policies")]);
        assert_eq!(c.admin_socket, PathBuf::from("/etc/ward/run/admin.sock"));
        assert_eq!(c.flow_log, PathBuf::from("/run/ward/flows.jsonl"));
        assert_eq!(c.endpoints[0].named_ports["http"], 80);
        assert_eq!(c.listeners.http, 15001);
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = parse("{}").unwrap();
        assert_eq!(c.policy_watch, PolicyWatch::Inotify);
        assert_eq!(
            parse("policy_watch: poll").unwrap().policy_watch,
            PolicyWatch::Poll
        );
        assert!(parse("policy_watch: fanotify").is_err());
        assert_eq!(c.pin_root, PathBuf::from(DEFAULT_PIN_ROOT));
        assert_eq!(c.listeners.http, DEFAULT_HTTP_PORT);
        assert_eq!(c.enforcement, Enforcement::Default);
        assert_eq!(c.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
        assert!(c.endpoints.is_empty());
        assert_eq!((c.flow_log_max_mb, c.flow_log_max_backups), (10, 5));
        let c = parse("flow_log_max_mb: 50\nflow_log_max_backups: 0").unwrap();
        assert_eq!((c.flow_log_max_mb, c.flow_log_max_backups), (50, 0));
    }

    #[test]
    fn a_zero_flow_log_size_is_rejected_with_its_field() {
        let e = parse("flow_log_max_mb: 0").unwrap_err().to_string();
        assert!(
            e.contains("flow_log_max_mb") && e.contains("at least 1"),
            "{e}"
        );
    }

    /// (name, config text, expected field, expected message fragment, expected line)
    type Case = (
        &'static str,
        String,
        &'static str,
        &'static str,
        Option<usize>,
    );

    #[test]
    fn invalid_configs_name_the_field() {
        let cases: Vec<Case> = vec![
            (
                "unknown top-level key",
                "listners: {http: 1}\n".into(),
                "listners",
                "unknown field `listners`",
                Some(1),
            ),
            (
                "unknown endpoint key",
                GOOD.replace("  audit: false", "  adit: false"),
                "endpoints[0].adit",
                "unknown field `adit`",
                Some(19),
            ),
            (
                "bad enforcement",
                GOOD.replace("enforcement: default", "enforcement: sometimes"),
                "enforcement",
                "unknown variant `sometimes`",
                Some(5),
            ),
            (
                "bad ip",
                GOOD.replace("10.200.2.2", "10.200.2.300"),
                "endpoints[0].ips[0]",
                "invalid IPv4 address",
                Some(16),
            ),
            (
                "port 0",
                GOOD.replace("{http: 15001}", "{http: 0}"),
                "listeners.http",
                "port 0",
                None,
            ),
            (
                "long interface",
                GOOD.replace("wds1h", "averyveryverylonginterface"),
                "endpoints[0].interface",
                "1..=15 bytes",
                None,
            ),
            (
                "no ips",
                GOOD.replace("[10.200.2.2]", "[]"),
                "endpoints[0].ips",
                "at least one IPv4",
                None,
            ),
            (
                "pin root outside bpffs",
                GOOD.replace("/sys/fs/bpf/ward-test", "/tmp/pins"),
                "pin_root",
                "not below /sys/fs/bpf",
                None,
            ),
            (
                "duplicate endpoint",
                format!("{GOOD}- name: deathstar-1\n  ips: [10.200.3.2]\n  interface: other\n"),
                "endpoints[1].name",
                "listed twice",
                None,
            ),
            (
                "duplicate ip",
                format!("{GOOD}- name: other\n  ips: [10.200.2.2]\n  interface: other\n"),
                "endpoints[1].ips[0]",
                "already belongs",
                None,
            ),
            (
                "listener clash",
                GOOD.replace("{http: 15001}", "{http: 15001, dns: 15001}"),
                "listeners.dns",
                "already the http listener",
                None,
            ),
        ];
        for (name, text, field, msg, line) in cases {
            let err = parse(&text).expect_err(name);
            let i = &err.issues[0];
            assert_eq!(i.field, field, "{name}: {err}");
            assert!(i.message.contains(msg), "{name}: {}", i.message);
            assert_eq!(i.line, line, "{name}: {err}");
            assert!(i.to_string().starts_with("node.yaml"), "{name}");
            assert!(
                !i.message.starts_with(&i.field) || i.field.is_empty(),
                "{name}: {i}"
            );
        }
    }

    #[test]
    fn all_semantic_errors_are_reported_at_once() {
        let text = GOOD
            .replace("{http: 15001}", "{http: 0}")
            .replace("wds1h", "a/b");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.issues.len(), 2, "{err}");
    }
}
