//! The admin API's types, shared by the server and the CLI: one JSON request per line, one
//! [`Reply`] per line, whose `data` is the request's response type.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{EndpointConfig, Enforcement, Listeners};

/// Longest admin request line accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// → [`Status`]
    Status,
    /// → `Vec<`[`EndpointRow`]`>`
    EndpointList,
    /// → [`EndpointAdded`]
    EndpointAdd { endpoint: EndpointConfig },
    /// → [`EndpointRemoved`]
    EndpointRemove { name: String },
    /// → `Vec<`[`IdentityRow`]`>`
    IdentityList,
    /// → [`PolicyDocuments`]
    PolicyGet,
    /// → [`BpfPolicy`]
    BpfPolicyGet { endpoint: String },
    /// → `Vec<`[`FqdnRow`]`>`
    FqdnCacheList,
    /// `ward-cni` ADD: a pod's interface. → [`CniAdded`]
    CniAdd { attachment: CniAttachment },
    /// `ward-cni` DEL: the pod's sandbox `container_id` is going. → `null`
    CniDel {
        container_id: String,
        namespace: String,
        name: String,
    },
}

/// What `ward-cni` ADD reports: a pod's sandbox, its interface on this node and its
/// addresses. The endpoint is built from it and the pod's labels in the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    pub container_id: String,
    /// The pod (`K8S_POD_NAMESPACE` / `K8S_POD_NAME`).
    pub namespace: String,
    pub name: String,
    /// `CNI_NETNS` and `CNI_IFNAME`: the pod's side.
    pub netns: String,
    pub ifname: String,
    /// The host-side interface the previous plugin created.
    pub interface: String,
    pub ips: Vec<std::net::Ipv4Addr>,
}

/// The answer to [`Request::CniAdd`]: the endpoint's id once the pod is an endpoint; none
/// while its labels have not come from the API yet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CniAdded {
    pub endpoint: Option<u16>,
}

/// One learned address (`ward fqdn cache list`, like `cilium fqdn cache list`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FqdnRow {
    /// `namespace/name` of the endpoint whose query taught it.
    pub endpoint: String,
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    /// The TTL it was learned with (raised to `dns.min_ttl`), seconds.
    pub ttl: u32,
    /// Seconds until it expires (0 for a zombie).
    pub expires_in: u64,
    /// Past its TTL but kept: connections to it are live.
    pub zombie: bool,
    /// The identity the ipcache gives it.
    pub identity: u32,
    /// When it was last seen in an answer.
    pub seen: String,
}

/// One answer line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub node: Option<String>,
    pub started: String,
    pub uptime_seconds: u64,
    pub policy_revision: u64,
    pub policies: usize,
    pub policy_files: Vec<String>,
    pub last_policy_error: Option<String>,
    pub endpoints: usize,
    pub host_endpoint: HostEndpointStatus,
    pub identities: usize,
    pub enforcement: Enforcement,
    pub audit: bool,
    pub listeners: Listeners,
    pub unproxied_l7: Vec<String>,
    pub pin_root: PathBuf,
    pub links: Vec<String>,
    pub routing: Routing,
    pub last_apply: Option<LastApply>,
    pub flow_log: PathBuf,
    pub metrics: Option<SocketAddr>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostEndpointStatus {
    pub ingress_enforcement: String,
    pub egress_enforcement: String,
    pub audit: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Routing {
    pub table: u32,
    pub priority: u32,
    pub installed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastApply {
    pub time: String,
    pub written: usize,
    pub deleted: usize,
    pub policy_entries: usize,
    pub took_ms: f64,
    /// Endpoints whose entries were computed whole, and patched for changed identities.
    pub recomputed: usize,
    pub patched: usize,
    /// From the policy file's modification to the maps written, for a file change.
    pub change_to_maps_ms: Option<f64>,
}

/// `cilium endpoint list`'s row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointRow {
    pub id: u16,
    pub name: String,
    pub namespace: Option<String>,
    pub interface: Option<String>,
    pub ingress_enforcement: String,
    pub egress_enforcement: String,
    pub identity: u32,
    pub labels: Vec<String>,
    pub ipv4: Vec<String>,
    pub audit: bool,
    pub status: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointAdded {
    pub id: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointRemoved {
    pub removed: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityRow {
    pub id: u32,
    pub labels: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyDocuments {
    pub revision: u64,
    pub policies: Vec<LoadedPolicy>,
    /// The documents of the policy files, as YAML values.
    pub documents: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadedPolicy {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub file: String,
    pub document: usize,
    pub spec: String,
    pub description: Option<String>,
}

/// `cilium bpf policy get`'s table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BpfPolicy {
    pub endpoint: String,
    pub id: u16,
    pub entries: Vec<BpfPolicyEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BpfPolicyEntry {
    pub policy: String,
    pub direction: String,
    pub identity: u32,
    pub labels: Vec<String>,
    pub port_proto: String,
    pub proxy_port: ProxyPort,
    pub precedence: u32,
}

/// A redirect's listener port, or `NONE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProxyPort {
    Port(u16),
    None(NoProxy),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoProxy {
    #[serde(rename = "NONE")]
    None,
}

impl std::fmt::Display for ProxyPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyPort::Port(p) => write!(f, "{p}"),
            ProxyPort::None(_) => f.write_str("NONE"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"bpf-policy-get","endpoint":"deathstar-1"}"#).unwrap();
        assert!(matches!(r, Request::BpfPolicyGet { .. }));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"bogus"}"#).is_err());
    }

    #[test]
    fn a_proxy_port_is_a_number_or_none() {
        assert_eq!(
            serde_json::to_string(&ProxyPort::Port(15001)).unwrap(),
            "15001"
        );
        assert_eq!(
            serde_json::to_string(&ProxyPort::None(NoProxy::None)).unwrap(),
            "\"NONE\""
        );
        let p: ProxyPort = serde_json::from_str("\"NONE\"").unwrap();
        assert_eq!(p.to_string(), "NONE");
    }
}
