//! L7 rules: HTTP (method, path, host, headers), gRPC, Kafka and DNS, and the ports they
//! may sit on.

use super::peers::*;
use crate::diag::DocContext;
use crate::l7::dns::NamePattern;
use crate::l7::http::{HeaderMatch, HeaderRequirement, HttpRule, MismatchAction, Pattern};
use crate::l7::kafka::{ApiKeySet, KafkaRule};
use crate::model::*;
use crate::raw;
use std::sync::Arc;

/// Longest Kafka topic name (Cilium's validation).
pub const MAX_KAFKA_TOPIC_LEN: usize = 255;

pub(super) fn check_l7_ports(
    l7: &L7,
    ports: &[PortMatch],
    direction: Direction,
    host_policy: bool,
    path: &str,
    cx: &mut DocContext<'_>,
) {
    let parser = l7.parser();
    if parser == L7Parser::Dns && direction == Direction::Ingress {
        cx.error(
            &format!("{path}.rules.dns"),
            "DNS rules are only valid on egress",
        );
    }
    if host_policy && !(parser == L7Parser::Dns && direction == Direction::Egress) {
        cx.error(
            &format!("{path}.rules"),
            "host policies (nodeSelector) only support DNS L7 rules on egress",
        );
    }
    for (k, pm) in ports.iter().enumerate() {
        let _ = k;
        match &pm.port {
            Port::Range(0, u16::MAX) => cx.error(
                &format!("{path}.ports"),
                "L7 rules need an explicit port; port 0 (all ports) is rejected",
            ),
            Port::Range(lo, hi) if lo != hi && parser == L7Parser::Dns => cx.error(
                &format!("{path}.ports"),
                "DNS rules cannot use port ranges (`endPort`)",
            ),
            _ => {}
        }
    }
}

pub(super) fn l7_rules(
    r: raw::L7Rules,
    path: &str,
    meta: &Arc<PolicyMeta>,
    rel: &str,
    cx: &mut DocContext<'_>,
) -> Option<L7> {
    if r.l7proto.is_some() || r.l7.is_some() {
        cx.error(
            &format!("{path}.l7proto"),
            "generic `l7proto`/`l7` rules (proxylib parsers) are not supported by Ward",
        );
    }
    let kinds: Vec<&str> = [
        ("http", r.http.is_some() || r.grpc.is_some()),
        ("kafka", r.kafka.is_some()),
        ("dns", r.dns.is_some()),
    ]
    .into_iter()
    .filter(|(_, s)| *s)
    .map(|(n, _)| n)
    .collect();
    if kinds.len() > 1 {
        cx.error(
            path,
            format!(
                "multiple L7 protocol rule types specified in single rule ({}); use one per toPorts element",
                kinds.join(", ")
            ),
        );
        return None;
    }
    let origin = |sub: String| RuleRef {
        policy: meta.clone(),
        path: sub,
    };
    if r.http.is_some() || r.grpc.is_some() {
        let mut rules = Vec::new();
        let http = r.http.unwrap_or_default();
        let grpc = r.grpc.unwrap_or_default();
        if http.is_empty() && grpc.is_empty() {
            // `http: []` is "no L7 rules": plain L4 allow, no redirect (§1.4).
            return None;
        }
        for (i, h) in http.into_iter().enumerate() {
            if let Some(rule) = http_rule(
                h,
                &format!("{path}.http[{i}]"),
                origin(format!("{rel}.rules.http[{i}]")),
                cx,
            ) {
                rules.push(Arc::new(rule));
            }
        }
        for (i, g) in grpc.into_iter().enumerate() {
            if let Some(rule) = grpc_rule(
                g,
                &format!("{path}.grpc[{i}]"),
                origin(format!("{rel}.rules.grpc[{i}]")),
                cx,
            ) {
                rules.push(Arc::new(rule));
            }
        }
        return Some(L7::Http(rules));
    }
    if let Some(kafka) = r.kafka {
        if kafka.is_empty() {
            return None;
        }
        let mut rules = Vec::new();
        for (i, k) in kafka.into_iter().enumerate() {
            if let Some(rule) = kafka_rule(
                k,
                &format!("{path}.kafka[{i}]"),
                origin(format!("{rel}.rules.kafka[{i}]")),
                cx,
            ) {
                rules.push(Arc::new(rule));
            }
        }
        return Some(L7::Kafka(rules));
    }
    if let Some(dns) = r.dns {
        if dns.is_empty() {
            return None;
        }
        let mut patterns = Vec::new();
        for (i, d) in dns.iter().enumerate() {
            let field = format!("{path}.dns[{i}]");
            let o = origin(format!("{rel}.rules.dns[{i}]"));
            match (&d.match_name, &d.match_pattern) {
                (Some(n), None) => match NamePattern::name(n) {
                    Ok(p) => patterns.push((p, o)),
                    Err(e) => cx.error(&format!("{field}.matchName"), e),
                },
                (None, Some(pat)) => match NamePattern::pattern(pat) {
                    Ok(p) => {
                        let base_listed = pat.strip_prefix("*.").is_some_and(|base| {
                            dns.iter().any(|o| {
                                o.match_name.as_deref().map(|n| n.trim_end_matches('.'))
                                    == Some(base.trim_end_matches('.'))
                            })
                        });
                        if !base_listed {
                            warn_star_dot(pat, p.written(), &format!("{field}.matchPattern"), cx);
                        }
                        patterns.push((p, o))
                    }
                    Err(e) => cx.error(&format!("{field}.matchPattern"), e),
                },
                (Some(_), Some(_)) => cx.error(
                    &field,
                    "`matchName` and `matchPattern` are mutually exclusive; write two entries",
                ),
                (None, None) => {
                    cx.error(&field, "one of `matchName` or `matchPattern` is required")
                }
            }
        }
        return Some(L7::Dns(patterns));
    }
    None
}

pub(super) fn compile_pattern(
    source: &str,
    field: &str,
    what: &str,
    cx: &mut DocContext<'_>,
) -> Option<Pattern> {
    match Pattern::compile(source) {
        Ok(p) => Some(p),
        Err(e) => {
            cx.error(field, format!("invalid {what} regex {source:?}: {e}"));
            None
        }
    }
}

pub(super) fn http_rule(
    h: raw::HttpRule,
    path: &str,
    origin: RuleRef,
    cx: &mut DocContext<'_>,
) -> Option<HttpRule> {
    let errors_before = cx.diags.len();
    let method = h
        .method
        .as_deref()
        .map(|m| compile_pattern(m, &format!("{path}.method"), "method", cx));
    let url = h
        .path
        .as_deref()
        .map(|p| compile_pattern(p, &format!("{path}.path"), "path", cx));
    let host = h
        .host
        .as_deref()
        .map(|p| compile_pattern(p, &format!("{path}.host"), "host", cx));
    let mut headers = Vec::new();
    for (i, text) in h.headers.iter().flatten().enumerate() {
        let field = format!("{path}.headers[{i}]");
        // Envoy/Cilium: split on the first space; the key loses a trailing ':'.
        let (key, value) = match text.split_once(' ') {
            Some((k, v)) => (k.trim_end_matches(':'), Some(v)),
            None => (text.as_str(), None),
        };
        if value.is_none() && key.contains(':') {
            cx.warn(
                &field,
                format!(
                    "header {text:?} has no space after ':', so Cilium reads it as a presence check for a header literally named {key:?}, which no request carries; write {:?}",
                    text.replacen(':', ": ", 1)
                ),
            );
        }
        if key.is_empty() {
            cx.error(&field, "empty header name");
            continue;
        }
        headers.push(HeaderRequirement {
            name: key.to_ascii_lowercase().into(),
            value: value.map(Into::into),
        });
    }
    let mut header_matches = Vec::new();
    for (i, hm) in h.header_matches.into_iter().flatten().enumerate() {
        let field = format!("{path}.headerMatches[{i}]");
        let Some(name) = hm.name.filter(|n| !n.is_empty()) else {
            cx.error(&format!("{field}.name"), "`name` is required");
            continue;
        };
        let mismatch = match hm.mismatch.as_deref().unwrap_or("") {
            "" => MismatchAction::Fail,
            "LOG" => MismatchAction::Log,
            "ADD" => MismatchAction::Add,
            "DELETE" => MismatchAction::Delete,
            "REPLACE" => MismatchAction::Replace,
            other => {
                cx.error(
                    &format!("{field}.mismatch"),
                    format!("unknown mismatch action {other:?}; use LOG, ADD, DELETE or REPLACE (or omit it)"),
                );
                continue;
            }
        };
        // Ward reads no Kubernetes secrets: a secret without an inline value can never match.
        let unreadable_secret = hm.secret.is_some() && hm.value.is_none();
        if unreadable_secret {
            cx.warn(
                &format!("{field}.secret"),
                "Ward cannot read Kubernetes secrets: without an inline `value` this header match never succeeds and the rule denies",
            );
        }
        if matches!(mismatch, MismatchAction::Add | MismatchAction::Replace)
            && hm.value.is_none()
            && hm.secret.is_none()
        {
            cx.error(&format!("{field}.value"), "ADD and REPLACE need a `value`");
            continue;
        }
        header_matches.push(HeaderMatch {
            name: name.to_ascii_lowercase().into(),
            value: hm.value.map(Into::into),
            mismatch,
            secret: hm.secret.is_some(),
            unreadable_secret,
        });
    }
    if cx.diags[errors_before..]
        .iter()
        .any(|d| d.severity == crate::diag::Severity::Error)
    {
        return None;
    }
    let mut summary = http_summary(
        h.method.as_deref(),
        h.path.as_deref(),
        h.host.as_deref(),
        h.headers.as_deref().unwrap_or(&[]),
    );
    for hm in &header_matches {
        match (&hm.value, hm.secret) {
            (_, true) => summary.push_str(&format!(" [{}: [redacted]]", hm.name)),
            (Some(v), false) => summary.push_str(&format!(" [{}: {v}]", hm.name)),
            (None, false) => summary.push_str(&format!(" [{}]", hm.name)),
        }
    }
    Some(HttpRule {
        method: method.flatten(),
        path: url.flatten(),
        host: host.flatten(),
        headers,
        header_matches,
        origin,
        summary,
    })
}

pub(super) fn http_summary(
    method: Option<&str>,
    path: Option<&str>,
    host: Option<&str>,
    headers: &[String],
) -> String {
    let mut s = format!("{} {}", method.unwrap_or("*"), path.unwrap_or("*"));
    if let Some(h) = host {
        s.push_str(&format!(" host {h}"));
    }
    for h in headers {
        s.push_str(&format!(" [{h}]"));
    }
    s
}

pub(super) fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Ward's native gRPC form: `{service: "pkg.Svc", method: "Get"}` is `POST /pkg.Svc/Get`.
pub(super) fn grpc_rule(
    g: raw::GrpcRule,
    path: &str,
    origin: RuleRef,
    cx: &mut DocContext<'_>,
) -> Option<HttpRule> {
    if !g.service.split('.').all(is_ident) {
        cx.error(
            &format!("{path}.service"),
            format!(
                "{:?} is not a fully-qualified gRPC service name like \"pkg.Service\"",
                g.service
            ),
        );
        return None;
    }
    if let Some(m) = &g.method {
        if !is_ident(m) {
            cx.error(
                &format!("{path}.method"),
                format!("{m:?} is not a gRPC method name"),
            );
            return None;
        }
    }
    let service_re = regex::escape(&g.service);
    let path_re = match &g.method {
        Some(m) => format!("/{service_re}/{m}"),
        None => format!("/{service_re}/[^/?]+"),
    };
    let summary = format!("gRPC {}/{}", g.service, g.method.as_deref().unwrap_or("*"));
    Some(HttpRule {
        method: Some(Pattern::compile("POST").ok()?),
        path: Some(Pattern::compile(&path_re).ok()?),
        host: None,
        headers: vec![],
        header_matches: vec![],
        origin,
        summary,
    })
}

pub(super) fn kafka_rule(
    k: raw::KafkaRule,
    path: &str,
    origin: RuleRef,
    cx: &mut DocContext<'_>,
) -> Option<KafkaRule> {
    let mut ok = true;
    let mut api_keys = ApiKeySet::default();
    match (&k.role, &k.api_key) {
        (Some(_), Some(_)) => {
            cx.error(path, "`role` and `apiKey` are mutually exclusive");
            ok = false;
        }
        (Some(role), None) => match role.to_ascii_lowercase().as_str() {
            "produce" => api_keys = ApiKeySet::from_keys(parsers::kafka::ROLE_PRODUCE),
            "consume" => api_keys = ApiKeySet::from_keys(parsers::kafka::ROLE_CONSUME),
            other => {
                cx.error(
                    &format!("{path}.role"),
                    format!("unknown role {other:?}; use produce or consume"),
                );
                ok = false;
            }
        },
        (None, Some(key)) => match parsers::kafka::api_key_from_name(key) {
            Some(n) => api_keys.insert(n),
            None => {
                cx.error(
                    &format!("{path}.apiKey"),
                    format!("unknown Kafka API key {key:?}"),
                );
                ok = false;
            }
        },
        (None, None) => {}
    }
    let api_version = match k.api_version.map(raw::StringLike::into_string) {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => match s.parse::<i16>() {
            Ok(v) if v >= 0 => Some(v),
            _ => {
                cx.error(
                    &format!("{path}.apiVersion"),
                    format!("{s:?} is not a Kafka API version (0-32767)"),
                );
                ok = false;
                None
            }
        },
    };
    let topic = k.topic.filter(|t| !t.is_empty());
    if let Some(t) = &topic {
        if t.len() > MAX_KAFKA_TOPIC_LEN {
            cx.error(
                &format!("{path}.topic"),
                format!("topic longer than {MAX_KAFKA_TOPIC_LEN} characters"),
            );
            ok = false;
        } else if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            cx.error(
                &format!("{path}.topic"),
                format!("{t:?} is not a valid topic name (letters, digits, '.', '_', '-')"),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let summary = format!(
        "{} topic {}{}",
        k.role
            .as_deref()
            .map(|r| format!("role {r}"))
            .or(k.api_key.as_deref().map(|a| format!("apiKey {a}")))
            .unwrap_or_else(|| "any request".into()),
        topic.as_deref().unwrap_or("*"),
        k.client_id
            .as_deref()
            .map(|c| format!(" clientID {c}"))
            .unwrap_or_default()
    );
    Some(KafkaRule {
        api_keys,
        api_version,
        client_id: k.client_id.filter(|c| !c.is_empty()).map(Into::into),
        topic: topic.map(Into::into),
        origin,
        summary,
    })
}
