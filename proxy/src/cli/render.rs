//! The CLI's tables, `cilium`-like, from the admin API's typed answers.

use crate::admin::api::{BpfPolicy, EndpointRow, IdentityRow, Status};

/// A simple left-aligned table; cells may hold several lines.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            for l in c.lines() {
                width[i] = width[i].max(l.len());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<w$}   ", c, w = width[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        let split: Vec<Vec<&str>> = r.iter().map(|c| c.lines().collect()).collect();
        let height = split.iter().map(|c| c.len().max(1)).max().unwrap_or(1);
        for h in 0..height {
            line(
                split
                    .iter()
                    .map(|c| c.get(h).copied().unwrap_or(""))
                    .collect(),
                &mut out,
            );
        }
    }
    out
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub fn endpoints(rows: &[EndpointRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.ingress_enforcement.clone(),
                e.egress_enforcement.clone(),
                e.identity.to_string(),
                e.labels.join("\n"),
                e.ipv4.join("\n"),
                e.status.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ENDPOINT",
            "POLICY (ingress) ENFORCEMENT",
            "POLICY (egress) ENFORCEMENT",
            "IDENTITY",
            "LABELS (source:key[=value])",
            "IPv4",
            "STATUS",
        ],
        &rows,
    )
}

pub fn identities(rows: &[IdentityRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|e| vec![e.id.to_string(), e.labels.join("\n")])
        .collect();
    table(&["ID", "LABELS"], &rows)
}

/// `ward fqdn cache list`, as `cilium fqdn cache list` shows it.
pub fn fqdn_cache(rows: &[crate::admin::api::FqdnRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.endpoint.clone(),
                r.name.clone(),
                r.ip.to_string(),
                r.ttl.to_string(),
                if r.zombie {
                    "zombie (connections live)".into()
                } else {
                    format!("{}s", r.expires_in)
                },
                r.identity.to_string(),
                r.seen.clone(),
            ]
        })
        .collect();
    table(
        &[
            "Endpoint",
            "FQDN",
            "IP",
            "TTL",
            "ExpirationTime",
            "Identity",
            "Source (seen)",
        ],
        &rows,
    )
}

pub fn bpf_policy(v: &BpfPolicy) -> String {
    let rows: Vec<Vec<String>> = v
        .entries
        .iter()
        .map(|e| {
            vec![
                e.policy.clone(),
                e.direction.clone(),
                e.identity.to_string(),
                e.labels.join("\n"),
                e.port_proto.clone(),
                e.proxy_port.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "POLICY",
            "DIRECTION",
            "IDENTITY",
            "LABELS (source:key[=value])",
            "PORT/PROTO",
            "PROXY PORT",
        ],
        &rows,
    )
}

pub fn status(v: &Status) -> String {
    let mut out = String::new();
    let kv = |k: &str, val: String, out: &mut String| out.push_str(&format!("{k:<18}{val}\n"));
    kv("Node:", or_dash(v.node.as_ref()), &mut out);
    kv("Started:", v.started.clone(), &mut out);
    kv("Policy revision:", v.policy_revision.to_string(), &mut out);
    kv("Policies:", v.policies.to_string(), &mut out);
    kv("Endpoints:", v.endpoints.to_string(), &mut out);
    kv("Identities:", v.identities.to_string(), &mut out);
    kv(
        "Enforcement:",
        serde_json::to_value(v.enforcement)
            .ok()
            .and_then(|e| e.as_str().map(str::to_string))
            .unwrap_or_default(),
        &mut out,
    );
    let host = &v.host_endpoint;
    kv(
        "Host firewall:",
        format!(
            "ingress {}, egress {}{}",
            host.ingress_enforcement,
            host.egress_enforcement,
            if host.audit {
                " (audit: drops logged, not enforced)"
            } else {
                ""
            }
        ),
        &mut out,
    );
    kv("Proxy:", format!("http {}", v.listeners.http), &mut out);
    kv(
        "Routing:",
        format!(
            "fwmark rule pref {} table {} installed={}",
            v.routing.priority, v.routing.table, v.routing.installed
        ),
        &mut out,
    );
    kv("Datapath links:", v.links.join(", "), &mut out);
    if let Some(e) = &v.last_policy_error {
        kv("Last policy error:", e.clone(), &mut out);
    }
    if let Some(a) = &v.last_apply {
        kv(
            "Last apply:",
            format!(
                "{} (written {}, deleted {}, {:.1} ms; {} endpoint(s) recomputed, {} patched{})",
                a.time,
                a.written,
                a.deleted,
                a.took_ms,
                a.recomputed,
                a.patched,
                a.change_to_maps_ms
                    .map(|ms| format!("; {ms:.0} ms from the file change"))
                    .unwrap_or_default()
            ),
            &mut out,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_split_multiline_cells() {
        let t = table(
            &["ID", "LABELS"],
            &[
                vec!["1".into(), "reserved:host".into()],
                vec!["42250".into(), "k8s:a=b\nk8s:c=d".into()],
            ],
        );
        assert_eq!(
            t,
            "ID      LABELS\n1       reserved:host\n42250   k8s:a=b\n        k8s:c=d\n"
        );
    }
}
