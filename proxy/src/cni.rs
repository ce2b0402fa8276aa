//! `ward-cni`: a CNI plugin chained after the cluster's own (Cilium's "generic-veth chaining"
//! pattern). The `ward` binary runs as it when invoked under that name (the DaemonSet's init
//! container installs it as `/opt/cni/bin/ward-cni`).
//!
//! - ADD: the previous plugin's result names the pod's host-side interface and addresses;
//!   they go to the local `ward run` over its admin socket with the pod's name and namespace
//!   (`CNI_ARGS`' `K8S_POD_*`). ADD then waits until the pod is an endpoint (its labels come
//!   from the API), so a pod never starts unenforced, and prints the previous result.
//!   When Ward cannot be reached or the pod does not become an endpoint within
//!   `timeout_seconds`, ADD fails with "try again later" (code 11): the runtime retries.
//! - DEL: the sandbox goes, and so does the pod's endpoint. Idempotent; it never fails (a
//!   `ward run` that is down learns of the pod's end from the API).
//! - CHECK: the pod is an endpoint on the interface of the previous result.
//! - VERSION, STATUS: as the specification says.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::api::{CniAdded, CniAttachment, EndpointRow, Request};
use crate::cli::{call, CallError};

const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The network configuration's own keys (the rest is the runtime's).
#[derive(Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    /// `ward run`'s admin socket.
    #[serde(default = "default_socket")]
    socket: PathBuf,
    /// How long ADD waits for the pod to become an endpoint.
    #[serde(default = "default_timeout")]
    timeout_seconds: u64,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Value>,
}

fn default_socket() -> PathBuf {
    crate::config::DEFAULT_ADMIN_SOCKET.into()
}

fn default_timeout() -> u64 {
    30
}

/// A CNI error: its code (the specification's) and message.
struct CniError(u32, String);

/// Runs the plugin: the command from `CNI_COMMAND`, the configuration from stdin.
pub fn main() -> ExitCode {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let command = env("CNI_COMMAND");
    if command == "VERSION" {
        println!(
            "{}",
            json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED})
        );
        return ExitCode::SUCCESS;
    }
    let mut input = String::new();
    let conf = std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| CniError(5, format!("reading the network configuration: {e}")))
        .and_then(|_| {
            serde_json::from_str::<NetConf>(&input)
                .map_err(|e| CniError(6, format!("the network configuration: {e}")))
        });
    let version = conf
        .as_ref()
        .map(|c| c.cni_version.clone())
        .unwrap_or_else(|_| "1.0.0".into());
    let result = conf.and_then(|conf| {
        if !SUPPORTED.contains(&conf.cni_version.as_str()) {
            return Err(CniError(
                1,
                format!(
                    "cniVersion {:?} is not supported ({})",
                    conf.cni_version,
                    SUPPORTED.join(", ")
                ),
            ));
        }
        match command.as_str() {
            "ADD" => add(&conf),
            "DEL" => {
                del(&conf);
                Ok(None)
            }
            "CHECK" => check(&conf).map(|()| None),
            "STATUS" => call::<Value>(&conf.socket, &Request::Status)
                .map(|_| None)
                .map_err(|e| CniError(50, format!("ward run is not available: {e}"))),
            other => Err(CniError(4, format!("unknown CNI_COMMAND {other:?}"))),
        }
    });
    let mut out = std::io::stdout();
    match result {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(CniError(code, msg)) => {
            eprintln!("ward-cni: {msg}");
            let _ = writeln!(
                out,
                "{}",
                json!({"cniVersion": version, "code": code, "msg": msg})
            );
            ExitCode::FAILURE
        }
    }
}

/// The pod this invocation is for, from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
fn pod() -> Result<(String, String), CniError> {
    let args = std::env::var("CNI_ARGS").unwrap_or_default();
    let get = |key: &str| {
        args.split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    };
    match (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME")) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Ok((ns, name)),
        _ => Err(CniError(
            4,
            "CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME (ward-cni serves Kubernetes pods)"
                .into(),
        )),
    }
}

fn required(key: &str) -> Result<String, CniError> {
    match std::env::var(key) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError(4, format!("{key} is not set"))),
    }
}

/// What the previous plugin's result says of the pod: its host-side interface and IPv4
/// addresses.
pub fn attachment_of(
    prev: &Value,
    ifname: &str,
    is_bridge: impl Fn(&str) -> bool,
    routes: &str,
) -> Result<(String, Vec<Ipv4Addr>), String> {
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let sandbox_if = interfaces
        .iter()
        .position(|i| i["name"] == ifname && i["sandbox"].as_str().is_some_and(|s| !s.is_empty()));
    let mut ips = Vec::new();
    for ip in prev["ips"].as_array().into_iter().flatten() {
        // An address on another interface than the pod's (a bridge's gateway) is not the pod's.
        if let (Some(at), Some(pod)) = (ip["interface"].as_u64(), sandbox_if) {
            if at as usize != pod {
                continue;
            }
        }
        let Some(addr) = ip["address"].as_str() else {
            continue;
        };
        if let Ok(a) = addr.split('/').next().unwrap_or("").parse::<Ipv4Addr>() {
            ips.push(a);
        }
    }
    if ips.is_empty() {
        return Err("the previous plugin's result has no IPv4 address for the pod".into());
    }
    // The host side: the one interface outside the sandbox that is not a bridge (ptp's or
    // bridge's veth end), else the interface routing to the pod (not a bridge either: a
    // bridge carries every pod).
    let host: Vec<&str> = interfaces
        .iter()
        .filter(|i| i["sandbox"].as_str().is_none_or(|s| s.is_empty()))
        .filter_map(|i| i["name"].as_str())
        .filter(|n| !is_bridge(n))
        .collect();
    let interface = match host.as_slice() {
        [one] => one.to_string(),
        _ => match crate::sources::kube::pods::interface_for(routes, ips[0]) {
            Some(i) if !is_bridge(&i) => i,
            _ => {
                return Err(format!(
                    "cannot tell the pod's host-side interface: the previous result lists {} \
                     outside the sandbox, and no interface but a bridge routes to {}",
                    if host.is_empty() {
                        "none".to_string()
                    } else {
                        host.join(", ")
                    },
                    ips[0]
                ))
            }
        },
    };
    Ok((interface, ips))
}

fn is_bridge(name: &str) -> bool {
    Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .exists()
}

fn unreachable(e: CallError) -> CniError {
    CniError(11, format!("{e}"))
}

fn add(conf: &NetConf) -> Result<Option<Value>, CniError> {
    let prev = conf.prev_result.clone().ok_or_else(|| {
        CniError(
            7,
            "no prevResult: ward-cni is a chained plugin, after the plugin that creates the pod's interface"
                .into(),
        )
    })?;
    let (namespace, name) = pod()?;
    let container_id = required("CNI_CONTAINERID")?;
    let netns = required("CNI_NETNS")?;
    let ifname = required("CNI_IFNAME")?;
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let (interface, ips) =
        attachment_of(&prev, &ifname, is_bridge, &routes).map_err(|e| CniError(7, e))?;
    let attachment = CniAttachment {
        container_id,
        namespace: namespace.clone(),
        name: name.clone(),
        netns,
        ifname,
        interface: interface.clone(),
        ips,
    };
    let added: CniAdded = call(
        &conf.socket,
        &Request::CniAdd {
            attachment: attachment.clone(),
        },
    )
    .map_err(unreachable)?;
    // Until the pod's labels come from the API, it is no endpoint: wait, so that it never
    // runs unenforced.
    if added.endpoint.is_none() {
        let deadline = Instant::now() + Duration::from_secs(conf.timeout_seconds);
        while !is_endpoint(&conf.socket, &namespace, &name, &interface)? {
            if Instant::now() >= deadline {
                return Err(CniError(
                    11,
                    format!(
                        "pod {namespace}/{name} is not an endpoint after {} s (are its labels in the API?)",
                        conf.timeout_seconds
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut out = prev;
    out["cniVersion"] = json!(conf.cni_version);
    Ok(Some(out))
}

fn is_endpoint(
    socket: &Path,
    namespace: &str,
    name: &str,
    interface: &str,
) -> Result<bool, CniError> {
    let rows: Vec<EndpointRow> = call(socket, &Request::EndpointList).map_err(unreachable)?;
    Ok(rows.iter().any(|r| {
        r.name == name
            && r.namespace.as_deref() == Some(namespace)
            && r.interface.as_deref() == Some(interface)
    }))
}

fn del(conf: &NetConf) {
    let (Ok((namespace, name)), Ok(container_id)) = (pod(), required("CNI_CONTAINERID")) else {
        return;
    };
    if let Err(e) = call::<Value>(
        &conf.socket,
        &Request::CniDel {
            container_id,
            namespace: namespace.clone(),
            name: name.clone(),
        },
    ) {
        eprintln!("ward-cni: DEL of {namespace}/{name}: {e} (the API will tell Ward the pod went)");
    }
}

fn check(conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError(7, "CHECK without prevResult".into()))?;
    let (namespace, name) = pod()?;
    let ifname = required("CNI_IFNAME")?;
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let (interface, _) =
        attachment_of(prev, &ifname, is_bridge, &routes).map_err(|e| CniError(7, e))?;
    if is_endpoint(&conf.socket, &namespace, &name, &interface)? {
        Ok(())
    } else {
        Err(CniError(
            3,
            format!("pod {namespace}/{name} is no endpoint on {interface}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_side_comes_from_the_previous_result() {
        // ptp: the host veth and the pod's eth0.
        let ptp = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth1a2b", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/var/run/netns/p"}
            ],
            "ips": [{"address": "10.201.0.5/24", "gateway": "10.201.0.1", "interface": 1}]
        });
        assert_eq!(
            attachment_of(&ptp, "eth0", |_| false, ""),
            Ok(("veth1a2b".into(), vec![Ipv4Addr::new(10, 201, 0, 5)]))
        );
        // bridge: the bridge itself is not the pod's interface.
        let bridge = json!({
            "interfaces": [
                {"name": "cni0"}, {"name": "vethc"},
                {"name": "eth0", "sandbox": "/var/run/netns/p"}
            ],
            "ips": [{"address": "10.22.0.9/16", "interface": 2}]
        });
        assert_eq!(
            attachment_of(&bridge, "eth0", |n| n == "cni0", ""),
            Ok(("vethc".into(), vec![Ipv4Addr::new(10, 22, 0, 9)]))
        );
        // Nothing but a bridge routes to it: refused, never the bridge.
        let routes =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            cni0\t00001600\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let bare = json!({"interfaces": [{"name": "cni0"}], "ips": [{"address": "10.22.0.9/16"}]});
        assert!(attachment_of(&bare, "eth0", |n| n == "cni0", routes)
            .unwrap_err()
            .contains("cannot tell"));
        // No address: refused.
        assert!(attachment_of(&json!({"interfaces": []}), "eth0", |_| false, "").is_err());
    }
}
