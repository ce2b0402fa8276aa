//! One object (a YAML document or a cluster object) → its compiled content, every error
//! reported with its field path. Shared by both sources: files and the cluster.

use crate::compile;
use crate::diag::{Diagnostic, DocContext, Origin};
use crate::model::*;
use crate::raw;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One object that compiled without error.
#[derive(Clone, Debug)]
pub struct Object {
    /// The object as written, to tell a real change from a rewrite of the same content.
    pub(crate) value: serde_yaml::Value,
    pub content: Content,
    /// Warnings about this object (an error rejects it instead).
    pub warnings: Vec<Diagnostic>,
}

impl Object {
    /// The object as written (for showing the policies in force).
    pub fn value(&self) -> &serde_yaml::Value {
        &self.value
    }
}

/// What an object contributes to the policy set.
#[derive(Clone, Debug)]
pub enum Content {
    /// A policy's compiled rules: one per `spec` / element of `specs` (possibly none).
    Policies(Vec<Policy>),
    /// A namespace's labels (what `namespaceSelector` selects).
    Namespace {
        name: String,
        labels: BTreeMap<String, String>,
    },
    /// A node's labels (what a host policy's `nodeSelector` selects) and its IP addresses
    /// (`InternalIP`, `ExternalIP`: the `remote-node` entity on the other nodes).
    Node {
        name: String,
        labels: BTreeMap<String, String>,
        addresses: Vec<std::net::IpAddr>,
    },
    Service(ServiceDef),
    /// The addresses behind a Service, for `toServices` of a Service without selector.
    EndpointSlice(EndpointSliceDef),
}

impl Content {
    pub fn policies(&self) -> &[Policy] {
        match self {
            Content::Policies(p) => p,
            _ => &[],
        }
    }
}

/// Compiles one object's value. Any error rejects it: every diagnostic (errors and warnings)
/// is returned.
pub fn compile_object(
    value: serde_yaml::Value,
    mut cx: DocContext<'_>,
) -> Result<Object, Vec<Diagnostic>> {
    let content = content(value.clone(), &mut cx);
    match content {
        Some(content) if !cx.has_errors() => Ok(Object {
            value,
            content,
            warnings: cx.diags,
        }),
        _ => Err(cx.diags),
    }
}

/// What one object holds, compiled; `None` after reporting an error.
fn content(value: serde_yaml::Value, cx: &mut DocContext<'_>) -> Option<Content> {
    let meta: raw::TypeMeta = match serde_yaml::from_value(value.clone()) {
        Ok(m) => m,
        Err(_) => {
            cx.error(
                "",
                "a policy document must be a mapping with `apiVersion` and `kind`",
            );
            return None;
        }
    };
    let (Some(api), Some(kind)) = (meta.api_version.as_deref(), meta.kind.as_deref()) else {
        cx.error("kind", "`apiVersion` and `kind` are required");
        return None;
    };
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let object_id = match (&namespace, &name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.to_string(),
    };
    cx.object = Some(object_id);
    let policy_kind = match (api, kind) {
        ("cilium.io/v2" | "cilium.io/v2alpha1", "CiliumNetworkPolicy") => {
            PolicyKind::CiliumNetworkPolicy
        }
        ("cilium.io/v2" | "cilium.io/v2alpha1", "CiliumClusterwideNetworkPolicy") => {
            PolicyKind::CiliumClusterwideNetworkPolicy
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => PolicyKind::NetworkPolicy,
        // Only their names and labels matter: what namespaceSelector and a host policy's
        // nodeSelector select.
        ("v1", "Namespace") => {
            let obj = typed::<raw::Namespace>(value, cx)?;
            let Some(name) = obj.metadata.name else {
                cx.error("metadata.name", "a Namespace needs a name");
                return None;
            };
            let labels = obj.metadata.labels;
            return Some(Content::Namespace { name, labels });
        }
        ("v1", "Node") => {
            let obj = typed::<raw::Node>(value, cx)?;
            let Some(name) = obj.metadata.name else {
                cx.error("metadata.name", "a Node needs a name");
                return None;
            };
            let mut addresses = Vec::new();
            for (i, a) in obj.status.addresses.iter().enumerate() {
                if !matches!(a.kind.as_str(), "InternalIP" | "ExternalIP") {
                    continue;
                }
                match a.address.parse() {
                    Ok(ip) => addresses.push(ip),
                    Err(_) => cx.error(
                        &format!("status.addresses[{i}].address"),
                        format!("{:?} is not an IP address", a.address),
                    ),
                }
            }
            return Some(Content::Node {
                name,
                labels: obj.metadata.labels,
                addresses,
            });
        }
        ("v1", "Service") => {
            let svc = typed::<raw::Service>(value, cx)?;
            let Some(name) = svc.metadata.name else {
                cx.error("metadata.name", "a Service needs a name");
                return None;
            };
            return Some(Content::Service(ServiceDef {
                namespace: svc.metadata.namespace.unwrap_or_else(|| "default".into()),
                name,
                labels: compile::service_labels(&svc.metadata.labels),
                selector: svc.spec.selector,
            }));
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let slice = typed::<raw::EndpointSlice>(value, cx)?;
            let Some(name) = slice.metadata.name else {
                cx.error("metadata.name", "an EndpointSlice needs a name");
                return None;
            };
            let Some(service) = slice
                .metadata
                .labels
                .get("kubernetes.io/service-name")
                .cloned()
            else {
                cx.error(
                    "metadata.labels",
                    "an EndpointSlice needs the `kubernetes.io/service-name` label (its Service)",
                );
                return None;
            };
            let mut addresses = Vec::new();
            if matches!(slice.address_type.as_deref(), None | Some("IPv4" | "IPv6")) {
                for (i, e) in slice.endpoints.iter().enumerate() {
                    // Kubernetes: an endpoint without the condition counts as ready.
                    if e.conditions.ready == Some(false) {
                        continue;
                    }
                    for (j, a) in e.addresses.iter().enumerate() {
                        match a.parse() {
                            Ok(ip) => addresses.push(ip),
                            Err(_) => cx.error(
                                &format!("endpoints[{i}].addresses[{j}]"),
                                format!("{a:?} is not an IP address"),
                            ),
                        }
                    }
                }
            }
            return Some(Content::EndpointSlice(EndpointSliceDef {
                namespace: slice.metadata.namespace.unwrap_or_else(|| "default".into()),
                name,
                service,
                addresses,
            }));
        }
        (_, "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
            cx.error(
                "apiVersion",
                format!("apiVersion {api:?} is not supported for {kind}; use cilium.io/v2"),
            );
            return None;
        }
        (_, "NetworkPolicy") => {
            cx.error("apiVersion", format!("apiVersion {api:?} is not supported for NetworkPolicy; use networking.k8s.io/v1"));
            return None;
        }
        _ => {
            cx.error(
                "kind",
                format!("unsupported kind {kind:?} ({api}); expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy, Namespace, Node, Service or EndpointSlice"),
            );
            return None;
        }
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        cx.error("metadata.name", "the policy needs `metadata.name`");
        return None;
    };
    let namespace = match policy_kind {
        PolicyKind::CiliumClusterwideNetworkPolicy => {
            if namespace.is_some() {
                cx.warn(
                    "metadata.namespace",
                    "a CiliumClusterwideNetworkPolicy is not namespaced; `metadata.namespace` is ignored",
                );
            }
            None
        }
        _ => Some(namespace.unwrap_or_else(|| "default".to_string())),
    };
    // A cluster object has no file: its meta keeps the file empty (see `PolicyMeta::origin`).
    let (file, document) = match cx.origin() {
        Origin::File { path, document, .. } => (path.clone(), *document),
        Origin::Object { .. } => (String::new(), 0),
    };
    let meta = Arc::new(PolicyMeta {
        kind: policy_kind,
        namespace,
        name,
        file,
        document,
    });
    let policies = match policy_kind {
        PolicyKind::NetworkPolicy => {
            let raw = typed::<raw::K8sNetworkPolicy>(value, cx)?;
            compile::k8s_policy(raw, meta, cx).into_iter().collect()
        }
        _ => {
            let raw = typed::<raw::CiliumPolicy>(value, cx)?;
            compile::cilium_policy(raw, meta, cx)
        }
    };
    Some(Content::Policies(policies))
}

/// Most type errors collected from one document before giving up.
const MAX_TYPE_ERRORS: usize = 64;

/// Typed deserialisation with the failing field's path. Every error is reported: after one,
/// the offending node is removed and deserialisation retried, so that later errors (and the
/// semantic checks of what remains) are found in the same pass. Any error still rejects the
/// document: `None` is returned after reporting.
fn typed<T: serde::de::DeserializeOwned>(
    mut value: serde_yaml::Value,
    cx: &mut DocContext<'_>,
) -> Option<T> {
    let mut reported: std::collections::HashSet<String> = std::collections::HashSet::new();
    for _ in 0..MAX_TYPE_ERRORS {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            // After recovering, the rest is still compiled so its errors are reported too; the
            // errors already recorded reject the document.
            Ok(v) => return Some(v),
            Err(e) => {
                let segments: Vec<serde_path_to_error::Segment> =
                    e.path().iter().cloned().collect();
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let inner = e.into_inner().to_string();
                let message = inner
                    .split(" at line ")
                    .next()
                    .unwrap_or(&inner)
                    .to_string();
                let unknown = unknown_field_name(&message);
                let field = match &unknown {
                    Some(f) if path.ends_with(f.as_str()) => path.clone(),
                    Some(f) if !path.is_empty() => format!("{path}.{f}"),
                    Some(f) => f.clone(),
                    None => path.clone(),
                };
                let missing = message.starts_with("missing field");
                if !reported.insert(field.clone()) {
                    return None;
                }
                cx.error(&field, message);
                // A missing field cannot be removed; anything else can, to look further.
                let mut target = segments;
                if let Some(f) = unknown.as_ref().filter(|f| !path.ends_with(f.as_str())) {
                    target.push(serde_path_to_error::Segment::Map { key: f.clone() });
                }
                if missing || target.is_empty() || !remove_at(&mut value, &target) {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the node at `path` from a YAML value; false if there is none.
fn remove_at(value: &mut serde_yaml::Value, path: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Map { key }, serde_yaml::Value::Mapping(m)) => {
                match m.get_mut(key.as_str()) {
                    Some(n) => n,
                    None => return false,
                }
            }
            (Segment::Seq { index }, serde_yaml::Value::Sequence(v)) => match v.get_mut(*index) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, serde_yaml::Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, serde_yaml::Value::Sequence(v)) if *index < v.len() => {
            // Keep indices of later elements stable for their error paths.
            v[*index] = serde_yaml::Value::Null;
            true
        }
        _ => false,
    }
}

/// For "unknown field `x`, expected one of ..." the field itself belongs in the path.
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}
