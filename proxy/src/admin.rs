//! The admin API: a unix socket speaking JSON lines (one request object, one response object
//! per line), and the CLI side that renders `cilium`-like tables.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::config::EndpointConfig;
use crate::daemon::Daemon;
use crate::state::NodeState;

/// Longest admin request line accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    EndpointList,
    EndpointAdd { endpoint: EndpointConfig },
    EndpointRemove { name: String },
    IdentityList,
    PolicyGet,
    BpfPolicyGet { endpoint: String },
}

pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A stale socket from a killed run.
    if path.exists() && UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    tokio::net::UnixListener::bind(path)
}

pub async fn serve(
    listener: tokio::net::UnixListener,
    daemon: Arc<Daemon>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.len() > MAX_REQUEST_BYTES {
                    break;
                }
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let d = daemon.clone();
                        tokio::task::spawn_blocking(move || handle(&d, req))
                            .await
                            .unwrap_or_else(|e| Err(format!("internal error: {e}")))
                    }
                    Err(e) => Err(format!("bad request: {e}")),
                };
                let v = match resp {
                    Ok(data) => json!({"ok": true, "data": data}),
                    Err(e) => json!({"ok": false, "error": e}),
                };
                let mut text = v.to_string();
                text.push('\n');
                if w.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn handle(d: &Daemon, req: Request) -> Result<Value, String> {
    let view = d.view.load_full();
    match req {
        Request::Status => Ok(status(d, &view)),
        Request::EndpointList => Ok(endpoint_list(&view)),
        Request::IdentityList => Ok(Value::Array(
            view.identities
                .iter()
                .map(|p| {
                    json!({
                        "id": p.identity.0,
                        "labels": p.labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )),
        Request::PolicyGet => Ok(policy_get(&view)),
        Request::BpfPolicyGet { endpoint } => bpf_policy_get(&view, &endpoint),
        Request::EndpointAdd { endpoint } => d
            .with(|c| c.add_endpoint(endpoint))
            .map(|id| json!({"id": id}))
            .map_err(|e| format!("{e:#}")),
        Request::EndpointRemove { name } => d
            .with(|c| c.remove_endpoint(&name))
            .map(|()| json!({"removed": name}))
            .map_err(|e| format!("{e:#}")),
    }
}

fn status(d: &Daemon, view: &NodeState) -> Value {
    let (cfg, last_apply, last_error, links) = d.with(|c| {
        (
            c.cfg.clone(),
            c.last_apply,
            c.last_error.clone(),
            c.attached(),
        )
    });
    let uptime = d.started.elapsed().unwrap_or_default().as_secs();
    json!({
        "node": cfg.node.name,
        "started": humantime::format_rfc3339_micros(d.started).to_string(),
        "uptime_seconds": uptime,
        "policy_revision": view.generation,
        "policies": view.policy_count(),
        "policy_files": view.engine.set.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "last_policy_error": last_error,
        "endpoints": view.endpoints.len(),
        "host_endpoint": {
            "ingress_enforcement": enabled(view.host_endpoint.ingress_enforced),
            "egress_enforcement": enabled(view.host_endpoint.egress_enforced),
            "audit": view.host_endpoint.audit,
        },
        "identities": view.identities.len(),
        "enforcement": cfg.enforcement,
        "audit": cfg.audit,
        "listeners": cfg.listeners,
        "unproxied_l7": view.unproxied.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "pin_root": cfg.pin_root,
        "links": links.iter().map(|(i, h)| format!("{i}/{}", h.pin_suffix())).collect::<Vec<_>>(),
        "routing": {"table": d.routing.table, "priority": d.routing.priority,
                    "installed": d.routing.is_installed().unwrap_or(false)},
        "last_apply": last_apply.map(|(t, s, took)| json!({
            "time": humantime::format_rfc3339_micros(t).to_string(),
            "written": s.written(), "deleted": s.deleted(),
            "policy_entries": s.policy.written + s.policy.unchanged,
            "took_ms": took.as_secs_f64() * 1000.0,
        })),
        "flow_log": cfg.flow_log,
        "metrics": cfg.metrics,
    })
}

fn enabled(b: bool) -> &'static str {
    if b {
        "Enabled"
    } else {
        "Disabled"
    }
}

fn endpoint_list(view: &NodeState) -> Value {
    let h = &view.host_endpoint;
    let mut host_labels = vec!["reserved:host".to_string()];
    host_labels.extend(
        view.settings
            .node_labels
            .iter()
            .map(|(k, v)| format!("k8s:{k}={v}")),
    );
    let host = json!({
        "id": crate::state::HOST_ENDPOINT_ID,
        "name": "host",
        "namespace": null,
        "interface": null,
        "ingress_enforcement": enabled(h.ingress_enforced),
        "egress_enforcement": enabled(h.egress_enforced),
        "identity": l7_rules::identity::Reserved::Host.identity().0,
        "labels": host_labels,
        "ipv4": view.host_ips().iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "audit": h.audit,
        "status": "ready",
    });
    Value::Array(
        std::iter::once(host)
            .chain(view.endpoints.iter().map(|e| {
                json!({
                    "id": e.id,
                    "name": e.config.name,
                    "namespace": e.config.namespace,
                    "interface": e.config.interface,
                    "ingress_enforcement": enabled(e.ingress_enforced),
                    "egress_enforcement": enabled(e.egress_enforced),
                    "identity": e.peer.identity.0,
                    "labels": e.peer.labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                    "ipv4": e.config.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                    "audit": view.settings.audit || e.config.audit,
                    "status": "ready",
                })
            }))
            .collect(),
    )
}

fn policy_get(view: &NodeState) -> Value {
    let mut documents = Vec::new();
    for f in &view.engine.set.files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            if let Ok(v) = Value::deserialize(doc) {
                if !v.is_null() {
                    documents.push(v);
                }
            }
        }
    }
    let loaded: Vec<Value> = view
        .engine
        .set
        .policies
        .iter()
        .map(|p| {
            json!({
                "kind": p.meta.kind.as_str(),
                "namespace": p.meta.namespace,
                "name": p.meta.name,
                "file": p.meta.file,
                "document": p.meta.document,
                "spec": p.spec_path,
                "description": p.description,
            })
        })
        .collect();
    json!({"revision": view.generation, "policies": loaded, "documents": documents})
}

fn port_proto(proto: u8, port: u16, plen: u8) -> String {
    let p = match proto {
        0 => return "ANY".into(),
        6 => "TCP",
        17 => "UDP",
        1 => "ICMP",
        132 => "SCTP",
        _ => "?",
    };
    match plen {
        0 => format!("ANY/{p}"),
        16 => format!("{port}/{p}"),
        n => {
            let hi = u32::from(port) + (1u32 << (16 - n)) - 1;
            format!("{port}-{hi}/{p}")
        }
    }
}

fn bpf_policy_get(view: &NodeState, name: &str) -> Result<Value, String> {
    let id = if name == "host" || name == crate::state::HOST_ENDPOINT_ID.to_string() {
        crate::state::HOST_ENDPOINT_ID
    } else {
        view.endpoint_by_name(name)
            .or_else(|| {
                name.parse::<u16>()
                    .ok()
                    .and_then(|id| view.endpoints.iter().find(|e| e.id == id))
            })
            .ok_or_else(|| format!("no endpoint {name:?}"))?
            .id
    };
    let mut rows: Vec<Value> = view
        .desired
        .policy
        .iter()
        .filter(|p| p.endpoint_id == id)
        .map(|p| {
            let labels: Vec<String> = if p.identity == 0 {
                vec!["reserved:unknown".into()]
            } else {
                view.identities
                    .get(l7_rules::identity::Identity(p.identity))
                    .map(|peer| peer.labels.iter().map(|l| l.to_string()).collect())
                    .unwrap_or_default()
            };
            json!({
                "policy": if p.deny { "Deny" } else { "Allow" },
                "direction": if p.egress { "Egress" } else { "Ingress" },
                "identity": p.identity,
                "labels": if p.identity == 0 { vec!["ANY".to_string()] } else { labels },
                "port_proto": port_proto(p.proto, p.port, p.port_prefix_len),
                "proxy_port": if p.proxy_port == 0 { Value::String("NONE".into()) } else { json!(p.proxy_port) },
                "precedence": p.precedence,
            })
        })
        .collect();
    rows.sort_by_key(|r| {
        (
            r["direction"].as_str().unwrap_or("").to_string(),
            r["identity"].as_u64(),
        )
    });
    let endpoint = match view.endpoints.iter().find(|e| e.id == id) {
        Some(e) => e.config.name.clone(),
        None => "host".into(),
    };
    Ok(json!({"endpoint": endpoint, "id": id, "entries": rows}))
}

/// Client: one request, one response.
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach `ward run` at {}: {e} (is it running? pass --admin-socket or --config)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut resp = String::new();
    r.read_line(&mut resp)?;
    let v: Value = serde_json::from_str(&resp)?;
    if v["ok"] == Value::Bool(true) {
        Ok(v["data"].clone())
    } else {
        anyhow::bail!("{}", v["error"].as_str().unwrap_or("unknown error"))
    }
}

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

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn render_endpoints(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                s(&e["id"]),
                s(&e["ingress_enforcement"]),
                s(&e["egress_enforcement"]),
                s(&e["identity"]),
                strings(&e["labels"]).join("\n"),
                strings(&e["ipv4"]).join("\n"),
                s(&e["status"]),
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

pub fn render_identities(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| vec![s(&e["id"]), strings(&e["labels"]).join("\n")])
        .collect();
    table(&["ID", "LABELS"], &rows)
}

pub fn render_bpf_policy(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                s(&e["policy"]),
                s(&e["direction"]),
                s(&e["identity"]),
                strings(&e["labels"]).join("\n"),
                s(&e["port_proto"]),
                s(&e["proxy_port"]),
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

pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let kv = |k: &str, val: String, out: &mut String| out.push_str(&format!("{k:<18}{val}\n"));
    kv("Node:", s(&v["node"]), &mut out);
    kv("Started:", s(&v["started"]), &mut out);
    kv("Policy revision:", s(&v["policy_revision"]), &mut out);
    kv("Policies:", s(&v["policies"]), &mut out);
    kv("Endpoints:", s(&v["endpoints"]), &mut out);
    kv("Identities:", s(&v["identities"]), &mut out);
    kv("Enforcement:", s(&v["enforcement"]), &mut out);
    let host = &v["host_endpoint"];
    kv(
        "Host firewall:",
        format!(
            "ingress {}, egress {}{}",
            s(&host["ingress_enforcement"]),
            s(&host["egress_enforcement"]),
            if host["audit"].as_bool() == Some(true) {
                " (audit: drops logged, not enforced)"
            } else {
                ""
            }
        ),
        &mut out,
    );
    kv(
        "Proxy:",
        format!("http {}", s(&v["listeners"]["http"])),
        &mut out,
    );
    kv(
        "Routing:",
        format!(
            "fwmark rule pref {} table {} installed={}",
            s(&v["routing"]["priority"]),
            s(&v["routing"]["table"]),
            s(&v["routing"]["installed"])
        ),
        &mut out,
    );
    kv("Datapath links:", strings(&v["links"]).join(", "), &mut out);
    if let Some(e) = v["last_policy_error"].as_str() {
        kv("Last policy error:", e.to_string(), &mut out);
    }
    if !v["last_apply"].is_null() {
        kv(
            "Last apply:",
            format!(
                "{} (written {}, deleted {}, {:.1} ms)",
                s(&v["last_apply"]["time"]),
                s(&v["last_apply"]["written"]),
                s(&v["last_apply"]["deleted"]),
                v["last_apply"]["took_ms"].as_f64().unwrap_or(0.0)
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
    fn port_proto_forms() {
        assert_eq!(port_proto(0, 0, 0), "ANY");
        assert_eq!(port_proto(6, 0, 0), "ANY/TCP");
        assert_eq!(port_proto(6, 80, 16), "80/TCP");
        assert_eq!(port_proto(6, 8080, 14), "8080-8083/TCP");
    }

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

    #[test]
    fn requests_round_trip() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"bpf-policy-get","endpoint":"deathstar-1"}"#).unwrap();
        assert!(matches!(r, Request::BpfPolicyGet { .. }));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"bogus"}"#).is_err());
    }
}
