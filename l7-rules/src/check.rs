//! The questions `ward-check` (and the proxy's tests) ask: a question (two peers, a port, maybe
//! an L7 request) becomes flows, the engine decides, and the answer carries the verdict and its
//! reason (with its JSON shape). Case files (JSON lines) go through the same path. The command
//! line itself lives in the binary (`src/bin/ward-check/`).

use crate::engine::{ConnectionPolicy, Engine, Flow, L3L4Verdict, L7Request, Stage, Verdict};
use crate::identity::{Peer, PeerKind, Reserved};
use crate::l7::kafka::KafkaRequest;
use crate::l7::request::{Judged, RawHttpRequest};
use crate::labels::{pod_labels, split_source, LabelSet};
use crate::model::*;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A peer as written by the user, before it meets the policy set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub fqdn: Option<String>,
    #[serde(default)]
    pub named_ports: BTreeMap<String, u16>,
    #[serde(skip)]
    pub entity: Option<Reserved>,
}

/// JSON form of a peer: an entity string or an object.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PeerJson {
    Entity(String),
    Object(PeerSpec),
}

impl PeerJson {
    pub fn into_spec(self) -> Result<PeerSpec, String> {
        match self {
            PeerJson::Entity(e) => parse_peer(&e),
            PeerJson::Object(o) => Ok(o),
        }
    }
}

/// Parses the command-line peer forms: an entity (`world`, `host`, …), `cidr:IP`,
/// `fqdn:NAME[=IP]`, or labels `k=v,k=v` (with optional `k8s:` prefixes and `namespace=`).
pub fn parse_peer(text: &str) -> Result<PeerSpec, String> {
    let text = text.trim();
    if let Some(r) = Reserved::from_name(text) {
        return Ok(PeerSpec {
            entity: Some(r),
            ..Default::default()
        });
    }
    if let Some(ip) = text
        .strip_prefix("cidr:")
        .or_else(|| text.strip_prefix("ip:"))
    {
        let ip: IpAddr = ip.parse().map_err(|_| {
            format!("{text:?}: expected cidr:<IP address> (one address, no prefix length)")
        })?;
        return Ok(PeerSpec {
            ip: Some(ip),
            ..Default::default()
        });
    }
    if let Some(rest) = text.strip_prefix("fqdn:") {
        let (name, ip) = match rest.split_once('=') {
            Some((n, ip)) => (
                n,
                Some(
                    ip.parse()
                        .map_err(|_| format!("{text:?}: expected fqdn:NAME=IP"))?,
                ),
            ),
            None => (rest, None),
        };
        return Ok(PeerSpec {
            fqdn: Some(name.to_string()),
            ip,
            ..Default::default()
        });
    }
    let mut spec = PeerSpec::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!(
                "{part:?} is not a label (k=v), an entity ({}), cidr:IP or fqdn:NAME",
                crate::identity::Entity::NAMES.join(", ")
            ));
        };
        let (_, bare) = split_source(k);
        if bare == "namespace" || bare == crate::labels::POD_NAMESPACE {
            spec.namespace = Some(v.to_string());
        } else {
            spec.labels.insert(k.to_string(), v.to_string());
        }
    }
    if spec.labels.is_empty() && spec.namespace.is_none() {
        return Err(format!("{text:?}: no labels given"));
    }
    Ok(spec)
}

impl Engine {
    /// All CIDRs the policies mention: they become CIDR identities in the ipcache.
    pub fn policy_cidrs(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for p in &self.set.policies {
            for f in p.ingress.filters.iter().chain(&p.egress.filters) {
                if let PeerSelector::Any(terms) = &*f.peers {
                    for t in terms {
                        match t {
                            PeerTerm::Cidr { net, except } => {
                                out.push(*net);
                                out.extend(except.iter().copied());
                            }
                            // A Service without selector stands for its EndpointSlices'
                            // addresses, which need their CIDR identities.
                            PeerTerm::Service { .. } | PeerTerm::ServiceSelector { .. } => {
                                let catalog = &self.set.catalog;
                                for svc in catalog
                                    .services
                                    .iter()
                                    .filter(|s| s.selector.is_none() && t.names_service(s))
                                {
                                    out.extend(svc.addresses(catalog).map(IpNet::from));
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The toFQDNs selectors of all policies, compiled for matching names.
    pub fn fqdn_selector_set(&self) -> crate::l7::dns::FqdnSelectorSet {
        crate::l7::dns::FqdnSelectorSet::new(&self.fqdn_selectors())
    }

    /// The peer an address learned from DNS answers for `names` is: its identity is that of
    /// the selectors that select any of the names (Cilium's FQDN identity); `None` when no
    /// selector does.
    pub fn fqdn_peer(
        ip: IpAddr,
        names: Vec<String>,
        selectors: &crate::l7::dns::FqdnSelectorSet,
    ) -> Option<Peer> {
        let mut selected: Vec<String> = Vec::new();
        for n in &names {
            for s in selectors.selecting(n) {
                if !selected.iter().any(|x| x == s) {
                    selected.push(s.to_string());
                }
            }
        }
        if selected.is_empty() {
            return None;
        }
        selected.sort();
        Some(Peer::fqdn(ip, names, &selected))
    }

    /// The toFQDNs selectors (as written) of all policies.
    pub fn fqdn_selectors(&self) -> Vec<crate::l7::dns::NamePattern> {
        let mut out = Vec::new();
        for p in &self.set.policies {
            for f in &p.egress.filters {
                if let PeerSelector::Any(terms) = &*f.peers {
                    for t in terms {
                        if let PeerTerm::Fqdn(n) = t {
                            out.push(n.clone());
                        }
                    }
                }
            }
        }
        out
    }

    /// Turns a user's peer into the peer the policies see.
    pub fn peer(&self, spec: &PeerSpec) -> Peer {
        if let Some(r) = spec.entity {
            return Peer::reserved(r);
        }
        if let Some(name) = &spec.fqdn {
            let ip = spec.ip.unwrap_or(IpAddr::from([192, 0, 2, 1]));
            let fqdn = parsers::dns::normalize_name(name);
            let selectors: Vec<String> = self
                .fqdn_selectors()
                .iter()
                .filter(|p| crate::l7::dns::pattern_matches(p, &fqdn))
                .map(|p| p.written().to_string())
                .collect();
            let mut p = Peer::fqdn(ip, vec![fqdn], &selectors);
            p.named_ports = spec.named_ports.clone();
            return p;
        }
        if spec.labels.is_empty() && spec.namespace.is_none() {
            if let Some(ip) = spec.ip {
                let prefix = self
                    .policy_cidrs()
                    .into_iter()
                    .filter(|n| n.contains(&ip))
                    .max_by_key(IpNet::prefix_len);
                let mut p = Peer::cidr(ip, prefix);
                p.named_ports = spec.named_ports.clone();
                return p;
            }
        }
        let ns = spec.namespace.clone().unwrap_or_else(|| "default".into());
        let ns_labels = self
            .set
            .catalog
            .namespaces
            .get(&ns)
            .cloned()
            .unwrap_or_default();
        let labels: LabelSet = pod_labels(&spec.labels, &ns, &ns_labels, None);
        let name = spec
            .labels
            .get("app")
            .or(spec.labels.get("class"))
            .or(spec.labels.get("name"))
            .or(spec.labels.values().next())
            .cloned()
            .unwrap_or_else(|| "pod".into());
        let mut p = Peer::endpoint(labels, format!("{ns}/{name}"));
        p.ip = spec.ip;
        p.named_ports = spec.named_ports.clone();
        p
    }
}

/// One question for the engine.
#[derive(Clone, Debug)]
pub struct Question {
    pub from: PeerSpec,
    pub to: PeerSpec,
    pub direction: Option<Direction>,
    pub protocol: Protocol,
    pub port: u16,
    pub l7: Option<L7Question>,
    pub audit: bool,
}

#[derive(Clone, Debug)]
pub enum L7Question {
    Http {
        method: String,
        path: String,
        host: String,
        headers: Vec<(String, String)>,
    },
    Grpc {
        service: String,
        method: String,
    },
    Kafka {
        api_key: i16,
        api_version: i16,
        client_id: Option<String>,
        topics: Vec<String>,
    },
    Dns {
        name: String,
    },
}

/// The combined answer over the directions checked.
#[derive(Clone, Debug)]
pub struct Answer {
    pub allowed: bool,
    pub stage: Stage,
    pub l3l4: L3L4Verdict,
    pub l7: Option<bool>,
    pub audit: bool,
    pub reason: String,
    pub policy: Option<String>,
    pub rule: Option<String>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "verdict": if self.allowed { "allow" } else { "deny" },
            "stage": match self.stage { Stage::L3L4 => "l3l4", Stage::L7 => "l7" },
            "l3l4": match self.l3l4 {
                L3L4Verdict::Allow => "allow",
                L3L4Verdict::Deny => "deny",
                L3L4Verdict::Redirect(_) => "redirect",
            },
            "l7": self.l7.map(|ok| if ok { "allow" } else { "deny" }),
            "audit": self.audit,
            "reason": self.reason,
            "policy": self.policy,
            "rule": self.rule,
        })
    }
}

/// A question the engine cannot answer as asked.
#[derive(Debug, thiserror::Error)]
pub enum QuestionError {
    #[error("invalid request path {path:?}: {message}")]
    BadPath { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// What the connection of a question is subject to: the source's egress and/or the
/// destination's ingress (the sides `--direction` names, else every side that is a pod).
pub fn connection(engine: &Engine, q: &Question) -> Result<ConnectionPolicy, QuestionError> {
    let from = engine.peer(&q.from);
    let to = engine.peer(&q.to);
    let is_subject = |p: &Peer| p.kind == PeerKind::Endpoint;
    let directions: Vec<Direction> = match q.direction {
        Some(d) => {
            let subject = match d {
                Direction::Ingress => &to,
                Direction::Egress => &from,
            };
            if !is_subject(subject) && subject.kind != PeerKind::Reserved(Reserved::Host) {
                return Err(QuestionError::Invalid(format!(
                    "{d} policy belongs to the {} side, which is {} (not an endpoint Ward enforces on)",
                    if d == Direction::Ingress { "destination" } else { "source" },
                    subject.display
                )));
            }
            vec![d]
        }
        None => {
            let mut v = Vec::new();
            if is_subject(&from) {
                v.push(Direction::Egress);
            }
            if is_subject(&to) {
                v.push(Direction::Ingress);
            }
            if v.is_empty() {
                return Err(QuestionError::Invalid(
                    "neither side is a pod: give --direction to check a host policy".into(),
                ));
            }
            v
        }
    };
    let mut flows = Vec::new();
    for d in directions {
        let (subject, peer) = match d {
            Direction::Ingress => (&to, &from),
            Direction::Egress => (&from, &to),
        };
        flows.push(Flow {
            direction: d,
            subject,
            peer,
            protocol: q.protocol,
            port: q.port,
        });
    }
    Ok(engine.connection_policy(&flows, q.audit))
}

/// Answers a question: checks the source's egress and/or the destination's ingress.
pub fn answer(engine: &Engine, q: &Question) -> Result<Answer, QuestionError> {
    let policy = connection(engine, q)?;
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(L7Question::Http {
        host, headers: h, ..
    }) = &q.l7
    {
        if !host.is_empty() {
            headers.push(("host".into(), host.clone().into_bytes()));
        }
        headers.extend(
            h.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone().into_bytes())),
        );
    }
    if let Some(L7Question::Grpc { .. }) = &q.l7 {
        headers.push(("content-type".into(), b"application/grpc".to_vec()));
        headers.push(("te".into(), b"trailers".to_vec()));
    }
    let header_refs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();

    let grpc_path;
    let (method, target) = match &q.l7 {
        Some(L7Question::Http { method, path, .. }) => (method.as_str(), path.as_str()),
        Some(L7Question::Grpc { service, method }) => {
            grpc_path = format!("/{service}/{method}");
            ("POST", grpc_path.as_str())
        }
        _ => ("", ""),
    };
    let is_http = matches!(
        q.l7,
        Some(L7Question::Http { .. } | L7Question::Grpc { .. })
    );
    fn raw<'a>(
        method: &'a str,
        target: &'a str,
        headers: &'a [(&'a str, &'a [u8])],
    ) -> RawHttpRequest<'a> {
        // `ward-check ... http CONNECT host:port`: the target is the authority.
        let connect = method.eq_ignore_ascii_case("CONNECT");
        RawHttpRequest {
            method,
            path: (!connect).then_some(target),
            authority: connect.then_some(target),
            headers,
            require_host: false,
        }
    }
    let raw = |target| is_http.then(|| raw(method, target, &header_refs));
    // The proxy's own request builder: what it judges is what it forwards.
    let bad = |message: String| QuestionError::BadPath {
        path: target.to_string(),
        message,
    };
    let mut note = None;
    let location;
    let judged = match raw(target) {
        None => None,
        Some(r) => match policy.judge_http(&r) {
            Judged::Request(j) => Some(j),
            Judged::Reject(e) => return Err(bad(format!("the proxy answers 400: {e}"))),
            Judged::Redirect { location: to } => {
                // The client follows the 307, and that request is the one the rules judge.
                location = to;
                note = Some(format!(
                    " (the path has escaped slashes: like Envoy, the proxy redirects the client to {location}, which is what was checked)"
                ));
                match raw(&location).map(|r| policy.judge_http(&r)) {
                    Some(Judged::Request(j)) => Some(j),
                    Some(Judged::Reject(e)) => {
                        return Err(bad(format!("the redirected request gets 400: {e}")))
                    }
                    _ => return Err(bad("the redirect loops".into())),
                }
            }
        },
    };
    let topic_refs: Vec<&str> = match &q.l7 {
        Some(L7Question::Kafka { topics, .. }) => topics.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    let request: Option<L7Request<'_>> = match &q.l7 {
        None => None,
        Some(L7Question::Http { .. } | L7Question::Grpc { .. }) => {
            judged.as_ref().map(|j| L7Request::Http(j.as_request()))
        }
        Some(L7Question::Kafka {
            api_key,
            api_version,
            client_id,
            ..
        }) => Some(L7Request::Kafka(KafkaRequest {
            api_key: *api_key,
            api_version: *api_version,
            client_id: client_id.as_deref(),
            topics: &topic_refs,
            broker_discovery: false,
        })),
        Some(L7Question::Dns { name }) => Some(L7Request::Dns { name }),
    };
    let decision = policy.decide(request.as_ref());
    let mut reason = decision.explain(request.as_ref());
    if let Some(note) = note {
        reason.push_str(&note);
    }
    Ok(Answer {
        allowed: decision.verdict.forwards(),
        stage: decision.stage,
        l3l4: decision.l3l4,
        l7: decision.l7,
        audit: decision.verdict == Verdict::Audit,
        reason,
        policy: decision.policy(),
        rule: decision.rule(),
    })
}

/// One line of a case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    #[serde(default)]
    pub name: Option<String>,
    pub from: PeerJson,
    pub to: PeerJson,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub icmp_type: Option<u8>,
    #[serde(default)]
    pub http: Option<HttpCase>,
    #[serde(default)]
    pub grpc: Option<GrpcCase>,
    #[serde(default)]
    pub kafka: Option<KafkaCase>,
    #[serde(default)]
    pub dns: Option<DnsCase>,
    #[serde(default)]
    pub audit: Option<bool>,
    #[serde(default)]
    pub expect: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCase {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcCase {
    pub service: String,
    pub method: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ApiKeyJson {
    Name(String),
    Number(i16),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaCase {
    pub api_key: ApiKeyJson,
    #[serde(default)]
    pub api_version: Option<i16>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub topics: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsCase {
    pub name: String,
}

pub fn parse_direction(text: &str) -> Result<Direction, String> {
    match text.to_ascii_lowercase().as_str() {
        "ingress" => Ok(Direction::Ingress),
        "egress" => Ok(Direction::Egress),
        other => Err(format!("direction {other:?}: use ingress or egress")),
    }
}

pub fn parse_api_key(text: &str) -> Result<i16, String> {
    if let Ok(n) = text.parse::<i16>() {
        return Ok(n);
    }
    parsers::kafka::api_key_from_name(text).ok_or_else(|| format!("unknown Kafka API key {text:?}"))
}

impl Case {
    /// Turns the JSON case into a question.
    pub fn question(self) -> Result<(Option<String>, Question, Option<bool>), String> {
        let protocol = match self.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(p) => Protocol::parse(p).ok_or_else(|| format!("unknown protocol {p:?}"))?,
        };
        let port = if matches!(protocol, Protocol::Icmp | Protocol::Icmpv6) {
            u16::from(self.icmp_type.ok_or("ICMP cases need \"icmp_type\"")?)
        } else {
            match self.port {
                Some(p) => p,
                None if self.dns.is_some() => 53,
                None => return Err("\"port\" is required".into()),
            }
        };
        let n_l7 = [
            self.http.is_some(),
            self.grpc.is_some(),
            self.kafka.is_some(),
            self.dns.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n_l7 > 1 {
            return Err("at most one of http, grpc, kafka, dns".into());
        }
        let l7 = if let Some(h) = self.http {
            Some(L7Question::Http {
                method: h.method,
                path: h.path,
                host: h.host.unwrap_or_default(),
                headers: h.headers.into_iter().collect(),
            })
        } else if let Some(g) = self.grpc {
            Some(L7Question::Grpc {
                service: g.service,
                method: g.method,
            })
        } else if let Some(k) = self.kafka {
            Some(L7Question::Kafka {
                api_key: match k.api_key {
                    ApiKeyJson::Number(n) => n,
                    ApiKeyJson::Name(s) => parse_api_key(&s)?,
                },
                api_version: k.api_version.unwrap_or(0),
                client_id: k.client_id,
                topics: k.topics,
            })
        } else {
            self.dns.map(|d| L7Question::Dns { name: d.name })
        };
        let expect = match self.expect.as_deref() {
            None => None,
            Some("allow") => Some(true),
            Some("deny") => Some(false),
            Some(other) => return Err(format!("expect {other:?}: use allow or deny")),
        };
        let direction = self.direction.as_deref().map(parse_direction).transpose()?;
        Ok((
            self.name,
            Question {
                from: self.from.into_spec()?,
                to: self.to.into_spec()?,
                direction,
                protocol,
                port,
                l7,
                audit: self.audit.unwrap_or(false),
            },
            expect,
        ))
    }
}

/// Result of running a case file.
#[derive(Debug, Default)]
pub struct CaseRun {
    pub lines: Vec<serde_json::Value>,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub any_expect: bool,
}

/// Runs every case line; malformed lines are reported (with their line number) and counted.
pub fn run_cases(engine: &Engine, text: &str) -> CaseRun {
    let mut run = CaseRun::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let case: Result<Case, String> = serde_json::from_str(line).map_err(|e| e.to_string());
        let parsed = case.and_then(Case::question);
        let (name, q, expect) = match parsed {
            Ok(x) => x,
            Err(e) => {
                run.errors += 1;
                run.lines.push(json!({"line": line_no, "error": e}));
                continue;
            }
        };
        let name = name.unwrap_or_else(|| format!("line {line_no}"));
        match answer(engine, &q) {
            Ok(a) => {
                let mut obj = a.json();
                obj["name"] = json!(name);
                if let Some(want) = expect {
                    run.any_expect = true;
                    let ok = want == a.allowed;
                    obj["expect"] = json!(if want { "allow" } else { "deny" });
                    obj["pass"] = json!(ok);
                    if ok {
                        run.passed += 1;
                    } else {
                        run.failed += 1;
                    }
                }
                run.lines.push(obj);
            }
            Err(e) => {
                run.errors += 1;
                run.lines
                    .push(json!({"name": name, "line": line_no, "error": e.to_string()}));
            }
        }
    }
    run
}
