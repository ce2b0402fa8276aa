//! The admin server: a unix socket speaking JSON lines. It reads the controller's published
//! snapshot and status, and hands endpoint commands to the controller as source events; it
//! writes no state itself.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bpf_redirect::ProxyRouting;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::api::{
    BpfPolicy, BpfPolicyEntry, EndpointAdded, EndpointRemoved, EndpointRow, HostEndpointStatus,
    IdentityRow, LastApply, LoadedPolicy, NoProxy, PolicyDocuments, ProxyPort, Reply, Request,
    Routing, Status, MAX_REQUEST_BYTES,
};
use crate::config::Config;
use crate::controller::Published;
use crate::sources::admin::AdminSource;
use crate::state::{NodeState, HOST_ENDPOINT_ID};

/// What the admin server reads and whom it asks.
pub struct AdminContext {
    pub published: Published,
    pub endpoints: AdminSource,
    pub cfg: Arc<Config>,
    pub started: SystemTime,
    pub routing: ProxyRouting,
}

/// Binds the admin socket at `path`. A socket left by a killed run is replaced; a live one
/// only when `replace` (a handover: the running ward is about to stop).
pub fn bind(path: &Path, replace: bool) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() && (replace || UnixStream::connect(path).is_err()) {
        std::fs::remove_file(path)?;
    }
    tokio::net::UnixListener::bind(path)
}

pub async fn serve(
    listener: tokio::net::UnixListener,
    ctx: Arc<AdminContext>,
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
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(r);
            let mut line = String::new();
            loop {
                // A line longer than the limit ends the connection without being buffered.
                line.clear();
                let mut limited = (&mut reader).take(MAX_REQUEST_BYTES as u64 + 1);
                match limited.read_line(&mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.len() > MAX_REQUEST_BYTES && !line.ends_with('\n') => break,
                    Ok(_) => {}
                }
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let ctx = ctx.clone();
                        tokio::task::spawn_blocking(move || handle(&ctx, req))
                            .await
                            .unwrap_or_else(|e| Err(format!("internal error: {e}")))
                    }
                    Err(e) => Err(format!("bad request: {e}")),
                };
                let reply = match resp {
                    Ok(data) => Reply {
                        ok: true,
                        data: Some(data),
                        error: None,
                    },
                    Err(e) => Reply {
                        ok: false,
                        data: None,
                        error: Some(e),
                    },
                };
                let mut text = serde_json::to_string(&reply).unwrap_or_default();
                text.push('\n');
                if w.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn json(v: impl serde::Serialize) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| format!("internal error: {e}"))
}

fn handle(ctx: &AdminContext, req: Request) -> Result<serde_json::Value, String> {
    let view = ctx.published.state.load_full();
    match req {
        Request::Status => json(status(ctx, &view)),
        Request::EndpointList => json(endpoint_list(&view)),
        Request::IdentityList => json(
            view.identities
                .iter()
                .map(|p| IdentityRow {
                    id: p.identity.0,
                    labels: p.labels.iter().map(|l| l.to_string()).collect(),
                })
                .collect::<Vec<_>>(),
        ),
        Request::PolicyGet => json(policy_get(&view, &ctx.published.documents.load())),
        Request::BpfPolicyGet { endpoint } => json(bpf_policy_get(&view, &endpoint)?),
        Request::FqdnCacheList => json(
            ctx.published
                .fqdn
                .load()
                .iter()
                .map(|r| super::api::FqdnRow {
                    endpoint: view
                        .endpoints
                        .iter()
                        .find(|e| e.id == r.endpoint)
                        .map_or_else(
                            || format!("#{}", r.endpoint),
                            |e| format!("{}/{}", e.config.namespace, e.config.name),
                        ),
                    name: r.name.clone(),
                    ip: r.ip,
                    ttl: r.ttl,
                    expires_in: r
                        .expires
                        .duration_since(std::time::SystemTime::now())
                        .map_or(0, |d| d.as_secs()),
                    zombie: r.zombie,
                    identity: view.resolve(std::net::IpAddr::V4(r.ip)).peer.identity.0,
                    seen: humantime::format_rfc3339_seconds(r.seen).to_string(),
                })
                .collect::<Vec<_>>(),
        ),
        Request::EndpointAdd { endpoint } => json(EndpointAdded {
            id: ctx.endpoints.add_endpoint(endpoint)?,
        }),
        Request::EndpointRemove { name } => {
            ctx.endpoints.remove_endpoint(name.clone())?;
            json(EndpointRemoved { removed: name })
        }
        Request::CniAdd { attachment } => json(crate::admin::api::CniAdded {
            endpoint: ctx.endpoints.cni_add(attachment)?,
        }),
        Request::CniDel {
            container_id,
            namespace,
            name,
        } => {
            ctx.endpoints.cni_del(container_id, namespace, name)?;
            json(serde_json::Value::Null)
        }
    }
}

fn enabled(b: bool) -> String {
    if b { "Enabled" } else { "Disabled" }.into()
}

fn status(ctx: &AdminContext, view: &NodeState) -> Status {
    let cfg = &ctx.cfg;
    let st = ctx.published.status.load();
    Status {
        node: cfg.node.name.clone(),
        started: humantime::format_rfc3339_micros(ctx.started).to_string(),
        uptime_seconds: ctx.started.elapsed().unwrap_or_default().as_secs(),
        policy_revision: view.generation,
        policies: view.policy_count(),
        policy_files: view
            .engine
            .set
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
        last_policy_error: st.last_error.clone(),
        endpoints: view.endpoints.len(),
        host_endpoint: HostEndpointStatus {
            ingress_enforcement: enabled(view.host_endpoint.ingress_enforced),
            egress_enforcement: enabled(view.host_endpoint.egress_enforced),
            audit: view.host_endpoint.audit,
        },
        identities: view.identities.len(),
        enforcement: cfg.enforcement,
        audit: cfg.audit,
        listeners: cfg.listeners.clone(),
        unproxied_l7: view.unproxied.iter().map(|p| p.as_str().into()).collect(),
        pin_root: cfg.pin_root.clone(),
        links: st
            .links
            .iter()
            .map(|(i, h)| format!("{i}/{}", h.pin_suffix()))
            .collect(),
        routing: Routing {
            table: ctx.routing.table,
            priority: ctx.routing.priority,
            installed: ctx.routing.is_installed().unwrap_or(false),
        },
        last_apply: st.last_apply.map(|a| LastApply {
            time: humantime::format_rfc3339_micros(a.at).to_string(),
            written: a.stats.written(),
            deleted: a.stats.deleted(),
            policy_entries: a.stats.policy.written + a.stats.policy.unchanged,
            took_ms: a.took.as_secs_f64() * 1000.0,
            recomputed: a.recompute.whole,
            patched: a.recompute.patched,
            change_to_maps_ms: a.change_to_maps.map(|d| d.as_secs_f64() * 1000.0),
        }),
        flow_log: cfg.flow_log.clone(),
        metrics: cfg.metrics,
    }
}

fn endpoint_list(view: &NodeState) -> Vec<EndpointRow> {
    let h = &view.host_endpoint;
    let mut host_labels = vec!["reserved:host".to_string()];
    host_labels.extend(
        view.settings
            .node_labels
            .iter()
            .map(|(k, v)| format!("k8s:{k}={v}")),
    );
    let host = EndpointRow {
        id: HOST_ENDPOINT_ID,
        name: "host".into(),
        namespace: None,
        interface: None,
        ingress_enforcement: enabled(h.ingress_enforced),
        egress_enforcement: enabled(h.egress_enforced),
        identity: l7_rules::identity::Reserved::Host.identity().0,
        labels: host_labels,
        ipv4: view.host_ips().iter().map(|i| i.to_string()).collect(),
        audit: h.audit,
        status: "ready".into(),
    };
    std::iter::once(host)
        .chain(view.endpoints.iter().map(|e| EndpointRow {
            id: e.id,
            name: e.config.name.clone(),
            namespace: Some(e.config.namespace.clone()),
            interface: Some(e.config.interface.clone()),
            ingress_enforcement: enabled(e.ingress_enforced),
            egress_enforcement: enabled(e.egress_enforced),
            identity: e.peer.identity.0,
            labels: e.peer.labels.iter().map(|l| l.to_string()).collect(),
            ipv4: e.config.ips.iter().map(|i| i.to_string()).collect(),
            audit: view.settings.audit || e.config.audit,
            status: "ready".into(),
        }))
        .collect()
}

fn policy_get(view: &NodeState, documents: &[serde_json::Value]) -> PolicyDocuments {
    let policies = view
        .engine
        .set
        .policies
        .iter()
        .map(|p| LoadedPolicy {
            kind: p.meta.kind.as_str().into(),
            namespace: p.meta.namespace.clone(),
            name: p.meta.name.clone(),
            file: p.meta.file.clone(),
            document: p.meta.document,
            spec: p.spec_path.clone(),
            description: p.description.clone(),
        })
        .collect();
    PolicyDocuments {
        revision: view.generation,
        policies,
        documents: documents.to_vec(),
    }
}

pub(crate) fn port_proto(proto: u8, port: u16, plen: u8) -> String {
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

fn bpf_policy_get(view: &NodeState, name: &str) -> Result<BpfPolicy, String> {
    let id = if name == "host" || name == HOST_ENDPOINT_ID.to_string() {
        HOST_ENDPOINT_ID
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
    let mut entries: Vec<BpfPolicyEntry> = view
        .desired
        .policy
        .iter()
        .filter(|p| p.endpoint_id == id)
        .map(|p| BpfPolicyEntry {
            policy: if p.deny { "Deny" } else { "Allow" }.into(),
            direction: if p.egress { "Egress" } else { "Ingress" }.into(),
            identity: p.identity,
            labels: if p.identity == 0 {
                vec!["ANY".to_string()]
            } else {
                view.identities
                    .get(l7_rules::identity::Identity(p.identity))
                    .map(|peer| peer.labels.iter().map(|l| l.to_string()).collect())
                    .unwrap_or_default()
            },
            port_proto: port_proto(p.proto, p.port, p.port_prefix_len),
            proxy_port: match p.proxy_port {
                0 => ProxyPort::None(NoProxy::None),
                port => ProxyPort::Port(port),
            },
            precedence: p.precedence,
        })
        .collect();
    entries.sort_by(|a, b| (&a.direction, a.identity).cmp(&(&b.direction, b.identity)));
    let endpoint = match view.endpoints.iter().find(|e| e.id == id) {
        Some(e) => e.config.name.clone(),
        None => "host".into(),
    };
    Ok(BpfPolicy {
        endpoint,
        id,
        entries,
    })
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
}
