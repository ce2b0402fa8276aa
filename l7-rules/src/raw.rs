//! Raw serde types mirroring the policy YAML field for field. Unknown fields are errors
//! (`deny_unknown_fields`); meaning is given to them in `compile`, where validation lives.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The part of every document read first, to decide which typed form to parse it as.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeMeta {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    // Server-populated fields, accepted so `kubectl get -o yaml` output loads.
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default)]
    pub creation_timestamp: Option<serde_yaml::Value>,
    #[serde(default)]
    pub managed_fields: Option<serde_yaml::Value>,
    #[serde(default)]
    pub self_link: Option<String>,
    #[serde(default)]
    pub finalizers: Option<serde_yaml::Value>,
    #[serde(default)]
    pub owner_references: Option<serde_yaml::Value>,
}

/// CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumPolicy {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<Rule>,
    #[serde(default)]
    pub specs: Option<Vec<Rule>>,
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

/// `api.Rule`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub endpoint_selector: Option<Selector>,
    #[serde(default)]
    pub node_selector: Option<Selector>,
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default)]
    pub ingress_deny: Option<Vec<IngressDenyRule>>,
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default)]
    pub egress_deny: Option<Vec<EgressDenyRule>>,
    #[serde(default)]
    pub enable_default_deny: Option<DefaultDeny>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: Option<Vec<RuleLabel>>,
    #[serde(default)]
    pub log: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleLabel {
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default)]
    pub ingress: Option<bool>,
    #[serde(default)]
    pub egress: Option<bool>,
}

/// Endpoint/label selector.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, StringLike>>,
    #[serde(default)]
    pub match_expressions: Option<Vec<Expression>>,
}

/// YAML happily turns `true` or `1` into non-strings; label values are strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringLike {
    S(String),
    B(bool),
    I(i64),
    F(f64),
    Null(()),
}

impl StringLike {
    pub fn into_string(self) -> String {
        match self {
            StringLike::S(s) => s,
            StringLike::B(b) => b.to_string(),
            StringLike::I(i) => i.to_string(),
            StringLike::F(f) => f.to_string(),
            StringLike::Null(()) => String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Option<Vec<StringLike>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default)]
    pub from_endpoints: Option<Vec<Selector>>,
    #[serde(default)]
    pub from_requires: Option<serde_yaml::Value>,
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub from_entities: Option<Vec<String>>,
    #[serde(default)]
    pub from_groups: Option<serde_yaml::Value>,
    #[serde(default)]
    pub from_nodes: Option<serde_yaml::Value>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default)]
    pub authentication: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressDenyRule {
    #[serde(default)]
    pub from_endpoints: Option<Vec<Selector>>,
    #[serde(default)]
    pub from_requires: Option<serde_yaml::Value>,
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub from_entities: Option<Vec<String>>,
    #[serde(default)]
    pub from_groups: Option<serde_yaml::Value>,
    #[serde(default)]
    pub from_nodes: Option<serde_yaml::Value>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortDenyRule>>,
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default)]
    pub to_endpoints: Option<Vec<Selector>>,
    #[serde(default)]
    pub to_requires: Option<serde_yaml::Value>,
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub to_entities: Option<Vec<String>>,
    #[serde(default)]
    pub to_services: Option<Vec<ServiceRef>>,
    #[serde(default, rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    #[serde(default)]
    pub to_groups: Option<serde_yaml::Value>,
    #[serde(default)]
    pub to_nodes: Option<serde_yaml::Value>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default)]
    pub authentication: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressDenyRule {
    #[serde(default)]
    pub to_endpoints: Option<Vec<Selector>>,
    #[serde(default)]
    pub to_requires: Option<serde_yaml::Value>,
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub to_entities: Option<Vec<String>>,
    #[serde(default)]
    pub to_services: Option<Vec<ServiceRef>>,
    #[serde(default)]
    pub to_groups: Option<serde_yaml::Value>,
    #[serde(default)]
    pub to_nodes: Option<serde_yaml::Value>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortDenyRule>>,
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    #[serde(default)]
    pub cidr: Option<String>,
    #[serde(default)]
    pub except: Option<Vec<String>>,
    #[serde(default)]
    pub cidr_group_ref: Option<String>,
    #[serde(default)]
    pub cidr_group_selector: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRef {
    #[serde(default)]
    pub k8s_service: Option<ServiceName>,
    #[serde(default)]
    pub k8s_service_selector: Option<ServiceSelector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceName {
    pub service_name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSelector {
    pub selector: Selector,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSelector {
    #[serde(default)]
    pub match_name: Option<String>,
    #[serde(default)]
    pub match_pattern: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
    #[serde(default)]
    pub rules: Option<L7Rules>,
    #[serde(default, rename = "terminatingTLS")]
    pub terminating_tls: Option<serde_yaml::Value>,
    #[serde(default, rename = "originatingTLS")]
    pub originating_tls: Option<serde_yaml::Value>,
    #[serde(default)]
    pub server_names: Option<serde_yaml::Value>,
    #[serde(default)]
    pub listener: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortDenyRule {
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    #[serde(default)]
    pub port: Option<StringLike>,
    #[serde(default)]
    pub end_port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L7Rules {
    #[serde(default)]
    pub http: Option<Vec<HttpRule>>,
    #[serde(default)]
    pub kafka: Option<Vec<KafkaRule>>,
    #[serde(default)]
    pub dns: Option<Vec<DnsRule>>,
    /// Ward's native gRPC form.
    #[serde(default)]
    pub grpc: Option<Vec<GrpcRule>>,
    #[serde(default)]
    pub l7proto: Option<String>,
    #[serde(default)]
    pub l7: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    #[serde(default)]
    pub header_matches: Option<Vec<HeaderMatch>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub secret: Option<SecretRef>,
    #[serde(default)]
    pub mismatch: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaRule {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_version: Option<StringLike>,
    #[serde(default, rename = "clientID")]
    pub client_id: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsRule {
    #[serde(default)]
    pub match_name: Option<String>,
    #[serde(default)]
    pub match_pattern: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcRule {
    pub service: String,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    #[serde(default)]
    pub fields: Option<Vec<IcmpField>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    #[serde(default)]
    pub family: Option<String>,
    #[serde(rename = "type")]
    pub icmp_type: StringLike,
}

/// networking.k8s.io/v1 NetworkPolicy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sNetworkPolicy {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: K8sSpec,
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sSpec {
    pub pod_selector: Selector,
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
    #[serde(default)]
    pub ingress: Option<Vec<K8sIngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<K8sEgressRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sIngressRule {
    #[serde(default)]
    pub from: Option<Vec<K8sPeer>>,
    #[serde(default)]
    pub ports: Option<Vec<K8sPort>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sEgressRule {
    #[serde(default)]
    pub to: Option<Vec<K8sPeer>>,
    #[serde(default)]
    pub ports: Option<Vec<K8sPort>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sPeer {
    #[serde(default)]
    pub pod_selector: Option<Selector>,
    #[serde(default)]
    pub namespace_selector: Option<Selector>,
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default)]
    pub except: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sPort {
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: Option<StringLike>,
    #[serde(default)]
    pub end_port: Option<i64>,
}

/// v1 Namespace: only its name and labels matter (namespaceSelector).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// v1 Node: its name, labels (nodeSelector) and addresses (the `remote-node` entity).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: NodeStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
}

#[derive(Debug, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub address: String,
}

/// v1 Service: only its name, namespace and pod selector matter (toServices).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// discovery.k8s.io/v1 EndpointSlice: its Service (the `kubernetes.io/service-name` label) and
/// its endpoints' addresses (toServices of a Service without selector).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub address_type: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: SliceConditions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceConditions {
    #[serde(default)]
    pub ready: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
}
