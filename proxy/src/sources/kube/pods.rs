//! Pods, watched cluster-wide.
//! - This node's (`spec.nodeName` = `node.name`) are its endpoints (labels, namespace, its
//!   IPv4 address, named container ports), sent to the controller as they change. The
//!   interface is the one `ward-cni` ADD reported (the controller knows it), else the
//!   host-side interface that routes to the pod's address: the longest route in this
//!   namespace's `/proc/net/route` without a gateway (another CNI created the veth, before
//!   Ward ran). A changed pod is changed in place (same endpoint id, hooks kept); a pod gone
//!   or finished is removed.
//! - Other nodes' pods are addresses with their labels' identities in the ipcache, so traffic
//!   from them is judged by who they are (identities are computed from labels, so every node
//!   gives a pod the same one without an allocator).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tracing::{info, warn};

use super::SOURCE;
use crate::config::EndpointConfig;
use crate::sources::SourceEvent;
use crate::state::RemotePod;

/// The interface the node routes `ip` through, directly (no gateway): the pod's host-side veth.
/// `routes` is the text of `/proc/net/route`.
pub fn interface_for(routes: &str, ip: Ipv4Addr) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let target = u32::from(ip);
    let mut best: Option<(u32, String)> = None;
    for line in routes.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(flags), Some(mask)) = (hex(f[1]), hex(f[3]), hex(f[7])) else {
            continue;
        };
        // The kernel prints the network-order value as a host-order number.
        let (dest, mask) = (
            u32::from_be_bytes(dest.to_ne_bytes()),
            u32::from_be_bytes(mask.to_ne_bytes()),
        );
        if flags & RTF_UP == 0 || flags & RTF_GATEWAY != 0 || target & mask != dest {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(m, _)| mask.count_ones() > m.count_ones())
        {
            best = Some((mask, f[0].to_string()));
        }
    }
    best.map(|(_, i)| i)
}

/// The endpoint a pod object stands for on this node, or why it is none.
fn endpoint(obj: &DynamicObject) -> Result<EndpointConfig, String> {
    let data = &obj.data;
    let phase = data["status"]["phase"].as_str().unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(format!("it is {phase}"));
    }
    if data["spec"]["hostNetwork"].as_bool() == Some(true) {
        return Err("it uses the host's network".into());
    }
    // Without an address yet (ward-cni ADD comes before the kubelet reports one), or an
    // interface routing to it (ward-cni reports it), the controller waits for them.
    let ip: Option<Ipv4Addr> = match data["status"]["podIP"].as_str() {
        Some(a) => Some(
            a.parse()
                .map_err(|_| "its address is not IPv4".to_string())?,
        ),
        None => None,
    };
    let interface = match ip {
        Some(ip) => {
            let routes = std::fs::read_to_string("/proc/net/route")
                .map_err(|e| format!("reading /proc/net/route: {e}"))?;
            interface_for(&routes, ip).unwrap_or_default()
        }
        None => String::new(),
    };
    let mut named_ports = BTreeMap::new();
    for c in data["spec"]["containers"].as_array().into_iter().flatten() {
        for p in c["ports"].as_array().into_iter().flatten() {
            if let (Some(name), Some(port)) = (p["name"].as_str(), p["containerPort"].as_u64()) {
                named_ports.insert(name.to_string(), port as u16);
            }
        }
    }
    Ok(EndpointConfig {
        name: obj.metadata.name.clone().unwrap_or_default(),
        namespace: obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        labels: obj.metadata.labels.clone().unwrap_or_default(),
        ips: ip.into_iter().collect(),
        interface,
        named_ports,
        audit: false,
    })
}

/// Asks the controller, without blocking the watcher, and logs a refusal.
fn ask<T: Send + 'static>(
    events: &mpsc::Sender<SourceEvent>,
    make: impl FnOnce(mpsc::SyncSender<Result<T, String>>) -> SourceEvent,
    what: String,
) {
    let (tx, rx) = mpsc::sync_channel(1);
    if events.send(make(tx)).is_err() {
        return;
    }
    std::thread::spawn(move || match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!("{SOURCE}: {what}: {e}"),
        Err(_) => warn!("{SOURCE}: {what}: no answer from the controller"),
    });
}

/// Another node's pod, by address, or why it is none.
fn remote(obj: &DynamicObject) -> Option<(Ipv4Addr, RemotePod)> {
    let data = &obj.data;
    let phase = data["status"]["phase"].as_str().unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed")
        || data["spec"]["hostNetwork"].as_bool() == Some(true)
    {
        return None;
    }
    let ip: Ipv4Addr = data["status"]["podIP"].as_str()?.parse().ok()?;
    Some((
        ip,
        RemotePod {
            namespace: obj
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: obj.metadata.name.clone().unwrap_or_default(),
            labels: obj.metadata.labels.clone().unwrap_or_default(),
        },
    ))
}

/// Watches the pods until the task is dropped.
pub async fn watch(
    api: Api<DynamicObject>,
    node: String,
    had: Vec<EndpointConfig>,
    had_remote: Vec<(Ipv4Addr, RemotePod)>,
    mut synced: super::Synced,
    events: mpsc::Sender<SourceEvent>,
) {
    // Pod (namespace, name) → the endpoint sent for it (at first, the restored ones).
    let mut sent: BTreeMap<(String, String), EndpointConfig> = had
        .into_iter()
        .map(|e| ((e.namespace.clone(), e.name.clone()), e))
        .collect();
    let mut relist: Option<BTreeMap<(String, String), EndpointConfig>> = None;
    // Other nodes' pods, by address (at first, the restored ones).
    let mut remote_sent: BTreeMap<Ipv4Addr, RemotePod> = had_remote.into_iter().collect();
    let mut remote_relist: Option<BTreeMap<Ipv4Addr, RemotePod>> = None;
    // Their addresses by pod (namespace, name): one pod's event costs that pod alone.
    let mut remote_ip: BTreeMap<(String, String), Ipv4Addr> = remote_sent
        .iter()
        .map(|(ip, p)| ((p.namespace.clone(), p.name.clone()), *ip))
        .collect();
    let config = watcher::Config::default();
    let on_node = |o: &DynamicObject| o.data["spec"]["nodeName"].as_str() == Some(node.as_str());
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let key = |o: &DynamicObject| {
        (
            o.metadata.namespace.clone().unwrap_or_default(),
            o.metadata.name.clone().unwrap_or_default(),
        )
    };
    let local = |o: &DynamicObject| match endpoint(o) {
        Ok(e) => Some(e),
        Err(why) => {
            info!(pod = ?o.metadata.name, "{SOURCE}: not an endpoint (yet): {why}");
            None
        }
    };
    while let Some(item) = stream.next().await {
        let mut just_listed = false;
        let mut now = match item {
            Ok(Event::Init) => {
                relist = Some(BTreeMap::new());
                remote_relist = Some(BTreeMap::new());
                continue;
            }
            Ok(Event::InitApply(o)) => {
                if !on_node(&o) {
                    if let Some((ip, pod)) = remote(&o) {
                        remote_relist
                            .get_or_insert_with(BTreeMap::new)
                            .insert(ip, pod);
                    }
                } else if let Some(e) = local(&o) {
                    relist.get_or_insert_with(BTreeMap::new).insert(key(&o), e);
                }
                continue;
            }
            Ok(Event::InitDone) => {
                just_listed = true;
                let now = remote_relist.take().unwrap_or_default();
                send_remote(&events, &remote_sent, &now);
                remote_ip = now
                    .iter()
                    .map(|(ip, p)| ((p.namespace.clone(), p.name.clone()), *ip))
                    .collect();
                remote_sent = now;
                relist.take().unwrap_or_default()
            }
            Ok(event @ (Event::Apply(_) | Event::Delete(_))) => {
                let (Event::Apply(o) | Event::Delete(o)) = &event else {
                    continue;
                };
                let applied = matches!(event, Event::Apply(_));
                let k = key(o);
                let mut now = sent.clone();
                now.remove(&k);
                if applied && on_node(o) {
                    if let Some(e) = local(o) {
                        now.insert(k.clone(), e);
                    }
                }
                let moved = if applied && !on_node(o) {
                    remote(o)
                } else {
                    None
                };
                remote_changed(&events, &mut remote_sent, &mut remote_ip, k, moved);
                now
            }
            Err(e) => {
                warn!(error = %e, "{SOURCE}: watching this node's pods; endpoints stay as they are");
                continue;
            }
        };
        for (k, e) in &sent {
            if !now.contains_key(k) {
                let (namespace, name) = (e.namespace.clone(), e.name.clone());
                ask(
                    &events,
                    |reply| SourceEvent::PodGone {
                        namespace,
                        name,
                        reply,
                    },
                    format!("removing pod {}/{}", k.0, k.1),
                );
            }
        }
        for (k, e) in &now {
            if sent.get(k) != Some(e) {
                let endpoint = e.clone();
                ask(
                    &events,
                    |reply| SourceEvent::Pod { endpoint, reply },
                    format!("pod {}/{}", k.0, k.1),
                );
            }
        }
        sent = std::mem::take(&mut now);
        if just_listed {
            synced.listed(&events);
        }
    }
}

/// One other-node pod `key` changed: it now stands at `now` (or nowhere). Sends the change.
fn remote_changed(
    events: &mpsc::Sender<SourceEvent>,
    sent: &mut BTreeMap<Ipv4Addr, RemotePod>,
    by_pod: &mut BTreeMap<(String, String), Ipv4Addr>,
    key: (String, String),
    now: Option<(Ipv4Addr, RemotePod)>,
) {
    let mut changes = Vec::new();
    if let Some(old) = by_pod.remove(&key) {
        if now.as_ref().map(|(ip, _)| *ip) != Some(old) && sent.remove(&old).is_some() {
            changes.push((old, None));
        }
    }
    if let Some((ip, pod)) = now {
        if sent.get(&ip) != Some(&pod) {
            sent.insert(ip, pod.clone());
            changes.push((ip, Some(pod)));
        }
        by_pod.insert(key, ip);
    }
    if !changes.is_empty() {
        let _ = events.send(SourceEvent::RemotePods(changes));
    }
}

/// Sends what changed between two views of other nodes' pods.
fn send_remote(
    events: &mpsc::Sender<SourceEvent>,
    before: &BTreeMap<Ipv4Addr, RemotePod>,
    after: &BTreeMap<Ipv4Addr, RemotePod>,
) {
    let mut changes = Vec::new();
    for (ip, p) in after {
        if before.get(ip) != Some(p) {
            changes.push((*ip, Some(p.clone())));
        }
    }
    for ip in before.keys().filter(|ip| !after.contains_key(*ip)) {
        changes.push((*ip, None));
    }
    if !changes.is_empty() {
        let _ = events.send(SourceEvent::RemotePods(changes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_interface_is_the_longest_direct_route() {
        // 10.200.1.0/24 dev a, 10.200.1.2/32 dev b, default via 10.0.0.1 dev eth0, 10.200.2.0/24 dev c.
        let routes =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            a\t0001C80A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            b\t0201C80A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
            c\t0002C80A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            interface_for(routes, Ipv4Addr::new(10, 200, 1, 2)).as_deref(),
            Some("b")
        );
        assert_eq!(
            interface_for(routes, Ipv4Addr::new(10, 200, 1, 3)).as_deref(),
            Some("a")
        );
        assert_eq!(
            interface_for(routes, Ipv4Addr::new(10, 200, 2, 9)).as_deref(),
            Some("c")
        );
        // Only through a gateway: not a local pod.
        assert_eq!(interface_for(routes, Ipv4Addr::new(8, 8, 8, 8)), None);
    }
}
